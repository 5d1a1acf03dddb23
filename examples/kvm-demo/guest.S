/*
 * guest.S - everything the guest runs, assembled by gcc into the demo's
 * .rodata and copied by the VMM into the memslot at CODE_GPA (mapped at
 * CODE_VA). Position independent: jumps are relative, data addresses are the
 * absolute constants of layout.h. The VMM computes IDT entries and the entry
 * point from the offsets of the global labels below.
 *
 * Two parts:
 *  - CPL0 exception handlers. This KVM emulates CPL0 code (~1 us per
 *    instruction), so the #PF handler is as small as it can be: it reports
 *    CR2 (mailbox) and the error code (MMIO doorbell = one exit to the VMM,
 *    which resolves the fault with axalloc_handle_fault) and returns.
 *  - the CPL3 workload (runs natively). It talks to the VMM only through
 *    MMIO doorbells: `out` raises #GP at CPL3 here.
 */
#include "layout.h"

    .section .rodata.axdemo_guest, "a"
    .code64
    .globl guest_code_start, guest_code_end
    .globl guest_pf_handler, guest_exc_stubs, guest_user_entry, guest_migrate_entry

    .balign 16
guest_code_start:

/* ---- #PF (vector 14), CPL0. Stack: error code, RIP, CS, RFLAGS, RSP, SS. */
guest_pf_handler:
    pushq   %rax
    movq    %cr2, %rax
    movq    %rax, MB_CR2            /* faulting address -> mailbox (RAM) */
    movq    8(%rsp), %rax
    movq    %rax, MMIO_PF           /* error code -> VMM: KVM_EXIT_MMIO */
    popq    %rax
    addq    $8, %rsp                /* drop the error code */
    iretq                           /* retry the faulting instruction */

/* ---- every other vector: tell the VMM which one, then stop (never resumed).
 * 16 bytes per stub: the VMM points IDT[v] at guest_exc_stubs + 16 * v. */
    .balign 16
guest_exc_stubs:
    .irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .balign 16
    movq    $\v, MMIO_EXC
1:  hlt
    jmp     1b
    .endr

/* ---- the workload, CPL3. Registers: rbx = RAM base, rsi = RAM end,
 * r8 = seed; the pattern of the qword at address a is (a ^ seed). */
    .balign 16
guest_user_entry:
    movq    MB_RAM_BASE, %rbx
    movq    MB_RAM_END, %rsi
    movq    MB_SEED, %r8

    /* 1. touch every page: write the pattern (first write of a page = #PF) */
    movq    %rbx, %rdi
1:  movq    %rdi, %rax
    xorq    %r8, %rax
    movq    %rax, (%rdi)
    addq    $8, %rdi
    cmpq    %rsi, %rdi
    jb      1b
    movq    $1, MMIO_FILLED

    /* 2. verify every qword in the guest; report the number of mismatches */
    xorl    %edx, %edx
    movq    %rbx, %rdi
2:  movq    %rdi, %rax
    xorq    %r8, %rax
    cmpq    %rax, (%rdi)
    je      3f
    incq    %rdx
3:  addq    $8, %rdi
    cmpq    %rsi, %rdi
    jb      2b
    movq    %rdx, MMIO_VERIFIED

    /* 3. unmap -> re-touch: the VMM unmaps one page and maps it again;
     * reading it must give a fresh zeroed page, not the old data. */
    movq    MB_UNMAP_VA, %rdi
    movq    %rdi, MMIO_UNMAP
    xorl    %edx, %edx
    movl    $(PAGE_SIZE / 8), %ecx
4:  cmpq    $0, (%rdi)              /* first read = #PF (read) when lazy */
    je      5f
    incq    %rdx
5:  addq    $8, %rdi
    decl    %ecx
    jnz     4b
    movq    %rdx, MMIO_RETOUCHED

    /* put the pattern back so that the host can verify the whole region */
    movq    MB_UNMAP_VA, %rdi
    leaq    PAGE_SIZE(%rdi), %rcx
6:  movq    %rdi, %rax
    xorq    %r8, %rax
    movq    %rax, (%rdi)
    addq    $8, %rdi
    cmpq    %rcx, %rdi
    jb      6b

    /* 4. optional (--bad-access): touch an address no region covers */
    movq    MB_BAD_VA, %rdi
    testq   %rdi, %rdi
    jz      7f
    movq    (%rdi), %rax
7:  movq    $0, MMIO_DONE
8:  jmp     8b

