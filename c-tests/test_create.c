/* axalloc_as_create / destroy / root / status_str: the "create" bullet. */
#include <limits.h>
#include <stddef.h>

#include "sem.h"

#define SENTINEL ((axalloc_as_t *)(uintptr_t)0x5eed5eedu)

/* Runs create with (cfg, hooks over a fresh pool) and expects `want`; on
 * error checks *as_out untouched and no frame held. On success destroys and
 * checks the pool is clean. `tweak` may edit the hooks. */
static void expect_create(const char *what, axalloc_config_t cfg, void (*tweak)(axalloc_hooks_t *),
                          axalloc_status_t want) {
  /* FRAMES_ZEROED is a promise of the host: keep it (a garbage root would be
   * read as 512 GiB leaves) */
  th_pool_t *p = th_pool_new(64, 0x40000000ull, (cfg.flags & AXALLOC_CFG_FRAMES_ZEROED) != 0);
  axalloc_hooks_t h = th_hooks(p);
  if (tweak) tweak(&h);
  axalloc_as_t *as = SENTINEL;
  axalloc_status_t st = axalloc_as_create(&cfg, &h, &as);
  if (st != want) {
    fprintf(stderr, "%s: create(format=%u flags=%#x base=%#llx size=%#llx) = %s, want %s\n", what, cfg.format,
            cfg.flags, (unsigned long long)cfg.base, (unsigned long long)cfg.size, axalloc_status_str(st),
            axalloc_status_str(want));
    check_failures++;
  }
  if (st == AXALLOC_OK) {
    CHECK(as != SENTINEL && as != NULL);
    if (h.flush_tlb) th_attach(p, as, cfg.format); /* without it the host vouches for no stale TLB */
    th_check_reachability(p, false);
    axalloc_as_destroy(as);
    th_mark_destroyed(p);
  } else {
    if (as != SENTINEL) {
      fprintf(stderr, "%s: *as_out was changed on error\n", what);
      check_failures++;
    }
  }
  if (th_in_use(p) != 0) {
    fprintf(stderr, "%s: %zu frames held after create error / destroy\n", what, th_in_use(p));
    check_failures++;
  }
  CHECK_EQ_U64(th_errors(p), 0);
  th_pool_free(p);
}

static axalloc_config_t cfg_of(uint32_t format, uint32_t flags, uint64_t base, uint64_t size) {
  axalloc_config_t c = {.struct_size = sizeof c, .format = format, .flags = flags, .base = base, .size = size};
  return c;
}

static void create_rejects_unknown_format(void) {
  uint32_t bad[] = {0, 7, 8, 0x80000001u, 0xffffffffu};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    expect_create("unknown format", cfg_of(bad[i], 0, 0, GIB), NULL, AXALLOC_ERR_INVALID);
  /* positive control: both known formats work with the same window */
  FOR_EACH_FORMAT(fmt) expect_create("known format", cfg_of(fmt, 0, 0, GIB), NULL, AXALLOC_OK);
}

static void create_rejects_unknown_cfg_bits(void) {
  uint32_t bad[] = {1u << 2,  1u << 3,  1u << 14, 1u << 15, 1u << 16, 1u << 31, 0xffffffffu,
                    AXALLOC_CFG_FRAMES_ZEROED | (1u << 5)};
  FOR_EACH_FORMAT(fmt) {
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
      expect_create("unknown cfg bits", cfg_of(fmt, bad[i], 0, GIB), NULL, AXALLOC_ERR_INVALID);
    expect_create("known cfg bits", cfg_of(fmt, AXALLOC_CFG_FRAMES_ZEROED | AXALLOC_CFG_NO_HUGE_1G, 0, GIB), NULL,
                  AXALLOC_OK);
  }
}

static void create_rejects_unaligned_window(void) {
  FOR_EACH_FORMAT(fmt) {
    expect_create("base unaligned", cfg_of(fmt, 0, 0x1001, GIB), NULL, AXALLOC_ERR_INVALID);
    expect_create("base unaligned 0x800", cfg_of(fmt, 0, 0x800, GIB), NULL, AXALLOC_ERR_INVALID);
    expect_create("size unaligned", cfg_of(fmt, 0, 0, GIB + 1), NULL, AXALLOC_ERR_INVALID);
    expect_create("size unaligned small", cfg_of(fmt, 0, 0x1000, 0xfff), NULL, AXALLOC_ERR_INVALID);
    expect_create("aligned non-zero base", cfg_of(fmt, 0, 0x1000, 0x1000), NULL, AXALLOC_OK);
  }
}

