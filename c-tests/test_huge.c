/*
 * 2 MiB guest pages (AXALLOC_HUGE, issue 11): blocks from alloc_contig(9)
 * at populate, prefault and first fault, their 2 MiB leaves bit by bit
 * (an independent walk from axalloc_as_root), 4 KiB edges and fallback,
 * splits by unmap and discard, and each block back through free_contig
 * whole, once, after the flush that removed its last page (the test host
 * refuses a block frame given to free_frame, a partial or second
 * free_contig, and a free with no flush since the frame was reachable).
 */
#include <pthread.h>

#include "sem.h"

#define RW (AXALLOC_READ | AXALLOC_WRITE)
#define HRW (RW | AXALLOC_HUGE)
#define BLK (2 * MIB)

/* The read/write 2 MiB block leaf mapping `hpa`, from the manuals:
 * - EPT (SDM vol. 3C, "Format of an EPT Page-Directory Entry that Maps a
 *   2-MByte Page"): R, W (bits 0-1), memory type WB = 6 (5:3), bit 7 = 1,
 *   address 51:21, bits 20:12 reserved (0); bit 11 (ignored) the library's
 *   block mark.
 * - NPT (APM vol. 2, "2-Mbyte PDE"): P, R/W, U/S, PS (7), NX (63); AVL bit
 *   11 the block mark.
 * - Arm stage 2 (Arm ARM, level 2 block descriptor): bits 1:0 = 0b01,
 *   MemAttr (5:2) 0b1111, S2AP (7:6) 0b11, SH (9:8) 0b11, AF (10), XN (54);
 *   bit 57 (reserved for software) the block mark.
 * - RISC-V megapage: V, R, W, U, A, D; PPN = hpa >> 12 at bit 10, PPN[0]
 *   zero; RSW bit 9 the block mark. */
static uint64_t block_leaf(uint32_t fmt, uint64_t hpa) {
  switch (fmt) {
    case AXALLOC_FORMAT_X86_EPT: return hpa | 3 | (6ull << 3) | (1ull << 7) | (1ull << 11);
    case AXALLOC_FORMAT_X86_NPT: return hpa | 7 | (1ull << 7) | (1ull << 63) | (1ull << 11);
    case AXALLOC_FORMAT_ARM_S2:
      return hpa | 1 | (0xfull << 2) | (3ull << 6) | (3ull << 8) | (1ull << 10) | (1ull << 54) | (1ull << 57);
    default: return (hpa >> 2) | 1 | 6 | (1ull << 4) | (1ull << 6) | (1ull << 7) | (1ull << 9);
  }
}

static void check_block_leaf(th_fx_t *f, uint64_t gpa) {
  uint64_t raw = 0, size = 0;
  CHECK(th_entry(f->pool, gpa, 1, &raw));
  CHECK(th_present(f->format, raw) && th_huge(f->format, raw));
  uint64_t hpa = xlate(f, gpa, &size);
  CHECK_EQ_U64(size, BLK);
  CHECK_EQ_U64(hpa % BLK, gpa % BLK);
  CHECK_EQ_U64(th_addr(f->format, raw), hpa - gpa % BLK);
  /* x86: the accessed flag (EPT bit 8, NPT bit 5) is set once the block was
   * faulted or copied (an access), clear after a populate. */
  const uint64_t a = f->format == AXALLOC_FORMAT_X86_EPT ? 1ull << 8 : f->format == AXALLOC_FORMAT_X86_NPT ? 1ull << 5 : 0;
  CHECK_EQ_U64(raw & ~a, block_leaf(f->format, hpa - gpa % BLK));
}

/* Populate: the aligned parts in blocks, bit by bit; the unaligned edges in
 * 4 KiB pages; zeroed; stats count 512 guest frames per block. */
static void huge_populate_blocks_and_4k_edges(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 4 * GIB, 4096);
    uint64_t start = GIB - PAGE, size = 2 * BLK + 2 * PAGE;
    CHECK_STATUS(axalloc_map_alloc(f.as, start, size, HRW, true), AXALLOC_OK);
    axalloc_stats_t st = th_stats(&f);
    CHECK_EQ_U64(st.huge_pages, 2);
    CHECK_EQ_U64(st.guest_frames, 2 * 512 + 2);
    CHECK_EQ_U64(th_blocks(f.pool, 9), 2);
    check_block_leaf(&f, GIB + 0x1234);
    check_block_leaf(&f, GIB + BLK + 0x5000);
    uint64_t ps = 0;
    xlate(&f, start, &ps);
    CHECK_EQ_U64(ps, PAGE);
    xlate(&f, GIB + 2 * BLK, &ps);
    CHECK_EQ_U64(ps, PAGE);
    for (uint64_t off = 0; off < BLK; off += PAGE) CHECK(frame_is_zero(f.pool, xlate(&f, GIB + off, NULL)));
    CHECK(fx_done(&f) == 0);
  }
}

