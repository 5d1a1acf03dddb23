/*
 * Concurrency: several threads (pthreads) calling into one address space at
 * once. Every rule is checked through the host pool's independent accounting
 * and the table as the host decodes it, after each run; th_fx_done() then
 * checks that destroy gave every frame back and that no hook rule was broken.
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#include "check.h"
#include "host.h"

#define MIB (1ull << 20)
#define GIB (1ull << 30)
#define PAGE 4096ull

/* Errors seen inside threads (CHECK is not thread-safe: count here). */
static atomic_int thread_errors;
static void thread_fail(const char *what, uint64_t gpa, int st) {
  if (atomic_fetch_add(&thread_errors, 1) < 10)
    fprintf(stderr, "thread: %s at gpa %#llx -> %s\n", what, (unsigned long long)gpa, axalloc_status_str(st));
}

typedef struct shared {
  th_fx_t *f;
  pthread_barrier_t start, done;
  int nthreads;
  int rounds;
  uint64_t base;  /* first page of the region the test works on */
  uint64_t pages;
  uint64_t base2; /* a second region (reader / mapper tests) */
  uint64_t pages2;
  atomic_int stop;
  uint64_t hpa_seen[16]; /* same-page test: HPA each thread saw */
} shared_t;

typedef struct worker {
  shared_t *s;
  int id;
  pthread_t th;
} worker_t;

static void run_workers(shared_t *s, void *(*fn)(void *), int n) {
  worker_t w[16];
  s->nthreads = n;
  for (int i = 0; i < n; i++) {
    w[i].s = s;
    w[i].id = i;
    if (pthread_create(&w[i].th, NULL, fn, &w[i]) != 0) abort();
  }
  for (int i = 0; i < n; i++) pthread_join(w[i].th, NULL);
}

static bool page_is_zero(th_pool_t *p, uint64_t hpa) {
  const unsigned char *v = th_virt(p, hpa & ~(PAGE - 1));
  if (!v) return false;
  for (size_t i = 0; i < PAGE; i++)
    if (v[i]) return false;
  return true;
}

/* ------------------------------------------------------------------------ */
/* Same lazy page, many threads, many rounds. Each round: the main thread maps
 * a one-page lazy region, all workers start together at a barrier and fault
 * the page repeatedly (first fault races), then the main thread checks that
 * exactly one frame backs it and every worker saw the same HPA, and unmaps. */

#define SAME_THREADS 6
#define SAME_ROUNDS 300
#define SAME_REPEAT 50

static void *same_page_worker(void *arg) {
  worker_t *w = arg;
  shared_t *s = w->s;
  for (int r = 0; r < s->rounds; r++) {
    pthread_barrier_wait(&s->start);
    uint64_t first = 0;
    for (int k = 0; k < SAME_REPEAT; k++) {
      uint32_t access = (k % 3 == 0) ? AXALLOC_WRITE : (k % 3 == 1) ? AXALLOC_READ : (AXALLOC_READ | AXALLOC_WRITE);
      uint64_t gpa = s->base + ((uint64_t)(w->id * 8 + k) % PAGE);
      int st = axalloc_handle_fault(s->f->as, gpa, access);
      if (st != AXALLOC_OK) thread_fail("same-page fault", gpa, st);
      uint64_t hpa = 0, ps = 0;
      st = axalloc_translate(s->f->as, s->base, &hpa, &ps);
      if (st != AXALLOC_OK || ps != PAGE) thread_fail("translate after own fault", s->base, st);
      if (k == 0) first = hpa;
      else if (hpa != first) thread_fail("present page replaced by another frame", s->base, 0);
    }
    s->hpa_seen[w->id] = first;
    pthread_barrier_wait(&s->done);
  }
  return NULL;
}

