/*
 * Entry formats, bit by bit, against the manuals (not against the library's
 * encoder): every expected entry below is assembled here from constants
 * defined in this file, each with the table / section it comes from.
 *
 * Intel: Intel 64 and IA-32 Architectures SDM, vol. 3C, chapter "VMX Support
 *   for Address Translation", section "EPT Translation Mechanism" (29.3.2 in
 *   recent editions; 28.2.2 in 2016-2021 editions, where the tables below are
 *   numbered 28-x):
 *     Table 29-1  EPT PML4E that references an EPT PDPT
 *     Table 29-2  EPT PDPTE that maps a 1-GByte page
 *     Table 29-3  EPT PDPTE that references an EPT page directory
 *     Table 29-4  EPT PDE that maps a 2-MByte page
 *     Table 29-5  EPT PDE that references an EPT page table
 *     Table 29-6  EPT PTE that maps a 4-KByte page
 *   Memory types: SDM vol. 3A, "Memory Cache Control", Table 12-2 (formerly
 *   11-2) "Memory Types and Their Properties" / the PAT/MTRR type encodings
 *   (UC = 0, WB = 6), used by the EPT memory-type field (section "EPT and
 *   Memory Typing").
 *
 * AMD: AMD64 Architecture Programmer's Manual vol. 2, section 5.3 "Long-Mode
 *   Page Translation", figures "4-Kbyte PML4E—Long Mode", "4-Kbyte PDPE—Long
 *   Mode", "4-Kbyte PDE—Long Mode", "4-Kbyte PTE—Long Mode", "2-Mbyte PDE—
 *   Long Mode", "1-Gbyte PDPE—Long Mode" (figures 5-17..5-25 depending on the
 *   revision), section 5.6 "Page-Protection Checks" (NX, bit 63), section 7.8
 *   "Page-Attribute Table Mechanism" (PAT index = PAT:PCD:PWT, default PAT
 *   entry 3 = UC), and section 15.25 "Nested Paging": nested tables use the
 *   long-mode format and every nested-table access is a user access
 *   (15.25.5), so U/S must be 1 at every level.
 *
 * Software-available bits: the library marks leaves whose frame it obtained
 * from alloc_frame with one bit the processor ignores — EPT bit 52 (Tables
 * 29-2/4/6: bits 56:52 / 63:52 "Ignored") and NPT bit 9 (AVL, bits 11:9
 * "available to software"). That is allowed: the tests tolerate exactly that
 * one bit, on leaves only, and fail on any other unexpected bit.
 */
#include "check.h"
#include "host.h"

#define KIB (1ull << 10)
#define MIB (1ull << 20)
#define GIB (1ull << 30)

/* ---------------- Intel EPT (SDM vol. 3C, 29.3.2) ---------------- */
/* Tables 29-1..29-6, bit 0: read access. */
#define EPT_R (1ull << 0)
/* Tables 29-1..29-6, bit 1: write access. */
#define EPT_W (1ull << 1)
/* Tables 29-1..29-6, bit 2: execute access. An entry with bits 2:0 all 0 is
 * "not present" (29.3.2: "the logical processor ignores bits 63:3"). */
#define EPT_X (1ull << 2)
#define EPT_RWX (EPT_R | EPT_W | EPT_X)
/* Tables 29-2, 29-4, 29-6, bits 5:3: EPT memory type of the page. */
#define EPT_MT_SHIFT 3
#define EPT_MT_MASK (7ull << EPT_MT_SHIFT)
/* SDM vol. 3A Table 12-2 / "EPT and Memory Typing": 0 = UC, 6 = WB. */
#define EPT_MT_UC 0ull
#define EPT_MT_WB 6ull
/* Tables 29-2, 29-4, 29-6, bit 6: ignore PAT memory type. */
#define EPT_IPAT (1ull << 6)
/* Tables 29-2 and 29-4, bit 7: must be 1 (maps a 1-GByte / 2-MByte page);
 * Tables 29-3 and 29-5: bit 7 must be 0 (references a table); Table 29-1:
 * bits 7:3 of a PML4E are reserved (must be 0); Table 29-6: bit 7 ignored. */
#define EPT_PS (1ull << 7)
/* Tables 29-1..29-5: bits 7:3 of an entry that references a table are
 * reserved (must be 0). */
#define EPT_NONLEAF_RSVD (0x1full << 3)
/* Tables 29-1..29-6, bit 8: accessed (if EPT A/D enabled); bit 9: dirty
 * (leaves, if A/D enabled); bit 10: execute for user-mode linear addresses
 * (if mode-based execute control); bit 11: ignored. The library writes 0. */
