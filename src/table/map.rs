//! Map: prepare, then commit (Hafnium), built for running without the lock.
//!
//! **Prepare** runs with no lock held, inside a range the operation has
//! claimed (`claims.rs`: no other map or unmap touches it, no table on its path
//! is freed meanwhile), while vCPUs fault elsewhere. It obtains and zeroes
//! everything and leaves nothing the hardware or a fault could act on:
//! - an empty entry the range covers whole gets a *parked* leaf or a parked,
//!   fully built subtree (parked = non-present; no fault targets the range);
//! - an empty entry the range shares with other addresses (an edge) gets a
//!   detached *spine*: a table built off to the side, remembered in
//!   [`Prepared`], because a fault next door may link a table there meanwhile.
//!
//! **Commit** (under the lock the caller's [`Shared`] token proves) cannot
//! fail short of a broken invariant: one fence for the streamed zeroing,
//! unpark every parked entry, then link each spine with a compare-exchange —
//! or, if a fault linked a table there meanwhile, merge the spine's entries
//! into it (entry by entry, compare-exchange from empty) and give the spine's
//! never-visible tables back after the lock is released ([`Walker::finish`]).
//! **Rollback** frees what prepare parked and built; nothing was ever
//! visible, so no flush is needed.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::addr::{FRAME_SIZE, Gpa, Hpa};
use crate::error::{Error, Result};
use crate::format::{self, Entry, Format};
use crate::frames::Frames;
use crate::sync::Shared;
use crate::zero;

use super::iter::{Descend, Iter, MAX_LEVELS, Visit};
use super::{ENTRIES, Walker};

