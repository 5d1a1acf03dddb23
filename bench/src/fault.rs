//! 8. The fault path (issue 8): `--only fault`.
//!
//! Every case lazily maps the same region and faults each page once, in
//! address order, on the main (pinned) thread; only the map and the fault
//! loop are timed (separately). All cases of one round run back to back and
//! the order of the cases is reversed every other round (ABBA over all of
//! them); round 0 is a discarded warm-up. Cases:
//!
//! - `AxZero` / `PeerZero`: dirty frames; libaxalloc zeroes, the peer's HAL
//!   memsets in `alloc_frame`.
//! - `AxZeroWrite` / `PeerZeroWrite`: the same, then the faulting thread
//!   writes the whole 4 KiB page (memset 0x5a) as the guest would; the page's
//!   host address comes from the same inlined plain walk on both sides.
//! - `AxReserve`: dirty frames, no FRAMES_ZEROED, but `axalloc_reserve(pages)`
//!   filled before the timed loop (not timed): faults take zeroed frames.
//! - `AxPre` / `AxPreLinear`: pool zeroed beforehand, `FRAMES_ZEROED`
//!   (`| LINEAR_MAP` with offset = hva - hpa of the pool).
//! - `PeerPre`: the peer over the pre-zeroed pool, lock-free (`&mut`).
//! - `PeerPreMutex`: the same peer behind a simple spin mutex taken per call
//!   (how axvisor shares its address space between vCPUs).

use std::cell::UnsafeCell;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axaddrspace::{AddrSpace, GuestPhysAddr, MappingFlags};
use page_table_multiarch::PagingHandler;

use super::*;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Case {
    AxZero,
    PeerZero,
    AxZeroWrite,
    PeerZeroWrite,
    AxReserve,
    AxPre,
    AxPreLinear,
    PeerPre,
    PeerPreMutex,
}

const CASES: [Case; 9] = [
    Case::AxZero,
    Case::PeerZero,
    Case::AxZeroWrite,
    Case::PeerZeroWrite,
    Case::AxReserve,
    Case::AxPre,
    Case::AxPreLinear,
    Case::PeerPre,
    Case::PeerPreMutex,
];

impl Case {
    fn ax(self) -> bool {
        matches!(self, Case::AxZero | Case::AxZeroWrite | Case::AxReserve | Case::AxPre | Case::AxPreLinear)
    }
    fn zero(self) -> Zero {
        match self {
            Case::AxZero | Case::PeerZero | Case::AxZeroWrite | Case::PeerZeroWrite | Case::AxReserve => Zero::Zeroing,
            _ => Zero::Prezeroed,
        }
    }
    fn writes(self) -> bool {
        matches!(self, Case::AxZeroWrite | Case::PeerZeroWrite)
    }
}

/// The peer's address space behind a test-and-test-and-set spin lock.
struct SpinPeer<H: PagingHandler> {
    locked: AtomicBool,
    a: UnsafeCell<AddrSpace<H>>,
}

impl<H: PagingHandler> SpinPeer<H> {
    #[inline(always)]
    fn with<R>(&self, f: impl FnOnce(&mut AddrSpace<H>) -> R) -> R {
        while self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            while self.locked.load(Ordering::Relaxed) {
                core::hint::spin_loop();
            }
        }
        // SAFETY: the lock is held.
        let r = f(unsafe { &mut *self.a.get() });
        self.locked.store(false, Ordering::Release);
        r
    }
}

/// Writes the 4 KiB page at `gpa` as the guest would, found through `root`.
#[inline(always)]
fn guest_write(map: &Mapping, root: u64, gpa: u64) -> bool {
    match walk(map, root, gpa) {
        Some((h, _)) => {
            // SAFETY: a pool frame, mapped for this page.
            unsafe { core::ptr::write_bytes(map.virt(h & !0xfff), 0x5a, FRAME) };
            true
        }
        None => false,
    }
}

fn fault_gpa(i: usize) -> u64 {
    gpa_of(i) + ((i as u64 * 8) & 0xff8)
}

