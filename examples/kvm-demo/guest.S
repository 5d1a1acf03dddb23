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
    .globl guest_pf_handler, guest_exc_stubs, guest_user_entry

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

    .balign 16
guest_code_end:

    .section .note.GNU-stack, "", @progbits
