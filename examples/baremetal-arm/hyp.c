/*
 * hyp.c - the Arm half of the bare-metal hypervisor: EL2 on QEMU's virt
 * machine. Loads the libaxalloc ARM_S2 table into VTTBR_EL2 / VTCR_EL2,
 * runs the guest at EL1 with its MMU off, and turns stage-2 aborts into
 * axalloc_handle_fault calls (Arm ARM D1 "exception syndrome", ESR_EL2 EC
 * 0x20 instruction abort / 0x24 data abort from a lower EL; HPFAR_EL2
 * holds the faulting IPA's page).
 *
 * gpa_bits comes from a word QEMU's generic loader puts at CONFIG_ADDR
 * (-device loader,addr=0x407ff000,data=40,data-len=4), so one image runs
 * every configuration.
 */
#include <stdint.h>
#include "axalloc.h"
#include "console.h"
#include "hv.h"
#include "layout.h"
#include "pool.h"

#define UART        0x09000000ul     /* PL011 */
#define CONFIG_ADDR 0x407ff000ul
#define POOL_BASE   0x40800000ul     /* 16 MiB of frames for the library */
#define RAM_BASE    0x40000000ul     /* 1 GiB aligned: mapped whole into the guest */

#define SYSREG_R(r) ({ uint64_t v_; __asm__ volatile("mrs %0, " #r : "=r"(v_)); v_; })
#define SYSREG_W(r, v) __asm__ volatile("msr " #r ", %0" : : "r"((uint64_t)(v)))

struct vcpu {
    uint64_t x[31];
    uint64_t elr, spsr, host_sp;
};
_Static_assert(__builtin_offsetof(struct vcpu, elr) == 248, "start.S offsets");
_Static_assert(__builtin_offsetof(struct vcpu, host_sp) == 264, "start.S offsets");

void guest_run(struct vcpu *v);
void hyp_main(void);
void hyp_bug(void);

const uint64_t arch_uart_hpa = UART;

void arch_putc(char c)
{
    volatile uint32_t *u = (volatile uint32_t *)UART;
    while (u[0x18 / 4] & (1u << 5))   /* FR.TXFF */
        ;
    u[0] = (uint8_t)c;
}

/* Semihosting SYS_EXIT (0x18) with ADP_Stopped_ApplicationExit and the exit
 * code: QEMU exits with that status (-semihosting-config enable=on). */
void arch_exit(int code)
{
    static uint64_t block[2];
    block[0] = 0x20026;
    block[1] = (uint64_t)code;
    register uint64_t x0 __asm__("x0") = 0x18;
    register uint64_t x1 __asm__("x1") = (uint64_t)block;
    __asm__ volatile("hlt #0xf000" : : "r"(x0), "r"(x1) : "memory");
    for (;;)
        __asm__ volatile("wfi");
}

/* flush_tlb: stage-2 entries by IPA (TLBI IPAS2E1IS takes IPA[55:12]),
 * then the stage-1+2 combined entries of the VMID (TLBI VMALLE1IS), as the
 * Arm ARM requires after changing a stage-2 entry ("TLB maintenance
 * requirements ... stage 2"). A large range (the destroy's whole window)
 * uses TLBI VMALLS12E1IS instead. VMID 0, the one in VTTBR_EL2. */
void arch_flush_tlb(uint64_t gpa, uint64_t size)
{
    __asm__ volatile("dsb ishst" ::: "memory");   /* the entries' stores first */
    if (size <= 64 * PAGE) {
        for (uint64_t a = gpa; a < gpa + size; a += PAGE)
            __asm__ volatile("tlbi ipas2e1is, %0" : : "r"(a >> 12) : "memory");
        __asm__ volatile("dsb ish\n tlbi vmalle1is" ::: "memory");
    } else {
        __asm__ volatile("tlbi vmalls12e1is" ::: "memory");
    }
    __asm__ volatile("dsb ish\n isb" ::: "memory");
}