/* A fault in a part with no 4 KiB page present installs a block: one fault
 * per 2 MiB; further faults there are spurious. */
static void huge_fault_installs_one_block_per_part(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 4 * GIB, 4096);
    CHECK_STATUS(axalloc_map_alloc(f.as, GIB, 2 * BLK, HRW, false), AXALLOC_OK);
    for (uint64_t off = 0; off < 2 * BLK; off += 64 * PAGE)
      CHECK_STATUS(axalloc_handle_fault(f.as, GIB + off + 8, AXALLOC_WRITE), AXALLOC_OK);
    axalloc_stats_t st = th_stats(&f);
    CHECK_EQ_U64(st.faults, 2);
    CHECK_EQ_U64(st.huge_pages, 2);
    CHECK_EQ_U64(st.guest_frames, 1024);
    check_block_leaf(&f, GIB);
    check_block_leaf(&f, GIB + BLK + 0x3000);
    CHECK(frame_is_zero(f.pool, xlate(&f, GIB + 0x7000, NULL)));
    CHECK(fx_done(&f) == 0);
  }
}

/* Without a block from the host: 4 KiB frames, never an error for that
 * alone; NO_MEMORY when those fail too, nothing changed. */
static void huge_falls_back_to_4k_when_contig_fails(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 4 * GIB, 4096);
    CHECK_STATUS(axalloc_map_alloc(f.as, GIB, BLK, HRW, false), AXALLOC_OK);
    th_contig_fails(f.pool, true);
    CHECK_STATUS(axalloc_handle_fault(f.as, GIB, AXALLOC_WRITE), AXALLOC_OK);
    uint64_t ps = 0;
    xlate(&f, GIB, &ps);
    CHECK_EQ_U64(ps, PAGE);
    CHECK_STATUS(axalloc_map_alloc(f.as, 2 * GIB, BLK, HRW, true), AXALLOC_OK);
    xlate(&f, 2 * GIB, &ps);
    CHECK_EQ_U64(ps, PAGE);
    CHECK_EQ_U64(th_stats(&f).huge_pages, 0);
    snap_t before = snap_of(&f);
    th_fail_after(f.pool, 0);
    CHECK_STATUS(axalloc_handle_fault(f.as, GIB + PAGE, AXALLOC_WRITE), AXALLOC_ERR_NO_MEMORY);
    th_fail_never(f.pool);
    CHECK_SNAP_EQ(snap_of(&f), before, 0);
    th_contig_fails(f.pool, false);
    CHECK(fx_done(&f) == 0);
  }
}

/* AXALLOC_HUGE: map_alloc only; UNSUPPORTED without alloc_contig; nothing
 * changed either way. */
static void huge_flag_checks(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 4 * GIB, 1024);
    snap_t before = snap_of(&f);
    CHECK_STATUS(axalloc_map_linear(f.as, GIB, 0x80000000ull, BLK, HRW), AXALLOC_ERR_INVALID);
    CHECK_STATUS(axalloc_handle_fault(f.as, GIB, AXALLOC_READ | AXALLOC_HUGE), AXALLOC_ERR_INVALID);
    CHECK_STATUS(axalloc_map_alloc(f.as, GIB, BLK, HRW | (1u << 5), false), AXALLOC_ERR_INVALID);
    CHECK_STATUS(axalloc_map_alloc(f.as, GIB + 1, BLK, HRW, false), AXALLOC_ERR_INVALID);
    CHECK_STATUS(axalloc_map_alloc(f.as, GIB, BLK, AXALLOC_HUGE, false), AXALLOC_ERR_INVALID);
    CHECK_SNAP_EQ(snap_of(&f), before, 0);
    CHECK(fx_done(&f) == 0);
  }
  /* x86 roots are one frame: a space without alloc_contig. */
  for (uint32_t fmt = AXALLOC_FORMAT_X86_EPT; fmt <= AXALLOC_FORMAT_X86_NPT; fmt++) {
    th_fx_t f = {.format = fmt, .pool = th_pool_new(256, 0x40000000ull, false)};
    axalloc_hooks_t h = th_hooks(f.pool);
    h.alloc_contig = NULL;
    h.free_contig = NULL;
    axalloc_config_t cfg = {.struct_size = sizeof cfg, .format = fmt, .size = 4 * GIB};
    CHECK_STATUS(axalloc_as_create(&cfg, &h, &f.as), AXALLOC_OK);
    th_attach(f.pool, f.as, fmt);
    snap_t before = snap_of(&f);
    CHECK_STATUS(axalloc_map_alloc(f.as, GIB, BLK, HRW, false), AXALLOC_ERR_UNSUPPORTED);
    CHECK_STATUS(axalloc_map_alloc(f.as, GIB, BLK, HRW, true), AXALLOC_ERR_UNSUPPORTED);
    CHECK_SNAP_EQ(snap_of(&f), before, 0);
    CHECK_STATUS(axalloc_map_alloc(f.as, GIB, BLK, RW, false), AXALLOC_OK);
    CHECK(fx_done(&f) == 0);
  }
}