static void create_rejects_empty_window(void) {
  FOR_EACH_FORMAT(fmt) {
    expect_create("empty window at 0", cfg_of(fmt, 0, 0, 0), NULL, AXALLOC_ERR_INVALID);
    expect_create("empty window at 1 GiB", cfg_of(fmt, 0, GIB, 0), NULL, AXALLOC_ERR_INVALID);
    expect_create("one-page window", cfg_of(fmt, 0, GIB, PAGE), NULL, AXALLOC_OK);
  }
}

static void create_rejects_overflowing_window(void) {
  FOR_EACH_FORMAT(fmt) {
    expect_create("base+size wraps", cfg_of(fmt, 0, 0xfffffffffffff000ull, 0x2000), NULL, AXALLOC_ERR_INVALID);
    expect_create("base+size == 2^64", cfg_of(fmt, 0, 0xfffffffffffff000ull, 0x1000), NULL, AXALLOC_ERR_INVALID);
    expect_create("size huge", cfg_of(fmt, 0, 0x1000, 0xfffffffffffff000ull), NULL, AXALLOC_ERR_INVALID);
  }
}

/* The window lies below 2^gpa_bits: 48 bits for EPT / NPT by default, the
 * default width of every other format (test_create.create_gpa_bits_per_format
 * covers the other widths). */
static void create_rejects_window_beyond_48_bits(void) {
  FOR_EACH_FORMAT(fmt) {
    uint64_t lim = fmt_gpa_limit(fmt);
    expect_create("end one page past the limit", cfg_of(fmt, 0, 0, lim + PAGE), NULL, AXALLOC_ERR_INVALID);
    expect_create("base at the limit", cfg_of(fmt, 0, lim, PAGE), NULL, AXALLOC_ERR_INVALID);
    expect_create("straddles the limit", cfg_of(fmt, 0, lim - PAGE, 2 * PAGE), NULL, AXALLOC_ERR_INVALID);
    expect_create("base at 2^60", cfg_of(fmt, 0, 1ull << 60, GIB), NULL, AXALLOC_ERR_INVALID);
    /* the whole space and its last page are fine */
    expect_create("whole space", cfg_of(fmt, 0, 0, lim), NULL, AXALLOC_OK);
    expect_create("last page below the limit", cfg_of(fmt, 0, lim - PAGE, PAGE), NULL, AXALLOC_OK);
  }
}

static void create_rejects_null_arguments(void) {
  FOR_EACH_FORMAT(fmt) {
    th_pool_t *p = th_pool_new(16, 0x40000000ull, false);
    axalloc_hooks_t h = th_hooks(p);
    axalloc_config_t c = cfg_of(fmt, 0, 0, GIB);
    axalloc_as_t *as = SENTINEL;
    CHECK_STATUS(axalloc_as_create(NULL, &h, &as), AXALLOC_ERR_INVALID);
    CHECK(as == SENTINEL);
    CHECK_STATUS(axalloc_as_create(&c, NULL, &as), AXALLOC_ERR_INVALID);
    CHECK(as == SENTINEL);
    CHECK_STATUS(axalloc_as_create(&c, &h, NULL), AXALLOC_ERR_INVALID);
    CHECK_STATUS(axalloc_as_create(NULL, NULL, NULL), AXALLOC_ERR_INVALID);
    CHECK_EQ_U64(th_in_use(p), 0);
    CHECK_EQ_U64(th_errors(p), 0);
    th_pool_free(p);
  }
}

static void no_alloc(axalloc_hooks_t *h) { h->alloc_frame = NULL; }
static void no_free(axalloc_hooks_t *h) { h->free_frame = NULL; }
static void no_p2v(axalloc_hooks_t *h) { h->phys_to_virt = NULL; }
static void no_flush(axalloc_hooks_t *h) { h->flush_tlb = NULL; }

static int32_t fake_alloc_contig(void *ctx, uint32_t order, uint64_t *hpa_out) {
  (void)ctx;
  (void)order;
  (void)hpa_out;
  return -1;
}
static void fake_free_contig(void *ctx, uint64_t hpa, uint32_t order) {
  (void)ctx;
  (void)hpa;
  (void)order;
}
static void only_alloc_contig(axalloc_hooks_t *h) {
  h->alloc_contig = fake_alloc_contig;
  h->free_contig = NULL;
}
static void only_free_contig(axalloc_hooks_t *h) {
  h->alloc_contig = NULL;
  h->free_contig = fake_free_contig;
}
static void both_contig(axalloc_hooks_t *h) {
  h->alloc_contig = fake_alloc_contig;
  h->free_contig = fake_free_contig;
}