/* Code the host wrote for a guest that runs with its caches off: clean the
 * data cache to the point of coherency and invalidate the instruction cache
 * (DC CVAC / IC IVAU by the identity-mapped address). */
void arch_sync_code(uint64_t hpa, uint64_t size)
{
    uint64_t ctr = SYSREG_R(ctr_el0);
    uint64_t dline = 4ull << ((ctr >> 16) & 15), iline = 4ull << (ctr & 15);
    for (uint64_t a = hpa; a < hpa + size; a += dline)
        __asm__ volatile("dc cvac, %0" : : "r"(a) : "memory");
    __asm__ volatile("dsb ish" ::: "memory");
    for (uint64_t a = hpa; a < hpa + size; a += iline)
        __asm__ volatile("ic ivau, %0" : : "r"(a) : "memory");
    __asm__ volatile("dsb ish\n isb" ::: "memory");
}

void hyp_bug(void)
{
    put("hv: exception at EL2: ESR ");
    puthex(SYSREG_R(esr_el2));
    put(" ELR ");
    puthex(SYSREG_R(elr_el2));
    put(" FAR ");
    puthex(SYSREG_R(far_el2));
    put("\n");
    hv_fail("exception at EL2", SYSREG_R(esr_el2));
}

static char title[] = "arm_s2 ipa??";

