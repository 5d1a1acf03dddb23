//! Reading the table: the single-address walk behind `translate`, copies and
//! the fault's probe (the iterator's point mode, [`iter::point`]).

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use page_table_multiarch::GenericPTE;

use crate::addr::{Gpa, Hpa};
use crate::error::Result;
use crate::format::{Entry, Format};
use crate::hooks::Hooks;
use crate::sync::Shared;

use super::Walker;
use super::iter::{self, Found};

impl<'a, F: Format> Walker<'a, F> {
    /// Walks from the root towards `gpa` through present tables and stops at
    /// the first entry that is not one: a leaf, an empty or a parked entry.
    /// Read-only; `None` outside the format's address space.
    #[inline]
    pub fn find(&self, gpa: Gpa) -> Result<Option<Found<'_>>> {
        let gpa = gpa.as_usize();
        if gpa >> F::GPA_BITS != 0 {
            return Ok(None);
        }
        iter::point(self, gpa).map(Some)
    }

    /// The leaf holding the page at `gpa`: its raw bits and level — a
    /// present leaf, or a sealed one (no guest access, contents kept; the
    /// hypervisor still reaches the page). A parked (frozen) or lazy entry
    /// holds no page.
    #[inline]
    pub fn lookup(&self, gpa: Gpa) -> Result<Option<(u64, usize)>> {
        Ok(self.find(gpa)?.and_then(|f| {
            matches!(f.decode::<F>(), Entry::Leaf { .. } | Entry::Sealed { .. })
                .then_some((f.raw, f.level))
        }))
    }
}

/// The fault's hot walk: from `table`, the host view of a table at `level`
/// reachable from the root (the root itself at `Walker::TOP`), down to the
/// host view of the table at `target` (< `level`) on the way to `gpa`, when
/// every table in between is present; `None` as soon as an entry is anything
/// else (empty, parked, a huge leaf) — the caller then takes the general
/// [`Walker::probe`]. No decoding beyond [`Format::next_table`], no
/// bookkeeping, one [`Hooks::virt`] (a direct-map addition with
/// `AXALLOC_CFG_LINEAR_MAP`) per level. `gpa` must lie in the format's
/// address space (the root index is masked, so the walk stays inside the
/// root regardless).
///
/// The tables stay reachable from the root — and so alive — for as long as
/// the lock `_locked` proves is held: tables are unlinked only under the
/// exclusive lock, and freed only after that and a flush (see
/// `Walker::view`).
#[inline(always)]
pub fn descend<F: Format>(
    _locked: Shared<'_>,
    mut table: NonNull<AtomicU64>,
    mut level: usize,
    target: usize,
    hooks: &Hooks,
    gpa: Gpa,
) -> Option<NonNull<AtomicU64>> {
    let gpa = gpa.as_usize();
    while level > target {
        let index = (gpa >> (12 + 9 * level)) & (Walker::<F>::entries(level) - 1);
        // SAFETY: `table` is the host view of a table frame reachable from
        // the root (given so by the caller, or the target of a present table
        // entry read with Acquire below), `entries(level)` entries long and
        // 8-byte aligned (`Hooks::virt` checks); `index` is masked below that
        // length. Reachable tables live while the lock is held (above).
        // Access is atomic.
        let raw = unsafe { table.add(index).as_ref() }.load(Ordering::Acquire);
        let next = F::next_table(raw)?;
        table = hooks.virt(Hpa::from_usize(next)).ok()?.cast::<AtomicU64>();
        level -= 1;
    }
    Some(table)
}

/// The read path's hot walk (`translate`, `translate_many`): the present
/// leaf mapping `gpa` (or the leaf a sealed entry keeps) — its raw bits and
/// level — or `None` (nothing present:
/// an empty or parked entry on the way, or `gpa` outside the format's
/// address space). Like [`descend`]: the per-format table test on the way
/// down, one [`Hooks::virt`] per level below the root, and one presence test
/// at the end; no walker object. An error from `phys_to_virt` reads as
/// `None` here and is reported by the general walk, which callers may run
/// when they need to tell the two apart.
#[inline(always)]
pub fn present_leaf<F: Format>(
    _locked: Shared<'_>,
    root_virt: NonNull<u8>,
    hooks: &Hooks,
    gpa: Gpa,
) -> Option<(u64, usize)> {
    let gpa = gpa.as_usize();
    if gpa >> F::GPA_BITS != 0 {
        return None;
    }
    let mut table = root_virt.cast::<AtomicU64>();
    let mut level = Walker::<F>::TOP;
    loop {
        let index = (gpa >> (12 + 9 * level)) & (Walker::<F>::entries(level) - 1);
        // SAFETY: as in `leaf_table`: a reachable table's host view, the
        // index masked below its length, alive while the lock is held.
        let raw = unsafe { table.add(index).as_ref() }.load(Ordering::Acquire);
        match F::next_table(raw) {
            Some(next) if level > 0 => {
                table = hooks.virt(Hpa::from_usize(next)).ok()?.cast::<AtomicU64>();
                level -= 1;
            }
            _ if F::from_raw(raw).is_present() => return Some((raw, level)),
            // A sealed page (no guest access) is still the guest's page.
            _ if F::is_sealed(raw) => return Some((F::unseal(raw), level)),
            _ => return None,
        }
    }
}
