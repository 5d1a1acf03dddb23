//! The allocation backend: guest RAM backed by frames from `alloc_frame`.
//!
//! Every frame is zeroed before any entry points to it (unless the host
//! promised zeroed frames), so a guest never sees a previous owner's data.
//! Zeroing uses non-temporal stores (see `zero.rs`): for populate they avoid
//! reading every line into the cache only to evict it again; for a fault they
//! halve the cost of the zeroing that dominates it.

use core::marker::PhantomData;
use core::sync::atomic::Ordering;

use page_table_multiarch::MappingFlags;

use crate::addr::{Gpa, Hpa};
use crate::error::Result;
use crate::format::{self, Format};
use crate::frames::Frames;
use crate::table::{LeafSource, Probe, TablePool, Walker};
use crate::zero;

/// Leaves for eager population. With `FILL_HOLES` (a hypervisor write into a
/// lazy region) pages that are already present are kept as they are.
pub struct Populate<F: Format, const FILL_HOLES: bool> {
    template: u64,
    _format: PhantomData<F>,
}

impl<F: Format, const FILL_HOLES: bool> Populate<F, FILL_HOLES> {
    /// A source of zeroed frames mapped with `flags`.
    pub fn new(flags: MappingFlags) -> Self {
        Self {
            template: format::leaf::<F>(Hpa::from_usize(0), flags, 0, true),
            _format: PhantomData,
        }
    }
}

impl<F: Format, const FILL_HOLES: bool> LeafSource<F> for Populate<F, FILL_HOLES> {
    const FILL_HOLES: bool = FILL_HOLES;

    fn huge_ok(&self, _gpa: Gpa, _level: usize) -> bool {
        // 4 KiB frames only, until 2 MiB pages from alloc_contig arrive.
        false
    }

    #[inline]
    fn leaf(&mut self, frames: &Frames<'_>, _gpa: Gpa, _level: usize) -> Result<u64> {
        // Zeroed by the walker, a leaf table at a time.
        let hpa = frames.alloc_guest_unzeroed()?;
        Ok(format::with_addr::<F>(self.template, hpa))
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
/// shared lock, concurrently with other faults, as a short pipeline (KVM's
/// TDP MMU): look; obtain every table and the frame it may need — or fail
/// having changed nothing; install with compare-exchange. A present page is
/// never replaced; the loser of a race gives back its own, never-visible
/// frame and tables.
pub fn fault_in<F: Format>(
    walker: &Walker<'_, F>,
    gpa: Gpa,
    flags: MappingFlags,
) -> Result<Faulted> {
    let frames = walker.frames();
    let mut pool = TablePool::new();
    let slot = match walker.probe(gpa)? {
        Probe::Present => return Ok(Faulted::Spurious),
        Probe::Slot(slot, seen) => Some((slot, seen)),
        Probe::Missing(n) => {
            walker.reserve_tables(n, &mut pool)?;
            None
        }
    };
    let hpa = match frames.alloc_guest() {
        Ok(hpa) => hpa,
        Err(e) => {
            walker.release_pool(&mut pool);
            return Err(e);
        }
    };
    // The streaming zero stores must be visible before the entry is.
    if !frames.frames_zeroed() {
        zero::streaming_fence();
    }
    let leaf = format::leaf::<F>(hpa, flags, 0, true);
    let installed = match slot {
        // The common case: the leaf table exists, one compare-exchange.
        Some((slot, seen)) => Ok(slot
            .compare_exchange(seen, leaf, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()),
        None => {
            let r = walker.install_leaf(gpa, leaf, &mut pool);
            walker.release_pool(&mut pool);
            r
        }
    };
    match installed {
        Ok(true) => {
            frames.installed_by_fault();
            Ok(Faulted::Installed)
        }
        lost_or_broken => {
            // SAFETY: our frame was not installed: never visible.
            unsafe { frames.discard_guest(hpa) };
            lost_or_broken.map(|_| Faulted::Spurious)
        }
    }
}
