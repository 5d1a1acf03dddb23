//! The address space: ties the region set, the table and the hooks together
//! and decides which lock each operation takes.
//!
//! Locking: one reader-writer lock over the region set.
//! - shared: `handle_fault`, `translate`, `read`, `write` (fast path), `stats`
//!   — vCPUs run these in parallel; page installs use compare-exchange;
//! - exclusive: `map_*`, `unmap`, and `write` when it must populate — these
//!   change regions or remove entries and free tables, which no concurrent
//!   walker may be inside of.
//!
//! The object itself lives in a frame from `alloc_frame`: the library needs no
//! allocator for anything.

use core::ptr::NonNull;

use crate::addr::{FRAME_SIZE, Gpa, Hpa};
use crate::backend::alloc::{self, Populate};
use crate::backend::linear::Linear;
use crate::error::{Error, Result};
use crate::flags::{Access, Flags};
use crate::format::{self, Entry, Format, FormatKind, level_size, with_format};
use crate::hooks::Hooks;
use crate::region::{Backend, Region, RegionSet};
use crate::stats::{Counters, Stats};
use crate::sync::RwLock;
use crate::table::{TablePool, Walker};

/// Highest host-physical address + 1 a linear mapping may reach.
const HPA_LIMIT: usize = 1 << 52;

/// How an address space is set up (validated by [`Config::validate`]).
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// The entry format.
    pub format: FormatKind,
    /// The hooks return zeroed frames: skip zeroing.
    pub frames_zeroed: bool,
    /// Never create 1 GiB leaves.
    pub no_huge_1g: bool,
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
        if end > 1usize << self.format.gpa_bits() {
            return Err(Error::Invalid);
        }
        Ok(())
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
    regions: RwLock<RegionSet>,
}

const _: () = assert!(core::mem::size_of::<AddrSpace>() <= FRAME_SIZE);

// SAFETY: shared state is atomics (table entries, counters, lock shards) or
// behind the lock (the region set); `root_virt` points into the root frame,
// which the space owns for its whole life and only accesses atomically; the
// hooks are callable from any thread by contract.
unsafe impl Sync for AddrSpace {}
// SAFETY: as above; nothing is tied to the creating thread.
unsafe impl Send for AddrSpace {}

