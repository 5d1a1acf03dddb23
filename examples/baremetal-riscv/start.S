/*
 * start.S - the RISC-V stub's boot code and guest entry/exit.
 *
 * QEMU (-M virt -cpu rv64,h=true -bios none) starts every hart in M-mode at
 * 0x80000000. Hart 0 opens physical memory to S-mode (one PMP entry),
 * delegates the guest's traps to HS-mode and drops to HS-mode (mret with
 * MPP = S, MPV = 0), where the hypervisor runs with satp = Bare.
 */
#define CSR_HGATP 0x680
    .option norvc
    .section .text.boot, "ax"
    .global _start
_start:
    csrr    t0, mhartid
    bnez    t0, park
    la      sp, __stack_top
    la      t0, __bss_start
    la      t1, __bss_end
1:  bgeu    t0, t1, 2f
    sd      zero, 0(t0)
    addi    t0, t0, 8
    j       1b
2:
    li      t0, -1                  /* PMP entry 0: all of memory, NAPOT, RWX */
    csrw    pmpaddr0, t0
    li      t0, 0x1f
    csrw    pmpcfg0, t0
    /* To HS-mode: ecall from VS (10), guest page faults (20 fetch, 21 load,
     * 23 store), virtual instruction (22). */
    li      t0, (1 << 10) | (1 << 20) | (1 << 21) | (1 << 22) | (1 << 23)
    csrw    medeleg, t0
    csrw    mideleg, zero
    la      t0, m_trap
    csrw    mtvec, t0
    li      t0, 3 << 11             /* mstatus.MPP := S (01), MPV (bit 39) = 0 */
    csrc    mstatus, t0
    li      t0, 1 << 11
    csrs    mstatus, t0
    la      t0, hs_entry
    csrw    mepc, t0
    mret
hs_entry:
    la      t0, hs_trap
    csrw    stvec, t0
    call    hyp_main
park:
    wfi
    j       park

/* A trap to M-mode or one taken in HS-mode itself: a hypervisor bug. */
    .balign 4
m_trap:
    la      sp, __stack_top
    li      a0, 1
    call    hyp_bug
    .balign 4
hs_trap:
    la      sp, __stack_top
    li      a0, 0
    call    hyp_bug

/*
 * void guest_run(struct vcpu *v): enters the guest (VS-mode) with v's
 * registers and returns at its next trap to HS-mode, v updated.
 * struct vcpu (hyp.c): x[32] at 0 (x[0] unused), pc at 256, host_sp at 264.
 */
    .text
    .global guest_run
guest_run:
    addi    sp, sp, -112
    sd      ra, 0(sp)
    sd      s0, 8(sp)
    sd      s1, 16(sp)
    sd      s2, 24(sp)
    sd      s3, 32(sp)
    sd      s4, 40(sp)
    sd      s5, 48(sp)
    sd      s6, 56(sp)
    sd      s7, 64(sp)
    sd      s8, 72(sp)
    sd      s9, 80(sp)
    sd      s10, 88(sp)
    sd      s11, 96(sp)
    sd      sp, 264(a0)
    csrw    sscratch, a0            /* the exit path finds v here */
    la      t0, guest_exit
    csrw    stvec, t0
    ld      t0, 256(a0)
    csrw    sepc, t0
    li      t0, 1 << 7              /* hstatus.SPV: sret enters V = 1 */
    csrs    hstatus, t0
    li      t0, 1 << 8              /* sstatus.SPP: ... at S level, i.e. VS-mode */
    csrs    sstatus, t0
    .irp n, 1,2,3,4,5,6,7,8,9,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    ld      x\n, \n*8(a0)
    .endr
    ld      a0, 10*8(a0)
    sret

/* A trap from the guest: save its registers into v, return from guest_run. */
    .balign 4
guest_exit:
    csrrw   a0, sscratch, a0        /* a0 = v, sscratch = the guest's a0 */
    .irp n, 1,2,3,4,5,6,7,8,9,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    sd      x\n, \n*8(a0)
    .endr
    csrr    t0, sscratch
    sd      t0, 10*8(a0)
    csrr    t0, sepc
    sd      t0, 256(a0)
    la      t0, hs_trap             /* traps in HS-mode are bugs again */
    csrw    stvec, t0
    ld      sp, 264(a0)
    ld      ra, 0(sp)
    ld      s0, 8(sp)
    ld      s1, 16(sp)
    ld      s2, 24(sp)
    ld      s3, 32(sp)
    ld      s4, 40(sp)
    ld      s5, 48(sp)
    ld      s6, 56(sp)
    ld      s7, 64(sp)
    ld      s8, 72(sp)
    ld      s9, 80(sp)
    ld      s10, 88(sp)
    ld      s11, 96(sp)
    addi    sp, sp, 112
    ret
