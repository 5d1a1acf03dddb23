//! A frame pool for the unit tests: hooks over heap memory that count frames,
//! refuse double and foreign frees, and can fail on demand.

use std::ffi::c_void;
use std::ptr::NonNull;
use std::sync::Mutex;

use crate::addr::Gpa;
use crate::capi::axalloc_hooks;
use crate::format::FormatKind;
use crate::hooks::Hooks;
use crate::space::{AddrSpace, Config};

const BASE: u64 = 0x4000_0000;
const FRAME: usize = 4096;

#[repr(C, align(4096))]
struct Frame([u8; FRAME]);

fn frames_layout(frames: usize) -> std::alloc::Layout {
    std::alloc::Layout::from_size_align(frames.max(1) * FRAME, FRAME).expect("pool layout")
}

struct State {
    used: Vec<bool>,
    free: Vec<usize>,
    budget: Option<usize>,
    flushes: usize,
    last_flush: (u64, u64),
    /// Every flush: (gpa, size, the watched entry's value at that moment).
    flush_log: Vec<(u64, u64, u64)>,
    /// Address of a table entry to read at each flush (0: none).
    watch: usize,
    /// Live `alloc_contig` blocks: first frame index → order. A frame of
    /// one never goes to `free_frame`, and `free_contig` takes exactly a
    /// live block with its order, once.
    blocks: std::collections::BTreeMap<usize, u32>,
    /// `alloc_contig` fails (while `alloc_frame` goes on).
    contig_fails: bool,
    /// Every flush and every `free_contig`, in order: `Flush(gpa, size)` /
    /// `FreeContig(hpa, order)`.
    events: Vec<Event>,
}

/// A hook call the ordering checks look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Flush(u64, u64),
    FreeContig(u64, u32),
}

pub struct Pool {
    /// The frames: a raw allocation (not a `Box`), because the library
    /// writes through pointers `phys_to_virt` derives from it while the pool
    /// is shared — Miri's aliasing model rejects that for a `Box`.
    mem: NonNull<[Frame]>,
    state: Mutex<State>,
    hooks: Hooks,
    /// A stand-in for the TLB shootdown: every flush waits until no
    /// simulated vCPU holds it (a store that passed its translation check
    /// completes before the flush returns, as on hardware).
    pub shootdown: std::sync::RwLock<()>,
}

// SAFETY: the frames are plain memory handed out by the hooks (the library
// synchronises its own use of them); the bookkeeping is behind the mutex.
unsafe impl Sync for Pool {}
// SAFETY: as above; nothing is tied to a thread.
unsafe impl Send for Pool {}

impl Drop for Pool {
    fn drop(&mut self) {
        // SAFETY: `mem` came from `alloc` with this layout in `Pool::new`;
        // nothing uses it any more.
        unsafe {
            std::alloc::dealloc(
                self.mem.cast::<u8>().as_ptr(),
                frames_layout(self.mem.len()),
            )
        };
    }
}

/// An owned pool at a fixed address (the hooks' `ctx` points to it). Not a
/// `Box<Pool>`: moving a `Box` re-asserts unique access to the pool, which
/// Miri's aliasing model takes to invalidate the `ctx` the hooks hold.
pub struct PoolBox(NonNull<Pool>);

impl std::ops::Deref for PoolBox {
    type Target = Pool;
    fn deref(&self) -> &Pool {
        // SAFETY: from `Box::into_raw` in `Pool::new`, freed only on drop.
        unsafe { self.0.as_ref() }
    }
}

// SAFETY: a `PoolBox` is an owning pointer to a `Pool`, which is `Sync`
// and `Send`.
unsafe impl Sync for PoolBox {}
// SAFETY: as above.
unsafe impl Send for PoolBox {}

impl Drop for PoolBox {
    fn drop(&mut self) {
        // SAFETY: from `Box::into_raw`, not used after this.
        drop(unsafe { Box::from_raw(self.0.as_ptr()) });
    }
}

unsafe extern "C" fn alloc(ctx: *mut c_void, out: *mut u64) -> i32 {
    // SAFETY: ctx is the pool, alive for the test.
    let pool = unsafe { &*(ctx as *const Pool) };
    let mut st = pool.state.lock().unwrap();
    if st.budget == Some(0) {
        return -1;
    }
    let Some(i) = st.free.pop() else { return -1 };
    if let Some(b) = st.budget.as_mut() {
        *b -= 1;
    }
    st.used[i] = true;
    // SAFETY: `out` is the library's local.
    unsafe { *out = BASE + (i * FRAME) as u64 };
    0
}

