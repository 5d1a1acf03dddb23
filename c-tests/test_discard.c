/*
 * axalloc_discard and axalloc_prefault (issue 11, first part): giving a
 * guest's frames back while the range stays mapped lazily, and making a
 * lazy range present ahead of the guest, all or nothing.
 */
#include <pthread.h>

#include "sem.h"

#define RW (AXALLOC_READ | AXALLOC_WRITE)

/* A lazy region of 64 pages at 1 GiB whose pages all hold data. */
static th_fx_t filled(uint32_t fmt, bool populate) {
  th_fx_t f = th_fx_new(fmt, 0, 0, 4 * GIB, 1024);
  CHECK_STATUS(axalloc_map_alloc(f.as, GIB, 64 * PAGE, RW, populate), AXALLOC_OK);
  for (uint64_t i = 0; i < 64; i++) {
    uint64_t v = 0x1234000 + i;
    CHECK_STATUS(axalloc_write(f.as, GIB + i * PAGE + 8, &v, sizeof v), AXALLOC_OK);
  }
  return f;
}

static uint64_t word_at(th_fx_t *f, uint64_t gpa) {
  uint64_t v = ~0ull;
  CHECK_STATUS(axalloc_read(f->as, gpa, &v, sizeof v), AXALLOC_OK);
  return v;
}

/* The discarded pages' frames go back after one flush covering them; the
 * range stays mapped: a fault there installs a fresh zeroed frame; pages
 * outside keep their data. */
static void discard_gives_frames_back_and_refaults_zeroed(void) {
  for (int populate = 0; populate < 2; populate++) {
    FOR_EACH_FORMAT(fmt) {
      th_fx_t f = filled(fmt, populate);
      snap_t before = snap_of(&f);
      CHECK_STATUS(axalloc_discard(f.as, GIB + 16 * PAGE, 16 * PAGE), AXALLOC_OK);
      snap_t after = snap_of(&f);
      CHECK_EQ_U64(after.s.guest_frames, before.s.guest_frames - 16);
      CHECK_EQ_U64(after.in_use, before.in_use - 16);
      CHECK_EQ_U64(after.flushes, before.flushes + 1);
      th_flush_t fl = th_last_flush(f.pool);
      CHECK(fl.gpa <= GIB + 16 * PAGE && fl.gpa + fl.size >= GIB + 32 * PAGE);
      CHECK_EQ_U64(after.s.regions, before.s.regions);
      CHECK_EQ_U64(after.s.mapped_bytes, before.s.mapped_bytes);
      CHECK_NONE_MAPPED(&f, GIB + 16 * PAGE, 16 * PAGE);
      CHECK_ALL_MAPPED(&f, GIB, 16 * PAGE);
      CHECK_ALL_MAPPED(&f, GIB + 32 * PAGE, 32 * PAGE);
      for (uint64_t i = 0; i < 64; i++) {
        uint64_t want = (i >= 16 && i < 32) ? 0 : 0x1234000 + i;
        CHECK_EQ_U64(word_at(&f, GIB + i * PAGE + 8), want);
      }
      /* Still mapped lazily: the guest's next access faults in a zeroed frame. */
      CHECK_STATUS(axalloc_handle_fault(f.as, GIB + 20 * PAGE, AXALLOC_WRITE), AXALLOC_OK);
      CHECK(frame_is_zero(f.pool, xlate(&f, GIB + 20 * PAGE, NULL)));
      CHECK(fx_done(&f) == 0);
    }
  }
}

/* A discard that empties whole leaf tables gives them back too. */
static void discard_frees_emptied_tables(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 4 * GIB, 2048);
    CHECK_STATUS(axalloc_map_alloc(f.as, GIB, 4 * MIB, RW, true), AXALLOC_OK);
    uint64_t tables = th_stats(&f).table_frames;
    CHECK_STATUS(axalloc_discard(f.as, GIB, 4 * MIB), AXALLOC_OK);
    CHECK_EQ_U64(th_stats(&f).guest_frames, 0);
    CHECK(th_stats(&f).table_frames < tables);
    CHECK_STATUS(axalloc_handle_fault(f.as, GIB + 3 * MIB, AXALLOC_READ), AXALLOC_OK);
    CHECK_EQ_U64(th_stats(&f).guest_frames, 1);
    CHECK(fx_done(&f) == 0);
  }
}

