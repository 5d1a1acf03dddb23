/*
 * Shared helpers of the semantics tests (test_create/map/unmap/fault/copy/api).
 * Header-only (static inline) so each test executable stays one source file.
 */
#ifndef AXALLOC_SEM_H
#define AXALLOC_SEM_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "axalloc.h"
#include "check.h"
#include "host.h"

#define PAGE 4096ull
#define KIB (1ull << 10)
#define MIB (1ull << 20)
#define GIB (1ull << 30)
#define GPA_LIMIT (1ull << 48)
#define HPA_LIMIT (1ull << 52)

#define N_ELEMS(a) (sizeof(a) / sizeof((a)[0]))

/* The x86 formats (tests that read x86 entry bits). */
#define FOR_EACH_FORMAT(fmt) for (uint32_t fmt = AXALLOC_FORMAT_X86_EPT; fmt <= AXALLOC_FORMAT_RISCV_SV57X4; fmt++)
/* Every format, each at its default gpa_bits. */
#define FOR_ALL_FORMATS(fmt) for (uint32_t fmt = AXALLOC_FORMAT_X86_EPT; fmt <= AXALLOC_FORMAT_RISCV_SV57X4; fmt++)

static inline bool is_riscv_fmt(uint32_t fmt) {
  return fmt == AXALLOC_FORMAT_RISCV_SV39X4 || fmt == AXALLOC_FORMAT_RISCV_SV48X4 ||
         fmt == AXALLOC_FORMAT_RISCV_SV57X4;
}

/* The default shape of each format (gpa_bits 0): root frames, lookup
 * levels, guest-physical limit, host-physical limit, the empty entry. */
static inline uint64_t fmt_root_pages(uint32_t fmt) {
  return fmt == AXALLOC_FORMAT_ARM_S2 ? 2 : is_riscv_fmt(fmt) ? 4 : 1;
}
static inline int fmt_levels(uint32_t fmt) {
  switch (fmt) {
    case AXALLOC_FORMAT_ARM_S2:
    case AXALLOC_FORMAT_RISCV_SV39X4: return 3;
    case AXALLOC_FORMAT_RISCV_SV57X4: return 5;
    default: return 4;
  }
}
static inline uint64_t fmt_gpa_limit(uint32_t fmt) {
  switch (fmt) {
    case AXALLOC_FORMAT_ARM_S2: return 1ull << 40;
    case AXALLOC_FORMAT_RISCV_SV39X4: return 1ull << 41;
    case AXALLOC_FORMAT_RISCV_SV48X4: return 1ull << 50;
    case AXALLOC_FORMAT_RISCV_SV57X4: return 1ull << 59;
    default: return GPA_LIMIT;
  }
}
static inline uint64_t fmt_hpa_limit(uint32_t fmt) { return fmt == AXALLOC_FORMAT_ARM_S2 ? 1ull << 48 : HPA_LIMIT; }
static inline uint64_t fmt_empty(uint32_t fmt) { return fmt == AXALLOC_FORMAT_X86_EPT ? 1ull << 63 : 0; }
static inline bool is_x86_fmt(uint32_t fmt) {
  return fmt == AXALLOC_FORMAT_X86_EPT || fmt == AXALLOC_FORMAT_X86_NPT;
}

static inline const char *fmt_name(uint32_t fmt) {
  switch (fmt) {
    case AXALLOC_FORMAT_X86_EPT: return "EPT";
    case AXALLOC_FORMAT_X86_NPT: return "NPT";
    case AXALLOC_FORMAT_ARM_S2: return "ARM_S2";
    case AXALLOC_FORMAT_RISCV_SV39X4: return "SV39X4";
    case AXALLOC_FORMAT_RISCV_SV48X4: return "SV48X4";
    case AXALLOC_FORMAT_RISCV_SV57X4: return "SV57X4";
    default: return "?";
  }
}

/* Accessed + dirty bits of a leaf, as hardware sets them. EPT: bits 8, 9
 * (SDM 29.3.5); NPT: bits 5, 6 (x86-64 A and D). */
static inline uint64_t ad_bits(uint32_t fmt) {
  return fmt == AXALLOC_FORMAT_X86_EPT ? (3ull << 8) : (3ull << 5);
}

