//! The format-independent table walker: everything that reads or changes the
//! stage-2 table, for any [`Format`].
//!
//! Entries are `AtomicU64`s: vCPUs fault concurrently (under the address
//! space's *shared* lock) and the hardware sets accessed/dirty bits at any
//! time. The rules, after KVM's TDP MMU and Hafnium:
//!
//! - **Concurrent paths** (fault; translate and copies only read) only ever
//!   turn an empty entry into a present one, with compare-exchange, using
//!   tables and a frame obtained before the first one is linked (so a failed
//!   allocation changes nothing). A table that loses a race was never visible
//!   and goes back unseen.
//! - **Exclusive paths** (map, unmap; write-locked) **prepare, then commit**.
//!   Map prepares every entry it will add as a *parked* (non-present) entry and
//!   builds new subtrees detached from the live table, so a failure is undone
//!   without the hardware ever having seen anything (no flush); the commit only
//!   flips parked entries to present and cannot fail. Unmap first detaches
//!   (present → parked, remembering what to free), then the caller flushes
//!   once, then [`Walker::reclaim`] frees frames and emptied tables.
//! - The tables themselves are the only record: no side lists, no allocator.

use core::marker::PhantomData;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::addr::{FRAME_SIZE, Gpa, Hpa};
use crate::error::{Error, Result};
use crate::format::{self, Entry, Format, level_size};
use crate::frames::Frames;
use crate::hooks::Hooks;
use crate::stats::Counters;
use crate::zero;

/// Entries in a non-root table.
const ENTRIES: usize = FRAME_SIZE / 8;

/// Produces the leaves of a mapping (one per backend, see `backend/`).
pub trait LeafSource<F: Format> {
    /// Map calls on ranges where present leaves may already exist (they are
    /// kept): write-populate fills the holes of a lazy region.
    const FILL_HOLES: bool;
    /// May one leaf at `level` (> 0) map the whole slot starting at `gpa`?
    fn huge_ok(&self, gpa: Gpa, level: usize) -> bool;
    /// The leaf for the slot at `level` starting at `gpa` (allocating its
    /// frame from `frames`, if the backend owns frames; the walker zeroes
    /// owned frames before they can become visible).
    fn leaf(&mut self, frames: &Frames<'_>, gpa: Gpa, level: usize) -> Result<u64>;
}

/// What a fault's walk found.
pub enum Probe<'t> {
    /// A leaf maps the address already.
    Present,
    /// Every table exists; this empty 4 KiB entry (holding the value seen)
    /// is where the leaf goes.
    Slot(&'t AtomicU64, u64),
    /// This many tables are missing on the way down (another fault may add
    /// some meanwhile, never remove them: an upper bound for
    /// [`Walker::install_leaf`]).
    Missing(usize),
}

/// What removing a range did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Detached {
    /// Lowest and one-past-highest guest-physical address of a removed present
    /// entry; `lo == hi` when nothing present was removed (no flush owed).
    pub lo: usize,
    /// See `lo`.
    pub hi: usize,
}

impl Detached {
    fn note(&mut self, a: usize, b: usize) {
        if self.lo == self.hi {
            (self.lo, self.hi) = (a, b);
        } else {
            self.lo = self.lo.min(a);
            self.hi = self.hi.max(b);
        }
    }
    /// True if a flush is owed before anything is freed.
    pub fn needs_flush(&self) -> bool {
        self.lo != self.hi
    }
}

/// Zeroed table frames obtained before a change starts (KVM's "memory
/// cache"): a fault or a split takes what it needs from here, so it either
/// gets everything up front or changes nothing. Tables left over were never
/// linked and go straight back ([`Walker::release_pool`]).
#[derive(Default)]
pub struct TablePool {
    tables: [Option<Hpa>; 4],
}

