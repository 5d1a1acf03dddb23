//! `protect`: rights in the entries. Each rule is a test over every shape.

use core::sync::atomic::Ordering;

use super::core::entry;
use super::pool::Pool;
use super::{each, flags, read, shapes, with_space, write};
use crate::error::Error;
use crate::flags::Access;
use crate::format::{self, Entry, Format, FormatKind, with_format};
use crate::space::AddrSpace;

const R: u32 = 1;
const RW: u32 = 3;
const RWX: u32 = 7;
const PAGE: u64 = 0x1000;
const BASE: u64 = 0x40_0000;

fn exec() -> Access {
    Access::from_bits(4).unwrap()
}

/// The level-0 entry of `gpa`, decoded, with its guest rights if present.
fn leaf<F: Format>(pool: &Pool, s: &AddrSpace, gpa: u64) -> (Entry, u64) {
    let raw = entry::<F>(pool, s, gpa, 0).load(Ordering::Relaxed);
    (format::decode::<F>(raw, 0), raw)
}

fn rights_of<F: Format>(pool: &Pool, s: &AddrSpace, gpa: u64) -> Option<u32> {
    match leaf::<F>(pool, s, gpa) {
        (Entry::Leaf { .. }, raw) => Some(format::leaf_rights::<F>(raw)),
        _ => None,
    }
}

#[test]
fn protect_removing_a_right_changes_present_leaves_and_flushes_once() {
    each(64, |kind, pool, s| {
        s.map_alloc(BASE, 8 * PAGE, flags(RW), false).unwrap();
        for i in 0..4 {
            s.handle_fault(BASE + i * PAGE, write()).unwrap();
        }
        let before = pool.flushes();
        s.protect(BASE, 8 * PAGE, R).unwrap();
        assert_eq!(pool.flushes(), before + 1, "{kind:?}: one flush");
        let (lo, size) = pool.last_flush();
        assert!(
            lo <= BASE && lo + size >= BASE + 4 * PAGE,
            "{kind:?}: covers the pages"
        );
        with_format!(kind, F => {
            for i in 0..4 {
                assert_eq!(rights_of::<F>(pool, s, BASE + i * PAGE), Some(R), "{kind:?}");
            }
        });
        // The entry decides: a write is refused, a read is spurious.
        assert_eq!(s.handle_fault(BASE, write()), Err(Error::Access));
        assert_eq!(s.handle_fault(BASE, read()), Ok(()));
    });
}

#[test]
fn protect_only_adding_rights_does_not_flush() {
    each(64, |kind, pool, s| {
        s.map_alloc(BASE, 4 * PAGE, flags(R), false).unwrap();
        s.handle_fault(BASE, read()).unwrap();
        assert_eq!(s.handle_fault(BASE, write()), Err(Error::Access));
        let before = pool.flushes();
        s.protect(BASE, 4 * PAGE, RWX).unwrap();
        assert_eq!(pool.flushes(), before, "{kind:?}: rights only added");
        // A stale read-only translation faults: the entry allows it now.
        assert_eq!(s.handle_fault(BASE, write()), Ok(()));
        assert_eq!(s.handle_fault(BASE, exec()), Ok(()));
        // A never-touched page faults in with the new rights too.
        s.handle_fault(BASE + PAGE, write()).unwrap();
        with_format!(kind, F => {
            assert_eq!(rights_of::<F>(pool, s, BASE), Some(RWX));
            assert_eq!(rights_of::<F>(pool, s, BASE + PAGE), Some(RWX));
        });
    });
}

#[test]
fn protect_reaches_pages_faulted_in_later() {
    each(64, |kind, pool, s| {
        s.map_alloc(BASE, 16 * PAGE, flags(RW), false).unwrap();
        let frames = pool.in_use();
        s.protect(BASE, 16 * PAGE, R).unwrap();
        // Lazy entries, no guest frame.
        assert!(pool.in_use() > frames, "{kind:?}: a leaf table was linked");
        assert_eq!(s.stats().guest_frames, 0);
        with_format!(kind, F => {
            assert_eq!(leaf::<F>(pool, s, BASE + PAGE).0, Entry::Lazy { rights: R });
        });
        assert_eq!(s.handle_fault(BASE + PAGE, write()), Err(Error::Access));
        assert_eq!(
            s.stats().guest_frames,
            0,
            "{kind:?}: refused, nothing taken"
        );
        s.handle_fault(BASE + PAGE, read()).unwrap();
        with_format!(kind, F => {
            assert_eq!(rights_of::<F>(pool, s, BASE + PAGE), Some(R), "{kind:?}");
        });
        assert_eq!(s.handle_fault(BASE + PAGE, write()), Err(Error::Access));
    });
}

