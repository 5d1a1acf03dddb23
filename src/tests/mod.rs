//! Unit tests of the Rust core, over a small in-process frame pool. The C
//! suite (`c-tests/`) tests the product through its C API; these pin down
//! the pieces: entry encodings, the region set, the walker's split planning,
//! and the address space's bookkeeping.

/// The table shapes a test sweeps: all of them natively; under Miri one
/// (4-level EPT). Miri interprets every access and checks every borrow of a
/// whole table slice: a shape costs seconds per test there, and the suite
/// must fit CI's budget. The unsafe code — the walker, the iterator, the
/// frame and lock paths — is the same for every shape (formats are safe bit
/// arithmetic behind one trait, all checked natively on every shape).
pub(crate) fn shapes() -> &'static [crate::format::FormatKind] {
    use crate::format::FormatKind;
    if cfg!(miri) {
        &[FormatKind::X86Ept]
    } else {
        &FormatKind::ALL
    }
}

mod cache;
mod core;
mod fast_fault;
mod formats;
mod huge;
mod model;
mod protect;
mod track;
/// Runs `f` on a fresh space of `format` (window up to 2^40) over a pool of
/// `frames`, then destroys it and checks every frame came back.
pub(crate) fn with_space(
    format: crate::format::FormatKind,
    frames: usize,
    f: impl FnOnce(&pool::Pool, &crate::space::AddrSpace),
) {
    let pool = pool::Pool::new(frames);
    let space = pool.space(format, 1 << format.max_gpa_bits().min(40));
    // SAFETY: alive until `pool.destroy(space)` below.
    f(&pool, unsafe { space.as_ref() });
    pool.destroy(space);
    assert_eq!(pool.in_use(), 0, "frames leaked");
}

pub(crate) mod pool;

/// Region flags from bits (tests).
pub(crate) fn flags(bits: u32) -> crate::flags::Flags {
    crate::flags::Flags::from_bits(bits).unwrap()
}
/// A read access.
pub(crate) fn read() -> crate::flags::Access {
    crate::flags::Access::from_bits(1).unwrap()
}
/// A write access.
pub(crate) fn write() -> crate::flags::Access {
    crate::flags::Access::from_bits(2).unwrap()
}
/// Runs `f` on a fresh space of every shape [`shapes`] sweeps.
pub(crate) fn each(
    frames: usize,
    f: impl Fn(crate::format::FormatKind, &pool::Pool, &crate::space::AddrSpace),
) {
    for &kind in shapes() {
        with_space(kind, frames, |pool, s| f(kind, pool, s));
    }
}

use page_table_multiarch::{GenericPTE, MappingFlags};

use crate::addr::{Gpa, Hpa};
use crate::flags::{Access, Flags};
use crate::format::{self, Entry, Format, ept::Ept, npt::Npt};
use crate::region::{Backend, MAX_REGIONS, Region, RegionSet};
use pool::Pool;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn rw() -> MappingFlags {
    MappingFlags::READ | MappingFlags::WRITE
}

// --- formats -------------------------------------------------------------

fn roundtrip<F: Format>() {
    for level in 0..=2 {
        // The highest frame a leaf of this size can map (huge leaves are
        // aligned to their size).
        let hpa = Hpa::from_usize(0x0010_0000_0000_0000 - format::level_size(level));
        for owned in [false, true] {
            let raw = format::leaf::<F>(hpa, rw(), level, owned);
            assert_eq!(
                format::decode::<F>(raw, level),
                Entry::Leaf { hpa, owned },
                "level {level}"
            );
            let parked = F::park(raw);
            assert!(!F::from_raw(parked).is_present());
            assert!(F::is_parked(parked));
            assert_eq!(format::decode::<F>(parked, level), Entry::Parked);
            assert_eq!(F::unpark(parked), raw);
        }
    }
    let hpa = Hpa::from_usize(0x000f_ffff_ffff_f000);
    let t = format::table::<F>(hpa);
    assert_eq!(format::decode::<F>(t, 1), Entry::Table(hpa));
    assert_eq!(F::unpark(F::park(t)), t);
    assert_eq!(format::decode::<F>(0, 0), Entry::Empty);
    // A frame at host-physical 0 is a real frame, not "empty".
    let zero = format::leaf::<F>(Hpa::from_usize(0), rw(), 0, true);
    assert_ne!(format::decode::<F>(zero, 0), Entry::Empty);
    assert!(F::is_parked(F::park(zero)));
}

