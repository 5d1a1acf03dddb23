//! 12. Dirty logging (issue 12): `--only dirty`.
//!
//! libaxalloc: an EPT space with 1 GiB populated (`FRAMES_ZEROED`, untimed);
//! then, timed separately: `axalloc_dirty_log_start` over the GiB; for each
//! density (0 %, 1 %, 10 %, 100 % of the pages: every 100th / 10th / page)
//! the "guest" writes those pages — each is a write to a clean logged present
//! page, i.e. one `axalloc_handle_fault(WRITE)` (timed: the logged-write
//! fault) — then one `axalloc_dirty_log_get(AXALLOC_BITMAP_CLEAR)` over the
//! GiB (timed; `flush_tlb` calls counted); finally `axalloc_dirty_log_stop`.
//!
//! Peer: Linux KVM's own dirty log of a 1 GiB memslot in the same run
//! (`bench/kvm_dirty.c`): `KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2`, a tiny guest
//! writes the same pages (each write to a clean page is a KVM write-protection
//! fault), then `KVM_GET_DIRTY_LOG` + `KVM_CLEAR_DIRTY_LOG` of the whole slot
//! (timed together = get-and-clear); start/stop = `KVM_SET_USER_MEMORY_REGION`
//! setting / clearing `KVM_MEM_LOG_DIRTY_PAGES`. KVM's logged-write cost =
//! (first pass − immediate second pass) / pages: the second pass writes the
//! same pages, already dirty, so the difference is the faults.
//!
//! Rounds: one warm-up, then `--reps`; libaxalloc first in even rounds, KVM
//! first in odd ones (ABBA). Skipped KVM (no /dev/kvm, no manual protect):
//! the peer cells stay empty and the targets say "n/a".

use core::ffi::c_char;
use std::time::Instant;

use super::*;

/// Pages written per density: every `stride`-th page (0: none).
const STRIDES: [u64; 4] = [0, 100, 10, 1];
const DENSITY: [&str; 4] = ["0 %", "1 %", "10 %", "100 %"];

#[repr(C)]
struct Kvmd {
    _opaque: [u8; 0],
}

extern "C" {
    fn kvmd_open(mib: u64, out: *mut *mut Kvmd, why: *mut *const c_char) -> i32;
    fn kvmd_close(k: *mut Kvmd);
    fn kvmd_pages(k: *const Kvmd) -> u64;
    fn kvmd_log(k: *mut Kvmd, start: i32) -> i64;
    fn kvmd_dirty(k: *mut Kvmd, stride: u64, value: u64, out: *mut i64) -> i32;
    fn kvmd_get_clear(k: *mut Kvmd, out: *mut i64) -> i32;
    fn kvmd_bitmap(k: *const Kvmd) -> *const u64;
}

/// The leaf EPT entry of `gpa` (4 KiB pages only).
fn leaf_entry(map: &Mapping, root: u64, gpa: u64) -> Option<u64> {
    let mut table = root;
    for level in (0..4u32).rev() {
        let idx = ((gpa >> (12 + 9 * level)) & 511) as usize;
        // SAFETY: table frames of the pool.
        let e = unsafe { core::ptr::read_volatile(map.virt(table).cast::<u64>().add(idx)) };
        if e & 7 == 0 || (level > 0 && e & 0x80 != 0) {
            return None;
        }
        if level == 0 {
            return Some(e);
        }
        table = e & ADDR_MASK;
    }
    None
}

fn expected_bits(pages: u64, stride: u64) -> Vec<u64> {
    let mut v = vec![0u64; pages.div_ceil(64) as usize];
    if stride > 0 {
        for i in (0..pages).step_by(stride as usize) {
            v[(i / 64) as usize] |= 1 << (i % 64);
        }
    }
    v
}

/// One side's measurements of one round (ns per page of the GiB, ns per fault).
#[derive(Default)]
struct Round {
    start: f64,
    stop: f64,
    get: [f64; 4],
    fault: f64,
    flushes: [f64; 4],
    clear_only: [f64; 4],
}

