//! libaxalloc vs axaddrspace 0.3.0: the workloads of issue 4, on one frame pool,
//! the kernel-grade rows of issue 7 (7a-7c, libaxalloc only), and dirty
//! logging vs Linux KVM's own (issue 12, `dirty.rs` + `kvm_dirty.c`).
//!
//! Usage: axalloc-bench [--short] [--reps N] [--only LIST] [--side ax|peer|both]
//!   --short       CI mode: small sizes, correctness checks, no timing asserted
//!                 (also AXALLOC_BENCH_SHORT=1)
//!   --reps N      measured rounds per row (default 6, short 2), after one
//!                 discarded warm-up round; libaxalloc and the peer alternate
//!                 in ABBA order; median (min–max) is reported
//!
//! Method: the main thread is pinned to the first allowed CPU (second
//! thread of rows 5 and 7 to the next one); /proc/cpuinfo model is printed.
//!   --only LIST   comma-separated subset of: populate,lazy,translate,unmap,threads,floor,kernel,fault,dirty
//!   --side S      run only one implementation (for perf / callgrind)
//!
//! Everything is reported in ns per 4 KiB page (translate: ns per lookup);
//! BENCHMARKS.md quotes the ratios.

mod dirty;
mod fault;
mod ffi;
mod pool;

use std::hint::black_box;
use std::time::Instant;

use axaddrspace::{AddrSpace, GuestPhysAddr, MappingFlags};
use page_table_multiarch::PagingHandler;

use ffi::{Hooks, Space};
use pool::{Mapping, MtPool, Pool, FRAME};

/// Guest-physical start of every region (1 GiB aligned).
const GPA: u64 = 0x4000_0000;
/// The address space window (both implementations).
const WIN_BASE: u64 = 0;
const WIN_SIZE: u64 = 1 << 36;
/// Extra frames beyond the largest region: tables, bookkeeping.
const SLACK_FRAMES: usize = 4096;

// ---------------------------------------------------------------------------
// perf control: with AXALLOC_BENCH_PERF_CTL=ctl-fifo,ack-fifo (see
// profile.sh) only the timed sections are sampled by `perf record -D -1
// --control fifo:ctl-fifo,ack-fifo`.
// ---------------------------------------------------------------------------

static PERF_CTL: std::sync::OnceLock<Option<std::sync::Mutex<(std::fs::File, std::fs::File)>>> =
    std::sync::OnceLock::new();

/// Starts (`true`) or stops sampling, if running under profile.sh.
fn perf(on: bool) {
    use std::io::{Read, Write};
    let ctl = PERF_CTL.get_or_init(|| {
        let v = std::env::var("AXALLOC_BENCH_PERF_CTL").ok()?;
        let (c, a) = v.split_once(',')?;
        let c = std::fs::OpenOptions::new().write(true).open(c).ok()?;
        let a = std::fs::File::open(a).ok()?;
        Some(std::sync::Mutex::new((c, a)))
    });
    if let Some(m) = ctl {
        let mut g = m.lock().unwrap();
        let _ = g.0.write_all(if on { b"enable\n" } else { b"disable\n" });
        let mut buf = [0u8; 5];
        let _ = g.1.read(&mut buf);
    }
}

// ---------------------------------------------------------------------------
// Options, results, checks
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Side {
    Both,
    Ax,
    Peer,
}

struct Opts {
    short: bool,
    reps: usize,
    only: Option<Vec<String>>,
    side: Side,
    variant: Option<Zero>,
}

impl Opts {
    fn parse() -> Opts {
        let mut o = Opts {
            short: std::env::var("AXALLOC_BENCH_SHORT").is_ok_and(|v| !v.is_empty() && v != "0"),
            reps: 0,
            only: None,
            side: Side::Both,
            variant: None,
        };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            match a.as_str() {
                "--short" => o.short = true,
                "--reps" => o.reps = args.next().and_then(|v| v.parse().ok()).expect("--reps N"),
                "--only" => {
                    o.only = Some(args.next().expect("--only LIST").split(',').map(str::to_owned).collect())
                }
                "--side" => {
                    o.side = match args.next().as_deref() {
                        Some("ax") => Side::Ax,
                        Some("peer") => Side::Peer,
                        Some("both") => Side::Both,
                        _ => panic!("--side ax|peer|both"),
                    }
                }
                "--variant" => {
                    o.variant = match args.next().as_deref() {
                        Some("zeroing") => Some(Zero::Zeroing),
                        Some("prezeroed") => Some(Zero::Prezeroed),
                        _ => panic!("--variant zeroing|prezeroed"),
                    }
                }
                "-h" | "--help" => {
                    println!("usage: axalloc-bench [--short] [--reps N] [--only populate,lazy,translate,unmap,threads,floor,kernel,fault,dirty] [--side ax|peer|both] [--variant zeroing|prezeroed]");
                    std::process::exit(0);
                }
                _ => panic!("unknown argument {a} (try --help)"),
            }
        }
        if o.reps == 0 {
            o.reps = if o.short { 2 } else { 6 };
        }
        o
    }
    fn wants(&self, w: &str) -> bool {
        self.only.as_ref().is_none_or(|l| l.iter().any(|x| x == w))
    }
    fn variants(&self) -> Vec<Zero> {
        [Zero::Zeroing, Zero::Prezeroed].into_iter().filter(|z| self.variant.is_none_or(|v| v == *z)).collect()
    }
    fn ax(&self) -> bool {
        self.side != Side::Peer
    }
    fn peer(&self) -> bool {
        self.side != Side::Ax
    }
}

struct Sizes {
    populate_pages: usize,
    lazy_pages: usize,
    mt_pages: usize,
    lookups: usize,
}

#[derive(Default)]
struct Checks {
    passed: usize,
    failed: usize,
}

impl Checks {
    fn check(&mut self, cond: bool, what: impl std::fmt::Display) {
        if cond {
            self.passed += 1;
        } else {
            self.failed += 1;
            eprintln!("CHECK FAILED: {what}");
        }
    }
}

/// One line of the results table.
struct Row {
    name: String,
    ax: Option<Stat>,
    peer: Option<Stat>,
    note: String,
}

/// Median, min and max of the measured rounds of one row.
#[derive(Clone, Copy, Debug)]
struct Stat {
    med: f64,
    min: f64,
    max: f64,
}

/// Ratio of medians.
impl std::ops::Div for Stat {
    type Output = f64;
    fn div(self, o: Stat) -> f64 {
        self.med / o.med
    }
}

/// Round 0 of every measurement loop is a warm-up: dropped here (when there
/// is more than one round); the rest gives median, min and max.
fn median(v: &mut Vec<f64>) -> Option<Stat> {
    if v.len() > 1 {
        v.remove(0);
    }
    median_all(v)
}

/// Median, min and max of every value (no warm-up dropped).
fn median_all(v: &mut [f64]) -> Option<Stat> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    let med = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
    Some(Stat { med, min: v[0], max: v[n - 1] })
}

/// ABBA order: libaxalloc first in even rounds, the peer first in odd ones
/// (round 0, the warm-up, included), so neither side always runs cold.
fn turns(rep: usize) -> [bool; 2] {
    if rep % 2 == 0 {
        [true, false]
    } else {
        [false, true]
    }
}

fn per(ns: std::time::Duration, n: usize) -> f64 {
    ns.as_nanos() as f64 / n as f64
}

/// The 4-level minimum of table frames (root included) for `pages` 4 KiB
/// pages starting at a 1 GiB-aligned address.
fn min_tables(pages: usize) -> usize {
    1 + pages.div_ceil(512) + pages.div_ceil(512 * 512) + pages.div_ceil(512 * 512 * 512)
}

#[derive(Clone, Copy, PartialEq)]
#[repr(usize)]
enum Zero {
    /// The allocator hands out dirty frames: the implementation (libaxalloc)
    /// or the peer's HAL (memset in alloc_frame) zeroes them.
    Zeroing = 0,
    /// The pool was zeroed beforehand: `AXALLOC_CFG_FRAMES_ZEROED`, peer HAL
    /// without memset (the peer still zeroes its table frames itself).
    Prezeroed = 1,
}

