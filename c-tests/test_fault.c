/* axalloc_handle_fault: the "handle_fault" bullet, in its stated order. */
#include "sem.h"

#define RW (AXALLOC_READ | AXALLOC_WRITE)
#define RWX (AXALLOC_READ | AXALLOC_WRITE | AXALLOC_EXEC)

static const uint32_t all_access[] = {AXALLOC_READ,  AXALLOC_WRITE, AXALLOC_EXEC, RW,
                                      AXALLOC_READ | AXALLOC_EXEC, AXALLOC_WRITE | AXALLOC_EXEC, RWX};
#define N_ACCESS (sizeof all_access / sizeof all_access[0])

/* A fault that must return `want` and change nothing (no allocation). */
static void expect_fault_nochange(th_fx_t *f, const char *what, uint64_t gpa, uint32_t access,
                                  axalloc_status_t want) {
  snap_t s0 = snap_of(f);
  size_t allocs = th_allocs(f->pool);
  axalloc_status_t st = axalloc_handle_fault(f->as, gpa, access);
  if (st != want) {
    fprintf(stderr, "%s %s: handle_fault(%#llx, %#x) = %s, want %s\n", fmt_name(f->format), what,
            (unsigned long long)gpa, access, axalloc_status_str(st), axalloc_status_str(want));
    check_failures++;
  }
  CHECK_SNAP_EQ(s0, snap_of(f), 0);
  CHECK_EQ_U64(th_allocs(f->pool), allocs);
}

/* access must be a non-empty subset of R|W|X; checked before anything else
 * (also where no region is). */
static void fault_rejects_bad_access(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 4 * GIB, 1024);
    CHECK_STATUS(axalloc_map_alloc(f.as, 0, 2 * MIB, RWX, false), AXALLOC_OK);
    uint32_t bad[] = {0, AXALLOC_DEVICE, AXALLOC_READ | AXALLOC_DEVICE, 1u << 4, AXALLOC_READ | (1u << 5),
                      RWX | (1u << 31), 0xffffffffu};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
      expect_fault_nochange(&f, "bad access in a lazy region", PAGE, bad[i], AXALLOC_ERR_INVALID);
      expect_fault_nochange(&f, "bad access where no region is", GIB, bad[i], AXALLOC_ERR_INVALID);
    }
    CHECK_STATUS(axalloc_translate(f.as, PAGE, NULL, NULL), AXALLOC_ERR_NOT_MAPPED);
    /* every valid access works there */
    for (size_t i = 0; i < N_ACCESS; i++)
      CHECK_STATUS(axalloc_handle_fault(f.as, (uint64_t)(i + 2) * PAGE, all_access[i]), AXALLOC_OK);
    CHECK_EQ_U64(th_stats(&f).guest_frames, N_ACCESS);
    th_scan(f.pool);
    CHECK(fx_done(&f) == 0);
  }
}

/* No region covers gpa → NOT_MAPPED (the MMIO path), nothing allocated:
 * gaps, outside the window, beyond 2^48, and just after an unmap. */
static void fault_without_region_is_not_mapped(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, GIB, GIB, 1024); /* window [1 GiB, 2 GiB) */
    CHECK_STATUS(axalloc_map_alloc(f.as, GIB, 2 * MIB, RW, false), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_alloc(f.as, GIB + 4 * MIB, 2 * MIB, RW, true), AXALLOC_OK);
    th_scan(f.pool);
    uint64_t none[] = {GIB + 2 * MIB, GIB + 4 * MIB - 1, GIB + 6 * MIB, 2 * GIB - PAGE, 0, GIB - 1, 2 * GIB,
                       5 * GIB, GPA_LIMIT, GPA_LIMIT + GIB, HPA_LIMIT, ~0ull, ~0ull - PAGE};
    for (size_t i = 0; i < sizeof none / sizeof none[0]; i++)
      for (size_t a = 0; a < N_ACCESS; a++)
        expect_fault_nochange(&f, "no region", none[i], all_access[a], AXALLOC_ERR_NOT_MAPPED);
    CHECK_STATUS(axalloc_unmap(f.as, GIB, PAGE), AXALLOC_OK);
    expect_fault_nochange(&f, "unmapped page", GIB, AXALLOC_READ, AXALLOC_ERR_NOT_MAPPED);
    CHECK_STATUS(axalloc_handle_fault(f.as, GIB + PAGE, AXALLOC_READ), AXALLOC_OK); /* control */
    th_scan(f.pool);
    CHECK(fx_done(&f) == 0);
  }
}

