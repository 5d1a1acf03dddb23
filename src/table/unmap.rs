//! Unmap: split the edges, detach (exclusive lock), flush, reclaim (no lock).
//!
//! 1. [`Walker::split_at`] turns a huge leaf that straddles an edge into a
//!    table of smaller leaves mapping the same bytes the same way. The new
//!    table is built from the leaf's current value and swapped in with a
//!    compare-exchange, so accessed/dirty bits the hardware sets meanwhile are
//!    never lost (a failed exchange rebuilds from the new value).
//! 2. [`Walker::detach`] (exclusive lock) turns every present entry in the
//!    range into a parked one: owned leaves and whole subtrees keep their
//!    address for the reclaim; linear leaves are just cleared. A table left
//!    with nothing present whose span nobody else uses is *pruned*: its own
//!    entry is parked too. [`Detached`] covers the whole span of every pruned
//!    table — a cached translation or paging-structure entry may name any
//!    address it translated, not just the unmapped bytes.
//! 3. The caller releases the lock and flushes: [`Detached::flush`] calls the
//!    hook and returns [`Flushed`], the only way to reclaim.
//! 4. [`Walker::reclaim`] (no lock) clears the parked entries and frees what
//!    they held. Parked entries are frozen to every walker meanwhile.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::addr::Gpa;
use crate::error::{Error, Result};
use crate::format::{self, Entry, Format, level_size};
use crate::hooks::Hooks;
use crate::sync::Exclusive;

use super::iter::{Descend, Iter, Visit};
use super::{Hull, TablePool, Walker};

/// What a detach removed from the hardware's view.
#[must_use = "flush, then reclaim"]
#[derive(Debug)]
pub struct Detached {
    /// The range that was unmapped.
    start: usize,
    end: usize,
    /// Span of every detached entry (empty: nothing; no flush owed).
    detached: Hull,
    /// What the flush covers besides: the whole span of every block this
    /// detach gives back while other operations detached pieces of it
    /// (their flushes may come after ours). Not reclaimed: those pieces
    /// are theirs.
    also: Hull,
}

impl Detached {
    fn note(&mut self, a: usize, b: usize) {
        self.detached.note(a, b);
    }

    /// Widens the flush only (see `also`).
    fn note_flush(&mut self, a: usize, b: usize) {
        self.also.note(a, b);
    }

    /// The guest-physical range a flush must cover (empty: none owed).
    pub fn flush_range(&self) -> (usize, usize) {
        let mut h = self.detached;
        if self.also.lo != self.also.hi {
            h.note(self.also.lo, self.also.hi);
        }
        (h.lo, h.hi)
    }

    /// Everything the operation touched: the unmapped range and the spans of
    /// pruned tables (what the caller's claim must cover until the reclaim).
    pub fn span(&self) -> (usize, usize) {
        let Hull { lo, hi } = self.detached;
        if lo == hi {
            (self.start, self.end)
        } else {
            (self.start.min(lo), self.end.max(hi))
        }
    }

    /// Invalidates the guest's translations of everything detached (one
    /// `flush_tlb` call, none if nothing present was removed), clipped to the
    /// address space's window `[base, end)`: nothing outside it was ever
    /// mapped, and a range invalidation of the addresses inside a pruned
    /// table's span also drops the walk-cache entries for that span (the
    /// unmapped addresses are always inside). Call with no lock held: the
    /// host's flush may wait for other CPUs.
    pub fn flush(self, hooks: &Hooks, (base, end): (usize, usize)) -> Flushed {
        let (lo, hi) = self.flush_range();
        let (lo, hi) = (lo.max(base), hi.min(end));
        if lo < hi {
            hooks.flush(lo as u64, (hi - lo) as u64);
        }
        Flushed(self)
    }
}

/// Proof that the flush covering a [`Detached`] ran.
#[must_use = "reclaim what was detached"]
pub struct Flushed(Detached);

