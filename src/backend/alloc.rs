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
use crate::flags::{Access, Flags};
use crate::format::{self, Format};
use crate::frames::Frames;
use crate::hooks::Hooks;
use crate::logs::{Log, Logs, Map};
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
/// with its own region's rights. Present pages are kept. In a dirty-logged
/// range a writable page starts armed (write-protected).
pub struct Fill<'r, F: Format> {
    regions: &'r RegionSet,
    logs: &'r Logs,
    hooks: &'r Hooks,
    /// DEVICE reaches the encoder (see `Config::device_pbmt`).
    device: bool,
    _format: PhantomData<F>,
}

impl<'r, F: Format> Fill<'r, F> {
    /// Holes of the alloc regions in `regions` (the caller holds the lock
    /// that keeps them and `logs`).
    pub fn new(regions: &'r RegionSet, logs: &'r Logs, hooks: &'r Hooks, device: bool) -> Self {
        Self {
            regions,
            logs,
            hooks,
            device,
            _format: PhantomData,
        }
    }

    /// `rights` (`Flags` bits) as a page at `gpa` is installed with: write
    /// taken away — and the page armed — if it is dirty-logged.
    fn logged(&self, gpa: Gpa, rights: u32) -> Result<u32> {
        if rights & Flags::WRITE.bits() == 0 || self.logs.is_empty() {
            return Ok(rights);
        }
        match self.logs.find(gpa.as_usize()) {
            Some(log) => {
                log.set(self.hooks, Map::Armed, gpa.as_usize())?;
                Ok(rights & !Flags::WRITE.bits())
            }
            None => Ok(rights),
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
        if !region.backend.is_alloc() {
            return Err(Error::Internal);
        }
        let rights = self.logged(gpa, region.flags.bits() & Flags::RWX.bits())?;
        let hpa = frames.alloc_guest_unzeroed()?;
        let flags = Flags::from_bits(rights | (region.flags.bits() & Flags::DEVICE.bits()))
            .ok_or(Error::Internal)?;
        Ok(format::leaf::<F>(hpa, self.mapping(flags), 0, true))
    }

    fn lazy_rights(&mut self, gpa: Gpa, rights: u32) -> Result<u32> {
        self.logged(gpa, rights)
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

/// Resolves a fault at `gpa` (page-aligned) in `region` for `access`;
/// `template(flags)` is the owned 4 KiB leaf with address 0 for region flags
/// `flags`. Runs under the shared lock, concurrently with other faults, as a
/// short pipeline (KVM's TDP MMU): look; obtain every table and the frame it
/// may need — or fail having changed nothing; install with compare-exchange.
///
/// Rights live in the entries: a present page is never replaced — if its
/// own rights allow `access` the fault is spurious (a stale translation from
/// before a protect added the right), else it is `Access` (the leaf, not the
/// region, is what the hardware checked — answering OK would loop the guest
/// forever); a sealed page (no access) is `Access`; a lazy entry's rights,
/// not the region's, decide and go into the new leaf; only an empty entry
/// takes its region's rights. Linear regions are mapped whole at map time:
/// an entry that is not present there is a stale view. What a lost race
/// leaves goes to `leftover`.
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
    (gpa, access): (Gpa, Access),
    region: &Region,
    (template, huge): (impl Fn(Flags) -> u64, Option<u64>),
    log: Option<(&Log, &Hooks)>,
    leftover: &mut Leftover,
) -> Result<Faulted> {
    let probe = walker.probe(gpa)?;
    let writes = access.writes();
    let slot = match probe {
        Probe::Present(entry, raw) if format::leaf_allows::<F>(raw, access.to_mapping()) => {
            // Access tracking cleared the accessed bit and this CPU does not
            // set it itself (the access faulted): set it.
            crate::space::mark_accessed::<F>(entry, raw);
            return Ok(Faulted::Spurious);
        }
        // The first write to a logged page since it was armed: write
        // access back, and the page is dirty (after the entry changed: a
        // get that takes the bit first re-arms a page that is writable —
        // this write faults again; one that comes later sees the bit).
        Probe::Present(entry, raw) if writes => {
            let Some((log, hooks)) = log else {
                return Err(Error::Access);
            };
            let page = gpa.as_usize();
            if !log.test(hooks, Map::Armed, page)? {
                return Err(Error::Access);
            }
            let rights = format::leaf_rights::<F>(raw) | Flags::WRITE.bits();
            let m = Flags::from_bits(rights)
                .ok_or(Error::Internal)?
                .to_mapping();
            if !format::leaf_allows::<F>(F::with_rights(raw, m), access.to_mapping()) {
                return Err(Error::Access);
            }
            let want = F::with_rights(raw, m) | F::ACCESSED;
            if entry
                .compare_exchange(raw, want, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                log.set(hooks, Map::Dirty, page)?;
            }
            return Ok(Faulted::Spurious);
        }
        Probe::Present(..) | Probe::Sealed => return Err(Error::Access),
        Probe::Frozen => return Ok(Faulted::Spurious),
        _ if !region.backend.is_alloc() => return Ok(Faulted::Spurious),
        Probe::Lazy(slot, seen) => Some((slot, seen)),
        Probe::Slot(slot, seen) => Some((slot, seen)),
        Probe::Missing(_) => None,
    };
    // The rights the new page gets: the lazy entry's, else the region's
    // (with the region's memory type either way).
    let flags = match slot {
        Some((_, seen)) if F::is_lazy(seen) => {
            Flags::from_bits(F::lazy_rights(seen) | (region.flags.bits() & Flags::DEVICE.bits()))
                .ok_or(Error::Internal)?
        }
        _ => region.flags,
    };
    if !access.allowed_by(flags) {
        return Err(Error::Access);
    }
    // Logged: a writable page installed by a read or a fetch starts armed
    // (write-protected); one installed by a write starts dirty.
    let mut install = flags;
    if let Some((log, hooks)) = log
        && flags.contains(Flags::WRITE)
    {
        log.set(hooks, Map::Armed, gpa.as_usize())?;
        if !writes {
            install =
                Flags::from_bits(flags.bits() & !Flags::WRITE.bits()).ok_or(Error::Internal)?;
        }
    }
    let flags = install;
    if let Probe::Missing(n) = probe {
        // A 2 MiB part with no leaf table yet gets a block (`AXALLOC_HUGE`;
        // never while logged: logging tracks 4 KiB pages).
        if let Some(t) = huge.filter(|_| log.is_none() && flags == region.flags)
            && let Some(done) = fault_block(walker, locked, gpa, region, t, n, leftover)?
        {
            return Ok(done);
        }
        walker.reserve_tables(n - leftover.pool_len(), &mut leftover.pool)?;
    }
    let frames = walker.frames();
    let template = template(flags);
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
            if let Some((log, hooks)) = log
                && writes
            {
                log.set(hooks, Map::Dirty, gpa.as_usize())?;
            }
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
    let exec = frames.hooks().cache().active() && crate::cache::leaf_exec::<F>(template);
    if let Err(e) = frames.zero_guest_block(hpa, exec) {
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
