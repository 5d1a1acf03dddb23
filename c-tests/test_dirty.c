/*
 * Dirty logging, access tracking and present bitmaps (issue 12), through
 * the C API over every format. Entry rights are read with sem.h's own
 * decoder of each format (from the manuals), not the library's.
 */
#include <pthread.h>

#include "sem.h"

#define RW (AXALLOC_READ | AXALLOC_WRITE)
#define BASE GIB
#define N 200 /* pages: more than three bitmap words */

static uint32_t rights(th_fx_t *f, uint64_t gpa) {
  uint64_t raw = 0;
  CHECK(th_entry(f->pool, gpa, 0, &raw));
  CHECK(th_present(f->format, raw));
  return leaf_rights_of(f->format, raw);
}

static bool bit(const uint64_t *bm, uint64_t i) { return (bm[i / 64] >> (i % 64)) & 1; }

/* Start write-protects present pages (one flush), nothing is dirty; guest
 * write faults give write back and are reported, bit by bit, until a
 * clearing get re-arms them (one flush); every bit of the range is written. */
static void dirty_log_round_trip(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 4 * GIB, 1024);
    CHECK_STATUS(axalloc_map_alloc(f.as, BASE, N * PAGE, RW, true), AXALLOC_OK);
    uint64_t bm[4];
    size_t flushes = th_flushes(f.pool);
    CHECK_STATUS(axalloc_dirty_log_start(f.as, BASE, N * PAGE), AXALLOC_OK);
    CHECK_EQ_U64(th_flushes(f.pool), flushes + 1);
    memset(bm, 0xff, sizeof bm);
    CHECK_STATUS(axalloc_dirty_log_get(f.as, BASE, N * PAGE, bm, 0), AXALLOC_OK);
    for (int i = 0; i < 4; i++) CHECK_EQ_U64(bm[i], 0);
    for (uint64_t i = 0; i < N; i++) CHECK_EQ_U64(rights(&f, BASE + i * PAGE), AXALLOC_READ);
    const uint64_t w[] = {0, 63, 64, 130, N - 1};
    for (size_t k = 0; k < N_ELEMS(w); k++) {
      CHECK_STATUS(axalloc_handle_fault(f.as, BASE + w[k] * PAGE + 8, AXALLOC_WRITE), AXALLOC_OK);
      CHECK_EQ_U64(rights(&f, BASE + w[k] * PAGE), RW);
    }
    memset(bm, 0xff, sizeof bm);
    flushes = th_flushes(f.pool);
    CHECK_STATUS(axalloc_dirty_log_get(f.as, BASE, N * PAGE, bm, AXALLOC_BITMAP_CLEAR), AXALLOC_OK);
    CHECK_EQ_U64(th_flushes(f.pool), flushes + 1);
    th_flush_t fl = th_last_flush(f.pool);
    CHECK(fl.gpa <= BASE && fl.gpa + fl.size >= BASE + N * PAGE);
    CHECK_EQ_U64(bm[0], 1ull | 1ull << 63);
    CHECK_EQ_U64(bm[1], 1ull);
    CHECK_EQ_U64(bm[2], 1ull << 2);
    CHECK_EQ_U64(bm[3], 1ull << (N - 1 - 192)); /* bits past the range: 0 */
    for (size_t k = 0; k < N_ELEMS(w); k++) CHECK_EQ_U64(rights(&f, BASE + w[k] * PAGE), AXALLOC_READ);
    CHECK_STATUS(axalloc_dirty_log_get(f.as, BASE, N * PAGE, bm, AXALLOC_BITMAP_CLEAR), AXALLOC_OK);
    for (int i = 0; i < 4; i++) CHECK_EQ_U64(bm[i], 0);
    /* An unaligned subrange: bit 0 is its first page. */
    CHECK_STATUS(axalloc_handle_fault(f.as, BASE + 70 * PAGE, AXALLOC_WRITE), AXALLOC_OK);
    CHECK_STATUS(axalloc_dirty_log_get(f.as, BASE + 65 * PAGE, 10 * PAGE, bm, 0), AXALLOC_OK);
    CHECK_EQ_U64(bm[0], 1ull << 5);
    /* Hypervisor writes are dirty, reads are not; discards are dirty. */
    uint64_t v = 42;
    CHECK_STATUS(axalloc_dirty_log_get(f.as, BASE, N * PAGE, bm, AXALLOC_BITMAP_CLEAR), AXALLOC_OK);
    CHECK_STATUS(axalloc_write(f.as, BASE + 100 * PAGE - 4, &v, sizeof v), AXALLOC_OK);
    CHECK_STATUS(axalloc_read(f.as, BASE + 120 * PAGE, &v, sizeof v), AXALLOC_OK);
    CHECK_STATUS(axalloc_discard(f.as, BASE + 150 * PAGE, PAGE), AXALLOC_OK);
    CHECK_STATUS(axalloc_dirty_log_get(f.as, BASE, N * PAGE, bm, 0), AXALLOC_OK);
    for (uint64_t i = 0; i < N; i++) CHECK(bit(bm, i) == (i == 99 || i == 100 || i == 150));
    /* Stop: write back everywhere, no flush, bitmaps back. */
    size_t in_use = th_in_use(f.pool);
    flushes = th_flushes(f.pool);
    CHECK_STATUS(axalloc_dirty_log_stop(f.as, BASE, N * PAGE), AXALLOC_OK);
    CHECK_EQ_U64(th_flushes(f.pool), flushes);
    CHECK(th_in_use(f.pool) < in_use);
    CHECK_EQ_U64(rights(&f, BASE + 5 * PAGE), RW);
    CHECK_STATUS(axalloc_dirty_log_get(f.as, BASE, N * PAGE, bm, 0), AXALLOC_ERR_INVALID);
    CHECK(fx_done(&f) == 0);
  }
}

