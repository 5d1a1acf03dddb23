/* axalloc_unmap: the "unmap" bullet (munmap-like, split, one flush, frees
 * after the flush, empty tables freed). */
#include "sem.h"

#define RW (AXALLOC_READ | AXALLOC_WRITE)

/* The last flush covers [gpa, gpa + size). */
#define CHECK_FLUSH_COVERS(f, gpa, size) check_flush_covers_((f), (gpa), (size), __FILE__, __LINE__)
static void check_flush_covers_(th_fx_t *f, uint64_t gpa, uint64_t size, const char *file, int line) {
  th_flush_t fl = th_last_flush(f->pool);
  if (!(fl.gpa <= gpa && gpa + size <= fl.gpa + fl.size)) {
    fprintf(stderr, "%s:%d: last flush [%#llx, +%#llx) does not cover [%#llx, +%#llx)\n", file, line,
            (unsigned long long)fl.gpa, (unsigned long long)fl.size, (unsigned long long)gpa,
            (unsigned long long)size);
    check_failures++;
  }
}

/* Exactly `n` flush_tlb calls since `before`. */
#define CHECK_FLUSHES(f, before, n) CHECK_EQ_U64(th_flushes((f)->pool) - (before), (n))

static void fill_guest(th_fx_t *f, uint64_t gpa, uint64_t size, unsigned char seed) {
  static unsigned char buf[PAGE];
  for (uint64_t a = gpa; a < gpa + size; a += PAGE) {
    memset(buf, (unsigned char)(seed + (a >> 12)), sizeof buf);
    CHECK_STATUS(axalloc_write(f->as, a, buf, sizeof buf), AXALLOC_OK);
  }
}

static int guest_matches(th_fx_t *f, uint64_t gpa, uint64_t size, unsigned char seed) {
  static unsigned char buf[PAGE];
  int bad = 0;
  for (uint64_t a = gpa; a < gpa + size; a += PAGE) {
    if (axalloc_read(f->as, a, buf, sizeof buf) != AXALLOC_OK) {
      bad++;
      continue;
    }
    for (size_t i = 0; i < PAGE; i++)
      if (buf[i] != (unsigned char)(seed + (a >> 12))) {
        bad++;
        break;
      }
  }
  return bad;
}

static void unmap_rejects_bad_range(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, GIB, 2 * GIB, 2048); /* window [1 GiB, 3 GiB) */
    CHECK_STATUS(axalloc_map_alloc(f.as, GIB, 4 * MIB, RW, true), AXALLOC_OK);
    th_scan(f.pool);
    snap_t s0 = snap_of(&f);
    struct {
      uint64_t gpa, size;
    } bad[] = {
        {GIB + 1, PAGE},         {GIB, PAGE + 1},       {GIB, 0},
        {GIB + 0x800, 0x800},    {GIB - PAGE, 2 * PAGE}, {0, 4 * GIB},
        {3 * GIB, PAGE},         {GPA_LIMIT, PAGE},     {GIB, 0xfffffffffffff000ull},
        {0xfffffffffffff000ull, PAGE},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
      axalloc_status_t st = axalloc_unmap(f.as, bad[i].gpa, bad[i].size);
      if (st != AXALLOC_ERR_INVALID) {
        fprintf(stderr, "%s: unmap(%#llx, %#llx) = %s, want INVALID\n", fmt_name(fmt), (unsigned long long)bad[i].gpa,
                (unsigned long long)bad[i].size, axalloc_status_str(st));
        check_failures++;
      }
      CHECK_SNAP_EQ(s0, snap_of(&f), (long)i);
    }
    CHECK_ALL_MAPPED(&f, GIB, 4 * MIB);
    CHECK(fx_done(&f) == 0);
  }
}

/* No region in the range: OK, nothing changes, no flush. */
static void unmap_without_region_is_ok_and_does_not_flush(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 8 * GIB, 2048);
    CHECK_STATUS(axalloc_unmap(f.as, 0, 8 * GIB), AXALLOC_OK); /* empty address space */
    CHECK_EQ_U64(th_flushes(f.pool), 0);
    CHECK_STATUS(axalloc_map_alloc(f.as, 4 * MIB, 4 * MIB, RW, true), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_linear(f.as, GIB, 0x100000000ull, GIB, RW), AXALLOC_OK);
    th_scan(f.pool);
    snap_t s0 = snap_of(&f);
    CHECK_STATUS(axalloc_unmap(f.as, 0, 4 * MIB), AXALLOC_OK);              /* just left of it */
    CHECK_STATUS(axalloc_unmap(f.as, 8 * MIB, GIB - 8 * MIB), AXALLOC_OK);  /* the gap */
    CHECK_STATUS(axalloc_unmap(f.as, 2 * GIB, 6 * GIB), AXALLOC_OK);        /* after everything */
    CHECK_SNAP_EQ(s0, snap_of(&f), 0);
    CHECK_EQ_U64(th_flushes(f.pool), 0);
    CHECK_ALL_MAPPED(&f, 4 * MIB, 4 * MIB);
    CHECK(fx_done(&f) == 0);
  }
}

