/* Every entry point with bad input; the ABI values of the contract. */
#include <stddef.h>

#include "sem.h"

#define RW (AXALLOC_READ | AXALLOC_WRITE)

/* The contract's exact values and layouts (compile time). */
_Static_assert(sizeof(axalloc_status_t) == sizeof(int32_t), "axalloc_status_t is int32_t");
_Static_assert(AXALLOC_OK == 0 && AXALLOC_ERR_INVALID == -1 && AXALLOC_ERR_NO_MEMORY == -2 &&
                   AXALLOC_ERR_EXISTS == -3 && AXALLOC_ERR_NOT_MAPPED == -4 && AXALLOC_ERR_ACCESS == -5 &&
                   AXALLOC_ERR_UNSUPPORTED == -6 && AXALLOC_ERR_INTERNAL == -7 && AXALLOC_ERR_HOOK == -8 &&
                   AXALLOC_ERR_LIMIT == -9 && AXALLOC_ERR_BUSY == -10,
               "status values");
/* Map flags in bits 0-7, config flags in bits 8-15, formats small integers. */
_Static_assert(AXALLOC_READ == 1u && AXALLOC_WRITE == 2u && AXALLOC_EXEC == 4u && AXALLOC_DEVICE == 8u, "flags");
_Static_assert(AXALLOC_FORMAT_X86_EPT == 1u && AXALLOC_FORMAT_X86_NPT == 2u, "formats");
_Static_assert(AXALLOC_CFG_FRAMES_ZEROED == (1u << 8) && AXALLOC_CFG_NO_HUGE_1G == (1u << 9) &&
                   AXALLOC_CFG_RISCV_SVPBMT == (1u << 10) && AXALLOC_CFG_HW_AD == (1u << 11) &&
                   AXALLOC_CFG_ARM_S2FWB == (1u << 12) && AXALLOC_CFG_LINEAR_MAP == (1u << 13),
               "cfg flags");
_Static_assert(((AXALLOC_READ | AXALLOC_WRITE | AXALLOC_EXEC | AXALLOC_DEVICE) &
                (AXALLOC_CFG_FRAMES_ZEROED | AXALLOC_CFG_NO_HUGE_1G | AXALLOC_CFG_RISCV_SVPBMT | AXALLOC_CFG_HW_AD |
                 AXALLOC_CFG_ARM_S2FWB | AXALLOC_CFG_LINEAR_MAP)) == 0,
               "map and config flags are disjoint");
_Static_assert(AXALLOC_REGION_NONE == 0u && AXALLOC_REGION_ALLOC == 1u && AXALLOC_REGION_LINEAR == 2u, "kinds");
_Static_assert(offsetof(axalloc_config_t, struct_size) == 0 && offsetof(axalloc_config_t, format) == 4 &&
                   offsetof(axalloc_config_t, flags) == 8 && offsetof(axalloc_config_t, reserved) == 12 &&
                   offsetof(axalloc_config_t, base) == 16 && offsetof(axalloc_config_t, size) == 24 &&
                   offsetof(axalloc_config_t, linear_offset) == 32 && offsetof(axalloc_config_t, gpa_bits) == 40 &&
                   offsetof(axalloc_config_t, reserved2) == 44 && sizeof(axalloc_config_t) == 48,
               "config layout");
_Static_assert(offsetof(axalloc_hw_t, root) == 0 && offsetof(axalloc_hw_t, root_pages) == 8 &&
                   offsetof(axalloc_hw_t, levels) == 12 && offsetof(axalloc_hw_t, root_pointer) == 16 &&
                   offsetof(axalloc_hw_t, vtcr) == 24 && sizeof(axalloc_hw_t) == 32,
               "hw layout");
_Static_assert(AXALLOC_FORMAT_X86_EPT == 1u && AXALLOC_FORMAT_X86_NPT == 2u && AXALLOC_FORMAT_ARM_S2 == 3u &&
                   AXALLOC_FORMAT_RISCV_SV39X4 == 4u && AXALLOC_FORMAT_RISCV_SV48X4 == 5u &&
                   AXALLOC_FORMAT_RISCV_SV57X4 == 6u,
               "formats (issue 10)");
