/*
 * 2 MiB vs 4 KiB guest pages (issue 11), side by side on one frame pool:
 * populate 1 GiB, fault in 1 GiB, discard 1 GiB, a mixed-size guest, and the
 * bulk-zeroing floor (one memset of 1 GiB). Links the shipped archive.
 *
 *   bench/huge/run.sh [--reps N]      (builds build/ first if needed)
 *
 * The pool: one anonymous mapping, pre-faulted (a hypervisor's RAM is), with
 * 4 KiB frames on a stack and 2 MiB blocks (alloc_contig order 9) in a
 * 2 MiB-aligned area of the same mapping. "Host-physical" = offset + 1 GiB.
 */
#define _GNU_SOURCE
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "axalloc.h"

#define PAGE 4096ull
#define MIB (1ull << 20)
#define GIB (1ull << 30)
#define BLK (2 * MIB)
#define HBASE GIB /* host-physical address of the mapping's first byte */

static uint8_t *mem;
static uint64_t nframes, nblocks, frames_off, blocks_off;
static uint64_t *stack, top;
static uint8_t *blk_out;
static uint64_t frames_out, blocks_out, bad;

static uint64_t now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static int32_t h_alloc(void *c, uint64_t *out) {
  (void)c;
  if (!top) return -1;
  *out = HBASE + frames_off + stack[--top] * PAGE;
  frames_out++;
  return 0;
}
static void h_free(void *c, uint64_t hpa) {
  (void)c;
  uint64_t off = hpa - HBASE;
  if (off < frames_off || off >= frames_off + nframes * PAGE) {
    bad++;
    return;
  }
  stack[top++] = (off - frames_off) / PAGE;
  frames_out--;
}
static int32_t h_alloc_contig(void *c, uint32_t order, uint64_t *out) {
  (void)c;
  if (order != 9) return -1;
  for (uint64_t i = 0; i < nblocks; i++)
    if (!blk_out[i]) {
      blk_out[i] = 1;
      blocks_out++;
      *out = HBASE + blocks_off + i * BLK;
      return 0;
    }
  return -1;
}
static void h_free_contig(void *c, uint64_t hpa, uint32_t order) {
  (void)c;
  uint64_t i = (hpa - HBASE - blocks_off) / BLK;
  if (order != 9 || i >= nblocks || !blk_out[i]) {
    bad++;
    return;
  }
  blk_out[i] = 0;
  blocks_out--;
}
static void *h_p2v(void *c, uint64_t hpa) {
  (void)c;
  return mem + (hpa - HBASE);
}
static void h_flush(void *c, uint64_t gpa, uint64_t size) {
  (void)c;
  (void)gpa;
  (void)size;
}

static axalloc_as_t *space(void) {
  axalloc_hooks_t h = {.struct_size = sizeof h, .alloc_frame = h_alloc, .free_frame = h_free,
                       .phys_to_virt = h_p2v, .flush_tlb = h_flush, .alloc_contig = h_alloc_contig,
                       .free_contig = h_free_contig};
  axalloc_config_t cfg = {.struct_size = sizeof cfg, .format = AXALLOC_FORMAT_X86_EPT, .size = 1ull << 40};
  axalloc_as_t *as = NULL;
  if (axalloc_as_create(&cfg, &h, &as) != AXALLOC_OK) abort();
  return as;
}

static axalloc_stats_t stats(axalloc_as_t *as) {
  axalloc_stats_t s;
  if (axalloc_as_stats(as, &s) != AXALLOC_OK) abort();
  return s;
}

static void must(axalloc_status_t st, const char *what) {
  if (st != AXALLOC_OK) {
    fprintf(stderr, "%s: %s\n", what, axalloc_status_str(st));
    exit(1);
  }
}

/* The guest touching every page of [gpa, gpa + size): a fault wherever the
 * page is not present (what the hardware would exit for). */
static void touch_all(axalloc_as_t *as, uint64_t gpa, uint64_t size) {
  for (uint64_t a = gpa; a < gpa + size; a += PAGE)
    if (axalloc_translate(as, a, NULL, NULL) != AXALLOC_OK) must(axalloc_handle_fault(as, a, AXALLOC_WRITE), "fault");
}

struct row {
  double populate_ms, fault_ms, discard_ms;
  double protect_ro_ms, protect_rw_ms, protect_lazy_ms; /* protect 1 GiB: R (one flush), RW back, lazy */
  uint64_t protect_lazy_tables;
  uint64_t populate_tables, fault_tables, faults, huge_pages;
};

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}
static double med(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_d);
  return v[n / 2];
}