/* Parts of the range that no region covers are ignored: the covered part
 * is removed. */
static void unmap_ignores_uncovered_parts(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 8 * GIB, 2048);
    CHECK_STATUS(axalloc_map_alloc(f.as, 4 * MIB, 4 * MIB, RW, true), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_alloc(f.as, 16 * MIB, MIB, RW, true), AXALLOC_OK);
    th_scan(f.pool);
    size_t fl = th_flushes(f.pool);
    CHECK_STATUS(axalloc_unmap(f.as, 2 * MIB, 8 * MIB), AXALLOC_OK); /* [2M, 10M) ⊃ [4M, 8M) */
    CHECK_FLUSHES(&f, fl, 1);
    CHECK_FLUSH_COVERS(&f, 4 * MIB, 4 * MIB);
    axalloc_stats_t s = th_stats(&f);
    CHECK_EQ_U64(s.regions, 1);
    CHECK_EQ_U64(s.mapped_bytes, MIB);
    CHECK_EQ_U64(s.guest_frames, MIB / PAGE);
    CHECK_NONE_MAPPED(&f, 4 * MIB, 4 * MIB);
    CHECK_STATUS(axalloc_handle_fault(f.as, 4 * MIB, AXALLOC_READ), AXALLOC_ERR_NOT_MAPPED);
    CHECK_ALL_MAPPED(&f, 16 * MIB, MIB);
    CHECK_EQ_U64(th_errors(f.pool), 0);
    CHECK(fx_done(&f) == 0);
  }
}

static void unmap_trims_region_left_and_right(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 8 * GIB, 2048);
    const uint64_t r = 4 * MIB, n = 32 * PAGE;
    CHECK_STATUS(axalloc_map_alloc(f.as, r, n, RW, true), AXALLOC_OK);
    th_scan(f.pool);
    fill_guest(&f, r, n, 0x30);
    uint64_t hpa[32];
    for (int i = 0; i < 32; i++) hpa[i] = xlate(&f, r + (uint64_t)i * PAGE, NULL);
    /* left: [r - 1 MiB, r + 4 pages) */
    size_t fl = th_flushes(f.pool);
    CHECK_STATUS(axalloc_unmap(f.as, r - MIB, MIB + 4 * PAGE), AXALLOC_OK);
    CHECK_FLUSHES(&f, fl, 1);
    CHECK_FLUSH_COVERS(&f, r, 4 * PAGE);
    axalloc_stats_t s = th_stats(&f);
    CHECK_EQ_U64(s.regions, 1);
    CHECK_EQ_U64(s.mapped_bytes, n - 4 * PAGE);
    CHECK_EQ_U64(s.guest_frames, 32 - 4);
    CHECK_NONE_MAPPED(&f, r, 4 * PAGE);
    CHECK_STATUS(axalloc_handle_fault(f.as, r + 3 * PAGE, AXALLOC_READ), AXALLOC_ERR_NOT_MAPPED); /* trimmed */
    /* right: [r + 28 pages, r + 40 pages) */
    fl = th_flushes(f.pool);
    CHECK_STATUS(axalloc_unmap(f.as, r + 28 * PAGE, 12 * PAGE), AXALLOC_OK);
    CHECK_FLUSHES(&f, fl, 1);
    CHECK_FLUSH_COVERS(&f, r + 28 * PAGE, 4 * PAGE);
    s = th_stats(&f);
    CHECK_EQ_U64(s.regions, 1);
    CHECK_EQ_U64(s.mapped_bytes, n - 8 * PAGE);
    CHECK_EQ_U64(s.guest_frames, 32 - 8);
    CHECK_NONE_MAPPED(&f, r + 28 * PAGE, 4 * PAGE);
    CHECK_STATUS(axalloc_handle_fault(f.as, r + 28 * PAGE, AXALLOC_READ), AXALLOC_ERR_NOT_MAPPED);
    /* the rest: same frames, same data */
    for (int i = 4; i < 28; i++) CHECK_EQ_U64(xlate(&f, r + (uint64_t)i * PAGE, NULL), hpa[i]);
    CHECK_EQ_U64(guest_matches(&f, r + 4 * PAGE, 24 * PAGE, 0x30), 0);
    /* the freed space can be mapped again */
    CHECK_STATUS(axalloc_map_alloc(f.as, r, 4 * PAGE, RW, false), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_alloc(f.as, r + 28 * PAGE, 4 * PAGE, RW, false), AXALLOC_OK);
    CHECK_EQ_U64(th_errors(f.pool), 0);
    CHECK(fx_done(&f) == 0);
  }
}