#define EPT_A (1ull << 8)
#define EPT_D (1ull << 9)
#define EPT_XU (1ull << 10)
/* Tables 29-1..29-6: bits (N-1):12 physical address; 51:N reserved. */
#define ADDR_4K 0x000ffffffffff000ull
/* Table 29-4, bits 20:12 reserved; (N-1):21 address of the 2-MByte page. */
#define ADDR_2M 0x000fffffffe00000ull
/* Table 29-2, bits 29:12 reserved; (N-1):30 address of the 1-GByte page. */
#define ADDR_1G 0x000fffffc0000000ull
/* Tables 29-1..29-6: bits 56:52 (63:52 in older editions) ignored — the
 * library's "owned frame" software bit. */
#define EPT_SW_OWNED (1ull << 52)
/* Tables 29-2/4/6, bit 63: suppress #VE (if EPT-violation #VE enabled):
 * must be 0 here, or EPT violations would not become #VE when enabled. */
#define EPT_SVE (1ull << 63)

/* ---------------- AMD NPT (APM vol. 2, 5.3 / 15.25) ---------------- */
/* Long-mode PML4E/PDPE/PDE/PTE figures, bit 0: P, present. */
#define NPT_P (1ull << 0)
/* bit 1: R/W, writable. */
#define NPT_RW (1ull << 1)
/* bit 2: U/S; 15.25.5: nested walks are user accesses, so 1 at every level. */
#define NPT_US (1ull << 2)
/* bit 3: PWT, bit 4: PCD (7.8: PAT index bits 0 and 1). */
#define NPT_PWT (1ull << 3)
#define NPT_PCD (1ull << 4)
/* bit 5: A (accessed), bit 6: D (dirty, leaves) — set by the processor. */
#define NPT_A (1ull << 5)
#define NPT_D (1ull << 6)
/* bit 7: PS in a PDPE / PDE (1 = 1-Gbyte / 2-Mbyte page); MBZ in a PML4E
 * ("4-Kbyte PML4E—Long Mode": bits 8:7 MBZ); PAT in a 4-Kbyte PTE. */
#define NPT_PS (1ull << 7)
#define NPT_PAT_4K (1ull << 7)
/* bit 8: G (global, leaves) — meaningless for nested tables, expected 0;
 * MBZ in a PML4E. */
#define NPT_G (1ull << 8)
/* bits 11:9: AVL, available to software. The library uses bit 9. */
#define NPT_AVL_MASK (7ull << 9)
#define NPT_SW_OWNED (1ull << 9)
/* "2-Mbyte PDE" / "1-Gbyte PDPE": bit 12 is PAT (index bit 2), bits 20:13 /
 * 29:13 reserved (MBZ), address from bit 21 / 30. */
#define NPT_PAT_HUGE (1ull << 12)
/* bit 63: NX (5.6: no instruction fetch from the page when EFER.NXE = 1). */
#define NPT_NX (1ull << 63)

#define ALL_FLAGS_COMBOS 8 /* READ + any subset of WRITE, EXEC, DEVICE */

static uint32_t combo_flags(int i) {
  uint32_t f = AXALLOC_READ;
  if (i & 1) f |= AXALLOC_WRITE;
  if (i & 2) f |= AXALLOC_EXEC;
  if (i & 4) f |= AXALLOC_DEVICE;
  return f;
}

static const char *fmt_name(uint32_t format) { return format == AXALLOC_FORMAT_X86_EPT ? "EPT" : "NPT"; }

/* The expected leaf, from the manual constants above. */
static uint64_t expect_leaf(uint32_t format, uint64_t hpa, uint32_t flags, int level) {
  if (format == AXALLOC_FORMAT_X86_EPT) {
    uint64_t e = hpa | EPT_R;
    if (flags & AXALLOC_WRITE) e |= EPT_W;
    if (flags & AXALLOC_EXEC) e |= EPT_X;
    e |= ((flags & AXALLOC_DEVICE) ? EPT_MT_UC : EPT_MT_WB) << EPT_MT_SHIFT;
    if (level > 0) e |= EPT_PS;
    return e;
  }
  uint64_t e = hpa | NPT_P | NPT_US;
  if (flags & AXALLOC_WRITE) e |= NPT_RW;
  if (flags & AXALLOC_DEVICE) e |= NPT_PWT | NPT_PCD; /* PAT index 3 = UC (default PAT) */
  if (level > 0) e |= NPT_PS;
  if (!(flags & AXALLOC_EXEC)) e |= NPT_NX;
  return e;
}