_Static_assert(offsetof(axalloc_stats_t, regions) == 0 && offsetof(axalloc_stats_t, mapped_bytes) == 8 &&
                   offsetof(axalloc_stats_t, guest_frames) == 16 && offsetof(axalloc_stats_t, table_frames) == 24 &&
                   offsetof(axalloc_stats_t, faults) == 32 && offsetof(axalloc_stats_t, reserve_frames) == 40 &&
                   offsetof(axalloc_stats_t, huge_pages) == 48 && sizeof(axalloc_stats_t) == 56,
               "stats layout (huge_pages appended, issue 11)");
_Static_assert(AXALLOC_HUGE == 1u << 4, "AXALLOC_HUGE is map flag bit 4");
_Static_assert(offsetof(axalloc_hooks_t, struct_size) == 0 && offsetof(axalloc_hooks_t, reserved) == 4 &&
                   offsetof(axalloc_hooks_t, ctx) == 8 &&
                   offsetof(axalloc_hooks_t, alloc_frame) == 8 + sizeof(void *) &&
                   offsetof(axalloc_hooks_t, free_frame) == 8 + 2 * sizeof(void *) &&
                   offsetof(axalloc_hooks_t, phys_to_virt) == 8 + 3 * sizeof(void *) &&
                   offsetof(axalloc_hooks_t, flush_tlb) == 8 + 4 * sizeof(void *) &&
                   offsetof(axalloc_hooks_t, alloc_contig) == 8 + 5 * sizeof(void *) &&
                   offsetof(axalloc_hooks_t, free_contig) == 8 + 6 * sizeof(void *) &&
                   offsetof(axalloc_hooks_t, relax) == 8 + 7 * sizeof(void *),
               "hooks layout");
_Static_assert(offsetof(axalloc_mapping_t, kind) == 0 && offsetof(axalloc_mapping_t, flags) == 4 &&
                   offsetof(axalloc_mapping_t, region_base) == 8 && offsetof(axalloc_mapping_t, region_size) == 16 &&
                   offsetof(axalloc_mapping_t, present) == 24 && offsetof(axalloc_mapping_t, reserved) == 28 &&
                   offsetof(axalloc_mapping_t, hpa) == 32 && offsetof(axalloc_mapping_t, page_size) == 40 &&
                   sizeof(axalloc_mapping_t) == 48,
               "mapping layout");

/* NULL as: every entry point answers INVALID (root: 0, destroy: no-op) and
 * touches no out-parameter. */
static void api_null_as_is_invalid_everywhere(void) {
  unsigned char buf[16] = {1, 2, 3};
  uint64_t hpa = 0x1111, ps = 0x2222;
  axalloc_stats_t s;
  memset(&s, 0x33, sizeof s);
  CHECK_STATUS(axalloc_map_alloc(NULL, 0, PAGE, RW, false), AXALLOC_ERR_INVALID);
  CHECK_STATUS(axalloc_map_alloc(NULL, 0, PAGE, RW, true), AXALLOC_ERR_INVALID);
  CHECK_STATUS(axalloc_map_linear(NULL, 0, 0, PAGE, RW), AXALLOC_ERR_INVALID);
  CHECK_STATUS(axalloc_unmap(NULL, 0, PAGE), AXALLOC_ERR_INVALID);
  CHECK_STATUS(axalloc_handle_fault(NULL, 0, AXALLOC_READ), AXALLOC_ERR_INVALID);
  CHECK_STATUS(axalloc_translate(NULL, 0, &hpa, &ps), AXALLOC_ERR_INVALID);
  CHECK_STATUS(axalloc_translate(NULL, 0, NULL, NULL), AXALLOC_ERR_INVALID);
  CHECK_STATUS(axalloc_read(NULL, 0, buf, sizeof buf), AXALLOC_ERR_INVALID);
  CHECK_STATUS(axalloc_write(NULL, 0, buf, sizeof buf), AXALLOC_ERR_INVALID);
  CHECK_STATUS(axalloc_as_stats(NULL, &s), AXALLOC_ERR_INVALID);
  axalloc_mapping_t m;
  memset(&m, 0x44, sizeof m);
  CHECK_STATUS(axalloc_query(NULL, 0, &m), AXALLOC_ERR_INVALID);
  CHECK_STATUS(axalloc_region_next(NULL, 0, &m), AXALLOC_ERR_INVALID);
  CHECK_EQ_U64(m.hpa, 0x4444444444444444ull);
  CHECK_EQ_U64(axalloc_as_root(NULL), 0);
  axalloc_as_destroy(NULL);
  CHECK_EQ_U64(hpa, 0x1111);
  CHECK_EQ_U64(ps, 0x2222);
  CHECK_EQ_U64(s.faults, 0x3333333333333333ull);
  CHECK(buf[0] == 1 && buf[1] == 2 && buf[2] == 3);
}