static void unmap_splits_region_in_the_middle(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 8 * GIB, 2048);
    const uint64_t r = 8 * MIB, n = 4 * MIB;
    CHECK_STATUS(axalloc_map_alloc(f.as, r, n, RW, false), AXALLOC_OK); /* lazy */
    CHECK_STATUS(axalloc_handle_fault(f.as, r, AXALLOC_WRITE), AXALLOC_OK);
    CHECK_STATUS(axalloc_handle_fault(f.as, r + 2 * MIB, AXALLOC_WRITE), AXALLOC_OK);
    CHECK_STATUS(axalloc_handle_fault(f.as, r + n - PAGE, AXALLOC_WRITE), AXALLOC_OK);
    th_scan(f.pool);
    uint64_t h0 = xlate(&f, r, NULL), h2 = xlate(&f, r + n - PAGE, NULL);
    size_t fl = th_flushes(f.pool);
    CHECK_STATUS(axalloc_unmap(f.as, r + MIB, 2 * MIB), AXALLOC_OK); /* [9M, 11M) */
    CHECK_FLUSHES(&f, fl, 1);
    CHECK_FLUSH_COVERS(&f, r + 2 * MIB, PAGE);
    axalloc_stats_t s = th_stats(&f);
    CHECK_EQ_U64(s.regions, 2);
    CHECK_EQ_U64(s.mapped_bytes, 2 * MIB);
    CHECK_EQ_U64(s.guest_frames, 2);
    CHECK_EQ_U64(xlate(&f, r, NULL), h0);
    CHECK_EQ_U64(xlate(&f, r + n - PAGE, NULL), h2);
    /* both halves are still lazy regions; the hole is not a region */
    CHECK_STATUS(axalloc_handle_fault(f.as, r + MIB - PAGE, AXALLOC_READ), AXALLOC_OK);
    CHECK_STATUS(axalloc_handle_fault(f.as, r + 3 * MIB, AXALLOC_READ), AXALLOC_OK);
    CHECK_STATUS(axalloc_handle_fault(f.as, r + MIB, AXALLOC_READ), AXALLOC_ERR_NOT_MAPPED);
    CHECK_STATUS(axalloc_handle_fault(f.as, r + 3 * MIB - PAGE, AXALLOC_READ), AXALLOC_ERR_NOT_MAPPED);
    CHECK_NONE_MAPPED(&f, r + MIB, 2 * MIB);
    th_scan(f.pool);
    /* splitting again makes three */
    CHECK_STATUS(axalloc_unmap(f.as, r + PAGE, PAGE), AXALLOC_OK);
    CHECK_EQ_U64(th_stats(&f).regions, 3);
    CHECK_EQ_U64(th_stats(&f).mapped_bytes, 2 * MIB - PAGE);
    CHECK_EQ_U64(th_errors(f.pool), 0);
    CHECK(fx_done(&f) == 0);
  }
}

/* A region split may need a bookkeeping frame: if none comes, NO_MEMORY and
 * nothing changed (also no flush). */
static void unmap_region_split_failure_changes_nothing(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 8 * GIB, 2048);
    /* many regions, so the region set needs to grow at some point */
    for (uint64_t i = 0; i < 200; i++)
      CHECK_STATUS(axalloc_map_alloc(f.as, i * 4 * PAGE, 2 * PAGE, RW, true), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_alloc(f.as, GIB, MIB, RW, true), AXALLOC_OK);
    th_scan(f.pool);
    for (uint64_t k = 0; k < 20; k++) { /* split the big one 20 times */
      uint64_t hole = GIB + (2 * k + 1) * 4 * PAGE;
      long n;
      for (n = 0; n < 50; n++) {
        snap_t s0 = snap_of(&f);
        th_fail_after(f.pool, n);
        axalloc_status_t st = axalloc_unmap(f.as, hole, PAGE);
        th_fail_never(f.pool);
        if (st == AXALLOC_OK) break;
        CHECK_STATUS(st, AXALLOC_ERR_NO_MEMORY);
        CHECK_SNAP_EQ(s0, snap_of(&f), n);
        CHECK_ALL_MAPPED(&f, hole - PAGE, 3 * PAGE);
      }
      CHECK(n < 50);
      CHECK_EQ_U64(th_stats(&f).regions, 200 + 1 + k + 1);
      CHECK_NONE_MAPPED(&f, hole, PAGE);
    }
    CHECK_EQ_U64(th_stats(&f).mapped_bytes, 200 * 2 * PAGE + MIB - 20 * PAGE);
    CHECK_EQ_U64(th_errors(f.pool), 0);
    CHECK(fx_done(&f) == 0);
  }
}