impl Zero {
    fn name(self) -> &'static str {
        match self {
            Zero::Zeroing => "zeroing",
            Zero::Prezeroed => "pre-zeroed",
        }
    }
    fn ax_flags(self) -> u32 {
        match self {
            Zero::Zeroing => 0,
            Zero::Prezeroed => ffi::CFG_FRAMES_ZEROED,
        }
    }
}

struct Bench {
    o: Opts,
    s: Sizes,
    map: Mapping,
    checks: Checks,
    rows: Vec<Row>,
    /// (name, value, target text, met) for the targets section.
    targets: Vec<(String, String, String, Option<bool>)>,
    info: Vec<String>,
}

// ---------------------------------------------------------------------------
// Plain 4-level EPT walk (the translate baseline, and the independent check
// of both implementations' tables)
// ---------------------------------------------------------------------------

const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

#[inline(always)]
fn walk(map: &Mapping, root: u64, gpa: u64) -> Option<(u64, u64)> {
    let mut table = root;
    let mut level = 3u32;
    loop {
        let idx = ((gpa >> (12 + 9 * level)) & 511) as usize;
        // SAFETY: `table` is a table frame of the pool (both implementations
        // only store pool frames in table entries).
        let e = unsafe { core::ptr::read_volatile(map.virt(table).cast::<u64>().add(idx)) };
        if e & 7 == 0 {
            return None;
        }
        let size = 1u64 << (12 + 9 * level);
        if level == 0 || e & 0x80 != 0 {
            return Some(((e & ADDR_MASK & !(size - 1)) | (gpa & (size - 1)), size));
        }
        table = e & ADDR_MASK;
        level -= 1;
    }
}

// ---------------------------------------------------------------------------
// Helpers per implementation
// ---------------------------------------------------------------------------

fn ax_hooks(p: &Pool) -> Hooks {
    Hooks {
        struct_size: core::mem::size_of::<Hooks>() as u32,
        reserved: 0,
        ctx: p as *const Pool as *mut _,
        alloc_frame: Some(pool::hook_alloc),
        free_frame: Some(pool::hook_free),
        phys_to_virt: Some(pool::hook_virt),
        flush_tlb: Some(pool::hook_flush),
        alloc_contig: None,
        free_contig: None,
        relax: None,
    }
}

fn ax_space(p: &Pool, z: Zero) -> Space {
    Space::create(&ax_hooks(p), z.ax_flags(), WIN_BASE, WIN_SIZE)
}

fn peer_space<H: PagingHandler>() -> AddrSpace<H> {
    AddrSpace::new_empty(4, GuestPhysAddr::from(WIN_BASE as usize), WIN_SIZE as usize)
        .expect("peer AddrSpace::new_empty")
}

const PEER_RWX: MappingFlags = MappingFlags::READ.union(MappingFlags::WRITE).union(MappingFlags::EXECUTE);
const AX_RWX: u32 = ffi::READ | ffi::WRITE | ffi::EXEC;

fn gpa_of(page: usize) -> u64 {
    GPA + (page * FRAME) as u64
}

/// Deterministic xorshift64*.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn permutation(n: usize, seed: u64) -> Vec<u32> {
    let mut v: Vec<u32> = (0..n as u32).collect();
    let mut r = Rng(seed);
    for i in (1..n).rev() {
        v.swap(i, r.below(i + 1));
    }
    v
}

impl Bench {
    /// Pool ready for a run: every frame free; for `Prezeroed` every frame
    /// zero; in short mode (checks) dirty frames for `Zeroing` so that a
    /// missing zeroing shows.
    fn prepare(&self, p: &Pool, z: Zero) {
        p.reset();
        match z {
            Zero::Prezeroed => p.fill(0),
            Zero::Zeroing if self.o.short => p.fill(0xa5),
            Zero::Zeroing => {}
        }
    }

    /// Checks, through the plain walk, that `[GPA, +pages)` is fully mapped
    /// by distinct pool frames of 4 KiB (and zero-filled, sampled in full mode),
    /// and that `translate` agrees with the walk.
    fn verify_mapped(
        &mut self,
        label: &str,
        root: u64,
        pages: usize,
        translate: &dyn Fn(u64) -> Option<u64>,
    ) {
        let map = &self.map;
        let mut seen = vec![false; map.frames];
        let stride = if self.o.short { 1 } else { 61 };
        let (mut bad_walk, mut bad_dup, mut bad_zero, mut bad_tr) = (0usize, 0usize, 0usize, 0usize);
        for i in 0..pages {
            let off = ((i * 8) & 0xff8) as u64;
            let g = gpa_of(i) + off;
            let Some((h, size)) = walk(map, root, g) else {
                bad_walk += 1;
                continue;
            };
            let frame = h & !0xfff;
            if size != 4096 || h & 0xfff != off || !map.contains(frame) {
                bad_walk += 1;
                continue;
            }
            let idx = ((frame - pool::PHYS_BASE) as usize) / FRAME;
            if std::mem::replace(&mut seen[idx], true) {
                bad_dup += 1;
            }
            if i % stride == 0 {
                // SAFETY: a pool frame.
                let bytes = unsafe { std::slice::from_raw_parts(map.virt(frame), FRAME) };
                if bytes.iter().any(|&b| b != 0) {
                    bad_zero += 1;
                }
                if translate(g) != Some(h) {
                    bad_tr += 1;
                }
            }
        }
        self.checks.check(bad_walk == 0, format!("{label}: {bad_walk} pages not mapped as 4 KiB pool frames"));
        self.checks.check(bad_dup == 0, format!("{label}: {bad_dup} frames mapped twice"));
        self.checks.check(bad_zero == 0, format!("{label}: {bad_zero} guest frames not zeroed"));
        self.checks.check(bad_tr == 0, format!("{label}: translate disagrees with the walk on {bad_tr} pages"));
    }

    fn check_pool_empty(&mut self, p: &Pool, label: &str) {
        self.checks.check(
            p.in_use() == 0 && p.errors.get() == 0,
            format!("{label}: {} frames not returned, {} bad frees", p.in_use(), p.errors.get()),
        );
    }

    fn row(&mut self, name: impl Into<String>, ax: Option<Stat>, peer: Option<Stat>, note: impl Into<String>) {
        self.rows.push(Row { name: name.into(), ax, peer, note: note.into() });
    }

    fn target(&mut self, name: &str, value: String, target: &str, met: Option<bool>) {
        self.targets.push((name.into(), value, target.into(), met));
    }

    // -----------------------------------------------------------------------
    // 1. eager populate
    // -----------------------------------------------------------------------

    fn populate(&mut self, p: &Pool) -> [(Option<Stat>, Option<Stat>); 2] {
        let pages = self.s.populate_pages;
        let bytes = (pages * FRAME) as u64;
        let mut out = [(None, None); 2];
        for z in self.o.variants() {
            let vi = z as usize;
            let (mut ax, mut peer) = (vec![], vec![]);
            let (mut ax_tables, mut peer_tables) = (0usize, 0usize);
            for rep in 0..self.o.reps + 1 {
                for ax_turn in turns(rep) {
                    if ax_turn && self.o.ax() {
                    self.prepare(p, z);
                    let s = ax_space(p, z);
                    perf(true);
                    let t = Instant::now();
                    // SAFETY: live handle.
                    let rc = unsafe { ffi::axalloc_map_alloc(s.0, GPA, bytes, AX_RWX, true) };
                    let dt = t.elapsed();
                    perf(false);
                    ffi::ok(rc, "populate");
                    ax.push(per(dt, pages));
                    let st = s.stats();
                    ax_tables = st.table_frames as usize;
                    if rep == 0 {
                        self.checks.check(
                            st.guest_frames == pages as u64,
                            format!("ax populate {}: guest_frames {} != {pages}", z.name(), st.guest_frames),
                        );
                        let root = s.root();
                        self.verify_mapped(&format!("ax populate {}", z.name()), root, pages, &|g| s.translate(g));
                    }
                    drop(s);
                    self.check_pool_empty(p, "ax populate + destroy");
                }
                if !ax_turn && self.o.peer() {
                    self.prepare(p, z);
                    let dt = match z {
                        Zero::Zeroing => self.peer_populate::<pool::PeerHalZeroing>(p, pages, rep == 0, &mut peer_tables),
                        Zero::Prezeroed => self.peer_populate::<pool::PeerHalPrezeroed>(p, pages, rep == 0, &mut peer_tables),
                    };
                    peer.push(dt);
                    self.check_pool_empty(p, "peer populate + drop");
                }
                }
            }
            let (a, b) = (median(&mut ax), median(&mut peer));
            out[vi] = (a, b);
            self.row(format!("1. populate {} MiB, {}", bytes >> 20, z.name()), a, b, "");
            if vi == 0 && self.o.ax() {
                let min = min_tables(pages);
                self.info.push(format!(
                    "table frames after populating {} MiB: libaxalloc {ax_tables}, peer {}, 4-level minimum {min}",
                    bytes >> 20,
                    if self.o.peer() { peer_tables.to_string() } else { "-".into() }
                ));
                self.checks.check(ax_tables == min, format!("ax table frames after populate {ax_tables} != minimum {min}"));
                self.target(
                    "table frames after populate = 4-level minimum",
                    format!("{ax_tables} (min {min}; peer {peer_tables})"),
                    &format!("= {min}"),
                    Some(ax_tables == min),
                );
            }
        }
        out
    }