/// Produces the leaves of a mapping (one per backend, see `backend/`).
pub trait LeafSource<F: Format> {
    /// Map calls on ranges where present leaves may already exist (they are
    /// kept, and faults may install more meanwhile): write-populate fills the
    /// holes of a lazy region.
    const FILL_HOLES: bool;
    /// May one leaf at `level` (> 0) map the whole slot starting at `gpa`?
    fn huge_ok(&self, gpa: Gpa, level: usize) -> bool;
    /// The leaf for the slot at `level` starting at `gpa` (allocating its
    /// frame from `frames`, if the backend owns frames; the walker zeroes
    /// owned frames before they can become visible).
    fn leaf(&mut self, frames: &Frames<'_>, gpa: Gpa, level: usize) -> Result<u64>;
    /// The rights a lazy entry's page (`FILL_HOLES`) is installed with,
    /// given the entry's: dirty logging takes write away until the guest's
    /// first write.
    fn lazy_rights(&mut self, _gpa: Gpa, rights: u32) -> Result<u32> {
        Ok(rights)
    }
    /// The leaf for the whole, empty slot at `level` (> 0) starting at
    /// `gpa`, or `None` to build a table of smaller leaves there instead.
    /// Sources that allocate huge pages decide here, where a failed
    /// allocation can still fall back (`AXALLOC_HUGE`: no block, 4 KiB
    /// frames).
    fn huge_leaf(&mut self, frames: &Frames<'_>, gpa: Gpa, level: usize) -> Result<Option<u64>> {
        if self.huge_ok(gpa, level) {
            self.leaf(frames, gpa, level).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// A detached table built for an empty entry the range shares.
#[derive(Clone, Copy)]
struct Spine<'t> {
    entry: &'t AtomicU64,
    seen: u64,
    table: Hpa,
    /// The commit merged it into a live table: what was not moved (the
    /// spine's own tables, leaves a fault beat) is freed by
    /// [`Walker::finish`], with no lock held.
    merged: bool,
    /// Level of the entry (the table sits one below).
    level: usize,
    base: usize,
}

/// What a prepare built off to the side, for commit or rollback.
pub struct Prepared<'t> {
    start: usize,
    end: usize,
    spines: [Option<Spine<'t>>; 2 * MAX_LEVELS],
}

impl Prepared<'_> {
    /// Nothing prepared yet, for `[start, end)`.
    pub fn new(start: Gpa, end: Gpa) -> Self {
        Self {
            start: start.as_usize(),
            end: end.as_usize(),
            spines: [None; 2 * MAX_LEVELS],
        }
    }
}

impl<'a, F: Format> Walker<'a, F> {
    /// Step 1 of a map: obtains everything, parks or detaches it, changes
    /// nothing the hardware or a fault can act on. Follow with
    /// [`Walker::commit`] or [`Walker::rollback`] (also after an error).
    pub fn prepare<'t, S: LeafSource<F>>(&'t self, p: &mut Prepared<'t>, src: &mut S) -> Result {
        let mut it = Iter::root(self, p.start, p.end, Descend::Present)?;
        while let Some(v) = it.next()? {
            let Visit::Slot(s) = v else { continue };
            let level = s.level;
            match format::decode::<F>(s.raw, level) {
                Entry::Table(_) if level > 0 => {}
                Entry::Leaf { .. } | Entry::Sealed { .. } if S::FILL_HOLES => it.step_over(),
                // A page never touched whose rights protect changed: its
                // frame gets those rights (none: it stays sealed), and a
                // rollback puts the lazy entry back (`Walker::after_release`).
                Entry::Lazy { rights } if S::FILL_HOLES && level == 0 => {
                    let rights = src.lazy_rights(Gpa::from_usize(s.lo), rights)?;
                    let leaf = src.leaf(&self.frames, Gpa::from_usize(s.lo), 0)?;
                    if let Err(e) = self.zero_if_owned(leaf, 0) {
                        // SAFETY: our leaf was never visible.
                        unsafe { self.release_entry(leaf, 0, s.base)? };
                        return Err(e);
                    }
                    let parked = if rights == 0 {
                        F::park(leaf) | F::LAZY | F::SEALED
                    } else {
                        let m = crate::flags::Flags::from_bits(rights)
                            .ok_or(Error::Internal)?
                            .to_mapping();
                        F::park(F::with_rights(leaf, m)) | F::LAZY
                    };
                    if s.entry
                        .compare_exchange(s.raw, parked, Ordering::AcqRel, Ordering::Acquire)
                        .is_err()
                    {
                        // A fault filled it first.
                        // SAFETY: our leaf was never visible.
                        unsafe { self.release_entry(leaf, 0, s.base)? };
                        it.retry();
                    }
                }
                // A mapping no region explains, or a parked entry inside
                // the claimed range: a broken invariant.
                Entry::Leaf { .. }
                | Entry::Sealed { .. }
                | Entry::Lazy { .. }
                | Entry::Parked
                | Entry::Table(_) => {
                    return Err(Error::Internal);
                }
                Entry::Empty => {
                    it.step_over();
                    let whole = s.whole();
                    let gpa = Gpa::from_usize(s.lo);
                    let leaf = if level == 0 {
                        Some(src.leaf(&self.frames, gpa, 0)?)
                    } else if whole {
                        src.huge_leaf(&self.frames, gpa, level)?
                    } else {
                        None
                    };
                    if let Some(leaf) = leaf {
                        if let Err(e) = self.zero_if_owned(leaf, level) {
                            // The host could not show us the frame (ERR_HOOK):
                            // it is in no entry yet, so give it back here.
                            // SAFETY: our leaf was never visible.
                            unsafe { self.release_entry(leaf, level, s.base)? };
                            return Err(e);
                        }
                        let parked = F::park(leaf);
                        if s.entry
                            .compare_exchange(s.raw, parked, Ordering::AcqRel, Ordering::Acquire)
                            .is_err()
                        {
                            // A fault filled the hole first (write-populate).
                            // SAFETY: our leaf was never visible.
                            unsafe { self.release_entry(leaf, level, s.base)? };
                            it.retry();
                        }
                        continue;
                    }
                    let table = self.frames.alloc_table()?;
                    if !whole {
                        // Remembered before it is built, so a rollback frees
                        // it even when building fails half-way.
                        let free = p.spines.iter_mut().find(|x| x.is_none());
                        let Some(free) = free else {
                            // SAFETY: never linked.
                            unsafe { self.frames.free_table(table) };
                            return Err(Error::Internal);
                        };
                        *free = Some(Spine {
                            entry: s.entry,
                            seen: s.raw,
                            table,
                            merged: false,
                            level,
                            base: s.base,
                        });
                        self.build(table, level - 1, s.base, s.lo, s.hi, src)?;
                        continue;
                    }
                    let built = self.build(table, level - 1, s.base, s.lo, s.hi, src);
                    let link = F::park(format::table::<F>(table));
                    let linked = built.and_then(|()| {
                        s.entry
                            .compare_exchange(s.raw, link, Ordering::AcqRel, Ordering::Acquire)
                            .map_err(|_| Error::Internal)
                    });
                    if let Err(e) = linked {
                        // SAFETY: the subtree was never linked.
                        unsafe { self.release_subtree(table, level - 1, s.base)? };
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }

    /// Fills the fresh, detached table `table` (at `level`, spanning from
    /// `base`) for `[lo, hi)`. No hardware or fault can reach it yet, so
    /// plain stores do.
    fn build<S: LeafSource<F>>(
        &self,
        table: Hpa,
        level: usize,
        base: usize,
        lo: usize,
        hi: usize,
        src: &mut S,
    ) -> Result {
        let mut it = Iter::new(self, (table, level, base), lo, hi, Descend::Present)?;
        while let Some(v) = it.next()? {
            let Visit::Slot(s) = v else { continue };
            let gpa = Gpa::from_usize(s.lo);
            let leaf = if s.level == 0 {
                Some(src.leaf(&self.frames, gpa, 0)?)
            } else if s.whole() {
                src.huge_leaf(&self.frames, gpa, s.level)?
            } else {
                None
            };
            if let Some(leaf) = leaf {
                s.entry.store(leaf, Ordering::Relaxed);
                self.zero_if_owned(leaf, s.level)?;
                continue;
            }
            let new = self.frames.alloc_table()?;
            let link = format::table::<F>(new);
            s.entry.store(link, Ordering::Relaxed);
            if s.level == 1 {
                // The hot loop of every populate: a whole leaf table.
                it.step_over();
                self.fill_leaves(new, s.lo, s.hi, src)?;
            } else {
                it.set(link);
            }
        }
        Ok(())
    }

    /// Fills the leaf table `table` for `[lo, hi)`, then zeroes its frames in
    /// one uninterrupted stream (measurably faster than zeroing between hook
    /// calls and entry stores).
    fn fill_leaves<S: LeafSource<F>>(
        &self,
        table: Hpa,
        lo: usize,
        hi: usize,
        src: &mut S,
    ) -> Result {
        let view = self.view(table, 0)?;
        let first = (lo >> 12) % ENTRIES;
        let slots = view
            .get(first..first + ((hi - lo) >> 12))
            .ok_or(Error::Internal)?;
        let mut gpa = lo;
        for slot in slots {
            slot.store(
                src.leaf(&self.frames, Gpa::from_usize(gpa), 0)?,
                Ordering::Relaxed,
            );
            gpa += FRAME_SIZE;
        }
        if self.frames.guest_frames_need_work() {
            for slot in slots {
                self.zero_if_owned(slot.load(Ordering::Relaxed), 0)?;
            }
        }
        Ok(())
    }

    /// Zeroes the frame of an owned leaf a [`LeafSource`] just produced
    /// (sources hand out unzeroed frames; see `Frames::alloc_guest_unzeroed`).
    fn zero_if_owned(&self, leaf: u64, level: usize) -> Result {
        if level == 1
            && let Some((block, _)) = format::block_of::<F>(leaf, level)
        {
            let exec = self.frames.hooks().cache().active() && crate::cache::leaf_exec::<F>(leaf);
            return self.frames.zero_guest_block(block, exec);
        }
        match format::decode::<F>(leaf, level) {
            Entry::Leaf { hpa, owned: true } => {
                // Arm: zeroed and cleaned before it can become present.
                let exec =
                    self.frames.hooks().cache().active() && crate::cache::leaf_exec::<F>(leaf);
                self.frames.zero_guest(hpa, exec)
            }
            _ => Ok(()),
        }
    }

    /// Step 2 of a map: makes everything prepared visible. Does not allocate;
    /// fails only on a broken invariant.
    pub fn commit<S: LeafSource<F>>(&self, _locked: Shared<'_>, p: &mut Prepared<'_>) -> Result {
        // One fence for every frame zeroed with streaming stores.
        zero::streaming_fence();
        let mut it = Iter::root(self, p.start, p.end, Descend::Present)?;
        while let Some(v) = it.next()? {
            let Visit::Slot(s) = v else { continue };
            if F::is_parked(s.raw) {
                it.step_over();
                // Release: the leaf's frame / the subtree before the entry.
                s.entry.store(Self::after_commit(s.raw), Ordering::Release);
            }
        }
        for spine in p.spines.iter_mut().flatten() {
            let link = format::table::<F>(spine.table);
            match spine.entry.compare_exchange(
                spine.seen,
                link,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {}
                Err(now) => match format::decode::<F>(now, spine.level) {
                    Entry::Table(live) => {
                        spine.merged = true;
                        self.merge::<S>(live, spine.table, spine.level - 1)?;
                    }
                    _ => return Err(Error::Internal),
                },
            }
        }
        Ok(())
    }

    /// Moves the entries of our detached table `ours` into the live table
    /// `live` (both at `level`), entry by entry with compare-exchange from
    /// empty, since faults next door work in `live` meanwhile. A moved entry
    /// is cleared in `ours`; what stays (our tables whose entries moved one
    /// level down, leaves a fault beat us to) is freed by [`Walker::finish`]
    /// after the lock is released — never under it. Depth is bounded by the
    /// number of levels.
    fn merge<S: LeafSource<F>>(&self, live: Hpa, ours: Hpa, level: usize) -> Result {
        let live_view = self.view(live, level)?;
        for (i, e) in self.view(ours, level)?.iter().enumerate() {
            let raw = e.load(Ordering::Relaxed);
            if raw == F::EMPTY {
                continue;
            }
            let slot = live_view.get(i).ok_or(Error::Internal)?;
            match slot.compare_exchange(F::EMPTY, raw, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => e.store(F::EMPTY, Ordering::Relaxed),
                Err(now) => match (
                    format::decode::<F>(now, level),
                    format::decode::<F>(raw, level),
                ) {
                    (Entry::Table(l), Entry::Table(o)) if level > 0 => {
                        self.merge::<S>(l, o, level - 1)?
                    }
                    // A fault linked a leaf table where we prepared a
                    // 2 MiB block (write-populate, prefault): the block's
                    // pieces fill the table's holes instead.
                    (Entry::Table(l), Entry::Leaf { .. }) if S::FILL_HOLES && level == 1 => {
                        if self.merge_block(l, raw)? {
                            e.store(F::EMPTY, Ordering::Relaxed);
                        }
                    }
                    // A fault filled the hole first (write-populate): ours
                    // stays behind for `finish`.
                    (Entry::Leaf { .. }, _) if S::FILL_HOLES => {}
                    _ => return Err(Error::Internal),
                },
            }
        }
        Ok(())
    }

    /// Moves the pieces of the never-visible 2 MiB block leaf `block` into
    /// the holes of the live leaf table `live` (compare-exchange from
    /// empty). True if at least one moved: the block then lives in the
    /// table (freed with its last piece, see `unmap.rs`); false leaves it
    /// to [`Walker::finish`].
    fn merge_block(&self, live: Hpa, block: u64) -> Result<bool> {
        let mut moved = false;
        for (i, slot) in self.view(live, 0)?.iter().enumerate() {
            let child = F::child(block, 1, i);
            moved |= slot
                .compare_exchange(F::EMPTY, child, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
        }
        Ok(moved)
    }

    /// Step 3 of a map, with no lock held: frees what merged spines kept
    /// (never visible to the hardware).
    pub fn finish(&self, p: &Prepared<'_>) -> Result {
        for spine in p.spines.iter().flatten().filter(|s| s.merged) {
            // SAFETY: a merged spine's table was never linked; what it still
            // holds was never moved into the live table.
            unsafe { self.release_subtree(spine.table, spine.level - 1, spine.base)? };
        }
        Ok(())
    }

    /// Undoes a prepare: frees every parked frame and subtree and every
    /// spine. Nothing was visible, so no flush is needed.
    pub fn rollback(&self, p: &Prepared<'_>) -> Result {
        // SAFETY: parked entries in the claimed range are this prepare's and
        // were never present; spines were never linked.
        unsafe {
            self.release_parked(p.start, p.end)?;
            for spine in p.spines.iter().flatten() {
                self.release_subtree(spine.table, spine.level - 1, spine.base)?;
            }
        }
        Ok(())
    }
}
