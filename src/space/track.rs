//! Dirty logging and access tracking (`axalloc_dirty_log_*`,
//! `axalloc_young_get`, `axalloc_present_bitmap`).
//!
//! **Dirty logging is done the software way on every format** (as KVM does
//! without PML, and on Arm): at start every writable present page of the
//! range is write-protected (*armed*, `logs.rs`); the guest's first write
//! faults, and `handle_fault` gives write back, marks the page dirty in the
//! range's bitmap and answers `AXALLOC_OK`. A get with `AXALLOC_BITMAP_CLEAR`
//! takes the dirty bits and write-protects those pages again, then flushes
//! once. The bitmap, not the entries, is the record of what was written:
//! a get at low density costs a bitmap scan, and no format needs hardware
//! dirty bits (which EPT without A/D, Arm without FEAT_HAFDBS and RISC-V
//! without Svadu do not have) or spare software bits in its leaves (RISC-V
//! has two, both taken).
//!
//! **Access tracking uses each format's accessed bit** (`Format::ACCESSED`):
//! a faulted page is installed with it set; a get with the clear flag
//! clears it in every leaf the range covers whole and flushes once; the
//! next access sets it again — the hardware itself where it manages A/D
//! (NPT; EPT, whose EPTP has the A/D-enable bit; Arm with FEAT_HAFDBS,
//! RISC-V with Svadu), else the access faults and `handle_fault` sets it.
//! Hypervisor copies set it too.

use core::sync::atomic::Ordering;

use page_table_multiarch::GenericPTE;

use super::{AddrSpace, Maps};
use crate::addr::{FRAME_SIZE, Gpa, Hpa};
use crate::claims::Purpose;
use crate::error::{Error, Result};
use crate::flags::Flags;
use crate::format::{self, Entry, Format, with_format};
use crate::logs::{Log, Map};
use crate::region::Backend;
use crate::sync::ReadGuard;
use crate::table::iter::{Descend, Iter, Visit};
use crate::table::stock::TableStock;
use crate::table::{Hull, Walker};

/// Leaf `raw` without write (rights otherwise kept).
fn without_write<F: Format>(raw: u64) -> Result<u64> {
    let r = format::leaf_rights::<F>(raw) & !Flags::WRITE.bits();
    Ok(F::with_rights(
        raw,
        Flags::from_bits(r).ok_or(Error::Internal)?.to_mapping(),
    ))
}

fn writable<F: Format>(raw: u64) -> bool {
    format::leaf_rights::<F>(raw) & Flags::WRITE.bits() != 0
}

/// Sets the accessed bit of the present leaf `entry` (seen as `raw`),
/// retrying while the hardware changes other bits of it meanwhile.
pub(crate) fn mark_accessed<F: Format>(entry: &core::sync::atomic::AtomicU64, mut raw: u64) {
    while raw & F::ACCESSED == 0 && F::from_raw(raw).is_present() {
        match entry.compare_exchange(raw, raw | F::ACCESSED, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => break,
            Err(now) => raw = now,
        }
    }
}

/// Sets bits `[lo, hi)` (page indexes from the bitmap's start) of `out`.
fn set_bits(out: &mut [u64], lo: usize, hi: usize) -> Result {
    for i in lo..hi {
        *out.get_mut(i / 64).ok_or(Error::Internal)? |= 1 << (i % 64);
    }
    Ok(())
}

impl AddrSpace {
    /// Words of a bitmap over `[gpa, gpa + size)`, once the range is checked
    /// against the window (`Invalid` otherwise): what the C boundary may
    /// view of the caller's buffer.
    pub fn bitmap_len(&self, gpa: u64, size: u64) -> Result<usize> {
        let (start, end) = self.config.range(gpa, size)?;
        Ok(Self::bitmap_words(start, end))
    }

    /// Words a bitmap over `[start, end)` has.
    fn bitmap_words(start: Gpa, end: Gpa) -> usize {
        ((end.as_usize() - start.as_usize()) / FRAME_SIZE).div_ceil(64)
    }

