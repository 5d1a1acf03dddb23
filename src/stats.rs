//! Counters behind `axalloc_as_stats`. Relaxed atomics: they are statistics,
//! exact whenever the address space is quiescent.

use core::sync::atomic::{AtomicU64, Ordering};

/// Frame and fault counters of one address space.
#[derive(Default)]
pub struct Counters {
    /// Page-table frames held, root included.
    pub table_frames: AtomicU64,
    /// 4 KiB frames backing alloc regions, *minus* the faults that installed
    /// frames (wrapping): the lock counts those, see `sync.rs`.
    pub guest_frames: AtomicU64,
    /// 2 MiB blocks held (`AXALLOC_HUGE`), each also counted as 512
    /// `guest_frames`.
    pub huge_pages: AtomicU64,
}

/// A snapshot, as the C API reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Regions currently mapped.
    pub regions: u64,
    /// Sum of their sizes.
    pub mapped_bytes: u64,
    /// 4 KiB frames currently backing alloc regions.
    pub guest_frames: u64,
    /// Page-table frames currently held, root included.
    pub table_frames: u64,
    /// Faults resolved by allocating a frame.
    pub faults: u64,
    /// Zeroed frames held in the reserve, ready for faults.
    pub reserve_frames: u64,
    /// 2 MiB guest blocks held, mapped whole or in part (each also counts
    /// 512 `guest_frames`).
    pub huge_pages: u64,
}

impl Counters {
    /// Reads the frame counters; `faults` comes from the lock.
    pub fn read(&self, regions: u64, mapped_bytes: u64, faults: u64) -> Stats {
        Stats {
            regions,
            mapped_bytes,
            guest_frames: self
                .guest_frames
                .load(Ordering::Relaxed)
                .wrapping_add(faults),
            table_frames: self.table_frames.load(Ordering::Relaxed),
            faults,
            reserve_frames: 0,
            huge_pages: self.huge_pages.load(Ordering::Relaxed),
        }
    }
}
