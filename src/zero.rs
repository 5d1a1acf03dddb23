//! Zeroing frames before the guest or the hardware walker can see them.
//!
//! Two flavours. `zero_frame` uses ordinary stores (table frames, which the
//! walker writes next). `zero_frame_streaming` uses non-temporal stores on
//! x86-64 (guest frames): ordinary stores would first read every line into
//! the cache (write-allocate) only to evict it again; measured here, 4 KiB
//! of `movntdq` costs what a bulk `memset` does per 4 KiB, about 2.3x less
//! than a 4 KiB `memset`, and even with an `sfence` per frame (a fault) it
//! stays ahead. The price: a faulted page is not in the cache when the guest
//! touches it. Streaming stores are weakly ordered, so [`streaming_fence`]
//! must run before any entry that makes such a frame visible is stored.

use core::ptr::NonNull;

use crate::addr::FRAME_SIZE;

/// Zeroes one 4 KiB frame with ordinary stores.
///
/// # Safety
/// `frame` points to `FRAME_SIZE` writable bytes no one else accesses.
#[inline]
pub unsafe fn zero_frame(frame: NonNull<u8>) {
    // SAFETY: guaranteed by the caller.
    unsafe { core::ptr::write_bytes(frame.as_ptr(), 0, FRAME_SIZE) }
}

/// Zeroes one 4 KiB frame, bypassing the cache where the CPU allows it.
///
/// # Safety
/// As [`zero_frame`], and `frame` is 16-byte aligned (frames are 4 KiB aligned
/// in the host's view; `Hooks::virt` checks 8).
#[inline]
pub unsafe fn zero_frame_streaming(frame: NonNull<u8>) {
    // Only where the target lets the compiler use SSE registers: a kernel
    // built for a soft-float target (x86_64-unknown-none) must not have its
    // vector registers clobbered behind its back; it gets plain stores.
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if (frame.as_ptr() as usize) % 32 == 0 {
        if simd::has_avx() {
            // SAFETY: the CPU and the OS support AVX (checked); the frame is
            // 32-byte aligned and ours per the caller's contract.
            unsafe { simd::stream_zero_avx(frame.as_ptr()) };
        } else {
            // SAFETY: SSE2 is enabled for this target; alignment as above.
            unsafe { simd::stream_zero_sse2(frame.as_ptr()) };
        }
        return;
    }
    // SAFETY: guaranteed by the caller.
    unsafe { zero_frame(frame) }
}

#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
mod simd {
    use core::arch::x86_64::{
        __cpuid, __m128i, __m256i, _mm_setzero_si128, _mm_stream_si128, _mm256_setzero_si256,
        _mm256_stream_si256,
    };
    use core::sync::atomic::{AtomicU8, Ordering};

    use crate::addr::FRAME_SIZE;

    /// 0: not checked yet, 1: no AVX, 2: AVX.
    static AVX: AtomicU8 = AtomicU8::new(0);

    /// True if 32-byte streaming stores may be used: the CPU has AVX and the
    /// OS saves YMM state (CPUID.1:ECX.OSXSAVE/AVX, XCR0 bits 1-2).
    #[inline]
    pub fn has_avx() -> bool {
        match AVX.load(Ordering::Relaxed) {
            0 => {
                let yes = detect();
                AVX.store(if yes { 2 } else { 1 }, Ordering::Relaxed);
                yes
            }
            v => v == 2,
        }
    }

    fn detect() -> bool {
        // SAFETY: CPUID leaf 1 exists on every x86-64 CPU. (`__cpuid` became
        // a safe function in later Rust; the block keeps the MSRV building.)
        #[allow(unused_unsafe)]
        let ecx = unsafe { __cpuid(1) }.ecx;
        let (osxsave, avx) = (ecx & (1 << 27) != 0, ecx & (1 << 28) != 0);
        if !(osxsave && avx) {
            return false;
        }
        let (lo, _hi): (u32, u32);
        // SAFETY: OSXSAVE is set, so XGETBV with ECX = 0 is allowed; it only
        // reads XCR0.
        unsafe {
            core::arch::asm!("xgetbv", in("ecx") 0, out("eax") lo, out("edx") _hi,
                options(nomem, nostack, preserves_flags));
        }
        lo & 0b110 == 0b110
    }

    /// # Safety
    /// `p` points to a 32-byte aligned, writable, unshared 4 KiB frame; AVX
    /// is available (`has_avx`).
    #[target_feature(enable = "avx")]
    pub unsafe fn stream_zero_avx(p: *mut u8) {
        let p = p.cast::<__m256i>();
        let z = _mm256_setzero_si256();
        for line in (0..FRAME_SIZE / 32).step_by(4) {
            for i in 0..4 {
                // SAFETY: inside the frame, 32-byte aligned (contract).
                unsafe { _mm256_stream_si256(p.add(line + i), z) };
            }
        }
    }

    /// # Safety
    /// `p` points to a 16-byte aligned, writable, unshared 4 KiB frame.
    pub unsafe fn stream_zero_sse2(p: *mut u8) {
        let p = p.cast::<__m128i>();
        // SAFETY: SSE2 is enabled for this target (cfg of the module).
        let z = unsafe { _mm_setzero_si128() };
        // Two cache lines per iteration: the loop overhead of one store per
        // iteration measurably slows the stream.
        for line in (0..FRAME_SIZE / 16).step_by(8) {
            for i in 0..8 {
                // SAFETY: inside the frame, 16-byte aligned (contract).
                unsafe { _mm_stream_si128(p.add(line + i), z) };
            }
        }
    }
}

/// Orders earlier streaming stores before later stores (`sfence`).
#[inline]
pub fn streaming_fence() {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    // SAFETY: `sfence` has no preconditions; SSE is part of the x86-64 baseline.
    unsafe {
        core::arch::x86_64::_mm_sfence()
    };
}
