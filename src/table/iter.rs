//! The one way to walk a table: a pre-order iterator over the entries that
//! overlap a guest-physical range, after KVM's `tdp_iter`.
//!
//! [`Iter::next`] yields [`Visit::Slot`] for every entry (at any level) that
//! overlaps `[start, end)`, parents before children. After a slot is yielded,
//! the next call descends into it if the entry — as last seen, or as the caller
//! updated it with [`Iter::set`] after a compare-exchange — names a table
//! (a present one, or with [`Descend::Parked`] also a parked one), unless the
//! caller called [`Iter::step_over`]. When every slot of a table the iterator
//! descended into has been visited, it yields [`Visit::Leave`] for that table
//! (post-order work: freeing a subtree, pruning an emptied table).
//! [`Iter::retry`] re-yields the current slot with a fresh value (a lost
//! compare-exchange). Every operation — map's prepare/commit/rollback, split,
//! detach, reclaim, release, translate and the fault's probe and install — is a
//! loop over this iterator; none walks the table by hand.
//!
//! The iterator holds no lock and no state beyond one table view per level,
//! so a caller may drop and retake its lock between two steps (a yield point)
//! as long as what keeps the tables on its path alive still holds (see
//! `space.rs`: claims).

use core::sync::atomic::{AtomicU64, Ordering};

use crate::addr::Hpa;
use crate::error::{Error, Result};
use crate::format::{self, Entry, Format, level_size};

use super::Walker;

/// Deepest table tree the iterator supports (5-level formats, root included).
pub const MAX_LEVELS: usize = 5;

/// Which entries the iterator descends into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Descend {
    /// Present table entries only (what the hardware walks).
    Present,
    /// Also parked table entries (subtrees being built or being freed).
    Parked,
}

/// One entry overlapping the range.
pub struct Slot<'t> {
    /// Level of the entry (0 maps 4 KiB).
    pub level: usize,
    /// First guest-physical address the entry translates.
    pub base: usize,
    /// The part of `[base, base + level_size(level))` inside the range.
    pub lo: usize,
    /// See `lo`.
    pub hi: usize,
    /// The entry itself.
    pub entry: &'t AtomicU64,
    /// Its value when it was visited.
    pub raw: u64,
}

impl Slot<'_> {
    /// True if the range covers the whole entry.
    #[inline]
    pub fn whole(&self) -> bool {
        self.hi - self.lo == level_size(self.level)
    }
    /// One past the last guest-physical address the entry translates.
    #[inline]
    pub fn span_end(&self) -> usize {
        self.base + level_size(self.level)
    }
}

/// What [`Iter::next`] found.
pub enum Visit<'t> {
    /// An entry overlapping the range.
    Slot(Slot<'t>),
    /// Every overlapping entry of `table` (at `level`) has been visited;
    /// `parent` is the entry that links it.
    Leave {
        /// The table left.
        table: Hpa,
        /// Its level.
        level: usize,
        /// First guest-physical address of its span.
        base: usize,
        /// The entry that names it.
        parent: &'t AtomicU64,
    },
}

/// The entry of `view` (a table at `level`) that translates `gpa`. A table
/// at the top of a walk may be a multi-page root; every table has a
/// power-of-two number of entries, so masking picks the slot.
#[inline]
fn slot_of(view: &[AtomicU64], gpa: usize, level: usize) -> Result<&AtomicU64> {
    let index = (gpa >> (12 + 9 * level)) & view.len().wrapping_sub(1);
    view.get(index).ok_or(Error::Internal)
}

/// Where a walk towards one address stopped.
pub struct Found<'t> {
    /// The entry: a leaf, an empty or a parked entry, at `level`.
    pub entry: &'t AtomicU64,
    /// Its value.
    pub raw: u64,
    /// Its level.
    pub level: usize,
}

impl Found<'_> {
    /// What the entry means.
    #[inline]
    pub fn decode<F: Format>(&self) -> Entry {
        format::decode::<F>(self.raw, self.level)
    }
}

/// The iterator's single-address mode, for the hot paths (translate, the
/// fault's probe): the walk a range of one byte takes — one slot per level,
/// descending through present tables — without the bookkeeping a range walk
/// needs. Returns the first entry that is not a present table: a leaf, an
/// empty or a parked entry. `gpa` must lie in the format's address space.
#[inline]
pub fn point<'t, F: Format>(walker: &'t Walker<'_, F>, gpa: usize) -> Result<Found<'t>> {
    let mut table = walker.root();
    let mut level = Walker::<F>::TOP;
    loop {
        let entry = slot_of(walker.view(table, level)?, gpa, level)?;
        let raw = entry.load(Ordering::Acquire);
        match F::next_table(raw) {
            Some(next) if level > 0 => {
                table = Hpa::from_usize(next);
                level -= 1;
            }
            _ => return Ok(Found { entry, raw, level }),
        }
    }
}