/* The guest rights a present leaf grants, from the manuals:
 * - EPT (SDM vol. 3C, 29.3.2, tables 29-2..29-6): bit 0 read, 1 write,
 *   2 execute;
 * - NPT (APM vol. 2, 5.3 / 15.25.5): present = read, bit 1 R/W, bit 63 NX;
 * - Arm stage 2 (Arm ARM D8.4, stage 2 data access permissions): S2AP[0]
 *   (bit 6) read, S2AP[1] (bit 7) write; XN[1] (bit 54) = 1 never executes;
 * - RISC-V (privileged spec, "Sv39 Implementation"; G-stage the same): bits
 *   1 R, 2 W, 3 X; a writable leaf must also have D (bit 7) set, or a CPU
 *   without hardware A/D updating faults on every write. */
static inline uint32_t leaf_rights_of(uint32_t fmt, uint64_t raw) {
  uint32_t r = 0;
  switch (fmt) {
    case AXALLOC_FORMAT_X86_EPT:
      if (raw & 1) r |= AXALLOC_READ;
      if (raw & 2) r |= AXALLOC_WRITE;
      if (raw & 4) r |= AXALLOC_EXEC;
      break;
    case AXALLOC_FORMAT_X86_NPT:
      if (raw & 1) r |= AXALLOC_READ;
      if (raw & 2) r |= AXALLOC_WRITE;
      if (!(raw >> 63)) r |= AXALLOC_EXEC;
      break;
    case AXALLOC_FORMAT_ARM_S2:
      if (raw & (1ull << 6)) r |= AXALLOC_READ;
      if (raw & (1ull << 7)) r |= AXALLOC_WRITE;
      if (!(raw & (1ull << 54))) r |= AXALLOC_EXEC;
      break;
    default:
      if (raw & 2) r |= AXALLOC_READ;
      if (raw & 4) {
        r |= AXALLOC_WRITE;
        CHECK(raw & (1ull << 7)); /* D with W */
      }
      if (raw & 8) r |= AXALLOC_EXEC;
      break;
  }
  return r;
}

/* Everything observable about an address space and its pool that "nothing
 * changed" must keep equal. */
typedef struct snap {
  axalloc_stats_t s;
  size_t in_use;
  size_t flushes;
} snap_t;

static inline snap_t snap_of(const th_fx_t *f) {
  snap_t n;
  memset(&n, 0, sizeof n);
  CHECK_STATUS(axalloc_as_stats(f->as, &n.s), AXALLOC_OK);
  n.in_use = th_in_use(f->pool);
  n.flushes = th_flushes(f->pool);
  return n;
}

/* Reports (with the caller's line and an iteration number) every counter
 * that differs. */
#define CHECK_SNAP_EQ(a, b, iter) check_snap_eq_((a), (b), (long)(iter), __FILE__, __LINE__)
static inline void check_snap_eq_(snap_t a, snap_t b, long iter, const char *file, int line) {
#define SNAP_FIELD(expr, name)                                                                  \
  if ((a).expr != (b).expr) {                                                                 \
    fprintf(stderr, "%s:%d: [n=%ld] %s changed: %llu -> %llu\n", file, line, iter, name,       \
            (unsigned long long)(a).expr, (unsigned long long)(b).expr);                       \
    check_failures++;                                                                         \
  }
  SNAP_FIELD(s.regions, "stats.regions")
  SNAP_FIELD(s.mapped_bytes, "stats.mapped_bytes")
  SNAP_FIELD(s.guest_frames, "stats.guest_frames")
  SNAP_FIELD(s.table_frames, "stats.table_frames")
  SNAP_FIELD(s.faults, "stats.faults")
  SNAP_FIELD(in_use, "pool frames in use")
  SNAP_FIELD(flushes, "flush_tlb calls")
#undef SNAP_FIELD
}

/* True if the 4 KiB host frame at hpa (a pool frame) reads as all zero. */
static inline bool frame_is_zero(th_pool_t *p, uint64_t hpa) {
  const unsigned char *m = th_virt(p, hpa & ~(PAGE - 1));
  if (!m) return false;
  for (size_t i = 0; i < PAGE; i++)
    if (m[i]) return false;
  return true;
}

/* translate that returns the HPA (or ~0 on error) and the page size. */
static inline uint64_t xlate(const th_fx_t *f, uint64_t gpa, uint64_t *ps) {
  uint64_t hpa = ~0ull, size = 0;
  if (axalloc_translate(f->as, gpa, &hpa, &size) != AXALLOC_OK) {
    hpa = ~0ull;
    size = 0;
  }
  if (ps) *ps = size;
  return hpa;
}