/// What detach needs from the address space while it runs.
pub trait DetachCtx {
    /// Proof that the caller holds the exclusive lock (now; `None` would be
    /// a broken invariant).
    fn exclusive(&self) -> Option<Exclusive<'_>>;
    /// True if anything besides the range being unmapped — a region, another
    /// operation's claim — lies in `[lo, hi)`: a table spanning it stays.
    fn in_use(&self, lo: usize, hi: usize) -> bool;
    /// The detach pruned a table spanning `[lo, hi)`: the caller's claim must
    /// cover it before the lock is ever released.
    fn widen(&mut self, lo: usize, hi: usize) -> Result;
    /// A yield point: may release and retake the exclusive lock if others
    /// wait (the range is claimed and its regions are gone, so the state
    /// between two steps is consistent).
    fn pause(&mut self);
    /// A discard (the range stays mapped, lazily): the guest rights the
    /// region of `gpa` gives its pages (`Flags` bits). A page whose rights
    /// differ keeps them in a lazy entry. `None` for an unmap: everything
    /// goes.
    fn keep_rights(&self, gpa: usize) -> Option<u32>;
}

/// Visits between two yield points of a detach.
const YIELD_EVERY: usize = 64;

/// Parks `entry` (seen as `raw`): swap, not store — the hardware may have just
/// set accessed/dirty; the parked value keeps the address for the reclaim.
fn park<F: Format>(_x: &Exclusive<'_>, entry: &AtomicU64, keep: bool) {
    park_as::<F>(_x, entry, |old| keep.then(|| F::park(old)));
}

/// Swaps `entry` to empty, then stores what `parked(old value)` makes of it,
/// if anything (the reclaim's instructions: see `Walker::after_release`).
fn park_as<F: Format>(_x: &Exclusive<'_>, entry: &AtomicU64, parked: impl Fn(u64) -> Option<u64>) {
    let old = entry.swap(F::EMPTY, Ordering::AcqRel);
    if let Some(p) = parked(old) {
        entry.store(p, Ordering::Relaxed);
    }
}

/// Child `index` of the huge leaf `raw` at `level`, present or sealed.
fn child_of<F: Format>(raw: u64, level: usize, index: usize) -> u64 {
    if F::is_sealed(raw) {
        F::seal(F::child(F::unseal(raw), level, index))
    } else {
        F::child(raw, level, index)
    }
}

impl<'a, F: Format> Walker<'a, F> {
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

    /// Splits the huge leaves covering `gpa` until `gpa` is a leaf boundary.
    /// The translation is unchanged (the new table maps the same bytes the
    /// same way), so no flush is needed for the split itself on x86.
    pub fn split_at(&self, _x: &Exclusive<'_>, gpa: Gpa, pool: &mut TablePool) -> Result {
        let x = gpa.as_usize();
        while let Some(f) = self.find(Gpa::from_usize(x))? {
            let level = f.level;
            if level == 0 || x.is_multiple_of(level_size(level)) {
                return Ok(());
            }
            // A sealed block is invalid already: it is replaced in place.
            if F::BREAK_BEFORE_MAKE && !F::is_sealed(f.raw) {
                return self.make_split(f, x, [x, x], pool);
            }
            let (Entry::Leaf { .. } | Entry::Sealed { .. }) = f.decode::<F>() else {
                return Ok(());
            };
            let new = pool.take().ok_or(Error::Internal)?;
            let children = self.view(new, level - 1)?;
            let mut raw = f.raw;
            loop {
                for (i, c) in children.iter().enumerate() {
                    c.store(child_of::<F>(raw, level, i), Ordering::Relaxed);
                }
                // Release: the children before the link.
                match f.entry.compare_exchange(
                    raw,
                    format::table::<F>(new),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => break,
                    // Only the hardware writes a live leaf meanwhile
                    // (accessed/dirty): rebuild from what it wrote.
                    Err(now) if now & !F::HW_BITS == raw & !F::HW_BITS => raw = now,
                    Err(_) => {
                        pool.put_back(new)?;
                        return Err(Error::Internal);
                    }
                }
            }
        }
        Ok(())
    }

