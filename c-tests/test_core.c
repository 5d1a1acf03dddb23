/*
 * Core table rules the header states or implies but the other semantics tests
 * do not pin down: copies across parked tables, what a flush must cover
 * before a table frame goes back, which hooks may block (no lock held),
 * progress of readers and faults while maps/unmaps/populates run, and
 * entry-format details (EPT suppress-#VE, NPT PAT in huge leaves, A/D bits
 * through a split, leaf rights on a present page). One CTest test per rule;
 * a rule that does not depend on the format runs over EPT and NPT.
 *
 * Tests that need another thread to make progress while a hook runs use a
 * side job (host.h: th_side_*) and wait for it with a timeout (SIDE_WAIT_S):
 * a library that blocks it fails the test, it never hangs the suite. No test
 * asserts on time taken otherwise; the progress test counts completions.
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdatomic.h>

#include "sem.h"

#define RW (AXALLOC_READ | AXALLOC_WRITE)

/* How long a hook waits for a side job that must be able to run meanwhile. */
#define SIDE_WAIT_S 10u
/* How long the end of a test waits for a side job that was held off (it runs
 * once the library has returned; longer means the library hangs). */
#define SIDE_END_S 60u

static bool is_present(uint32_t fmt, uint64_t raw) {
  return fmt == AXALLOC_FORMAT_X86_EPT ? (raw & 7) != 0 : (raw & 1) != 0;
}

#define ADDR_4K 0x000ffffffffff000ull
#define ADDR_2M 0x000fffffffe00000ull
#define ADDR_1G 0x000fffffc0000000ull
#define BIT(n) (1ull << (n))

/* ======================================================================== */
/* 1. axalloc_write populates the never-touched pages of several regions at
 * once, all or nothing: two one-page lazy regions next to each other whose
 * pages share a table the first region's preparation creates (and parks until
 * commit), at a 2 MiB and at a 1 GiB boundary. The write must succeed and the
 * bytes read back; the pool must be clean after destroy. */

static void fill_holes_across_parked_table(void) {
  static const struct {
    uint64_t a, b, at;
  } cases[] = {
      {0x200000, 0x201000, 0x200ff0},
      {0x3ffff000, 0x40000000, 0x3ffffff0},
  };
  FOR_EACH_FORMAT(fmt) {
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
      th_fx_t f = th_fx_new(fmt, 0, 0, 4 * GIB, 1024);
      CHECK_STATUS(axalloc_map_alloc(f.as, cases[c].a, PAGE, RW, false), AXALLOC_OK);
      CHECK_STATUS(axalloc_map_alloc(f.as, cases[c].b, PAGE, RW, false), AXALLOC_OK);
      unsigned char buf[32], back[32];
      for (size_t i = 0; i < sizeof buf; i++) buf[i] = (unsigned char)(0x40 + i);
      axalloc_status_t st = axalloc_write(f.as, cases[c].at, buf, sizeof buf);
      if (st != AXALLOC_OK) {
        fprintf(stderr, "%s: write(%#llx, 32 bytes) across lazy regions at %#llx and %#llx = %s, want AXALLOC_OK\n",
                fmt_name(fmt), (unsigned long long)cases[c].at, (unsigned long long)cases[c].a,
                (unsigned long long)cases[c].b, axalloc_status_str(st));
        check_failures++;
      } else {
        memset(back, 0xEE, sizeof back);
        CHECK_STATUS(axalloc_read(f.as, cases[c].at, back, sizeof back), AXALLOC_OK);
        CHECK(memcmp(back, buf, sizeof buf) == 0);
        CHECK_ALL_MAPPED(&f, cases[c].a, PAGE);
        CHECK_ALL_MAPPED(&f, cases[c].b, PAGE);
        /* the rest of both pages is zero */
        static unsigned char page[PAGE];
        CHECK_STATUS(axalloc_read(f.as, cases[c].a, page, PAGE - 0x10), AXALLOC_OK);
        size_t nz = 0;
        for (size_t i = 0; i < PAGE - 0x10; i++) nz += page[i] != 0;
        CHECK_EQ_U64(nz, 0);
        CHECK_EQ_U64(th_stats(&f).guest_frames, 2);
      }
      th_scan(f.pool);
      if (fx_done(&f) != 0) {
        fprintf(stderr, "%s: case %zu: pool not clean after destroy\n", fmt_name(fmt), c);
        check_failures++;
      }
    }
  }
}

/* ======================================================================== */
/* 2. Every table frame an unmap frees is covered by a flush_tlb of that unmap
 * made before the free, covering the whole guest-physical span the table
 * translated (paging-structure caches hold entries of the table itself, not
 * only translations of the unmapped bytes): 2 MiB for a table of 4 KiB
 * entries, 1 GiB for the level above, 512 GiB above that. Guest frames: their
 * page. The window is the whole 48-bit space, so every span lies in it. */

typedef struct watched {
  uint64_t hpa, gpa, span;
  int level; /* -1: guest frame */
} watched_t;

typedef struct flush_log {
  uint32_t fmt;
  bool armed;
  watched_t w[32];
  size_t nw;
  th_flush_t fl[16];
  size_t nfl;
  int table_frees, frame_frees, uncovered;
} flush_log_t;