#[test]
fn protect_back_to_the_region_rights_empties_lazy_entries() {
    each(64, |kind, pool, s| {
        s.map_alloc(BASE, 4 * PAGE, flags(RW), false).unwrap();
        s.protect(BASE, 4 * PAGE, R).unwrap();
        s.protect(BASE, 4 * PAGE, RW).unwrap();
        with_format!(kind, F => {
            assert_eq!(leaf::<F>(pool, s, BASE).0, Entry::Empty, "{kind:?}");
        });
        // The fast path serves it again, with the region's rights.
        s.handle_fault(BASE, write()).unwrap();
    });
}

#[test]
fn protect_none_keeps_contents_for_the_hypervisor_only() {
    each(64, |kind, pool, s| {
        s.map_alloc(BASE, 2 * PAGE, flags(RWX), false).unwrap();
        s.write(BASE + 8, b"kept").unwrap();
        let (hpa, _) = s.translate(BASE).unwrap();
        let before = pool.flushes();
        s.protect(BASE, 2 * PAGE, 0).unwrap();
        assert_eq!(pool.flushes(), before + 1, "{kind:?}: access removed");
        for a in [read(), write(), exec()] {
            assert_eq!(s.handle_fault(BASE, a), Err(Error::Access), "{kind:?}");
            // The never-touched page too.
            assert_eq!(
                s.handle_fault(BASE + PAGE, a),
                Err(Error::Access),
                "{kind:?}"
            );
        }
        with_format!(kind, F => {
            let (e, raw) = leaf::<F>(pool, s, BASE);
            assert!(matches!(e, Entry::Sealed { owned: true, .. }), "{kind:?}: {e:?}");
            assert!(!F::from_raw(raw).is_present_for_test());
        });
        // The hypervisor still reaches it.
        assert_eq!(s.translate(BASE).unwrap().0, hpa);
        let mut back = [0u8; 4];
        s.read(BASE + 8, &mut back).unwrap();
        assert_eq!(&back, b"kept");
        s.write(BASE + PAGE, b"new").unwrap();
        assert_eq!(s.handle_fault(BASE + PAGE, read()), Err(Error::Access));
        // Rights back: same frame, same contents.
        s.protect(BASE, 2 * PAGE, R).unwrap();
        s.handle_fault(BASE, read()).unwrap();
        assert_eq!(s.translate(BASE).unwrap().0, hpa);
        s.read(BASE + 8, &mut back).unwrap();
        assert_eq!(&back, b"kept");
        let mut new = [0u8; 3];
        s.read(BASE + PAGE, &mut new).unwrap();
        assert_eq!(&new, b"new");
    });
}

trait PresentForTest {
    fn is_present_for_test(&self) -> bool;
}
impl<T: page_table_multiarch::GenericPTE> PresentForTest for T {
    fn is_present_for_test(&self) -> bool {
        self.is_present()
    }
}

#[test]
fn protect_checks_its_input_and_changes_nothing_on_error() {
    each(64, |kind, pool, s| {
        s.map_alloc(BASE, 4 * PAGE, flags(RW), false).unwrap();
        s.map_alloc(BASE + 8 * PAGE, 4 * PAGE, flags(RW), false)
            .unwrap();
        s.handle_fault(BASE, write()).unwrap();
        let (frames, flushes) = (pool.in_use(), pool.flushes());
        for bad in [2, 4, 6, 8, 9, 0x10, 0x100] {
            assert_eq!(
                s.protect(BASE, PAGE, bad),
                Err(Error::Invalid),
                "{kind:?} {bad:#x}"
            );
        }
        assert_eq!(s.protect(BASE + 1, PAGE, R), Err(Error::Invalid));
        assert_eq!(s.protect(BASE, 0, R), Err(Error::Invalid));
        assert_eq!(s.protect(BASE, PAGE + 1, R), Err(Error::Invalid));
        assert_eq!(s.protect(!0xfff, PAGE * 2, R), Err(Error::Invalid));
        // A gap between the two regions.
        assert_eq!(s.protect(BASE, 12 * PAGE, R), Err(Error::NotMapped));
        assert_eq!(s.protect(BASE - PAGE, 2 * PAGE, R), Err(Error::NotMapped));
        assert_eq!(
            (pool.in_use(), pool.flushes()),
            (frames, flushes),
            "{kind:?}"
        );
        with_format!(kind, F => {
            assert_eq!(rights_of::<F>(pool, s, BASE), Some(RW));
            assert_eq!(leaf::<F>(pool, s, BASE + PAGE).0, Entry::Empty);
        });
    });
}