static void create_requires_alloc_free_p2v_hooks(void) {
  FOR_EACH_FORMAT(fmt) {
    axalloc_config_t c = cfg_of(fmt, 0, 0, GIB);
    expect_create("alloc_frame NULL", c, no_alloc, AXALLOC_ERR_INVALID);
    expect_create("free_frame NULL", c, no_free, AXALLOC_ERR_INVALID);
    expect_create("phys_to_virt NULL", c, no_p2v, AXALLOC_ERR_INVALID);
    /* flush_tlb is optional */
    expect_create("flush_tlb NULL", c, no_flush, AXALLOC_OK);
    expect_create("all hooks", c, NULL, AXALLOC_OK);
  }
}

static void create_requires_free_contig_iff_alloc_contig(void) {
  FOR_EACH_FORMAT(fmt) {
    axalloc_config_t c = cfg_of(fmt, 0, 0, GIB);
    expect_create("alloc_contig without free_contig", c, only_alloc_contig, AXALLOC_ERR_INVALID);
    expect_create("free_contig without alloc_contig", c, only_free_contig, AXALLOC_ERR_INVALID);
    /* the fake alloc_contig always fails: formats with a multi-page root
     * cannot be created with it */
    expect_create("both contig hooks", c, both_contig,
                  fmt_root_pages(fmt) > 1 ? AXALLOC_ERR_NO_MEMORY : AXALLOC_OK);
  }
}

/* Failure at every allocation point of create: NO_MEMORY, *as_out untouched,
 * nothing held; eventually it succeeds. */
static void create_no_memory_at_every_allocation_point(void) {
  FOR_EACH_FORMAT(fmt) {
    uint32_t cfgflags[] = {0, AXALLOC_CFG_FRAMES_ZEROED};
    for (int z = 0; z < 2; z++) {
      th_pool_t *p = th_pool_new(64, 0x40000000ull, cfgflags[z] != 0);
      axalloc_hooks_t h = th_hooks(p);
      axalloc_config_t c = cfg_of(fmt, cfgflags[z], 0, 4 * GIB);
      long n;
      for (n = 0; n < 64; n++) {
        size_t failed_before = th_failed_allocs(p);
        th_fail_after(p, n);
        axalloc_as_t *as = SENTINEL;
        axalloc_status_t st = axalloc_as_create(&c, &h, &as);
        th_fail_never(p);
        if (st == AXALLOC_OK) {
          CHECK(as != SENTINEL && as != NULL);
          th_attach(p, as, fmt);
          th_check_reachability(p, false);
          CHECK(axalloc_as_root(as) != 0);
          axalloc_as_destroy(as);
          th_mark_destroyed(p);
          break;
        }
        if (st != AXALLOC_ERR_NO_MEMORY) {
          fprintf(stderr, "[n=%ld] create = %s, want AXALLOC_ERR_NO_MEMORY\n", n, axalloc_status_str(st));
          check_failures++;
        }
        CHECK(th_failed_allocs(p) > failed_before); /* the failure was really hit */
        if (as != SENTINEL) {
          fprintf(stderr, "[n=%ld] *as_out changed on NO_MEMORY\n", n);
          check_failures++;
        }
        if (th_in_use(p) != 0) {
          fprintf(stderr, "[n=%ld] %zu frames held after NO_MEMORY\n", n, th_in_use(p));
          check_failures++;
        }
      }
      CHECK(n < 64);
      CHECK(n >= 1); /* create takes at least the root table frame */
      CHECK_EQ_U64(th_in_use(p), 0);
      CHECK_EQ_U64(th_errors(p), 0);
      th_pool_free(p);
    }
  }
}

/* The root: non-zero, a frame from the pool, frame aligned, empty, constant
 * across every operation, and counted in table_frames. */
