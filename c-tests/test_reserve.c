/*
 * axalloc_reserve: zeroed frames kept ready for faults. A fault served from
 * the reserve calls no hook and zeroes nothing; the frames are counted in
 * stats.reserve_frames and come back on reserve(0) and on destroy; a host
 * that runs out leaves what was filled in the reserve.
 */
#include "sem.h"

static void reserve_fills_and_counts(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 4 * GIB, 1024);
    size_t before = th_in_use(f.pool);
    CHECK_STATUS(axalloc_reserve(f.as, 64), AXALLOC_OK);
    CHECK_EQ_U64(th_stats(&f).reserve_frames, 64);
    CHECK_EQ_U64(th_in_use(f.pool), before + 64);
    CHECK_EQ_U64(th_stats(&f).guest_frames, 0); /* not the guest's yet */
    /* Lowering gives the surplus back; 0 empties it. */
    CHECK_STATUS(axalloc_reserve(f.as, 16), AXALLOC_OK);
    CHECK_EQ_U64(th_stats(&f).reserve_frames, 16);
    CHECK_EQ_U64(th_in_use(f.pool), before + 16);
    CHECK_STATUS(axalloc_reserve(f.as, 0), AXALLOC_OK);
    CHECK_EQ_U64(th_stats(&f).reserve_frames, 0);
    CHECK_EQ_U64(th_in_use(f.pool), before);
    CHECK(th_fx_done(&f) == 0);
  }
}

/* A fault takes a frame from the reserve: no alloc_frame call, the page is
 * all zeros (the pool fills frames with garbage), one reserve frame fewer. */
static void fault_from_reserve_calls_no_hook_and_is_zeroed(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 4 * GIB, 1024);
    CHECK_STATUS(axalloc_map_alloc(f.as, GIB, 64 * PAGE, AXALLOC_READ | AXALLOC_WRITE, false), AXALLOC_OK);
    /* The tables the faults need, first (they come from alloc_frame). */
    CHECK_STATUS(axalloc_handle_fault(f.as, GIB, AXALLOC_WRITE), AXALLOC_OK);
    CHECK_STATUS(axalloc_reserve(f.as, 8), AXALLOC_OK);
    size_t allocs = th_allocs(f.pool);
    for (uint64_t i = 1; i <= 8; i++) {
      CHECK_STATUS(axalloc_handle_fault(f.as, GIB + i * PAGE, AXALLOC_WRITE), AXALLOC_OK);
      uint64_t hpa = 0;
      CHECK_STATUS(axalloc_translate(f.as, GIB + i * PAGE, &hpa, NULL), AXALLOC_OK);
      const uint8_t *p = th_virt(f.pool, hpa);
      int nonzero = 0;
      for (size_t b = 0; p && b < PAGE; b++) nonzero += p[b] != 0;
      CHECK_EQ_U64(nonzero, 0);
    }
    CHECK_EQ_U64(th_allocs(f.pool), allocs); /* every frame came from the reserve */
    CHECK_EQ_U64(th_stats(&f).reserve_frames, 0);
    CHECK_EQ_U64(th_stats(&f).guest_frames, 9);
    /* Empty reserve: the next fault calls alloc_frame again. */
    CHECK_STATUS(axalloc_handle_fault(f.as, GIB + 9 * PAGE, AXALLOC_WRITE), AXALLOC_OK);
    CHECK_EQ_U64(th_allocs(f.pool), allocs + 1);
    CHECK(th_fx_done(&f) == 0);
  }
}

/* The host runs out half-way: NO_MEMORY, and the frames obtained so far stay
 * in the reserve (documented exception to all-or-nothing). */
static void reserve_keeps_partial_fill_on_no_memory(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 4 * GIB, 1024);
    for (long n = 0; n < 5; n++) {
      CHECK_STATUS(axalloc_reserve(f.as, 0), AXALLOC_OK);
      size_t before = th_in_use(f.pool);
      th_fail_after(f.pool, n);
      CHECK_STATUS(axalloc_reserve(f.as, 8), AXALLOC_ERR_NO_MEMORY);
      th_fail_never(f.pool);
      CHECK_EQ_U64(th_stats(&f).reserve_frames, (uint64_t)n);
      CHECK_EQ_U64(th_in_use(f.pool), before + (size_t)n);
    }
    CHECK(th_fx_done(&f) == 0);
  }
}

/* Destroy gives every reserve frame back (th_fx_done checks the pool). */
static void destroy_returns_reserve(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 4 * GIB, 1024);
    CHECK_STATUS(axalloc_reserve(f.as, 100), AXALLOC_OK);
    CHECK(th_fx_done(&f) == 0);
  }
}

static void reserve_rejects_null(void) { CHECK_STATUS(axalloc_reserve(NULL, 1), AXALLOC_ERR_INVALID); }

TEST_MAIN(T(reserve_fills_and_counts), T(fault_from_reserve_calls_no_hook_and_is_zeroed),
          T(reserve_keeps_partial_fill_on_no_memory), T(destroy_returns_reserve), T(reserve_rejects_null))