    /// Flushes `hull` (clipped to the window), if anything changed.
    fn flush_hull(&self, h: Hull) {
        let (lo, hi) = (
            h.lo.max(self.config.base.as_usize()),
            h.hi.min(self.config.end()),
        );
        if lo < hi {
            self.hooks.flush(lo as u64, (hi - lo) as u64);
        }
    }

    /// Starts dirty logging on `[gpa, gpa + size)`, which alloc regions must
    /// cover: no page is dirty now; every writable present page is
    /// write-protected (one flush). Already logged: nothing to do.
    pub fn dirty_log_start(&self, gpa: u64, size: u64) -> Result {
        let (start, end) = self.config.range(gpa, size)?;
        let (s, e) = (start.as_usize(), end.as_usize());
        let claim = {
            let mut m = self.lock_exclusive();
            if m.claims.overlaps(s, e, None) {
                return Err(Error::Busy);
            }
            Self::check_alloc_range(&m.regions, start, end)?;
            if m.logs.covering(s, e).is_some() {
                return Ok(());
            }
            if m.logs.overlaps(s, e) {
                return Err(Error::Exists);
            }
            if !m.logs.has_room() {
                return Err(Error::Limit);
            }
            m.claims.claim(start, end, Purpose::Protect)?
        };
        let mut claim = claim;
        // The bitmaps, with no lock held.
        let result = Log::alloc(&self.hooks, s, e).and_then(|log| {
            let r = with_format!(self.config.format, F => self.start_in::<F>(log, &mut claim));
            if r.is_err() {
                let m = self.lock_exclusive();
                // Registered already (a broken invariant after that point):
                // leave it to stop / destroy; else it is ours to free.
                if m.logs.covering(s, e) == Some(&log) {
                    return r;
                }
                drop(m);
                // SAFETY: never registered: nobody else saw it.
                unsafe { log.free(&self.hooks) };
            }
            r
        });
        self.lock_exclusive().claims.release(claim);
        result
    }

    /// `dirty_log_start` with the bitmaps in hand: split the range's 2 MiB
    /// blocks (tables obtained first, or nothing changes), register the log
    /// (faults there take the general path from now on, and no new block is
    /// installed), then arm the writable present pages (one flush).
    fn start_in<F: Format>(&self, log: Log, claim: &mut crate::claims::Claim) -> Result {
        let (s, e) = (log.start, log.end);
        let w = self.walker::<F>();
        let mut stock = TableStock::new();
        let mut need: usize = 0;
        let result = loop {
            // Tables for every block, with no lock held; faults may add
            // blocks meanwhile: count again under the lock.
            if let Err(err) = stock.fill(&w, need.saturating_sub(stock.len())) {
                break Err(err);
            }
            let mut m = self.lock_exclusive();
            need = match w.huge_in(s, e) {
                Ok(n) => n,
                Err(err) => break Err(err),
            };
            if need > stock.len() {
                continue;
            }
            if let Err(err) = m.logs.insert(log) {
                break Err(err);
            }
            // Faults there take the general path, which keeps the log and
            // installs no block.
            let Maps { regions, .. } = &mut *m;
            if let Err(err) = regions.set_backends(Gpa::from_usize(s), Gpa::from_usize(e), |r| {
                match r.backend {
                    Backend::Alloc => Backend::AllocLogged,
                    b => b,
                }
            }) {
                break Err(err);
            }
            if need > 0 && F::BREAK_BEFORE_MAKE {
                // Arm: invalid first, one flush with no lock held, then the
                // tables. The claim covers the whole blocks meanwhile.
                let x = m.token();
                let (lo, hi) = match w.break_huge(&x, s, e) {
                    Ok(h) => h,
                    Err(err) => break Err(err),
                };
                if lo < hi
                    && let Err(err) =
                        m.claims
                            .widen(claim, Gpa::from_usize(lo), Gpa::from_usize(hi))
                {
                    break Err(err);
                }
                drop(m);
                self.flush_hull(Hull { lo, hi });
                m = self.lock_exclusive();
            }
            if need > 0 {
                let x = m.token();
                if let Err(err) = w.make_huge(&x, s, e, &mut stock) {
                    break Err(err);
                }
            }
            break Ok(());
        };
        stock.release(&w);
        result?;
        let m = self.lock_shared();
        let hull = self.arm::<F>(&m, &log)?;
        drop(m);
        self.flush_hull(hull);
        Ok(())
    }

