/* axalloc_read / axalloc_write: the "read / write" bullet.
 *
 * Linear regions here map host memory that phys_to_virt can reach: the
 * fixture (xfx_new in sem.h) serves a second buffer at XBASE next to the
 * frame pool, so bytes copied through a linear region are checked where they
 * must land, independently of the library. */
#include "sem.h"

#define RW (AXALLOC_READ | AXALLOC_WRITE)
#define XBASE 0x200000000ull /* host-physical base of the linear memory */
#define XSIZE (8 * MIB)
#define XFILL 0x3c

static unsigned char pattern(uint64_t i) { return (unsigned char)(i * 131 + 7); }

/* The host byte behind guest byte gpa (pool frame or linear memory), or NULL. */
static unsigned char *host_byte(th_fx_t *f, xhost_t *x, uint64_t gpa) {
  uint64_t hpa = xlate(f, gpa, NULL);
  if (hpa == ~0ull) return NULL;
  if (hpa >= x->base && hpa - x->base < x->size) return x->mem + (hpa - x->base);
  return th_virt(f->pool, hpa);
}

static size_t count_not(const unsigned char *b, size_t n, unsigned char v) {
  size_t c = 0;
  for (size_t i = 0; i < n; i++) c += b[i] != v;
  return c;
}

/* alloc (populated) | alloc (lazy) | linear, adjacent: one write and one read
 * over all three, at unaligned offsets; every byte lands where the table
 * says. */
static void copy_crosses_pages_and_regions(void) {
  FOR_EACH_FORMAT(fmt) {
    xhost_t x;
    th_fx_t f = xfx_new(&x, fmt, 0, 0, 8 * GIB, 1024, XBASE, XSIZE, XFILL);
    const uint64_t a = MIB, b = MIB + 3 * PAGE, c = MIB + 6 * PAGE;
    CHECK_STATUS(axalloc_map_alloc(f.as, a, 3 * PAGE, AXALLOC_READ, true), AXALLOC_OK); /* read-only to the guest */
    CHECK_STATUS(axalloc_map_alloc(f.as, b, 3 * PAGE, RW, false), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_linear(f.as, c, XBASE + 2 * PAGE, 4 * PAGE, RW | AXALLOC_EXEC), AXALLOC_OK);
    th_scan(f.pool);
    const uint64_t start = a + 100;
    const size_t len = (size_t)(c + 3 * PAGE + 50 - start);
    unsigned char *buf = malloc(len), *back = malloc(len);
    CHECK(buf && back);
    for (size_t i = 0; i < len; i++) buf[i] = pattern(i);
    CHECK_STATUS(axalloc_write(f.as, start, buf, len), AXALLOC_OK);
    th_scan(f.pool);
    size_t wrong = 0;
    for (size_t i = 0; i < len; i++) {
      unsigned char *h = host_byte(&f, &x, start + i);
      if (!h || *h != buf[i]) wrong++;
    }
    CHECK_EQ_U64(wrong, 0);
    /* linear bytes landed at XBASE + 2 pages + offset, and nothing around */
    CHECK_EQ_U64(x.mem[2 * PAGE + 5], pattern(c + 5 - start));
    CHECK_EQ_U64(count_not(x.mem, 2 * PAGE, XFILL), 0);
    CHECK_EQ_U64(count_not(x.mem + 2 * PAGE + 3 * PAGE + 50, XSIZE - 5 * PAGE - 50, XFILL), 0);
    /* bytes before start in the first page stay zero (populated = zeroed) */
    unsigned char *h0 = host_byte(&f, &x, a);
    CHECK(h0 && count_not(h0, 100, 0) == 0);
    memset(back, 0xee, len);
    CHECK_STATUS(axalloc_read(f.as, start, back, len), AXALLOC_OK);
    CHECK(memcmp(back, buf, len) == 0);
    /* a read entirely inside one linear page */
    unsigned char small[16];
    CHECK_STATUS(axalloc_read(f.as, c + 3 * PAGE + 60, small, sizeof small), AXALLOC_OK);
    CHECK_EQ_U64(count_not(small, sizeof small, XFILL), 0);
    CHECK_EQ_U64(th_stats(&f).guest_frames, 6);
    free(buf);
    free(back);
    CHECK(xfx_done(&f, &x) == 0);
  }
}

