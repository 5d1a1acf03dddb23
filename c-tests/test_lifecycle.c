/*
 * Lifecycle: destroy gives every frame back exactly once from any state and
 * calls no hook afterwards; every guest frame is zeroed before it becomes
 * visible (unless AXALLOC_CFG_FRAMES_ZEROED, in which case the library must
 * not spend time zeroing: garbage a lying pool hands out stays visible);
 * table frames are counted in the stats and are the 4-level minimum.
 */
#include "check.h"
#include "host.h"

#define KIB (1ull << 10)
#define MIB (1ull << 20)
#define GIB (1ull << 30)
#define PAGE 4096ull
#define POOL_BASE 0x40000000ull

/* ------------------------------------------------------------------------ */
/* Hooks wrapped around the host pool's: they additionally record what
 * happens during axalloc_as_destroy (no allocation, every free after the
 * flush) and flag any hook call once destroy has returned. */

typedef struct spy {
  th_pool_t *pool;
  axalloc_hooks_t inner;
  int phase; /* 0 = live, 1 = inside destroy, 2 = destroy returned */
  size_t destroy_allocs, destroy_frees, destroy_flushes, frees_before_flush, after_destroy;
  th_flush_t destroy_flush;
} spy_t;

static int32_t spy_alloc(void *ctx, uint64_t *out) {
  spy_t *s = ctx;
  if (s->phase == 1) s->destroy_allocs++;
  if (s->phase == 2) s->after_destroy++;
  return s->inner.alloc_frame(s->inner.ctx, out);
}
static void spy_free(void *ctx, uint64_t hpa) {
  spy_t *s = ctx;
  if (s->phase == 1) {
    s->destroy_frees++;
    if (s->destroy_flushes == 0) s->frees_before_flush++;
  }
  if (s->phase == 2) s->after_destroy++;
  s->inner.free_frame(s->inner.ctx, hpa);
}
static void *spy_p2v(void *ctx, uint64_t hpa) {
  spy_t *s = ctx;
  if (s->phase == 2) s->after_destroy++;
  return s->inner.phys_to_virt(s->inner.ctx, hpa);
}
static void spy_flush(void *ctx, uint64_t gpa, uint64_t size) {
  spy_t *s = ctx;
  if (s->phase == 1) {
    s->destroy_flushes++;
    s->destroy_flush = (th_flush_t){gpa, size};
  }
  if (s->phase == 2) s->after_destroy++;
  s->inner.flush_tlb(s->inner.ctx, gpa, size);
}

typedef struct fx {
  th_fx_t f; /* pool + as + format (th_fx_done is not used: see fx_done) */
  spy_t *spy;
  uint64_t base, size;
  size_t frames;
} fx_t;

static fx_t fx_new(uint32_t format, uint32_t cfg_flags, uint64_t base, uint64_t size, size_t frames, bool pool_zeroed) {
  fx_t x = {0};
  x.base = base;
  x.size = size;
  x.frames = frames;
  x.f.format = format;
  x.f.pool = th_pool_new(frames, POOL_BASE, pool_zeroed);
  x.spy = calloc(1, sizeof *x.spy);
  if (!x.spy) abort();
  x.spy->pool = x.f.pool;
  x.spy->inner = th_hooks(x.f.pool);
  axalloc_hooks_t h = x.spy->inner;
  h.ctx = x.spy;
  h.alloc_frame = spy_alloc;
  h.free_frame = spy_free;
  h.phys_to_virt = spy_p2v;
  h.flush_tlb = spy_flush;
  axalloc_config_t cfg = {
      .struct_size = sizeof cfg, .format = format, .flags = cfg_flags, .base = base, .size = size};
  axalloc_status_t st = axalloc_as_create(&cfg, &h, &x.f.as);
  if (st != AXALLOC_OK) {
    fprintf(stderr, "fx_new: axalloc_as_create: %s\n", axalloc_status_str(st));
    abort();
  }
  th_attach(x.f.pool, x.f.as, format);
  return x;
}

/* Destroys and checks: pool empty, every frame given back exactly once, one
 * flush over the whole window before any free, no allocation in destroy, no
 * hook after it, no host-detected error. */
