//! Protect: the guest's rights on a range, changed in the entries.
//!
//! Rights live in the table, as in KVM's SPTEs and Xen's p2m access types:
//! a region's flags are the rights its pages start with, and protect changes
//! the entries —
//! - a present leaf gets the new rights with a compare-exchange that keeps
//!   its address, memory type, software and accessed/dirty bits (a huge
//!   leaf the range covers whole changes in place; the caller split the
//!   edges first);
//! - a present leaf whose rights become none is *sealed*: made non-present,
//!   keeping its frame and contents (`Format::SEALED`); a sealed leaf given
//!   rights again is made present with them;
//! - a page never touched whose rights become different from its region's
//!   gets a *lazy* entry carrying them (`Format::LAZY`); a fault installs
//!   its frame with those rights. Lazy entries live in leaf tables, which
//!   protect links where they are missing, from a [`TableStock`] obtained
//!   before anything changed; rights set back to the region's empty the
//!   entry again.
//!
//! Every change is a compare-exchange from the value seen (a fault or the
//! hardware may change the entry meanwhile: retry from what is there now), so
//! protect runs under the shared lock beside faults. It never frees
//! anything. A present leaf that lost a right is noted in [`Hull`]: the
//! caller flushes that span once before returning; rights only added need no
//! flush (a stale, more restrictive translation faults, and the fault finds
//! the entry allows the access: spurious).

use core::sync::atomic::Ordering;

use crate::error::{Error, Result};
use crate::flags::Flags;
use crate::format::{self, Entry, Format, level_size};
use crate::hooks::Hooks;
use crate::logs::{Logs, Map};
use crate::sync::Shared;

use super::iter::{Descend, Iter, Visit};
use super::stock::TableStock;
use super::{Hull, Walker};

/// One region's part of a protect.
#[derive(Clone, Copy)]
pub struct Part<'l> {
    /// The part, `[start, end)`.
    pub start: usize,
    /// See `start`.
    pub end: usize,
    /// An alloc region (its pages may be lazy); linear pages are all present.
    pub alloc: bool,
    /// The rights the region gives its pages (`Flags` READ | WRITE | EXEC).
    pub default: u32,
    /// The new rights (0: none).
    pub new: u32,
    /// The dirty-logged ranges, if the part's region has one (with the hooks
    /// that reach their bitmaps): a writable page stays write-protected until the
    /// guest's next write (armed), unless it is writable now (dirty).
    pub log: Option<(&'l Logs, &'l Hooks)>,
}

impl Part<'_> {
    /// Never-touched pages of this part need a lazy entry.
    fn wants_lazy(&self) -> bool {
        self.alloc && self.new != self.default
    }

    /// The rights a present page at `gpa` gets: `new`, but in a logged
    /// range write only if the page has it now (it is dirty already); the
    /// armed bit follows whether write is among the rights.
    fn logged(&self, gpa: usize, new: u32, has_w: bool) -> Result<u32> {
        let Some((log, hooks)) = self.log.and_then(|(l, h)| Some((l.find(gpa)?, h))) else {
            return Ok(new);
        };
        if new & Flags::WRITE.bits() == 0 {
            log.clear(hooks, Map::Armed, gpa)?;
            return Ok(new);
        }
        log.set(hooks, Map::Armed, gpa)?;
        Ok(if has_w {
            new
        } else {
            new & !Flags::WRITE.bits()
        })
    }
}

fn to_mapping(rights: u32) -> Result<page_table_multiarch::MappingFlags> {
    Ok(Flags::from_bits(rights)
        .ok_or(Error::Internal)?
        .to_mapping())
}

/// Tables a missing subtree needs below an empty entry at `level` for the
/// part `[lo, hi)` of its span: at each level below, one per table-sized
/// block the part touches.
fn tables_below(level: usize, lo: usize, hi: usize) -> usize {
    (0..level)
        .map(|l| {
            let span = level_size(l + 1);
            (hi - 1) / span - lo / span + 1
        })
        .sum()
}

impl<'a, F: Format> Walker<'a, F> {
    /// How many tables [`Walker::protect`] of `part` may link (an upper
    /// bound: faults only ever add tables).
    pub fn protect_tables_needed(&self, part: &Part) -> Result<usize> {
        if !part.wants_lazy() {
            return Ok(0);
        }
        let mut n = 0;
        let mut it = Iter::root(self, part.start, part.end, Descend::Present)?;
        while let Some(v) = it.next()? {
            let Visit::Slot(s) = v else { continue };
            if s.level > 0 && format::decode::<F>(s.raw, s.level) == Entry::Empty {
                it.step_over();
                n += tables_below(s.level, s.lo, s.hi);
            }
        }
        Ok(n)
    }

    /// Gives the pages of `part` the rights `part.new` (see the module
    /// docs), linking missing leaf tables from `stock`. Runs under the shared
    /// lock (`_locked`), inside the caller's claim, after the edges were
    /// split. Fails only on a broken invariant.
    pub fn protect(
        &self,
        _locked: Shared<'_>,
        part: &Part,
        stock: &mut TableStock,
        out: &mut Hull,
    ) -> Result {
        let new = part.new;
        let lazy = part.wants_lazy();
        let mut it = Iter::root(self, part.start, part.end, Descend::Present)?;
        while let Some(v) = it.next()? {
            let Visit::Slot(s) = v else { continue };
            let cas = |want: u64| {
                s.entry
                    .compare_exchange(s.raw, want, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            };
            match format::decode::<F>(s.raw, s.level) {
                Entry::Table(_) if s.level > 0 => {}
                Entry::Empty if s.level > 0 => {
                    if !lazy {
                        it.step_over();
                        continue;
                    }
                    let t = stock.take(self)?;
                    let link = format::table::<F>(t);
                    // Release: the table's empty entries before the link.
                    if cas(link) {
                        it.set(link);
                    } else {
                        stock.put_back(self, t)?;
                        it.retry();
                    }
                }
                Entry::Empty => {
                    if lazy && !cas(F::lazy(new)) {
                        it.retry();
                    }
                }
                Entry::Lazy { .. } => {
                    let want = if lazy { F::lazy(new) } else { F::EMPTY };
                    if want != s.raw && !cas(want) {
                        it.retry();
                    }
                }
                Entry::Leaf { .. } => {
                    if !s.whole() {
                        return Err(Error::Internal);
                    }
                    let has_w = format::leaf_rights::<F>(s.raw) & Flags::WRITE.bits() != 0;
                    let r = part.logged(s.base, new, has_w)?;
                    let want = if new == 0 {
                        F::seal(s.raw)
                    } else {
                        F::with_rights(s.raw, to_mapping(r)?)
                    };
                    if want == s.raw {
                        continue;
                    }
                    // The hardware may have set accessed/dirty since: the
                    // retry rebuilds from what it wrote.
                    if !cas(want) {
                        it.retry();
                        continue;
                    }
                    if format::leaf_rights::<F>(s.raw) & !new != 0 {
                        out.note(s.base, s.span_end());
                    }
                }
                Entry::Sealed { .. } => {
                    if new == 0 {
                        continue;
                    }
                    if !s.whole() {
                        return Err(Error::Internal);
                    }
                    let r = part.logged(s.base, new, false)?;
                    if !cas(F::with_rights(F::unseal(s.raw), to_mapping(r)?)) {
                        it.retry();
                    }
                }
                // Nothing parks inside a protect's claim; a table at level 0
                // does not exist.
                Entry::Parked | Entry::Table(_) => return Err(Error::Internal),
            }
        }
        Ok(())
    }
}
