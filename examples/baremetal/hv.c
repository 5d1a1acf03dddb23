/*
 * hv.c - see hv.h.
 */
#include "hv.h"
#include "console.h"
#include "layout.h"
#include "pool.h"

/* The guest's image inside the hypervisor's (see each stub's link.ld). */
extern const char __guest_start[], __guest_end[], guest_entry[];

static axalloc_as_t *as;
static uint64_t top, lin_hpa, ram_hpa, huge;
static const char *title;
static uint64_t denied;       /* accesses refused, for HC_DENIED */
static uint64_t resolved;     /* faults axalloc_handle_fault answered OK */
static uint64_t console_bytes;
#define CODE_PAGES_MAX 64
static uint8_t code_loaded[CODE_PAGES_MAX];

void hv_fail(const char *what, uint64_t v)
{
    put("FAIL ");
    put(title ? title : "");
    put(": ");
    put(what);
    put(" ");
    puthex(v);
    put("\n");
    arch_exit(1);
}

void hv_check(int ok, const char *rule)
{
    if (!ok)
        hv_fail(rule, 0);
    put("check: ");
    put(rule);
    put(": ok\n");
}

static void must(axalloc_status_t st, const char *what)
{
    if (st != AXALLOC_OK) {
        put(what);
        put(": ");
        put(axalloc_status_str(st));
        put("\n");
        hv_fail(what, (uint64_t)(int64_t)st);
    }
}

static uint64_t code_size(void)
{
    return ((uint64_t)(__guest_end - __guest_start) + PAGE - 1) & ~(PAGE - 1);
}

uint64_t hv_guest_entry(void)
{
    return CODE_GPA + (uint64_t)(guest_entry - __guest_start);
}

/* The guest's pattern for guest-physical address a: keyed by the address
 * the guest used, its TOP (guest_top) minus the offset. */
static uint64_t guest_top;
static int guest_top_set;
void hv_guest_top(uint64_t t)
{
    guest_top = t;
    guest_top_set = 1;
}

static uint64_t pat(uint64_t a, uint64_t seed)
{
    a = a - top + guest_top;
    return (a * 0x9e3779b97f4a7c15ull) ^ seed;
}

void hv_init(uint32_t format, uint32_t gpa_bits, uint64_t top_, uint64_t pool_base,
             uint64_t ram, const char *title_, axalloc_hw_t *hw)
{
    title = title_;
    top = top_;
    if (!guest_top_set)
        guest_top = top;
    ram_hpa = ram;
    lin_hpa = ram + LIN_HOST_OFF;
    pool_init(pool_base);
    put("hv: ");
    put(title);
    put(": window [0, ");
    puthex(top);
    put(")\n");

    axalloc_hooks_t hooks = pool_hooks();
    axalloc_config_t cfg = {0};
    cfg.struct_size = sizeof cfg;
    cfg.format = format;
    cfg.gpa_bits = gpa_bits;
    cfg.base = 0;
    cfg.size = top;
    must(axalloc_as_create(&cfg, &hooks, &as), "axalloc_as_create");
    must(axalloc_as_hw(as, hw), "axalloc_as_hw");
    put("hv: root ");
    puthex(hw->root);
    put(" root_pages ");
    putdec(hw->root_pages);
    put(" levels ");
    putdec(hw->levels);
    put(" root_pointer ");
    puthex(hw->root_pointer);
    put(" vtcr ");
    puthex(hw->vtcr);
    put("\n");
    hv_check(hw->root == axalloc_as_root(as), "axalloc_as_hw root == axalloc_as_root");
    hv_check(hw->root_pages >= 1 && hw->root_pages <= 16 &&
             (hw->root & (hw->root_pages * PAGE - 1)) == 0,
             "the root is aligned to its size");

    if (code_size() > CODE_PAGES_MAX * PAGE)
        hv_fail("guest image too large", code_size());
    /* Every region lazy: the guest's first touch of each page is a stage-2
     * fault that axalloc_handle_fault resolves. The code too: its pages are
     * loaded from the image when the first fetch (or read) faults them in. */
    must(axalloc_map_alloc(as, CODE_GPA, code_size(), AXALLOC_READ | AXALLOC_EXEC, false), "map code");
    const uint32_t rw = AXALLOC_READ | AXALLOC_WRITE;
    must(axalloc_map_alloc(as, top - RAM_OFF, RAM_SIZE, rw, false), "map ram");
    must(axalloc_map_alloc(as, top - STACK_OFF, STACK_SIZE, rw, false), "map stack");
    must(axalloc_map_alloc(as, top - UNMAP_OFF, UNMAP_SIZE, rw, false), "map unmap range");
    must(axalloc_map_alloc(as, top - RO_OFF, RO_SIZE, AXALLOC_READ, false), "map read-only range");
    must(axalloc_map_alloc(as, top - NX_OFF, NX_SIZE, rw, false), "map no-exec range");

    /* Linear memory: the host's bytes, keyed by the guest-physical address
     * they will appear at (and cleaned to memory for a cache-off guest). */
    volatile uint64_t *l = (volatile uint64_t *)(uintptr_t)lin_hpa;
    for (uint64_t i = 0; i < LIN_SIZE / 8; i++)
        l[i] = pat(top - LIN_OFF + 8 * i, 0x4444);
    arch_sync_code(lin_hpa, LIN_SIZE);
    must(axalloc_map_linear(as, top - LIN_OFF, lin_hpa, LIN_SIZE, rw), "map linear range");
    uint64_t hpa = 0, ps = 0;
    must(axalloc_translate(as, top - LIN_OFF + 0x1234, &hpa, &ps), "translate linear");
    hv_check(hpa == lin_hpa + 0x1234 && ps == LIN_SIZE, "map_linear made one 2 MiB leaf");
    /* 1 GiB leaves where a level maps 1 GiB below the root: 3+ levels. */
    huge = hw->levels >= 3 ? G1_SIZE : 0x200000;
    must(axalloc_map_linear(as, top - G1_OFF, ram, G1_SIZE, rw), "map 1 GiB linear range");
    must(axalloc_translate(as, top - G1_OFF + 0x5678, &hpa, &ps), "translate 1 GiB range");
    hv_check(hpa == ram + 0x5678 && ps == huge,
             huge == G1_SIZE ? "map_linear made a 1 GiB leaf" : "map_linear made 2 MiB leaves (2 levels)");
    must(axalloc_map_linear(as, top - DEV_OFF, arch_uart_hpa, PAGE, rw | AXALLOC_DEVICE),
         "map the UART (DEVICE)");
}