/* NULL out-pointers where they are required. */
static void api_null_out_pointers_are_invalid(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 4 * GIB, 256);
    CHECK_STATUS(axalloc_as_stats(f.as, NULL), AXALLOC_ERR_INVALID);
    axalloc_config_t c = {.struct_size = sizeof c, .format = fmt, .size = GIB};
    axalloc_hooks_t h = th_hooks(f.pool);
    size_t in_use = th_in_use(f.pool);
    CHECK_STATUS(axalloc_as_create(&c, &h, NULL), AXALLOC_ERR_INVALID);
    CHECK_EQ_U64(th_in_use(f.pool), in_use);
    CHECK(fx_done(&f) == 0);
  }
}

/* translate: either out pointer may be NULL; both filled consistently;
 * outputs untouched on NOT_MAPPED; never INVALID for odd addresses. */
static void api_translate_accepts_null_out_pointers(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 4 * GIB, 256);
    CHECK_STATUS(axalloc_map_linear(f.as, 2 * MIB, 0x100000000ull, 2 * MIB, RW), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_alloc(f.as, 0, PAGE, RW, true), AXALLOC_OK);
    th_scan(f.pool);
    uint64_t hpa = 0, ps = 0;
    const uint64_t g = 2 * MIB + 0x12345;
    CHECK_STATUS(axalloc_translate(f.as, g, NULL, NULL), AXALLOC_OK);
    CHECK_STATUS(axalloc_translate(f.as, g, &hpa, NULL), AXALLOC_OK);
    CHECK_EQ_U64(hpa, 0x100012345ull);
    CHECK_STATUS(axalloc_translate(f.as, g, NULL, &ps), AXALLOC_OK);
    CHECK_EQ_U64(ps, 2 * MIB);
    hpa = ps = 0;
    CHECK_STATUS(axalloc_translate(f.as, 0xabc, &hpa, &ps), AXALLOC_OK);
    CHECK(th_owns(f.pool, hpa));
    CHECK_EQ_U64(hpa & 0xfff, 0xabc);
    CHECK_EQ_U64(ps, PAGE);
    uint64_t odd[] = {PAGE, 4 * MIB, 4 * GIB, GPA_LIMIT, HPA_LIMIT, ~0ull};
    for (size_t i = 0; i < sizeof odd / sizeof odd[0]; i++) {
      hpa = 0x5555;
      ps = 0x6666;
      CHECK_STATUS(axalloc_translate(f.as, odd[i], &hpa, &ps), AXALLOC_ERR_NOT_MAPPED);
      CHECK_EQ_U64(hpa, 0x5555);
      CHECK_EQ_U64(ps, 0x6666);
      CHECK_STATUS(axalloc_translate(f.as, odd[i], NULL, NULL), AXALLOC_ERR_NOT_MAPPED);
    }
    CHECK(fx_done(&f) == 0);
  }
}

/* One bad argument per entry point on a live address space: the right error,
 * and nothing changed. */
