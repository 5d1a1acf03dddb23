/* Smoke: the main paths end to end, both formats. */
#include "check.h"
#include "host.h"

#define GIB (1ull << 30)
#define MIB (1ull << 20)

static void smoke(uint32_t format) {
  th_fx_t f = th_fx_new(format, 0, 0, 4 * GIB, 4096);
  /* lazy region: nothing allocated until a fault */
  CHECK_STATUS(axalloc_map_alloc(f.as, 0x100000, 64 * 4096, AXALLOC_READ | AXALLOC_WRITE, false), AXALLOC_OK);
  CHECK_EQ_U64(th_stats(&f).guest_frames, 0);
  CHECK_STATUS(axalloc_translate(f.as, 0x100000, NULL, NULL), AXALLOC_ERR_NOT_MAPPED);
  CHECK_STATUS(axalloc_handle_fault(f.as, 0x100123, AXALLOC_WRITE), AXALLOC_OK);
  th_scan(f.pool);
  uint64_t hpa = 0, ps = 0;
  CHECK_STATUS(axalloc_translate(f.as, 0x100123, &hpa, &ps), AXALLOC_OK);
  CHECK_EQ_U64(ps, 4096);
  CHECK_EQ_U64(hpa & 0xfff, 0x123);
  const unsigned char *page = th_virt(f.pool, hpa & ~0xfffull);
  CHECK(page != NULL);
  int nonzero = 0;
  for (int i = 0; page && i < 4096; i++) nonzero |= page[i];
  CHECK(nonzero == 0);
  CHECK_EQ_U64(th_stats(&f).guest_frames, 1);
  CHECK_EQ_U64(th_stats(&f).faults, 1);
  /* spurious */
  CHECK_STATUS(axalloc_handle_fault(f.as, 0x100000, AXALLOC_READ), AXALLOC_OK);
  CHECK_EQ_U64(th_stats(&f).guest_frames, 1);
  /* populate */
  CHECK_STATUS(axalloc_map_alloc(f.as, 2 * MIB, 4 * MIB, AXALLOC_READ, true), AXALLOC_OK);
  th_scan(f.pool);
  CHECK_EQ_U64(th_stats(&f).guest_frames, 1 + 1024);
  /* linear with a 2 MiB and 1 GiB leaf */
  CHECK_STATUS(axalloc_map_linear(f.as, 1 * GIB, 0x80000000ull, 1 * GIB, AXALLOC_READ | AXALLOC_DEVICE), AXALLOC_OK);
  CHECK_STATUS(axalloc_translate(f.as, 1 * GIB + 5, &hpa, &ps), AXALLOC_OK);
  CHECK_EQ_U64(hpa, 0x80000005ull);
  CHECK_EQ_U64(ps, GIB);
  /* write/read */
  char msg[] = "hello, guest";
  char back[sizeof msg] = {0};
  CHECK_STATUS(axalloc_write(f.as, 0x100000 + 4090, msg, sizeof msg), AXALLOC_OK);
  CHECK_STATUS(axalloc_read(f.as, 0x100000 + 4090, back, sizeof back), AXALLOC_OK);
  CHECK(memcmp(msg, back, sizeof msg) == 0);
  th_scan(f.pool);
  /* unmap partly inside the huge leaf: split */
  size_t flushes = th_flushes(f.pool);
  CHECK_STATUS(axalloc_unmap(f.as, 1 * GIB + 4096, 4096), AXALLOC_OK);
  CHECK_EQ_U64(th_flushes(f.pool), flushes + 1);
  CHECK_STATUS(axalloc_translate(f.as, 1 * GIB + 4096, NULL, NULL), AXALLOC_ERR_NOT_MAPPED);
  CHECK_STATUS(axalloc_translate(f.as, 1 * GIB, &hpa, &ps), AXALLOC_OK);
  CHECK_EQ_U64(ps, 4096);
  CHECK_STATUS(axalloc_translate(f.as, 1 * GIB + 2 * MIB, &hpa, &ps), AXALLOC_OK);
  CHECK_EQ_U64(ps, 2 * MIB);
  CHECK_EQ_U64(th_stats(&f).regions, 4);
  /* unmap everything */
  CHECK_STATUS(axalloc_unmap(f.as, 0, 4 * GIB), AXALLOC_OK);
  axalloc_stats_t s = th_stats(&f);
  CHECK_EQ_U64(s.regions, 0);
  CHECK_EQ_U64(s.guest_frames, 0);
  CHECK_EQ_U64(s.table_frames, 1);
  CHECK(th_fx_done(&f) == 0);
}

static void smoke_ept(void) { smoke(AXALLOC_FORMAT_X86_EPT); }
static void smoke_npt(void) { smoke(AXALLOC_FORMAT_X86_NPT); }

TEST_MAIN(T(smoke_ept), T(smoke_npt))
