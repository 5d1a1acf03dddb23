//! The region set: the guest-physical ranges that are mapped, each with one
//! backend, kept sorted and non-overlapping.
//!
//! It lives in frames from the host's hooks (there is no allocator): a fixed
//! directory of chunk pointers inside the address-space object, each chunk one
//! 4 KiB frame of [`Region`]s, logically one sorted array. Hypervisors have
//! tens of regions, so inserting by shifting is the simple, fast choice; the
//! lookup a fault does is a binary search. The frames are bookkeeping only —
//! hardware never sees them — so they may be given back at any time.

use core::mem::size_of;
use core::ptr::NonNull;
use core::sync::atomic::AtomicPtr;
use core::sync::atomic::Ordering::Relaxed;

use crate::addr::{FRAME_SIZE, Gpa, Hpa};
use crate::error::{Error, Result};
use crate::flags::Flags;
use crate::hooks::Hooks;

/// Where a region's pages come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Frames from `alloc_frame`, eagerly (populate) or on first fault.
    Alloc,
    /// As `Alloc`, while a dirty-logged range overlaps the region: faults
    /// take the general path, which keeps the log (`logs.rs`). A variant,
    /// not a flag, so that the lean fault's one backend test routes them at
    /// no cost.
    AllocLogged,
    /// A fixed host-physical range: `gpa` maps to `hpa + (gpa - start)`.
    Linear {
        /// Host-physical address of the region's first byte.
        hpa: Hpa,
    },
}

/// One mapped range `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// First byte (4 KiB aligned).
    pub start: Gpa,
    /// One past the last byte (4 KiB aligned).
    pub end: Gpa,
    /// Where its pages come from.
    pub backend: Backend,
    /// What the guest may do (and the memory type).
    pub flags: Flags,
}

impl Backend {
    /// Guest RAM from the hooks (logged or not).
    #[inline]
    pub fn is_alloc(self) -> bool {
        matches!(self, Backend::Alloc | Backend::AllocLogged)
    }
}

impl Region {
    /// Size in bytes.
    pub fn size(&self) -> usize {
        self.end.as_usize() - self.start.as_usize()
    }

    /// True if `gpa` lies inside.
    pub fn contains(&self, gpa: Gpa) -> bool {
        self.start <= gpa && gpa < self.end
    }

    /// The part of this region inside `[start, end)`, keeping the backend
    /// consistent (a linear region's `hpa` moves with its start).
    pub fn clipped(&self, start: Gpa, end: Gpa) -> Self {
        let s = if self.start > start {
            self.start
        } else {
            start
        };
        let e = if self.end < end { self.end } else { end };
        let backend = match self.backend {
            Backend::Alloc => Backend::Alloc,
            Backend::AllocLogged => Backend::AllocLogged,
            Backend::Linear { hpa } => Backend::Linear {
                hpa: Hpa::from_usize(hpa.as_usize() + (s.as_usize() - self.start.as_usize())),
            },
        };
        Self {
            start: s,
            end: e,
            backend,
            flags: self.flags,
        }
    }
}

/// Bookkeeping frames to give back after the lock is released (`free_frame`
/// never runs under the lock).
#[must_use = "give the frames back with `free`"]
#[derive(Default)]
pub struct Spare {
    frames: [Option<Hpa>; 4],
}

impl Spare {
    /// Nothing to give back.
    pub const fn new() -> Self {
        Self { frames: [None; 4] }
    }

    fn push(&mut self, hpa: Hpa) -> bool {
        match self.frames.iter_mut().find(|f| f.is_none()) {
            Some(f) => {
                *f = Some(hpa);
                true
            }
            None => false,
        }
    }

    /// Gives the frames back (call with no lock held).
    pub fn free(self, hooks: &Hooks) {
        for hpa in self.frames.into_iter().flatten() {
            // SAFETY: chunk frames the region set let go of; nothing points
            // into them and hardware never saw them.
            unsafe { hooks.free_frame(hpa) };
        }
    }
}

/// Regions per chunk frame.
const PER_CHUNK: usize = FRAME_SIZE / size_of::<Region>();
/// Chunks in the directory.
const MAX_CHUNKS: usize = 64;
/// The most regions one address space can hold.
pub const MAX_REGIONS: usize = PER_CHUNK * MAX_CHUNKS;

#[derive(Clone, Copy)]
struct Chunk {
    hpa: Hpa,
    ptr: NonNull<Region>,
}

/// The sorted set of regions.
pub struct RegionSet {
    len: usize,
    chunks: [Option<Chunk>; MAX_CHUNKS],
    /// The slot of the region the last lookup through
    /// [`RegionSet::find_hinted`] found, or null. Faults come in runs on one
    /// region (the guest's RAM), so most lookups end here without a search.
    /// Readers under the shared lock update it concurrently (any slot they
    /// store is valid); every `&mut self` method that moves or frees regions
    /// clears it, so it never points at a moved region or a freed chunk.
    hint: AtomicPtr<Region>,
}

