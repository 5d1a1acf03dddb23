/*
 * Callgrind driver: instructions per pre-zeroed fault of libaxalloc.
 *
 *   fault MODE
 *     MODE = plain    FRAMES_ZEROED, phys_to_virt hook
 *            linear   FRAMES_ZEROED | LINEAR_MAP (no phys_to_virt for frames)
 *            reserve  FRAMES_ZEROED, frames from axalloc_reserve (filled first)
 *            linres   LINEAR_MAP + reserve
 *     append "-tables" (e.g. plain-tables) to skip the pre-fault: the counted
 *     faults then also allocate and link the 8 leaf tables (and the upper ones);
 *     append "-scatter" to fault the pages in a scattered order (each fault
 *     in another 2 MiB than the last: the leaf-table cache misses).
 *            translate       LINEAR_MAP; after the faults, axalloc_translate of
 *                            every page, 4 rounds in a scattered order (count
 *                            with --toggle-collect=axalloc_translate)
 *            translate_many  the same lookups through axalloc_translate_many,
 *                            64 per call (--toggle-collect=axalloc_translate_many)
 *
 * Maps 4096 lazy pages (16 MiB at 1 GiB) in an EPT space, pre-populates one
 * page per 2 MiB with axalloc_write (so every leaf table exists and is not
 * counted: axalloc_write is not the toggled function), then faults every
 * other page once with axalloc_handle_fault(WRITE). Run under
 *   valgrind --tool=callgrind --toggle-collect=axalloc_handle_fault
 * instructions/fault = total Ir / faults (printed on stderr). The frame hooks
 * are a trivial stack over one static array; their few instructions are in
 * the count (a real host's allocator would cost more).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "axalloc.h"

#define PAGES 4096u
#define POOL (PAGES + 256u)
#define FRAME 4096u
#define PHYS_BASE 0x10000000ull
#define GPA 0x40000000ull

static uint8_t *mem;
static uint32_t freelist[POOL];
static uint32_t nfree;

static int32_t alloc_frame(void *ctx, uint64_t *hpa) {
    (void)ctx;
    if (nfree == 0) return -1;
    *hpa = PHYS_BASE + (uint64_t)freelist[--nfree] * FRAME;
    return 0;
}
static void free_frame(void *ctx, uint64_t hpa) {
    (void)ctx;
    freelist[nfree++] = (uint32_t)((hpa - PHYS_BASE) / FRAME);
}
static void *phys_to_virt(void *ctx, uint64_t hpa) {
    (void)ctx;
    return mem + (hpa - PHYS_BASE);
}
static void flush_tlb(void *ctx, uint64_t gpa, uint64_t size) { (void)ctx; (void)gpa; (void)size; }

static void die(const char *what, int rc) {
    fprintf(stderr, "%s: %s (%d)\n", what, axalloc_status_str(rc), rc);
    exit(1);
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "plain";
    int lookups = strncmp(mode, "translate", 9) == 0;
    int batched = strcmp(mode, "translate_many") == 0;
    int linear = strncmp(mode, "lin", 3) == 0 || lookups;
    int reserve = strstr(mode, "res") != NULL;
    int tables = strstr(mode, "-tables") != NULL;
    int scatter = strstr(mode, "-scatter") != NULL;
    mem = aligned_alloc(FRAME, (size_t)POOL * FRAME);
    if (!mem) return 1;
    memset(mem, 0, (size_t)POOL * FRAME); /* pre-zeroed pool */
    for (uint32_t i = 0; i < POOL; i++) freelist[i] = POOL - 1 - i;
    nfree = POOL;

    axalloc_config_t cfg = {
        .struct_size = sizeof(cfg),
        .format = AXALLOC_FORMAT_X86_EPT,
        .flags = AXALLOC_CFG_FRAMES_ZEROED | (linear ? AXALLOC_CFG_LINEAR_MAP : 0),
        .base = 0,
        .size = 1ull << 36,
        .linear_offset = linear ? (uint64_t)(uintptr_t)mem - PHYS_BASE : 0,
    };
    axalloc_hooks_t hooks = {0};
    hooks.struct_size = sizeof(hooks);
    hooks.alloc_frame = alloc_frame;
    hooks.free_frame = free_frame;
    hooks.phys_to_virt = phys_to_virt;
    hooks.flush_tlb = flush_tlb;
    axalloc_as_t *as;
    int rc = axalloc_as_create(&cfg, &hooks, &as);
    if (rc) die("create", rc);
    rc = axalloc_map_alloc(as, GPA, (uint64_t)PAGES * FRAME, AXALLOC_READ | AXALLOC_WRITE, false);
    if (rc) die("map_alloc", rc);
    uint32_t skip = tables ? 0 : 512; /* one pre-populated page per 2 MiB */
    if (!tables) {
        for (uint32_t i = 0; i < PAGES; i += 512) {
            uint8_t b = 1;
            rc = axalloc_write(as, GPA + (uint64_t)i * FRAME, &b, 1);
            if (rc) die("write", rc);
        }
    }
    if (reserve) {
        rc = axalloc_reserve(as, PAGES);
        if (rc) die("reserve", rc);
    }
    uint32_t faults = 0;
    for (uint32_t n = 0; n < PAGES; n++) {
        /* -scatter: every page once, in a scattered order (stride 1031) that
         * hops to another 2 MiB on almost every fault. */
        uint32_t i = scatter ? (n * 1031u) % PAGES : n;
        if (skip && i % skip == 0) continue;
        rc = axalloc_handle_fault(as, GPA + (uint64_t)i * FRAME, AXALLOC_WRITE);
        if (rc) die("fault", rc);
        faults++;
    }
    if (lookups) {
        /* 4 rounds over every page, in a scattered order (stride 1031, odd, so
         * every page is visited once per round). */
        uint64_t gpas[64], hpas[64], sum = 0;
        uint32_t done = 0, k = 0;
        for (uint32_t r = 0; r < 4; r++) {
            for (uint32_t i = 0; i < PAGES; i++) {
                gpas[k++] = GPA + (uint64_t)((i * 1031u) % PAGES) * FRAME + 8;
                if (k == 64) {
                    if (batched) {
                        rc = axalloc_translate_many(as, gpas, hpas, NULL, 64);
                        if (rc) die("translate_many", rc);
                    } else {
                        for (uint32_t j = 0; j < 64; j++) {
                            rc = axalloc_translate(as, gpas[j], &hpas[j], NULL);
                            if (rc) die("translate", rc);
                        }
                    }
                    for (uint32_t j = 0; j < 64; j++) sum += hpas[j];
                    done += 64;
                    k = 0;
                }
            }
        }
        fprintf(stderr, "mode %s: %u lookups (checksum %llx)\n", mode, done, (unsigned long long)sum);
        printf("%u\n", done);
        axalloc_as_destroy(as);
        free(mem);
        return 0;
    }
    axalloc_stats_t st;
    axalloc_as_stats(as, &st);
    fprintf(stderr, "mode %s: faults %u, guest_frames %llu, table_frames %llu, reserve left %llu\n", mode, faults,
            (unsigned long long)st.guest_frames, (unsigned long long)st.table_frames,
            (unsigned long long)st.reserve_frames);
    printf("%u\n", faults);
    axalloc_as_destroy(as);
    free(mem);
    return 0;
}