/* One unmap across several regions of every kind (populated, lazy with a few
 * faulted pages, linear with a 2 MiB leaf cut in half), and gaps. */
static void unmap_across_several_regions(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 8 * GIB, 2048);
    CHECK_STATUS(axalloc_map_alloc(f.as, 0, MIB, RW, true), AXALLOC_OK);               /* A */
    CHECK_STATUS(axalloc_map_alloc(f.as, MIB, MIB, RW, false), AXALLOC_OK);            /* B */
    CHECK_STATUS(axalloc_map_linear(f.as, 4 * MIB, 0x100400000ull, 4 * MIB, RW), AXALLOC_OK); /* C */
    CHECK_STATUS(axalloc_map_alloc(f.as, 8 * MIB, MIB, RW, true), AXALLOC_OK);         /* D */
    CHECK_STATUS(axalloc_handle_fault(f.as, MIB + 5 * PAGE, AXALLOC_READ), AXALLOC_OK);
    CHECK_STATUS(axalloc_handle_fault(f.as, 2 * MIB - PAGE, AXALLOC_READ), AXALLOC_OK);
    th_scan(f.pool);
    fill_guest(&f, 0, MIB, 0x11);
    fill_guest(&f, 8 * MIB, MIB, 0x22);
    size_t fl = th_flushes(f.pool);
    CHECK_STATUS(axalloc_unmap(f.as, MIB / 2, 5 * MIB - MIB / 2), AXALLOC_OK); /* [512K, 5M) */
    /* Arm: C's 2 MiB block at 4 MiB is split: break-before-make flushes it first */
    CHECK_FLUSHES(&f, fl, fmt == AXALLOC_FORMAT_ARM_S2 ? 2 : 1);
    CHECK_FLUSH_COVERS(&f, MIB / 2, MIB / 2);           /* A's tail */
    CHECK_FLUSH_COVERS(&f, MIB + 5 * PAGE, PAGE);       /* B's faulted pages */
    CHECK_FLUSH_COVERS(&f, 2 * MIB - PAGE, PAGE);
    CHECK_FLUSH_COVERS(&f, 4 * MIB, MIB);               /* C's head (linear) */
    axalloc_stats_t s = th_stats(&f);
    CHECK_EQ_U64(s.regions, 3);
    CHECK_EQ_U64(s.mapped_bytes, MIB / 2 + 3 * MIB + MIB);
    CHECK_EQ_U64(s.guest_frames, (MIB / 2 + MIB) / PAGE);
    CHECK_NONE_MAPPED(&f, MIB / 2, 5 * MIB - MIB / 2);
    CHECK_EQ_U64(guest_matches(&f, 0, MIB / 2, 0x11), 0);
    CHECK_EQ_U64(guest_matches(&f, 8 * MIB, MIB, 0x22), 0);
    int bad = 0;
    for (uint64_t a = 5 * MIB; a < 8 * MIB; a += PAGE) bad += xlate(&f, a, NULL) != 0x100400000ull + (a - 4 * MIB);
    CHECK_EQ_U64(bad, 0);
    uint64_t ps = 0;
    xlate(&f, 6 * MIB, &ps);
    CHECK_EQ_U64(ps, 2 * MIB); /* the untouched 2 MiB leaf stays huge */
    CHECK_EQ_U64(th_errors(f.pool), 0);
    CHECK(fx_done(&f) == 0);
  }
}

/* A partly covered huge linear leaf is split: the rest keeps its HPAs, and
 * only the parts around the cut get smaller pages. */
