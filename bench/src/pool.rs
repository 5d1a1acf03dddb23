//! The one frame pool both implementations draw from.
//!
//! One big 2 MiB-aligned anonymous mapping, pre-touched (and THP-advised, like
//! a hypervisor's direct map), stands for host-physical memory: frame `i`
//! has host-physical address `PHYS_BASE + i * 4096` (non-zero, so HPA 0 is
//! never used). A [`Pool`] hands out the frames of an index range with an
//! O(1) LIFO stack of indices kept *outside* the frames (so allocating never
//! touches frame memory). Both libaxalloc (through `extern "C"` hooks) and
//! the peer (through its static `PagingHandler`) call the same `alloc`/`free`.

use core::cell::{Cell, UnsafeCell};
use core::ffi::c_void;
use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

pub const FRAME: usize = 4096;
/// Host-physical address of frame 0.
pub const PHYS_BASE: u64 = 0x1000_0000;

/// The backing memory ("host RAM").
pub struct Mapping {
    pub ptr: *mut u8,
    pub frames: usize,
    raw: *mut u8,
    raw_len: usize,
}

unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    pub fn new(frames: usize) -> Mapping {
        const ALIGN: usize = 2 << 20;
        let len = frames * FRAME;
        let raw_len = len + ALIGN;
        // SAFETY: plain anonymous private mapping.
        let raw = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                raw_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert!(raw != libc::MAP_FAILED, "mmap of {raw_len} bytes failed");
        let raw = raw.cast::<u8>();
        let ptr = ((raw as usize + ALIGN - 1) & !(ALIGN - 1)) as *mut u8;
        // SAFETY: inside the mapping; advice only.
        unsafe { libc::madvise(ptr.cast(), len, libc::MADV_HUGEPAGE) };
        // Pre-touch every page (MAP_POPULATE would run before the advice).
        // SAFETY: `ptr..ptr+len` lies in the mapping.
        unsafe { core::ptr::write_bytes(ptr, 0, len) };
        Mapping { ptr, frames, raw, raw_len }
    }

    #[inline(always)]
    pub fn virt(&self, hpa: u64) -> *mut u8 {
        // SAFETY: callers pass addresses of this mapping's frames.
        unsafe { self.ptr.add((hpa - PHYS_BASE) as usize) }
    }

    #[inline(always)]
    pub fn phys(&self, index: usize) -> u64 {
        PHYS_BASE + (index * FRAME) as u64
    }

    pub fn contains(&self, hpa: u64) -> bool {
        hpa >= PHYS_BASE && hpa < PHYS_BASE + (self.frames * FRAME) as u64
    }

    /// Fills frames `[lo, hi)` with `byte` (one big memset).
    pub fn fill(&self, lo: usize, hi: usize, byte: u8) {
        // SAFETY: inside the mapping.
        unsafe { core::ptr::write_bytes(self.ptr.add(lo * FRAME), byte, (hi - lo) * FRAME) }
    }

    /// KiB of this process's anonymous memory backed by transparent huge pages.
    pub fn thp_kib() -> Option<u64> {
        let s = std::fs::read_to_string("/proc/self/smaps_rollup").ok()?;
        let line = s.lines().find(|l| l.starts_with("AnonHugePages:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: our own mapping.
        unsafe { libc::munmap(self.raw.cast(), self.raw_len) };
    }
}

/// An O(1) free list over the frames `[lo, hi)` of a mapping. Not
/// synchronised: one thread at a time (see [`MtPool`] for two threads).
/// Cache-line aligned so that two sub-pools never share a line.
#[repr(align(128))]
// Aligned and padded to 128 bytes (adjacent-line prefetch pairs): two
// threads' pools must not share a cache line, or every allocation of one
// thread invalidates the line the other one reads.
#[repr(align(128))]
pub struct Pool {
    map: *const Mapping,
    lo: usize,
    hi: usize,
    free: UnsafeCell<Vec<u32>>,
    /// Short mode: a byte per frame, 1 = handed out (catches double and
    /// foreign frees). `None` in timed runs.
    owned: Option<UnsafeCell<Vec<u8>>>,
    pub flushes: Cell<u64>,
    pub flushed_bytes: Cell<u64>,
    pub errors: Cell<u64>,
}

unsafe impl Send for Pool {}

impl Pool {
    pub fn new(map: &Mapping, lo: usize, hi: usize, checked: bool) -> Pool {
        assert!(lo < hi && hi <= map.frames && hi < u32::MAX as usize);
        let p = Pool {
            map,
            lo,
            hi,
            free: UnsafeCell::new(Vec::with_capacity(hi - lo)),
            owned: checked.then(|| UnsafeCell::new(vec![0u8; hi - lo])),
            flushes: Cell::new(0),
            flushed_bytes: Cell::new(0),
            errors: Cell::new(0),
        };
        p.reset();
        p
    }

    #[inline(always)]
    pub fn map(&self) -> &Mapping {
        // SAFETY: the mapping outlives every pool (both live in `main`).
        unsafe { &*self.map }
    }

    /// Every frame free again, handed out in ascending address order.
    pub fn reset(&self) {
        // SAFETY: single-threaded use per the type's contract.
        let free = unsafe { &mut *self.free.get() };
        free.clear();
        free.extend((self.lo as u32..self.hi as u32).rev());
        if let Some(o) = &self.owned {
            // SAFETY: as above.
            unsafe { (*o.get()).fill(0) };
        }
        self.flushes.set(0);
        self.flushed_bytes.set(0);
        self.errors.set(0);
    }

    #[inline(always)]
    pub fn alloc(&self) -> Option<u64> {
        // SAFETY: single-threaded use per the type's contract.
        let i = unsafe { (*self.free.get()).pop() }? as usize;
        if let Some(o) = &self.owned {
            // SAFETY: as above; `i` is in range.
            unsafe { (&mut *o.get())[i - self.lo] = 1 };
        }
        Some(self.map().phys(i))
    }

    #[inline(always)]
    pub fn free(&self, hpa: u64) {
        let i = ((hpa - PHYS_BASE) as usize) / FRAME;
        if let Some(o) = &self.owned {
            // SAFETY: single-threaded use.
            let o = unsafe { &mut *o.get() };
            if hpa % FRAME as u64 != 0 || i < self.lo || i >= self.hi || o[i - self.lo] != 1 {
                self.errors.set(self.errors.get() + 1);
                return;
            }
            o[i - self.lo] = 0;
            // A pool that promises zeroed frames (FRAMES_ZEROED rows) must
            // re-zero what comes back: the library may return frames with
            // content, e.g. a table that lost a fault race (EPT tables are
            // filled with suppress-#VE entries, not zeros). Checked (short)
            // mode only — that is where every frame's zeroing is verified;
            // timed runs keep free() at its bare cost.
            // SAFETY: a frame of this pool, just given back to it.
            unsafe { core::ptr::write_bytes(self.virt(hpa), 0, FRAME) };
        }
        // SAFETY: single-threaded use; capacity covers every frame.
        unsafe { (*self.free.get()).push(i as u32) };
    }

    #[inline(always)]
    pub fn virt(&self, hpa: u64) -> *mut u8 {
        self.map().virt(hpa)
    }

    /// Frames currently handed out.
    pub fn in_use(&self) -> usize {
        // SAFETY: single-threaded use.
        (self.hi - self.lo) - unsafe { (*self.free.get()).len() }
    }

    /// Fills every frame of this pool with `byte`.
    pub fn fill(&self, byte: u8) {
        self.map().fill(self.lo, self.hi, byte);
    }
}

// ---------------------------------------------------------------------------
// Hooks for libaxalloc: ctx = &Pool
// ---------------------------------------------------------------------------

pub unsafe extern "C" fn hook_alloc(ctx: *mut c_void, out: *mut u64) -> i32 {
    let p = &*(ctx as *const Pool);
    match p.alloc() {
        Some(hpa) => {
            *out = hpa;
            0
        }
        None => -1,
    }
}

pub unsafe extern "C" fn hook_free(ctx: *mut c_void, hpa: u64) {
    (*(ctx as *const Pool)).free(hpa)
}

pub unsafe extern "C" fn hook_virt(ctx: *mut c_void, hpa: u64) -> *mut c_void {
    (*(ctx as *const Pool)).virt(hpa).cast()
}

/// No INVEPT from user space: counts calls (the peer's flush is compiled out
/// on hosted targets too, see BENCHMARKS.md).
pub unsafe extern "C" fn hook_flush(ctx: *mut c_void, _gpa: u64, size: u64) {
    let p = &*(ctx as *const Pool);
    p.flushes.set(p.flushes.get() + 1);
    p.flushed_bytes.set(p.flushed_bytes.get() + size);
}

// ---------------------------------------------------------------------------
// Two threads: one sub-pool per thread (a per-CPU frame cache)
// ---------------------------------------------------------------------------

thread_local! {
    static SUB: Cell<usize> = const { Cell::new(0) };
}

/// Makes the calling thread draw from sub-pool `i` of every [`MtPool`].
pub fn set_thread_sub(i: usize) {
    SUB.with(|s| s.set(i));
}

/// Two [`Pool`]s over disjoint halves; each thread uses its own (chosen with
/// [`set_thread_sub`]), so the host's allocator never serialises the threads.
pub struct MtPool {
    /// Read by `phys_to_virt` on every walk step: kept apart from the
    /// sub-pools, which their threads write on every allocation.
    map: *const Mapping,
    pub subs: [Pool; 2],
    pub flushes: AtomicU64,
}

unsafe impl Sync for MtPool {}

impl MtPool {
    pub fn new(map: &Mapping, checked: bool) -> MtPool {
        let half = map.frames / 2;
        MtPool {
            map,
            subs: [Pool::new(map, 0, half, checked), Pool::new(map, half, map.frames, checked)],
            flushes: AtomicU64::new(0),
        }
    }
    pub fn reset(&self) {
        self.subs.iter().for_each(Pool::reset);
        self.flushes.store(0, Ordering::Relaxed);
    }
    #[inline(always)]
    fn mine(&self) -> &Pool {
        &self.subs[SUB.with(|s| s.get())]
    }
    /// Frames handed out by either half (call with no thread running).
    pub fn in_use(&self) -> usize {
        self.subs.iter().map(Pool::in_use).sum()
    }
    pub fn errors(&self) -> u64 {
        self.subs.iter().map(|p| p.errors.get()).sum()
    }
}

pub unsafe extern "C" fn mt_hook_alloc(ctx: *mut c_void, out: *mut u64) -> i32 {
    let p = &*(ctx as *const MtPool);
    match p.mine().alloc() {
        Some(hpa) => {
            *out = hpa;
            0
        }
        None => -1,
    }
}

/// A frame goes back to the half it came from (frees happen with no other
/// thread running: unmap / destroy from the main thread).
pub unsafe extern "C" fn mt_hook_free(ctx: *mut c_void, hpa: u64) {
    let p = &*(ctx as *const MtPool);
    let i = ((hpa - PHYS_BASE) as usize) / FRAME;
    let sub = if i < p.subs[0].hi { 0 } else { 1 };
    p.subs[sub].free(hpa)
}

pub unsafe extern "C" fn mt_hook_virt(ctx: *mut c_void, hpa: u64) -> *mut c_void {
    (*(*(ctx as *const MtPool)).map).virt(hpa).cast()
}

pub unsafe extern "C" fn mt_hook_flush(ctx: *mut c_void, _gpa: u64, _size: u64) {
    (*(ctx as *const MtPool)).flushes.fetch_add(1, Ordering::Relaxed);
}

// ---------------------------------------------------------------------------
// The peer's HAL: a static PagingHandler over the same Pool
// ---------------------------------------------------------------------------

static PEER_POOL: AtomicPtr<Pool> = AtomicPtr::new(core::ptr::null_mut());

/// Points the peer's static HAL at `p` (the peer has no per-space context).
pub fn set_peer_pool(p: &Pool) {
    PEER_POOL.store(p as *const Pool as *mut Pool, Ordering::Release);
}

#[inline(always)]
fn peer_pool() -> &'static Pool {
    // SAFETY: set before any peer address space is created; the pool outlives them.
    unsafe { &*PEER_POOL.load(Ordering::Relaxed) }
}