void hyp_main(void)
{
    uint32_t bits = *(volatile uint32_t *)CONFIG_ADDR;
    /* The second word, 1: flush_tlb does nothing, and the guest must notice. */
    pool_skip_flush = *(volatile uint32_t *)(CONFIG_ADDR + 4) == 1;
    put("\nhv: Arm EL2 stub, libaxalloc ");
    puthex(axalloc_version());
    put("\n");
    if (bits < 32 || bits > 48)
        hv_fail("no gpa_bits at 0x407ff000 (-device loader,addr=0x407ff000,data=N,data-len=4)", bits);
    title[10] = (char)('0' + bits / 10);
    title[11] = (char)('0' + bits % 10);

    /* The IPA space must fit the CPU's physical address size: the guest
     * runs with its MMU off, so its addresses are IPAs as they are. */
    static const uint8_t pa_bits[] = {32, 36, 40, 42, 44, 48, 52};
    uint64_t parange = SYSREG_R(id_aa64mmfr0_el1) & 15;
    uint64_t ps = parange > 5 ? 5 : parange;   /* 48 bits at most: no 52-bit descriptors */
    if (pa_bits[ps] < bits)
        hv_fail("the CPU's PARange is below gpa_bits (use -cpu max)", pa_bits[ps]);

    uint64_t top = 1ull << bits;
    axalloc_hw_t hw;
    hv_init(AXALLOC_FORMAT_ARM_S2, bits, top, POOL_BASE, RAM_BASE, title, &hw);

    /* VTCR_EL2 from the library (T0SZ, SL0, IRGN0, ORGN0, SH0, TG0); the
     * host adds PS (the CPU's output size) and RES1 bit 31; VS = 0 (8-bit
     * VMID), no hardware AF/dirty management. */
    /* The root Linux KVM would pick: fewest levels, up to 16 concatenated
     * root tables (issue 10: 40 bits -> 2 pages, 42 -> 8, 44 and 48 -> 1). */
    uint32_t levels = (bits - 8) / 9;
    uint32_t root_pages = 1u << (bits - 12 - 9 * (levels - 1) > 9 ? bits - 12 - 9 * (levels - 1) - 9 : 0);
    hv_check(hw.levels == levels && hw.root_pages == root_pages,
             "fewest levels, concatenated root pages as Linux KVM");
    /* SL0 (bits 7:6, 4 KiB granule): 0 = start at level 2, 1 = level 1, 2 = level 0. */
    hv_check(((hw.vtcr >> 6) & 3) == levels - 2, "VTCR_EL2.SL0 names the start level");
    uint64_t root_shift = 12 + 9 * (levels - 1);
    hv_check(((top - RAM_OFF) >> root_shift) / 512 == root_pages - 1,
             "the guest's RAM lies in the last root page");
    hv_check((hw.vtcr & 63) == 64 - bits, "VTCR_EL2.T0SZ = 64 - gpa_bits");
    hv_check(((hw.vtcr >> 14) & 3) == 0, "VTCR_EL2.TG0 = 4 KiB");
    hv_check(hw.root_pointer == hw.root, "VTTBR_EL2 = BADDR (the root), VMID 0, CnP 0");
    SYSREG_W(vtcr_el2, hw.vtcr | ps << 16 | 1ull << 31);
    SYSREG_W(vttbr_el2, hw.root_pointer);
    /* HCR_EL2: VM (stage 2 on), RW (EL1 is AArch64). */
    SYSREG_W(hcr_el2, 1ull << 0 | 1ull << 31);
    __asm__ volatile("isb\n tlbi vmalls12e1is\n dsb ish\n isb" ::: "memory");
    /* SCTLR_EL1: RES1 bits only -- MMU, data and instruction caches off. */
    SYSREG_W(sctlr_el1, 0x30d00800);

    struct vcpu v = {0};
    v.x[0] = top;
    v.elr = hv_guest_entry();
    v.spsr = 0x3c5;                  /* EL1h, D/A/I/F masked */
    put("hv: entering the guest at ");
    puthex(v.elr);
    put("\n");
    for (;;) {
        guest_run(&v);
        uint64_t esr = SYSREG_R(esr_el2), ec = esr >> 26;
        if (ec == 0x16) {            /* HVC from AArch64: imm16 = the call */
            v.x[0] = hv_hypercall(esr & 0xffff, v.x[0], v.x[1]);
            continue;                /* ELR already points past the HVC */
        }
        if (ec != 0x24 && ec != 0x20) {
            put("hv: unexpected guest exit: ESR ");
            puthex(esr);
            put(" ELR ");
            puthex(v.elr);
            put("\n");
            hv_fail("unexpected guest exit", esr);
        }
        /* A stage-2 abort: HPFAR_EL2.FIPA (bits 43:4) = IPA[51:12]; the
         * page offset comes from FAR_EL2. Stage-1 faults cannot happen
         * (MMU off), and an abort on a stage-1 walk (S1PTW) neither. */
        uint64_t hpfar = SYSREG_R(hpfar_el2), far = SYSREG_R(far_el2);
        uint64_t ipa = ((hpfar >> 4) & ((1ull << 40) - 1)) << 12 | (far & 0xfff);
        uint64_t fsc = esr & 0x3f;
        if ((fsc & 0x3c) != 0x04 && (fsc & 0x3c) != 0x0c)   /* translation / permission */
            hv_fail("abort that is not a stage-2 translation or permission fault, ESR", esr);
        uint32_t access = ec == 0x20 ? AXALLOC_EXEC
                        : esr & (1u << 6) ? AXALLOC_WRITE : AXALLOC_READ;   /* WnR */
        switch (hv_fault(ipa, access)) {
        case HV_RESUME:
            /* The new entry must be visible to the walker before the guest
             * retries (invalid entries are not cached in TLBs on Arm, so no
             * TLBI is needed here). */
            __asm__ volatile("dsb ishst\n isb" ::: "memory");
            break;
        case HV_CONSOLE: {
            /* ISV (bit 24) set for a single-register store: SRT (20:16) names it. */
            if (!(esr & (1u << 24)))
                hv_fail("console store without a valid syndrome (ISV = 0), ESR", esr);
            uint64_t srt = (esr >> 16) & 31;
            hv_console(ipa, srt == 31 ? 0 : v.x[srt]);
            v.elr += 4;
            break;
        }
        case HV_DENIED:
            if (ec == 0x24)
                v.elr += 4;          /* skip the refused store */
            else
                v.elr = v.x[30];     /* a refused fetch: return to the caller */
            break;
        }
    }
}
