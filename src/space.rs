//! The address space: ties the region set, the table and the hooks together
//! and decides which lock each operation takes.
//!
//! Locking: one fair (phase-fair) reader-writer spin lock over the region set
//! and the claims ([`Maps`]). Nothing slow runs under its exclusive side:
//! - shared: `handle_fault`, `translate`, `read`, `write` (incl. its
//!   populate of holes), `stats` — vCPUs run these in parallel; page installs
//!   use compare-exchange;
//! - exclusive, briefly: a map's claim and commit, an unmap's split and detach
//!   (with yield points), lazy maps. A map allocates and zeroes with no lock
//!   held (inside its claim, see `claims.rs`); an unmap flushes and frees with
//!   no lock held. `alloc_frame` may run under either side; `flush_tlb` and
//!   `free_frame` never run under the lock.
//!
//! The object itself lives in a frame from `alloc_frame`: the library needs no
//! allocator for anything.

use core::ptr::NonNull;
use core::sync::atomic::AtomicU64;

use crate::addr::{FRAME_SIZE, Gpa, Hpa};
use crate::backend::alloc::{self, Fill, Populate};
use crate::backend::fast_fault::{CachedTable, Fast, FastFault, TableCache};
use crate::backend::linear::Linear;
use crate::claims::{Claim, Claims, Purpose};
use crate::error::{Error, Result};
use crate::flags::{Access, Flags};
use crate::format::{self, Entry, Format, FormatKind, level_size, with_format};
use crate::hooks::Hooks;
use crate::logs::Logs;
use crate::region::{Backend, Region, RegionSet, Spare};
use crate::reserve::Reserve;
use crate::stats::{Counters, Stats};
use crate::sync::{Exclusive, ReadGuard, Relax, RwLock, WriteGuard};
use crate::table::map::{LeafSource, Prepared};
use crate::table::protect::Part;
use crate::table::stock::TableStock;
use crate::table::unmap::DetachCtx;
use crate::table::{TablePool, Walker, read};

mod track;

pub(crate) use track::mark_accessed;

/// One leaf template per combination of region flags.
const LEAF_TEMPLATES: usize = Flags::ALL.bits() as usize + 1;

const _: () = assert!(LEAF_TEMPLATES.is_power_of_two());

/// The owned 4 KiB leaf with address 0 for every flags value, in format `F`.
fn leaf_templates<F: Format>(config: &Config) -> [u64; LEAF_TEMPLATES] {
    let mut t = [0; LEAF_TEMPLATES];
    for (bits, slot) in t.iter_mut().enumerate() {
        if let Some(flags) = Flags::from_bits(bits as u32) {
            // A faulted page was just accessed (`axalloc_young_get`).
            *slot =
                format::leaf::<F>(Hpa::from_usize(0), config.mapping(flags), 0, true) | F::ACCESSED;
        }
    }
    t
}

/// How an address space is set up (validated by [`Config::validate`]).
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// The entry format (and table shape).
    pub format: FormatKind,
    /// Width of the guest-physical space (at most the format's
    /// [`FormatKind::max_gpa_bits`]; Arm: what VTCR_EL2.T0SZ says).
    pub gpa_bits: u32,
    /// The hooks return zeroed frames: skip zeroing.
    pub frames_zeroed: bool,
    /// Never create 1 GiB leaves.
    pub no_huge_1g: bool,
    /// RISC-V: DEVICE leaves get Svpbmt PBMT = IO (`AXALLOC_CFG_RISCV_SVPBMT`).
    pub svpbmt: bool,
    /// Arm: the host runs with FEAT_S2FWB (`AXALLOC_CFG_ARM_S2FWB`): leaves
    /// use the FWB MemAttr encoding.
    pub s2fwb: bool,
    /// Guest-physical window all mappings must lie in.
    pub base: Gpa,
    /// Its size in bytes.
    pub size: usize,
}

impl Config {
    /// Window 4 KiB aligned, non-empty, not overflowing, inside the format's
    /// guest-physical space.
    pub fn validate(&self) -> Result {
        let (base, size) = (self.base.as_usize(), self.size);
        if base % FRAME_SIZE != 0 || size % FRAME_SIZE != 0 || size == 0 {
            return Err(Error::Invalid);
        }
        let end = base.checked_add(size).ok_or(Error::Invalid)?;
        if self.gpa_bits > self.format.max_gpa_bits() || end > 1usize << self.gpa_bits {
            return Err(Error::Invalid);
        }
        // Svpbmt is a RISC-V extension, FEAT_S2FWB an Arm one: meaningless
        // for another format.
        if self.svpbmt && self.device_pbmt_is_native() {
            return Err(Error::Invalid);
        }
        if self.s2fwb && self.format.family() != format::Family::ArmS2 {
            return Err(Error::Invalid);
        }
        Ok(())
    }

    /// True unless DEVICE has no encoding in the leaves: on RISC-V without
    /// Svpbmt the memory type is the PMA's, and leaves carry PBMT = 0.
    pub fn device_pbmt(&self) -> bool {
        self.svpbmt || self.device_pbmt_is_native()
    }

    /// The format encodes DEVICE in every leaf (not RISC-V).
    fn device_pbmt_is_native(&self) -> bool {
        !matches!(
            self.format.family(),
            format::Family::Sv39x4 | format::Family::Sv48x4 | format::Family::Sv57x4
        )
    }

    /// The encoder's view of region flags `flags` in this space.
    pub fn mapping(&self, flags: Flags) -> page_table_multiarch::MappingFlags {
        use page_table_multiarch::MappingFlags as M;
        let mut m = flags.to_mapping();
        if !self.device_pbmt() {
            m -= M::DEVICE;
        }
        if self.s2fwb {
            // The Arm encoder's FEAT_S2FWB selector (see `format::arm`).
            m |= crate::format::arm::FWB;
        }
        m
    }

    fn end(&self) -> usize {
        self.base.as_usize() + self.size
    }