static void log_flush(th_tap_t *t, uint64_t gpa, uint64_t size) {
  flush_log_t *l = t->arg;
  if (!l->armed) return;
  if (l->nfl < sizeof l->fl / sizeof l->fl[0]) l->fl[l->nfl] = (th_flush_t){gpa, size};
  l->nfl++;
}

static void log_free(th_tap_t *t, uint64_t hpa) {
  flush_log_t *l = t->arg;
  if (!l->armed) return;
  for (size_t i = 0; i < l->nw; i++) {
    const watched_t *w = &l->w[i];
    if (w->hpa != hpa) continue;
    if (w->level >= 0) l->table_frees++;
    else l->frame_frees++;
    bool covered = false;
    for (size_t k = 0; k < l->nfl && k < sizeof l->fl / sizeof l->fl[0]; k++)
      covered |= l->fl[k].gpa <= w->gpa && w->gpa + w->span <= l->fl[k].gpa + l->fl[k].size;
    if (!covered) {
      l->uncovered++;
      fprintf(stderr, "%s: %s %#llx (level %d) translating [%#llx, +%#llx) freed; flushes of the unmap before it:",
              fmt_name(l->fmt), w->level >= 0 ? "table frame" : "guest frame", (unsigned long long)hpa, w->level,
              (unsigned long long)w->gpa, (unsigned long long)w->span);
      if (l->nfl == 0) fprintf(stderr, " none");
      for (size_t k = 0; k < l->nfl && k < sizeof l->fl / sizeof l->fl[0]; k++)
        fprintf(stderr, " [%#llx, +%#llx)", (unsigned long long)l->fl[k].gpa, (unsigned long long)l->fl[k].size);
      fprintf(stderr, "\n");
    }
    return;
  }
}

/* Records every non-root table frame (with its span) and the guest frames of
 * `pages` (each gpa maps one 4 KiB page). */
static void watch(th_fx_t *f, flush_log_t *l, const uint64_t *pages, size_t npages) {
  th_table_t t[32];
  size_t n = th_list_tables(f->pool, t, 32);
  CHECK(n <= 32);
  l->nw = 0;
  for (size_t i = 0; i < n && i < 32; i++)
    if (t[i].level < fmt_levels(l->fmt) - 1) l->w[l->nw++] = (watched_t){t[i].hpa, t[i].gpa, t[i].span, t[i].level};
  for (size_t i = 0; i < npages; i++) {
    uint64_t hpa = xlate(f, pages[i], NULL);
    CHECK(hpa != ~0ull);
    l->w[l->nw++] = (watched_t){hpa & ~(PAGE - 1), pages[i] & ~(PAGE - 1), PAGE, -1};
  }
  l->nfl = 0;
  l->table_frees = l->frame_frees = l->uncovered = 0;
}

static void unmap_flush_covers_freed_tables(void) {
  FOR_EACH_FORMAT(fmt) {
    /* The last page emptied: its PT, PD and PDPT go back (not the root). */
    {
      flush_log_t l = {.fmt = fmt};
      th_tap_t tap = {.arg = &l, .on_free = log_free, .on_flush = log_flush};
      th_fx_t f = th_fx_new_tapped(&tap, fmt, 0, 0, fmt_gpa_limit(fmt), 256);
      CHECK_STATUS(axalloc_map_alloc(f.as, 0x1000, PAGE, RW, false), AXALLOC_OK);
      CHECK_STATUS(axalloc_handle_fault(f.as, 0x1000, AXALLOC_WRITE), AXALLOC_OK);
      th_scan(f.pool);
      const uint64_t pages[] = {0x1000};
      watch(&f, &l, pages, 1);
      uint64_t below_root = (uint64_t)fmt_levels(fmt) - 1; /* 4 levels: PDPT, PD, PT */
      CHECK_EQ_U64(l.nw, below_root + 1); /* + the guest frame */
      l.armed = true;
      CHECK_STATUS(axalloc_unmap(f.as, 0x1000, PAGE), AXALLOC_OK);
      l.armed = false;
      CHECK_EQ_U64(l.nfl, 1);
      CHECK_EQ_U64(l.table_frees, below_root);
      CHECK_EQ_U64(l.frame_frees, 1);
      if (l.uncovered) {
        fprintf(stderr, "%s: %d freed frame(s) not covered by a preceding flush of the unmap\n", fmt_name(fmt),
                l.uncovered);
        check_failures++;
      }
      CHECK_EQ_U64(th_stats(&f).table_frames, fmt_root_pages(fmt));
      CHECK(fx_done(&f) == 0);
    }
    /* The converse: another page keeps the tables; nothing but the guest
     * frame goes back, and the flush covers the unmapped page. */
    {
      flush_log_t l = {.fmt = fmt};
      th_tap_t tap = {.arg = &l, .on_free = log_free, .on_flush = log_flush};
      th_fx_t f = th_fx_new_tapped(&tap, fmt, 0, 0, fmt_gpa_limit(fmt), 256);
      CHECK_STATUS(axalloc_map_alloc(f.as, 0x1000, PAGE, RW, false), AXALLOC_OK);
      CHECK_STATUS(axalloc_map_alloc(f.as, 0x3000, PAGE, RW, false), AXALLOC_OK);
      CHECK_STATUS(axalloc_handle_fault(f.as, 0x1000, AXALLOC_WRITE), AXALLOC_OK);
      CHECK_STATUS(axalloc_handle_fault(f.as, 0x3000, AXALLOC_WRITE), AXALLOC_OK);
      th_scan(f.pool);
      const uint64_t pages[] = {0x1000};
      watch(&f, &l, pages, 1);
      uint64_t tables = th_stats(&f).table_frames;
      l.armed = true;
      CHECK_STATUS(axalloc_unmap(f.as, 0x1000, PAGE), AXALLOC_OK);
      l.armed = false;
      CHECK_EQ_U64(l.nfl, 1);
      if (l.nfl >= 1) CHECK(l.fl[0].gpa <= 0x1000 && 0x1000 + PAGE <= l.fl[0].gpa + l.fl[0].size);
      CHECK_EQ_U64(l.table_frees, 0);
      CHECK_EQ_U64(l.frame_frees, 1);
      CHECK_EQ_U64(l.uncovered, 0);
      CHECK_EQ_U64(th_stats(&f).table_frames, tables);
      CHECK_ALL_MAPPED(&f, 0x3000, PAGE);
      CHECK(fx_done(&f) == 0);
    }
  }
}

