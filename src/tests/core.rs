//! The rules of the kernel-grade core, each a test that fails without it:
//! entry encodings from the manuals, the walker's compare-exchange paths, and
//! the address space's flush and fault answers.

use core::sync::atomic::{AtomicU64, Ordering};

use page_table_multiarch::{GenericPTE, MappingFlags};

use super::pool::Pool;
use super::with_space;
use crate::addr::Hpa;
use crate::flags::{Access, Flags};
use crate::format::{self, Entry, Format, FormatKind, ept, ept::Ept, npt, npt::Npt, with_format};
use crate::space::AddrSpace;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn rw() -> Flags {
    Flags::from_bits(3).unwrap()
}

/// The raw entry on the walk to `gpa` at `level` (3 = root).
pub(super) fn entry<F: Format>(
    pool: &Pool,
    s: &AddrSpace,
    gpa: u64,
    level: usize,
) -> &'static AtomicU64 {
    let mut table = s.root().as_u64();
    let mut l = F::LEVELS - 1;
    loop {
        let idx = (gpa as usize >> (12 + 9 * l))
            % (512 << if l == F::LEVELS - 1 { F::ROOT_ORDER } else { 0 });
        // SAFETY: a table frame of the pool, alive for the test.
        let e = unsafe { &*(pool.virt(table).add(idx) as *const AtomicU64) };
        if l == level {
            return e;
        }
        match format::decode::<F>(e.load(Ordering::Relaxed), l) {
            Entry::Table(t) => table = t.as_u64(),
            other => panic!("walk to {gpa:#x} stops at level {l}: {other:?}"),
        }
        l -= 1;
    }
}

#[test]
fn npt_huge_leaf_address_excludes_pat() {
    // APM vol. 2: bit 12 of a 2 MiB / 1 GiB leaf is PAT, not an address bit.
    for level in [1, 2] {
        let hpa = Hpa::from_usize(0x2_0000_0000);
        let raw = format::leaf::<Npt>(hpa, MappingFlags::READ, level, false) | npt::bits::PAT_HUGE;
        assert_eq!(
            format::decode::<Npt>(raw, level),
            Entry::Leaf { hpa, owned: false }
        );
        // A split moves it to bit 7 of the 4 KiB children (PAT there).
        if level == 1 {
            let c = Npt::child(raw, 1, 3);
            assert_eq!(c & npt::bits::PAT_4K, npt::bits::PAT_4K);
            assert_eq!(Npt::addr(c, 0), 0x2_0000_3000);
            let even = Npt::child(raw, 1, 4);
            assert_eq!(Npt::addr(even, 0), 0x2_0000_4000, "bit 12 is not carried");
        }
    }
}

#[test]
fn ept_entries_suppress_ve() {
    // SDM vol. 3C 28.2.2: with "EPT-violation #VE" on, a violation on a
    // not-present entry is delivered to the guest unless bit 63 is set.
    assert_eq!(Ept::EMPTY, 1 << 63);
    let leaf = format::leaf::<Ept>(Hpa::from_usize(0x1000), MappingFlags::READ, 0, true);
    assert_ne!(
        Ept::park(leaf) & ept::bits::SUPPRESS_VE,
        0,
        "parked: not present"
    );
    assert_eq!(Ept::unpark(Ept::park(leaf)), leaf);
    with_space(FormatKind::X86Ept, 64, |pool, s| {
        let root = pool.virt(s.root().as_u64());
        let root_all_empty = || {
            (0..512).all(|i| {
                // SAFETY: the root frame has 512 entries.
                unsafe { *root.add(i) == 1 << 63 }
            })
        };
        assert!(root_all_empty(), "a fresh root is all suppress-#VE");
        s.map_alloc(0x20_0000, 0x1000, rw(), false).unwrap();
        s.handle_fault(0x20_0000, Access::from_bits(2).unwrap())
            .unwrap();
        s.unmap(0x20_0000, 0x1000).unwrap();
        assert!(
            root_all_empty(),
            "entries cleared by unmap are suppress-#VE"
        );
    });
}

fn split_keeps_accessed_dirty<F: Format>(kind: FormatKind, ad: u64) {
    with_space(kind, 64, |pool, s| {
        s.map_linear(GIB, 8 * GIB, 4 * MIB, Flags::READ).unwrap();
        let e = entry::<F>(pool, s, GIB, 1);
        e.fetch_or(ad, Ordering::Relaxed); // as the CPU would
        s.unmap(GIB + MIB, 0x1000).unwrap();
        for i in 0..512u64 {
            let gpa = GIB + i * 0x1000;
            if gpa == GIB + MIB {
                continue;
            }
            let raw = entry::<F>(pool, s, gpa, 0).load(Ordering::Relaxed);
            assert_eq!(raw & ad, ad, "child {i} lost accessed/dirty");
            assert_eq!(F::addr(raw, 0) as u64, 8 * GIB + i * 0x1000);
        }
    });
}