/* Any byte of the range outside regions → NOT_MAPPED and nothing copied:
 * the buffer (read) and guest memory (write) unchanged, no lazy page
 * populated. */
static void copy_range_not_covered_is_not_mapped(void) {
  FOR_EACH_FORMAT(fmt) {
    xhost_t x;
    th_fx_t f = xfx_new(&x, fmt, 0, 0, 8 * GIB, 1024, XBASE, XSIZE, XFILL);
    const uint64_t a = MIB, gap = MIB + 2 * PAGE, b = MIB + 3 * PAGE, l = MIB + 5 * PAGE;
    CHECK_STATUS(axalloc_map_alloc(f.as, a, 2 * PAGE, RW, true), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_alloc(f.as, b, 2 * PAGE, RW, false), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_linear(f.as, l, XBASE, 2 * PAGE, RW), AXALLOC_OK);
    th_scan(f.pool);
    unsigned char data[2 * PAGE];
    memset(data, 0x44, sizeof data);
    CHECK_STATUS(axalloc_write(f.as, a, data, sizeof data), AXALLOC_OK);
    struct {
      uint64_t gpa;
      size_t len;
      const char *what;
    } bad[] = {
        {a + PAGE, 3 * PAGE, "across the gap"},
        {gap - 1, 2, "last byte before the gap and the first in it"},
        {gap + PAGE - 1, 2, "last byte of the gap and first of b"},
        {a - 1, 10, "one byte before a"},
        {l + 2 * PAGE - 10, 20, "past the end of the linear region"},
        {a - PAGE, 8 * PAGE, "covers everything and more"},
        {9 * GIB, 16, "outside the window"},
        {GPA_LIMIT, 16, "beyond 2^48"},
        {gap, 1, "inside the gap"},
    };
    static unsigned char buf[8 * PAGE];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
      snap_t s0 = snap_of(&f);
      memset(buf, 0x5a, sizeof buf);
      axalloc_status_t st = axalloc_read(f.as, bad[i].gpa, buf, bad[i].len);
      if (st != AXALLOC_ERR_NOT_MAPPED) {
        fprintf(stderr, "%s read %s = %s, want NOT_MAPPED\n", fmt_name(fmt), bad[i].what, axalloc_status_str(st));
        check_failures++;
      }
      CHECK_EQ_U64(count_not(buf, sizeof buf, 0x5a), 0);
      memset(buf, 0x77, sizeof buf);
      st = axalloc_write(f.as, bad[i].gpa, buf, bad[i].len);
      if (st != AXALLOC_ERR_NOT_MAPPED) {
        fprintf(stderr, "%s write %s = %s, want NOT_MAPPED\n", fmt_name(fmt), bad[i].what, axalloc_status_str(st));
        check_failures++;
      }
      CHECK_SNAP_EQ(s0, snap_of(&f), (long)i);
      CHECK_NONE_MAPPED(&f, b, 2 * PAGE);
      unsigned char back[2 * PAGE];
      CHECK_STATUS(axalloc_read(f.as, a, back, sizeof back), AXALLOC_OK);
      CHECK(memcmp(back, data, sizeof data) == 0);
      CHECK_EQ_U64(count_not(x.mem, XSIZE, XFILL), 0);
    }
    CHECK(xfx_done(&f, &x) == 0);
  }
}

/* DEVICE regions (alloc or linear) → ACCESS for read and write, nothing
 * copied, also when only part of the range is device memory. */