static void as_root_nonzero_and_constant(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 4 * GIB, 2048);
    uint64_t root = axalloc_as_root(f.as);
    CHECK(root != 0);
    CHECK_EQ_U64(root % PAGE, 0);
    CHECK(th_owns(f.pool, root));
    CHECK_EQ_U64(th_stats(&f).table_frames, fmt_root_pages(fmt));
    const uint64_t *t = th_virt(f.pool, root);
    int present = 0;
    for (uint64_t i = 0; t && i < 512 * fmt_root_pages(fmt); i++) present += t[i] != fmt_empty(fmt); /* EPT: suppress #VE */
    CHECK_EQ_U64(present, 0); /* a fresh root has no entry */
    CHECK_STATUS(axalloc_map_alloc(f.as, 0, 4 * MIB, AXALLOC_READ | AXALLOC_WRITE, true), AXALLOC_OK);
    th_scan(f.pool);
    CHECK_EQ_U64(axalloc_as_root(f.as), root);
    CHECK_STATUS(axalloc_map_linear(f.as, GIB, 0x100000000ull, GIB, AXALLOC_READ), AXALLOC_OK);
    th_scan(f.pool);
    CHECK_EQ_U64(axalloc_as_root(f.as), root);
    CHECK_STATUS(axalloc_map_alloc(f.as, 2 * GIB, MIB, AXALLOC_READ, false), AXALLOC_OK);
    CHECK_STATUS(axalloc_handle_fault(f.as, 2 * GIB, AXALLOC_READ), AXALLOC_OK);
    th_scan(f.pool);
    CHECK_EQ_U64(axalloc_as_root(f.as), root);
    CHECK_STATUS(axalloc_unmap(f.as, 0, 4 * GIB), AXALLOC_OK);
    CHECK_EQ_U64(axalloc_as_root(f.as), root);
    CHECK_EQ_U64(th_stats(&f).table_frames, fmt_root_pages(fmt));
    /* another address space on the same pool gets another root */
    axalloc_config_t c = cfg_of(fmt, 0, 0, GIB);
    axalloc_hooks_t h = th_hooks(f.pool);
    axalloc_as_t *as2 = NULL;
    CHECK_STATUS(axalloc_as_create(&c, &h, &as2), AXALLOC_OK);
    CHECK(axalloc_as_root(as2) != 0 && axalloc_as_root(as2) != root);
    axalloc_as_destroy(as2);
    CHECK(fx_done(&f) == 0);
  }
}

static void status_str_never_null(void) {
  static const struct {
    int32_t v;
    const char *name;
  } known[] = {
      {AXALLOC_OK, "AXALLOC_OK"},
      {AXALLOC_ERR_INVALID, "AXALLOC_ERR_INVALID"},
      {AXALLOC_ERR_NO_MEMORY, "AXALLOC_ERR_NO_MEMORY"},
      {AXALLOC_ERR_EXISTS, "AXALLOC_ERR_EXISTS"},
      {AXALLOC_ERR_NOT_MAPPED, "AXALLOC_ERR_NOT_MAPPED"},
      {AXALLOC_ERR_ACCESS, "AXALLOC_ERR_ACCESS"},
      {AXALLOC_ERR_UNSUPPORTED, "AXALLOC_ERR_UNSUPPORTED"},
      {AXALLOC_ERR_INTERNAL, "AXALLOC_ERR_INTERNAL"},
      {AXALLOC_ERR_HOOK, "AXALLOC_ERR_HOOK"},
      {AXALLOC_ERR_LIMIT, "AXALLOC_ERR_LIMIT"},
      {AXALLOC_ERR_BUSY, "AXALLOC_ERR_BUSY"},
  };
  for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
    const char *s = axalloc_status_str(known[i].v);
    CHECK(s != NULL);
    if (s && strcmp(s, known[i].name) != 0) {
      fprintf(stderr, "status_str(%d) = \"%s\", want \"%s\"\n", known[i].v, s, known[i].name);
      check_failures++;
    }
  }
  int32_t odd[] = {INT32_MIN, INT32_MIN + 1, INT32_MAX, INT32_MAX - 1, -11, 1, 2, 7, 100, -100, -65536};
  for (size_t i = 0; i < sizeof odd / sizeof odd[0]; i++) {
    const char *s = axalloc_status_str(odd[i]);
    CHECK(s != NULL);
    if (s && strcmp(s, "AXALLOC_ERR_UNKNOWN") != 0) {
      fprintf(stderr, "status_str(%d) = \"%s\", want \"AXALLOC_ERR_UNKNOWN\"\n", odd[i], s);
      check_failures++;
    }
  }
  for (int64_t v = -4096; v <= 4096; v++) {
    const char *s = axalloc_status_str((int32_t)v);
    if (!s || !s[0]) {
      fprintf(stderr, "status_str(%lld) is NULL or empty\n", (long long)v);
      check_failures++;
      break;
    }
  }
}

