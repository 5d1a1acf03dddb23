//! The host's callbacks, wrapped in a safe Rust type.
//!
//! Every frame the library uses — page tables, guest RAM, its own bookkeeping —
//! comes from these hooks; the library has no allocator. The wrapper checks
//! what the host hands back (alignment, range, NULL) so that the rest of the
//! crate can trust it.

use core::ffi::c_void;
use core::ptr::NonNull;

use crate::addr::{FRAME_SIZE, Hpa};
use crate::cache::Policy;
use crate::capi::axalloc_hooks;
use crate::error::{Error, Result};

type AllocFrameFn = unsafe extern "C" fn(*mut c_void, *mut u64) -> i32;
type FreeFrameFn = unsafe extern "C" fn(*mut c_void, u64);
type PhysToVirtFn = unsafe extern "C" fn(*mut c_void, u64) -> *mut c_void;
type FlushTlbFn = unsafe extern "C" fn(*mut c_void, u64, u64);
type AllocContigFn = unsafe extern "C" fn(*mut c_void, u32, *mut u64) -> i32;
type FreeContigFn = unsafe extern "C" fn(*mut c_void, u64, u32);
type RelaxFn = unsafe extern "C" fn(*mut c_void);

/// Highest host-physical address any supported format can express (52 bits).
const HPA_LIMIT: u64 = 1 << 52;

/// The validated hooks of one address space.
#[derive(Clone, Copy)]
pub struct Hooks {
    ctx: *mut c_void,
    alloc_frame: AllocFrameFn,
    free_frame: FreeFrameFn,
    phys_to_virt: PhysToVirtFn,
    flush_tlb: Option<FlushTlbFn>,
    alloc_contig: Option<AllocContigFn>,
    free_contig: Option<FreeContigFn>,
    relax: Option<RelaxFn>,
    /// `AXALLOC_CFG_LINEAR_MAP`: the host-virtual address of every frame the
    /// hooks give is `hpa + linear_offset` (a direct map).
    linear_offset: Option<usize>,
    /// Frames at or above this host-physical address cannot be named by the
    /// format's entries: 2^52 (x86), 2^48 (Arm, 48-bit output addresses),
    /// 2^56 capped at 2^52 (RISC-V, the library's own limit).
    hpa_limit: u64,
    /// What a guest frame written through these hooks' view needs before
    /// the guest sees it (Arm: cache maintenance, see `cache.rs`).
    cache: Policy,
}

// SAFETY: the header requires every hook to be callable from any thread, also
// concurrently, for as long as the address space lives; `ctx` is only ever
// passed back to those hooks, never dereferenced here.
unsafe impl Send for Hooks {}
// SAFETY: as above; `Hooks` is immutable after creation.
unsafe impl Sync for Hooks {}

impl Hooks {
    /// Validates the C hook table: `alloc_frame`, `free_frame` and
    /// `phys_to_virt` are required, `free_contig` must be given exactly when
    /// `alloc_contig` is.
    ///
    /// # Safety
    /// Every non-NULL function pointer must be a function with the signature
    /// the header declares, honouring the contract written there, and stay
    /// callable (with `ctx`) until the address space is destroyed.
    pub unsafe fn from_c(h: &axalloc_hooks) -> Result<Self> {
        let (Some(alloc_frame), Some(free_frame), Some(phys_to_virt)) =
            (h.alloc_frame, h.free_frame, h.phys_to_virt)
        else {
            return Err(Error::Invalid);
        };
        if h.alloc_contig.is_some() != h.free_contig.is_some() {
            return Err(Error::Invalid);
        }
        Ok(Self {
            ctx: h.ctx,
            alloc_frame,
            free_frame,
            phys_to_virt,
            flush_tlb: h.flush_tlb,
            alloc_contig: h.alloc_contig,
            free_contig: h.free_contig,
            relax: h.relax,
            linear_offset: None,
            hpa_limit: HPA_LIMIT,
            cache: Policy::None,
        })
    }

    /// Obtains one 4 KiB frame (contents unspecified).
    ///
    /// A frame that is not 4 KiB aligned or lies beyond 52 bits is handed
    /// straight back: the host broke the hook's contract ([`Error::Hook`]).
    #[inline(always)]
    pub fn alloc_frame(&self) -> Result<Hpa> {
        let mut hpa = 0u64;
        // SAFETY: `from_c`'s contract makes the pointer a valid hook; `hpa` is
        // a live local the hook may write.
        let rc = unsafe { (self.alloc_frame)(self.ctx, &mut hpa) };
        if rc != 0 {
            return Err(Error::NoMemory);
        }
        if !hpa.is_multiple_of(FRAME_SIZE as u64) || hpa >= self.hpa_limit {
            // SAFETY: the host just gave us this value as a frame; returning
            // it unused is the only sensible thing to do with it.
            unsafe { (self.free_frame)(self.ctx, hpa) };
            return Err(Error::Hook);
        }
        Ok(Hpa::from_u64(hpa))
    }

