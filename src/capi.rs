//! The C boundary. Each function checks pointers, turns C integers into Rust
//! types (rejecting what does not fit), calls the address space, and maps the
//! result to a status. No logic lives here. cbindgen turns this file's
//! declarations and doc comments into `include/axalloc.h`.
//!
//! Common rules, stated once here and repeated where they matter:
//! - Every function may be called concurrently on one address space from many
//!   threads, except `axalloc_as_destroy`.
//! - On any error nothing changed: no frame is held that was not held before,
//!   and out-parameters are left untouched.
//! - Hooks must not call back into the same address space. `alloc_frame`,
//!   `alloc_contig`, `phys_to_virt` and `relax` may run under the lock;
//!   `flush_tlb`, `free_frame` and `free_contig` never do.

#![allow(non_camel_case_types)]

use core::ffi::{c_char, c_void};
use core::ptr::NonNull;

use crate::addr::Gpa;
use crate::error::Error;
use crate::flags::{Access, Flags};
use crate::format::FormatKind;
use crate::hooks::Hooks;
use crate::space::{AddrSpace, Config};

/// Status of every libaxalloc call. Values are stable and never reused.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum axalloc_status {
    /// Success.
    AXALLOC_OK = 0,
    /// An argument is invalid: NULL, unaligned, zero size, overflowing,
    /// outside the window, or with unknown bits.
    AXALLOC_ERR_INVALID = -1,
    /// A hook could not supply a frame; nothing changed.
    AXALLOC_ERR_NO_MEMORY = -2,
    /// The range overlaps an existing region.
    AXALLOC_ERR_EXISTS = -3,
    /// No region covers the address, or nothing is present there.
    AXALLOC_ERR_NOT_MAPPED = -4,
    /// The access is not allowed by the region's flags.
    AXALLOC_ERR_ACCESS = -5,
    /// The request is valid but not supported.
    AXALLOC_ERR_UNSUPPORTED = -6,
    /// An internal invariant broke; destroy the address space.
    AXALLOC_ERR_INTERNAL = -7,
    /// Another map / unmap / write-populate is working on an overlapping
    /// range (or the table spans around it) right now; nothing changed. The
    /// library never waits for it — it may be waiting for this CPU to take a
    /// TLB-flush IPI — so retry after that call returns (e.g. after
    /// re-enabling interrupts or re-entering the guest).
    AXALLOC_ERR_BUSY = -10,
}
use axalloc_status::*;

/// Status of every libaxalloc call (`AXALLOC_OK` or a negative error).
pub type axalloc_status_t = axalloc_status;

impl From<Error> for axalloc_status {
    fn from(e: Error) -> Self {
        match e {
            Error::Invalid => AXALLOC_ERR_INVALID,
            Error::NoMemory => AXALLOC_ERR_NO_MEMORY,
            Error::Exists => AXALLOC_ERR_EXISTS,
            Error::NotMapped => AXALLOC_ERR_NOT_MAPPED,
            Error::Access => AXALLOC_ERR_ACCESS,
            Error::Unsupported => AXALLOC_ERR_UNSUPPORTED,
            Error::Internal => AXALLOC_ERR_INTERNAL,
            Error::Busy => AXALLOC_ERR_BUSY,
        }
    }
}

fn status(r: crate::error::Result) -> axalloc_status_t {
    match r {
        Ok(()) => AXALLOC_OK,
        Err(e) => e.into(),
    }
}

/// Region may be read by the guest. Required in every mapping.
pub const AXALLOC_READ: u32 = 1 << 0;
/// Region may be written by the guest.
pub const AXALLOC_WRITE: u32 = 1 << 1;
/// Region may be executed by the guest.
pub const AXALLOC_EXEC: u32 = 1 << 2;
/// Device / uncached memory type instead of write-back.
pub const AXALLOC_DEVICE: u32 = 1 << 3;

/// Intel EPT: 4 levels, 48-bit guest-physical addresses.
pub const AXALLOC_FORMAT_X86_EPT: u32 = 1;
/// AMD NPT: the x86-64 long-mode format with U=1, 4 levels, 48-bit.
pub const AXALLOC_FORMAT_X86_NPT: u32 = 2;

