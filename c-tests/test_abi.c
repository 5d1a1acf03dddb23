/*
 * The revised C API (issue 9): disjoint value spaces, extensible structs,
 * errors that name the culprit (ERR_HOOK, ERR_LIMIT), and looking inside
 * (axalloc_query, axalloc_region_next).
 */
#include <stddef.h>
#include <sys/mman.h>
#include <unistd.h>

#include "sem.h"

#define RW (AXALLOC_READ | AXALLOC_WRITE)
#define SENTINEL ((axalloc_as_t *)(uintptr_t)0x5eed5eedu)

static axalloc_config_t cfg_of(uint32_t format, uint32_t flags, uint64_t size) {
  axalloc_config_t c = {.struct_size = sizeof c, .format = format, .flags = flags, .size = size};
  return c;
}

/* Creates with (cfg, hooks) over a fresh pool and expects `want`; on error
 * *as_out untouched and no frame held; on success destroys cleanly. */
static void expect_create_(const char *what, const void *cfg, const void *hooks, th_pool_t *p,
                           axalloc_status_t want, const char *file, int line) {
  axalloc_as_t *as = SENTINEL;
  axalloc_status_t st = axalloc_as_create(cfg, hooks, &as);
  if (st != want) {
    fprintf(stderr, "%s:%d: %s: create = %s, want %s\n", file, line, what, axalloc_status_str(st),
            axalloc_status_str(want));
    check_failures++;
  }
  if (st == AXALLOC_OK) {
    th_check_reachability(p, false);
    axalloc_as_destroy(as);
  } else if (as != SENTINEL) {
    fprintf(stderr, "%s:%d: %s: *as_out changed on error\n", file, line, what);
    check_failures++;
  }
  if (th_in_use(p) != 0) {
    fprintf(stderr, "%s:%d: %s: %zu frames held\n", file, line, what, th_in_use(p));
    check_failures++;
  }
}
#define EXPECT_CREATE(what, cfg, hooks, p, want) expect_create_((what), (cfg), (hooks), (p), (want), __FILE__, __LINE__)

/* ---------------------------------------------------------------------- */
/* Disjoint value spaces. */

/* The mistake: cfg.flags = AXALLOC_READ | AXALLOC_WRITE used to mean
 * FRAMES_ZEROED | NO_HUGE_1G. Every map flag is now INVALID as a config flag. */
static void values_map_flags_as_config_flags_are_invalid(void) {
  uint32_t bad[] = {AXALLOC_READ, AXALLOC_WRITE, AXALLOC_EXEC, AXALLOC_DEVICE, RW, 1u << 4, 1u << 7,
                    AXALLOC_READ | AXALLOC_CFG_NO_HUGE_1G};
  FOR_EACH_FORMAT(fmt) {
    th_pool_t *p = th_pool_new(16, 0x40000000ull, false);
    axalloc_hooks_t h = th_hooks(p);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
      axalloc_config_t c = cfg_of(fmt, bad[i], GIB);
      EXPECT_CREATE("map flag as config flag", &c, &h, p, AXALLOC_ERR_INVALID);
    }
    axalloc_config_t ok = cfg_of(fmt, AXALLOC_CFG_NO_HUGE_1G, GIB);
    EXPECT_CREATE("config flag", &ok, &h, p, AXALLOC_OK);
    CHECK_EQ_U64(th_errors(p), 0);
    th_pool_free(p);
  }
}

/* ... and every config flag is INVALID as a map, protect or access flag. */
static void values_config_flags_as_map_flags_are_invalid(void) {
  uint32_t cfgs[] = {AXALLOC_CFG_FRAMES_ZEROED, AXALLOC_CFG_NO_HUGE_1G, AXALLOC_CFG_RISCV_SVPBMT,
                     AXALLOC_CFG_HW_AD,         AXALLOC_CFG_ARM_S2FWB,  AXALLOC_CFG_LINEAR_MAP};
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 4 * GIB, 256);
    CHECK_STATUS(axalloc_map_alloc(f.as, 0, PAGE, RW, false), AXALLOC_OK);
    snap_t s0 = snap_of(&f);
    for (size_t i = 0; i < sizeof cfgs / sizeof cfgs[0]; i++) {
      CHECK_STATUS(axalloc_map_alloc(f.as, GIB, PAGE, RW | cfgs[i], true), AXALLOC_ERR_INVALID);
      CHECK_STATUS(axalloc_map_alloc(f.as, GIB, PAGE, RW | cfgs[i], false), AXALLOC_ERR_INVALID);
      CHECK_STATUS(axalloc_map_linear(f.as, GIB, GIB, PAGE, RW | cfgs[i]), AXALLOC_ERR_INVALID);
      CHECK_STATUS(axalloc_handle_fault(f.as, 0, AXALLOC_READ | cfgs[i]), AXALLOC_ERR_INVALID);
      CHECK_STATUS(axalloc_handle_fault(f.as, 0, cfgs[i]), AXALLOC_ERR_INVALID);
    }
    /* bits 5-7 are reserved: INVALID; bit 4 is AXALLOC_HUGE, a map_alloc flag
     * only: INVALID for map_linear and as an access (test_huge has the rest) */
    CHECK_STATUS(axalloc_map_alloc(f.as, GIB, PAGE, RW | (1u << 5), false), AXALLOC_ERR_INVALID);
    CHECK_STATUS(axalloc_map_alloc(f.as, GIB, PAGE, RW | (1u << 7), false), AXALLOC_ERR_INVALID);
    CHECK_STATUS(axalloc_map_linear(f.as, GIB, GIB, PAGE, RW | AXALLOC_HUGE), AXALLOC_ERR_INVALID);
    CHECK_STATUS(axalloc_handle_fault(f.as, 0, AXALLOC_READ | AXALLOC_HUGE), AXALLOC_ERR_INVALID);
    /* DEVICE is a map flag, not an access */
    CHECK_STATUS(axalloc_handle_fault(f.as, 0, AXALLOC_DEVICE), AXALLOC_ERR_INVALID);
    CHECK_SNAP_EQ(s0, snap_of(&f), 0);
    CHECK_NONE_MAPPED(&f, 0, PAGE);
    CHECK(fx_done(&f) == 0);
  }
}

