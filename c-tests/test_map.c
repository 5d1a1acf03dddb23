/* axalloc_map_alloc and axalloc_map_linear: the "map_alloc" and "map_linear"
 * bullets. */
#include "sem.h"

#define RW (AXALLOC_READ | AXALLOC_WRITE)
#define WINDOW (1ull << 40) /* 1 TiB: room to cross a 512 GiB boundary */

enum kind { LAZY, POPULATE, LINEAR };
static const char *kind_name[] = {"map_alloc(populate=false)", "map_alloc(populate=true)", "map_linear"};

static axalloc_status_t do_map(th_fx_t *f, enum kind k, uint64_t gpa, uint64_t hpa, uint64_t size, uint32_t flags) {
  switch (k) {
    case LAZY: return axalloc_map_alloc(f->as, gpa, size, flags, false);
    case POPULATE: return axalloc_map_alloc(f->as, gpa, size, flags, true);
    default: return axalloc_map_linear(f->as, gpa, hpa, size, flags);
  }
}

/* A map that must fail with `want` and change nothing at all. */
static void expect_map(th_fx_t *f, const char *what, enum kind k, uint64_t gpa, uint64_t hpa, uint64_t size,
                       uint32_t flags, axalloc_status_t want) {
  snap_t before = snap_of(f);
  size_t allocs = th_allocs(f->pool);
  axalloc_status_t st = do_map(f, k, gpa, hpa, size, flags);
  if (st != want) {
    fprintf(stderr, "%s %s: %s(gpa=%#llx hpa=%#llx size=%#llx flags=%#x) = %s, want %s\n", fmt_name(f->format),
            what, kind_name[k], (unsigned long long)gpa, (unsigned long long)hpa, (unsigned long long)size, flags,
            axalloc_status_str(st), axalloc_status_str(want));
    check_failures++;
  }
  if (want != AXALLOC_OK) {
    CHECK_SNAP_EQ(before, snap_of(f), 0);
    if (th_allocs(f->pool) != allocs && want != AXALLOC_ERR_NO_MEMORY) {
      /* validation errors must not even touch the allocator */
      fprintf(stderr, "%s %s: %s allocated %zu frames before failing with %s\n", fmt_name(f->format), what,
              kind_name[k], th_allocs(f->pool) - allocs, axalloc_status_str(want));
      check_failures++;
    }
  }
}

static void each_kind_invalid(th_fx_t *f, const char *what, uint64_t gpa, uint64_t size, uint32_t flags) {
  for (int k = LAZY; k <= LINEAR; k++)
    expect_map(f, what, (enum kind)k, gpa, 0x100000000ull + (gpa & (GIB - 1) & ~(PAGE - 1)), size, flags,
               AXALLOC_ERR_INVALID);
}

static void map_rejects_unaligned_range(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 4 * GIB, 1024);
    each_kind_invalid(&f, "gpa unaligned", 0x1001, PAGE, RW);
    each_kind_invalid(&f, "gpa unaligned 0x800", 0x800, 2 * PAGE, RW);
    each_kind_invalid(&f, "size unaligned", 0x1000, PAGE + 1, RW);
    each_kind_invalid(&f, "size below a page", 0x1000, 0xfff, RW);
    /* positive control: the aligned versions work */
    expect_map(&f, "aligned", LAZY, 0x1000, 0, PAGE, RW, AXALLOC_OK);
    expect_map(&f, "aligned", POPULATE, 0x2000, 0, PAGE, RW, AXALLOC_OK);
    expect_map(&f, "aligned", LINEAR, 0x3000, 0x100003000ull, PAGE, RW, AXALLOC_OK);
    th_scan(f.pool);
    CHECK_EQ_U64(th_stats(&f).regions, 3);
    CHECK(fx_done(&f) == 0);
  }
}

static void map_rejects_zero_size(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 4 * GIB, 1024);
    each_kind_invalid(&f, "zero size", 0x10000, 0, RW);
    each_kind_invalid(&f, "zero size at 0", 0, 0, RW);
    CHECK_EQ_U64(th_stats(&f).regions, 0);
    CHECK(fx_done(&f) == 0);
  }
}