/// The alloc hooks return zeroed frames: the library skips zeroing.
pub const AXALLOC_CFG_FRAMES_ZEROED: u32 = 1 << 0;
/// Never create 1 GiB leaves (for CPUs without 1 GiB stage-2 pages).
pub const AXALLOC_CFG_NO_HUGE_1G: u32 = 1 << 1;

/// The host maps every frame its hooks give at `hpa + cfg.linear_offset`
/// (a direct map, as most hypervisors have): the library computes frames'
/// addresses itself and never calls `phys_to_virt` for them (it still does
/// for the passthrough ranges `axalloc_read`/`axalloc_write` copy through).
pub const AXALLOC_CFG_LINEAR_MAP: u32 = 1 << 13;

const CFG_ALL: u32 = AXALLOC_CFG_FRAMES_ZEROED | AXALLOC_CFG_NO_HUGE_1G | AXALLOC_CFG_LINEAR_MAP;

/// The host's callbacks. Every hook receives `ctx` first. Hooks may be called
/// from any thread that calls into the library, also concurrently, and must
/// not call back into the same address space. Under the lock (see the rules
/// at the top): `alloc_frame`, `alloc_contig`, `phys_to_virt`, `relax` may be
/// called with it held and must not sleep or wait for other CPUs;
/// `flush_tlb`, `free_frame`, `free_contig` are called with no lock held. The structure is copied by
/// `axalloc_as_create`; the hooks (and `ctx`) must stay valid until
/// `axalloc_as_destroy` returns, and none is called after that.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct axalloc_hooks {
    /// Passed first to every hook; never dereferenced by the library.
    pub ctx: *mut c_void,
    /// Required. May run under the lock (shared: a fault's frame and tables;
    /// exclusive: region bookkeeping, edge splits of an unmap): must not sleep
    /// or wait for other CPUs. Obtains one 4 KiB frame, 4 KiB aligned, below 2^52: writes
    /// its host-physical address to `*hpa_out` and returns 0, or returns
    /// non-zero when none is available (the call then fails with
    /// `AXALLOC_ERR_NO_MEMORY`). Contents may be anything, unless the config
    /// says `AXALLOC_CFG_FRAMES_ZEROED`. A misaligned frame is handed back at
    /// once and counts as a failure.
    pub alloc_frame: Option<unsafe extern "C" fn(ctx: *mut c_void, hpa_out: *mut u64) -> i32>,
    /// Required. Never called with the lock held (it may wait), except when
    /// an `axalloc_write` fails with `NO_MEMORY` while populating (the
    /// shared lock). Takes back a frame `alloc_frame` gave. Called exactly once
    /// per frame, and for a frame that hardware could reach only after the
    /// `flush_tlb` call that covered its removal has returned.
    pub free_frame: Option<unsafe extern "C" fn(ctx: *mut c_void, hpa: u64)>,
    /// Required. The host's virtual address of the frame at `hpa` (frames
    /// from `alloc_frame`, and the host-physical ranges of linear regions
    /// that `axalloc_read`/`axalloc_write` copy through). Never NULL for
    /// those; page-aligned for a frame's first byte (the library keeps its own
    /// state, 128-byte aligned, in one of its frames); the same address for a
    /// frame for as long as the library holds it.
    pub phys_to_virt: Option<unsafe extern "C" fn(ctx: *mut c_void, hpa: u64) -> *mut c_void>,
    /// Optional. Never called with the lock held: it may IPI other CPUs and
    /// wait for them, including vCPUs that are spinning in `handle_fault`.
    /// Invalidates every cached stage-2 translation of `[gpa, gpa + size)`
    /// on every CPU that may hold one (INVEPT, NPT ASID flush, ...), and
    /// returns when that is done. The range covers every removed entry and
    /// the whole span of every table the unmap frees (a paging-structure
    /// cache may hold any of it), so it can exceed the unmapped bytes; it
    /// always lies inside the address space's window. Never
    /// called with size 0, at most once per `axalloc_unmap`, never for
    /// mappings being added. If NULL, the host guarantees no CPU holds stale
    /// translations by other means (e.g. no vCPU runs while it unmaps).
    pub flush_tlb: Option<unsafe extern "C" fn(ctx: *mut c_void, gpa: u64, size: u64)>,
    /// Optional (not used by this version for guest RAM; reserved for 2 MiB
    /// pages and multi-frame roots). May run under the lock, like
    /// `alloc_frame`. Obtains 2^`order` contiguous frames,
    /// aligned to their size; returns 0 on success.
    pub alloc_contig:
        Option<unsafe extern "C" fn(ctx: *mut c_void, order: u32, hpa_out: *mut u64) -> i32>,
    /// Required exactly when `alloc_contig` is given. Takes back a block.
    /// Never called with the lock held.
    pub free_contig: Option<unsafe extern "C" fn(ctx: *mut c_void, hpa: u64, order: u32)>,
    /// Optional. Called over and over while a thread waits for the address
    /// space's lock (it spins; see "Locks" above): `cpu_relax()` / `pause`,
    /// WFE, or `sched_yield()` in a hosted VMM with more threads than CPUs.
    /// NULL: a spin-loop hint. Must not call into the library.
    pub relax: Option<unsafe extern "C" fn(ctx: *mut c_void)>,
}
/// See `struct axalloc_hooks`.
pub type axalloc_hooks_t = axalloc_hooks;

