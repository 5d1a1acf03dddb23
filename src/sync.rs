//! The address space's reader-writer lock: phase-fair, reader-sharded,
//! spinning, panic-free.
//!
//! vCPUs fault in parallel under the shared side; map and unmap take the
//! exclusive side.
//!
//! # Protocol
//!
//! Brandenburg & Anderson's phase-fair ticket lock (PF-T), with its reader
//! counters split over [`SHARDS`] shards, each on its own 128-byte line (Zen
//! and Intel pull adjacent lines in pairs). A reader picks its shard by
//! hashing its stack address, so two vCPU threads almost always use different
//! lines: one shared counter would bounce between cores on every fault.
//!
//! - Shard `i` has `rin` (readers that arrived, in units of `RINC`, with the
//!   writer bits `PRESENT | PHASE` in the low byte) and `rout` (readers that
//!   left, same units). Writers share `win` (next ticket) and `wout` (ticket
//!   now served).
//! - **Reader**: `w = rin_i.fetch_add(RINC) & WBITS`. If `w == 0` it is in.
//!   Otherwise a writer is present: it keeps its place and spins until the
//!   writer bits of `rin_i` differ from `w`. Leaving: `rout_i += RINC`.
//! - **Writer**: `t = win.fetch_add(1)`; spin until `wout == t`. Then, for
//!   every shard, `s_i = rin_i.fetch_add(PRESENT | (t & PHASE))` (the bits
//!   stop new readers and the old value is a snapshot of the readers already
//!   in), and wait until `rout_i == s_i`. Leaving: clear the bits of every
//!   `rin_i`, then `wout += 1`.
//!
//! # Why it needs no cross-location ordering
//!
//! Every decision rests on one location's modification order, never on the
//! relative order of two locations (the old lock was a Dekker protocol, see
//! below). A reader and a writer meet only in `rin_i`, whose updates are all
//! read-modify-writes and thus totally ordered: if the reader's `fetch_add`
//! comes first, the writer's snapshot counts it and the writer waits for its
//! exit; if the writer's comes first, the reader's own `fetch_add` returns the
//! writer bits. Waiting for `rout_i == s_i` is a count, not a visibility race:
//! readers after the snapshot cannot leave before the writer clears its bits,
//! so `rout_i` cannot pass `s_i`, and reaching it means every counted reader
//! left. Happens-before comes from plain release/acquire pairs on the same
//! location: reader exit (`rout` Release) to the writer's wait (Acquire);
//! writer exit (`rin` Release) to the reader's `fetch_add` or spin (Acquire,
//! through the release sequence of later `rin` RMWs); writer to writer via
//! `wout`. The counters may wrap: all arithmetic wraps and they are only
//! compared for equality; readers count at bit 8 and up, so they never carry
//! into the writer bits, which a single writer at a time sets and clears.
//!
//! # Fairness
//!
//! Writers are served FIFO by ticket. Readers that arrive while a writer is
//! present enter as soon as it leaves, before the next writer: they already
//! hold a place in `rin_i` that the next writer's snapshot counts, and the
//! `PHASE` bit (the ticket's low bit) makes the next writer's bits differ from
//! the last one's, so a reader that missed the gap still sees a change.
//! Readers therefore wait at most one writer, and a writer at most one reader
//! phase (plus the writers ahead of it): neither side starves the other.
//!
//! # Events
//!
//! A reader may count events (resolved faults) in its guard; on release a
//! non-zero count goes to its shard's own 64-bit `events` word (Relaxed,
//! same cache line, no extra line touched). [`RwLock::events`] sums the
//! shards with wrapping arithmetic: exact modulo 2^64.
//!
//! # The readers' cache words
//!
//! Each shard's line also holds two words readers may use as a cache that
//! must not survive a write section (the fault path keeps its last leaf
//! table and the table above it there): a writer resets every shard's words
//! once the readers it waited for have left. Neither side's decisions depend
//! on them.
//!
//! # The lock this replaces
//!
//! It was writer-preferring (a writer looping starved readers) and a Dekker
//! protocol: the reader incremented its shard then loaded the writer flag,
//! the writer CAS'd the flag then loaded the shards, all four `SeqCst`, with
//! `Release` unlocks on both locations. Miri (weak-memory emulation) reported
//! a reader/writer data race. That is not a real bug: C++20's rules (which
//! Rust uses) order the four SC accesses in one total order consistent with
//! coherence, so at least one side sees the other even when the value read
//! was written by a non-SC `Release` store. Miri's emulation does not fully
//! implement those rules for SC accesses mixed with non-SC writes to the same
//! location (rust-lang/miri#2301, #5104); with every access made `SeqCst`,
//! Miri found no race. Still, the old lock's correctness leaned on the most
//! subtle corner of the model, which tools got wrong; this one needs no
//! `SeqCst` at all and is checked by Miri and loom.
//!
//! Nothing here can panic, so no panic path reaches the C boundary.

