//! Dirty logging and access tracking: each rule a test, over every shape;
//! and the stress test of issue 12 (writers with sequence numbers against
//! get-and-clear rounds into a shadow copy).

use core::sync::atomic::Ordering;

use super::core::entry;
use super::pool::Pool;
use super::{each, flags, read, shapes, with_space, write};
use crate::error::Error;
use crate::flags::Flags;
use crate::format::{self, Entry, Format, FormatKind, with_format};
use crate::space::AddrSpace;

const PAGE: u64 = 0x1000;
const BASE: u64 = 0x40_0000;
const RW: u32 = 3;

fn dirty(s: &AddrSpace, gpa: u64, pages: u64, clear: bool) -> Vec<u64> {
    let mut out = vec![!0u64; pages.div_ceil(64) as usize];
    s.dirty_log_get(gpa, pages * PAGE, &mut out, clear).unwrap();
    out
}

fn young(s: &AddrSpace, gpa: u64, pages: u64, clear: bool) -> Vec<u64> {
    let mut out = vec![!0u64; pages.div_ceil(64) as usize];
    s.young_get(gpa, pages * PAGE, &mut out, clear).unwrap();
    out
}

/// Guest rights of the present leaf at `gpa`.
fn rights<F: Format>(pool: &Pool, s: &AddrSpace, gpa: u64) -> Option<u32> {
    let raw = entry::<F>(pool, s, gpa, 0).load(Ordering::Relaxed);
    matches!(format::decode::<F>(raw, 0), Entry::Leaf { .. }).then(|| format::leaf_rights::<F>(raw))
}

#[test]
fn dirty_log_reports_guest_writes_until_a_clearing_get() {
    each(128, |kind, pool, s| {
        s.map_alloc(BASE, 64 * PAGE, flags(RW), false).unwrap();
        for i in 0..8 {
            s.handle_fault(BASE + i * PAGE, write()).unwrap();
        }
        let flushes = pool.flushes();
        s.dirty_log_start(BASE, 64 * PAGE).unwrap();
        assert_eq!(pool.flushes(), flushes + 1, "{kind:?}: one flush at start");
        assert_eq!(
            dirty(s, BASE, 64, false),
            [0],
            "{kind:?}: nothing dirty at start"
        );
        with_format!(kind, F => assert_eq!(rights::<F>(pool, s, BASE), Some(1), "{kind:?}: armed"));
        // The guest's first write faults, gets write back, is dirty.
        s.handle_fault(BASE + 3 * PAGE, write()).unwrap();
        with_format!(kind, F => assert_eq!(rights::<F>(pool, s, BASE + 3 * PAGE), Some(RW)));
        assert_eq!(dirty(s, BASE, 64, false), [1 << 3]);
        assert_eq!(
            dirty(s, BASE, 64, false),
            [1 << 3],
            "{kind:?}: a plain get changes nothing"
        );
        let flushes = pool.flushes();
        assert_eq!(dirty(s, BASE, 64, true), [1 << 3]);
        assert_eq!(
            pool.flushes(),
            flushes + 1,
            "{kind:?}: one flush for the re-arm"
        );
        let (lo, size) = pool.last_flush();
        assert!(lo <= BASE + 3 * PAGE && lo + size > BASE + 3 * PAGE);
        with_format!(kind, F => assert_eq!(rights::<F>(pool, s, BASE + 3 * PAGE), Some(1)));
        assert_eq!(dirty(s, BASE, 64, true), [0]);
        // Nothing re-armed: no flush.
        assert_eq!(pool.flushes(), flushes + 1);
        s.handle_fault(BASE + 3 * PAGE, write()).unwrap();
        assert_eq!(dirty(s, BASE, 64, false), [1 << 3], "{kind:?}: dirty again");
        // A subrange, unaligned to the bitmap words of the log.
        assert_eq!(dirty(s, BASE + 2 * PAGE, 4, false), [1 << 1]);
        // Lazy pages: a read installs them armed and clean, a write dirty.
        s.handle_fault(BASE + 40 * PAGE, read()).unwrap();
        s.handle_fault(BASE + 41 * PAGE, write()).unwrap();
        with_format!(kind, F => assert_eq!(rights::<F>(pool, s, BASE + 40 * PAGE), Some(1)));
        assert_eq!(dirty(s, BASE, 64, false), [1 << 3 | 1 << 41]);
        s.handle_fault(BASE + 40 * PAGE, write()).unwrap();
        assert_eq!(dirty(s, BASE, 64, false), [1 << 3 | 1 << 40 | 1 << 41]);
    });
}