/// How an address space is set up.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct axalloc_config {
    /// One of `AXALLOC_FORMAT_*`.
    pub format: u32,
    /// Any of `AXALLOC_CFG_*`.
    pub flags: u32,
    /// Guest-physical window `[base, base + size)` every mapping must lie in:
    /// 4 KiB aligned, non-empty, inside the format's 48-bit space.
    pub base: u64,
    /// Size of the window in bytes.
    pub size: u64,
    /// With `AXALLOC_CFG_LINEAR_MAP`: host-virtual minus host-physical
    /// address of every frame the hooks give (4 KiB aligned; may wrap, as a
    /// higher-half direct map does). Must be 0 without the flag.
    pub linear_offset: u64,
}
/// See `struct axalloc_config`.
pub type axalloc_config_t = axalloc_config;

/// Counters of an address space (exact when no call is in progress).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct axalloc_stats {
    /// Regions currently mapped.
    pub regions: u64,
    /// Sum of their sizes in bytes.
    pub mapped_bytes: u64,
    /// 4 KiB frames currently backing alloc regions.
    pub guest_frames: u64,
    /// Page-table frames currently held, root included.
    pub table_frames: u64,
    /// Faults resolved by allocating a frame (since creation).
    pub faults: u64,
    /// Zeroed frames held in the reserve (`axalloc_reserve`), not counted in
    /// `guest_frames` until a fault installs them.
    pub reserve_frames: u64,
}
/// See `struct axalloc_stats`.
pub type axalloc_stats_t = axalloc_stats;

/// An address space: one guest's stage-2 page table and its regions.
/// Opaque; created by `axalloc_as_create`, released by `axalloc_as_destroy`.
pub struct axalloc_as {
    _opaque: [u8; 0],
}
/// See `struct axalloc_as`.
pub type axalloc_as_t = axalloc_as;

fn space<'a>(p: *const axalloc_as_t) -> Option<&'a AddrSpace> {
    // SAFETY: a non-NULL handle is, per the header's contract, a live pointer
    // from `axalloc_as_create` that has not been destroyed.
    NonNull::new(p.cast_mut()).map(|p| unsafe { p.cast::<AddrSpace>().as_ref() })
}