static void api_bad_input_changes_nothing(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, GIB, GIB, 512);
    CHECK_STATUS(axalloc_map_alloc(f.as, GIB, 2 * MIB, RW, false), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_alloc(f.as, GIB + 2 * MIB, 8 * PAGE, RW, true), AXALLOC_OK);
    th_scan(f.pool);
    snap_t s0 = snap_of(&f);
    unsigned char buf[8] = {0};
    struct {
      axalloc_status_t got, want;
      const char *what;
    } r[] = {
        {axalloc_map_alloc(f.as, GIB + 4 * MIB, PAGE, 0, true), AXALLOC_ERR_INVALID, "map_alloc flags 0"},
        {axalloc_map_alloc(f.as, GIB + 4 * MIB + 1, PAGE, RW, true), AXALLOC_ERR_INVALID, "map_alloc unaligned"},
        {axalloc_map_alloc(f.as, 0, PAGE, RW, true), AXALLOC_ERR_INVALID, "map_alloc outside window"},
        {axalloc_map_alloc(f.as, GIB, PAGE, RW, true), AXALLOC_ERR_EXISTS, "map_alloc overlap"},
        {axalloc_map_linear(f.as, GIB + 4 * MIB, 1, PAGE, RW), AXALLOC_ERR_INVALID, "map_linear hpa unaligned"},
        {axalloc_map_linear(f.as, GIB + 4 * MIB, 0, 0, RW), AXALLOC_ERR_INVALID, "map_linear size 0"},
        {axalloc_map_linear(f.as, GIB + 2 * MIB, 0, PAGE, RW), AXALLOC_ERR_EXISTS, "map_linear overlap"},
        {axalloc_unmap(f.as, GIB, 0), AXALLOC_ERR_INVALID, "unmap size 0"},
        {axalloc_unmap(f.as, GIB + 1, PAGE), AXALLOC_ERR_INVALID, "unmap unaligned"},
        {axalloc_unmap(f.as, 0, 2 * GIB), AXALLOC_ERR_INVALID, "unmap outside window"},
        {axalloc_handle_fault(f.as, GIB, 0), AXALLOC_ERR_INVALID, "fault access 0"},
        {axalloc_handle_fault(f.as, GIB, 1u << 7), AXALLOC_ERR_INVALID, "fault unknown access"},
        {axalloc_handle_fault(f.as, 0, AXALLOC_READ), AXALLOC_ERR_NOT_MAPPED, "fault outside window"},
        {axalloc_read(f.as, GIB, NULL, 8), AXALLOC_ERR_INVALID, "read NULL buf"},
        {axalloc_write(f.as, GIB, NULL, 8), AXALLOC_ERR_INVALID, "write NULL buf"},
        {axalloc_read(f.as, ~0ull - 3, buf, 8), AXALLOC_ERR_INVALID, "read overflow"},
        {axalloc_write(f.as, ~0ull - 3, buf, 8), AXALLOC_ERR_INVALID, "write overflow"},
        {axalloc_read(f.as, 0, buf, 8), AXALLOC_ERR_NOT_MAPPED, "read outside window"},
        {axalloc_write(f.as, 0, buf, 8), AXALLOC_ERR_NOT_MAPPED, "write outside window"},
        {axalloc_translate(f.as, GIB, NULL, NULL), AXALLOC_ERR_NOT_MAPPED, "translate lazy page"},
    };
    for (size_t i = 0; i < sizeof r / sizeof r[0]; i++)
      if (r[i].got != r[i].want) {
        fprintf(stderr, "%s %s = %s, want %s\n", fmt_name(fmt), r[i].what, axalloc_status_str(r[i].got),
                axalloc_status_str(r[i].want));
        check_failures++;
      }
    CHECK_SNAP_EQ(s0, snap_of(&f), 0);
    CHECK_NONE_MAPPED(&f, GIB, 2 * MIB);
    CHECK_ALL_MAPPED(&f, GIB + 2 * MIB, 8 * PAGE);
    CHECK(fx_done(&f) == 0);
  }
}

/* Without flush_tlb (optional hook) everything still works. */
static void api_optional_flush_hook_may_be_null(void) {
  FOR_EACH_FORMAT(fmt) {
    th_pool_t *p = th_pool_new(256, 0x40000000ull, false);
    th_check_reachability(p, false); /* the host "guarantees" no stale TLB itself */
    axalloc_hooks_t h = th_hooks(p);
    h.flush_tlb = NULL;
    axalloc_config_t c = {.struct_size = sizeof c, .format = fmt, .size = 4 * GIB};
    axalloc_as_t *as = NULL;
    CHECK_STATUS(axalloc_as_create(&c, &h, &as), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_alloc(as, 0, 16 * PAGE, RW, true), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_linear(as, GIB, 0x100000000ull, GIB, RW), AXALLOC_OK);
    CHECK_STATUS(axalloc_unmap(as, 0, 4 * GIB), AXALLOC_OK);
    axalloc_stats_t s;
    CHECK_STATUS(axalloc_as_stats(as, &s), AXALLOC_OK);
    CHECK_EQ_U64(s.table_frames, fmt_root_pages(fmt));
    CHECK_EQ_U64(s.guest_frames, 0);
    axalloc_as_destroy(as);
    CHECK_EQ_U64(th_in_use(p), 0);
    CHECK_EQ_U64(th_flushes(p), 0);
    th_pool_free(p);
  }
}

TEST_MAIN(T(api_null_as_is_invalid_everywhere), T(api_null_out_pointers_are_invalid),
          T(api_translate_accepts_null_out_pointers), T(api_bad_input_changes_nothing),
          T(api_optional_flush_hook_may_be_null))
