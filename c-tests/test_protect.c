/*
 * axalloc_protect (issue 11): the guest's rights changed on a range, kept in
 * the table entries. Rights are read back bit by bit through this file's own
 * decoder of each format's leaf (below, from the manuals), not the library's.
 */
#include <pthread.h>

#include "sem.h"

#define R AXALLOC_READ
#define RW (AXALLOC_READ | AXALLOC_WRITE)
#define RWX (AXALLOC_READ | AXALLOC_WRITE | AXALLOC_EXEC)
#define BASE GIB

/* The rights of the page at gpa: its leaf must be present. */
static uint32_t page_rights(th_fx_t *f, uint64_t gpa) {
  uint64_t raw = 0;
  CHECK(th_entry(f->pool, gpa, 0, &raw));
  CHECK(th_present(f->format, raw));
  return leaf_rights_of(f->format, raw);
}

static bool page_present(th_fx_t *f, uint64_t gpa) {
  uint64_t raw = 0;
  return th_entry(f->pool, gpa, 0, &raw) && th_present(f->format, raw);
}

static uint64_t word_at(th_fx_t *f, uint64_t gpa) {
  uint64_t v = ~0ull;
  CHECK_STATUS(axalloc_read(f->as, gpa, &v, sizeof v), AXALLOC_OK);
  return v;
}

/* Present pages get the new rights, address and data kept; removing a
 * right flushes once, over the changed pages; adding does not flush. */
static void protect_changes_present_leaves_bit_by_bit(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 4 * GIB, 1024);
    CHECK_STATUS(axalloc_map_alloc(f.as, BASE, 16 * PAGE, RWX, true), AXALLOC_OK);
    for (uint64_t i = 0; i < 16; i++) {
      uint64_t v = 0xab00 + i;
      CHECK_STATUS(axalloc_write(f.as, BASE + i * PAGE, &v, sizeof v), AXALLOC_OK);
    }
    uint64_t hpa = xlate(&f, BASE + 4 * PAGE, NULL);
    snap_t before = snap_of(&f);
    CHECK_STATUS(axalloc_protect(f.as, BASE + 4 * PAGE, 8 * PAGE, R), AXALLOC_OK);
    snap_t after = snap_of(&f);
    CHECK_EQ_U64(after.flushes, before.flushes + 1);
    th_flush_t fl = th_last_flush(f.pool);
    CHECK(fl.gpa <= BASE + 4 * PAGE && fl.gpa + fl.size >= BASE + 12 * PAGE);
    CHECK_EQ_U64(after.in_use, before.in_use); /* no table, no frame */
    for (uint64_t i = 0; i < 16; i++) {
      CHECK_EQ_U64(page_rights(&f, BASE + i * PAGE), (i >= 4 && i < 12) ? R : RWX);
      CHECK_EQ_U64(word_at(&f, BASE + i * PAGE), 0xab00 + i);
    }
    CHECK_EQ_U64(xlate(&f, BASE + 4 * PAGE, NULL), hpa);
    CHECK_STATUS(axalloc_handle_fault(f.as, BASE + 5 * PAGE, AXALLOC_WRITE), AXALLOC_ERR_ACCESS);
    CHECK_STATUS(axalloc_handle_fault(f.as, BASE + 5 * PAGE, AXALLOC_EXEC), AXALLOC_ERR_ACCESS);
    CHECK_STATUS(axalloc_handle_fault(f.as, BASE + 5 * PAGE, AXALLOC_READ), AXALLOC_OK);
    /* Adding rights back: no flush; the stale translation's fault is spurious. */
    before = snap_of(&f);
    CHECK_STATUS(axalloc_protect(f.as, BASE + 4 * PAGE, 8 * PAGE, RW), AXALLOC_OK);
    CHECK_SNAP_EQ(before, snap_of(&f), 0);
    CHECK_EQ_U64(page_rights(&f, BASE + 5 * PAGE), RW);
    CHECK_STATUS(axalloc_handle_fault(f.as, BASE + 5 * PAGE, AXALLOC_WRITE), AXALLOC_OK);
    CHECK_EQ_U64(th_stats(&f).faults, 0); /* spurious: nothing installed */
    CHECK(fx_done(&f) == 0);
  }
}