static void unmap_splits_huge_linear_leaf(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 8 * GIB, 1024);
    const uint64_t g = GIB, h = 0x100000000ull;
    CHECK_STATUS(axalloc_map_linear(f.as, g, h, GIB, RW | AXALLOC_EXEC), AXALLOC_OK);
    th_scan(f.pool);
    uint64_t ps = 0;
    xlate(&f, g, &ps);
    CHECK_EQ_U64(ps, GIB);
    const uint64_t hole = g + 2 * MIB + PAGE;
    size_t fl = th_flushes(f.pool);
    CHECK_STATUS(axalloc_unmap(f.as, hole, PAGE), AXALLOC_OK);
    CHECK_FLUSHES(&f, fl, fmt == AXALLOC_FORMAT_ARM_S2 ? 2 : 1); /* Arm: break-before-make first */
    CHECK_FLUSH_COVERS(&f, hole, PAGE);
    CHECK_STATUS(axalloc_translate(f.as, hole, NULL, NULL), AXALLOC_ERR_NOT_MAPPED);
    CHECK_STATUS(axalloc_translate(f.as, hole + PAGE - 1, NULL, NULL), AXALLOC_ERR_NOT_MAPPED);
    struct {
      uint64_t gpa, size;
    } pr[] = {
        {g, 2 * MIB},
        {g + 2 * MIB - 1, 2 * MIB},
        {g + 2 * MIB, PAGE},
        {hole + PAGE, PAGE},
        {g + 4 * MIB - 1, PAGE},
        {g + 4 * MIB, 2 * MIB},
        {g + GIB / 2 + 0x777, 2 * MIB},
        {g + GIB - 1, 2 * MIB},
    };
    for (size_t i = 0; i < sizeof pr / sizeof pr[0]; i++) {
      uint64_t hpa = xlate(&f, pr[i].gpa, &ps);
      if (hpa != h + (pr[i].gpa - g) || ps != pr[i].size) {
        fprintf(stderr, "%s: after split translate(%#llx) = %#llx/%#llx, want %#llx/%#llx\n", fmt_name(fmt),
                (unsigned long long)pr[i].gpa, (unsigned long long)hpa, (unsigned long long)ps,
                (unsigned long long)(h + pr[i].gpa - g), (unsigned long long)pr[i].size);
        check_failures++;
      }
    }
    int bad = 0;
    for (uint64_t a = g; a < g + GIB; a += PAGE)
      if (a != hole) bad += xlate(&f, a, NULL) != h + (a - g);
    CHECK_EQ_U64(bad, 0);
    axalloc_stats_t s = th_stats(&f);
    CHECK_EQ_U64(s.regions, 2);
    CHECK_EQ_U64(s.mapped_bytes, GIB - PAGE);
    CHECK_EQ_U64(s.guest_frames, 0);
    /* an unmap ending inside a 2 MiB leaf of the same region splits just it */
    th_scan(f.pool);
    CHECK_STATUS(axalloc_unmap(f.as, g + 100 * MIB - 2 * MIB, 2 * MIB + 3 * PAGE), AXALLOC_OK);
    CHECK_EQ_U64(xlate(&f, g + 100 * MIB + 3 * PAGE, &ps), h + 100 * MIB + 3 * PAGE);
    CHECK_EQ_U64(ps, PAGE);
    CHECK_EQ_U64(xlate(&f, g + 102 * MIB, &ps), h + 102 * MIB);
    CHECK_EQ_U64(ps, 2 * MIB);
    CHECK_EQ_U64(xlate(&f, g + 98 * MIB - PAGE, &ps), h + 98 * MIB - PAGE);
    CHECK_EQ_U64(ps, 2 * MIB);
    CHECK_EQ_U64(th_stats(&f).regions, 3);
    CHECK_EQ_U64(th_errors(f.pool), 0);
    CHECK(fx_done(&f) == 0);
  }
}

/* Split of a 1 GiB leaf needs a PD and a PT: under failure injection,
 * NO_MEMORY and nothing changed (every byte still mapped by the same leaf,
 * same stats, no flush). */
static void unmap_split_failure_changes_nothing(void) {
  FOR_EACH_FORMAT(fmt) {
    uint32_t cfgs[] = {0, AXALLOC_CFG_NO_HUGE_1G};
    for (int c = 0; c < 2; c++) {
      th_fx_t f = th_fx_new(fmt, cfgs[c], 0, 8 * GIB, 1024);
      const uint64_t g = GIB, h = 0x100000000ull;
      const uint64_t leaf = cfgs[c] ? 2 * MIB : GIB;
      CHECK_STATUS(axalloc_map_linear(f.as, g, h, GIB, RW), AXALLOC_OK);
      th_scan(f.pool);
      const uint64_t hole = g + 2 * MIB + PAGE;
      long n;
      for (n = 0; n < 50; n++) {
        snap_t s0 = snap_of(&f);
        size_t failed = th_failed_allocs(f.pool);
        th_fail_after(f.pool, n);
        axalloc_status_t st = axalloc_unmap(f.as, hole, PAGE);
        th_fail_never(f.pool);
        if (st == AXALLOC_OK) break;
        CHECK_STATUS(st, AXALLOC_ERR_NO_MEMORY);
        CHECK(th_failed_allocs(f.pool) > failed);
        CHECK_SNAP_EQ(s0, snap_of(&f), n);
        for (uint64_t a = g; a < g + GIB; a += 2 * MIB) {
          uint64_t ps = 0;
          if (xlate(&f, a + 0x123, &ps) != h + (a - g) + 0x123 || ps != leaf) {
            fprintf(stderr, "%s [n=%ld]: %#llx changed by a failed split\n", fmt_name(fmt), n, (unsigned long long)a);
            check_failures++;
            break;
          }
        }
        CHECK_EQ_U64(xlate(&f, hole, NULL), h + (hole - g));
      }
      CHECK(n < 50);
      CHECK(n >= (cfgs[c] ? 1 : 2)); /* a PT (and a PD for the 1 GiB leaf) */
      CHECK_STATUS(axalloc_translate(f.as, hole, NULL, NULL), AXALLOC_ERR_NOT_MAPPED);
      CHECK_EQ_U64(xlate(&f, hole + PAGE, NULL), h + (hole - g) + PAGE);
      CHECK_EQ_U64(th_errors(f.pool), 0);
      CHECK(fx_done(&f) == 0);
    }
  }
}

