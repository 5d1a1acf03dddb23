/*
 * hyp.c - the x86 half of the bare-metal hypervisor, on Bochs 2.7: the
 * parts Intel VMX (vmx.c, EPT) and AMD SVM (svm.c, NPT) share -- console,
 * exit, the guest's page tables, the decoding of the few instructions whose
 * exits the hypervisor completes, the hypercalls.
 *
 * The guest runs in 64-bit mode, which needs its own (stage-1) paging: a
 * 4-level table the hypervisor writes into guest memory (GUEST_PT_GPA,
 * through axalloc_write) that maps the guest's code at its guest-physical
 * address and the top 2 GiB of the window [0, top) at the top 2 GiB of the
 * virtual space -- top is 2^MAXPHYADDR (CPUID 0x80000008; 40 on Bochs 2.7's
 * models), the widest guest-physical address a guest page table can hold.
 * The guest is told TOP = 0, so layout.h's `TOP - offset` are those
 * canonical virtual addresses; an exit's guest-physical address (VMCS
 * "guest-physical address" / EXITINFO2) is what the library sees.
 *
 * The mode word -- 1 EPT 4-level, 2 NPT 4-level, 3 EPT 5-level, 4 NPT
 * 5-level -- is in the ROM at 0xffffffe4, patched by run-bochs.sh.
 */
#include <stdint.h>
#include "axalloc.h"
#include "console.h"
#include "hv.h"
#include "layout.h"
#include "pool.h"
#include "x86.h"

#define ROM_CONFIG 0xffffffe4ul
#define POOL_BASE  0x1000000ul      /* 16 MiB of frames for the library */
#define LAPIC      0xfee00000ul     /* passed through as the DEVICE page */

const uint64_t arch_uart_hpa = LAPIC;
uint64_t x86_top;
void (*x86_flush_tlb)(uint64_t gpa, uint64_t size);

void arch_flush_tlb(uint64_t gpa, uint64_t size)
{
    x86_flush_tlb(gpa, size);
}

void hyp_main(void);

void arch_putc(char c)
{
    __asm__ volatile("outb %0, $0xe9" : : "a"(c));     /* Bochs port_e9_hack */
}

/* Bochs ends the simulation when "Shutdown" is written to port 0x8900;
 * the run script judges the output (PASS / FAIL line). */
void arch_exit(int code)
{
    put(code == 77 ? "hv: exit SKIP\n" : code ? "hv: exit FAIL\n" : "hv: exit ok\n");
    for (const char *s = "Shutdown"; *s; s++)
        __asm__ volatile("outb %0, %1" : : "a"(*s), "Nd"((uint16_t)0x8900));
    for (;;)
        __asm__ volatile("cli; hlt");
}

/* The host's caches are coherent with instruction fetch. */
void arch_sync_code(uint64_t hpa, uint64_t size)
{
    (void)hpa;
    (void)size;
}

uint64_t gva_to_gpa(uint64_t va)
{
    if (va >= 0xffffffff80000000ull)
        return va + x86_top;           /* mod 2^64: TOP - 2 GiB .. TOP */
    if (va >= CODE_GPA && va < CODE_GPA + 0x200000)
        return va;
    hv_fail("guest virtual address outside the guest's page tables", va);
}

void x86_init(uint32_t format, uint32_t gpa_bits, const char *title, axalloc_hw_t *hw)
{
    uint32_t r[4];
    cpuid(0x80000008, 0, r);
    uint32_t maxphy = r[0] & 0xff;
    put("hv: MAXPHYADDR ");
    putdec(maxphy);
    put("\n");
    x86_top = 1ull << (maxphy < gpa_bits ? maxphy : gpa_bits);
    cpuid(0x80000001, 0, r);
    if (!(r[3] & (1u << 26)))
        hv_fail("no 1 GiB pages (CPUID 0x80000001 EDX.Page1GB): the host and guest tables use them", r[3]);
    hv_guest_top(0);
    hv_init(format, gpa_bits, x86_top, POOL_BASE, 0, title, hw);

    /* The guest's page tables: 4 pages of R|W guest RAM, populated by
     * axalloc_write (the guest's walks never fault). A and D preset: the
     * walker has nothing to write back. */
    axalloc_as_t *as = hv_as();
    const uint64_t pt = GUEST_PT_GPA, A = 0x20, D = 0x40, P_RW = 3, PS = 0x80;
    if (axalloc_map_alloc(as, pt, 4 * PAGE, AXALLOC_READ | AXALLOC_WRITE, false) != AXALLOC_OK)
        hv_fail("map the guest's page tables", pt);
    static uint64_t t[4][512];                 /* PML4, PDPT low, PD low, PDPT high */
    t[0][0] = (pt + 1 * PAGE) | A | P_RW;
    t[0][511] = (pt + 3 * PAGE) | A | P_RW;
    t[1][0] = (pt + 2 * PAGE) | A | P_RW;
    t[2][CODE_GPA >> 21] = CODE_GPA | D | A | PS | P_RW;             /* 2 MiB */
    t[3][510] = (x86_top - 0x80000000ull) | D | A | PS | P_RW;       /* 1 GiB */
    t[3][511] = (x86_top - 0x40000000ull) | D | A | PS | P_RW;
    if (axalloc_write(as, pt, t, sizeof t) != AXALLOC_OK)
        hv_fail("write the guest's page tables", pt);
}

/* The length of the instruction at the guest's rip, for the forms a store
 * or load the hypervisor completes compiles to: [66] [REX] 88/89/8a/8b
 * (MOV r/m), c6/c7 (MOV imm), 0f b6/b7 (MOVZX), with ModRM, SIB and
 * displacement (Intel SDM vol. 2A, 2.1 "Instruction Format"). 0 for
 * anything else. */