use core::cell::UnsafeCell;
use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};

#[cfg(not(all(test, loom)))]
use core::sync::atomic::AtomicU64;
#[cfg(all(test, loom))]
use loom::sync::atomic::AtomicU64;

/// Cache words per shard for readers (see [`ReadGuard::cache`]).
pub const CACHE_WORDS: usize = 2;
const _: () = assert!(CACHE_WORDS.is_power_of_two());

/// Number of reader shards (2 under loom, to keep models small).
pub const SHARDS: usize = if cfg!(all(test, loom)) { 2 } else { 8 };
const _: () = assert!(SHARDS.is_power_of_two() && SHARDS >= 2);

/// `rin` low byte: a writer is present (holds or drains the lock).
const PRESENT: u64 = 0b10;
/// `rin` low byte: the present writer's phase, its ticket's low bit.
const PHASE: u64 = 0b01;
const WBITS: u64 = PRESENT | PHASE;
/// One reader in `rin` and `rout`.
const RINC: u64 = 0x100;

/// `const fn`, except under loom, whose atomics have no const constructor.
macro_rules! const_unless_loom {
    ($(#[$m:meta])* $vis:vis fn $($rest:tt)*) => {
        #[cfg(not(all(test, loom)))]
        $(#[$m])* $vis const fn $($rest)*
        #[cfg(all(test, loom))]
        $(#[$m])* $vis fn $($rest)*
    };
}

#[repr(align(128))]
struct Shard {
    rin: AtomicU64,
    rout: AtomicU64,
    events: AtomicU64,
    /// The readers' cache words (see [`ReadGuard::cache`]); outside the
    /// lock protocol, so plain core atomics even under loom.
    cache: [core::sync::atomic::AtomicU64; CACHE_WORDS],
}

impl Shard {
    const_unless_loom! {
        fn new() -> Self {
            Shard {
                rin: AtomicU64::new(0),
                rout: AtomicU64::new(0),
                events: AtomicU64::new(0),
                cache: [const { core::sync::atomic::AtomicU64::new(0) }; CACHE_WORDS],
            }
        }
    }
}

#[cfg(not(all(test, loom)))]
const fn shards() -> [Shard; SHARDS] {
    [const { Shard::new() }; SHARDS]
}
#[cfg(all(test, loom))]
fn shards() -> [Shard; SHARDS] {
    core::array::from_fn(|_| Shard::new())
}

/// The writers' tickets, on a line of their own.
#[repr(align(128))]
struct Tickets {
    win: AtomicU64,
    wout: AtomicU64,
}

/// How a waiter passes time: the host may pause the CPU, yield the thread,
/// or wait for an event.
pub trait Relax {
    /// One step of waiting; called in every spin of every wait.
    fn relax(&self);
}

/// The default [`Relax`]: [`core::hint::spin_loop`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Spin;

impl Relax for Spin {
    #[inline]
    fn relax(&self) {
        core::hint::spin_loop();
    }
}

/// A phase-fair, reader-sharded spinning reader-writer lock (see the module
/// documentation).
pub struct RwLock<T> {
    tickets: Tickets,
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
    sp.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (usize::BITS - SHARDS.trailing_zeros())
}

impl<T> RwLock<T> {
    const_unless_loom! {
        /// An unlocked lock around `data`.
        pub fn new(data: T) -> Self {
            Self {
                tickets: Tickets { win: AtomicU64::new(0), wout: AtomicU64::new(0) },
                shards: shards(),
                data: UnsafeCell::new(data),
            }
        }
    }

    fn shard(&self, i: usize) -> &Shard {
        // `i % SHARDS` is always in range; `get` keeps the code panic-free.
        self.shards.get(i % SHARDS).unwrap_or(&self.shards[0])
    }

    /// Shared access, spinning while a writer is present.
    #[inline]
    pub fn read(&self) -> ReadGuard<'_, T> {
        self.read_with(&Spin)
    }

    /// Shared access, calling `relax` while a writer is present.
    #[inline]
    pub fn read_with<R: Relax>(&self, relax: &R) -> ReadGuard<'_, T> {
        self.read_in(my_shard(), relax)
    }

    /// Shared access through shard `i` (tests pick it to force shards).
    #[inline]
    fn read_in<R: Relax>(&self, i: usize, relax: &R) -> ReadGuard<'_, T> {
        let shard = self.shard(i);
        // Acquire: with no writer bits, this reads the last writer's release
        // of `rin` or a later RMW in its release sequence.
        let w = shard.rin.fetch_add(RINC, Acquire) & WBITS;
        if w != 0 {
            // Counted in that writer's snapshot or in the next one's: wait
            // for the bits to change, keeping our place.
            while shard.rin.load(Acquire) & WBITS == w {
                relax.relax();
            }
        }
        ReadGuard {
            #[cfg(test)]
            waited: w,
            lock: self,
            shard,
            events: 0,
        }
    }

    /// Exclusive access, spinning while others hold the lock.
    #[inline]
    pub fn write(&self) -> WriteGuard<'_, T> {
        self.write_with(&Spin)
    }

    /// Exclusive access, calling `relax` while others hold the lock.
    pub fn write_with<R: Relax>(&self, relax: &R) -> WriteGuard<'_, T> {
        let t = &self.tickets;
        let ticket = t.win.fetch_add(1, Relaxed);
        // Acquire: the previous writer's release of `wout`.
        while t.wout.load(Acquire) != ticket {
            relax.relax();
        }
        let bits = PRESENT | (ticket & PHASE);
        let mut seen = [0u64; SHARDS];
        for (s, seen) in self.shards.iter().zip(&mut seen) {
            // The low byte is 0 here: the previous writer cleared it.
            *seen = s.rin.fetch_add(bits, Relaxed) & !WBITS;
        }
        for (s, seen) in self.shards.iter().zip(&seen) {
            // Acquire: the releases of every reader counted in `seen`.
            while s.rout.load(Acquire) != *seen {
                relax.relax();
            }
            // No reader is in: reset the cache words (see ReadGuard::cache).
            for w in &s.cache {
                w.store(0, Relaxed);
            }
        }
        WriteGuard { lock: self }
    }

    /// Sum of the events readers counted (see [`ReadGuard::count_event`]),
    /// modulo 2^64.
    pub fn events(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.events.load(Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

/// Proof that the caller holds a lock's shared (or exclusive) side, for as
/// long as `'a`: the guard it came from is borrowed that long.
///
/// Like Hafnium's `vm_locked`, it lets a function demand the lock instead of
/// trusting a comment. Zero-sized; only [`ReadGuard::token`] and
/// [`Exclusive::shared`] make one. It does not say *which* lock: functions
/// pair it with data reached through the same guard.
#[derive(Clone, Copy, Debug)]
pub struct Shared<'a>(PhantomData<&'a ()>);

/// Proof that the caller holds a lock's exclusive side, for as long as `'a`.
///
/// Zero-sized; only [`WriteGuard::token`] makes one. Serves where a
/// [`Shared`] is asked through [`Exclusive::shared`] or `From`.
#[derive(Clone, Copy, Debug)]
pub struct Exclusive<'a>(PhantomData<&'a ()>);

