/*
 * pool.c - see pool.h. A bitmap over POOL_FRAMES frames; alloc_contig finds
 * a naturally aligned free run (Arm concatenated roots, the 16 KiB RISC-V
 * root). A freed frame is filled with 0x5a before it goes back: a stale
 * translation that still reaches it reads garbage, not zeros, so the
 * unmap test sees a missing flush.
 */
#include "pool.h"
#include "console.h"

static uint64_t pool_base;
static uint8_t used[POOL_FRAMES];
static uint64_t in_use, flushes;
static int errors;
int pool_skip_flush;

void pool_init(uint64_t base) { pool_base = base; }
uint64_t pool_in_use(void) { return in_use; }
uint64_t pool_flushes(void) { return flushes; }
int pool_errors(void) { return errors; }

static int take(uint32_t order, uint64_t *hpa_out)
{
    uint32_t n = 1u << order;
    for (uint32_t i = 0; i + n <= POOL_FRAMES; i += n) {
        uint32_t j = 0;
        while (j < n && !used[i + j])
            j++;
        if (j == n) {
            for (j = 0; j < n; j++)
                used[i + j] = 1;
            in_use += n;
            *hpa_out = pool_base + (uint64_t)i * 4096;
            return 0;
        }
    }
    return -1;
}

static void give(uint64_t hpa, uint32_t order)
{
    uint32_t n = 1u << order;
    uint64_t i = (hpa - pool_base) / 4096;
    if (hpa < pool_base || (hpa & 4095) || i + n > POOL_FRAMES || (i & (n - 1))) {
        put("pool: free of a frame not from the pool: "); puthex(hpa); put("\n");
        errors++;
        return;
    }
    for (uint32_t j = 0; j < n; j++) {
        if (!used[i + j]) {
            put("pool: double free of "); puthex(hpa + j * 4096ull); put("\n");
            errors++;
            return;
        }
    }
    volatile uint64_t *p = (volatile uint64_t *)(uintptr_t)hpa;
    for (uint64_t k = 0; k < n * 512ull; k++)
        p[k] = 0x5a5a5a5a5a5a5a5aull;
    for (uint32_t j = 0; j < n; j++)
        used[i + j] = 0;
    in_use -= n;
}

static int32_t h_alloc(void *ctx, uint64_t *hpa) { (void)ctx; return take(0, hpa); }
static void h_free(void *ctx, uint64_t hpa) { (void)ctx; give(hpa, 0); }
static int32_t h_alloc_contig(void *ctx, uint32_t order, uint64_t *hpa) { (void)ctx; return take(order, hpa); }
static void h_free_contig(void *ctx, uint64_t hpa, uint32_t order) { (void)ctx; give(hpa, order); }
static void *h_p2v(void *ctx, uint64_t hpa) { (void)ctx; return (void *)(uintptr_t)hpa; }
static void h_flush(void *ctx, uint64_t gpa, uint64_t size)
{
    (void)ctx;
    flushes++;
    if (!pool_skip_flush)
        arch_flush_tlb(gpa, size);
}

axalloc_hooks_t pool_hooks(void)
{
    axalloc_hooks_t h = {0};
    h.struct_size = sizeof h;
    h.alloc_frame = h_alloc;
    h.free_frame = h_free;
    h.phys_to_virt = h_p2v;
    h.flush_tlb = h_flush;
    h.alloc_contig = h_alloc_contig;
    h.free_contig = h_free_contig;
    return h;
}