static uint64_t expect_table(uint32_t format, uint64_t hpa) {
  return format == AXALLOC_FORMAT_X86_EPT ? (hpa | EPT_R | EPT_W | EPT_X) : (hpa | NPT_P | NPT_RW | NPT_US);
}

static uint64_t sw_owned_bit(uint32_t format) {
  return format == AXALLOC_FORMAT_X86_EPT ? EPT_SW_OWNED : NPT_SW_OWNED;
}

static bool is_present(uint32_t format, uint64_t raw) {
  return format == AXALLOC_FORMAT_X86_EPT ? (raw & EPT_RWX) != 0 : (raw & NPT_P) != 0;
}

static int sw_bit_notes;

/* Checks a leaf: exactly `expect`, plus at most the documented software bit. */
static void check_leaf(uint32_t format, const char *what, uint64_t gpa, int level, uint64_t raw, uint64_t expect) {
  uint64_t sw = sw_owned_bit(format);
  if ((raw & ~sw) != expect) {
    fprintf(stderr, "%s %s leaf gpa %#llx level %d: raw %#018llx, want %#018llx (+ optional sw bit %#llx); diff %#llx\n",
            fmt_name(format), what, (unsigned long long)gpa, level, (unsigned long long)raw,
            (unsigned long long)expect, (unsigned long long)sw, (unsigned long long)((raw & ~sw) ^ expect));
    check_failures++;
  }
  if ((raw & sw) && sw_bit_notes++ == 0)
    printf("note: %s leaves carry software bit %#llx (ignored by hardware; allowed)\n", fmt_name(format),
           (unsigned long long)sw);
}

/* Checks the non-leaf entries on the walk to gpa at levels 3..leaf_level+1. */
static void check_nonleaf_path(th_fx_t *f, uint64_t gpa, int leaf_level) {
  for (int l = 3; l > leaf_level; l--) {
    uint64_t raw = 0;
    if (!th_entry(f->pool, gpa, l, &raw)) {
      fprintf(stderr, "%s: no entry at level %d for gpa %#llx\n", fmt_name(f->format), l, (unsigned long long)gpa);
      check_failures++;
      return;
    }
    uint64_t addr = raw & ADDR_4K;
    if (raw != expect_table(f->format, addr)) {
      fprintf(stderr, "%s non-leaf gpa %#llx level %d: raw %#018llx, want %#018llx\n", fmt_name(f->format),
              (unsigned long long)gpa, l, (unsigned long long)raw, (unsigned long long)expect_table(f->format, addr));
      check_failures++;
    }
    /* the next table is a frame the library got from alloc_frame */
    CHECK(th_owns(f->pool, addr));
    if (f->format == AXALLOC_FORMAT_X86_EPT) {
      CHECK((raw & EPT_NONLEAF_RSVD) == 0); /* Tables 29-1/3/5: bits 7:3 reserved */
    } else {
      CHECK((raw & NPT_NX) == 0);           /* no NX on non-leaf entries */
      CHECK((raw & NPT_PS) == 0);           /* PML4E bit 7 MBZ; PDPE/PDE PS = 0 -> table */
      if (l == 3) CHECK((raw & NPT_G) == 0); /* PML4E bit 8 MBZ */
    }
  }
}

/* Leaf at `level` on the walk to gpa; it must exist. */
static uint64_t leaf_at(th_fx_t *f, uint64_t gpa, int level) {
  uint64_t raw = 0;
  if (!th_entry(f->pool, gpa, level, &raw)) {
    fprintf(stderr, "%s: walk to gpa %#llx stops above level %d\n", fmt_name(f->format), (unsigned long long)gpa, level);
    check_failures++;
    return 0;
  }
  return raw;
}

/* Walks the whole tree and checks that every present entry has a legal form
 * (non-leaf exact; leaf with only the bits a leaf may have). Returns the
 * number of present leaves. */
