/*
 * svm.c - AMD SVM with nested paging (Bochs `cpu: model=ryzen`): EFER.SVME,
 * one VMCB with NP_ENABLE and nCR3 = axalloc_hw_t.root_pointer, a 64-bit
 * guest, and #NPF exits (exit code 0x400) resolved through
 * axalloc_handle_fault with the access from EXITINFO1 (bit 4 I/D -> EXEC,
 * else bit 1 W -> WRITE, else READ; the GPA is EXITINFO2).
 *
 * Non-executable leaves: NPT's NX bit (63) is reserved unless EFER.NXE is
 * set -- in the host's EFER (start.S), which the nested walk uses, and in
 * the guest's (below). Without it, the first walk through an NX leaf is a
 * #NPF with the RSV bit, not an execute fault.
 *
 * Manual references (AMD APM vol. 2, "Secure Virtual Machine"): 15.5
 * "VMRUN Instruction" (15.5.1: the consistency checks), 15.6 "#VMEXIT",
 * 15.16 "TLB Control" (ASIDs, TLB_CONTROL), 15.25 "Nested Paging" (15.25.6
 * "Nested versus Guest Page Faults, Fault Ordering": EXITINFO1/2), 15.30.4
 * "VM_HSAVE_PA MSR"; Appendix B "Layout of VMCB", C "SVM Intercept Exit
 * Codes". Section numbers of the 3.3x revisions.
 */
#include <stdint.h>
#include "axalloc.h"
#include "console.h"
#include "hv.h"
#include "layout.h"
#include "pool.h"
#include "x86.h"

/* VMCB offsets (APM vol. 2, Appendix B). */
#define C_INTERCEPT_EXC 0x008
#define C_INTERCEPT1    0x00c
#define C_INTERCEPT2    0x010
#define C_IOPM_BASE     0x040
#define C_MSRPM_BASE    0x048
#define C_ASID          0x058
#define C_TLB_CONTROL   0x05c
#define C_EXITCODE      0x070
#define C_EXITINFO1     0x078
#define C_EXITINFO2     0x080
#define C_NP_ENABLE     0x090
#define C_NCR3          0x0b0
#define C_CLEAN         0x0c0
#define S_ES            0x400          /* ES, CS, SS, DS by 16: selector, attrib, limit, base */
#define S_GDTR          0x460
#define S_IDTR          0x480
#define S_CPL           0x4cb
#define S_EFER          0x4d0
#define S_CR4           0x548
#define S_CR3           0x550
#define S_CR0           0x558
#define S_DR7           0x560
#define S_DR6           0x568
#define S_RFLAGS        0x570
#define S_RIP           0x578
#define S_RSP           0x5d8
#define S_RAX           0x5f8
#define S_GPAT          0x668

#define MSR_VM_CR      0xc0010114u
#define MSR_VM_HSAVE_PA 0xc0010117u

#define EXIT_UD   (0x40 + 6)
#define EXIT_NPF  0x400

static uint8_t vmcb[4096] __attribute__((aligned(4096)));
static uint8_t hsave[4096] __attribute__((aligned(4096)));
static uint8_t iopm[3 * 4096] __attribute__((aligned(4096)));
static uint8_t msrpm[2 * 4096] __attribute__((aligned(4096)));
static uint8_t flush_asid_ok;

#define V8(o)  (*(volatile uint8_t *)(vmcb + (o)))
#define V16(o) (*(volatile uint16_t *)(vmcb + (o)))
#define V32(o) (*(volatile uint32_t *)(vmcb + (o)))
#define V64(o) (*(volatile uint64_t *)(vmcb + (o)))

/* flush_tlb: the guest's translations go at the next VMRUN -- TLB_CONTROL
 * 3 flushes this guest's ASID (FlushByAsid), 1 everything (APM vol. 2,
 * 15.16.1). The hooks run between exits on this one vCPU, so "before the
 * guest runs again" is "at the next VMRUN". */
static void svm_flush_tlb(uint64_t gpa, uint64_t size)
{
    (void)gpa;
    (void)size;
    V8(C_TLB_CONTROL) = flush_asid_ok ? 3 : 1;
}

static void seg(int i, uint16_t sel, uint16_t attr)
{
    V16(S_ES + 16 * i) = sel;
    V16(S_ES + 16 * i + 2) = attr;
    V32(S_ES + 16 * i + 4) = 0xffffffff;
    V64(S_ES + 16 * i + 8) = 0;
}