    fn peer_populate<H: PagingHandler>(&mut self, p: &Pool, pages: usize, verify: bool, tables: &mut usize) -> f64 {
        let mut a = peer_space::<H>();
        perf(true);
        let t = Instant::now();
        a.map_alloc(GuestPhysAddr::from(GPA as usize), pages * FRAME, PEER_RWX, true)
            .expect("peer populate");
        let dt = t.elapsed();
        perf(false);
        *tables = p.in_use() - pages;
        if verify {
            let root = a.page_table_root().as_usize() as u64;
            let name = std::any::type_name::<H>().rsplit("::").next().unwrap_or("");
            self.verify_mapped(&format!("peer populate ({name})"), root, pages, &|g| {
                a.translate(GuestPhysAddr::from(g as usize)).map(|h| h.as_usize() as u64)
            });
        }
        drop(a);
        per(dt, pages)
    }

    // -----------------------------------------------------------------------
    // 2. lazy map + first-touch faults
    // -----------------------------------------------------------------------

    fn lazy(&mut self, p: &Pool) {
        let pages = self.s.lazy_pages;
        let bytes = (pages * FRAME) as u64;
        let seq: Vec<u32> = (0..pages as u32).collect();
        let rand = permutation(pages, 0x9e37_79b9_7f4a_7c15);
        for z in self.o.variants() {
            for (oname, order) in [("address order", &seq), ("random order", &rand)] {
                let (mut ax_map, mut ax_fault, mut ax_tot) = (vec![], vec![], vec![]);
                let (mut pe_map, mut pe_fault, mut pe_tot) = (vec![], vec![], vec![]);
                for rep in 0..self.o.reps + 1 {
                    for ax_turn in turns(rep) {
                        if ax_turn && self.o.ax() {
                        self.prepare(p, z);
                        let s = ax_space(p, z);
                        perf(true);
                        let t0 = Instant::now();
                        // SAFETY: live handle.
                        let rc = unsafe { ffi::axalloc_map_alloc(s.0, GPA, bytes, AX_RWX, false) };
                        let t1 = Instant::now();
                        let mut bad = 0usize;
                        for &i in order.iter() {
                            let g = gpa_of(i as usize) + ((i as u64 * 8) & 0xff8);
                            // SAFETY: live handle.
                            bad += (unsafe { ffi::axalloc_handle_fault(s.0, g, ffi::WRITE) } != ffi::OK) as usize;
                        }
                        let t2 = Instant::now();
                        perf(false);
                        ffi::ok(rc, "lazy map");
                        ax_map.push(per(t1 - t0, pages));
                        ax_fault.push(per(t2 - t1, pages));
                        ax_tot.push(per(t2 - t0, pages));
                        self.checks.check(bad == 0, format!("ax lazy: {bad} faults failed"));
                        if rep == 0 {
                            let st = s.stats();
                            self.checks.check(
                                st.faults == pages as u64 && st.guest_frames == pages as u64,
                                format!("ax lazy: faults {} guest_frames {} != {pages}", st.faults, st.guest_frames),
                            );
                            // A second fault on a present page: OK, nothing allocated.
                            let before = p.in_use();
                            // SAFETY: live handle.
                            let rc = unsafe { ffi::axalloc_handle_fault(s.0, gpa_of(0), ffi::READ) };
                            self.checks.check(rc == ffi::OK && p.in_use() == before, "ax: spurious fault allocated or failed");
                            let root = s.root();
                            self.verify_mapped(&format!("ax lazy {} {oname}", z.name()), root, pages, &|g| s.translate(g));
                        }
                        drop(s);
                        self.check_pool_empty(p, "ax lazy + destroy");
                    }
                    if !ax_turn && self.o.peer() {
                        self.prepare(p, z);
                        let (m, f) = match z {
                            Zero::Zeroing => self.peer_lazy::<pool::PeerHalZeroing>(pages, order, rep == 0),
                            Zero::Prezeroed => self.peer_lazy::<pool::PeerHalPrezeroed>(pages, order, rep == 0),
                        };
                        pe_map.push(m);
                        pe_fault.push(f);
                        pe_tot.push(m + f);
                        self.check_pool_empty(p, "peer lazy + drop");
                    }
                    }
                }
                let mb = bytes >> 20;
                let (a, b) = (median(&mut ax_map), median(&mut pe_map));
                self.row(format!("2. lazy map {mb} MiB, {} ({oname})", z.name()), a, b, "per page of the region");
                let (a, b) = (median(&mut ax_fault), median(&mut pe_fault));
                self.row(format!("2. first-touch fault, {}, {oname}", z.name()), a, b, "");
                if z == Zero::Zeroing {
                    self.ratio_target(&format!("fault with zeroing ({oname}) ≥ 1.8× faster than peer"), a, b, 1.8);
                }
                let (a, b) = (median(&mut ax_tot), median(&mut pe_tot));
                self.row(format!("2. lazy map + fault every page, {}, {oname}", z.name()), a, b, "total / pages");
                if z == Zero::Prezeroed {
                    self.ratio_target(&format!("lazy map + first touch, pre-zeroed ({oname}) ≥ 1.5× faster"), a, b, 1.5);
                }
            }
        }
    }

    fn peer_lazy<H: PagingHandler>(&mut self, pages: usize, order: &[u32], verify: bool) -> (f64, f64) {
        let mut a = peer_space::<H>();
        perf(true);
        let t0 = Instant::now();
        a.map_alloc(GuestPhysAddr::from(GPA as usize), pages * FRAME, PEER_RWX, false)
            .expect("peer lazy map");
        let t1 = Instant::now();
        let mut bad = 0usize;
        for &i in order {
            let g = gpa_of(i as usize) + ((i as u64 * 8) & 0xff8);
            bad += (!a.handle_page_fault(GuestPhysAddr::from(g as usize), MappingFlags::WRITE)) as usize;
        }
        let t2 = Instant::now();
        perf(false);
        self.checks.check(bad == 0, format!("peer lazy: {bad} faults failed"));
        if verify {
            let root = a.page_table_root().as_usize() as u64;
            self.verify_mapped("peer lazy", root, pages, &|g| {
                a.translate(GuestPhysAddr::from(g as usize)).map(|h| h.as_usize() as u64)
            });
        }
        drop(a);
        (per(t1 - t0, pages), per(t2 - t1, pages))
    }

    fn ratio_target(&mut self, name: &str, ax: Option<Stat>, peer: Option<Stat>, speedup: f64) {
        match (ax, peer) {
            (Some(a), Some(b)) => {
                let s = b / a;
                self.target(name, format!("{s:.2}× (ax/peer {:.2})", a / b), &format!("≥ {speedup}×"), Some(s >= speedup));
            }
            _ => self.target(name, "not measured (one side skipped)".into(), &format!("≥ {speedup}×"), None),
        }
    }

    // -----------------------------------------------------------------------
    // 3. translate
    // -----------------------------------------------------------------------

