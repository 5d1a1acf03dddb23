//! The address space's reader-writer lock.
//!
//! A spinning lock (a hypervisor may not sleep here) with two properties the
//! off-the-shelf ones lack: writers are not starved by a stream of readers
//! (vCPU faults) — a waiting writer stops new readers from entering — and
//! nothing in it can panic, so no panic path reaches the C boundary.

use core::cell::UnsafeCell;
use core::hint::spin_loop;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicUsize, Ordering};

/// A writer holds the lock.
const WRITER: usize = 1 << 0;
/// A writer waits: new readers hold back.
const WAITING: usize = 1 << 1;
/// One reader.
const READER: usize = 1 << 2;

/// A writer-preferring spinning reader-writer lock.
pub struct RwLock<T> {
    state: AtomicUsize,
    data: UnsafeCell<T>,
}

// SAFETY: the lock hands out `&T` to many threads only in read mode and `&mut
// T` to one thread only in write mode, like `std::sync::RwLock`.
unsafe impl<T: Send> Send for RwLock<T> {}
// SAFETY: as above; `T: Sync` because readers share `&T`.
unsafe impl<T: Send + Sync> Sync for RwLock<T> {}

impl<T> RwLock<T> {
    /// An unlocked lock around `data`.
    pub const fn new(data: T) -> Self {
        Self {
            state: AtomicUsize::new(0),
            data: UnsafeCell::new(data),
        }
    }

    /// Shared access; waits while a writer holds or waits for the lock.
    pub fn read(&self) -> ReadGuard<'_, T> {
        loop {
            let s = self.state.load(Ordering::Relaxed);
            if s & (WRITER | WAITING) == 0 {
                // `s` has fewer than usize::MAX / 4 readers: no overflow.
                if self
                    .state
                    .compare_exchange_weak(s, s + READER, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return ReadGuard { lock: self };
                }
            }
            spin_loop();
        }
    }

    /// Exclusive access; announces itself so that new readers hold back,
    /// then waits for the readers inside to leave.
    pub fn write(&self) -> WriteGuard<'_, T> {
        loop {
            let s = self.state.load(Ordering::Relaxed);
            if s & WRITER == 0 && s < READER {
                // No writer, no reader (a `WAITING` bit may be ours or
                // another writer's; whoever wins clears it).
                if self
                    .state
                    .compare_exchange_weak(s, WRITER, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return WriteGuard { lock: self };
                }
            } else if s & WAITING == 0 {
                self.state.fetch_or(WAITING, Ordering::Relaxed);
            }
            spin_loop();
        }
    }
}

/// Shared access to the data.
pub struct ReadGuard<'a, T> {
    lock: &'a RwLock<T>,
}

impl<T> Deref for ReadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: in read mode no `&mut T` exists.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> Drop for ReadGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.state.fetch_sub(READER, Ordering::Release);
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
        // Keep a `WAITING` bit another writer may have set meanwhile.
        self.lock.state.fetch_and(!WRITER, Ordering::Release);
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
        assert_eq!(lock.state.load(Ordering::Relaxed) & !WAITING, 0);
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
}