/* One flush per unmap, covering every removed present entry, whatever kind;
 * none when nothing present was removed. */
static void unmap_flushes_once_covering_every_removed_entry(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 64 * GIB, 2048);
    /* populated alloc spanning a 2 MiB boundary */
    CHECK_STATUS(axalloc_map_alloc(f.as, 2 * MIB - 4 * PAGE, 8 * PAGE, RW, true), AXALLOC_OK);
    /* linear with 4K head + 2 MiB leaf + 1 GiB leaf */
    CHECK_STATUS(axalloc_map_linear(f.as, 2 * GIB - 2 * MIB - PAGE, 0x100000000ull - 2 * MIB - PAGE,
                                    GIB + 2 * MIB + PAGE, RW), AXALLOC_OK);
    /* lazy with faulted pages far apart */
    CHECK_STATUS(axalloc_map_alloc(f.as, 8 * GIB, 4 * GIB, RW, false), AXALLOC_OK);
    CHECK_STATUS(axalloc_handle_fault(f.as, 8 * GIB + PAGE, AXALLOC_READ), AXALLOC_OK);
    CHECK_STATUS(axalloc_handle_fault(f.as, 12 * GIB - PAGE, AXALLOC_READ), AXALLOC_OK);
    th_scan(f.pool);

    size_t fl = th_flushes(f.pool);
    CHECK_STATUS(axalloc_unmap(f.as, 0, 4 * MIB), AXALLOC_OK);
    CHECK_FLUSHES(&f, fl, 1);
    CHECK_FLUSH_COVERS(&f, 2 * MIB - 4 * PAGE, 8 * PAGE);

    fl = th_flushes(f.pool);
    CHECK_STATUS(axalloc_unmap(f.as, GIB, 2 * GIB), AXALLOC_OK); /* the whole linear region */
    CHECK_FLUSHES(&f, fl, 1);
    CHECK_FLUSH_COVERS(&f, 2 * GIB - 2 * MIB - PAGE, GIB + 2 * MIB + PAGE);

    fl = th_flushes(f.pool);
    CHECK_STATUS(axalloc_unmap(f.as, 8 * GIB, 4 * GIB), AXALLOC_OK);
    CHECK_FLUSHES(&f, fl, 1);
    CHECK_FLUSH_COVERS(&f, 8 * GIB + PAGE, PAGE);
    CHECK_FLUSH_COVERS(&f, 12 * GIB - PAGE, PAGE);

    /* one call over everything, several kinds at once */
    CHECK_STATUS(axalloc_map_alloc(f.as, 0, 2 * PAGE, RW, true), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_linear(f.as, GIB, 0x200000000ull, 2 * MIB, RW), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_alloc(f.as, 40 * GIB, MIB, RW, false), AXALLOC_OK);
    CHECK_STATUS(axalloc_handle_fault(f.as, 40 * GIB + 3 * PAGE, AXALLOC_EXEC | AXALLOC_READ), AXALLOC_ERR_ACCESS);
    CHECK_STATUS(axalloc_handle_fault(f.as, 40 * GIB + 3 * PAGE, AXALLOC_WRITE), AXALLOC_OK);
    th_scan(f.pool);
    fl = th_flushes(f.pool);
    CHECK_STATUS(axalloc_unmap(f.as, 0, 64 * GIB), AXALLOC_OK);
    CHECK_FLUSHES(&f, fl, 1);
    CHECK_FLUSH_COVERS(&f, 0, 2 * PAGE);
    CHECK_FLUSH_COVERS(&f, GIB, 2 * MIB);
    CHECK_FLUSH_COVERS(&f, 40 * GIB + 3 * PAGE, PAGE);
    CHECK_EQ_U64(th_errors(f.pool), 0);
    CHECK(fx_done(&f) == 0);
  }
}