static void map_rejects_overflowing_range(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, fmt_gpa_limit(fmt), 1024);
    /* gpa + size wraps around to a small value inside the window */
    each_kind_invalid(&f, "gpa+size wraps", 0x10000, 0xfffffffffffff000ull, RW);
    each_kind_invalid(&f, "gpa+size == 2^64", 0xfffffffffffff000ull, 0x1000, RW);
    each_kind_invalid(&f, "gpa near 2^64", 0xffffffffffe00000ull, 0x400000, RW);
    CHECK_EQ_U64(th_stats(&f).regions, 0);
    CHECK(fx_done(&f) == 0);
  }
}

static void map_rejects_range_outside_window(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, GIB, 2 * GIB, 1024); /* window [1 GiB, 3 GiB) */
    each_kind_invalid(&f, "below the window", 0, 2 * MIB, RW);
    each_kind_invalid(&f, "straddles the base", GIB - PAGE, 2 * PAGE, RW);
    each_kind_invalid(&f, "straddles the end", 3 * GIB - PAGE, 2 * PAGE, RW);
    each_kind_invalid(&f, "starts at the end", 3 * GIB, PAGE, RW);
    each_kind_invalid(&f, "beyond 2^48", GPA_LIMIT, PAGE, RW);
    each_kind_invalid(&f, "covers the window and more", 0, 4 * GIB, RW);
    /* both edges of the window are usable */
    expect_map(&f, "first page", POPULATE, GIB, 0, PAGE, RW, AXALLOC_OK);
    expect_map(&f, "last page", LAZY, 3 * GIB - PAGE, 0, PAGE, RW, AXALLOC_OK);
    expect_map(&f, "next to last", LINEAR, 3 * GIB - 2 * PAGE, 0x200000000ull, PAGE, RW, AXALLOC_OK);
    th_scan(f.pool);
    CHECK_EQ_U64(th_stats(&f).regions, 3);
    CHECK(fx_done(&f) == 0);
  }
}

static void map_requires_read(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 4 * GIB, 1024);
    uint32_t bad[] = {0, AXALLOC_WRITE, AXALLOC_EXEC, AXALLOC_WRITE | AXALLOC_EXEC, AXALLOC_DEVICE,
                      AXALLOC_WRITE | AXALLOC_EXEC | AXALLOC_DEVICE};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) each_kind_invalid(&f, "flags without READ", MIB, MIB, bad[i]);
    CHECK_EQ_U64(th_stats(&f).regions, 0);
    /* every combination with READ is accepted */
    for (uint32_t fl = 0; fl < 8; fl++) {
      uint32_t flags = AXALLOC_READ | (fl << 1);
      uint64_t gpa = (uint64_t)(fl + 1) * 2 * MIB;
      expect_map(&f, "READ + extra", (enum kind)(fl % 3), gpa, 0x100000000ull + gpa, MIB, flags, AXALLOC_OK);
    }
    th_scan(f.pool);
    CHECK_EQ_U64(th_stats(&f).regions, 8);
    CHECK(fx_done(&f) == 0);
  }
}

static void map_rejects_unknown_flag_bits(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 4 * GIB, 1024);
    /* bit 4 is AXALLOC_HUGE (a map_alloc flag, test_huge); 5-7 are reserved */
    uint32_t bad[] = {AXALLOC_READ | (1u << 6), AXALLOC_READ | (1u << 5), AXALLOC_READ | (1u << 31),
                      0xffffffffu, RW | AXALLOC_EXEC | AXALLOC_DEVICE | (1u << 16)};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) each_kind_invalid(&f, "unknown flag bits", MIB, MIB, bad[i]);
    CHECK_EQ_U64(th_stats(&f).regions, 0);
    CHECK(fx_done(&f) == 0);
  }
}

/* Overlap with an existing region (alloc or linear) → EXISTS, nothing
 * changed; adjacency is not overlap. */