/// A static, NUL-terminated English name of `status` (e.g. "AXALLOC_OK").
/// Never NULL; unknown values give "AXALLOC_ERR_UNKNOWN". Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn axalloc_status_str(status: i32) -> *const c_char {
    let s: &'static core::ffi::CStr = match status {
        0 => c"AXALLOC_OK",
        -1 => c"AXALLOC_ERR_INVALID",
        -2 => c"AXALLOC_ERR_NO_MEMORY",
        -3 => c"AXALLOC_ERR_EXISTS",
        -4 => c"AXALLOC_ERR_NOT_MAPPED",
        -5 => c"AXALLOC_ERR_ACCESS",
        -6 => c"AXALLOC_ERR_UNSUPPORTED",
        -7 => c"AXALLOC_ERR_INTERNAL",
        -10 => c"AXALLOC_ERR_BUSY",
        _ => c"AXALLOC_ERR_UNKNOWN",
    };
    s.as_ptr()
}

/// Creates an address space: validates `cfg` and `hooks`, takes one frame for
/// its own state and one for the root table (both through `alloc_frame`).
///
/// - `cfg`, `hooks`, `as_out`: non-NULL; `cfg` and `hooks` are copied.
/// - On success `*as_out` is the new handle, owned by the caller until
///   `axalloc_as_destroy`.
/// - Errors: `AXALLOC_ERR_INVALID` (NULL, unknown format or flag bits, window
///   unaligned / empty / overflowing / beyond 48 bits, a required hook NULL,
///   `free_contig` given without `alloc_contig` or the reverse),
///   `AXALLOC_ERR_NO_MEMORY`. On error `*as_out` is untouched and no frame is
///   held.
///
/// # Safety
/// Pointers valid as described; hooks honour `axalloc_hooks_t`'s contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn axalloc_as_create(
    cfg: *const axalloc_config_t,
    hooks: *const axalloc_hooks_t,
    as_out: *mut *mut axalloc_as_t,
) -> axalloc_status_t {
    if cfg.is_null() || hooks.is_null() || as_out.is_null() {
        return AXALLOC_ERR_INVALID;
    }
    // SAFETY: non-NULL, and valid for reads per the contract.
    let (cfg, hooks) = unsafe { (cfg.read(), hooks.read()) };
    let format = match cfg.format {
        AXALLOC_FORMAT_X86_EPT => FormatKind::X86Ept,
        AXALLOC_FORMAT_X86_NPT => FormatKind::X86Npt,
        _ => return AXALLOC_ERR_INVALID,
    };
    if cfg.flags & !CFG_ALL != 0 {
        return AXALLOC_ERR_INVALID;
    }
    let config = Config {
        format,
        frames_zeroed: cfg.flags & AXALLOC_CFG_FRAMES_ZEROED != 0,
        no_huge_1g: cfg.flags & AXALLOC_CFG_NO_HUGE_1G != 0,
        base: Gpa::from_u64(cfg.base),
        size: cfg.size as usize,
    };
    let linear = cfg.flags & AXALLOC_CFG_LINEAR_MAP != 0;
    if cfg.linear_offset % 4096 != 0 || (!linear && cfg.linear_offset != 0) {
        return AXALLOC_ERR_INVALID;
    }
    // SAFETY: the hook pointers come with the header's contract.
    let hooks = match unsafe { Hooks::from_c(&hooks) } {
        Ok(h) if linear => h.with_linear_map(cfg.linear_offset as usize),
        Ok(h) => h,
        Err(e) => return e.into(),
    };
    match AddrSpace::create(config, hooks) {
        Ok(space) => {
            // SAFETY: non-NULL, writable per the contract.
            unsafe { as_out.write(space.as_ptr().cast()) };
            AXALLOC_OK
        }
        Err(e) => e.into(),
    }
}

/// Destroys an address space: calls `flush_tlb` once over the whole window
/// (translations cached under this root must not outlive it), then gives
/// every frame the library
/// obtained back through `free_frame`, exactly once. `as` may be NULL (no-op).
/// No hook of this address space is called after it returns.
///
/// Not thread-safe: no other call on `as` may be in progress or follow. The
/// hypervisor must have stopped every vCPU using the table.
///
/// # Safety
/// `as` is NULL or a live handle from `axalloc_as_create`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn axalloc_as_destroy(r#as: *mut axalloc_as_t) {
    if let Some(p) = NonNull::new(r#as) {
        // SAFETY: a live handle, used by no one else, per the contract.
        unsafe { AddrSpace::destroy(p.cast()) }
    }
}