/* `format = AXALLOC_CFG_NO_HUGE_1G` used to give an NPT table. */
static void values_flag_as_format_is_invalid(void) {
  /* formats are small integers: READ / WRITE / EXEC (1, 2, 4) are format
   * numbers too (EPT, NPT, RISCV_SV39X4) and cannot be told apart */
  uint32_t bad[] = {AXALLOC_CFG_FRAMES_ZEROED, AXALLOC_CFG_NO_HUGE_1G, AXALLOC_CFG_LINEAR_MAP,
                    AXALLOC_CFG_HW_AD,         AXALLOC_DEVICE,         AXALLOC_EXEC | AXALLOC_DEVICE,
                    0,                         7,                      1u << 16};
  th_pool_t *p = th_pool_new(16, 0x40000000ull, false);
  axalloc_hooks_t h = th_hooks(p);
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    axalloc_config_t c = cfg_of(bad[i], 0, GIB);
    EXPECT_CREATE("flag as format", &c, &h, p, AXALLOC_ERR_INVALID);
  }
  CHECK_EQ_U64(th_errors(p), 0);
  th_pool_free(p);
}

/* Reserved config flags are named and refused as UNSUPPORTED; bits with no
 * name, in bits 8-15 or outside, are INVALID. */
static void values_reserved_config_flags_are_unsupported(void) {
  /* RISCV_SVPBMT and ARM_S2FWB are no longer reserved
   * (test_create.svpbmt_only_for_riscv, s2fwb_only_for_arm) */
  uint32_t reserved[] = {AXALLOC_CFG_HW_AD};
  uint32_t unknown[] = {1u << 14, 1u << 15, 1u << 16, 1u << 23, 1u << 24, 1u << 31};
  FOR_EACH_FORMAT(fmt) {
    th_pool_t *p = th_pool_new(16, 0x40000000ull, false);
    axalloc_hooks_t h = th_hooks(p);
    for (size_t i = 0; i < sizeof reserved / sizeof reserved[0]; i++) {
      axalloc_config_t c = cfg_of(fmt, reserved[i], GIB);
      EXPECT_CREATE("reserved cfg flag", &c, &h, p, AXALLOC_ERR_UNSUPPORTED);
    }
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
      axalloc_config_t c = cfg_of(fmt, unknown[i], GIB);
      EXPECT_CREATE("unknown cfg bit", &c, &h, p, AXALLOC_ERR_INVALID);
    }
    CHECK_EQ_U64(th_errors(p), 0);
    th_pool_free(p);
  }
}

/* Counts entries that are not the format's empty value. */
static size_t used_entries(th_pool_t *p, uint32_t fmt, uint64_t table) {
  const uint64_t *e = th_virt(p, table);
  size_t n = 0;
  /* the root may be several frames */
  size_t entries = table == axalloc_as_root(th_as_of(p)) ? 512 * fmt_root_pages(fmt) : 512;
  for (size_t i = 0; i < entries; i++) n += e[i] != fmt_empty(fmt);
  return n;
}

/* FRAMES_ZEROED speaks of guest frames only: table frames are initialised by
 * the library even when the host promises zeroed frames (here it breaks the
 * promise: garbage frames would read as present entries). */