static void map_overlap_is_exists(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 8 * GIB, 2048);
    /* R1 = alloc [4 MiB, 8 MiB) (lazy), R2 = linear [16 MiB, 20 MiB) */
    CHECK_STATUS(axalloc_map_alloc(f.as, 4 * MIB, 4 * MIB, RW, false), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_linear(f.as, 16 * MIB, 0x100000000ull, 4 * MIB, RW), AXALLOC_OK);
    th_scan(f.pool);
    struct {
      uint64_t gpa, size;
      const char *what;
    } ov[] = {
        {4 * MIB, 4 * MIB, "same range"},
        {2 * MIB, 2 * MIB + PAGE, "overlaps the first page"},
        {8 * MIB - PAGE, 2 * MIB, "overlaps the last page"},
        {2 * MIB, 8 * MIB, "contains it"},
        {5 * MIB, PAGE, "inside it"},
        {2 * MIB, 16 * MIB, "spans both regions"},
        {16 * MIB, PAGE, "first page of linear"},
        {20 * MIB - PAGE, 2 * MIB, "last page of linear"},
        {12 * MIB, 6 * MIB, "into linear from the left"},
    };
    for (size_t i = 0; i < sizeof ov / sizeof ov[0]; i++)
      for (int k = LAZY; k <= LINEAR; k++)
        expect_map(&f, ov[i].what, (enum kind)k, ov[i].gpa, 0x200000000ull, ov[i].size, RW, AXALLOC_ERR_EXISTS);
    /* the page of R1 that a rejected populate covered is still lazy */
    CHECK_STATUS(axalloc_translate(f.as, 5 * MIB, NULL, NULL), AXALLOC_ERR_NOT_MAPPED);
    /* the linear region still maps its own HPAs */
    CHECK_EQ_U64(xlate(&f, 16 * MIB + 0x123, NULL), 0x100000123ull);
    /* adjacent on each side is fine, for every kind */
    expect_map(&f, "adjacent left of R1", POPULATE, 4 * MIB - 2 * PAGE, 0, 2 * PAGE, RW, AXALLOC_OK);
    expect_map(&f, "adjacent right of R1", LINEAR, 8 * MIB, 0x300000000ull, 2 * PAGE, RW, AXALLOC_OK);
    expect_map(&f, "adjacent left of R2", LAZY, 16 * MIB - PAGE, 0, PAGE, RW, AXALLOC_OK);
    expect_map(&f, "adjacent right of R2", POPULATE, 20 * MIB, 0, PAGE, RW, AXALLOC_OK);
    th_scan(f.pool);
    CHECK_EQ_U64(th_stats(&f).regions, 6);
    CHECK_EQ_U64(th_stats(&f).mapped_bytes, 8 * MIB + 2 * PAGE + 2 * PAGE + PAGE + PAGE);
    CHECK(fx_done(&f) == 0);
  }
}

/* populate=false records the region and allocates no guest frame (nor maps
 * anything); the first fault then brings exactly one. */
static void map_alloc_lazy_allocates_no_guest_frame(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 8 * GIB, 1024);
    size_t in_use = th_in_use(f.pool);
    CHECK_STATUS(axalloc_map_alloc(f.as, GIB - 2 * MIB, 4 * MIB, RW, false), AXALLOC_OK); /* 1024 pages */
    axalloc_stats_t s = th_stats(&f);
    CHECK_EQ_U64(s.guest_frames, 0);
    CHECK_EQ_U64(s.regions, 1);
    CHECK_EQ_U64(s.mapped_bytes, 4 * MIB);
    CHECK(th_in_use(f.pool) - in_use <= 4); /* at most bookkeeping / tables, never 1024 pages */
    CHECK_NONE_MAPPED(&f, GIB - 2 * MIB, 4 * MIB);
    CHECK_EQ_U64(th_flushes(f.pool), 0);
    /* recorded: a fault inside resolves, one outside does not */
    CHECK_STATUS(axalloc_handle_fault(f.as, GIB, AXALLOC_READ), AXALLOC_OK);
    CHECK_STATUS(axalloc_handle_fault(f.as, GIB + 2 * MIB, AXALLOC_READ), AXALLOC_ERR_NOT_MAPPED);
    CHECK_EQ_U64(th_stats(&f).guest_frames, 1);
    th_scan(f.pool);
    CHECK(fx_done(&f) == 0);
  }
}

