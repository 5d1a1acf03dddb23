/* The C test host: see host.h. */
#define _POSIX_C_SOURCE 200809L
#include "host.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ADDR_MASK 0x000ffffffffff000ull

struct th_pool {
  pthread_mutex_t lock;
  unsigned char *mem;
  size_t frames;
  uint64_t base;
  bool zeroed;
  unsigned char *used;  /* 1 = handed out */
  long *exposed;        /* flush count when last seen reachable, -1 never */
  size_t *free_stack;
  size_t free_top;
  long budget;          /* < 0: unlimited */
  size_t allocs, frees, failed, flushes, errors;
  th_flush_t last_flush;
  char first_error[256];
  axalloc_as_t *as;
  uint32_t format;
  int top;               /* root level (levels - 1), from axalloc_as_hw */
  uint32_t root_pages;   /* frames in the root */
  bool destroyed;
  bool check_reach;
  /* Contiguous blocks alloc_contig handed out: order + 1 at a block's first
   * frame, BLK_INNER at its others, 0 elsewhere. A block frame never goes
   * to free_frame; free_contig takes exactly a live block, whole, once. */
  unsigned char *blk;
  bool contig_fails;     /* alloc_contig fails, alloc_frame goes on */
  size_t contig_frees;   /* free_contig calls */
};

#define BLK_INNER 0xff

static void error(th_pool_t *p, const char *fmt, unsigned long long v) {
  if (p->errors++ == 0)
    snprintf(p->first_error, sizeof p->first_error, fmt, v);
  fprintf(stderr, "test host: ");
  fprintf(stderr, fmt, v);
  fprintf(stderr, "\n");
}

th_pool_t *th_pool_new(size_t frames, uint64_t base, bool zeroed) {
  th_pool_t *p = calloc(1, sizeof *p);
  if (!p) abort();
  pthread_mutex_init(&p->lock, NULL);
  p->mem = aligned_alloc(TH_FRAME, frames * TH_FRAME);
  p->used = calloc(frames, 1);
  p->exposed = calloc(frames, sizeof *p->exposed);
  p->free_stack = calloc(frames, sizeof *p->free_stack);
  p->blk = calloc(frames, 1);
  if (!p->mem || !p->used || !p->exposed || !p->free_stack || !p->blk) abort();
  p->frames = frames;
  p->base = base;
  p->zeroed = zeroed;
  p->budget = -1;
  p->check_reach = true;
  memset(p->mem, zeroed ? 0 : 0xA5, frames * TH_FRAME);
  /* LIFO stack, lowest address on top: reuse shows quickly. */
  for (size_t i = 0; i < frames; i++) {
    p->free_stack[i] = frames - 1 - i;
    p->exposed[i] = -1;
  }
  p->free_top = frames;
  return p;
}

void th_pool_free(th_pool_t *p) {
  if (!p) return;
  free(p->mem);
  free(p->used);
  free(p->exposed);
  free(p->free_stack);
  free(p->blk);
  pthread_mutex_destroy(&p->lock);
  free(p);
}

bool th_owns(const th_pool_t *p, uint64_t hpa) {
  return hpa >= p->base && hpa - p->base < p->frames * TH_FRAME;
}

void *th_virt(th_pool_t *p, uint64_t hpa) {
  if (!th_owns(p, hpa)) return NULL;
  return p->mem + (hpa - p->base);
}

/* Entry decoding per format, from the manuals (the library's own encoder
 * is not used): EPT present = R|W|X, huge = bit 7; NPT present = bit 0, huge =
 * PS (bit 7); Arm stage 2 valid = bit 0, block = bits 1:0 == 0b01, address
 * bits 47:12; RISC-V valid = V (bit 0), leaf = R|W|X (bits 3:1), PPN bits
 * 53:10. */
static bool is_riscv(uint32_t format) {
  return format == AXALLOC_FORMAT_RISCV_SV39X4 || format == AXALLOC_FORMAT_RISCV_SV48X4 ||
         format == AXALLOC_FORMAT_RISCV_SV57X4;
}

bool th_present(uint32_t format, uint64_t raw) {
  return format == AXALLOC_FORMAT_X86_EPT ? (raw & 7) != 0 : (raw & 1) != 0;
}

