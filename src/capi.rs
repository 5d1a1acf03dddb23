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
use crate::format::{Family, FormatKind};
use crate::hooks::Hooks;
use crate::region::Backend;
use crate::space::{AddrSpace, Config, Found};

/// Status of every libaxalloc call: `AXALLOC_OK` (0) or one of the negative
/// `AXALLOC_ERR_*` values. A fixed-width integer (not an enum, whose width a
/// C compiler may choose); values are stable and never reused.
pub type axalloc_status_t = i32;

/// Success.
pub const AXALLOC_OK: axalloc_status_t = 0;
/// An argument is invalid: NULL, unaligned, zero size, overflowing, outside
/// the window, a value outside its own value space (a map flag given as a
/// config flag, a config flag as a map flag, a flag as a format, ...), or a
/// `struct_size` smaller than the library's first version of the struct.
pub const AXALLOC_ERR_INVALID: axalloc_status_t = -1;
/// `alloc_frame` returned non-zero (the host has no frame); nothing changed.
pub const AXALLOC_ERR_NO_MEMORY: axalloc_status_t = -2;
/// The range overlaps an existing region.
pub const AXALLOC_ERR_EXISTS: axalloc_status_t = -3;
/// No region covers the address, or nothing is present there.
pub const AXALLOC_ERR_NOT_MAPPED: axalloc_status_t = -4;
/// The access is not allowed by the region's flags (or the region is
/// DEVICE memory and the hypervisor asked to copy through it).
pub const AXALLOC_ERR_ACCESS: axalloc_status_t = -5;
/// The request is well-formed but this version does not support it: a
/// reserved `AXALLOC_CFG_*` flag, a non-zero `reserved` field, or a larger
/// struct (from a newer header) whose fields this version does not know are
/// not all zero.
pub const AXALLOC_ERR_UNSUPPORTED: axalloc_status_t = -6;
/// An internal invariant broke (a bug in the library); destroy the address
/// space. Never the answer to bad input.
pub const AXALLOC_ERR_INTERNAL: axalloc_status_t = -7;
/// A hook broke its contract: `alloc_frame` returned a frame that is not
/// 4 KiB aligned or lies at or beyond 2^52 (2^48 for Arm stage 2) (it is handed back through
/// `free_frame` at once), or `phys_to_virt` returned NULL or a pointer that
/// is not page-aligned for a frame the library was taking (a new table or
/// guest frame; it is handed back) or a linear range it was copying
/// through. Nothing changed (except as the function's list says for copies):
/// the address space works as before, and the call may be retried once the
/// host is fixed. `phys_to_virt` must also keep its answer for a frame while
/// the library holds it; if it starts failing for a table already in use,
/// the call still says ERR_HOOK, but a map or unmap may be left half done:
/// treat that like `AXALLOC_ERR_INTERNAL`.
pub const AXALLOC_ERR_HOOK: axalloc_status_t = -8;
/// A documented limit of the library was reached: an address space holds
/// at most 6,528 regions. Not a shortage of frames; nothing changed.
pub const AXALLOC_ERR_LIMIT: axalloc_status_t = -9;
/// Another map / unmap / write-populate is working on an overlapping range
/// (or the table spans around it) right now; nothing changed. The library
/// never waits for it — it may be waiting for this CPU to take a TLB-flush
/// IPI — so retry after that call returns (e.g. after re-enabling interrupts
/// or re-entering the guest).
pub const AXALLOC_ERR_BUSY: axalloc_status_t = -10;