#[test]
fn hypervisor_writes_and_discards_are_dirty_reads_are_not() {
    each(128, |kind, _, s| {
        s.map_alloc(BASE, 64 * PAGE, flags(RW), true).unwrap();
        s.dirty_log_start(BASE, 64 * PAGE).unwrap();
        s.write(BASE + 5 * PAGE + 100, &[1; 8]).unwrap();
        let mut buf = [0u8; 8];
        s.read(BASE + 6 * PAGE, &mut buf).unwrap();
        assert_eq!(dirty(s, BASE, 64, true), [1 << 5], "{kind:?}");
        s.discard(BASE + 8 * PAGE, 2 * PAGE).unwrap();
        assert_eq!(
            dirty(s, BASE, 64, true),
            [3 << 8],
            "{kind:?}: discarded = zeroed = dirty"
        );
        // A prefault of the discarded pages installs them armed.
        s.prefault(BASE + 8 * PAGE, 2 * PAGE).unwrap();
        assert_eq!(s.handle_fault(BASE + 8 * PAGE, write()), Ok(()));
        assert_eq!(dirty(s, BASE, 64, true), [1 << 8]);
    });
}

#[test]
fn dirty_log_stop_gives_write_back_without_a_flush() {
    each(128, |kind, pool, s| {
        s.map_alloc(BASE, 16 * PAGE, flags(RW), true).unwrap();
        s.dirty_log_start(BASE, 16 * PAGE).unwrap();
        let frames = pool.in_use();
        let flushes = pool.flushes();
        s.dirty_log_stop(BASE, 16 * PAGE).unwrap();
        assert_eq!(pool.flushes(), flushes, "{kind:?}");
        assert!(pool.in_use() < frames, "{kind:?}: the bitmaps went back");
        with_format!(kind, F => assert_eq!(rights::<F>(pool, s, BASE + PAGE), Some(RW)));
        let mut out = [0u64];
        assert_eq!(
            s.dirty_log_get(BASE, 16 * PAGE, &mut out, false),
            Err(Error::Invalid)
        );
        // Stopping what is not logged: nothing to do.
        s.dirty_log_stop(BASE, 16 * PAGE).unwrap();
        // Faults take the lean path again: a lazy map next door is untracked.
        s.map_alloc(BASE + 16 * PAGE, PAGE, flags(RW), false)
            .unwrap();
        s.handle_fault(BASE + 16 * PAGE, write()).unwrap();
    });
}