/* The region does not allow the access → ACCESS, even when the page is
 * present (populated or faulted in before), and nothing is allocated. */
static void fault_disallowed_access_is_access_error(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 4 * GIB, 1024);
    const uint64_t ro_lazy = 0, ro_pop = 2 * MIB, rw_lazy = 4 * MIB, rx_pop = 6 * MIB, lin = GIB;
    CHECK_STATUS(axalloc_map_alloc(f.as, ro_lazy, 2 * MIB, AXALLOC_READ, false), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_alloc(f.as, ro_pop, 16 * PAGE, AXALLOC_READ, true), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_alloc(f.as, rw_lazy, 2 * MIB, RW, false), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_alloc(f.as, rx_pop, 16 * PAGE, AXALLOC_READ | AXALLOC_EXEC, true), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_linear(f.as, lin, 0x100000000ull, 2 * MIB, AXALLOC_READ | AXALLOC_DEVICE), AXALLOC_OK);
    CHECK_STATUS(axalloc_handle_fault(f.as, rw_lazy + PAGE, AXALLOC_READ), AXALLOC_OK); /* now present */
    th_scan(f.pool);
    struct {
      uint64_t gpa;
      uint32_t access;
      const char *what;
    } deny[] = {
        {ro_lazy, AXALLOC_WRITE, "write to read-only lazy"},
        {ro_lazy + 5, AXALLOC_EXEC, "exec of read-only lazy"},
        {ro_lazy, RW, "read+write to read-only lazy"},
        {ro_pop, AXALLOC_WRITE, "write to read-only present"},
        {ro_pop + PAGE, AXALLOC_EXEC, "exec of read-only present"},
        {ro_pop + 2 * PAGE, RWX, "rwx to read-only present"},
        {rw_lazy + PAGE, AXALLOC_EXEC, "exec of rw present"},
        {rw_lazy + 2 * PAGE, AXALLOC_READ | AXALLOC_EXEC, "rx of rw lazy"},
        {rx_pop, AXALLOC_WRITE, "write to rx present"},
        {lin, AXALLOC_WRITE, "write to read-only linear"},
        {lin + PAGE, AXALLOC_EXEC, "exec of read-only linear"},
    };
    for (size_t i = 0; i < sizeof deny / sizeof deny[0]; i++)
      expect_fault_nochange(&f, deny[i].what, deny[i].gpa, deny[i].access, AXALLOC_ERR_ACCESS);
    CHECK_NONE_MAPPED(&f, ro_lazy, 2 * MIB);
    CHECK_STATUS(axalloc_translate(f.as, rw_lazy + 2 * PAGE, NULL, NULL), AXALLOC_ERR_NOT_MAPPED);
    /* the allowed ones work */
    CHECK_STATUS(axalloc_handle_fault(f.as, ro_lazy, AXALLOC_READ), AXALLOC_OK);
    CHECK_STATUS(axalloc_handle_fault(f.as, rx_pop, AXALLOC_EXEC), AXALLOC_OK);
    CHECK_STATUS(axalloc_handle_fault(f.as, rw_lazy + 2 * PAGE, RW), AXALLOC_OK);
    th_scan(f.pool);
    CHECK(fx_done(&f) == 0);
  }
}

/* Present page → OK, nothing allocated, translation and faults counter
 * unchanged (spurious). */
static void fault_on_present_page_is_spurious(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 4 * GIB, 1024);
    CHECK_STATUS(axalloc_map_alloc(f.as, 0, 8 * PAGE, RWX, true), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_alloc(f.as, MIB, 8 * PAGE, RWX, false), AXALLOC_OK);
    CHECK_STATUS(axalloc_handle_fault(f.as, MIB, AXALLOC_READ), AXALLOC_OK);
    th_scan(f.pool);
    uint64_t h0 = xlate(&f, 0, NULL), h1 = xlate(&f, MIB, NULL);
    for (size_t a = 0; a < N_ACCESS; a++) {
      expect_fault_nochange(&f, "populated page", 0x10 * a, all_access[a], AXALLOC_OK);
      expect_fault_nochange(&f, "faulted page", MIB + PAGE - 1 - a, all_access[a], AXALLOC_OK);
    }
    CHECK_EQ_U64(xlate(&f, 0, NULL), h0);
    CHECK_EQ_U64(xlate(&f, MIB, NULL), h1);
    CHECK_EQ_U64(th_stats(&f).faults, 1);
    CHECK(fx_done(&f) == 0);
  }
}