impl Bench {
    /// One round of one case: (map ns/page, fault ns/page).
    fn fault_case(&mut self, p: &Pool, c: Case, verify: bool) -> (f64, f64) {
        let pages = self.s.lazy_pages;
        let bytes = (pages * FRAME) as u64;
        self.prepare(p, c.zero());
        let map: &Mapping = &self.map;
        let mut bad = 0usize;
        let (t0, t1, t2);
        if c.ax() {
            let mut flags = c.zero().ax_flags();
            let mut off = 0;
            if c == Case::AxPreLinear {
                flags |= ffi::CFG_LINEAR_MAP;
                off = (map.ptr as u64).wrapping_sub(pool::PHYS_BASE);
            }
            let s = Space::create_linear(&ax_hooks(p), flags, WIN_BASE, WIN_SIZE, off);
            if c == Case::AxReserve {
                // SAFETY: live handle.
                ffi::ok(unsafe { ffi::axalloc_reserve(s.0, pages as u64) }, "axalloc_reserve");
                let st = s.stats();
                self.checks.check(st.reserve_frames == pages as u64, format!("reserve holds {} != {pages}", st.reserve_frames));
            }
            let root = s.root();
            perf(true);
            t0 = Instant::now();
            // SAFETY: live handle.
            let rc = unsafe { ffi::axalloc_map_alloc(s.0, GPA, bytes, AX_RWX, false) };
            t1 = Instant::now();
            if c.writes() {
                for i in 0..pages {
                    let g = fault_gpa(i);
                    // SAFETY: live handle.
                    bad += (unsafe { ffi::axalloc_handle_fault(s.0, g, ffi::WRITE) } != ffi::OK) as usize;
                    bad += !guest_write(map, root, g) as usize;
                }
            } else {
                for i in 0..pages {
                    // SAFETY: live handle.
                    bad += (unsafe { ffi::axalloc_handle_fault(s.0, fault_gpa(i), ffi::WRITE) } != ffi::OK) as usize;
                }
            }
            t2 = Instant::now();
            perf(false);
            ffi::ok(rc, "lazy map");
            if verify {
                let st = s.stats();
                self.checks.check(
                    st.faults == pages as u64 && st.guest_frames == pages as u64,
                    format!("fault {c:?}: faults {} guest_frames {} != {pages}", st.faults, st.guest_frames),
                );
                if c == Case::AxReserve {
                    self.checks.check(
                        st.reserve_frames == 0,
                        format!("fault {c:?}: {} frames left in the reserve", st.reserve_frames),
                    );
                }
                if !c.writes() {
                    self.verify_mapped(&format!("fault {c:?}"), root, pages, &|g| s.translate(g));
                }
            }
            drop(s);
        } else {
            macro_rules! peer_run {
                ($h:ty, $mutex:expr) => {{
                    let sp = SpinPeer { locked: AtomicBool::new(false), a: UnsafeCell::new(peer_space::<$h>()) };
                    let root = sp.with(|a| a.page_table_root().as_usize() as u64);
                    perf(true);
                    let start = Instant::now();
                    if $mutex {
                        sp.with(|a| a.map_alloc(GuestPhysAddr::from(GPA as usize), pages * FRAME, PEER_RWX, false))
                    } else {
                        // SAFETY: no lock user yet; plain &mut access (lock-free peer).
                        unsafe { &mut *sp.a.get() }.map_alloc(GuestPhysAddr::from(GPA as usize), pages * FRAME, PEER_RWX, false)
                    }
                    .expect("peer lazy map");
                    let mid = Instant::now();
                    for i in 0..pages {
                        let g = GuestPhysAddr::from(fault_gpa(i) as usize);
                        let ok = if $mutex {
                            sp.with(|a| a.handle_page_fault(black_box(g), MappingFlags::WRITE))
                        } else {
                            // SAFETY: single thread, no lock user (lock-free peer).
                            unsafe { &mut *sp.a.get() }.handle_page_fault(black_box(g), MappingFlags::WRITE)
                        };
                        bad += !ok as usize;
                        if c.writes() {
                            bad += !guest_write(map, root, fault_gpa(i)) as usize;
                        }
                    }
                    let end = Instant::now();
                    perf(false);
                    if verify && !c.writes() {
                        let a = sp.a.into_inner();
                        self.verify_mapped(&format!("fault {c:?}"), root, pages, &|g| {
                            a.translate(GuestPhysAddr::from(g as usize)).map(|h| h.as_usize() as u64)
                        });
                    }
                    (start, mid, end)
                }};
            }
            (t0, t1, t2) = match c {
                Case::PeerZero | Case::PeerZeroWrite => peer_run!(pool::PeerHalZeroing, false),
                Case::PeerPre => peer_run!(pool::PeerHalPrezeroed, false),
                Case::PeerPreMutex => peer_run!(pool::PeerHalPrezeroed, true),
                _ => unreachable!(),
            };
        }
        self.checks.check(bad == 0, format!("fault {c:?}: {bad} faults or guest writes failed"));
        self.check_pool_empty(p, &format!("fault {c:?} + destroy"));
        (per(t1 - t0, pages), per(t2 - t1, pages))
    }