bool th_huge(uint32_t format, uint64_t raw) {
  if (format == AXALLOC_FORMAT_ARM_S2) return (raw & 3) == 1;
  if (is_riscv(format)) return (raw & 0xe) != 0;
  return (raw & (1u << 7)) != 0;
}

uint64_t th_addr(uint32_t format, uint64_t raw) {
  if (format == AXALLOC_FORMAT_ARM_S2) return raw & 0x0000fffffffff000ull;
  if (is_riscv(format)) return ((raw >> 10) & ((1ull << 44) - 1)) << 12;
  return raw & ADDR_MASK;
}

static bool present(const th_pool_t *p, uint64_t raw) { return th_present(p->format, raw); }
static bool huge(const th_pool_t *p, uint64_t raw) { return th_huge(p->format, raw); }
static uint64_t addr_of(const th_pool_t *p, uint64_t raw) { return th_addr(p->format, raw); }
static size_t entries(const th_pool_t *p, int level) { return level == p->top ? 512u * p->root_pages : 512u; }
static size_t index_of(const th_pool_t *p, uint64_t gpa, int level) {
  return (gpa >> (12 + 9 * level)) & (entries(p, level) - 1);
}

static uint64_t load(const uint64_t *e) { return __atomic_load_n(e, __ATOMIC_ACQUIRE); }

/* Calls visit(p, hpa, bytes, is_table) for every frame the table reaches. */
static void walk(th_pool_t *p, uint64_t table, int level,
                 void (*visit)(th_pool_t *, uint64_t, uint64_t, bool, void *), void *arg) {
  const uint64_t *t = th_virt(p, table);
  if (!t) {
    error(p, "table at %#llx is not a pool frame", (unsigned long long)table);
    return;
  }
  visit(p, table, TH_FRAME * (level == p->top ? p->root_pages : 1), true, arg);
  for (size_t i = 0; i < entries(p, level); i++) {
    uint64_t raw = load(&t[i]);
    if (!present(p, raw)) continue;
    uint64_t addr = addr_of(p, raw);
    bool leaf = level == 0 || huge(p, raw);
    if (leaf)
      visit(p, addr, 1ull << (12 + 9 * level), false, arg);
    else
      walk(p, addr, level - 1, visit, arg);
  }
}

static void mark(th_pool_t *p, uint64_t hpa, uint64_t bytes, bool is_table, void *arg) {
  (void)is_table;
  (void)arg;
  for (uint64_t off = 0; off < bytes; off += TH_FRAME)
    if (th_owns(p, hpa + off)) p->exposed[(hpa + off - p->base) / TH_FRAME] = (long)p->flushes;
}

struct find { uint64_t hpa; bool found; };
static void find(th_pool_t *p, uint64_t hpa, uint64_t bytes, bool is_table, void *arg) {
  (void)p;
  (void)is_table;
  struct find *f = arg;
  if (f->hpa >= hpa && f->hpa - hpa < bytes) f->found = true;
}

static void scan_locked(th_pool_t *p) {
  if (p->as && !p->destroyed) walk(p, axalloc_as_root(p->as), p->top, mark, NULL);
}

void th_scan(th_pool_t *p) {
  pthread_mutex_lock(&p->lock);
  scan_locked(p);
  pthread_mutex_unlock(&p->lock);
}

static int32_t hook_alloc(void *ctx, uint64_t *out) {
  th_pool_t *p = ctx;
  pthread_mutex_lock(&p->lock);
  int32_t rc = -1;
  if (p->destroyed) error(p, "alloc_frame called after destroy (%llu)", 0);
  if (p->budget == 0) {
    p->failed++;
  } else if (p->free_top == 0) {
    p->failed++;
  } else {
    if (p->budget > 0) p->budget--;
    size_t i = p->free_stack[--p->free_top];
    p->used[i] = 1;
    p->exposed[i] = -1;
    if (!p->zeroed) memset(p->mem + i * TH_FRAME, 0xA5, TH_FRAME);
    p->allocs++;
    *out = p->base + i * TH_FRAME;
    rc = 0;
  }
  pthread_mutex_unlock(&p->lock);
  return rc;
}