impl TablePool {
    /// An empty pool.
    pub const fn new() -> Self {
        Self { tables: [None; 4] }
    }
    fn take(&mut self) -> Option<Hpa> {
        self.tables.iter_mut().find_map(Option::take)
    }
    fn put_back(&mut self, t: Hpa) -> Result {
        let free = self.tables.iter_mut().find(|t| t.is_none());
        *free.ok_or(Error::Internal)? = Some(t);
        Ok(())
    }
}

/// A view of one address space's table for format `F`.
pub struct Walker<'a, F: Format> {
    frames: Frames<'a>,
    root: Hpa,
    /// The root's host-virtual address, resolved once per address space: every
    /// walk starts there, and `phys_to_virt` is stable for held frames.
    root_virt: NonNull<u8>,
    _format: PhantomData<F>,
}

/// Calls `f(index, a, b)` for every entry at `level` that overlaps `[s, e)`,
/// with `[a, b)` the overlap.
#[inline]
fn for_slots(
    level: usize,
    s: usize,
    e: usize,
    mut f: impl FnMut(usize, usize, usize) -> Result,
) -> Result {
    let size = level_size(level);
    let mut a = s;
    while a < e {
        let b = ((a & !(size - 1)) + size).min(e);
        f(a >> (12 + 9 * level), a, b)?;
        a = b;
    }
    Ok(())
}

impl<'a, F: Format> Walker<'a, F> {
    const TOP: usize = F::LEVELS - 1;

    /// A walker over the table rooted at `root`.
    pub fn new(
        hooks: &'a Hooks,
        counters: &'a Counters,
        (root, root_virt): (Hpa, NonNull<u8>),
        frames_zeroed: bool,
    ) -> Self {
        Self {
            frames: Frames::new(hooks, counters, frames_zeroed),
            root,
            root_virt,
            _format: PhantomData,
        }
    }