    pub(crate) fn fault_path(&mut self, p: &Pool) {
        let cases: Vec<Case> = CASES
            .into_iter()
            .filter(|c| if c.ax() { self.o.ax() } else { self.o.peer() })
            .collect();
        let mut maps: Vec<Vec<f64>> = vec![vec![]; CASES.len()];
        let mut faults: Vec<Vec<f64>> = vec![vec![]; CASES.len()];
        for rep in 0..self.o.reps + 1 {
            let mut order = cases.clone();
            if rep % 2 == 1 {
                order.reverse();
            }
            for c in order {
                let (m, f) = self.fault_case(p, c, rep == 0);
                let k = CASES.iter().position(|x| *x == c).unwrap();
                maps[k].push(m);
                faults[k].push(f);
            }
        }
        let idx = |c: Case| CASES.iter().position(|x| *x == c).unwrap();
        let f: Vec<Option<Stat>> = faults.iter_mut().map(median).collect();
        let tot: Vec<Option<Stat>> = maps
            .iter()
            .zip(&faults)
            .map(|(m, f)| {
                let mut v: Vec<f64> = m.iter().zip(f).map(|(a, b)| a + b).collect();
                median(&mut v)
            })
            .collect();
        let g = |c: Case| f[idx(c)];
        let t = |c: Case| tot[idx(c)];
        let mb = (self.s.lazy_pages * FRAME) >> 20;
        use Case::*;
        self.row(format!("8. fault, zeroing ({mb} MiB, address order)"), g(AxZero), g(PeerZero), "peer HAL memsets");
        self.row("8. fault + guest write of the 4 KiB page, zeroing", g(AxZeroWrite), g(PeerZeroWrite), "memset 0x5a after each fault, same thread");
        self.row("8. fault from the reserve vs peer fault with zeroing", g(AxReserve), g(PeerZero), "reserve filled before the timed loop");
        self.row("8. fault, pre-zeroed vs peer lock-free", g(AxPre), g(PeerPre), "");
        self.row("8. fault, pre-zeroed vs peer behind a spin mutex", g(AxPre), g(PeerPreMutex), "axvisor's way");
        self.row("8. fault, pre-zeroed + LINEAR_MAP vs peer lock-free", g(AxPreLinear), g(PeerPre), "");
        self.row("8. fault, pre-zeroed + LINEAR_MAP vs peer spin mutex", g(AxPreLinear), g(PeerPreMutex), "");
        self.row("8. lazy map + fault every page, pre-zeroed vs mutex peer", t(AxPre), t(PeerPreMutex), "total / pages");
        self.row("8. lazy map + fault every page, pre-zeroed + LINEAR_MAP vs mutex peer", t(AxPreLinear), t(PeerPreMutex), "total / pages");
        self.ratio_target("8. fault with zeroing ≥ 1.1× faster than peer", g(AxZero), g(PeerZero), 1.1);
        self.ratio_target("8. fault + 4 KiB guest write ≥ 1.1× faster than peer", g(AxZeroWrite), g(PeerZeroWrite), 1.1);
        self.ratio_target("8. fault from the reserve ≥ 5× faster than peer's zeroing fault", g(AxReserve), g(PeerZero), 5.0);
        self.ratio_target("8. pre-zeroed fault ≥ 0.7× peer lock-free", g(AxPre), g(PeerPre), 0.7);
        self.ratio_target("8. pre-zeroed fault ≥ 1.0× peer behind spin mutex", g(AxPre), g(PeerPreMutex), 1.0);
        self.ratio_target("8. pre-zeroed fault + LINEAR_MAP ≥ 0.7× peer lock-free", g(AxPreLinear), g(PeerPre), 0.7);
        self.ratio_target("8. pre-zeroed fault + LINEAR_MAP ≥ 1.0× peer spin mutex", g(AxPreLinear), g(PeerPreMutex), 1.0);
        self.ratio_target("8. lazy map + fault, pre-zeroed ≥ 1.0× mutex peer", t(AxPre), t(PeerPreMutex), 1.0);
        self.ratio_target("8. lazy map + fault, pre-zeroed + LINEAR_MAP ≥ 1.0× mutex peer", t(AxPreLinear), t(PeerPreMutex), 1.0);
    }
}