#define RW (AXALLOC_READ | AXALLOC_WRITE)
#define GPA (4 * GIB)

static struct row run(uint32_t huge, int reps) {
  struct row r = {0};
  double pop[16], flt[16], dis[16], pro[16], prw[16], plz[16];
  for (int i = 0; i < reps; i++) {
    axalloc_as_t *as = space();
    uint64_t t0 = now();
    must(axalloc_map_alloc(as, GPA, GIB, RW | huge, true), "populate");
    pop[i] = (double)(now() - t0) / 1e6;
    r.populate_tables = stats(as).table_frames;
    r.huge_pages = stats(as).huge_pages;
    /* protect: write removed from every present page (one flush), then
     * given back (no flush); 2 MiB pages change in place */
    t0 = now();
    must(axalloc_protect(as, GPA, GIB, AXALLOC_READ), "protect R");
    pro[i] = (double)(now() - t0) / 1e6;
    t0 = now();
    must(axalloc_protect(as, GPA, GIB, RW), "protect RW");
    prw[i] = (double)(now() - t0) / 1e6;
    t0 = now();
    must(axalloc_discard(as, GPA, GIB), "discard");
    dis[i] = (double)(now() - t0) / 1e6;
    axalloc_as_destroy(as);

    as = space();
    must(axalloc_map_alloc(as, GPA, GIB, RW | huge, false), "lazy");
    t0 = now();
    touch_all(as, GPA, GIB);
    flt[i] = (double)(now() - t0) / 1e6;
    r.fault_tables = stats(as).table_frames;
    r.faults = stats(as).faults;
    axalloc_as_destroy(as);

    /* protect of never-touched RAM: lazy entries in the leaf tables it links */
    as = space();
    must(axalloc_map_alloc(as, GPA, GIB, RW | huge, false), "lazy");
    t0 = now();
    must(axalloc_protect(as, GPA, GIB, AXALLOC_READ), "protect lazy");
    plz[i] = (double)(now() - t0) / 1e6;
    r.protect_lazy_tables = stats(as).table_frames;
    axalloc_as_destroy(as);
  }
  r.populate_ms = med(pop, reps);
  r.fault_ms = med(flt, reps);
  r.discard_ms = med(dis, reps);
  r.protect_ro_ms = med(pro, reps);
  r.protect_rw_ms = med(prw, reps);
  r.protect_lazy_ms = med(plz, reps);
  return r;
}

/* A mixed-size guest: 1 GiB + 12 KiB of RAM at an address 4 KiB past a
 * 2 MiB boundary (4 KiB edges, 2 MiB inside), faulted in, then a balloon
 * discards every 37th page (splitting most blocks), the guest re-touches
 * them (4 KiB frames), and finally everything is discarded. */
static void mixed(uint32_t huge, double *ms_out, axalloc_stats_t *mid) {
  axalloc_as_t *as = space();
  uint64_t gpa = GPA + PAGE, size = GIB + 3 * PAGE;
  uint64_t t0 = now();
  must(axalloc_map_alloc(as, gpa, size, RW | huge, false), "mixed map");
  touch_all(as, gpa, size);
  for (uint64_t a = gpa; a < gpa + size; a += 37 * PAGE) must(axalloc_discard(as, a, PAGE), "mixed discard");
  touch_all(as, gpa, size);
  *mid = stats(as);
  must(axalloc_discard(as, gpa, size), "mixed discard all");
  *ms_out = (double)(now() - t0) / 1e6;
  axalloc_as_destroy(as);
}