/// Host-physical address of the root table, for the hardware pointer (EPTP,
/// nCR3, ...; the caller adds the format's control bits). Constant for the
/// life of the address space; 0 if `as` is NULL. Thread-safe.
///
/// # Safety
/// `as` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn axalloc_as_root(r#as: *const axalloc_as_t) -> u64 {
    space(r#as).map_or(0, |s| s.root().as_u64())
}

/// Copies the counters into `*out`. Thread-safe.
/// Errors: `AXALLOC_ERR_INVALID` if `as` or `out` is NULL.
///
/// # Safety
/// `as` is NULL or a live handle; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn axalloc_as_stats(
    r#as: *const axalloc_as_t,
    out: *mut axalloc_stats_t,
) -> axalloc_status_t {
    let Some(s) = space(r#as) else {
        return AXALLOC_ERR_INVALID;
    };
    if out.is_null() {
        return AXALLOC_ERR_INVALID;
    }
    let st = s.stats();
    let c = axalloc_stats {
        regions: st.regions,
        mapped_bytes: st.mapped_bytes,
        guest_frames: st.guest_frames,
        table_frames: st.table_frames,
        faults: st.faults,
        reserve_frames: st.reserve_frames,
    };
    // SAFETY: non-NULL and writable per the contract.
    unsafe { out.write(c) };
    AXALLOC_OK
}

/// Keeps `frames` zeroed frames ready for faults (Xen's populate-on-demand
/// cache): a fault takes a frame from this reserve before it would call
/// `alloc_frame`, so it neither zeroes nor calls a hook. Raising the number
/// obtains frames through `alloc_frame` and zeroes them in bulk with
/// streaming stores, here, with no lock held — call it from an idle loop or
/// a background thread, and again to top the reserve up as faults use it.
/// Lowering it (0 empties it) gives the surplus back through `free_frame`;
/// `axalloc_as_destroy` gives back the rest. The reserve's size is
/// `axalloc_stats_t.reserve_frames`; its frames count in no other field.
///
/// - Errors: `AXALLOC_ERR_INVALID` (NULL `as`), `AXALLOC_ERR_NO_MEMORY`
///   (`alloc_frame` failed before the reserve reached `frames`: the frames
///   obtained so far are kept in the reserve — unlike every other call, this
///   one is not all-or-nothing, since a partly filled reserve is useful).
/// - Thread-safe, concurrent with every call but `axalloc_as_destroy`; takes
///   no lock (the reserve is a lock-free stack); calls `alloc_frame`,
///   `phys_to_virt` and `free_frame`.
///
/// # Safety
/// `as` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn axalloc_reserve(r#as: *mut axalloc_as_t, frames: u64) -> axalloc_status_t {
    let Some(s) = space(r#as) else {
        return AXALLOC_ERR_INVALID;
    };
    status(s.set_reserve(frames))
}