/* populate=true maps every page, each to its own pool frame, zeroed although
 * the pool hands out 0xA5 garbage. */
static void map_alloc_populate_maps_every_page_zeroed(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 8 * GIB, 2048);
    const uint64_t gpa = 2 * MIB - 16 * PAGE, size = 2 * MIB + 32 * PAGE; /* crosses two 2 MiB boundaries */
    const uint64_t pages = size / PAGE;
    CHECK_STATUS(axalloc_map_alloc(f.as, gpa, size, AXALLOC_READ | AXALLOC_EXEC, true), AXALLOC_OK);
    th_scan(f.pool);
    axalloc_stats_t s = th_stats(&f);
    CHECK_EQ_U64(s.guest_frames, pages);
    CHECK_EQ_U64(s.faults, 0);
    CHECK_EQ_U64(s.regions, 1);
    CHECK_EQ_U64(s.mapped_bytes, size);
    static unsigned char seen[2048];
    memset(seen, 0, sizeof seen);
    int bad = 0;
    for (uint64_t a = gpa; a < gpa + size; a += PAGE) {
      uint64_t ps = 0, hpa = xlate(&f, a + 0x10, &ps);
      if (hpa == ~0ull || ps != PAGE || (hpa & 0xfff) != 0x10 || !th_owns(f.pool, hpa)) {
        if (!bad++)
          fprintf(stderr, "%s: page %#llx: hpa %#llx size %#llx\n", fmt_name(fmt), (unsigned long long)a,
                  (unsigned long long)hpa, (unsigned long long)ps);
        continue;
      }
      size_t idx = (size_t)((hpa - 0x40000000ull) / PAGE);
      if (seen[idx]++) bad++; /* two pages on one frame */
      if (!frame_is_zero(f.pool, hpa)) {
        if (!bad++) fprintf(stderr, "%s: page %#llx not zeroed\n", fmt_name(fmt), (unsigned long long)a);
      }
    }
    CHECK_EQ_U64(bad, 0);
    /* the pages next to the region are not mapped */
    CHECK_NONE_MAPPED(&f, gpa - PAGE, PAGE);
    CHECK_NONE_MAPPED(&f, gpa + size, PAGE);
    CHECK(fx_done(&f) == 0);
  }
}

/* One map_alloc(populate) / map_linear under failure injection at every
 * allocation point: NO_MEMORY with nothing changed, until it succeeds.
 * [keep, keep + keep_size) is an existing populated range whose translation
 * must survive every failure. */
static void map_all_or_nothing_loop(th_fx_t *f, enum kind k, uint64_t gpa, uint64_t hpa, uint64_t size,
                                    uint64_t keep, uint64_t keep_size, long min_allocs) {
  uint64_t keep_hpa[64];
  for (uint64_t i = 0; i < keep_size / PAGE && i < 64; i++) keep_hpa[i] = xlate(f, keep + i * PAGE, NULL);
  long n;
  for (n = 0; n < 4000; n++) {
    snap_t before = snap_of(f);
    size_t failed = th_failed_allocs(f->pool);
    th_fail_after(f->pool, n);
    axalloc_status_t st = do_map(f, k, gpa, hpa, size, RW);
    th_fail_never(f->pool);
    if (st == AXALLOC_OK) break;
    if (st != AXALLOC_ERR_NO_MEMORY) {
      fprintf(stderr, "%s [n=%ld] %s = %s, want NO_MEMORY\n", fmt_name(f->format), n, kind_name[k],
              axalloc_status_str(st));
      check_failures++;
      break;
    }
    CHECK(th_failed_allocs(f->pool) > failed);
    CHECK_SNAP_EQ(before, snap_of(f), n);
    CHECK_NONE_MAPPED(f, gpa, size);
    /* the region was not recorded */
    CHECK_STATUS(axalloc_handle_fault(f->as, gpa, AXALLOC_READ), AXALLOC_ERR_NOT_MAPPED);
    CHECK_STATUS(axalloc_handle_fault(f->as, gpa + size - PAGE, AXALLOC_READ), AXALLOC_ERR_NOT_MAPPED);
    for (uint64_t i = 0; i < keep_size / PAGE && i < 64; i++)
      CHECK_EQ_U64(xlate(f, keep + i * PAGE, NULL), keep_hpa[i]);
    CHECK_EQ_U64(th_errors(f->pool), 0);
    if (check_failures > 50) break;
  }
  if (n < min_allocs) {
    fprintf(stderr, "%s %s succeeded after only %ld allocations, expected >= %ld\n", fmt_name(f->format),
            kind_name[k], n, min_allocs);
    check_failures++;
  }
  th_scan(f->pool);
  CHECK_ALL_MAPPED(f, gpa, size);
  for (uint64_t a = gpa; k == LINEAR && a < gpa + size; a += PAGE) CHECK_EQ_U64(xlate(f, a, NULL), hpa + (a - gpa));
}

