//! 2 MiB guest pages (`AXALLOC_HUGE`), each rule a test: blocks from
//! `alloc_contig(9)` at populate, prefault and first fault; 4 KiB edges and
//! fallback; splits by unmap and discard; a block back whole, once, after
//! the flush, only when none of its pages is mapped; failure injection at
//! every allocation point; concurrent writers never lose data.

use core::sync::atomic::Ordering;

use super::core::entry;
use super::pool::{Event, Pool};
use super::{shapes, with_space};
use crate::error::Error;
use crate::flags::{Access, Flags};
use crate::format::{Family, Format, FormatKind, with_format};
use crate::space::AddrSpace;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const BLOCK: u64 = 2 * MIB;
/// Frames for a test pool: a few blocks (each aligned to 512 frames) and
/// room for tables and 4 KiB frames.
const FRAMES: usize = 8 * 512;

fn huge_rw() -> Flags {
    Flags::from_bits(3).unwrap().with(Flags::HUGE)
}

fn write() -> Access {
    Access::from_bits(2).unwrap()
}

/// The bits of a read/write 2 MiB block leaf mapping `hpa`, from the
/// manuals, spelled out per family rather than through the encoder.
fn expected_block_leaf(kind: FormatKind, hpa: u64) -> u64 {
    match kind.family() {
        // SDM vol. 3C, "Format of an EPT Page-Directory Entry that Maps a
        // 2-MByte Page": R (0), W (1), memory type WB = 6 (5:3), bit 7 = 1
        // (a 2 MiB page), address 51:21; bit 11 (ignored) the block mark.
        Family::Ept => hpa | 0b011 | (6 << 3) | (1 << 7) | (1 << 11),
        // APM vol. 2, "2-Mbyte PDE": P, R/W, U/S, PS (7), NX (63) without
        // EXEC; AVL bit 11 the block mark.
        Family::Npt => hpa | 0b111 | (1 << 7) | (1 << 63) | (1 << 11),
        // Arm ARM, level 2 block descriptor: bits 1:0 = 0b01, MemAttr 5:2 =
        // 0b1111 (Normal WB), S2AP 7:6 = 0b11, SH 9:8 = 0b11, AF (10), XN
        // (54) without EXEC; bit 57 (software) the block mark.
        Family::ArmS2 => {
            hpa | 0b01
                | (0b1111 << 2)
                | (0b11 << 6)
                | (0b11 << 8)
                | (1 << 10)
                | (1 << 54)
                | (1 << 57)
        }
        // RISC-V megapage: V, R, W, U, A, D; PPN (53:10) = hpa >> 2 with
        // PPN[0] zero (aligned); RSW bit 9 the block mark.
        Family::Sv39x4 | Family::Sv48x4 | Family::Sv57x4 => {
            (hpa >> 2) | 0b1 | 0b110 | (1 << 4) | (1 << 6) | (1 << 7) | (1 << 9)
        }
    }
}

fn hpa_of(s: &AddrSpace, gpa: u64) -> (u64, usize) {
    let (hpa, size) = s.translate(gpa).unwrap();
    (hpa.as_u64(), size)
}

#[test]
#[cfg_attr(miri, ignore = "2 MiB blocks in a 16 MiB pool: too slow to interpret")]
fn huge_populate_maps_aligned_parts_with_blocks_and_edges_with_4k() {
    for &kind in shapes() {
        with_space(kind, FRAMES, |pool, s| {
            // [2M - 4K, 6M + 4K): two whole parts, one 4 KiB page each side.
            let (start, end) = (BLOCK - 4 * KIB, 3 * BLOCK + 4 * KIB);
            s.map_alloc(start, end - start, huge_rw(), true).unwrap();
            let st = s.stats();
            assert_eq!(st.huge_pages, 2, "{kind:?}");
            assert_eq!(st.guest_frames, 2 * 512 + 2, "{kind:?}");
            assert_eq!(pool.blocks(9), 2);
            assert_eq!(hpa_of(s, start).1, 4096);
            assert_eq!(hpa_of(s, 3 * BLOCK).1, 4096);
            for part in [BLOCK, 2 * BLOCK] {
                let (hpa, size) = hpa_of(s, part + 0x5123);
                assert_eq!(size, BLOCK as usize, "{kind:?}");
                let base = hpa - 0x5123;
                assert_eq!(base % BLOCK, 0);
                with_format!(kind, F => {
                    let raw = entry::<F>(pool, s, part, 1).load(Ordering::Relaxed);
                    assert_eq!(raw, expected_block_leaf(kind, base), "{kind:?}: {raw:#x}");
                });
            }
            // Zeroed (the pool starts as 0xa5), through the streaming path.
            let mut buf = vec![0xffu8; (end - start) as usize];
            s.read(start, &mut buf).unwrap();
            assert!(buf.iter().all(|&b| b == 0), "{kind:?}");
        });
    }
}