    fn translate(&mut self, p: &Pool) {
        let pages = self.s.populate_pages;
        let bytes = pages * FRAME;
        let n = self.s.lookups;
        let mut r = Rng(0x1234_5678_9abc_def1);
        let gpas: Vec<u64> = (0..n).map(|_| GPA + (r.below(bytes) as u64 & !7)).collect();
        // Both populated at once from the one pool (it holds two), so that
        // every round measures all four loops back to back.
        self.prepare(p, Zero::Zeroing);
        let ax = self.o.ax().then(|| {
            let s = ax_space(p, Zero::Zeroing);
            // SAFETY: live handle.
            ffi::ok(unsafe { ffi::axalloc_map_alloc(s.0, GPA, bytes as u64, AX_RWX, true) }, "populate");
            s
        });
        let peer = self.o.peer().then(|| {
            let mut a = peer_space::<pool::PeerHalZeroing>();
            a.map_alloc(GuestPhysAddr::from(GPA as usize), bytes, PEER_RWX, true).expect("peer populate");
            a
        });
        let walk_fn = black_box(walk_c as extern "C" fn(*const Mapping, u64, u64, *mut u64) -> i32);
        let map: *const Mapping = &self.map;
        let mut t_ax = vec![];
        let mut t_peer = vec![];
        let mut t_walk_inline = [vec![], vec![]];
        let mut t_walk_call = [vec![], vec![]];
        let mut sums = [[0u64; 3]; 2];
        const BATCH: usize = 64;
        let mut t_many = vec![];
        let mut many_sum = 0u64;
        perf(true);
        for rep in 0..self.o.reps + 1 {
            for ax_turn in turns(rep) {
                if let (true, Some(s)) = (ax_turn, &ax) {
                let t = Instant::now();
                let mut acc = 0u64;
                for &g in &gpas {
                    acc = acc.wrapping_add(s.translate(black_box(g)).unwrap_or(u64::MAX));
                }
                t_ax.push(per(t.elapsed(), n));
                sums[0][0] = black_box(acc);
                // The same lookups through axalloc_translate_many, in batches.
                let t = Instant::now();
                let mut acc = 0u64;
                let mut hpas = [0u64; BATCH];
                for chunk in gpas.chunks(BATCH) {
                    // SAFETY: live handle; `chunk.len()` readable / writable elements.
                    let rc = unsafe {
                        ffi::axalloc_translate_many(s.0, black_box(chunk.as_ptr()), hpas.as_mut_ptr(), core::ptr::null_mut(), chunk.len())
                    };
                    debug_assert_eq!(rc, ffi::OK);
                    for &h in &hpas[..chunk.len()] {
                        acc = acc.wrapping_add(h);
                    }
                }
                t_many.push(per(t.elapsed(), n));
                many_sum = black_box(acc);
            }
            if let (false, Some(a)) = (ax_turn, &peer) {
                let t = Instant::now();
                let mut acc = 0u64;
                for &g in &gpas {
                    acc = acc.wrapping_add(
                        a.translate(GuestPhysAddr::from(black_box(g) as usize)).map_or(u64::MAX, |h| h.as_usize() as u64),
                    );
                }
                t_peer.push(per(t.elapsed(), n));
                sums[1][0] = black_box(acc);
            }
            }
            let roots = [
                ax.as_ref().map(|s| s.root()),
                peer.as_ref().map(|a| a.page_table_root().as_usize() as u64),
            ];
            for (k, root) in roots.into_iter().enumerate() {
                let Some(root) = root else { continue };
                let t = Instant::now();
                let mut acc = 0u64;
                for &g in &gpas {
                    acc = acc.wrapping_add(walk(&self.map, root, black_box(g)).map_or(u64::MAX, |x| x.0));
                }
                t_walk_inline[k].push(per(t.elapsed(), n));
                sums[k][1] = black_box(acc);
                let t = Instant::now();
                let mut acc = 0u64;
                for &g in &gpas {
                    let mut h = 0u64;
                    acc = acc.wrapping_add(if walk_fn(map, root, g, &mut h) == 0 { h } else { u64::MAX });
                }
                t_walk_call[k].push(per(t.elapsed(), n));
                sums[k][2] = black_box(acc);
            }
        }
        perf(false);
        if ax.is_some() {
            self.checks.check(sums[0][0] == sums[0][1] && sums[0][1] == sums[0][2], "ax translate disagrees with the plain walk");
            self.checks.check(many_sum == sums[0][1], "ax translate_many disagrees with the plain walk");
        }
        if peer.is_some() {
            self.checks.check(sums[1][0] == sums[1][1] && sums[1][1] == sums[1][2], "peer translate disagrees with the plain walk");
        }
        drop(ax);
        drop(peer);
        self.check_pool_empty(p, "translate + destroy");
        let (a, b) = (median(&mut t_ax), median(&mut t_peer));
        self.row(format!("3. translate, random in {} MiB (ns/lookup)", bytes >> 20), a, b, "");
        let [wa, wb] = t_walk_inline.each_mut().map(median);
        self.row("3. plain 4-level walk, inlined (ns/lookup)", wa, wb, "same addresses, each side's own table");
        let [ca, cb] = t_walk_call.each_mut().map(median);
        self.row("3. plain 4-level walk behind a C call (ns/lookup)", ca, cb, "same, as a non-inlined extern \"C\" fn");
        let m = median(&mut t_many);
        self.row(format!("3. translate_many, batches of {BATCH} (ns/lookup)"), m, None, "libaxalloc only; same addresses");
        match (a, wa, ca) {
            (Some(a), Some(w), Some(c)) => self.target(
                "8. translate ≤ 2× a plain 4-level walk (behind a C call)",
                format!("{:.2}× the called walk, {:.2}× the inlined walk", a / c, a / w),
                "≤ 2×",
                Some(a / c <= 2.0),
            ),
            _ => self.target("8. translate ≤ 2× a plain walk", "not measured".into(), "≤ 2×", None),
        }
        match (m, wa, ca) {
            (Some(m), Some(w), Some(c)) => self.target(
                &format!("8. translate_many ({BATCH}/batch) ≤ 1.3× the plain walk (inlined)"),
                format!("{:.2}× the inlined walk, {:.2}× the called walk", m / w, m / c),
                "≤ 1.3×",
                Some(m / w <= 1.3),
            ),
            _ => self.target("8. translate_many ≤ 1.3× a plain walk", "not measured".into(), "≤ 1.3×", None),
        }
        match (a, wa, ca) {
            (Some(a), Some(w), Some(c)) => self.target(
                "translate within 1.2× of a plain 4-level walk",
                format!("{:.2}× the inlined walk, {:.2}× the called walk", a / w, a / c),
                "≤ 1.2×",
                Some(a / c <= 1.2),
            ),
            _ => self.target("translate within 1.2× of a plain walk", "not measured".into(), "≤ 1.2×", None),
        }
    }

    // -----------------------------------------------------------------------
    // 4. unmap
    // -----------------------------------------------------------------------

