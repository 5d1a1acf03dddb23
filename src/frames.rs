//! Frames with accounting: every table and guest frame the library takes or
//! gives back goes through [`Frames`], which zeroes new frames as configured
//! and keeps the counters behind `axalloc_as_stats`.
//!
//! Counting is batched: one operation (a populate of a million pages, an
//! unmap) accumulates its changes in plain cells and publishes them once when
//! the `Frames` is dropped, instead of one atomic read-modify-write per page.

use core::cell::Cell;
use core::ptr::NonNull;
use core::sync::atomic::Ordering;

use crate::addr::{FRAME_SIZE, Hpa};
use crate::cache::{self, Span};
use crate::error::Result;
use crate::format::{BLOCK_ORDER, BLOCK_SIZE};
use crate::hooks::Hooks;
use crate::reserve::Reserve;
use crate::stats::Counters;
use crate::zero;

/// 4 KiB frames in a 2 MiB block.
const BLOCK_FRAMES: i64 = (BLOCK_SIZE / FRAME_SIZE) as i64;

/// A zeroed guest frame for a fault (the lean path in `backend/fast_fault.rs`
/// and, through [`Frames::alloc_guest`], the general one): from the zeroed
/// reserve when there is one and it has a frame (no zeroing, no hook call), else
/// from `alloc_frame`, zeroed with ordinary stores (cache-warm for the guest's
/// first touch) unless the host promised zeroed frames. Not counted: the
/// fault count stands for it in `guest_frames` once it is installed.
///
/// On Arm the frame is also made visible to the guest before it is returned
/// (`cache.rs`): what the library wrote cleaned to the PoC, and for an
/// `exec` page the instruction cache invalidated. On other hosts the
/// maintenance branch is compiled out (`Policy::active`).
#[inline(always)]
pub fn fault_frame(
    hooks: &Hooks,
    reserve: Option<&Reserve>,
    frames_zeroed: bool,
    exec: bool,
) -> Result<Hpa> {
    let policy = hooks.cache();
    if let Some(r) = reserve
        && let Some(hpa) = r.pop(hooks)?
    {
        if policy.active() {
            // Cleaned when the reserve was filled; since then only the link
            // word (cleared by `pop`) was written.
            let link = Span {
                offset: 0,
                len: Reserve::LINK_BYTES,
            };
            return publish_or_free(hooks, hpa, |p| {
                cache::publish(policy, p, link, exec, Span::FRAME)
            });
        }
        return Ok(hpa);
    }
    let hpa = hooks.alloc_frame()?;
    let clean = policy.active() && (exec || !frames_zeroed);
    if !frames_zeroed || clean {
        return publish_or_free(hooks, hpa, |p| {
            if !frames_zeroed {
                // SAFETY: a fresh frame of ours that nothing maps yet.
                unsafe { zero::zero_frame(p) };
            }
            let dirty = if frames_zeroed {
                Span::NONE
            } else {
                Span::FRAME
            };
            cache::publish(policy, p, dirty, exec, Span::FRAME);
        });
    }
    Ok(hpa)
}

/// Runs `f` on the host's view of the fresh frame `hpa`; gives the frame
/// back if the host cannot show it.
#[inline(always)]
fn publish_or_free(hooks: &Hooks, hpa: Hpa, f: impl FnOnce(NonNull<u8>)) -> Result<Hpa> {
    match hooks.virt(hpa) {
        Ok(p) => {
            f(p);
            Ok(hpa)
        }
        Err(e) => {
            // SAFETY: obtained by the caller and never shown to anyone.
            unsafe { hooks.free_frame(hpa) };
            Err(e)
        }
    }
}

/// One operation's view of frame allocation.
pub struct Frames<'a> {
    hooks: &'a Hooks,
    counters: &'a Counters,
    frames_zeroed: bool,
    /// What an empty entry of this format looks like (new tables are
    /// filled with it).
    empty: u64,
    /// Zeroed frames kept ready for faults (none for root creation).
    reserve: Option<&'a Reserve>,
    tables: Cell<i64>,
    guests: Cell<i64>,
    blocks: Cell<i64>,
}