/// Maps guest RAM at `[gpa, gpa + size)` backed by frames from `alloc_frame`.
///
/// - `populate = true`: allocates, zeroes and maps every page now, all or
///   nothing. `populate = false`: records the region; each page gets a zeroed
///   frame on its first `axalloc_handle_fault` (or `axalloc_write`).
/// - `flags`: `AXALLOC_READ` required, plus any of WRITE, EXEC, DEVICE.
/// - Errors: `AXALLOC_ERR_INVALID` (NULL, unaligned, empty, overflowing,
///   outside the window, no READ, unknown bits), `AXALLOC_ERR_EXISTS`
///   (overlaps a region), `AXALLOC_ERR_NO_MEMORY` (a hook could not supply
///   a frame, or the address space already holds its maximum of 6,528
///   regions; everything this call took has been given back and the address
///   space is exactly as before).
/// - `AXALLOC_ERR_BUSY`: a map/unmap/write-populate in flight overlaps the
///   range (nothing changed; retry after it returns).
/// - Locks: takes the exclusive side twice, briefly (claim + bookkeeping;
///   commit); with `populate`, allocates (`alloc_frame`) and zeroes with no
///   lock held, so faults elsewhere go on. A fault inside the range before
///   the call returns is spurious (`AXALLOC_OK`; the guest re-faults). Never
///   calls `flush_tlb`; `free_frame` only on failure, with no lock held.
///
/// # Safety
/// `as` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn axalloc_map_alloc(
    r#as: *mut axalloc_as_t,
    gpa: u64,
    size: u64,
    flags: u32,
    populate: bool,
) -> axalloc_status_t {
    let (Some(s), Some(flags)) = (space(r#as), Flags::from_bits(flags)) else {
        return AXALLOC_ERR_INVALID;
    };
    status(s.map_alloc(gpa, size, flags, populate))
}

/// Maps `[gpa, gpa + size)` to host-physical `[hpa, hpa + size)` (device
/// passthrough, shared memory), with 2 MiB / 1 GiB leaves wherever both
/// addresses and the remaining size allow (no 1 GiB leaves with
/// `AXALLOC_CFG_NO_HUGE_1G`). Takes table frames only; the host keeps owning
/// the linear memory, which is never given to `free_frame`.
///
/// - Errors: as `axalloc_map_alloc`, plus `AXALLOC_ERR_INVALID` for an
///   unaligned `hpa` or one whose range passes 2^52.
/// - `AXALLOC_ERR_BUSY` as `axalloc_map_alloc`. Locks as a populating
///   `axalloc_map_alloc`. Never calls `flush_tlb`.
///
/// # Safety
/// `as` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn axalloc_map_linear(
    r#as: *mut axalloc_as_t,
    gpa: u64,
    hpa: u64,
    size: u64,
    flags: u32,
) -> axalloc_status_t {
    let (Some(s), Some(flags)) = (space(r#as), Flags::from_bits(flags)) else {
        return AXALLOC_ERR_INVALID;
    };
    status(s.map_linear(gpa, hpa, size, flags))
}

/// Unmaps `[gpa, gpa + size)`, munmap-like: parts no region covers are
/// ignored, regions are trimmed or split, a huge linear leaf partly covered is
/// split. Calls `flush_tlb` at most once, covering every removed present
/// entry, and only then gives removed frames and emptied table frames back.
///
/// - Errors: `AXALLOC_ERR_INVALID` (NULL, unaligned, empty, overflowing,
///   outside the window), `AXALLOC_ERR_NO_MEMORY` (a split or a region split
///   needed a frame and none came; nothing changed).
/// - `AXALLOC_ERR_BUSY`: another map/unmap/write-populate in flight overlaps
///   the range or the table spans it would free (nothing changed; retry).
/// - Locks: the exclusive side for the edge splits (`alloc_frame` for the
///   few tables they need) and the detach, which yields to waiting vCPUs
///   every few dozen entries; `flush_tlb` and every `free_frame` run after it
///   is released. Meanwhile faults on the range report `NOT_MAPPED`, and
///   faults that meet a table being freed are spurious (`AXALLOC_OK`).
///
/// # Safety
/// `as` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn axalloc_unmap(
    r#as: *mut axalloc_as_t,
    gpa: u64,
    size: u64,
) -> axalloc_status_t {
    let Some(s) = space(r#as) else {
        return AXALLOC_ERR_INVALID;
    };
    status(s.unmap(gpa, size))
}