    /// Write-protects every writable present page of `log`'s range, arming
    /// it first (a write fault in between finds it armed).
    fn arm<F: Format>(&self, m: &ReadGuard<'_, Maps>, log: &Log) -> Result<Hull> {
        let _ = m;
        let w = self.walker::<F>();
        let mut hull = Hull::default();
        let mut it = Iter::root(&w, log.start, log.end, Descend::Present)?;
        while let Some(v) = it.next()? {
            let Visit::Slot(s) = v else { continue };
            match format::decode::<F>(s.raw, s.level) {
                Entry::Leaf { .. } if s.level > 0 => return Err(Error::Internal),
                Entry::Leaf { .. } if writable::<F>(s.raw) => {
                    log.set(&self.hooks, Map::Armed, s.base)?;
                    let want = without_write::<F>(s.raw)?;
                    if s.entry
                        .compare_exchange(s.raw, want, Ordering::AcqRel, Ordering::Acquire)
                        .is_err()
                    {
                        it.retry();
                        continue;
                    }
                    hull.note(s.base, s.span_end());
                }
                _ => {}
            }
        }
        Ok(hull)
    }

    /// Ends dirty logging of every logged range inside `[gpa, gpa + size)`:
    /// armed pages get write back (no flush: a right is only added), the
    /// bitmaps go back. A logged range only partly inside → `Invalid`.
    pub fn dirty_log_stop(&self, gpa: u64, size: u64) -> Result {
        let (start, end) = self.config.range(gpa, size)?;
        let (s, e) = (start.as_usize(), end.as_usize());
        let removed = {
            let mut m = self.lock_exclusive();
            if m.claims.overlaps(s, e, None) {
                return Err(Error::Busy);
            }
            let removed = m.logs.remove_within(s, e)?;
            let Maps { regions, logs, .. } = &mut *m;
            for log in removed.iter().flatten() {
                with_format!(self.config.format, F => self.disarm::<F>(log))?;
                // A region another logged range still overlaps stays routed.
                let (ls, le) = (Gpa::from_usize(log.start), Gpa::from_usize(log.end));
                regions.set_backends(ls, le, |r| match r.backend {
                    Backend::AllocLogged
                        if !logs.overlaps(r.start.as_usize(), r.end.as_usize()) =>
                    {
                        Backend::Alloc
                    }
                    b => b,
                })?;
            }
            removed
        };
        for log in removed.into_iter().flatten() {
            // SAFETY: out of the registry, and the lock that let readers
            // reach it was released.
            unsafe { log.free(&self.hooks) };
        }
        Ok(())
    }