impl<'a> Frames<'a> {
    /// Frames for one operation on an address space.
    pub fn new(
        hooks: &'a Hooks,
        counters: &'a Counters,
        frames_zeroed: bool,
        empty: u64,
        reserve: Option<&'a Reserve>,
    ) -> Self {
        Self {
            hooks,
            counters,
            frames_zeroed,
            empty,
            reserve,
            tables: Cell::new(0),
            guests: Cell::new(0),
            blocks: Cell::new(0),
        }
    }

    /// True if the host supplies zeroed frames (nothing to zero, no fence).
    pub fn frames_zeroed(&self) -> bool {
        self.frames_zeroed
    }

    /// The hooks behind these frames.
    pub fn hooks(&self) -> &'a Hooks {
        self.hooks
    }

    /// A fresh frame, filled by `fill` (skipped when `skip`); given back if
    /// the host cannot show it to us.
    fn alloc_filled(&self, skip: bool, fill: impl FnOnce(NonNull<u8>)) -> Result<Hpa> {
        let hpa = self.hooks.alloc_frame()?;
        if !skip {
            match self.hooks.virt(hpa) {
                Ok(p) => fill(p),
                Err(e) => {
                    // SAFETY: obtained above and never shown to anyone.
                    unsafe { self.hooks.free_frame(hpa) };
                    return Err(e);
                }
            }
        }
        Ok(hpa)
    }

    /// A table frame whose every entry is empty (ordinary stores: the walker
    /// writes it next). Always written, also with `AXALLOC_CFG_FRAMES_ZEROED`:
    /// that flag speaks of guest frames only, and a table frame of garbage
    /// would read as present entries (tables are few; the cost is nil).
    pub fn alloc_table(&self) -> Result<Hpa> {
        let empty = self.empty;
        let hpa = self.alloc_filled(false, |p| {
            if empty == 0 {
                // SAFETY: a fresh frame of ours that nothing maps yet.
                unsafe { zero::zero_frame(p) }
            } else {
                let entries = p.cast::<u64>().as_ptr();
                for i in 0..FRAME_SIZE / 8 {
                    // SAFETY: inside the fresh, page-aligned frame (checked
                    // by `Hooks::virt`) that nothing else references.
                    unsafe { entries.add(i).write(empty) };
                }
            }
        })?;
        self.tables.set(self.tables.get() + 1);
        Ok(hpa)
    }

    /// A root table of `2^order` contiguous frames (`alloc_contig`, aligned
    /// to its size) whose every entry is empty, as [`Frames::alloc_table`]
    /// fills one frame. `phys_to_virt` of its first frame (or the direct
    /// map) shows the whole block contiguously, per the hook's contract.
    pub fn alloc_table_contig(&self, order: u32) -> Result<Hpa> {
        let hpa = self.hooks.alloc_contig(order)?;
        let p = match self.hooks.virt(hpa) {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: obtained above and never shown to anyone.
                unsafe { self.hooks.free_contig(hpa, order) };
                return Err(e);
            }
        };
        let entries = p.cast::<u64>().as_ptr();
        for i in 0..(FRAME_SIZE / 8) << order {
            // SAFETY: inside the fresh block (`2^order` frames, contiguous in
            // the host's view per the hook contract, 8-byte aligned as
            // `Hooks::virt` checks) that nothing else references.
            unsafe { entries.add(i).write(self.empty) };
        }
        self.tables.set(self.tables.get() + (1 << order));
        Ok(hpa)
    }

    /// Gives back a root from [`Frames::alloc_table_contig`].
    ///
    /// # Safety
    /// As [`Frames::free_table`], for the whole block of `2^order` frames.
    pub unsafe fn free_table_contig(&self, hpa: Hpa, order: u32) {
        self.tables.set(self.tables.get() - (1 << order));
        // SAFETY: per the contract.
        unsafe { self.hooks.free_contig(hpa, order) };
    }

    /// A guest frame that is **not zeroed yet**: the caller zeroes it with
    /// [`Frames::zero_guest`] before any entry that reaches it can become
    /// present. Populate zeroes a whole leaf table's frames back to back —
    /// one uninterrupted stream of non-temporal stores is measurably faster
    /// than zeroing between hook calls and entry stores.
    pub fn alloc_guest_unzeroed(&self) -> Result<Hpa> {
        let hpa = self.hooks.alloc_frame()?;
        self.guests.set(self.guests.get() + 1);
        Ok(hpa)
    }

    /// Zeroes a frame from [`Frames::alloc_guest_unzeroed`] (streaming; run
    /// [`zero::streaming_fence`] before it becomes reachable).
    ///
    /// On Arm the frame is made visible to the guest too (`cache.rs`;
    /// `exec`: the guest may execute it).
    pub fn zero_guest(&self, hpa: Hpa, exec: bool) -> Result {
        if self.guest_work(exec) {
            let p = self.hooks.virt(hpa)?;
            // SAFETY: a guest frame of ours that no present entry reaches yet.
            unsafe { self.zero_and_publish(p, exec) };
        }
        Ok(())
    }

    /// True if a guest frame needs zeroing or (Arm) cache maintenance.
    fn guest_work(&self, exec: bool) -> bool {
        !self.frames_zeroed || (self.hooks.cache().active() && exec)
    }

    /// Zeroes the guest frame at `p` with streaming stores (unless the host
    /// promised zeroed frames) and, on an Arm host, cleans it to the point of
    /// coherency (and the I-side for code) — before any entry maps it.
    ///
    /// # Safety
    /// `p` is the host view of a whole guest frame of ours that no present
    /// entry reaches yet.
    unsafe fn zero_and_publish(&self, p: core::ptr::NonNull<u8>, exec: bool) {
        let policy = self.hooks.cache();
        let clean = policy.active() && (exec || !self.frames_zeroed);
        if !self.frames_zeroed {
            // SAFETY: per this function's contract.
            unsafe { zero::zero_frame_streaming(p) };
        }
        if clean {
            // The streamed stores first (on Arm they are ordinary ones;
            // the fence is for symmetry with x86 and compiles to nothing).
            zero::streaming_fence();
            let dirty = if self.frames_zeroed {
                Span::NONE
            } else {
                Span::FRAME
            };
            cache::publish(policy, p, dirty, exec, Span::FRAME);
        }
    }

    /// A 2 MiB guest block from `alloc_contig(9)`, **not zeroed yet** (the
    /// caller zeroes it with [`Frames::zero_guest_block`] before any entry
    /// reaches it). Counts 512 guest frames and one huge page.
    /// `Err(NoMemory)` when the host has no block: callers fall back to
    /// 4 KiB frames.
    pub fn alloc_guest_block(&self) -> Result<Hpa> {
        let hpa = self.hooks.alloc_contig(BLOCK_ORDER)?;
        self.guests.set(self.guests.get() + BLOCK_FRAMES);
        self.blocks.set(self.blocks.get() + 1);
        Ok(hpa)
    }

    /// Zeroes a block from [`Frames::alloc_guest_block`] with streaming
    /// stores (the bulk path: 2 MiB would only evict the cache); run
    /// [`zero::streaming_fence`] before it becomes reachable (a map's commit
    /// does, once; a fault right after this). `phys_to_virt` of the first
    /// frame (or the direct map) shows the whole block contiguously, per the
    /// hook's contract.
    pub fn zero_guest_block(&self, hpa: Hpa, exec: bool) -> Result {
        if self.guest_work(exec) {
            let p = self.hooks.virt(hpa)?;
            for i in 0..BLOCK_FRAMES as usize {
                // SAFETY: frame `i` of a block of ours that no present entry
                // reaches yet, contiguous in the host's view (the hook
                // contract), 4 KiB aligned (`Hooks::virt` checked the first).
                unsafe { self.zero_and_publish(p.add(i * FRAME_SIZE), exec) };
            }
        }
        Ok(())
    }

    /// Gives back a block from [`Frames::alloc_guest_block`], whole.
    ///
    /// # Safety
    /// As [`Frames::free_table`], for every frame of the block.
    pub unsafe fn free_guest_block(&self, hpa: Hpa) {
        self.guests.set(self.guests.get() - BLOCK_FRAMES);
        self.blocks.set(self.blocks.get() - 1);
        // SAFETY: per the contract.
        unsafe { self.hooks.free_contig(hpa, BLOCK_ORDER) };
    }

    /// True if guest frames from [`Frames::alloc_guest_unzeroed`] need
    /// [`Frames::zero_guest`] at all: the library zeroes them, or (Arm)
    /// cache maintenance may be due.
    pub fn guest_frames_need_work(&self) -> bool {
        !self.frames_zeroed || self.hooks.cache().active()
    }

    /// A zeroed guest frame for a fault: zeroed with ordinary stores, so the
    /// lines are in the cache when the guest touches the page right after the
    /// fault, and no fence is needed (the install's Release orders them).
    /// A frame from the zeroed reserve comes first: no zeroing, no hook call.
    /// `exec`: the guest may execute the page (Arm: `cache.rs`).
    #[inline]
    pub fn alloc_guest(&self, exec: bool) -> Result<Hpa> {
        let hpa = fault_frame(self.hooks, self.reserve, self.frames_zeroed, exec)?;
        self.guests.set(self.guests.get() + 1);
        Ok(hpa)
    }

    /// A guest frame just installed by a fault: the caller counts the fault
    /// (in its lock guard, at no extra atomic cost, see `sync.rs`) and the
    /// fault count stands for the frame in `guest_frames`, so it is not
    /// counted here too.
    pub fn installed_by_fault(&self) {
        self.guests.set(self.guests.get() - 1);
    }

    /// A guest frame that lost an install race: it was never counted as held
    /// by the address space.
    ///
    /// # Safety
    /// From `alloc_guest` of this `Frames`, never visible to hardware.
    pub unsafe fn discard_guest(&self, hpa: Hpa) {
        self.guests.set(self.guests.get() - 1);
        // SAFETY: per the contract.
        unsafe { self.hooks.free_frame(hpa) };
    }

    /// Gives back a table frame.
    ///
    /// # Safety
    /// A table frame of this address space that no hardware walker can reach
    /// (never linked, or unlinked and flushed since).
    pub unsafe fn free_table(&self, hpa: Hpa) {
        self.tables.set(self.tables.get() - 1);
        // SAFETY: per the contract.
        unsafe { self.hooks.free_frame(hpa) };
    }

    /// Gives back a guest frame.
    ///
    /// # Safety
    /// As [`Frames::free_table`], for an owned guest frame.
    pub unsafe fn free_guest(&self, hpa: Hpa) {
        self.guests.set(self.guests.get() - 1);
        // SAFETY: per the contract.
        unsafe { self.hooks.free_frame(hpa) };
    }
}

impl Drop for Frames<'_> {
    fn drop(&mut self) {
        // Wrapping adds of a signed delta; nothing here can panic.
        let t = self.tables.get();
        if t != 0 {
            self.counters
                .table_frames
                .fetch_add(t as u64, Ordering::Relaxed);
        }
        let g = self.guests.get();
        if g != 0 {
            self.counters
                .guest_frames
                .fetch_add(g as u64, Ordering::Relaxed);
        }
        let b = self.blocks.get();
        if b != 0 {
            self.counters
                .huge_pages
                .fetch_add(b as u64, Ordering::Relaxed);
        }
    }
}