    /// Frame allocation and accounting for this operation.
    pub fn frames(&self) -> &Frames<'a> {
        &self.frames
    }

    /// Number of entries in a table at `level`.
    const fn entries(level: usize) -> usize {
        if level == F::LEVELS - 1 {
            ENTRIES << F::ROOT_ORDER
        } else {
            ENTRIES
        }
    }

    /// The entries of the table at `table` (which sits at `level`): one
    /// `phys_to_virt` call per table visited, not per entry.
    #[inline]
    fn view(&self, table: Hpa, level: usize) -> Result<&[AtomicU64]> {
        let base = if table == self.root {
            self.root_virt
        } else {
            self.frames.hooks().virt(table)?
        }
        .cast::<AtomicU64>();
        // SAFETY: `table` is a table frame this address space owns (reachable
        // from the root, or just allocated), `entries(level)` long, 8-byte
        // aligned (`Hooks::virt` checks); table frames are freed only under
        // the exclusive lock after a flush, so it outlives `&self` for every
        // caller that holds the lock. All access is atomic.
        Ok(unsafe { core::slice::from_raw_parts(base.as_ptr(), Self::entries(level)) })
    }

    /// The entry for `index` (an address shifted down to `level`); indices
    /// outside the table are an internal error, never a panic.
    #[inline]
    fn at(view: &[AtomicU64], level: usize, index: usize) -> Result<&AtomicU64> {
        let index = if level == Self::TOP {
            index
        } else {
            index % ENTRIES
        };
        view.get(index).ok_or(Error::Internal)
    }

    #[inline]
    fn slot(&self, table: Hpa, level: usize, index: usize) -> Result<&AtomicU64> {
        Self::at(self.view(table, level)?, level, index)
    }

    /// Allocates and zeroes a root table (`2^ROOT_ORDER` frames).
    pub fn create_root(hooks: &Hooks, counters: &Counters, frames_zeroed: bool) -> Result<Hpa> {
        if F::ROOT_ORDER != 0 {
            // Concatenated / x4 roots come with the ARM and RISC-V formats.
            return Err(Error::Unsupported);
        }
        Frames::new(hooks, counters, frames_zeroed).alloc_table()
    }

    // ----------------------------------------------------------------------
    // Reading
    // ----------------------------------------------------------------------

    /// The present leaf mapping `gpa`: its raw bits and level.
    pub fn lookup(&self, gpa: Gpa) -> Result<Option<(u64, usize)>> {
        if gpa.as_usize() >> F::GPA_BITS != 0 {
            return Ok(None);
        }
        let (_, raw, level) = self.descend(gpa)?;
        Ok(matches!(format::decode::<F>(raw, level), Entry::Leaf { .. }).then_some((raw, level)))
    }

    /// Walks from the root towards `gpa` through present tables and stops at
    /// the first entry that is not one: a leaf, an empty entry, or the 4 KiB
    /// entry. Returns that entry, the value read and its level. Read-only.
    fn descend(&self, gpa: Gpa) -> Result<(&AtomicU64, u64, usize)> {
        let gpa = gpa.as_usize();
        let mut table = self.root;
        let mut level = Self::TOP;
        loop {
            let slot = self.slot(table, level, gpa >> (12 + 9 * level))?;
            let raw = slot.load(Ordering::Acquire);
            match format::decode::<F>(raw, level) {
                Entry::Table(next) if level > 0 => {
                    table = next;
                    level -= 1;
                }
                _ => return Ok((slot, raw, level)),
            }
        }
    }

    // ----------------------------------------------------------------------
    // Concurrent install (shared lock)
    // ----------------------------------------------------------------------

    /// What a fault at `gpa` finds, in one walk.
    pub fn probe(&self, gpa: Gpa) -> Result<Probe<'_>> {
        let (slot, raw, level) = self.descend(gpa)?;
        match format::decode::<F>(raw, level) {
            Entry::Leaf { .. } => Ok(Probe::Present),
            Entry::Empty if level == 0 => Ok(Probe::Slot(slot, raw)),
            Entry::Empty => Ok(Probe::Missing(level)),
            // A parked entry outside an exclusive operation.
            _ => Err(Error::Internal),
        }
    }

    /// Installs the 4 KiB leaf `leaf` for `gpa` if nothing maps it yet,
    /// linking missing tables from `pool` (see [`Probe::Missing`]). Every store
    /// is a compare-exchange from empty, so concurrent faults are safe: a
    /// table that loses goes back to the pool, and `Ok(false)` means another
    /// fault (or a huge leaf) already maps `gpa` — `leaf` was not installed.
    pub fn install_leaf(&self, gpa: Gpa, leaf: u64, pool: &mut TablePool) -> Result<bool> {
        let gpa = gpa.as_usize();
        let mut table = self.root;
        let mut level = Self::TOP;
        while level > 0 {
            let slot = self.slot(table, level, gpa >> (12 + 9 * level))?;
            let raw = slot.load(Ordering::Acquire);
            table = match format::decode::<F>(raw, level) {
                Entry::Table(next) => next,
                Entry::Leaf { .. } => return Ok(false),
                Entry::Parked => return Err(Error::Internal),
                Entry::Empty => {
                    let new = pool.take().ok_or(Error::Internal)?;
                    let link = format::table::<F>(new);
                    match slot.compare_exchange(raw, link, Ordering::AcqRel, Ordering::Acquire) {
                        Ok(_) => new,
                        Err(now) => {
                            pool.put_back(new)?;
                            match format::decode::<F>(now, level) {
                                Entry::Table(next) => next,
                                Entry::Leaf { .. } => return Ok(false),
                                _ => return Err(Error::Internal),
                            }
                        }
                    }
                }
            };
            level -= 1;
        }
        let slot = self.slot(table, 0, gpa >> 12)?;
        let raw = slot.load(Ordering::Acquire);
        if format::decode::<F>(raw, 0) != Entry::Empty {
            return Ok(false);
        }
        // Release: the frame's zeroing is visible before the entry is.
        Ok(slot
            .compare_exchange(raw, leaf, Ordering::AcqRel, Ordering::Acquire)
            .is_ok())
    }

    // ----------------------------------------------------------------------
    // Map: prepare, then commit (exclusive lock)
    // ----------------------------------------------------------------------

    /// Maps `[start, end)` with leaves from `src`, all or nothing: on error
    /// everything this call obtained is given back, the table is as before,
    /// and no flush is needed because nothing present was ever changed.
    pub fn map_range<S: LeafSource<F>>(&self, start: Gpa, end: Gpa, src: &mut S) -> Result {
        match self.prepare_range(start, end, src) {
            Ok(()) => self.commit_range(start, end),
            Err(err) => {
                // Only fails on a broken invariant; the first error wins.
                let _ = self.rollback_range(start, end);
                Err(err)
            }
        }
    }

    /// Step 1 of a map: obtains everything, parks it, changes nothing the
    /// hardware can see. Follow with `commit_range` or `rollback_range` over
    /// the same range (also after an error).
    pub fn prepare_range<S: LeafSource<F>>(&self, start: Gpa, end: Gpa, src: &mut S) -> Result {
        self.prepare(self.root, Self::TOP, start.as_usize(), end.as_usize(), src)
    }

    /// Step 2 of a map: makes every parked entry present. Does not allocate.
    pub fn commit_range(&self, start: Gpa, end: Gpa) -> Result {
        // Frames were zeroed with streaming stores: order them before the
        // stores that make them reachable.
        zero::streaming_fence();
        self.commit(self.root, Self::TOP, start.as_usize(), end.as_usize())
    }

    /// Undoes `prepare_range`: frees every parked frame and subtree.
    pub fn rollback_range(&self, start: Gpa, end: Gpa) -> Result {
        self.rollback(self.root, Self::TOP, start.as_usize(), end.as_usize())
    }

    fn prepare<S: LeafSource<F>>(
        &self,
        table: Hpa,
        level: usize,
        s: usize,
        e: usize,
        src: &mut S,
    ) -> Result {
        let view = self.view(table, level)?;
        for_slots(level, s, e, |idx, a, b| {
            let slot = Self::at(view, level, idx)?;
            let raw = slot.load(Ordering::Acquire);
            match format::decode::<F>(raw, level) {
                Entry::Empty => {
                    let whole = b - a == level_size(level);
                    if level == 0 || (whole && src.huge_ok(Gpa::from_usize(a), level)) {
                        let leaf = src.leaf(&self.frames, Gpa::from_usize(a), level)?;
                        slot.store(F::park(leaf), Ordering::Relaxed);
                        self.zero_if_owned(leaf, level)?;
                    } else {
                        let new = self.frames.alloc_table()?;
                        // Linked parked first, so a rollback finds and frees
                        // the subtree even when building it fails half-way.
                        slot.store(F::park(format::table::<F>(new)), Ordering::Relaxed);
                        self.build(new, level - 1, a, b, src)?;
                    }
                    Ok(())
                }
                Entry::Table(next) if level > 0 => self.prepare(next, level - 1, a, b, src),
                Entry::Leaf { .. } if S::FILL_HOLES => Ok(()),
                // A mapping no region explains, or a parked entry outside an
                // exclusive operation.
                _ => Err(Error::Internal),
            }
        })
    }

    /// Fills a fresh, detached table (no hardware can reach it yet).
    fn build<S: LeafSource<F>>(
        &self,
        table: Hpa,
        level: usize,
        s: usize,
        e: usize,
        src: &mut S,
    ) -> Result {
        let view = self.view(table, level)?;
        if level == 0 {
            // The hot loop of every populate: one leaf per entry, no closure.
            let first = (s >> 12) % ENTRIES;
            let slots = view
                .get(first..first + ((e - s) >> 12))
                .ok_or(Error::Internal)?;
            let mut gpa = s;
            for slot in slots {
                slot.store(
                    src.leaf(&self.frames, Gpa::from_usize(gpa), 0)?,
                    Ordering::Relaxed,
                );
                gpa += FRAME_SIZE;
            }
            // The table is detached: its frames are zeroed before commit.
            if !self.frames.frames_zeroed() {
                for slot in slots {
                    self.zero_if_owned(slot.load(Ordering::Relaxed), 0)?;
                }
            }
            return Ok(());
        }
        for_slots(level, s, e, |idx, a, b| {
            let slot = Self::at(view, level, idx)?;
            let whole = b - a == level_size(level);
            if whole && src.huge_ok(Gpa::from_usize(a), level) {
                let leaf = src.leaf(&self.frames, Gpa::from_usize(a), level)?;
                slot.store(leaf, Ordering::Relaxed);
                self.zero_if_owned(leaf, level)?;
                Ok(())
            } else {
                let new = self.frames.alloc_table()?;
                slot.store(format::table::<F>(new), Ordering::Relaxed);
                self.build(new, level - 1, a, b, src)
            }
        })
    }

    /// Zeroes the frame of an owned leaf a [`LeafSource`] just produced
    /// (sources hand out unzeroed frames; see `Frames::alloc_guest_unzeroed`).
    fn zero_if_owned(&self, leaf: u64, level: usize) -> Result {
        match format::decode::<F>(leaf, level) {
            Entry::Leaf { hpa, owned: true } => self.frames.zero_guest(hpa),
            _ => Ok(()),
        }
    }

    fn commit(&self, table: Hpa, level: usize, s: usize, e: usize) -> Result {
        let view = self.view(table, level)?;
        for_slots(level, s, e, |idx, a, b| {
            let slot = Self::at(view, level, idx)?;
            let raw = slot.load(Ordering::Relaxed);
            if F::is_parked(raw) {
                slot.store(F::unpark(raw), Ordering::Release);
            } else if let Entry::Table(next) = format::decode::<F>(raw, level) {
                if level > 0 {
                    self.commit(next, level - 1, a, b)?;
                }
            }
            Ok(())
        })
    }

    fn rollback(&self, table: Hpa, level: usize, s: usize, e: usize) -> Result {
        let view = self.view(table, level)?;
        for_slots(level, s, e, |idx, a, b| {
            let slot = Self::at(view, level, idx)?;
            let raw = slot.load(Ordering::Relaxed);
            if F::is_parked(raw) {
                slot.store(0, Ordering::Relaxed);
                // SAFETY: a parked entry was never present: its frame or
                // subtree was never visible to hardware.
                unsafe { self.release_entry(F::unpark(raw), level) }
            } else if let Entry::Table(next) = format::decode::<F>(raw, level) {
                if level > 0 {
                    return self.rollback(next, level - 1, a, b);
                }
                Ok(())
            } else {
                Ok(())
            }
        })
    }

    // ----------------------------------------------------------------------
    // Unmap: split, detach, (caller flushes), reclaim (exclusive lock)
    // ----------------------------------------------------------------------

    /// The present leaf covering `gpa` and its level, if it is a huge leaf.
    fn huge_leaf_at(&self, gpa: usize) -> Result<Option<usize>> {
        if gpa >= 1usize << F::GPA_BITS {
            return Ok(None);
        }
        Ok(self
            .lookup(Gpa::from_usize(gpa))?
            .and_then(|(_, level)| (level > 0).then_some(level)))
    }

    /// How many tables splitting huge leaves so that both `start` and `end`
    /// become leaf boundaries takes (0 when no huge leaf straddles them).
    pub fn split_tables_needed(&self, start: Gpa, end: Gpa) -> Result<usize> {
        // (level, base) of every huge leaf the first edge's split breaks up.
        let mut split: [(usize, usize); 4] = [(usize::MAX, 0); 4];
        let mut n = 0;
        for x in [start.as_usize(), end.as_usize()] {
            let Some(mut level) = self.huge_leaf_at(x)? else {
                continue;
            };
            let base = |l: usize| x & !(level_size(l) - 1);
            while level > 0 && split.contains(&(level, base(level))) {
                level -= 1;
            }
            while level > 0 && x % level_size(level) != 0 {
                *split.get_mut(n).ok_or(Error::Internal)? = (level, base(level));
                n += 1;
                level -= 1;
            }
        }
        Ok(n)
    }

    /// Reserves `n` zeroed tables in `pool`; all or nothing.
    pub fn reserve_tables(&self, n: usize, pool: &mut TablePool) -> Result {
        if n > pool.tables.len() {
            return Err(Error::Internal);
        }
        for entry in pool.tables.iter_mut().take(n) {
            match self.frames.alloc_table() {
                Ok(t) => *entry = Some(t),
                Err(e) => {
                    self.release_pool(pool);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Gives back reserved tables that were not used (never visible).
    pub fn release_pool(&self, pool: &mut TablePool) {
        while let Some(t) = pool.take() {
            // SAFETY: pool tables were never linked.
            unsafe { self.frames.free_table(t) };
        }
    }

    /// Splits the huge leaves covering `gpa` until `gpa` is a leaf boundary.
    /// The translation is unchanged (the new table maps the same bytes the
    /// same way), so no flush is needed for the split itself.
    pub fn split_at(&self, gpa: Gpa, pool: &mut TablePool) -> Result {
        let x = gpa.as_usize();
        if x >= 1usize << F::GPA_BITS {
            return Ok(());
        }
        let mut table = self.root;
        let mut level = Self::TOP;
        while level > 0 {
            let slot = self.slot(table, level, x >> (12 + 9 * level))?;
            let raw = slot.load(Ordering::Acquire);
            table = match format::decode::<F>(raw, level) {
                Entry::Table(next) => next,
                Entry::Leaf { hpa, owned } if x % level_size(level) != 0 => {
                    let new = pool.take().ok_or(Error::Internal)?;
                    let flags = format::leaf_flags::<F>(raw);
                    let child = level_size(level - 1);
                    for (i, e) in self.view(new, level - 1)?.iter().enumerate() {
                        let leaf = format::leaf::<F>(
                            Hpa::from_usize(hpa.as_usize() + i * child),
                            flags,
                            level - 1,
                            owned,
                        );
                        e.store(leaf, Ordering::Relaxed);
                    }
                    slot.store(format::table::<F>(new), Ordering::Release);
                    new
                }
                _ => return Ok(()),
            };
            level -= 1;
        }
        Ok(())
    }

    /// Removes every present entry in `[start, end)` from the hardware's view:
    /// owned leaves and tables that no longer map anything are *parked* (so
    /// [`Walker::reclaim`] can free them after the flush), other leaves are
    /// cleared. Edges must have been split first.
    pub fn detach(&self, start: Gpa, end: Gpa) -> Result<Detached> {
        let mut d = Detached::default();
        self.detach_in(
            self.root,
            Self::TOP,
            start.as_usize(),
            end.as_usize(),
            &mut d,
        )?;
        Ok(d)
    }

    fn detach_in(&self, table: Hpa, level: usize, s: usize, e: usize, d: &mut Detached) -> Result {
        let view = self.view(table, level)?;
        for_slots(level, s, e, |idx, a, b| {
            let slot = Self::at(view, level, idx)?;
            let raw = slot.load(Ordering::Acquire);
            let whole = b - a == level_size(level);
            match format::decode::<F>(raw, level) {
                Entry::Empty => {}
                Entry::Parked => return Err(Error::Internal),
                Entry::Leaf { owned, .. } => {
                    if !whole {
                        return Err(Error::Internal);
                    }
                    // swap, not store: the hardware may have just set A/D.
                    let old = slot.swap(0, Ordering::AcqRel);
                    if owned {
                        slot.store(F::park(old), Ordering::Relaxed);
                    }
                    d.note(a, b);
                }
                Entry::Table(next) => {
                    if !whole {
                        self.detach_in(next, level - 1, a, b, d)?;
                    }
                    if whole || self.table_is_empty(next, level - 1)? {
                        let old = slot.swap(0, Ordering::AcqRel);
                        slot.store(F::park(old), Ordering::Relaxed);
                        d.note(a, b);
                    }
                }
            }
            Ok(())
        })
    }

    /// True if nothing in the table is present.
    fn table_is_empty(&self, table: Hpa, level: usize) -> Result<bool> {
        Ok(self.view(table, level)?.iter().all(|e| {
            let raw = e.load(Ordering::Relaxed);
            raw == 0 || F::is_parked(raw)
        }))
    }

    /// After the flush that followed [`Walker::detach`]: frees every parked
    /// frame and table in `[start, end)` and clears their entries.
    ///
    /// # Safety
    /// The guest's translations of everything `detach` reported have been
    /// invalidated since.
    pub unsafe fn reclaim(&self, start: Gpa, end: Gpa) -> Result {
        // SAFETY: forwarded contract.
        unsafe { self.reclaim_in(self.root, Self::TOP, start.as_usize(), end.as_usize()) }
    }

    unsafe fn reclaim_in(&self, table: Hpa, level: usize, s: usize, e: usize) -> Result {
        let view = self.view(table, level)?;
        for_slots(level, s, e, |idx, a, b| {
            let slot = Self::at(view, level, idx)?;
            let raw = slot.load(Ordering::Relaxed);
            if F::is_parked(raw) {
                slot.store(0, Ordering::Relaxed);
                // SAFETY: detached before the flush our caller vouches for.
                unsafe { self.release_entry(F::unpark(raw), level) }
            } else if let (Entry::Table(next), true) = (format::decode::<F>(raw, level), level > 0)
            {
                // SAFETY: forwarded contract.
                unsafe { self.reclaim_in(next, level - 1, a, b) }
            } else {
                Ok(())
            }
        })
    }

    /// Frees what an unlinked entry `raw` (at `level`) holds: an owned frame,
    /// or a whole subtree and its table.
    ///
    /// # Safety
    /// No hardware walker can reach `raw`'s frame or subtree any more.
    unsafe fn release_entry(&self, raw: u64, level: usize) -> Result {
        match format::decode::<F>(raw, level) {
            Entry::Leaf { hpa, owned: true } => {
                if level != 0 {
                    // Owned huge pages (from alloc_contig) do not exist yet.
                    return Err(Error::Internal);
                }
                // SAFETY: per this function's contract.
                unsafe { self.frames.free_guest(hpa) };
            }
            Entry::Table(next) if level > 0 => {
                // SAFETY: per this function's contract.
                unsafe {
                    self.release_subtree(next, level - 1)?;
                    self.frames.free_table(next);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Frees everything below the table `table` (not the table itself).
    ///
    /// # Safety
    /// As [`Walker::release_entry`].
    unsafe fn release_subtree(&self, table: Hpa, level: usize) -> Result {
        // The table itself is freed next: its entries need no clearing.
        for e in self.view(table, level)? {
            let raw = e.load(Ordering::Relaxed);
            if raw == 0 {
                continue;
            }
            let raw = if F::is_parked(raw) {
                F::unpark(raw)
            } else {
                raw
            };
            // SAFETY: forwarded contract.
            unsafe { self.release_entry(raw, level)? };
        }
        Ok(())
    }

    /// Frees every frame and table, root included.
    ///
    /// # Safety
    /// No hardware walker uses this table any more (the caller flushed), and
    /// no other thread touches the address space.
    pub unsafe fn release_all(&self) -> Result {
        // SAFETY: per this function's contract.
        unsafe {
            let r = self.release_subtree(self.root, Self::TOP);
            self.frames.free_table(self.root);
            r
        }
    }
}