#[test]
fn protect_without_a_table_frame_changes_nothing() {
    for &kind in shapes() {
        // Every allocation point: the lazy entries' tables (a fresh 1 GiB
        // slot needs a table per level), then success.
        for budget in 0.. {
            let pool = Pool::new(64);
            let space = pool.space(kind, 1 << kind.max_gpa_bits().min(40));
            // SAFETY: alive until destroyed below.
            let s = unsafe { space.as_ref() };
            s.map_alloc(1 << 30, 4 * PAGE, flags(RW), false).unwrap();
            s.map_alloc(BASE, PAGE, flags(RW), false).unwrap();
            s.handle_fault(BASE, write()).unwrap();
            let (frames, flushes) = (pool.in_use(), pool.flushes());
            pool.fail_after(budget);
            let r = s.protect(1 << 30, 4 * PAGE, R);
            pool.fail_never();
            if r.is_ok() {
                assert!(budget > 0, "{kind:?}: protect needed tables");
                assert_eq!(s.handle_fault(1 << 30, write()), Err(Error::Access));
                pool.destroy(space);
                break;
            }
            assert_eq!(r, Err(Error::NoMemory), "{kind:?} budget {budget}");
            assert_eq!(
                (pool.in_use(), pool.flushes()),
                (frames, flushes),
                "{kind:?}"
            );
            // Nothing changed: the region's rights still hold.
            s.handle_fault((1 << 30) + PAGE, write()).unwrap();
            pool.destroy(space);
            assert_eq!(pool.in_use(), 0);
        }
    }
}

#[test]
fn discard_keeps_the_rights_protect_set() {
    each(64, |kind, pool, s| {
        s.map_alloc(BASE, 4 * PAGE, flags(RW), false).unwrap();
        s.write(BASE, b"old").unwrap();
        s.write(BASE + PAGE, b"old").unwrap();
        s.protect(BASE, PAGE, R).unwrap();
        s.protect(BASE + PAGE, PAGE, 0).unwrap();
        s.discard(BASE, 4 * PAGE).unwrap();
        assert_eq!(s.stats().guest_frames, 0, "{kind:?}");
        with_format!(kind, F => {
            assert_eq!(leaf::<F>(pool, s, BASE).0, Entry::Lazy { rights: R }, "{kind:?}");
            assert_eq!(leaf::<F>(pool, s, BASE + PAGE).0, Entry::Lazy { rights: 0 });
        });
        assert_eq!(s.handle_fault(BASE, write()), Err(Error::Access));
        assert_eq!(s.handle_fault(BASE + PAGE, read()), Err(Error::Access));
        s.handle_fault(BASE, read()).unwrap();
        let mut back = [9u8; 3];
        s.read(BASE, &mut back).unwrap();
        assert_eq!(back, [0; 3], "{kind:?}: a fresh zeroed frame");
        // The untouched-by-protect page has its region's rights.
        s.handle_fault(BASE + 2 * PAGE, write()).unwrap();
    });
}

#[test]
fn unmap_forgets_the_rights_protect_set() {
    each(64, |kind, pool, s| {
        s.map_alloc(BASE, 4 * PAGE, flags(RW), false).unwrap();
        s.handle_fault(BASE, write()).unwrap();
        s.protect(BASE, 4 * PAGE, 0).unwrap();
        s.unmap(BASE, 4 * PAGE).unwrap();
        assert_eq!(
            s.stats().guest_frames,
            0,
            "{kind:?}: the sealed frame went back"
        );
        s.map_alloc(BASE, 4 * PAGE, flags(RW), false).unwrap();
        s.handle_fault(BASE + PAGE, write()).unwrap();
        with_format!(kind, F => {
            assert_eq!(rights_of::<F>(pool, s, BASE + PAGE), Some(RW), "{kind:?}");
        });
    });
}

#[test]
fn protect_splits_a_huge_linear_leaf_it_covers_in_part() {
    each(64, |kind, pool, s| {
        let hpa = 0x1_0000_0000u64;
        s.map_linear(BASE, hpa, 0x20_0000, flags(RW)).unwrap();
        assert_eq!(s.translate(BASE).unwrap().1, 0x20_0000, "{kind:?}");
        let before = pool.flushes();
        s.protect(BASE + 3 * PAGE, PAGE, R).unwrap();
        let flushes = pool.flushes() - before;
        with_format!(kind, F => {
            // Break-before-make: one flush for the break, one for the right.
            let most = if F::BREAK_BEFORE_MAKE { 2 } else { 1 };
            assert!((1..=most).contains(&flushes), "{kind:?}: {flushes} flushes");
            assert_eq!(rights_of::<F>(pool, s, BASE + 3 * PAGE), Some(R));
            assert_eq!(rights_of::<F>(pool, s, BASE + 4 * PAGE), Some(RW));
        });
        assert_eq!(
            s.translate(BASE + 3 * PAGE).unwrap(),
            (crate::addr::Hpa::from_u64(hpa + 3 * PAGE), 0x1000)
        );
        assert_eq!(s.handle_fault(BASE + 3 * PAGE, write()), Err(Error::Access));
        assert_eq!(s.handle_fault(BASE + 4 * PAGE, write()), Ok(()));
        // A whole huge leaf changes in place, sealed included; an unmap of
        // part of a sealed block splits it.
        s.map_linear(BASE + 0x20_0000, hpa + 0x20_0000, 0x20_0000, flags(RW))
            .unwrap();
        s.protect(BASE + 0x20_0000, 0x20_0000, 0).unwrap();
        assert_eq!(s.handle_fault(BASE + 0x20_0000, read()), Err(Error::Access));
        s.unmap(BASE + 0x20_0000, PAGE).unwrap();
        assert_eq!(
            s.handle_fault(BASE + 0x20_0000, read()),
            Err(Error::NotMapped)
        );
        assert_eq!(s.handle_fault(BASE + 0x20_1000, read()), Err(Error::Access));
        s.protect(BASE + 0x20_1000, PAGE, R).unwrap();
        assert_eq!(s.handle_fault(BASE + 0x20_1000, read()), Ok(()));
        assert_eq!(
            s.translate(BASE + 0x20_1000).unwrap().0.as_u64(),
            hpa + 0x20_1000
        );
    });
}