/* Lazy page not present → a zeroed frame (the pool hands out 0xA5 garbage),
 * installed as a 4 KiB page, counted; only that page. */
static void fault_installs_zeroed_frame_on_lazy_page(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 4 * GIB, 1024);
    CHECK_STATUS(axalloc_map_alloc(f.as, 2 * GIB, 4 * MIB, RWX, false), AXALLOC_OK);
    for (size_t a = 0; a < N_ACCESS; a++) {
      uint64_t gpa = 2 * GIB + (uint64_t)a * 3 * PAGE + 0x80 * a; /* any byte of the page */
      uint64_t page = gpa & ~(PAGE - 1);
      axalloc_stats_t s0 = th_stats(&f);
      size_t allocs = th_allocs(f.pool);
      CHECK_STATUS(axalloc_handle_fault(f.as, gpa, all_access[a]), AXALLOC_OK);
      th_scan(f.pool);
      axalloc_stats_t s1 = th_stats(&f);
      CHECK_EQ_U64(s1.guest_frames, s0.guest_frames + 1);
      CHECK_EQ_U64(s1.faults, s0.faults + 1);
      CHECK(th_allocs(f.pool) > allocs);
      uint64_t ps = 0, hpa = xlate(&f, gpa, &ps);
      CHECK_EQ_U64(ps, PAGE);
      CHECK_EQ_U64(hpa & (PAGE - 1), gpa & (PAGE - 1));
      CHECK(th_owns(f.pool, hpa));
      CHECK(frame_is_zero(f.pool, hpa));
      CHECK_NONE_MAPPED(&f, page + PAGE, 2 * PAGE); /* neighbours stay lazy */
    }
    CHECK_EQ_U64(th_flushes(f.pool), 0);
    CHECK(fx_done(&f) == 0);
  }
}

/* Allocation fails at any point of the fault (guest frame, or a table
 * mid-walk) → NO_MEMORY and nothing changed; then it succeeds. */
static void fault_no_memory_changes_nothing(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 1ull << 40, 1024);
    CHECK_STATUS(axalloc_map_alloc(f.as, 0, 1ull << 40, RW, false), AXALLOC_OK);
    /* fresh areas needing 3, 2, 1 and 0 new tables */
    uint64_t gpas[] = {600 * GIB + 0x123, 600 * GIB + 5 * GIB, 600 * GIB + 5 * GIB + 4 * MIB,
                       600 * GIB + 5 * GIB + 4 * MIB + PAGE};
    long need[] = {fmt_levels(fmt), 3, 2, 1}; /* the first: every table below the root */
    for (int g = 0; g < 4; g++) {
      long n;
      for (n = 0; n < 20; n++) {
        snap_t s0 = snap_of(&f);
        size_t failed = th_failed_allocs(f.pool);
        th_fail_after(f.pool, n);
        axalloc_status_t st = axalloc_handle_fault(f.as, gpas[g], AXALLOC_WRITE);
        th_fail_never(f.pool);
        if (st == AXALLOC_OK) break;
        CHECK_STATUS(st, AXALLOC_ERR_NO_MEMORY);
        CHECK(th_failed_allocs(f.pool) > failed);
        CHECK_SNAP_EQ(s0, snap_of(&f), n);
        CHECK_STATUS(axalloc_translate(f.as, gpas[g], NULL, NULL), AXALLOC_ERR_NOT_MAPPED);
        CHECK_EQ_U64(th_errors(f.pool), 0);
      }
      if (n < need[g]) {
        fprintf(stderr, "%s: fault %d succeeded after %ld allocations, expected >= %ld (tables kept by an "
                "earlier failed attempt?)\n", fmt_name(fmt), g, n, need[g]);
        check_failures++;
      }
      th_scan(f.pool);
      uint64_t hpa = xlate(&f, gpas[g], NULL);
      CHECK(frame_is_zero(f.pool, hpa));
    }
    CHECK_EQ_U64(th_stats(&f).guest_frames, 4);
    CHECK_EQ_U64(th_stats(&f).faults, 4);
    CHECK(fx_done(&f) == 0);
  }
}

