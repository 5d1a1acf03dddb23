/*
 * Every function's documented status list against reality: each entry point
 * is called with every class of bad input (NULL pointers, bad flags from
 * every value space, unaligned, wrapping, outside the window, zero size,
 * unknown format, bad struct_size, ...) and good input around it, and each
 * answer must be in that function's list below — never AXALLOC_ERR_INTERNAL,
 * which no input may cause.
 *
 * The lists mirror the "Returns:" sections of include/axalloc.h.
 * `test_status_sweep lists` prints them, and the status_docs_match test
 * (status_docs.cmake) checks that each function's comment in the header
 * names every status of its list, and that every function returning
 * axalloc_status_t has a list here: docs, lists and reality cannot drift.
 */
#include <stdarg.h>
#include <stddef.h>

#include "sem.h"

#define RW (AXALLOC_READ | AXALLOC_WRITE)
#define END 1 /* not a status */
#define N_ARR(a) (sizeof(a) / sizeof((a)[0]))

typedef struct status_list {
  const char *fn;
  axalloc_status_t st[12];
} status_list_t;

static const status_list_t lists[] = {
    {"axalloc_as_create",
     {AXALLOC_OK, AXALLOC_ERR_INVALID, AXALLOC_ERR_UNSUPPORTED, AXALLOC_ERR_NO_MEMORY, AXALLOC_ERR_HOOK, END}},
    {"axalloc_as_stats", {AXALLOC_OK, AXALLOC_ERR_INVALID, END}},
    {"axalloc_as_hw", {AXALLOC_OK, AXALLOC_ERR_INVALID, END}},
    {"axalloc_reserve",
     {AXALLOC_OK, AXALLOC_ERR_INVALID, AXALLOC_ERR_NO_MEMORY, AXALLOC_ERR_HOOK, AXALLOC_ERR_INTERNAL, END}},
    {"axalloc_map_alloc",
     {AXALLOC_OK, AXALLOC_ERR_INVALID, AXALLOC_ERR_EXISTS, AXALLOC_ERR_BUSY, AXALLOC_ERR_LIMIT,
      AXALLOC_ERR_NO_MEMORY, AXALLOC_ERR_HOOK, AXALLOC_ERR_INTERNAL, END}},
    {"axalloc_map_linear",
     {AXALLOC_OK, AXALLOC_ERR_INVALID, AXALLOC_ERR_EXISTS, AXALLOC_ERR_BUSY, AXALLOC_ERR_LIMIT,
      AXALLOC_ERR_NO_MEMORY, AXALLOC_ERR_HOOK, AXALLOC_ERR_INTERNAL, END}},
    {"axalloc_unmap",
     {AXALLOC_OK, AXALLOC_ERR_INVALID, AXALLOC_ERR_BUSY, AXALLOC_ERR_LIMIT, AXALLOC_ERR_NO_MEMORY,
      AXALLOC_ERR_HOOK, AXALLOC_ERR_INTERNAL, END}},
    {"axalloc_handle_fault",
     {AXALLOC_OK, AXALLOC_ERR_INVALID, AXALLOC_ERR_NOT_MAPPED, AXALLOC_ERR_ACCESS, AXALLOC_ERR_NO_MEMORY,
      AXALLOC_ERR_HOOK, AXALLOC_ERR_INTERNAL, END}},
    {"axalloc_translate",
     {AXALLOC_OK, AXALLOC_ERR_INVALID, AXALLOC_ERR_NOT_MAPPED, AXALLOC_ERR_HOOK, AXALLOC_ERR_INTERNAL, END}},
    {"axalloc_translate_many", {AXALLOC_OK, AXALLOC_ERR_INVALID, AXALLOC_ERR_HOOK, AXALLOC_ERR_INTERNAL, END}},
    {"axalloc_read",
     {AXALLOC_OK, AXALLOC_ERR_INVALID, AXALLOC_ERR_NOT_MAPPED, AXALLOC_ERR_ACCESS, AXALLOC_ERR_HOOK,
      AXALLOC_ERR_INTERNAL, END}},
    {"axalloc_write",
     {AXALLOC_OK, AXALLOC_ERR_INVALID, AXALLOC_ERR_NOT_MAPPED, AXALLOC_ERR_ACCESS, AXALLOC_ERR_NO_MEMORY,
      AXALLOC_ERR_BUSY, AXALLOC_ERR_HOOK, AXALLOC_ERR_INTERNAL, END}},
    {"axalloc_prefault",
     {AXALLOC_OK, AXALLOC_ERR_INVALID, AXALLOC_ERR_NOT_MAPPED, AXALLOC_ERR_BUSY, AXALLOC_ERR_NO_MEMORY,
      AXALLOC_ERR_HOOK, AXALLOC_ERR_INTERNAL, END}},
    {"axalloc_discard",
     {AXALLOC_OK, AXALLOC_ERR_INVALID, AXALLOC_ERR_NOT_MAPPED, AXALLOC_ERR_BUSY, AXALLOC_ERR_HOOK,
      AXALLOC_ERR_INTERNAL, END}},
    {"axalloc_protect",
     {AXALLOC_OK, AXALLOC_ERR_INVALID, AXALLOC_ERR_NOT_MAPPED, AXALLOC_ERR_BUSY, AXALLOC_ERR_NO_MEMORY,
      AXALLOC_ERR_HOOK, AXALLOC_ERR_INTERNAL, END}},
    {"axalloc_dirty_log_start",
     {AXALLOC_OK, AXALLOC_ERR_INVALID, AXALLOC_ERR_NOT_MAPPED, AXALLOC_ERR_EXISTS, AXALLOC_ERR_LIMIT,
      AXALLOC_ERR_BUSY, AXALLOC_ERR_NO_MEMORY, AXALLOC_ERR_HOOK, AXALLOC_ERR_INTERNAL, END}},
    {"axalloc_dirty_log_stop",
     {AXALLOC_OK, AXALLOC_ERR_INVALID, AXALLOC_ERR_BUSY, AXALLOC_ERR_HOOK, AXALLOC_ERR_INTERNAL, END}},
    {"axalloc_dirty_log_get", {AXALLOC_OK, AXALLOC_ERR_INVALID, AXALLOC_ERR_HOOK, AXALLOC_ERR_INTERNAL, END}},
    {"axalloc_young_get",
     {AXALLOC_OK, AXALLOC_ERR_INVALID, AXALLOC_ERR_NOT_MAPPED, AXALLOC_ERR_HOOK, AXALLOC_ERR_INTERNAL, END}},
    {"axalloc_present_bitmap", {AXALLOC_OK, AXALLOC_ERR_INVALID, AXALLOC_ERR_HOOK, AXALLOC_ERR_INTERNAL, END}},
    {"axalloc_query", {AXALLOC_OK, AXALLOC_ERR_INVALID, AXALLOC_ERR_HOOK, AXALLOC_ERR_INTERNAL, END}},
    {"axalloc_region_next",
     {AXALLOC_OK, AXALLOC_ERR_INVALID, AXALLOC_ERR_NOT_MAPPED, AXALLOC_ERR_HOOK, AXALLOC_ERR_INTERNAL, END}},
};

