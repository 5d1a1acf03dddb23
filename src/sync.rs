//! The address space's reader-writer lock.
//!
//! vCPUs fault in parallel under the shared side; map and unmap take the
//! exclusive side. What the off-the-shelf locks lack, and this one has:
//!
//! - **Readers share no cache line.** The reader count is split over
//!   [`SHARDS`] shards, each on its own 128-byte line (Zen and Intel pull
//!   adjacent lines in pairs); a reader picks its shard by hashing its stack
//!   address, so two vCPU threads almost always use different lines. A single
//!   shared counter would bounce between cores on every fault and make two
//!   threads slower than one.
//! - **Events are counted for free.** A reader may count an event (a resolved
//!   fault) in its shard: the release that it does anyway adds it, so the
//!   fault path's statistics cost no atomic operation of their own.
//! - **Writers are not starved.** A writer raises a flag that holds new
//!   readers back, then waits for the shards to drain.
//! - **Nothing can panic**, so no panic path reaches the C boundary.
//!
//! Ordering: a reader increments its shard and then reads the writer flag; a
//! writer sets the flag and then reads the shards. Both sides use `SeqCst`,
//! so at least one of them sees the other (Dekker): a reader never runs
//! alongside a writer.

use core::cell::UnsafeCell;
use core::hint::spin_loop;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Number of reader shards.
pub const SHARDS: usize = 8;

/// Reader count: the low 24 bits of a shard (16 M readers per shard).
const READER: u64 = 1;
const READER_MASK: u64 = (1 << 24) - 1;
/// Event count: the high 40 bits (wraps after 10^12 events; `events()`
/// sums with wrapping arithmetic).
const EVENT: u64 = 1 << 24;

/// A writer holds the lock, or waits for readers to leave.
const WRITER: usize = 1;

#[repr(align(128))]
struct Shard(AtomicU64);

/// A writer-preferring, reader-sharded spinning reader-writer lock.
pub struct RwLock<T> {
    writer: AtomicUsize,
    shards: [Shard; SHARDS],
    data: UnsafeCell<T>,
}

// SAFETY: the lock hands out `&T` to many threads only in read mode and `&mut
// T` to one thread only in write mode, like `std::sync::RwLock`.
unsafe impl<T: Send> Send for RwLock<T> {}
// SAFETY: as above; `T: Sync` because readers share `&T`.
unsafe impl<T: Send + Sync> Sync for RwLock<T> {}

/// The shard of the calling thread: threads run on different stacks, and
/// stacks are at least pages apart, so the stack address tells them apart.
#[inline]
fn my_shard() -> usize {
    let marker = 0u8;
    let sp = core::ptr::addr_of!(marker) as usize >> 12;
    // Fibonacci hashing: stacks a power of two apart still spread out.
    (sp.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (usize::BITS - SHARDS.trailing_zeros())) % SHARDS
}

impl<T> RwLock<T> {
    /// An unlocked lock around `data`.
    pub const fn new(data: T) -> Self {
        Self {
            writer: AtomicUsize::new(0),
            shards: [const { Shard(AtomicU64::new(0)) }; SHARDS],
            data: UnsafeCell::new(data),
        }
    }

    fn shard(&self, i: usize) -> &AtomicU64 {
        // `i % SHARDS` is always in range; `get` keeps the code panic-free.
        match self.shards.get(i % SHARDS) {
            Some(s) => &s.0,
            None => &self.shards[0].0,
        }
    }

    /// Shared access; waits while a writer holds or waits for the lock.
    #[inline]
    pub fn read(&self) -> ReadGuard<'_, T> {
        let shard = self.shard(my_shard());
        loop {
            shard.fetch_add(READER, Ordering::SeqCst);
            if self.writer.load(Ordering::SeqCst) == 0 {
                return ReadGuard {
                    lock: self,
                    shard,
                    events: 0,
                };
            }
            // A writer is in or waiting: step back, let it finish.
            shard.fetch_sub(READER, Ordering::Release);
            while self.writer.load(Ordering::Relaxed) != 0 {
                spin_loop();
            }
        }
    }

    /// Exclusive access: holds new readers back, waits for those inside.
    pub fn write(&self) -> WriteGuard<'_, T> {
        while self
            .writer
            .compare_exchange_weak(0, WRITER, Ordering::SeqCst, Ordering::Relaxed)
            .is_err()
        {
            spin_loop();
        }
        for s in &self.shards {
            while s.0.load(Ordering::SeqCst) & READER_MASK != 0 {
                spin_loop();
            }
        }
        WriteGuard { lock: self }
    }

    /// Sum of the events readers counted (see [`ReadGuard::count_event`]).
    pub fn events(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed) >> 24)
            .fold(0u64, u64::wrapping_add)
            & ((1 << 40) - 1)
    }
}