/// Resolves a stage-2 fault at `gpa` (any byte of the page) for `access`, a
/// non-empty subset of `AXALLOC_READ | AXALLOC_WRITE | AXALLOC_EXEC`.
///
/// Checked in this order:
/// - no region covers `gpa` → `AXALLOC_ERR_NOT_MAPPED` (the MMIO path);
/// - the region does not allow `access` → `AXALLOC_ERR_ACCESS`, even if the
///   page is present;
/// - the page is present and its entry allows `access` → `AXALLOC_OK`,
///   nothing allocated (spurious: another vCPU won, or a stale TLB entry);
///   present but its entry does not allow `access` → `AXALLOC_ERR_ACCESS`
///   (answering OK would make the guest fault forever);
/// - another operation is changing the entry right now (map commit, unmap
///   reclaim: a *frozen* entry) → `AXALLOC_OK` at once, nothing allocated:
///   the guest re-faults; the call never spins waiting for it;
/// - otherwise a zeroed frame is installed → `AXALLOC_OK`;
///   `AXALLOC_ERR_NO_MEMORY` if `alloc_frame` fails (nothing changed).
///
/// A present page is never replaced by another frame. Thread-safe and
/// concurrent: faults from many vCPUs proceed in parallel under the shared
/// lock (`alloc_frame` may run under it; a frame or table that lost a race
/// goes back through `free_frame` after it is released); faults on the same
/// page produce exactly one frame. The frame is zeroed with ordinary stores,
/// so it is in the cache when the guest touches it. `AXALLOC_ERR_INVALID` for NULL or a bad
/// `access`.
///
/// # Safety
/// `as` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn axalloc_handle_fault(
    r#as: *mut axalloc_as_t,
    gpa: u64,
    access: u32,
) -> axalloc_status_t {
    let (Some(s), Some(access)) = (space(r#as), Access::from_bits(access)) else {
        return AXALLOC_ERR_INVALID;
    };
    status(s.handle_fault(gpa, access))
}

/// Translates `gpa`: writes the host-physical address it maps to (page offset
/// included) to `*hpa_out` and the size of the leaf mapping it (4096,
/// 2 MiB or 1 GiB) to `*page_size_out`. Either out pointer may be NULL.
///
/// Errors: `AXALLOC_ERR_INVALID` (NULL `as`), `AXALLOC_ERR_NOT_MAPPED`
/// (nothing present there — a never-touched lazy page included; outputs
/// untouched). Thread-safe, concurrent.
///
/// # Safety
/// `as` is NULL or a live handle; the out pointers are NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn axalloc_translate(
    r#as: *const axalloc_as_t,
    gpa: u64,
    hpa_out: *mut u64,
    page_size_out: *mut u64,
) -> axalloc_status_t {
    let Some(s) = space(r#as) else {
        return AXALLOC_ERR_INVALID;
    };
    match s.translate(gpa) {
        Ok((hpa, size)) => {
            // SAFETY: each pointer is NULL (skipped) or writable per contract.
            unsafe {
                if let Some(p) = hpa_out.as_mut() {
                    *p = hpa.as_u64();
                }
                if let Some(p) = page_size_out.as_mut() {
                    *p = size as u64;
                }
            }
            AXALLOC_OK
        }
        Err(e) => e.into(),
    }
}

/// Translates `n` addresses at once: for each `i < n`, `hpas[i]` gets the
/// host-physical address `gpas[i]` maps to (offset included) and, if
/// `page_sizes` is not NULL, `page_sizes[i]` the leaf size — or
/// `UINT64_MAX` and 0 for an address nothing present maps (no region, or a
/// lazy page never touched; outside the window too). One shared lock and
/// one tight loop whose independent walks the CPU overlaps: much cheaper per
/// address than `axalloc_translate` for batches (IOMMU mirroring, migration,
/// DMA scatter lists). The results are a snapshot under the lock.
///
/// Errors: `AXALLOC_ERR_INVALID` (NULL `as`; NULL `gpas` or `hpas` with
/// `n > 0`). `n == 0` returns `AXALLOC_OK`. Thread-safe, concurrent.
///
/// # Safety
/// `as` is NULL or a live handle; `gpas` has `n` readable elements, `hpas`
/// (and `page_sizes` unless NULL) `n` writable ones, none overlapping.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn axalloc_translate_many(
    r#as: *const axalloc_as_t,
    gpas: *const u64,
    hpas: *mut u64,
    page_sizes: *mut u64,
    n: usize,
) -> axalloc_status_t {
    let Some(s) = space(r#as) else {
        return AXALLOC_ERR_INVALID;
    };
    if n == 0 {
        return AXALLOC_OK;
    }
    if gpas.is_null() || hpas.is_null() || n > isize::MAX as usize / 8 {
        return AXALLOC_ERR_INVALID;
    }
    // SAFETY: `gpas` has `n` readable elements per the contract.
    let gpas = unsafe { core::slice::from_raw_parts(gpas, n) };
    // SAFETY: `hpas` has `n` writable elements, not aliased, per the contract.
    let hpas = unsafe { core::slice::from_raw_parts_mut(hpas, n) };
    // SAFETY: as above, when not NULL.
    let mut sizes =
        (!page_sizes.is_null()).then(|| unsafe { core::slice::from_raw_parts_mut(page_sizes, n) });
    status(s.translate_many(
        n,
        |i| gpas.get(i).copied().unwrap_or(u64::MAX),
        |i, r| {
            let (hpa, size) = r.map_or((u64::MAX, 0), |(h, sz)| (h.as_u64(), sz as u64));
            if let Some(h) = hpas.get_mut(i) {
                *h = hpa;
            }
            if let Some(p) = sizes.as_mut().and_then(|s| s.get_mut(i)) {
                *p = size;
            }
        },
    ))
}