/* ======================================================================== */
/* 3. flush_tlb and free_frame run with no lock of the library held: a host's
 * flush that IPIs the other CPUs and waits for them must not deadlock against
 * vCPUs that are, at that moment, faulting or translating elsewhere in the
 * same address space. From inside the hook (first call of the unmap), a side
 * thread faults a page of an unrelated lazy region (>= 1 GiB away) and
 * translates a present page; the hook waits for it (SIDE_WAIT_S), then calls
 * the pool's hook. */

typedef struct probe {
  th_fx_t *f;
  uint64_t fault_gpa; /* not present, in a lazy region */
  uint64_t xlate_gpa; /* present */
  uint64_t xlate_hpa; /* its translation */
  int fault_st, xlate_st;
  uint64_t got_hpa;
} probe_t;

static void probe_run(void *arg) {
  probe_t *p = arg;
  p->fault_st = axalloc_handle_fault(p->f->as, p->fault_gpa, AXALLOC_WRITE);
  p->got_hpa = 0;
  p->xlate_st = axalloc_translate(p->f->as, p->xlate_gpa, &p->got_hpa, NULL);
}

/* One trigger per test: the first hook call while armed runs the side job. */
typedef struct trigger {
  th_side_t *side;
  atomic_int armed;
  atomic_long count; /* hook calls while armed (alloc trigger) */
  long at;           /* alloc trigger: fire at this call */
  atomic_int fired;
  atomic_int finished;
} trigger_t;

static void fire(trigger_t *tr) {
  if (atomic_exchange(&tr->armed, 0)) {
    atomic_store(&tr->fired, 1);
    atomic_store(&tr->finished, th_side_run(tr->side, SIDE_WAIT_S));
  }
}
static void fire_on_flush(th_tap_t *t, uint64_t gpa, uint64_t size) {
  (void)gpa;
  (void)size;
  fire(t->arg);
}
static void fire_on_free(th_tap_t *t, uint64_t hpa) {
  (void)hpa;
  fire(t->arg);
}
static void fire_on_alloc(th_tap_t *t) {
  trigger_t *tr = t->arg;
  if (atomic_load(&tr->armed) && atomic_fetch_add(&tr->count, 1) + 1 >= tr->at) fire(tr);
}

/* Checks the side job's outcome (after th_side_end). */
static void check_probe(uint32_t fmt, const char *hook, trigger_t *tr, const probe_t *p) {
  if (!atomic_load(&tr->fired)) {
    fprintf(stderr, "%s: %s was never called while armed\n", fmt_name(fmt), hook);
    check_failures++;
    return;
  }
  if (!atomic_load(&tr->finished)) {
    fprintf(stderr,
            "%s: a thread faulting at %#llx and translating %#llx did not finish within %u s while the library "
            "was in %s: the hook runs with the library's lock held (a host that waits for its vCPUs there "
            "deadlocks)\n",
            fmt_name(fmt), (unsigned long long)p->fault_gpa, (unsigned long long)p->xlate_gpa, SIDE_WAIT_S, hook);
    check_failures++;
  }
  CHECK_STATUS(p->fault_st, AXALLOC_OK);
  CHECK_STATUS(p->xlate_st, AXALLOC_OK);
  CHECK_EQ_U64(p->got_hpa, p->xlate_hpa);
}

enum which_hook { HOOK_FLUSH, HOOK_FREE };

