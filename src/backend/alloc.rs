//! The allocation backend: guest RAM backed by frames from `alloc_frame`.
//!
//! Every frame is zeroed before any entry points to it (unless the host
//! promised zeroed frames), so a guest never sees a previous owner's data.
//! Populate zeroes in bulk with streaming stores (one fence per operation);
//! a fault zeroes its one frame with ordinary stores, so the page is in the
//! cache when the guest touches it right after (see `zero.rs`).

use core::marker::PhantomData;
use core::sync::atomic::Ordering;

use page_table_multiarch::MappingFlags;

use crate::addr::{Gpa, Hpa};
use crate::error::{Error, Result};
use crate::format::{self, Format};
use crate::frames::Frames;
use crate::region::{Backend, Region, RegionSet};
use crate::sync::Shared;
use crate::table::install::{Installed, Probe};
use crate::table::map::LeafSource;
use crate::table::{TablePool, Walker};

/// Leaves for eager population of a new region.
pub struct Populate<F: Format> {
    template: u64,
    _format: PhantomData<F>,
}

impl<F: Format> Populate<F> {
    /// A source of zeroed frames mapped with `flags`.
    pub fn new(flags: MappingFlags) -> Self {
        Self {
            template: format::leaf::<F>(Hpa::from_usize(0), flags, 0, true),
            _format: PhantomData,
        }
    }
}

impl<F: Format> LeafSource<F> for Populate<F> {
    const FILL_HOLES: bool = false;

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

/// Leaves for the holes of the lazy regions a hypervisor write covers: each
/// with its own region's rights. Present pages are kept.
pub struct Fill<'r, F: Format> {
    regions: &'r RegionSet,
    /// DEVICE reaches the encoder (see `Config::device_pbmt`).
    device: bool,
    _format: PhantomData<F>,
}

impl<'r, F: Format> Fill<'r, F> {
    /// Holes of the alloc regions in `regions` (the caller holds the lock
    /// that keeps them).
    pub fn new(regions: &'r RegionSet, device: bool) -> Self {
        Self {
            regions,
            device,
            _format: PhantomData,
        }
    }
}

impl<F: Format> LeafSource<F> for Fill<'_, F> {
    const FILL_HOLES: bool = true;

    fn huge_ok(&self, _gpa: Gpa, _level: usize) -> bool {
        false
    }

    fn leaf(&mut self, frames: &Frames<'_>, gpa: Gpa, _level: usize) -> Result<u64> {
        // Linear regions are always fully present: only alloc pages are holes.
        let region = self.regions.find(gpa).ok_or(Error::Internal)?;
        if region.backend != Backend::Alloc {
            return Err(Error::Internal);
        }
        let hpa = frames.alloc_guest_unzeroed()?;
        let mut flags = region.flags.to_mapping();
        if !self.device {
            flags -= page_table_multiarch::MappingFlags::DEVICE;
        }
        Ok(format::leaf::<F>(hpa, flags, 0, true))
    }
}

/// What a fault on an alloc region did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Faulted {
    /// A new zeroed frame now backs the page.
    Installed,
    /// The page was already present (another vCPU won, or a stale TLB), or
    /// another operation is changing it (frozen): the guest re-faults.
    Spurious,
}

/// Frames a fault obtained but did not use (a lost race). Never visible;
/// given back after the lock is released.
pub struct Leftover {
    frame: Option<Hpa>,
    pool: TablePool,
}

impl Leftover {
    /// Nothing left over.
    pub const fn new() -> Self {
        Self {
            frame: None,
            pool: TablePool::new(),
        }
    }

    /// Gives everything back (call with no lock held).
    #[inline]
    pub fn free<F: Format>(mut self, walker: &Walker<'_, F>) {
        if let Some(hpa) = self.frame.take() {
            // SAFETY: obtained by the fault and never installed.
            unsafe { walker.frames().discard_guest(hpa) };
        }
        if !self.pool.is_empty() {
            walker.release_pool(&mut self.pool);
        }
    }
}

impl Default for Leftover {
    fn default() -> Self {
        Self::new()
    }
}

/// Resolves a fault at `gpa` (page-aligned) in `region`, an alloc region
/// that allows `access`; `template` is the region's owned 4 KiB leaf with
/// address 0. Runs under the shared lock, concurrently with other faults, as
/// a short pipeline (KVM's TDP MMU): look; obtain every table and the frame
/// it may need — or fail having changed nothing; install with
/// compare-exchange. A present page is never replaced: if its own rights
/// allow `access` the fault is spurious, else it is `Access` (the leaf, not
/// the region, is what the hardware checked — answering OK would loop the
/// guest forever). What a lost race leaves goes to `leftover`.
///
/// This is the general path; the common case — every table present, the
/// 4 KiB entry empty — was tried first by `fast_fault.rs`.
pub fn fault_in<F: Format>(
    walker: &Walker<'_, F>,
    _locked: Shared<'_>,
    gpa: Gpa,
    region: &Region,
    template: u64,
    access: MappingFlags,
    leftover: &mut Leftover,
) -> Result<Faulted> {
    if region.backend != Backend::Alloc {
        // Linear regions are mapped whole at map time: a stale TLB.
        return Ok(Faulted::Spurious);
    }
    let slot = match walker.probe(gpa)? {
        Probe::Present(raw) if format::leaf_allows::<F>(raw, access) => {
            return Ok(Faulted::Spurious);
        }
        Probe::Present(_) => return Err(Error::Access),
        Probe::Frozen => return Ok(Faulted::Spurious),
        Probe::Slot(slot, seen) => Some((slot, seen)),
        Probe::Missing(n) => {
            walker.reserve_tables(n, &mut leftover.pool)?;
            None
        }
    };
    let frames = walker.frames();
    let exec = frames.hooks().cache().active() && crate::cache::leaf_exec::<F>(template);
    let hpa = frames.alloc_guest(exec)?;
    let leaf = F::leaf_at(template, hpa);
    let installed = match slot {
        // The common case: the leaf table exists, one compare-exchange
        // (Release: the frame's zeroing before the entry).
        Some((slot, seen)) => {
            match slot.compare_exchange(seen, leaf, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => Ok(Installed::Yes),
                Err(_) => Ok(Installed::Lost),
            }
        }
        None => walker.install_leaf(gpa, leaf, &mut leftover.pool),
    };
    match installed {
        Ok(Installed::Yes) => {
            frames.installed_by_fault();
            Ok(Faulted::Installed)
        }
        other => {
            leftover.frame = Some(hpa);
            other.map(|_| Faulted::Spurious)
        }
    }
}