static void fx_done(fx_t *x, const char *what) {
  th_pool_t *p = x->f.pool;
  int before = check_failures;
  /* The whole table dies with the address space (one flush over the window,
   * then every frame back), so the host's "freed while the table still
   * reaches it" check does not apply inside destroy; its other checks
   * (leak, double / foreign free, no flush since last reachable) stay on,
   * and the spy checks that every free follows the flush. */
  th_check_reachability(p, false);
  x->spy->phase = 1;
  axalloc_as_destroy(x->f.as);
  x->spy->phase = 2;
  th_mark_destroyed(p);
  CHECK_EQ_U64(th_in_use(p), 0);
  CHECK_EQ_U64(th_frees(p), th_allocs(p));
  CHECK_EQ_U64(x->spy->destroy_allocs, 0);
  CHECK_EQ_U64(x->spy->destroy_flushes, 1);
  CHECK_EQ_U64(x->spy->destroy_flush.gpa, x->base);
  CHECK_EQ_U64(x->spy->destroy_flush.size, x->size);
  CHECK_EQ_U64(x->spy->frees_before_flush, 0);
  CHECK(x->spy->destroy_frees > 0);
  /* a NULL destroy afterwards is a no-op and calls nothing */
  axalloc_as_destroy(NULL);
  CHECK_EQ_U64(x->spy->after_destroy, 0);
  if (th_errors(p)) fprintf(stderr, "host: %s\n", th_first_error(p));
  CHECK_EQ_U64(th_errors(p), 0);
  if (check_failures != before) fprintf(stderr, "  ^ in state: %s (%s)\n", what, x->f.format == AXALLOC_FORMAT_X86_EPT ? "EPT" : "NPT");
  th_pool_free(p);
  free(x->spy);
  x->f.pool = NULL;
  x->f.as = NULL;
  x->spy = NULL;
}

static axalloc_stats_t stats(const fx_t *x) { return th_stats(&x->f); }

/* ------------------------------------------------------------------------ */
/* Destroy from many states. */

typedef void (*state_fn)(fx_t *x);

static void st_empty(fx_t *x) { (void)x; }

static void st_lazy_untouched(fx_t *x) {
  CHECK_STATUS(axalloc_map_alloc(x->f.as, 1 * MIB, 64 * PAGE, AXALLOC_READ | AXALLOC_WRITE, false), AXALLOC_OK);
}

static void st_lazy_touched(fx_t *x) {
  uint64_t frames = stats(x).guest_frames;
  CHECK_STATUS(axalloc_map_alloc(x->f.as, 16 * MIB, 1024 * PAGE, AXALLOC_READ | AXALLOC_WRITE, false), AXALLOC_OK);
  for (uint64_t i = 0; i < 1024; i += 3) CHECK_STATUS(axalloc_handle_fault(x->f.as, 16 * MIB + i * PAGE, AXALLOC_WRITE), AXALLOC_OK);
  CHECK_EQ_U64(stats(x).guest_frames - frames, 342);
}

static void st_populated(fx_t *x) {
  CHECK_STATUS(axalloc_map_alloc(x->f.as, GIB - 2 * MIB, 4 * MIB, AXALLOC_READ, true), AXALLOC_OK);
  CHECK_STATUS(axalloc_map_alloc(x->f.as, 0, PAGE, AXALLOC_READ | AXALLOC_EXEC, true), AXALLOC_OK);
}

static void st_linear(fx_t *x) {
  uint64_t frames = stats(x).guest_frames;
  CHECK_STATUS(axalloc_map_linear(x->f.as, 2 * GIB, 0x100000000ull, GIB, AXALLOC_READ | AXALLOC_DEVICE), AXALLOC_OK);
  CHECK_STATUS(axalloc_map_linear(x->f.as, 3 * GIB, 0x100000000ull, 6 * MIB + 3 * PAGE, AXALLOC_READ), AXALLOC_OK);
  CHECK_STATUS(axalloc_map_linear(x->f.as, 8 * MIB, POOL_BASE, 4 * PAGE, AXALLOC_READ | AXALLOC_WRITE), AXALLOC_OK);
  CHECK_EQ_U64(stats(x).guest_frames, frames);
}