#[test]
fn ept_entries_roundtrip_and_park_non_present() {
    roundtrip::<Ept>();
}

#[test]
fn npt_entries_roundtrip_and_park_non_present() {
    roundtrip::<Npt>();
}

#[test]
fn accessed_dirty_bits_do_not_change_meaning() {
    let hpa = Hpa::from_usize(0x1234_5000);
    let e = format::leaf::<Ept>(hpa, rw(), 0, true);
    let ad = e | crate::format::ept::bits::ACCESSED | crate::format::ept::bits::DIRTY;
    assert_eq!(format::decode::<Ept>(ad, 0), format::decode::<Ept>(e, 0));
    let n = format::leaf::<Npt>(hpa, rw(), 0, true);
    let ad = n | crate::format::npt::bits::ACCESSED | crate::format::npt::bits::DIRTY;
    assert_eq!(format::decode::<Npt>(ad, 0), format::decode::<Npt>(n, 0));
}

#[test]
fn flags_reject_unknown_bits_and_empty_access() {
    assert!(Flags::from_bits(0x10).is_none());
    assert!(Flags::from_bits(0xf).is_some());
    assert!(Access::from_bits(0).is_none());
    assert!(Access::from_bits(AXS_DEVICE).is_none());
    let a = Access::from_bits(2).unwrap();
    assert!(!a.allowed_by(Flags::READ));
    assert!(a.allowed_by(Flags::from_bits(3).unwrap()));
}
const AXS_DEVICE: u32 = 8;

// --- region set ----------------------------------------------------------

fn region(start: u64, end: u64) -> Region {
    Region {
        start: Gpa::from_u64(start),
        end: Gpa::from_u64(end),
        backend: Backend::Alloc,
        flags: Flags::READ,
    }
}

fn spans(set: &RegionSet) -> Vec<(u64, u64)> {
    (0..set.len())
        .map(|i| set.get(i).unwrap())
        .map(|r| (r.start.as_u64(), r.end.as_u64()))
        .collect()
}

#[test]
fn region_set_keeps_order_and_finds() {
    let pool = Pool::new(16);
    let mut set = RegionSet::new();
    for (s, e) in [(0x5000, 0x6000), (0x1000, 0x2000), (0x3000, 0x4000)] {
        set.reserve(pool.hooks(), 1).unwrap();
        set.insert(region(s, e)).unwrap();
    }
    assert_eq!(
        spans(&set),
        [(0x1000, 0x2000), (0x3000, 0x4000), (0x5000, 0x6000)]
    );
    assert!(set.find(Gpa::from_u64(0x3fff)).is_some());
    assert!(set.find(Gpa::from_u64(0x4000)).is_none());
    assert!(set.overlaps(Gpa::from_u64(0x3800), Gpa::from_u64(0x5800)));
    assert!(!set.overlaps(Gpa::from_u64(0x2000), Gpa::from_u64(0x3000)));
    set.release(pool.hooks());
    assert_eq!(pool.in_use(), 0);
}