#[test]
fn split_keeps_accessed_dirty_ept() {
    split_keeps_accessed_dirty::<Ept>(FormatKind::X86Ept, ept::bits::ACCESSED | ept::bits::DIRTY);
}

#[test]
fn split_keeps_accessed_dirty_npt() {
    split_keeps_accessed_dirty::<Npt>(FormatKind::X86Npt, npt::bits::ACCESSED | npt::bits::DIRTY);
}

#[test]
fn fault_on_present_page_checks_leaf_rights() {
    for &kind in super::shapes() {
        with_space(kind, 64, |pool, s| {
            s.map_alloc(0x20_0000, 0x1000, rw(), false).unwrap();
            let write = Access::from_bits(2).unwrap();
            s.handle_fault(0x20_0000, write).unwrap();
            // A write-protected leaf (what protect / dirty logging make).
            with_format!(kind, F => {
                let e = entry::<F>(pool, s, 0x20_0000, 0);
                let mut pte = F::from_raw(e.load(Ordering::Relaxed));
                pte.set_flags(MappingFlags::READ, false);
                e.store(pte.bits() as u64, Ordering::Relaxed);
            });
            let before = pool.in_use();
            assert_eq!(
                s.handle_fault(0x20_0000, write),
                Err(crate::error::Error::Access)
            );
            s.handle_fault(0x20_0000, Access::from_bits(1).unwrap())
                .unwrap();
            assert_eq!(pool.in_use(), before);
        });
    }
}

#[test]
fn fault_meeting_a_frozen_entry_is_spurious() {
    with_space(FormatKind::X86Npt, 64, |pool, s| {
        s.map_alloc(0x20_0000, 0x2000, rw(), false).unwrap();
        s.handle_fault(0x20_0000, Access::from_bits(2).unwrap())
            .unwrap();
        // Park the neighbour's empty leaf slot as an operation in flight does.
        let e = entry::<Npt>(pool, s, 0x20_1000, 0);
        let frozen = Npt::park(format::leaf::<Npt>(
            Hpa::from_usize(0x1000),
            MappingFlags::READ,
            0,
            false,
        ));
        e.store(frozen, Ordering::Relaxed);
        let before = (pool.in_use(), s.stats().faults);
        assert_eq!(
            s.handle_fault(0x20_1000, Access::from_bits(1).unwrap()),
            Ok(())
        );
        assert_eq!(
            (pool.in_use(), s.stats().faults),
            before,
            "nothing allocated"
        );
        e.store(Npt::EMPTY, Ordering::Relaxed);
    });
}

#[test]
fn fill_holes_across_parked_table() {
    for &kind in super::shapes() {
        with_space(kind, 64, |_, s| {
            for base in [0x20_0000u64, GIB] {
                s.map_alloc(base - 0x1000, 0x1000, rw(), false).unwrap();
                s.map_alloc(base, 0x1000, rw(), false).unwrap();
                let data: Vec<u8> = (0..32).collect();
                s.write(base - 0x10, &data).unwrap();
                let mut back = [0u8; 32];
                s.read(base - 0x10, &mut back).unwrap();
                assert_eq!(&back[..], &data[..]);
            }
        });
    }
}

#[test]
fn unmap_flush_covers_pruned_tables() {
    with_space(FormatKind::X86Ept, 64, |pool, s| {
        s.map_alloc(0x1000, 0x1000, rw(), false).unwrap();
        s.handle_fault(0x1000, Access::from_bits(1).unwrap())
            .unwrap();
        assert_eq!(s.stats().table_frames, 4);
        s.unmap(0x1000, 0x1000).unwrap();
        assert_eq!(s.stats().table_frames, 1, "emptied tables reclaimed");
        // The PDPT freed translated [0, 512 GiB): the flush must cover it.
        let (gpa, size) = pool.last_flush();
        assert!(gpa == 0 && size >= 512 * GIB, "flush {gpa:#x}+{size:#x}");
        assert!(gpa + size <= 1 << 40, "inside the window");
        // A neighbour keeps the tables: the flush covers the page alone.
        s.map_alloc(0x1000, 0x1000, rw(), false).unwrap();
        s.map_alloc(0x3000, 0x1000, rw(), false).unwrap();
        s.handle_fault(0x1000, Access::from_bits(1).unwrap())
            .unwrap();
        s.handle_fault(0x3000, Access::from_bits(1).unwrap())
            .unwrap();
        s.unmap(0x1000, 0x1000).unwrap();
        assert_eq!(pool.last_flush(), (0x1000, 0x1000));
        assert_eq!(s.stats().table_frames, 4);
    });
}