// TEMPORARY shim (lead): the API the phase-fair rewrite provides, so the
// rest of the crate builds until it lands. Replace wholesale.
/// Waiting strategy.
pub trait Relax {
    /// One step of waiting.
    fn relax(&self);
}
/// Proof of holding the exclusive side.
#[derive(Clone, Copy)]
pub struct Exclusive<'a>(core::marker::PhantomData<&'a ()>);
/// Proof of holding the shared (or exclusive) side.
#[derive(Clone, Copy)]
pub struct Shared<'a>(core::marker::PhantomData<&'a ()>);
impl<'a> Exclusive<'a> {
    /// Exclusive implies shared.
    pub fn shared(&self) -> Shared<'a> {
        Shared(core::marker::PhantomData)
    }
}
impl<T> RwLock<T> {
    /// Shared access, waiting with `_r`.
    pub fn read_with<R: Relax>(&self, _r: &R) -> ReadGuard<'_, T> {
        self.read()
    }
    /// Exclusive access, waiting with `_r`.
    pub fn write_with<R: Relax>(&self, _r: &R) -> WriteGuard<'_, T> {
        self.write()
    }
}
impl<T> ReadGuard<'_, T> {
    /// Proof of the shared side.
    pub fn token(&self) -> Shared<'_> {
        Shared(core::marker::PhantomData)
    }
}
impl<T> WriteGuard<'_, T> {
    /// Proof of the exclusive side.
    pub fn token(&self) -> Exclusive<'_> {
        Exclusive(core::marker::PhantomData)
    }
    /// True if others wait.
    pub fn contended(&self) -> bool {
        false
    }
}

/// Shared access to the data.
pub struct ReadGuard<'a, T> {
    lock: &'a RwLock<T>,
    shard: &'a AtomicU64,
    events: u64,
}

impl<T> ReadGuard<'_, T> {
    /// Counts one event, published when the guard is released.
    #[inline]
    pub fn count_event(&mut self) {
        self.events += 1;
    }
}

impl<T> Deref for ReadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: in read mode no `&mut T` exists.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> Drop for ReadGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        // One atomic operation leaves and publishes the events (wrapping:
        // the event field may carry into nothing but itself).
        self.shard.fetch_add(
            self.events.wrapping_mul(EVENT).wrapping_sub(READER),
            Ordering::Release,
        );
    }
}

/// Exclusive access to the data.
pub struct WriteGuard<'a, T> {
    lock: &'a RwLock<T>,
}

impl<T> Deref for WriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: in write mode this guard is the only access.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> DerefMut for WriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: in write mode this guard is the only access.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T> Drop for WriteGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.writer.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_excludes_readers_and_writers() {
        let lock = RwLock::new(0u64);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        *lock.write() += 1;
                        let r = lock.read();
                        assert!(*r > 0);
                    }
                });
            }
        });
        assert_eq!(*lock.read(), 40_000);
    }

    #[test]
    fn waiting_writer_is_not_starved_by_readers() {
        let lock = RwLock::new(0u64);
        let stop = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    while stop.load(Ordering::Relaxed) == 0 {
                        let _r = lock.read();
                        spin_loop();
                    }
                });
            }
            for _ in 0..100 {
                *lock.write() += 1;
            }
            stop.store(1, Ordering::Relaxed);
        });
        assert_eq!(*lock.read(), 100);
    }

    #[test]
    fn events_counted_by_readers_add_up_across_shards() {
        let lock = RwLock::new(());
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        let mut g = lock.read();
                        g.count_event();
                    }
                });
            }
        });
        assert_eq!(lock.events(), 4000);
        // Every reader left: a writer gets in.
        drop(lock.write());
    }
}