    /// Break-before-make, the "break" (formats with
    /// [`Format::BREAK_BEFORE_MAKE`]): makes invalid (parks) every huge leaf
    /// that `start` or `end` would split, so that the caller can flush the
    /// returned span — the hull of the broken leaves, `lo == hi` if none —
    /// before [`Walker::split_at`] links the tables that replace them. The
    /// caller's claim must cover the span first (no other operation may meet
    /// the parked entries); faults there are spurious meanwhile (frozen).
    pub fn break_edges(&self, _x: &Exclusive<'_>, start: Gpa, end: Gpa) -> Result<(usize, usize)> {
        let (mut lo, mut hi) = (0, 0);
        for x in [start.as_usize(), end.as_usize()] {
            if x >= 1usize << F::GPA_BITS {
                continue;
            }
            let Some(f) = self.find(Gpa::from_usize(x))? else {
                continue;
            };
            let level = f.level;
            if level == 0 || x.is_multiple_of(level_size(level)) {
                continue;
            }
            let Entry::Leaf { .. } = f.decode::<F>() else {
                continue;
            };
            // Swap: the parked value keeps what the hardware may have set.
            let old = f.entry.swap(F::EMPTY, Ordering::AcqRel);
            f.entry.store(F::park(old), Ordering::Release);
            let base = x & !(level_size(level) - 1);
            let top = base + level_size(level);
            (lo, hi) = if lo == hi {
                (base, top)
            } else {
                (lo.min(base), hi.max(top))
            };
        }
        Ok((lo, hi))
    }

    /// Splits the huge leaves covering `start` and `end` so that both are
    /// leaf boundaries: [`Walker::split_at`] on each edge, or, with
    /// break-before-make, [`Walker::make_split`] of the leaves
    /// [`Walker::break_edges`] parked (both edges at once: they may lie in
    /// the same block).
    pub fn split_edges(
        &self,
        x: &Exclusive<'_>,
        start: Gpa,
        end: Gpa,
        pool: &mut TablePool,
    ) -> Result {
        if !F::BREAK_BEFORE_MAKE {
            self.split_at(x, start, pool)?;
            return self.split_at(x, end, pool);
        }
        let edges = [start.as_usize(), end.as_usize()];
        for e in edges {
            if e >= 1usize << F::GPA_BITS {
                continue;
            }
            if let Some(f) = self.find(Gpa::from_usize(e))? {
                if F::is_sealed(f.raw) {
                    // Invalid already: no break needed, split in place.
                    self.split_at(x, Gpa::from_usize(e), pool)?;
                } else {
                    self.make_split(f, e, edges, pool)?;
                }
            }
        }
        Ok(())
    }

    /// Break-before-make, the "make": `f` is a huge leaf that
    /// [`Walker::break_edges`] parked and the caller flushed since. Builds
    /// the tables replacing it — down to where every edge in `edges` inside
    /// it is a leaf boundary — while none of them is visible, then links them
    /// with one Release store: no valid block is ever replaced in place.
    /// `at` is the address whose walk found `f`.
    fn make_split(
        &self,
        f: super::iter::Found<'_>,
        at: usize,
        edges: [usize; 2],
        pool: &mut TablePool,
    ) -> Result {
        if f.level == 0 || !F::is_parked(f.raw) {
            // Not broken by us: nothing to make (an empty entry, a leaf the
            // edges do not straddle, or a table an earlier edge made).
            return Ok(());
        }
        let raw = F::unpark(f.raw);
        let Entry::Leaf { .. } = format::decode::<F>(raw, f.level) else {
            return Err(Error::Internal);
        };
        let top = pool.take().ok_or(Error::Internal)?;
        let gbase = at & !(level_size(f.level) - 1);
        self.build_split(top, (raw, f.level, gbase), edges, pool)?;
        // Release: every child before the link.
        f.entry.store(format::table::<F>(top), Ordering::Release);
        Ok(())
    }