static void free_one(th_pool_t *p, uint64_t hpa, bool from_contig);

static void hook_free(void *ctx, uint64_t hpa) { free_one(ctx, hpa, false); }

/* free_frame, or one frame of a free_contig (checked the same way). */
static void free_one(th_pool_t *p, uint64_t hpa, bool from_contig) {
  pthread_mutex_lock(&p->lock);
  p->frees++;
  if (!from_contig && th_owns(p, hpa) && p->blk[(hpa - p->base) / TH_FRAME])
    error(p, "free_frame of %#llx, a frame of a contiguous block", (unsigned long long)hpa);
  if (p->destroyed) error(p, "free_frame called after destroy (%#llx)", (unsigned long long)hpa);
  if (!th_owns(p, hpa) || hpa % TH_FRAME) {
    error(p, "free_frame of a frame the pool never handed out: %#llx", (unsigned long long)hpa);
    goto out;
  }
  size_t i = (hpa - p->base) / TH_FRAME;
  if (!p->used[i]) {
    error(p, "double free of %#llx", (unsigned long long)hpa);
    goto out;
  }
  if (p->exposed[i] >= 0 && p->exposed[i] == (long)p->flushes)
    error(p, "frame %#llx freed without a flush since it was last reachable", (unsigned long long)hpa);
  if (p->check_reach && p->as && !p->destroyed) {
    struct find f = {hpa, false};
    walk(p, axalloc_as_root(p->as), p->top, find, &f);
    if (f.found && hpa != axalloc_as_root(p->as))
      error(p, "frame %#llx freed while the table still reaches it", (unsigned long long)hpa);
  }
  p->used[i] = 0;
  memset(p->mem + i * TH_FRAME, 0xDD, TH_FRAME); /* poison: use-after-free shows */
  p->free_stack[p->free_top++] = i;
out:
  pthread_mutex_unlock(&p->lock);
}

/* 2^order free frames aligned to their size (host-physically: the pool's
 * base is 1 GiB aligned), lowest first; counted as 2^order allocations. */
static int32_t hook_alloc_contig(void *ctx, uint32_t order, uint64_t *out) {
  th_pool_t *p = ctx;
  pthread_mutex_lock(&p->lock);
  int32_t rc = -1;
  size_t n = (size_t)1 << order;
  if (p->destroyed) error(p, "alloc_contig called after destroy (%llu)", 0);
  bool known = order <= 4 || order == 9;
  if (!known) error(p, "alloc_contig order %llu (the library needs 1..4 and 9)", order);
  if (p->budget == 0 || !known || p->contig_fails) {
    p->failed++;
    goto out;
  }
  for (size_t first = 0; first + n <= p->frames; first += n) {
    size_t i = first;
    while (i < first + n && !p->used[i]) i++;
    if (i < first + n) continue;
    if (p->budget > 0) p->budget--;
    for (i = first; i < first + n; i++) {
      p->used[i] = 1;
      p->blk[i] = i == first ? (unsigned char)(order + 1) : BLK_INNER;
      p->exposed[i] = -1;
      if (!p->zeroed) memset(p->mem + i * TH_FRAME, 0xA5, TH_FRAME);
    }
    /* take them off the free stack, keeping its order */
    size_t k = 0;
    for (size_t j = 0; j < p->free_top; j++)
      if (p->free_stack[j] < first || p->free_stack[j] >= first + n) p->free_stack[k++] = p->free_stack[j];
    p->free_top = k;
    p->allocs += n;
    *out = p->base + first * TH_FRAME;
    rc = 0;
    goto out;
  }
  p->failed++;
out:
  pthread_mutex_unlock(&p->lock);
  return rc;
}

static void hook_free_contig(void *ctx, uint64_t hpa, uint32_t order) {
  th_pool_t *p = ctx;
  pthread_mutex_lock(&p->lock);
  p->contig_frees++;
  size_t first = (hpa - p->base) / TH_FRAME;
  bool whole = order < 32 && th_owns(p, hpa) && hpa % (TH_FRAME << order) == 0 &&
               first + ((size_t)1 << order) <= p->frames && p->blk[first] == order + 1;
  if (!whole) {
    error(p, "free_contig of a block alloc_contig never gave whole with that order (or twice): %#llx",
          (unsigned long long)hpa);
    pthread_mutex_unlock(&p->lock);
    return;
  }
  for (size_t i = first; i < first + ((size_t)1 << order); i++) p->blk[i] = 0;
  pthread_mutex_unlock(&p->lock);
  /* frame by frame, with every check free_frame makes (the root is exempt
   * from the reachability check, as in hook_free) */
  for (uint64_t i = 0; i < (1ull << order); i++) free_one(p, hpa + i * TH_FRAME, true);
}