#[test]
fn dirty_log_checks_its_input_and_changes_nothing_on_error() {
    each(128, |kind, pool, s| {
        s.map_alloc(BASE, 16 * PAGE, flags(RW), false).unwrap();
        s.map_linear(BASE + 16 * PAGE, 0x1_0000_0000, 16 * PAGE, flags(RW))
            .unwrap();
        let (frames, flushes) = (pool.in_use(), pool.flushes());
        assert_eq!(
            s.dirty_log_start(BASE, 32 * PAGE),
            Err(Error::Invalid),
            "{kind:?}"
        );
        assert_eq!(
            s.dirty_log_start(BASE - PAGE, 2 * PAGE),
            Err(Error::NotMapped)
        );
        assert_eq!(s.dirty_log_start(BASE + 1, PAGE), Err(Error::Invalid));
        assert_eq!(s.dirty_log_start(BASE, 0), Err(Error::Invalid));
        for fail in 0..3 {
            pool.fail_after(fail);
            assert_eq!(s.dirty_log_start(BASE, 16 * PAGE), Err(Error::NoMemory));
            pool.fail_never();
        }
        assert_eq!(
            (pool.in_use(), pool.flushes()),
            (frames, flushes),
            "{kind:?}"
        );
        let mut out = [0u64; 1];
        assert_eq!(
            s.dirty_log_get(BASE, PAGE, &mut out, false),
            Err(Error::Invalid)
        );
        s.dirty_log_start(BASE, 8 * PAGE).unwrap();
        s.dirty_log_start(BASE, 8 * PAGE).unwrap();
        s.dirty_log_start(BASE + PAGE, 2 * PAGE).unwrap();
        assert_eq!(
            s.dirty_log_start(BASE + 4 * PAGE, 8 * PAGE),
            Err(Error::Exists)
        );
        assert_eq!(
            s.dirty_log_get(BASE, 9 * PAGE, &mut out, false),
            Err(Error::Invalid)
        );
        assert_eq!(s.dirty_log_stop(BASE + PAGE, 2 * PAGE), Err(Error::Invalid));
        // Maps over a logged range wait for its stop.
        s.unmap(BASE, PAGE).unwrap();
        assert_eq!(s.map_alloc(BASE, PAGE, flags(RW), false), Err(Error::Busy));
        s.dirty_log_stop(BASE, 16 * PAGE).unwrap();
        s.map_alloc(BASE, PAGE, flags(RW), false).unwrap();
    });
}

#[test]
fn protect_in_a_logged_range_keeps_the_log() {
    each(128, |kind, pool, s| {
        s.map_alloc(BASE, 8 * PAGE, flags(RW), true).unwrap();
        s.dirty_log_start(BASE, 8 * PAGE).unwrap();
        s.handle_fault(BASE, write()).unwrap();
        // Write taken away from a dirty page: still reported.
        s.protect(BASE, PAGE, 1).unwrap();
        assert_eq!(
            s.handle_fault(BASE, write()),
            Err(Error::Access),
            "{kind:?}"
        );
        assert_eq!(dirty(s, BASE, 8, true), [1]);
        // Given back to a clean page: it stays write-protected until a write.
        s.protect(BASE, 2 * PAGE, RW).unwrap();
        with_format!(kind, F => assert_eq!(rights::<F>(pool, s, BASE + PAGE), Some(1)));
        s.handle_fault(BASE + PAGE, write()).unwrap();
        assert_eq!(dirty(s, BASE, 8, true), [2]);
        s.dirty_log_stop(BASE, 8 * PAGE).unwrap();
        with_format!(kind, F => assert_eq!(rights::<F>(pool, s, BASE), Some(RW)));
    });
}

#[test]
fn young_reports_accesses_since_the_last_clearing_get() {
    each(128, |kind, pool, s| {
        s.map_alloc(BASE, 8 * PAGE, flags(RW), false).unwrap();
        s.handle_fault(BASE, read()).unwrap();
        s.handle_fault(BASE + 2 * PAGE, write()).unwrap();
        assert_eq!(
            young(s, BASE, 8, false),
            [0b101],
            "{kind:?}: faulted = accessed"
        );
        let flushes = pool.flushes();
        assert_eq!(young(s, BASE, 8, true), [0b101]);
        assert_eq!(pool.flushes(), flushes + 1, "{kind:?}");
        assert_eq!(young(s, BASE, 8, false), [0]);
        with_format!(kind, F => {
            let e = entry::<F>(pool, s, BASE, 0).load(Ordering::Relaxed);
            assert_eq!(e & F::ACCESSED, 0, "{kind:?}: cleared in the entry");
        });
        // A CPU that does not set the bit faults: the fault sets it.
        s.handle_fault(BASE, read()).unwrap();
        let mut buf = [0u8; 4];
        s.read(BASE + 2 * PAGE, &mut buf).unwrap();
        assert_eq!(young(s, BASE, 8, true), [0b101]);
        // Nothing was young: no flush.
        let flushes = pool.flushes();
        assert_eq!(young(s, BASE, 8, true), [0]);
        assert_eq!(pool.flushes(), flushes);
        // A huge linear leaf reports all its pages; a gap is NotMapped.
        s.map_linear(0x8000_0000, 0x1_0000_0000, 0x20_0000, flags(RW))
            .unwrap();
        assert_eq!(s.translate(0x8000_0000).unwrap().1, 0x20_0000);
        // The hardware sets the huge leaf's accessed bit.
        with_format!(kind, F => {
            entry::<F>(pool, s, 0x8000_0000, 1).fetch_or(F::ACCESSED, Ordering::Relaxed);
        });
        assert_eq!(young(s, 0x8000_0000 + 64 * PAGE, 128, false), [!0, !0]);
        let mut out = [0u64];
        assert_eq!(
            s.young_get(BASE - PAGE, 2 * PAGE, &mut out, false),
            Err(Error::NotMapped)
        );
    });
}

