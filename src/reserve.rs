//! The zeroed reserve: frames the host lets the library obtain and zero
//! ahead of time, so a fault installs one with no zeroing and no hook call
//! (Xen's populate-on-demand cache, done right).
//!
//! The reserve is a lock-free stack (Treiber) threaded through the frames
//! themselves: the first word of a reserved frame holds the next frame's
//! address. Every other byte is zero, and a fault that pops a frame zeroes
//! that one word (one cache line, which it then owns in its cache) — so the
//! guest still receives an all-zero page. The head packs the top frame's
//! frame number (40 bits) with a 24-bit generation, bumped by every push and
//! pop, so a pop that raced with pop-push-pop of the same frame fails its
//! compare-exchange instead of corrupting the stack (ABA).
//!
//! Filling happens in [`Reserve::fill`], with no lock held: the host calls
//! `axalloc_reserve` from an idle loop or a background thread; frames are
//! zeroed there in bulk with streaming stores, one fence per call.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::addr::{FRAME_SIZE, Hpa};
use crate::cache::{self, Policy, Span};
use crate::error::Result;
use crate::hooks::Hooks;
use crate::zero;

/// Head encoding: frame number in the low 40 bits (HPA < 2^52), generation
/// above. `EMPTY_FN` marks an empty stack.
const FN_BITS: u32 = 40;
const FN_MASK: u64 = (1 << FN_BITS) - 1;
const EMPTY_FN: u64 = FN_MASK;
const GEN: u64 = 1 << FN_BITS;
/// Frames zeroed per fence while filling.
const BATCH: usize = 64;

impl Reserve {
    /// Bytes at the start of a reserved frame that hold the link (written by
    /// `push`, cleared by `pop`): all a fault must clean again on Arm.
    pub const LINK_BYTES: usize = 8;
}

const fn pack(frame: u64, generation: u64) -> u64 {
    (frame & FN_MASK) | generation.wrapping_mul(GEN)
}

/// The zeroed reserve of one address space.
pub struct Reserve {
    head: AtomicU64,
    /// Frames in the stack (exact when no push or pop is in flight).
    len: AtomicU64,
    /// How many frames [`Reserve::fill`] keeps ready.
    target: AtomicU64,
}

impl Default for Reserve {
    fn default() -> Self {
        Self::new()
    }
}

impl Reserve {
    /// An empty reserve with a target of 0.
    pub const fn new() -> Self {
        Self {
            head: AtomicU64::new(pack(EMPTY_FN, 0)),
            len: AtomicU64::new(0),
            target: AtomicU64::new(0),
        }
    }

    /// Frames ready now.
    pub fn len(&self) -> u64 {
        self.len.load(Ordering::Relaxed)
    }

    /// True if no frame is ready.
    pub fn is_empty(&self) -> bool {
        self.head.load(Ordering::Relaxed) & FN_MASK == EMPTY_FN
    }

    /// The link word at the start of the reserved frame `hpa`.
    fn link(hooks: &Hooks, hpa: u64) -> Result<&AtomicU64> {
        let p = hooks.virt(Hpa::from_u64(hpa))?.cast::<AtomicU64>();
        // SAFETY: `hpa` is a frame the reserve holds (or held a moment ago: a
        // racing pop may have handed it out, in which case the value read is
        // discarded by the failing compare-exchange); `virt` returns an
        // page-aligned pointer to its first byte; access is atomic.
        Ok(unsafe { p.as_ref() })
    }

    /// Pushes the zeroed frame `hpa` (its first word is overwritten with the
    /// link).
    fn push(&self, hooks: &Hooks, hpa: Hpa) -> Result {
        let link = Self::link(hooks, hpa.as_u64())?;
        let frame = hpa.as_u64() >> 12;
        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            link.store((head & FN_MASK) << 12, Ordering::Relaxed);
            let new = pack(frame, (head >> FN_BITS).wrapping_add(1));
            // Release: the frame's zeroing and link before it is reachable.
            match self
                .head
                .compare_exchange_weak(head, new, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => head = now,
            }
        }
        self.len.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Takes a zeroed frame, or `None` if the reserve is empty. The frame is
    /// entirely zero when returned (its link word is cleared here).
    #[inline]
    pub fn pop(&self, hooks: &Hooks) -> Result<Option<Hpa>> {
        let mut head = self.head.load(Ordering::Acquire);
        loop {
            let frame = head & FN_MASK;
            if frame == EMPTY_FN {
                return Ok(None);
            }
            let hpa = frame << 12;
            let link = Self::link(hooks, hpa)?;
            let next = link.load(Ordering::Relaxed) >> 12;
            let new = pack(next, (head >> FN_BITS).wrapping_add(1));
            match self
                .head
                .compare_exchange_weak(head, new, Ordering::Acquire, Ordering::Acquire)
            {
                Ok(_) => {
                    link.store(0, Ordering::Relaxed);
                    self.len.fetch_sub(1, Ordering::Relaxed);
                    return Ok(Some(Hpa::from_u64(hpa)));
                }
                Err(now) => head = now,
            }
        }
    }