impl Bench {
    fn dirty_ax(&mut self, p: &Pool, pages: u64, verify: bool) -> Round {
        let bytes = pages * FRAME as u64;
        let mut r = Round::default();
        self.prepare(p, Zero::Prezeroed);
        let s = ax_space(p, Zero::Prezeroed);
        // SAFETY: live handle.
        ffi::ok(unsafe { ffi::axalloc_map_alloc(s.0, GPA, bytes, AX_RWX, true) }, "populate");
        let root = s.root();
        let words = pages.div_ceil(64) as usize;
        let mut bm = vec![0u64; words];

        let t0 = Instant::now();
        // SAFETY: live handle.
        let rc = unsafe { ffi::axalloc_dirty_log_start(s.0, GPA, bytes) };
        r.start = per(t0.elapsed(), pages as usize);
        ffi::ok(rc, "axalloc_dirty_log_start");
        if verify {
            // SAFETY: live handle; bm has ceil(pages/64) words.
            let rc = unsafe { ffi::axalloc_present_bitmap(s.0, GPA, bytes, bm.as_mut_ptr()) };
            let present: u64 = bm.iter().map(|w| w.count_ones() as u64).sum();
            self.checks.check(rc == ffi::OK && present == pages, format!("dirty: present_bitmap {present} != {pages}"));
            let w = leaf_entry(&self.map, root, GPA).map_or(true, |e| e & 2 != 0);
            self.checks.check(!w, "dirty: a logged page is write-protected after start");
        }
        let mut fault_ns = 0.0;
        for (d, &stride) in STRIDES.iter().enumerate() {
            let mut bad = 0usize;
            let t0 = Instant::now();
            if stride > 0 {
                for i in (0..pages).step_by(stride as usize) {
                    // SAFETY: live handle.
                    bad += (unsafe { ffi::axalloc_handle_fault(s.0, GPA + i * FRAME as u64 + 8, ffi::WRITE) } != ffi::OK)
                        as usize;
                }
            }
            let el = t0.elapsed();
            if stride == 1 {
                fault_ns = per(el, pages as usize);
            }
            self.checks.check(bad == 0, format!("dirty {}: {bad} logged write faults failed", DENSITY[d]));
            let f0 = p.flushes.get();
            let t0 = Instant::now();
            // SAFETY: live handle; bm has ceil(pages/64) words.
            let rc = unsafe { ffi::axalloc_dirty_log_get(s.0, GPA, bytes, bm.as_mut_ptr(), ffi::BITMAP_CLEAR) };
            r.get[d] = per(t0.elapsed(), pages as usize);
            r.flushes[d] = (p.flushes.get() - f0) as f64;
            ffi::ok(rc, "axalloc_dirty_log_get(CLEAR)");
            let want = expected_bits(pages, stride);
            self.checks.check(bm == want, format!("dirty {}: get(CLEAR) reports exactly the written pages", DENSITY[d]));
            if stride > 0 {
                self.checks.check(
                    r.flushes[d] == 1.0,
                    format!("dirty {}: one flush_tlb per get(CLEAR), saw {}", DENSITY[d], r.flushes[d]),
                );
            }
            if verify && stride > 0 {
                // re-armed: the reported page is read-only again
                let e = leaf_entry(&self.map, root, GPA + 8).unwrap_or(0);
                self.checks.check(e & 1 != 0 && e & 2 == 0, format!("dirty {}: a reported page is re-armed (read-only)", DENSITY[d]));
            }
        }
        r.fault = fault_ns;
        if verify {
            // a get without CLEAR after a CLEAR: nothing
            // SAFETY: as above.
            let rc = unsafe { ffi::axalloc_dirty_log_get(s.0, GPA, bytes, bm.as_mut_ptr(), 0) };
            self.checks.check(rc == ffi::OK && bm.iter().all(|&w| w == 0), "dirty: nothing dirty after get(CLEAR)");
        }
        let t0 = Instant::now();
        // SAFETY: live handle.
        let rc = unsafe { ffi::axalloc_dirty_log_stop(s.0, GPA, bytes) };
        r.stop = per(t0.elapsed(), pages as usize);
        ffi::ok(rc, "axalloc_dirty_log_stop");
        if verify {
            // SAFETY: live handle.
            let rc = unsafe { ffi::axalloc_handle_fault(s.0, GPA + 8, ffi::WRITE) };
            self.checks.check(rc == ffi::OK, format!("dirty: write fault after stop -> {}", ffi::status_str(rc)));
        }
        drop(s);
        self.check_pool_empty(p, "dirty + destroy");
        r
    }

    fn dirty_kvm(&mut self, k: *mut Kvmd, pages: u64, round: u64) -> Option<Round> {
        let mut r = Round::default();
        // SAFETY: `k` is live for the whole section.
        unsafe {
            let t = kvmd_log(k, 1);
            if t < 0 {
                self.checks.check(false, "kvm: KVM_MEM_LOG_DIRTY_PAGES on");
                return None;
            }
            r.start = t as f64 / pages as f64;
            for (d, &stride) in STRIDES.iter().enumerate() {
                let mut w = [0i64; 2];
                let mut g = [0i64; 3];
                if kvmd_dirty(k, stride, round * 16 + d as u64, w.as_mut_ptr()) != 0
                    || kvmd_get_clear(k, g.as_mut_ptr()) != 0
                {
                    self.checks.check(false, format!("kvm {}: guest pass or GET/CLEAR failed", DENSITY[d]));
                    return None;
                }
                r.get[d] = (g[0] + g[1]) as f64 / pages as f64;
                r.clear_only[d] = g[1] as f64 / pages as f64;
                let want = expected_bits(pages, stride);
                let got = std::slice::from_raw_parts(kvmd_bitmap(k), want.len());
                self.checks.check(got == want.as_slice(), format!("kvm {}: GET reports exactly the written pages ({} set)", DENSITY[d], g[2]));
                if stride == 1 {
                    r.fault = (w[0] - w[1]) as f64 / pages as f64;
                }
            }
            let t = kvmd_log(k, 0);
            if t < 0 {
                self.checks.check(false, "kvm: KVM_MEM_LOG_DIRTY_PAGES off");
                return None;
            }
            r.stop = t as f64 / pages as f64;
        }
        Some(r)
    }

