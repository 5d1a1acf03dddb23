/*
 * Hello, stage 2: the smallest complete libaxalloc program, no KVM needed.
 *
 * A toy host hands out frames from a static array ("host-physical" address
 * = HPA_BASE + offset). We create an EPT address space, map 64 KiB of guest
 * RAM lazily, then play the guest: each access the "hardware" reports as an
 * EPT violation goes to axalloc_handle_fault, exactly as a VM-exit handler
 * would do it. Build: the top-level CMake builds it (`build/examples/minimal/
 * axalloc-minimal`); by hand: cc -std=c99 -I include minimal.c libaxalloc.a.
 */
#include <stdint.h>
#include <stdio.h>
#include "axalloc.h"

/* ---- the toy host: 256 frames, a free stack, an identity-offset view ---- */
#define FRAMES 256u
#define HPA_BASE 0x100000000ull
static uint8_t ram[FRAMES][4096] __attribute__((aligned(4096)));
static uint32_t free_stack[FRAMES], nfree;

static int32_t alloc_frame(void *ctx, uint64_t *hpa) {
    (void)ctx;
    if (nfree == 0) return -1;
    *hpa = HPA_BASE + (uint64_t)free_stack[--nfree] * 4096;
    return 0;
}
static void free_frame(void *ctx, uint64_t hpa) {
    (void)ctx;
    free_stack[nfree++] = (uint32_t)((hpa - HPA_BASE) / 4096);
}
static void *phys_to_virt(void *ctx, uint64_t hpa) {
    (void)ctx;
    return ram[(hpa - HPA_BASE) / 4096];
}
static void flush_tlb(void *ctx, uint64_t gpa, uint64_t size) {
    (void)ctx; /* a real host runs INVEPT on every CPU that ran the guest */
    printf("  flush_tlb  [%#llx, +%#llx)\n", (unsigned long long)gpa, (unsigned long long)size);
}

int main(void) {
    for (uint32_t i = 0; i < FRAMES; i++) free_stack[nfree++] = FRAMES - 1 - i;

    /* README:begin */
    axalloc_hooks_t hooks = {.struct_size = sizeof hooks, .alloc_frame = alloc_frame,
                             .free_frame = free_frame, .phys_to_virt = phys_to_virt,
                             .flush_tlb = flush_tlb};
    axalloc_config_t cfg = {.struct_size = sizeof cfg, .format = AXALLOC_FORMAT_X86_EPT,
                            .base = 0, .size = 1ull << 32};
    axalloc_as_t *as;
    axalloc_status_t st = axalloc_as_create(&cfg, &hooks, &as);
    if (st != AXALLOC_OK) return printf("create: %s\n", axalloc_status_str(st)), 1;
    uint32_t v = axalloc_version();
    printf("libaxalloc %u.%u.%u, EPTP %#llx\n", v >> 16, (v >> 8) & 0xff, v & 0xff,
           (unsigned long long)(axalloc_as_root(as) | (3 << 3) | 6)); /* 4-level walk, WB */

    /* 64 KiB of guest RAM at 2 GiB, frames on first touch; the first page read-only. */
    const uint64_t ram_gpa = 0x80000000;
    st = axalloc_map_alloc(as, ram_gpa, 0x1000, AXALLOC_READ, false);
    if (st == AXALLOC_OK)
        st = axalloc_map_alloc(as, ram_gpa + 0x1000, 0xf000, AXALLOC_READ | AXALLOC_WRITE, false);
    if (st != AXALLOC_OK) return printf("map: %s\n", axalloc_status_str(st)), 1;

    /* The "guest": what an EPT violation reports (exit qualification & 7). */
    struct { uint64_t gpa; uint32_t access; } exits[] = {
        {ram_gpa + 0x1010, AXALLOC_WRITE}, /* RAM, first touch: a zeroed frame appears */
        {ram_gpa + 0x1020, AXALLOC_WRITE}, /* same page again (a racing vCPU): still OK */
        {ram_gpa + 0x0008, AXALLOC_WRITE}, /* read-only page: inject a fault */
        {0xfee00000, AXALLOC_READ},        /* no region: emulate it as MMIO */
    };
    for (unsigned i = 0; i < sizeof exits / sizeof exits[0]; i++) {
        st = axalloc_handle_fault(as, exits[i].gpa, exits[i].access);
        printf("  EPT violation at %#llx -> %-22s (%s)\n", (unsigned long long)exits[i].gpa,
               axalloc_status_str(st),
               st == AXALLOC_OK ? "resume the guest" :
               st == AXALLOC_ERR_NOT_MAPPED ? "emulate MMIO" : "inject a fault");
    }
    /* README:end */

    /* Look inside: what backs the page the guest wrote? */
    axalloc_mapping_t m;
    if (axalloc_query(as, ram_gpa + 0x1010, &m) != AXALLOC_OK || !m.present) return 1;
    printf("  query: region [%#llx, +%#llx), present, hpa %#llx, %llu-byte page\n",
           (unsigned long long)m.region_base, (unsigned long long)m.region_size,
           (unsigned long long)m.hpa, (unsigned long long)m.page_size);

    /* The hypervisor writes into guest RAM (lazy pages are populated first). */
    const char hello[] = "hello, stage 2";
    char back[sizeof hello] = {0};
    st = axalloc_write(as, ram_gpa + 0x2000, hello, sizeof hello);
    if (st == AXALLOC_OK) st = axalloc_read(as, ram_gpa + 0x2000, back, sizeof back);
    if (st != AXALLOC_OK) return printf("copy: %s\n", axalloc_status_str(st)), 1;
    printf("  guest RAM at %#llx reads \"%s\"\n", (unsigned long long)ram_gpa + 0x2000, back);

    axalloc_stats_t s;
    axalloc_as_stats(as, &s);
    printf("  %llu guest frames, %llu table frames, %llu faults resolved\n",
           (unsigned long long)s.guest_frames, (unsigned long long)s.table_frames,
           (unsigned long long)s.faults);
    axalloc_as_destroy(as); /* flushes once, gives every frame back */
    printf("destroyed: %u of %u frames back\n", nfree, FRAMES);
    return nfree == FRAMES ? 0 : 1;
}