    fn unmap(&mut self, p: &Pool) {
        let pages = self.s.populate_pages;
        let bytes = pages * FRAME;
        let (mut ax, mut peer) = (vec![], vec![]);
        let (mut ax_left, mut peer_left) = (None, None);
        for rep in 0..self.o.reps + 1 {
            for ax_turn in turns(rep) {
                if ax_turn && self.o.ax() {
                self.prepare(p, Zero::Zeroing);
                let s = ax_space(p, Zero::Zeroing);
                // SAFETY: live handle.
                ffi::ok(unsafe { ffi::axalloc_map_alloc(s.0, GPA, bytes as u64, AX_RWX, true) }, "populate");
                let before = p.in_use();
                perf(true);
                let t = Instant::now();
                // SAFETY: live handle.
                let rc = unsafe { ffi::axalloc_unmap(s.0, GPA, bytes as u64) };
                let dt = t.elapsed();
                perf(false);
                ffi::ok(rc, "unmap");
                ax.push(per(dt, pages));
                let st = s.stats();
                ax_left = Some(st.table_frames);
                if rep == 0 {
                    self.checks.check(
                        st.guest_frames == 0 && st.regions == 0 && before - p.in_use() >= pages,
                        format!("ax unmap: guest_frames {} regions {} freed {}", st.guest_frames, st.regions, before - p.in_use()),
                    );
                    self.checks.check(p.flushes.get() == 1, format!("ax unmap: {} flush_tlb calls, want 1", p.flushes.get()));
                    // SAFETY: live handle.
                    let rc = unsafe { ffi::axalloc_translate(s.0, GPA, std::ptr::null_mut(), std::ptr::null_mut()) };
                    self.checks.check(rc == ffi::ERR_NOT_MAPPED, "ax: translate after unmap is not NOT_MAPPED");
                    self.info.push(format!(
                        "after unmapping everything: libaxalloc holds {} table frames + {} bookkeeping frames",
                        st.table_frames,
                        p.in_use() - st.table_frames as usize
                    ));
                }
                drop(s);
                self.check_pool_empty(p, "ax unmap + destroy");
            }
            if !ax_turn && self.o.peer() {
                self.prepare(p, Zero::Zeroing);
                let mut a = peer_space::<pool::PeerHalZeroing>();
                a.map_alloc(GuestPhysAddr::from(GPA as usize), bytes, PEER_RWX, true).expect("peer populate");
                perf(true);
                let t = Instant::now();
                a.unmap(GuestPhysAddr::from(GPA as usize), bytes).expect("peer unmap");
                let dt = t.elapsed();
                perf(false);
                peer.push(per(dt, pages));
                peer_left = Some(p.in_use() as u64);
                drop(a);
                self.check_pool_empty(p, "peer unmap + drop");
            }
            }
        }
        let (a, b) = (median(&mut ax), median(&mut peer));
        self.row(format!("4. unmap {} MiB populated (frames freed)", bytes >> 20), a, b, "");
        self.ratio_target("unmap ≥ 2× faster than peer", a, b, 2.0);
        if let Some(left) = ax_left {
            self.checks.check(left == 1, format!("ax: {left} table frames after full unmap, want 1 (root)"));
            self.target(
                "table frames after full unmap = root only",
                format!("{left} (peer keeps {})", peer_left.map_or("-".into(), |x| x.to_string())),
                "= 1",
                Some(left == 1),
            );
        }
    }

    // -----------------------------------------------------------------------
    // 5. 1 vs 2 threads faulting disjoint halves (libaxalloc only)
    // -----------------------------------------------------------------------

    fn threads(&mut self, mt: &MtPool) {
        if !self.o.ax() {
            return;
        }
        let pages = self.s.mt_pages;
        let bytes = (pages * FRAME) as u64;
        for z in self.o.variants() {
            let mut res = [vec![], vec![]];
            for rep in 0..self.o.reps + 1 {
                for nt in [1usize, 2] {
                    mt.reset();
                    if z == Zero::Prezeroed {
                        self.map.fill(0, self.map.frames, 0);
                    } else if self.o.short {
                        self.map.fill(0, self.map.frames, 0xa5);
                    }
                    pool::set_thread_sub(0);
                    let hooks = Hooks {
                        struct_size: core::mem::size_of::<Hooks>() as u32,
                        reserved: 0,
                        ctx: mt as *const MtPool as *mut _,
                        alloc_frame: Some(pool::mt_hook_alloc),
                        free_frame: Some(pool::mt_hook_free),
                        phys_to_virt: Some(pool::mt_hook_virt),
                        flush_tlb: Some(pool::mt_hook_flush),
                        alloc_contig: None,
                        free_contig: None,
                        relax: None,
                    };
                    let s = Space::create(&hooks, z.ax_flags(), WIN_BASE, WIN_SIZE);
                    // SAFETY: live handle.
                    ffi::ok(unsafe { ffi::axalloc_map_alloc(s.0, GPA, bytes, AX_RWX, false) }, "lazy map");
                    let barrier = std::sync::Barrier::new(nt);
                    perf(true);
                    let spans: Vec<(Instant, Instant, usize)> = std::thread::scope(|sc| {
                        let hs: Vec<_> = (0..nt)
                            .map(|t| {
                                let (s, barrier) = (&s, &barrier);
                                sc.spawn(move || {
                                    pin(t);
                                    pool::set_thread_sub(t);
                                    let (lo, hi) = (t * pages / nt, (t + 1) * pages / nt);
                                    barrier.wait();
                                    let start = Instant::now();
                                    let mut bad = 0;
                                    for i in lo..hi {
                                        // SAFETY: live handle; faults are concurrent-safe.
                                        bad += (unsafe { ffi::axalloc_handle_fault(s.0, gpa_of(i), ffi::WRITE) } != ffi::OK)
                                            as usize;
                                    }
                                    (start, Instant::now(), bad)
                                })
                            })
                            .collect();
                        hs.into_iter().map(|h| h.join().unwrap()).collect()
                    });
                    perf(false);
                    let start = spans.iter().map(|x| x.0).min().unwrap();
                    let end = spans.iter().map(|x| x.1).max().unwrap();
                    let bad: usize = spans.iter().map(|x| x.2).sum();
                    res[nt - 1].push(per(end - start, pages));
                    self.checks.check(bad == 0, format!("threads: {bad} faults failed"));
                    if rep == 0 {
                        let st = s.stats();
                        self.checks.check(
                            st.faults == pages as u64,
                            format!("threads({nt}): faults {} != {pages}", st.faults),
                        );
                        let root = s.root();
                        // verify_mapped needs &mut self; the pool is the MtPool here.
                        self.verify_mapped(&format!("ax {nt} threads {}", z.name()), root, pages, &|g| s.translate(g));
                    }
                    drop(s);
                    self.checks.check(
                        mt.in_use() == 0 && mt.errors() == 0,
                        format!("threads({nt}): {} frames not returned, {} bad frees", mt.in_use(), mt.errors()),
                    );
                }
            }
            let one = median(&mut res[0]);
            let two = median(&mut res[1]);
            self.row(format!("5. fault {} MiB lazy, {}, 1 thread", bytes >> 20, z.name()), one, None, "peer is &mut-only: cannot fault concurrently");
            self.row(format!("5. fault {} MiB lazy, {}, 2 threads (wall)", bytes >> 20, z.name()), two, None, "disjoint halves, one sub-pool per thread");
            if let (Some(a), Some(b)) = (one, two) {
                self.target(
                    &format!("2 threads ≥ 1.8× one thread ({})", z.name()),
                    format!("{:.2}×", a / b),
                    "≥ 1.8×",
                    Some(a / b >= 1.8),
                );
            }
        }
    }

    // -----------------------------------------------------------------------
    // 6. the floor: memset of the same bytes
    // -----------------------------------------------------------------------

    fn floor(&mut self) -> (Option<Stat>, Option<Stat>) {
        let pages = self.s.populate_pages;
        let len = pages * FRAME;
        let base = self.map.ptr;
        let memset: unsafe extern "C" fn(*mut libc::c_void, i32, usize) -> *mut libc::c_void = libc::memset;
        let (mut bulk, mut each, mut nt) = (vec![], vec![], vec![]);
        let (mut stosb, mut nt32) = (vec![], vec![]);
        let avx2 = std::arch::is_x86_feature_detected!("avx2");
        for _rep in 0..self.o.reps + 1 {
            let t = Instant::now();
            // SAFETY: inside the mapping.
            unsafe { black_box(memset)(base.cast(), 0, len) };
            bulk.push(per(t.elapsed(), pages));
            let t = Instant::now();
            for i in 0..pages {
                // SAFETY: inside the mapping.
                unsafe { black_box(memset)(base.add(i * FRAME).cast(), 0, FRAME) };
            }
            each.push(per(t.elapsed(), pages));
            let t = Instant::now();
            for i in 0..pages {
                // SAFETY: inside the mapping, 4 KiB aligned.
                unsafe { stream_zero(black_box(base.add(i * FRAME))) };
            }
            // SAFETY: sfence has no preconditions.
            unsafe { core::arch::x86_64::_mm_sfence() };
            nt.push(per(t.elapsed(), pages));
            let t = Instant::now();
            for i in 0..pages {
                // SAFETY: inside the mapping.
                unsafe { stosb_zero(black_box(base.add(i * FRAME))) };
            }
            stosb.push(per(t.elapsed(), pages));
            if avx2 {
                let t = Instant::now();
                for i in 0..pages {
                    // SAFETY: inside the mapping, 4 KiB aligned; AVX2 detected.
                    unsafe { stream_zero_avx2(black_box(base.add(i * FRAME))) };
                }
                // SAFETY: sfence has no preconditions.
                unsafe { core::arch::x86_64::_mm_sfence() };
                nt32.push(per(t.elapsed(), pages));
            }
        }
        let mb = len >> 20;
        let b = median(&mut bulk);
        let e = median(&mut each);
        self.row(format!("6. floor: one memset of {mb} MiB"), b, None, "per 4 KiB");
        self.row(format!("6. floor: memset 4 KiB at a time over {mb} MiB"), e, None, "what the peer's HAL does");
        self.row(format!("6. floor: non-temporal stores, 4 KiB at a time, {mb} MiB"), median(&mut nt), None, "SSE2 movntdq 16 B, one sfence at the end");
        self.row(format!("6. floor: non-temporal AVX2 stores, 4 KiB at a time, {mb} MiB"), median(&mut nt32), None, "vmovntdq 32 B, one sfence at the end");
        self.row(format!("6. floor: rep stosb, 4 KiB at a time, {mb} MiB"), median(&mut stosb), None, "ERMS/FSRM string store");
        (b, e)
    }