#[test]
fn region_set_remove_range_trims_splits_and_drops() {
    let pool = Pool::new(16);
    let mut set = RegionSet::new();
    for (s, e) in [(0x1000, 0x5000), (0x6000, 0x8000), (0x9000, 0xc000)] {
        set.reserve(pool.hooks(), 1).unwrap();
        set.insert(region(s, e)).unwrap();
    }
    // Split the first in the middle.
    set.reserve(pool.hooks(), 1).unwrap();
    {
        let mut spare = crate::region::Spare::new();
        set.remove_range(Gpa::from_u64(0x2000), Gpa::from_u64(0x3000), &mut spare)
            .unwrap();
        spare.free(pool.hooks());
    }
    assert_eq!(
        spans(&set),
        [
            (0x1000, 0x2000),
            (0x3000, 0x5000),
            (0x6000, 0x8000),
            (0x9000, 0xc000)
        ]
    );
    // Trim one's tail, drop one, trim one's head.
    {
        let mut spare = crate::region::Spare::new();
        set.remove_range(Gpa::from_u64(0x4000), Gpa::from_u64(0xa000), &mut spare)
            .unwrap();
        spare.free(pool.hooks());
    }
    assert_eq!(
        spans(&set),
        [(0x1000, 0x2000), (0x3000, 0x4000), (0xa000, 0xc000)]
    );
    set.release(pool.hooks());
    assert_eq!(pool.in_use(), 0);
}

#[test]
fn region_set_linear_hpa_moves_with_trim() {
    let r = Region {
        backend: Backend::Linear {
            hpa: Hpa::from_usize(0x10_0000),
        },
        ..region(0x1000, 0x9000)
    };
    let c = r.clipped(Gpa::from_u64(0x3000), Gpa::from_u64(0x5000));
    assert_eq!(
        c.backend,
        Backend::Linear {
            hpa: Hpa::from_usize(0x10_2000)
        }
    );
}

#[test]
fn region_set_grows_across_chunks_and_gives_them_back() {
    let pool = Pool::new(128);
    let mut set = RegionSet::new();
    let n = 300;
    for i in 0..n {
        set.reserve(pool.hooks(), 1).unwrap();
        set.insert(region(0x2000 * i + 0x1000, 0x2000 * i + 0x2000))
            .unwrap();
    }
    assert!(pool.in_use() >= 2);
    assert_eq!(set.len(), n as usize);
    {
        let mut spare = crate::region::Spare::new();
        set.remove_range(Gpa::from_u64(0), Gpa::from_u64(0x2000 * n), &mut spare)
            .unwrap();
        spare.free(pool.hooks());
    }
    assert_eq!(set.len(), 0);
    assert_eq!(pool.in_use(), 0);
}

#[test]
fn region_set_reserve_fails_cleanly() {
    let pool = Pool::new(1);
    let mut set = RegionSet::new();
    pool.fail_after(0);
    assert!(set.reserve(pool.hooks(), 1).is_err());
    assert_eq!(pool.in_use(), 0);
    assert!(set.reserve(pool.hooks(), MAX_REGIONS + 1).is_err());
    // The README promises this limit.
    assert_eq!(MAX_REGIONS, 6528);
}

// --- address space -------------------------------------------------------

#[test]
#[cfg_attr(miri, ignore = "64 MiB of frames: too slow to interpret")]
fn populate_uses_the_four_level_minimum_of_tables() {
    let pool = Pool::new(17000);
    let space = pool.space(crate::format::FormatKind::X86Ept, 4 * GIB);
    // SAFETY: alive until `pool.destroy(space)` below.
    let s = unsafe { space.as_ref() };
    s.map_alloc(GIB, 64 * MIB, Flags::READ, true).unwrap();
    let st = s.stats();
    assert_eq!(st.guest_frames, 64 * MIB / 4096);
    // root + PDPT + PD + one PT per 2 MiB
    assert_eq!(st.table_frames, 1 + 1 + 1 + 32);
    s.unmap(0, 4 * GIB).unwrap();
    assert_eq!(s.stats().table_frames, 1);
    assert_eq!(pool.flushes(), 1);
    pool.destroy(space);
    assert_eq!(pool.in_use(), 0);
}