/* Every page of [gpa, gpa + size) is / is not present. */
#define CHECK_ALL_MAPPED(f, gpa, size) check_range_((f), (gpa), (size), true, __FILE__, __LINE__)
#define CHECK_NONE_MAPPED(f, gpa, size) check_range_((f), (gpa), (size), false, __FILE__, __LINE__)
static inline void check_range_(const th_fx_t *f, uint64_t gpa, uint64_t size, bool want, const char *file,
                                int line) {
  for (uint64_t a = gpa; a < gpa + size; a += PAGE) {
    axalloc_status_t st = axalloc_translate(f->as, a, NULL, NULL);
    if ((st == AXALLOC_OK) != want) {
      fprintf(stderr, "%s:%d: translate(%#llx) = %s, want %s\n", file, line, (unsigned long long)a,
              axalloc_status_str(st), want ? "AXALLOC_OK" : "AXALLOC_ERR_NOT_MAPPED");
      check_failures++;
      return;
    }
  }
}

/*
 * A fixture whose phys_to_virt also serves a second, separate host memory
 * range ("device"/shared memory for linear regions) that the pool never hands
 * out, so read/write through linear regions can be checked byte by byte. The
 * other hooks forward to the pool's (th_hooks), so all pool checks still hold.
 */
typedef struct xhost {
  axalloc_hooks_t in;
  unsigned char *mem;
  uint64_t base;
  size_t size;
} xhost_t;

static inline int32_t xh_alloc(void *c, uint64_t *o) {
  xhost_t *x = c;
  return x->in.alloc_frame(x->in.ctx, o);
}
static inline void xh_free(void *c, uint64_t hpa) {
  xhost_t *x = c;
  x->in.free_frame(x->in.ctx, hpa);
}
static inline void *xh_p2v(void *c, uint64_t hpa) {
  xhost_t *x = c;
  if (hpa >= x->base && hpa - x->base < x->size) return x->mem + (hpa - x->base);
  return x->in.phys_to_virt(x->in.ctx, hpa);
}
static inline void xh_flush(void *c, uint64_t gpa, uint64_t size) {
  xhost_t *x = c;
  x->in.flush_tlb(x->in.ctx, gpa, size);
}
static inline int32_t xh_alloc_contig(void *c, uint32_t order, uint64_t *o) {
  xhost_t *x = c;
  return x->in.alloc_contig(x->in.ctx, order, o);
}
static inline void xh_free_contig(void *c, uint64_t hpa, uint32_t order) {
  xhost_t *x = c;
  x->in.free_contig(x->in.ctx, hpa, order);
}

/* Creates pool + address space; the extra memory is [xbase, xbase + xsize),
 * filled with `fill`. */
static inline th_fx_t xfx_new(xhost_t *x, uint32_t format, uint32_t cfg_flags, uint64_t base, uint64_t size,
                              size_t frames, uint64_t xbase, size_t xsize, unsigned char fill) {
  th_fx_t f;
  memset(&f, 0, sizeof f);
  f.format = format;
  f.pool = th_pool_new(frames, 0x40000000ull, false);
  x->in = th_hooks(f.pool);
  x->mem = aligned_alloc(PAGE, xsize);
  if (!x->mem) abort();
  memset(x->mem, fill, xsize);
  x->base = xbase;
  x->size = xsize;
  axalloc_hooks_t h;
  memset(&h, 0, sizeof h);
  h.struct_size = sizeof h;
  h.ctx = x;
  h.alloc_frame = xh_alloc;
  h.free_frame = xh_free;
  h.phys_to_virt = xh_p2v;
  h.flush_tlb = xh_flush;
  h.alloc_contig = xh_alloc_contig;
  h.free_contig = xh_free_contig;
  axalloc_config_t cfg = {
      .struct_size = sizeof cfg, .format = format, .flags = cfg_flags, .base = base, .size = size};
  if (axalloc_as_create(&cfg, &h, &f.as) != AXALLOC_OK) {
    fprintf(stderr, "xfx_new: create failed\n");
    abort();
  }
  th_attach(f.pool, f.as, format);
  return f;
}

/*
 * th_fx_done with the pool's reachability walk switched off for the destroy
 * itself: axalloc_as_destroy flushes the whole window first and then frees
 * frames that the (dead) table still links, which the header allows ("only
 * after the flush_tlb call that covered its removal"); the walk would read
 * freed (poisoned) tables. The flush-count check ("freed without a flush since
 * it was last reachable"), leaks and double frees are still checked.
 */
static inline int fx_done(th_fx_t *f) {
  th_check_reachability(f->pool, false);
  return th_fx_done(f);
}

static inline int xfx_done(th_fx_t *f, xhost_t *x) {
  int r = fx_done(f);
  free(x->mem);
  x->mem = NULL;
  return r;
}

#endif