static void null_as_is_harmless(void) {
  axalloc_as_destroy(NULL); /* no-op, no crash */
  CHECK_EQ_U64(axalloc_as_root(NULL), 0);
  axalloc_stats_t s;
  memset(&s, 0x77, sizeof s);
  CHECK_STATUS(axalloc_as_stats(NULL, &s), AXALLOC_ERR_INVALID);
  CHECK_EQ_U64(s.regions, 0x7777777777777777ull); /* out untouched */
}

/* Create allocates the root table (and whatever else it needs) only after
 * validation, and destroy returns all of it. */
static void create_then_destroy_returns_every_frame(void) {
  FOR_EACH_FORMAT(fmt) {
    th_pool_t *p = th_pool_new(16, 0x40000000ull, false);
    axalloc_hooks_t h = th_hooks(p);
    axalloc_config_t c = cfg_of(fmt, 0, GIB, GIB);
    axalloc_as_t *as = NULL;
    CHECK_STATUS(axalloc_as_create(&c, &h, &as), AXALLOC_OK);
    CHECK(th_in_use(p) >= 1);
    th_attach(p, as, fmt);
    th_check_reachability(p, false);
    axalloc_stats_t s;
    CHECK_STATUS(axalloc_as_stats(as, &s), AXALLOC_OK);
    CHECK_EQ_U64(s.table_frames, fmt_root_pages(fmt));
    CHECK_EQ_U64(s.regions, 0);
    CHECK_EQ_U64(s.guest_frames, 0);
    CHECK_EQ_U64(s.mapped_bytes, 0);
    CHECK_EQ_U64(s.faults, 0);
    axalloc_as_destroy(as);
    th_mark_destroyed(p);
    CHECK_EQ_U64(th_in_use(p), 0);
    CHECK_EQ_U64(th_frees(p), th_allocs(p));
    CHECK_EQ_U64(th_errors(p), 0);
    th_pool_free(p);
  }
}

/* ---------------------------------------------------------------------- */
/* Formats and gpa_bits (issue 10). */

static void no_contig(axalloc_hooks_t *h) {
  h->alloc_contig = NULL;
  h->free_contig = NULL;
}

static axalloc_config_t cfg_bits(uint32_t format, uint32_t bits, uint64_t base, uint64_t size) {
  axalloc_config_t c = cfg_of(format, 0, base, size);
  c.gpa_bits = bits;
  return c;
}

/* gpa_bits: EPT/NPT 48 or 57, Arm 32..48, RISC-V its mode's width; 0 the
 * default; anything else INVALID. The window must fit 2^gpa_bits. */
