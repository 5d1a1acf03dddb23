//! libaxalloc vs axaddrspace 0.3.0: the workloads of issue 4, on one frame pool.
//!
//! Usage: axalloc-bench [--short] [--reps N] [--only LIST] [--side ax|peer|both]
//!   --short       CI mode: small sizes, correctness checks, no timing asserted
//!                 (also AXALLOC_BENCH_SHORT=1)
//!   --reps N      repetitions per measurement (median is reported)
//!   --only LIST   comma-separated subset of: populate,lazy,translate,unmap,threads,floor
//!   --side S      run only one implementation (for perf / callgrind)
//!
//! Everything is reported in ns per 4 KiB page (translate: ns per lookup);
//! BENCHMARKS.md quotes the ratios.

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
                    println!("usage: axalloc-bench [--short] [--reps N] [--only populate,lazy,translate,unmap,threads,floor] [--side ax|peer|both] [--variant zeroing|prezeroed]");
                    std::process::exit(0);
                }
                _ => panic!("unknown argument {a} (try --help)"),
            }
        }
        if o.reps == 0 {
            o.reps = if o.short { 2 } else { 5 };
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
    ax: Option<f64>,
    peer: Option<f64>,
    note: String,
}

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
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
        ctx: p as *const Pool as *mut _,
        alloc_frame: Some(pool::hook_alloc),
        free_frame: Some(pool::hook_free),
        phys_to_virt: Some(pool::hook_virt),
        flush_tlb: Some(pool::hook_flush),
        alloc_contig: None,
        free_contig: None,
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

    fn row(&mut self, name: impl Into<String>, ax: Option<f64>, peer: Option<f64>, note: impl Into<String>) {
        self.rows.push(Row { name: name.into(), ax, peer, note: note.into() });
    }

    fn target(&mut self, name: &str, value: String, target: &str, met: Option<bool>) {
        self.targets.push((name.into(), value, target.into(), met));
    }

    // -----------------------------------------------------------------------
    // 1. eager populate
    // -----------------------------------------------------------------------

    fn populate(&mut self, p: &Pool) -> [(Option<f64>, Option<f64>); 2] {
        let pages = self.s.populate_pages;
        let bytes = (pages * FRAME) as u64;
        let mut out = [(None, None); 2];
        for z in self.o.variants() {
            let vi = z as usize;
            let (mut ax, mut peer) = (vec![], vec![]);
            let (mut ax_tables, mut peer_tables) = (0usize, 0usize);
            for rep in 0..self.o.reps {
                if self.o.ax() {
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
                if self.o.peer() {
                    self.prepare(p, z);
                    let dt = match z {
                        Zero::Zeroing => self.peer_populate::<pool::PeerHalZeroing>(p, pages, rep == 0, &mut peer_tables),
                        Zero::Prezeroed => self.peer_populate::<pool::PeerHalPrezeroed>(p, pages, rep == 0, &mut peer_tables),
                    };
                    peer.push(dt);
                    self.check_pool_empty(p, "peer populate + drop");
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
                for rep in 0..self.o.reps {
                    if self.o.ax() {
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
                    if self.o.peer() {
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

    fn ratio_target(&mut self, name: &str, ax: Option<f64>, peer: Option<f64>, speedup: f64) {
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
        perf(true);
        for _ in 0..self.o.reps {
            if let Some(s) = &ax {
                let t = Instant::now();
                let mut acc = 0u64;
                for &g in &gpas {
                    acc = acc.wrapping_add(s.translate(black_box(g)).unwrap_or(u64::MAX));
                }
                t_ax.push(per(t.elapsed(), n));
                sums[0][0] = black_box(acc);
            }
            if let Some(a) = &peer {
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
        }
        if peer.is_some() {
            self.checks.check(sums[1][0] == sums[1][1] && sums[1][1] == sums[1][2], "peer translate disagrees with the plain walk");
        }
        drop(ax);
        drop(peer);
        self.check_pool_empty(p, "translate + destroy");
        let (a, b) = (median(&mut t_ax), median(&mut t_peer));
        self.row(format!("3. translate, random in {} MiB (ns/lookup)", bytes >> 20), a, b, "");
        let [wa, wb] = t_walk_inline.each_mut().map(|v| median(v));
        self.row("3. plain 4-level walk, inlined (ns/lookup)", wa, wb, "same addresses, each side's own table");
        let [ca, cb] = t_walk_call.each_mut().map(|v| median(v));
        self.row("3. plain 4-level walk behind a C call (ns/lookup)", ca, cb, "same, as a non-inlined extern \"C\" fn");
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
        for rep in 0..self.o.reps {
            if self.o.ax() {
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
            if self.o.peer() {
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
            for rep in 0..self.o.reps {
                for nt in [1usize, 2] {
                    mt.reset();
                    if z == Zero::Prezeroed {
                        self.map.fill(0, self.map.frames, 0);
                    } else if self.o.short {
                        self.map.fill(0, self.map.frames, 0xa5);
                    }
                    pool::set_thread_sub(0);
                    let hooks = Hooks {
                        ctx: mt as *const MtPool as *mut _,
                        alloc_frame: Some(pool::mt_hook_alloc),
                        free_frame: Some(pool::mt_hook_free),
                        phys_to_virt: Some(pool::mt_hook_virt),
                        flush_tlb: Some(pool::mt_hook_flush),
                        alloc_contig: None,
                        free_contig: None,
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

    fn floor(&mut self) -> (Option<f64>, Option<f64>) {
        let pages = self.s.populate_pages;
        let len = pages * FRAME;
        let base = self.map.ptr;
        let memset: unsafe extern "C" fn(*mut libc::c_void, i32, usize) -> *mut libc::c_void = libc::memset;
        let (mut bulk, mut each, mut nt) = (vec![], vec![], vec![]);
        let (mut stosb, mut nt32) = (vec![], vec![]);
        let avx2 = std::arch::is_x86_feature_detected!("avx2");
        for _ in 0..self.o.reps {
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

    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned()))
        .unwrap_or_default();
    println!("# libaxalloc vs axaddrspace 0.3.0 ({} mode, {} reps, median)", if b.o.short { "short" } else { "full" }, b.o.reps);
    println!("# cpu: {cpu}, {} cpus", std::thread::available_parallelism().map_or(0, |n| n.get()));
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
    println!("| workload | libaxalloc ns/page | peer ns/page | ax / peer | speed-up | note |");
    println!("|---|---:|---:|---:|---:|---|");
    for r in &b.rows {
        let (ratio, speed) = match (r.ax, r.peer) {
            (Some(a), Some(p)) => (format!("{:.2}", a / p), format!("{:.2}×", p / a)),
            _ => ("–".into(), "–".into()),
        };
        println!("| {} | {} | {} | {ratio} | {speed} | {} |", r.name, fmt_ns(r.ax), fmt_ns(r.peer), r.note);
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