#[test]
fn protect_spans_alloc_and_linear_regions() {
    each(64, |kind, _, s| {
        s.map_alloc(BASE, 4 * PAGE, flags(RW), false).unwrap();
        s.map_linear(BASE + 4 * PAGE, 0x1_0000_0000, 4 * PAGE, flags(RW))
            .unwrap();
        s.protect(BASE + 2 * PAGE, 4 * PAGE, R).unwrap();
        for (gpa, want) in [
            (1, Ok(())),
            (2, Err(Error::Access)),
            (5, Err(Error::Access)),
            (6, Ok(())),
        ] {
            assert_eq!(
                s.handle_fault(BASE + gpa * PAGE, write()),
                want,
                "{kind:?} page {gpa}"
            );
        }
        assert_eq!(s.stats().regions, 2, "protect adds no region");
    });
}

#[test]
#[cfg_attr(miri, ignore = "100,000 calls: native only")]
fn protect_scales_to_100k_scattered_pages_with_table_frames_only() {
    // Every other page of 800 MiB, alternating rights: nothing merges.
    let kind = FormatKind::X86Ept;
    with_space(kind, 2048, |pool, s| {
        let n = 100_000u64;
        s.map_alloc(BASE, 2 * n * PAGE, flags(RW), false).unwrap();
        for i in 0..n {
            let rights = if i % 2 == 0 { R } else { 0 };
            s.protect(BASE + 2 * i * PAGE, PAGE, rights).unwrap();
        }
        let st = s.stats();
        assert_eq!(st.regions, 1);
        assert_eq!(st.guest_frames, 0);
        // One leaf table per 2 MiB, and the few above.
        assert!(st.table_frames <= 400 + 4, "{}", st.table_frames);
        // Page 0: read-only; page 2: no access; odd pages: the region's.
        assert_eq!(s.handle_fault(BASE, write()), Err(Error::Access));
        assert_eq!(s.handle_fault(BASE, read()), Ok(()));
        assert_eq!(s.handle_fault(BASE + 2 * PAGE, read()), Err(Error::Access));
        assert_eq!(s.handle_fault(BASE + 3 * PAGE, write()), Ok(()));
        let _ = pool;
    });
}

#[test]
fn faults_and_protects_race_without_losing_a_frame() {
    let kind = FormatKind::X86Ept;
    let pages = if cfg!(miri) { 8 } else { 256 };
    with_space(kind, 1024, |pool, s| {
        s.map_alloc(BASE, pages * PAGE, flags(RW), false).unwrap();
        std::thread::scope(|t| {
            t.spawn(|| {
                for round in 0..if cfg!(miri) { 2 } else { 20 } {
                    let rights = [R, 0, RW][round % 3];
                    loop {
                        match s.protect(BASE, pages * PAGE, rights) {
                            Err(Error::Busy) => continue,
                            r => break r.unwrap(),
                        }
                    }
                }
            });
            for _ in 0..2 {
                t.spawn(|| {
                    for i in 0..pages {
                        // Any answer the rights explain; never an error else.
                        match s.handle_fault(BASE + i * PAGE, read()) {
                            Ok(()) | Err(Error::Access) => {}
                            e => panic!("{e:?}"),
                        }
                    }
                });
            }
        });
        s.protect(BASE, pages * PAGE, RW).unwrap();
        for i in 0..pages {
            s.handle_fault(BASE + i * PAGE, write()).unwrap();
        }
        assert_eq!(s.stats().guest_frames, pages, "one frame per page");
        with_format!(kind, F => {
            for i in 0..pages {
                assert_eq!(rights_of::<F>(pool, s, BASE + i * PAGE), Some(RW));
            }
        });
    });
}
