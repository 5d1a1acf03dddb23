//! Zeroing frames before the guest or the hardware walker can see them —
//! without touching a single FP/SIMD register, so the archive is safe inside
//! a VM-exit handler that has not saved the guest's vector state.
//!
//! Two flavours, as Linux and Xen use them:
//! - [`zero_frame`]: ordinary stores (`rep stosb` on x86-64, Linux's
//!   `clear_page_erms`). For a page that is used right away — a table the
//!   walker fills next, the one frame a fault installs — the lines stay in the
//!   cache, so the guest's first touch after the fault hits it.
//! - [`zero_frame_streaming`]: non-temporal stores from general-purpose
//!   registers (`movnti`, Xen's `clear_page_sse2` without the SSE). For bulk
//!   zeroing (populate) it avoids reading every line into the cache only to
//!   evict it again: measured, it runs at bulk-`memset` speed. Streaming stores
//!   are weakly ordered: [`streaming_fence`] must run once, after the last of
//!   them and before any entry that makes such a frame visible is stored.
//!
//! Miri cannot run inline assembly: under `cfg(miri)` the portable loops run.
//!
//! No CPUID probing: both instructions are in the x86-64 baseline (SSE2's
//! `movnti` and `sfence` take no vector register). Other CPUs use plain
//! stores (the Arm and RISC-V cache maintenance a guest with caches off needs
//! comes with those formats).

use core::ptr::NonNull;

use crate::addr::FRAME_SIZE;

/// Zeroes one 4 KiB frame with ordinary, cached stores.
///
/// # Safety
/// `frame` points to `FRAME_SIZE` writable bytes no one else accesses.
#[inline]
pub unsafe fn zero_frame(frame: NonNull<u8>) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    // SAFETY: `rep stosb` writes RCX bytes of AL at RDI, forwards (DF is clear
    // per the ABI); the caller guarantees the frame is ours and writable.
    unsafe {
        core::arch::asm!(
            "rep stosb",
            inout("rcx") FRAME_SIZE => _,
            inout("rdi") frame.as_ptr() => _,
            in("al") 0u8,
            options(nostack, preserves_flags)
        );
    }
    #[cfg(any(not(target_arch = "x86_64"), miri))]
    // SAFETY: guaranteed by the caller.
    unsafe {
        core::ptr::write_bytes(frame.as_ptr(), 0, FRAME_SIZE)
    }
}

/// Zeroes one 4 KiB frame with non-temporal stores where the CPU has them.
/// Follow the last of a batch with [`streaming_fence`].
///
/// # Safety
/// As [`zero_frame`], and `frame` is 8-byte aligned (frames are 4 KiB
/// aligned in the host's view; `Hooks::virt` checks that).
#[inline]
pub unsafe fn zero_frame_streaming(frame: NonNull<u8>) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    // SAFETY: 64 iterations of 8 `movnti` stores of 8 bytes each cover the
    // 4 KiB frame exactly; every store is 8-byte aligned (the caller's
    // contract); `movnti` uses general-purpose registers only.
    unsafe {
        core::arch::asm!(
            "2:",
            "movnti qword ptr [{p}], {z}",
            "movnti qword ptr [{p} + 8], {z}",
            "movnti qword ptr [{p} + 16], {z}",
            "movnti qword ptr [{p} + 24], {z}",
            "movnti qword ptr [{p} + 32], {z}",
            "movnti qword ptr [{p} + 40], {z}",
            "movnti qword ptr [{p} + 48], {z}",
            "movnti qword ptr [{p} + 56], {z}",
            "add {p}, 64",
            "dec {n:e}",
            "jnz 2b",
            p = inout(reg) frame.as_ptr() => _,
            n = inout(reg) FRAME_SIZE / 64 => _,
            z = in(reg) 0u64,
            options(nostack)
        );
    }
    #[cfg(any(not(target_arch = "x86_64"), miri))]
    // SAFETY: guaranteed by the caller.
    unsafe {
        zero_frame(frame)
    }
}

/// Orders earlier streaming stores before later stores (`sfence`). One per
/// operation, before the first store that publishes a streamed frame.
#[inline]
pub fn streaming_fence() {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    // SAFETY: `sfence` has no operands and no preconditions; it only orders
    // stores (x86-64 baseline, no vector register involved).
    unsafe {
        core::arch::asm!("sfence", options(nostack, preserves_flags))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C, align(4096))]
    struct Page([u8; FRAME_SIZE]);

    #[test]
    fn both_flavours_zero_every_byte_and_nothing_else() {
        for streaming in [false, true] {
            let mut pages = Box::new([Page([0xa5; FRAME_SIZE]), Page([0xa5; FRAME_SIZE])]);
            let p = NonNull::new(pages[0].0.as_mut_ptr()).unwrap();
            // SAFETY: a page of our own.
            unsafe {
                if streaming {
                    zero_frame_streaming(p);
                    streaming_fence();
                } else {
                    zero_frame(p);
                }
            }
            assert!(pages[0].0.iter().all(|&b| b == 0), "streaming {streaming}");
            assert!(
                pages[1].0.iter().all(|&b| b == 0xa5),
                "streaming {streaming}"
            );
        }
    }
}