static uint64_t insn_len(const uint8_t *b)
{
    uint64_t n = 0, imm = 0;
    int opsize16 = 0;
    if (b[n] == 0x66)
        opsize16 = 1, n++;
    if ((b[n] & 0xf0) == 0x40)
        n++;
    uint8_t op = b[n++];
    if (op == 0x0f) {
        op = b[n++];
        if (op != 0xb6 && op != 0xb7)
            return 0;
    } else if (op == 0xc6) {
        imm = 1;
    } else if (op == 0xc7) {
        imm = opsize16 ? 2 : 4;
    } else if (op < 0x88 || op > 0x8b) {
        return 0;
    }
    uint8_t modrm = b[n++], mod = modrm >> 6, rm = modrm & 7;
    if (mod == 3)
        return 0;
    if (rm == 4) {
        uint8_t sib = b[n++];
        if (mod == 0 && (sib & 7) == 5)
            n += 4;
    }
    if (mod == 0 && rm == 5)
        n += 4;                        /* rip-relative */
    else if (mod == 1)
        n += 1;
    else if (mod == 2)
        n += 4;
    return n + imm;
}

static void read_insn(uint64_t rip, uint8_t b[16])
{
    uint64_t gpa = gva_to_gpa(rip);
    for (int i = 0; i < 16; i++)
        b[i] = 0;
    /* The whole instruction was fetched before its data access faulted,
     * so its pages are loaded; the code region may end within 16 bytes. */
    if (hv_read_guest(gpa, b, 16) && hv_read_guest(gpa, b, PAGE - (gpa & (PAGE - 1))))
        hv_fail("cannot read the guest's instruction at", rip);
}

void x86_fault(struct exit_ctx *x, uint64_t gpa, uint32_t access, int present, int perms)
{
    uint8_t b[16];
    enum hv_action act = hv_fault(gpa, access);
    /* The exit's view must agree with the library's: a resolved fault was
     * on a non-present entry, a refused one (ERR_ACCESS) on a present one
     * the access is not allowed by. (A refused hole read: not present.) */
    int want_present = act == HV_DENIED && access != AXALLOC_READ;
    if (act != HV_CONSOLE && present != want_present) {
        put(present ? "hv: the exit says the entry was present\n" : "hv: the exit says the entry was not present\n");
        hv_fail("exit information disagrees with the library at", gpa);
    }
    /* EPT says what the refused page allows: exactly its region's flags
     * (READ, WRITE, EXEC are EPT's bits 0-2), e.g. R for the read-only
     * range, R|W for the no-exec one. */
    if (act == HV_DENIED && present && perms >= 0) {
        uint64_t ro = x86_top - RO_OFF;
        uint32_t want = gpa >= ro && gpa < ro + RO_SIZE ? AXALLOC_READ : AXALLOC_READ | AXALLOC_WRITE;
        if ((uint32_t)perms != want)
            hv_fail("the EPT entry's permissions (exit qualification bits 5:3) are", (uint64_t)perms);
    }
    switch (act) {
    case HV_RESUME:
        /* Nothing to fence: an EPT violation / #NPF invalidates what was
         * cached for the address (see axalloc_handle_fault). */
        break;
    case HV_CONSOLE:
        read_insn(x->rip, b);
        if (b[0] != 0x88 || b[1] != 0x02)    /* mov %al, (%rdx): guest_arch.h */
            hv_fail("console access is not mov %al,(%rdx), bytes", (uint64_t)b[0] | (uint64_t)b[1] << 8);
        hv_console(gpa, x->g->rax & 0xff);
        x->rip += 2;
        break;
    case HV_DENIED:
        if (access & AXALLOC_EXEC) {
            /* A refused fetch: the guest called there; return to it. */
            uint64_t ret;
            if (hv_read_guest(gva_to_gpa(x->rsp), &ret, 8))
                hv_fail("cannot read the guest's stack at", x->rsp);
            x->rip = ret;
            x->rsp += 8;
        } else {
            read_insn(x->rip, b);
            uint64_t n = insn_len(b);
            if (!n)
                hv_fail("cannot decode the refused access at", x->rip);
            x->rip += n;             /* skip it; a load leaves its register as it was */
        }
        break;
    }
}

void x86_hypercall(struct exit_ctx *x)
{
    struct gregs *g = x->g;
    uint64_t a0 = g->rdi;
    if (g->rax == HC_REMAP)
        a0 = gva_to_gpa(a0);
    g->rax = hv_hypercall(g->rax, a0, g->rsi);
    x->rip += 3;
}

void hyp_main(void)
{
    uint32_t mode = *(volatile uint32_t *)ROM_CONFIG & 0xff;
    /* Bit 8: flush_tlb does nothing, and the guest must notice. */
    pool_skip_flush = (*(volatile uint32_t *)ROM_CONFIG >> 8) & 1;
    put("\nhv: x86 stub (Bochs), libaxalloc ");
    puthex(axalloc_version());
    put(", mode ");
    putdec(mode);
    uint32_t r[4];
    cpuid(7, 0, r);
    put(r[2] & (1u << 16) ? ", CPU with LA57\n" : ", CPU without LA57 (no 5-level paging)\n");
    switch (mode) {
    case MODE_EPT4: vmx_main(mode, 48); break;
    case MODE_EPT5: vmx_main(mode, 57); break;
    case MODE_NPT4: svm_main(mode, 48); break;
    case MODE_NPT5: svm_main(mode, 57); break;
    }
    hv_fail("no mode (1..4) in the ROM at 0xffffffe4 (run-bochs.sh patches it)", mode);
}