static uint64_t validate_tree_at(th_fx_t *f, uint64_t table, int level) {
  const uint64_t *t = th_virt(f->pool, table);
  uint64_t leaves = 0;
  if (!t || (table & 0xfff)) {
    fprintf(stderr, "%s: table %#llx is not a pool frame\n", fmt_name(f->format), (unsigned long long)table);
    check_failures++;
    return 0;
  }
  for (int i = 0; i < 512; i++) {
    uint64_t raw = __atomic_load_n(&t[i], __ATOMIC_ACQUIRE);
    if (!is_present(f->format, raw)) continue;
    bool leaf = level == 0 || (level <= 2 && (raw & (1ull << 7)));
    if (!leaf) {
      uint64_t addr = raw & ADDR_4K;
      if (raw != expect_table(f->format, addr)) {
        fprintf(stderr, "%s: level %d entry %d is a non-leaf %#018llx with extra bits %#llx\n", fmt_name(f->format),
                level, i, (unsigned long long)raw, (unsigned long long)(raw ^ expect_table(f->format, addr)));
        check_failures++;
        continue;
      }
      leaves += validate_tree_at(f, addr, level - 1);
      continue;
    }
    leaves++;
    uint64_t amask = level == 0 ? ADDR_4K : level == 1 ? ADDR_2M : ADDR_1G;
    uint64_t legal;
    if (f->format == AXALLOC_FORMAT_X86_EPT) {
      uint64_t mt = (raw & EPT_MT_MASK) >> EPT_MT_SHIFT;
      CHECK(raw & EPT_R); /* READ is required; W without R is a misconfiguration */
      CHECK(mt == EPT_MT_WB || mt == EPT_MT_UC);
      /* + the accessed flag (bit 8): set in faulted and copied pages. */
      legal = amask | EPT_RWX | EPT_MT_MASK | EPT_SW_OWNED | EPT_A | (level > 0 ? EPT_PS : 0);
    } else {
      CHECK((raw & NPT_US) != 0);
      CHECK(((raw & NPT_PWT) != 0) == ((raw & NPT_PCD) != 0)); /* WB (index 0) or UC (index 3) only */
      legal = amask | NPT_P | NPT_RW | NPT_US | NPT_PWT | NPT_PCD | NPT_SW_OWNED | NPT_NX | NPT_A |
              (level > 0 ? NPT_PS : 0);
    }
    if (raw & ~legal) {
      fprintf(stderr, "%s: level %d leaf entry %d = %#018llx has unexpected bits %#llx\n", fmt_name(f->format), level,
              i, (unsigned long long)raw, (unsigned long long)(raw & ~legal));
      check_failures++;
    }
  }
  return leaves;
}

static uint64_t validate_tree(th_fx_t *f) {
  uint64_t root = axalloc_as_root(f->as);
  CHECK(root != 0 && (root & 0xfff) == 0 && th_owns(f->pool, root));
  return validate_tree_at(f, root, 3);
}

/* A guest-physical address whose index is non-zero at every level. */
#define GPA_1G 0x00007f8040000000ull /* PML4 255, PDPT 1 */
#define GPA_2M (GPA_1G + 0x00200000ull) /* PD 1 */
#define GPA_4K (GPA_2M + 0x00003000ull) /* PT 3 */

/* Host-physical address patterns reaching bit 51 (all ones, 0101.., 1010..),
 * aligned to `size` and with hpa + size <= 2^52. */
static uint64_t hpa_pattern(int i, uint64_t size) {
  static const uint64_t pats[3] = {0xffffffffffffffffull, 0x5555555555555555ull, 0xaaaaaaaaaaaaaaaaull};
  return pats[i % 3] & 0x000fffffffffffffull & ~(size - 1);
}

static th_fx_t new_fx(uint32_t format, uint32_t cfg) {
  return th_fx_new(format, cfg, 0, 1ull << 48, 256);
}

/* 4 KiB leaves of alloc regions: populate, fault, and write paths. */
enum path { POPULATE, FAULT, WRITE };

static void leaf_4k_alloc(uint32_t format, enum path path) {
  for (int c = 0; c < ALL_FLAGS_COMBOS; c++) {
    uint32_t flags = combo_flags(c);
    if (path == WRITE && (flags & AXALLOC_DEVICE)) continue; /* write to DEVICE is ERR_ACCESS */
    th_fx_t f = new_fx(format, 0);
    CHECK_STATUS(axalloc_map_alloc(f.as, GPA_4K, 2 * 4096, flags, path == POPULATE), AXALLOC_OK);
    if (path == FAULT) CHECK_STATUS(axalloc_handle_fault(f.as, GPA_4K + 0x10, AXALLOC_READ), AXALLOC_OK);
    if (path == WRITE) {
      unsigned char b = 1;
      CHECK_STATUS(axalloc_write(f.as, GPA_4K + 0x10, &b, 1), AXALLOC_OK);
    }
    uint64_t hpa = 0, ps = 0;
    CHECK_STATUS(axalloc_translate(f.as, GPA_4K, &hpa, &ps), AXALLOC_OK);
    CHECK_EQ_U64(ps, 4096);
    CHECK(th_owns(f.pool, hpa));
    uint64_t raw = leaf_at(&f, GPA_4K, 0);
    /* A faulted or hypervisor-written page was accessed: its accessed flag
     * is set (EPT bit 8, SDM vol. 3C 29.3.5, with EPTP bit 6; NPT / x86-64
     * A bit 5), as the processor would; populate leaves it clear. */
    const uint64_t accessed = path == POPULATE ? 0 : format == AXALLOC_FORMAT_X86_EPT ? EPT_A : NPT_A;
    check_leaf(format, path == POPULATE ? "populate" : path == FAULT ? "fault" : "write", GPA_4K, 0, raw,
               expect_leaf(format, hpa, flags, 0) | accessed);
    CHECK_EQ_U64(raw & ADDR_4K, hpa); /* bits 51:12 = the frame */
    check_nonleaf_path(&f, GPA_4K, 0);
    if (path != POPULATE) {
      /* the second page of the lazy region: not present */
      uint64_t np = 0;
      CHECK(th_entry(f.pool, GPA_4K + 4096, 0, &np));
      CHECK(!is_present(format, np));
      if (format == AXALLOC_FORMAT_X86_EPT) CHECK((np & EPT_RWX) == 0);
      else CHECK((np & NPT_P) == 0);
    }
    CHECK_EQ_U64(validate_tree(&f), path == POPULATE ? 2 : 1);
    CHECK(th_fx_done(&f) == 0);
  }
}