void th_contig_fails(th_pool_t *p, bool fails) {
  pthread_mutex_lock(&p->lock);
  p->contig_fails = fails;
  pthread_mutex_unlock(&p->lock);
}

size_t th_contig_frees(const th_pool_t *p) { return p->contig_frees; }

size_t th_blocks(th_pool_t *p, uint32_t order) {
  pthread_mutex_lock(&p->lock);
  size_t n = 0;
  for (size_t i = 0; i < p->frames; i++) n += p->blk[i] == order + 1;
  pthread_mutex_unlock(&p->lock);
  return n;
}

static void *hook_p2v(void *ctx, uint64_t hpa) {
  th_pool_t *p = ctx;
  if (__atomic_load_n(&p->destroyed, __ATOMIC_RELAXED)) {
    pthread_mutex_lock(&p->lock);
    error(p, "phys_to_virt called after destroy (%#llx)", (unsigned long long)hpa);
    pthread_mutex_unlock(&p->lock);
  }
  return th_virt(p, hpa);
}

static void hook_flush(void *ctx, uint64_t gpa, uint64_t size) {
  th_pool_t *p = ctx;
  pthread_mutex_lock(&p->lock);
  if (p->destroyed) error(p, "flush_tlb called after destroy (%#llx)", (unsigned long long)gpa);
  if (size == 0) error(p, "flush_tlb called with size 0 at %#llx", (unsigned long long)gpa);
  /* Whatever is reachable up to this flush was exposed before it; frames
   * still reachable after it are caught by the reachability check at free. */
  scan_locked(p);
  p->flushes++;
  p->last_flush = (th_flush_t){gpa, size};
  pthread_mutex_unlock(&p->lock);
}

/* The test threads outnumber the CPUs (2 here): a waiter that spins while
 * the lock holder is descheduled burns its time slice. Yield instead, as a
 * hosted VMM's relax hook should. */
static void hook_relax(void *ctx) {
  (void)ctx;
  sched_yield();
}

axalloc_hooks_t th_hooks(th_pool_t *p) {
  axalloc_hooks_t h = {0};
  h.struct_size = sizeof h;
  h.ctx = p;
  h.alloc_frame = hook_alloc;
  h.free_frame = hook_free;
  h.phys_to_virt = hook_p2v;
  h.flush_tlb = hook_flush;
  h.alloc_contig = hook_alloc_contig;
  h.free_contig = hook_free_contig;
  h.relax = hook_relax;
  return h;
}

void th_attach(th_pool_t *p, axalloc_as_t *as, uint32_t format) {
  pthread_mutex_lock(&p->lock);
  p->as = as;
  p->format = format;
  axalloc_hw_t hw = {0};
  if (axalloc_as_hw(as, &hw) != AXALLOC_OK || hw.levels < 2 || hw.levels > 5 || hw.root_pages < 1 ||
      hw.root_pages > 16)
    error(p, "axalloc_as_hw gave no usable shape (%u levels)", hw.levels);
  p->top = (int)hw.levels - 1;
  p->root_pages = hw.root_pages ? hw.root_pages : 1;
  p->destroyed = false;
  scan_locked(p);
  pthread_mutex_unlock(&p->lock);
}

axalloc_as_t *th_as_of(th_pool_t *p) { return p->as; }

void th_mark_destroyed(th_pool_t *p) {
  pthread_mutex_lock(&p->lock);
  p->destroyed = true;
  p->as = NULL;
  pthread_mutex_unlock(&p->lock);
}

void th_fail_after(th_pool_t *p, long n) {
  pthread_mutex_lock(&p->lock);
  p->budget = n;
  pthread_mutex_unlock(&p->lock);
}
void th_fail_never(th_pool_t *p) { th_fail_after(p, -1); }