/* Gaps and linear parts: the error, and nothing changed. Never-touched lazy
 * pages: nothing to do, no flush. */
static void discard_rejects_gaps_and_linear_changing_nothing(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = filled(fmt, false);
    CHECK_STATUS(axalloc_map_alloc(f.as, 2 * GIB, 16 * PAGE, RW, false), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_linear(f.as, 3 * GIB, 1ull << 32, 16 * PAGE, RW), AXALLOC_OK);
    snap_t before = snap_of(&f);
    CHECK_STATUS(axalloc_discard(f.as, GIB + 60 * PAGE, 8 * PAGE), AXALLOC_ERR_NOT_MAPPED);
    CHECK_STATUS(axalloc_discard(f.as, 3 * GIB, PAGE), AXALLOC_ERR_INVALID);
    CHECK_STATUS(axalloc_discard(f.as, GIB, 0), AXALLOC_ERR_INVALID);
    CHECK_STATUS(axalloc_discard(f.as, GIB + 1, PAGE), AXALLOC_ERR_INVALID);
    CHECK_SNAP_EQ(before, snap_of(&f), 0);
    CHECK_STATUS(axalloc_discard(f.as, 2 * GIB, 16 * PAGE), AXALLOC_OK); /* lazy, untouched */
    CHECK_SNAP_EQ(before, snap_of(&f), 1);
    CHECK(fx_done(&f) == 0);
  }
}

/* Every page becomes present, zeroed, with its region's rights; present
 * pages keep their data. */
static void prefault_makes_every_page_present(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 4 * GIB, 1024);
    CHECK_STATUS(axalloc_map_alloc(f.as, GIB, 32 * PAGE, RW, false), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_alloc(f.as, GIB + 32 * PAGE, 32 * PAGE, AXALLOC_READ, false), AXALLOC_OK);
    uint64_t v = 0xfeedface;
    CHECK_STATUS(axalloc_write(f.as, GIB + 5 * PAGE, &v, sizeof v), AXALLOC_OK);
    CHECK_STATUS(axalloc_prefault(f.as, GIB, 64 * PAGE), AXALLOC_OK);
    CHECK_ALL_MAPPED(&f, GIB, 64 * PAGE);
    CHECK_EQ_U64(th_stats(&f).guest_frames, 64);
    CHECK_EQ_U64(word_at(&f, GIB + 5 * PAGE), 0xfeedface);
    CHECK(frame_is_zero(f.pool, xlate(&f, GIB + 40 * PAGE, NULL)));
    /* The region's rights: a write to the read-only part is refused. */
    CHECK_STATUS(axalloc_handle_fault(f.as, GIB + 40 * PAGE, AXALLOC_WRITE), AXALLOC_ERR_ACCESS);
    CHECK_STATUS(axalloc_handle_fault(f.as, GIB + 4 * PAGE, AXALLOC_WRITE), AXALLOC_OK);
    CHECK_EQ_U64(th_stats(&f).faults, 0); /* nothing was left to fault */
    CHECK(fx_done(&f) == 0);
  }
}