/* Unmap and discard of part of a block split it over the same block; the
 * block goes back once none of its pages is mapped: whole, once, after the
 * flush (the host checks all three). Data outside the holes stays. */
static void huge_split_keeps_data_and_frees_the_block_with_its_last_page(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 4 * GIB, 4096);
    CHECK_STATUS(axalloc_map_alloc(f.as, GIB, 2 * BLK, HRW, true), AXALLOC_OK);
    uint64_t block = xlate(&f, GIB, NULL);
    for (uint64_t i = 0; i < 512; i++) {
      uint64_t v = 0xabc000 + i;
      CHECK_STATUS(axalloc_write(f.as, GIB + i * PAGE, &v, sizeof v), AXALLOC_OK);
    }
    size_t frees = th_contig_frees(f.pool);
    CHECK_STATUS(axalloc_discard(f.as, GIB + 100 * PAGE, 2 * PAGE), AXALLOC_OK);
    CHECK_STATUS(axalloc_unmap(f.as, GIB + 300 * PAGE, PAGE), AXALLOC_OK);
    CHECK_EQ_U64(th_contig_frees(f.pool), frees);
    CHECK_EQ_U64(th_stats(&f).huge_pages, 2);
    uint64_t ps = 0;
    CHECK_EQ_U64(xlate(&f, GIB + 5 * PAGE, &ps), block + 5 * PAGE);
    CHECK_EQ_U64(ps, PAGE);
    for (uint64_t i = 0; i < 512; i++) {
      uint64_t v = ~0ull;
      if (i == 300) continue;
      CHECK_STATUS(axalloc_read(f.as, GIB + i * PAGE, &v, sizeof v), AXALLOC_OK);
      CHECK_EQ_U64(v, (i == 100 || i == 101) ? 0 : 0xabc000 + i);
    }
    /* A discarded page of the split block faults in a 4 KiB frame. */
    CHECK_STATUS(axalloc_handle_fault(f.as, GIB + 100 * PAGE, AXALLOC_WRITE), AXALLOC_OK);
    uint64_t hpa = xlate(&f, GIB + 100 * PAGE, NULL);
    CHECK(hpa < block || hpa >= block + BLK);
    CHECK_EQ_U64(th_stats(&f).guest_frames, 1024 + 1);
    /* The rest of the block in two steps; it goes with the last. */
    CHECK_STATUS(axalloc_discard(f.as, GIB, 100 * PAGE), AXALLOC_OK);
    CHECK_EQ_U64(th_contig_frees(f.pool), frees);
    size_t flushes = th_flushes(f.pool);
    CHECK_STATUS(axalloc_unmap(f.as, GIB + 101 * PAGE, BLK - 101 * PAGE), AXALLOC_OK);
    CHECK_EQ_U64(th_contig_frees(f.pool), frees + 1);
    CHECK_EQ_U64(th_blocks(f.pool, 9), 1);
    CHECK(th_flushes(f.pool) > flushes);
    th_flush_t fl = th_last_flush(f.pool);
    CHECK(fl.gpa <= GIB + 101 * PAGE && fl.gpa + fl.size >= GIB + BLK);
    axalloc_stats_t st = th_stats(&f);
    CHECK_EQ_U64(st.huge_pages, 1);
    CHECK_EQ_U64(st.guest_frames, 512 + 1);
    check_block_leaf(&f, GIB + BLK);
    CHECK(fx_done(&f) == 0);
  }
}

/* Failure injection at every allocation of a huge populate, a huge fault
 * and a split (discard, unmap): each failure leaves the stats and the frame
 * pool as they were. */