static void ept_leaf_4k_populate(void) { leaf_4k_alloc(AXALLOC_FORMAT_X86_EPT, POPULATE); }
static void npt_leaf_4k_populate(void) { leaf_4k_alloc(AXALLOC_FORMAT_X86_NPT, POPULATE); }
static void ept_leaf_4k_fault(void) { leaf_4k_alloc(AXALLOC_FORMAT_X86_EPT, FAULT); }
static void npt_leaf_4k_fault(void) { leaf_4k_alloc(AXALLOC_FORMAT_X86_NPT, FAULT); }
static void ept_leaf_4k_write(void) { leaf_4k_alloc(AXALLOC_FORMAT_X86_EPT, WRITE); }
static void npt_leaf_4k_write(void) { leaf_4k_alloc(AXALLOC_FORMAT_X86_NPT, WRITE); }

/* Linear leaves of each size: 4 KiB, 2 MiB, 1 GiB. */
static void leaf_linear(uint32_t format, int level) {
  uint64_t size = level == 0 ? 4096 : level == 1 ? 2 * MIB : GIB;
  uint64_t gpa = level == 0 ? GPA_4K : level == 1 ? GPA_2M : GPA_1G;
  for (int c = 0; c < ALL_FLAGS_COMBOS; c++) {
    uint32_t flags = combo_flags(c);
    for (int p = 0; p < 3; p++) {
      uint64_t hpa = hpa_pattern(p, size);
      th_fx_t f = new_fx(format, 0);
      CHECK_STATUS(axalloc_map_linear(f.as, gpa, hpa, size, flags), AXALLOC_OK);
      uint64_t got = 0, ps = 0;
      CHECK_STATUS(axalloc_translate(f.as, gpa + size - 8, &got, &ps), AXALLOC_OK);
      CHECK_EQ_U64(got, hpa + size - 8);
      CHECK_EQ_U64(ps, size);
      uint64_t raw = leaf_at(&f, gpa, level);
      check_leaf(format, "linear", gpa, level, raw, expect_leaf(format, hpa, flags, level));
      uint64_t amask = level == 0 ? ADDR_4K : level == 1 ? ADDR_2M : ADDR_1G;
      CHECK_EQ_U64(raw & amask, hpa);
      if (level > 0) {
        /* reserved low address bits of a huge leaf (EPT 20:12 / 29:12; NPT
         * 20:13 / 29:13, and PAT bit 12 clear) */
        CHECK_EQ_U64(raw & ADDR_4K & ~amask, 0);
        CHECK((raw & (1ull << 7)) != 0);
      } else if (format == AXALLOC_FORMAT_X86_NPT) {
        CHECK((raw & NPT_PAT_4K) == 0); /* bit 7 of a 4K PTE is PAT: must stay 0 */
      }
      if (format == AXALLOC_FORMAT_X86_EPT) {
        CHECK((raw & (EPT_IPAT | EPT_A | EPT_D | EPT_XU | EPT_SVE)) == 0);
      } else {
        CHECK((raw & (NPT_A | NPT_D | NPT_G)) == 0);
        if (level > 0) CHECK((raw & NPT_PAT_HUGE) == 0);
      }
      check_nonleaf_path(&f, gpa, level);
      CHECK_EQ_U64(validate_tree(&f), 1);
      CHECK_EQ_U64(th_stats(&f).guest_frames, 0);
      CHECK(th_fx_done(&f) == 0);
    }
  }
}