    /// Checks a page range against the window: `[gpa, gpa + size)`.
    fn range(&self, gpa: u64, size: u64) -> Result<(Gpa, Gpa)> {
        let (gpa, size) = (gpa as usize, size as usize);
        if gpa % FRAME_SIZE != 0 || size % FRAME_SIZE != 0 || size == 0 {
            return Err(Error::Invalid);
        }
        let end = gpa.checked_add(size).ok_or(Error::Invalid)?;
        if gpa < self.base.as_usize() || end > self.end() {
            return Err(Error::Invalid);
        }
        Ok((Gpa::from_usize(gpa), Gpa::from_usize(end)))
    }
}

/// What the lock protects: the regions, and the ranges operations claimed.
pub struct Maps {
    /// The mapped regions.
    pub regions: RegionSet,
    /// Ranges maps / unmaps are working on without the lock.
    pub claims: Claims,
    /// Dirty-logged ranges and their bitmaps.
    pub logs: Logs,
}

/// Waiting for the lock calls the host's `relax` hook.
struct HookRelax<'h>(&'h Hooks);

impl Relax for HookRelax<'_> {
    #[inline]
    fn relax(&self) {
        self.0.relax();
    }
}

/// One guest's stage-2 address space.
pub struct AddrSpace {
    hooks: Hooks,
    config: Config,
    /// The frame this object lives in.
    home: Hpa,
    root: Hpa,
    /// The root's host-virtual address (resolved once; walks start there).
    root_virt: NonNull<u8>,
    counters: Counters,
    /// Zeroed frames kept ready for faults (`axalloc_reserve`).
    reserve: Reserve,
    /// The owned 4 KiB leaf (address 0) for each combination of region
    /// flags (`Flags::ALL + 1` of them), encoded once at creation: a fault
    /// only ORs in its frame's address.
    leaf_templates: [u64; LEAF_TEMPLATES],
    maps: RwLock<Maps>,
}

const _: () = assert!(core::mem::size_of::<AddrSpace>() <= FRAME_SIZE);

// SAFETY: shared state is atomics (table entries, counters, lock shards) or
// behind the lock (regions, claims); `root_virt` points into the root frame,
// which the space owns for its whole life and only accesses atomically; the
// hooks are callable from any thread by contract.
unsafe impl Sync for AddrSpace {}
// SAFETY: as above; nothing is tied to the creating thread.
unsafe impl Send for AddrSpace {}

/// An unmap's detach, seen from the table: the exclusive lock it holds (and
/// may yield), the claim it widens, the regions that keep tables alive.
struct Unmapping<'s> {
    space: &'s AddrSpace,
    guard: Option<WriteGuard<'s, Maps>>,
    claim: Claim,
    /// A discard: the regions stay, and so do rights that differ from them.
    discard: bool,
}

impl DetachCtx for Unmapping<'_> {
    fn exclusive(&self) -> Option<Exclusive<'_>> {
        // `guard` is `None` only inside `pause`, which puts it back.
        self.guard.as_ref().map(|g| g.token())
    }

    fn in_use(&self, lo: usize, hi: usize) -> bool {
        self.guard.as_ref().is_none_or(|m| {
            m.regions.overlaps(Gpa::from_usize(lo), Gpa::from_usize(hi))
                || m.claims.overlaps(lo, hi, Some(&self.claim))
        })
    }

    fn widen(&mut self, lo: usize, hi: usize) -> Result {
        let m = self.guard.as_mut().ok_or(Error::Internal)?;
        m.claims
            .widen(&mut self.claim, Gpa::from_usize(lo), Gpa::from_usize(hi))
    }

    /// Between two steps the range is claimed and each entry is either
    /// still present, parked by this detach, or empty; faults in a discarded
    /// range (whose regions stay) may fill empty entries meanwhile, which the
    /// detach then either parks too or leaves behind — both are a discard
    /// racing with the guest's own access, as on hardware.
    fn pause(&mut self) {
        if self.guard.as_ref().is_some_and(|g| g.contended()) {
            self.guard = None;
            self.guard = Some(self.space.lock_exclusive());
        }
    }

    fn keep_rights(&self, gpa: usize) -> Option<u32> {
        if !self.discard {
            return None;
        }
        let r = self.guard.as_ref()?.regions.find(Gpa::from_usize(gpa))?;
        Some(r.flags.bits() & Flags::RWX.bits())
    }
}

impl AddrSpace {
    /// Creates an address space in a frame from the hooks, with an empty root
    /// table. On error nothing is held.
    pub fn create(config: Config, hooks: Hooks) -> Result<NonNull<AddrSpace>> {
        config.validate()?;
        let hooks = hooks
            .with_hpa_limit(1 << config.format.hpa_bits())
            .with_cache(crate::cache::Policy::for_space(
                config.format.family() == format::Family::ArmS2,
                config.s2fwb,
            ));
        let home = hooks.alloc_frame()?;
        let ptr = match hooks.virt(home) {
            Ok(p) if (p.as_ptr() as usize).is_multiple_of(core::mem::align_of::<AddrSpace>()) => {
                p.cast::<AddrSpace>()
            }
            other => {
                // SAFETY: obtained above and never shown to anyone.
                unsafe { hooks.free_frame(home) };
                return Err(other.err().unwrap_or(Error::Hook));
            }
        };
        let counters = Counters::default();
        let root = match with_format!(config.format, F => {
            Walker::<F>::create_root(&hooks, &counters, config.frames_zeroed)
        }) {
            Ok(root) => root,
            Err(e) => {
                // SAFETY: as above.
                unsafe { hooks.free_frame(home) };
                return Err(e);
            }
        };
        let root_virt = match hooks.virt(root) {
            Ok(v) => v,
            Err(e) => {
                let order = config.format.root_order();
                // SAFETY: both obtained above, never shown to hardware.
                unsafe {
                    if order == 0 {
                        hooks.free_frame(root);
                    } else {
                        hooks.free_contig(root, order);
                    }
                    hooks.free_frame(home);
                }
                return Err(e);
            }
        };
        let space = AddrSpace {
            hooks,
            config,
            home,
            root,
            root_virt,
            counters,
            reserve: Reserve::new(),
            leaf_templates: with_format!(config.format, F => leaf_templates::<F>(&config)),
            maps: RwLock::new(Maps {
                regions: RegionSet::new(),
                claims: Claims::new(),
                logs: Logs::new(),
            }),
        };
        // SAFETY: `ptr` is the host's view of a whole, suitably aligned frame
        // that we own and nobody else references.
        unsafe { ptr.write(space) };
        Ok(ptr)
    }