static void copy_device_region_is_access(void) {
  FOR_EACH_FORMAT(fmt) {
    xhost_t x;
    th_fx_t f = xfx_new(&x, fmt, 0, 0, 8 * GIB, 1024, XBASE, XSIZE, XFILL);
    const uint64_t n = MIB, dev = MIB + 2 * PAGE, ldev = MIB + 4 * PAGE;
    CHECK_STATUS(axalloc_map_alloc(f.as, n, 2 * PAGE, RW, true), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_alloc(f.as, dev, 2 * PAGE, RW | AXALLOC_DEVICE, true), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_linear(f.as, ldev, XBASE, 2 * PAGE, RW | AXALLOC_DEVICE), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_alloc(f.as, 2 * MIB, 2 * PAGE, RW | AXALLOC_DEVICE, false), AXALLOC_OK);
    th_scan(f.pool);
    struct {
      uint64_t gpa;
      size_t len;
      const char *what;
    } cases[] = {
        {dev, 16, "device alloc"},
        {ldev + 100, 16, "device linear"},
        {n + PAGE, 2 * PAGE, "normal then device"},
        {n, 6 * PAGE, "normal, device, device linear"},
        {2 * MIB + PAGE, 8, "lazy device"},
    };
    static unsigned char buf[6 * PAGE];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
      snap_t s0 = snap_of(&f);
      memset(buf, 0x5a, sizeof buf);
      axalloc_status_t st = axalloc_read(f.as, cases[i].gpa, buf, cases[i].len);
      if (st != AXALLOC_ERR_ACCESS) {
        fprintf(stderr, "%s read %s = %s, want ACCESS\n", fmt_name(fmt), cases[i].what, axalloc_status_str(st));
        check_failures++;
      }
      CHECK_EQ_U64(count_not(buf, sizeof buf, 0x5a), 0);
      st = axalloc_write(f.as, cases[i].gpa, buf, cases[i].len);
      if (st != AXALLOC_ERR_ACCESS) {
        fprintf(stderr, "%s write %s = %s, want ACCESS\n", fmt_name(fmt), cases[i].what, axalloc_status_str(st));
        check_failures++;
      }
      CHECK_SNAP_EQ(s0, snap_of(&f), (long)i);
      for (uint64_t p = n; p < n + 4 * PAGE; p += PAGE) CHECK(frame_is_zero(f.pool, xlate(&f, p, NULL)));
      CHECK_EQ_U64(count_not(x.mem, XSIZE, XFILL), 0);
      CHECK_NONE_MAPPED(&f, 2 * MIB, 2 * PAGE);
    }
    /* control: the normal region alone is fine */
    CHECK_STATUS(axalloc_write(f.as, n, buf, 2 * PAGE), AXALLOC_OK);
    CHECK(xfx_done(&f, &x) == 0);
  }
}

/* A write to never-touched lazy pages populates exactly those pages: zeroed
 * frames (the pool gives 0xA5 garbage), the data in place, the rest zero. */
static void write_populates_lazy_pages_in_range(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 8 * GIB, 1024);
    const uint64_t r = 4 * MIB;
    CHECK_STATUS(axalloc_map_alloc(f.as, r, 16 * PAGE, RW, false), AXALLOC_OK);
    unsigned char data[200];
    for (size_t i = 0; i < sizeof data; i++) data[i] = pattern(i) | 1; /* non-zero */
    const uint64_t gpa = r + 2 * PAGE + 4000; /* pages 2 and 3 */
    size_t allocs = th_allocs(f.pool);
    CHECK_STATUS(axalloc_write(f.as, gpa, data, sizeof data), AXALLOC_OK);
    th_scan(f.pool);
    axalloc_stats_t s = th_stats(&f);
    CHECK_EQ_U64(s.guest_frames, 2);
    CHECK(th_allocs(f.pool) - allocs >= 2);
    CHECK_NONE_MAPPED(&f, r, 2 * PAGE);
    CHECK_ALL_MAPPED(&f, r + 2 * PAGE, 2 * PAGE);
    CHECK_NONE_MAPPED(&f, r + 4 * PAGE, 12 * PAGE);
    const unsigned char *p2 = th_virt(f.pool, xlate(&f, r + 2 * PAGE, NULL));
    const unsigned char *p3 = th_virt(f.pool, xlate(&f, r + 3 * PAGE, NULL));
    CHECK(p2 && p3);
    if (p2 && p3) {
      CHECK_EQ_U64(count_not(p2, 4000, 0), 0);
      CHECK(memcmp(p2 + 4000, data, 96) == 0);
      CHECK(memcmp(p3, data + 96, 104) == 0);
      CHECK_EQ_U64(count_not(p3 + 104, PAGE - 104, 0), 0);
    }
    /* a second write to the same pages allocates nothing */
    allocs = th_allocs(f.pool);
    CHECK_STATUS(axalloc_write(f.as, gpa + 10, data, 50), AXALLOC_OK);
    CHECK_EQ_U64(th_allocs(f.pool), allocs);
    CHECK_EQ_U64(th_flushes(f.pool), 0);
    CHECK(fx_done(&f) == 0);
  }
}