static void create_gpa_bits_per_format(void) {
  struct {
    uint32_t fmt, bits;
    axalloc_status_t want;
  } cases[] = {
      {AXALLOC_FORMAT_X86_EPT, 48, AXALLOC_OK},         {AXALLOC_FORMAT_X86_EPT, 57, AXALLOC_OK},
      {AXALLOC_FORMAT_X86_EPT, 39, AXALLOC_ERR_INVALID}, {AXALLOC_FORMAT_X86_EPT, 52, AXALLOC_ERR_INVALID},
      {AXALLOC_FORMAT_X86_NPT, 57, AXALLOC_OK},         {AXALLOC_FORMAT_X86_NPT, 64, AXALLOC_ERR_INVALID},
      {AXALLOC_FORMAT_ARM_S2, 32, AXALLOC_OK},          {AXALLOC_FORMAT_ARM_S2, 40, AXALLOC_OK},
      {AXALLOC_FORMAT_ARM_S2, 42, AXALLOC_OK},          {AXALLOC_FORMAT_ARM_S2, 48, AXALLOC_OK},
      {AXALLOC_FORMAT_ARM_S2, 31, AXALLOC_ERR_INVALID}, {AXALLOC_FORMAT_ARM_S2, 49, AXALLOC_ERR_INVALID},
      {AXALLOC_FORMAT_RISCV_SV39X4, 41, AXALLOC_OK},    {AXALLOC_FORMAT_RISCV_SV39X4, 39, AXALLOC_ERR_INVALID},
      {AXALLOC_FORMAT_RISCV_SV48X4, 50, AXALLOC_OK},    {AXALLOC_FORMAT_RISCV_SV48X4, 48, AXALLOC_ERR_INVALID},
      {AXALLOC_FORMAT_RISCV_SV57X4, 59, AXALLOC_OK},    {AXALLOC_FORMAT_RISCV_SV57X4, 57, AXALLOC_ERR_INVALID},
      {AXALLOC_FORMAT_X86_EPT, ~0u, AXALLOC_ERR_INVALID},
  };
  for (size_t i = 0; i < N_ELEMS(cases); i++) {
    expect_create("gpa_bits", cfg_bits(cases[i].fmt, cases[i].bits, 0, GIB), NULL, cases[i].want);
    if (cases[i].want != AXALLOC_OK) continue;
    uint64_t top = 1ull << cases[i].bits;
    expect_create("last page below 2^gpa_bits", cfg_bits(cases[i].fmt, cases[i].bits, top - PAGE, PAGE), NULL,
                  AXALLOC_OK);
    expect_create("whole 2^gpa_bits", cfg_bits(cases[i].fmt, cases[i].bits, 0, top), NULL, AXALLOC_OK);
    expect_create("one page past 2^gpa_bits", cfg_bits(cases[i].fmt, cases[i].bits, 0, top + PAGE), NULL,
                  AXALLOC_ERR_INVALID);
  }
  /* the defaults: EPT/NPT 48, Arm 40, RISC-V the mode's width */
  expect_create("EPT default 48", cfg_bits(AXALLOC_FORMAT_X86_EPT, 0, GPA_LIMIT - PAGE, PAGE), NULL, AXALLOC_OK);
  expect_create("EPT default is not 57", cfg_bits(AXALLOC_FORMAT_X86_EPT, 0, GPA_LIMIT, PAGE), NULL,
                AXALLOC_ERR_INVALID);
  expect_create("Arm default 40", cfg_bits(AXALLOC_FORMAT_ARM_S2, 0, (1ull << 40) - PAGE, PAGE), NULL, AXALLOC_OK);
  expect_create("Arm default is not 41", cfg_bits(AXALLOC_FORMAT_ARM_S2, 0, 1ull << 40, PAGE), NULL,
                AXALLOC_ERR_INVALID);
  expect_create("Sv39x4 default 41", cfg_bits(AXALLOC_FORMAT_RISCV_SV39X4, 0, (1ull << 41) - PAGE, PAGE), NULL,
                AXALLOC_OK);
}

static void create_rejects_nonzero_reserved2(void) {
  FOR_ALL_FORMATS(fmt) {
    axalloc_config_t c = cfg_of(fmt, 0, 0, GIB);
    c.reserved2 = 1;
    expect_create("reserved2", c, NULL, AXALLOC_ERR_INVALID);
  }
}

/* A multi-page root (Arm concatenated, RISC-V x4) needs alloc_contig:
 * UNSUPPORTED without it, nothing held; single-page roots do not. */
static void multi_page_root_needs_alloc_contig(void) {
  expect_create("Arm 40 bits: 2 root pages", cfg_bits(AXALLOC_FORMAT_ARM_S2, 40, 0, GIB), no_contig,
                AXALLOC_ERR_UNSUPPORTED);
  expect_create("Arm 32 bits: 4 root pages", cfg_bits(AXALLOC_FORMAT_ARM_S2, 32, 0, GIB), no_contig,
                AXALLOC_ERR_UNSUPPORTED);
  expect_create("Sv39x4", cfg_bits(AXALLOC_FORMAT_RISCV_SV39X4, 0, 0, GIB), no_contig, AXALLOC_ERR_UNSUPPORTED);
  expect_create("Sv57x4", cfg_bits(AXALLOC_FORMAT_RISCV_SV57X4, 0, 0, GIB), no_contig, AXALLOC_ERR_UNSUPPORTED);
  expect_create("Arm 39 bits: 1 root page", cfg_bits(AXALLOC_FORMAT_ARM_S2, 39, 0, GIB), no_contig, AXALLOC_OK);
  expect_create("Arm 44 bits: 1 root page", cfg_bits(AXALLOC_FORMAT_ARM_S2, 44, 0, GIB), no_contig, AXALLOC_OK);
  expect_create("EPT 57", cfg_bits(AXALLOC_FORMAT_X86_EPT, 57, 0, GIB), no_contig, AXALLOC_OK);
  /* alloc_contig failing is NO_MEMORY, nothing held */
  expect_create("alloc_contig fails", cfg_bits(AXALLOC_FORMAT_ARM_S2, 42, 0, GIB), both_contig,
                AXALLOC_ERR_NO_MEMORY);
}