// SAFETY: the chunk pointers refer to frames owned by this set; all access goes
// through `&self` / `&mut self`, which the address space's lock serialises.
unsafe impl Send for RegionSet {}
// SAFETY: as above; `&self` methods only read regions (the lookup hint they
// update is an atomic).
unsafe impl Sync for RegionSet {}

impl Default for RegionSet {
    fn default() -> Self {
        Self::new()
    }
}

impl RegionSet {
    /// An empty set holding no frames.
    pub const fn new() -> Self {
        Self {
            len: 0,
            chunks: [None; MAX_CHUNKS],
            hint: AtomicPtr::new(core::ptr::null_mut()),
        }
    }

    /// Number of regions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if no region is mapped.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn slot(&self, i: usize) -> Option<NonNull<Region>> {
        let chunk = self.chunks.get(i / PER_CHUNK)?.as_ref()?;
        // SAFETY: `i % PER_CHUNK < PER_CHUNK` keeps the pointer inside the
        // chunk's frame.
        Some(unsafe { chunk.ptr.add(i % PER_CHUNK) })
    }

    /// The `i`-th region in address order.
    pub fn get(&self, i: usize) -> Option<Region> {
        if i >= self.len {
            return None;
        }
        // SAFETY: slots below `len` were written by `set`; the chunk frame is
        // owned by this set and lives while it does.
        self.slot(i).map(|p| unsafe { p.read() })
    }

    fn set(&mut self, i: usize, r: Region) -> Result {
        let p = self.slot(i).ok_or(Error::Internal)?;
        // SAFETY: the slot lies in an owned chunk frame; `&mut self` excludes
        // every other access.
        unsafe { p.write(r) };
        Ok(())
    }

    /// Index of the first region whose end lies above `gpa`.
    pub fn first_ending_after(&self, gpa: Gpa) -> usize {
        let (mut lo, mut hi) = (0, self.len);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.get(mid) {
                Some(r) if r.end <= gpa => lo = mid + 1,
                _ => hi = mid,
            }
        }
        lo
    }

    /// The region containing `gpa`.
    pub fn find(&self, gpa: Gpa) -> Option<Region> {
        self.get(self.first_ending_after(gpa))
            .filter(|r| r.contains(gpa))
    }

    /// The region containing `gpa`, in place: the one the last lookup found
    /// if it contains `gpa` (two compares, no copy), else a binary search
    /// that leaves the hint at the region found.
    #[inline]
    pub fn find_hinted(&self, gpa: Gpa) -> Option<&Region> {
        let h = self.hint.load(Relaxed);
        // SAFETY: a non-null hint is a slot below `len` in a chunk this set
        // owns (stored below), and every `&mut self` method that moves a
        // region or frees a chunk clears it first (`invalidate`). Slots are
        // written only through `&mut self`, so none changes while `&self`
        // is borrowed.
        if let Some(r) = unsafe { h.as_ref() }
            && r.contains(gpa)
        {
            return Some(r);
        }
        let i = self.first_ending_after(gpa);
        if i >= self.len {
            return None;
        }
        let p = self.slot(i)?;
        // SAFETY: slot `i < len` holds a region written by `set`, in an owned
        // chunk frame, unchanged while `&self` is borrowed (as above).
        let r = unsafe { p.as_ref() };
        if !r.contains(gpa) {
            return None;
        }
        self.hint.store(p.as_ptr(), Relaxed);
        Some(r)
    }

    /// Forgets the lookup hint: called by every method that moves regions
    /// or gives chunks back.
    fn invalidate(&mut self) {
        *self.hint.get_mut() = core::ptr::null_mut();
    }

    /// True if any region overlaps `[start, end)`.
    pub fn overlaps(&self, start: Gpa, end: Gpa) -> bool {
        self.get(self.first_ending_after(start))
            .is_some_and(|r| r.start < end)
    }

    /// Calls `f` with every region overlapping `[start, end)`, in order,
    /// clipped to it. Stops at the first error.
    pub fn for_each_in(&self, start: Gpa, end: Gpa, mut f: impl FnMut(Region) -> Result) -> Result {
        let mut i = self.first_ending_after(start);
        while let Some(r) = self.get(i) {
            if r.start >= end {
                break;
            }
            f(r.clipped(start, end))?;
            i += 1;
        }
        Ok(())
    }

    /// Gives every region overlapping `[start, end)` — whole, not clipped —
    /// the backend `f` picks for it (dirty logging flips alloc regions
    /// between `Alloc` and `AllocLogged`). Regions do not move.
    pub fn set_backends(&mut self, start: Gpa, end: Gpa, f: impl Fn(&Region) -> Backend) -> Result {
        let mut i = self.first_ending_after(start);
        while let Some(mut r) = self.get(i) {
            if r.start >= end {
                break;
            }
            r.backend = f(&r);
            self.set(i, r)?;
            i += 1;
        }
        Ok(())
    }

    /// Makes room for `extra` more regions, taking chunk frames from the
    /// hooks (under the caller's lock: `alloc_frame` may run there). On
    /// failure the caller gives the unneeded chunks back with
    /// [`RegionSet::shrink`].
    pub fn reserve(&mut self, hooks: &Hooks, extra: usize) -> Result {
        // The directory is full: a limit of the library, not a shortage of
        // frames (the host may have plenty).
        let need = self.len.checked_add(extra).ok_or(Error::Limit)?;
        if need > MAX_REGIONS {
            return Err(Error::Limit);
        }
        let chunks_needed = need.div_ceil(PER_CHUNK);
        let have = self.chunks.iter().take_while(|c| c.is_some()).count();
        for idx in have..chunks_needed {
            let hpa = hooks.alloc_frame()?;
            let ptr = match hooks.virt(hpa) {
                Ok(p) => p.cast::<Region>(),
                Err(e) => {
                    // A hook broke its contract; hand the frame straight back.
                    // SAFETY: obtained just above, never shown to anyone.
                    unsafe { hooks.free_frame(hpa) };
                    return Err(e);
                }
            };
            let slot = self.chunks.get_mut(idx).ok_or(Error::Internal)?;
            *slot = Some(Chunk { hpa, ptr });
        }
        Ok(())
    }

    /// Inserts `r` keeping the order. The caller has checked that it overlaps
    /// nothing and reserved room for it.
    pub fn insert(&mut self, r: Region) -> Result {
        self.invalidate();
        let pos = self.first_ending_after(r.start);
        self.slot(self.len).ok_or(Error::Internal)?;
        let mut i = self.len;
        while i > pos {
            let prev = self.get(i - 1).ok_or(Error::Internal)?;
            self.set(i, prev)?;
            i -= 1;
        }
        self.set(pos, r)?;
        self.len += 1;
        Ok(())
    }

    /// Removes `[start, end)` from the set: regions inside it disappear, those
    /// crossing its edges are trimmed, one containing it is split in two
    /// (the caller reserved one slot for that). Cannot fail after `reserve`
    /// except on a broken invariant.
    pub fn remove_range(&mut self, start: Gpa, end: Gpa, spare: &mut Spare) -> Result {
        self.invalidate();
        let first = self.first_ending_after(start);
        let Some(r) = self.get(first) else {
            return Ok(());
        };
        if r.start >= end {
            return Ok(());
        }
        if r.start < start && r.end > end {
            // Strictly inside one region: split it.
            self.set(first, r.clipped(r.start, start))?;
            let right = r.clipped(end, r.end);
            return self.insert(right);
        }
        // Trim the region crossing `start`, drop those inside, trim the one
        // crossing `end`.
        let mut i = first;
        if r.start < start {
            self.set(i, r.clipped(r.start, start))?;
            i += 1;
        }
        let mut j = i;
        while let Some(r) = self.get(j) {
            if r.end > end {
                break;
            }
            j += 1;
        }
        if let Some(r) = self.get(j).filter(|r| r.start < end) {
            self.set(j, r.clipped(end, r.end))?;
        }
        let removed = j - i;
        if removed > 0 {
            for k in j..self.len {
                let moved = self.get(k).ok_or(Error::Internal)?;
                self.set(k - removed, moved)?;
            }
            self.len -= removed;
            self.shrink(spare);
        }
        Ok(())
    }

    /// Moves chunk frames no region needs (an unused `reserve`, removed
    /// regions) to `spare`, to be given back once the lock is released. What
    /// `spare` cannot take stays reserved for later.
    pub fn shrink(&mut self, spare: &mut Spare) {
        self.invalidate();
        let keep = self.len.div_ceil(PER_CHUNK);
        for slot in self.chunks.iter_mut().skip(keep).rev() {
            if let Some(c) = slot {
                if !spare.push(c.hpa) {
                    return;
                }
                *slot = None;
            }
        }
    }

    /// Gives back every chunk frame; the set becomes empty.
    pub fn release(&mut self, hooks: &Hooks) {
        self.invalidate();
        self.len = 0;
        for slot in &mut self.chunks {
            if let Some(c) = slot.take() {
                // SAFETY: the chunk frame came from `alloc_frame` in `reserve`;
                // the set is empty, and hardware never saw it.
                unsafe { hooks.free_frame(c.hpa) };
            }
        }
    }

    /// Sum of the sizes of all regions.
    pub fn mapped_bytes(&self) -> u64 {
        (0..self.len)
            .filter_map(|i| self.get(i))
            .map(|r| r.size() as u64)
            .sum()
    }
}
