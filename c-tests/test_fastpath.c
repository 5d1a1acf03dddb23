/*
 * The fast paths: axalloc_translate_many against one-by-one
 * axalloc_translate, and AXALLOC_CFG_LINEAR_MAP (the host's direct map)
 * against phys_to_virt — same results, and phys_to_virt no longer called
 * for the library's frames.
 */
#include "sem.h"

#define BASE_HPA 0x40000000ull

/* Hooks over a pool that count phys_to_virt calls. */
typedef struct counting {
  axalloc_hooks_t inner;
  unsigned long p2v_calls;
} counting_t;

static counting_t *counting_of(void *ctx) { return ctx; }
static int32_t c_alloc(void *ctx, uint64_t *out) { return counting_of(ctx)->inner.alloc_frame(counting_of(ctx)->inner.ctx, out); }
static void c_free(void *ctx, uint64_t hpa) { counting_of(ctx)->inner.free_frame(counting_of(ctx)->inner.ctx, hpa); }
static void *c_p2v(void *ctx, uint64_t hpa) {
  __atomic_fetch_add(&counting_of(ctx)->p2v_calls, 1, __ATOMIC_RELAXED);
  return counting_of(ctx)->inner.phys_to_virt(counting_of(ctx)->inner.ctx, hpa);
}
static void c_flush(void *ctx, uint64_t gpa, uint64_t size) {
  counting_of(ctx)->inner.flush_tlb(counting_of(ctx)->inner.ctx, gpa, size);
}
static int32_t c_alloc_contig(void *ctx, uint32_t order, uint64_t *out) {
  return counting_of(ctx)->inner.alloc_contig(counting_of(ctx)->inner.ctx, order, out);
}
static void c_free_contig(void *ctx, uint64_t hpa, uint32_t order) {
  counting_of(ctx)->inner.free_contig(counting_of(ctx)->inner.ctx, hpa, order);
}

static axalloc_as_t *make(th_pool_t *p, counting_t *c, uint32_t fmt, bool linear) {
  c->inner = th_hooks(p);
  c->p2v_calls = 0;
  axalloc_hooks_t h = {.struct_size = sizeof h, .ctx = c, .alloc_frame = c_alloc, .free_frame = c_free, .phys_to_virt = c_p2v, .flush_tlb = c_flush,
                       .alloc_contig = c_alloc_contig, .free_contig = c_free_contig};
  axalloc_config_t cfg = {.struct_size = sizeof cfg, .format = fmt, .base = 0, .size = 64 * GIB};
  if (linear) {
    cfg.flags = AXALLOC_CFG_LINEAR_MAP;
    cfg.linear_offset = (uint64_t)(uintptr_t)th_virt(p, BASE_HPA) - BASE_HPA;
  }
  axalloc_as_t *as = NULL;
  CHECK_STATUS(axalloc_as_create(&cfg, &h, &as), AXALLOC_OK);
  if (as) th_attach(p, as, fmt);
  return as;
}

/* The same operations on two spaces, one with the direct map: identical
 * translations, contents and counters; with the direct map phys_to_virt is
 * never called for the library's frames. */
static void linear_map_matches_phys_to_virt(void) {
  FOR_EACH_FORMAT(fmt) {
    th_pool_t *pa = th_pool_new(4096, BASE_HPA, false), *pb = th_pool_new(4096, BASE_HPA, false);
    counting_t ca, cb;
    axalloc_as_t *a = make(pa, &ca, fmt, false), *b = make(pb, &cb, fmt, true);
    if (!a || !b) return;
    axalloc_as_t *both[2] = {a, b};
    for (int k = 0; k < 2; k++) {
      CHECK_STATUS(axalloc_map_alloc(both[k], GIB, 4 * MIB, AXALLOC_READ | AXALLOC_WRITE, false), AXALLOC_OK);
      CHECK_STATUS(axalloc_map_alloc(both[k], 2 * GIB, 2 * MIB, AXALLOC_READ, true), AXALLOC_OK);
      for (uint64_t i = 0; i < 64; i++) CHECK_STATUS(axalloc_handle_fault(both[k], GIB + i * 3 * PAGE, AXALLOC_WRITE), AXALLOC_OK);
      CHECK_STATUS(axalloc_reserve(both[k], 8), AXALLOC_OK);
      for (uint64_t i = 0; i < 16; i++) CHECK_STATUS(axalloc_handle_fault(both[k], GIB + 2 * MIB + i * PAGE, AXALLOC_READ), AXALLOC_OK);
      CHECK_STATUS(axalloc_unmap(both[k], GIB + MIB, MIB), AXALLOC_OK);
    }
    for (uint64_t g = GIB; g < 2 * GIB + 2 * MIB; g += (g < GIB + 4 * MIB) ? PAGE : 256 * PAGE) {
      uint64_t ha = 1, hb = 2, sa = 3, sb = 4;
      axalloc_status_t ra = axalloc_translate(a, g, &ha, &sa), rb = axalloc_translate(b, g, &hb, &sb);
      CHECK_EQ_U64(ra, rb);
      if (ra == AXALLOC_OK && rb == AXALLOC_OK) {
        CHECK_EQ_U64(ha, hb); /* both pools hand out frames in the same order */
        CHECK_EQ_U64(sa, sb);
      }
    }
    axalloc_stats_t s1, s2;
    CHECK_STATUS(axalloc_as_stats(a, &s1), AXALLOC_OK);
    CHECK_STATUS(axalloc_as_stats(b, &s2), AXALLOC_OK);
    CHECK(memcmp(&s1, &s2, sizeof s1) == 0);
    CHECK(ca.p2v_calls > 0);
    CHECK_EQ_U64(cb.p2v_calls, 0);
    /* Destroy frees what the dead table names: no reachability walk then
     * (as th_fx_done). */
    th_check_reachability(pa, false);
    th_check_reachability(pb, false);
    axalloc_as_destroy(a);
    axalloc_as_destroy(b);
    th_mark_destroyed(pa);
    th_mark_destroyed(pb);
    CHECK_EQ_U64(th_in_use(pa), 0);
    CHECK_EQ_U64(th_in_use(pb), 0);
    CHECK_EQ_U64(th_errors(pa) + th_errors(pb), 0);
    th_pool_free(pa);
    th_pool_free(pb);
  }
}