static void same_page(uint32_t format) {
  th_fx_t f = th_fx_new(format, 0, 0, 4 * GIB, 256);
  shared_t s = {.f = &f, .rounds = SAME_ROUNDS, .base = 3 * GIB + 5 * MIB + 7 * PAGE, .pages = 1};
  pthread_barrier_init(&s.start, NULL, SAME_THREADS + 1);
  pthread_barrier_init(&s.done, NULL, SAME_THREADS + 1);
  worker_t w[SAME_THREADS];
  for (int i = 0; i < SAME_THREADS; i++) {
    w[i].s = &s;
    w[i].id = i;
    if (pthread_create(&w[i].th, NULL, same_page_worker, &w[i]) != 0) abort();
  }
  uint64_t faults_before = th_stats(&f).faults;
  size_t max_extra = 0;
  for (int r = 0; r < SAME_ROUNDS; r++) {
    CHECK_STATUS(axalloc_map_alloc(f.as, s.base, PAGE, AXALLOC_READ | AXALLOC_WRITE, false), AXALLOC_OK);
    axalloc_stats_t st0 = th_stats(&f);
    size_t allocs0 = th_allocs(f.pool), frees0 = th_frees(f.pool), in_use0 = th_in_use(f.pool);
    pthread_barrier_wait(&s.start);
    pthread_barrier_wait(&s.done);
    axalloc_stats_t st1 = th_stats(&f);
    CHECK_EQ_U64(st1.guest_frames, 1);
    CHECK_EQ_U64(st1.faults, st0.faults + 1);
    uint64_t tables = st1.table_frames - st0.table_frames;
    /* frames kept: the guest frame and any new table frames */
    CHECK_EQ_U64(th_in_use(f.pool) - in_use0, 1 + tables);
    /* frames obtained beyond those: only losers' frames, all given back */
    size_t allocs = th_allocs(f.pool) - allocs0, frees = th_frees(f.pool) - frees0;
    CHECK_EQ_U64(allocs - frees, 1 + tables);
    CHECK(frees <= (size_t)(SAME_THREADS - 1) * 4); /* each loser: at most its frame and 3 tables */
    if (frees > max_extra) max_extra = frees;
    uint64_t hpa = 0;
    CHECK_STATUS(axalloc_translate(f.as, s.base, &hpa, NULL), AXALLOC_OK);
    for (int i = 0; i < SAME_THREADS; i++) CHECK_EQ_U64(s.hpa_seen[i], hpa);
    CHECK(page_is_zero(f.pool, hpa));
    th_scan(f.pool);
    CHECK_STATUS(axalloc_unmap(f.as, s.base, PAGE), AXALLOC_OK);
    CHECK_EQ_U64(th_stats(&f).guest_frames, 0);
  }
  for (int i = 0; i < SAME_THREADS; i++) pthread_join(w[i].th, NULL);
  CHECK_EQ_U64(th_stats(&f).faults - faults_before, (uint64_t)s.rounds);
  CHECK_EQ_U64(th_stats(&f).table_frames, 1);
  printf("same page: %d rounds x %d threads, at most %zu frames given back by losers in one round\n", s.rounds,
         SAME_THREADS, max_extra);
  CHECK_EQ_U64(atomic_load(&thread_errors), 0);
  pthread_barrier_destroy(&s.start);
  pthread_barrier_destroy(&s.done);
  CHECK(th_fx_done(&f) == 0);
}

static void same_page_ept(void) { same_page(AXALLOC_FORMAT_X86_EPT); }
static void same_page_npt(void) { same_page(AXALLOC_FORMAT_X86_NPT); }

/* ------------------------------------------------------------------------ */
/* Different pages of one lazy region: 4 threads x 2000 pages. */

#define DIFF_THREADS 4
#define DIFF_PER_THREAD 2000
#define DIFF_PAGES (DIFF_THREADS * DIFF_PER_THREAD)

enum pattern { INTERLEAVED, DISJOINT, ALL_OVERLAPPING };
static enum pattern diff_pattern;