static void map_alloc_populate_all_or_nothing(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, WINDOW, 2048);
    /* crosses a 1 GiB (and so a 2 MiB) boundary: 2 PDs/PTs, 6 frames */
    map_all_or_nothing_loop(&f, POPULATE, GIB - 3 * PAGE, 0, 6 * PAGE, 0, 0, 6 + 3);
    /* crosses the 512 GiB boundary: new PDPT + PD + PT on the right */
    map_all_or_nothing_loop(&f, POPULATE, 512 * GIB - 2 * PAGE, 0, 4 * PAGE, GIB - 3 * PAGE, 6 * PAGE, 4 + 3);
    /* into the partly used PT of [1 GiB, 1 GiB + 2 MiB) and across into a new one */
    map_all_or_nothing_loop(&f, POPULATE, GIB + 2 * MIB - 4 * PAGE, 0, 8 * PAGE, GIB - 3 * PAGE, 6 * PAGE, 8 + 1);
    axalloc_stats_t s = th_stats(&f);
    CHECK_EQ_U64(s.regions, 3);
    CHECK_EQ_U64(s.guest_frames, 6 + 4 + 8);
    /* every populated page is zero */
    uint64_t gpas[] = {GIB - 3 * PAGE, 512 * GIB - 2 * PAGE, GIB + 2 * MIB - 4 * PAGE};
    for (int r = 0; r < 3; r++)
      for (int i = 0; i < 4; i++) CHECK(frame_is_zero(f.pool, xlate(&f, gpas[r] + (uint64_t)i * PAGE, NULL)));
    CHECK(fx_done(&f) == 0);
  }
}

static void map_linear_all_or_nothing(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, WINDOW, 2048);
    CHECK_STATUS(axalloc_map_alloc(f.as, 512 * GIB - 4 * MIB, 2 * PAGE, RW, true), AXALLOC_OK);
    th_scan(f.pool);
    /* 4K head, 2M, |512 GiB|, 2M, 4K tail: tables on both sides */
    uint64_t gpa = 512 * GIB - 2 * MIB - 2 * PAGE;
    map_all_or_nothing_loop(&f, LINEAR, gpa, 0x4000000000ull - 2 * MIB - 2 * PAGE, 4 * MIB + 4 * PAGE,
                            512 * GIB - 4 * MIB, 2 * PAGE,
                            fmt_levels(fmt) == 3 ? 2 : 3); /* 3 levels: no PDPT right of 512 GiB */
    CHECK_EQ_U64(th_stats(&f).guest_frames, 2);
    CHECK(fx_done(&f) == 0);
  }
}

typedef struct probe {
  uint64_t off;  /* from gpa0 */
  uint64_t size; /* expected leaf size */
} probe_t;

