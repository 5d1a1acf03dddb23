//! Arm cache maintenance (`cache.rs`): which frames are cleaned, when, and
//! for which formats. The instructions only run on an aarch64 host; the
//! policy is checked here through the per-thread log every host keeps in
//! tests, with a check run at each logged operation: a frame is cleaned
//! after the library zeroed it and before any entry reaches it.

use std::cell::Cell;
use std::rc::Rc;

use crate::cache::{Op, test_log};
use crate::flags::{Access, Flags};
use crate::format::{Family, FormatKind};
use crate::space::AddrSpace;

use super::pool::Pool;

const PAGE: u64 = 4096;
const PAGES: u64 = 8;
/// One region per path: lazy + faults (general then lean path), populate,
/// prefault, a hypervisor write into holes, faults fed by the reserve.
const FAULTS: u64 = 0x20_0000;
const POPULATE: u64 = 0x40_0000;
const PREFAULT: u64 = 0x60_0000;
const WRITE: u64 = 0x80_0000;
const RESERVE: u64 = 0xa0_0000;
const REGIONS: [u64; 5] = [FAULTS, POPULATE, PREFAULT, WRITE, RESERVE];
/// The hypervisor write: across the end of the region's page 1.
const WRITE_AT: u64 = WRITE + PAGE + 0xf80;
const WRITE_LEN: usize = 0x100;
const WRITTEN: u8 = 0x5a;

/// The Arm shapes a test sweeps (under Miri: one, a single-page root; see
/// `tests::shapes`).
fn arm_shapes() -> Vec<FormatKind> {
    let arm = FormatKind::ALL
        .iter()
        .copied()
        .filter(|f| f.family() == Family::ArmS2);
    if cfg!(miri) {
        arm.filter(|f| f.root_order() == 0).take(1).collect()
    } else {
        arm.collect()
    }
}

/// Every page of every test region that a present leaf maps: (gpa, host
/// address of its frame).
fn present(pool: &Pool, s: &AddrSpace) -> Vec<(u64, usize)> {
    let mut v = Vec::new();
    for r in REGIONS {
        for gpa in (r..r + PAGES * PAGE).step_by(PAGE as usize) {
            if let Ok((hpa, _)) = s.translate(gpa) {
                v.push((gpa, pool.virt(hpa.as_u64()) as usize));
            }
        }
    }
    v
}

/// Runs every path that writes guest frames, on `flags` regions, checking
/// at each logged operation that a data clean covers bytes in their final
/// state — zero for a frame no entry reaches yet, the written bytes for a
/// present one — and that the barrier completing it comes before the frame
/// is reachable. Returns the log.
fn exercise(pool: &Pool, s: &AddrSpace, flags: Flags) -> Vec<(Op, usize, usize)> {
    let sp = s as *const AddrSpace as usize;
    let pp = pool as *const Pool as usize;
    let reachable = move |addr: usize| {
        // SAFETY: the space and the pool outlive the check, which
        // `test_log::check(None)` below removes before they go.
        let (s, pool) = unsafe { (&*(sp as *const AddrSpace), &*(pp as *const Pool)) };
        let frame = addr & !(PAGE as usize - 1);
        present(pool, s).iter().any(|&(_, f)| f == frame)
    };
    // The last data clean: (address, its frame was already reachable).
    let last = Rc::new(Cell::new(None::<(usize, bool)>));
    let l = last.clone();
    test_log::check(Some(Box::new(move |op, addr, len| match op {
        Op::CleanPoc | Op::CleanPou | Op::InvalidateI => {
            // SAFETY: the library cleans bytes of pool frames.
            let bytes = unsafe { std::slice::from_raw_parts(addr as *const u8, len) };
            let mapped = reachable(addr);
            if mapped {
                assert!(
                    bytes.iter().all(|&b| b == WRITTEN),
                    "{op:?} of a frame some entry already reaches"
                );
            } else {
                assert!(
                    bytes.iter().all(|&b| b == 0),
                    "{op:?} of a frame not zeroed yet"
                );
            }
            l.set(Some((addr, mapped)));
        }
        Op::Barrier => {
            if let Some((addr, mapped)) = l.get() {
                assert!(
                    mapped || !reachable(addr),
                    "barrier after the frame became reachable"
                );
            }
        }
        Op::Isb => {}
    })));
    test_log::take();
    let access = Access::from_bits(1).unwrap();
    let size = PAGES * PAGE;
    // Faults: the first walks the general path (no tables yet), the
    // second the lean one (the leaf table exists).
    s.map_alloc(FAULTS, size, flags, false).unwrap();
    s.handle_fault(FAULTS, access).unwrap();
    s.handle_fault(FAULTS + PAGE, access).unwrap();
    s.map_alloc(POPULATE, size, flags, true).unwrap();
    s.map_alloc(PREFAULT, size, flags, false).unwrap();
    s.prefault(PREFAULT, size).unwrap();
    s.map_alloc(WRITE, size, flags, false).unwrap();
    s.write(WRITE_AT, &[WRITTEN; WRITE_LEN]).unwrap();
    // The reserve: filled (zeroed and cleaned in bulk), then faults pop
    // it (general path, then lean path).
    s.set_reserve(4).unwrap();
    s.map_alloc(RESERVE, size, flags, false).unwrap();
    s.handle_fault(RESERVE, access).unwrap();
    s.handle_fault(RESERVE + PAGE, access).unwrap();
    test_log::check(None);
    // The checks ran: the last clean's barrier followed.
    let _ = last;
    test_log::take()
}