static long calls;

static void other_free_contig(void *ctx, uint64_t hpa, uint32_t order) {
  (void)ctx;
  (void)hpa;
  (void)order;
}

static const status_list_t *list_of(const char *fn) {
  for (size_t i = 0; i < N_ARR(lists); i++)
    if (strcmp(lists[i].fn, fn) == 0) return &lists[i];
  fprintf(stderr, "no status list for %s\n", fn);
  abort();
}

/* `st` must be in fn's list, and no bad input may cause INTERNAL. */
#define EXPECT_LISTED(fn, call, ...) expect_listed_(#fn, (call), __FILE__, __LINE__, __VA_ARGS__)
static axalloc_status_t expect_listed_(const char *fn, axalloc_status_t st, const char *file, int line,
                                       const char *fmt, ...) {
  const status_list_t *l = list_of(fn);
  bool in = false;
  calls++;
  for (size_t i = 0; l->st[i] != END; i++) in |= l->st[i] == st;
  if (!in || st == AXALLOC_ERR_INTERNAL) {
    va_list ap;
    fprintf(stderr, "%s:%d: %s(", file, line, fn);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, ") = %s: %s\n", axalloc_status_str(st), in ? "INTERNAL from bad input" : "not in its list");
    check_failures++;
  }
  return st;
}