#[test]
fn present_bitmap_shows_installed_frames_and_linear_pages() {
    each(128, |kind, _, s| {
        s.map_alloc(BASE, 8 * PAGE, flags(RW), false).unwrap();
        s.map_linear(BASE + 8 * PAGE, 0x1_0000_0000, 4 * PAGE, flags(RW))
            .unwrap();
        s.handle_fault(BASE + PAGE, read()).unwrap();
        s.handle_fault(BASE + 3 * PAGE, read()).unwrap();
        s.protect(BASE + 3 * PAGE, PAGE, 0).unwrap();
        let mut out = [!0u64];
        s.present_bitmap(BASE, 16 * PAGE, &mut out).unwrap();
        assert_eq!(out, [0b1111_0000_1010], "{kind:?}");
    });
}

/// Issue 12's stress test: writer threads store per-page sequence numbers
/// through a simulated MMU (a store goes through only if the leaf is
/// writable, else the write faults into `handle_fault`; the check and the
/// store hold the pool's shootdown lock, which every flush waits for, as a
/// TLB shootdown waits for in-flight stores) while another thread runs
/// get-and-clear rounds into a shadow copy. At the end the shadow equals
/// guest memory exactly: no write was lost.
#[test]
#[cfg_attr(
    miri,
    ignore = "the simulated guest's stores race the hypervisor's copies of the same page, \
              as a real guest's do; between two Rust threads Miri calls that a data race"
)]
fn no_write_is_lost_between_get_and_clear_rounds() {
    let kind = FormatKind::X86Ept;
    let (threads, pages_each, rounds) = if cfg!(miri) { (2, 4, 3) } else { (3, 64, 200) };
    let pages = threads * pages_each;
    with_space(kind, 256, |pool, s| {
        s.map_alloc(BASE, pages * PAGE, flags(RW), false).unwrap();
        s.dirty_log_start(BASE, pages * PAGE).unwrap();
        let mut shadow = vec![0u64; pages as usize];
        let done = std::sync::atomic::AtomicUsize::new(0);
        let round = std::sync::atomic::AtomicUsize::new(0);
        let stored = std::sync::atomic::AtomicUsize::new(0);
        let copy = |shadow: &mut Vec<u64>, bits: &[u64]| {
            for i in 0..pages {
                if bits[(i / 64) as usize] >> (i % 64) & 1 != 0 {
                    let mut b = [0u8; 8];
                    s.read(BASE + i * PAGE, &mut b).unwrap();
                    shadow[i as usize] = u64::from_le_bytes(b);
                }
            }
        };
        std::thread::scope(|t| {
            for w in 0..threads {
                let (done, round, stored) = (&done, &round, &stored);
                t.spawn(move || {
                    let mut n = 0;
                    while round.load(Ordering::Acquire) < rounds {
                        n += 1;
                        let i = w * pages_each + (n * 7) % pages_each;
                        let gpa = BASE + i * PAGE;
                        loop {
                            let guard = pool.shootdown.read().unwrap();
                            let raw = with_format!(kind, F => {
                                let w = s.test_walker::<F>();
                                match w.find(crate::addr::Gpa::from_u64(gpa)).unwrap() {
                                    Some(f)
                                        if f.level == 0
                                            && matches!(f.decode::<F>(), Entry::Leaf { .. })
                                            && format::leaf_rights::<F>(f.raw) & 2 != 0 =>
                                    {
                                        Some(F::addr(f.raw, 0))
                                    }
                                    _ => None,
                                }
                            });
                            if let Some(hpa) = raw {
                                // SAFETY: a present, writable frame of the pool.
                                unsafe { pool.virt(hpa as u64).write_volatile(n) };
                                drop(guard);
                                stored.fetch_add(1, Ordering::Release);
                                break;
                            }
                            drop(guard);
                            s.handle_fault(gpa, write()).unwrap();
                        }
                    }
                    done.fetch_add(1, Ordering::Release);
                });
            }
            let mut bits = vec![0u64; pages.div_ceil(64) as usize];
            while done.load(Ordering::Acquire) < threads as usize {
                // Every round overlaps new stores.
                let before = stored.load(Ordering::Acquire);
                while stored.load(Ordering::Acquire) < before + threads as usize
                    && done.load(Ordering::Acquire) < threads as usize
                {
                    std::thread::yield_now();
                }
                s.dirty_log_get(BASE, pages * PAGE, &mut bits, true)
                    .unwrap();
                copy(&mut shadow, &bits);
                round.fetch_add(1, Ordering::Release);
            }
        });
        let mut bits = vec![0u64; pages.div_ceil(64) as usize];
        s.dirty_log_get(BASE, pages * PAGE, &mut bits, true)
            .unwrap();
        copy(&mut shadow, &bits);
        for i in 0..pages {
            let mut b = [0u8; 8];
            s.read(BASE + i * PAGE, &mut b).unwrap();
            assert_eq!(
                shadow[i as usize],
                u64::from_le_bytes(b),
                "page {i}: a write was lost"
            );
        }
        // Rounds overlapped stores, so they re-armed pages (and flushed).
        assert!(pool.flushes() > 0);
    });
}

