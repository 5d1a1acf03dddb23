//! The format-independent table code: everything that reads or changes the
//! stage-2 table, for any [`Format`], as loops over one iterator
//! ([`iter::Iter`]).
//!
//! Entries are `AtomicU64`s: vCPUs fault concurrently and the hardware sets
//! accessed/dirty bits at any time. The rules, after KVM's TDP MMU and
//! Hafnium:
//!
//! - **Faults** (`install.rs`, shared lock) only turn an empty entry into a
//!   present one, with compare-exchange, using tables and a frame obtained
//!   before the first one is linked (a failed allocation changes nothing). A
//!   table or frame that loses a race was never visible and goes back unseen.
//! - **Maps** (`map.rs`) **prepare, then commit**: prepare runs with no lock,
//!   inside a claimed range (see `claims.rs`), parks new leaves and whole new
//!   subtrees in the live table (non-present: no walker acts on them), and
//!   builds what an empty slot shared with other ranges needs as a detached
//!   *spine*; the commit links spines and unparks — it cannot fail. A failed
//!   prepare is undone without the hardware ever having seen anything.
//! - **Unmaps** (`unmap.rs`) split huge leaves at the edges with
//!   compare-exchange (accessed/dirty kept), **detach** under the exclusive
//!   lock (present → parked; emptied tables pruned), then — with no lock held —
//!   the caller flushes once over everything detached, including the whole
//!   span of every pruned table, and [`unmap`]'s reclaim frees it.
//! - A **parked** entry met by a concurrent walker is *frozen*: a fault returns
//!   at once as spurious (the guest re-faults), never spins.
//! - **2 MiB guest blocks** (`AXALLOC_HUGE`) are marked in their leaves
//!   ([`Format::BLOCK`]); a split copies the mark into the 512 pieces, and
//!   one leaf table's pieces all name one block. The detach that parks the
//!   last present piece of a block marks it last and flushes the whole
//!   block; the reclaim then gives the block back once (`unmap.rs`). A
//!   pruned leaf table, or destroy, gives its block back whole
//!   (`release_leaf_table`).
//! - The tables themselves are the only record: no side lists, no allocator.

pub mod install;
pub mod iter;
pub mod map;
pub mod protect;
pub mod read;
pub mod split;
pub mod stock;
pub mod unmap;

use core::marker::PhantomData;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::addr::{FRAME_SIZE, Hpa};
use crate::error::{Error, Result};
use crate::format::{self, Entry, Format, level_size};
use crate::frames::Frames;
use crate::hooks::Hooks;
use crate::reserve::Reserve;
use crate::stats::Counters;
use iter::{Descend, Iter, Visit};

/// The hull of the guest-physical spans an operation changed: what its one
/// flush covers (`lo == hi`: nothing changed, no flush owed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hull {
    /// First byte.
    pub lo: usize,
    /// One past the last byte.
    pub hi: usize,
}

impl Hull {
    /// Adds `[a, b)`.
    pub fn note(&mut self, a: usize, b: usize) {
        if self.lo == self.hi {
            (self.lo, self.hi) = (a, b);
        } else {
            self.lo = self.lo.min(a);
            self.hi = self.hi.max(b);
        }
    }
}

/// Entries in a non-root table.
pub const ENTRIES: usize = FRAME_SIZE / 8;

/// Zeroed table frames obtained before a change starts (KVM's "memory
/// cache"): a fault or a split takes what it needs from here, so it either
/// gets everything up front or changes nothing. Tables left over were never
/// linked and go straight back ([`Walker::release_pool`]).
pub struct TablePool {
    /// A stack: `tables[..held]` are held.
    tables: [Hpa; POOL_TABLES],
    held: usize,
}

/// Tables one change may need: a fault on a 5-level table missing all but
/// the root needs 4; an unmap's two edge splits need at most 4.
const POOL_TABLES: usize = 6;

impl Default for TablePool {
    fn default() -> Self {
        Self::new()
    }
}