#[test]
#[cfg_attr(miri, ignore = "2 MiB blocks in a 16 MiB pool: too slow to interpret")]
fn huge_fault_installs_one_block_per_part_and_counts_one_fault() {
    for &kind in shapes() {
        with_space(kind, FRAMES, |pool, s| {
            s.map_alloc(BLOCK - 4 * KIB, 2 * BLOCK + 8 * KIB, huge_rw(), false)
                .unwrap();
            for page in (0..512).step_by(37) {
                s.handle_fault(BLOCK + page * 4096, write()).unwrap();
            }
            let st = s.stats();
            assert_eq!((st.faults, st.huge_pages, st.guest_frames), (1, 1, 512));
            let (hpa, size) = hpa_of(s, BLOCK + 0x1000);
            assert_eq!(size, BLOCK as usize, "{kind:?}");
            with_format!(kind, F => {
                let raw = entry::<F>(pool, s, BLOCK, 1).load(Ordering::Relaxed);
                // A faulted block was accessed: its accessed flag is set
                // (EPT bit 8, NPT bit 5; Arm AF and RISC-V A always are).
                assert_eq!(raw, expected_block_leaf(kind, hpa - 0x1000) | F::ACCESSED, "{kind:?}");
            });
            // The edge page is 4 KiB.
            s.handle_fault(BLOCK - 4 * KIB, write()).unwrap();
            assert_eq!(hpa_of(s, BLOCK - 4 * KIB).1, 4096);
            assert_eq!(s.stats().guest_frames, 513);
        });
    }
}

#[test]
#[cfg_attr(miri, ignore = "2 MiB blocks in a 16 MiB pool: too slow to interpret")]
fn huge_fault_falls_back_to_4k_when_contig_fails() {
    for &kind in shapes() {
        with_space(kind, FRAMES, |pool, s| {
            s.map_alloc(BLOCK, 2 * BLOCK, huge_rw(), false).unwrap();
            pool.contig_fails(true);
            s.handle_fault(BLOCK + 0x3000, write()).unwrap();
            assert_eq!(hpa_of(s, BLOCK + 0x3000).1, 4096, "{kind:?}");
            let st = s.stats();
            assert_eq!((st.huge_pages, st.guest_frames), (0, 1));
            // A part with a 4 KiB page stays 4 KiB, blocks or not.
            pool.contig_fails(false);
            s.handle_fault(BLOCK + 0x4000, write()).unwrap();
            assert_eq!(hpa_of(s, BLOCK + 0x4000).1, 4096);
            // Populate falls back too.
            pool.contig_fails(true);
            s.map_alloc(4 * BLOCK, BLOCK, huge_rw(), true).unwrap();
            assert_eq!(hpa_of(s, 4 * BLOCK).1, 4096);
            assert_eq!(s.stats().huge_pages, 0);
            pool.contig_fails(false);
        });
    }
}

#[test]
#[cfg_attr(miri, ignore = "2 MiB blocks in a 16 MiB pool: too slow to interpret")]
fn huge_prefault_and_write_install_blocks() {
    for &kind in shapes() {
        with_space(kind, FRAMES, |_pool, s| {
            s.map_alloc(BLOCK, 2 * BLOCK, huge_rw(), false).unwrap();
            s.prefault(BLOCK, BLOCK).unwrap();
            assert_eq!(hpa_of(s, BLOCK + 0x7000).1, BLOCK as usize, "{kind:?}");
            // A hypervisor write fills only the pages it covers.
            s.write(2 * BLOCK + 0x10, b"hello").unwrap();
            assert_eq!(hpa_of(s, 2 * BLOCK).1, 4096, "{kind:?}");
            let st = s.stats();
            assert_eq!((st.huge_pages, st.guest_frames, st.faults), (1, 513, 0));
        });
    }
}