static const char *access_name(uint32_t a)
{
    return a & AXALLOC_EXEC ? "exec" : a & AXALLOC_WRITE ? "write" : "read";
}

enum hv_action hv_fault(uint64_t gpa, uint32_t access)
{
    axalloc_status_t st = axalloc_handle_fault(as, gpa, access);
    if (st == AXALLOC_OK) {
        resolved++;
        uint64_t off = (gpa & ~(PAGE - 1)) - CODE_GPA;
        if (gpa >= CODE_GPA && off < code_size() && !code_loaded[off / PAGE]) {
            /* First touch of a code page: the library installed a zeroed
             * frame; load the image's page into it before the guest runs. */
            must(axalloc_write(as, CODE_GPA + off, __guest_start + off, PAGE), "load guest code");
            uint64_t hpa;
            must(axalloc_translate(as, CODE_GPA + off, &hpa, 0), "translate code");
            arch_sync_code(hpa, PAGE);
            code_loaded[off / PAGE] = 1;
        }
        return HV_RESUME;
    }
    if (st == AXALLOC_ERR_NOT_MAPPED && (gpa & ~(PAGE - 1)) == top - MMIO_OFF &&
        access == AXALLOC_WRITE)
        return HV_CONSOLE;
    if (st == AXALLOC_ERR_NOT_MAPPED && access == AXALLOC_READ &&
        ((gpa & ~(PAGE - 1)) == top - LIN_OFF + HOLE_OFF ||
         (gpa & ~(PAGE - 1)) == top - G1_OFF + G1_HOLE)) {
        put("hv: refused guest read of the hole at ");
        puthex(gpa);
        put(" (ERR_NOT_MAPPED)\n");
        denied++;
        return HV_DENIED;
    }
    if (st == AXALLOC_ERR_ACCESS &&
        ((gpa >= top - RO_OFF && gpa < top - RO_OFF + RO_SIZE && access == AXALLOC_WRITE) ||
         (gpa >= top - NX_OFF && gpa < top - NX_OFF + NX_SIZE && access == AXALLOC_EXEC))) {
        put("hv: refused guest ");
        put(access_name(access));
        put(" at ");
        puthex(gpa);
        put(" (ERR_ACCESS)\n");
        denied++;
        return HV_DENIED;
    }
    put("hv: unexpected stage-2 fault: ");
    put(access_name(access));
    put(" at ");
    puthex(gpa);
    put(": ");
    put(axalloc_status_str(st));
    put("\n");
    hv_fail("unexpected fault", gpa);
}

void hv_console(uint64_t gpa, uint64_t value)
{
    (void)gpa;
    console_bytes++;
    char c = (char)value;
    if (c == '\n')
        arch_putc('\r');
    arch_putc(c);
}

axalloc_as_t *hv_as(void)
{
    return as;
}

int hv_read_guest(uint64_t gpa, void *buf, uint64_t len)
{
    return axalloc_read(as, gpa, buf, len) == AXALLOC_OK ? 0 : -1;
}

/* The bytes the guest wrote, read by the host through the library. */
static int host_sees(uint64_t base, uint64_t size, uint64_t seed)
{
    for (uint64_t a = base; a < base + size; a += 8) {
        uint64_t v;
        if (axalloc_read(as, a, &v, 8) != AXALLOC_OK || v != pat(a, seed))
            return 0;
    }
    return 1;
}

