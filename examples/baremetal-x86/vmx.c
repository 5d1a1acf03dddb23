/*
 * vmx.c - Intel VMX with EPT (Bochs `cpu: model=corei7_skylake_x`): VMXON,
 * one VMCS whose EPTP is axalloc_hw_t.root_pointer, a 64-bit guest, and EPT
 * violations (exit reason 48) resolved through axalloc_handle_fault with
 * the access from the exit qualification's bits 2:0. 5 levels (mode 3)
 * need EPT page-walk length 5, which no Bochs 2.7 model has: SKIP.
 *
 * Manual references (Intel SDM, chapter numbers of the 2021-2022 editions;
 * later editions moved them by one): vol. 3C ch. 24 "Virtual Machine
 * Control Structures" (24.4-24.8: guest/host state, controls), ch. 26 "VM
 * Entries" (26.2-26.3: the checks on controls, host and guest state),
 * 27.2.1 "Basic VM-Exit Information" (Table 27-7, "Exit Qualification for
 * EPT Violations"), ch. 28 "VMX Support for Address Translation" (EPT,
 * 28.4.3 "Invalidating Cached Mappings"), ch. 30 "VMX Instruction
 * Reference" (INVEPT, VMLAUNCH/VMRESUME); vol. 3D Appendix A "VMX
 * Capability Reporting Facility", B "Field Encoding in VMCS", C "VMX Basic
 * Exit Reasons".
 */
#include <stdint.h>
#include "axalloc.h"
#include "console.h"
#include "hv.h"
#include "layout.h"
#include "pool.h"
#include "x86.h"

/* VMCS field encodings (SDM vol. 3D, Appendix B). */
enum {
    VPID = 0x0000,
    GUEST_ES_SEL = 0x0800, GUEST_CS_SEL = 0x0802, GUEST_SS_SEL = 0x0804, GUEST_DS_SEL = 0x0806,
    GUEST_FS_SEL = 0x0808, GUEST_GS_SEL = 0x080a, GUEST_LDTR_SEL = 0x080c, GUEST_TR_SEL = 0x080e,
    HOST_ES_SEL = 0x0c00, HOST_CS_SEL = 0x0c02, HOST_SS_SEL = 0x0c04, HOST_DS_SEL = 0x0c06,
    HOST_FS_SEL = 0x0c08, HOST_GS_SEL = 0x0c0a, HOST_TR_SEL = 0x0c0c,
    EPT_POINTER = 0x201a, GUEST_PHYS_ADDR = 0x2400,
    VMCS_LINK_PTR = 0x2800, GUEST_EFER = 0x2806, HOST_EFER = 0x2c02,
    PIN_CTLS = 0x4000, PROC_CTLS = 0x4002, EXC_BITMAP = 0x4004, EXIT_CTLS = 0x400c,
    ENTRY_CTLS = 0x4012, PROC_CTLS2 = 0x401e,
    VM_INSN_ERROR = 0x4400, EXIT_REASON = 0x4402, EXIT_INTR_INFO = 0x4404,
    GUEST_ES_LIMIT = 0x4800, GUEST_ES_AR = 0x4814,   /* then CS, SS, DS, FS, GS, LDTR, TR by 2 */
    GUEST_GDTR_LIMIT = 0x4810, GUEST_IDTR_LIMIT = 0x4812,
    GUEST_INTERRUPTIBILITY = 0x4824, GUEST_ACTIVITY = 0x4826, HOST_SYSENTER_CS = 0x4c00,
    EXIT_QUAL = 0x6400, GUEST_LINEAR_ADDR = 0x640a,
    GUEST_CR0 = 0x6800, GUEST_CR3 = 0x6802, GUEST_CR4 = 0x6804, GUEST_ES_BASE = 0x6806,
    GUEST_GDTR_BASE = 0x6816, GUEST_IDTR_BASE = 0x6818, GUEST_DR7 = 0x681a,
    GUEST_RSP = 0x681c, GUEST_RIP = 0x681e, GUEST_RFLAGS = 0x6820,
    HOST_CR0 = 0x6c00, HOST_CR3 = 0x6c02, HOST_CR4 = 0x6c04, HOST_FS_BASE = 0x6c06,
    HOST_GS_BASE = 0x6c08, HOST_TR_BASE = 0x6c0a, HOST_GDTR_BASE = 0x6c0c, HOST_IDTR_BASE = 0x6c0e,
};
/* Capability MSRs (SDM vol. 3D, Appendix A). */
#define MSR_FEATURE_CONTROL 0x3a
#define MSR_VMX_BASIC 0x480
#define MSR_VMX_CR0_FIXED0 0x486
#define MSR_VMX_CR0_FIXED1 0x487
#define MSR_VMX_CR4_FIXED0 0x488
#define MSR_VMX_CR4_FIXED1 0x489
#define MSR_VMX_PROCBASED2 0x48b
#define MSR_VMX_EPT_VPID_CAP 0x48c