/* Reading never-touched lazy pages yields zeros, allocates nothing, and
 * leaves them not present; present pages in the same range read their data. */
static void read_of_lazy_page_yields_zeros_without_allocating(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 8 * GIB, 1024);
    const uint64_t r = GIB - 2 * PAGE; /* crosses 1 GiB: no table there yet */
    CHECK_STATUS(axalloc_map_alloc(f.as, r, 4 * PAGE, RW, false), AXALLOC_OK);
    CHECK_STATUS(axalloc_write(f.as, r + PAGE, "abc", 3), AXALLOC_OK); /* page 1 present */
    th_scan(f.pool);
    snap_t s0 = snap_of(&f);
    size_t allocs = th_allocs(f.pool);
    static unsigned char buf[4 * PAGE];
    memset(buf, 0xee, sizeof buf);
    CHECK_STATUS(axalloc_read(f.as, r, buf, sizeof buf), AXALLOC_OK);
    CHECK_EQ_U64(th_allocs(f.pool), allocs);
    CHECK_SNAP_EQ(s0, snap_of(&f), 0);
    CHECK_EQ_U64(count_not(buf, PAGE, 0), 0);
    CHECK(memcmp(buf + PAGE, "abc", 3) == 0);
    CHECK_EQ_U64(count_not(buf + PAGE + 3, 3 * PAGE - 3, 0), 0);
    CHECK_NONE_MAPPED(&f, r, PAGE);
    CHECK_NONE_MAPPED(&f, r + 2 * PAGE, 2 * PAGE);
    CHECK(fx_done(&f) == 0);
  }
}

/* len == 0 → OK and nothing happens, whatever gpa, even with a NULL buffer. */
static void copy_len_zero_is_noop(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 8 * GIB, 1024);
    CHECK_STATUS(axalloc_map_alloc(f.as, 0, 4 * PAGE, RW, false), AXALLOC_OK);
    snap_t s0 = snap_of(&f);
    uint64_t gpas[] = {0, PAGE + 5, GIB, 9 * GIB, GPA_LIMIT, ~0ull};
    unsigned char b = 0x99;
    for (size_t i = 0; i < sizeof gpas / sizeof gpas[0]; i++) {
      CHECK_STATUS(axalloc_read(f.as, gpas[i], NULL, 0), AXALLOC_OK);
      CHECK_STATUS(axalloc_write(f.as, gpas[i], NULL, 0), AXALLOC_OK);
      CHECK_STATUS(axalloc_read(f.as, gpas[i], &b, 0), AXALLOC_OK);
      CHECK_STATUS(axalloc_write(f.as, gpas[i], &b, 0), AXALLOC_OK);
    }
    CHECK_EQ_U64(b, 0x99);
    CHECK_SNAP_EQ(s0, snap_of(&f), 0);
    CHECK_NONE_MAPPED(&f, 0, 4 * PAGE); /* a zero-length write populates nothing */
    CHECK(fx_done(&f) == 0);
  }
}