static void check_linear_probes(th_fx_t *f, const char *what, uint64_t gpa0, uint64_t hpa0, const probe_t *pr,
                                size_t n) {
  for (size_t i = 0; i < n; i++) {
    uint64_t ps = 0, hpa = xlate(f, gpa0 + pr[i].off, &ps);
    if (hpa != hpa0 + pr[i].off || ps != pr[i].size) {
      fprintf(stderr, "%s %s: translate(%#llx) = hpa %#llx size %#llx, want hpa %#llx size %#llx\n",
              fmt_name(f->format), what, (unsigned long long)(gpa0 + pr[i].off), (unsigned long long)hpa,
              (unsigned long long)ps, (unsigned long long)(hpa0 + pr[i].off), (unsigned long long)pr[i].size);
      check_failures++;
    }
  }
}

/* Huge leaves wherever both addresses and the remaining size allow. */
static void map_linear_uses_huge_leaves(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 64 * GIB, 1024);
    /* 2 x 4K | 2M | 1G | 2M | 2 x 4K, hpa congruent to gpa modulo 1 GiB */
    uint64_t gpa0 = GIB - 2 * MIB - 2 * PAGE, hpa0 = 0x100000000ull + gpa0;
    uint64_t size = 2 * PAGE + 2 * MIB + GIB + 2 * MIB + 2 * PAGE;
    CHECK_STATUS(axalloc_map_linear(f.as, gpa0, hpa0, size, AXALLOC_READ), AXALLOC_OK);
    probe_t a[] = {
        {0, PAGE},
        {PAGE + 0x321, PAGE},
        {2 * PAGE, 2 * MIB},
        {2 * PAGE + 2 * MIB - 1, 2 * MIB},
        {2 * PAGE + 2 * MIB, GIB},
        {2 * PAGE + 2 * MIB + GIB / 2 + 0x1234, GIB},
        {2 * PAGE + 2 * MIB + GIB - 1, GIB},
        {2 * PAGE + 2 * MIB + GIB, 2 * MIB},
        {2 * PAGE + 2 * MIB + GIB + 2 * MIB, PAGE},
        {2 * PAGE + 2 * MIB + GIB + 2 * MIB + PAGE + 0xfff, PAGE},
    };
    check_linear_probes(&f, "aligned", gpa0, hpa0, a, sizeof a / sizeof a[0]);
    CHECK_STATUS(axalloc_translate(f.as, gpa0 - 1, NULL, NULL), AXALLOC_ERR_NOT_MAPPED);
    CHECK_STATUS(axalloc_translate(f.as, gpa0 + size, NULL, NULL), AXALLOC_ERR_NOT_MAPPED);

    /* hpa 4K-aligned only: 4K leaves everywhere */
    uint64_t g1 = 4 * GIB, h1 = 0x200000000ull + PAGE;
    CHECK_STATUS(axalloc_map_linear(f.as, g1, h1, 4 * MIB, AXALLOC_READ), AXALLOC_OK);
    probe_t b[] = {{0, PAGE}, {2 * MIB, PAGE}, {4 * MIB - PAGE, PAGE}};
    check_linear_probes(&f, "hpa 4K-aligned", g1, h1, b, 3);

    /* hpa 2M- but not 1G-aligned, gpa 1G-aligned: 2M leaves only */
    uint64_t g2 = 8 * GIB, h2 = 0x300000000ull + 2 * MIB;
    CHECK_STATUS(axalloc_map_linear(f.as, g2, h2, GIB, AXALLOC_READ), AXALLOC_OK);
    probe_t c[] = {{0, 2 * MIB}, {GIB / 2, 2 * MIB}, {GIB - 1, 2 * MIB}};
    check_linear_probes(&f, "hpa 2M-aligned", g2, h2, c, 3);

    /* remaining size one page short of 1 GiB: 2M leaves, then 4K ones */
    uint64_t g3 = 16 * GIB, h3 = 0x400000000ull;
    CHECK_STATUS(axalloc_map_linear(f.as, g3, h3, GIB - PAGE, AXALLOC_READ), AXALLOC_OK);
    probe_t d[] = {{0, 2 * MIB}, {GIB - 4 * MIB, 2 * MIB}, {GIB - 2 * MIB, PAGE}, {GIB - 2 * PAGE, PAGE}};
    check_linear_probes(&f, "size 1G - 4K", g3, h3, d, 4);
    CHECK_STATUS(axalloc_translate(f.as, g3 + GIB - PAGE, NULL, NULL), AXALLOC_ERR_NOT_MAPPED);

    /* gpa 1G-aligned, hpa 1G-aligned, exactly 1 GiB: one leaf, one table (the PDPT) */
    uint64_t g4 = 32 * GIB, h4 = 0x500000000ull;
    axalloc_stats_t s0 = th_stats(&f);
    CHECK_STATUS(axalloc_map_linear(f.as, g4, h4, GIB, AXALLOC_READ), AXALLOC_OK);
    probe_t e[] = {{0, GIB}, {GIB - 1, GIB}};
    check_linear_probes(&f, "exactly 1G", g4, h4, e, 2);
    CHECK_EQ_U64(th_stats(&f).table_frames, s0.table_frames); /* PDPT for [0, 512 GiB) exists already */
    th_scan(f.pool);
    CHECK(fx_done(&f) == 0);
  }
}