static const uint64_t gpas[] = {0,        1,         PAGE - 1,      PAGE,  2 * MIB,          GIB - PAGE,
                                GIB,      2 * GIB,   2 * GIB + 12,  3 * GIB, 4 * GIB,       4 * GIB - PAGE,
                                GPA_LIMIT, HPA_LIMIT, ~0ull - PAGE + 1, ~0ull};
static const uint64_t sizes[] = {0, 1, PAGE, PAGE + 1, 2 * MIB, GIB, 4 * GIB, ~0ull - PAGE + 1, ~0ull};
static const uint32_t flag_values[] = {0,
                                       AXALLOC_READ,
                                       RW,
                                       AXALLOC_EXEC,
                                       RW | AXALLOC_EXEC | AXALLOC_DEVICE,
                                       AXALLOC_READ | AXALLOC_CFG_FRAMES_ZEROED,
                                       AXALLOC_CFG_NO_HUGE_1G,
                                       AXALLOC_CFG_LINEAR_MAP,
                                       AXALLOC_READ | (1u << 4),
                                       AXALLOC_READ | (1u << 16),
                                       1u << 31,
                                       ~0u};
static const uint64_t hpas[] = {0, 1, PAGE, 1ull << 32, HPA_LIMIT - PAGE, HPA_LIMIT, ~0ull};

/* A live space over [0, 4 GiB) with a lazy region, a populated one and a
 * DEVICE linear one, so that EXISTS / ACCESS / present pages occur. */
static th_fx_t fixture(uint32_t fmt) {
  th_fx_t f = th_fx_new(fmt, 0, 0, 4 * GIB, 4096);
  CHECK_STATUS(axalloc_map_alloc(f.as, 2 * GIB, 2 * MIB, RW, false), AXALLOC_OK);
  CHECK_STATUS(axalloc_map_alloc(f.as, 2 * GIB + 2 * MIB, 4 * PAGE, AXALLOC_READ, true), AXALLOC_OK);
  CHECK_STATUS(axalloc_map_linear(f.as, 3 * GIB, 1ull << 32, 2 * MIB, RW | AXALLOC_DEVICE), AXALLOC_OK);
  th_scan(f.pool);
  th_check_reachability(f.pool, false); /* a sweep, not a flush audit */
  return f;
}