/// True if `ops` of kind `kind` cover `[addr, addr + len)`.
fn covered(ops: &[(Op, usize, usize)], kind: Op, addr: usize, len: usize) -> bool {
    let mut ranges: Vec<(usize, usize)> = ops
        .iter()
        .filter(|o| o.0 == kind)
        .map(|&(_, a, l)| (a, a + l))
        .collect();
    ranges.sort();
    let mut at = addr;
    for (a, b) in ranges {
        if a <= at && at < b {
            at = b;
        }
    }
    at >= addr + len
}

/// The hypervisor write's pieces in the host's view: (address, length) per
/// page.
fn written(pool: &Pool, s: &AddrSpace) -> [(usize, usize); 2] {
    let host = |gpa| pool.virt(s.translate(gpa).unwrap().0.as_u64()) as usize;
    let first = (PAGE - WRITE_AT % PAGE) as usize;
    [
        (host(WRITE_AT), first),
        (host(WRITE_AT + first as u64), WRITE_LEN - first),
    ]
}

/// The pages each path makes present (the write's: pages 1 and 2).
const INSTALLED: usize = 2 + PAGES as usize * 2 + 2 + 2;

fn with_arm_space(format: FormatKind, s2fwb: bool, f: impl FnOnce(&Pool, &AddrSpace)) {
    let pool = Pool::new(256);
    let space = pool.space_with(format, 1 << format.max_gpa_bits().min(40), |c| {
        c.s2fwb = s2fwb;
    });
    // SAFETY: alive until `pool.destroy(space)` below.
    f(&pool, unsafe { space.as_ref() });
    pool.destroy(space);
    assert_eq!(pool.in_use(), 0, "frames leaked");
}