/* axalloc_as_hw per format and gpa_bits: root, root pages, levels, the root
 * pointer (EPTP / nCR3 / VTTBR_EL2 / hgatp) and VTCR_EL2 (Arm). The root
 * comes from alloc_contig aligned to its size, is counted in table_frames
 * and is freed whole. */
static void as_hw_per_format(void) {
  struct {
    uint32_t fmt, bits, pages, levels;
    uint64_t ptr_low, vtcr; /* root_pointer minus the root's address bits */
  } cases[] = {
      {AXALLOC_FORMAT_X86_EPT, 0, 1, 4, 0x5e, 0}, /* A/D enable (bit 6) */
      {AXALLOC_FORMAT_X86_EPT, 57, 1, 5, 0x66, 0},
      {AXALLOC_FORMAT_X86_NPT, 0, 1, 4, 0, 0},
      {AXALLOC_FORMAT_X86_NPT, 57, 1, 5, 0, 0},
      /* VTCR_EL2: T0SZ = 64 - bits, SL0 = levels - 2, IRGN0 = ORGN0 = 01,
       * SH0 = 11, TG0 = 00 */
      {AXALLOC_FORMAT_ARM_S2, 32, 4, 2, 0, 0x3520},
      {AXALLOC_FORMAT_ARM_S2, 34, 16, 2, 0, 0x351e},
      {AXALLOC_FORMAT_ARM_S2, 39, 1, 3, 0, 0x3559},
      {AXALLOC_FORMAT_ARM_S2, 40, 2, 3, 0, 0x3558},
      {AXALLOC_FORMAT_ARM_S2, 42, 8, 3, 0, 0x3556},
      {AXALLOC_FORMAT_ARM_S2, 44, 1, 4, 0, 0x3594},
      {AXALLOC_FORMAT_ARM_S2, 48, 1, 4, 0, 0x3590},
      /* hgatp: MODE 8 / 9 / 10 at 63:60, PPN in 43:0 */
      {AXALLOC_FORMAT_RISCV_SV39X4, 0, 4, 3, 8ull << 60, 0},
      {AXALLOC_FORMAT_RISCV_SV48X4, 0, 4, 4, 9ull << 60, 0},
      {AXALLOC_FORMAT_RISCV_SV57X4, 0, 4, 5, 10ull << 60, 0},
  };
  for (size_t i = 0; i < N_ELEMS(cases); i++) {
    th_pool_t *p = th_pool_new(64, 0x40000000ull, false);
    axalloc_hooks_t h = th_hooks(p);
    axalloc_config_t c = cfg_bits(cases[i].fmt, cases[i].bits, 0, GIB);
    axalloc_as_t *as = NULL;
    CHECK_STATUS(axalloc_as_create(&c, &h, &as), AXALLOC_OK);
    if (!as) continue;
    th_attach(p, as, cases[i].fmt);
    axalloc_hw_t hw;
    memset(&hw, 0xa5, sizeof hw);
    CHECK_STATUS(axalloc_as_hw(as, &hw), AXALLOC_OK);
    uint64_t root = axalloc_as_root(as);
    CHECK_EQ_U64(hw.root, root);
    CHECK_EQ_U64(hw.root_pages, cases[i].pages);
    CHECK_EQ_U64(hw.levels, cases[i].levels);
    CHECK_EQ_U64(hw.vtcr, cases[i].vtcr);
    CHECK_EQ_U64(root % (PAGE * cases[i].pages), 0); /* aligned to its size */
    uint64_t ptr = is_riscv_fmt(cases[i].fmt) ? root >> 12 : root;
    CHECK_EQ_U64(hw.root_pointer, ptr | cases[i].ptr_low);
    axalloc_stats_t s;
    CHECK_STATUS(axalloc_as_stats(as, &s), AXALLOC_OK);
    CHECK_EQ_U64(s.table_frames, cases[i].pages);
    CHECK_EQ_U64(th_in_use(p), 1 + cases[i].pages); /* + the object's frame */
    /* the root is all empty entries: nothing maps */
    CHECK_STATUS(axalloc_translate(as, 0, NULL, NULL), AXALLOC_ERR_NOT_MAPPED);
    th_check_reachability(p, false);
    axalloc_as_destroy(as);
    th_mark_destroyed(p);
    CHECK_EQ_U64(th_in_use(p), 0);
    CHECK_EQ_U64(th_frees(p), th_allocs(p));
    CHECK_EQ_U64(th_errors(p), 0);
    th_pool_free(p);
  }
}

