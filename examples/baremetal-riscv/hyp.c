/*
 * hyp.c - the RISC-V half of the bare-metal hypervisor: HS-mode on QEMU's
 * virt machine with the H extension. Loads the libaxalloc G-stage table
 * into hgatp, runs the guest in VS-mode with vsatp = Bare, and turns guest
 * page faults into axalloc_handle_fault calls (privileged spec, "Hypervisor
 * Extension": scause 20 fetch, 21 load, 23 store/AMO; htval holds the
 * guest-physical address shifted right by 2).
 *
 * gpa_bits (41 = Sv39x4, 50 = Sv48x4, 59 = Sv57x4) comes from a word QEMU's generic
 * loader puts at CONFIG_ADDR (-device loader,addr=0x807ff000,data=41,data-len=4).
 */
#include <stdint.h>
#include "axalloc.h"
#include "console.h"
#include "hv.h"
#include "layout.h"
#include "pool.h"

#define UART        0x10000000ul     /* 16550 */
#define TEST_DEV    0x00100000ul     /* sifive_test: ends QEMU with a status */
#define CONFIG_ADDR 0x807ff000ul
#define POOL_BASE   0x80800000ul     /* 16 MiB of frames for the library */
#define RAM_BASE    0x80000000ul     /* 1 GiB aligned: mapped whole into the guest */

#define CSR_R(c) ({ uint64_t v_; __asm__ volatile("csrr %0, " #c : "=r"(v_)); v_; })
#define CSR_W(c, v) __asm__ volatile("csrw " #c ", %0" : : "r"((uint64_t)(v)))
/* H-extension CSRs by number (no assembler -march with H needed). */
#define HGATP  0x680
#define HTVAL  0x643
#define HTINST 0x64a
/* HFENCE.GVMA rs1, rs2 (rs1 = guest-physical address >> 2, x0 = all). */
#define HFENCE_GVMA(gpa_shr2) \
    __asm__ volatile(".insn r 0x73, 0, 0x31, x0, %0, x0" : : "r"(gpa_shr2) : "memory")
#define HFENCE_GVMA_ALL() __asm__ volatile(".insn r 0x73, 0, 0x31, x0, x0, x0" ::: "memory")

struct vcpu {
    uint64_t x[32];                  /* x[0] unused */
    uint64_t pc, host_sp;
};
_Static_assert(__builtin_offsetof(struct vcpu, pc) == 256, "start.S offsets");
_Static_assert(__builtin_offsetof(struct vcpu, host_sp) == 264, "start.S offsets");

void guest_run(struct vcpu *v);
void hyp_main(void);
void hyp_bug(int m);

const uint64_t arch_uart_hpa = UART;

void arch_putc(char c)
{
    volatile uint8_t *u = (volatile uint8_t *)UART;
    while (!(u[5] & 0x20))           /* LSR.THRE */
        ;
    u[0] = (uint8_t)c;
}

void arch_exit(int code)
{
    volatile uint32_t *t = (volatile uint32_t *)TEST_DEV;
    *t = code ? (uint32_t)code << 16 | 0x3333 : 0x5555;   /* FAIL(code) / PASS */
    for (;;)
        __asm__ volatile("wfi");
}

/* flush_tlb: HFENCE.GVMA per page (it drops G-stage and combined VS+G
 * entries of that guest-physical page, for every VMID); a large range (the
 * destroy's whole window) uses the global form. */
void arch_flush_tlb(uint64_t gpa, uint64_t size)
{
    if (size <= 64 * PAGE) {
        for (uint64_t a = gpa; a < gpa + size; a += PAGE)
            HFENCE_GVMA(a >> 2);
    } else {
        HFENCE_GVMA_ALL();
    }
}

/* Code the host wrote, executed by the guest on this hart: FENCE.I. */
void arch_sync_code(uint64_t hpa, uint64_t size)
{
    (void)hpa;
    (void)size;
    __asm__ volatile("fence.i" ::: "memory");
}

void hyp_bug(int m)
{
    if (m) {
        put("hv: trap to M-mode: mcause ");
        puthex(CSR_R(mcause));
        put(" mepc ");
        puthex(CSR_R(mepc));
        put(" mtval ");
        puthex(CSR_R(mtval));
    } else {
        put("hv: trap in HS-mode: scause ");
        puthex(CSR_R(scause));
        put(" sepc ");
        puthex(CSR_R(sepc));
        put(" stval ");
        puthex(CSR_R(stval));
    }
    put("\n");
    hv_fail("hypervisor trap", 0);
}

/* The instruction at the guest's pc (a GPA: vsatp is Bare), read through
 * the library; its length from the low bits (compressed = 2 bytes). */
