//! Dirty logging's record: the logged ranges, and for each two bitmaps (one
//! bit per 4 KiB page) in frames from the hooks, like the dirty bitmap of a
//! KVM memslot:
//! - **dirty**: written — by the guest through the table, by
//!   `axalloc_write`, or emptied by a discard — since a get with
//!   `AXALLOC_BITMAP_CLEAR` last reported it;
//! - **armed**: the page's own rights include write but, while logged, its
//!   present entry lacks it until the guest's first write: a write fault on
//!   an armed page gives write back, marks the page dirty and is answered
//!   `AXALLOC_OK`. Armed bits record rights, so they only change with them
//!   (a fault installing the page, protect), never in a get.
//!
//! A range's bitmaps hang off one directory frame: entries `0..256` name the
//! dirty bitmap's frames, `256..512` the armed one's (32,768 pages each), so
//! one range covers at most 8 Mi pages (32 GiB). Bits are read and changed
//! with atomics under the address space's shared lock; the registry itself
//! changes under the exclusive lock, and a range's frames are given back
//! only after it left the registry and the lock was released (no reader can
//! hold them then; hardware never sees them).

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::addr::{FRAME_SIZE, Hpa};
use crate::error::{Error, Result};
use crate::hooks::Hooks;
use crate::zero;

/// Logged ranges one address space can have at once.
pub const MAX_LOGS: usize = 8;
/// Pages one bitmap frame covers.
const PAGES_PER_FRAME: usize = FRAME_SIZE * 8;
/// Bitmap frames per bitmap (half a directory).
const FRAMES_PER_MAP: usize = FRAME_SIZE / 8 / 2;
/// The largest logged range, in pages.
pub const MAX_PAGES: usize = PAGES_PER_FRAME * FRAMES_PER_MAP;

/// Which bitmap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Map {
    /// Written since last reported.
    Dirty = 0,
    /// Writable by rights, write-protected while logged.
    Armed = 1,
}

/// One logged range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Log {
    /// `[start, end)`, page-aligned.
    pub start: usize,
    /// See `start`.
    pub end: usize,
    /// The directory frame.
    dir: Hpa,
}

impl Log {
    fn pages(&self) -> usize {
        (self.end - self.start) / FRAME_SIZE
    }

    fn frames(&self) -> usize {
        self.pages().div_ceil(PAGES_PER_FRAME)
    }

    /// True if `gpa` lies in the range.
    #[inline]
    pub fn contains(&self, gpa: usize) -> bool {
        self.start <= gpa && gpa < self.end
    }

    /// Obtains and zeroes a directory and both bitmaps for `[start, end)`
    /// (no lock needed: nobody sees them yet). All or nothing.
    pub fn alloc(hooks: &Hooks, start: usize, end: usize) -> Result<Log> {
        if (end - start) / FRAME_SIZE > MAX_PAGES {
            return Err(Error::Limit);
        }
        let dir = hooks.alloc_frame()?;
        let log = Log { start, end, dir };
        let dir_view = match log.dir_view(hooks) {
            Ok(v) => v,
            Err(e) => {
                // SAFETY: obtained above, never shown to anyone.
                unsafe { hooks.free_frame(dir) };
                return Err(e);
            }
        };
        for e in dir_view.iter() {
            e.store(0, Ordering::Relaxed);
        }
        for map in [Map::Dirty, Map::Armed] {
            for i in 0..log.frames() {
                let frame = match hooks.alloc_frame().and_then(|f| {
                    let v = hooks.virt(f);
                    v.map(|p| (f, p)).inspect_err(|_| {
                        // SAFETY: just obtained, never shown to anyone.
                        unsafe { hooks.free_frame(f) }
                    })
                }) {
                    Ok(f) => f,
                    Err(e) => {
                        // SAFETY: the directory names only frames obtained
                        // here; nobody else has seen any of them.
                        unsafe { log.free(hooks) };
                        return Err(e);
                    }
                };
                // SAFETY: a fresh frame of ours, page-aligned, that nothing
                // else references.
                unsafe { zero::zero_frame(frame.1) };
                let slot = dir_view
                    .get(map as usize * FRAMES_PER_MAP + i)
                    .ok_or(Error::Internal)?;
                // Bit 0 marks a named frame (frame 0 is a real frame).
                slot.store(frame.0.as_u64() | 1, Ordering::Relaxed);
            }
        }
        Ok(log)
    }