impl<'a> Exclusive<'a> {
    /// The exclusive side includes the shared one.
    #[inline]
    pub fn shared(&self) -> Shared<'a> {
        Shared(PhantomData)
    }
}

impl<'a> From<Exclusive<'a>> for Shared<'a> {
    #[inline]
    fn from(x: Exclusive<'a>) -> Self {
        x.shared()
    }
}

/// Shared access to the data.
pub struct ReadGuard<'a, T> {
    /// The writer bits the reader waited on (tests check the handoff).
    #[cfg(test)]
    waited: u64,
    lock: &'a RwLock<T>,
    shard: &'a Shard,
    events: u64,
}

impl<T> ReadGuard<'_, T> {
    /// Counts one event, published when the guard is released.
    #[inline]
    pub fn count_event(&mut self) {
        self.events = self.events.wrapping_add(1);
    }

    /// Proof of the shared side, valid while this guard is borrowed.
    #[inline]
    pub fn token(&self) -> Shared<'_> {
        Shared(PhantomData)
    }

    /// Word `i` (`< CACHE_WORDS`) on this reader's shard line for a cache
    /// that must not outlive
    /// a write section: every writer resets all of them to 0 once no reader
    /// is in, before its section begins. Readers of one shard share it (use
    /// atomically, e.g. one packed value per store). Touches no other line:
    /// the shard's line is the one the reader just locked through.
    #[inline]
    pub fn cache(&self, i: usize) -> &core::sync::atomic::AtomicU64 {
        // In bounds: `CACHE_WORDS` is a power of two.
        &self.shard.cache[i & (CACHE_WORDS - 1)]
    }
}