/* A config of 0.2.0's size (ending before gpa_bits) is accepted and means
 * gpa_bits = 0: the format's default. */
static void config_of_0_2_0_size_means_default_gpa_bits(void) {
  FOR_ALL_FORMATS(fmt) {
    th_pool_t *p = th_pool_new(64, 0x40000000ull, false);
    axalloc_hooks_t h = th_hooks(p);
    axalloc_config_t c = cfg_bits(fmt, 57, 0, GIB); /* past the old end: must not be read */
    c.reserved2 = 7;
    c.struct_size = offsetof(axalloc_config_t, gpa_bits);
    axalloc_as_t *as = NULL;
    CHECK_STATUS(axalloc_as_create(&c, &h, &as), AXALLOC_OK);
    if (as) {
      axalloc_hw_t hw;
      CHECK_STATUS(axalloc_as_hw(as, &hw), AXALLOC_OK);
      axalloc_config_t d = cfg_bits(fmt, 0, 0, GIB);
      axalloc_as_t *as2 = NULL;
      CHECK_STATUS(axalloc_as_create(&d, &h, &as2), AXALLOC_OK);
      axalloc_hw_t hw2;
      CHECK_STATUS(axalloc_as_hw(as2, &hw2), AXALLOC_OK);
      CHECK_EQ_U64(hw.levels, hw2.levels);
      CHECK_EQ_U64(hw.root_pages, hw2.root_pages);
      CHECK_EQ_U64(hw.vtcr, hw2.vtcr);
      axalloc_as_destroy(as2);
      axalloc_as_destroy(as);
    }
    CHECK_EQ_U64(th_in_use(p), 0);
    th_pool_free(p);
  }
}

/* AXALLOC_CFG_RISCV_SVPBMT: accepted for the RISC-V formats, INVALID for
 * the others. */
static void svpbmt_only_for_riscv(void) {
  FOR_ALL_FORMATS(fmt) {
    axalloc_status_t want = is_riscv_fmt(fmt) ? AXALLOC_OK : AXALLOC_ERR_INVALID;
    expect_create("svpbmt", cfg_of(fmt, AXALLOC_CFG_RISCV_SVPBMT, 0, GIB), NULL, want);
  }
}

/* AXALLOC_CFG_ARM_S2FWB: accepted for Arm stage 2, INVALID for the others. */
static void s2fwb_only_for_arm(void) {
  FOR_ALL_FORMATS(fmt) {
    axalloc_status_t want = fmt == AXALLOC_FORMAT_ARM_S2 ? AXALLOC_OK : AXALLOC_ERR_INVALID;
    expect_create("s2fwb", cfg_of(fmt, AXALLOC_CFG_ARM_S2FWB, 0, GIB), NULL, want);
  }
}

static void as_hw_rejects_null(void) {
  axalloc_hw_t hw;
  CHECK_STATUS(axalloc_as_hw(NULL, &hw), AXALLOC_ERR_INVALID);
  th_fx_t f = th_fx_new(AXALLOC_FORMAT_X86_EPT, 0, 0, GIB, 16);
  CHECK_STATUS(axalloc_as_hw(f.as, NULL), AXALLOC_ERR_INVALID);
  CHECK(th_fx_done(&f) == 0);
}

TEST_MAIN(T(create_rejects_unknown_format), T(create_rejects_unknown_cfg_bits), T(create_rejects_unaligned_window),
          T(create_rejects_empty_window), T(create_rejects_overflowing_window),
          T(create_rejects_window_beyond_48_bits), T(create_rejects_null_arguments),
          T(create_requires_alloc_free_p2v_hooks), T(create_requires_free_contig_iff_alloc_contig),
          T(create_no_memory_at_every_allocation_point), T(as_root_nonzero_and_constant), T(status_str_never_null),
          T(null_as_is_harmless), T(create_then_destroy_returns_every_frame), T(create_gpa_bits_per_format),
          T(create_rejects_nonzero_reserved2), T(multi_page_root_needs_alloc_contig), T(as_hw_per_format),
          T(config_of_0_2_0_size_means_default_gpa_bits), T(svpbmt_only_for_riscv), T(s2fwb_only_for_arm),
          T(as_hw_rejects_null))