static void sweep_create(void) {
  FOR_EACH_FORMAT(fmt) {
    th_pool_t *p = th_pool_new(64, 0x40000000ull, false);
    const axalloc_hooks_t good_h = th_hooks(p);
    const axalloc_config_t good = {.struct_size = sizeof good, .format = fmt, .size = GIB};
    struct {
      axalloc_config_t c;
      uint64_t more[2];
    } big;
    uint32_t formats[] = {0, 7, AXALLOC_READ | AXALLOC_CFG_NO_HUGE_1G, AXALLOC_CFG_NO_HUGE_1G, ~0u};
    uint32_t struct_sizes[] = {0, 4, sizeof good - 1, sizeof good + 16, 4097, ~0u};
    uint64_t windows[][2] = {{0, 0}, {1, GIB}, {0, GIB + 1}, {~0ull - PAGE + 1, 2 * PAGE}, {0, GPA_LIMIT + PAGE},
                             {GPA_LIMIT, PAGE}, {0, GPA_LIMIT}};
    for (int k = 0; k < 40; k++) {
      axalloc_config_t c = good;
      axalloc_hooks_t h = good_h;
      const void *cp = &c, *hp = &h;
      axalloc_as_t *as = NULL, **asp = &as;
      if (k < 5) c.format = formats[k];
      else if (k < 5 + (int)N_ARR(flag_values)) {
        c.flags = flag_values[k - 5];
        /* LINEAR_MAP with offset 0 is valid input (the host says hva == hpa);
         * this pool is not mapped that way */
        if (c.flags == AXALLOC_CFG_LINEAR_MAP) c.linear_offset = 8;
      }
      else if (k < 17 + (int)N_ARR(struct_sizes)) {
        memset(&big, 0, sizeof big);
        big.c = good;
        big.more[1] = k & 1; /* a non-zero tail for odd k */
        big.c.struct_size = struct_sizes[k - 17];
        cp = &big;
      } else if (k < 23 + (int)N_ARR(windows)) {
        c.base = windows[k - 23][0];
        c.size = windows[k - 23][1];
      } else
        switch (k) {
          case 30: cp = NULL; break;
          case 31: hp = NULL; break;
          case 32: asp = NULL; break;
          case 33: h.alloc_frame = NULL; break;
          case 34: h.phys_to_virt = NULL; break;
          case 35: h.alloc_contig = NULL, h.free_contig = other_free_contig; break; /* without alloc_contig */
          case 36: c.reserved = 1; break;
          case 37: h.reserved = 1; break;
          case 38: c.linear_offset = 4096; break;
          case 39: c.flags = AXALLOC_CFG_LINEAR_MAP, c.linear_offset = 8; break;
        }
      axalloc_status_t st = EXPECT_LISTED(axalloc_as_create, axalloc_as_create(cp, hp, asp), "case %d", k);
      if (st == AXALLOC_OK && as) {
        th_check_reachability(p, false);
        axalloc_as_destroy(as);
      }
      CHECK_EQ_U64(th_in_use(p), 0);
    }
    /* no frame at all */
    th_fail_after(p, 0);
    EXPECT_LISTED(axalloc_as_create, axalloc_as_create(&good, &good_h, &(axalloc_as_t *){NULL}), "no memory");
    th_fail_never(p);
    CHECK_EQ_U64(th_errors(p), 0);
    th_pool_free(p);
  }
}

static void sweep_stats_reserve(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = fixture(fmt);
    axalloc_stats_t s;
    EXPECT_LISTED(axalloc_as_stats, axalloc_as_stats(NULL, &s), "NULL as");
    EXPECT_LISTED(axalloc_as_stats, axalloc_as_stats(f.as, NULL), "NULL out");
    EXPECT_LISTED(axalloc_as_stats, axalloc_as_stats(f.as, &s), "good");
    axalloc_hw_t hw;
    EXPECT_LISTED(axalloc_as_hw, axalloc_as_hw(NULL, &hw), "NULL as");
    EXPECT_LISTED(axalloc_as_hw, axalloc_as_hw(f.as, NULL), "NULL out");
    EXPECT_LISTED(axalloc_as_hw, axalloc_as_hw(f.as, &hw), "good");
    uint64_t counts[] = {0, 1, 16, 1ull << 20, ~0ull, 0};
    EXPECT_LISTED(axalloc_reserve, axalloc_reserve(NULL, 1), "NULL as");
    for (size_t i = 0; i < N_ARR(counts); i++)
      EXPECT_LISTED(axalloc_reserve, axalloc_reserve(f.as, counts[i]), "%llu", (unsigned long long)counts[i]);
    CHECK(fx_done(&f) == 0);
  }
}

