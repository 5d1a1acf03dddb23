//! The lean fault path's own rules (`backend/fast_fault.rs`): its shortcuts
//! — the region hint, the cached leaf table, the pre-encoded leaf — never
//! outlive what they point at and never encode anything the general path
//! would not.

use core::sync::atomic::Ordering;

use super::pool::Pool;
use super::with_space;
use crate::addr::{Gpa, Hpa};
use crate::error::Error;
use crate::flags::{Access, Flags};
use crate::format::{self, Entry, Format, FormatKind, ept::Ept, npt::Npt, with_format};
use crate::space::AddrSpace;

const MIB: u64 = 1 << 20;

fn rw() -> Flags {
    Flags::from_bits(3).unwrap()
}

fn write() -> Access {
    Access::from_bits(2).unwrap()
}

/// The leaf table (level 0) on the walk to `gpa`.
fn leaf_table<F: Format>(pool: &Pool, s: &AddrSpace, gpa: u64) -> u64 {
    table_at::<F>(pool, s, gpa, 0)
}

/// The table at `level` on the walk to `gpa`.
fn table_at<F: Format>(pool: &Pool, s: &AddrSpace, gpa: u64, level: usize) -> u64 {
    let mut table = s.root().as_u64();
    for l in (level + 1..F::LEVELS).rev() {
        let idx = (gpa as usize >> (12 + 9 * l))
            % (512 << if l == F::LEVELS - 1 { F::ROOT_ORDER } else { 0 });
        // SAFETY: a table frame of the pool, alive for the test.
        let raw = unsafe { &*(pool.virt(table).add(idx) as *const core::sync::atomic::AtomicU64) }
            .load(Ordering::Relaxed);
        match format::decode::<F>(raw, l) {
            Entry::Table(t) => table = t.as_u64(),
            other => panic!("walk to {gpa:#x} stops at level {l}: {other:?}"),
        }
    }
    table
}

/// A fault caches the leaf table it walked to; an unmap then frees that
/// table. The next fault in the same 2 MiB must not use the freed table: the
/// cache is forgotten by every exclusive section. Without that, the fault
/// below installs its page into a frame the space no longer owns (here held
/// by the test, as another owner would) and the guest page stays unmapped.
fn cached_leaf_table_dies_with_the_table<F: Format>(kind: FormatKind) {
    with_space(kind, 64, |pool, s| {
        let a = 0x4000_0000;
        s.map_alloc(a, 2 * MIB, rw(), false).unwrap();
        s.handle_fault(a, write()).unwrap(); // general path: links the tables
        s.handle_fault(a + 0x2000, write()).unwrap(); // walks, caches the leaf table
        let t = leaf_table::<F>(pool, s, a);
        s.unmap(a, 2 * MIB).unwrap(); // prunes and frees it
        // Hold the freed table as its next owner would, looking empty.
        let mut held = Vec::new();
        loop {
            let hpa = pool.hooks().alloc_frame().expect("the freed table");
            held.push(hpa);
            if hpa.as_u64() == t {
                break;
            }
        }
        let view = pool.virt(t);
        for i in 0..512 {
            // SAFETY: the frame `t`, held by the test.
            unsafe { view.add(i).write(F::EMPTY) };
        }
        s.map_alloc(a, 2 * MIB, rw(), false).unwrap();
        s.handle_fault(a + 0x1000, write()).unwrap();
        // SAFETY: as above.
        let after = unsafe { view.add(1).read() };
        assert_eq!(after, F::EMPTY, "fault wrote into a freed table");
        assert!(
            s.translate(a + 0x1000).is_ok(),
            "the page is mapped in the live table"
        );
        for hpa in held {
            // SAFETY: obtained from the pool above, ours.
            unsafe { pool.hooks().free_frame(hpa) };
        }
    });
}

#[test]
fn cached_leaf_table_dies_with_the_table_ept() {
    cached_leaf_table_dies_with_the_table::<Ept>(FormatKind::X86Ept);
}

#[test]
fn cached_leaf_table_dies_with_the_table_npt() {
    cached_leaf_table_dies_with_the_table::<Npt>(FormatKind::X86Npt);
}