#[test]
#[cfg_attr(
    miri,
    ignore = "policy, checked natively: the instructions never run under Miri and the paths are Miri-tested elsewhere"
)]
fn arm_frames_are_cleaned_before_they_are_mapped() {
    for format in arm_shapes() {
        with_arm_space(format, false, |pool, s| {
            let rw = Flags::from_bits(3).unwrap();
            let log = exercise(pool, s, rw);
            let frames = present(pool, s);
            assert_eq!(frames.len(), INSTALLED, "{format:?}");
            for (gpa, frame) in frames {
                assert!(
                    covered(&log, Op::CleanPoc, frame, PAGE as usize),
                    "{format:?}: the frame at {gpa:#x} was not cleaned to the PoC"
                );
            }
            // The reserve's frames: cleaned whole when filled, the link
            // word's line again when a fault took them.
            let reserved = present(pool, s)
                .into_iter()
                .filter(|&(gpa, _)| gpa >= RESERVE)
                .map(|(_, f)| f);
            for frame in reserved {
                let whole = log
                    .iter()
                    .filter(|o| **o == (Op::CleanPoc, frame, PAGE as usize))
                    .count();
                let link = log
                    .iter()
                    .filter(|o| o.0 == Op::CleanPoc && o.1 == frame && o.2 < PAGE as usize)
                    .count();
                assert_eq!((whole, link), (1, 1), "{format:?}: reserve frame");
            }
            // The bytes the hypervisor wrote, after the copy (the check
            // above saw them written), page by page.
            for (addr, len) in written(pool, s) {
                assert!(
                    log.contains(&(Op::CleanPoc, addr, len)),
                    "{format:?}: write"
                );
            }
            // Not executable: no instruction-side maintenance.
            assert!(
                log.iter()
                    .all(|o| o.0 != Op::InvalidateI && o.0 != Op::CleanPou),
                "{format:?}"
            );
        });
    }
}

#[test]
#[cfg_attr(
    miri,
    ignore = "policy, checked natively: the instructions never run under Miri and the paths are Miri-tested elsewhere"
)]
fn s2fwb_skips_cleaning() {
    for format in arm_shapes() {
        with_arm_space(format, true, |pool, s| {
            let log = exercise(pool, s, Flags::from_bits(3).unwrap());
            assert_eq!(present(pool, s).len(), INSTALLED);
            assert!(log.is_empty(), "{format:?}: {log:x?}");
        });
    }
}

#[test]
#[cfg_attr(
    miri,
    ignore = "policy, checked natively: the instructions never run under Miri and the paths are Miri-tested elsewhere"
)]
fn x86_formats_never_clean() {
    // And RISC-V's: coherent, nothing to do (tests::shapes: natively all).
    let others = super::shapes()
        .iter()
        .copied()
        .filter(|f| f.family() != Family::ArmS2);
    for format in others {
        super::with_space(format, 256, |pool, s| {
            let log = exercise(pool, s, Flags::from_bits(7).unwrap());
            assert_eq!(present(pool, s).len(), INSTALLED);
            assert!(log.is_empty(), "{format:?}: {log:x?}");
        });
    }
}

#[test]
#[cfg_attr(
    miri,
    ignore = "policy, checked natively: the instructions never run under Miri and the paths are Miri-tested elsewhere"
)]
fn exec_pages_invalidate_icache() {
    for format in arm_shapes() {
        for s2fwb in [false, true] {
            with_arm_space(format, s2fwb, |pool, s| {
                let log = exercise(pool, s, Flags::from_bits(7).unwrap());
                let frames = present(pool, s);
                assert_eq!(frames.len(), INSTALLED);
                for (gpa, frame) in frames {
                    let at = |op| log.iter().position(|o| *o == (op, frame, PAGE as usize));
                    let what = format!("{format:?} s2fwb {s2fwb}: page {gpa:#x}");
                    let (Some(pou), Some(inval)) = (at(Op::CleanPou), at(Op::InvalidateI)) else {
                        panic!("{what}: no instruction-side maintenance");
                    };
                    // D to the PoU, DSB, IC, DSB, ISB.
                    assert_eq!(
                        log[pou + 1..inval + 3]
                            .iter()
                            .map(|o| o.0)
                            .collect::<Vec<_>>(),
                        [Op::Barrier, Op::InvalidateI, Op::Barrier, Op::Isb],
                        "{what}"
                    );
                    assert_eq!(covered(&log, Op::CleanPoc, frame, PAGE as usize), !s2fwb);
                }
                // The written bytes too.
                for (addr, len) in written(pool, s) {
                    assert!(log.contains(&(Op::InvalidateI, addr, len)), "{format:?}");
                }
            });
        }
    }
}