impl AddrSpace {
    /// Creates an address space in a frame from the hooks, with an empty root
    /// table. On error nothing is held.
    pub fn create(config: Config, hooks: Hooks) -> Result<NonNull<AddrSpace>> {
        config.validate()?;
        let home = hooks.alloc_frame()?;
        let ptr = match hooks.virt(home) {
            Ok(p) if (p.as_ptr() as usize) % core::mem::align_of::<AddrSpace>() == 0 => {
                p.cast::<AddrSpace>()
            }
            other => {
                // SAFETY: obtained above and never shown to anyone.
                unsafe { hooks.free_frame(home) };
                return Err(other.err().unwrap_or(Error::Internal));
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
                // SAFETY: both obtained above, never shown to hardware.
                unsafe {
                    hooks.free_frame(root);
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
            regions: RwLock::new(RegionSet::new()),
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
        space.regions.write().release(&hooks);
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

    fn walker<F: Format>(&self) -> Walker<'_, F> {
        Walker::new(
            &self.hooks,
            &self.counters,
            (self.root, self.root_virt),
            self.config.frames_zeroed,
        )
    }

    /// Host-physical address of the root table.
    pub fn root(&self) -> Hpa {
        self.root
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        let regions = self.regions.read();
        self.counters.read(
            regions.len() as u64,
            regions.mapped_bytes(),
            self.regions.events(),
        )
    }

    /// Largest leaf level a linear mapping may use.
    fn max_linear_level<F: Format>(&self) -> usize {
        if self.config.no_huge_1g {
            F::MAX_LEAF_LEVEL.min(1)
        } else {
            F::MAX_LEAF_LEVEL
        }
    }

    /// Adds a region `r` after mapping its pages with `map` — both or neither.
    fn add_region(&self, r: Region, map: impl FnOnce() -> Result) -> Result {
        if !r.flags.contains(Flags::READ) {
            return Err(Error::Invalid);
        }
        let mut regions = self.regions.write();
        if regions.overlaps(r.start, r.end) {
            return Err(Error::Exists);
        }
        regions.reserve(&self.hooks, 1)?;
        if let Err(e) = map() {
            regions.shrink(&self.hooks);
            return Err(e);
        }
        regions.insert(r)
    }

    /// Maps guest RAM backed by frames from the hooks, now (`populate`) or on
    /// first fault.
    pub fn map_alloc(&self, gpa: u64, size: u64, flags: Flags, populate: bool) -> Result {
        let (start, end) = self.config.range(gpa, size)?;
        let region = Region {
            start,
            end,
            backend: Backend::Alloc,
            flags,
        };
        self.add_region(region, || {
            if !populate {
                return Ok(());
            }
            with_format!(self.config.format, F => {
                let mut src = Populate::<F, false>::new(flags.to_mapping());
                self.walker::<F>().map_range(start, end, &mut src)
            })
        })
    }

    /// Maps `[gpa, gpa + size)` to `[hpa, hpa + size)`.
    pub fn map_linear(&self, gpa: u64, hpa: u64, size: u64, flags: Flags) -> Result {
        let (start, end) = self.config.range(gpa, size)?;
        let hpa = hpa as usize;
        if hpa % FRAME_SIZE != 0 || hpa.checked_add(size as usize).is_none_or(|e| e > HPA_LIMIT) {
            return Err(Error::Invalid);
        }
        let hpa = Hpa::from_usize(hpa);
        let region = Region {
            start,
            end,
            backend: Backend::Linear { hpa },
            flags,
        };
        self.add_region(region, || {
            with_format!(self.config.format, F => {
                let mut src = Linear::new(start, hpa, flags.to_mapping(), self.max_linear_level::<F>());
                self.walker::<F>().map_range(start, end, &mut src)
            })
        })
    }

    /// Removes `[gpa, gpa + size)` from every region it touches, flushes once,
    /// then gives back the frames and emptied tables.
    pub fn unmap(&self, gpa: u64, size: u64) -> Result {
        let (start, end) = self.config.range(gpa, size)?;
        let mut regions = self.regions.write();
        if !regions.overlaps(start, end) {
            return Ok(());
        }
        let splits_region = regions
            .find(start)
            .is_some_and(|r| r.start < start && r.end > end);
        if splits_region {
            regions.reserve(&self.hooks, 1)?;
        }
        with_format!(self.config.format, F => {
            let w = self.walker::<F>();
            // Prepare: every table the edge splits need, or nothing changes.
            let mut pool = TablePool::new();
            let prepared = w
                .split_tables_needed(start, end)
                .and_then(|n| w.reserve_tables(n, &mut pool));
            if let Err(e) = prepared {
                regions.shrink(&self.hooks);
                return Err(e);
            }
            // Commit: cannot fail short of a broken invariant.
            let split = w.split_at(start, &mut pool).and_then(|()| w.split_at(end, &mut pool));
            w.release_pool(&mut pool);
            split?;
            let detached = w.detach(start, end)?;
            regions.remove_range(start, end, &self.hooks)?;
            if detached.needs_flush() {
                self.hooks
                    .flush(detached.lo as u64, (detached.hi - detached.lo) as u64);
                // SAFETY: the flush above covered every entry `detach` removed.
                unsafe { w.reclaim(start, end)? };
            }
            Ok(())
        })
    }

    /// Resolves a stage-2 fault at `gpa` for `access`.
    pub fn handle_fault(&self, gpa: u64, access: Access) -> Result {
        let gpa = Gpa::from_u64(gpa);
        let mut regions = self.regions.read();
        let region = regions.find(gpa).ok_or(Error::NotMapped)?;
        if !access.allowed_by(region.flags) {
            return Err(Error::Access);
        }
        match region.backend {
            // Mapped whole at map time: a fault there is a stale TLB entry.
            Backend::Linear { .. } => Ok(()),
            Backend::Alloc => with_format!(self.config.format, F => {
                let gpa = Gpa::from_usize(gpa.as_usize() & !(FRAME_SIZE - 1));
                let done = alloc::fault_in::<F>(&self.walker::<F>(), gpa, region.flags.to_mapping())?;
                if done == alloc::Faulted::Installed {
                    regions.count_event();
                }
                Ok(())
            }),
        }
    }

    /// Host-physical address of `gpa` and the size of the page mapping it.
    pub fn translate(&self, gpa: u64) -> Result<(Hpa, usize)> {
        let _regions = self.regions.read();
        with_format!(self.config.format, F => self.translate_locked::<F>(Gpa::from_u64(gpa)))?
            .ok_or(Error::NotMapped)
    }

    fn translate_locked<F: Format>(&self, gpa: Gpa) -> Result<Option<(Hpa, usize)>> {
        let Some((raw, level)) = self.walker::<F>().lookup(gpa)? else {
            return Ok(None);
        };
        match format::decode::<F>(raw, level) {
            Entry::Leaf { hpa, .. } => {
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
            if find_holes && r.backend == Backend::Alloc && !hole {
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
        let regions = self.regions.read();
        with_format!(self.config.format, F => {
            self.check_copy_range::<F>(&regions, start, end, false)?;
            self.copy_pages::<F>(gpa as usize, buf.len(), |host, off, len| {
                match (host, buf.get_mut(off..off + len)) {
                    // SAFETY: `p` points to `len` readable bytes of a frame
                    // mapped in a region we hold the lock over.
                    (Some(p), Some(dst)) => unsafe {
                        core::ptr::copy_nonoverlapping(p.as_ptr(), dst.as_mut_ptr(), len)
                    },
                    (None, Some(dst)) => dst.fill(0),
                    (_, None) => return Err(Error::Internal),
                }
                Ok(())
            })
        })
    }

    /// Copies `buf` into guest memory at `gpa`, as the hypervisor. Lazy pages
    /// in the range are populated first, all or nothing.
    pub fn write(&self, gpa: u64, buf: &[u8]) -> Result {
        let Some((start, end)) = self.copy_range(gpa, buf.len())? else {
            return Ok(());
        };
        let copy = |this: &Self| {
            with_format!(this.config.format, F => this.copy_pages::<F>(gpa as usize, buf.len(), |host, off, len| {
                match (host, buf.get(off..off + len)) {
                    // SAFETY: `p` points to `len` writable bytes of a present
                    // frame in a region we hold the lock over.
                    (Some(p), Some(src)) => unsafe {
                        core::ptr::copy_nonoverlapping(src.as_ptr(), p.as_ptr(), len)
                    },
                    _ => return Err(Error::Internal),
                }
                Ok(())
            }))
        };
        {
            // Fast path: every page is there; copy under the shared lock.
            let regions = self.regions.read();
            let hole = with_format!(self.config.format, F => {
                self.check_copy_range::<F>(&regions, start, end, true)
            })?;
            if !hole {
                return copy(self);
            }
        }
        // Slow path: populate the holes, exclusively, then copy.
        let regions = self.regions.write();
        with_format!(self.config.format, F => {
            self.check_copy_range::<F>(&regions, start, end, false)?;
            self.fill_holes::<F>(&regions, start, end)
        })?;
        copy(self)
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

    /// Populates every missing page of the alloc regions in `[start, end)`,
    /// all or nothing (write lock held).
    fn fill_holes<F: Format>(&self, regions: &RegionSet, start: Gpa, end: Gpa) -> Result {
        let w = self.walker::<F>();
        let alloc_parts = |f: &mut dyn FnMut(Region) -> Result| {
            regions.for_each_in(start, end, |r| match r.backend {
                Backend::Alloc => f(r),
                Backend::Linear { .. } => Ok(()),
            })
        };
        let prepared = alloc_parts(&mut |r| {
            let mut src = Populate::<F, true>::new(r.flags.to_mapping());
            w.prepare_range(r.start, r.end, &mut src)
        });
        match prepared {
            Ok(()) => alloc_parts(&mut |r| w.commit_range(r.start, r.end)),
            Err(e) => {
                // Rollback fails only on a broken invariant; the first error wins.
                let _ = alloc_parts(&mut |r| w.rollback_range(r.start, r.end));
                Err(e)
            }
        }
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
            let host = match self.translate_locked::<F>(Gpa::from_usize(addr))? {
                Some((hpa, _)) => {
                    let page = self.hooks.virt(Hpa::from_usize(hpa.as_usize() - offset))?;
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
}