static void st_partial_unmaps(fx_t *x) {
  st_populated(x);
  st_linear(x);
  st_lazy_touched(x);
  /* trim head and tail, punch holes, split a 1 GiB and a 2 MiB leaf */
  CHECK_STATUS(axalloc_unmap(x->f.as, GIB - 2 * MIB, 5 * PAGE), AXALLOC_OK);
  CHECK_STATUS(axalloc_unmap(x->f.as, GIB + 2 * MIB - 7 * PAGE, 7 * PAGE), AXALLOC_OK);
  CHECK_STATUS(axalloc_unmap(x->f.as, GIB - MIB, 9 * PAGE), AXALLOC_OK);
  CHECK_STATUS(axalloc_unmap(x->f.as, 2 * GIB + 5 * MIB + PAGE, PAGE), AXALLOC_OK);
  CHECK_STATUS(axalloc_unmap(x->f.as, 3 * GIB + 2 * MIB + 17 * PAGE, 2 * PAGE), AXALLOC_OK);
  CHECK_STATUS(axalloc_unmap(x->f.as, 16 * MIB + 100 * PAGE, 200 * PAGE), AXALLOC_OK);
  CHECK(stats(x).regions >= 6);
}

static void st_written(fx_t *x) {
  uint64_t frames = stats(x).guest_frames;
  CHECK_STATUS(axalloc_map_alloc(x->f.as, 3 * MIB, 16 * PAGE, AXALLOC_READ, false), AXALLOC_OK);
  static unsigned char buf[5 * 4096];
  memset(buf, 0x3c, sizeof buf);
  CHECK_STATUS(axalloc_write(x->f.as, 3 * MIB + 100, buf, sizeof buf), AXALLOC_OK);
  CHECK_EQ_U64(stats(x).guest_frames - frames, 6);
}

static void st_after_failures(fx_t *x) {
  st_lazy_untouched(x);
  for (long n = 0; n < 8; n++) {
    th_fail_after(x->f.pool, n);
    CHECK_STATUS(axalloc_map_alloc(x->f.as, 5 * GIB - 4 * PAGE, 64 * PAGE, AXALLOC_READ, true), AXALLOC_ERR_NO_MEMORY);
    th_fail_after(x->f.pool, n);
    int st = axalloc_handle_fault(x->f.as, 1 * MIB + (uint64_t)n * PAGE, AXALLOC_READ);
    CHECK(st == AXALLOC_OK || st == AXALLOC_ERR_NO_MEMORY);
    th_fail_after(x->f.pool, n);
    st = axalloc_map_linear(x->f.as, 5 * GIB + 2 * MIB, 0x200000000ull, 2 * MIB + PAGE, AXALLOC_READ);
    CHECK(st == AXALLOC_OK || st == AXALLOC_ERR_NO_MEMORY);
    if (st == AXALLOC_OK) {
      /* a split with no frame: NO_MEMORY, or OK if the table was reserved */
      th_fail_after(x->f.pool, 0);
      st = axalloc_unmap(x->f.as, 5 * GIB + 2 * MIB + PAGE, PAGE);
      CHECK(st == AXALLOC_OK || st == AXALLOC_ERR_NO_MEMORY);
      th_fail_never(x->f.pool);
      CHECK_STATUS(axalloc_unmap(x->f.as, 5 * GIB + 2 * MIB, 2 * MIB + PAGE), AXALLOC_OK);
    }
  }
  th_fail_never(x->f.pool);
}

static void st_everything_unmapped(fx_t *x) {
  st_partial_unmaps(x);
  st_written(x);
  CHECK_STATUS(axalloc_unmap(x->f.as, x->base, x->size), AXALLOC_OK);
  axalloc_stats_t s = stats(x);
  CHECK_EQ_U64(s.regions, 0);
  CHECK_EQ_U64(s.guest_frames, 0);
  CHECK_EQ_U64(s.table_frames, 1);
}

static void st_everything(fx_t *x) {
  st_partial_unmaps(x);
  st_written(x);
  st_after_failures(x);
}

static const struct {
  const char *name;
  state_fn fn;
} states[] = {
    {"empty", st_empty},
    {"lazy untouched", st_lazy_untouched},
    {"lazy touched", st_lazy_touched},
    {"populated", st_populated},
    {"linear", st_linear},
    {"partial unmaps", st_partial_unmaps},
    {"written lazy", st_written},
    {"after failures", st_after_failures},
    {"everything unmapped", st_everything_unmapped},
    {"everything", st_everything},
};