impl From<Error> for axalloc_status_t {
    fn from(e: Error) -> Self {
        match e {
            Error::Invalid => AXALLOC_ERR_INVALID,
            Error::NoMemory => AXALLOC_ERR_NO_MEMORY,
            Error::Exists => AXALLOC_ERR_EXISTS,
            Error::NotMapped => AXALLOC_ERR_NOT_MAPPED,
            Error::Access => AXALLOC_ERR_ACCESS,
            Error::Unsupported => AXALLOC_ERR_UNSUPPORTED,
            Error::Internal => AXALLOC_ERR_INTERNAL,
            Error::Hook => AXALLOC_ERR_HOOK,
            Error::Limit => AXALLOC_ERR_LIMIT,
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

/// Parses a decimal version component at compile time (Cargo's
/// `CARGO_PKG_VERSION_*`, so the library's version cannot drift from
/// Cargo.toml; build.rs writes the same numbers into the header's
/// `AXALLOC_VERSION_*` macros).
const fn parse_version(s: &str) -> u32 {
    let b = s.as_bytes();
    let mut v = 0u32;
    let mut i = 0;
    while i < b.len() {
        v = v * 10 + (b[i] - b'0') as u32;
        i += 1;
    }
    v
}

const VERSION: u32 = (parse_version(env!("CARGO_PKG_VERSION_MAJOR")) << 16)
    | (parse_version(env!("CARGO_PKG_VERSION_MINOR")) << 8)
    | parse_version(env!("CARGO_PKG_VERSION_PATCH"));

// ---------------------------------------------------------------------------
// Value spaces. Every integer input has its own space, disjoint from the
// others, and is checked against it alone: a value from another space is
// AXALLOC_ERR_INVALID, never silently something else.
//   map / protect / access flags  bits 0-7    AXALLOC_READ ... AXALLOC_DEVICE
//   config flags                  bits 8-15   AXALLOC_CFG_*
//   operation flags               bits 16-23  (none yet)
//   formats                       small integers 1, 2, ...  AXALLOC_FORMAT_*
// ---------------------------------------------------------------------------

/// Map flag (bits 0-7): the guest may read. Required in every mapping.
///
/// READ, WRITE and EXEC are the access bits of an Intel EPT-violation exit
/// qualification, bits 0-2 (Intel SDM vol. 3C, "Exit Qualification for EPT
/// Violations": data read, data write, instruction fetch), so
/// `axalloc_handle_fault(as, gpa, qual & 7)` passes the access on as it is
/// (a read-modify-write may set both READ and WRITE: fine).
///
/// AMD NPT: from the #NPF exit's EXITINFO1 (the page-fault error code; AMD
/// APM vol. 2, "Nested versus Guest Page Faults, Fault Ordering"):
/// bit 4 (I/D, instruction fetch) → `AXALLOC_EXEC`, else bit 1 (W) →
/// `AXALLOC_WRITE`, else `AXALLOC_READ`. The faulting address is EXITINFO2.
///
/// For formats to come: Arm ESR_EL2 — an instruction abort (EC 0x20) →
/// `AXALLOC_EXEC`, a data abort (EC 0x24) with WnR (bit 6) set →
/// `AXALLOC_WRITE`, else `AXALLOC_READ`. RISC-V scause — guest page fault
/// 20 (instruction) → `AXALLOC_EXEC`, 21 (load) → `AXALLOC_READ`,
/// 23 (store/AMO) → `AXALLOC_WRITE`.
pub const AXALLOC_READ: u32 = 1 << 0;
/// Map flag: the guest may write (EPT exit-qualification bit 1).
pub const AXALLOC_WRITE: u32 = 1 << 1;
/// Map flag: the guest may execute (EPT exit-qualification bit 2).
pub const AXALLOC_EXEC: u32 = 1 << 2;
/// Map flag: device memory, uncached, instead of write-back. What a leaf
/// holds, exactly:
/// - EPT: memory type (bits 5:3) 0 = UC with DEVICE, 6 = WB without; the
///   "ignore PAT" bit 6 is never set, so the guest's PAT type combines with
///   it (Intel SDM vol. 3C, "Memory Type Used for Translated Guest-Physical
///   Addresses").
/// - NPT: PCD = PWT = 1 and PAT = 0 with DEVICE (PAT index 3), all three 0
///   without (PAT index 0). They index the *host's* PAT MSR, which must keep
///   entry 0 = WB and entry 3 = UC (the power-on values, which Linux, Xen
///   and KVM keep); the result combines with the guest's own type (AMD APM
///   vol. 2, "Combining Guest and Host Memory Types").
///
/// Bits 5-7 are reserved and, like every bit outside 0-7, rejected with
/// `AXALLOC_ERR_INVALID`; bit 4 is `AXALLOC_HUGE`.
pub const AXALLOC_DEVICE: u32 = 1 << 3;
/// Map flag, `axalloc_map_alloc` only (`AXALLOC_ERR_INVALID` anywhere
/// else): back every 2 MiB-aligned 2 MiB part of the region with one 2 MiB
/// page — a block from `alloc_contig(9)` (without that hook:
/// `AXALLOC_ERR_UNSUPPORTED`) mapped by one 2 MiB leaf: EPT PDE bit 7
/// (Intel SDM vol. 3C, "Format of an EPT Page-Directory Entry that Maps a
/// 2-MByte Page"), NPT PDE PS (AMD APM vol. 2, "2-Mbyte PDE"), an Arm
/// level-2 block descriptor (Arm ARM, "VMSAv8-64 translation table format
/// descriptors"), a RISC-V megapage. The region's edges that are not 2 MiB
/// aligned use 4 KiB pages.
///
/// A part gets its block at populate, at `axalloc_prefault` (of the whole
/// part), or on the first fault in it while it has no 4 KiB page table
/// (none of its pages present since it was mapped, or since a discard or
/// unmap took the whole part; a part split earlier and discarded piece by
/// piece keeps its table and faults in 4 KiB frames). When `alloc_contig` fails there, the part falls
/// back to 4 KiB frames from `alloc_frame` (never an error for that reason
/// alone). Blocks are zeroed with streaming stores (the bulk path).
/// `axalloc_translate` reports 2 MiB for a page of a whole block.
///
/// An unmap or discard (or protect) covering part of a 2 MiB page splits
/// its leaf into 512 4 KiB leaves over the same block (Arm:
/// break-before-make, see `axalloc_unmap`); the block goes back through
/// `free_contig(hpa, 9)`, after the flush, once none of its pages is mapped
/// any more. A block is never given to `free_frame`, nor a 4 KiB frame to
/// `free_contig`. A fault on a discarded page of a split block gets a 4 KiB
/// frame. `axalloc_stats_t.huge_pages` counts the blocks held.
pub const AXALLOC_HUGE: u32 = 1 << 4;

/// Intel EPT: 4 levels, 48-bit guest-physical addresses. The VMCS's EPTP is
/// `axalloc_as_root(as) | 1 << 6 | (4 - 1) << 3 | 6` (A/D enable, page-walk
/// length 4, paging structures write-back): `axalloc_as_hw` gives it. With
/// A/D enabled the processor sets accessed bits, which `axalloc_young_get`
/// reads and clears. A CPU without EPT A/D (IA32_VMX_EPT_VPID_CAP bit 21
/// clear) needs bit 6 cleared; everything works the same, except that
/// `axalloc_young_get` then sees only the accesses that faulted or that
/// `axalloc_read` / `axalloc_write` made. Dirty logging never needs it.
pub const AXALLOC_FORMAT_X86_EPT: u32 = 1;
/// AMD NPT: the x86-64 long-mode format with U=1, 4 levels, 48-bit. The
/// VMCB's nCR3 is `axalloc_as_root(as)` as it is (PWT/PCD 0: tables
/// write-back through host PAT entry 0).
pub const AXALLOC_FORMAT_X86_NPT: u32 = 2;
/// Arm VMSAv8-64 stage 2, 4 KiB granule (`gpa_bits` 32..48, default 40):
/// load `axalloc_hw_t.root_pointer` into VTTBR_EL2 (VMID 0: OR in yours at
/// bits 63:48) and `vtcr` into VTCR_EL2 with the host's own PS, VS, HA/HD
/// and the rest. Leaves: S2AP from READ/WRITE, XN (bits 54:53 = 0b10)
/// without EXEC, AF = 1, SH inner shareable, MemAttr Normal write-back
/// (0b1111) or Device-nGnRE (0b0001) with `AXALLOC_DEVICE`. Frames must lie
/// below 2^48 (48-bit output addresses).
pub const AXALLOC_FORMAT_ARM_S2: u32 = 3;
/// RISC-V H-extension G-stage Sv39x4: 41-bit guest-physical addresses,
/// 3 levels, 16 KiB root (from `alloc_contig`, order 2). Load
/// `axalloc_hw_t.root_pointer` into hgatp (MODE 8, VMID 0: OR in yours at
/// bits 57:44). Leaves have U = 1, A = 1, D = 1 when writable; DEVICE is
/// PBMT = IO with `AXALLOC_CFG_RISCV_SVPBMT`, else left to the PMAs.
pub const AXALLOC_FORMAT_RISCV_SV39X4: u32 = 4;
/// RISC-V G-stage Sv48x4: 50-bit, 4 levels, 16 KiB root; hgatp MODE 9.
pub const AXALLOC_FORMAT_RISCV_SV48X4: u32 = 5;
/// RISC-V G-stage Sv57x4: 59-bit, 5 levels, 16 KiB root; hgatp MODE 10.
pub const AXALLOC_FORMAT_RISCV_SV57X4: u32 = 6;

/// Config flag (bits 8-15): the alloc hooks return zeroed frames, so the
/// library does not zero guest frames. It speaks of guest frames only: table
/// frames are always zeroed (initialised) by the library, with or without
/// it — they are few.
pub const AXALLOC_CFG_FRAMES_ZEROED: u32 = 1 << 8;
/// Config flag: never create 1 GiB leaves (for CPUs without 1 GiB stage-2
/// pages).
pub const AXALLOC_CFG_NO_HUGE_1G: u32 = 1 << 9;
/// Config flag, RISC-V formats only (`AXALLOC_ERR_INVALID` with any other):
/// the harts implement Svpbmt, so `AXALLOC_DEVICE` leaves get PBMT = IO
/// (bits 62:61 = 2: non-cacheable, strongly ordered). Without it every
/// leaf has PBMT = 0 and the memory type of a page is the PMA of its host
/// address — DEVICE then changes nothing in the leaf, and device ranges
/// must be I/O regions in the platform's PMAs.
pub const AXALLOC_CFG_RISCV_SVPBMT: u32 = 1 << 10;
/// Config flag, reserved for hardware-managed accessed/dirty bits: this
/// version answers `AXALLOC_ERR_UNSUPPORTED`.
pub const AXALLOC_CFG_HW_AD: u32 = 1 << 11;
/// Config flag, `AXALLOC_FORMAT_ARM_S2` only (`AXALLOC_ERR_INVALID` with any
/// other format): the host runs with FEAT_S2FWB enabled (HCR_EL2.FWB = 1).
/// Leaves then use the FWB MemAttr encoding — Normal write-back `0b0110`
/// (stage 2 forces write-back, whatever the guest's stage 1 says),
/// Device-nGnRE `0b0001` as without FWB — and guest frames need no data
/// cache maintenance: the guest cannot see stale memory behind the cache.
///
/// Arm cache maintenance: without this flag, every guest frame the library
/// zeroes (faults, populate, prefault, the zeroed reserve, holes that
/// `axalloc_write` fills) and every byte `axalloc_write` copies must be
/// cleaned to the point of coherency before the guest can see it — a guest
/// running with its caches off reads memory, not the cache, and could read
/// the frame's previous owner's data. Executable pages (`AXALLOC_EXEC`)
/// also need the instruction cache invalidated, with or without the flag.
/// - On an Arm (aarch64) host the library does all of it itself, by the
///   host-virtual address it wrote through, before the entry that makes the
///   frame reachable is stored: `DC CVAC` per data cache line (line size
///   from `CTR_EL0.DminLine`, read once), `DSB ISH`; for executable pages
///   `DC CVAU` (skipped if `CTR_EL0.IDC`), `DSB ISH`, `IC IVAU` per
///   instruction cache line (skipped if `CTR_EL0.DIC`), `DSB ISH`, `ISB`.
///   The host must let the library issue them (EL1/EL2, or EL0 with
///   SCTLR_EL1.UCI/UCT set, as Linux does).
/// - With `AXALLOC_CFG_FRAMES_ZEROED` the library writes no guest frame
///   (except the reserve's link word, which it cleans): cleaning the
///   frames `alloc_frame` returns to the point of coherency is the host's
///   job, in `alloc_frame`; the instruction side of executable pages is
///   still done by the library.
/// - A host that is not aarch64 building Arm tables (a simulator, a
///   cross-architecture test) gets no maintenance from the library: it must
///   itself clean each new guest frame (and the bytes `axalloc_write`
///   copied) to the point of coherency of the Arm CPU that runs the guest
///   before that CPU can walk to it, and invalidate its instruction cache
///   for executable pages.
///
/// Table frames need none of this: the stage-2 walks `hw.vtcr` sets up are
/// write-back cacheable.
pub const AXALLOC_CFG_ARM_S2FWB: u32 = 1 << 12;
/// Config flag: the host maps every frame its hooks give at
/// `hpa + cfg.linear_offset` (a direct map, as most hypervisors have): the
/// library computes frames' addresses itself and never calls `phys_to_virt`
/// for them (it still does for the passthrough ranges
/// `axalloc_read`/`axalloc_write` copy through).
pub const AXALLOC_CFG_LINEAR_MAP: u32 = 1 << 13;

const CFG_KNOWN: u32 = AXALLOC_CFG_FRAMES_ZEROED
    | AXALLOC_CFG_NO_HUGE_1G
    | AXALLOC_CFG_LINEAR_MAP
    | AXALLOC_CFG_RISCV_SVPBMT
    | AXALLOC_CFG_ARM_S2FWB;
const CFG_RESERVED: u32 = AXALLOC_CFG_HW_AD;

/// `axalloc_mapping_t.kind`: no region covers the address.
pub const AXALLOC_REGION_NONE: u32 = 0;
/// `axalloc_mapping_t.kind`: guest RAM from `alloc_frame`
/// (`axalloc_map_alloc`).
pub const AXALLOC_REGION_ALLOC: u32 = 1;
/// `axalloc_mapping_t.kind`: a fixed host-physical range
/// (`axalloc_map_linear`).
pub const AXALLOC_REGION_LINEAR: u32 = 2;

/// Largest `struct_size` accepted: a guard against an uninitialised field
/// (the library reads `struct_size` bytes).
const STRUCT_SIZE_MAX: usize = 4096;

/// Reads a caller's versioned struct (`struct_size` first): rejects a size
/// below the first version's (`first`) or above [`STRUCT_SIZE_MAX`], copies
/// the fields this version knows byte-wise (never more than the caller
/// said it has), and rejects a non-zero tail of fields it does not know.
///
/// # Safety
/// `p` is non-NULL and points to `struct_size` readable bytes, whose first
/// four are `struct_size`; every field of `T` may be all-zero bytes.
unsafe fn read_sized<T: Copy>(p: *const T, first: usize) -> Result<T, axalloc_status_t> {
    // SAFETY: non-NULL and readable per the contract; unaligned-safe.
    let size = unsafe { p.cast::<u32>().read_unaligned() } as usize;
    if size < first || size > STRUCT_SIZE_MAX {
        return Err(AXALLOC_ERR_INVALID);
    }
    let known = core::mem::size_of::<T>();
    let mut out = core::mem::MaybeUninit::<T>::zeroed();
    // SAFETY: `min(size, known)` bytes are readable at `p` (the caller said
    // `size`) and writable in `out` (`known`); the regions do not overlap.
    unsafe {
        core::ptr::copy_nonoverlapping(
            p.cast::<u8>(),
            out.as_mut_ptr().cast::<u8>(),
            size.min(known),
        )
    };
    if size > known {
        // SAFETY: bytes `known..size` are readable per the contract.
        let tail = unsafe { core::slice::from_raw_parts(p.cast::<u8>().add(known), size - known) };
        if tail.iter().any(|&b| b != 0) {
            return Err(AXALLOC_ERR_UNSUPPORTED);
        }
    }
    // SAFETY: every field of `T` is valid as all-zero bytes (the contract),
    // and the copied prefix holds the caller's values of the same layout.
    Ok(unsafe { out.assume_init() })
}

/// The host's callbacks. Every hook receives `ctx` first. Hooks may be called
/// from any thread that calls into the library, also concurrently, and must
/// not call back into the same address space. Under the lock (see the rules
/// at the top): `alloc_frame`, `alloc_contig`, `phys_to_virt`, `relax` may be
/// called with it held and must not sleep or wait for other CPUs;
/// `flush_tlb`, `free_frame`, `free_contig` are called with no lock held.
/// The structure is copied by `axalloc_as_create`; the hooks (and `ctx`)
/// must stay valid until `axalloc_as_destroy` returns, and none is called
/// after that.
///
/// Extensible: set `struct_size = sizeof(axalloc_hooks_t)` and zero the rest
/// (`axalloc_hooks_t h = {0}` or designated initialisers) before filling in
/// hooks. A later version may append fields; this one reads exactly the
/// `struct_size` bytes the caller declared (see `axalloc_as_create`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct axalloc_hooks {
    /// `sizeof(axalloc_hooks_t)` as the caller's header declares it.
    pub struct_size: u32,
    /// Must be 0 (`AXALLOC_ERR_UNSUPPORTED` otherwise).
    pub reserved: u32,
    /// Passed first to every hook; never dereferenced by the library.
    pub ctx: *mut c_void,
    /// Required. May run under the lock (shared: a fault's frame and tables;
    /// exclusive: region bookkeeping, edge splits of an unmap): must not sleep
    /// or wait for other CPUs. Obtains one 4 KiB frame, 4 KiB aligned, below 2^52 (2^48 for `AXALLOC_FORMAT_ARM_S2`): writes
    /// its host-physical address to `*hpa_out` and returns 0, or returns
    /// non-zero when none is available (the call then fails with
    /// `AXALLOC_ERR_NO_MEMORY`). Contents may be anything, unless the config
    /// says `AXALLOC_CFG_FRAMES_ZEROED` (table frames are initialised by the
    /// library either way). A misaligned frame, or one at or
    /// beyond that limit, is handed back through `free_frame` at once and the call
    /// fails with `AXALLOC_ERR_HOOK`.
    pub alloc_frame: Option<unsafe extern "C" fn(ctx: *mut c_void, hpa_out: *mut u64) -> i32>,
    /// Required. Never called with the lock held (it may wait), except when
    /// an `axalloc_write` fails with `NO_MEMORY` or `HOOK` while populating
    /// (the shared lock). Takes back a frame `alloc_frame` gave. Called exactly once
    /// per frame, and for a frame that hardware could reach only after the
    /// `flush_tlb` call that covered its removal has returned.
    pub free_frame: Option<unsafe extern "C" fn(ctx: *mut c_void, hpa: u64)>,
    /// Required. The host's virtual address of the frame at `hpa` (frames
    /// from `alloc_frame`, and the host-physical ranges of linear regions
    /// that `axalloc_read`/`axalloc_write` copy through; always called with a
    /// page's first byte). Never NULL, always page-aligned — else the call
    /// fails with `AXALLOC_ERR_HOOK` (see there); the same address for a
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
    /// called with size 0, at most once per `axalloc_unmap` (twice with
    /// `AXALLOC_FORMAT_ARM_S2` when a block is split: break-before-make, see
    /// `axalloc_unmap`), never for mappings being added. If NULL, the host guarantees no CPU holds stale
    /// translations by other means (e.g. no vCPU runs while it unmaps).
    pub flush_tlb: Option<unsafe extern "C" fn(ctx: *mut c_void, gpa: u64, size: u64)>,
    /// Optional. May run under the lock, like
    /// `alloc_frame`. Obtains 2^`order` contiguous frames,
    /// aligned to their size; returns 0 on success. Used for multi-page
    /// roots (Arm concatenated root tables, order 1..4; RISC-V x4 roots,
    /// order 2), once per `axalloc_as_create`, and for 2 MiB guest pages
    /// (order 9, regions with `AXALLOC_HUGE`; a failure there falls back to
    /// `alloc_frame`). `phys_to_virt` of the
    /// block's first frame (or the direct map) must show the whole block
    /// contiguously. A misaligned or too-high block is handed back through
    /// `free_contig` and the call fails with `AXALLOC_ERR_HOOK`.
    pub alloc_contig:
        Option<unsafe extern "C" fn(ctx: *mut c_void, order: u32, hpa_out: *mut u64) -> i32>,
    /// Required exactly when `alloc_contig` is given. Takes back a block
    /// (with its `order`), exactly once and whole: a multi-page root at
    /// `axalloc_as_destroy`, after its `flush_tlb`; a 2 MiB guest block
    /// (order 9) after the flush that removed its last mapped page, or one
    /// that never became visible. Never called with the lock held, except
    /// where `free_frame` is too (`axalloc_prefault` / `axalloc_write`
    /// giving back what they prepared).
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
///
/// Extensible: set `struct_size = sizeof(axalloc_config_t)` and zero the
/// rest (`= {0}` or designated initialisers). See `axalloc_as_create`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct axalloc_config {
    /// `sizeof(axalloc_config_t)` as the caller's header declares it.
    pub struct_size: u32,
    /// One of `AXALLOC_FORMAT_*` (a small integer, not a flag).
    pub format: u32,
    /// Any of the `AXALLOC_CFG_*` config flags (bits 8-15); any other bit,
    /// a map flag such as `AXALLOC_READ` included, is `AXALLOC_ERR_INVALID`.
    pub flags: u32,
    /// Must be 0 (`AXALLOC_ERR_UNSUPPORTED` otherwise).
    pub reserved: u32,
    /// Guest-physical window `[base, base + size)` every mapping must lie in:
    /// 4 KiB aligned, non-empty, inside `[0, 2^gpa_bits)`.
    pub base: u64,
    /// Size of the window in bytes.
    pub size: u64,
    /// With `AXALLOC_CFG_LINEAR_MAP`: host-virtual minus host-physical
    /// address of every frame the hooks give (4 KiB aligned; may wrap, as a
    /// higher-half direct map does). Must be 0 without the flag.
    pub linear_offset: u64,
    /// Width of the guest-physical space; 0 = the format's default (also
    /// what a struct of 0.2.0's size, which ends before this field, means).
    /// - EPT / NPT: 48 (4 levels, the default) or 57 (5 levels: EPTP
    ///   page-walk length 5 / an LA57 host for NPT).
    /// - Arm stage 2: 32..48 (default 40). The library takes the fewest
    ///   lookup levels, concatenating up to 16 root tables, as Linux KVM
    ///   does: 32..34 → start level 2 (4, 8, 16 root pages); 35..39 → start
    ///   level 1, 1 page; 40..43 → start level 1, 2, 4, 8, 16 pages;
    ///   44..48 → start level 0, 1 page. `axalloc_as_hw` gives the choice
    ///   (`levels`, `root_pages`, VTCR_EL2.T0SZ / SL0 in `vtcr`).
    /// - RISC-V: the mode's width only (Sv39x4 41, Sv48x4 50, Sv57x4 59).
    ///
    /// Any other value is `AXALLOC_ERR_INVALID`. A multi-page root (Arm
    /// concatenated, RISC-V x4) comes from `alloc_contig`; without that
    /// hook such a config is `AXALLOC_ERR_UNSUPPORTED`.
    pub gpa_bits: u32,
    /// Must be 0 (`AXALLOC_ERR_INVALID` otherwise). Named `reserved2`: C
    /// allows one `reserved` per struct, and the first one stays where
    /// 0.2.0 put it.
    pub reserved2: u32,
}

/// `sizeof(axalloc_config_t)` of version 0.2.0 (before `gpa_bits`): still
/// accepted, and means `gpa_bits = 0`.
const CONFIG_SIZE_V0_2: usize = core::mem::offset_of!(axalloc_config, gpa_bits);
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
    /// 2 MiB guest pages (`AXALLOC_HUGE` blocks) currently held, mapped
    /// whole or in part after a split; each also counts 512 `guest_frames`.
    pub huge_pages: u64,
}
/// See `struct axalloc_stats`.
pub type axalloc_stats_t = axalloc_stats;

/// What covers one guest-physical address (`axalloc_query`) or one region
/// (`axalloc_region_next`). A snapshot taken under the shared lock.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct axalloc_mapping {
    /// `AXALLOC_REGION_NONE`, `AXALLOC_REGION_ALLOC` or
    /// `AXALLOC_REGION_LINEAR`. With NONE every other field is 0.
    pub kind: u32,
    /// The region's map flags (`AXALLOC_READ` ... `AXALLOC_DEVICE`).
    pub flags: u32,
    /// First byte of the region.
    pub region_base: u64,
    /// Size of the region in bytes.
    pub region_size: u64,
    /// 1 if a leaf maps the page now, 0 if not (a lazy page never touched;
    /// with 0, `hpa` and `page_size` are 0).
    pub present: u32,
    /// Always 0.
    pub reserved: u32,
    /// Host-physical address of the queried address itself (page offset
    /// included, as `axalloc_translate` gives it).
    pub hpa: u64,
    /// Size of the leaf that maps it: 4096, 2 MiB or 1 GiB.
    pub page_size: u64,
}
/// See `struct axalloc_mapping`.
pub type axalloc_mapping_t = axalloc_mapping;

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
/// Never NULL; unknown values give "AXALLOC_ERR_UNKNOWN". Thread-safe; calls
/// no hook. Returns no status.
#[unsafe(no_mangle)]
pub extern "C" fn axalloc_status_str(status: axalloc_status_t) -> *const c_char {
    let s: &'static core::ffi::CStr = match status {
        AXALLOC_OK => c"AXALLOC_OK",
        AXALLOC_ERR_INVALID => c"AXALLOC_ERR_INVALID",
        AXALLOC_ERR_NO_MEMORY => c"AXALLOC_ERR_NO_MEMORY",
        AXALLOC_ERR_EXISTS => c"AXALLOC_ERR_EXISTS",
        AXALLOC_ERR_NOT_MAPPED => c"AXALLOC_ERR_NOT_MAPPED",
        AXALLOC_ERR_ACCESS => c"AXALLOC_ERR_ACCESS",
        AXALLOC_ERR_UNSUPPORTED => c"AXALLOC_ERR_UNSUPPORTED",
        AXALLOC_ERR_INTERNAL => c"AXALLOC_ERR_INTERNAL",
        AXALLOC_ERR_HOOK => c"AXALLOC_ERR_HOOK",
        AXALLOC_ERR_LIMIT => c"AXALLOC_ERR_LIMIT",
        AXALLOC_ERR_BUSY => c"AXALLOC_ERR_BUSY",
        _ => c"AXALLOC_ERR_UNKNOWN",
    };
    s.as_ptr()
}