static void map_linear_no_1g_leaves_with_cfg_no_huge_1g(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, AXALLOC_CFG_NO_HUGE_1G, 0, 64 * GIB, 2048);
    uint64_t gpa0 = GIB - 2 * MIB - 2 * PAGE, hpa0 = 0x100000000ull + gpa0;
    uint64_t size = 2 * PAGE + 2 * MIB + GIB + 2 * MIB + 2 * PAGE;
    CHECK_STATUS(axalloc_map_linear(f.as, gpa0, hpa0, size, AXALLOC_READ | AXALLOC_WRITE), AXALLOC_OK);
    probe_t a[] = {
        {0, PAGE},
        {2 * PAGE, 2 * MIB},
        {2 * PAGE + 2 * MIB, 2 * MIB},
        {2 * PAGE + 2 * MIB + GIB / 2 + 0x1234, 2 * MIB},
        {2 * PAGE + 2 * MIB + GIB - 1, 2 * MIB},
        {2 * PAGE + 2 * MIB + GIB, 2 * MIB},
        {2 * PAGE + 2 * MIB + GIB + 2 * MIB, PAGE},
    };
    check_linear_probes(&f, "NO_HUGE_1G", gpa0, hpa0, a, sizeof a / sizeof a[0]);
    /* every 2 MiB of the middle gigabyte: never a 1 GiB leaf */
    int big = 0;
    for (uint64_t g = GIB; g < 2 * GIB; g += 2 * MIB) {
      uint64_t ps = 0;
      xlate(&f, g, &ps);
      big += ps != 2 * MIB;
    }
    CHECK_EQ_U64(big, 0);
    th_scan(f.pool);
    CHECK(fx_done(&f) == 0);
  }
}

/* map_linear takes table frames only: no guest frame, and the leaves point at
 * the caller's HPAs, not at pool frames. */
static void map_linear_allocates_no_guest_frames(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 8 * GIB, 1024);
    size_t in_use = th_in_use(f.pool);
    CHECK_STATUS(axalloc_map_linear(f.as, 0, 0x100000000ull, 4 * MIB, RW), AXALLOC_OK); /* 4K-aligned: many 4K leaves */
    CHECK_STATUS(axalloc_map_linear(f.as, 4 * MIB, 0x100400000ull + PAGE, 4 * MIB, RW), AXALLOC_OK);
    th_scan(f.pool);
    axalloc_stats_t s = th_stats(&f);
    CHECK_EQ_U64(s.guest_frames, 0);
    CHECK_EQ_U64(s.faults, 0);
    CHECK_EQ_U64(s.regions, 2);
    CHECK_EQ_U64(s.mapped_bytes, 8 * MIB);
    /* pool frames taken: table frames (+ bookkeeping), never one per page */
    CHECK(th_in_use(f.pool) - in_use <= (s.table_frames - 1) + 2);
    CHECK(th_in_use(f.pool) - in_use < 16);
    int bad = 0;
    for (uint64_t a = 4 * MIB; a < 8 * MIB; a += PAGE) bad += xlate(&f, a, NULL) != 0x100400000ull + PAGE + (a - 4 * MIB);
    CHECK_EQ_U64(bad, 0);
    CHECK(fx_done(&f) == 0);
  }
}