/* Unmapping a never-touched lazy region removes no present entry: no flush. */
static void unmap_of_untouched_lazy_region_does_not_flush(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 8 * GIB, 1024);
    CHECK_STATUS(axalloc_map_alloc(f.as, GIB, 64 * MIB, RW, false), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_alloc(f.as, 4 * GIB, 4 * MIB, RW, false), AXALLOC_OK);
    CHECK_STATUS(axalloc_handle_fault(f.as, 4 * GIB, AXALLOC_READ), AXALLOC_OK);
    th_scan(f.pool);
    CHECK_STATUS(axalloc_unmap(f.as, GIB + 4 * MIB, 4 * MIB), AXALLOC_OK); /* middle: split */
    CHECK_EQ_U64(th_flushes(f.pool), 0);
    CHECK_STATUS(axalloc_unmap(f.as, GIB, 64 * MIB), AXALLOC_OK);
    CHECK_EQ_U64(th_flushes(f.pool), 0);
    CHECK_STATUS(axalloc_unmap(f.as, 4 * GIB + PAGE, 4 * MIB - PAGE), AXALLOC_OK); /* untouched part */
    CHECK_EQ_U64(th_flushes(f.pool), 0);
    axalloc_stats_t s = th_stats(&f);
    CHECK_EQ_U64(s.regions, 1);
    CHECK_EQ_U64(s.mapped_bytes, PAGE);
    CHECK_EQ_U64(s.guest_frames, 1);
    CHECK_STATUS(axalloc_handle_fault(f.as, GIB, AXALLOC_READ), AXALLOC_ERR_NOT_MAPPED);
    CHECK(fx_done(&f) == 0);
  }
}

/* Removed frames and emptied tables go back only after the flush (the host
 * decodes the table and flags any free of a frame that was reachable since
 * the last flush), each exactly once. */
static void unmap_frees_frames_only_after_the_flush(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 1ull << 40, 2048);
    CHECK_STATUS(axalloc_map_alloc(f.as, 512 * GIB - 8 * PAGE, 16 * PAGE, RW, true), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_alloc(f.as, 0, MIB, RW, false), AXALLOC_OK);
    for (uint64_t a = 0; a < MIB; a += 16 * PAGE) CHECK_STATUS(axalloc_handle_fault(f.as, a, AXALLOC_READ), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_linear(f.as, GIB, 0x100000000ull + PAGE, 64 * PAGE, RW), AXALLOC_OK);
    th_scan(f.pool);
    size_t in_use = th_in_use(f.pool), frees = th_frees(f.pool);
    axalloc_stats_t s0 = th_stats(&f);
    CHECK_STATUS(axalloc_unmap(f.as, 512 * GIB - 8 * PAGE, 16 * PAGE), AXALLOC_OK);
    axalloc_stats_t s1 = th_stats(&f);
    /* 16 guest frames and the tables only they used: 4 levels and more, PD
     * + PT left of 512 GiB, PDPT + PD + PT right (5); 3 levels (root entries
     * of 1 GiB), the 2 MiB-entry table + PT on each side (4) */
    uint64_t tables = fmt_levels(fmt) == 3 ? 4 : 5;
    CHECK_EQ_U64(s0.guest_frames - s1.guest_frames, 16);
    CHECK_EQ_U64(s0.table_frames - s1.table_frames, tables);
    CHECK_EQ_U64(in_use - th_in_use(f.pool), 16 + tables);
    CHECK(th_frees(f.pool) - frees >= 16 + tables);
    CHECK_EQ_U64(th_errors(f.pool), 0);
    th_scan(f.pool);
    CHECK_STATUS(axalloc_unmap(f.as, 0, 2 * GIB), AXALLOC_OK);
    CHECK_EQ_U64(th_errors(f.pool), 0);
    CHECK_EQ_U64(th_stats(&f).table_frames, fmt_root_pages(fmt));
    CHECK(fx_done(&f) == 0);
  }
}

/* After everything is unmapped: table_frames == 1, guest_frames == 0, the
 * root has no present entry, and repeating the cycle does not grow the pool's
 * use (nothing leaks between cycles). */