/* Failure at every allocation point: NO_MEMORY, and nothing changed. */
static void prefault_is_all_or_nothing(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 4 * GIB, 2048);
    CHECK_STATUS(axalloc_map_alloc(f.as, GIB - 8 * PAGE, 2 * MIB + 16 * PAGE, RW, false), AXALLOC_OK);
    CHECK_STATUS(axalloc_handle_fault(f.as, GIB, AXALLOC_WRITE), AXALLOC_OK);
    long n = 0;
    for (;; n++) {
      snap_t before = snap_of(&f);
      th_fail_after(f.pool, n);
      axalloc_status_t st = axalloc_prefault(f.as, GIB - 8 * PAGE, 2 * MIB + 16 * PAGE);
      th_fail_never(f.pool);
      if (st == AXALLOC_OK) break;
      CHECK_STATUS(st, AXALLOC_ERR_NO_MEMORY);
      CHECK_SNAP_EQ(before, snap_of(&f), n);
      if (n > 2000) break;
    }
    CHECK(n > 500); /* every page and table was an allocation point */
    CHECK_ALL_MAPPED(&f, GIB - 8 * PAGE, 2 * MIB + 16 * PAGE);
    CHECK(fx_done(&f) == 0);
  }
}

static void prefault_rejects_gaps_and_linear(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 4 * GIB, 1024);
    CHECK_STATUS(axalloc_map_alloc(f.as, GIB, 16 * PAGE, RW, false), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_linear(f.as, GIB + 16 * PAGE, 1ull << 32, 16 * PAGE, RW), AXALLOC_OK);
    snap_t before = snap_of(&f);
    CHECK_STATUS(axalloc_prefault(f.as, GIB, 32 * PAGE), AXALLOC_ERR_INVALID);
    CHECK_STATUS(axalloc_prefault(f.as, GIB - PAGE, 2 * PAGE), AXALLOC_ERR_NOT_MAPPED);
    CHECK_STATUS(axalloc_prefault(f.as, GIB, 0), AXALLOC_ERR_INVALID);
    CHECK_SNAP_EQ(before, snap_of(&f), 0);
    CHECK(fx_done(&f) == 0);
  }
}

/* Concurrency: one thread faults and writes its own pages and checks them,
 * while another discards and prefaults a neighbouring range over and over;
 * the writer's data is never lost. */
typedef struct race {
  th_fx_t *f;
  volatile int stop;
  int lost;
} race_t;

static void *writer(void *arg) {
  race_t *r = arg;
  for (uint64_t round = 1; !r->stop; round++) {
    for (uint64_t i = 0; i < 32; i++) {
      uint64_t gpa = GIB + i * PAGE, v = round * 100 + i, back = 0;
      axalloc_handle_fault(r->f->as, gpa, AXALLOC_WRITE);
      if (axalloc_write(r->f->as, gpa, &v, sizeof v) != AXALLOC_OK ||
          axalloc_read(r->f->as, gpa, &back, sizeof back) != AXALLOC_OK || back != v)
        r->lost++;
    }
  }
  return NULL;
}

static void discard_and_prefault_race_faults_elsewhere(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 4 * GIB, 4096);
    CHECK_STATUS(axalloc_map_alloc(f.as, GIB, 2 * MIB, RW, false), AXALLOC_OK);
    th_check_reachability(f.pool, false); /* frees race with the writer's walks */
    race_t r = {.f = &f};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, writer, &r) == 0);
    for (int i = 0; i < 300; i++) {
      axalloc_status_t st = axalloc_prefault(f.as, GIB + 64 * PAGE, 64 * PAGE);
      CHECK(st == AXALLOC_OK || st == AXALLOC_ERR_BUSY);
      st = axalloc_discard(f.as, GIB + 64 * PAGE, 64 * PAGE);
      CHECK(st == AXALLOC_OK || st == AXALLOC_ERR_BUSY);
    }
    r.stop = 1;
    pthread_join(t, NULL);
    CHECK_EQ_U64(r.lost, 0);
    CHECK(fx_done(&f) == 0);
  }
}

TEST_MAIN(T(discard_gives_frames_back_and_refaults_zeroed), T(discard_frees_emptied_tables),
          T(discard_rejects_gaps_and_linear_changing_nothing), T(prefault_makes_every_page_present),
          T(prefault_is_all_or_nothing), T(prefault_rejects_gaps_and_linear),
          T(discard_and_prefault_race_faults_elsewhere))