#[test]
#[cfg_attr(miri, ignore = "2 MiB blocks: too slow to interpret")]
fn dirty_log_start_splits_2mib_pages_all_or_nothing() {
    const BLOCK: u64 = 0x20_0000;
    let huge_rw = Flags::from_bits(RW).unwrap().with(Flags::HUGE);
    for &kind in shapes() {
        with_space(kind, 8 * 512, |pool, s| {
            s.map_alloc(BLOCK, 2 * BLOCK, huge_rw, true).unwrap();
            assert_eq!(s.stats().huge_pages, 2, "{kind:?}");
            s.write(BLOCK + 5 * PAGE, &[7; 8]).unwrap();
            let (frames, flushes) = (pool.in_use(), pool.flushes());
            // Every allocation point (the bitmaps, then a table per block).
            for fail in 0..5 {
                pool.fail_after(fail);
                assert_eq!(
                    s.dirty_log_start(BLOCK, 2 * BLOCK),
                    Err(Error::NoMemory),
                    "{kind:?}"
                );
                pool.fail_never();
                assert_eq!(
                    (pool.in_use(), pool.flushes()),
                    (frames, flushes),
                    "{kind:?} {fail}"
                );
                assert_eq!(s.translate(BLOCK).unwrap().1, BLOCK as usize);
            }
            s.dirty_log_start(BLOCK, 2 * BLOCK).unwrap();
            // 4 KiB pieces over the same blocks, write-protected, clean.
            assert_eq!(s.translate(BLOCK + 5 * PAGE).unwrap().1, PAGE as usize);
            assert_eq!(s.stats().huge_pages, 2, "{kind:?}: still two blocks");
            let pages = 2 * BLOCK / PAGE;
            assert!(dirty(s, BLOCK, pages, false).iter().all(|&w| w == 0));
            s.handle_fault(BLOCK + BLOCK + 9 * PAGE, write()).unwrap();
            let d = dirty(s, BLOCK, pages, true);
            assert_eq!(d[8], 1 << 9, "{kind:?}");
            let mut back = [0u8; 8];
            s.read(BLOCK + 5 * PAGE, &mut back).unwrap();
            assert_eq!(back, [7; 8], "{kind:?}: data kept across the split");
            s.dirty_log_stop(BLOCK, 2 * BLOCK).unwrap();
            s.handle_fault(BLOCK + 3 * PAGE, write()).unwrap();
        });
    }
}
