//! Model-based random test: thousands of random maps, unmaps (partial ones
//! included, across huge linear leaves), faults, writes and reads against a
//! plain per-page model, checking after every step that translations, data,
//! statistics and the frame pool agree with it — and that everything comes
//! back at the end. Deterministic (fixed seeds), so a failure reproduces.

use std::collections::BTreeMap;

use super::pool::Pool;
use crate::error::Error;
use crate::flags::{Access, Flags};
use crate::format::FormatKind;

const PAGE: u64 = 4096;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// The window: 4 GiB, so 1 GiB linear leaves can occur.
const WINDOW: u64 = 4 * GIB;
/// Linear mappings point here (outside the pool; never read or written).
const LINEAR_HPA: u64 = 0x100_0000_0000;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Page {
    /// Alloc region, never touched.
    Lazy,
    /// Alloc region, backed: the frame and the marker last written (0 = none).
    Backed { hpa: u64, marker: u64 },
    /// Linear region mapping this host-physical page.
    Linear(u64),
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A random page range: mostly small, sometimes huge and aligned.
fn range(rng: &mut Rng) -> (u64, u64) {
    match rng.below(10) {
        0 if rng.below(8) == 0 => {
            let start = rng.below(WINDOW / GIB) * GIB;
            (start, GIB.min(WINDOW - start))
        }
        1 | 2 => {
            // In the same few areas as the small ranges, so small unmaps cut
            // into 2 MiB leaves and small maps collide with big regions.
            let start = rng.below(4) * GIB + rng.below(3) * 2 * MIB;
            (start, 2 * MIB * (1 + rng.below(2)))
        }
        _ => {
            // Cluster small ranges into a few 2 MiB areas so they collide.
            let area = rng.below(4) * GIB + rng.below(3) * 2 * MIB;
            let start = area + rng.below(512) * PAGE;
            (start, PAGE * (1 + rng.below(24)))
        }
    }
}

/// Steps per seed and pool size. Under Miri the model tests are ignored (they
/// take minutes interpreted; the unsafe code they drive is exercised by the
/// other unit tests there): run one by hand with
/// `cargo +nightly miri test --lib model -- --ignored` for a short walk.
const STEPS: usize = if cfg!(miri) { 25 } else { 1200 };
const POOL_FRAMES: usize = if cfg!(miri) { 1024 } else { 32768 };

fn run(format: FormatKind, seed: u64, steps: usize) {
    let pool = Pool::new(POOL_FRAMES);
    let space = pool.space(format, WINDOW);
    // SAFETY: alive until `pool.destroy(space)` below.
    let s = unsafe { space.as_ref() };
    let mut rng = Rng(seed);
    let mut model: BTreeMap<u64, Page> = BTreeMap::new();
    let rw = Flags::from_bits(3).unwrap();
    let write = Access::from_bits(2).unwrap();
    let mut marker = 0u64;

    for step in 0..steps {
        let (gpa, size) = range(&mut rng);
        let size = size.min(WINDOW - gpa);
        let pages = size / PAGE;
        let overlaps = (0..pages).any(|i| model.contains_key(&(gpa + i * PAGE)));
        let what = rng.below(10);
        let ctx = format!("seed {seed} step {step}: op {what} [{gpa:#x}, +{size:#x})");
        match what {
            // Lazy or populated RAM (small ranges only: the pool is finite).
            0 | 1 if pages <= 64 => {
                let populate = what == 1;
                let r = s.map_alloc(gpa, size, rw, populate);
                if overlaps {
                    assert_eq!(r, Err(Error::Exists), "{ctx}");
                    continue;
                }
                assert_eq!(r, Ok(()), "{ctx}");
                for i in 0..pages {
                    let p = gpa + i * PAGE;
                    let page = if populate {
                        let (hpa, _) = s.translate(p).expect("populated page maps");
                        Page::Backed {
                            hpa: hpa.as_u64(),
                            marker: 0,
                        }
                    } else {
                        Page::Lazy
                    };
                    model.insert(p, page);
                }
            }
            2 => {
                let hpa = LINEAR_HPA + gpa;
                let r = s.map_linear(gpa, hpa, size, Flags::READ);
                if overlaps {
                    assert_eq!(r, Err(Error::Exists), "{ctx}");
                    continue;
                }
                assert_eq!(r, Ok(()), "{ctx}");
                for i in 0..pages {
                    model.insert(gpa + i * PAGE, Page::Linear(hpa + i * PAGE));
                }
            }
            3 | 4 => {
                assert_eq!(s.unmap(gpa, size), Ok(()), "{ctx}");
                for i in 0..pages {
                    model.remove(&(gpa + i * PAGE));
                }
            }
            // Touch: fault in, write a marker through the hypervisor path.
            _ => {
                let Some((&p, &page)) = model.range(gpa..).next() else {
                    continue;
                };
                let r = s.handle_fault(p + rng.below(PAGE), write);
                match page {
                    Page::Linear(_) => {
                        // Read-only linear regions refuse writes.
                        assert_eq!(r, Err(Error::Access), "{ctx} at {p:#x}");
                        continue;
                    }
                    _ => assert_eq!(r, Ok(()), "{ctx} at {p:#x}"),
                }
                let (hpa, size) = s.translate(p).expect("faulted page maps");
                assert_eq!(size, PAGE as usize);
                if let Page::Backed { hpa: old, .. } = page {
                    assert_eq!(hpa.as_u64(), old, "{ctx}: a present page was replaced");
                }
                let mut back = [0u8; 8];
                s.read(p + 8, &mut back).unwrap();
                let want = match page {
                    Page::Backed { marker, .. } => marker,
                    _ => 0,
                };
                assert_eq!(u64::from_le_bytes(back), want, "{ctx}: data at {p:#x}");
                marker += 1;
                s.write(p + 8, &marker.to_le_bytes()).unwrap();
                model.insert(
                    p,
                    Page::Backed {
                        hpa: hpa.as_u64(),
                        marker,
                    },
                );
            }
        }
        check(s, &model, &pool, &ctx, step as u64);
    }

    assert_eq!(s.unmap(0, WINDOW), Ok(()));
    let st = s.stats();
    let root = 1u64 << format.root_order();
    assert_eq!((st.regions, st.guest_frames, st.table_frames), (0, 0, root));
    assert_eq!(pool.in_use() as u64, 1 + root, "home frame + root only");
    pool.destroy(space);
    assert_eq!(pool.in_use(), 0);
}

/// Every page of the model translates as it says; statistics agree.
fn check(
    s: &crate::space::AddrSpace,
    model: &BTreeMap<u64, Page>,
    pool: &Pool,
    ctx: &str,
    step: u64,
) {
    let mut backed = 0;
    for (&p, &page) in model {
        // Linear ranges can be a GiB: check a rotating 1/64 of their pages.
        if matches!(page, Page::Linear(_))
            && !((p >> 12).wrapping_mul(0x9e37) ^ step).is_multiple_of(64)
        {
            continue;
        }
        let t = s.translate(p + 0x123);
        match page {
            Page::Lazy => assert_eq!(t.map(|_| ()), Err(Error::NotMapped), "{ctx}: lazy {p:#x}"),
            Page::Backed { hpa, .. } => {
                backed += 1;
                assert_eq!(t.unwrap().0.as_u64(), hpa + 0x123, "{ctx}: backed {p:#x}");
            }
            Page::Linear(hpa) => {
                assert_eq!(t.unwrap().0.as_u64(), hpa + 0x123, "{ctx}: linear {p:#x}")
            }
        }
    }
    let st = s.stats();
    assert_eq!(st.guest_frames, backed, "{ctx}: guest frames");
    assert_eq!(
        st.mapped_bytes,
        model.len() as u64 * PAGE,
        "{ctx}: mapped bytes"
    );
    let held = (st.guest_frames + st.table_frames) as usize;
    // Plus the object's own frame and at most a few region-set chunks.
    assert!(
        (held + 1..=held + 3).contains(&pool.in_use()),
        "{ctx}: pool has {} out, stats explain {held} + bookkeeping",
        pool.in_use()
    );
}

#[test]
#[cfg_attr(miri, ignore = "semantic coverage, run natively; minutes under Miri")]
fn random_operations_agree_with_a_page_model_ept() {
    for seed in 1..=if cfg!(miri) { 1 } else { 3 } {
        run(FormatKind::X86Ept, seed * 0x9e37_79b9, STEPS);
    }
}

#[test]
#[cfg_attr(miri, ignore = "semantic coverage, run natively; minutes under Miri")]
fn random_operations_agree_with_a_page_model_npt() {
    for seed in 5..=if cfg!(miri) { 5 } else { 7 } {
        run(FormatKind::X86Npt, seed * 0x9e37_79b9, STEPS);
    }
}

#[test]
#[cfg_attr(miri, ignore = "semantic coverage, run natively; minutes under Miri")]
fn random_operations_agree_with_a_page_model_every_format() {
    for (i, kind) in FormatKind::ALL.into_iter().enumerate() {
        if matches!(kind, FormatKind::X86Ept | FormatKind::X86Npt) {
            continue; // above, with more seeds
        }
        run(kind, (i as u64 + 11) * 0x9e37_79b9, STEPS / 2);
    }
}