    /// Gives back the directory and every bitmap frame it names.
    ///
    /// # Safety
    /// From [`Log::alloc`] with these hooks; no longer in any registry and
    /// no thread can be reading it (the lock that kept it was released).
    pub unsafe fn free(self, hooks: &Hooks) {
        if let Ok(dir) = self.dir_view(hooks) {
            for e in dir.iter() {
                let v = e.load(Ordering::Relaxed);
                if v & 1 != 0 {
                    // SAFETY: per this function's contract.
                    unsafe { hooks.free_frame(Hpa::from_u64(v & !1)) };
                }
            }
        }
        // SAFETY: per this function's contract.
        unsafe { hooks.free_frame(self.dir) };
    }

    fn dir_view<'h>(&self, hooks: &'h Hooks) -> Result<&'h [AtomicU64]> {
        let p = hooks.virt(self.dir)?.cast::<AtomicU64>();
        // SAFETY: the directory is a whole, page-aligned frame of ours
        // (`Hooks::virt` checks alignment) that lives until `free`; all
        // access is atomic.
        Ok(unsafe { core::slice::from_raw_parts(p.as_ptr(), FRAME_SIZE / 8) })
    }

    /// A pointer to the word holding bit `bit` (a page index from `start`)
    /// of `map`, derived from its bitmap frame's host view (so it may reach
    /// the rest of that frame), and the words left from it to the frame's end.
    fn word_ptr(&self, hooks: &Hooks, map: Map, bit: usize) -> Result<(NonNull<AtomicU64>, usize)> {
        let frame = self
            .dir_view(hooks)?
            .get(map as usize * FRAMES_PER_MAP + bit / PAGES_PER_FRAME)
            .ok_or(Error::Internal)?
            .load(Ordering::Relaxed);
        if frame & 1 == 0 {
            return Err(Error::Internal);
        }
        let words = hooks.virt(Hpa::from_u64(frame & !1))?.cast::<AtomicU64>();
        let i = (bit % PAGES_PER_FRAME) / 64;
        // SAFETY: `i` < 512: inside the whole bitmap frame `words` views.
        Ok((unsafe { words.add(i) }, FRAME_SIZE / 8 - i))
    }

    /// The word holding bit `bit` of `map`.
    fn word<'h>(&self, hooks: &'h Hooks, map: Map, bit: usize) -> Result<&'h AtomicU64> {
        let (p, _) = self.word_ptr(hooks, map, bit)?;
        // SAFETY: a word of a bitmap frame of this log (named by its
        // directory), alive until `free`; all access is atomic.
        Ok(unsafe { p.as_ref() })
    }

    /// The words of `map` from bit `bit` (a multiple of 64, a page index
    /// from `start`) to the end of its bitmap frame: the scan of a get
    /// resolves each frame once, not each word.
    pub fn words<'h>(&self, hooks: &'h Hooks, map: Map, bit: usize) -> Result<&'h [AtomicU64]> {
        let (p, left) = self.word_ptr(hooks, map, bit)?;
        // SAFETY: `left` words from `p` end at the end of a whole bitmap
        // frame of this log, which `p`'s provenance covers (derived from the
        // frame's host view); alive until `free`; all access is atomic.
        Ok(unsafe { core::slice::from_raw_parts(p.as_ptr(), left) })
    }

    fn bit(&self, gpa: usize) -> Result<usize> {
        if !self.contains(gpa) {
            return Err(Error::Internal);
        }
        Ok((gpa - self.start) / FRAME_SIZE)
    }

    /// Sets the bit of the page at `gpa`.
    pub fn set(&self, hooks: &Hooks, map: Map, gpa: usize) -> Result {
        let b = self.bit(gpa)?;
        let w = self.word(hooks, map, b)?;
        let m = 1u64 << (b % 64);
        if w.load(Ordering::Relaxed) & m == 0 {
            w.fetch_or(m, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Clears the bit of the page at `gpa`.
    pub fn clear(&self, hooks: &Hooks, map: Map, gpa: usize) -> Result {
        let b = self.bit(gpa)?;
        let w = self.word(hooks, map, b)?;
        let m = 1u64 << (b % 64);
        if w.load(Ordering::Relaxed) & m != 0 {
            w.fetch_and(!m, Ordering::AcqRel);
        }
        Ok(())
    }

    /// The bit of the page at `gpa`.
    pub fn test(&self, hooks: &Hooks, map: Map, gpa: usize) -> Result<bool> {
        let b = self.bit(gpa)?;
        Ok(self.word(hooks, map, b)?.load(Ordering::Acquire) & (1 << (b % 64)) != 0)
    }

    /// Sets the bits of every page in `[lo, hi)` (inside the range).
    pub fn set_range(&self, hooks: &Hooks, map: Map, lo: usize, hi: usize) -> Result {
        let mut gpa = lo;
        while gpa < hi {
            let b = self.bit(gpa)?;
            let n = (64 - b % 64).min((hi - gpa) / FRAME_SIZE);
            let m = if n == 64 {
                !0
            } else {
                ((1u64 << n) - 1) << (b % 64)
            };
            self.word(hooks, map, b)?.fetch_or(m, Ordering::AcqRel);
            gpa += n * FRAME_SIZE;
        }
        Ok(())
    }

    /// The bits of the `n` (1..=64) pages from `gpa` (inside the range), bit
    /// `i` for `gpa + i * 4096`; with `take`, cleared as they are read (one
    /// atomic per source word: a bit set concurrently is either returned
    /// here or left for the next call, never lost).
    pub fn bits(&self, hooks: &Hooks, map: Map, gpa: usize, n: usize, take: bool) -> Result<u64> {
        let mut out = 0u64;
        let mut done = 0;
        while done < n {
            let b = self.bit(gpa + done * FRAME_SIZE)?;
            let k = (64 - b % 64).min(n - done);
            let mask = if k == 64 {
                !0
            } else {
                ((1u64 << k) - 1) << (b % 64)
            };
            let w = self.word(hooks, map, b)?;
            let v = if take && w.load(Ordering::Relaxed) & mask != 0 {
                w.fetch_and(!mask, Ordering::AcqRel)
            } else {
                w.load(Ordering::Acquire)
            };
            out |= ((v & mask) >> (b % 64)) << done;
            done += k;
        }
        Ok(out)
    }
}

/// The logged ranges of an address space (under its lock).
#[derive(Default)]
pub struct Logs {
    slots: [Option<Log>; MAX_LOGS],
}

impl Logs {
    /// None.
    pub const fn new() -> Self {
        Self {
            slots: [None; MAX_LOGS],
        }
    }

    /// True if no range is logged (the common case: one load).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.slots.iter().all(Option::is_none)
    }

    /// The logged range holding `gpa`.
    #[inline]
    pub fn find(&self, gpa: usize) -> Option<&Log> {
        self.slots.iter().flatten().find(|l| l.contains(gpa))
    }

    /// The logged range holding all of `[start, end)`.
    pub fn covering(&self, start: usize, end: usize) -> Option<&Log> {
        self.slots
            .iter()
            .flatten()
            .find(|l| l.start <= start && end <= l.end)
    }

    /// True if a logged range overlaps `[start, end)`.
    pub fn overlaps(&self, start: usize, end: usize) -> bool {
        self.slots
            .iter()
            .flatten()
            .any(|l| l.start < end && start < l.end)
    }

    /// True if another range fits.
    pub fn has_room(&self) -> bool {
        self.slots.iter().any(Option::is_none)
    }

    /// Adds `log` (`Limit` when full).
    pub fn insert(&mut self, log: Log) -> Result {
        let slot = self
            .slots
            .iter_mut()
            .find(|s| s.is_none())
            .ok_or(Error::Limit)?;
        *slot = Some(log);
        Ok(())
    }

    /// Removes and returns every range inside `[start, end)`, or `Invalid`
    /// (nothing removed) if one only partly overlaps it.
    pub fn remove_within(&mut self, start: usize, end: usize) -> Result<[Option<Log>; MAX_LOGS]> {
        let partial = self
            .slots
            .iter()
            .flatten()
            .any(|l| l.start < end && start < l.end && !(start <= l.start && l.end <= end));
        if partial {
            return Err(Error::Invalid);
        }
        let mut out = [None; MAX_LOGS];
        for (slot, o) in self.slots.iter_mut().zip(out.iter_mut()) {
            if slot.is_some_and(|l| start <= l.start && l.end <= end) {
                *o = slot.take();
            }
        }
        Ok(out)
    }

    /// Removes and returns every range (destroy).
    pub fn take_all(&mut self) -> [Option<Log>; MAX_LOGS] {
        core::mem::replace(&mut self.slots, [None; MAX_LOGS])
    }
}