/// The library's version, encoded as `AXALLOC_VERSION` is:
/// `(major << 16) | (minor << 8) | patch`. Equal to the header's
/// `AXALLOC_VERSION` when header and archive come from the same build.
/// Thread-safe; calls no hook. Returns no status.
#[unsafe(no_mangle)]
pub extern "C" fn axalloc_version() -> u32 {
    VERSION
}

/// Creates an address space: validates `cfg` and `hooks`, takes one frame for
/// its own state (`alloc_frame`) and the root table: one frame through
/// `alloc_frame`, or a multi-page root (`axalloc_hw_t.root_pages` > 1)
/// through `alloc_contig`.
///
/// - `cfg`, `hooks`, `as_out`: non-NULL; `cfg` and `hooks` are copied.
/// - `struct_size` (first field of both structs): `sizeof` of the caller's
///   struct. The library reads exactly that many bytes. Smaller than this
///   version's struct (which is the first version) or above 4096: INVALID.
///   Larger (a newer header): accepted if every byte past the fields this
///   version knows is 0, else UNSUPPORTED — nothing is ignored silently.
/// - On success `*as_out` is the new handle, owned by the caller until
///   `axalloc_as_destroy`.
///
/// Returns:
/// - `AXALLOC_OK`.
/// - `AXALLOC_ERR_INVALID`: a NULL pointer; a bad `struct_size`; `format`
///   not one of `AXALLOC_FORMAT_*` (a flag given as a format included);
///   `flags` with a bit outside the known `AXALLOC_CFG_*` (a map flag given
///   as a config flag included); `AXALLOC_CFG_RISCV_SVPBMT` with a
///   non-RISC-V format; `AXALLOC_CFG_ARM_S2FWB` with a non-Arm format; `gpa_bits` not one the format allows; a non-zero
///   `reserved2`; the window unaligned, empty, overflowing or beyond
///   `2^gpa_bits`; `linear_offset` unaligned, or non-zero without
///   `AXALLOC_CFG_LINEAR_MAP`; a required hook NULL; `free_contig` given
///   without `alloc_contig` or the reverse.
/// - `AXALLOC_ERR_UNSUPPORTED`: a reserved `AXALLOC_CFG_*` flag
///   (`HW_AD`), a non-zero `reserved` field, a non-zero unknown tail of
///   a larger struct, or a format / `gpa_bits` whose root is several pages
///   (Arm concatenated, every RISC-V format) without `alloc_contig`.
/// - `AXALLOC_ERR_NO_MEMORY`: `alloc_frame` or `alloc_contig` failed.
/// - `AXALLOC_ERR_HOOK`: `alloc_frame` / `alloc_contig` gave a misaligned /
///   too-high frame, or `phys_to_virt` returned NULL or a misaligned
///   pointer.
///
/// On error `*as_out` is untouched and no frame is held. Hooks called:
/// `alloc_frame`, `alloc_contig` (multi-page roots), `phys_to_virt`, and
/// `free_frame` / `free_contig` on error; no lock exists yet.
///
/// # Safety
/// Pointers valid as described (`struct_size` readable bytes each); hooks
/// honour `axalloc_hooks_t`'s contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn axalloc_as_create(
    cfg: *const axalloc_config_t,
    hooks: *const axalloc_hooks_t,
    as_out: *mut *mut axalloc_as_t,
) -> axalloc_status_t {
    if cfg.is_null() || hooks.is_null() || as_out.is_null() {
        return AXALLOC_ERR_INVALID;
    }
    // The config's first version (0.2.0) ends before `gpa_bits`; the hooks'
    // first version is this one.
    // SAFETY: non-NULL, `struct_size` readable bytes per the contract; all
    // fields (integers, raw pointers, optional function pointers) are valid
    // all-zero.
    let read = unsafe {
        read_sized(cfg, CONFIG_SIZE_V0_2)
            .and_then(|c| read_sized(hooks, core::mem::size_of::<axalloc_hooks>()).map(|h| (c, h)))
    };
    let (cfg, hooks) = match read {
        Ok(x) => x,
        Err(st) => return st,
    };
    let family = match cfg.format {
        AXALLOC_FORMAT_X86_EPT => Family::Ept,
        AXALLOC_FORMAT_X86_NPT => Family::Npt,
        AXALLOC_FORMAT_ARM_S2 => Family::ArmS2,
        AXALLOC_FORMAT_RISCV_SV39X4 => Family::Sv39x4,
        AXALLOC_FORMAT_RISCV_SV48X4 => Family::Sv48x4,
        AXALLOC_FORMAT_RISCV_SV57X4 => Family::Sv57x4,
        _ => return AXALLOC_ERR_INVALID,
    };
    let (format, gpa_bits) = match FormatKind::choose(family, cfg.gpa_bits) {
        Ok(x) => x,
        Err(e) => return e.into(),
    };
    if cfg.reserved2 != 0 {
        return AXALLOC_ERR_INVALID;
    }
    if cfg.flags & !(CFG_KNOWN | CFG_RESERVED) != 0 {
        return AXALLOC_ERR_INVALID;
    }
    if cfg.flags & CFG_RESERVED != 0 || cfg.reserved != 0 || hooks.reserved != 0 {
        return AXALLOC_ERR_UNSUPPORTED;
    }
    let config = Config {
        format,
        gpa_bits,
        frames_zeroed: cfg.flags & AXALLOC_CFG_FRAMES_ZEROED != 0,
        no_huge_1g: cfg.flags & AXALLOC_CFG_NO_HUGE_1G != 0,
        svpbmt: cfg.flags & AXALLOC_CFG_RISCV_SVPBMT != 0,
        s2fwb: cfg.flags & AXALLOC_CFG_ARM_S2FWB != 0,
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
/// every frame the library obtained back through `free_frame` (a multi-page
/// root through `free_contig`, whole), exactly
/// once. `as` may be NULL (no-op). No hook of this address space is called
/// after it returns. Returns no status (it cannot fail).
///
/// Not thread-safe: no other call on `as` may be in progress or follow. The
/// hypervisor must have stopped every vCPU using the table. Hooks called:
/// `flush_tlb`, `phys_to_virt` (walking the table), `free_frame`,
/// `free_contig`; no lock
/// is contended.
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

/// Host-physical address of the root table, for the hardware pointer: EPTP
/// = root | 0x1e (see `AXALLOC_FORMAT_X86_EPT`), nCR3 = root (see
/// `AXALLOC_FORMAT_X86_NPT`). Constant for the life of the address space;
/// 0 if `as` is NULL. Returns no status. Thread-safe; no lock, no hook.
///
/// # Safety
/// `as` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn axalloc_as_root(r#as: *const axalloc_as_t) -> u64 {
    space(r#as).map_or(0, |s| s.root().as_u64())
}

/// What the hardware needs to walk an address space's table
/// (`axalloc_as_hw`). Constant for the life of the address space.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct axalloc_hw {
    /// Host-physical address of the root (the first frame of a multi-page
    /// root); equal to `axalloc_as_root`.
    pub root: u64,
    /// Frames in the root: 1; 2..16 (Arm concatenated root tables: 4, 8 or
    /// 16 with 2 levels, 2..16 at start level 1); 4 (RISC-V x4 roots).
    pub root_pages: u32,
    /// Lookup levels, root included: EPT / NPT 4 or 5; Arm 2..4 (start
    /// level 4 - levels); RISC-V 3 (Sv39x4), 4 (Sv48x4), 5 (Sv57x4).
    pub levels: u32,
    /// The value to load:
    /// - EPT: the EPTP, `root | 1 << 6 | (levels - 1) << 3 | 6` (A/D
    ///   enable, for `axalloc_young_get`; page-walk length; write-back
    ///   paging structures).
    /// - NPT: nCR3 = `root` (PWT = PCD = 0). 5 levels need CR4.LA57 on.
    /// - Arm: VTTBR_EL2 = `root` (BADDR, aligned to the root's size), VMID
    ///   0: OR yours in at bits 63:48; CnP 0.
    /// - RISC-V: hgatp = MODE (8 Sv39x4, 9 Sv48x4, 10 Sv57x4) << 60 |
    ///   `root >> 12`, VMID 0: OR yours in at bits 57:44.
    pub root_pointer: u64,
    /// Arm: the VTCR_EL2 fields the table decides — T0SZ (5:0) = 64 -
    /// gpa_bits, SL0 (7:6) = levels - 2 (0 start level 2, 1 level 1, 2
    /// level 0), IRGN0 = ORGN0 = 0b01 (write-back write-allocate walks),
    /// SH0 = 0b11 (inner shareable), TG0 = 0b00 (4 KiB). The host ORs in
    /// PS (its physical address size), VS, HA/HD and the rest. 0 for the
    /// other formats.
    pub vtcr: u64,
}
/// See `struct axalloc_hw`.
pub type axalloc_hw_t = axalloc_hw;

/// Fills `*out` with what the hardware needs to walk the table (see
/// `axalloc_hw_t`). Thread-safe; no lock, no hook; the values never change
/// for the life of the address space.
///
/// Returns:
/// - `AXALLOC_OK`.
/// - `AXALLOC_ERR_INVALID`: `as` or `out` is NULL.
///
/// # Safety
/// `as` is NULL or a live handle; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn axalloc_as_hw(
    r#as: *const axalloc_as_t,
    out: *mut axalloc_hw_t,
) -> axalloc_status_t {
    let Some(s) = space(r#as) else {
        return AXALLOC_ERR_INVALID;
    };
    if out.is_null() {
        return AXALLOC_ERR_INVALID;
    }
    let hw = s.hw();
    // SAFETY: non-NULL and writable per the contract.
    unsafe {
        out.write(axalloc_hw {
            root: hw.root,
            root_pages: hw.root_pages,
            levels: hw.levels,
            root_pointer: hw.root_pointer,
            vtcr: hw.vtcr,
        })
    };
    AXALLOC_OK
}