#[test]
fn split_planning_counts_each_huge_leaf_once() {
    let pool = Pool::new(64);
    let space = pool.space(crate::format::FormatKind::X86Npt, 8 * GIB);
    // SAFETY: alive until `pool.destroy(space)` below.
    let s = unsafe { space.as_ref() };
    s.map_linear(GIB, 4 * GIB, 2 * GIB, Flags::READ).unwrap();
    let cases = [
        // both edges inside the same 2 MiB page of one 1 GiB leaf
        ((GIB + 0x1000, GIB + 0x2000), 2),
        // edges in different 2 MiB pages of one 1 GiB leaf
        ((GIB + 0x1000, GIB + 3 * MIB + 0x1000), 3),
        // edges in different 1 GiB leaves
        ((GIB + 0x1000, 2 * GIB + 0x1000), 4),
        // 2 MiB-aligned edges inside one 1 GiB leaf
        ((GIB + 2 * MIB, GIB + 4 * MIB), 1),
        // 1 GiB-aligned: nothing to split
        ((GIB, 2 * GIB), 0),
    ];
    for ((a, b), want) in cases {
        let n = crate::format::with_format!(crate::format::FormatKind::X86Npt, F => {
            s.test_walker::<F>()
                .split_tables_needed(Gpa::from_u64(a), Gpa::from_u64(b))
                .unwrap()
        });
        assert_eq!(n, want, "unmap [{a:#x}, {b:#x})");
        let before = s.stats().table_frames;
        s.unmap(a, b - a).unwrap();
        assert_eq!(
            s.stats().table_frames,
            before + want as u64,
            "[{a:#x}, {b:#x})"
        );
        if a > GIB {
            let (hpa, _) = s.translate(a - 0x1000).expect("below the hole");
            assert_eq!(hpa.as_u64(), 4 * GIB + (a - 0x1000 - GIB));
        }
        assert!(s.translate(a).is_err());
        if b < 3 * GIB {
            let (hpa, _) = s.translate(b).unwrap();
            assert_eq!(hpa.as_u64(), 4 * GIB + (b - GIB));
        }
        s.unmap(GIB, 2 * GIB).unwrap();
        assert_eq!(s.stats().table_frames, 1);
        s.map_linear(GIB, 4 * GIB, 2 * GIB, Flags::READ).unwrap();
    }
    pool.destroy(space);
    assert_eq!(pool.in_use(), 0);
}

#[test]
fn concurrent_faults_on_one_page_install_one_frame() {
    let pool = Pool::new(64);
    let space = pool.space(crate::format::FormatKind::X86Ept, GIB);
    // SAFETY: alive until `pool.destroy(space)` below.
    let s = unsafe { space.as_ref() };
    s.map_alloc(0x20_0000, 0x10_0000, Flags::from_bits(3).unwrap(), false)
        .unwrap();
    let write = Access::from_bits(2).unwrap();
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for _ in 0..if cfg!(miri) { 10 } else { 200 } {
                    s.handle_fault(0x20_0000, write).unwrap();
                }
            });
        }
    });
    assert_eq!(s.stats().guest_frames, 1);
    assert_eq!(s.stats().faults, 1);
    pool.destroy(space);
    assert_eq!(pool.in_use(), 0);
}

#[test]
fn failed_populate_leaves_nothing_behind() {
    // region chunk + PDPT + 2 PDs + 2 PTs + 4 guest frames
    let needed = 1 + 1 + 2 + 2 + 4;
    // Under Miri a sample of the failure points (the pool set-up dominates).
    for n in (0..needed + 2).filter(|n| !cfg!(miri) || n % 4 == 0 || *n == needed) {
        let pool = Pool::new(64);
        let space = pool.space(crate::format::FormatKind::X86Ept, 4 * GIB);
        // SAFETY: alive until `pool.destroy(space)` below.
        let s = unsafe { space.as_ref() };
        let before = (s.stats(), pool.in_use());
        pool.fail_after(n);
        // Crosses a 1 GiB boundary: two PDs, two PTs.
        let r = s.map_alloc(GIB - 0x2000, 0x4000, Flags::READ, true);
        pool.fail_never();
        assert_eq!(r.is_ok(), n >= needed, "n = {n}");
        if r.is_err() {
            assert_eq!((s.stats(), pool.in_use()), before, "n = {n}");
            assert!(s.translate(GIB - 0x2000).is_err());
        }
        pool.destroy(space);
        assert_eq!(pool.in_use(), 0);
    }
}