    /// Flushes the whole window once and gives back every frame, this
    /// object's own last.
    ///
    /// # Safety
    /// `this` came from [`AddrSpace::create`], is not used by any other
    /// thread, and is never used again.
    pub unsafe fn destroy(this: NonNull<AddrSpace>) {
        // SAFETY: per this function's contract the object is alive and ours.
        let space = unsafe { this.as_ref() };
        let hooks = space.hooks;
        let home = space.home;
        // Always flush: even with every entry gone, translations cached under
        // this root's tag (EPTP / ASID) must not outlive it — the root frame
        // may become another guest's root next.
        hooks.flush(space.config.base.as_u64(), space.config.size as u64);
        with_format!(space.config.format, F => {
            let w = space.walker::<F>();
            // SAFETY: flushed just above; no other thread uses the space.
            // An error here means a broken table: free what can be reached.
            let _ = unsafe { w.release_all() };
        });
        let logs = {
            let mut m = space.lock_exclusive();
            m.regions.release(&hooks);
            m.logs.take_all()
        };
        for log in logs.into_iter().flatten() {
            // SAFETY: out of the registry; no other thread uses the space.
            unsafe { log.free(&hooks) };
        }
        space.reserve.drain(&hooks);
        // SAFETY: nothing refers to the object any more; drop it in place,
        // then return its frame.
        unsafe {
            core::ptr::drop_in_place(this.as_ptr());
            hooks.free_frame(home);
        }
    }