static void ept_leaf_linear_4k(void) { leaf_linear(AXALLOC_FORMAT_X86_EPT, 0); }
static void npt_leaf_linear_4k(void) { leaf_linear(AXALLOC_FORMAT_X86_NPT, 0); }
static void ept_leaf_2m(void) { leaf_linear(AXALLOC_FORMAT_X86_EPT, 1); }
static void npt_leaf_2m(void) { leaf_linear(AXALLOC_FORMAT_X86_NPT, 1); }
static void ept_leaf_1g(void) { leaf_linear(AXALLOC_FORMAT_X86_EPT, 2); }
static void npt_leaf_1g(void) { leaf_linear(AXALLOC_FORMAT_X86_NPT, 2); }

/* Non-leaf entries at levels 3, 2, 1 do not depend on the leaf's flags:
 * EPT exactly R|W|X + address (bits 7:3 zero), NPT exactly P|RW|US + address
 * (no NX, no PS, no PWT/PCD). Two mappings sharing the same tables with
 * different flags must not change them either. */
static void nonleaf(uint32_t format) {
  for (int c = 0; c < ALL_FLAGS_COMBOS; c++) {
    th_fx_t f = new_fx(format, 0);
    uint32_t flags = combo_flags(c);
    CHECK_STATUS(axalloc_map_alloc(f.as, GPA_4K, 4096, flags, true), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_linear(f.as, GPA_4K + 4096, hpa_pattern(c, 4096), 4096, AXALLOC_READ), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_linear(f.as, GPA_1G + GIB, hpa_pattern(c, GIB), GIB, flags), AXALLOC_OK);
    CHECK_STATUS(axalloc_map_linear(f.as, GPA_1G + 4 * MIB, hpa_pattern(c + 1, 2 * MIB), 2 * MIB, flags), AXALLOC_OK);
    /* a second PML4 slot */
    CHECK_STATUS(axalloc_map_alloc(f.as, 0x1000, 4096, flags, true), AXALLOC_OK);
    check_nonleaf_path(&f, GPA_4K, 0);
    check_nonleaf_path(&f, GPA_4K + 4096, 0);
    check_nonleaf_path(&f, GPA_1G + GIB, 2);
    check_nonleaf_path(&f, GPA_1G + 4 * MIB, 1);
    check_nonleaf_path(&f, 0x1000, 0);
    uint64_t raw;
    CHECK(th_entry(f.pool, GPA_1G + GIB, 2, &raw));
    check_leaf(format, "linear 1G", GPA_1G + GIB, 2, raw, expect_leaf(format, hpa_pattern(c, GIB), flags, 2));
    CHECK(th_entry(f.pool, GPA_1G + 4 * MIB, 1, &raw));
    check_leaf(format, "linear 2M", GPA_1G + 4 * MIB, 1, raw, expect_leaf(format, hpa_pattern(c + 1, 2 * MIB), flags, 1));
    CHECK_EQ_U64(validate_tree(&f), 5);
    CHECK(th_fx_done(&f) == 0);
  }
}

static void ept_nonleaf(void) { nonleaf(AXALLOC_FORMAT_X86_EPT); }
static void npt_nonleaf(void) { nonleaf(AXALLOC_FORMAT_X86_NPT); }

/* Not-present entries: EPT bits 2:0 clear (29.3.2), NPT P = 0 — for
 * never-touched lazy pages, after unmap of 4K pages and huge leaves, and at
 * the root after everything is gone. */