/* An offset that is not page-aligned, or one given without the flag. */
static void linear_map_rejects_bad_offset(void) {
  th_pool_t *p = th_pool_new(16, BASE_HPA, false);
  axalloc_hooks_t h = th_hooks(p);
  axalloc_config_t cfg = {.struct_size = sizeof cfg,
                          .format = AXALLOC_FORMAT_X86_EPT,
                          .flags = AXALLOC_CFG_LINEAR_MAP,
                          .size = GIB,
                          .linear_offset = 8};
  axalloc_as_t *as = (axalloc_as_t *)(uintptr_t)1;
  CHECK_STATUS(axalloc_as_create(&cfg, &h, &as), AXALLOC_ERR_INVALID);
  cfg.flags = 0;
  cfg.linear_offset = 4096;
  CHECK_STATUS(axalloc_as_create(&cfg, &h, &as), AXALLOC_ERR_INVALID);
  CHECK(as == (axalloc_as_t *)(uintptr_t)1);
  CHECK_EQ_U64(th_in_use(p), 0);
  th_pool_free(p);
}

/* translate_many answers exactly what translate answers, address by address
 * (present 4 KiB, untouched lazy, 2 MiB and 1 GiB linear leaves, holes, out
 * of the window), with UINT64_MAX / 0 where translate says NOT_MAPPED. */
static void translate_many_matches_translate(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 64 * GIB, 2048);
    CHECK_STATUS(axalloc_map_alloc(f.as, GIB, 2 * MIB, AXALLOC_READ | AXALLOC_WRITE, false), AXALLOC_OK);
    for (uint64_t i = 0; i < 512; i += 5) CHECK_STATUS(axalloc_handle_fault(f.as, GIB + i * PAGE, AXALLOC_READ), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_linear(f.as, 4 * GIB, 0x800000000ull, GIB + 4 * MIB, AXALLOC_READ), AXALLOC_OK);
    enum { N = 3000 };
    static uint64_t gpas[N], hpas[N], sizes[N];
    uint64_t x = 12345;
    for (int i = 0; i < N; i++) {
      x = x * 6364136223846793005ull + 1442695040888963407ull;
      switch (i % 4) {
      case 0: gpas[i] = GIB + (x >> 20) % (2 * MIB); break;
      case 1: gpas[i] = 4 * GIB + (x >> 20) % (GIB + 8 * MIB); break;
      case 2: gpas[i] = (x >> 16) % (64 * GIB); break;
      default: gpas[i] = (i & 8) ? ~0ull - (x >> 40) : (1ull << 48) + (x >> 30); break;
      }
    }
    CHECK_STATUS(axalloc_translate_many(f.as, gpas, hpas, sizes, N), AXALLOC_OK);
    int mismatches = 0;
    for (int i = 0; i < N; i++) {
      uint64_t h = 0, s = 0;
      axalloc_status_t r = axalloc_translate(f.as, gpas[i], &h, &s);
      bool same = r == AXALLOC_OK ? (hpas[i] == h && sizes[i] == s) : (hpas[i] == UINT64_MAX && sizes[i] == 0);
      if (!same && mismatches++ < 5)
        fprintf(stderr, "gpa %#llx: many %#llx/%#llx, single %d %#llx/%#llx\n", (unsigned long long)gpas[i],
                (unsigned long long)hpas[i], (unsigned long long)sizes[i], r, (unsigned long long)h, (unsigned long long)s);
    }
    CHECK_EQ_U64(mismatches, 0);
    /* page_sizes may be NULL; n == 0 needs no arrays. */
    CHECK_STATUS(axalloc_translate_many(f.as, gpas, hpas, NULL, 4), AXALLOC_OK);
    CHECK_STATUS(axalloc_translate_many(f.as, NULL, NULL, NULL, 0), AXALLOC_OK);
    CHECK(th_fx_done(&f) == 0);
  }
}

static void translate_many_rejects_null(void) {
  uint64_t g = 0, h = 0;
  CHECK_STATUS(axalloc_translate_many(NULL, &g, &h, NULL, 1), AXALLOC_ERR_INVALID);
  th_fx_t f = th_fx_new(AXALLOC_FORMAT_X86_EPT, 0, 0, GIB, 64);
  CHECK_STATUS(axalloc_translate_many(f.as, NULL, &h, NULL, 1), AXALLOC_ERR_INVALID);
  CHECK_STATUS(axalloc_translate_many(f.as, &g, NULL, NULL, 1), AXALLOC_ERR_INVALID);
  CHECK(th_fx_done(&f) == 0);
}

TEST_MAIN(T(linear_map_matches_phys_to_virt), T(linear_map_rejects_bad_offset), T(translate_many_matches_translate),
          T(translate_many_rejects_null))