    /// The walker, for unit tests.
    #[cfg(test)]
    pub fn test_walker<F: Format>(&self) -> Walker<'_, F> {
        self.walker::<F>()
    }

    /// Claims `[start, end)` as an operation in flight would (unit tests).
    #[cfg(test)]
    pub fn test_claim(&self, start: u64, end: u64) -> Claim {
        self.lock_exclusive()
            .claims
            .claim(Gpa::from_u64(start), Gpa::from_u64(end), Purpose::Map)
            .unwrap()
    }

    /// Releases a claim from [`AddrSpace::test_claim`].
    #[cfg(test)]
    pub fn test_release(&self, claim: Claim) {
        self.lock_exclusive().claims.release(claim);
    }

    fn walker<F: Format>(&self) -> Walker<'_, F> {
        Walker::new(
            &self.hooks,
            &self.counters,
            (self.root, self.root_virt),
            self.config.frames_zeroed,
            Some(&self.reserve),
        )
    }

    /// Keeps `frames` zeroed frames ready for faults: fills up (allocating
    /// and zeroing with no lock held) or gives the surplus back.
    pub fn set_reserve(&self, frames: u64) -> Result {
        self.reserve
            .set(&self.hooks, frames, self.config.frames_zeroed)
    }

    fn lock_shared(&self) -> ReadGuard<'_, Maps> {
        self.maps.read_with(&HookRelax(&self.hooks))
    }

    /// The exclusive lock. Taking it resets the faults' cached leaf tables
    /// (`LeafCache`): tables are unlinked only in exclusive sections.
    fn lock_exclusive(&self) -> WriteGuard<'_, Maps> {
        self.maps.write_with(&HookRelax(&self.hooks))
    }

    /// Host-physical address of the root table.
    pub fn root(&self) -> Hpa {
        self.root
    }

    /// What the hardware needs to walk the table (`axalloc_as_hw`).
    pub fn hw(&self) -> format::Hw {
        self.config.format.hw(self.root, self.config.gpa_bits)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        let maps = self.lock_shared();
        let mut st = self.counters.read(
            maps.regions.len() as u64,
            maps.regions.mapped_bytes(),
            self.maps.events(),
        );
        st.reserve_frames = self.reserve.len();
        st
    }

    /// Largest leaf level a linear mapping may use.
    fn max_linear_level<F: Format>(&self) -> usize {
        if self.config.no_huge_1g {
            F::MAX_LEAF_LEVEL.min(1)
        } else {
            F::MAX_LEAF_LEVEL
        }
    }

    /// Checks that a new region fits: no overlap (`Exists`), no overlapping
    /// operation (`Busy`), room in the region set. On error, chunk frames go
    /// to `spare`.
    fn admit(&self, m: &mut Maps, r: &Region, spare: &mut Spare) -> Result {
        if !r.flags.contains(Flags::READ) {
            return Err(Error::Invalid);
        }
        if m.regions.overlaps(r.start, r.end) {
            return Err(Error::Exists);
        }
        if m.claims
            .overlaps(r.start.as_usize(), r.end.as_usize(), None)
            || m.logs.overlaps(r.start.as_usize(), r.end.as_usize())
        {
            return Err(Error::Busy);
        }
        m.regions
            .reserve(&self.hooks, 1)
            .inspect_err(|_| m.regions.shrink(spare))
    }

    /// Maps guest RAM backed by frames from the hooks, now (`populate`) or on
    /// first fault.
    pub fn map_alloc(&self, gpa: u64, size: u64, flags: Flags, populate: bool) -> Result {
        let (start, end) = self.config.range(gpa, size)?;
        let huge = flags.contains(Flags::HUGE);
        if huge && !self.hooks.has_contig() {
            return Err(Error::Unsupported);
        }
        let region = Region {
            start,
            end,
            backend: Backend::Alloc,
            flags,
        };
        if populate {
            return with_format!(self.config.format, F => {
                let src = Populate::<F>::new(self.config.mapping(flags), huge);
                self.map_prepared::<F, _>(region, src)
            });
        }
        let mut spare = Spare::new();
        let r = {
            let mut m = self.lock_exclusive();
            self.admit(&mut m, &region, &mut spare)
                .and_then(|()| m.regions.insert(region))
        };
        spare.free(&self.hooks);
        r
    }

    /// Maps `[gpa, gpa + size)` to `[hpa, hpa + size)`.
    pub fn map_linear(&self, gpa: u64, hpa: u64, size: u64, flags: Flags) -> Result {
        let (start, end) = self.config.range(gpa, size)?;
        let hpa = hpa as usize;
        if !hpa.is_multiple_of(FRAME_SIZE)
            || hpa
                .checked_add(size as usize)
                .is_none_or(|e| e as u64 > self.hooks.hpa_limit())
        {
            return Err(Error::Invalid);
        }
        let hpa = Hpa::from_usize(hpa);
        let region = Region {
            start,
            end,
            backend: Backend::Linear { hpa },
            flags,
        };
        with_format!(self.config.format, F => {
            let src = Linear::new(start, hpa, self.config.mapping(flags), self.max_linear_level::<F>());
            self.map_prepared::<F, _>(region, src)
        })
    }

    /// Maps `region`'s pages from `src` and adds it, all or nothing: claim the
    /// range (exclusive, briefly), prepare with no lock held — allocating and
    /// zeroing while vCPUs keep faulting elsewhere —, then commit and insert
    /// the region (exclusive, briefly; cannot fail).
    fn map_prepared<F: Format, S: LeafSource<F>>(&self, region: Region, mut src: S) -> Result {
        let mut spare = Spare::new();
        let claim = {
            let mut m = self.lock_exclusive();
            let claim = self
                .admit(&mut m, &region, &mut spare)
                .and_then(|()| m.claims.claim(region.start, region.end, Purpose::Map));
            if claim.is_err() {
                m.regions.shrink(&mut spare);
            }
            claim
        };
        let claim = match claim {
            Ok(c) => c,
            Err(e) => {
                spare.free(&self.hooks);
                return Err(e);
            }
        };
        let w = self.walker::<F>();
        let mut p = Prepared::new(region.start, region.end);
        let result = match w.prepare(&mut p, &mut src) {
            Ok(()) => {
                let mut m = self.lock_exclusive();
                let r = w
                    .commit::<S>(m.token().shared(), &mut p)
                    .and_then(|()| m.regions.insert(region));
                m.claims.release(claim);
                drop(m);
                r.and_then(|()| w.finish(&p))
            }
            Err(e) => {
                // Fails only on a broken invariant; the first error wins.
                let _ = w.rollback(&p);
                let mut m = self.lock_exclusive();
                m.claims.release(claim);
                m.regions.shrink(&mut spare);
                Err(e)
            }
        };
        spare.free(&self.hooks);
        result
    }

    /// Removes `[gpa, gpa + size)` from every region it touches: split the
    /// edges and detach (exclusive, with yield points), then flush once and
    /// free with no lock held.
    pub fn unmap(&self, gpa: u64, size: u64) -> Result {
        let (start, end) = self.config.range(gpa, size)?;
        with_format!(self.config.format, F => self.unmap_in::<F>(start, end))
    }

    fn unmap_in<F: Format>(&self, start: Gpa, end: Gpa) -> Result {
        let w = self.walker::<F>();
        let mut spare = Spare::new();
        let mut pool = TablePool::new();
        let mut m = self.lock_exclusive();
        if m.claims.overlaps(start.as_usize(), end.as_usize(), None) {
            return Err(Error::Busy);
        }
        if !m.regions.overlaps(start, end) {
            return Ok(());
        }
        // Prepare: the region slot and every table the edge splits need
        // (allocated under the lock: a few frames at most), or nothing changes.
        let splits_region = m
            .regions
            .find(start)
            .is_some_and(|r| r.start < start && r.end > end);
        let prepared = if splits_region {
            m.regions.reserve(&self.hooks, 1)
        } else {
            Ok(())
        }
        .and_then(|()| w.split_tables_needed(start, end))
        .and_then(|n| w.reserve_tables(n, &mut pool))
        .and_then(|()| m.claims.claim(start, end, Purpose::Unmap));
        let claim = match prepared {
            Ok(c) => c,
            Err(e) => {
                m.regions.shrink(&mut spare);
                drop(m);
                w.release_pool(&mut pool);
                spare.free(&self.hooks);
                return Err(e);
            }
        };
        let mut claim = claim;
        let (mut m, split) = self.split_edges_locked(&w, m, &mut claim, (start, end), &mut pool);
        // Commit: cannot fail short of a broken invariant (or a failed
        // break-before-make, which changed nothing).
        if let Err(e) = split {
            m.claims.release(claim);
            m.regions.shrink(&mut spare);
            drop(m);
            w.release_pool(&mut pool);
            spare.free(&self.hooks);
            return Err(e);
        }
        let split = m.regions.remove_range(start, end, &mut spare);
        let mut ctx = Unmapping {
            space: self,
            guard: Some(m),
            claim,
            discard: false,
        };
        let detached = split.and_then(|()| w.detach(&mut ctx, start, end));
        let Unmapping { guard, claim, .. } = ctx;
        drop(guard);
        w.release_pool(&mut pool);
        let window = (self.config.base.as_usize(), self.config.end());
        let result = detached.and_then(|d| w.reclaim(d.flush(&self.hooks, window)));
        let mut m = self.lock_exclusive();
        m.claims.release(claim);
        m.regions.shrink(&mut spare);
        drop(m);
        spare.free(&self.hooks);
        result
    }

    /// Splits the huge leaves (linear 2 MiB / 1 GiB leaves, 2 MiB guest
    /// blocks) that `start` or `end` cuts, so both become leaf boundaries —
    /// for unmap, discard and protect. Called with the exclusive lock `m`,
    /// the operation's `claim` over the range and the tables the splits need
    /// in `pool` ([`Walker::split_tables_needed`]); gives the lock back
    /// (re-taken when it had to be released). With break-before-make (Arm)
    /// the blocks the edges split go invalid and are flushed — with no lock
    /// held, as every flush — before the tables replacing them are linked;
    /// the claim is widened over them first, so no other operation meets the
    /// parked entries (faults there are spurious meanwhile). That is one
    /// flush more than the operation's own at most. On error nothing
    /// changed.
    fn split_edges_locked<'s, F: Format>(
        &'s self,
        w: &Walker<'_, F>,
        mut m: WriteGuard<'s, Maps>,
        claim: &mut Claim,
        (start, end): (Gpa, Gpa),
        pool: &mut TablePool,
    ) -> (WriteGuard<'s, Maps>, Result) {
        if F::BREAK_BEFORE_MAKE && !pool.is_empty() {
            let x = m.token();
            let broke = w.break_edges(&x, start, end).and_then(|(lo, hi)| {
                if lo < hi {
                    m.claims
                        .widen(claim, Gpa::from_usize(lo), Gpa::from_usize(hi))?;
                }
                Ok((lo, hi))
            });
            match broke {
                Ok((lo, hi)) if lo < hi => {
                    drop(m);
                    let (base, wend) = (self.config.base.as_usize(), self.config.end());
                    let (lo, hi) = (lo.max(base), hi.min(wend));
                    if lo < hi {
                        self.hooks.flush(lo as u64, (hi - lo) as u64);
                    }
                    m = self.lock_exclusive();
                }
                Ok(_) => {}
                Err(e) => return (m, Err(e)),
            }
        }
        let x = m.token();
        let r = w.split_edges(&x, start, end, pool);
        (m, r)
    }

    /// Changes the guest's rights on `[gpa, gpa + size)`, which regions must
    /// cover without a gap, to `rights` (`Flags` READ | WRITE | EXEC with
    /// READ, or 0: no access, contents kept). Rights live in the entries
    /// (`table/protect.rs`); regions keep the rights they were mapped with,
    /// for pages protect never touched. Steps: claim and count the tables
    /// needed (exclusive, briefly); obtain them (no lock); split the edges
    /// (exclusive; Arm: break, flush, make); change the entries (shared —
    /// faults go on); one flush if a present page lost a right; give back
    /// what was not used (no lock).
    pub fn protect(&self, gpa: u64, size: u64, rights: u32) -> Result {
        let (start, end) = self.config.range(gpa, size)?;
        let valid = rights == 0 || (rights & Flags::READ.bits() != 0);
        if rights & !Flags::RWX.bits() != 0 || !valid {
            return Err(Error::Invalid);
        }
        with_format!(self.config.format, F => self.protect_in::<F>(start, end, rights))
    }

    fn protect_in<F: Format>(&self, start: Gpa, end: Gpa, rights: u32) -> Result {
        let w = self.walker::<F>();
        fn part<'l>(r: Region, rights: u32, logs: Option<(&'l Logs, &'l Hooks)>) -> Part<'l> {
            Part {
                start: r.start.as_usize(),
                end: r.end.as_usize(),
                alloc: r.backend.is_alloc(),
                default: r.flags.bits() & Flags::RWX.bits(),
                new: rights,
                log: logs.filter(|_| r.backend == Backend::AllocLogged),
            }
        }
        // 1. Check, count, claim.
        let (mut claim, splits, tables) = {
            let mut m = self.lock_exclusive();
            if m.claims.overlaps(start.as_usize(), end.as_usize(), None) {
                return Err(Error::Busy);
            }
            Self::check_covered(&m.regions, start, end)?;
            let splits = w.split_tables_needed(start, end)?;
            let mut tables = 0;
            m.regions.for_each_in(start, end, |r| {
                tables += w.protect_tables_needed(&part(r, rights, None))?;
                Ok(())
            })?;
            let claim = m.claims.claim(start, end, Purpose::Protect)?;
            (claim, splits, tables)
        };
        // 2. Every table, with no lock held, or nothing changes.
        let mut pool = TablePool::new();
        let mut stock = TableStock::new();
        let got = w
            .reserve_tables(splits, &mut pool)
            .and_then(|()| stock.fill(&w, tables));
        let result = got.and_then(|()| {
            // 3. The edges: huge leaves they straddle become tables.
            if splits > 0 {
                let m = self.lock_exclusive();
                let (m, split) =
                    self.split_edges_locked(&w, m, &mut claim, (start, end), &mut pool);
                drop(m);
                split?;
            }
            // 4. The entries, beside faults.
            let m = self.lock_shared();
            let mut out = crate::table::Hull::default();
            m.regions.for_each_in(start, end, |r| {
                w.protect(
                    m.token(),
                    &part(r, rights, Some((&m.logs, &self.hooks))),
                    &mut stock,
                    &mut out,
                )
            })?;
            drop(m);
            // 5. One flush if a right was taken away.
            let (lo, hi) = (
                out.lo.max(self.config.base.as_usize()),
                out.hi.min(self.config.end()),
            );
            if lo < hi {
                self.hooks.flush(lo as u64, (hi - lo) as u64);
            }
            Ok(())
        });
        w.release_pool(&mut pool);
        stock.release(&w);
        self.lock_exclusive().claims.release(claim);
        result
    }

    /// Checks that regions cover `[start, end)` without a gap (`NotMapped`).
    fn check_covered(regions: &RegionSet, start: Gpa, end: Gpa) -> Result {
        let mut next = start;
        regions.for_each_in(start, end, |r| {
            if r.start > next {
                return Err(Error::NotMapped);
            }
            next = r.end;
            Ok(())
        })?;
        if next < end {
            return Err(Error::NotMapped);
        }
        Ok(())
    }

    /// Resolves a stage-2 fault at `gpa` for `access`.
    pub fn handle_fault(&self, gpa: u64, access: Access) -> Result {
        let gpa = Gpa::from_u64(gpa);
        let page = Gpa::from_usize(gpa.as_usize() & !(FRAME_SIZE - 1));
        // One jump to the format's own copy of the fault. With the body
        // expanded once per shape (16 of them) inside this function the
        // compiler stops inlining the hot path's helpers (+39 instructions
        // per fault); out of line, the dispatch costs ~9 (`fault_ir_bound`,
        // BENCHMARKS.md).
        with_format!(self.config.format, F => self.handle_fault_in::<F>(gpa, page, access))
    }

    /// [`AddrSpace::handle_fault`] for format `F`.
    #[inline(never)]
    fn handle_fault_in<F: Format>(&self, gpa: Gpa, page: Gpa, access: Access) -> Result {
        {
            let mut m = self.lock_shared();
            // The common case first (`backend/fast_fault.rs`): the region the
            // last fault hit, every table present, the entry empty.
            let fast = match m.regions.find_hinted(gpa) {
                Some(r) if r.backend == Backend::Alloc && access.allowed_by(r.flags) => {
                    let template = self.leaf_template(r.flags);
                    self.fast_fault(m.cache(0), m.cache(1))
                        .fault::<F>(m.token(), page, template)
                }
                _ => Fast::Slow,
            };
            match fast {
                Fast::Installed => {
                    m.count_event();
                    Ok(())
                }
                Fast::Failed(e) => Err(e),
                Fast::Lost(hpa) => {
                    drop(m);
                    // SAFETY: obtained by this fault and never installed;
                    // the lock is released.
                    unsafe { self.hooks.free_frame(hpa) };
                    Ok(())
                }
                Fast::Slow => self.fault_slow::<F>(m, gpa, access),
            }
        }
    }

    /// What the lean fault lends from this space.
    #[inline(always)]
    fn fast_fault<'a>(&'a self, leaf: &'a AtomicU64, mid: &'a AtomicU64) -> FastFault<'a> {
        FastFault {
            hooks: &self.hooks,
            reserve: &self.reserve,
            root_virt: self.root_virt,
            frames_zeroed: self.config.frames_zeroed,
            cache: TableCache {
                leaf: CachedTable(leaf),
                mid: CachedTable(mid),
            },
        }
    }

    /// Every other fault, under the shared lock `m` (released here): no
    /// region, a range being mapped, a missing table, a present, parked or
    /// huge entry, a linear region.
    #[inline(never)]
    fn fault_slow<F: Format>(
        &self,
        mut m: ReadGuard<'_, Maps>,
        gpa: Gpa,
        access: Access,
    ) -> Result {
        let w = self.walker::<F>();
        let mut leftover = alloc::Leftover::new();
        let result = match m.regions.find_hinted(gpa) {
            // A range being mapped: the guest re-faults until commit.
            None if m.claims.mapping(gpa.as_usize()) => Ok(()),
            None => Err(Error::NotMapped),
            Some(r) => {
                let page = Gpa::from_usize(gpa.as_usize() & !(FRAME_SIZE - 1));
                let log = match r.backend {
                    Backend::AllocLogged => m.logs.find(page.as_usize()).map(|l| (l, &self.hooks)),
                    _ => None,
                };
                let huge = r.flags.contains(Flags::HUGE).then(|| {
                    alloc::block_template::<F>(self.config.mapping(r.flags)) | F::ACCESSED
                });
                let done = alloc::fault_in::<F>(
                    &w,
                    m.token(),
                    (page, access),
                    r,
                    (|flags| self.leaf_template(flags), huge),
                    log,
                    &mut leftover,
                );
                if let Ok(alloc::Faulted::Installed) = done {
                    m.count_event();
                }
                done.map(|_| ())
            }
        };
        drop(m);
        // Lost races give their never-visible frames back, unlocked.
        leftover.free(&w);
        result
    }

    /// The owned 4 KiB leaf template (address 0) of a region with `flags`.
    #[inline]
    fn leaf_template(&self, flags: Flags) -> u64 {
        // In bounds: `LEAF_TEMPLATES` is a power of two (asserted below).
        self.leaf_templates[flags.bits() as usize & (LEAF_TEMPLATES - 1)]
    }

    /// Host-physical address of `gpa` and the size of the page mapping it.
    pub fn translate(&self, gpa: u64) -> Result<(Hpa, usize)> {
        let m = self.lock_shared();
        with_format!(self.config.format, F => self.translate_fast::<F>(&m, Gpa::from_u64(gpa)))
            .ok_or(Error::NotMapped)
    }

    /// Translates every address of `gpas` under one shared lock, in one tight
    /// loop (independent walks overlap in the CPU). `out(i, hpa and leaf
    /// size)` gets `None` for an address nothing present maps.
    pub fn translate_many(
        &self,
        n: usize,
        gpa: impl Fn(usize) -> u64,
        mut out: impl FnMut(usize, Option<(Hpa, usize)>),
    ) -> Result {
        let m = self.lock_shared();
        with_format!(self.config.format, F => {
            for i in 0..n {
                out(i, self.translate_fast::<F>(&m, Gpa::from_u64(gpa(i))));
            }
            Ok(())
        })
    }

    /// The present leaf's host-physical address for `gpa` (offset included)
    /// and its size, through the lean walk (`table::read::present_leaf`).
    #[inline(always)]
    fn translate_fast<F: Format>(&self, m: &ReadGuard<'_, Maps>, gpa: Gpa) -> Option<(Hpa, usize)> {
        let (raw, level) = read::present_leaf::<F>(m.token(), self.root_virt, &self.hooks, gpa)?;
        let size = level_size(level);
        let base = F::addr(raw, level);
        Some((Hpa::from_usize(base + (gpa.as_usize() & (size - 1))), size))
    }

    fn translate_locked<F: Format>(&self, gpa: Gpa) -> Result<Option<(Hpa, usize)>> {
        Self::translate_with::<F>(&self.walker::<F>(), gpa)
    }

    #[inline]
    fn translate_with<F: Format>(w: &Walker<'_, F>, gpa: Gpa) -> Result<Option<(Hpa, usize)>> {
        let Some((raw, level)) = w.lookup(gpa)? else {
            return Ok(None);
        };
        match format::decode::<F>(raw, level) {
            Entry::Leaf { hpa, .. } | Entry::Sealed { hpa, .. } => {
                let size = level_size(level);
                Ok(Some((
                    Hpa::from_usize(hpa.as_usize() + (gpa.as_usize() & (size - 1))),
                    size,
                )))
            }
            _ => Err(Error::Internal),
        }
    }

    /// Checks that `[start, end)` lies entirely in regions, none of them
    /// device memory. With `find_holes`, returns true if some alloc page in it
    /// is not present.
    fn check_copy_range<F: Format>(
        &self,
        regions: &RegionSet,
        start: Gpa,
        end: Gpa,
        find_holes: bool,
    ) -> Result<bool> {
        let mut next = start;
        let mut device = false;
        let mut hole = false;
        regions.for_each_in(start, end, |r| {
            if r.start != next {
                return Err(Error::NotMapped);
            }
            next = r.end;
            device |= r.flags.contains(Flags::DEVICE);
            if find_holes && r.backend.is_alloc() && !hole {
                let mut page = r.start.as_usize();
                while page < r.end.as_usize() {
                    if self.walker::<F>().lookup(Gpa::from_usize(page))?.is_none() {
                        hole = true;
                        break;
                    }
                    page += FRAME_SIZE;
                }
            }
            Ok(())
        })?;
        if next != end {
            return Err(Error::NotMapped);
        }
        if device {
            return Err(Error::Access);
        }
        Ok(hole)
    }

    /// Copies guest memory at `gpa` into `buf`, as the hypervisor.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result {
        let Some((start, end)) = self.copy_range(gpa, buf.len())? else {
            return Ok(());
        };
        let m = self.lock_shared();
        with_format!(self.config.format, F => {
            self.check_copy_range::<F>(&m.regions, start, end, false)?;
            self.copy_pages::<F>(gpa as usize, buf.len(), |host, off, len| {
                match (host, buf.get_mut(off..off + len)) {
                    // SAFETY: `p` points to `len` readable bytes of a frame
                    // mapped in a region we hold the lock over.
                    (Some(p), Some(dst)) => unsafe {
                        core::ptr::copy_nonoverlapping(p.as_ptr(), dst.as_mut_ptr(), len)
                    },
                    // Never touched: zeros. A parked entry (a discard or a
                    // break-before-make split in flight) holds data we
                    // cannot show now: retry.
                    (None, Some(dst)) => {
                        let page = Gpa::from_usize(gpa as usize + off);
                        if let Some(f) = self.walker::<F>().find(page)?
                            && F::is_parked(f.raw)
                        {
                            return Err(Error::Busy);
                        }
                        dst.fill(0)
                    }
                    (_, None) => return Err(Error::Internal),
                }
                Ok(())
            })?;
            Ok(())
        })
    }

    /// Copies `buf` into guest memory at `gpa`, as the hypervisor. Lazy pages
    /// in the range are populated first, all or nothing.
    pub fn write(&self, gpa: u64, buf: &[u8]) -> Result {
        let Some((start, end)) = self.copy_range(gpa, buf.len())? else {
            return Ok(());
        };
        with_format!(self.config.format, F => {
            let w = self.walker::<F>();
            let mut p = Prepared::new(start, end);
            let m = self.lock_shared();
            let result = 'locked: {
                // A discard in flight owns the parked entries of its range.
                if m.claims.overlaps(start.as_usize(), end.as_usize(), None) {
                    break 'locked Err(Error::Busy);
                }
                let hole = match self.check_copy_range::<F>(&m.regions, start, end, true) {
                    Ok(h) => h,
                    Err(e) => break 'locked Err(e),
                };
                if hole && let Err(e) = self.fill_holes::<F>(&w, &m, &mut p) {
                    break 'locked Err(e);
                }
                self.copy_pages::<F>(gpa as usize, buf.len(), |host, off, len| {
                    match (host, buf.get(off..off + len)) {
                        // SAFETY: `p` points to `len` writable bytes of a
                        // present frame in a region we hold the lock over.
                        (Some(p), Some(src)) => unsafe {
                            core::ptr::copy_nonoverlapping(src.as_ptr(), p.as_ptr(), len);
                            // Arm: the bytes reach the guest (`cache.rs`).
                            crate::cache::publish_write(self.hooks.cache(), p, len, || {
                                let at = Gpa::from_usize(gpa as usize + off);
                                m.regions.find(at).is_some_and(|r| r.flags.contains(Flags::EXEC))
                            });
                        },
                        _ => return Err(Error::Internal),
                    }
                    Ok(())
                })
                .and_then(|()| self.mark_dirty(&m, start, end))
            };
            drop(m);
            // What merged spines kept, never visible: freed unlocked.
            let finished = w.finish(&p);
            result.and(finished)
        })
    }

    /// Makes every page of `p`'s range present, as faults would, all or
    /// nothing, under the shared lock `m`: faults go on (a fault on a page
    /// being filled meets a parked — frozen — entry and is spurious until the
    /// commit). The caller checked that alloc regions cover the holes and
    /// that no claim overlaps the range, and runs `w.finish(p)` unlocked.
    fn fill_holes<'t, F: Format>(
        &self,
        w: &'t Walker<'_, F>,
        m: &ReadGuard<'_, Maps>,
        p: &mut Prepared<'t>,
    ) -> Result {
        let mut src = Fill::<F>::new(&m.regions, &m.logs, &self.hooks, self.config.device_pbmt());
        if let Err(e) = w.prepare(p, &mut src) {
            // Under the lock (a map/unmap could otherwise meet the parked
            // entries): the one place `free_frame` runs under it, on this
            // error path only. Fails only on a broken invariant; the first
            // error wins.
            let _ = w.rollback(p);
            return Err(e);
        }
        w.commit::<Fill<'_, F>>(m.token(), p)
    }

    /// Checks that alloc regions cover `[start, end)` without a gap:
    /// `NotMapped` for a gap, `Invalid` for a linear part.
    fn check_alloc_range(regions: &RegionSet, start: Gpa, end: Gpa) -> Result {
        let mut next = start;
        let mut linear = false;
        regions.for_each_in(start, end, |r| {
            if r.start != next {
                return Err(Error::NotMapped);
            }
            next = r.end;
            linear |= !r.backend.is_alloc();
            Ok(())
        })?;
        if next != end {
            return Err(Error::NotMapped);
        }
        if linear {
            return Err(Error::Invalid);
        }
        Ok(())
    }

    /// Makes every page of the alloc range `[gpa, gpa + size)` present (a
    /// zeroed frame with its region's rights), all or nothing; pages already
    /// present stay as they are.
    pub fn prefault(&self, gpa: u64, size: u64) -> Result {
        let (start, end) = self.config.range(gpa, size)?;
        with_format!(self.config.format, F => {
            let w = self.walker::<F>();
            let mut p = Prepared::new(start, end);
            let m = self.lock_shared();
            let result = if m.claims.overlaps(start.as_usize(), end.as_usize(), None) {
                Err(Error::Busy)
            } else {
                Self::check_alloc_range(&m.regions, start, end)
                    .and_then(|()| self.fill_holes::<F>(&w, &m, &mut p))
            };
            drop(m);
            // What merged spines kept, never visible: freed unlocked.
            let finished = w.finish(&p);
            result.and(finished)
        })
    }

    /// Gives back the frames of the alloc pages in `[gpa, gpa + size)`; the
    /// range stays mapped lazily (the next access faults in a zeroed frame).
    /// Present entries are detached under the exclusive lock (yielding like
    /// an unmap), one flush covers them, frames and emptied tables are freed
    /// after it with no lock held, inside a claim that keeps other maps,
    /// unmaps, discards, prefaults and hypervisor writes out of the range.
    pub fn discard(&self, gpa: u64, size: u64) -> Result {
        let (start, end) = self.config.range(gpa, size)?;
        with_format!(self.config.format, F => self.discard_in::<F>(start, end))
    }

    fn discard_in<F: Format>(&self, start: Gpa, end: Gpa) -> Result {
        let w = self.walker::<F>();
        let mut pool = TablePool::new();
        let m = self.lock_exclusive();
        if m.claims.overlaps(start.as_usize(), end.as_usize(), None) {
            return Err(Error::Busy);
        }
        Self::check_alloc_range(&m.regions, start, end)?;
        // A 2 MiB block the edges cut is split into its 512 pieces first
        // (the tables are allocated under the lock: a few at most).
        let mut m = m;
        let prepared = w
            .split_tables_needed(start, end)
            .and_then(|n| w.reserve_tables(n, &mut pool))
            .and_then(|()| m.claims.claim(start, end, Purpose::Unmap));
        let mut claim = match prepared {
            Ok(c) => c,
            Err(e) => {
                drop(m);
                w.release_pool(&mut pool);
                return Err(e);
            }
        };
        let (m, split) = self.split_edges_locked(&w, m, &mut claim, (start, end), &mut pool);
        if let Err(e) = split {
            let mut m = m;
            m.claims.release(claim);
            drop(m);
            w.release_pool(&mut pool);
            return Err(e);
        }
        let mut ctx = Unmapping {
            space: self,
            guard: Some(m),
            claim,
            discard: true,
        };
        let detached = w.detach(&mut ctx, start, end);
        let Unmapping { guard, claim, .. } = ctx;
        drop(guard);
        w.release_pool(&mut pool);
        let window = (self.config.base.as_usize(), self.config.end());
        let result = detached
            .and_then(|d| w.reclaim(d.flush(&self.hooks, window)))
            .and_then(|()| self.discarded(start, end));
        self.lock_exclusive().claims.release(claim);
        result
    }

    /// Validates a byte range for read/write; `None` when it is empty.
    fn copy_range(&self, gpa: u64, len: usize) -> Result<Option<(Gpa, Gpa)>> {
        if len == 0 {
            return Ok(None);
        }
        let end = (gpa as usize).checked_add(len).ok_or(Error::Invalid)?;
        // Round out to pages: regions are page-granular.
        let start = gpa as usize & !(FRAME_SIZE - 1);
        let end = end
            .checked_next_multiple_of(FRAME_SIZE)
            .ok_or(Error::Invalid)?;
        Ok(Some((Gpa::from_usize(start), Gpa::from_usize(end))))
    }

    /// Calls `f(host pointer, or None for a never-touched page; offset into
    /// the caller's buffer; length)` for each piece of `[gpa, gpa + len)`
    /// that lies in one page. The caller holds the lock and checked the range.
    fn copy_pages<F: Format>(
        &self,
        gpa: usize,
        len: usize,
        mut f: impl FnMut(Option<NonNull<u8>>, usize, usize) -> Result,
    ) -> Result {
        let mut done = 0;
        while done < len {
            let addr = gpa + done;
            let offset = addr % FRAME_SIZE;
            let n = (FRAME_SIZE - offset).min(len - done);
            // One walk per page: the leaf's frame, and the access recorded
            // in it (a hypervisor copy counts for `axalloc_young_get`).
            let host = match self.copy_leaf::<F>(Gpa::from_usize(addr))? {
                Some((hpa, _)) => {
                    let page = self
                        .hooks
                        .virt_hook(Hpa::from_usize(hpa.as_usize() - offset))?;
                    // SAFETY: `offset < FRAME_SIZE` stays inside the page.
                    Some(unsafe { page.add(offset) })
                }
                None => None,
            };
            f(host, done, n)?;
            done += n;
        }
        Ok(())
    }

    /// What covers `gpa`: its region, and the host address and leaf size
    /// when a leaf maps it (`None` for a page not present). `None` when no
    /// region covers it. A snapshot under the shared lock.
    pub fn query(&self, gpa: u64) -> Result<Option<Found>> {
        let m = self.lock_shared();
        let gpa = Gpa::from_u64(gpa);
        let Some(r) = m.regions.find(gpa) else {
            return Ok(None);
        };
        let leaf = with_format!(self.config.format, F => self.translate_locked::<F>(gpa))?;
        Ok(Some((r, leaf)))
    }

    /// The first region ending after `gpa`, with what maps its first page
    /// (as [`AddrSpace::query`] of its start). A snapshot under the shared
    /// lock; `None` when no region ends after `gpa`.
    pub fn region_next(&self, gpa: u64) -> Result<Option<Found>> {
        let m = self.lock_shared();
        let regions = &m.regions;
        let Some(r) = regions.get(regions.first_ending_after(Gpa::from_u64(gpa))) else {
            return Ok(None);
        };
        let leaf = with_format!(self.config.format, F => self.translate_locked::<F>(r.start))?;
        Ok(Some((r, leaf)))
    }
}

/// What [`AddrSpace::query`] finds: the region, and the host address and
/// leaf size when a leaf maps the address (`None`: not present).
pub type Found = (Region, Option<(Hpa, usize)>);