static uint8_t vmxon_region[4096] __attribute__((aligned(4096)));
static uint8_t vmcs[4096] __attribute__((aligned(4096)));
static uint8_t host_tss[104] __attribute__((aligned(16)));
static uint64_t eptp;
extern const char host_gdt[];

static void vmwrite(uint64_t field, uint64_t v)
{
    uint8_t fail;
    __asm__ volatile("vmwrite %2, %1; setbe %0" : "=q"(fail) : "r"(field), "rm"(v) : "cc", "memory");
    if (fail)
        hv_fail("vmwrite failed, field", field);
}
static uint64_t vmread(uint64_t field)
{
    uint64_t v;
    __asm__ volatile("vmread %1, %0" : "=rm"(v) : "r"(field) : "cc");
    return v;
}

/* A control word from what the capability MSR allows: bits 31:0 must be
 * 1, bits 63:32 may be 1 (SDM vol. 3D, A.3-A.5). */
static uint32_t ctls(uint32_t msr, uint32_t want, const char *name)
{
    uint64_t cap = rdmsr(msr);
    uint32_t v = (want | (uint32_t)cap) & (uint32_t)(cap >> 32);
    if ((v & want) != want) {
        put("hv: VMX control not supported: ");
        put(name);
        put("\n");
        hv_fail("a VMX control this stub needs is missing", want & ~v);
    }
    return v;
}

/* flush_tlb: INVEPT single-context for this EPTP -- every guest-physical
 * and combined mapping derived from it, for every VPID (SDM vol. 3C,
 * 28.4.3 "Invalidating Cached Mappings", and INVEPT in ch. 30). EPT has no
 * invalidation by guest-physical range, so the range is not used. */
static void vmx_flush_tlb(uint64_t gpa, uint64_t size)
{
    (void)gpa;
    (void)size;
    struct { uint64_t eptp, zero; } d = { eptp, 0 };
    uint8_t fail;
    __asm__ volatile("invept %1, %2; setbe %0" : "=q"(fail) : "m"(d), "r"(1ull) : "cc", "memory");
    if (fail)
        hv_fail("INVEPT single-context failed", eptp);
}

static void guest_seg(int i, uint16_t sel, uint32_t ar)
{
    vmwrite(GUEST_ES_SEL + 2 * i, sel);
    vmwrite(GUEST_ES_BASE + 2 * i, 0);
    vmwrite(GUEST_ES_LIMIT + 2 * i, 0xffffffff);
    vmwrite(GUEST_ES_AR + 2 * i, ar);
}