unsafe extern "C" fn free(ctx: *mut c_void, hpa: u64) {
    // SAFETY: as above.
    let pool = unsafe { &*(ctx as *const Pool) };
    let mut st = pool.state.lock().unwrap();
    let i = ((hpa - BASE) as usize) / FRAME;
    assert!(st.used[i], "double or foreign free of {hpa:#x}");
    let in_block = st
        .blocks
        .range(..=i)
        .next_back()
        .is_some_and(|(&first, &order)| i < first + (1 << order));
    assert!(
        !in_block,
        "free_frame of {hpa:#x}, a frame of a contiguous block"
    );
    st.used[i] = false;
    st.free.push(i);
}

/// `2^order` frames aligned to their size (host-physically: `BASE` is
/// 1 GiB aligned), first fit; counts against the budget as one allocation.
unsafe extern "C" fn alloc_contig(ctx: *mut c_void, order: u32, out: *mut u64) -> i32 {
    // SAFETY: as above.
    let pool = unsafe { &*(ctx as *const Pool) };
    let mut st = pool.state.lock().unwrap();
    if st.budget == Some(0) || st.contig_fails {
        return -1;
    }
    let n = 1usize << order;
    let Some(first) = (0..st.used.len().saturating_sub(n - 1))
        .step_by(n)
        .find(|&i| st.used[i..i + n].iter().all(|u| !u))
    else {
        return -1;
    };
    if let Some(b) = st.budget.as_mut() {
        *b -= 1;
    }
    for i in first..first + n {
        st.used[i] = true;
    }
    st.blocks.insert(first, order);
    st.free.retain(|&i| i < first || i >= first + n);
    // SAFETY: `out` is the library's local.
    unsafe { *out = BASE + (first * FRAME) as u64 };
    0
}

unsafe extern "C" fn free_contig(ctx: *mut c_void, hpa: u64, order: u32) {
    // SAFETY: as above.
    let pool = unsafe { &*(ctx as *const Pool) };
    let mut st = pool.state.lock().unwrap();
    let first = ((hpa - BASE) as usize) / FRAME;
    assert_eq!(
        st.blocks.remove(&first),
        Some(order),
        "free_contig({hpa:#x}, {order}): not a live block of that order"
    );
    st.events.push(Event::FreeContig(hpa, order));
    for i in first..first + (1 << order) {
        assert!(st.used[i], "double or foreign free of {hpa:#x}");
        st.used[i] = false;
        st.free.push(i);
    }
}

unsafe extern "C" fn p2v(ctx: *mut c_void, hpa: u64) -> *mut c_void {
    // SAFETY: as above.
    let pool = unsafe { &*(ctx as *const Pool) };
    let off = hpa.wrapping_sub(BASE) as usize;
    if off >= pool.mem.len() * FRAME {
        return std::ptr::null_mut();
    }
    // SAFETY: inside the pool's memory (a raw allocation, see `Pool::mem`).
    unsafe { pool.mem.cast::<u8>().as_ptr().add(off).cast() }
}

unsafe extern "C" fn flush(ctx: *mut c_void, gpa: u64, size: u64) {
    // SAFETY: as above.
    let pool = unsafe { &*(ctx as *const Pool) };
    assert!(size > 0);
    drop(pool.shootdown.write().unwrap());
    let mut st = pool.state.lock().unwrap();
    st.flushes += 1;
    st.last_flush = (gpa, size);
    let seen = if st.watch == 0 {
        0
    } else {
        // SAFETY: the test set `watch` to an entry of a live table of the
        // pool (it stays allocated: the pool frees nothing to the system).
        unsafe { &*(st.watch as *const core::sync::atomic::AtomicU64) }
            .load(core::sync::atomic::Ordering::Relaxed)
    };
    st.flush_log.push((gpa, size, seen));
    st.events.push(Event::Flush(gpa, size));
}

