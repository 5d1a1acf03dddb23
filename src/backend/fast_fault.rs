//! The lean fault path: a first-touch fault on guest RAM whose tables all
//! exist — what a running guest causes almost every time — in about a
//! hundred instructions (callgrind count in BENCHMARKS.md; `fault_ir_bound`
//! fails if it regresses).
//!
//! It does only what that case needs, under the shared lock the caller
//! holds: the lookup hint has already found the region
//! ([`RegionSet::find_hinted`](crate::region::RegionSet::find_hinted)); the
//! leaf table comes from the [`TableCache`] (faults come in runs: the guest
//! touches its RAM page after page) or a walk specialised per format
//! ([`descend`]); a zeroed frame from the reserve or `alloc_frame`
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
use crate::cache;
use crate::error::Error;
use crate::format::Format;
use crate::frames;
use crate::hooks::Hooks;
use crate::reserve::Reserve;
use crate::sync::Shared;
use crate::table::ENTRIES;
use crate::table::Walker;
use crate::table::read::descend;

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
    /// The tables the last walk through the caller's lock shard found.
    pub cache: TableCache<'a>,
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
    /// The leaf table on the way to `gpa`: cached; or one level down from
    /// the cached table above it (faults scattered over a 1 GiB); or walked
    /// from the root — caching what it found.
    #[inline(always)]
    fn leaf_table<F: Format>(&self, locked: Shared<'_>, gpa: Gpa) -> Option<NonNull<AtomicU64>> {
        if let Some(t) = self.cache.leaf.get(gpa, LEAF_SHIFT) {
            return Some(t);
        }
        let top = Walker::<F>::TOP;
        let mid = match self.cache.mid.get(gpa, MID_SHIFT) {
            Some(t) => t,
            None => {
                let root = self.root_virt.cast::<AtomicU64>();
                let t = descend::<F>(locked, root, top, 1, self.hooks, gpa)?;
                if top > 1 {
                    self.cache.mid.put(locked, gpa, MID_SHIFT, t);
                }
                t
            }
        };
        let leaf = descend::<F>(locked, mid, 1, 0, self.hooks, gpa)?;
        self.cache.leaf.put(locked, gpa, LEAF_SHIFT, leaf);
        Some(leaf)
    }

    /// Installs a zeroed frame at the 4 KiB page `gpa` of an alloc region
    /// whose owned leaf with address 0 is `template`, if every table exists
    /// and the entry is empty. The caller holds the shared lock (`locked`).
    #[inline(always)]
    pub fn fault<F: Format>(&self, locked: Shared<'_>, gpa: Gpa, template: u64) -> Fast {
        let Some(table) = self.leaf_table::<F>(locked, gpa) else {
            return Fast::Slow;
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
        // Arm: an executable page needs instruction-side maintenance too
        // (`cache.rs`); a constant `false` on other hosts.
        let exec = self.hooks.cache().active() && cache::leaf_exec::<F>(template);
        let hpa =
            match frames::fault_frame(self.hooks, Some(self.reserve), self.frames_zeroed, exec) {
                Ok(hpa) => hpa,
                Err(e) => return Fast::Failed(e),
            };
        let leaf = F::leaf_at(template, hpa);
        // Release: the frame's zeroing (ours, the reserve's or the host's)
        // is visible before the entry that reaches it (on Arm also cleaned
        // to the PoC by `fault_frame`, completed by its DSB).
        match entry.compare_exchange(seen, leaf, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => Fast::Installed,
            Err(_) => Fast::Lost(hpa),
        }
    }
}

/// The tables the last fault walked to, so the next fault in the same
/// 2 MiB skips the walk (a small software TLB over the table): the leaf
/// table (level 0) and the one above it (level 1, spanning 1 GiB), so a
/// fault elsewhere in that 1 GiB walks one level instead of all. Both live in
/// the lock's per-shard cache words ([`ReadGuard::cache`]): vCPUs on
/// different CPUs mostly lock through different shards, so two vCPUs
/// faulting in different places neither evict each other's entries nor
/// touch a line the lock did not already bring in.
///
/// [`ReadGuard::cache`]: crate::sync::ReadGuard::cache
#[derive(Clone, Copy)]
pub struct TableCache<'a> {
    /// The leaf table, tagged by `gpa >> 21`.
    pub leaf: CachedTable<'a>,
    /// The level-1 table, tagged by `gpa >> 30` (unused for two-level
    /// formats, whose level-1 table is the root).
    pub mid: CachedTable<'a>,
}

/// `gpa >> LEAF_SHIFT` tags a leaf table, `gpa >> MID_SHIFT` a level-1 one.
const LEAF_SHIFT: u32 = 21;
const MID_SHIFT: u32 = 30;

/// One cached table in one word, so concurrent faults never see a torn
/// pair: the tag (`gpa >> shift`, plus one so 0 means empty) in bits 63:36,
/// the table's host virtual page number (VA bits 47:12, sign-extended back)
/// in bits 35:0. A table whose address does not fit (a 57-bit host address
/// space) or a tag that does not fit in 28 bits is simply not cached.
///
/// Validity: written only under the shared lock, with a table just reached
/// from the root; **every writer resets the word before its exclusive
/// section begins** (the lock's contract), and tables are unlinked only in
/// exclusive sections. So a cached table is reachable from the root whenever
/// a shared-lock holder reads it.
#[derive(Clone, Copy)]
pub struct CachedTable<'a>(pub &'a AtomicU64);

const VPN_BITS: u32 = 36;
const VPN_MASK: u64 = (1 << VPN_BITS) - 1;

impl CachedTable<'_> {
    #[inline(always)]
    fn tag(gpa: Gpa, shift: u32) -> u64 {
        (gpa.as_u64() >> shift) + 1
    }

    /// The table cached for `gpa`'s `1 << shift`-byte span, if any.
    #[inline(always)]
    pub fn get(&self, gpa: Gpa, shift: u32) -> Option<NonNull<AtomicU64>> {
        let w = self.0.load(Ordering::Relaxed);
        if w >> VPN_BITS != Self::tag(gpa, shift) {
            return None;
        }
        // VA bits 47:12 back in place, sign-extended from bit 47. The
        // table's provenance was exposed by `put`.
        let va = ((w << (64 - VPN_BITS)) as i64 >> (64 - VPN_BITS - 12)) as usize;
        NonNull::new(core::ptr::with_exposed_provenance_mut::<AtomicU64>(va))
    }

    /// Caches `table` for `gpa`'s `1 << shift`-byte span (shared lock held).
    #[inline(always)]
    pub fn put(&self, _locked: Shared<'_>, gpa: Gpa, shift: u32, table: NonNull<AtomicU64>) {
        let va = table.as_ptr().expose_provenance() as u64;
        let tag = Self::tag(gpa, shift);
        let w = (tag << VPN_BITS) | ((va >> 12) & VPN_MASK);
        let back = ((w << (64 - VPN_BITS)) as i64 >> (64 - VPN_BITS - 12)) as u64;
        if back == va && tag >> (64 - VPN_BITS) == 0 {
            self.0.store(w, Ordering::Relaxed);
        }
    }
}