impl<T> Deref for ReadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: in read mode no `&mut T` exists (the protocol above).
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> Drop for ReadGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        if self.events != 0 {
            self.shard.events.fetch_add(self.events, Relaxed);
        }
        // Release: our reads happen before the next writer's access.
        self.shard.rout.fetch_add(RINC, Release);
    }
}

/// Exclusive access to the data.
pub struct WriteGuard<'a, T> {
    lock: &'a RwLock<T>,
}

impl<T> WriteGuard<'_, T> {
    /// Proof of the exclusive side, valid while this guard is borrowed.
    #[inline]
    pub fn token(&self) -> Exclusive<'_> {
        Exclusive(PhantomData)
    }

    /// Whether a reader or another writer waits: a long write section may
    /// then drop the guard and take it again to let them in.
    pub fn contended(&self) -> bool {
        let (t, s) = (&self.lock.tickets, &self.lock.shards);
        // We hold ticket `wout`; beyond it, `win` counts waiting writers.
        // While we hold the lock `rout` stays at our snapshot, so readers in
        // `rin` beyond it are waiting.
        t.win.load(Relaxed).wrapping_sub(t.wout.load(Relaxed)) > 1
            || s.iter()
                .any(|s| s.rin.load(Relaxed) & !WBITS != s.rout.load(Relaxed))
    }
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
        // Release: our writes happen before the readers we let in...
        for s in &self.lock.shards {
            s.rin.fetch_and(!WBITS, Release);
        }
        // ...and before the next writer.
        self.lock.tickets.wout.fetch_add(1, Release);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};

    /// Waiters yield: the tests run more threads than this machine may have
    /// cores, and a spinning waiter would burn the time slice of the thread
    /// it waits for.
    struct Yield;
    impl Relax for Yield {
        fn relax(&self) {
            std::thread::yield_now();
        }
    }

    impl<T> RwLock<T> {
        fn r(&self) -> ReadGuard<'_, T> {
            self.read_with(&Yield)
        }
        fn w(&self) -> WriteGuard<'_, T> {
            self.write_with(&Yield)
        }
    }

    /// Miri is ~1000x slower: same tests, far fewer rounds.
    const N: usize = if cfg!(miri) { 20 } else { 10_000 };

    impl<T> RwLock<T> {
        /// An unlocked lock's counters, as if `readers` readers had come
        /// and gone per shard, `tickets` writers had, and shard `i` had
        /// counted `events[i]` events.
        fn preset(&self, readers: u64, tickets: u64, events: [u64; SHARDS]) {
            for (s, e) in self.shards.iter().zip(events) {
                s.rin.store(readers.wrapping_mul(RINC), SeqCst);
                s.rout.store(readers.wrapping_mul(RINC), SeqCst);
                s.events.store(e, SeqCst);
            }
            self.tickets.win.store(tickets, SeqCst);
            self.tickets.wout.store(tickets, SeqCst);
        }
    }

    /// A count only writers touch, and a flag raised during each write
    /// that no reader may see.
    type Probe = (u64, AtomicBool);

    fn exclusion(lock: &RwLock<Probe>, threads: u64) {
        std::thread::scope(|s| {
            for i in 0..threads as usize {
                s.spawn(move || {
                    for _ in 0..N {
                        let mut w = lock.w();
                        w.1.store(true, Relaxed);
                        let v = w.0;
                        std::hint::black_box(&mut *w).0 = v + 1;
                        w.1.store(false, Relaxed);
                        drop(w);
                        let r = lock.read_in(i, &Yield);
                        for _ in 0..10 {
                            assert!(!r.1.load(Relaxed), "a reader saw a write in progress");
                        }
                    }
                });
            }
        });
        assert_eq!(lock.r().0, threads * N as u64, "writers overlapped");
    }

    #[test]
    fn writer_excludes_readers_and_writers() {
        exclusion(&RwLock::new((0, AtomicBool::new(false))), 4);
    }

    #[test]
    fn counters_wrap_without_corrupting_each_other() {
        let lock = RwLock::new((0, AtomicBool::new(false)));
        // A reader that wraps `rin` to 0 still holds a writer off.
        lock.preset(u64::MAX / RINC, u64::MAX, [0; SHARDS]);
        let r = lock.read_in(0, &Yield);
        std::thread::scope(|s| {
            s.spawn(|| lock.w().1.store(true, Relaxed));
            for _ in 0..1000 {
                assert!(!r.1.load(Relaxed), "a writer got in past a reader");
                std::thread::yield_now();
            }
            drop(r);
        });
        assert!(lock.r().1.load(Relaxed));
        // Readers and tickets start a few steps before wrapping to 0.
        lock.preset(
            0u64.wrapping_sub(3 * RINC) / RINC,
            u64::MAX - 2,
            [0; SHARDS],
        );
        exclusion(&lock, 4);
        assert_eq!(lock.events(), 0);
        for s in &lock.shards {
            assert_eq!(s.rin.load(SeqCst), s.rout.load(SeqCst));
        }
    }

    /// Threads on different stacks spread over the shards.
    #[test]
    fn threads_spread_over_shards() {
        let shards: std::collections::BTreeSet<usize> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8).map(|_| s.spawn(my_shard)).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(shards.len() >= 2, "8 threads all on shard {shards:?}");
        assert!(shards.iter().all(|&i| i < SHARDS));
    }

    #[test]
    fn waiting_writer_is_not_starved_by_readers() {
        let lock = RwLock::new(0u64);
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    while !stop.load(SeqCst) {
                        let _r = lock.r();
                        core::hint::spin_loop();
                    }
                });
            }
            for _ in 0..N / 100 + 1 {
                *lock.w() += 1;
            }
            stop.store(true, SeqCst);
        });
        assert_eq!(*lock.r(), N as u64 / 100 + 1);
    }

    /// Yields until `f` holds, or gives up after many tries (a broken lock
    /// then fails the test's assertions instead of hanging it).
    fn until(f: impl Fn() -> bool) -> bool {
        for _ in 0..if cfg!(miri) { 10_000 } else { 1_000_000 } {
            if f() {
                return true;
            }
            std::thread::yield_now();
        }
        false
    }

    /// Readers queued in `rin` (waiting or inside), over all shards.
    fn readers_in<T>(lock: &RwLock<T>) -> u64 {
        let n = lock
            .shards
            .iter()
            .map(|s| (s.rin.load(SeqCst) & !WBITS).wrapping_sub(s.rout.load(SeqCst)));
        n.fold(0, u64::wrapping_add) / RINC
    }

    /// One writer loops; readers (on every shard, all queued behind its
    /// first round) count the distinct values they saw while it looped. A
    /// writer-preferring lock lets the writer re-take the lock at once:
    /// readers see next to nothing.
    #[test]
    fn readers_progress_while_a_writer_loops() {
        let lock = RwLock::new(0usize);
        let readers = 3;
        let seen: Vec<usize> = std::thread::scope(|s| {
            let mut w = lock.w();
            let hs: Vec<_> = (0..readers)
                .map(|i| {
                    let lock = &lock;
                    s.spawn(move || {
                        let (mut last, mut distinct) = (0, 0);
                        loop {
                            let v = *lock.read_in(i, &Yield);
                            if v >= N {
                                return distinct;
                            }
                            distinct += usize::from(v != last);
                            last = v;
                        }
                    })
                })
                .collect();
            until(|| readers_in(&lock) == readers as u64);
            *w += 1;
            drop(w);
            for _ in 1..N {
                *lock.w() += 1;
            }
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let total: usize = seen.iter().sum();
        // Phase-fair: every write phase admits the readers waiting on it.
        assert!(total >= N / 4, "readers saw {seen:?} of {N} write phases");
    }

    /// Readers loop, overlapping, on every shard; the writer must get its
    /// writes in while they do. A reader-preferring lock makes it wait for a
    /// moment with no reader at all; the readers then give up after 100 N
    /// reads each, long before they see the writer's last value.
    #[test]
    fn writers_progress_while_readers_loop() {
        let lock = RwLock::new(0usize);
        let ready = AtomicUsize::new(0);
        let readers = 3;
        let last_seen: Vec<usize> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..readers)
                .map(|i| {
                    let (lock, ready) = (&lock, &ready);
                    s.spawn(move || {
                        ready.fetch_add(1, SeqCst);
                        let mut v = 0;
                        for _ in 0..100 * N {
                            let r = lock.read_in(i, &Yield);
                            // Hold it a little, so readers overlap.
                            for _ in 0..20 {
                                core::hint::spin_loop();
                            }
                            v = *r;
                            if v == N {
                                break;
                            }
                        }
                        v
                    })
                })
                .collect();
            until(|| ready.load(SeqCst) == readers);
            for _ in 0..N {
                *lock.w() += 1;
            }
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(last_seen, [N; 3], "the writer starved");
    }

    /// The phase-fair handoff, deterministically: a reader that arrives
    /// while writer 1 holds the lock enters before writer 2, queued behind
    /// it, even though writer 2 was already waiting.
    #[test]
    fn reader_blocked_by_a_writer_enters_before_the_next_writer() {
        for _ in 0..N / 100 + 1 {
            let lock = RwLock::new(0u64);
            let w1 = lock.w();
            std::thread::scope(|s| {
                let r = s.spawn(|| {
                    let g = lock.r();
                    (g.waited, *g)
                });
                assert!(until(|| w1.contended()));
                let w2 = s.spawn(|| *lock.w() = 2);
                let t = &lock.tickets;
                assert!(until(|| t.win.load(SeqCst) == 2));
                let mut w1 = w1;
                *w1 = 1;
                drop(w1);
                w2.join().unwrap();
                assert_eq!(
                    r.join().unwrap(),
                    (PRESENT, 1),
                    "writer 2 overtook the reader"
                );
            });
        }
    }

    #[test]
    fn contended_sees_waiting_readers_and_writers() {
        let lock = RwLock::new(());
        let w = lock.w();
        assert!(!w.contended());
        std::thread::scope(|s| {
            s.spawn(|| drop(lock.r()));
            assert!(until(|| w.contended()), "a waiting reader went unseen");
            drop(w);
        });
        let w = lock.w();
        assert!(!w.contended());
        std::thread::scope(|s| {
            s.spawn(|| drop(lock.w()));
            assert!(until(|| w.contended()), "a waiting writer went unseen");
            drop(w);
        });
        assert!(!lock.w().contended());
    }

    #[test]
    fn events_counted_by_readers_add_up_across_shards() {
        let lock = RwLock::new(());
        std::thread::scope(|s| {
            for i in 0..2 * SHARDS {
                let lock = &lock;
                s.spawn(move || {
                    for _ in 0..N / 10 {
                        let mut g = lock.read_in(i, &Yield);
                        g.count_event();
                        g.count_event();
                    }
                    drop(lock.r());
                });
            }
        });
        assert_eq!(lock.events(), 4 * SHARDS as u64 * (N / 10) as u64);
        // Every reader left: a writer gets in.
        drop(lock.w());
    }

    #[test]
    fn events_stay_exact_across_2_pow_40_and_wrap_at_2_pow_64() {
        let lock = RwLock::new(());
        let count = |shard: usize, n: u64| {
            let mut g = lock.read_in(shard, &Yield);
            for _ in 0..n {
                g.count_event();
            }
        };
        let mut events = [0; SHARDS];
        events[1] = (1 << 40) - 2;
        lock.preset(0, 0, events);
        count(1, 5);
        assert_eq!(lock.events(), (1 << 40) + 3);
        events[1] = 1 << 63;
        events[2] = (1 << 63) - 1;
        lock.preset(0, 0, events);
        count(2, 1);
        assert_eq!(lock.events(), 0);
        count(3, 7);
        assert_eq!(lock.events(), 7);
    }

    #[test]
    fn tokens_are_zero_sized_and_exclusive_serves_as_shared() {
        fn needs_shared(_: Shared<'_>) {}
        fn needs_exclusive(x: &Exclusive<'_>) {
            needs_shared(x.shared());
            needs_shared((*x).into());
        }
        assert_eq!(core::mem::size_of::<Shared<'_>>(), 0);
        assert_eq!(core::mem::size_of::<Exclusive<'_>>(), 0);
        let lock = RwLock::new(());
        needs_exclusive(&lock.w().token());
        needs_shared(lock.r().token());
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    //! Loom explores every interleaving and every value a weak load may
    //! return, and fails on any access to `Checked` that the lock leaves
    //! unordered. Waiters yield; loom lets a yield hand over to any thread
    //! at no cost, so two threads waiting at once can pass the turn between
    //! them forever and exhaust loom's branch budget. Models where at most
    //! one thread waits at a time run unbounded; the others allow one
    //! preemption.

    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    struct Yield;
    impl Relax for Yield {
        fn relax(&self) {
            thread::yield_now();
        }
    }

    /// The protected data: loom checks every access to it against the
    /// happens-before the lock provides, and fails on a concurrent one.
    struct Checked(loom::cell::UnsafeCell<u64>);

    // SAFETY: `Checked` is only reached through the lock under test; loom
    // reports any access that the lock fails to order.
    unsafe impl Sync for Checked {}

    impl Checked {
        fn get(&self) -> u64 {
            // SAFETY: loom checks this read against concurrent writes.
            self.0.with(|p| unsafe { *p })
        }
        fn bump(&self) {
            // SAFETY: loom checks this write against concurrent accesses.
            self.0.with_mut(|p| unsafe { *p += 1 })
        }
    }

    fn lock() -> Arc<RwLock<Checked>> {
        Arc::new(RwLock::new(Checked(loom::cell::UnsafeCell::new(0))))
    }

    fn model(bound: Option<usize>, f: impl Fn() + Sync + Send + 'static) {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = bound;
        b.check(f);
    }

    /// A reader on shard 0 then on shard 1, against a writer: the writer's
    /// snapshot and its bits on each shard both matter.
    #[test]
    fn loom_writer_excludes_reader() {
        model(None, || {
            let lock = lock();
            let l = lock.clone();
            let r = thread::spawn(move || {
                let a = l.read_in(0, &Yield).get();
                let b = l.read_in(1, &Yield).get();
                assert!(a <= b);
            });
            lock.write_with(&Yield).bump();
            r.join().unwrap();
        });
    }

    /// Readers on both shards at once, against a writer.
    #[test]
    fn loom_writer_excludes_readers_on_two_shards() {
        model(Some(1), || {
            let lock = lock();
            let rs: Vec<_> = (0..2)
                .map(|i| {
                    let l = lock.clone();
                    thread::spawn(move || l.read_in(i, &Yield).get())
                })
                .collect();
            lock.write_with(&Yield).bump();
            for r in rs {
                assert!(r.join().unwrap() <= 1);
            }
        });
    }

    #[test]
    fn loom_two_writers_exclusive() {
        model(None, || {
            let lock = lock();
            let l = lock.clone();
            let t = thread::spawn(move || l.write_with(&Yield).bump());
            lock.write_with(&Yield).bump();
            t.join().unwrap();
            assert_eq!(lock.read_in(1, &Yield).get(), 2);
        });
    }

    /// Writer 1 holds the lock; a reader and writer 2 arrive. Whenever the
    /// reader found writer 1's bits, it must enter before writer 2 and see
    /// writer 1's value.
    #[test]
    fn loom_reader_blocked_by_writer_gets_in() {
        model(Some(1), || {
            let lock = lock();
            let w1 = lock.write_with(&Yield);
            let l = lock.clone();
            let r = thread::spawn(move || {
                let g = l.read_in(1, &Yield);
                (g.waited, g.get())
            });
            let l = lock.clone();
            let w2 = thread::spawn(move || l.write_with(&Yield).bump());
            w1.bump();
            drop(w1);
            let (waited, seen) = r.join().unwrap();
            if waited == PRESENT {
                assert_eq!(
                    seen, 1,
                    "writer 2 overtook a reader that waited on writer 1"
                );
            }
            w2.join().unwrap();
        });
    }
}
