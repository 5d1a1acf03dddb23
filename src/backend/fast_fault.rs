//! The lean fault path: a first-touch fault on guest RAM whose tables all
//! exist — what a running guest causes almost every time — in about a
//! hundred instructions (callgrind count in BENCHMARKS.md; `fault_ir_bound`
//! fails if it regresses).
//!
//! It does only what that case needs, under the shared lock the caller
//! holds: the lookup hint has already found the region
//! ([`RegionSet::find_hinted`](crate::region::RegionSet::find_hinted)); the
//! leaf table comes from the [`LeafCache`] (faults come in runs: the guest
//! touches its RAM page after page) or one walk specialised per format
//! ([`leaf_table`]); a zeroed frame from the reserve or `alloc_frame`
//! ([`frames::fault_frame`]); the leaf from the region's pre-encoded
//! template; one compare-exchange. No walker object, no table pool, no
//! generic decode. Anything else — a missing table, a present
//! or parked entry, a huge leaf on the way — returns [`Fast::Slow`] having
//! changed nothing, and the caller runs the general path
//! ([`alloc::fault_in`](super::alloc::fault_in)).
//!
//! The rules are the general path's: the frame is zeroed before the entry
//! that reaches it is published (Release), an entry is only ever changed from
//! the empty value seen, and a frame that loses the race was never visible
//! and goes back with no lock held (the caller frees it).

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::addr::{Gpa, Hpa};
use crate::error::Error;
use crate::format::Format;
use crate::frames;
use crate::hooks::Hooks;
use crate::reserve::Reserve;
use crate::sync::Shared;
use crate::table::ENTRIES;
use crate::table::read::leaf_table;

/// What an address space lends the lean fault.
#[derive(Clone, Copy)]
pub struct FastFault<'a> {
    /// The host's hooks (frames, `phys_to_virt` or the direct map).
    pub hooks: &'a Hooks,
    /// The zeroed reserve, tried before `alloc_frame`.
    pub reserve: &'a Reserve,
    /// The root table's host view.
    pub root_virt: NonNull<u8>,
    /// The host promised zeroed frames.
    pub frames_zeroed: bool,
    /// The leaf table the last walk through the caller's lock shard found.
    pub cache: LeafCache<'a>,
}

/// What the lean fault did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fast {
    /// A zeroed frame now backs the page.
    Installed,
    /// Another vCPU installed the page first: the frame obtained (never
    /// visible) is to be given back once the lock is released.
    Lost(Hpa),
    /// Not the common case: nothing changed; take the general path.
    Slow,
    /// No frame could be obtained: nothing changed.
    Failed(Error),
}

impl FastFault<'_> {
    /// Installs a zeroed frame at the 4 KiB page `gpa` of an alloc region
    /// whose owned leaf with address 0 is `template`, if every table exists
    /// and the entry is empty. The caller holds the shared lock (`locked`).
    #[inline(always)]
    pub fn fault<F: Format>(&self, locked: Shared<'_>, gpa: Gpa, template: u64) -> Fast {
        let table = match self.cache.get(gpa) {
            Some(t) => t,
            None => match leaf_table::<F>(locked, self.root_virt, self.hooks, gpa) {
                Some(t) => {
                    self.cache.put(locked, gpa, t);
                    t
                }
                None => return Fast::Slow,
            },
        };
        // SAFETY: `table` is the host view of the live leaf table covering
        // `gpa` (just walked, or cached since no exclusive section — the only
        // place tables are unlinked — ran: see `LeafCache`), which stays
        // alive while the lock is held; the index is below 512; atomic.
        let entry = unsafe { table.add((gpa.as_usize() >> 12) % ENTRIES).as_ref() };
        let seen = entry.load(Ordering::Acquire);
        if seen != F::EMPTY {
            return Fast::Slow;
        }
        let hpa = match frames::fault_frame(self.hooks, self.reserve, self.frames_zeroed) {
            Ok(hpa) => hpa,
            Err(e) => return Fast::Failed(e),
        };
        let leaf = F::leaf_at(template, hpa);
        // Release: the frame's zeroing (ours, the reserve's or the host's)
        // is visible before the entry that reaches it.
        match entry.compare_exchange(seen, leaf, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => Fast::Installed,
            Err(_) => Fast::Lost(hpa),
        }
    }
}

/// The leaf table the last fault walked to, so the next fault in the same
/// 2 MiB skips the walk (a one-entry software TLB over the table). It lives
/// in the lock's per-shard cache word ([`ReadGuard::cache`]): vCPUs on
/// different CPUs mostly lock through different shards, so two vCPUs
/// faulting in different places neither evict each other's entry nor touch
/// a line the lock did not already bring in.
///
/// One word, so concurrent faults never see a torn pair: the 2 MiB tag
/// (`gpa >> 21`, plus one so 0 means empty) in bits 63:36, the table's host
/// virtual page number (VA bits 47:12, sign-extended back) in bits 35:0. A
/// table whose address does not fit (a 57-bit host address space) or a `gpa`
/// at or above 2^48 - 2 MiB is simply not cached.
///
/// Validity: written only under the shared lock, with a table just reached
/// from the root; **every writer resets the word before its exclusive
/// section begins** (the lock's contract), and tables are unlinked only in
/// exclusive sections. So a cached table is reachable from the root whenever
/// a shared-lock holder reads it.
///
/// [`ReadGuard::cache`]: crate::sync::ReadGuard::cache
#[derive(Clone, Copy)]
pub struct LeafCache<'a>(pub &'a AtomicU64);

const VPN_BITS: u32 = 36;
const VPN_MASK: u64 = (1 << VPN_BITS) - 1;

impl LeafCache<'_> {
    #[inline(always)]
    fn tag(gpa: Gpa) -> u64 {
        (gpa.as_u64() >> 21) + 1
    }

    /// The leaf table for `gpa`, if it is the one cached.
    #[inline(always)]
    pub fn get(&self, gpa: Gpa) -> Option<NonNull<AtomicU64>> {
        let w = self.0.load(Ordering::Relaxed);
        if w >> VPN_BITS != Self::tag(gpa) {
            return None;
        }
        // VA bits 47:12 back in place, sign-extended from bit 47. The
        // table's provenance was exposed by `put`.
        let va = ((w << (64 - VPN_BITS)) as i64 >> (64 - VPN_BITS - 12)) as usize;
        NonNull::new(core::ptr::with_exposed_provenance_mut::<AtomicU64>(va))
    }

    /// Caches `table` as the leaf table for `gpa` (shared lock held).
    #[inline(always)]
    pub fn put(&self, _locked: Shared<'_>, gpa: Gpa, table: NonNull<AtomicU64>) {
        let va = table.as_ptr().expose_provenance() as u64;
        let tag = Self::tag(gpa);
        let w = (tag << VPN_BITS) | ((va >> 12) & VPN_MASK);
        let back = ((w << (64 - VPN_BITS)) as i64 >> (64 - VPN_BITS - 12)) as u64;
        if back == va && tag >> (64 - VPN_BITS) == 0 {
            self.0.store(w, Ordering::Relaxed);
        }
    }
}
