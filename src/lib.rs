//! libaxalloc: guest-physical memory management for hypervisors.
//!
//! One [`space::AddrSpace`] is one guest's stage-2 ("nested") page table —
//! Intel EPT or AMD NPT today — plus the regions mapped in it: guest RAM whose
//! frames come from the host eagerly or on first fault (the *alloc* backend)
//! and passthrough ranges mapped linearly (the *linear* backend). The host
//! supplies frames, its view of physical memory and TLB invalidation through
//! hooks; the library has no allocator and never panics across the C API.
//!
//! Where a change goes:
//!
//! | file            | concept                                                  |
//! |-----------------|----------------------------------------------------------|
//! | `capi.rs`       | the C boundary: pointer and integer checks, status codes |
//! | `space.rs`      | the address space: locking, regions + table + hooks      |
//! | `table/`        | the walker: one iterator; install, map, unmap            |
//! | `claims.rs`     | ranges operations work on without the lock               |
//! | `reserve.rs`    | zeroed frames kept ready for faults                      |
//! | `format/`       | one file per entry format (bits only)                    |
//! | `backend/`      | where pages come from: `alloc.rs`, `linear.rs`           |
//! | `region.rs`     | the sorted region set, stored in host frames             |
//! | `frames.rs`     | frame allocation, zeroing and accounting per operation   |
//! | `hooks.rs`      | the host's callbacks, validated                          |
//! | `flags.rs`      | region flags and fault access kinds                      |
//! | `zero.rs`       | zeroing frames (cached and streaming)                    |
//! | `cache.rs`      | Arm cache maintenance for guest frames the library wrote |
//! | `stats.rs`      | counters                                                 |
//! | `sync.rs`       | the reader-writer lock (writer-preferring, panic-free)   |
//! | `addr.rs`       | typed guest- and host-physical addresses                 |

#![cfg_attr(not(test), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![deny(missing_docs)]

pub mod addr;
pub mod backend;
pub mod cache;
pub mod capi;
pub mod claims;
pub mod error;
pub mod flags;
pub mod format;
pub mod frames;
pub mod hooks;
pub mod logs;
pub mod region;
pub mod reserve;
pub mod space;
pub mod stats;
pub mod sync;
pub mod table;
pub mod zero;

#[cfg(test)]
mod tests;

/// A panic is a bug: every path reachable from C returns a status instead.
/// Should one happen anyway, stop on the spot with an undefined-instruction
/// trap — unwinding into C would be undefined behaviour, and spinning would
/// hang a vCPU silently.
#[cfg(not(test))]
#[panic_handler]
#[allow(clippy::never_loop)] // the loop serves targets without a trap instruction
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `ud2` raises #UD; it touches no memory.
        unsafe {
            core::arch::asm!("ud2", options(nomem, nostack, noreturn))
        };
        #[cfg(target_arch = "aarch64")]
        // SAFETY: `udf` raises an undefined-instruction exception.
        unsafe {
            core::arch::asm!("udf #0", options(nomem, nostack, noreturn))
        };
        #[cfg(target_arch = "riscv64")]
        // SAFETY: `unimp` raises an illegal-instruction exception.
        unsafe {
            core::arch::asm!("unimp", options(nomem, nostack, noreturn))
        };
    }
}

/// The prebuilt `core` is compiled for unwinding and its unwind tables name
/// this symbol. With `panic = "abort"` nothing ever calls it; defining it lets
/// the archive link into C without a Rust runtime. The shipped archive
/// (see `cmake/`) keeps only `axalloc_*` global, so it cannot collide with
/// another Rust library's copy.
#[cfg(not(test))]
#[unsafe(no_mangle)]
extern "C" fn rust_eh_personality() {}