    pub(crate) fn dirty_log(&mut self, p: &Pool) {
        let pages: u64 = if self.o.short { 2048 } else { 1 << 18 };
        let mib = pages * FRAME as u64 >> 20;
        let mut k: *mut Kvmd = core::ptr::null_mut();
        if self.o.peer() {
            let mut why: *const c_char = core::ptr::null();
            // SAFETY: out pointers valid.
            let rc = unsafe { kvmd_open(mib, &mut k, &mut why) };
            if rc != 0 {
                // SAFETY: kvmd_open sets a static string.
                let w = unsafe { std::ffi::CStr::from_ptr(why) }.to_string_lossy().into_owned();
                self.info.push(format!("12. KVM peer skipped: {w} (kvmd_open -> {rc})"));
                if rc != 77 {
                    self.checks.check(false, format!("kvm peer: {w}"));
                }
                k = core::ptr::null_mut();
            } else {
                // SAFETY: live.
                self.checks.check(unsafe { kvmd_pages(k) } == pages, "kvm: slot size");
            }
        }
        let mut ax: Vec<Round> = vec![];
        let mut kv: Vec<Round> = vec![];
        for rep in 0..self.o.reps + 1 {
            for ax_turn in turns(rep) {
                if ax_turn && self.o.ax() {
                    ax.push(self.dirty_ax(p, pages, rep == 0 || self.o.short));
                } else if !ax_turn && !k.is_null() {
                    if let Some(r) = self.dirty_kvm(k, pages, rep as u64) {
                        kv.push(r);
                    }
                }
            }
        }
        if !k.is_null() {
            // SAFETY: live, not used after.
            unsafe { kvmd_close(k) };
        }
        let col = |v: &[Round], f: &dyn Fn(&Round) -> f64| {
            let mut x: Vec<f64> = v.iter().map(f).collect();
            median(&mut x)
        };
        for d in 0..4 {
            let a = col(&ax, &|r| r.get[d]);
            let b = col(&kv, &|r| r.get[d]);
            let fl = col(&ax, &|r| r.flushes[d]).map_or("–".into(), |s| format!("{:.0}", s.med));
            let kc = col(&kv, &|r| r.clear_only[d]).map_or("–".into(), |s| format!("{:.2}", s.med));
            self.row(
                format!("12. get + CLEAR, {mib} MiB, {} dirty (ns/page of the range)", DENSITY[d]),
                a,
                b,
                format!("flush_tlb per call: {fl}; KVM: GET + CLEAR (CLEAR alone {kc})"),
            );
            match (a, b) {
                (Some(a), Some(b)) => self.target(
                    &format!("12. get-and-clear ≤ KVM per page at {} dirty", DENSITY[d]),
                    format!("{} vs {} ns/page ({:.2}×)", fmt_ns(Some(a.med)), fmt_ns(Some(b.med)), a / b),
                    "≤ 1.0×",
                    Some(a.med <= b.med),
                ),
                _ => self.target(&format!("12. get-and-clear ≤ KVM per page at {} dirty", DENSITY[d]), "KVM not measured".into(), "≤ 1.0×", None),
            }
        }
        self.row(format!("12. dirty_log_start, {mib} MiB (ns/page)"), col(&ax, &|r| r.start), col(&kv, &|r| r.start), "KVM: KVM_SET_USER_MEMORY_REGION + LOG_DIRTY_PAGES");
        self.row(format!("12. dirty_log_stop, {mib} MiB (ns/page)"), col(&ax, &|r| r.stop), col(&kv, &|r| r.stop), "KVM: flag cleared");
        self.row(
            "12. logged write: first write to a clean logged present page (ns/write)",
            col(&ax, &|r| r.fault),
            col(&kv, &|r| r.fault),
            "ax: axalloc_handle_fault(WRITE) alone (no VM exit); KVM: guest write pass − re-write pass, per page",
        );
    }
}