int main(int argc, char **argv) {
  int reps = 3;
  if (argc >= 3 && !strcmp(argv[1], "--reps")) reps = atoi(argv[2]);
  if (reps < 1 || reps > 16) reps = 3;
  nblocks = 520;
  nframes = 262144 + 4096;
  /* --blocks-last: the block area after the frames (checks that the two
   * areas of the mapping zero at the same speed) */
  bool blocks_last = argc > 1 && !strcmp(argv[argc - 1], "--blocks-last");
  blocks_off = blocks_last ? nframes * PAGE + BLK : 0;
  frames_off = blocks_last ? 0 : nblocks * BLK;
  uint64_t bytes = nblocks * BLK + nframes * PAGE + BLK;
  mem = mmap(NULL, bytes + BLK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (mem == MAP_FAILED) return perror("mmap"), 1;
  mem = (uint8_t *)(((uintptr_t)mem + BLK - 1) & ~(uintptr_t)(BLK - 1));
  stack = malloc(nframes * sizeof *stack);
  blk_out = calloc(nblocks, 1);
  for (uint64_t i = 0; i < nframes; i++) stack[i] = nframes - 1 - i;
  top = nframes;

  /* The floor: one bulk zeroing of 1 GiB (glibc memset: non-temporal
   * stores at this size), on memory of the same pool. */
  double z[16];
  for (int i = 0; i < reps; i++) {
    memset(mem + frames_off, 0xa5, GIB);
    uint64_t t0 = now();
    memset(mem + frames_off, 0, GIB);
    z[i] = (double)(now() - t0) / 1e6;
  }
  double zero_ms = med(z, reps);
  /* The library's own bulk zeroing (movnti, no vector register): filling
   * the reserve with 1 GiB of frames zeroes them on that path. */
  for (int i = 0; i < reps; i++) {
    axalloc_as_t *as = space();
    uint64_t t0 = now();
    must(axalloc_reserve(as, GIB / PAGE), "reserve");
    z[i] = (double)(now() - t0) / 1e6;
    axalloc_as_destroy(as);
  }
  double stream_ms = med(z, reps);

  struct row small = run(0, reps), big = run(AXALLOC_HUGE, reps);
  double mixed_small, mixed_big;
  axalloc_stats_t ms_small, ms_big;
  mixed(0, &mixed_small, &ms_small);
  mixed(AXALLOC_HUGE, &mixed_big, &ms_big);

  printf("2 MiB vs 4 KiB guest pages, EPT, 1 GiB, median of %d (ms per GiB)\n", reps);
  printf("| | 4 KiB pages | 2 MiB pages (`AXALLOC_HUGE`) |\n|---|---|---|\n");
  printf("| bulk zeroing of 1 GiB (memset, the floor) | %.1f | %.1f |\n", zero_ms, zero_ms);
  printf("| the library's bulk zeroing of 1 GiB (axalloc_reserve: movnti) | %.1f | %.1f |\n", stream_ms,
         stream_ms);
  printf("| populate 1 GiB | %.1f (%.2fx memset, %.2fx movnti) | %.1f (%.2fx memset, %.2fx movnti) |\n",
         small.populate_ms, small.populate_ms / zero_ms, small.populate_ms / stream_ms, big.populate_ms,
         big.populate_ms / zero_ms, big.populate_ms / stream_ms);
  printf("| table frames after populate | %" PRIu64 " | %" PRIu64 " |\n", small.populate_tables,
         big.populate_tables);
  printf("| huge_pages after populate | 0 | %" PRIu64 " |\n", big.huge_pages);
  printf("| fault in 1 GiB (touch every page) | %.1f | %.1f |\n", small.fault_ms, big.fault_ms);
  printf("| faults per GiB | %" PRIu64 " | %" PRIu64 " |\n", small.faults, big.faults);
  printf("| table frames after fault-in | %" PRIu64 " | %" PRIu64 " |\n", small.fault_tables, big.fault_tables);
  printf("| discard 1 GiB (populated) | %.1f | %.1f |\n", small.discard_ms, big.discard_ms);
  printf("| protect 1 GiB populated: READ (write removed, one flush) | %.2f | %.2f |\n", small.protect_ro_ms,
         big.protect_ro_ms);
  printf("| protect 1 GiB populated: READ|WRITE back (no flush) | %.2f | %.2f |\n", small.protect_rw_ms,
         big.protect_rw_ms);
  printf("| protect 1 GiB never touched: READ (lazy entries; table frames after) | %.2f (%" PRIu64 ") | %.2f (%" PRIu64
         ") |\n",
         small.protect_lazy_ms, small.protect_lazy_tables, big.protect_lazy_ms, big.protect_lazy_tables);
  printf("| mixed guest: map, fault in, discard every 37th page, re-touch, discard all | %.1f | %.1f |\n",
         mixed_small, mixed_big);
  printf("| ... mid-way: guest_frames / table_frames / huge_pages | %" PRIu64 " / %" PRIu64 " / %" PRIu64
         " | %" PRIu64 " / %" PRIu64 " / %" PRIu64 " |\n",
         ms_small.guest_frames, ms_small.table_frames, ms_small.huge_pages, ms_big.guest_frames,
         ms_big.table_frames, ms_big.huge_pages);
  if (bad || frames_out || blocks_out) {
    printf("POOL ERRORS: %" PRIu64 " bad frees, %" PRIu64 " frames and %" PRIu64 " blocks not back\n", bad,
           frames_out, blocks_out);
    return 1;
  }
  return 0;
}