    /// Gives write back to every armed present page of `log`'s range
    /// (under the exclusive lock).
    fn disarm<F: Format>(&self, log: &Log) -> Result {
        let w = self.walker::<F>();
        let mut it = Iter::root(&w, log.start, log.end, Descend::Present)?;
        while let Some(v) = it.next()? {
            let Visit::Slot(s) = v else { continue };
            if s.level == 0
                && matches!(format::decode::<F>(s.raw, 0), Entry::Leaf { .. })
                && !writable::<F>(s.raw)
                && log.test(&self.hooks, Map::Armed, s.base)?
            {
                let r = format::leaf_rights::<F>(s.raw) | Flags::WRITE.bits();
                let want = F::with_rights(
                    s.raw,
                    Flags::from_bits(r).ok_or(Error::Internal)?.to_mapping(),
                );
                // The hardware may set A/D meanwhile: retry from it.
                if s.entry
                    .compare_exchange(s.raw, want, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
                {
                    it.retry();
                }
            }
        }
        Ok(())
    }

    /// Which pages of `[gpa, gpa + size)` — inside one logged range — were
    /// written since last reported; with `clear`, they are reported now:
    /// re-armed, and one flush covers them before this returns.
    pub fn dirty_log_get(&self, gpa: u64, size: u64, out: &mut [u64], clear: bool) -> Result {
        let (start, end) = self.config.range(gpa, size)?;
        if out.len() < Self::bitmap_words(start, end) {
            return Err(Error::Invalid);
        }
        let m = self.lock_shared();
        let log = *m
            .logs
            .covering(start.as_usize(), end.as_usize())
            .ok_or(Error::Invalid)?;
        let pages = (end.as_usize() - start.as_usize()) / FRAME_SIZE;
        let hull = with_format!(self.config.format, F => {
            let w = self.walker::<F>();
            let mut hull = Hull::default();
            let off = (start.as_usize() - log.start) / FRAME_SIZE;
            // A range on a word boundary of the log (a whole logged range,
            // the common case) reads the bitmap word by word, each frame
            // resolved once: a clean GiB is 4,096 loads.
            let mut frame: &[core::sync::atomic::AtomicU64] = &[];
            for (k, word) in out.iter_mut().enumerate().take(pages.div_ceil(64)) {
                let first = start.as_usize() + k * 64 * FRAME_SIZE;
                let n = (pages - k * 64).min(64);
                let bits = if off.is_multiple_of(64) {
                    let b = off + k * 64;
                    if frame.is_empty() {
                        frame = log.words(&self.hooks, Map::Dirty, b)?;
                    }
                    let (w0, rest) = frame.split_first().ok_or(Error::Internal)?;
                    frame = rest;
                    let mask = if n == 64 { !0 } else { (1u64 << n) - 1 };
                    let v = w0.load(Ordering::Acquire) & mask;
                    if clear && v != 0 {
                        w0.fetch_and(!mask, Ordering::AcqRel) & mask
                    } else {
                        v
                    }
                } else {
                    log.bits(&self.hooks, Map::Dirty, first, n, clear)?
                };
                *word = bits;
                if clear && bits != 0 {
                    Self::rearm::<F>(&w, first, bits, &mut hull)?;
                }
            }
            Ok::<Hull, Error>(hull)
        })?;
        drop(m);
        self.flush_hull(hull);
        Ok(())
    }

    /// Write-protects again the pages whose bit is set in `bits` (bit `i`:
    /// the page at `first + i * 4096`) that are writable now.
    fn rearm<F: Format>(w: &Walker<'_, F>, first: usize, mut bits: u64, hull: &mut Hull) -> Result {
        while bits != 0 {
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let gpa = first + i * FRAME_SIZE;
            let Some(f) = w.find(Gpa::from_usize(gpa))? else {
                continue;
            };
            let mut raw = f.raw;
            while f.level == 0
                && matches!(format::decode::<F>(raw, 0), Entry::Leaf { .. })
                && writable::<F>(raw)
            {
                match f.entry.compare_exchange(
                    raw,
                    without_write::<F>(raw)?,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => {
                        hull.note(gpa, gpa + FRAME_SIZE);
                        break;
                    }
                    Err(now) => raw = now,
                }
            }
        }
        Ok(())
    }

    /// Which pages of `[gpa, gpa + size)` (regions must cover it) the guest
    /// or a hypervisor copy accessed since their accessed bit was last
    /// cleared; with `clear`, clears it in every leaf the range covers whole,
    /// and one flush covers those before this returns.
    pub fn young_get(&self, gpa: u64, size: u64, out: &mut [u64], clear: bool) -> Result {
        let (start, end) = self.config.range(gpa, size)?;
        if out.len() < Self::bitmap_words(start, end) {
            return Err(Error::Invalid);
        }
        let m = self.lock_shared();
        Self::check_covered(&m.regions, start, end)?;
        out.iter_mut().for_each(|w| *w = 0);
        let s0 = start.as_usize();
        let hull = with_format!(self.config.format, F => {
            let w = self.walker::<F>();
            let mut hull = Hull::default();
            let mut it = Iter::root(&w, s0, end.as_usize(), Descend::Present)?;
            while let Some(v) = it.next()? {
                let Visit::Slot(s) = v else { continue };
                if !matches!(format::decode::<F>(s.raw, s.level), Entry::Leaf { .. })
                    || s.raw & F::ACCESSED == 0
                {
                    continue;
                }
                set_bits(out, (s.lo - s0) / FRAME_SIZE, (s.hi - s0) / FRAME_SIZE)?;
                if clear && s.whole() {
                    if s.entry
                        .compare_exchange(s.raw, s.raw & !F::ACCESSED, Ordering::AcqRel, Ordering::Acquire)
                        .is_err()
                    {
                        // Changed meanwhile (the hardware, a fault): read
                        // it again; its bits are reported once.
                        it.retry();
                        continue;
                    }
                    hull.note(s.base, s.span_end());
                }
            }
            Ok::<Hull, Error>(hull)
        })?;
        drop(m);
        self.flush_hull(hull);
        Ok(())
    }

    /// Which pages of `[gpa, gpa + size)` hold a page: a frame installed
    /// (alloc; sealed pages too), or a linear mapping. Gaps read 0.
    pub fn present_bitmap(&self, gpa: u64, size: u64, out: &mut [u64]) -> Result {
        let (start, end) = self.config.range(gpa, size)?;
        if out.len() < Self::bitmap_words(start, end) {
            return Err(Error::Invalid);
        }
        let m = self.lock_shared();
        out.iter_mut().for_each(|w| *w = 0);
        let s0 = start.as_usize();
        with_format!(self.config.format, F => {
            let w = self.walker::<F>();
            let mut it = Iter::root(&w, s0, end.as_usize(), Descend::Present)?;
            while let Some(v) = it.next()? {
                let Visit::Slot(s) = v else { continue };
                if matches!(
                    format::decode::<F>(s.raw, s.level),
                    Entry::Leaf { .. } | Entry::Sealed { .. }
                ) {
                    set_bits(out, (s.lo - s0) / FRAME_SIZE, (s.hi - s0) / FRAME_SIZE)?;
                }
            }
            Ok::<(), Error>(())
        })?;
        drop(m);
        Ok(())
    }

    /// What a hypervisor copy reaches at `gpa` (as `translate_locked`), with
    /// the access recorded in a present leaf's accessed bit.
    pub(super) fn copy_leaf<F: Format>(&self, gpa: Gpa) -> Result<Option<(Hpa, usize)>> {
        let w = self.walker::<F>();
        let Some(f) = w.find(gpa)? else {
            return Ok(None);
        };
        let hpa = match f.decode::<F>() {
            Entry::Leaf { hpa, .. } => {
                mark_accessed::<F>(f.entry, f.raw);
                hpa
            }
            Entry::Sealed { hpa, .. } => hpa,
            _ => return Ok(None),
        };
        let size = format::level_size(f.level);
        Ok(Some((
            Hpa::from_usize(hpa.as_usize() + (gpa.as_usize() & (size - 1))),
            size,
        )))
    }

    /// After `axalloc_write` of `[start, end)` (under the shared lock `m`
    /// the copy held): its logged pages are dirty.
    pub(super) fn mark_dirty(&self, m: &ReadGuard<'_, Maps>, start: Gpa, end: Gpa) -> Result {
        if m.logs.is_empty() {
            return Ok(());
        }
        let mut gpa = start.as_usize();
        while gpa < end.as_usize() {
            match m.logs.find(gpa) {
                Some(log) => {
                    let hi = log.end.min(end.as_usize());
                    log.set_range(&self.hooks, Map::Dirty, gpa, hi)?;
                    gpa = hi;
                }
                None => gpa += FRAME_SIZE,
            }
        }
        Ok(())
    }

    /// After a discard of `[start, end)`: its logged pages became zeros, so
    /// they are dirty (every page of the range: a never-touched one is
    /// reported too — a copy too many, never one too few).
    pub(super) fn discarded(&self, start: Gpa, end: Gpa) -> Result {
        self.mark_dirty(&self.lock_shared(), start, end)
    }
}