impl TablePool {
    /// An empty pool.
    pub const fn new() -> Self {
        Self {
            tables: [Hpa::from_usize(0); POOL_TABLES],
            held: 0,
        }
    }
    /// True if the pool holds no table (the fault path's common case).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.held == 0
    }
    /// Tables held.
    #[inline]
    pub fn len(&self) -> usize {
        self.held
    }
    fn take(&mut self) -> Option<Hpa> {
        let i = self.held.checked_sub(1)?;
        let t = *self.tables.get(i)?;
        self.held = i;
        Some(t)
    }
    fn put(&mut self, t: Hpa) -> Result {
        *self.tables.get_mut(self.held).ok_or(Error::Internal)? = t;
        self.held += 1;
        Ok(())
    }
    fn put_back(&mut self, t: Hpa) -> Result {
        self.put(t)
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

impl<'a, F: Format> Walker<'a, F> {
    /// The root's level.
    pub const TOP: usize = F::LEVELS - 1;

    /// A walker over the table rooted at `root`.
    pub fn new(
        hooks: &'a Hooks,
        counters: &'a Counters,
        (root, root_virt): (Hpa, NonNull<u8>),
        frames_zeroed: bool,
        reserve: Option<&'a Reserve>,
    ) -> Self {
        Self {
            frames: Frames::new(hooks, counters, frames_zeroed, F::EMPTY, reserve),
            root,
            root_virt,
            _format: PhantomData,
        }
    }

    /// Frame allocation and accounting for this operation.
    pub fn frames(&self) -> &Frames<'a> {
        &self.frames
    }

    /// The root table.
    pub fn root(&self) -> Hpa {
        self.root
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
    pub(crate) fn view(&self, table: Hpa, level: usize) -> Result<&[AtomicU64]> {
        let base = if table == self.root {
            self.root_virt
        } else {
            self.frames.hooks().virt(table)?
        }
        .cast::<AtomicU64>();
        // SAFETY: `table` is a table frame this address space owns (reachable
        // from the root, parked, or just allocated), `entries(level)` long,
        // page-aligned (`Hooks::virt` checks). Table frames are freed only
        // after nothing can reach them: by the operation that detached them,
        // after the flush, inside its claim — no other walker can be on them
        // (see `unmap.rs`). All access is atomic.
        Ok(unsafe { core::slice::from_raw_parts(base.as_ptr(), Self::entries(level)) })
    }

    /// Allocates a root table (`2^ROOT_ORDER` frames) with every entry empty.
    pub fn create_root(hooks: &Hooks, counters: &Counters, frames_zeroed: bool) -> Result<Hpa> {
        let frames = Frames::new(hooks, counters, frames_zeroed, F::EMPTY, None);
        if F::ROOT_ORDER == 0 {
            return frames.alloc_table();
        }
        // Arm concatenated / RISC-V x4 roots: one block aligned to its size
        // (Arm ARM, "Concatenated translation tables"; RISC-V hypervisor
        // extension, 16 KiB-aligned root). Without `alloc_contig` there is
        // no way to get one.
        if !hooks.has_contig() {
            return Err(Error::Unsupported);
        }
        frames.alloc_table_contig(F::ROOT_ORDER)
    }

    /// Reserves `n` empty tables in `pool` (may run under the lock: only
    /// `alloc_frame`). On failure the tables obtained so far stay in `pool`.
    pub fn reserve_tables(&self, n: usize, pool: &mut TablePool) -> Result {
        if n > pool.tables.len() - pool.held {
            return Err(Error::Internal);
        }
        for _ in 0..n {
            // On failure what was obtained stays in `pool`: the caller gives
            // it back with `release_pool` once it holds no lock.
            let t = self.frames.alloc_table()?;
            pool.put(t)?;
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

    /// Frees what the unlinked entry `raw` (at `level`, translating from
    /// `base`) holds: an owned frame, or a whole subtree and its table.
    ///
    /// # Safety
    /// No hardware or software walker can reach `raw`'s frame or subtree any
    /// more (never linked, or unlinked and flushed since).
    pub(crate) unsafe fn release_entry(&self, raw: u64, level: usize, base: usize) -> Result {
        let raw = if F::is_parked(raw) {
            F::unpark(raw)
        } else {
            raw
        };
        if let Some((block, last)) = format::block_of::<F>(raw, level) {
            // The 2 MiB leaf itself, or the 4 KiB piece of a split block
            // that the detach marked last (the others go with no free).
            if level == 1 || (level == 0 && last) {
                // SAFETY: per this function's contract; for the last piece,
                // every other piece is unreachable too (see `unmap.rs`).
                unsafe { self.frames.free_guest_block(block) };
            } else if level != 0 {
                return Err(Error::Internal);
            }
            return Ok(());
        }
        match format::decode::<F>(raw, level) {
            Entry::Leaf { hpa, owned: true } | Entry::Sealed { hpa, owned: true } => {
                if level != 0 {
                    // Owned frames are 4 KiB; huge guest pages are blocks.
                    return Err(Error::Internal);
                }
                // SAFETY: per this function's contract.
                unsafe { self.frames.free_guest(hpa) };
            }
            Entry::Table(next) if level > 0 => {
                // SAFETY: per this function's contract.
                unsafe { self.release_subtree(next, level - 1, base)? };
            }
            _ => {}
        }
        Ok(())
    }

    /// Frees the table `table` at `level` (spanning from `base`) and
    /// everything below it, children first.
    ///
    /// # Safety
    /// As [`Walker::release_entry`].
    pub(crate) unsafe fn release_subtree(&self, table: Hpa, level: usize, base: usize) -> Result {
        if level == 0 {
            // SAFETY: forwarded contract.
            return unsafe { self.release_leaf_table(table) };
        }
        // Walk only from the first to the last entry in use: a mostly empty
        // table (every root: 512 entries, 8192 for a concatenated Arm root)
        // costs one plain scan instead of one iterator step per empty slot.
        // (Under Miri those steps were most of an address space's teardown —
        // seconds per test, ~40 s for a concatenated root.)
        let size = level_size(level);
        let view = self.view(table, level)?;
        let used = |e: &AtomicU64| e.load(Ordering::Acquire) != F::EMPTY;
        let (lo, hi) = match (view.iter().position(used), view.iter().rposition(used)) {
            (Some(first), Some(last)) => (base + first * size, base + (last + 1) * size),
            _ => (base, base),
        };
        let mut it = if lo < hi {
            Some(Iter::new(
                self,
                (table, level, base),
                lo,
                hi,
                Descend::Parked,
            )?)
        } else {
            None
        };
        while let Some(it) = it.as_mut()
            && let Some(v) = it.next()?
        {
            let Visit::Slot(s) = v else {
                // Leaf tables are released whole below; the rest here, after
                // their children (post-order).
                if let Visit::Leave { table, .. } = v {
                    // SAFETY: every entry below it was released just before.
                    unsafe { self.frames.free_table(table) };
                }
                continue;
            };
            let raw = if F::is_parked(s.raw) {
                F::unpark(s.raw)
            } else {
                s.raw
            };
            match format::decode::<F>(raw, s.level) {
                // The bulk of every teardown: a whole leaf table in one loop.
                Entry::Table(t) if s.level == 1 => {
                    it.step_over();
                    // SAFETY: per this function's contract.
                    unsafe { self.release_leaf_table(t)? };
                }
                Entry::Leaf { hpa, owned: true } | Entry::Sealed { hpa, owned: true } => {
                    if s.level != 0 {
                        return Err(Error::Internal);
                    }
                    // SAFETY: per this function's contract.
                    unsafe { self.frames.free_guest(hpa) };
                }
                Entry::Leaf { .. } if s.level == 1 => {
                    if let Some((block, _)) = format::block_of::<F>(raw, 1) {
                        // SAFETY: per this function's contract.
                        unsafe { self.frames.free_guest_block(block) };
                    }
                }
                _ => {}
            }
        }
        if level == Self::TOP && F::ROOT_ORDER != 0 {
            // SAFETY: as above; the root is one `alloc_contig` block.
            unsafe { self.frames.free_table_contig(table, F::ROOT_ORDER) };
        } else {
            // SAFETY: as above, for the top table.
            unsafe { self.frames.free_table(table) };
        }
        Ok(())
    }

    /// Frees the owned frames a leaf table maps (present or parked) and the
    /// block its block leaves are pieces of (at most one: a leaf table spans
    /// one 2 MiB-aligned part), then the table.
    ///
    /// # Safety
    /// As [`Walker::release_entry`].
    unsafe fn release_leaf_table(&self, table: Hpa) -> Result {
        let mut block = None;
        for e in self.view(table, 0)? {
            let raw = e.load(Ordering::Relaxed);
            if raw == F::EMPTY {
                continue;
            }
            if let Some((b, _)) = format::block_of::<F>(raw, 0) {
                if block.is_some_and(|x| x != b) {
                    return Err(Error::Internal);
                }
                block = Some(b);
                continue;
            }
            let raw = if F::is_parked(raw) {
                F::unpark(raw)
            } else {
                raw
            };
            if let Entry::Leaf { hpa, owned: true } | Entry::Sealed { hpa, owned: true } =
                format::decode::<F>(raw, 0)
            {
                // SAFETY: per this function's contract.
                unsafe { self.frames.free_guest(hpa) };
            }
        }
        if let Some(b) = block {
            // SAFETY: per this function's contract: no piece of the block is
            // reachable any more.
            unsafe { self.frames.free_guest_block(b) };
        }
        // SAFETY: per this function's contract; its entries were just released.
        unsafe { self.frames.free_table(table) };
        Ok(())
    }

    /// Clears every parked entry in `[lo, hi)` and frees what each held — the
    /// end of a failed map (rollback) and of an unmap (reclaim).
    ///
    /// # Safety
    /// No hardware or software walker can reach what the parked entries hold
    /// (never visible, or detached and flushed since), and no other
    /// operation parks entries in the range meanwhile (its claim).
    pub(crate) unsafe fn release_parked(&self, lo: usize, hi: usize) -> Result {
        let mut it = Iter::root(self, lo, hi, Descend::Present)?;
        while let Some(v) = it.next()? {
            let Visit::Slot(s) = v else { continue };
            if F::is_parked(s.raw) {
                it.step_over();
                // Release: a walker that sees the slot empty and links a new
                // table there sees our clearing first. A page whose rights
                // are not its region's keeps them (see `after_release`).
                s.entry.store(Self::after_release(s.raw), Ordering::Release);
                // SAFETY: per this function's contract.
                unsafe { self.release_entry(s.raw & !Self::TAGS, s.level, s.base)? };
            }
        }
        Ok(())
    }

    /// Tags a parked entry may carry besides [`Format::PARK_TAG`]: what the
    /// slot holds once the parked entry is released or committed.
    pub(crate) const TAGS: u64 = F::LAZY | F::SEALED;

    /// What replaces the parked entry `raw` when what it holds is released
    /// (a rollback, an unmap's or a discard's reclaim): empty, or — for a
    /// page whose guest rights differ from its region's, tagged by whoever
    /// parked it — a lazy entry keeping them: `LAZY` keeps the parked
    /// leaf's rights, `LAZY | SEALED` keeps "no access".
    pub(crate) fn after_release(raw: u64) -> u64 {
        if raw & F::LAZY == 0 {
            F::EMPTY
        } else if raw & F::SEALED != 0 {
            F::lazy(0)
        } else {
            F::lazy(format::leaf_rights::<F>(F::unpark(raw & !Self::TAGS)))
        }
    }

    /// What replaces the parked entry `raw` when a commit makes it visible:
    /// its leaf, or, tagged `LAZY | SEALED`, the leaf sealed (a hypervisor
    /// write or prefault gave a no-access page its frame).
    pub(crate) fn after_commit(raw: u64) -> u64 {
        let leaf = F::unpark(raw & !Self::TAGS);
        if raw & F::SEALED != 0 {
            F::seal(leaf)
        } else {
            leaf
        }
    }

    /// Frees every frame and table, root included.
    ///
    /// # Safety
    /// No hardware walker uses this table any more (the caller flushed), and
    /// no other thread touches the address space.
    pub unsafe fn release_all(&self) -> Result {
        // SAFETY: per this function's contract.
        unsafe { self.release_subtree(self.root, Self::TOP, 0) }
    }

    /// True if nothing in the table is present (entries are empty or parked
    /// by the caller's own operation).
    pub(crate) fn table_is_unused(&self, table: Hpa, level: usize) -> Result<bool> {
        Ok(self.view(table, level)?.iter().all(|e| {
            let raw = e.load(Ordering::Acquire);
            // A parked entry tagged to leave a lazy one behind keeps the
            // table alive.
            raw == F::EMPTY || (F::is_parked(raw) && raw & F::LAZY == 0)
        }))
    }
}