static void *diff_worker(void *arg) {
  worker_t *w = arg;
  shared_t *s = w->s;
  pthread_barrier_wait(&s->start);
  uint64_t n = diff_pattern == ALL_OVERLAPPING ? s->pages : DIFF_PER_THREAD;
  for (uint64_t k = 0; k < n; k++) {
    uint64_t page;
    switch (diff_pattern) {
    case INTERLEAVED: page = k * DIFF_THREADS + (uint64_t)w->id; break;
    case DISJOINT: page = (uint64_t)w->id * DIFF_PER_THREAD + k; break;
    default: /* every thread every page, each from a different start and direction */
      page = (w->id & 1) ? (s->pages - 1 - (k + (uint64_t)w->id * 997) % s->pages) : (k + (uint64_t)w->id * 997) % s->pages;
      break;
    }
    uint64_t gpa = s->base + page * PAGE + (uint64_t)w->id * 8;
    uint32_t access = (k & 1) ? AXALLOC_WRITE : AXALLOC_READ;
    int st = axalloc_handle_fault(s->f->as, gpa, access);
    if (st != AXALLOC_OK) thread_fail("fault", gpa, st);
    st = axalloc_translate(s->f->as, gpa, NULL, NULL);
    if (st != AXALLOC_OK) thread_fail("translate after fault", gpa, st);
  }
  return NULL;
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

static void diff_pages(uint32_t format, enum pattern pat) {
  th_fx_t f = th_fx_new(format, 0, 0, 4 * GIB, DIFF_PAGES + 256);
  /* a region crossing a 1 GiB boundary, so several PD/PT tables race too */
  shared_t s = {.f = &f, .base = GIB - 8 * MIB + 3 * PAGE, .pages = DIFF_PAGES};
  CHECK_STATUS(axalloc_map_alloc(f.as, s.base, DIFF_PAGES * PAGE, AXALLOC_READ | AXALLOC_WRITE, false), AXALLOC_OK);
  size_t allocs0 = th_allocs(f.pool), frees0 = th_frees(f.pool);
  pthread_barrier_init(&s.start, NULL, DIFF_THREADS);
  diff_pattern = pat;
  run_workers(&s, diff_worker, DIFF_THREADS);
  pthread_barrier_destroy(&s.start);
  CHECK_EQ_U64(atomic_load(&thread_errors), 0);
  axalloc_stats_t st = th_stats(&f);
  CHECK_EQ_U64(st.guest_frames, DIFF_PAGES);
  CHECK_EQ_U64(st.faults, DIFF_PAGES);
  /* 4-level minimum for this range: root + PDPT + 2 PD + ceil over PTs */
  uint64_t first_pt = s.base >> 21, last_pt = (s.base + DIFF_PAGES * PAGE - 1) >> 21;
  CHECK_EQ_U64(st.table_frames, 1 + 1 + 2 + (last_pt - first_pt + 1));
  CHECK_EQ_U64((th_allocs(f.pool) - allocs0) - (th_frees(f.pool) - frees0), DIFF_PAGES + st.table_frames - 1);
  static uint64_t hpas[DIFF_PAGES];
  int not_zero = 0;
  for (uint64_t i = 0; i < DIFF_PAGES; i++) {
    uint64_t ps = 0;
    hpas[i] = 0;
    CHECK_STATUS(axalloc_translate(f.as, s.base + i * PAGE, &hpas[i], &ps), AXALLOC_OK);
    if (ps != PAGE) CHECK_EQ_U64(ps, PAGE);
    if (!th_owns(f.pool, hpas[i])) CHECK(th_owns(f.pool, hpas[i]));
    if (!page_is_zero(f.pool, hpas[i])) not_zero++;
  }
  CHECK_EQ_U64(not_zero, 0);
  qsort(hpas, DIFF_PAGES, sizeof hpas[0], cmp_u64);
  int dup = 0;
  for (int i = 1; i < DIFF_PAGES; i++) dup += hpas[i] == hpas[i - 1];
  CHECK_EQ_U64(dup, 0);
  CHECK(th_fx_done(&f) == 0);
}

static void diff_pages_interleaved_ept(void) { diff_pages(AXALLOC_FORMAT_X86_EPT, INTERLEAVED); }
static void diff_pages_interleaved_npt(void) { diff_pages(AXALLOC_FORMAT_X86_NPT, INTERLEAVED); }
static void diff_pages_disjoint_ept(void) { diff_pages(AXALLOC_FORMAT_X86_EPT, DISJOINT); }
static void diff_pages_disjoint_npt(void) { diff_pages(AXALLOC_FORMAT_X86_NPT, DISJOINT); }
static void diff_pages_overlapping_ept(void) { diff_pages(AXALLOC_FORMAT_X86_EPT, ALL_OVERLAPPING); }
static void diff_pages_overlapping_npt(void) { diff_pages(AXALLOC_FORMAT_X86_NPT, ALL_OVERLAPPING); }

/* ------------------------------------------------------------------------ */
/* Faults on region A while other threads translate and read region B (a
 * populated region with a known pattern) and A itself (which must always
 * read as zeros: a frame is zeroed before it becomes visible). */

#define RW_PAGES 2048
#define RW_FAULTERS 2
#define RW_READERS 2

static unsigned char pattern_byte(uint64_t off) { return (unsigned char)(off * 131 + (off >> 12) * 7 + 1); }

static void *rw_worker(void *arg) {
  worker_t *w = arg;
  shared_t *s = w->s;
  pthread_barrier_wait(&s->start);
  if (w->id < RW_FAULTERS) {
    for (uint64_t k = 0; k < s->pages; k++) {
      /* thread 0: even pages upwards, thread 1: odd pages downwards, both twice */
      uint64_t kk = w->id == 1 ? s->pages - 1 - k : k;
      uint64_t page = (kk * RW_FAULTERS + (uint64_t)w->id) % s->pages;
      uint64_t gpa = s->base + page * PAGE;
      int st = axalloc_handle_fault(s->f->as, gpa, AXALLOC_READ);
      if (st != AXALLOC_OK) thread_fail("fault", gpa, st);
    }
    atomic_fetch_add(&s->stop, 1);
    return NULL;
  }
  unsigned char buf[3 * 4096];
  uint64_t iter = 0;
  while (atomic_load(&s->stop) < RW_FAULTERS || iter < 64) {
    iter++;
    /* B: pattern, across page boundaries */
    uint64_t off = ((iter * 7919 + (uint64_t)w->id * 104729) % (s->pages2 - 3)) * PAGE + (iter % 4096);
    size_t len = 1 + (size_t)(iter * 31 % (sizeof buf - 4096));
    int st = axalloc_read(s->f->as, s->base2 + off, buf, len);
    if (st != AXALLOC_OK) thread_fail("read B", s->base2 + off, st);
    for (size_t i = 0; i < len; i++)
      if (buf[i] != pattern_byte(off + i)) {
        thread_fail("read B: wrong data", s->base2 + off + i, 0);
        break;
      }
    uint64_t hpa = 0, ps = 0;
    st = axalloc_translate(s->f->as, s->base2 + off, &hpa, &ps);
    if (st != AXALLOC_OK || ps != PAGE) thread_fail("translate B", s->base2 + off, st);
    const unsigned char *v = th_virt(s->f->pool, hpa);
    if (!v || *v != pattern_byte(off)) thread_fail("translate B: frame content", s->base2 + off, 0);
    /* A: zeros whether present or not, and a present frame is already zeroed */
    uint64_t a = s->base + ((iter * 6151 + (uint64_t)w->id) % s->pages) * PAGE;
    memset(buf, 0xEE, 2 * 4096);
    st = axalloc_read(s->f->as, a, buf, 2 * 4096 - (a == s->base + (s->pages - 1) * PAGE ? 4096 : 0));
    if (st != AXALLOC_OK) thread_fail("read A", a, st);
    for (size_t i = 0; i < 4096; i++)
      if (buf[i]) {
        thread_fail("read A: not zero", a + i, 0);
        break;
      }
    st = axalloc_translate(s->f->as, a, &hpa, &ps);
    if (st == AXALLOC_OK) {
      if (!page_is_zero(s->f->pool, hpa)) thread_fail("translate A: visible frame not zeroed", a, 0);
    } else if (st != AXALLOC_ERR_NOT_MAPPED) {
      thread_fail("translate A", a, st);
    }
  }
  return NULL;
}

static void faults_translate_read(uint32_t format) {
  th_fx_t f = th_fx_new(format, 0, 0, 4 * GIB, RW_PAGES + 512 + 256);
  shared_t s = {.f = &f, .base = 2 * GIB, .pages = RW_PAGES, .base2 = 16 * MIB, .pages2 = 512};
  CHECK_STATUS(axalloc_map_alloc(f.as, s.base, RW_PAGES * PAGE, AXALLOC_READ | AXALLOC_EXEC, false), AXALLOC_OK);
  CHECK_STATUS(axalloc_map_alloc(f.as, s.base2, s.pages2 * PAGE, AXALLOC_READ | AXALLOC_WRITE, true), AXALLOC_OK);
  static unsigned char pat[512 * 4096];
  for (uint64_t i = 0; i < sizeof pat; i++) pat[i] = pattern_byte(i);
  CHECK_STATUS(axalloc_write(f.as, s.base2, pat, sizeof pat), AXALLOC_OK);
  pthread_barrier_init(&s.start, NULL, RW_FAULTERS + RW_READERS);
  run_workers(&s, rw_worker, RW_FAULTERS + RW_READERS);
  pthread_barrier_destroy(&s.start);
  CHECK_EQ_U64(atomic_load(&thread_errors), 0);
  axalloc_stats_t st = th_stats(&f);
  CHECK_EQ_U64(st.guest_frames, RW_PAGES + 512);
  CHECK_EQ_U64(st.faults, RW_PAGES);
  CHECK(th_fx_done(&f) == 0);
}

static void faults_translate_read_ept(void) { faults_translate_read(AXALLOC_FORMAT_X86_EPT); }
static void faults_translate_read_npt(void) { faults_translate_read(AXALLOC_FORMAT_X86_NPT); }

/* ------------------------------------------------------------------------ */
/* Faults on region A while another thread maps, writes and unmaps region B
 * (disjoint; sometimes in the same 1 GiB / 2 MiB range as A so that table
 * frames are shared and emptied concurrently). */

#define MU_PAGES 4096
#define MU_FAULTERS 2
#define MU_MAX_ROUNDS 400

static void *mu_worker(void *arg) {
  worker_t *w = arg;
  shared_t *s = w->s;
  pthread_barrier_wait(&s->start);
  if (w->id < MU_FAULTERS) {
    /* the first pass allocates (in a different order per thread), the
     * second one is spurious faults */
    for (int pass = 0; pass < 2; pass++)
      for (uint64_t k = 0; k < s->pages; k++) {
        uint64_t page = (w->id & 1) ? s->pages - 1 - (k * 7 + 1361) % s->pages : (k * 7) % s->pages;
        uint64_t gpa = s->base + page * PAGE;
        int st = axalloc_handle_fault(s->f->as, gpa, (k & 1) ? AXALLOC_WRITE : AXALLOC_READ);
        if (st != AXALLOC_OK) thread_fail("fault A", gpa, st);
        uint64_t hpa = 0;
        st = axalloc_translate(s->f->as, gpa, &hpa, NULL);
        if (st != AXALLOC_OK) thread_fail("translate A", gpa, st);
      }
    atomic_fetch_add(&s->stop, 1);
    return NULL;
  }
  /* the mapper */
  unsigned char buf[256];
  int round = 0;
  /* Rounds until the faulters are done (at least 20, at most MU_MAX_ROUNDS),
   * with a short pause between them as a hypervisor's control path would
   * have: a mapper that re-takes the exclusive lock back to back starves the
   * faulters for seconds on a 2-CPU machine (spin locks), and faulters that
   * never pause delay the mapper the same way — neither is what this test is
   * about (see the report). */
  while ((atomic_load(&s->stop) < MU_FAULTERS || round < 20) && round < MU_MAX_ROUNDS) {
    if (round) {
      struct timespec ts = {0, 20000};
      nanosleep(&ts, NULL);
    }
    /* B candidates: right after A in the same PT/PD, in another 2M of the
     * same PD, and in another 1G */
    static const uint64_t offs[3] = {0, 2 * MIB, GIB};
    uint64_t b = s->base2 + offs[round % 3];
    uint64_t n = 1 + (uint64_t)(round % 37);
    bool populate = round & 1;
    int st = axalloc_map_alloc(s->f->as, b, n * PAGE, AXALLOC_READ | AXALLOC_WRITE, populate);
    if (st != AXALLOC_OK) thread_fail("map_alloc B", b, st);
    memset(buf, round & 0xff, sizeof buf);
    st = axalloc_write(s->f->as, b + (n - 1) * PAGE + 100, buf, sizeof buf);
    if (st != AXALLOC_OK) thread_fail("write B", b, st);
    if (round % 5 == 0) {
      st = axalloc_map_linear(s->f->as, s->base2 + 3 * GIB, 0x200000000ull, 4 * MIB, AXALLOC_READ);
      if (st != AXALLOC_OK) thread_fail("map_linear C", s->base2 + 3 * GIB, st);
      st = axalloc_unmap(s->f->as, s->base2 + 3 * GIB + 4096, 8192); /* split */
      if (st != AXALLOC_OK) thread_fail("unmap split C", s->base2 + 3 * GIB, st);
      st = axalloc_unmap(s->f->as, s->base2 + 3 * GIB, 4 * MIB);
      if (st != AXALLOC_OK) thread_fail("unmap C", s->base2 + 3 * GIB, st);
    }
    if (n > 2) {
      st = axalloc_unmap(s->f->as, b + PAGE, PAGE); /* punch a hole: region split */
      if (st != AXALLOC_OK) thread_fail("unmap hole B", b, st);
    }
    st = axalloc_unmap(s->f->as, b, n * PAGE);
    if (st != AXALLOC_OK) thread_fail("unmap B", b, st);
    round++;
  }
  return NULL;
}

static void faults_vs_map_unmap(uint32_t format) {
  th_fx_t f = th_fx_new(format, 0, 0, 8 * GIB, MU_PAGES + 1024);
  shared_t s = {.f = &f, .base = GIB - MU_PAGES * PAGE / 2, .pages = MU_PAGES};
  s.base2 = s.base + MU_PAGES * PAGE; /* directly after A */
  CHECK_STATUS(axalloc_map_alloc(f.as, s.base, MU_PAGES * PAGE, AXALLOC_READ | AXALLOC_WRITE, false), AXALLOC_OK);
  th_scan(f.pool);
  pthread_barrier_init(&s.start, NULL, MU_FAULTERS + 1);
  run_workers(&s, mu_worker, MU_FAULTERS + 1);
  pthread_barrier_destroy(&s.start);
  CHECK_EQ_U64(atomic_load(&thread_errors), 0);
  axalloc_stats_t st = th_stats(&f);
  CHECK_EQ_U64(st.regions, 1);
  CHECK_EQ_U64(st.mapped_bytes, MU_PAGES * PAGE);
  CHECK_EQ_U64(st.guest_frames, MU_PAGES);
  /* every page of A is present, distinct and zeroed */
  int bad = 0;
  for (uint64_t i = 0; i < MU_PAGES; i++) {
    uint64_t hpa = 0;
    if (axalloc_translate(f.as, s.base + i * PAGE, &hpa, NULL) != AXALLOC_OK || !page_is_zero(f.pool, hpa)) bad++;
  }
  CHECK_EQ_U64(bad, 0);
  /* nothing of B or C is left */
  CHECK_STATUS(axalloc_translate(f.as, s.base2, NULL, NULL), AXALLOC_ERR_NOT_MAPPED);
  CHECK_STATUS(axalloc_translate(f.as, s.base2 + 3 * GIB, NULL, NULL), AXALLOC_ERR_NOT_MAPPED);
  /* the same number of table frames as A alone needs */
  uint64_t first_pt = s.base >> 21, last_pt = (s.base + MU_PAGES * PAGE - 1) >> 21;
  uint64_t first_pd = s.base >> 30, last_pd = (s.base + MU_PAGES * PAGE - 1) >> 30;
  CHECK_EQ_U64(st.table_frames, 1 + 1 + (last_pd - first_pd + 1) + (last_pt - first_pt + 1));
  CHECK_STATUS(axalloc_unmap(f.as, 0, 8 * GIB), AXALLOC_OK);
  st = th_stats(&f);
  CHECK_EQ_U64(st.guest_frames, 0);
  CHECK_EQ_U64(st.table_frames, 1);
  CHECK(th_fx_done(&f) == 0);
}

static void faults_vs_map_unmap_ept(void) { faults_vs_map_unmap(AXALLOC_FORMAT_X86_EPT); }
static void faults_vs_map_unmap_npt(void) { faults_vs_map_unmap(AXALLOC_FORMAT_X86_NPT); }

/* ------------------------------------------------------------------------ */
/* Faults racing with unmap (and re-map) of the SAME region: a fault returns
 * OK or NOT_MAPPED, never anything else, and no frame is freed before the
 * flush or leaked (the host checks every free against its own table walk). */

#define RACE_PAGES 64
#define RACE_FAULTERS 3

static void *race_worker(void *arg) {
  worker_t *w = arg;
  shared_t *s = w->s;
  pthread_barrier_wait(&s->start);
  if (w->id < RACE_FAULTERS) {
    uint64_t k = (uint64_t)w->id;
    while (atomic_load(&s->stop) == 0) {
      uint64_t gpa = s->base + (k++ % s->pages) * PAGE;
      int st = axalloc_handle_fault(s->f->as, gpa, AXALLOC_WRITE);
      if (st != AXALLOC_OK && st != AXALLOC_ERR_NOT_MAPPED) thread_fail("fault vs unmap", gpa, st);
      uint64_t hpa = 0;
      st = axalloc_translate(s->f->as, gpa, &hpa, NULL);
      if (st != AXALLOC_OK && st != AXALLOC_ERR_NOT_MAPPED) thread_fail("translate vs unmap", gpa, st);
      unsigned char b[16];
      st = axalloc_read(s->f->as, gpa + 8, b, sizeof b);
      if (st != AXALLOC_OK && st != AXALLOC_ERR_NOT_MAPPED) thread_fail("read vs unmap", gpa, st);
      if (st == AXALLOC_OK)
        for (size_t i = 0; i < sizeof b; i++)
          if (b[i]) {
            thread_fail("read vs unmap: not zero", gpa, 0);
            break;
          }
    }
    return NULL;
  }
  for (int r = 0; r < s->rounds; r++) {
    int st = axalloc_map_alloc(s->f->as, s->base, s->pages * PAGE, AXALLOC_READ | AXALLOC_WRITE, r % 4 == 3);
    if (st != AXALLOC_OK) thread_fail("map_alloc", s->base, st);
    for (volatile int spin = 0; spin < 2000 + (r % 7) * 500; spin++) {
    }
    if (r & 1) {
      st = axalloc_unmap(s->f->as, s->base + PAGE * (uint64_t)(r % s->pages), PAGE);
      if (st != AXALLOC_OK) thread_fail("unmap one", s->base, st);
    }
    st = axalloc_unmap(s->f->as, s->base, s->pages * PAGE);
    if (st != AXALLOC_OK) thread_fail("unmap", s->base, st);
  }
  atomic_store(&s->stop, 1);
  return NULL;
}

static void faults_vs_unmap_same(uint32_t format) {
  th_fx_t f = th_fx_new(format, 0, 0, 4 * GIB, 1024);
  shared_t s = {.f = &f, .base = GIB + 2 * MIB - 16 * PAGE, .pages = RACE_PAGES, .rounds = 400};
  pthread_barrier_init(&s.start, NULL, RACE_FAULTERS + 1);
  run_workers(&s, race_worker, RACE_FAULTERS + 1);
  pthread_barrier_destroy(&s.start);
  CHECK_EQ_U64(atomic_load(&thread_errors), 0);
  axalloc_stats_t st = th_stats(&f);
  CHECK_EQ_U64(st.regions, 0);
  CHECK_EQ_U64(st.guest_frames, 0);
  CHECK_EQ_U64(st.table_frames, 1);
  CHECK_EQ_U64(th_errors(f.pool), 0);
  CHECK(th_fx_done(&f) == 0);
}

static void faults_vs_unmap_same_ept(void) { faults_vs_unmap_same(AXALLOC_FORMAT_X86_EPT); }
static void faults_vs_unmap_same_npt(void) { faults_vs_unmap_same(AXALLOC_FORMAT_X86_NPT); }

TEST_MAIN(T(same_page_ept), T(same_page_npt), T(diff_pages_interleaved_ept), T(diff_pages_interleaved_npt),
          T(diff_pages_disjoint_ept), T(diff_pages_disjoint_npt), T(diff_pages_overlapping_ept),
          T(diff_pages_overlapping_npt), T(faults_translate_read_ept), T(faults_translate_read_npt),
          T(faults_vs_map_unmap_ept), T(faults_vs_map_unmap_npt), T(faults_vs_unmap_same_ept),
          T(faults_vs_unmap_same_npt))