static void values_table_frames_are_initialised_despite_frames_zeroed(void) {
  FOR_EACH_FORMAT(fmt) {
    th_pool_t *p = th_pool_new(64, 0x40000000ull, false); /* 0xA5 garbage */
    axalloc_hooks_t h = th_hooks(p);
    axalloc_config_t c = cfg_of(fmt, AXALLOC_CFG_FRAMES_ZEROED, 4 * GIB);
    axalloc_as_t *as = NULL;
    CHECK_STATUS(axalloc_as_create(&c, &h, &as), AXALLOC_OK);
    if (!as) continue;
    th_attach(p, as, fmt);
    CHECK_EQ_U64(used_entries(p, fmt, axalloc_as_root(as)), 0);
    CHECK_STATUS(axalloc_map_alloc(as, 0, PAGE, RW, true), AXALLOC_OK);
    th_table_t t[8];
    size_t n = th_list_tables(p, t, 8);
    CHECK_EQ_U64(n, fmt_levels(fmt)); /* one table per level */
    for (size_t i = 0; i < n && i < 8; i++) CHECK_EQ_U64(used_entries(p, fmt, t[i].hpa), 1);
    CHECK_STATUS(axalloc_translate(as, 2 * GIB, NULL, NULL), AXALLOC_ERR_NOT_MAPPED);
    th_check_reachability(p, false);
    axalloc_as_destroy(as);
    CHECK_EQ_U64(th_in_use(p), 0);
    CHECK_EQ_U64(th_errors(p), 0);
    th_pool_free(p);
  }
}

/* ---------------------------------------------------------------------- */
/* Extensible structs. */

static void struct_size_smaller_than_first_version_is_invalid(void) {
  /* 0.2.0's config ended at linear_offset (40 bytes): anything below */
  uint32_t sizes[] = {0, 4, 8, 32, 39};
  th_pool_t *p = th_pool_new(16, 0x40000000ull, false);
  axalloc_hooks_t h = th_hooks(p);
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    axalloc_config_t c = cfg_of(AXALLOC_FORMAT_X86_EPT, 0, GIB);
    c.struct_size = sizes[i];
    EXPECT_CREATE("small config", &c, &h, p, AXALLOC_ERR_INVALID);
  }
  uint32_t hsizes[] = {0, 8, sizeof(axalloc_hooks_t) - sizeof(void *), sizeof(axalloc_hooks_t) - 1};
  axalloc_config_t c = cfg_of(AXALLOC_FORMAT_X86_EPT, 0, GIB);
  for (size_t i = 0; i < sizeof hsizes / sizeof hsizes[0]; i++) {
    axalloc_hooks_t hh = h;
    hh.struct_size = hsizes[i];
    EXPECT_CREATE("small hooks", &c, &hh, p, AXALLOC_ERR_INVALID);
  }
  /* an uninitialised struct_size (huge) is refused before it is used */
  c.struct_size = 0xa5a5a5a5u;
  EXPECT_CREATE("garbage struct_size", &c, &h, p, AXALLOC_ERR_INVALID);
  c.struct_size = 4097;
  EXPECT_CREATE("struct_size above 4096", &c, &h, p, AXALLOC_ERR_INVALID);
  CHECK_EQ_U64(th_errors(p), 0);
  th_pool_free(p);
}

/* A struct from a newer header: accepted when its unknown tail is zero,
 * UNSUPPORTED when not (nothing is ignored silently). */
static void struct_size_larger_needs_zero_tail(void) {
  struct {
    axalloc_config_t c;
    uint64_t more[3];
  } bigc;
  struct {
    axalloc_hooks_t h;
    uint64_t more[3];
  } bigh;
  th_pool_t *p = th_pool_new(16, 0x40000000ull, false);
  memset(&bigc, 0, sizeof bigc);
  memset(&bigh, 0, sizeof bigh);
  bigc.c = cfg_of(AXALLOC_FORMAT_X86_NPT, 0, GIB);
  bigc.c.struct_size = sizeof bigc;
  bigh.h = th_hooks(p);
  bigh.h.struct_size = sizeof bigh;
  EXPECT_CREATE("larger, zero tails", &bigc, &bigh, p, AXALLOC_OK);
  bigc.more[2] = 1;
  EXPECT_CREATE("config tail non-zero", &bigc, &bigh, p, AXALLOC_ERR_UNSUPPORTED);
  bigc.more[2] = 0;
  bigh.more[0] = 1ull << 40;
  EXPECT_CREATE("hooks tail non-zero", &bigc, &bigh, p, AXALLOC_ERR_UNSUPPORTED);
  bigh.more[0] = 0;
  EXPECT_CREATE("zero tails again", &bigc, &bigh, p, AXALLOC_OK);
  CHECK_EQ_U64(th_errors(p), 0);
  th_pool_free(p);
}