/// Copies the counters into `*out`. Thread-safe; takes the shared lock
/// briefly; calls no hook but `relax` while it waits.
///
/// Returns:
/// - `AXALLOC_OK`.
/// - `AXALLOC_ERR_INVALID`: `as` or `out` is NULL.
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
        huge_pages: st.huge_pages,
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
/// Returns:
/// - `AXALLOC_OK`.
/// - `AXALLOC_ERR_INVALID`: `as` is NULL.
/// - `AXALLOC_ERR_NO_MEMORY`: `alloc_frame` failed before the reserve
///   reached `frames`. The frames obtained so far are kept in the reserve —
///   unlike every other call, this one is not all-or-nothing, since a
///   partly filled reserve is useful.
/// - `AXALLOC_ERR_HOOK`: a hook broke its contract (a bad frame or
///   `phys_to_virt` pointer); the frame concerned was given back, the
///   frames reserved before it are kept, as with NO_MEMORY.
/// - `AXALLOC_ERR_INTERNAL`: a broken invariant (a bug).
///
/// Thread-safe, concurrent with every call but `axalloc_as_destroy`; takes
/// no lock (the reserve is a lock-free stack); calls `alloc_frame`,
/// `phys_to_virt` and `free_frame`.
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
/// - `flags`: map flags, `AXALLOC_READ` required, plus any of WRITE, EXEC,
///   DEVICE, and `AXALLOC_HUGE` (2 MiB pages, see there).
///
/// Returns:
/// - `AXALLOC_OK`.
/// - `AXALLOC_ERR_INVALID`: NULL `as`; `gpa` or `size` unaligned; `size` 0;
///   the range overflows or leaves the window; `flags` without READ or with
///   a bit outside the map flags (a config flag included).
/// - `AXALLOC_ERR_EXISTS`: the range overlaps a region.
/// - `AXALLOC_ERR_BUSY`: a map/unmap/write-populate in flight overlaps the
///   range (retry after it returns).
/// - `AXALLOC_ERR_UNSUPPORTED`: `AXALLOC_HUGE` without an `alloc_contig`
///   hook (checked after the range).
/// - `AXALLOC_ERR_LIMIT`: the address space already holds its maximum of
///   6,528 regions.
/// - `AXALLOC_ERR_NO_MEMORY`: `alloc_frame` failed (a failed
///   `alloc_contig` falls back to `alloc_frame`).
/// - `AXALLOC_ERR_HOOK`: a hook broke its contract.
/// - `AXALLOC_ERR_INTERNAL`: a broken invariant (a bug).
///
/// On every error everything this call took has been given back and the
/// address space is exactly as before.
///
/// Locks: takes the exclusive side twice, briefly (claim + bookkeeping;
/// commit); with `populate`, allocates (`alloc_frame`) and zeroes with no
/// lock held, so faults elsewhere go on. A fault inside the range before
/// the call returns is spurious (`AXALLOC_OK`; the guest re-faults). Never
/// calls `flush_tlb`; `free_frame` only on failure, with no lock held.
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
    let huge = flags & AXALLOC_HUGE != 0;
    let (Some(s), Some(flags)) = (space(r#as), Flags::from_bits(flags & !AXALLOC_HUGE)) else {
        return AXALLOC_ERR_INVALID;
    };
    let flags = if huge { flags.with(Flags::HUGE) } else { flags };
    status(s.map_alloc(gpa, size, flags, populate))
}