/* Errors change nothing; start's allocations fail cleanly at every point. */
static void dirty_log_start_is_all_or_nothing(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 4 * GIB, 1024);
    CHECK_STATUS(axalloc_map_alloc(f.as, BASE, N * PAGE, RW, true), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_linear(f.as, 2 * GIB, 1ull << 32, 16 * PAGE, RW), AXALLOC_OK);
    snap_t before = snap_of(&f);
    CHECK_STATUS(axalloc_dirty_log_start(f.as, 2 * GIB, PAGE), AXALLOC_ERR_INVALID);
    CHECK_STATUS(axalloc_dirty_log_start(f.as, BASE - PAGE, 2 * PAGE), AXALLOC_ERR_NOT_MAPPED);
    long n = 0;
    for (;; n++) {
      th_fail_after(f.pool, n);
      axalloc_status_t st = axalloc_dirty_log_start(f.as, BASE, N * PAGE);
      th_fail_never(f.pool);
      if (st == AXALLOC_OK) break;
      CHECK_STATUS(st, AXALLOC_ERR_NO_MEMORY);
      CHECK_SNAP_EQ(before, snap_of(&f), n);
      CHECK_EQ_U64(rights(&f, BASE), RW);
      if (n > 10) break;
    }
    CHECK(n == 3); /* the directory and one frame per bitmap */
    CHECK_STATUS(axalloc_dirty_log_start(f.as, BASE, 4 * PAGE), AXALLOC_OK); /* inside: nothing to do */
    CHECK_STATUS(axalloc_dirty_log_start(f.as, BASE + 190 * PAGE, 20 * PAGE), AXALLOC_ERR_NOT_MAPPED);
    CHECK_STATUS(axalloc_map_alloc(f.as, BASE + N * PAGE, 64 * PAGE, RW, false), AXALLOC_OK);
    CHECK_STATUS(axalloc_dirty_log_start(f.as, BASE + 190 * PAGE, 20 * PAGE), AXALLOC_ERR_EXISTS);
    CHECK_STATUS(axalloc_dirty_log_stop(f.as, BASE, 4 * PAGE), AXALLOC_ERR_INVALID);
    CHECK(fx_done(&f) == 0);
  }
}

/* Accessed pages, cleared by a clearing get (one flush), set again by the
 * next access (here the fault a CPU without hardware A/D takes), by copies. */
