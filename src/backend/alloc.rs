//! The allocation backend: guest RAM backed by frames from `alloc_frame`.
//!
//! Every frame is zeroed before any entry points to it (unless the host
//! promised zeroed frames), so a guest never sees a previous owner's data.
//! Populate zeroes with streaming stores (many pages the guest will not touch
//! soon); a fault zeroes with ordinary stores (the guest touches the page next).

use core::sync::atomic::Ordering;

use page_table_multiarch::MappingFlags;

use crate::addr::{Gpa, Hpa};
use crate::error::Result;
use crate::format::{self, Entry, Format};
use crate::hooks::Hooks;
use crate::stats::Counters;
use crate::table::{LeafSlot, LeafSource, Walker};
use crate::zero;

/// Obtains one guest frame, zeroed as configured.
fn alloc_guest_frame(hooks: &Hooks, zeroed: bool, streaming: bool) -> Result<Hpa> {
    let hpa = hooks.alloc_frame()?;
    if !zeroed {
        match hooks.virt(hpa) {
            // SAFETY: a fresh frame of ours that nothing maps yet.
            Ok(p) if streaming => unsafe { zero::zero_frame_streaming(p) },
            // SAFETY: as above.
            Ok(p) => unsafe { zero::zero_frame(p) },
            Err(e) => {
                // SAFETY: obtained above and never shown to anyone.
                unsafe { hooks.free_frame(hpa) };
                return Err(e);
            }
        }
    }
    Ok(hpa)
}

/// Leaves for eager population. With `FILL_HOLES` (a hypervisor write into a
/// lazy region) pages that are already present are kept as they are.
pub struct Populate<'a, const FILL_HOLES: bool> {
    hooks: &'a Hooks,
    counters: &'a Counters,
    flags: MappingFlags,
    zeroed: bool,
}

impl<'a, const FILL_HOLES: bool> Populate<'a, FILL_HOLES> {
    /// A source of zeroed frames mapped with `flags`.
    pub fn new(
        hooks: &'a Hooks,
        counters: &'a Counters,
        flags: MappingFlags,
        zeroed: bool,
    ) -> Self {
        Self {
            hooks,
            counters,
            flags,
            zeroed,
        }
    }
}

impl<F: Format, const FILL_HOLES: bool> LeafSource<F> for Populate<'_, FILL_HOLES> {
    const FILL_HOLES: bool = FILL_HOLES;

    fn huge_ok(&self, _gpa: Gpa, _level: usize) -> bool {
        // 4 KiB frames only, until 2 MiB pages from alloc_contig arrive.
        false
    }

    fn leaf(&mut self, _gpa: Gpa, level: usize) -> Result<u64> {
        let hpa = alloc_guest_frame(self.hooks, self.zeroed, true)?;
        self.counters.guest_frames.fetch_add(1, Ordering::Relaxed);
        Ok(format::leaf::<F>(hpa, self.flags, level, true))
    }
}

/// What a fault on an alloc region did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Faulted {
    /// A new zeroed frame now backs the page.
    Installed,
    /// The page was already present (another vCPU won, or a stale TLB).
    Spurious,
}

/// Resolves a fault at `gpa` in an alloc region with `flags`. Runs under the
/// shared lock, concurrently with other faults: a present page is never
/// replaced; the loser of a race gives back its own, never-visible frame.
pub fn fault_in<F: Format>(
    walker: &Walker<'_, F>,
    hooks: &Hooks,
    counters: &Counters,
    gpa: Gpa,
    flags: MappingFlags,
    zeroed: bool,
) -> Result<Faulted> {
    let LeafSlot::Slot(slot) = walker.leaf_slot(gpa)? else {
        return Ok(Faulted::Spurious);
    };
    let old = slot.load(Ordering::Acquire);
    if !matches!(format::decode::<F>(old, 0), Entry::Empty) {
        return Ok(Faulted::Spurious);
    }
    let hpa = alloc_guest_frame(hooks, zeroed, false)?;
    let leaf = format::leaf::<F>(hpa, flags, 0, true);
    // Release: the zeroing stores are visible before the entry is.
    match slot.compare_exchange(old, leaf, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => {
            counters.guest_frames.fetch_add(1, Ordering::Relaxed);
            counters.faults.fetch_add(1, Ordering::Relaxed);
            Ok(Faulted::Installed)
        }
        Err(_) => {
            // SAFETY: our frame lost the race and was never visible.
            unsafe { hooks.free_frame(hpa) };
            Ok(Faulted::Spurious)
        }
    }
}