static void copy_null_buffer_is_invalid(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 8 * GIB, 1024);
    CHECK_STATUS(axalloc_map_alloc(f.as, 0, 4 * PAGE, RW, false), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_alloc(f.as, MIB, 4 * PAGE, RW, true), AXALLOC_OK);
    th_scan(f.pool);
    snap_t s0 = snap_of(&f);
    CHECK_STATUS(axalloc_read(f.as, 0, NULL, 1), AXALLOC_ERR_INVALID);
    CHECK_STATUS(axalloc_write(f.as, 0, NULL, 1), AXALLOC_ERR_INVALID);
    CHECK_STATUS(axalloc_read(f.as, MIB, NULL, PAGE), AXALLOC_ERR_INVALID);
    CHECK_STATUS(axalloc_write(f.as, MIB, NULL, PAGE), AXALLOC_ERR_INVALID);
    CHECK_STATUS(axalloc_write(f.as, 9 * GIB, NULL, 8), AXALLOC_ERR_INVALID);
    CHECK_SNAP_EQ(s0, snap_of(&f), 0);
    CHECK_NONE_MAPPED(&f, 0, 4 * PAGE);
    CHECK(fx_done(&f) == 0);
  }
}

static void copy_overflowing_range_is_invalid(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, fmt_gpa_limit(fmt), 1024);
    CHECK_STATUS(axalloc_map_alloc(f.as, 0, 4 * PAGE, RW, true), AXALLOC_OK);
    th_scan(f.pool);
    snap_t s0 = snap_of(&f);
    static unsigned char buf[2 * PAGE];
    memset(buf, 0x5a, sizeof buf);
    struct {
      uint64_t gpa;
      size_t len;
    } bad[] = {{~0ull - 10, 100}, {~0ull, 2}, {0xfffffffffffff000ull, PAGE}, {0xffffffffffffff00ull, 2 * PAGE}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
      axalloc_status_t st = axalloc_read(f.as, bad[i].gpa, buf, bad[i].len);
      if (st != AXALLOC_ERR_INVALID) {
        fprintf(stderr, "%s read(%#llx, %zu) = %s, want INVALID\n", fmt_name(fmt), (unsigned long long)bad[i].gpa,
                bad[i].len, axalloc_status_str(st));
        check_failures++;
      }
      st = axalloc_write(f.as, bad[i].gpa, buf, bad[i].len);
      if (st != AXALLOC_ERR_INVALID) {
        fprintf(stderr, "%s write(%#llx, %zu) = %s, want INVALID\n", fmt_name(fmt), (unsigned long long)bad[i].gpa,
                bad[i].len, axalloc_status_str(st));
        check_failures++;
      }
    }
    CHECK_EQ_U64(count_not(buf, sizeof buf, 0x5a), 0);
    CHECK_SNAP_EQ(s0, snap_of(&f), 0);
    CHECK(fx_done(&f) == 0);
  }
}

/* A write that must populate several lazy pages (and tables, across a 1 GiB
 * boundary) under failure injection at every allocation: NO_MEMORY, nothing
 * copied (also not into the present page it starts in), nothing populated,
 * until it succeeds with every byte in place. */