void vmx_main(uint32_t mode, uint32_t gpa_bits)
{
    static char title[] = "x86_ept_4level";
    uint32_t levels = mode == MODE_EPT5 ? 5 : 4;
    title[8] = (char)('0' + levels);
    uint32_t r[4];
    cpuid(1, 0, r);
    if (!(r[2] & (1u << 5)))
        hv_fail("no VMX (CPUID.1:ECX.VMX); Bochs: cpu: model=corei7_skylake_x", r[2]);

    uint64_t basic = rdmsr(MSR_VMX_BASIC);
    uint64_t ept_cap = rdmsr(MSR_VMX_EPT_VPID_CAP);
    put("hv: IA32_VMX_BASIC ");
    puthex(basic);
    put(", IA32_VMX_EPT_VPID_CAP ");
    puthex(ept_cap);
    put("\n");
    /* EPT_VPID_CAP: bit 6 page-walk length 4, bit 7 length 5, bit 14 WB
     * paging structures, bit 17 1 GiB pages, bit 20 INVEPT, bit 25
     * single-context INVEPT (SDM vol. 3D, A.10). */
    if (!(ept_cap & (1ull << (levels == 5 ? 7 : 6)))) {
        put("hv: SKIP: this CPU has no EPT page-walk length ");
        putdec(levels);
        put("\n");
        arch_exit(77);
    }
    hv_check((ept_cap & (1ull << 14)) && (ept_cap & (1ull << 20)) && (ept_cap & (1ull << 25)),
             "EPT: WB paging structures, INVEPT single-context");
    hv_check(ept_cap & (1ull << 17), "EPT has 1 GiB pages");

    axalloc_hw_t hw;
    x86_init(AXALLOC_FORMAT_X86_EPT, gpa_bits, title, &hw);
    hv_check(hw.levels == levels && hw.root_pages == 1, "one root page, the format's levels");
    hv_check(hw.root_pointer == (hw.root | 1ull << 6 | (uint64_t)(levels - 1) << 3 | 6),
             "EPTP = root | A/D enable | (levels - 1) << 3 | WB");
    /* EPT accessed/dirty flags (SDM vol. 3C, "Accessed and Dirty Flags for
     * EPT"): EPTP bit 6 is allowed only if IA32_VMX_EPT_VPID_CAP bit 21 says
     * the CPU has them. */
    hv_check(ept_cap & (1ull << 21), "EPT has accessed/dirty flags (EPTP bit 6)");
    eptp = hw.root_pointer;
    x86_flush_tlb = vmx_flush_tlb;

    /* VMXON (SDM vol. 3C, 23.7 "Enabling and Entering VMX Operation" and
     * 23.8 "Restrictions on VMX Operation"): FEATURE_CONTROL lock + VMXON outside SMX,
     * CR0/CR4 within the fixed bits, CR4.VMXE. */
    uint64_t fc = rdmsr(MSR_FEATURE_CONTROL);
    if (!(fc & 1))
        wrmsr(MSR_FEATURE_CONTROL, fc | 5);
    uint64_t cr0 = (READ_CR(0) | rdmsr(MSR_VMX_CR0_FIXED0)) & rdmsr(MSR_VMX_CR0_FIXED1);
    uint64_t cr4 = (READ_CR(4) | (1u << 13) | rdmsr(MSR_VMX_CR4_FIXED0)) & rdmsr(MSR_VMX_CR4_FIXED1);
    WRITE_CR(0, cr0);
    WRITE_CR(4, cr4);
    uint32_t rev = (uint32_t)basic & 0x7fffffff;
    *(volatile uint32_t *)vmxon_region = rev;
    *(volatile uint32_t *)vmcs = rev;
    uint64_t pa = (uint64_t)(uintptr_t)vmxon_region;
    uint8_t fail;
    __asm__ volatile("vmxon %1; setbe %0" : "=q"(fail) : "m"(pa) : "cc", "memory");
    hv_check(!fail, "VMXON");
    pa = (uint64_t)(uintptr_t)vmcs;
    __asm__ volatile("vmclear %1; setbe %0" : "=q"(fail) : "m"(pa) : "cc", "memory");
    hv_check(!fail, "VMCLEAR");
    __asm__ volatile("vmptrld %1; setbe %0" : "=q"(fail) : "m"(pa) : "cc", "memory");
    hv_check(!fail, "VMPTRLD");

    /* Controls (SDM vol. 3C, 24.6-24.8; vol. 3D A.3-A.5); the TRUE_* MSRs when BASIC bit 55
     * says they exist (so the default-1 CR3 exiting bits may be 0). */
    int tru = (basic >> 55) & 1;
    vmwrite(PIN_CTLS, ctls(tru ? 0x48d : 0x481, 0, "pin-based"));
    /* Primary: HLT exiting (7), activate secondary controls (31). No I/O
     * exiting: the guest's OUT to port 0xe9 goes straight to Bochs. */
    vmwrite(PROC_CTLS, ctls(tru ? 0x48e : 0x482, 1u << 7 | 1u << 31, "primary processor-based"));
    /* Secondary: enable EPT (1), enable VPID (5) -- with a VPID the CPU
     * may keep the guest's translations across VM exits and entries, so
     * only INVEPT drops them (without one, VM entry and exit flush). */
    vmwrite(PROC_CTLS2, ctls(MSR_VMX_PROCBASED2, 1u << 1 | 1u << 5, "enable EPT, enable VPID"));
    vmwrite(VPID, 1);
    /* Exit: host address-space size (9), save EFER (20), load EFER (21). */
    vmwrite(EXIT_CTLS, ctls(tru ? 0x48f : 0x483, 1u << 9 | 1u << 20 | 1u << 21, "VM-exit"));
    /* Entry: IA-32e mode guest (9), load EFER (15). */
    vmwrite(ENTRY_CTLS, ctls(tru ? 0x490 : 0x484, 1u << 9 | 1u << 15, "VM-entry"));
    vmwrite(EXC_BITMAP, 0xffffffff);        /* any guest exception exits: a bug */
    vmwrite(EPT_POINTER, eptp);

    /* Host state (SDM vol. 3C, 24.5 "Host-State Area"; checked by
     * 26.2.2-26.2.4). */
    vmwrite(HOST_CR0, READ_CR(0));
    vmwrite(HOST_CR3, READ_CR(3));
    vmwrite(HOST_CR4, READ_CR(4));
    vmwrite(HOST_CS_SEL, 0x18);
    vmwrite(HOST_SS_SEL, 0x10);
    vmwrite(HOST_DS_SEL, 0x10);
    vmwrite(HOST_ES_SEL, 0x10);
    vmwrite(HOST_FS_SEL, 0x10);
    vmwrite(HOST_GS_SEL, 0x10);
    vmwrite(HOST_TR_SEL, 0x20);
    vmwrite(HOST_FS_BASE, 0);
    vmwrite(HOST_GS_BASE, 0);
    vmwrite(HOST_TR_BASE, (uint64_t)(uintptr_t)host_tss);
    vmwrite(HOST_GDTR_BASE, (uint64_t)(uintptr_t)host_gdt);
    vmwrite(HOST_IDTR_BASE, 0);
    vmwrite(HOST_SYSENTER_CS, 0);
    vmwrite(HOST_EFER, rdmsr(MSR_EFER));
    /* HOST_RSP and HOST_RIP: vmx_run (start.S). */

    /* Guest state: 64-bit mode, paging with the tables hyp.c wrote (SDM
     * vol. 3C, 24.4 "Guest-State Area"; checked by 26.3.1). CR0/CR4 obey the fixed bits (CR4.VMXE included). */
    uint64_t gcr0 = (0x80000031ull | rdmsr(MSR_VMX_CR0_FIXED0)) & rdmsr(MSR_VMX_CR0_FIXED1);
    uint64_t gcr4 = (0x20ull | rdmsr(MSR_VMX_CR4_FIXED0)) & rdmsr(MSR_VMX_CR4_FIXED1);
    vmwrite(GUEST_CR0, gcr0);
    vmwrite(GUEST_CR3, GUEST_PT_GPA);
    vmwrite(GUEST_CR4, gcr4);
    vmwrite(GUEST_EFER, EFER_LME | EFER_LMA | EFER_NXE);
    vmwrite(GUEST_DR7, 0x400);
    /* Access rights: type, S, DPL, P in 7:0; L (13), D/B (14), G (15);
     * bit 16 = unusable. */
    guest_seg(0, 0x10, 0xc093);             /* ES */
    guest_seg(1, 0x08, 0xa09b);             /* CS: 64-bit code */
    guest_seg(2, 0x10, 0xc093);             /* SS */
    guest_seg(3, 0x10, 0xc093);             /* DS */
    guest_seg(4, 0x10, 0xc093);             /* FS */
    guest_seg(5, 0x10, 0xc093);             /* GS */
    guest_seg(6, 0, 0x10000);               /* LDTR: unusable */
    guest_seg(7, 0, 0x8b);                  /* TR: busy 64-bit TSS */
    vmwrite(GUEST_ES_LIMIT + 14, 0x67);
    vmwrite(GUEST_GDTR_BASE, 0);
    vmwrite(GUEST_GDTR_LIMIT, 0);
    vmwrite(GUEST_IDTR_BASE, 0);
    vmwrite(GUEST_IDTR_LIMIT, 0);
    vmwrite(GUEST_RFLAGS, 2);
    vmwrite(GUEST_INTERRUPTIBILITY, 0);
    vmwrite(GUEST_ACTIVITY, 0);
    vmwrite(VMCS_LINK_PTR, ~0ull);

    struct gregs g = {0};
    g.rdi = 0;                              /* TOP, as the guest sees it (hyp.c) */
    vmwrite(GUEST_RIP, hv_guest_entry());
    vmwrite(GUEST_RSP, 0);                  /* guest_entry.S sets its own */
    put("hv: entering the guest at ");
    puthex(hv_guest_entry());
    put("\n");

    uint64_t ept_exits = 0;
    for (int launched = 0;; launched = 1) {
        if (vmx_run(&g, launched)) {
            put("hv: VM-instruction error ");
            putdec(vmread(VM_INSN_ERROR));
            put("\n");
            hv_fail(launched ? "VMRESUME failed" : "VMLAUNCH failed", vmread(VM_INSN_ERROR));
        }
        uint32_t reason = (uint32_t)vmread(EXIT_REASON);
        struct exit_ctx x = { &g, vmread(GUEST_RIP), vmread(GUEST_RSP) };
        if (reason == 48) {                 /* EPT violation */
            uint64_t q = vmread(EXIT_QUAL), gpa = vmread(GUEST_PHYS_ADDR);
            /* Bit 7: the guest-linear address is valid; bit 8: the access
             * was to the translated address, not to a guest paging
             * structure (the guest's tables are populated up front). */
            if ((q & 0x180) != 0x180 || gva_to_gpa(vmread(GUEST_LINEAR_ADDR)) != gpa) {
                put("hv: exit qualification ");
                puthex(q);
                put(", guest-linear address ");
                puthex(vmread(GUEST_LINEAR_ADDR));
                put("\n");
                hv_fail("EPT violation not on a guest linear access, GPA", gpa);
            }
            ept_exits++;
            x86_fault(&x, gpa, (uint32_t)q & 7, (q & 0x38) != 0, (int)((q >> 3) & 7));
        } else if (reason == 18) {          /* VMCALL */
            if (g.rax == HC_DONE) {
                put("hv: EPT violations handled: ");
                putdec(ept_exits);
                put("\n");
            }
            x86_hypercall(&x);
        } else {
            put("hv: unexpected VM exit, reason ");
            putdec(reason & 0xffff);
            put(" qualification ");
            puthex(vmread(EXIT_QUAL));
            put(" interruption info ");
            puthex(vmread(EXIT_INTR_INFO));
            put(" rip ");
            puthex(x.rip);
            put("\n");
            hv_fail("unexpected VM exit", reason);
        }
        vmwrite(GUEST_RIP, x.rip);
        vmwrite(GUEST_RSP, x.rsp);
    }
}