/// Maps `[gpa, gpa + size)` to host-physical `[hpa, hpa + size)` (device
/// passthrough, shared memory), with 2 MiB / 1 GiB leaves wherever both
/// addresses and the remaining size allow (no 1 GiB leaves with
/// `AXALLOC_CFG_NO_HUGE_1G`). Takes table frames only; the host keeps owning
/// the linear memory, which is never given to `free_frame`.
///
/// Returns:
/// - `AXALLOC_OK`.
/// - `AXALLOC_ERR_INVALID`: as `axalloc_map_alloc`, plus an unaligned `hpa`
///   or one whose range passes 2^52 (2^48 for Arm stage 2, whose entries hold 48-bit output addresses).
/// - `AXALLOC_ERR_EXISTS`, `AXALLOC_ERR_BUSY`, `AXALLOC_ERR_LIMIT`,
///   `AXALLOC_ERR_NO_MEMORY` (a table frame), `AXALLOC_ERR_HOOK`,
///   `AXALLOC_ERR_INTERNAL`: as `axalloc_map_alloc`.
///
/// Nothing changed on error. Locks as a populating `axalloc_map_alloc`.
/// Never calls `flush_tlb`.
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
/// entry, and only then gives removed frames and emptied table frames back —
/// with `AXALLOC_FORMAT_ARM_S2` at most twice: a 1 GiB / 2 MiB block the
/// range's edges split is first made invalid and flushed on its own
/// (break-before-make, Arm ARM "Using break-before-make when updating
/// translation table entries"), then the table of smaller leaves replacing
/// it is linked; meanwhile the block's other pages are invalid too (a fault
/// there is spurious and `axalloc_translate` reports them `NOT_MAPPED`), and
/// the block's span counts as in flight (`BUSY` for overlapping maps and
/// unmaps).
///
/// Returns:
/// - `AXALLOC_OK` (also when no region lies in the range).
/// - `AXALLOC_ERR_INVALID`: NULL `as`; unaligned, empty, overflowing, or
///   outside the window.
/// - `AXALLOC_ERR_BUSY`: another map/unmap/write-populate in flight overlaps
///   the range or the table spans it would free (retry).
/// - `AXALLOC_ERR_LIMIT`: the range lies strictly inside a region, splitting
///   it needs one more region, and the space holds its maximum.
/// - `AXALLOC_ERR_NO_MEMORY`: a huge-leaf split or a region split needed a
///   frame and `alloc_frame` failed.
/// - `AXALLOC_ERR_HOOK`: a hook broke its contract.
/// - `AXALLOC_ERR_INTERNAL`: a broken invariant (a bug).
///
/// Nothing changed on error. Locks: the exclusive side for the edge splits
/// (`alloc_frame` for the few tables they need) and the detach, which
/// yields to waiting vCPUs every few dozen entries; `flush_tlb` and every
/// `free_frame` run after it is released. Meanwhile faults on the range
/// report `NOT_MAPPED`, and faults that meet a table being freed are
/// spurious (`AXALLOC_OK`).
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

/// Makes every page of `[gpa, gpa + size)` present now, as faults would:
/// each never-touched page gets a zeroed frame (from the reserve first) with
/// its region's rights (KVM_PRE_FAULT_MEMORY; confidential guests; avoiding
/// exits on a latency-critical range). Pages already present stay as they
/// are. All or nothing: new pages are installed parked and made present
/// together at the end, so on error nothing this call installed remains and
/// no vCPU ever saw it.
///
/// Returns:
/// - `AXALLOC_OK`.
/// - `AXALLOC_ERR_INVALID`: NULL `as`; unaligned, empty, overflowing, or
///   outside the window; a part of the range is a linear region.
/// - `AXALLOC_ERR_NOT_MAPPED`: a part of the range has no region.
/// - `AXALLOC_ERR_BUSY`: a map, unmap or discard in flight overlaps the
///   range (retry).
/// - `AXALLOC_ERR_NO_MEMORY`: `alloc_frame` failed; nothing changed.
/// - `AXALLOC_ERR_HOOK`: a hook broke its contract; nothing changed.
/// - `AXALLOC_ERR_INTERNAL`: a broken invariant (a bug).
///
/// Thread-safe and concurrent: runs under the shared lock (faults go on; a
/// fault on a page being filled is spurious until the commit; a map or
/// unmap waits until it returns); calls `alloc_frame`, `phys_to_virt`,
/// `relax`, and `free_frame` (under the shared lock, only when it fails).
///
/// # Safety
/// `as` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn axalloc_prefault(
    r#as: *mut axalloc_as_t,
    gpa: u64,
    size: u64,
) -> axalloc_status_t {
    let Some(s) = space(r#as) else {
        return AXALLOC_ERR_INVALID;
    };
    status(s.prefault(gpa, size))
}