static void hook_runs_with_no_lock_held(enum which_hook which) {
  FOR_EACH_FORMAT(fmt) {
    trigger_t tr = {0};
    th_tap_t tap = {.arg = &tr};
    if (which == HOOK_FLUSH) tap.on_flush = fire_on_flush;
    else tap.on_free = fire_on_free;
    th_fx_t f = th_fx_new_tapped(&tap, fmt, 0, 0, 16 * GIB, 512);
    const uint64_t a = 0x1000, b = 4 * GIB, c = 8 * GIB;
    CHECK_STATUS(axalloc_map_alloc(f.as, a, PAGE, RW, false), AXALLOC_OK);   /* to unmap */
    CHECK_STATUS(axalloc_map_alloc(f.as, b, 4 * MIB, RW, false), AXALLOC_OK); /* faulted meanwhile */
    CHECK_STATUS(axalloc_map_alloc(f.as, c, PAGE, RW, true), AXALLOC_OK);     /* translated meanwhile */
    CHECK_STATUS(axalloc_handle_fault(f.as, a, AXALLOC_WRITE), AXALLOC_OK);
    CHECK_STATUS(axalloc_handle_fault(f.as, b, AXALLOC_WRITE), AXALLOC_OK);
    th_scan(f.pool);
    probe_t p = {.f = &f, .fault_gpa = b + 2 * MIB + 5 * PAGE, .xlate_gpa = c + 0x10};
    p.xlate_hpa = xlate(&f, p.xlate_gpa, NULL);
    tr.side = th_side_new(probe_run, &p);
    atomic_store(&tr.armed, 1);
    CHECK_STATUS(axalloc_unmap(f.as, a, PAGE), AXALLOC_OK);
    atomic_store(&tr.armed, 0);
    th_side_end(tr.side, SIDE_END_S);
    check_probe(fmt, which == HOOK_FLUSH ? "flush_tlb" : "free_frame", &tr, &p);
    CHECK_ALL_MAPPED(&f, p.fault_gpa, PAGE);
    CHECK_NONE_MAPPED(&f, a, PAGE);
    th_scan(f.pool);
    CHECK(fx_done(&f) == 0);
  }
}

static void flush_runs_with_no_lock_held(void) { hook_runs_with_no_lock_held(HOOK_FLUSH); }
static void free_runs_with_no_lock_held(void) { hook_runs_with_no_lock_held(HOOK_FREE); }

/* ======================================================================== */
/* 4. A large populate does not hold faults off while it allocates and zeroes:
 * at its ~1000th alloc_frame, a side thread faults a page of an unrelated,
 * already-mapped lazy region and translates a present page; the hook waits
 * for it (SIDE_WAIT_S). */

#define POP_SIZE (64 * MIB)
#define POP_TRIGGER 1000

static void populate_does_not_hold_off_faults(void) {
  FOR_EACH_FORMAT(fmt) {
    trigger_t tr = {.at = POP_TRIGGER};
    th_tap_t tap = {.arg = &tr, .on_alloc = fire_on_alloc};
    th_fx_t f = th_fx_new_tapped(&tap, fmt, 0, 0, 16 * GIB, POP_SIZE / PAGE + 512);
    const uint64_t pop = GIB, b = 4 * GIB, c = 8 * GIB;
    CHECK_STATUS(axalloc_map_alloc(f.as, b, 4 * MIB, RW, false), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_alloc(f.as, c, PAGE, RW, true), AXALLOC_OK);
    CHECK_STATUS(axalloc_handle_fault(f.as, b, AXALLOC_WRITE), AXALLOC_OK);
    th_scan(f.pool);
    probe_t p = {.f = &f, .fault_gpa = b + 7 * PAGE, .xlate_gpa = c + 0x20};
    p.xlate_hpa = xlate(&f, p.xlate_gpa, NULL);
    tr.side = th_side_new(probe_run, &p);
    atomic_store(&tr.armed, 1);
    CHECK_STATUS(axalloc_map_alloc(f.as, pop, POP_SIZE, RW, true), AXALLOC_OK);
    atomic_store(&tr.armed, 0);
    th_side_end(tr.side, SIDE_END_S);
    check_probe(fmt, "alloc_frame of a populate", &tr, &p);
    CHECK_ALL_MAPPED(&f, p.fault_gpa, PAGE);
    CHECK_EQ_U64(th_stats(&f).guest_frames, POP_SIZE / PAGE + 1 + 2);
    th_scan(f.pool);
    CHECK(fx_done(&f) == 0);
  }
}

/* ======================================================================== */
/* 5. Readers make progress while a writer maps and unmaps in a loop: two
 * threads translate a present page over and over and count the translations
 * that completed while the writer was still running. The writer's cycles are
 * cut into RP_SEGMENTS segments, and each reader must complete READERS_MIN
 * translations in every segment: a lock that lets readers in only when the
 * writer happens to be descheduled outside its critical section gives them a
 * burst now and then, not progress throughout. Counts only, no timing (the
 * one timeout only keeps a writer starved by the readers from hanging the
 * suite). */

#define WRITER_CYCLES 20000
#define RP_SEGMENTS 10
#define READERS 2
#define READERS_MIN 100
#define WRITER_WAIT_S 120u

typedef struct rp {
  th_fx_t *f;
  pthread_barrier_t start;
  atomic_int writer_done; /* the writer finished its cycles */
  atomic_int stop;        /* readers: stop (writer done, or it timed out) */
  atomic_long counts[READERS];
  long seg[RP_SEGMENTS][READERS]; /* translations per segment (writer's view) */
  atomic_int errors;
  uint64_t rgpa, rhpa, wgpa;
} rp_t;

typedef struct rp_arg {
  rp_t *s;
  int id;
} rp_arg_t;

static void rp_fail(rp_t *s, const char *what, uint64_t gpa, int st) {
  if (atomic_fetch_add(&s->errors, 1) < 10)
    fprintf(stderr, "thread: %s at %#llx -> %s\n", what, (unsigned long long)gpa, axalloc_status_str(st));
}