    /// Fills the unlinked `table` with the children of the huge leaf `leaf`
    /// at `level` translating from `gbase`, splitting further (also
    /// unlinked) every child an edge still straddles. At most two levels
    /// deep (1 GiB → 2 MiB → 4 KiB).
    fn build_split(
        &self,
        table: crate::addr::Hpa,
        (leaf, level, gbase): (u64, usize, usize),
        edges: [usize; 2],
        pool: &mut TablePool,
    ) -> Result {
        let children = self.view(table, level - 1)?;
        for (i, c) in children.iter().enumerate() {
            c.store(F::child(leaf, level, i), Ordering::Relaxed);
        }
        let child_level = level - 1;
        if child_level == 0 {
            return Ok(());
        }
        for e in edges {
            // Only edges inside this leaf's span, and not on a child boundary.
            if e < gbase
                || e - gbase >= level_size(level)
                || e.is_multiple_of(level_size(child_level))
            {
                continue;
            }
            let i = (e >> (12 + 9 * child_level)) % super::ENTRIES;
            let slot = children.get(i).ok_or(Error::Internal)?;
            let c = slot.load(Ordering::Relaxed);
            // The other edge may have split this child already.
            if !matches!(format::decode::<F>(c, child_level), Entry::Leaf { .. }) {
                continue;
            }
            let next = pool.take().ok_or(Error::Internal)?;
            let cbase = e & !(level_size(child_level) - 1);
            self.build_split(next, (c, child_level, cbase), edges, pool)?;
            slot.store(format::table::<F>(next), Ordering::Relaxed);
        }
        Ok(())
    }