#[test]
#[cfg_attr(miri, ignore = "2 MiB blocks in a 16 MiB pool: too slow to interpret")]
fn huge_block_returns_whole_after_last_page_unmapped() {
    for &kind in shapes() {
        with_space(kind, FRAMES, |pool, s| {
            s.map_alloc(BLOCK, BLOCK, huge_rw(), true).unwrap();
            let (block, _) = hpa_of(s, BLOCK);
            s.write(BLOCK + 0x9000, b"kept").unwrap();
            // Part of the page: split over the same block, nothing freed.
            s.unmap(BLOCK + 0x4000, 0x2000).unwrap();
            assert_eq!(pool.blocks(9), 1, "{kind:?}");
            assert_eq!(s.stats().huge_pages, 1);
            assert_eq!(hpa_of(s, BLOCK + 0x9000), (block + 0x9000, 4096));
            assert!(s.translate(BLOCK + 0x4000).is_err());
            let mut buf = [0u8; 4];
            s.read(BLOCK + 0x9000, &mut buf).unwrap();
            assert_eq!(&buf, b"kept");
            // The rest in two more pieces; the block goes with the last.
            // (A discard first, so the region stays around the last
            // piece's leaf table: the last-piece rule, not a pruned table,
            // frees the block.)
            s.discard(BLOCK, 0x4000).unwrap();
            assert_eq!(pool.blocks(9), 1, "{kind:?}");
            let frees = |pool: &Pool| {
                pool.events()
                    .iter()
                    .filter(|e| matches!(e, Event::FreeContig(_, 9)))
                    .count()
            };
            assert_eq!(frees(pool), 0);
            s.unmap(BLOCK + 0x6000, BLOCK - 0x6000).unwrap();
            assert_eq!(pool.blocks(9), 0, "{kind:?}");
            let st = s.stats();
            assert_eq!((st.huge_pages, st.guest_frames), (0, 0));
            assert!(s.translate(BLOCK).is_err(), "discarded, still lazy");
            // Once, whole, after a flush covering the block's last page.
            let ev = pool.events();
            let at = ev
                .iter()
                .position(|e| *e == Event::FreeContig(block, 9))
                .expect("block freed");
            assert_eq!(frees(pool), 1);
            let Some(Event::Flush(g, n)) = ev[..at].last().copied() else {
                panic!("{kind:?}: no flush before the free: {ev:?}");
            };
            assert!(
                g <= BLOCK + BLOCK - 0x1000 && g + n >= 2 * BLOCK,
                "{kind:?}"
            );
        });
    }
}

#[test]
#[cfg_attr(miri, ignore = "2 MiB blocks in a 16 MiB pool: too slow to interpret")]
fn huge_discard_splits_refaults_4k_and_frees_the_block_with_its_last_page() {
    for &kind in shapes() {
        with_space(kind, FRAMES, |pool, s| {
            s.map_alloc(BLOCK, BLOCK, huge_rw(), false).unwrap();
            let data: Vec<u8> = (0..BLOCK).map(|i| (i % 251) as u8 + 1).collect();
            s.write(BLOCK, &data).unwrap();
            let (block, _) = hpa_of(s, BLOCK);
            s.discard(BLOCK + 0x10_0000, 0x3000).unwrap();
            let mut back = vec![0u8; BLOCK as usize];
            s.read(BLOCK, &mut back).unwrap();
            for (i, (a, b)) in back.iter().zip(&data).enumerate() {
                let hole = (0x10_0000..0x10_3000).contains(&i);
                assert_eq!(*a, if hole { 0 } else { *b }, "{kind:?} byte {i:#x}");
            }
            assert_eq!(hpa_of(s, BLOCK).1, 4096, "split");
            assert_eq!(
                hpa_of(s, BLOCK + 0x20_0000 - 0x1000).0,
                block + BLOCK - 0x1000
            );
            // A fault on a discarded page of the split block: a 4 KiB frame.
            s.handle_fault(BLOCK + 0x10_1000, write()).unwrap();
            let (hpa, size) = hpa_of(s, BLOCK + 0x10_1000);
            assert_eq!(size, 4096);
            assert!(
                hpa < block || hpa >= block + BLOCK,
                "{kind:?}: not from the block"
            );
            let st = s.stats();
            assert_eq!((st.huge_pages, st.guest_frames), (1, 513));
            // Discard the rest: the block goes back, the 4 KiB frame too.
            s.discard(BLOCK, BLOCK).unwrap();
            assert_eq!(pool.blocks(9), 0, "{kind:?}");
            let st = s.stats();
            assert_eq!((st.huge_pages, st.guest_frames), (0, 0));
            // Still lazy and huge: the next fault gets a block again.
            s.handle_fault(BLOCK + 0x1000, write()).unwrap();
            assert_eq!(hpa_of(s, BLOCK).1, BLOCK as usize, "{kind:?}");
            s.read(BLOCK, &mut back).unwrap();
            assert!(back.iter().all(|&b| b == 0));
        });
    }
}