static uint32_t guest_insn(uint64_t pc, uint64_t *len)
{
    uint16_t h[2] = {0, 0};
    if (hv_read_guest(pc, &h[0], 2))
        hv_fail("cannot read the guest's instruction at", pc);
    *len = (h[0] & 3) == 3 ? 4 : 2;
    if (*len == 4 && hv_read_guest(pc + 2, &h[1], 2))
        hv_fail("cannot read the guest's instruction at", pc + 2);
    return (uint32_t)h[1] << 16 | h[0];
}

static char title[] = "riscv_sv??x4";

void hyp_main(void)
{
    uint32_t bits = *(volatile uint32_t *)CONFIG_ADDR;
    /* The second word, 1: flush_tlb does nothing, and the guest must notice. */
    pool_skip_flush = *(volatile uint32_t *)(CONFIG_ADDR + 4) == 1;
    put("\nhv: RISC-V HS-mode stub, libaxalloc ");
    puthex(axalloc_version());
    put("\n");
    uint32_t format, levels, mode;
    if (bits == 41) {
        format = AXALLOC_FORMAT_RISCV_SV39X4, levels = 3, mode = 8;
        title[8] = '3', title[9] = '9';
    } else if (bits == 50) {
        format = AXALLOC_FORMAT_RISCV_SV48X4, levels = 4, mode = 9;
        title[8] = '4', title[9] = '8';
    } else if (bits == 59) {
        format = AXALLOC_FORMAT_RISCV_SV57X4, levels = 5, mode = 10;
        title[8] = '5', title[9] = '7';
    } else {
        hv_fail("no gpa_bits (41, 50 or 59) at 0x807ff000 (-device loader,addr=0x807ff000,data=N,data-len=4)", bits);
    }
    /* QEMU 7.2 treats G-stage addresses as sign-extended at bit 40 / 49 /
     * 58 (fixed in 8.1): the guest's top is the lower half's end. */
    uint64_t top = 1ull << (bits - 1);
    axalloc_hw_t hw;
    hv_init(format, bits, top, POOL_BASE, RAM_BASE, title, &hw);

    hv_check(hw.levels == levels && hw.root_pages == 4, "x4 root: 4 pages, the mode's levels");
    hv_check(hw.root_pointer == ((uint64_t)mode << 60 | hw.root >> 12),
             "hgatp = MODE | VMID 0 | PPN of the root");
    hv_check(hw.vtcr == 0, "vtcr is 0 for RISC-V");
    CSR_W(0x680, hw.root_pointer);   /* hgatp */
    hv_check(CSR_R(0x680) == hw.root_pointer, "the hart accepts hgatp (mode supported)");
    HFENCE_GVMA_ALL();
    CSR_W(vsatp, 0);                 /* the guest's own translation: Bare */
    CSR_W(0x602, 0);                 /* hedeleg: every guest trap comes here */
    CSR_W(0x603, 0);                 /* hideleg */

    struct vcpu v = {0};
    v.x[10] = top;                   /* a0 */
    v.pc = hv_guest_entry();
    put("hv: entering the guest at ");
    puthex(v.pc);
    put("\n");
    for (;;) {
        guest_run(&v);
        uint64_t cause = CSR_R(scause);
        if (cause == 10) {           /* ecall from VS-mode: a7 = the call */
            v.x[10] = hv_hypercall(v.x[17], v.x[10], v.x[11]);
            v.pc += 4;
            continue;
        }
        if (cause != 20 && cause != 21 && cause != 23) {
            put("hv: unexpected guest trap: scause ");
            puthex(cause);
            put(" sepc ");
            puthex(v.pc);
            put(" stval ");
            puthex(CSR_R(stval));
            put("\n");
            hv_fail("unexpected guest trap", cause);
        }
        /* htval = GPA >> 2; the low 2 bits come from stval (the guest
         * virtual address, equal to the GPA with vsatp Bare). */
        uint64_t gpa = CSR_R(0x643) << 2 | (CSR_R(stval) & 3);
        uint32_t access = cause == 20 ? AXALLOC_EXEC : cause == 21 ? AXALLOC_READ : AXALLOC_WRITE;
        uint64_t len;
        uint32_t insn;
        switch (hv_fault(gpa, access)) {
        case HV_RESUME:
            /* Without Svvptc a hart may keep a cached invalid entry: fence
             * this page locally, or the guest could fault forever. */
            HFENCE_GVMA(gpa >> 2);
            break;
        case HV_CONSOLE:
            insn = guest_insn(v.pc, &len);
            if (len != 4 || (insn & 0x7f) != 0x23)
                hv_fail("console access is not an uncompressed store, insn", insn);
            hv_console(gpa, v.x[(insn >> 20) & 31]);   /* rs2 (x0 reads as 0) */
            v.pc += 4;
            break;
        case HV_DENIED:
            if (cause == 20) {
                v.pc = v.x[1];       /* a refused fetch: return to ra */
            } else {
                guest_insn(v.pc, &len);
                v.pc += len;         /* skip the refused store */
            }
            break;
        }
    }
}