void svm_main(uint32_t mode, uint32_t gpa_bits)
{
    static char title[] = "x86_npt_4level";
    uint32_t levels = mode == MODE_NPT5 ? 5 : 4;
    title[8] = (char)('0' + levels);
    uint32_t r[4];
    cpuid(0x80000001, 0, r);
    if (!(r[2] & (1u << 2)))
        hv_fail("no SVM (CPUID 0x80000001:ECX.SVM); Bochs: cpu: model=ryzen", r[2]);
    cpuid(0x8000000a, 0, r);
    put("hv: CPUID 0x8000000a EDX ");
    puthex(r[3]);
    put("\n");
    hv_check(r[3] & 1, "SVM has nested paging (CPUID 0x8000000a:EDX.NP)");
    flush_asid_ok = (r[3] >> 6) & 1;
    x86_flush_tlb = svm_flush_tlb;
    if (levels == 5) {
        /* The nested table has as many levels as the host's paging:
         * start.S turned CR4.LA57 on if the CPU let it. */
        cpuid(7, 0, r);
        if (!(r[2] & (1u << 16)) || !(READ_CR(4) & (1u << 12))) {
            put("hv: SKIP: this CPU has no LA57 (CPUID.7:ECX bit 16), so no 5-level nested paging\n");
            arch_exit(77);
        }
    }
    hv_check(!(rdmsr(MSR_VM_CR) & (1u << 4)), "SVM not disabled (VM_CR.SVMDIS = 0)");

    axalloc_hw_t hw;
    x86_init(AXALLOC_FORMAT_X86_NPT, gpa_bits, title, &hw);
    hv_check(hw.levels == levels && hw.root_pages == 1, "one root page, the format's levels");
    hv_check(hw.root_pointer == hw.root, "nCR3 = root");

    wrmsr(MSR_EFER, rdmsr(MSR_EFER) | EFER_SVME);
    wrmsr(MSR_VM_HSAVE_PA, (uint64_t)(uintptr_t)hsave);

    /* Control area: intercept every exception (a guest exception is a
     * bug, and VMCALL's #UD is the hypercall), HLT and shutdown, VMRUN
     * (required) and VMMCALL; ASID 1; nested paging. */
    V32(C_INTERCEPT_EXC) = 0xffffffff;
    V32(C_INTERCEPT1) = 1u << 24 | 1u << 31;
    V32(C_INTERCEPT2) = 1u << 0 | 1u << 1;
    V64(C_IOPM_BASE) = (uint64_t)(uintptr_t)iopm;      /* zero: no port intercepted */
    V64(C_MSRPM_BASE) = (uint64_t)(uintptr_t)msrpm;
    V32(C_ASID) = 1;
    V8(C_TLB_CONTROL) = 1;
    V64(C_NP_ENABLE) = 1;
    V64(C_NCR3) = hw.root_pointer;
    V32(C_CLEAN) = 0;

    /* Guest state: 64-bit mode with the page tables hyp.c wrote. Segment
     * attributes: the descriptor's type/S/DPL/P in 7:0, AVL/L/D/G in 11:8. */
    seg(0, 0x10, 0xc93);                    /* ES */
    seg(1, 0x08, 0x29b);                    /* CS: L = 1 */
    seg(2, 0x10, 0xc93);                    /* SS */
    seg(3, 0x10, 0xc93);                    /* DS */
    V8(S_CPL) = 0;
    V64(S_EFER) = EFER_LME | EFER_LMA | EFER_NXE | EFER_SVME;
    V64(S_CR0) = 0x80000031;                /* PG | NE | ET | PE */
    V64(S_CR3) = GUEST_PT_GPA;
    V64(S_CR4) = 0x20;                      /* PAE */
    V64(S_DR7) = 0x400;
    V64(S_DR6) = 0xffff0ff0;
    V64(S_RFLAGS) = 2;
    V64(S_GPAT) = 0x0007040600070406ull;    /* the power-on PAT */
    V64(S_RIP) = hv_guest_entry();
    V64(S_RSP) = 0;
    V64(S_RAX) = 0;

    struct gregs g = {0};
    g.rdi = 0;                              /* TOP, as the guest sees it (hyp.c) */
    put("hv: entering the guest at ");
    puthex(hv_guest_entry());
    put("\n");

    uint64_t npf_exits = 0;
    for (;;) {
        svm_run(&g, (uint64_t)(uintptr_t)vmcb);
        V8(C_TLB_CONTROL) = 0;
        g.rax = V64(S_RAX);
        uint64_t code = V64(C_EXITCODE), info1 = V64(C_EXITINFO1), info2 = V64(C_EXITINFO2);
        struct exit_ctx x = { &g, V64(S_RIP), V64(S_RSP) };
        if (code == EXIT_NPF) {
            /* Bit 32: the fault was on the final guest-physical address,
             * not on a guest page-table access (bit 33); bit 3 (RSV) would
             * mean a malformed nested entry. */
            if (!(info1 & (1ull << 32)) || (info1 & (1ull << 33)) || (info1 & 8)) {
                put("hv: EXITINFO1 ");
                puthex(info1);
                put("\n");
                hv_fail("#NPF not on a final guest-physical access, GPA", info2);
            }
            npf_exits++;
            uint32_t access = info1 & 0x10 ? AXALLOC_EXEC : info1 & 2 ? AXALLOC_WRITE : AXALLOC_READ;
            x86_fault(&x, info2, access, (int)(info1 & 1), -1);
        } else if (code == EXIT_UD) {
            uint8_t b[3] = {0, 0, 0};
            if (hv_read_guest(gva_to_gpa(x.rip), b, 3) || b[0] != 0x0f || b[1] != 0x01 || b[2] != 0xc1)
                hv_fail("#UD not on VMCALL at", x.rip);
            if (g.rax == HC_DONE) {
                put("hv: #NPF exits handled: ");
                putdec(npf_exits);
                put("\n");
            }
            x86_hypercall(&x);
        } else {
            put("hv: unexpected #VMEXIT, code ");
            puthex(code);
            put(" EXITINFO1 ");
            puthex(info1);
            put(" EXITINFO2 ");
            puthex(info2);
            put(" rip ");
            puthex(x.rip);
            put("\n");
            hv_fail("unexpected #VMEXIT", code);
        }
        V64(S_RAX) = g.rax;
        V64(S_RIP) = x.rip;
        V64(S_RSP) = x.rsp;
    }
}