#[test]
#[cfg_attr(miri, ignore = "2 MiB blocks in a 16 MiB pool: too slow to interpret")]
fn huge_discard_of_a_whole_block_frees_it_and_the_part_faults_a_block_again() {
    for &kind in shapes() {
        with_space(kind, FRAMES, |pool, s| {
            s.map_alloc(BLOCK, 2 * BLOCK, huge_rw(), true).unwrap();
            let flushes = pool.flushes();
            s.discard(BLOCK, BLOCK).unwrap();
            assert_eq!(pool.flushes(), flushes + 1, "{kind:?}: no split, one flush");
            assert_eq!(pool.blocks(9), 1);
            s.handle_fault(BLOCK, write()).unwrap();
            assert_eq!(hpa_of(s, BLOCK).1, BLOCK as usize);
            assert_eq!(s.stats().huge_pages, 2);
        });
    }
}

/// Runs `op` with the pool failing at every allocation in turn: each
/// failure leaves the stats, the frame pool and the table exactly as before
/// (and the op succeeds once the budget suffices).
fn inject(
    kind: FormatKind,
    setup: impl Fn(&AddrSpace),
    op: impl Fn(&AddrSpace) -> crate::error::Result,
) {
    let mut n = 0;
    loop {
        let mut done = false;
        with_space(kind, FRAMES, |pool, s| {
            setup(s);
            // The stats, the pool, and what every page maps to.
            let probe = |s: &AddrSpace| {
                let t: Vec<_> = (0..4 * BLOCK)
                    .step_by(4096)
                    .map(|g| s.translate(g).ok())
                    .collect();
                (s.stats(), pool.in_use(), pool.blocks(9), t)
            };
            let before = probe(s);
            pool.fail_after(n);
            let r = op(s);
            pool.fail_never();
            match r {
                Ok(()) => done = true,
                Err(e) => {
                    assert_eq!(e, Error::NoMemory, "{kind:?} n = {n}");
                    assert!(probe(s) == before, "{kind:?}: n = {n} changed something");
                }
            }
        });
        if done {
            return;
        }
        n += 1;
        assert!(n < 64, "never succeeds");
    }
}

#[test]
#[cfg_attr(miri, ignore = "2 MiB blocks in a 16 MiB pool: too slow to interpret")]
fn huge_failure_injection_at_every_allocation_changes_nothing() {
    // One shape per table code path: 4 and 5 levels, NPT's PAT bit, Arm's
    // break-before-make with one and two levels, a RISC-V x4 root.
    let kinds = [
        FormatKind::X86Ept,
        FormatKind::X86Npt5,
        FormatKind::ArmL3R0,
        FormatKind::ArmL2R2,
        FormatKind::Sv39x4,
    ];
    for kind in kinds.into_iter().filter(|k| shapes().contains(k)) {
        // Populate: region chunk, tables, 2 blocks, 2 edge frames.
        inject(
            kind,
            |_| {},
            |s| s.map_alloc(BLOCK - 4 * KIB, 2 * BLOCK + 8 * KIB, huge_rw(), true),
        );
        // A fault: tables, the block (then the fallback's table and frame).
        inject(
            kind,
            |s| s.map_alloc(BLOCK, BLOCK, huge_rw(), false).unwrap(),
            |s| s.handle_fault(BLOCK + 0x5000, write()).map(|_| ()),
        );
        // Splits: unmap and discard of part of a block need a table.
        let populated = |s: &AddrSpace| s.map_alloc(BLOCK, 2 * BLOCK, huge_rw(), true).unwrap();
        inject(kind, populated, |s| s.unmap(BLOCK + 0x3000, BLOCK));
        inject(kind, populated, |s| s.discard(BLOCK + 0x3000, 0x1000));
        // Prefault.
        inject(
            kind,
            |s| s.map_alloc(BLOCK, 2 * BLOCK, huge_rw(), false).unwrap(),
            |s| s.prefault(BLOCK, 2 * BLOCK),
        );
    }
}