static void not_present(uint32_t format) {
  th_fx_t f = new_fx(format, 0);
  uint64_t raw;
  /* fresh root: nothing present */
  for (uint64_t i = 0; i < 512; i++) {
    CHECK(th_entry(f.pool, i << 39, 3, &raw));
    CHECK(!is_present(format, raw));
  }
  CHECK_STATUS(axalloc_map_alloc(f.as, GPA_4K, 8 * 4096, AXALLOC_READ | AXALLOC_WRITE | AXALLOC_EXEC, false), AXALLOC_OK);
  /* lazy, untouched: the walk stops above level 0 or finds a non-present entry */
  if (th_entry(f.pool, GPA_4K, 0, &raw)) CHECK(!is_present(format, raw));
  if (th_entry(f.pool, GPA_4K, 1, &raw)) CHECK(!is_present(format, raw) || (raw & (1ull << 7)) == 0);
  CHECK_STATUS(axalloc_handle_fault(f.as, GPA_4K + 3 * 4096, AXALLOC_WRITE), AXALLOC_OK);
  for (int i = 0; i < 8; i++) {
    CHECK(th_entry(f.pool, GPA_4K + (uint64_t)i * 4096, 0, &raw));
    CHECK(is_present(format, raw) == (i == 3));
  }
  CHECK_STATUS(axalloc_unmap(f.as, GPA_4K + 3 * 4096, 4096), AXALLOC_OK);
  if (th_entry(f.pool, GPA_4K + 3 * 4096, 0, &raw)) CHECK(!is_present(format, raw));
  /* huge leaves removed */
  CHECK_STATUS(axalloc_map_linear(f.as, GPA_1G + GIB, hpa_pattern(0, GIB), GIB, AXALLOC_READ), AXALLOC_OK);
  CHECK_STATUS(axalloc_map_linear(f.as, GPA_1G + 2 * GIB, hpa_pattern(1, 2 * MIB), 4 * MIB, AXALLOC_READ), AXALLOC_OK);
  CHECK_STATUS(axalloc_unmap(f.as, GPA_1G + GIB, GIB), AXALLOC_OK);
  if (th_entry(f.pool, GPA_1G + GIB, 2, &raw)) CHECK(!is_present(format, raw));
  CHECK_STATUS(axalloc_unmap(f.as, GPA_1G + 2 * GIB, 2 * MIB), AXALLOC_OK);
  if (th_entry(f.pool, GPA_1G + 2 * GIB, 1, &raw)) CHECK(!is_present(format, raw));
  CHECK(th_entry(f.pool, GPA_1G + 2 * GIB + 2 * MIB, 1, &raw));
  check_leaf(format, "remaining 2M", GPA_1G + 2 * GIB + 2 * MIB, 1, raw,
             expect_leaf(format, hpa_pattern(1, 2 * MIB) + 2 * MIB, AXALLOC_READ, 1));
  validate_tree(&f);
  /* everything gone: every root entry not present */
  CHECK_STATUS(axalloc_unmap(f.as, 0, 1ull << 48), AXALLOC_OK);
  for (uint64_t i = 0; i < 512; i++) {
    CHECK(th_entry(f.pool, i << 39, 3, &raw));
    CHECK(!is_present(format, raw));
  }
  CHECK_EQ_U64(th_stats(&f).table_frames, 1);
  CHECK(th_fx_done(&f) == 0);
}

static void ept_not_present(void) { not_present(AXALLOC_FORMAT_X86_EPT); }
static void npt_not_present(void) { not_present(AXALLOC_FORMAT_X86_NPT); }

/* Splitting a 1 GiB leaf (unmap of one 4K page inside it): the PDPTE becomes
 * a non-leaf entry (EPT: bits 7:3 = 0, so no memory type and no PS left
 * behind; NPT: no PS, NX, PWT/PCD), the other 2M ranges keep 2M leaves with
 * the same flags, and the 4K PTEs carry the flags with bit 7 clear (NPT: bit
 * 7 of a PTE is PAT, a copied PS bit would change the memory type) and the
 * right address (NPT: bit 12 of a huge leaf is PAT, not address). */
static void split(uint32_t format) {
  for (int c = 0; c < ALL_FLAGS_COMBOS; c++) {
    uint32_t flags = combo_flags(c);
    uint64_t hpa = hpa_pattern(c, GIB);
    th_fx_t f = new_fx(format, 0);
    CHECK_STATUS(axalloc_map_linear(f.as, GPA_1G, hpa, GIB, flags), AXALLOC_OK);
    uint64_t hole = GPA_1G + 2 * MIB + 4096;
    CHECK_STATUS(axalloc_unmap(f.as, hole, 4096), AXALLOC_OK);
    uint64_t raw;
    check_nonleaf_path(&f, hole, 0);
    check_nonleaf_path(&f, GPA_1G, 1);
    CHECK(th_entry(f.pool, GPA_1G, 1, &raw));
    check_leaf(format, "split 2M", GPA_1G, 1, raw, expect_leaf(format, hpa, flags, 1));
    CHECK(th_entry(f.pool, GPA_1G + 511 * 2 * MIB, 1, &raw));
    check_leaf(format, "split 2M", GPA_1G + 511 * 2 * MIB, 1, raw, expect_leaf(format, hpa + 511 * 2 * MIB, flags, 1));
    for (uint64_t i = 0; i < 512; i++) {
      uint64_t g = GPA_1G + 2 * MIB + i * 4096;
      CHECK(th_entry(f.pool, g, 0, &raw));
      if (i == 1) {
        CHECK(!is_present(format, raw));
        continue;
      }
      check_leaf(format, "split 4K", g, 0, raw, expect_leaf(format, hpa + 2 * MIB + i * 4096, flags, 0));
    }
    CHECK_EQ_U64(validate_tree(&f), 511 + 511);
    CHECK(th_fx_done(&f) == 0);
  }
}