static void write_populate_is_all_or_nothing(void) {
  FOR_EACH_FORMAT(fmt) {
    xhost_t x;
    th_fx_t f = xfx_new(&x, fmt, 0, 0, 8 * GIB, 1024, XBASE, XSIZE, XFILL);
    const uint64_t p = GIB - 5 * PAGE, lz = GIB - 4 * PAGE, l = GIB + 4 * PAGE;
    CHECK_STATUS(axalloc_map_alloc(f.as, p, PAGE, RW, true), AXALLOC_OK);     /* present page */
    CHECK_STATUS(axalloc_map_alloc(f.as, lz, 8 * PAGE, RW, false), AXALLOC_OK); /* lazy, crosses 1 GiB */
    CHECK_STATUS(axalloc_map_linear(f.as, l, XBASE, PAGE, RW), AXALLOC_OK);    /* linear after it */
    th_scan(f.pool);
    const uint64_t start = p + 2000;
    const size_t len = (size_t)(l + 300 - start);
    unsigned char *buf = malloc(len);
    CHECK(buf != NULL);
    for (size_t i = 0; i < len; i++) buf[i] = pattern(i) | 0x80;
    long n;
    for (n = 0; n < 100; n++) {
      snap_t s0 = snap_of(&f);
      size_t failed = th_failed_allocs(f.pool);
      th_fail_after(f.pool, n);
      axalloc_status_t st = axalloc_write(f.as, start, buf, len);
      th_fail_never(f.pool);
      if (st == AXALLOC_OK) break;
      CHECK_STATUS(st, AXALLOC_ERR_NO_MEMORY);
      CHECK(th_failed_allocs(f.pool) > failed);
      CHECK_SNAP_EQ(s0, snap_of(&f), n);
      CHECK_NONE_MAPPED(&f, lz, 8 * PAGE);
      CHECK(frame_is_zero(f.pool, xlate(&f, p, NULL))); /* nothing copied into the present page */
      CHECK_EQ_U64(count_not(x.mem, XSIZE, XFILL), 0);  /* nor into linear memory */
      CHECK_EQ_U64(th_errors(f.pool), 0);
      if (check_failures > 50) break;
    }
    CHECK(n >= 8); /* 8 frames (the linear region already built the tables right of 1 GiB) */
    th_scan(f.pool);
    CHECK_EQ_U64(th_stats(&f).guest_frames, 1 + 8);
    unsigned char *back = malloc(len);
    CHECK(back != NULL);
    CHECK_STATUS(axalloc_read(f.as, start, back, len), AXALLOC_OK);
    CHECK(memcmp(back, buf, len) == 0);
    CHECK(memcmp(x.mem, buf + (l - start), 300) == 0);
    free(back);
    free(buf);
    CHECK(xfx_done(&f, &x) == 0);
  }
}

/* The hypervisor's copies ignore the guest's R/W/X: a READ-only region is
 * writable through axalloc_write. */
static void copy_ignores_guest_permissions(void) {
  FOR_EACH_FORMAT(fmt) {
    xhost_t x;
    th_fx_t f = xfx_new(&x, fmt, 0, 0, 8 * GIB, 1024, XBASE, XSIZE, XFILL);
    CHECK_STATUS(axalloc_map_alloc(f.as, 0, 2 * PAGE, AXALLOC_READ, true), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_alloc(f.as, 2 * PAGE, 2 * PAGE, AXALLOC_READ | AXALLOC_EXEC, false), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_linear(f.as, 4 * PAGE, XBASE, PAGE, AXALLOC_READ), AXALLOC_OK);
    th_scan(f.pool);
    static const char msg[] = "written by the hypervisor";
    for (uint64_t g = 100; g < 5 * PAGE; g += PAGE) {
      char back[sizeof msg];
      CHECK_STATUS(axalloc_write(f.as, g, msg, sizeof msg), AXALLOC_OK);
      CHECK_STATUS(axalloc_read(f.as, g, back, sizeof back), AXALLOC_OK);
      CHECK(memcmp(back, msg, sizeof msg) == 0);
    }
    CHECK(memcmp(x.mem + 100, msg, sizeof msg) == 0);
    th_scan(f.pool);
    CHECK(xfx_done(&f, &x) == 0);
  }
}

TEST_MAIN(T(copy_crosses_pages_and_regions), T(copy_range_not_covered_is_not_mapped), T(copy_device_region_is_access),
          T(write_populates_lazy_pages_in_range), T(read_of_lazy_page_yields_zeros_without_allocating),
          T(copy_len_zero_is_noop), T(copy_null_buffer_is_invalid), T(copy_overflowing_range_is_invalid),
          T(write_populate_is_all_or_nothing), T(copy_ignores_guest_permissions))