void th_check_reachability(th_pool_t *p, bool on) { p->check_reach = on; }

size_t th_in_use(const th_pool_t *p) { return p->frames - p->free_top; }
size_t th_allocs(const th_pool_t *p) { return p->allocs; }
size_t th_frees(const th_pool_t *p) { return p->frees; }
size_t th_failed_allocs(const th_pool_t *p) { return p->failed; }
size_t th_flushes(const th_pool_t *p) { return p->flushes; }
th_flush_t th_last_flush(const th_pool_t *p) { return p->last_flush; }
size_t th_errors(const th_pool_t *p) { return p->errors; }
const char *th_first_error(const th_pool_t *p) { return p->first_error; }

bool th_entry(th_pool_t *p, uint64_t gpa, int level, uint64_t *raw_out) {
  if (!p->as) return false;
  uint64_t table = axalloc_as_root(p->as);
  for (int l = p->top; l >= 0; l--) {
    const uint64_t *t = th_virt(p, table);
    if (!t) return false;
    uint64_t raw = load(&t[index_of(p, gpa, l)]);
    if (l == level) {
      *raw_out = raw;
      return true;
    }
    if (!present(p, raw) || huge(p, raw)) return false;
    table = addr_of(p, raw);
  }
  return false;
}

/* The leaf entry mapping gpa on the walk from the root, or NULL. */
static uint64_t *leaf_entry(th_pool_t *p, uint64_t gpa) {
  if (!p->as) return NULL;
  uint64_t table = axalloc_as_root(p->as);
  for (int l = p->top; l >= 0; l--) {
    uint64_t *t = th_virt(p, table);
    if (!t) return NULL;
    uint64_t *e = &t[index_of(p, gpa, l)];
    uint64_t raw = load(e);
    if (!present(p, raw)) return NULL;
    if (l == 0 || huge(p, raw)) return e;
    table = addr_of(p, raw);
  }
  return NULL;
}

bool th_set_leaf_bits(th_pool_t *p, uint64_t gpa, uint64_t bits) {
  uint64_t *e = leaf_entry(p, gpa);
  if (e) __atomic_fetch_or(e, bits, __ATOMIC_SEQ_CST);
  return e != NULL;
}

th_fx_t th_fx_new(uint32_t format, uint32_t cfg_flags, uint64_t base, uint64_t size, size_t frames) {
  th_fx_t f = {0};
  f.format = format;
  f.pool = th_pool_new(frames, 0x40000000ull, (cfg_flags & AXALLOC_CFG_FRAMES_ZEROED) != 0);
  axalloc_config_t cfg = {
      .struct_size = sizeof cfg, .format = format, .flags = cfg_flags, .base = base, .size = size};
  axalloc_hooks_t h = th_hooks(f.pool);
  axalloc_status_t st = axalloc_as_create(&cfg, &h, &f.as);
  if (st != AXALLOC_OK) {
    fprintf(stderr, "th_fx_new: axalloc_as_create: %s\n", axalloc_status_str(st));
    abort();
  }
  th_attach(f.pool, f.as, format);
  return f;
}

int th_fx_done(th_fx_t *f) {
  int problems = 0;
  /* Destroy flushes the whole window first, then frees frames the dead
   * table still names: the flush-before-free check applies, the walk of the
   * (being freed) table does not. */
  th_check_reachability(f->pool, false);
  axalloc_as_destroy(f->as);
  th_mark_destroyed(f->pool);
  if (th_in_use(f->pool) != 0) {
    fprintf(stderr, "th_fx_done: %zu frames not given back\n", th_in_use(f->pool));
    problems++;
  }
  if (th_errors(f->pool) != 0) {
    fprintf(stderr, "th_fx_done: %zu hook-contract errors, first: %s\n", th_errors(f->pool),
            th_first_error(f->pool));
    problems++;
  }
  th_pool_free(f->pool);
  f->pool = NULL;
  f->as = NULL;
  return problems;
}

axalloc_stats_t th_stats(const th_fx_t *f) {
  axalloc_stats_t s;
  if (axalloc_as_stats(f->as, &s) != AXALLOC_OK) abort();
  return s;
}