static void young_and_present(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 4 * GIB, 1024);
    CHECK_STATUS(axalloc_map_alloc(f.as, BASE, 64 * PAGE, RW, false), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_linear(f.as, BASE + 64 * PAGE, 1ull << 32, 64 * PAGE, RW), AXALLOC_OK);
    CHECK_STATUS(axalloc_handle_fault(f.as, BASE + 3 * PAGE, AXALLOC_READ), AXALLOC_OK);
    CHECK_STATUS(axalloc_handle_fault(f.as, BASE + 9 * PAGE, AXALLOC_WRITE), AXALLOC_OK);
    uint64_t bm[2];
    CHECK_STATUS(axalloc_present_bitmap(f.as, BASE, 128 * PAGE, bm), AXALLOC_OK);
    CHECK_EQ_U64(bm[0], 1ull << 3 | 1ull << 9);
    CHECK_EQ_U64(bm[1], ~0ull);
    CHECK_STATUS(axalloc_young_get(f.as, BASE, 64 * PAGE, bm, AXALLOC_BITMAP_CLEAR), AXALLOC_OK);
    CHECK_EQ_U64(bm[0], 1ull << 3 | 1ull << 9);
    CHECK_STATUS(axalloc_young_get(f.as, BASE, 64 * PAGE, bm, 0), AXALLOC_OK);
    CHECK_EQ_U64(bm[0], 0);
    uint64_t v;
    CHECK_STATUS(axalloc_handle_fault(f.as, BASE + 3 * PAGE, AXALLOC_READ), AXALLOC_OK);
    CHECK_STATUS(axalloc_read(f.as, BASE + 9 * PAGE, &v, sizeof v), AXALLOC_OK);
    CHECK_STATUS(axalloc_young_get(f.as, BASE, 64 * PAGE, bm, 0), AXALLOC_OK);
    CHECK_EQ_U64(bm[0], 1ull << 3 | 1ull << 9);
    CHECK_STATUS(axalloc_young_get(f.as, BASE - PAGE, 2 * PAGE, bm, 0), AXALLOC_ERR_NOT_MAPPED);
    CHECK_STATUS(axalloc_young_get(f.as, BASE, PAGE, bm, 1), AXALLOC_ERR_INVALID);
    CHECK(fx_done(&f) == 0);
  }
}

/* Faults, writes and gets from several threads: every value the writers
 * leave is in the shadow copy the getter keeps. */
typedef struct race {
  th_fx_t *f;
  int id;
  volatile int *stop;
} race_t;

static void *writer(void *arg) {
  race_t *r = arg;
  for (uint64_t n = 1; !*r->stop; n++) {
    uint64_t gpa = BASE + (r->id * 32 + n % 32) * PAGE;
    axalloc_handle_fault(r->f->as, gpa, AXALLOC_WRITE);
    CHECK_STATUS(axalloc_write(r->f->as, gpa, &n, sizeof n), AXALLOC_OK);
  }
  return NULL;
}

static void dirty_log_races_writers(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 4 * GIB, 1024);
    CHECK_STATUS(axalloc_map_alloc(f.as, BASE, 64 * PAGE, RW, false), AXALLOC_OK);
    CHECK_STATUS(axalloc_dirty_log_start(f.as, BASE, 64 * PAGE), AXALLOC_OK);
    uint64_t shadow[64] = {0}, bm[1];
    volatile int stop = 0;
    race_t r[2] = {{&f, 0, &stop}, {&f, 1, &stop}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++) CHECK(pthread_create(&t[i], NULL, writer, &r[i]) == 0);
    for (int round = 0; round < 300 + 1; round++) {
      if (round == 300) {
        stop = 1;
        for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
      }
      CHECK_STATUS(axalloc_dirty_log_get(f.as, BASE, 64 * PAGE, bm, AXALLOC_BITMAP_CLEAR), AXALLOC_OK);
      for (int i = 0; i < 64; i++)
        if (bm[0] >> i & 1) CHECK_STATUS(axalloc_read(f.as, BASE + i * PAGE, &shadow[i], 8), AXALLOC_OK);
    }
    for (int i = 0; i < 64; i++) {
      uint64_t v = 0;
      CHECK_STATUS(axalloc_read(f.as, BASE + i * PAGE, &v, 8), AXALLOC_OK);
      CHECK_EQ_U64(shadow[i], v);
    }
    CHECK(fx_done(&f) == 0);
  }
}

TEST_MAIN(T(dirty_log_round_trip), T(dirty_log_start_is_all_or_nothing), T(young_and_present),
          T(dirty_log_races_writers))