use memory_addr::{PhysAddr, VirtAddr};
use page_table_multiarch::PagingHandler;

/// The peer's HAL as a safe host writes it: frames are zeroed in
/// `alloc_frame` with memset (the peer zeroes nothing for guest frames).
pub struct PeerHalZeroing;
/// The peer's HAL over a pre-zeroed pool: no memset.
pub struct PeerHalPrezeroed;

impl PagingHandler for PeerHalZeroing {
    #[inline(always)]
    fn alloc_frame() -> Option<PhysAddr> {
        let p = peer_pool();
        let hpa = p.alloc()?;
        // SAFETY: a frame of the pool nobody else uses; compiles to memset.
        unsafe { core::ptr::write_bytes(p.virt(hpa), 0, FRAME) };
        Some(PhysAddr::from(hpa as usize))
    }
    fn alloc_frames(num: usize, _align: usize) -> Option<PhysAddr> {
        assert_eq!(num, 1, "the peer asked for contiguous frames");
        Self::alloc_frame()
    }
    #[inline(always)]
    fn dealloc_frame(paddr: PhysAddr) {
        peer_pool().free(paddr.as_usize() as u64)
    }
    fn dealloc_frames(paddr: PhysAddr, num: usize) {
        assert_eq!(num, 1);
        Self::dealloc_frame(paddr)
    }
    #[inline(always)]
    fn phys_to_virt(paddr: PhysAddr) -> VirtAddr {
        VirtAddr::from(peer_pool().virt(paddr.as_usize() as u64) as usize)
    }
}

impl PagingHandler for PeerHalPrezeroed {
    #[inline(always)]
    fn alloc_frame() -> Option<PhysAddr> {
        peer_pool().alloc().map(|h| PhysAddr::from(h as usize))
    }
    fn alloc_frames(num: usize, _align: usize) -> Option<PhysAddr> {
        assert_eq!(num, 1, "the peer asked for contiguous frames");
        Self::alloc_frame()
    }
    #[inline(always)]
    fn dealloc_frame(paddr: PhysAddr) {
        peer_pool().free(paddr.as_usize() as u64)
    }
    fn dealloc_frames(paddr: PhysAddr, num: usize) {
        assert_eq!(num, 1);
        Self::dealloc_frame(paddr)
    }
    #[inline(always)]
    fn phys_to_virt(paddr: PhysAddr) -> VirtAddr {
        VirtAddr::from(peer_pool().virt(paddr.as_usize() as u64) as usize)
    }
}