/* A present page is never replaced: data written through axalloc_write
 * survives faults of every kind, the HPA stays. */
static void fault_never_replaces_present_page(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 4 * GIB, 1024);
    CHECK_STATUS(axalloc_map_alloc(f.as, GIB, 16 * PAGE, RWX, false), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_alloc(f.as, 2 * GIB, 16 * PAGE, RWX, true), AXALLOC_OK);
    static const char msg[] = "guest data that must survive every fault";
    CHECK_STATUS(axalloc_write(f.as, GIB + 3 * PAGE + 100, msg, sizeof msg), AXALLOC_OK);
    CHECK_STATUS(axalloc_write(f.as, 2 * GIB + 3 * PAGE + 100, msg, sizeof msg), AXALLOC_OK);
    th_scan(f.pool);
    uint64_t g[] = {GIB + 3 * PAGE, 2 * GIB + 3 * PAGE};
    for (int r = 0; r < 2; r++) {
      uint64_t hpa = xlate(&f, g[r], NULL);
      CHECK(hpa != ~0ull);
      for (int rep = 0; rep < 3; rep++)
        for (size_t a = 0; a < N_ACCESS; a++)
          expect_fault_nochange(&f, "present page with data", g[r] + (uint64_t)a * 8, all_access[a], AXALLOC_OK);
      CHECK_EQ_U64(xlate(&f, g[r], NULL), hpa);
      char back[sizeof msg];
      CHECK_STATUS(axalloc_read(f.as, g[r] + 100, back, sizeof back), AXALLOC_OK);
      CHECK(memcmp(back, msg, sizeof msg) == 0);
      const char *host = th_virt(f.pool, hpa);
      CHECK(host && memcmp(host + 100, msg, sizeof msg) == 0);
    }
    CHECK(fx_done(&f) == 0);
  }
}

/* Accessed/dirty bits set by "hardware" do not make a present page look
 * different: fault is spurious, translation unchanged, unmap frees the frame
 * exactly once (the pool flags double frees), also for huge linear leaves. */
static void fault_ignores_accessed_dirty_bits(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 4 * GIB, 1024);
    uint64_t ad = ad_bits(fmt);
    CHECK_STATUS(axalloc_map_alloc(f.as, 0, 8 * PAGE, RWX, false), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_alloc(f.as, MIB, 8 * PAGE, RWX, true), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_linear(f.as, GIB, 0x100000000ull, GIB, RWX), AXALLOC_OK);
    CHECK_STATUS(axalloc_handle_fault(f.as, 2 * PAGE, AXALLOC_WRITE), AXALLOC_OK);
    th_scan(f.pool);
    uint64_t gs[] = {2 * PAGE, MIB + PAGE, GIB + 5 * PAGE};
    uint64_t hs[3];
    for (int i = 0; i < 3; i++) {
      hs[i] = xlate(&f, gs[i], NULL);
      CHECK(th_set_leaf_bits(f.pool, gs[i], ad));
      uint64_t raw = 0;
      int level = i == 2 ? 2 : 0;
      CHECK(th_entry(f.pool, gs[i], level, &raw) && (raw & ad) == ad);
    }
    for (int i = 0; i < 3; i++) {
      for (size_t a = 0; a < N_ACCESS; a++) expect_fault_nochange(&f, "A/D set", gs[i], all_access[a], AXALLOC_OK);
      uint64_t ps = 0;
      CHECK_EQ_U64(xlate(&f, gs[i], &ps), hs[i]);
      CHECK_EQ_U64(ps, i == 2 ? GIB : PAGE);
    }
    /* a write through the library keeps the frame too */
    CHECK_STATUS(axalloc_write(f.as, 2 * PAGE, "x", 1), AXALLOC_OK);
    CHECK_EQ_U64(xlate(&f, 2 * PAGE, NULL), hs[0]);
    size_t frees = th_frees(f.pool);
    axalloc_stats_t s0 = th_stats(&f);
    CHECK_STATUS(axalloc_unmap(f.as, 0, 8 * PAGE), AXALLOC_OK);
    CHECK_STATUS(axalloc_unmap(f.as, MIB + PAGE, PAGE), AXALLOC_OK);
    CHECK_EQ_U64(s0.guest_frames - th_stats(&f).guest_frames, 2);
    CHECK(th_frees(f.pool) - frees >= 2);
    /* split of the huge leaf with A/D set keeps the other HPAs */
    CHECK_STATUS(axalloc_unmap(f.as, GIB + 5 * PAGE, PAGE), AXALLOC_OK);
    CHECK_EQ_U64(xlate(&f, GIB + 6 * PAGE, NULL), 0x100000000ull + 6 * PAGE);
    CHECK_EQ_U64(xlate(&f, GIB + 512 * MIB, NULL), 0x100000000ull + 512 * MIB);
    CHECK_EQ_U64(th_errors(f.pool), 0);
    CHECK(fx_done(&f) == 0);
  }
}