/* ---- the migration workload (--migrate), CPL3. See README.md, "Live
 * migration". Registers: rbx = RAM base, rsi = RAM end, r8 = seed,
 * r9 = pass k, r10 = pages, r11 = H (hot pages), r12 = S (stride).
 * Fill: every qword at address a holds (a ^ seed), as above. Then pass
 * k = 1, 2, ... writes TAG(k, p) = 1<<63 | k<<32 | p into qword 0 of
 * page p for every hot page p < H and every cold page p = H + c with
 * c mod S = k mod S. After each pass the guest looks at MB_MIGRATED; once
 * set (the VMM moved it to the destination meanwhile) it checks every
 * page against the last value it wrote there:
 *   hot page: TAG(k, p); cold page: d = (k - c) mod S; TAG(k - d, p) if
 *   d < k, else the fill pattern; qwords 1..511: the fill pattern. */
.macro TAGWRITE                     /* qword 0 of page rcx := TAG(r9, rcx) */
    movq    %rcx, %rdi
    shlq    $12, %rdi
    addq    %rbx, %rdi
    movq    %r9, %rax
    shlq    $32, %rax
    orq     %rcx, %rax
    btsq    $63, %rax
    movq    %rax, (%rdi)            /* clean logged page: #PF (write) */
.endm

    .balign 16
guest_migrate_entry:
    movq    MB_RAM_BASE, %rbx
    movq    MB_RAM_END, %rsi
    movq    MB_SEED, %r8
    movq    MB_HOT_PAGES, %r11
    movq    MB_STRIDE, %r12
    movq    %rsi, %r10
    subq    %rbx, %r10
    shrq    $12, %r10

    /* 1. fill every qword with the pattern (first touch of a page = #PF) */
    movq    %rbx, %rdi
1:  movq    %rdi, %rax
    xorq    %r8, %rax
    movq    %rax, (%rdi)
    addq    $8, %rdi
    cmpq    %rsi, %rdi
    jb      1b
    movq    $0, MMIO_MIG_START

    /* 2. the write passes, until the VMM has moved the guest */
    movl    $1, %r9d
10: xorl    %ecx, %ecx              /* hot pages 0 .. H-1 */
11: cmpq    %r11, %rcx
    jae     12f
    TAGWRITE
    incq    %rcx
    jmp     11b
12: movq    %r9, %rax               /* cold stripe: H + (k mod S), step S */
    xorl    %edx, %edx
    divq    %r12
    leaq    (%r11,%rdx), %rcx
13: cmpq    %r10, %rcx
    jae     14f
    TAGWRITE
    addq    %r12, %rcx
    jmp     13b
14: cmpq    $0, MB_MIGRATED
    jne     20f
    incq    %r9
    jmp     10b

    /* 3. verify every page; r14 = pages holding a wrong value */
20: movq    %r9, MMIO_MIG_PASSES
    xorl    %r14d, %r14d
    xorl    %ecx, %ecx              /* page p */
21: cmpq    %r10, %rcx
    jae     29f
    movq    %rcx, %rdi
    shlq    $12, %rdi
    addq    %rbx, %rdi
    cmpq    %r11, %rcx
    jae     22f
    movq    %r9, %r13               /* hot: last written in pass k */
    jmp     24f
22: movq    %rcx, %rax              /* cold: c = p - H, r = c mod S */
    subq    %r11, %rax
    xorl    %edx, %edx
    divq    %r12
    movq    %r9, %rax               /* d = (k + S - r) mod S */
    addq    %r12, %rax
    subq    %rdx, %rax
    xorl    %edx, %edx
    divq    %r12
    cmpq    %r9, %rdx
    jae     23f                     /* d >= k: no pass wrote it */
    movq    %r9, %r13
    subq    %rdx, %r13              /* last pass k - d */
    jmp     24f
23: movq    %rdi, %r13              /* never rewritten: the fill pattern */
    xorq    %r8, %r13
    jmp     25f
24: shlq    $32, %r13
    orq     %rcx, %r13
    btsq    $63, %r13
25: xorl    %edx, %edx
    cmpq    %r13, (%rdi)
    setne   %dl
    leaq    PAGE_SIZE(%rdi), %r15
    addq    $8, %rdi
26: movq    %rdi, %rax
    xorq    %r8, %rax
    cmpq    %rax, (%rdi)
    je      27f
    movl    $1, %edx
27: addq    $8, %rdi
    cmpq    %r15, %rdi
    jb      26b
    addq    %rdx, %r14
    incq    %rcx
    jmp     21b
29: movq    %r14, MMIO_MIG_VERIFIED
    movq    $0, MMIO_DONE
30: jmp     30b

    .balign 16
guest_code_end:

    .section .note.GNU-stack, "", @progbits