static void unmap_everything_leaves_only_the_root(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 1ull << 40, 4096);
    size_t after_first = 0;
    for (int cycle = 0; cycle < 3; cycle++) {
      CHECK_STATUS(axalloc_map_alloc(f.as, GIB - 4 * PAGE, 8 * PAGE, RW, true), AXALLOC_OK);
      CHECK_STATUS(axalloc_map_alloc(f.as, 600 * GIB, 8 * MIB, RW, false), AXALLOC_OK);
      CHECK_STATUS(axalloc_handle_fault(f.as, 600 * GIB + 5 * MIB, AXALLOC_WRITE), AXALLOC_OK);
      CHECK_STATUS(axalloc_map_linear(f.as, 3 * GIB - 2 * MIB - PAGE, 0x100000000ull - 2 * MIB - PAGE,
                                      GIB + 4 * MIB + 2 * PAGE, RW), AXALLOC_OK);
      th_scan(f.pool);
      CHECK_STATUS(axalloc_unmap(f.as, 3 * GIB + 7 * PAGE, 2 * PAGE), AXALLOC_OK); /* a split first */
      th_scan(f.pool);
      CHECK_STATUS(axalloc_unmap(f.as, 0, 1ull << 40), AXALLOC_OK);
      axalloc_stats_t s = th_stats(&f);
      CHECK_EQ_U64(s.table_frames, fmt_root_pages(fmt));
      CHECK_EQ_U64(s.guest_frames, 0);
      CHECK_EQ_U64(s.regions, 0);
      CHECK_EQ_U64(s.mapped_bytes, 0);
      const uint64_t *root = th_virt(f.pool, axalloc_as_root(f.as));
      int present = 0;
      for (uint64_t i = 0; root && i < 512 * fmt_root_pages(fmt); i++) present += root[i] != fmt_empty(fmt); /* EPT: suppress #VE */
      CHECK_EQ_U64(present, 0);
      if (cycle == 0) after_first = th_in_use(f.pool);
      else CHECK_EQ_U64(th_in_use(f.pool), after_first);
    }
    CHECK_EQ_U64(th_errors(f.pool), 0);
    CHECK(fx_done(&f) == 0);
  }
}

/* regions / mapped_bytes / guest_frames follow every kind of unmap exactly. */
static void unmap_keeps_stats_exact(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 8 * GIB, 2048);
    CHECK_STATUS(axalloc_map_alloc(f.as, 0, 64 * PAGE, RW, true), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_alloc(f.as, 64 * PAGE, 64 * PAGE, RW, false), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_linear(f.as, 2 * MIB, 0x100000000ull, 4 * MIB, RW), AXALLOC_OK);
    th_scan(f.pool);
    uint64_t regions = 3, bytes = 128 * PAGE + 4 * MIB, frames = 64;
#define EXPECT()                                                  \
  do {                                                            \
    axalloc_stats_t s_ = th_stats(&f);                            \
    CHECK_EQ_U64(s_.regions, regions);                            \
    CHECK_EQ_U64(s_.mapped_bytes, bytes);                         \
    CHECK_EQ_U64(s_.guest_frames, frames);                        \
  } while (0)
    EXPECT();
    CHECK_STATUS(axalloc_unmap(f.as, 10 * PAGE, 4 * PAGE), AXALLOC_OK); /* split populated */
    regions++, bytes -= 4 * PAGE, frames -= 4;
    EXPECT();
    CHECK_STATUS(axalloc_unmap(f.as, 60 * PAGE, 8 * PAGE), AXALLOC_OK); /* across populated|lazy */
    bytes -= 8 * PAGE, frames -= 4;
    EXPECT();
    CHECK_STATUS(axalloc_unmap(f.as, 2 * MIB + MIB, 2 * MIB), AXALLOC_OK); /* split linear */
    regions++, bytes -= 2 * MIB;
    EXPECT();
    CHECK_STATUS(axalloc_unmap(f.as, 0, 8 * MIB), AXALLOC_OK);
    regions = 0, bytes = 0, frames = 0;
    EXPECT();
#undef EXPECT
    CHECK_EQ_U64(th_stats(&f).table_frames, fmt_root_pages(fmt));
    CHECK(fx_done(&f) == 0);
  }
}

TEST_MAIN(T(unmap_rejects_bad_range), T(unmap_without_region_is_ok_and_does_not_flush),
          T(unmap_ignores_uncovered_parts), T(unmap_trims_region_left_and_right),
          T(unmap_splits_region_in_the_middle), T(unmap_region_split_failure_changes_nothing),
          T(unmap_across_several_regions), T(unmap_splits_huge_linear_leaf), T(unmap_split_failure_changes_nothing),
          T(unmap_flushes_once_covering_every_removed_entry), T(unmap_of_untouched_lazy_region_does_not_flush),
          T(unmap_frees_frames_only_after_the_flush), T(unmap_everything_leaves_only_the_root),
          T(unmap_keeps_stats_exact))