/* The reserved words (where padding would be) must be zero. */
static void struct_reserved_fields_must_be_zero(void) {
  th_pool_t *p = th_pool_new(16, 0x40000000ull, false);
  axalloc_hooks_t h = th_hooks(p);
  axalloc_config_t c = cfg_of(AXALLOC_FORMAT_X86_EPT, 0, GIB);
  c.reserved = 1;
  EXPECT_CREATE("config reserved", &c, &h, p, AXALLOC_ERR_UNSUPPORTED);
  c.reserved = 0;
  h.reserved = 0x80000000u;
  EXPECT_CREATE("hooks reserved", &c, &h, p, AXALLOC_ERR_UNSUPPORTED);
  h.reserved = 0;
  EXPECT_CREATE("both zero", &c, &h, p, AXALLOC_OK);
  CHECK_EQ_U64(th_errors(p), 0);
  th_pool_free(p);
}

/* The library reads no byte past struct_size: each struct ends right before
 * an inaccessible page (a read past it would crash the test). */
static void struct_size_is_never_over_read(void) {
  long pg = sysconf(_SC_PAGESIZE);
  unsigned char *m = mmap(NULL, 2 * (size_t)pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  CHECK(m != MAP_FAILED);
  if (m == MAP_FAILED) return;
  CHECK(mprotect(m + pg, (size_t)pg, PROT_NONE) == 0);
  th_pool_t *p = th_pool_new(16, 0x40000000ull, false);
  axalloc_config_t c = cfg_of(AXALLOC_FORMAT_X86_EPT, 0, GIB);
  axalloc_hooks_t h = th_hooks(p);
  axalloc_config_t *gc = (axalloc_config_t *)(m + pg - sizeof c);
  axalloc_hooks_t *gh = (axalloc_hooks_t *)(m + pg - sizeof h);
  /* config at the edge */
  memcpy(gc, &c, sizeof c);
  EXPECT_CREATE("config at a page edge", gc, &h, p, AXALLOC_OK);
  /* hooks at the edge */
  memcpy(gh, &h, sizeof h);
  EXPECT_CREATE("hooks at a page edge", &c, gh, p, AXALLOC_OK);
  /* a struct_size larger than what is there would fault: a newer caller's
   * struct of 8 more bytes ends at the edge too */
  unsigned char *big = m + pg - sizeof c - 8;
  memcpy(big, &c, sizeof c);
  memset(big + sizeof c, 0, 8);
  ((axalloc_config_t *)(void *)big)->struct_size = sizeof c + 8;
  EXPECT_CREATE("larger config at a page edge", big, &h, p, AXALLOC_OK);
  CHECK_EQ_U64(th_errors(p), 0);
  th_pool_free(p);
  munmap(m, 2 * (size_t)pg);
}

/* ---------------------------------------------------------------------- */
/* The version. */

static void version_function_matches_header(void) {
  CHECK_EQ_U64(axalloc_version(), AXALLOC_VERSION);
  CHECK_EQ_U64(AXALLOC_VERSION, AXALLOC_MAKE_VERSION(AXALLOC_VERSION_MAJOR, AXALLOC_VERSION_MINOR,
                                                     AXALLOC_VERSION_PATCH));
  CHECK_EQ_U64(axalloc_version() >> 16, AXALLOC_VERSION_MAJOR);
  CHECK_EQ_U64((axalloc_version() >> 8) & 0xff, AXALLOC_VERSION_MINOR);
  CHECK_EQ_U64(axalloc_version() & 0xff, AXALLOC_VERSION_PATCH);
#ifdef CARGO_VERSION_MAJOR
  CHECK_EQ_U64(AXALLOC_VERSION_MAJOR, CARGO_VERSION_MAJOR);
  CHECK_EQ_U64(AXALLOC_VERSION_MINOR, CARGO_VERSION_MINOR);
  CHECK_EQ_U64(AXALLOC_VERSION_PATCH, CARGO_VERSION_PATCH);
#else
  CHECK(!"CARGO_VERSION_* not passed by the build");
#endif
}

/* ---------------------------------------------------------------------- */
/* ERR_HOOK: a hook broke its contract; nothing changed, the space works. */

/*
 * The host breaks a hook's contract once, at the n-th opportunity:
 * - phys_to_virt (modes 0, 1) fails for a page it is asked about for the
 *   first time — a frame the library is just taking (a new table, a guest
 *   frame it zeroes), or a linear range it copies through. (The contract
 *   also keeps the answer for a frame stable while the library holds it; a
 *   host that starts failing on a table in use is not what this tests.)
 * - alloc_frame (modes 2, 3) hands out a misaligned or too-high frame.
 */
typedef struct hook_fault {
  long countdown; /* fail the call when it reaches 0; < 0: never */
  int mode;       /* 0: NULL, 1: misaligned pointer, 2: misaligned frame, 3: frame >= 2^52 */
  long hits;
  uint64_t seen[8192]; /* pages phys_to_virt answered (open addressing; 0 = free) */
} hook_fault_t;

static bool seen_before(hook_fault_t *hf, uint64_t hpa) {
  uint64_t key = (hpa >> 12) + 1;
  size_t n = sizeof hf->seen / sizeof hf->seen[0];
  for (size_t i = (size_t)(key * 0x9e3779b97f4a7c15ull >> 51) % n;; i = (i + 1) % n) {
    if (hf->seen[i] == key) return true;
    if (hf->seen[i] == 0) {
      hf->seen[i] = key;
      return false;
    }
  }
}

static void *bad_p2v(th_tap_t *t, uint64_t hpa, void *v) {
  hook_fault_t *hf = t->arg;
  if (seen_before(hf, hpa) || hf->mode > 1 || hf->countdown < 0) return v;
  if (hf->countdown-- > 0) return v;
  hf->hits++;
  return hf->mode == 0 ? NULL : (unsigned char *)v + 64;
}

static uint64_t bad_frame(th_tap_t *t, uint64_t hpa) {
  hook_fault_t *hf = t->arg;
  if (hf->mode < 2 || hf->countdown < 0) return hpa;
  if (hf->countdown-- > 0) return hpa;
  hf->hits++;
  return hf->mode == 2 ? hpa + 0x800 : hpa | (1ull << 52);
}

enum op { OP_FAULT, OP_POPULATE, OP_LAZY_MAP, OP_LINEAR, OP_WRITE, OP_TRANSLATE, OP_QUERY, OP_UNMAP, OP_RESERVE, OP_COUNT };
static const char *op_name[] = {"fault",     "populate", "lazy map", "map_linear", "write",
                                "translate", "query",    "unmap",    "reserve"};

static axalloc_status_t run_op(th_fx_t *f, enum op op, int round) {
  const uint64_t base = (uint64_t)round * 8 * MIB; /* a fresh part of the window per round */
  unsigned char buf[64] = {7};
  uint64_t hpa = 0;
  axalloc_mapping_t m;
  switch (op) {
    case OP_FAULT: return axalloc_handle_fault(f->as, 64 * GIB + base + PAGE, AXALLOC_WRITE);
    case OP_POPULATE: return axalloc_map_alloc(f->as, 128 * GIB + base, 4 * PAGE, RW, true);
    case OP_LAZY_MAP: return axalloc_map_alloc(f->as, 192 * GIB + base, 4 * PAGE, RW, false);
    case OP_LINEAR: return axalloc_map_linear(f->as, 256 * GIB + base, 4 * GIB, 2 * MIB + PAGE, RW);
    case OP_WRITE: return axalloc_write(f->as, 64 * GIB + base + 3 * PAGE - 8, buf, sizeof buf);
    case OP_TRANSLATE: return axalloc_translate(f->as, 64 * GIB + base + 3 * PAGE, &hpa, NULL);
    case OP_QUERY: return axalloc_query(f->as, 64 * GIB + base + 3 * PAGE, &m);
    case OP_UNMAP: return axalloc_unmap(f->as, 320 * GIB + base + PAGE, PAGE);
    case OP_RESERVE: return axalloc_reserve(f->as, 4);
    default: return AXALLOC_ERR_INTERNAL;
  }
}

/* Prepares what op `op` of round `round` works on. */
static void setup_op(th_fx_t *f, enum op op, int round) {
  const uint64_t base = (uint64_t)round * 8 * MIB;
  if (op == OP_FAULT || op == OP_WRITE || op == OP_TRANSLATE || op == OP_QUERY) {
    CHECK_STATUS(axalloc_map_alloc(f->as, 64 * GIB + base, 4 * PAGE, RW, false), AXALLOC_OK);
    if (op == OP_TRANSLATE || op == OP_QUERY)
      CHECK_STATUS(axalloc_handle_fault(f->as, 64 * GIB + base + 3 * PAGE, AXALLOC_READ), AXALLOC_OK);
  }
  if (op == OP_RESERVE) CHECK_STATUS(axalloc_reserve(f->as, 0), AXALLOC_OK);
  if (op == OP_UNMAP) {
    /* a 2 MiB + 4 KiB linear region: unmapping one page in it splits a leaf */
    CHECK_STATUS(axalloc_map_linear(f->as, 320 * GIB + base, 8 * GIB, 2 * MIB + PAGE, RW), AXALLOC_OK);
  }
  th_scan(f->pool);
}

static void hook_errors_leave_the_space_as_before(int mode) {
  FOR_EACH_FORMAT(fmt) {
    for (enum op op = 0; op < OP_COUNT; op++) {
      if (mode >= 2 && (op == OP_TRANSLATE || op == OP_QUERY)) continue; /* no frame allocated */
      static hook_fault_t hf;
      memset(&hf, 0, sizeof hf);
      hf.countdown = -1;
      hf.mode = mode;
      th_tap_t tap = {.arg = &hf, .on_p2v = bad_p2v, .on_alloced = bad_frame};
      th_fx_t f = th_fx_new_tapped(&tap, fmt, 0, 0, 512 * GIB, 2048);
      int round = 0;
      long n;
      for (n = 0; n < 64; n++, round++) {
        setup_op(&f, op, round);
        snap_t s0 = snap_of(&f);
        hf.countdown = n;
        hf.hits = 0;
        axalloc_status_t st = run_op(&f, op, round);
        hf.countdown = -1;
        if (hf.hits == 0) {
          /* the op made fewer than n + 1 such hook calls: it succeeded */
          CHECK_STATUS(st, AXALLOC_OK);
          break;
        }
        if (st != AXALLOC_ERR_HOOK) {
          fprintf(stderr, "%s mode %d %s [n=%ld]: %s, want AXALLOC_ERR_HOOK\n", fmt_name(fmt), mode, op_name[op], n,
                  axalloc_status_str(st));
          check_failures++;
        }
        /* nothing changed (a write that met the bad pointer while copying
         * has already populated: its frames stay, documented) */
        snap_t s1 = snap_of(&f);
        if (op == OP_RESERVE) {
          /* documented: the frames reserved before the failure are kept */
          CHECK(s1.s.reserve_frames < 4);
          CHECK_EQ_U64(s1.in_use - s0.in_use, s1.s.reserve_frames);
          s1.s.reserve_frames = s0.s.reserve_frames;
          s1.in_use = s0.in_use;
        }
        if (op == OP_WRITE) {
          s1.s.guest_frames = s0.s.guest_frames;
          s1.s.table_frames = s0.s.table_frames;
          s1.in_use = s0.in_use;
        }
        CHECK_SNAP_EQ(s0, s1, n);
        /* and the space still works: the same op succeeds now */
        st = run_op(&f, op, round);
        if (st != AXALLOC_OK) {
          fprintf(stderr, "%s mode %d %s [n=%ld]: retry = %s\n", fmt_name(fmt), mode, op_name[op], n,
                  axalloc_status_str(st));
          check_failures++;
        }
      }
      CHECK(n < 64);
      if (fx_done(&f) != 0) {
        fprintf(stderr, "%s mode %d %s: leak or contract error after ERR_HOOK\n", fmt_name(fmt), mode, op_name[op]);
        check_failures++;
      }
    }
  }
}

/* The case: a host phys_to_virt returning NULL was ERR_INTERNAL. */
static void hook_null_from_phys_to_virt_is_err_hook(void) { hook_errors_leave_the_space_as_before(0); }
static void hook_misaligned_pointer_is_err_hook(void) { hook_errors_leave_the_space_as_before(1); }
static void hook_misaligned_frame_is_err_hook_and_handed_back(void) { hook_errors_leave_the_space_as_before(2); }
static void hook_frame_beyond_52_bits_is_err_hook_and_handed_back(void) { hook_errors_leave_the_space_as_before(3); }

/* create too: its own state's frame, the root, their phys_to_virt. */
static void hook_errors_at_create_hold_nothing(void) {
  FOR_EACH_FORMAT(fmt) {
    for (int mode = 0; mode < 4; mode++) {
      for (long n = 0; n < 4; n++) {
        static hook_fault_t hf;
        memset(&hf, 0, sizeof hf);
        hf.countdown = n;
        hf.mode = mode;
        th_tap_t tap = {.arg = &hf, .on_p2v = bad_p2v, .on_alloced = bad_frame};
        th_pool_t *p = th_pool_new(16, 0x40000000ull, false);
        tap.inner = th_hooks(p);
        axalloc_hooks_t h = th_tap_hooks(&tap);
        axalloc_config_t c = cfg_of(fmt, 0, GIB);
        axalloc_as_t *as = SENTINEL;
        axalloc_status_t st = axalloc_as_create(&c, &h, &as);
        CHECK_STATUS(st, hf.hits ? AXALLOC_ERR_HOOK : AXALLOC_OK);
        if (st == AXALLOC_OK) {
          th_check_reachability(p, false);
          axalloc_as_destroy(as);
        } else {
          CHECK(as == SENTINEL);
        }
        CHECK_EQ_U64(th_in_use(p), 0);
        CHECK_EQ_U64(th_errors(p), 0);
        th_pool_free(p);
      }
    }
  }
}

/* ---------------------------------------------------------------------- */
/* ERR_LIMIT: the region limit, with frames to spare. */

static void limit_regions_is_err_limit(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 64 * GIB, 1024);
    uint64_t n = 0;
    axalloc_status_t st;
    while ((st = axalloc_map_alloc(f.as, n * 2 * PAGE, PAGE, RW, false)) == AXALLOC_OK) n++;
    CHECK_STATUS(st, AXALLOC_ERR_LIMIT);
    CHECK_EQ_U64(n, 6528);
    CHECK(th_failed_allocs(f.pool) == 0);
    snap_t s0 = snap_of(&f);
    CHECK(s0.in_use < 512); /* plenty of frames left in the pool */
    CHECK_STATUS(axalloc_map_linear(f.as, 32 * GIB, 0, PAGE, RW), AXALLOC_ERR_LIMIT);
    CHECK_STATUS(axalloc_map_alloc(f.as, 32 * GIB, PAGE, RW, true), AXALLOC_ERR_LIMIT);
    CHECK_SNAP_EQ(s0, snap_of(&f), 0);
    /* unmapping one page out of the middle of a region needs one more */
    CHECK_STATUS(axalloc_unmap(f.as, 0, PAGE), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_alloc(f.as, 0, 3 * PAGE, RW, false), AXALLOC_ERR_EXISTS);
    CHECK_STATUS(axalloc_unmap(f.as, 2 * PAGE, PAGE), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_alloc(f.as, 0, 3 * PAGE, RW, false), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_alloc(f.as, 40 * GIB, PAGE, RW, false), AXALLOC_OK); /* full again */
    snap_t s1 = snap_of(&f);
    CHECK_EQ_U64(s1.s.regions, 6528);
    CHECK_STATUS(axalloc_unmap(f.as, PAGE, PAGE), AXALLOC_ERR_LIMIT);
    CHECK_SNAP_EQ(s1, snap_of(&f), 1);
    /* below the limit again, maps work */
    CHECK_STATUS(axalloc_unmap(f.as, 0, 3 * PAGE), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_alloc(f.as, 32 * GIB, PAGE, RW, true), AXALLOC_OK);
    CHECK(fx_done(&f) == 0);
  }
}