bool th_clear_leaf_bits(th_pool_t *p, uint64_t gpa, uint64_t bits) {
  uint64_t *e = leaf_entry(p, gpa);
  if (e) __atomic_fetch_and(e, ~bits, __ATOMIC_SEQ_CST);
  return e != NULL;
}

/* ------------------------------------------------------------------------ */
/* Table listing. */

static void list_tables(th_pool_t *p, uint64_t table, int level, uint64_t gpa, th_table_t *out, size_t max,
                        size_t *n) {
  const uint64_t *t = th_virt(p, table);
  uint64_t entry = 1ull << (12 + 9 * level); /* bytes one entry translates */
  if (*n < max) out[*n] = (th_table_t){table, level, gpa, entries(p, level) * entry};
  (*n)++;
  if (!t || level == 0) return;
  for (size_t i = 0; i < entries(p, level); i++) {
    uint64_t raw = load(&t[i]);
    if (!present(p, raw) || huge(p, raw)) continue; /* not present, or a huge leaf */
    list_tables(p, addr_of(p, raw), level - 1, gpa + (uint64_t)i * entry, out, max, n);
  }
}

size_t th_list_tables(th_pool_t *p, th_table_t *out, size_t max) {
  size_t n = 0;
  pthread_mutex_lock(&p->lock);
  if (p->as && !p->destroyed) list_tables(p, axalloc_as_root(p->as), p->top, 0, out, max, &n);
  pthread_mutex_unlock(&p->lock);
  return n;
}

/* ------------------------------------------------------------------------ */
/* Hook taps. */

static int32_t tap_alloc(void *ctx, uint64_t *out) {
  th_tap_t *t = ctx;
  if (t->on_alloc) t->on_alloc(t);
  int32_t rc = t->inner.alloc_frame(t->inner.ctx, out);
  if (rc == 0 && t->on_alloced) {
    uint64_t fake = t->on_alloced(t, *out);
    if (fake != *out) {
      t->replaced_real = *out;
      t->replaced_fake = fake;
      *out = fake;
    }
  }
  return rc;
}

static void tap_free(void *ctx, uint64_t hpa) {
  th_tap_t *t = ctx;
  if (t->on_free) t->on_free(t, hpa);
  if (t->replaced_fake == hpa && t->replaced_real != hpa) {
    /* the library hands back the contract-breaking value it was given */
    hpa = t->replaced_real;
    t->replaced_fake = t->replaced_real = 0;
  }
  t->inner.free_frame(t->inner.ctx, hpa);
}

static void *tap_p2v(void *ctx, uint64_t hpa) {
  th_tap_t *t = ctx;
  void *v = t->inner.phys_to_virt(t->inner.ctx, hpa);
  return t->on_p2v ? t->on_p2v(t, hpa, v) : v;
}

static void tap_flush(void *ctx, uint64_t gpa, uint64_t size) {
  th_tap_t *t = ctx;
  if (t->on_flush) t->on_flush(t, gpa, size);
  t->inner.flush_tlb(t->inner.ctx, gpa, size);
}

static int32_t tap_alloc_contig(void *ctx, uint32_t order, uint64_t *out) {
  th_tap_t *t = ctx;
  return t->inner.alloc_contig(t->inner.ctx, order, out);
}

static void tap_free_contig(void *ctx, uint64_t hpa, uint32_t order) {
  th_tap_t *t = ctx;
  t->inner.free_contig(t->inner.ctx, hpa, order);
}

axalloc_hooks_t th_tap_hooks(th_tap_t *tap) {
  axalloc_hooks_t h = {0};
  h.struct_size = sizeof h;
  h.ctx = tap;
  h.alloc_frame = tap_alloc;
  h.free_frame = tap_free;
  h.phys_to_virt = tap_p2v;
  h.flush_tlb = tap_flush;
  /* multi-page roots come straight from the pool (not tapped) */
  h.alloc_contig = tap->inner.alloc_contig ? tap_alloc_contig : NULL;
  h.free_contig = tap->inner.alloc_contig ? tap_free_contig : NULL;
  h.relax = hook_relax;
  return h;
}