static void ept_split(void) { split(AXALLOC_FORMAT_X86_EPT); }
static void npt_split(void) { split(AXALLOC_FORMAT_X86_NPT); }

/* AXALLOC_CFG_NO_HUGE_1G: no PDPTE with bit 7 set, 2 MiB leaves instead. */
static void no_huge_1g(uint32_t format) {
  for (int c = 0; c < ALL_FLAGS_COMBOS; c++) {
    uint32_t flags = combo_flags(c);
    uint64_t hpa = hpa_pattern(c, GIB);
    th_fx_t f = new_fx(format, AXALLOC_CFG_NO_HUGE_1G);
    CHECK_STATUS(axalloc_map_linear(f.as, GPA_1G, hpa, GIB, flags), AXALLOC_OK);
    uint64_t raw, ps = 0;
    CHECK_STATUS(axalloc_translate(f.as, GPA_1G, NULL, &ps), AXALLOC_OK);
    CHECK_EQ_U64(ps, 2 * MIB);
    check_nonleaf_path(&f, GPA_1G, 1);
    for (uint64_t i = 0; i < 512; i += 73) {
      CHECK(th_entry(f.pool, GPA_1G + i * 2 * MIB, 1, &raw));
      check_leaf(format, "no-1G 2M", GPA_1G + i * 2 * MIB, 1, raw, expect_leaf(format, hpa + i * 2 * MIB, flags, 1));
    }
    CHECK_EQ_U64(validate_tree(&f), 512);
    CHECK(th_fx_done(&f) == 0);
  }
}

static void ept_no_huge_1g(void) { no_huge_1g(AXALLOC_FORMAT_X86_EPT); }
static void npt_no_huge_1g(void) { no_huge_1g(AXALLOC_FORMAT_X86_NPT); }

/* Hardware-set accessed/dirty bits do not make the library rewrite or
 * misread the entry (the leaf keeps its form and address). */
static void accessed_dirty(uint32_t format) {
  th_fx_t f = new_fx(format, 0);
  uint32_t flags = AXALLOC_READ | AXALLOC_WRITE;
  uint64_t ad = format == AXALLOC_FORMAT_X86_EPT ? (EPT_A | EPT_D) : (NPT_A | NPT_D);
  CHECK_STATUS(axalloc_map_alloc(f.as, GPA_4K, 2 * 4096, flags, false), AXALLOC_OK);
  CHECK_STATUS(axalloc_handle_fault(f.as, GPA_4K, AXALLOC_WRITE), AXALLOC_OK);
  uint64_t hpa = 0, raw;
  CHECK_STATUS(axalloc_translate(f.as, GPA_4K, &hpa, NULL), AXALLOC_OK);
  CHECK(th_set_leaf_bits(f.pool, GPA_4K, ad));
  CHECK_STATUS(axalloc_handle_fault(f.as, GPA_4K, AXALLOC_READ), AXALLOC_OK);
  CHECK_STATUS(axalloc_handle_fault(f.as, GPA_4K + 4096, AXALLOC_READ), AXALLOC_OK);
  CHECK(th_entry(f.pool, GPA_4K, 0, &raw));
  check_leaf(format, "A/D-set", GPA_4K, 0, raw & ~ad, expect_leaf(format, hpa, flags, 0));
  CHECK((raw & ad) == ad); /* not cleared behind the hardware's back by a spurious fault */
  CHECK_EQ_U64(th_stats(&f).guest_frames, 2);
  CHECK(th_fx_done(&f) == 0);
}

static void ept_accessed_dirty(void) { accessed_dirty(AXALLOC_FORMAT_X86_EPT); }
static void npt_accessed_dirty(void) { accessed_dirty(AXALLOC_FORMAT_X86_NPT); }

TEST_MAIN(T(ept_leaf_4k_populate), T(npt_leaf_4k_populate), T(ept_leaf_4k_fault), T(npt_leaf_4k_fault),
          T(ept_leaf_4k_write), T(npt_leaf_4k_write), T(ept_leaf_linear_4k), T(npt_leaf_linear_4k),
          T(ept_leaf_2m), T(npt_leaf_2m), T(ept_leaf_1g), T(npt_leaf_1g), T(ept_nonleaf), T(npt_nonleaf),
          T(ept_not_present), T(npt_not_present), T(ept_split), T(npt_split), T(ept_no_huge_1g),
          T(npt_no_huge_1g), T(ept_accessed_dirty), T(npt_accessed_dirty))
