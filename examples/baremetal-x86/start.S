/*
 * start.S - the x86 stub's boot code and its two world switches.
 *
 * Bochs boots this image as its BIOS ROM (2 MiB, at 0xffe00000; the CPU
 * starts at the reset vector 0xfffffff0 in real mode with CS.base =
 * 0xffff0000). The 16-bit code switches to 32-bit protected mode, copies
 * the image (linked at 1 MiB) from the ROM to RAM, zeroes .bss, turns on
 * 4-level -- or, for NPT with 5 levels, 5-level (CR4.LA57) -- paging with
 * an identity map of the first 4 GiB in 1 GiB pages, sets EFER.LME and
 * EFER.NXE (NPT's non-executable leaves need NXE in the host: AMD APM
 * vol. 2, "Nested Paging", NX is reserved without it) and enters 64-bit
 * mode at boot64, which calls hyp_main.
 */
#define ROM_CONFIG 0xffffffe4      /* the mode word the run script patches */
#define MODE_NPT5  4

/* ---- 64-bit, in RAM ------------------------------------------------- */
    .text
    .code64
    .global boot64
boot64:
    mov     $0x10, %ax
    mov     %ax, %ds
    mov     %ax, %es
    mov     %ax, %ss
    mov     %ax, %fs
    mov     %ax, %gs
    lea     __stack_top(%rip), %rsp
    call    hyp_main
1:  hlt
    jmp     1b

/*
 * struct gregs (hyp.h): rax rbx rcx rdx rsi rdi rbp r8..r15, 8 bytes each.
 *
 * int vmx_run(struct gregs *g, int launched): VMLAUNCH (launched = 0) or
 * VMRESUME the guest with g's registers; returns 0 at the next VM exit
 * with g updated, 1 when the instruction failed (VM-instruction error).
 * The VMCS's HOST_RSP (0x6c14) is this frame, HOST_RIP (0x6c16) vmx_exit.
 */
    .global vmx_run
vmx_run:
    push    %rbp
    push    %rbx
    push    %r12
    push    %r13
    push    %r14
    push    %r15
    push    %rdi
    mov     $0x6c14, %eax
    vmwrite %rsp, %rax
    lea     vmx_exit(%rip), %rdx
    mov     $0x6c16, %eax
    vmwrite %rdx, %rax
    test    %esi, %esi              /* the MOVs below leave ZF alone */
    mov     0(%rdi), %rax
    mov     8(%rdi), %rbx
    mov     16(%rdi), %rcx
    mov     24(%rdi), %rdx
    mov     32(%rdi), %rsi
    mov     48(%rdi), %rbp
    mov     56(%rdi), %r8
    mov     64(%rdi), %r9
    mov     72(%rdi), %r10
    mov     80(%rdi), %r11
    mov     88(%rdi), %r12
    mov     96(%rdi), %r13
    mov     104(%rdi), %r14
    mov     112(%rdi), %r15
    mov     40(%rdi), %rdi
    jnz     1f
    vmlaunch
    jmp     2f
1:  vmresume
2:  pop     %rdi                    /* failed: CF or ZF says how */
    mov     $1, %eax
    jmp     vm_ret
vmx_exit:
    push    %rdi
    mov     8(%rsp), %rdi
    call    save_gregs
    add     $16, %rsp               /* the guest's rdi, g */
    xor     %eax, %eax
vm_ret:
    pop     %r15
    pop     %r14
    pop     %r13
    pop     %r12
    pop     %rbx
    pop     %rbp
    ret

/* [rsp + 8] = the guest's rdi, rdi = g: stores the guest's registers (all
 * but rax for SVM, whose rax is in the VMCB; storing it is harmless). */
save_gregs:
    mov     %rax, 0(%rdi)
    mov     %rbx, 8(%rdi)
    mov     %rcx, 16(%rdi)
    mov     %rdx, 24(%rdi)
    mov     %rsi, 32(%rdi)
    mov     %rbp, 48(%rdi)
    mov     %r8, 56(%rdi)
    mov     %r9, 64(%rdi)
    mov     %r10, 72(%rdi)
    mov     %r11, 80(%rdi)
    mov     %r12, 88(%rdi)
    mov     %r13, 96(%rdi)
    mov     %r14, 104(%rdi)
    mov     %r15, 112(%rdi)
    mov     8(%rsp), %rax
    mov     %rax, 40(%rdi)
    ret