/* Faults on a linear region (mapped whole at map time) are spurious → OK,
 * nothing allocated. */
static void fault_on_linear_region_is_ok(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 4 * GIB, 1024);
    CHECK_STATUS(axalloc_map_linear(f.as, GIB - 2 * MIB - PAGE, 0x100000000ull - 2 * MIB - PAGE,
                                    GIB + 2 * MIB + 2 * PAGE, RWX), AXALLOC_OK);
    th_scan(f.pool);
    uint64_t gs[] = {GIB - 2 * MIB - PAGE, GIB - MIB, GIB + 0x1234, 2 * GIB - 1, 2 * GIB + PAGE - 1};
    for (size_t i = 0; i < sizeof gs / sizeof gs[0]; i++)
      for (size_t a = 0; a < N_ACCESS; a++) expect_fault_nochange(&f, "linear", gs[i], all_access[a], AXALLOC_OK);
    CHECK_EQ_U64(th_stats(&f).guest_frames, 0);
    CHECK_EQ_U64(th_stats(&f).faults, 0);
    CHECK(fx_done(&f) == 0);
  }
}

/* flush_tlb is never called by faults (nor maps): not-present -> present. */
static void fault_never_flushes(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 1ull << 40, 1024);
    CHECK_STATUS(axalloc_map_alloc(f.as, 0, 1ull << 40, RW, false), AXALLOC_OK);
    for (uint64_t i = 0; i < 64; i++) CHECK_STATUS(axalloc_handle_fault(f.as, i * 7 * GIB + i * PAGE, AXALLOC_READ), AXALLOC_OK);
    th_fail_after(f.pool, 0);
    CHECK_STATUS(axalloc_handle_fault(f.as, 999 * GIB, AXALLOC_READ), AXALLOC_ERR_NO_MEMORY);
    th_fail_never(f.pool);
    CHECK_STATUS(axalloc_handle_fault(f.as, 0, AXALLOC_WRITE), AXALLOC_OK); /* spurious */
    CHECK_STATUS(axalloc_handle_fault(f.as, 0, AXALLOC_EXEC), AXALLOC_ERR_ACCESS);
    th_scan(f.pool);
    CHECK_EQ_U64(th_flushes(f.pool), 0);
    CHECK_EQ_U64(th_stats(&f).faults, 64);
    CHECK(fx_done(&f) == 0);
  }
}

/* With AXALLOC_CFG_FRAMES_ZEROED the pool zeroes; faults still install. */
static void fault_with_frames_zeroed_config(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, AXALLOC_CFG_FRAMES_ZEROED, 0, 4 * GIB, 1024);
    CHECK_STATUS(axalloc_map_alloc(f.as, 0, MIB, RW, false), AXALLOC_OK);
    CHECK_STATUS(axalloc_handle_fault(f.as, 5 * PAGE, AXALLOC_READ), AXALLOC_OK);
    th_scan(f.pool);
    CHECK(frame_is_zero(f.pool, xlate(&f, 5 * PAGE, NULL)));
    CHECK(fx_done(&f) == 0);
  }
}

TEST_MAIN(T(fault_rejects_bad_access), T(fault_without_region_is_not_mapped), T(fault_disallowed_access_is_access_error),
          T(fault_on_present_page_is_spurious), T(fault_installs_zeroed_frame_on_lazy_page),
          T(fault_no_memory_changes_nothing), T(fault_never_replaces_present_page),
          T(fault_ignores_accessed_dirty_bits), T(fault_on_linear_region_is_ok), T(fault_never_flushes),
          T(fault_with_frames_zeroed_config))