static void *rp_reader(void *arg) {
  rp_arg_t *a = arg;
  rp_t *s = a->s;
  pthread_barrier_wait(&s->start);
  while (!atomic_load(&s->stop)) {
    uint64_t hpa = 0;
    int st = axalloc_translate(s->f->as, s->rgpa, &hpa, NULL);
    if (st != AXALLOC_OK || hpa != s->rhpa) rp_fail(s, "translate", s->rgpa, st);
    if (!atomic_load(&s->writer_done)) atomic_fetch_add(&s->counts[a->id], 1);
  }
  return NULL;
}

static void rp_writer(void *arg) {
  rp_t *s = arg;
  long last[READERS] = {0};
  pthread_barrier_wait(&s->start);
  for (int i = 0; i < WRITER_CYCLES; i++) {
    int st = axalloc_map_linear(s->f->as, s->wgpa, 0x200000000ull, 4 * PAGE, AXALLOC_READ);
    if (st != AXALLOC_OK) rp_fail(s, "map_linear", s->wgpa, st);
    st = axalloc_unmap(s->f->as, s->wgpa, 4 * PAGE);
    if (st != AXALLOC_OK) rp_fail(s, "unmap", s->wgpa, st);
    if ((i + 1) % (WRITER_CYCLES / RP_SEGMENTS) == 0)
      for (int r = 0; r < READERS; r++) {
        long c = atomic_load(&s->counts[r]);
        s->seg[i / (WRITER_CYCLES / RP_SEGMENTS)][r] = c - last[r];
        last[r] = c;
      }
  }
  atomic_store(&s->writer_done, 1);
}

static void readers_progress_during_map_unmap_loop(void) {
  const uint32_t fmt = AXALLOC_FORMAT_X86_EPT;
  th_fx_t f = th_fx_new(fmt, 0, 0, 16 * GIB, 256);
  /* The writer's region sits in its own 1 GiB, so each unmap frees tables
   * and each map allocates them: the exclusive side does real work. The
   * pool's own checks (a table walk per free) would dominate: off here. */
  th_check_reachability(f.pool, false);
  static rp_t s;
  memset(&s, 0, sizeof s);
  s.f = &f;
  s.rgpa = 0x10000 + 0x123;
  s.wgpa = 4 * GIB;
  CHECK_STATUS(axalloc_map_alloc(f.as, 0x10000, PAGE, RW, true), AXALLOC_OK);
  th_scan(f.pool);
  s.rhpa = xlate(&f, s.rgpa, NULL);
  pthread_barrier_init(&s.start, NULL, READERS + 1);
  pthread_t th[READERS];
  rp_arg_t args[READERS];
  for (int i = 0; i < READERS; i++) {
    args[i] = (rp_arg_t){&s, i};
    if (pthread_create(&th[i], NULL, rp_reader, &args[i]) != 0) abort();
  }
  th_side_t *writer = th_side_new(rp_writer, &s);
  bool finished = th_side_run(writer, WRITER_WAIT_S);
  atomic_store(&s.stop, 1);
  for (int i = 0; i < READERS; i++) pthread_join(th[i], NULL);
  th_side_end(writer, SIDE_END_S);
  pthread_barrier_destroy(&s.start);
  if (!finished) {
    fprintf(stderr, "the writer did not finish %d map/unmap cycles within %u s (starved by the readers?)\n",
            WRITER_CYCLES, WRITER_WAIT_S);
    check_failures++;
  }
  CHECK_EQ_U64(atomic_load(&s.errors), 0);
  printf("translations completed while the writer ran %d map/unmap cycles:", WRITER_CYCLES);
  for (int i = 0; i < READERS; i++) printf(" reader %d: %ld", i, atomic_load(&s.counts[i]));
  printf("; per %d cycles:", WRITER_CYCLES / RP_SEGMENTS);
  for (int i = 0; i < READERS; i++) {
    printf(" reader %d:", i);
    for (int k = 0; k < RP_SEGMENTS; k++) printf(" %ld", s.seg[k][i]);
    printf(";");
  }
  printf("\n");
  if (finished)
    for (int i = 0; i < READERS; i++)
      for (int k = 0; k < RP_SEGMENTS; k++)
        if (s.seg[k][i] < READERS_MIN) {
          fprintf(stderr, "reader %d completed %ld translations during writer cycles [%d, %d), want >= %d in every "
                  "segment (readers starve behind back-to-back writers)\n", i, s.seg[k][i],
                  k * (WRITER_CYCLES / RP_SEGMENTS), (k + 1) * (WRITER_CYCLES / RP_SEGMENTS), READERS_MIN);
          check_failures++;
          break;
        }
  CHECK_EQ_U64(th_stats(&f).regions, 1);
  CHECK_EQ_U64(th_stats(&f).table_frames, 4);
  CHECK(fx_done(&f) == 0);
}

/* ======================================================================== */
/* 6. EPT: bit 63 ("suppress #VE", Intel SDM vol. 3C, "EPT-Induced VM Exits"
 * / "Virtualization Exceptions": an EPT violation is convertible to #VE only
 * if bit 63 of the EPT entry that caused it is 0) must be 1 in every
 * non-present entry, or with the "EPT-violation #VE" control on, every lazy
 * fault goes to the guest instead of to the hypervisor. Present entries
 * keep bit 63 = 0 (test_format checks them exactly): a hypervisor that
 * enables #VE decides about permission violations itself. A fresh root is
 * all 1ull << 63. */