/* Pages never touched get the rights when they fault in later. */
static void protect_reaches_lazy_pages(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 4 * GIB, 1024);
    CHECK_STATUS(axalloc_map_alloc(f.as, BASE, 64 * PAGE, RW, false), AXALLOC_OK);
    CHECK_STATUS(axalloc_protect(f.as, BASE + 16 * PAGE, 16 * PAGE, R | AXALLOC_EXEC), AXALLOC_OK);
    CHECK_EQ_U64(th_stats(&f).guest_frames, 0);
    CHECK_STATUS(axalloc_handle_fault(f.as, BASE + 20 * PAGE, AXALLOC_WRITE), AXALLOC_ERR_ACCESS);
    CHECK_STATUS(axalloc_handle_fault(f.as, BASE + 20 * PAGE, AXALLOC_EXEC), AXALLOC_OK);
    CHECK_EQ_U64(page_rights(&f, BASE + 20 * PAGE), R | AXALLOC_EXEC);
    CHECK(frame_is_zero(f.pool, xlate(&f, BASE + 20 * PAGE, NULL)));
    CHECK_STATUS(axalloc_handle_fault(f.as, BASE + 40 * PAGE, AXALLOC_EXEC), AXALLOC_ERR_ACCESS);
    CHECK_STATUS(axalloc_handle_fault(f.as, BASE + 40 * PAGE, AXALLOC_WRITE), AXALLOC_OK);
    CHECK_EQ_U64(page_rights(&f, BASE + 40 * PAGE), RW);
    /* A hypervisor write and a prefault fill lazy pages with their rights. */
    uint64_t v = 7;
    CHECK_STATUS(axalloc_write(f.as, BASE + 21 * PAGE, &v, sizeof v), AXALLOC_OK);
    CHECK_EQ_U64(page_rights(&f, BASE + 21 * PAGE), R | AXALLOC_EXEC);
    CHECK_STATUS(axalloc_prefault(f.as, BASE, 64 * PAGE), AXALLOC_OK);
    CHECK_EQ_U64(page_rights(&f, BASE + 30 * PAGE), R | AXALLOC_EXEC);
    CHECK_EQ_U64(page_rights(&f, BASE + 33 * PAGE), RW);
    CHECK(fx_done(&f) == 0);
  }
}

/* Flags 0: every guest access is refused, the contents stay and the
 * hypervisor reaches them; rights back give the same frame. */
static void protect_none_keeps_contents(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 4 * GIB, 1024);
    CHECK_STATUS(axalloc_map_alloc(f.as, BASE, 4 * PAGE, RW, false), AXALLOC_OK);
    uint64_t v = 0x5eed;
    CHECK_STATUS(axalloc_write(f.as, BASE + 8, &v, sizeof v), AXALLOC_OK);
    uint64_t hpa = xlate(&f, BASE, NULL);
    snap_t before = snap_of(&f);
    CHECK_STATUS(axalloc_protect(f.as, BASE, 4 * PAGE, 0), AXALLOC_OK);
    CHECK_EQ_U64(snap_of(&f).flushes, before.flushes + 1);
    CHECK(!page_present(&f, BASE));
    for (uint32_t a = 1; a <= 7; a++) {
      CHECK_STATUS(axalloc_handle_fault(f.as, BASE, a), AXALLOC_ERR_ACCESS);
      CHECK_STATUS(axalloc_handle_fault(f.as, BASE + 2 * PAGE, a), AXALLOC_ERR_ACCESS);
    }
    CHECK_EQ_U64(word_at(&f, BASE + 8), 0x5eed);
    CHECK_EQ_U64(xlate(&f, BASE, NULL), hpa);
    CHECK_EQ_U64(th_stats(&f).guest_frames, 1);
    CHECK_STATUS(axalloc_protect(f.as, BASE, 4 * PAGE, RW), AXALLOC_OK);
    CHECK_EQ_U64(page_rights(&f, BASE), RW);
    CHECK_EQ_U64(xlate(&f, BASE, NULL), hpa);
    CHECK_EQ_U64(word_at(&f, BASE + 8), 0x5eed);
    CHECK(fx_done(&f) == 0);
  }
}