fn buffer<'a>(buf: *const c_void, len: usize) -> Option<&'a [u8]> {
    if len == 0 {
        return Some(&[]);
    }
    if buf.is_null() || len > isize::MAX as usize {
        return None;
    }
    // SAFETY: non-NULL, `len` bytes readable per the header's contract.
    Some(unsafe { core::slice::from_raw_parts(buf.cast::<u8>(), len) })
}

fn buffer_mut<'a>(buf: *mut c_void, len: usize) -> Option<&'a mut [u8]> {
    if len == 0 {
        return Some(&mut []);
    }
    if buf.is_null() || len > isize::MAX as usize {
        return None;
    }
    // SAFETY: non-NULL, `len` bytes writable and not aliased during the call,
    // per the header's contract.
    Some(unsafe { core::slice::from_raw_parts_mut(buf.cast::<u8>(), len) })
}

/// Copies `len` bytes of guest memory at `gpa` into `buf`, as the hypervisor
/// (the guest's R/W/X flags do not apply). The whole range must lie in
/// regions, else `AXALLOC_ERR_NOT_MAPPED` and nothing is copied; a DEVICE
/// region in it gives `AXALLOC_ERR_ACCESS`. Never-touched lazy pages read as
/// zeros, without allocating. `len == 0` returns `AXALLOC_OK`.
/// `AXALLOC_ERR_INVALID` for NULL `as`, NULL `buf` with `len > 0`, or an
/// overflowing range. Thread-safe, concurrent.
///
/// # Safety
/// `as` is NULL or a live handle; `buf` has `len` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn axalloc_read(
    r#as: *mut axalloc_as_t,
    gpa: u64,
    buf: *mut c_void,
    len: usize,
) -> axalloc_status_t {
    let (Some(s), Some(b)) = (space(r#as), buffer_mut(buf, len)) else {
        return AXALLOC_ERR_INVALID;
    };
    status(s.read(gpa, b))
}

/// Copies `len` bytes from `buf` into guest memory at `gpa`, as the
/// hypervisor. Range rules and errors as `axalloc_read`. Never-touched lazy
/// pages in the range are populated first (zeroed, all or nothing:
/// `AXALLOC_ERR_NO_MEMORY` leaves the address space as before and copies
/// nothing). Thread-safe and concurrent: runs under the shared lock, also
/// while it populates (so a concurrent map/unmap waits for that, and faults
/// on the pages being populated are spurious until it commits).
///
/// # Safety
/// `as` is NULL or a live handle; `buf` has `len` readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn axalloc_write(
    r#as: *mut axalloc_as_t,
    gpa: u64,
    buf: *const c_void,
    len: usize,
) -> axalloc_status_t {
    let (Some(s), Some(b)) = (space(r#as), buffer(buf, len)) else {
        return AXALLOC_ERR_INVALID;
    };
    status(s.write(gpa, b))
}