static void sweep_map_unmap(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = fixture(fmt);
    EXPECT_LISTED(axalloc_map_alloc, axalloc_map_alloc(NULL, 0, PAGE, RW, false), "NULL as");
    EXPECT_LISTED(axalloc_map_linear, axalloc_map_linear(NULL, 0, 0, PAGE, RW), "NULL as");
    EXPECT_LISTED(axalloc_unmap, axalloc_unmap(NULL, 0, PAGE), "NULL as");
    for (size_t g = 0; g < N_ARR(gpas); g++)
      for (size_t z = 0; z < N_ARR(sizes); z++) {
        const uint64_t gpa = gpas[g], size = sizes[z];
        for (size_t fl = 0; fl < N_ARR(flag_values); fl++) {
          const uint32_t flags = flag_values[fl];
          for (int populate = 0; populate < 2; populate++) {
            if (populate && size > 2 * MIB && size < ~0ull - PAGE) continue; /* slow, not a class of its own */
            axalloc_status_t st = EXPECT_LISTED(axalloc_map_alloc, axalloc_map_alloc(f.as, gpa, size, flags, populate),
                                                "%#llx, %#llx, %#x, %d", (unsigned long long)gpa,
                                                (unsigned long long)size, flags, populate);
            if (st == AXALLOC_OK) CHECK_STATUS(axalloc_unmap(f.as, gpa, size), AXALLOC_OK);
          }
          for (size_t h = 0; h < N_ARR(hpas); h++) {
            axalloc_status_t st = EXPECT_LISTED(axalloc_map_linear, axalloc_map_linear(f.as, gpa, hpas[h], size, flags),
                                                "%#llx, %#llx, %#llx, %#x", (unsigned long long)gpa,
                                                (unsigned long long)hpas[h], (unsigned long long)size, flags);
            if (st == AXALLOC_OK) CHECK_STATUS(axalloc_unmap(f.as, gpa, size), AXALLOC_OK);
          }
        }
      }
    /* unmap: every range class, on a fresh fixture each time it succeeds */
    for (size_t g = 0; g < N_ARR(gpas); g++)
      for (size_t z = 0; z < N_ARR(sizes); z++) {
        axalloc_status_t st = EXPECT_LISTED(axalloc_unmap, axalloc_unmap(f.as, gpas[g], sizes[z]), "%#llx, %#llx",
                                            (unsigned long long)gpas[g], (unsigned long long)sizes[z]);
        if (st == AXALLOC_OK) {
          CHECK(fx_done(&f) == 0);
          f = fixture(fmt);
        }
      }
    /* no frames: map and splitting unmap */
    th_fail_after(f.pool, 0);
    EXPECT_LISTED(axalloc_map_alloc, axalloc_map_alloc(f.as, 0, 4 * PAGE, RW, true), "no memory");
    EXPECT_LISTED(axalloc_map_linear, axalloc_map_linear(f.as, 0, 0, 4 * PAGE, RW), "no memory");
    EXPECT_LISTED(axalloc_unmap, axalloc_unmap(f.as, 3 * GIB + PAGE, PAGE), "no memory");
    th_fail_never(f.pool);
    CHECK(fx_done(&f) == 0);
  }
  CHECK(calls > 10000);
}