/// Gives back the frames of the pages in `[gpa, gpa + size)` (ballooning,
/// free page reporting: Xen's decrease_reservation, `MADV_DONTNEED`). The
/// range stays mapped lazily: the next access faults in a fresh zeroed
/// frame. Works on populated regions too; never-touched pages need nothing.
/// Calls `flush_tlb` at most once, covering every removed present entry (and
/// the whole 2 MiB of a block it gives back), and only then gives the frames,
/// blocks and emptied table frames back. A 2 MiB page (`AXALLOC_HUGE`) the
/// range covers in part is split first (with `AXALLOC_FORMAT_ARM_S2` by
/// break-before-make: one more flush, as `axalloc_unmap`); its block goes
/// back once none of its pages is mapped.
///
/// Returns:
/// - `AXALLOC_OK`.
/// - `AXALLOC_ERR_INVALID`: NULL `as`; unaligned, empty, overflowing, or
///   outside the window; a part of the range is a linear region (nothing
///   changed).
/// - `AXALLOC_ERR_NOT_MAPPED`: a part of the range has no region (nothing
///   changed).
/// - `AXALLOC_ERR_BUSY`: a map, unmap or discard in flight overlaps the
///   range (retry; nothing changed).
/// - `AXALLOC_ERR_NO_MEMORY`: splitting a 2 MiB page at an edge needed a
///   table frame and `alloc_frame` failed (nothing changed).
/// - `AXALLOC_ERR_HOOK`: a hook broke its contract while frames were being
///   given back (the pages are gone from the table by then).
/// - `AXALLOC_ERR_INTERNAL`: a broken invariant (a bug).
///
/// Locks: the exclusive side for the detach, which yields to waiting vCPUs
/// every few dozen entries; `flush_tlb` and every `free_frame` run after it
/// is released, while a claim keeps maps, unmaps, prefaults and hypervisor
/// writes of the range out (`ERR_BUSY`). Faults on the range go on: on a
/// page being discarded they are spurious (`AXALLOC_OK`, the guest retries)
/// until its frame is back, then they fault in a zeroed frame. A page the
/// guest writes while it is discarded may keep or lose that write, as with
/// any balloon; pages outside the range are never touched.
///
/// # Safety
/// `as` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn axalloc_discard(
    r#as: *mut axalloc_as_t,
    gpa: u64,
    size: u64,
) -> axalloc_status_t {
    let Some(s) = space(r#as) else {
        return AXALLOC_ERR_INVALID;
    };
    status(s.discard(gpa, size))
}

/// Changes the guest's rights on `[gpa, gpa + size)` to `flags`: a subset of
/// `AXALLOC_READ | AXALLOC_WRITE | AXALLOC_EXEC` that includes READ, or 0 —
/// no access at all: the contents are kept, every guest access faults and
/// `axalloc_handle_fault` answers `AXALLOC_ERR_ACCESS`; the hypervisor's
/// `axalloc_read` / `axalloc_write` / `axalloc_translate` still reach the
/// page. (Write-protect for introspection or copy-on-write snapshots,
/// read-only firmware, Xen's p2m access types.) Regions of both backends may
/// lie in the range; it must have no gap.
///
/// Rights live in the table entries, as in KVM's SPTEs: present pages get
/// the new rights (accessed/dirty kept); pages never touched get them when
/// they fault in later (a lazy entry — its leaf table is linked now, if
/// missing, when the rights differ from the region's); a huge leaf partly
/// covered is split (Arm: break-before-make). A region keeps the rights it
/// was mapped with — what `axalloc_query` reports — for pages no protect
/// changed; protect never splits or adds regions, so `stats.regions`
/// counts map calls' regions (split only by unmap), and any number of
/// protects needs table frames only. `axalloc_discard` keeps a page's
/// rights; `axalloc_unmap` forgets them.
///
/// If any right was taken from a present page, `flush_tlb` runs once over
/// the changed pages before the call returns (Arm: plus one before a split,
/// at most two). Rights only added need no flush: a stale, more restrictive
/// translation faults, and `axalloc_handle_fault` answers `AXALLOC_OK`
/// (spurious) because the entry now allows the access.
///
/// Returns:
/// - `AXALLOC_OK`.
/// - `AXALLOC_ERR_INVALID`: NULL `as`; unaligned, empty, overflowing, or
///   outside the window; `flags` with WRITE or EXEC but not READ, DEVICE,
///   or an unknown bit (nothing changed).
/// - `AXALLOC_ERR_NOT_MAPPED`: a part of the range has no region (nothing
///   changed).
/// - `AXALLOC_ERR_BUSY`: a map, unmap, discard, prefault, protect or
///   hypervisor write in flight overlaps the range (retry; nothing changed).
/// - `AXALLOC_ERR_NO_MEMORY`: a table for a split or for lazy entries could
///   not be had (nothing changed).
/// - `AXALLOC_ERR_HOOK`: a hook broke its contract (nothing changed).
/// - `AXALLOC_ERR_INTERNAL`: a broken invariant (a bug).
///
/// Thread-safe; concurrent with faults, translates and hypervisor reads on
/// the range. Locks: the exclusive side briefly (claim the range and count
/// the tables; split the edges), the shared side while entries change
/// (compare-exchange, beside faults). `alloc_frame` runs with no lock held;
/// `flush_tlb` and `free_frame` (unused tables) after every lock is
/// released. Calls `phys_to_virt` and `relax` under the lock.
///
/// # Safety
/// `as` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn axalloc_protect(
    r#as: *mut axalloc_as_t,
    gpa: u64,
    size: u64,
    flags: u32,
) -> axalloc_status_t {
    let Some(s) = space(r#as) else {
        return AXALLOC_ERR_INVALID;
    };
    status(s.protect(gpa, size, flags))
}

/// `axalloc_dirty_log_get` / `axalloc_young_get` flag: report, then re-arm
/// (dirty: write-protect the reported pages again; young: clear their
/// accessed bits), with one `flush_tlb` covering what changed before the
/// call returns. Without it the call only reads.
pub const AXALLOC_BITMAP_CLEAR: u32 = 1 << 16;

/// The caller's bitmap for `[gpa, gpa + size)`: `ceil(size / 4096 / 64)`
/// words, once the range is valid for `s`.
fn bitmap_of<'a>(s: &AddrSpace, gpa: u64, size: u64, p: *mut u64) -> Option<&'a mut [u64]> {
    let words = s.bitmap_len(gpa, size).ok()?;
    if p.is_null() || !(p as usize).is_multiple_of(core::mem::align_of::<u64>()) {
        return None;
    }
    // SAFETY: per the header's contract the caller's bitmap has this many
    // writable words for a valid range (checked above), not aliased during
    // the call.
    Some(unsafe { core::slice::from_raw_parts_mut(p, words) })
}

/// Starts dirty logging on `[gpa, gpa + size)`, which alloc regions must
/// cover (live migration, snapshots, checkpoints: KVM's dirty log, Xen's
/// log-dirty). From now until `axalloc_dirty_log_stop`, every 4 KiB page of
/// the range written — by the guest through the table, or by
/// `axalloc_write` — is reported by `axalloc_dirty_log_get` until a get with
/// `AXALLOC_BITMAP_CLEAR` has reported it; so is every discarded page (its
/// contents became zeros). At start no page is dirty: copy the present
/// pages first (`axalloc_present_bitmap`).
///
/// How, on every format: the library write-protects the range's writable
/// present pages now (one `flush_tlb` if any), and installs pages faulted by
/// a read or a fetch write-protected. The guest's first write to such a page
/// faults; `axalloc_handle_fault` (access WRITE) gives write back, marks the
/// page dirty and answers `AXALLOC_OK` — the host resumes the guest as for
/// any resolved fault. No hardware dirty bit is used, so nothing needs
/// enabling. Each logged range takes two bitmaps (one bit per page) and a
/// directory frame from `alloc_frame`: 16 frames + 1 per GiB logged.
///
/// While a range is logged, maps over it answer `AXALLOC_ERR_BUSY` (stop
/// first); unmaps, discards, prefaults, protects and hypervisor copies work
/// and keep the log. Already logged (the range lies inside a logged range):
/// `AXALLOC_OK`, nothing changes.
///
/// Returns:
/// - `AXALLOC_OK`.
/// - `AXALLOC_ERR_INVALID`: NULL `as`; unaligned, empty, overflowing, or
///   outside the window; a part of the range is a linear region.
/// - `AXALLOC_ERR_NOT_MAPPED`: a part of the range has no region.
/// - `AXALLOC_ERR_EXISTS`: the range overlaps a logged range without lying
///   inside it.
/// - `AXALLOC_ERR_LIMIT`: 8 ranges are logged already, or the range is
///   larger than 32 GiB.
/// - `AXALLOC_ERR_BUSY`: a map, unmap, discard, prefault, protect or
///   logging call in flight overlaps the range (retry).
/// - `AXALLOC_ERR_NO_MEMORY`: `alloc_frame` failed for a bitmap.
/// - `AXALLOC_ERR_HOOK`: a hook broke its contract.
/// - `AXALLOC_ERR_INTERNAL`: a broken invariant (a bug).
///
/// On error nothing changed. Thread-safe; faults, copies and gets go on.
/// Locks: exclusive briefly (check and claim; register), shared while pages
/// are write-protected; `alloc_frame` with no lock held; `flush_tlb` after
/// every lock is released. Calls `phys_to_virt` and `relax`.
///
/// # Safety
/// `as` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn axalloc_dirty_log_start(
    r#as: *mut axalloc_as_t,
    gpa: u64,
    size: u64,
) -> axalloc_status_t {
    let Some(s) = space(r#as) else {
        return AXALLOC_ERR_INVALID;
    };
    status(s.dirty_log_start(gpa, size))
}