    /// Sets the target to `frames` and fills the reserve up to it, or gives
    /// frames back down to it. Filling obtains frames through `alloc_frame`
    /// and zeroes them with streaming stores (one fence at the end); on
    /// [`Error::NoMemory`] whatever was filled stays. Call with no lock held.
    pub fn set(&self, hooks: &Hooks, frames: u64, frames_zeroed: bool) -> Result {
        self.target.store(frames, Ordering::Relaxed);
        let mut result = Ok(());
        // Zero a batch back to back, fence once, then publish the batch.
        let mut batch = [Hpa::from_usize(0); BATCH];
        while result.is_ok() && self.len() < frames {
            let want = (frames - self.len()).min(BATCH as u64) as usize;
            let mut n = 0;
            for slot in batch.iter_mut().take(want) {
                match self.obtain(hooks, frames_zeroed) {
                    Ok(hpa) => {
                        *slot = hpa;
                        n += 1;
                    }
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            if !frames_zeroed {
                zero::streaming_fence();
            }
            for &hpa in batch.iter().take(n) {
                if let Err(e) = self.push(hooks, hpa) {
                    // A hook broke its contract; the frame was never shown.
                    // SAFETY: obtained above, reachable by no one.
                    unsafe { hooks.free_frame(hpa) };
                    result = Err(e);
                }
            }
        }
        while self.len() > frames {
            match self.pop(hooks)? {
                // SAFETY: popped: ours alone, never mapped.
                Some(hpa) => unsafe { hooks.free_frame(hpa) },
                None => break,
            }
        }
        result
    }

    /// One frame from the host, zeroed with streaming stores (not fenced).
    /// On Arm without FEAT_S2FWB it is also cleaned to the PoC here, in
    /// bulk and with no lock held, so that a fault taking it only cleans the
    /// link word's line (`frames::fault_frame`); the reserve belongs to one
    /// address space, whose policy the hooks carry (`cache.rs`). Executable
    /// pages get their instruction-side maintenance at the fault, which
    /// knows the page's rights.
    fn obtain(&self, hooks: &Hooks, frames_zeroed: bool) -> Result<Hpa> {
        let hpa = hooks.alloc_frame()?;
        if !frames_zeroed {
            match hooks.virt(hpa) {
                // SAFETY: a fresh frame of ours that nothing maps yet.
                Ok(p) => unsafe {
                    zero::zero_frame_streaming(p);
                    if hooks.cache() == Policy::Full {
                        zero::streaming_fence();
                        cache::publish(hooks.cache(), p, Span::FRAME, false, Span::NONE);
                    }
                },
                Err(e) => {
                    // SAFETY: obtained above, never shown to anyone.
                    unsafe { hooks.free_frame(hpa) };
                    return Err(e);
                }
            }
        }
        Ok(hpa)
    }

    /// The target [`Reserve::set`] last set.
    pub fn target(&self) -> u64 {
        self.target.load(Ordering::Relaxed)
    }

    /// Gives every frame back (destroy).
    pub fn drain(&self, hooks: &Hooks) {
        while let Ok(Some(hpa)) = self.pop(hooks) {
            // SAFETY: popped: ours alone, never mapped.
            unsafe { hooks.free_frame(hpa) };
        }
    }
}

const _: () = assert!(FRAME_SIZE == 1 << 12);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::tests::pool::Pool;

    #[test]
    fn reserve_fills_hands_out_zeroed_frames_and_drains() {
        let pool = Pool::new(64);
        let r = Reserve::new();
        r.set(pool.hooks(), 8, false).unwrap();
        assert_eq!(r.len(), 8);
        assert_eq!(pool.in_use(), 8);
        let hpa = r.pop(pool.hooks()).unwrap().unwrap();
        let p = pool.virt(hpa.as_u64()) as *const u8;
        // SAFETY: a pool frame.
        assert!((0..FRAME_SIZE).all(|i| unsafe { *p.add(i) } == 0));
        // SAFETY: popped, ours.
        unsafe { pool.hooks().free_frame(hpa) };
        r.set(pool.hooks(), 2, false).unwrap();
        assert_eq!((r.len(), pool.in_use()), (2, 2));
        r.drain(pool.hooks());
        assert_eq!((r.len(), pool.in_use()), (0, 0));
    }

    #[test]
    fn reserve_keeps_what_it_filled_when_the_host_runs_out() {
        let pool = Pool::new(64);
        let r = Reserve::new();
        pool.fail_after(3);
        assert_eq!(r.set(pool.hooks(), 8, false), Err(Error::NoMemory));
        assert_eq!(r.len(), 3);
        pool.fail_never();
        r.drain(pool.hooks());
        assert_eq!(pool.in_use(), 0);
    }

    #[test]
    fn concurrent_pops_hand_out_each_frame_once() {
        let pool = Pool::new(512);
        let r = Reserve::new();
        let n = if cfg!(miri) { 16 } else { 400 };
        r.set(pool.hooks(), n, false).unwrap();
        let got = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    let mut pushed_back = 0;
                    while let Some(h) = r.pop(pool.hooks()).unwrap() {
                        // Push some back to exercise ABA (pop-push-pop).
                        if pushed_back < 20 && h.as_u64() % 3 == 0 {
                            pushed_back += 1;
                            r.push(pool.hooks(), h).unwrap();
                        } else {
                            got.lock().unwrap().push(h.as_u64());
                        }
                    }
                });
            }
        });
        let mut v = got.into_inner().unwrap();
        let len = v.len();
        v.sort();
        v.dedup();
        assert_eq!(v.len(), len, "a frame handed out twice");
        assert_eq!(len as u64, n);
        for h in v {
            // SAFETY: popped, ours.
            unsafe { pool.hooks().free_frame(Hpa::from_u64(h)) };
        }
        assert_eq!(pool.in_use(), 0);
    }
}