/* Bad input, gaps: the error, and nothing changed. */
static void protect_rejects_bad_input_changing_nothing(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 4 * GIB, 1024);
    CHECK_STATUS(axalloc_map_alloc(f.as, BASE, 16 * PAGE, RW, false), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_alloc(f.as, BASE + 32 * PAGE, 16 * PAGE, RW, true), AXALLOC_OK);
    snap_t before = snap_of(&f);
    CHECK_STATUS(axalloc_protect(NULL, BASE, PAGE, R), AXALLOC_ERR_INVALID);
    CHECK_STATUS(axalloc_protect(f.as, BASE + 1, PAGE, R), AXALLOC_ERR_INVALID);
    CHECK_STATUS(axalloc_protect(f.as, BASE, 0, R), AXALLOC_ERR_INVALID);
    CHECK_STATUS(axalloc_protect(f.as, BASE, PAGE - 1, R), AXALLOC_ERR_INVALID);
    CHECK_STATUS(axalloc_protect(f.as, ~0ull - PAGE + 1, 2 * PAGE, R), AXALLOC_ERR_INVALID);
    CHECK_STATUS(axalloc_protect(f.as, 4 * GIB, PAGE, R), AXALLOC_ERR_INVALID);
    const uint32_t bad[] = {AXALLOC_WRITE, AXALLOC_EXEC, AXALLOC_WRITE | AXALLOC_EXEC, AXALLOC_DEVICE,
                            R | AXALLOC_DEVICE, R | (1u << 4), R | (1u << 16), ~0u};
    for (size_t i = 0; i < N_ELEMS(bad); i++)
      CHECK_STATUS(axalloc_protect(f.as, BASE, PAGE, bad[i]), AXALLOC_ERR_INVALID);
    CHECK_STATUS(axalloc_protect(f.as, BASE, 48 * PAGE, R), AXALLOC_ERR_NOT_MAPPED);
    CHECK_STATUS(axalloc_protect(f.as, BASE - PAGE, 2 * PAGE, R), AXALLOC_ERR_NOT_MAPPED);
    CHECK_STATUS(axalloc_protect(f.as, BASE + 40 * PAGE, 16 * PAGE, R), AXALLOC_ERR_NOT_MAPPED);
    CHECK_SNAP_EQ(before, snap_of(&f), 0);
    CHECK_EQ_U64(page_rights(&f, BASE + 32 * PAGE), RW);
    CHECK(fx_done(&f) == 0);
  }
}

/* Failure at every allocation point (the lazy entries' tables, the split of
 * a huge linear leaf): NO_MEMORY and nothing changed. */
static void protect_is_all_or_nothing(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 4 * GIB, 2048);
    /* Lazy RAM in a fresh 1 GiB slot, then a 2 MiB-aligned linear range. */
    CHECK_STATUS(axalloc_map_alloc(f.as, BASE - 4 * MIB, 4 * MIB, RW, false), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_linear(f.as, BASE, 1ull << 32, 4 * MIB, RW), AXALLOC_OK);
    long n = 0;
    for (;; n++) {
      snap_t before = snap_of(&f);
      th_fail_after(f.pool, n);
      axalloc_status_t st = axalloc_protect(f.as, BASE - 3 * MIB, 3 * MIB + 8 * PAGE, R);
      th_fail_never(f.pool);
      if (st == AXALLOC_OK) break;
      CHECK_STATUS(st, AXALLOC_ERR_NO_MEMORY);
      CHECK_SNAP_EQ(before, snap_of(&f), n);
      /* Not split, rights unchanged. */
      uint64_t ps = 0;
      xlate(&f, BASE, &ps);
      CHECK_EQ_U64(ps, 2 * MIB);
      if (n > 100) break;
    }
    CHECK(n >= 4); /* a level-1 table, 2 leaf tables, the split */
    CHECK_STATUS(axalloc_handle_fault(f.as, BASE - 2 * MIB, AXALLOC_WRITE), AXALLOC_ERR_ACCESS);
    CHECK_STATUS(axalloc_handle_fault(f.as, BASE + 4 * PAGE, AXALLOC_WRITE), AXALLOC_ERR_ACCESS);
    CHECK_STATUS(axalloc_handle_fault(f.as, BASE + 8 * PAGE, AXALLOC_WRITE), AXALLOC_OK);
    CHECK_EQ_U64(page_rights(&f, BASE + 7 * PAGE), R);
    CHECK_EQ_U64(page_rights(&f, BASE + 8 * PAGE), RW);
    CHECK(fx_done(&f) == 0);
  }
}

/* KVM and Xen keep rights in the entries; so do we: 100,000 protects of
 * scattered pages need table frames only, and no region. */