#define EPT_SVE BIT(63)

/* Checks every entry of every table: non-present entries carry
 * suppress-#VE. Returns the number of bad entries (first few printed). */
static int check_sve_tree(th_fx_t *f, const char *when) {
  th_table_t t[64];
  size_t n = th_list_tables(f->pool, t, 64);
  CHECK(n <= 64);
  int bad = 0;
  for (size_t k = 0; k < n && k < 64; k++) {
    const uint64_t *e = th_virt(f->pool, t[k].hpa);
    if (!e) {
      CHECK(e != NULL);
      continue;
    }
    for (int i = 0; i < 512; i++) {
      uint64_t raw = __atomic_load_n(&e[i], __ATOMIC_ACQUIRE);
      bool present = is_present(AXALLOC_FORMAT_X86_EPT, raw);
      if (present || (raw & EPT_SVE)) continue;
      if (bad++ < 5)
        fprintf(stderr, "EPT %s: level %d table %#llx entry %d (gpa %#llx) = %#018llx: %s without suppress-#VE\n",
                when, t[k].level, (unsigned long long)t[k].hpa, i,
                (unsigned long long)(t[k].gpa + (uint64_t)i * (t[k].span / 512)), (unsigned long long)raw,
                "non-present entry");
    }
  }
  if (bad) {
    fprintf(stderr, "EPT %s: %d entries without bit 63\n", when, bad);
    check_failures++;
  }
  return bad;
}

static void ept_nonpresent_entries_suppress_ve(void) {
  const uint32_t fmt = AXALLOC_FORMAT_X86_EPT;
  th_fx_t f = th_fx_new(fmt, 0, 0, fmt_gpa_limit(fmt), 512);
  /* fresh root: exactly 1 << 63 everywhere */
  const uint64_t *root = th_virt(f.pool, axalloc_as_root(f.as));
  CHECK(root != NULL);
  int wrong = 0;
  for (int i = 0; root && i < 512; i++)
    if (root[i] != EPT_SVE && wrong++ == 0)
      fprintf(stderr, "EPT fresh root entry %d = %#018llx, want %#018llx\n", i, (unsigned long long)root[i],
              (unsigned long long)EPT_SVE);
  CHECK_EQ_U64(wrong, 0);

  /* lazy region, one fault: every table on the walk */
  const uint64_t lz = 0x00007f8040203000ull; /* non-zero index at every level */
  CHECK_STATUS(axalloc_map_alloc(f.as, lz, 8 * PAGE, RW, false), AXALLOC_OK);
  CHECK_STATUS(axalloc_handle_fault(f.as, lz + 3 * PAGE, AXALLOC_WRITE), AXALLOC_OK);
  th_scan(f.pool);
  uint64_t raw = 0;
  CHECK(th_entry(f.pool, lz + 3 * PAGE, 0, &raw) && is_present(fmt, raw) && !(raw & EPT_SVE));
  CHECK(th_entry(f.pool, lz + 2 * PAGE, 0, &raw) && !is_present(fmt, raw) && (raw & EPT_SVE));
  check_sve_tree(&f, "after one fault");

  /* unmap one page (its table stays): the cleared entry */
  CHECK_STATUS(axalloc_handle_fault(f.as, lz + 4 * PAGE, AXALLOC_READ), AXALLOC_OK);
  th_scan(f.pool);
  CHECK_STATUS(axalloc_unmap(f.as, lz + 3 * PAGE, PAGE), AXALLOC_OK);
  raw = 0;
  CHECK(th_entry(f.pool, lz + 3 * PAGE, 0, &raw) && !is_present(fmt, raw) && (raw & EPT_SVE));
  check_sve_tree(&f, "after unmapping one page");
  /* unmap the rest (the tables go): the cleared root entry */
  CHECK_STATUS(axalloc_unmap(f.as, lz, 8 * PAGE), AXALLOC_OK);
  CHECK(th_entry(f.pool, lz, 3, &raw) && !is_present(fmt, raw) && (raw & EPT_SVE));
  check_sve_tree(&f, "after unmapping the region");

  /* populated region; 2 MiB and 1 GiB linear leaves; a split huge leaf */
  CHECK_STATUS(axalloc_map_alloc(f.as, 0x40000000 + 5 * PAGE, 16 * PAGE, RW, true), AXALLOC_OK);
  CHECK_STATUS(axalloc_map_linear(f.as, 0x80000000 + 2 * MIB, 0x200000000ull, 2 * MIB, RW), AXALLOC_OK);
  CHECK_STATUS(axalloc_map_linear(f.as, 4 * GIB, 0x400000000ull, GIB, AXALLOC_READ), AXALLOC_OK);
  th_scan(f.pool);
  CHECK(th_entry(f.pool, 0x40000000 + 5 * PAGE, 0, &raw) && is_present(fmt, raw) && !(raw & EPT_SVE));
  CHECK(th_entry(f.pool, 0x80000000 + 2 * MIB, 1, &raw) && (raw & BIT(7)) && !(raw & EPT_SVE));
  CHECK(th_entry(f.pool, 4 * GIB, 2, &raw) && (raw & BIT(7)) && !(raw & EPT_SVE));
  check_sve_tree(&f, "with populated and huge linear leaves");
  CHECK_STATUS(axalloc_unmap(f.as, 0x80000000 + 2 * MIB + 0x10000, PAGE), AXALLOC_OK);
  CHECK(th_entry(f.pool, 0x80000000 + 2 * MIB + 0x10000, 0, &raw) && !is_present(fmt, raw) && (raw & EPT_SVE));
  check_sve_tree(&f, "after splitting a 2 MiB leaf");
  CHECK(fx_done(&f) == 0);
}