impl Pool {
    #[allow(clippy::new_ret_no_self)] // the owning handle, see `PoolBox`
    pub fn new(frames: usize) -> PoolBox {
        // Garbage-filled with one `write_bytes` (Miri interprets a per-frame
        // array initialisation byte by byte; this is one operation).
        let layout = frames_layout(frames);
        // SAFETY: a non-zero size (callers ask for at least one frame).
        let raw = unsafe { std::alloc::alloc(layout) };
        let raw = NonNull::new(raw).expect("test pool memory");
        // SAFETY: `raw` has `layout.size()` writable bytes.
        unsafe { raw.as_ptr().write_bytes(0xa5, layout.size()) };
        let mem = NonNull::slice_from_raw_parts(raw.cast::<Frame>(), frames);
        let pool = Box::new(Pool {
            mem,
            state: Mutex::new(State {
                used: vec![false; frames],
                free: (0..frames).rev().collect(),
                budget: None,
                flushes: 0,
                last_flush: (0, 0),
                flush_log: Vec::new(),
                watch: 0,
                blocks: Default::default(),
                contig_fails: false,
                events: Vec::new(),
            }),
            // Replaced below once the pool has its final address.
            hooks: dummy_hooks(),
            shootdown: std::sync::RwLock::new(()),
        });
        let pool = NonNull::from(Box::leak(pool));
        let ctx = pool.as_ptr().cast::<c_void>();
        let c = axalloc_hooks {
            struct_size: core::mem::size_of::<axalloc_hooks>() as u32,
            reserved: 0,
            ctx,
            alloc_frame: Some(alloc),
            free_frame: Some(free),
            phys_to_virt: Some(p2v),
            flush_tlb: Some(flush),
            alloc_contig: Some(alloc_contig),
            free_contig: Some(free_contig),
            relax: None,
        };
        // SAFETY: the hooks above honour the contract for the pool's life;
        // `pool` is ours alone until it is returned.
        unsafe { (*pool.as_ptr()).hooks = Hooks::from_c(&c).unwrap() };
        PoolBox(pool)
    }

    pub fn hooks(&self) -> &Hooks {
        &self.hooks
    }

    pub fn in_use(&self) -> usize {
        self.state
            .lock()
            .unwrap()
            .used
            .iter()
            .filter(|u| **u)
            .count()
    }

    pub fn flushes(&self) -> usize {
        self.state.lock().unwrap().flushes
    }

    /// `(gpa, size)` of the last flush_tlb call.
    pub fn last_flush(&self) -> (u64, u64) {
        self.state.lock().unwrap().last_flush
    }

    /// The host's view of a frame of the pool.
    pub fn virt(&self, hpa: u64) -> *mut u64 {
        // SAFETY: the hook only computes an address.
        unsafe { p2v(self as *const Pool as *mut c_void, hpa) }.cast()
    }

    /// Every flush since creation: (gpa, size, watched entry value).
    pub fn flush_log(&self) -> Vec<(u64, u64, u64)> {
        self.state.lock().unwrap().flush_log.clone()
    }

    /// Reads `entry` at every flush from now on.
    pub fn watch(&self, entry: &core::sync::atomic::AtomicU64) {
        self.state.lock().unwrap().watch = entry as *const _ as usize;
    }

    /// Every flush and `free_contig` so far, in order.
    pub fn events(&self) -> Vec<Event> {
        self.state.lock().unwrap().events.clone()
    }

    /// Live `alloc_contig` blocks of `order`.
    pub fn blocks(&self, order: u32) -> usize {
        let st = self.state.lock().unwrap();
        st.blocks.values().filter(|&&o| o == order).count()
    }

    /// Makes `alloc_contig` fail (`true`) or work again.
    pub fn contig_fails(&self, fails: bool) {
        self.state.lock().unwrap().contig_fails = fails;
    }

    pub fn fail_after(&self, n: usize) {
        self.state.lock().unwrap().budget = Some(n);
    }

    pub fn fail_never(&self) {
        self.state.lock().unwrap().budget = None;
    }

    pub fn space(&self, format: FormatKind, size: u64) -> NonNull<AddrSpace> {
        self.space_with(format, size, |_| {})
    }

    /// [`Pool::space`] with the config adjusted by `adjust`.
    pub fn space_with(
        &self,
        format: FormatKind,
        size: u64,
        adjust: impl FnOnce(&mut Config),
    ) -> NonNull<AddrSpace> {
        let mut config = Config {
            format,
            gpa_bits: format.max_gpa_bits(),
            frames_zeroed: false,
            no_huge_1g: false,
            svpbmt: false,
            s2fwb: false,
            base: Gpa::from_u64(0),
            size: size as usize,
        };
        adjust(&mut config);
        AddrSpace::create(config, self.hooks).unwrap()
    }

    pub fn destroy(&self, space: NonNull<AddrSpace>) {
        // SAFETY: created by `space`, not used afterwards.
        unsafe { AddrSpace::destroy(space) }
    }
}

fn dummy_hooks() -> Hooks {
    let c = axalloc_hooks {
        struct_size: core::mem::size_of::<axalloc_hooks>() as u32,
        reserved: 0,
        ctx: std::ptr::null_mut(),
        alloc_frame: Some(alloc),
        free_frame: Some(free),
        phys_to_virt: Some(p2v),
        flush_tlb: None,
        alloc_contig: None,
        free_contig: None,
        relax: None,
    };
    // SAFETY: never called: replaced before use.
    unsafe { Hooks::from_c(&c) }.unwrap()
}