static void map_linear_rejects_bad_hpa(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 8 * GIB, 1024);
    const uint64_t HPA_LIM = fmt_hpa_limit(fmt); /* 2^52; 2^48 for Arm's 48-bit output addresses */
    expect_map(&f, "hpa unaligned", LINEAR, 0, 0x100000001ull, 2 * MIB, RW, AXALLOC_ERR_INVALID);
    expect_map(&f, "hpa unaligned 0x800", LINEAR, 0, 0x100000800ull, PAGE, RW, AXALLOC_ERR_INVALID);
    expect_map(&f, "hpa at 2^52", LINEAR, 0, HPA_LIM, PAGE, RW, AXALLOC_ERR_INVALID);
    expect_map(&f, "hpa range passes 2^52", LINEAR, 0, HPA_LIM - PAGE, 2 * PAGE, RW, AXALLOC_ERR_INVALID);
    expect_map(&f, "hpa near 2^64", LINEAR, 0, 0xfffffffffffff000ull, 2 * PAGE, RW, AXALLOC_ERR_INVALID);
    expect_map(&f, "hpa 2^63", LINEAR, 0, 1ull << 63, PAGE, RW, AXALLOC_ERR_INVALID);
    CHECK_EQ_U64(th_stats(&f).regions, 0);
    /* the range ending exactly at 2^52 is fine */
    expect_map(&f, "hpa range ends at 2^52", LINEAR, 0, HPA_LIM - 2 * PAGE, 2 * PAGE, RW, AXALLOC_OK);
    CHECK_EQ_U64(xlate(&f, PAGE + 5, NULL), HPA_LIM - PAGE + 5);
    /* hpa 0 is a valid host-physical address */
    expect_map(&f, "hpa 0", LINEAR, 2 * MIB, 0, 2 * MIB, RW, AXALLOC_OK);
    uint64_t ps = 0;
    CHECK_EQ_U64(xlate(&f, 2 * MIB + 0x42, &ps), 0x42);
    CHECK_EQ_U64(ps, 2 * MIB);
    th_scan(f.pool);
    CHECK(fx_done(&f) == 0);
  }
}

/* Neither map kind (nor a failed one) ever calls flush_tlb: adding mappings
 * is a not-present -> present change. */
static void map_never_flushes(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 8 * GIB, 2048);
    CHECK_STATUS(axalloc_map_alloc(f.as, 0, 2 * MIB, RW, true), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_alloc(f.as, 2 * MIB, 2 * MIB, RW, false), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_linear(f.as, GIB, 0x100000000ull, GIB + 2 * MIB + PAGE, RW), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_alloc(f.as, 0, PAGE, RW, true), AXALLOC_ERR_EXISTS);
    th_fail_after(f.pool, 0);
    CHECK_STATUS(axalloc_map_alloc(f.as, 4 * GIB, 4 * MIB, RW, true), AXALLOC_ERR_NO_MEMORY);
    CHECK_STATUS(axalloc_map_linear(f.as, 5 * GIB, 0x100000000ull, PAGE, RW), AXALLOC_ERR_NO_MEMORY);
    th_fail_never(f.pool);
    th_scan(f.pool);
    CHECK_EQ_U64(th_flushes(f.pool), 0);
    CHECK(fx_done(&f) == 0);
  }
}

TEST_MAIN(T(map_rejects_unaligned_range), T(map_rejects_zero_size), T(map_rejects_overflowing_range),
          T(map_rejects_range_outside_window), T(map_requires_read), T(map_rejects_unknown_flag_bits),
          T(map_overlap_is_exists), T(map_alloc_lazy_allocates_no_guest_frame),
          T(map_alloc_populate_maps_every_page_zeroed), T(map_alloc_populate_all_or_nothing),
          T(map_linear_all_or_nothing), T(map_linear_uses_huge_leaves),
          T(map_linear_no_1g_leaves_with_cfg_no_huge_1g), T(map_linear_allocates_no_guest_frames),
          T(map_linear_rejects_bad_hpa), T(map_never_flushes))