static void destroy_returns_all(uint32_t format) {
  for (size_t i = 0; i < sizeof states / sizeof states[0]; i++) {
    for (int cfg = 0; cfg < 2; cfg++) {
      fx_t x = fx_new(format, cfg ? AXALLOC_CFG_NO_HUGE_1G : 0, 0, 8 * GIB, 4096, false);
      states[i].fn(&x);
      th_scan(x.f.pool);
      fx_done(&x, states[i].name);
    }
  }
  /* a window that does not start at 0 */
  fx_t x = fx_new(format, 0, 4 * GIB, 4 * GIB, 256, false);
  CHECK_STATUS(axalloc_map_alloc(x.f.as, 5 * GIB, 4 * PAGE, AXALLOC_READ, true), AXALLOC_OK);
  fx_done(&x, "window at 4 GiB");
}

static void destroy_returns_all_ept(void) { destroy_returns_all(AXALLOC_FORMAT_X86_EPT); }
static void destroy_returns_all_npt(void) { destroy_returns_all(AXALLOC_FORMAT_X86_NPT); }

static void destroy_null(void) {
  axalloc_as_destroy(NULL);
  CHECK_EQ_U64(axalloc_as_root(NULL), 0);
}

/* ------------------------------------------------------------------------ */
/* Zeroing. The default host pool fills every frame with 0xA5 when it hands
 * it out and with 0xDD when it takes it back, so a frame the library forgot
 * to zero shows. */

static int count_nonzero(th_pool_t *p, uint64_t hpa) {
  const unsigned char *v = th_virt(p, hpa & ~(PAGE - 1));
  int n = 0;
  if (!v) return 4096;
  for (size_t i = 0; i < PAGE; i++) n += v[i] != 0;
  return n;
}

static int count_not(th_pool_t *p, uint64_t hpa, unsigned char b) {
  const unsigned char *v = th_virt(p, hpa & ~(PAGE - 1));
  int n = 0;
  if (!v) return 4096;
  for (size_t i = 0; i < PAGE; i++) n += v[i] != b;
  return n;
}

/* Every present entry in every table, counted; entries that are not present
 * must not look like garbage either (an unzeroed table frame would make
 * 0xA5A5... entries "present" for both formats and the host walk fails). */
static bool present_entry(uint32_t format, uint64_t raw) {
  return format == AXALLOC_FORMAT_X86_EPT ? (raw & 7) != 0 : (raw & 1) != 0;
}
static void count_tree(th_pool_t *p, uint32_t format, uint64_t table, int level, uint64_t *tables, uint64_t *leaves) {
  const uint64_t *t = th_virt(p, table);
  if (!t) {
    fprintf(stderr, "table %#llx is not a pool frame\n", (unsigned long long)table);
    check_failures++;
    return;
  }
  (*tables)++;
  for (int i = 0; i < 512; i++) {
    uint64_t raw = t[i];
    if (!present_entry(format, raw)) continue;
    if (level == 0 || (raw & 0x80)) (*leaves)++;
    else count_tree(p, format, raw & 0x000ffffffffff000ull, level - 1, tables, leaves);
  }
}