    /// Removes every present entry in `[start, end)` from the hardware's view
    /// (see the module docs). Edges must have been split first.
    ///
    /// Blocks (`AXALLOC_HUGE`): a 2 MiB block leaf the range covers is
    /// parked whole (the reclaim gives the block back). Pieces of a split
    /// block are parked like 4 KiB leaves, and the detach that parks the
    /// *last present* piece of a block owns giving it back: when it leaves
    /// that leaf table (with the lock held since it parked its first piece
    /// there — no yield inside — so no other detach can interleave), it
    /// counts the pieces still present; none left, it marks one of its
    /// parked pieces last (the reclaim frees the block with it) and widens
    /// its flush to the whole block, since other detaches' pieces of it may
    /// still await their own flush. A pruned leaf table gives its block back
    /// whole instead (`release_leaf_table`).
    pub fn detach<C: DetachCtx>(&self, ctx: &mut C, start: Gpa, end: Gpa) -> Result<Detached> {
        let (start, end) = (start.as_usize(), end.as_usize());
        let mut d = Detached {
            start,
            end,
            detached: Hull::default(),
            also: Hull::default(),
        };
        let mut it = Iter::root(self, start, end, Descend::Present)?;
        let mut steps = 0usize;
        // The last block piece parked in the current leaf table, if any.
        let mut piece: Option<&AtomicU64> = None;
        while let Some(v) = it.next()? {
            steps += 1;
            if steps >= YIELD_EVERY && piece.is_none() {
                steps = 0;
                ctx.pause();
            }
            match v {
                Visit::Slot(s) => match format::decode::<F>(s.raw, s.level) {
                    Entry::Empty => {}
                    Entry::Parked => return Err(Error::Internal),
                    Entry::Leaf { owned, .. } => {
                        if !s.whole() {
                            return Err(Error::Internal);
                        }
                        let block = format::block_of::<F>(s.raw, s.level).is_some();
                        let keep = ctx.keep_rights(s.base);
                        let x = ctx.exclusive().ok_or(Error::Internal)?;
                        park_as::<F>(&x, s.entry, |old| {
                            // A discarded page whose rights are not its
                            // region's leaves them in a lazy entry.
                            let tag = match keep {
                                Some(r) if r != format::leaf_rights::<F>(old) => F::LAZY,
                                _ => 0,
                            };
                            (owned || block || tag != 0).then(|| F::park(old) | tag)
                        });
                        if block && s.level == 0 {
                            piece = Some(s.entry);
                        }
                        d.note(s.base, s.span_end());
                    }
                    // Not present: nothing to flush. An unmap clears it (and
                    // frees a sealed page's frame after the flush, with the
                    // rest); a discard keeps the rights: a lazy entry stays,
                    // a sealed page's frame goes and "no access" stays.
                    Entry::Lazy { .. } if ctx.keep_rights(s.base).is_some() => {}
                    Entry::Lazy { .. } => {
                        park::<F>(&ctx.exclusive().ok_or(Error::Internal)?, s.entry, false);
                    }
                    Entry::Sealed { owned, .. } => {
                        if !s.whole() {
                            return Err(Error::Internal);
                        }
                        let tag = if ctx.keep_rights(s.base).is_some() {
                            F::LAZY | F::SEALED
                        } else {
                            0
                        };
                        // A sealed piece of a block holds the block like a
                        // present one.
                        let block = format::block_of::<F>(F::unseal(s.raw), s.level).is_some();
                        let x = ctx.exclusive().ok_or(Error::Internal)?;
                        park_as::<F>(&x, s.entry, |old| {
                            (owned || block || tag != 0).then(|| F::park(F::unseal(old)) | tag)
                        });
                        if block && s.level == 0 {
                            piece = Some(s.entry);
                        }
                    }
                    // A discard walks down: entries below keep their rights.
                    Entry::Table(_) if s.whole() && ctx.keep_rights(s.base).is_none() => {
                        it.step_over();
                        park::<F>(&ctx.exclusive().ok_or(Error::Internal)?, s.entry, true);
                        d.note(s.base, s.span_end());
                    }
                    Entry::Table(_) => {}
                },
                Visit::Leave {
                    table,
                    level,
                    base,
                    parent,
                } => {
                    let span_end = base + level_size(level + 1);
                    let outside = (base < start && ctx.in_use(base, start))
                        || (span_end > end && ctx.in_use(end, span_end));
                    if !outside && self.table_is_unused(table, level)? {
                        ctx.widen(base, span_end)?;
                        park::<F>(&ctx.exclusive().ok_or(Error::Internal)?, parent, true);
                        d.note(base, span_end);
                    } else if level == 0
                        && let Some(p) = piece
                        && !self.has_present_block_piece(table)?
                    {
                        // Last: the parked value keeps the block's address;
                        // the owned bit on a block piece means "last".
                        p.fetch_or(F::OWNED, Ordering::Relaxed);
                        d.note_flush(base, span_end);
                    }
                    if level == 0 {
                        piece = None;
                    }
                }
            }
        }
        Ok(d)
    }

    /// True if a present leaf of the leaf table `table` is a block piece.
    fn has_present_block_piece(&self, table: crate::addr::Hpa) -> Result<bool> {
        Ok(self.view(table, 0)?.iter().any(|e| {
            let raw = e.load(Ordering::Acquire);
            // Sealed pieces (protect with no rights) keep their block too.
            let raw = if F::is_sealed(raw) {
                F::unseal(raw)
            } else {
                raw
            };
            !F::is_parked(raw) && format::block_of::<F>(raw, 0).is_some()
        }))
    }

    /// After the flush: clears every parked entry in the detached span and
    /// frees the frames and tables they held. Runs with no lock held; the
    /// caller's claim keeps every other map and unmap out of the span.
    pub fn reclaim(&self, flushed: Flushed) -> Result {
        let (lo, hi) = flushed.0.span();
        // SAFETY: detached under the exclusive lock (no software walker can
        // be below a parked entry since), `flushed` proves the hardware's
        // cached translations of them are gone, and the caller's claim keeps
        // other operations out of the span.
        unsafe { self.release_parked(lo, hi) }
    }
}