/// Ends dirty logging of every logged range inside `[gpa, gpa + size)`:
/// write-protected pages get write back (no flush needed), the bitmaps go
/// back through `free_frame`. Ranges not logged: nothing to do.
///
/// Returns:
/// - `AXALLOC_OK`.
/// - `AXALLOC_ERR_INVALID`: NULL `as`; unaligned, empty, overflowing, or
///   outside the window; a logged range lies only partly inside the range
///   (nothing changed).
/// - `AXALLOC_ERR_BUSY`: another operation in flight overlaps the range.
/// - `AXALLOC_ERR_HOOK`: `phys_to_virt` broke its contract.
/// - `AXALLOC_ERR_INTERNAL`: a broken invariant (a bug).
///
/// Thread-safe. Locks: exclusive (faults wait while write is given back);
/// `free_frame` after it is released.
///
/// # Safety
/// `as` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn axalloc_dirty_log_stop(
    r#as: *mut axalloc_as_t,
    gpa: u64,
    size: u64,
) -> axalloc_status_t {
    let Some(s) = space(r#as) else {
        return AXALLOC_ERR_INVALID;
    };
    status(s.dirty_log_stop(gpa, size))
}

/// Writes into `bitmap` (`ceil(size / 4096 / 64)` words; bit `i % 64` of
/// word `i / 64` is the page at `gpa + i * 4096`; every bit of the range is
/// written, the rest of the last word is 0) which pages of `[gpa, gpa +
/// size)` — a range inside one logged range — were written since a get with
/// `AXALLOC_BITMAP_CLEAR` last reported them. With `AXALLOC_BITMAP_CLEAR`
/// (the only flag) the reported pages are re-armed — write-protected again
/// — and, if any was writable, one `flush_tlb` covering them runs before the
/// call returns; copy them after it. No write is ever lost: a guest write
/// racing with the get is reported by this get or by the next one.
///
/// Returns:
/// - `AXALLOC_OK`.
/// - `AXALLOC_ERR_INVALID`: NULL `as` or `bitmap` (or misaligned); unaligned,
///   empty, overflowing, or outside the window; the range is not inside
///   one logged range; a flag besides `AXALLOC_BITMAP_CLEAR`.
/// - `AXALLOC_ERR_HOOK`: `phys_to_virt` broke its contract.
/// - `AXALLOC_ERR_INTERNAL`: a broken invariant (a bug).
///
/// Thread-safe and concurrent with faults, copies and other gets (the shared
/// lock); calls `phys_to_virt`, `relax`, and `flush_tlb` after the lock is
/// released.
///
/// # Safety
/// `as` is NULL or a live handle; `bitmap` has the words above, writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn axalloc_dirty_log_get(
    r#as: *mut axalloc_as_t,
    gpa: u64,
    size: u64,
    bitmap: *mut u64,
    flags: u32,
) -> axalloc_status_t {
    let Some(s) = space(r#as) else {
        return AXALLOC_ERR_INVALID;
    };
    if flags & !AXALLOC_BITMAP_CLEAR != 0 {
        return AXALLOC_ERR_INVALID;
    }
    let Some(out) = bitmap_of(s, gpa, size, bitmap) else {
        return AXALLOC_ERR_INVALID;
    };
    status(s.dirty_log_get(gpa, size, out, flags & AXALLOC_BITMAP_CLEAR != 0))
}

/// Writes into `bitmap` (laid out as for `axalloc_dirty_log_get`) which
/// pages of `[gpa, gpa + size)` were accessed — read, written or executed
/// by the guest, or copied by `axalloc_read` / `axalloc_write` — since a get
/// with `AXALLOC_BITMAP_CLEAR` last covered them, or since they were
/// installed by a fault (working-set estimation, page aging: KVM's young
/// bits). Alloc and linear ranges both; a huge leaf reports all its pages.
/// With `AXALLOC_BITMAP_CLEAR` the accessed bit of every leaf the range
/// covers whole is cleared (a huge leaf only partly covered keeps it), and
/// one `flush_tlb` covering them runs before the call returns.
///
/// How: each format's accessed bit (EPT bit 8 with EPTP bit 6, which
/// `axalloc_as_hw` sets; NPT bit 5; Arm AF; RISC-V A). Where the CPU
/// manages it (EPT with A/D, NPT, Arm with VTCR_EL2.HA, RISC-V with Svadu
/// and henvcfg.ADUE) it sets the bit again on the next access; where it
/// does not, that access faults (Arm access flag fault, RISC-V guest page
/// fault) and `axalloc_handle_fault` sets it and answers `AXALLOC_OK`.
/// Pages populated or prefaulted (not faulted) start with the bit clear on
/// x86 and set on Arm / RISC-V, whose leaves always carry it when installed.
///
/// Returns:
/// - `AXALLOC_OK`.
/// - `AXALLOC_ERR_INVALID`: NULL `as` or `bitmap` (or misaligned); unaligned,
///   empty, overflowing, or outside the window; a flag besides
///   `AXALLOC_BITMAP_CLEAR`.
/// - `AXALLOC_ERR_NOT_MAPPED`: a part of the range has no region.
/// - `AXALLOC_ERR_HOOK`: `phys_to_virt` broke its contract.
/// - `AXALLOC_ERR_INTERNAL`: a broken invariant (a bug).
///
/// Thread-safe and concurrent (the shared lock); calls `phys_to_virt`,
/// `relax`, and `flush_tlb` after the lock is released.
///
/// # Safety
/// `as` is NULL or a live handle; `bitmap` has the words above, writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn axalloc_young_get(
    r#as: *mut axalloc_as_t,
    gpa: u64,
    size: u64,
    bitmap: *mut u64,
    flags: u32,
) -> axalloc_status_t {
    let Some(s) = space(r#as) else {
        return AXALLOC_ERR_INVALID;
    };
    if flags & !AXALLOC_BITMAP_CLEAR != 0 {
        return AXALLOC_ERR_INVALID;
    }
    let Some(out) = bitmap_of(s, gpa, size, bitmap) else {
        return AXALLOC_ERR_INVALID;
    };
    status(s.young_get(gpa, size, out, flags & AXALLOC_BITMAP_CLEAR != 0))
}

/// Writes into `bitmap` (laid out as for `axalloc_dirty_log_get`) which
/// pages of `[gpa, gpa + size)` hold a page: alloc pages with a frame
/// installed (sealed ones included: see `axalloc_protect`), linear pages
/// always; pages no region covers read 0. A snapshot: what a migration
/// copies before its first dirty round.
///
/// Returns:
/// - `AXALLOC_OK`.
/// - `AXALLOC_ERR_INVALID`: NULL `as` or `bitmap` (or misaligned); unaligned,
///   empty, overflowing, or outside the window.
/// - `AXALLOC_ERR_HOOK`: `phys_to_virt` broke its contract.
/// - `AXALLOC_ERR_INTERNAL`: a broken invariant (a bug).
///
/// Thread-safe and concurrent (the shared lock); calls `phys_to_virt` and
/// `relax`.
///
/// # Safety
/// `as` is NULL or a live handle; `bitmap` has the words above, writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn axalloc_present_bitmap(
    r#as: *const axalloc_as_t,
    gpa: u64,
    size: u64,
    bitmap: *mut u64,
) -> axalloc_status_t {
    let Some(s) = space(r#as) else {
        return AXALLOC_ERR_INVALID;
    };
    let Some(out) = bitmap_of(s, gpa, size, bitmap) else {
        return AXALLOC_ERR_INVALID;
    };
    status(s.present_bitmap(gpa, size, out))
}