static void zeroed_before_visible(uint32_t format) {
  fx_t x = fx_new(format, 0, 0, 4 * GIB, 2048, false);
  axalloc_as_t *as = x.f.as;
  th_pool_t *p = x.f.pool;
  uint64_t hpa = 0;
  /* populate */
  CHECK_STATUS(axalloc_map_alloc(as, 2 * MIB - 8 * PAGE, 16 * PAGE, AXALLOC_READ | AXALLOC_WRITE, true), AXALLOC_OK);
  for (uint64_t i = 0; i < 16; i++) {
    CHECK_STATUS(axalloc_translate(as, 2 * MIB - 8 * PAGE + i * PAGE, &hpa, NULL), AXALLOC_OK);
    CHECK_EQ_U64(count_nonzero(p, hpa), 0);
  }
  /* fault */
  CHECK_STATUS(axalloc_map_alloc(as, GIB, 16 * PAGE, AXALLOC_READ | AXALLOC_WRITE | AXALLOC_EXEC, false), AXALLOC_OK);
  /* read of a never-touched lazy page: zeros, nothing allocated */
  size_t allocs = th_allocs(p);
  unsigned char buf[64];
  memset(buf, 0xEE, sizeof buf);
  CHECK_STATUS(axalloc_read(as, GIB + 5 * PAGE - 32, buf, sizeof buf), AXALLOC_OK);
  for (size_t i = 0; i < sizeof buf; i++) CHECK(buf[i] == 0);
  CHECK_EQ_U64(th_allocs(p), allocs);
  CHECK_STATUS(axalloc_handle_fault(as, GIB + 3 * PAGE + 17, AXALLOC_EXEC), AXALLOC_OK);
  CHECK_STATUS(axalloc_translate(as, GIB + 3 * PAGE, &hpa, NULL), AXALLOC_OK);
  CHECK_EQ_U64(count_nonzero(p, hpa), 0);
  /* write to a lazy page: everything but the written bytes is zero */
  memset(buf, 0x11, sizeof buf);
  CHECK_STATUS(axalloc_write(as, GIB + 7 * PAGE + 1000, buf, 10), AXALLOC_OK);
  CHECK_STATUS(axalloc_translate(as, GIB + 7 * PAGE, &hpa, NULL), AXALLOC_OK);
  CHECK_EQ_U64(count_nonzero(p, hpa), 10);
  /* frames reused after unmap (poisoned by the host, then 0xA5 again) */
  static unsigned char dirt[16 * 4096];
  memset(dirt, 0x77, sizeof dirt);
  CHECK_STATUS(axalloc_write(as, 2 * MIB - 8 * PAGE, dirt, sizeof dirt), AXALLOC_OK);
  th_scan(p);
  for (int round = 0; round < 3; round++) {
    CHECK_STATUS(axalloc_unmap(as, 2 * MIB - 8 * PAGE, 16 * PAGE), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_alloc(as, 2 * MIB - 8 * PAGE, 16 * PAGE, AXALLOC_READ | AXALLOC_WRITE, round == 1), AXALLOC_OK);
    for (uint64_t i = 0; i < 16; i++) {
      if (round != 1) {
        if (i % 2) CHECK_STATUS(axalloc_handle_fault(as, 2 * MIB - 8 * PAGE + i * PAGE, AXALLOC_READ), AXALLOC_OK);
        else CHECK_STATUS(axalloc_write(as, 2 * MIB - 8 * PAGE + i * PAGE, dirt, 1), AXALLOC_OK);
      }
      CHECK_STATUS(axalloc_translate(as, 2 * MIB - 8 * PAGE + i * PAGE, &hpa, NULL), AXALLOC_OK);
      CHECK_EQ_U64(count_nonzero(p, hpa), (round != 1 && i % 2 == 0) ? 1 : 0);
    }
    CHECK_STATUS(axalloc_write(as, 2 * MIB - 8 * PAGE, dirt, sizeof dirt), AXALLOC_OK);
    th_scan(p);
  }
  /* table frames were zeroed too: only real entries are present */
  uint64_t tables = 0, leaves = 0;
  count_tree(p, format, axalloc_as_root(as), 3, &tables, &leaves);
  CHECK_EQ_U64(leaves, 16 + 2);
  CHECK_EQ_U64(tables, stats(&x).table_frames);
  fx_done(&x, "zeroing");
}

static void zeroed_before_visible_ept(void) { zeroed_before_visible(AXALLOC_FORMAT_X86_EPT); }
static void zeroed_before_visible_npt(void) { zeroed_before_visible(AXALLOC_FORMAT_X86_NPT); }

/* With AXALLOC_CFG_FRAMES_ZEROED the host promises zeroed frames and the
 * library must not zero them again. Observable contract: a pool that breaks
 * the promise for guest frames (garbage seeded into the frames it will hand
 * out next) shows that garbage through the guest page. Table frames are
 * prepared first (and are really zero), so only guest frames get garbage.
 * Without the flag, the same garbage must be zeroed. */
#define SEED 0x5A