th_fx_t th_fx_new_tapped(th_tap_t *tap, uint32_t format, uint32_t cfg_flags, uint64_t base, uint64_t size,
                         size_t frames) {
  th_fx_t f = {0};
  f.format = format;
  f.pool = th_pool_new(frames, 0x40000000ull, (cfg_flags & AXALLOC_CFG_FRAMES_ZEROED) != 0);
  tap->inner = th_hooks(f.pool);
  axalloc_hooks_t h = th_tap_hooks(tap);
  axalloc_config_t cfg = {
      .struct_size = sizeof cfg, .format = format, .flags = cfg_flags, .base = base, .size = size};
  axalloc_status_t st = axalloc_as_create(&cfg, &h, &f.as);
  if (st != AXALLOC_OK) {
    fprintf(stderr, "th_fx_new_tapped: axalloc_as_create: %s\n", axalloc_status_str(st));
    abort();
  }
  th_attach(f.pool, f.as, format);
  return f;
}

/* ------------------------------------------------------------------------ */
/* Side jobs. */

enum { SIDE_IDLE, SIDE_TRIGGERED, SIDE_DONE, SIDE_CANCELLED };

struct th_side {
  pthread_mutex_t m;
  pthread_cond_t c; /* on CLOCK_MONOTONIC */
  pthread_t th;
  void (*fn)(void *);
  void *arg;
  int state;
};

static void *side_main(void *arg) {
  th_side_t *s = arg;
  pthread_mutex_lock(&s->m);
  while (s->state == SIDE_IDLE) pthread_cond_wait(&s->c, &s->m);
  bool run = s->state == SIDE_TRIGGERED;
  pthread_mutex_unlock(&s->m);
  if (!run) return NULL;
  s->fn(s->arg);
  pthread_mutex_lock(&s->m);
  s->state = SIDE_DONE;
  pthread_cond_broadcast(&s->c);
  pthread_mutex_unlock(&s->m);
  return NULL;
}

th_side_t *th_side_new(void (*fn)(void *arg), void *arg) {
  th_side_t *s = calloc(1, sizeof *s);
  if (!s) abort();
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_mutex_init(&s->m, NULL);
  pthread_cond_init(&s->c, &ca);
  pthread_condattr_destroy(&ca);
  s->fn = fn;
  s->arg = arg;
  s->state = SIDE_IDLE;
  if (pthread_create(&s->th, NULL, side_main, s) != 0) abort();
  return s;
}

/* Waits (s->m held) until fn has returned or timeout_s seconds passed. */
static bool side_wait_done(th_side_t *s, unsigned timeout_s) {
  struct timespec dl;
  clock_gettime(CLOCK_MONOTONIC, &dl);
  dl.tv_sec += (time_t)timeout_s;
  while (s->state != SIDE_DONE)
    if (pthread_cond_timedwait(&s->c, &s->m, &dl) == ETIMEDOUT) break;
  return s->state == SIDE_DONE;
}

bool th_side_run(th_side_t *s, unsigned timeout_s) {
  pthread_mutex_lock(&s->m);
  if (s->state == SIDE_IDLE) {
    s->state = SIDE_TRIGGERED;
    pthread_cond_broadcast(&s->c);
  }
  bool done = side_wait_done(s, timeout_s);
  pthread_mutex_unlock(&s->m);
  return done;
}

bool th_side_triggered(th_side_t *s) {
  pthread_mutex_lock(&s->m);
  bool t = s->state == SIDE_TRIGGERED || s->state == SIDE_DONE;
  pthread_mutex_unlock(&s->m);
  return t;
}

bool th_side_end(th_side_t *s, unsigned timeout_s) {
  pthread_mutex_lock(&s->m);
  bool done = false;
  if (s->state == SIDE_IDLE) {
    s->state = SIDE_CANCELLED;
    pthread_cond_broadcast(&s->c);
  } else if (!(done = side_wait_done(s, timeout_s))) {
    fprintf(stderr, "th_side_end: the side job is still blocked in the library after %u s; giving up\n", timeout_s);
    fflush(NULL);
    _Exit(1);
  }
  pthread_mutex_unlock(&s->m);
  pthread_join(s->th, NULL);
  pthread_cond_destroy(&s->c);
  pthread_mutex_destroy(&s->m);
  free(s);
  return done;
}