/// Resolves a stage-2 fault at `gpa` (any byte of the page) for `access`, a
/// non-empty subset of `AXALLOC_READ | AXALLOC_WRITE | AXALLOC_EXEC` — the
/// EPT exit qualification's `qual & 7`, or derived from NPT's EXITINFO1 as
/// `AXALLOC_READ` describes.
///
/// Returns, checked in this order:
/// - `AXALLOC_ERR_INVALID`: NULL `as`; `access` 0 or with a bit outside
///   READ|WRITE|EXEC (DEVICE and config flags included).
/// - `AXALLOC_ERR_NOT_MAPPED`: no region covers `gpa` (the MMIO path).
/// - `AXALLOC_ERR_ACCESS`: the page's rights do not allow `access` — the
///   entry's when present, sealed (`axalloc_protect` with 0) or lazy with
///   rights a protect set, else the region's (answering OK would make the
///   guest fault forever).
/// - `AXALLOC_OK`: the page is present and allows `access` (spurious:
///   another vCPU won, or a stale TLB entry; nothing allocated); or another
///   operation is changing the entry right now (map commit, unmap reclaim:
///   a *frozen* entry) — the guest re-faults, the call never spins waiting;
///   or a zeroed frame was installed.
/// - `AXALLOC_ERR_NO_MEMORY`: `alloc_frame` failed (nothing changed).
/// - `AXALLOC_ERR_HOOK`: a hook broke its contract (nothing changed).
/// - `AXALLOC_ERR_INTERNAL`: a broken invariant (a bug).
///
/// A present page is never replaced by another frame. Thread-safe and
/// concurrent: faults from many vCPUs proceed in parallel under the shared
/// lock (`alloc_frame` and `phys_to_virt` may run under it; a frame or table
/// that lost a race goes back through `free_frame` after it is released);
/// faults on the same page produce exactly one frame. The frame is zeroed
/// with ordinary stores, so it is in the cache when the guest touches it.
///
/// After `AXALLOC_OK`, before resuming the vCPU (fault-time fences): a CPU
/// may have cached the *invalid* entry that caused the fault, and keep
/// faulting on it although the page is now present.
/// - EPT / NPT: nothing; an EPT violation / #NPF invalidates the cached
///   translations for the faulting address (Intel SDM vol. 3C "Invalidation
///   of TLBs and paging-structure caches" on EPT violations; AMD APM vol. 2
///   on #NPF), and x86 never caches not-present entries.
/// - Arm stage 2: no TLB invalidation — the architecture does not let a TLB
///   hold an entry that causes a translation fault (Arm ARM, VMSAv8-64
///   "TLB maintenance requirements": invalid entries are never cached) — but
///   a `DSB ISHST` before the exception return, so that the translation
///   table walk the retried access starts observes the new entry: the
///   library's store is a Release store, which orders it for other CPUs'
///   loads, not for the table walker. (KVM does the same after installing a
///   stage-2 PTE.) Hosts that batch faults may issue one DSB per batch.
/// - RISC-V: without Svvptc a hart may use a cached invalid G-stage entry:
///   execute a local `HFENCE.GVMA` for that guest-physical address (`rs1 =
///   gpa >> 2`, `rs2` = the VMID) on the faulting hart before `sret`, or
///   the guest can fault forever. With Svvptc the fence may be skipped (the
///   fault then only repeats a bounded number of times).
///
/// Arm cache maintenance: on an Arm host the new frame is cleaned to the
/// point of coherency (without `AXALLOC_CFG_ARM_S2FWB`) and, for an
/// executable region, the instruction cache is invalidated for it, before
/// the entry is stored — nothing for the host to do; a host that is not
/// aarch64 does it itself (see `AXALLOC_CFG_ARM_S2FWB`).
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
/// To tell "no region" from "lazy page never touched", use `axalloc_query`.
///
/// Returns:
/// - `AXALLOC_OK`.
/// - `AXALLOC_ERR_INVALID`: NULL `as`.
/// - `AXALLOC_ERR_NOT_MAPPED`: nothing present there — no region, or a
///   never-touched lazy page; outputs untouched.
/// - `AXALLOC_ERR_HOOK`: `phys_to_virt` broke its contract on the walk.
/// - `AXALLOC_ERR_INTERNAL`: a broken invariant (a bug).
///
/// Thread-safe, concurrent; the shared lock; calls `phys_to_virt` (without
/// `AXALLOC_CFG_LINEAR_MAP`) and `relax`.
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
/// Returns:
/// - `AXALLOC_OK` (`n == 0` included).
/// - `AXALLOC_ERR_INVALID`: NULL `as`; NULL `gpas` or `hpas` with `n > 0`;
///   `n` too large for the address space of the host.
/// - `AXALLOC_ERR_HOOK`: `phys_to_virt` broke its contract on a walk (the
///   outputs are then partly written).
/// - `AXALLOC_ERR_INTERNAL`: a broken invariant (a bug).
///
/// Thread-safe, concurrent; the shared lock; calls `phys_to_virt` (without
/// `AXALLOC_CFG_LINEAR_MAP`) and `relax`.
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
/// (the guest's R/W/X flags do not apply). Never-touched lazy pages read as
/// zeros, without allocating.
///
/// Returns:
/// - `AXALLOC_OK` (`len == 0` included).
/// - `AXALLOC_ERR_INVALID`: NULL `as`; NULL `buf` with `len > 0`; the range
///   overflows.
/// - `AXALLOC_ERR_NOT_MAPPED`: part of the range lies in no region (nothing
///   is copied).
/// - `AXALLOC_ERR_BUSY`: a page of the range is being discarded, unmapped
///   or split (Arm break-before-make), or filled by a prefault, right now;
///   retry (nothing copied is meaningful).
/// - `AXALLOC_ERR_ACCESS`: a DEVICE region lies in the range.
/// - `AXALLOC_ERR_HOOK`: `phys_to_virt` broke its contract (`buf` may be
///   partly written).
/// - `AXALLOC_ERR_INTERNAL`: a broken invariant (a bug).
///
/// Thread-safe, concurrent; the shared lock; calls `phys_to_virt` and
/// `relax`.
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
/// hypervisor. Never-touched lazy pages in the range are populated first
/// (zeroed, all or nothing).
///
/// Returns:
/// - `AXALLOC_OK` (`len == 0` included).
/// - `AXALLOC_ERR_INVALID`, `AXALLOC_ERR_NOT_MAPPED`, `AXALLOC_ERR_ACCESS`:
///   as `axalloc_read`.
/// - `AXALLOC_ERR_NO_MEMORY`: populating a lazy page failed; the address
///   space is as before and nothing was copied.
/// - `AXALLOC_ERR_BUSY`: an `axalloc_discard` in flight overlaps the range
///   (retry); nothing changed.
/// - `AXALLOC_ERR_HOOK`: a hook broke its contract while populating (as
///   NO_MEMORY: nothing changed) or while copying (the lazy pages are
///   populated by then, and the range may be partly written).
/// - `AXALLOC_ERR_INTERNAL`: a broken invariant (a bug).
///
/// Thread-safe and concurrent: runs under the shared lock, also while it
/// populates (so a concurrent map/unmap waits for that, and faults on the
/// pages being populated are spurious until it commits); calls
/// `alloc_frame`, `phys_to_virt`, `relax`, and `free_frame` (under the
/// shared lock, only when populating fails).
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

fn mapping_of(region: Option<Found>) -> axalloc_mapping {
    let Some((r, leaf)) = region else {
        return axalloc_mapping::default();
    };
    let (present, hpa, page_size) = leaf.map_or((0, 0, 0), |(h, sz)| (1, h.as_u64(), sz as u64));
    axalloc_mapping {
        kind: match r.backend {
            Backend::Alloc | Backend::AllocLogged => AXALLOC_REGION_ALLOC,
            Backend::Linear { .. } => AXALLOC_REGION_LINEAR,
        },
        flags: r.flags.bits(),
        region_base: r.start.as_u64(),
        region_size: r.size() as u64,
        present,
        reserved: 0,
        hpa,
        page_size,
    }
}

/// Looks inside: what covers `gpa` — the region (kind, base, size, flags)
/// and whether a leaf maps `gpa` now (present; then the host-physical
/// address of `gpa` itself, page offset included, and the leaf size). Unlike
/// `axalloc_translate`, it tells "no region" (kind `AXALLOC_REGION_NONE`)
/// from "region, page not present" (a lazy page never touched).
///
/// A snapshot under the shared lock: regions being mapped by a call still
/// in flight (claimed, not committed) are not visible yet, and neither are
/// pages of a populate that has not committed.
///
/// Returns:
/// - `AXALLOC_OK`, also when no region covers `gpa` (outside the window
///   included): `*out` then has kind `AXALLOC_REGION_NONE` and every field 0.
/// - `AXALLOC_ERR_INVALID`: `as` or `out` is NULL.
/// - `AXALLOC_ERR_HOOK`: `phys_to_virt` broke its contract on the walk.
/// - `AXALLOC_ERR_INTERNAL`: a broken invariant (a bug).
///
/// `*out` is written only with `AXALLOC_OK`. Thread-safe, concurrent; the
/// shared lock; calls `phys_to_virt` (without `AXALLOC_CFG_LINEAR_MAP`) and
/// `relax`.
///
/// # Safety
/// `as` is NULL or a live handle; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn axalloc_query(
    r#as: *const axalloc_as_t,
    gpa: u64,
    out: *mut axalloc_mapping_t,
) -> axalloc_status_t {
    let Some(s) = space(r#as) else {
        return AXALLOC_ERR_INVALID;
    };
    if out.is_null() {
        return AXALLOC_ERR_INVALID;
    }
    match s.query(gpa) {
        Ok(found) => {
            // SAFETY: non-NULL and writable per the contract.
            unsafe { out.write(mapping_of(found)) };
            AXALLOC_OK
        }
        Err(e) => e.into(),
    }
}

/// Iterates regions in address order: fills `*out` for the first region
/// that ends after `gpa` (the one containing `gpa`, else the next one
/// above), exactly as `axalloc_query(as, region_base, out)` would — so
/// `present`, `hpa` and `page_size` describe the region's first page. Start
/// with `gpa = 0` and continue with `region_base + region_size`:
///
/// ```c
/// axalloc_mapping_t m;
/// for (uint64_t g = 0; axalloc_region_next(as, g, &m) == AXALLOC_OK;
///      g = m.region_base + m.region_size) { ... }
/// ```
///
/// For save/restore, debugging and IOMMU mirroring. Each call is a
/// snapshot under the shared lock; regions being mapped (claimed, not
/// committed) are not visible.
///
/// Returns:
/// - `AXALLOC_OK`.
/// - `AXALLOC_ERR_INVALID`: `as` or `out` is NULL.
/// - `AXALLOC_ERR_NOT_MAPPED`: no region ends after `gpa` (the iteration
///   is over); `*out` untouched.
/// - `AXALLOC_ERR_HOOK`: `phys_to_virt` broke its contract on the walk.
/// - `AXALLOC_ERR_INTERNAL`: a broken invariant (a bug).
///
/// Thread-safe, concurrent; the shared lock; calls `phys_to_virt` (without
/// `AXALLOC_CFG_LINEAR_MAP`) and `relax`.
///
/// # Safety
/// `as` is NULL or a live handle; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn axalloc_region_next(
    r#as: *const axalloc_as_t,
    gpa: u64,
    out: *mut axalloc_mapping_t,
) -> axalloc_status_t {
    let Some(s) = space(r#as) else {
        return AXALLOC_ERR_INVALID;
    };
    if out.is_null() {
        return AXALLOC_ERR_INVALID;
    }
    match s.region_next(gpa) {
        Ok(Some(found)) => {
            // SAFETY: non-NULL and writable per the contract.
            unsafe { out.write(mapping_of(Some(found))) };
            AXALLOC_OK
        }
        Ok(None) => AXALLOC_ERR_NOT_MAPPED,
        Err(e) => e.into(),
    }
}