/* ======================================================================== */
/* 7. NPT (AMD APM vol. 2, "2-Mbyte PDE—Long Mode" / "1-Gbyte PDPE—Long
 * Mode"): in a huge leaf bit 12 is PAT, the address is bits 51:21 / 51:30.
 * The library writes PAT = 0 and must decode the address without bit 12, so
 * a host that sets PAT (memory type through the PAT MSR) still translates
 * right. */

static void npt_huge_leaf_address_excludes_pat(void) {
  const uint32_t fmt = AXALLOC_FORMAT_X86_NPT;
  static const struct {
    uint64_t gpa, hpa, size, mask;
    int level;
  } cases[] = {
      {0x40000000, 0x200000000ull, 2 * MIB, ADDR_2M, 1},
      {0x80000000, 0x400000000ull, GIB, ADDR_1G, 2},
  };
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 8 * GIB, 256);
    const uint64_t g = cases[c].gpa, h = cases[c].hpa, sz = cases[c].size;
    CHECK_STATUS(axalloc_map_linear(f.as, g, h, sz, RW), AXALLOC_OK);
    th_scan(f.pool);
    uint64_t raw = 0;
    CHECK(th_entry(f.pool, g, cases[c].level, &raw));
    CHECK(raw & BIT(7));             /* PS */
    CHECK((raw & BIT(12)) == 0);     /* PAT clear */
    CHECK_EQ_U64(raw & cases[c].mask, h);
    CHECK(th_set_leaf_bits(f.pool, g, BIT(12)));
    CHECK(th_entry(f.pool, g, cases[c].level, &raw) && (raw & BIT(12)));
    const uint64_t offs[] = {0, 0x1234, sz / 2 + 0x1000, sz - 1};
    for (size_t i = 0; i < sizeof offs / sizeof offs[0]; i++) {
      uint64_t ps = 0, got = xlate(&f, g + offs[i], &ps);
      if (got != h + offs[i] || ps != sz) {
        fprintf(stderr, "NPT %s leaf with PAT (bit 12) set: translate(%#llx) = %#llx / %#llx, want %#llx / %#llx\n",
                cases[c].level == 1 ? "2 MiB" : "1 GiB", (unsigned long long)(g + offs[i]), (unsigned long long)got,
                (unsigned long long)ps, (unsigned long long)(h + offs[i]), (unsigned long long)sz);
        check_failures++;
      }
    }
    CHECK_STATUS(axalloc_handle_fault(f.as, g + 0x1234, AXALLOC_WRITE), AXALLOC_OK);
    CHECK(fx_done(&f) == 0);
  }
}

/* ======================================================================== */
/* 8. A split keeps what hardware recorded: splitting a 2 MiB leaf whose
 * accessed and dirty bits are set gives 4 KiB entries that are all accessed
 * and dirty (a cleared dirty bit loses a dirty page to the next dirty-log
 * scan), with the same rights and the right addresses; NPT: bit 7 of a 4 KiB
 * entry is PAT, so PS must not be copied there. The other 2 MiB leaf stays
 * exactly as it was. */

static uint64_t rights_mask(uint32_t fmt) {
  return fmt == AXALLOC_FORMAT_X86_EPT ? 7ull : (BIT(0) | BIT(1) | BIT(2) | BIT(63));
}