    // -----------------------------------------------------------------------
    // 7. kernel-grade core (issue 7): populate vs memset, fault latency
    //    during a populate, translate progress during map/unmap
    // -----------------------------------------------------------------------

    fn mt_hooks(mt: &MtPool) -> Hooks {
        Hooks {
            struct_size: core::mem::size_of::<Hooks>() as u32,
            reserved: 0,
            ctx: mt as *const MtPool as *mut _,
            alloc_frame: Some(pool::mt_hook_alloc),
            free_frame: Some(pool::mt_hook_free),
            phys_to_virt: Some(pool::mt_hook_virt),
            flush_tlb: Some(pool::mt_hook_flush),
            alloc_contig: None,
            free_contig: None,
            relax: None,
        }
    }

    /// 7a. populate with zeroing (the shipped, kernel-safe archive) against
    /// one bulk memset of the same bytes, interleaved ABBA.
    fn kernel_populate(&mut self, p: &Pool) {
        if !self.o.ax() {
            return;
        }
        let pages = self.s.populate_pages;
        let bytes = pages * FRAME;
        let memset: unsafe extern "C" fn(*mut libc::c_void, i32, usize) -> *mut libc::c_void = libc::memset;
        let (mut ax, mut ms) = (vec![], vec![]);
        for rep in 0..self.o.reps + 1 {
            for ax_turn in turns(rep) {
                self.prepare(p, Zero::Zeroing);
                if ax_turn {
                    let s = ax_space(p, Zero::Zeroing);
                    let t = Instant::now();
                    // SAFETY: live handle.
                    let rc = unsafe { ffi::axalloc_map_alloc(s.0, GPA, bytes as u64, AX_RWX, true) };
                    let dt = t.elapsed();
                    ffi::ok(rc, "populate");
                    ax.push(per(dt, pages));
                    self.checks.check(s.stats().guest_frames == pages as u64, "7a: populate guest_frames");
                    drop(s);
                    self.check_pool_empty(p, "7a populate + destroy");
                } else {
                    // The frames the populate gets: the pool hands out from frame 0 up.
                    let t = Instant::now();
                    // SAFETY: inside the mapping.
                    unsafe { black_box(memset)(self.map.ptr.cast(), 0, bytes) };
                    ms.push(per(t.elapsed(), pages));
                }
            }
        }
        let (a, m) = (median(&mut ax), median(&mut ms));
        let mb = bytes >> 20;
        self.row(format!("7a. populate {mb} MiB with zeroing (shipped archive)"), a, None, "ABBA with the memset row");
        self.row(format!("7a. one bulk memset of {mb} MiB"), m, None, "the floor, same bytes");
        if let (Some(a), Some(m)) = (a, m) {
            self.target(
                "7a. populate with zeroing ≤ 1.1× one bulk memset",
                format!("{:.2}× (medians; min/min {:.2}×)", a / m, a.min / m.min),
                "≤ 1.1×",
                Some(a / m <= 1.1),
            );
        }
    }

    /// 7b. Latency of a spurious fault (present page, another region) on one
    /// thread while a second thread populates `mt_pages` pages.
    fn kernel_fault_latency(&mut self, mt: &MtPool) {
        if !self.o.ax() {
            return;
        }
        use std::sync::atomic::{AtomicBool, Ordering::*};
        let pages = self.s.mt_pages;
        let bytes = (pages * FRAME) as u64;
        let other = GPA + (4u64 << 30);
        let limit = std::time::Duration::from_secs(if self.o.short { 5 } else { 20 });
        let (mut p99s, mut maxs, mut counts, mut pop_ns) = (vec![], vec![], vec![], vec![]);
        // Control rounds: the same two threads, but the timed loop calls nothing
        // (what preemption and the other builds on this machine cost alone).
        let (mut c_p99s, mut c_maxs) = (vec![], vec![]);
        for (_rep, control) in (0..self.o.reps + 1).flat_map(|r| [(r, false), (r, true)]) {
            mt.reset();
            if self.o.short {
                self.map.fill(0, self.map.frames, 0xa5);
            }
            pool::set_thread_sub(0);
            let s = Space::create(&Self::mt_hooks(mt), 0, WIN_BASE, WIN_SIZE);
            // SAFETY: live handle.
            ffi::ok(unsafe { ffi::axalloc_map_alloc(s.0, other, FRAME as u64, ffi::READ | ffi::WRITE, true) }, "7b: other region");
            let done = AtomicBool::new(false);
            let barrier = std::sync::Barrier::new(2);
            let (res, pop) = std::thread::scope(|sc| {
                let (s, done, barrier) = (&s, &done, &barrier);
                let faulter = sc.spawn(move || {
                    pin(0);
                    pool::set_thread_sub(0);
                    let mut lat: Vec<u32> = Vec::with_capacity(1 << 22);
                    let mut bad = 0usize;
                    barrier.wait();
                    let start = Instant::now();
                    let mut timed_out = false;
                    // At least one fault even if the populate ended first (short mode, busy machine).
                    loop {
                        let t = Instant::now();
                        // SAFETY: live handle; faults are concurrent-safe.
                        let rc = if control { black_box(ffi::OK) } else { unsafe { ffi::axalloc_handle_fault(s.0, other, ffi::READ) } };
                        let ns = t.elapsed().as_nanos();
                        bad += (rc != ffi::OK) as usize;
                        lat.push(ns.min(u32::MAX as u128) as u32);
                        if done.load(Acquire) {
                            break;
                        }
                        if start.elapsed() > limit {
                            timed_out = true;
                            break;
                        }
                    }
                    (lat, bad, timed_out)
                });
                let populator = sc.spawn(move || {
                    pin(1);
                    pool::set_thread_sub(1);
                    barrier.wait();
                    let t = Instant::now();
                    // SAFETY: live handle.
                    let rc = unsafe { ffi::axalloc_map_alloc(s.0, GPA, bytes, AX_RWX, true) };
                    let dt = t.elapsed();
                    done.store(true, Release);
                    (rc, dt)
                });
                (faulter.join().unwrap(), populator.join().unwrap())
            });
            pin(0);
            pool::set_thread_sub(0);
            let (mut lat, bad, timed_out) = res;
            let (rc, dt) = pop;
            self.checks.check(rc == ffi::OK, format!("7b: populate during faults: {}", ffi::status_str(rc)));
            self.checks.check(bad == 0, format!("7b: {bad} spurious faults failed"));
            self.checks.check(!timed_out, format!("7b: faulting thread gave up after {limit:?} (populate starved or stuck)"));
            self.checks.check(!lat.is_empty(), "7b: the faulting thread completed no fault during the populate");
            let st = s.stats();
            self.checks.check(st.guest_frames == pages as u64 + 1, format!("7b: guest_frames {} != {}", st.guest_frames, pages + 1));
            drop(s);
            self.checks.check(
                mt.in_use() == 0 && mt.errors() == 0,
                format!("7b: {} frames not returned, {} bad frees", mt.in_use(), mt.errors()),
            );
            if lat.is_empty() {
                continue;
            }
            lat.sort_unstable();
            let n = lat.len();
            let over = lat.partition_point(|&x| x < 1_000_000);
            if !self.o.short {
                self.info.push(format!(
                    "7b {}round: {n} {}, p99 {} ns, p99.9 {} ns, max {} ns, {} ≥ 1 ms",
                    if control { "control " } else { "" },
                    if control { "empty timed iterations" } else { "faults" },
                    lat[(n * 99 / 100).min(n - 1)],
                    lat[(n * 999 / 1000).min(n - 1)],
                    lat[n - 1],
                    n - over,
                ));
            }
            if control {
                c_p99s.push(lat[(n * 99 / 100).min(n - 1)] as f64);
                c_maxs.push(lat[n - 1] as f64);
                continue;
            }
            p99s.push(lat[(n * 99 / 100).min(n - 1)] as f64);
            maxs.push(lat[n - 1] as f64);
            counts.push(n as f64);
            pop_ns.push(per(dt, pages));
        }
        let mb = bytes >> 20;
        let (p99, mx, cnt, pp) = (median(&mut p99s), median(&mut maxs), median(&mut counts), median(&mut pop_ns));
        self.row(format!("7b. spurious fault during a {mb} MiB populate: p99 (ns/fault)"), p99, None, "other thread populating; per-round p99");
        self.row(format!("7b. spurious fault during a {mb} MiB populate: max (ns/fault)"), mx, None, "per-round worst case");
        self.row("7b. faults completed during the populate (count)", cnt, None, "count, not ns");
        let (cp, cm) = (median(&mut c_p99s), median(&mut c_maxs));
        self.row("7b. control, empty timed loop during the populate: p99 (ns)", cp, None, "no library call: host noise");
        self.row("7b. control, empty timed loop during the populate: max (ns)", cm, None, "preemption by other load shows here");
        self.row(format!("7b. the concurrent {mb} MiB populate (ns/page)"), pp, None, "populating thread");
        if let Some(m) = mx {
            self.target(
                "7b. worst-case fault latency during a populate < 1 ms",
                format!("{:.0} ns worst round, {:.0} ns median round (p99 {:.0} ns)", m.max, m.med, p99.map_or(0.0, |x| x.med)),
                "< 1,000,000 ns",
                Some(m.max < 1e6),
            );
        }
    }