/* ---------------------------------------------------------------------- */
/* Looking inside. */

static void query_tells_no_region_from_lazy_page(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 4 * GIB, 512);
    CHECK_STATUS(axalloc_map_alloc(f.as, 0, 4 * PAGE, RW, false), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_linear(f.as, GIB, 0x100000000ull, GIB, RW | AXALLOC_DEVICE), AXALLOC_OK);
    th_scan(f.pool);
    axalloc_mapping_t m;
    /* no region: OK, kind NONE, all zero */
    uint64_t none[] = {4 * PAGE, 2 * GIB, 4 * GIB, GPA_LIMIT, ~0ull};
    for (size_t i = 0; i < sizeof none / sizeof none[0]; i++) {
      memset(&m, 0x5a, sizeof m);
      CHECK_STATUS(axalloc_query(f.as, none[i], &m), AXALLOC_OK);
      CHECK_EQ_U64(m.kind, AXALLOC_REGION_NONE);
      CHECK(m.flags == 0 && m.region_base == 0 && m.region_size == 0 && m.present == 0 && m.reserved == 0 &&
            m.hpa == 0 && m.page_size == 0);
    }
    /* a lazy page never touched: the region, not present */
    memset(&m, 0x5a, sizeof m);
    CHECK_STATUS(axalloc_query(f.as, PAGE + 5, &m), AXALLOC_OK);
    CHECK_EQ_U64(m.kind, AXALLOC_REGION_ALLOC);
    CHECK_EQ_U64(m.flags, RW);
    CHECK_EQ_U64(m.region_base, 0);
    CHECK_EQ_U64(m.region_size, 4 * PAGE);
    CHECK_EQ_U64(m.present, 0);
    CHECK_EQ_U64(m.reserved, 0);
    CHECK_EQ_U64(m.hpa, 0);
    CHECK_EQ_U64(m.page_size, 0);
    CHECK_STATUS(axalloc_translate(f.as, PAGE + 5, NULL, NULL), AXALLOC_ERR_NOT_MAPPED); /* the ambiguity */
    /* touched: present, hpa of the address itself, as translate says */
    CHECK_STATUS(axalloc_handle_fault(f.as, PAGE + 5, AXALLOC_WRITE), AXALLOC_OK);
    uint64_t hpa = 0, ps = 0;
    CHECK_STATUS(axalloc_translate(f.as, PAGE + 5, &hpa, &ps), AXALLOC_OK);
    CHECK_STATUS(axalloc_query(f.as, PAGE + 5, &m), AXALLOC_OK);
    CHECK_EQ_U64(m.kind, AXALLOC_REGION_ALLOC);
    CHECK_EQ_U64(m.present, 1);
    CHECK_EQ_U64(m.hpa, hpa);
    CHECK_EQ_U64(m.hpa & 0xfff, 5);
    CHECK_EQ_U64(m.page_size, PAGE);
    /* linear: a 1 GiB leaf */
    CHECK_STATUS(axalloc_query(f.as, GIB + 0x12345, &m), AXALLOC_OK);
    CHECK_EQ_U64(m.kind, AXALLOC_REGION_LINEAR);
    CHECK_EQ_U64(m.flags, RW | AXALLOC_DEVICE);
    CHECK_EQ_U64(m.region_base, GIB);
    CHECK_EQ_U64(m.region_size, GIB);
    CHECK_EQ_U64(m.present, 1);
    CHECK_EQ_U64(m.hpa, 0x100012345ull);
    CHECK_EQ_U64(m.page_size, GIB);
    /* NULL out */
    CHECK_STATUS(axalloc_query(f.as, 0, NULL), AXALLOC_ERR_INVALID);
    CHECK(fx_done(&f) == 0);
  }
}