static void sweep_fault_translate_query(void) {
  const uint32_t accesses[] = {0,
                               AXALLOC_READ,
                               AXALLOC_WRITE,
                               AXALLOC_EXEC,
                               AXALLOC_READ | AXALLOC_WRITE | AXALLOC_EXEC,
                               AXALLOC_DEVICE,
                               AXALLOC_READ | AXALLOC_DEVICE,
                               1u << 4,
                               AXALLOC_CFG_FRAMES_ZEROED,
                               AXALLOC_FORMAT_X86_NPT,
                               ~0u};
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = fixture(fmt);
    uint64_t hpa, ps, out[4], psz[4];
    axalloc_mapping_t m;
    EXPECT_LISTED(axalloc_handle_fault, axalloc_handle_fault(NULL, 0, AXALLOC_READ), "NULL as");
    EXPECT_LISTED(axalloc_translate, axalloc_translate(NULL, 0, &hpa, &ps), "NULL as");
    EXPECT_LISTED(axalloc_query, axalloc_query(NULL, 0, &m), "NULL as");
    EXPECT_LISTED(axalloc_region_next, axalloc_region_next(NULL, 0, &m), "NULL as");
    for (size_t g = 0; g < N_ARR(gpas); g++) {
      const uint64_t gpa = gpas[g];
      for (size_t a = 0; a < N_ARR(accesses); a++)
        EXPECT_LISTED(axalloc_handle_fault, axalloc_handle_fault(f.as, gpa, accesses[a]), "%#llx, %#x",
                      (unsigned long long)gpa, accesses[a]);
      EXPECT_LISTED(axalloc_translate, axalloc_translate(f.as, gpa, &hpa, &ps), "%#llx", (unsigned long long)gpa);
      EXPECT_LISTED(axalloc_translate, axalloc_translate(f.as, gpa, NULL, NULL), "%#llx, NULL", (unsigned long long)gpa);
      EXPECT_LISTED(axalloc_query, axalloc_query(f.as, gpa, &m), "%#llx", (unsigned long long)gpa);
      EXPECT_LISTED(axalloc_query, axalloc_query(f.as, gpa, NULL), "%#llx, NULL", (unsigned long long)gpa);
      EXPECT_LISTED(axalloc_region_next, axalloc_region_next(f.as, gpa, &m), "%#llx", (unsigned long long)gpa);
      EXPECT_LISTED(axalloc_region_next, axalloc_region_next(f.as, gpa, NULL), "%#llx, NULL",
                    (unsigned long long)gpa);
    }
    /* translate_many: NULL arrays, n 0, huge n, every address class */
    const size_t ns[] = {0, 1, 4, SIZE_MAX, SIZE_MAX / 8};
    EXPECT_LISTED(axalloc_translate_many, axalloc_translate_many(NULL, gpas, out, psz, 1), "NULL as");
    for (size_t i = 0; i < N_ARR(ns); i++) {
      const size_t n = ns[i];
      if (n <= 4) {
        EXPECT_LISTED(axalloc_translate_many, axalloc_translate_many(f.as, gpas, out, psz, n), "n=%zu", n);
        EXPECT_LISTED(axalloc_translate_many, axalloc_translate_many(f.as, gpas + 8, out, NULL, n), "n=%zu", n);
      }
      EXPECT_LISTED(axalloc_translate_many, axalloc_translate_many(f.as, NULL, out, psz, n), "NULL gpas n=%zu", n);
      EXPECT_LISTED(axalloc_translate_many, axalloc_translate_many(f.as, gpas, NULL, psz, n), "NULL hpas n=%zu", n);
    }
    /* no frame for a lazy page */
    th_fail_after(f.pool, 0);
    EXPECT_LISTED(axalloc_handle_fault, axalloc_handle_fault(f.as, 2 * GIB + PAGE, AXALLOC_WRITE), "no memory");
    th_fail_never(f.pool);
    CHECK(fx_done(&f) == 0);
  }
}

static void sweep_read_write(void) {
  static unsigned char buf[2 * PAGE];
  const size_t lens[] = {0, 1, 8, PAGE, 2 * PAGE};
  const size_t huge[] = {SIZE_MAX, (size_t)1 << 63, ((size_t)1 << 63) + 1};
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = fixture(fmt);
    EXPECT_LISTED(axalloc_read, axalloc_read(NULL, 0, buf, 8), "NULL as");
    EXPECT_LISTED(axalloc_write, axalloc_write(NULL, 0, buf, 8), "NULL as");
    for (size_t g = 0; g < N_ARR(gpas); g++) {
      const uint64_t gpa = gpas[g];
      for (size_t l = 0; l < N_ARR(lens); l++) {
        EXPECT_LISTED(axalloc_read, axalloc_read(f.as, gpa, buf, lens[l]), "%#llx, %zu", (unsigned long long)gpa,
                      lens[l]);
        EXPECT_LISTED(axalloc_write, axalloc_write(f.as, gpa, buf, lens[l]), "%#llx, %zu", (unsigned long long)gpa,
                      lens[l]);
        EXPECT_LISTED(axalloc_read, axalloc_read(f.as, gpa, NULL, lens[l]), "%#llx, NULL, %zu",
                      (unsigned long long)gpa, lens[l]);
        EXPECT_LISTED(axalloc_write, axalloc_write(f.as, gpa, NULL, lens[l]), "%#llx, NULL, %zu",
                      (unsigned long long)gpa, lens[l]);
      }
      for (size_t l = 0; l < N_ARR(huge); l++) {
        EXPECT_LISTED(axalloc_read, axalloc_read(f.as, gpa, buf, huge[l]), "%#llx, huge", (unsigned long long)gpa);
        EXPECT_LISTED(axalloc_write, axalloc_write(f.as, gpa, buf, huge[l]), "%#llx, huge",
                      (unsigned long long)gpa);
      }
    }
    th_fail_after(f.pool, 0);
    EXPECT_LISTED(axalloc_write, axalloc_write(f.as, 2 * GIB + 8 * PAGE, buf, 8), "no memory");
    th_fail_never(f.pool);
    CHECK(fx_done(&f) == 0);
  }
  CHECK(calls > 500);
}