    /// 7c. One thread maps (linear) and unmaps a small region in a loop,
    /// another translates a present page of another region meanwhile.
    fn kernel_translate_progress(&mut self, mt: &MtPool) {
        if !self.o.ax() {
            return;
        }
        use std::sync::atomic::{AtomicBool, Ordering::*};
        let cycles = if self.o.short { 200 } else { 5_000 };
        let region = 16 * FRAME as u64;
        let other = GPA + (4u64 << 30);
        let target_gpa = GPA + (8u64 << 30);
        let limit = std::time::Duration::from_secs(if self.o.short { 5 } else { 20 });
        let (mut tr, mut cy, mut cyc_ns, mut tr_ns) = (vec![], vec![], vec![], vec![]);
        for _rep in 0..self.o.reps + 1 {
            mt.reset();
            pool::set_thread_sub(0);
            let s = Space::create(&Self::mt_hooks(mt), 0, WIN_BASE, WIN_SIZE);
            // SAFETY: live handle.
            ffi::ok(unsafe { ffi::axalloc_map_alloc(s.0, other, FRAME as u64, ffi::READ | ffi::WRITE, true) }, "7c: other region");
            let want = s.translate(other).expect("7c: other region mapped");
            let stop = AtomicBool::new(false);
            let barrier = std::sync::Barrier::new(2);
            let hpa = self.map.phys(self.map.frames - 16);
            let (r, w) = std::thread::scope(|sc| {
                let (s, stop, barrier) = (&s, &stop, &barrier);
                let reader = sc.spawn(move || {
                    pin(0);
                    pool::set_thread_sub(0);
                    barrier.wait();
                    let t = Instant::now();
                    let (mut n, mut wrong) = (0u64, 0u64);
                    let mut timed_out = false;
                    loop {
                        wrong += (s.translate(black_box(other)) != Some(want)) as u64;
                        n += 1;
                        if stop.load(Acquire) {
                            break;
                        }
                        if n % 1024 == 0 && t.elapsed() > limit {
                            timed_out = true;
                            break;
                        }
                    }
                    (n, wrong, timed_out, t.elapsed())
                });
                let writer = sc.spawn(move || {
                    pin(1);
                    pool::set_thread_sub(1);
                    barrier.wait();
                    let t = Instant::now();
                    let (mut done, mut bad) = (0u64, 0u64);
                    for _ in 0..cycles {
                        // SAFETY: live handle.
                        let rc = unsafe { ffi::axalloc_map_linear(s.0, target_gpa, hpa, region, ffi::READ | ffi::WRITE) };
                        // SAFETY: live handle.
                        let rc2 = unsafe { ffi::axalloc_unmap(s.0, target_gpa, region) };
                        bad += (rc != ffi::OK || rc2 != ffi::OK) as u64;
                        done += 1;
                        if t.elapsed() > limit {
                            break;
                        }
                    }
                    let dt = t.elapsed();
                    stop.store(true, Release);
                    (done, bad, dt)
                });
                (reader.join().unwrap(), writer.join().unwrap())
            });
            pin(0);
            let (n, wrong, timed_out, rdt) = r;
            let (done, bad, wdt) = w;
            self.checks.check(wrong == 0, format!("7c: {wrong} translates of a present page gave a wrong answer"));
            self.checks.check(bad == 0, format!("7c: {bad} map_linear/unmap cycles failed"));
            self.checks.check(!timed_out && done == cycles, format!("7c: writer did {done}/{cycles} cycles (time limit {limit:?})"));
            self.checks.check(n > 0, "7c: no translate completed while the writer ran");
            self.checks.check(s.stats().regions == 1, "7c: regions after the loop != 1");
            drop(s);
            self.checks.check(
                mt.in_use() == 0 && mt.errors() == 0,
                format!("7c: {} frames not returned, {} bad frees", mt.in_use(), mt.errors()),
            );
            tr.push(n as f64);
            cy.push(done as f64);
            cyc_ns.push(per(wdt, done.max(1) as usize));
            tr_ns.push(per(rdt, n.max(1) as usize));
        }
        let (t, c, cn, tn) = (median(&mut tr), median(&mut cy), median(&mut cyc_ns), median(&mut tr_ns));
        self.row("7c. translates completed during the map/unmap loop (count)", t, None, "reader thread, present page, other region");
        self.row(format!("7c. map_linear + unmap cycles of 64 KiB completed (count, of {cycles})"), c, None, "writer thread");
        self.row("7c. one map_linear + unmap cycle (ns/cycle)", cn, None, "writer, with the reader running");
        self.row("7c. one translate during the loop (ns/lookup, wall / count)", tn, None, "reader");
        if let Some(t) = t {
            self.target(
                "7c. readers progress during map/unmap",
                format!("{:.0} translates (min {:.0}) during {:.0} cycles", t.med, t.min, c.map_or(0.0, |c| c.med)),
                "> 0, ideally thousands",
                Some(t.min > 0.0),
            );
        }
    }
}

/// The plain walk as a C-callable, never-inlined function: what a C caller
/// of a minimal translate would pay (call included).
#[inline(never)]
extern "C" fn walk_c(map: *const Mapping, root: u64, gpa: u64, out: *mut u64) -> i32 {
    // SAFETY: callers pass the live mapping and a writable `out`.
    match walk(unsafe { &*map }, root, gpa) {
        Some((h, _)) => {
            unsafe { *out = h };
            0
        }
        None => ffi::ERR_NOT_MAPPED,
    }
}