#[test]
#[cfg_attr(miri, ignore = "2 MiB blocks in a 16 MiB pool: too slow to interpret")]
fn huge_discards_racing_on_one_block_free_it_once() {
    // Two discards of the two halves of one split block, in either order and
    // with a fault in between: the block goes back exactly once (the pool
    // panics on a second free_contig), after a flush over the whole block.
    for &kind in shapes() {
        with_space(kind, FRAMES, |pool, s| {
            s.map_alloc(BLOCK, BLOCK, huge_rw(), true).unwrap();
            let (block, _) = hpa_of(s, BLOCK);
            s.discard(BLOCK + 0x1000, 0x1000).unwrap();
            s.handle_fault(BLOCK + 0x1000, write()).unwrap();
            s.discard(BLOCK + MIB, MIB).unwrap();
            assert_eq!(pool.blocks(9), 1);
            s.discard(BLOCK, 0x1000).unwrap();
            s.discard(BLOCK + 0x2000, MIB - 0x2000).unwrap();
            assert_eq!(pool.blocks(9), 0, "{kind:?}");
            assert_eq!(s.stats().guest_frames, 1, "the 4 KiB page stays");
            let ev = pool.events();
            let at = ev
                .iter()
                .position(|e| *e == Event::FreeContig(block, 9))
                .unwrap();
            let Some(Event::Flush(g, n)) = ev[..at].last().copied() else {
                panic!("no flush before the free");
            };
            assert!(
                g <= BLOCK && g + n >= 2 * BLOCK,
                "{kind:?}: the flush covers the block"
            );
        });
    }
}

#[test]
#[cfg_attr(miri, ignore = "2 MiB blocks in a 16 MiB pool: too slow to interpret")]
fn huge_writers_never_lose_data_while_other_pages_are_discarded() {
    let kinds = if cfg!(miri) {
        &[FormatKind::X86Ept][..]
    } else {
        &[
            FormatKind::X86Ept,
            FormatKind::X86Npt,
            FormatKind::ArmL3R0,
            FormatKind::Sv39x4,
        ][..]
    };
    for &kind in kinds {
        with_space(kind, FRAMES, |_pool, s| {
            s.map_alloc(BLOCK, 2 * BLOCK, huge_rw(), true).unwrap();
            // Even pages are written by two writers; odd pages discarded,
            // faulted and discarded again by the main thread.
            let rounds = if cfg!(miri) { 2 } else { 6 };
            std::thread::scope(|scope| {
                for t in 0..2u64 {
                    scope.spawn(move || {
                        for round in 0..rounds {
                            for page in (t * 2..1024).step_by(4) {
                                let gpa = BLOCK + page * 4096;
                                let v = (round as u64 * 1024 + page).to_le_bytes();
                                loop {
                                    match s.write(gpa, &v) {
                                        Ok(()) => break,
                                        Err(Error::Busy) => std::thread::yield_now(),
                                        Err(e) => panic!("{e:?}"),
                                    }
                                }
                                s.handle_fault(gpa, write()).unwrap();
                                let mut back = [0u8; 8];
                                while let Err(e) = s.read(gpa, &mut back) {
                                    // Arm: the block is split
                                    // (break-before-make) right now.
                                    assert_eq!(e, Error::Busy);
                                    assert_eq!(kind.family(), Family::ArmS2);
                                    std::thread::yield_now();
                                }
                                assert_eq!(back, v, "{kind:?} page {page}");
                            }
                        }
                    });
                }
                for round in 0..rounds {
                    for page in (1..1024u64).step_by(2).skip(round % 3).step_by(3) {
                        let gpa = BLOCK + page * 4096;
                        loop {
                            match s.discard(gpa, 4096) {
                                Ok(()) => break,
                                Err(Error::Busy) => std::thread::yield_now(),
                                Err(e) => panic!("{e:?}"),
                            }
                        }
                        s.handle_fault(gpa, write()).unwrap();
                    }
                }
            });
            for page in (0..1024u64).step_by(2) {
                let mut back = [0u8; 8];
                s.read(BLOCK + page * 4096, &mut back).unwrap();
                assert_eq!(u64::from_le_bytes(back), (rounds as u64 - 1) * 1024 + page);
            }
        });
    }
}

#[test]
#[cfg_attr(miri, ignore = "2 MiB blocks in a 16 MiB pool: too slow to interpret")]
fn huge_read_of_a_parked_block_is_busy_not_zeros() {
    // What a reader meets while Arm's break-before-make splits a block (or
    // a discard holds a page): the data is still there, not zeros.
    for &kind in shapes() {
        with_space(kind, FRAMES, |pool, s| {
            s.map_alloc(BLOCK, BLOCK, huge_rw(), true).unwrap();
            s.write(BLOCK + 0x8000, b"data").unwrap();
            with_format!(kind, F => {
                let e = entry::<F>(pool, s, BLOCK, 1);
                let live = e.load(Ordering::Relaxed);
                e.store(F::park(live), Ordering::Relaxed);
                let mut buf = [0u8; 4];
                assert_eq!(s.read(BLOCK + 0x8000, &mut buf), Err(Error::Busy), "{kind:?}");
                e.store(live, Ordering::Relaxed);
                s.read(BLOCK + 0x8000, &mut buf).unwrap();
                assert_eq!(&buf, b"data");
            });
        });
    }
}