static void split_keeps_accessed_dirty(void) {
  FOR_EACH_FORMAT(fmt) {
    if (!is_x86_fmt(fmt)) continue; /* x86 entry bits; Arm / RISC-V: src/tests/core.rs */
    th_fx_t f = th_fx_new(fmt, 0, 0, 4 * GIB, 256);
    const uint64_t g = 0x40000000, h = 0x200000000ull, ad = ad_bits(fmt);
    CHECK_STATUS(axalloc_map_linear(f.as, g, h, 4 * MIB, RW), AXALLOC_OK);
    th_scan(f.pool);
    uint64_t leaf0 = 0, leaf1 = 0;
    CHECK(th_entry(f.pool, g, 1, &leaf0) && (leaf0 & BIT(7)));
    CHECK(th_set_leaf_bits(f.pool, g, ad));
    CHECK(th_entry(f.pool, g, 1, &leaf0) && (leaf0 & ad) == ad);
    CHECK(th_entry(f.pool, g + 2 * MIB, 1, &leaf1) && (leaf1 & BIT(7)));
    const uint64_t hole = g + 0x100000;
    CHECK_STATUS(axalloc_unmap(f.as, hole, PAGE), AXALLOC_OK);
    uint64_t raw = 0;
    CHECK(th_entry(f.pool, g, 1, &raw) && is_present(fmt, raw) && !(raw & BIT(7))); /* now a table */
    int missing = 0, addr = 0, rights = 0, lost_ad = 0, pat = 0;
    for (uint64_t i = 0; i < 512; i++) {
      uint64_t gi = g + i * PAGE;
      if (!th_entry(f.pool, gi, 0, &raw)) {
        missing++;
        continue;
      }
      if (gi == hole) {
        CHECK(!is_present(fmt, raw));
        continue;
      }
      if (!is_present(fmt, raw)) {
        missing++;
        continue;
      }
      if ((raw & ADDR_4K) != h + i * PAGE) addr++;
      if ((raw & rights_mask(fmt)) != (leaf0 & rights_mask(fmt))) rights++;
      if ((raw & ad) != ad && lost_ad++ == 0)
        fprintf(stderr, "%s: split child %#llx = %#018llx lost accessed/dirty %#llx of the 2 MiB leaf %#018llx\n",
                fmt_name(fmt), (unsigned long long)gi, (unsigned long long)raw, (unsigned long long)ad,
                (unsigned long long)leaf0);
      if (fmt == AXALLOC_FORMAT_X86_NPT && (raw & BIT(7))) pat++;
    }
    CHECK_EQ_U64(missing, 0);
    CHECK_EQ_U64(addr, 0);
    CHECK_EQ_U64(rights, 0);
    CHECK_EQ_U64(lost_ad, 0);
    CHECK_EQ_U64(pat, 0);
    CHECK(th_entry(f.pool, g + 2 * MIB, 1, &raw));
    CHECK_EQ_U64(raw, leaf1);
    uint64_t ps = 0;
    CHECK_EQ_U64(xlate(&f, g + 5 * PAGE + 7, &ps), h + 5 * PAGE + 7);
    CHECK_EQ_U64(ps, PAGE);
    CHECK_EQ_U64(xlate(&f, g + 3 * MIB, &ps), h + 3 * MIB);
    CHECK_EQ_U64(ps, 2 * MIB);
    CHECK(fx_done(&f) == 0);
  }
}

/* ======================================================================== */
/* 9. A fault on a present page whose leaf does not allow the access (a host
 * or a later library version write-protected it) is an access error, not a
 * spurious fault: OK would send the guest back to re-fault forever. Accesses
 * the leaf allows stay spurious. Nothing is allocated either way. */

static void fault_on_present_page_checks_leaf_rights(void) {
  FOR_EACH_FORMAT(fmt) {
    if (!is_x86_fmt(fmt)) continue; /* x86 entry bits; Arm / RISC-V: src/tests/core.rs */
    th_fx_t f = th_fx_new(fmt, 0, 0, 4 * GIB, 256);
    const uint64_t g = GIB + 3 * PAGE;
    CHECK_STATUS(axalloc_map_alloc(f.as, GIB, 8 * PAGE, RW, false), AXALLOC_OK);
    CHECK_STATUS(axalloc_handle_fault(f.as, g, AXALLOC_WRITE), AXALLOC_OK);
    th_scan(f.pool);
    uint64_t hpa = xlate(&f, g, NULL);
    CHECK(th_clear_leaf_bits(f.pool, g, BIT(1))); /* EPT W / NPT R/W */
    uint64_t raw = 0;
    CHECK(th_entry(f.pool, g, 0, &raw) && is_present(fmt, raw) && !(raw & BIT(1)));
    snap_t s0 = snap_of(&f);
    size_t allocs = th_allocs(f.pool);
    axalloc_status_t st = axalloc_handle_fault(f.as, g + 0x10, AXALLOC_WRITE);
    if (st != AXALLOC_ERR_ACCESS) {
      fprintf(stderr, "%s: write fault on a present page whose leaf is read-only: %s, want AXALLOC_ERR_ACCESS%s\n",
              fmt_name(fmt), axalloc_status_str(st), st == AXALLOC_OK ? " (the guest would re-fault forever)" : "");
      check_failures++;
    }
    CHECK_STATUS(axalloc_handle_fault(f.as, g, RW), AXALLOC_ERR_ACCESS);
    CHECK_STATUS(axalloc_handle_fault(f.as, g, AXALLOC_READ), AXALLOC_OK);
    CHECK_SNAP_EQ(s0, snap_of(&f), 0);
    CHECK_EQ_U64(th_allocs(f.pool), allocs);
    CHECK_EQ_U64(xlate(&f, g, NULL), hpa);
    /* other pages of the region are unaffected */
    CHECK_STATUS(axalloc_handle_fault(f.as, g + PAGE, AXALLOC_WRITE), AXALLOC_OK);
    th_scan(f.pool);
    CHECK(fx_done(&f) == 0);
  }
}

TEST_MAIN(T(fill_holes_across_parked_table), T(unmap_flush_covers_freed_tables), T(flush_runs_with_no_lock_held),
          T(free_runs_with_no_lock_held), T(populate_does_not_hold_off_faults),
          T(readers_progress_during_map_unmap_loop), T(ept_nonpresent_entries_suppress_ve),
          T(npt_huge_leaf_address_excludes_pat), T(split_keeps_accessed_dirty),
          T(fault_on_present_page_checks_leaf_rights))