/// Zeroes one 4 KiB frame with `rep stosb`.
///
/// # Safety
/// `p` points to 4096 writable bytes.
#[inline(never)]
unsafe fn stosb_zero(p: *mut u8) {
    core::arch::asm!("rep stosb", inout("rdi") p => _, inout("rcx") FRAME => _, in("al") 0u8, options(nostack));
}

/// Zeroes one 4 KiB frame with non-temporal AVX2 stores.
///
/// # Safety
/// `p` points to 4096 writable, 32-byte aligned bytes; the CPU has AVX2.
#[inline(never)]
#[target_feature(enable = "avx2")]
unsafe fn stream_zero_avx2(p: *mut u8) {
    use core::arch::x86_64::{_mm256_setzero_si256, _mm256_stream_si256, __m256i};
    let p = p.cast::<__m256i>();
    let z = _mm256_setzero_si256();
    for i in 0..FRAME / 32 {
        _mm256_stream_si256(p.add(i), z);
    }
}

/// Zeroes one 4 KiB frame with non-temporal SSE2 stores.
///
/// # Safety
/// `p` points to 4096 writable, 16-byte aligned bytes.
#[inline(never)]
unsafe fn stream_zero(p: *mut u8) {
    use core::arch::x86_64::{_mm_setzero_si128, _mm_stream_si128, __m128i};
    let p = p.cast::<__m128i>();
    let z = _mm_setzero_si128();
    for i in 0..FRAME / 16 {
        _mm_stream_si128(p.add(i), z);
    }
}

fn fmt_ns(x: Option<f64>) -> String {
    x.map_or("–".into(), |v| if v >= 100.0 { format!("{v:.0}") } else { format!("{v:.1}") })
}

/// "median (min–max)".
fn fmt_stat(x: Option<Stat>) -> String {
    match x {
        Some(s) => format!("{} ({}–{})", fmt_ns(Some(s.med)), fmt_ns(Some(s.min)), fmt_ns(Some(s.max))),
        None => "–".into(),
    }
}

// ---------------------------------------------------------------------------
// CPU pinning
// ---------------------------------------------------------------------------

/// The CPUs this process may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is valid; pid 0 = this thread.
    unsafe {
        let mut set: libc::cpu_set_t = core::mem::zeroed();
        if libc::sched_getaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return vec![];
        }
        (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect()
    }
}

static CPUS: std::sync::OnceLock<Vec<usize>> = std::sync::OnceLock::new();

/// Pins the calling thread to the `i`-th allowed CPU (modulo their number);
/// returns the CPU, or None if pinning failed.
fn pin(i: usize) -> Option<usize> {
    let cpus = CPUS.get_or_init(allowed_cpus);
    if cpus.is_empty() {
        return None;
    }
    let cpu = cpus[i % cpus.len()];
    // SAFETY: as above.
    unsafe {
        let mut set: libc::cpu_set_t = core::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        (libc::sched_setaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &set) == 0).then_some(cpu)
    }
}

/// "model name", "cpu family", "model", "stepping" of the first CPU.
fn cpu_model() -> String {
    let c = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |k: &str| {
        c.lines()
            .find(|l| l.split(':').next().is_some_and(|n| n.trim() == k))
            .and_then(|l| l.split_once(':'))
            .map_or("?".to_owned(), |(_, v)| v.trim().to_owned())
    };
    format!(
        "{} (family {}, model {}, stepping {})",
        field("model name"),
        field("cpu family"),
        field("model"),
        field("stepping")
    )
}

fn main() {
    let o = Opts::parse();
    let s = if o.short {
        Sizes { populate_pages: 4096, lazy_pages: 2048, mt_pages: 2048, lookups: 1 << 14 }
    } else {
        Sizes { populate_pages: 1 << 18, lazy_pages: 1 << 16, mt_pages: 1 << 18, lookups: 1 << 20 }
    };
    let frames = (2 * s.populate_pages).max(2 * s.mt_pages) + SLACK_FRAMES;
    let t_all = Instant::now();
    let map = Mapping::new(frames);
    let mut b = Bench { o, s, map, checks: Checks::default(), rows: vec![], targets: vec![], info: vec![] };

    println!("# cpu: {}", cpu_model());
    println!(
        "# libaxalloc vs axaddrspace 0.3.0 ({} mode; 1 warm-up round discarded, then {} rounds in ABBA order; median (min–max))",
        if b.o.short { "short" } else { "full" },
        b.o.reps
    );
    let main_cpu = pin(0);
    println!(
        "# cpus allowed {:?}; main thread pinned to cpu {}, second thread (rows 5, 7) to the next allowed cpu",
        CPUS.get().cloned().unwrap_or_default(),
        main_cpu.map_or("? (pinning failed)".into(), |c| c.to_string())
    );
    println!("# libaxalloc archive: {}", env!("AXALLOC_ARCHIVE"));
    println!(
        "# frame pool: {} MiB at HPA {:#x}, THP-backed: {} MiB",
        (frames * FRAME) >> 20,
        pool::PHYS_BASE,
        Mapping::thp_kib().map_or("?".into(), |k| (k >> 10).to_string())
    );

    let p = Pool::new(&b.map, 0, b.map.frames, b.o.short);
    pool::set_peer_pool(&p);

    let mut pop = [(None, None); 2];
    if b.o.wants("populate") {
        pop = b.populate(&p);
    }
    if b.o.wants("lazy") {
        b.lazy(&p);
    }
    if b.o.wants("translate") {
        b.translate(&p);
    }
    if b.o.wants("unmap") {
        b.unmap(&p);
    }
    if b.o.wants("threads") {
        let mt = MtPool::new(&b.map, b.o.short);
        b.threads(&mt);
    }
    let mut fl = (None, None);
    if b.o.wants("floor") {
        fl = b.floor();
    }
    if b.o.wants("fault") {
        b.fault_path(&p);
    }
    if b.o.wants("dirty") {
        b.dirty_log(&p);
    }
    if b.o.wants("kernel") {
        b.kernel_populate(&p);
        let mt = MtPool::new(&b.map, b.o.short);
        b.kernel_fault_latency(&mt);
        b.kernel_translate_progress(&mt);
    }

    // Targets that combine several workloads.
    if b.o.wants("populate") {
        let (za, zp) = pop[0];
        b.ratio_target("populate with zeroing ≥ 2× faster than peer", za, zp, 2.0);
        match (za, fl.0) {
            (Some(a), Some(m)) => b.target(
                "populate with zeroing ≤ 1.2× one bulk memset",
                format!("{:.2}× the memset", a / m),
                "≤ 1.2×",
                Some(a / m <= 1.2),
            ),
            _ => b.target("populate with zeroing ≤ 1.2× bulk memset", "not measured".into(), "≤ 1.2×", None),
        }
        let (pa, pp) = pop[1];
        b.ratio_target("populate, pre-zeroed ≥ 2.5× faster than peer", pa, pp, 2.5);
    }

    println!();
    println!("| workload | libaxalloc ns/page median (min–max) | peer ns/page median (min–max) | ax / peer (medians) | speed-up | note |");
    println!("|---|---:|---:|---:|---:|---|");
    for r in &b.rows {
        let (ratio, speed) = match (r.ax, r.peer) {
            (Some(a), Some(p)) => (format!("{:.2}", a / p), format!("{:.2}×", p / a)),
            _ => ("–".into(), "–".into()),
        };
        println!("| {} | {} | {} | {ratio} | {speed} | {} |", r.name, fmt_stat(r.ax), fmt_stat(r.peer), r.note);
    }
    if !b.info.is_empty() {
        println!();
        for i in &b.info {
            println!("- {i}");
        }
    }
    println!();
    println!("| target | measured | wanted | met |");
    println!("|---|---|---|---|");
    for (n, v, t, m) in &b.targets {
        let m = match m {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "n/a",
        };
        println!("| {n} | {v} | {t} | {m} |");
    }
    if b.o.short {
        println!();
        println!("(short mode: timings above are from tiny sizes and mean nothing)");
    }
    println!();
    println!("# total run time {:.1} s", t_all.elapsed().as_secs_f64());
    println!("bench checks: {} passed, {} failed", b.checks.passed, b.checks.failed);
    if b.checks.failed > 0 {
        std::process::exit(1);
    }
}