/// The region hint points into a chunk frame of the region set. A fault in
/// the second chunk leaves it there; unmapping those regions gives the chunk
/// back. A fault at a removed region's address must then be NOT_MAPPED —
/// without the hint's invalidation it reads the freed chunk, still holding
/// the old region, and maps a page nobody asked for.
/// The same for the level-1 table the fast path also caches: a fault caches
/// it, an unmap frees it, and its next owner happens to hold what looks like
/// a table link at the index of another 2 MiB of that 1 GiB. A fault there
/// must walk from the root, not from the freed table into the decoy.
fn cached_mid_table_dies_with_the_table<F: Format>(kind: FormatKind) {
    with_space(kind, 64, |pool, s| {
        let a = 0x4000_0000;
        s.map_alloc(a, 4 * MIB, rw(), false).unwrap();
        s.handle_fault(a, write()).unwrap(); // general path: links the tables
        s.handle_fault(a + 0x2000, write()).unwrap(); // caches leaf and level-1 tables
        let mid = table_at::<F>(pool, s, a, 1);
        s.unmap(a, 4 * MIB).unwrap(); // prunes and frees them
        let mut held = Vec::new();
        loop {
            let hpa = pool.hooks().alloc_frame().expect("the freed table");
            held.push(hpa);
            if hpa.as_u64() == mid {
                break;
            }
        }
        let decoy = pool.hooks().alloc_frame().expect("a decoy leaf table");
        held.push(decoy);
        let (mv, dv) = (pool.virt(mid), pool.virt(decoy.as_u64()));
        for i in 0..512 {
            // SAFETY: frames held by the test.
            unsafe {
                mv.add(i).write(F::EMPTY);
                dv.add(i).write(F::EMPTY);
            }
        }
        let b = a + 2 * MIB; // same 1 GiB, another 2 MiB
        let link = format::table::<F>(decoy);
        // SAFETY: as above; index of `b` in a level-1 table.
        unsafe { mv.add((b as usize >> 21) % 512).write(link) };
        s.map_alloc(a, 4 * MIB, rw(), false).unwrap();
        s.handle_fault(b, write()).unwrap();
        // SAFETY: as above.
        let after = unsafe { dv.add(0).read() };
        assert_eq!(after, F::EMPTY, "fault walked a freed table into a decoy");
        assert!(
            s.translate(b).is_ok(),
            "the page is mapped in the live table"
        );
        for hpa in held {
            // SAFETY: obtained from the pool above, ours.
            unsafe { pool.hooks().free_frame(hpa) };
        }
    });
}

#[test]
fn cached_mid_table_dies_with_the_table_ept() {
    cached_mid_table_dies_with_the_table::<Ept>(FormatKind::X86Ept);
}

#[test]
fn cached_mid_table_dies_with_the_table_npt() {
    cached_mid_table_dies_with_the_table::<Npt>(FormatKind::X86Npt);
}

#[test]
fn region_hint_never_outlives_its_chunk() {
    with_space(FormatKind::X86Ept, 64, |_pool, s| {
        let per_chunk = 4096 / core::mem::size_of::<crate::region::Region>();
        let n = per_chunk + 8;
        let gpa = |i: usize| 0x1000_0000 + (i as u64) * 0x2000;
        for i in 0..n {
            s.map_alloc(gpa(i), 0x1000, rw(), false).unwrap();
        }
        let late = per_chunk + 4;
        s.handle_fault(gpa(late), write()).unwrap(); // hint into chunk 2
        s.unmap(gpa(per_chunk), gpa(n) - gpa(per_chunk)).unwrap();
        assert_eq!(s.handle_fault(gpa(late), write()), Err(Error::NotMapped));
        assert_eq!(s.stats().guest_frames, 0);
    });
}

/// The pre-encoded leaves (one per flags value) are exactly what the general
/// encoder builds, owned bit included, for every flags value and format.
#[test]
fn leaf_templates_match_the_encoder() {
    for &kind in super::shapes() {
        with_format!(kind, F => {
            for bits in 0..=Flags::ALL.bits() {
                let flags = Flags::from_bits(bits).unwrap();
                let hpa = Hpa::from_usize(0x1234_5000);
                let want = format::leaf::<F>(hpa, flags.to_mapping(), 0, true);
                let template = format::leaf::<F>(Hpa::from_usize(0), flags.to_mapping(), 0, true);
                assert_eq!(F::leaf_at(template, hpa), want, "{kind:?} flags {bits:#x}");
            }
        });
    }
}

/// Faults through the fast path and the general path leave identical
/// leaves: fault a page whose leaf table exists (fast) and one whose table
/// is missing (general), for every access-bearing flags value.
#[test]
fn fast_and_general_faults_install_the_same_leaf() {
    for &kind in super::shapes() {
        with_space(kind, 256, |_pool, s| {
            let mut checked = 0;
            for bits in 1..=Flags::ALL.bits() {
                let flags = Flags::from_bits(bits).unwrap();
                let Some(access) = Access::from_bits(bits & 7) else {
                    continue;
                };
                let base = 0x8000_0000 + u64::from(bits) * 4 * MIB;
                if s.map_alloc(base, 4 * MIB, flags, false) == Err(Error::Invalid) {
                    continue; // not a mapping the API accepts (W without R)
                }
                s.handle_fault(base, access).unwrap(); // general: tables missing
                s.handle_fault(base + 0x1000, access).unwrap(); // fast
                with_format!(kind, F => {
                    let w = s.test_walker::<F>();
                    let (a, _) = w.lookup(Gpa::from_u64(base)).unwrap().unwrap();
                    let (b, _) = w.lookup(Gpa::from_u64(base + 0x1000)).unwrap().unwrap_or_else(|| panic!("{kind:?} {bits:#x} not mapped"));
                    let zero = Hpa::from_usize(0);
                    assert_eq!(
                        format::with_addr::<F>(a, zero),
                        format::with_addr::<F>(b, zero),
                        "{kind:?} flags {bits:#x}"
                    );
                });
                checked += 1;
            }
            assert!(checked >= 8, "only {checked} flags values mapped");
        });
    }
}