static void protect_scales_to_100k_scattered_pages(void) {
  FOR_EACH_FORMAT(fmt) {
    if (fmt != AXALLOC_FORMAT_X86_EPT && fmt != AXALLOC_FORMAT_ARM_S2) continue;
    th_fx_t f = th_fx_new(fmt, 0, 0, 4 * GIB, 1024);
    const uint64_t n = 100000;
    CHECK_STATUS(axalloc_map_alloc(f.as, PAGE, 2 * n * PAGE, RW, false), AXALLOC_OK);
    for (uint64_t i = 0; i < n; i++)
      CHECK_STATUS(axalloc_protect(f.as, PAGE + 2 * i * PAGE, PAGE, (i % 3) ? R : 0), AXALLOC_OK);
    axalloc_stats_t s = th_stats(&f);
    CHECK_EQ_U64(s.regions, 1);
    CHECK_EQ_U64(s.guest_frames, 0);
    CHECK(s.table_frames < 420);
    CHECK_STATUS(axalloc_handle_fault(f.as, PAGE + 2 * PAGE, AXALLOC_WRITE), AXALLOC_ERR_ACCESS);
    CHECK_STATUS(axalloc_handle_fault(f.as, PAGE + 2 * PAGE, AXALLOC_READ), AXALLOC_OK);
    CHECK_STATUS(axalloc_handle_fault(f.as, PAGE, AXALLOC_READ), AXALLOC_ERR_ACCESS);
    CHECK_STATUS(axalloc_handle_fault(f.as, 2 * PAGE, AXALLOC_WRITE), AXALLOC_OK);
    CHECK(fx_done(&f) == 0);
  }
}

/* Concurrency: one thread faults and writes its own pages and checks them,
 * while another protects (and discards) neighbouring ranges and toggles the
 * rights of a range the first one also reads; no write is lost. */
typedef struct race {
  th_fx_t *f;
  volatile int stop;
  volatile int rounds;
  int lost;
} race_t;

static void *writer(void *arg) {
  race_t *r = arg;
  for (uint64_t round = 1; !r->stop; round++) {
    for (uint64_t i = 0; i < 32; i++) {
      uint64_t gpa = BASE + i * PAGE, v = round * 100 + i, back = 0;
      axalloc_handle_fault(r->f->as, gpa, AXALLOC_WRITE);
      axalloc_handle_fault(r->f->as, gpa + 32 * PAGE, AXALLOC_READ);
      if (axalloc_write(r->f->as, gpa, &v, sizeof v) != AXALLOC_OK ||
          axalloc_read(r->f->as, gpa, &back, sizeof back) != AXALLOC_OK || back != v)
        r->lost++;
    }
    __atomic_store_n(&r->rounds, (int)round, __ATOMIC_RELEASE);
  }
  return NULL;
}

static void protect_races_faults_and_writes(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 4 * GIB, 2048);
    CHECK_STATUS(axalloc_map_alloc(f.as, BASE, 128 * PAGE, RW, false), AXALLOC_OK);
    race_t r = {.f = &f};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, writer, &r) == 0);
    for (int k = 0; k < 200 || __atomic_load_n(&r.rounds, __ATOMIC_ACQUIRE) < 2; k++) {
      const uint32_t rights[] = {R, 0, RW, R | AXALLOC_EXEC};
      axalloc_status_t st = axalloc_protect(f.as, BASE + 32 * PAGE, 32 * PAGE, rights[k % 4]);
      CHECK(st == AXALLOC_OK || st == AXALLOC_ERR_BUSY);
      st = axalloc_protect(f.as, BASE + 64 * PAGE, 64 * PAGE, rights[(k + 1) % 4]);
      CHECK(st == AXALLOC_OK || st == AXALLOC_ERR_BUSY);
      st = axalloc_discard(f.as, BASE + 64 * PAGE, 64 * PAGE);
      CHECK(st == AXALLOC_OK || st == AXALLOC_ERR_BUSY);
    }
    r.stop = 1;
    pthread_join(t, NULL);
    CHECK_EQ_U64(r.lost, 0);
    for (uint64_t i = 0; i < 32; i++) CHECK_EQ_U64(page_rights(&f, BASE + i * PAGE), RW);
    CHECK(fx_done(&f) == 0);
  }
}

TEST_MAIN(T(protect_changes_present_leaves_bit_by_bit), T(protect_reaches_lazy_pages),
          T(protect_none_keeps_contents), T(protect_rejects_bad_input_changing_nothing),
          T(protect_is_all_or_nothing), T(protect_scales_to_100k_scattered_pages),
          T(protect_races_faults_and_writes))