static void finish(uint64_t code)
{
    if (code)
        hv_fail("the guest failed, code", code);
    hv_check(console_bytes > 0, "the guest's console stores were emulated (ERR_NOT_MAPPED)");
    hv_check(denied == 4, "one write, one fetch refused (ERR_ACCESS), two hole reads (ERR_NOT_MAPPED)");
    hv_check(host_sees(top - RAM_OFF, RAM_SIZE, 0x1111), "axalloc_read sees the guest's RAM bytes");
    hv_check(host_sees(top - UNMAP_OFF, UNMAP_SIZE, 0x3333), "axalloc_read sees the re-mapped range's bytes");
    int lin_ok = 1;
    for (uint64_t a = top - LIN_OFF + LIN_SIZE - 2 * PAGE; a < top - LIN_OFF + LIN_SIZE; a += 8)
        lin_ok &= *(volatile uint64_t *)(uintptr_t)(lin_hpa + a - (top - LIN_OFF)) == pat(a, 0x5555);
    hv_check(lin_ok, "the linear range's host memory holds the guest's bytes");
    axalloc_stats_t s;
    must(axalloc_as_stats(as, &s), "axalloc_as_stats");
    put("hv: faults resolved ");
    putdec(resolved);
    put(", library faults ");
    putdec(s.faults);
    put(", guest frames ");
    putdec(s.guest_frames);
    put(", table frames ");
    putdec(s.table_frames);
    put("\n");
    uint64_t touched = (RAM_SIZE + UNMAP_SIZE + RO_SIZE + NX_SIZE) / PAGE + 1;
    hv_check(s.guest_frames >= touched, "every touched page has its own frame");
    axalloc_as_destroy(as);
    hv_check(pool_in_use() == 0, "axalloc_as_destroy gave every frame back");
    hv_check(pool_errors() == 0, "no hook misuse (double or foreign free)");
    put("PASS ");
    put(title);
    put("\n");
    arch_exit(0);
}

uint64_t hv_hypercall(uint64_t nr, uint64_t a0, uint64_t a1)
{
    switch (nr) {
    case HC_DONE:
        finish(a0);
        break;
    case HC_DENIED:
        return denied;
    case HC_HOLE: {
        uint64_t before = pool_flushes();
        axalloc_status_t st = axalloc_unmap(as, top - LIN_OFF + HOLE_OFF, PAGE);
        if (st != AXALLOC_OK)
            return (uint64_t)(int64_t)st;
        put("hv: the hole's unmap called flush_tlb ");
        putdec(pool_flushes() - before);
        put(" time(s)\n");
        hv_check(pool_flushes() - before >= 1 && pool_flushes() - before <= 2,
                 "splitting the 2 MiB leaf flushed once or twice (break-before-make)");
        uint64_t hpa = 0, ps = 0;
        must(axalloc_translate(as, top - LIN_OFF + HOLE_OFF + PAGE, &hpa, &ps), "translate linear");
        hv_check(hpa == lin_hpa + HOLE_OFF + PAGE && ps == PAGE, "the split left 4 KiB leaves around the hole");
        return 0;
    }
    case HC_HOLE1G: {
        uint64_t before = pool_flushes(), g1 = top - G1_OFF, hpa = 0, ps = 0;
        axalloc_status_t st = axalloc_unmap(as, g1 + G1_HOLE, PAGE);
        if (st != AXALLOC_OK)
            return (uint64_t)(int64_t)st;
        put("hv: the 1 GiB range's hole: flush_tlb called ");
        putdec(pool_flushes() - before);
        put(" time(s)\n");
        hv_check(pool_flushes() - before >= 1 && pool_flushes() - before <= 2,
                 "splitting the 1 GiB range flushed once or twice");
        must(axalloc_translate(as, g1 + G1_HOLE + PAGE, &hpa, &ps), "translate 1 GiB range");
        hv_check(hpa == ram_hpa + G1_HOLE + PAGE && ps == PAGE, "4 KiB leaves next to the hole");
        must(axalloc_translate(as, g1 + 0x7000000, &hpa, &ps), "translate 1 GiB range");
        hv_check(hpa == ram_hpa + 0x7000000 && ps == 0x200000, "2 MiB leaves further away");
        return 0;
    }
    case HC_REMAP: {
        uint64_t before = pool_flushes(), frames = pool_in_use();
        axalloc_status_t st = axalloc_unmap(as, a0, a1);
        if (st != AXALLOC_OK)
            return (uint64_t)(int64_t)st;
        hv_check(pool_flushes() > before, "axalloc_unmap called flush_tlb");
        hv_check(pool_in_use() < frames, "axalloc_unmap gave the frames back");
        return (uint64_t)(int64_t)axalloc_map_alloc(as, a0, a1, AXALLOC_READ | AXALLOC_WRITE, false);
    }
    }
    hv_fail("unknown hypercall", nr);
}