/*
 * void svm_run(struct gregs *g, uint64_t vmcb): VMRUN the guest (its rax,
 * rsp, rip, flags are in the VMCB, the rest in g) until its next #VMEXIT.
 * VMRUN takes the VMCB's physical address in rax and saves the host's
 * state in the VM_HSAVE_PA area; #VMEXIT restores it (rsp, rax included)
 * and leaves the guest's other registers in place (AMD APM vol. 2,
 * "VMRUN Instruction", "#VMEXIT").
 */
    .global svm_run
svm_run:
    push    %rbp
    push    %rbx
    push    %r12
    push    %r13
    push    %r14
    push    %r15
    push    %rdi
    mov     %rsi, %rax
    mov     8(%rdi), %rbx
    mov     16(%rdi), %rcx
    mov     24(%rdi), %rdx
    mov     32(%rdi), %rsi
    mov     48(%rdi), %rbp
    mov     56(%rdi), %r8
    mov     64(%rdi), %r9
    mov     72(%rdi), %r10
    mov     80(%rdi), %r11
    mov     88(%rdi), %r12
    mov     96(%rdi), %r13
    mov     104(%rdi), %r14
    mov     112(%rdi), %r15
    mov     40(%rdi), %rdi
    vmrun
    push    %rdi
    mov     8(%rsp), %rdi
    call    save_gregs
    add     $16, %rsp
    jmp     vm_ret

/* ---- the host's page tables: identity, 4 GiB in 1 GiB pages --------- */
    .data
    .balign 4096
    .global host_pml5
host_pml5:
    .quad   host_pml4 + 3
    .fill   511, 8, 0
host_pml4:
    .quad   host_pdpt + 3
    .fill   511, 8, 0
host_pdpt:
    .quad   0x00000083, 0x40000083, 0x80000083, 0xc0000083
    .fill   508, 8, 0

/* ---- 16- and 32-bit, in the ROM's last 64 KiB (CS.base 0xffff0000) ---- */
    .section .boot, "ax"
rom_seg:
    .code16
boot16:
    cli
    cld
    inb     $0x92, %al              /* fast A20 on */
    orb     $2, %al
    andb    $0xfe, %al
    outb    %al, $0x92
    lgdtl   %cs:(gdt_desc - rom_seg)
    movl    %cr0, %eax
    orl     $1, %eax
    movl    %eax, %cr0
    ljmpl   $0x08, $boot32

    .code32
boot32:
    mov     $0x10, %ax
    mov     %ax, %ds
    mov     %ax, %es
    mov     %ax, %ss
    mov     $__rom_image, %esi      /* the image: ROM -> RAM */
    mov     $__image_start, %edi
    mov     $__image_copy_end, %ecx
    sub     %edi, %ecx
    shr     $2, %ecx
    rep movsl
    mov     $__bss_start, %edi      /* .bss and the stack: zero */
    mov     $__image_end, %ecx
    sub     %edi, %ecx
    shr     $2, %ecx
    xor     %eax, %eax
    rep stosl
    xor     %ecx, %ecx              /* LA57 only where CPUID.7:ECX[16] says so */
    cmpl    $MODE_NPT5, ROM_CONFIG
    jne     1f
    mov     $7, %eax
    cpuid
1:  mov     %cr4, %eax
    or      $0x20, %eax             /* PAE */
    mov     $host_pml4, %ebx
    test    $0x10000, %ecx
    jz      1f
    or      $0x1000, %eax           /* LA57: NPT's levels follow the host's */
    mov     $host_pml5, %ebx
1:  mov     %eax, %cr4
    mov     %ebx, %cr3
    mov     $0xc0000080, %ecx       /* EFER: LME | NXE */
    rdmsr
    or      $0x900, %eax
    wrmsr
    mov     %cr0, %eax
    and     $0x9fffffff, %eax       /* caches on: CD = NW = 0 */
    or      $0x80000021, %eax       /* PG | NE | PE */
    mov     %eax, %cr0
    ljmpl   $0x18, $boot64

    .balign 16
    .global host_gdt
host_gdt:
    .quad   0
    .quad   0x00cf9a000000ffff      /* 0x08: 32-bit code */
    .quad   0x00cf92000000ffff      /* 0x10: data */
    .quad   0x00af9a000000ffff      /* 0x18: 64-bit code */
    .quad   0, 0                    /* 0x20: the TR selector VMX's host state needs */
host_gdt_end:
gdt_desc:
    .word   host_gdt_end - host_gdt - 1
    .long   host_gdt

/* The mode word (patched into the ROM file by run-bochs.sh), then the
 * reset vector. */
    .section .romcfg, "a"
    .ascii  "AXCF"
    .long   0
    .section .reset, "ax"
    .code16
    jmp     boot16
    .section .note.GNU-stack,"",@progbits
