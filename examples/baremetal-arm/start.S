/*
 * start.S - the Arm stub's boot code, EL2 vectors and guest entry/exit.
 *
 * QEMU (-M virt,virtualization=on, no EL3) starts the CPU at EL2 at _start.
 * Before any C runs, EL2's own stage-1 MMU is turned on with an identity
 * map (0-1 GiB Device-nGnRnE for the UART, 1-2 GiB Normal write-back for
 * RAM): the library's Rust code makes misaligned accesses, which fault on
 * the Device memory an MMU-off EL2 would use.
 */
    .section .text.boot, "ax"
    .global _start
_start:
    mrs     x0, CurrentEL
    cmp     x0, #(2 << 2)
    b.ne    .                       /* not at EL2: QEMU without virtualization=on */

    ldr     x0, =__stack_top
    mov     sp, x0
    ldr     x0, =__bss_start         /* zero .bss (16-byte aligned both ends) */
    ldr     x1, =__bss_end
1:  cmp     x0, x1
    b.hs    2f
    stp     xzr, xzr, [x0], #16
    b       1b
2:
    /* EL2 stage-1 table: TCR_EL2.T0SZ = 32 (4 GiB), 4 KiB granule, so
     * the walk starts at level 1 with four 1 GiB block entries. */
    ldr     x0, =__ttb
    ldr     x1, =0x0000000000000401  /* block 0 GiB: AF, AttrIndx 0 (Device) */
    str     x1, [x0, #0]
    ldr     x1, =0x0000000040000705  /* block 1 GiB: AF, SH inner, AttrIndx 1 (Normal WB) */
    str     x1, [x0, #8]
    str     xzr, [x0, #16]
    str     xzr, [x0, #24]
    msr     ttbr0_el2, x0
    ldr     x1, =0x000000000000ff00  /* MAIR: attr0 Device-nGnRnE, attr1 Normal WB RA/WA */
    msr     mair_el2, x1
    /* TCR_EL2: RES1 bits 31 and 23, PS = 2 (40 bits), TG0 = 4 KiB,
     * SH0 = inner, ORGN0 = IRGN0 = WB, T0SZ = 32. */
    ldr     x1, =(1 << 31) | (1 << 23) | (2 << 16) | (3 << 12) | (1 << 10) | (1 << 8) | 32
    msr     tcr_el2, x1
    dsb     ish
    tlbi    alle2
    dsb     ish
    isb
    /* SCTLR_EL2: RES1 bits | I (12) | C (2) | M (0). */
    ldr     x1, =0x30c50830 | (1 << 12) | (1 << 2) | (1 << 0)
    msr     sctlr_el2, x1
    isb

    ldr     x0, =el2_vectors
    msr     vbar_el2, x0
    isb
    bl      hyp_main
    b       .

/*
 * void guest_run(struct vcpu *v): enters the guest with v's registers and
 * returns at the guest's next exit to EL2, v updated. struct vcpu (hyp.c):
 * x[31] at 0, elr at 248, spsr at 256, host_sp at 264.
 */
    .text
    .global guest_run
guest_run:
    stp     x29, x30, [sp, #-96]!
    stp     x19, x20, [sp, #16]
    stp     x21, x22, [sp, #32]
    stp     x23, x24, [sp, #48]
    stp     x25, x26, [sp, #64]
    stp     x27, x28, [sp, #80]
    mov     x1, sp
    str     x1, [x0, #264]
    msr     tpidr_el2, x0           /* the exit path finds v here */
    ldr     x1, [x0, #248]
    msr     elr_el2, x1
    ldr     x1, [x0, #256]
    msr     spsr_el2, x1
    ldp     x2, x3, [x0, #16]
    ldp     x4, x5, [x0, #32]
    ldp     x6, x7, [x0, #48]
    ldp     x8, x9, [x0, #64]
    ldp     x10, x11, [x0, #80]
    ldp     x12, x13, [x0, #96]
    ldp     x14, x15, [x0, #112]
    ldp     x16, x17, [x0, #128]
    ldp     x18, x19, [x0, #144]
    ldp     x20, x21, [x0, #160]
    ldp     x22, x23, [x0, #176]
    ldp     x24, x25, [x0, #192]
    ldp     x26, x27, [x0, #208]
    ldp     x28, x29, [x0, #224]
    ldr     x30, [x0, #240]
    ldp     x0, x1, [x0, #0]
    eret

/* An exception from the guest (lower EL, AArch64): save its registers into
 * v, return from guest_run. SP is the host's (SP_EL2), as guest_run left it. */
guest_exit:
    stp     x0, x1, [sp, #-16]!
    mrs     x0, tpidr_el2
    stp     x2, x3, [x0, #16]
    stp     x4, x5, [x0, #32]
    stp     x6, x7, [x0, #48]
    stp     x8, x9, [x0, #64]
    stp     x10, x11, [x0, #80]
    stp     x12, x13, [x0, #96]
    stp     x14, x15, [x0, #112]
    stp     x16, x17, [x0, #128]
    stp     x18, x19, [x0, #144]
    stp     x20, x21, [x0, #160]
    stp     x22, x23, [x0, #176]
    stp     x24, x25, [x0, #192]
    stp     x26, x27, [x0, #208]
    stp     x28, x29, [x0, #224]
    str     x30, [x0, #240]
    ldp     x2, x3, [sp], #16
    stp     x2, x3, [x0, #0]
    mrs     x1, elr_el2
    str     x1, [x0, #248]
    mrs     x1, spsr_el2
    str     x1, [x0, #256]
    ldr     x1, [x0, #264]
    mov     sp, x1
    ldp     x19, x20, [sp, #16]
    ldp     x21, x22, [sp, #32]
    ldp     x23, x24, [sp, #48]
    ldp     x25, x26, [sp, #64]
    ldp     x27, x28, [sp, #80]
    ldp     x29, x30, [sp], #96
    ret

/* An exception taken at EL2 itself: a hypervisor bug. */
hyp_trap:
    ldr     x0, =__stack_top
    mov     sp, x0
    bl      hyp_bug                 /* prints ESR/ELR/FAR, exits FAIL */
    b       .

    .balign 2048
el2_vectors:
    .rept 8                         /* current EL, SP0 and SPx */
    b       hyp_trap
    .balign 128
    .endr
    .rept 4                         /* lower EL, AArch64: sync, IRQ, FIQ, SError */
    b       guest_exit
    .balign 128
    .endr
    .rept 4                         /* lower EL, AArch32: never used */
    b       hyp_trap
    .balign 128
    .endr