    /// Gives a frame back to the host.
    ///
    /// # Safety
    /// `hpa` came from [`Hooks::alloc_frame`] of these hooks, was not given
    /// back since, and no hardware translation or library pointer refers to it
    /// any more (any TLB flush it needed has happened).
    #[inline]
    pub unsafe fn free_frame(&self, hpa: Hpa) {
        // SAFETY: valid hook per `from_c`; ownership per this function's contract.
        unsafe { (self.free_frame)(self.ctx, hpa.as_u64()) }
    }

    /// True if the host gave `alloc_contig` / `free_contig`.
    pub fn has_contig(&self) -> bool {
        self.alloc_contig.is_some()
    }

    /// Obtains `2^order` contiguous frames aligned to their size.
    pub fn alloc_contig(&self, order: u32) -> Result<Hpa> {
        let (Some(alloc), Some(free)) = (self.alloc_contig, self.free_contig) else {
            return Err(Error::NoMemory);
        };
        let mut hpa = 0u64;
        // SAFETY: valid hook per `from_c`; `hpa` is a live local.
        let rc = unsafe { alloc(self.ctx, order, &mut hpa) };
        if rc != 0 {
            return Err(Error::NoMemory);
        }
        let bytes = (FRAME_SIZE as u64) << order;
        if !hpa.is_multiple_of(bytes)
            || hpa
                .checked_add(bytes)
                .is_none_or(|end| end > self.hpa_limit)
        {
            // SAFETY: hand back what the host just gave us, unused.
            unsafe { free(self.ctx, hpa, order) };
            return Err(Error::Hook);
        }
        Ok(Hpa::from_u64(hpa))
    }

    /// Gives a contiguous block back.
    ///
    /// # Safety
    /// As [`Hooks::free_frame`], for a block from [`Hooks::alloc_contig`] with
    /// the same `order`.
    pub unsafe fn free_contig(&self, hpa: Hpa, order: u32) {
        if let Some(free) = self.free_contig {
            // SAFETY: valid hook per `from_c`; ownership per the contract.
            unsafe { free(self.ctx, hpa.as_u64(), order) }
        }
    }

    /// Restricts frames to below `limit` (the format's output-address
    /// width); a frame beyond it breaks the hook's contract (`Error::Hook`).
    pub fn with_hpa_limit(mut self, limit: u64) -> Self {
        self.hpa_limit = limit.min(HPA_LIMIT);
        self
    }

    /// Sets the cache maintenance guest frames need (`cache.rs`).
    pub fn with_cache(mut self, policy: Policy) -> Self {
        self.cache = policy;
        self
    }

    /// The cache maintenance guest frames written through this view need.
    #[inline(always)]
    pub fn cache(&self) -> Policy {
        self.cache
    }

    /// Frames (and linear ranges) must end at or below this address.
    pub fn hpa_limit(&self) -> u64 {
        self.hpa_limit
    }

    /// Declares the host's direct map: `phys_to_virt(hpa) == hpa + offset`
    /// for every frame the hooks give (`offset` page-aligned, checked by the
    /// caller). Frames are then never passed to `phys_to_virt`.
    pub fn with_linear_map(mut self, offset: usize) -> Self {
        self.linear_offset = Some(offset);
        self
    }

    /// The host's virtual address of the frame at `hpa`, a frame the hooks
    /// gave: the direct map when the host declared one, else `phys_to_virt`.
    #[inline]
    pub fn virt(&self, hpa: Hpa) -> Result<NonNull<u8>> {
        match self.linear_offset {
            Some(offset) => {
                NonNull::new(hpa.as_usize().wrapping_add(offset) as *mut u8).ok_or(Error::Hook)
            }
            None => self.virt_hook(hpa),
        }
    }

    /// The host's virtual address of any host-physical page (also the
    /// passthrough ranges of linear regions, which no direct map promise
    /// covers): always `phys_to_virt`. `hpa` is always a page's first byte:
    /// NULL or a pointer that is not page-aligned breaks the hook's contract
    /// ([`Error::Hook`]).
    #[inline]
    pub fn virt_hook(&self, hpa: Hpa) -> Result<NonNull<u8>> {
        // SAFETY: valid hook per `from_c`; translating an address has no side
        // effects the library relies on.
        let p = unsafe { (self.phys_to_virt)(self.ctx, hpa.as_u64()) };
        if !(p as usize).is_multiple_of(FRAME_SIZE) {
            return Err(Error::Hook);
        }
        NonNull::new(p.cast::<u8>()).ok_or(Error::Hook)
    }

    /// One step of waiting for the lock: the host's `relax` hook (cpu_relax,
    /// sched_yield, WFE), or a spin-loop hint.
    #[inline]
    pub fn relax(&self) {
        match self.relax {
            // SAFETY: valid optional hook per `from_c`.
            Some(relax) => unsafe { relax(self.ctx) },
            None => core::hint::spin_loop(),
        }
    }

    /// Invalidates the guest's cached translations of `[gpa, gpa + size)`
    /// (INVEPT, INVLPGA/ASID flush, `tlbi ipas2e1is`, `hfence.gvma`, ...).
    /// Never called with `size == 0`.
    #[inline]
    pub fn flush(&self, gpa: u64, size: u64) {
        if size == 0 {
            return;
        }
        if let Some(flush) = self.flush_tlb {
            // SAFETY: valid optional hook per `from_c`.
            unsafe { flush(self.ctx, gpa, size) }
        }
    }
}
