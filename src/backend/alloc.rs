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
use crate::flags::Flags;
use crate::format::{self, Format};
use crate::frames::Frames;
use crate::region::{Backend, Region, RegionSet};
use crate::sync::Shared;
use crate::table::install::{Installed, Probe};
use crate::table::map::LeafSource;
use crate::table::{TablePool, Walker};
use crate::zero;

/// Leaves for eager population of a new region.
pub struct Populate<F: Format> {
    template: u64,
    /// The owned-block 2 MiB leaf with address 0 (`AXALLOC_HUGE`), or none.
    huge: Option<u64>,
    _format: PhantomData<F>,
}

/// The 2 MiB block leaf with address 0 of a region with `flags`.
pub fn block_template<F: Format>(flags: MappingFlags) -> u64 {
    format::leaf::<F>(Hpa::from_usize(0), flags, 1, false) | F::BLOCK
}

/// A 2 MiB block leaf for the slot at `level` if it is a block slot
/// (level 1) of a huge region: `Ok(None)` when the host has no block
/// (fall back to 4 KiB frames); the block is zeroed by the walker.
fn block_leaf<F: Format>(frames: &Frames<'_>, template: u64, level: usize) -> Result<Option<u64>> {
    if level != 1 {
        return Ok(None);
    }
    match frames.alloc_guest_block() {
        Ok(hpa) => Ok(Some(format::with_addr::<F>(template, hpa))),
        Err(Error::NoMemory) => Ok(None),
        Err(e) => Err(e),
    }
}

impl<F: Format> Populate<F> {
    /// A source of zeroed frames mapped with `flags`; with `huge`, 2 MiB
    /// blocks wherever a whole aligned 2 MiB part lies in the region.
    pub fn new(flags: MappingFlags, huge: bool) -> Self {
        Self {
            template: format::leaf::<F>(Hpa::from_usize(0), flags, 0, true),
            huge: huge.then(|| block_template::<F>(flags)),
            _format: PhantomData,
        }
    }
}

impl<F: Format> LeafSource<F> for Populate<F> {
    const FILL_HOLES: bool = false;

    fn huge_ok(&self, _gpa: Gpa, _level: usize) -> bool {
        false
    }

    fn huge_leaf(&mut self, frames: &Frames<'_>, _gpa: Gpa, level: usize) -> Result<Option<u64>> {
        match self.huge {
            Some(t) => block_leaf::<F>(frames, t, level),
            None => Ok(None),
        }
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

    fn huge_leaf(&mut self, frames: &Frames<'_>, gpa: Gpa, level: usize) -> Result<Option<u64>> {
        let Some(region) = self.regions.find(gpa) else {
            return Err(Error::Internal);
        };
        let end = gpa.as_usize() + format::level_size(level);
        if region.backend != Backend::Alloc
            || !region.flags.contains(Flags::HUGE)
            || end > region.end.as_usize()
        {
            return Ok(None);
        }
        block_leaf::<F>(
            frames,
            block_template::<F>(self.mapping(region.flags)),
            level,
        )
    }

    fn leaf(&mut self, frames: &Frames<'_>, gpa: Gpa, _level: usize) -> Result<u64> {
        // Linear regions are always fully present: only alloc pages are holes.
        let region = self.regions.find(gpa).ok_or(Error::Internal)?;
        if region.backend != Backend::Alloc {
            return Err(Error::Internal);
        }
        let hpa = frames.alloc_guest_unzeroed()?;
        Ok(format::leaf::<F>(hpa, self.mapping(region.flags), 0, true))
    }
}

impl<F: Format> Fill<'_, F> {
    /// The encoder's view of a region's flags here.
    fn mapping(&self, flags: Flags) -> MappingFlags {
        let mut m = flags.to_mapping();
        if !self.device {
            m -= MappingFlags::DEVICE;
        }
        m
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
    /// A 2 MiB block that lost its install race.
    block: Option<Hpa>,
    pool: TablePool,
}

impl Leftover {
    /// Nothing left over.
    pub const fn new() -> Self {
        Self {
            frame: None,
            block: None,
            pool: TablePool::new(),
        }
    }

    /// Tables held for the install.
    fn pool_len(&self) -> usize {
        self.pool.len()
    }

    /// Gives everything back (call with no lock held).
    #[inline]
    pub fn free<F: Format>(mut self, walker: &Walker<'_, F>) {
        if let Some(hpa) = self.frame.take() {
            // SAFETY: obtained by the fault and never installed.
            unsafe { walker.frames().discard_guest(hpa) };
        }
        if let Some(hpa) = self.block.take() {
            // SAFETY: obtained by the fault and never installed.
            unsafe { walker.frames().free_guest_block(hpa) };
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
///
/// `huge` is the region's 2 MiB block leaf with address 0 when it has
/// `AXALLOC_HUGE`: a fault in a 2 MiB-aligned part inside the region whose
/// level-1 entry is empty (no 4 KiB page of it present, nor ever linked
/// since) installs a zeroed block there; without a block from the host it
/// falls back to a 4 KiB frame.
#[allow(clippy::too_many_arguments)]
pub fn fault_in<F: Format>(
    walker: &Walker<'_, F>,
    locked: Shared<'_>,
    gpa: Gpa,
    region: &Region,
    template: u64,
    huge: Option<u64>,
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
            if let Some(t) = huge
                && let Some(done) = fault_block(walker, locked, gpa, region, t, n, leftover)?
            {
                return Ok(done);
            }
            walker.reserve_tables(n - leftover.pool_len(), &mut leftover.pool)?;
            None
        }
    };
    let frames = walker.frames();
    let hpa = frames.alloc_guest()?;
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

/// The huge part of [`fault_in`]: the level-1 entry of `gpa`'s 2 MiB part
/// is empty (`missing` tables down to a 4 KiB entry, so `missing - 1` above
/// it). `Ok(None)`: not a block part, or no block from the host — take a
/// 4 KiB frame (the tables reserved here stay in `leftover.pool`).
fn fault_block<F: Format>(
    walker: &Walker<'_, F>,
    _locked: Shared<'_>,
    gpa: Gpa,
    region: &Region,
    template: u64,
    missing: usize,
    leftover: &mut Leftover,
) -> Result<Option<Faulted>> {
    let base = gpa.as_usize() & !(format::BLOCK_SIZE - 1);
    if missing == 0
        || base < region.start.as_usize()
        || base + format::BLOCK_SIZE > region.end.as_usize()
    {
        return Ok(None);
    }
    walker.reserve_tables(missing - 1, &mut leftover.pool)?;
    let frames = walker.frames();
    let hpa = match frames.alloc_guest_block() {
        Ok(hpa) => hpa,
        Err(Error::NoMemory) => return Ok(None),
        Err(e) => return Err(e),
    };
    if let Err(e) = frames.zero_guest_block(hpa) {
        leftover.block = Some(hpa);
        return Err(e);
    }
    // The streamed zeroes before the entry that publishes the block.
    zero::streaming_fence();
    let leaf = format::with_addr::<F>(template, hpa);
    match walker.install_at(Gpa::from_usize(base), leaf, 1, &mut leftover.pool) {
        Ok(Installed::Yes) => {
            frames.installed_by_fault();
            Ok(Some(Faulted::Installed))
        }
        other => {
            leftover.block = Some(hpa);
            other.map(|_| Some(Faulted::Spurious))
        }
    }
}