static void frames_zeroed_flag(uint32_t format, bool flag) {
  const size_t frames = 256;
  /* a zeroed pool: it does not overwrite frames when handing them out */
  fx_t x = fx_new(format, flag ? AXALLOC_CFG_FRAMES_ZEROED : 0, 0, 4 * GIB, frames, true);
  axalloc_as_t *as = x.f.as;
  th_pool_t *p = x.f.pool;
  const uint64_t g = GIB + 2 * MIB;
  /* tables for [g, g + 2 MiB) and bookkeeping for two more regions */
  CHECK_STATUS(axalloc_map_linear(as, g, 0x300000000ull, PAGE, AXALLOC_READ), AXALLOC_OK);
  CHECK_STATUS(axalloc_map_alloc(as, g + PAGE, 8 * PAGE, AXALLOC_READ | AXALLOC_WRITE, false), AXALLOC_OK);
  CHECK_STATUS(axalloc_map_alloc(as, g + 64 * PAGE, 4 * PAGE, AXALLOC_READ | AXALLOC_WRITE, false), AXALLOC_OK);
  CHECK_EQ_U64(th_frees(p), 0); /* so frames in use are exactly [0, in_use) of the LIFO pool */
  size_t in_use = th_in_use(p);
  for (size_t i = in_use; i < frames; i++) memset(th_virt(p, POOL_BASE + i * PAGE), SEED, PAGE);
  uint64_t hpa = 0;
  /* fault: exactly one frame, the guest's */
  size_t allocs = th_allocs(p);
  CHECK_STATUS(axalloc_handle_fault(as, g + PAGE, AXALLOC_READ), AXALLOC_OK);
  CHECK_EQ_U64(th_allocs(p) - allocs, 1);
  CHECK_STATUS(axalloc_translate(as, g + PAGE, &hpa, NULL), AXALLOC_OK);
  CHECK(hpa >= POOL_BASE + in_use * PAGE);
  if (flag) CHECK_EQ_U64(count_not(p, hpa, SEED), 0);
  else CHECK_EQ_U64(count_nonzero(p, hpa), 0);
  /* write to a lazy page */
  unsigned char b[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  allocs = th_allocs(p);
  CHECK_STATUS(axalloc_write(as, g + 2 * PAGE + 8, b, sizeof b), AXALLOC_OK);
  CHECK_EQ_U64(th_allocs(p) - allocs, 1);
  CHECK_STATUS(axalloc_translate(as, g + 2 * PAGE, &hpa, NULL), AXALLOC_OK);
  if (flag) CHECK_EQ_U64(count_not(p, hpa, SEED), 8);
  else CHECK_EQ_U64(count_nonzero(p, hpa), 8);
  /* never-touched lazy pages still read as zeros (not through a frame) */
  unsigned char r[32];
  memset(r, 0xEE, sizeof r);
  CHECK_STATUS(axalloc_read(as, g + 5 * PAGE, r, sizeof r), AXALLOC_OK);
  for (size_t i = 0; i < sizeof r; i++) CHECK(r[i] == 0);
  /* populate of a region whose tables exist */
  allocs = th_allocs(p);
  CHECK_STATUS(axalloc_map_alloc(as, g + 32 * PAGE, 4 * PAGE, AXALLOC_READ, true), AXALLOC_OK);
  size_t got = th_allocs(p) - allocs;
  CHECK(got >= 4);
  for (uint64_t i = 0; i < 4; i++) {
    CHECK_STATUS(axalloc_translate(as, g + (32 + i) * PAGE, &hpa, NULL), AXALLOC_OK);
    if (flag) CHECK_EQ_U64(count_not(p, hpa, SEED), 0);
    else CHECK_EQ_U64(count_nonzero(p, hpa), 0);
  }
  /* the tables never got garbage: the walk finds exactly the real leaves */
  uint64_t tables = 0, leaves = 0;
  count_tree(p, format, axalloc_as_root(as), 3, &tables, &leaves);
  CHECK_EQ_U64(leaves, 1 + 2 + 4);
  th_scan(p);
  fx_done(&x, flag ? "FRAMES_ZEROED" : "not FRAMES_ZEROED");
}

static void frames_zeroed_not_rezeroed_ept(void) { frames_zeroed_flag(AXALLOC_FORMAT_X86_EPT, true); }
static void frames_zeroed_not_rezeroed_npt(void) { frames_zeroed_flag(AXALLOC_FORMAT_X86_NPT, true); }
static void seeded_garbage_zeroed_ept(void) { frames_zeroed_flag(AXALLOC_FORMAT_X86_EPT, false); }
static void seeded_garbage_zeroed_npt(void) { frames_zeroed_flag(AXALLOC_FORMAT_X86_NPT, false); }

/* ------------------------------------------------------------------------ */
/* Table frames in the stats: the 4-level minimum. */

static void table_frames_small(uint32_t format) {
  static const struct {
    uint64_t gpa, size;
    uint64_t tables;
  } cases[] = {
      {0, PAGE, 4},                                /* root + PDPT + PD + PT */
      {GIB - PAGE, 2 * PAGE, 6},                   /* crosses 1 GiB: 2 PD, 2 PT */
      {2 * MIB, 2 * MIB, 4},                       /* one full PT */
      {2 * MIB - PAGE, 2 * MIB + 2 * PAGE, 6},     /* three PTs */
      {(1ull << 39) - PAGE, 2 * PAGE, 7},          /* crosses 512 GiB: 2 PDPT */
      {(1ull << 39) - 4 * MIB, 8 * MIB, 1 + 2 + 2 + 4},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    fx_t x = fx_new(format, 0, 0, 1ull << 40, 8192, false);
    CHECK_EQ_U64(stats(&x).table_frames, 1);
    CHECK_STATUS(axalloc_map_alloc(x.f.as, cases[i].gpa, cases[i].size, AXALLOC_READ, true), AXALLOC_OK);
    axalloc_stats_t s = stats(&x);
    CHECK_EQ_U64(s.table_frames, cases[i].tables);
    CHECK_EQ_U64(s.guest_frames, cases[i].size / PAGE);
    uint64_t tables = 0, leaves = 0;
    count_tree(x.f.pool, format, axalloc_as_root(x.f.as), 3, &tables, &leaves);
    CHECK_EQ_U64(tables, s.table_frames);
    CHECK_EQ_U64(leaves, cases[i].size / PAGE);
    th_scan(x.f.pool);
    CHECK_STATUS(axalloc_unmap(x.f.as, cases[i].gpa, cases[i].size), AXALLOC_OK);
    CHECK_EQ_U64(stats(&x).table_frames, 1);
    fx_done(&x, "table frames");
  }
}

static void table_frames_small_ept(void) { table_frames_small(AXALLOC_FORMAT_X86_EPT); }
static void table_frames_small_npt(void) { table_frames_small(AXALLOC_FORMAT_X86_NPT); }

/* 1 GiB in 4 KiB pages: 1 root + 1 PDPT + 1 PD + 512 PT = 515. (With a
 * zeroed pool and AXALLOC_CFG_FRAMES_ZEROED: nobody writes 2 GiB of zeros,
 * and the count does not depend on zeroing.) */
static void table_frames_1gib(uint32_t format) {
  const size_t pages = (size_t)(GIB / PAGE);
  fx_t x = fx_new(format, AXALLOC_CFG_FRAMES_ZEROED, 0, 4 * GIB, pages + 515 + 64, true);
  th_check_reachability(x.f.pool, false); /* per-free table walks would be O(n^2) here */
  CHECK_STATUS(axalloc_map_alloc(x.f.as, GIB, GIB, AXALLOC_READ | AXALLOC_WRITE, true), AXALLOC_OK);
  axalloc_stats_t s = stats(&x);
  CHECK_EQ_U64(s.table_frames, 515);
  CHECK_EQ_U64(s.guest_frames, pages);
  CHECK_EQ_U64(s.regions, 1);
  CHECK_EQ_U64(s.mapped_bytes, GIB);
  uint64_t tables = 0, leaves = 0;
  count_tree(x.f.pool, format, axalloc_as_root(x.f.as), 3, &tables, &leaves);
  CHECK_EQ_U64(tables, 515);
  CHECK_EQ_U64(leaves, pages);
  uint64_t hpa = 0, ps = 0;
  CHECK_STATUS(axalloc_translate(x.f.as, 2 * GIB - 1, &hpa, &ps), AXALLOC_OK);
  CHECK_EQ_U64(ps, PAGE);
  CHECK_EQ_U64(count_nonzero(x.f.pool, hpa), 0);
  th_scan(x.f.pool);
  CHECK_STATUS(axalloc_unmap(x.f.as, GIB, GIB), AXALLOC_OK);
  s = stats(&x);
  CHECK_EQ_U64(s.table_frames, 1);
  CHECK_EQ_U64(s.guest_frames, 0);
  fx_done(&x, "1 GiB populated");
}

static void table_frames_1gib_ept(void) { table_frames_1gib(AXALLOC_FORMAT_X86_EPT); }
static void table_frames_1gib_npt(void) { table_frames_1gib(AXALLOC_FORMAT_X86_NPT); }

TEST_MAIN(T(destroy_returns_all_ept), T(destroy_returns_all_npt), T(destroy_null), T(zeroed_before_visible_ept),
          T(zeroed_before_visible_npt), T(frames_zeroed_not_rezeroed_ept), T(frames_zeroed_not_rezeroed_npt),
          T(seeded_garbage_zeroed_ept), T(seeded_garbage_zeroed_npt), T(table_frames_small_ept),
          T(table_frames_small_npt), T(table_frames_1gib_ept), T(table_frames_1gib_npt))