static void sweep_prefault_discard(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = fixture(fmt);
    EXPECT_LISTED(axalloc_prefault, axalloc_prefault(NULL, 2 * GIB, PAGE), "NULL as");
    EXPECT_LISTED(axalloc_discard, axalloc_discard(NULL, 2 * GIB, PAGE), "NULL as");
    for (size_t g = 0; g < N_ARR(gpas); g++)
      for (size_t z = 0; z < N_ARR(sizes); z++) {
        const uint64_t gpa = gpas[g], size = sizes[z];
        EXPECT_LISTED(axalloc_prefault, axalloc_prefault(f.as, gpa, size), "%#llx, %#llx", (unsigned long long)gpa,
                      (unsigned long long)size);
        EXPECT_LISTED(axalloc_discard, axalloc_discard(f.as, gpa, size), "%#llx, %#llx", (unsigned long long)gpa,
                      (unsigned long long)size);
      }
    th_fail_after(f.pool, 0);
    EXPECT_LISTED(axalloc_prefault, axalloc_prefault(f.as, 2 * GIB, 2 * MIB), "no memory");
    th_fail_never(f.pool);
    CHECK(fx_done(&f) == 0);
  }
  CHECK(calls > 500);
}

static void sweep_protect(void) {
  static const uint32_t flags[] = {0, AXALLOC_READ, AXALLOC_READ | AXALLOC_WRITE, AXALLOC_READ | AXALLOC_EXEC,
                                   AXALLOC_READ | AXALLOC_WRITE | AXALLOC_EXEC, AXALLOC_WRITE, AXALLOC_EXEC,
                                   AXALLOC_DEVICE | AXALLOC_READ, 1u << 4, 1u << 31};
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = fixture(fmt);
    EXPECT_LISTED(axalloc_protect, axalloc_protect(NULL, 2 * GIB, PAGE, AXALLOC_READ), "NULL as");
    for (size_t g = 0; g < N_ARR(gpas); g++)
      for (size_t z = 0; z < N_ARR(sizes); z++)
        for (size_t k = 0; k < N_ARR(flags); k++) {
          const uint64_t gpa = gpas[g], size = sizes[z];
          EXPECT_LISTED(axalloc_protect, axalloc_protect(f.as, gpa, size, flags[k]), "%#llx, %#llx, %#x",
                        (unsigned long long)gpa, (unsigned long long)size, flags[k]);
        }
    th_fail_after(f.pool, 0);
    EXPECT_LISTED(axalloc_protect, axalloc_protect(f.as, 2 * GIB, 2 * MIB, AXALLOC_READ), "no memory");
    th_fail_never(f.pool);
    CHECK(fx_done(&f) == 0);
  }
  CHECK(calls > 500);
}