#[test]
fn maps_over_a_range_in_flight_are_busy() {
    with_space(FormatKind::X86Ept, 64, |_, s| {
        let claim = s.test_claim(0x20_0000, 0x40_0000);
        assert_eq!(
            s.map_alloc(0x30_0000, 0x1000, rw(), false),
            Err(crate::error::Error::Busy)
        );
        assert_eq!(
            s.map_linear(0x30_0000, 0, 0x1000, Flags::READ),
            Err(crate::error::Error::Busy)
        );
        s.map_alloc(0x40_0000, 0x1000, rw(), false).unwrap();
        s.test_release(claim);
        s.map_alloc(0x30_0000, 0x1000, rw(), false).unwrap();
    });
}

/// Arm ARM, "Using break-before-make when updating translation table
/// entries": a valid block replaced by a table (an unmap splitting a 2 MiB
/// linear block) goes invalid and is flushed first; at that flush the block's
/// entry is invalid; then the removal's flush: two flushes, never more. x86
/// replaces the leaf in place: one flush.
#[test]
#[cfg_attr(
    miri,
    ignore = "multi-page roots: ~1 min each under Miri (see tests::shapes)"
)]
fn arm_split_breaks_before_make() {
    for kind in [
        FormatKind::ArmL3R1,
        FormatKind::ArmL2R2,
        FormatKind::X86Ept,
        FormatKind::Sv39x4,
    ] {
        with_space(kind, 64, |pool, s| {
            let (g, h) = (0x4000_0000u64, 0x8000_0000u64);
            s.map_linear(g, h, 4 * MIB, Flags::READ).unwrap();
            let block = with_format!(kind, F => entry::<F>(pool, s, g, 1));
            pool.watch(block);
            let before = pool.flush_log().len();
            s.unmap(g + 0x10_0000, 0x1000).unwrap();
            let log = pool.flush_log()[before..].to_vec();
            let bbm = kind.family() == crate::format::Family::ArmS2;
            if bbm {
                assert_eq!(log.len(), 2, "{kind:?}: {log:x?}");
                let (gpa, size, seen) = log[0];
                assert!(gpa <= g && g + 2 * MIB <= gpa + size, "{kind:?}: {log:x?}");
                assert_eq!(seen & 1, 0, "{kind:?}: block still valid at the flush");
            } else {
                assert_eq!(log.len(), 1, "{kind:?}: {log:x?}");
            }
            assert_eq!(log.last().unwrap().0, g + 0x10_0000);
            // The rest of the block maps as before, page by page now.
            for off in [0u64, 0xf_f000, 0x10_1000, 0x1f_f000] {
                let (hpa, size) = s.translate(g + off).unwrap();
                assert_eq!(
                    (hpa.as_u64(), size),
                    (h + off, 0x1000),
                    "{kind:?} +{off:#x}"
                );
            }
            assert_eq!(
                s.translate(g + 0x10_0000),
                Err(crate::error::Error::NotMapped)
            );
            let (hpa, size) = s.translate(g + 3 * MIB).unwrap();
            assert_eq!((hpa.as_u64(), size), (h + 3 * MIB, 2 * MIB as usize));
        });
    }
}

/// Both edges of an unmap inside one 1 GiB Arm block: the block is broken
/// once, and the tables built for both edges before the link.
#[test]
#[cfg_attr(
    miri,
    ignore = "multi-page roots: ~1 min each under Miri (see tests::shapes)"
)]
fn arm_split_of_both_edges_in_one_block() {
    with_space(FormatKind::ArmL3R1, 64, |pool, s| {
        let (g, h) = (0x4000_0000u64, 0x1_0000_0000u64);
        s.map_linear(g, h, GIB, Flags::READ).unwrap();
        let before = pool.flush_log().len();
        s.unmap(g + 0x10_1000, 0x40_0000).unwrap();
        assert_eq!(pool.flush_log().len() - before, 2);
        for off in [0u64, 0x10_0000, 0x50_1000, 0x60_0000, GIB - 0x1000] {
            let (hpa, _) = s.translate(g + off).unwrap();
            assert_eq!(hpa.as_u64(), h + off, "+{off:#x}");
        }
        for off in [0x10_1000u64, 0x30_0000, 0x50_0000] {
            assert_eq!(
                s.translate(g + off),
                Err(crate::error::Error::NotMapped),
                "+{off:#x}"
            );
        }
    });
}