/// The pre-order iterator (see the module docs).
pub struct Iter<'t, 'w, F: Format> {
    walker: &'t Walker<'w, F>,
    descend: Descend,
    /// The level of the table the walk started in.
    top: usize,
    /// Current level and position (the `lo` of the current / next slot).
    level: usize,
    pos: usize,
    /// Per level: the table's entries, its address, the first address it
    /// translates, one past the last address of the range inside it.
    views: [&'t [AtomicU64]; MAX_LEVELS],
    tables: [Hpa; MAX_LEVELS],
    bases: [usize; MAX_LEVELS],
    ends: [usize; MAX_LEVELS],
    /// The entry that links the table at each level (none for `top`).
    parents: [Option<&'t AtomicU64>; MAX_LEVELS],
    /// The last yielded slot: its entry and value, and what to do next.
    cur: Option<(&'t AtomicU64, u64)>,
    skip: bool,
    again: bool,
}

impl<'t, 'w, F: Format> Iter<'t, 'w, F> {
    /// Walks `[start, end)` from the table `table` at `level`, whose span
    /// begins at `base` (the root: level `LEVELS - 1`, base 0).
    pub fn new(
        walker: &'t Walker<'w, F>,
        (table, level, base): (Hpa, usize, usize),
        start: usize,
        end: usize,
        descend: Descend,
    ) -> Result<Self> {
        if level >= MAX_LEVELS || start >= end {
            return Err(Error::Internal);
        }
        let view = walker.view(table, level)?;
        let mut it = Self {
            walker,
            descend,
            top: level,
            level,
            pos: start,
            views: [view; MAX_LEVELS],
            tables: [table; MAX_LEVELS],
            bases: [base; MAX_LEVELS],
            ends: [end; MAX_LEVELS],
            parents: [None; MAX_LEVELS],
            cur: None,
            skip: false,
            again: false,
        };
        *it.ends.get_mut(level).ok_or(Error::Internal)? = end;
        Ok(it)
    }

    /// The whole table from its root, over `[start, end)`.
    pub fn root(
        walker: &'t Walker<'w, F>,
        start: usize,
        end: usize,
        descend: Descend,
    ) -> Result<Self> {
        Self::new(
            walker,
            (walker.root(), Walker::<F>::TOP, 0),
            start,
            end,
            descend,
        )
    }

    /// Do not descend into the slot just yielded.
    #[inline]
    pub fn step_over(&mut self) {
        self.skip = true;
    }

    /// The caller changed the slot just yielded to `raw` (a compare-exchange
    /// that succeeded): descend according to the new value.
    #[inline]
    pub fn set(&mut self, raw: u64) {
        if let Some((_, v)) = self.cur.as_mut() {
            *v = raw;
        }
    }

    /// Yield the slot just yielded again, with its value read afresh.
    #[inline]
    pub fn retry(&mut self) {
        self.again = true;
    }

    /// The table a slot's value leads to, if the iterator descends into it.
    fn child(&self, raw: u64, level: usize) -> Option<Hpa> {
        if level == 0 {
            return None;
        }
        match format::decode::<F>(raw, level) {
            Entry::Table(t) => Some(t),
            Entry::Parked if self.descend == Descend::Parked => {
                match format::decode::<F>(F::unpark(raw), level) {
                    Entry::Table(t) => Some(t),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// The next slot or table exit; `None` when the range is done.
    #[allow(clippy::should_implement_trait)] // fallible: `Result<Option<_>>`
    pub fn next(&mut self) -> Result<Option<Visit<'t>>> {
        if let Some((entry, raw)) = self.cur.take() {
            let level = self.level;
            let hi = self.slot_hi(level);
            if core::mem::take(&mut self.again) {
                self.skip = false;
                return self.yield_slot();
            }
            let child = if core::mem::take(&mut self.skip) {
                None
            } else {
                self.child(raw, level)
            };
            match child {
                Some(t) => {
                    let l = level - 1;
                    let view = self.walker.view(t, l)?;
                    let size = level_size(level);
                    let i = l;
                    *self.views.get_mut(i).ok_or(Error::Internal)? = view;
                    *self.tables.get_mut(i).ok_or(Error::Internal)? = t;
                    *self.bases.get_mut(i).ok_or(Error::Internal)? = self.pos & !(size - 1);
                    *self.ends.get_mut(i).ok_or(Error::Internal)? = hi;
                    *self.parents.get_mut(i).ok_or(Error::Internal)? = Some(entry);
                    self.level = l;
                }
                None => self.pos = hi,
            }
        }
        let level = self.level;
        let end = *self.ends.get(level).ok_or(Error::Internal)?;
        if self.pos < end {
            return self.yield_slot();
        }
        if level == self.top {
            return Ok(None);
        }
        // Leave this table; the parent slot is done (`pos` is its end).
        self.level = level + 1;
        let parent = self
            .parents
            .get(level)
            .copied()
            .flatten()
            .ok_or(Error::Internal)?;
        Ok(Some(Visit::Leave {
            table: *self.tables.get(level).ok_or(Error::Internal)?,
            level,
            base: *self.bases.get(level).ok_or(Error::Internal)?,
            parent,
        }))
    }

    /// End of the current slot at `level`, clipped to the range.
    #[inline]
    fn slot_hi(&self, level: usize) -> usize {
        let size = level_size(level);
        let end = self.ends.get(level).copied().unwrap_or(self.pos);
        ((self.pos & !(size - 1)) + size).min(end)
    }

    fn yield_slot(&mut self) -> Result<Option<Visit<'t>>> {
        let level = self.level;
        let view = *self.views.get(level).ok_or(Error::Internal)?;
        let entry = slot_of(view, self.pos, level)?;
        let raw = entry.load(Ordering::Acquire);
        self.cur = Some((entry, raw));
        let size = level_size(level);
        Ok(Some(Visit::Slot(Slot {
            level,
            base: self.pos & !(size - 1),
            lo: self.pos,
            hi: self.slot_hi(level),
            entry,
            raw,
        })))
    }
}