static void huge_failure_injection_changes_nothing(void) {
  FOR_EACH_FORMAT(fmt) {
    for (int op = 0; op < 4; op++) {
      for (long n = 0;; n++) {
        th_fx_t f = th_fx_new(fmt, 0, 0, 4 * GIB, 4096);
        if (op == 1) CHECK_STATUS(axalloc_map_alloc(f.as, GIB, BLK, HRW, false), AXALLOC_OK);
        if (op >= 2) CHECK_STATUS(axalloc_map_alloc(f.as, GIB, 2 * BLK, HRW, true), AXALLOC_OK);
        snap_t before = snap_of(&f);
        th_fail_after(f.pool, n);
        axalloc_status_t st = op == 0   ? axalloc_map_alloc(f.as, GIB - PAGE, BLK + 2 * PAGE, HRW, true)
                              : op == 1 ? axalloc_handle_fault(f.as, GIB + 9 * PAGE, AXALLOC_WRITE)
                              : op == 2 ? axalloc_discard(f.as, GIB + 9 * PAGE, PAGE)
                                        : axalloc_unmap(f.as, GIB + 9 * PAGE, BLK);
        th_fail_never(f.pool);
        bool ok = st == AXALLOC_OK;
        if (!ok) {
          CHECK_STATUS(st, AXALLOC_ERR_NO_MEMORY);
          CHECK_SNAP_EQ(snap_of(&f), before, n);
        }
        CHECK(fx_done(&f) == 0);
        if (ok || n > 40) break;
      }
    }
  }
}

/* Concurrency: vCPU threads fault, write and read their own pages of a
 * block while the main thread discards and prefaults other pages of it
 * (splitting it): the writers never lose data. */
typedef struct race {
  th_fx_t *f;
  uint64_t first;
  volatile int stop;
  int lost;
} race_t;

static void *writer(void *arg) {
  race_t *r = arg;
  for (uint64_t round = 1; !r->stop; round++) {
    for (uint64_t i = r->first; i < 512; i += 4) {
      uint64_t gpa = GIB + i * PAGE, v = round * 1000 + i, back = 0;
      axalloc_status_t st;
      r->lost += axalloc_handle_fault(r->f->as, gpa, AXALLOC_WRITE) != AXALLOC_OK;
      while ((st = axalloc_write(r->f->as, gpa, &v, sizeof v)) == AXALLOC_ERR_BUSY) {
      }
      r->lost += st != AXALLOC_OK;
      while ((st = axalloc_read(r->f->as, gpa, &back, sizeof back)) == AXALLOC_ERR_BUSY) {
      }
      r->lost += st != AXALLOC_OK || back != v;
    }
  }
  return NULL;
}

static void huge_writers_keep_data_while_the_block_splits(void) {
  FOR_EACH_FORMAT(fmt) {
    th_fx_t f = th_fx_new(fmt, 0, 0, 4 * GIB, 4096);
    CHECK_STATUS(axalloc_map_alloc(f.as, GIB, BLK, HRW, false), AXALLOC_OK);
    th_check_reachability(f.pool, false); /* frees race with the writers' walks */
    race_t r[2] = {{.f = &f, .first = 0}, {.f = &f, .first = 2}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++) CHECK(pthread_create(&t[i], NULL, writer, &r[i]) == 0);
    for (int i = 0; i < 200; i++) {
      uint64_t page = 1 + 2 * (uint64_t)((i * 37) % 255);
      axalloc_status_t st = axalloc_discard(f.as, GIB + page * PAGE, PAGE);
      CHECK(st == AXALLOC_OK || st == AXALLOC_ERR_BUSY);
      st = axalloc_prefault(f.as, GIB + page * PAGE, PAGE);
      CHECK(st == AXALLOC_OK || st == AXALLOC_ERR_BUSY);
    }
    for (int i = 0; i < 2; i++) {
      r[i].stop = 1;
      pthread_join(t[i], NULL);
      CHECK_EQ_U64(r[i].lost, 0);
    }
    CHECK(fx_done(&f) == 0);
  }
}

TEST_MAIN(T(huge_populate_blocks_and_4k_edges), T(huge_fault_installs_one_block_per_part),
          T(huge_falls_back_to_4k_when_contig_fails), T(huge_flag_checks),
          T(huge_split_keeps_data_and_frees_the_block_with_its_last_page),
          T(huge_failure_injection_changes_nothing), T(huge_writers_keep_data_while_the_block_splits))