static void region_next_iterates_all_regions_in_order(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 4 * GIB, 512);
    struct {
      uint64_t base, size;
      uint32_t kind, flags;
    } want[] = {
        {0, 4 * PAGE, AXALLOC_REGION_ALLOC, RW},
        {MIB, 2 * PAGE, AXALLOC_REGION_ALLOC, AXALLOC_READ | AXALLOC_EXEC},
        {2 * MIB, 2 * MIB, AXALLOC_REGION_LINEAR, AXALLOC_READ},
        {GIB, GIB, AXALLOC_REGION_LINEAR, RW | AXALLOC_DEVICE},
        {3 * GIB, PAGE, AXALLOC_REGION_ALLOC, RW},
    };
    const size_t nw = sizeof want / sizeof want[0];
    /* mapped out of order */
    CHECK_STATUS(axalloc_map_alloc(f.as, 3 * GIB, PAGE, RW, false), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_linear(f.as, GIB, 0x100000000ull, GIB, RW | AXALLOC_DEVICE), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_alloc(f.as, 0, 4 * PAGE, RW, false), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_linear(f.as, 2 * MIB, 0x200000, 2 * MIB, AXALLOC_READ), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_alloc(f.as, MIB, 2 * PAGE, AXALLOC_READ | AXALLOC_EXEC, true), AXALLOC_OK);
    th_scan(f.pool);
    axalloc_mapping_t m;
    size_t i = 0;
    for (uint64_t g = 0; axalloc_region_next(f.as, g, &m) == AXALLOC_OK; g = m.region_base + m.region_size, i++) {
      if (i >= nw) {
        check_failures++;
        break;
      }
      CHECK_EQ_U64(m.region_base, want[i].base);
      CHECK_EQ_U64(m.region_size, want[i].size);
      CHECK_EQ_U64(m.kind, want[i].kind);
      CHECK_EQ_U64(m.flags, want[i].flags);
      /* as axalloc_query of the region's first byte */
      axalloc_mapping_t q;
      CHECK_STATUS(axalloc_query(f.as, m.region_base, &q), AXALLOC_OK);
      CHECK(memcmp(&q, &m, sizeof m) == 0);
    }
    CHECK_EQ_U64(i, nw);
    /* an address inside a region gives that region; one in a gap the next */
    CHECK_STATUS(axalloc_region_next(f.as, MIB + PAGE + 7, &m), AXALLOC_OK);
    CHECK_EQ_U64(m.region_base, MIB);
    CHECK_EQ_U64(m.present, 1); /* populated */
    CHECK_STATUS(axalloc_region_next(f.as, 4 * PAGE, &m), AXALLOC_OK);
    CHECK_EQ_U64(m.region_base, MIB);
    /* past the last: NOT_MAPPED, out untouched */
    memset(&m, 0x33, sizeof m);
    CHECK_STATUS(axalloc_region_next(f.as, 3 * GIB + PAGE, &m), AXALLOC_ERR_NOT_MAPPED);
    CHECK_STATUS(axalloc_region_next(f.as, ~0ull, &m), AXALLOC_ERR_NOT_MAPPED);
    CHECK_EQ_U64(m.hpa, 0x3333333333333333ull);
    CHECK_STATUS(axalloc_region_next(f.as, 0, NULL), AXALLOC_ERR_INVALID);
    CHECK(fx_done(&f) == 0);
  }
}

TEST_MAIN(T(values_map_flags_as_config_flags_are_invalid), T(values_config_flags_as_map_flags_are_invalid),
          T(values_flag_as_format_is_invalid), T(values_reserved_config_flags_are_unsupported),
          T(values_table_frames_are_initialised_despite_frames_zeroed),
          T(struct_size_smaller_than_first_version_is_invalid), T(struct_size_larger_needs_zero_tail),
          T(struct_reserved_fields_must_be_zero), T(struct_size_is_never_over_read),
          T(version_function_matches_header), T(hook_null_from_phys_to_virt_is_err_hook),
          T(hook_misaligned_pointer_is_err_hook), T(hook_misaligned_frame_is_err_hook_and_handed_back),
          T(hook_frame_beyond_52_bits_is_err_hook_and_handed_back), T(hook_errors_at_create_hold_nothing),
          T(limit_regions_is_err_limit), T(query_tells_no_region_from_lazy_page),
          T(region_next_iterates_all_regions_in_order))