static void sweep_tracking(void) {
  static const uint32_t gflags[] = {0, AXALLOC_BITMAP_CLEAR, 1, AXALLOC_BITMAP_CLEAR | 2, ~0u};
  uint64_t *bm = calloc(1 << 16, sizeof *bm);
  CHECK(bm != NULL);
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = fixture(fmt);
    EXPECT_LISTED(axalloc_dirty_log_start, axalloc_dirty_log_start(NULL, 2 * GIB, PAGE), "NULL as");
    EXPECT_LISTED(axalloc_dirty_log_stop, axalloc_dirty_log_stop(NULL, 2 * GIB, PAGE), "NULL as");
    EXPECT_LISTED(axalloc_dirty_log_get, axalloc_dirty_log_get(NULL, 2 * GIB, PAGE, bm, 0), "NULL as");
    EXPECT_LISTED(axalloc_young_get, axalloc_young_get(NULL, 2 * GIB, PAGE, bm, 0), "NULL as");
    EXPECT_LISTED(axalloc_present_bitmap, axalloc_present_bitmap(NULL, 2 * GIB, PAGE, bm), "NULL as");
    EXPECT_LISTED(axalloc_dirty_log_get, axalloc_dirty_log_get(f.as, 2 * GIB, PAGE, NULL, 0), "NULL bitmap");
    EXPECT_LISTED(axalloc_young_get, axalloc_young_get(f.as, 2 * GIB, PAGE, NULL, 0), "NULL bitmap");
    EXPECT_LISTED(axalloc_present_bitmap, axalloc_present_bitmap(f.as, 2 * GIB, PAGE, NULL), "NULL bitmap");
    for (size_t g = 0; g < N_ARR(gpas); g++)
      for (size_t z = 0; z < N_ARR(sizes); z++) {
        const uint64_t gpa = gpas[g], size = sizes[z];
        EXPECT_LISTED(axalloc_present_bitmap, axalloc_present_bitmap(f.as, gpa, size, bm), "%#llx, %#llx",
                      (unsigned long long)gpa, (unsigned long long)size);
        for (size_t k = 0; k < N_ARR(gflags); k++) {
          EXPECT_LISTED(axalloc_young_get, axalloc_young_get(f.as, gpa, size, bm, gflags[k]), "%#llx, %#llx",
                        (unsigned long long)gpa, (unsigned long long)size);
          EXPECT_LISTED(axalloc_dirty_log_get, axalloc_dirty_log_get(f.as, gpa, size, bm, gflags[k]),
                        "%#llx, %#llx", (unsigned long long)gpa, (unsigned long long)size);
        }
        EXPECT_LISTED(axalloc_dirty_log_start, axalloc_dirty_log_start(f.as, gpa, size), "%#llx, %#llx",
                      (unsigned long long)gpa, (unsigned long long)size);
        EXPECT_LISTED(axalloc_dirty_log_get, axalloc_dirty_log_get(f.as, gpa, size, bm, AXALLOC_BITMAP_CLEAR),
                      "%#llx, %#llx", (unsigned long long)gpa, (unsigned long long)size);
        EXPECT_LISTED(axalloc_dirty_log_stop, axalloc_dirty_log_stop(f.as, gpa, size), "%#llx, %#llx",
                      (unsigned long long)gpa, (unsigned long long)size);
      }
    th_fail_after(f.pool, 0);
    EXPECT_LISTED(axalloc_dirty_log_start, axalloc_dirty_log_start(f.as, 2 * GIB, 2 * MIB), "no memory");
    th_fail_never(f.pool);
    CHECK(fx_done(&f) == 0);
  }
  free(bm);
  CHECK(calls > 500);
}

/* `test_status_sweep lists`: the lists, one function a line, for
 * status_docs.cmake. */
static int print_lists(void) {
  for (size_t i = 0; i < N_ARR(lists); i++) {
    printf("%s", lists[i].fn);
    for (size_t j = 0; lists[i].st[j] != END; j++) printf(" %s", axalloc_status_str(lists[i].st[j]));
    printf("\n");
  }
  return 0;
}

int check_failures;
int main(int argc, char **argv) {
  static const test_case_t tests[] = {T(sweep_create),      T(sweep_stats_reserve), T(sweep_map_unmap),
                                      T(sweep_fault_translate_query), T(sweep_read_write),
                                      T(sweep_prefault_discard), T(sweep_protect), T(sweep_tracking), {NULL, NULL}};
  if (argc == 2 && strcmp(argv[1], "lists") == 0) return print_lists();
  return run_tests(tests, argc, argv);
}
