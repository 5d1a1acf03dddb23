//! The fault path's part of the table: one probe, then a compare-exchange
//! install (shared lock; concurrent with other faults and the hardware).

use core::sync::atomic::{AtomicU64, Ordering};

use crate::addr::Gpa;
use crate::error::{Error, Result};
use crate::format::{self, Entry, Format};

use super::iter::{Descend, Iter, Visit};
use super::{TablePool, Walker};

/// What a fault's walk found.
pub enum Probe<'t> {
    /// A leaf maps the address already: the entry and its value.
    Present(&'t AtomicU64, u64),
    /// A parked entry is on the way: another operation is changing this part
    /// of the table. The fault is spurious; the guest re-faults.
    Frozen,
    /// Every table exists; this empty 4 KiB entry (holding the value seen)
    /// is where the leaf goes.
    Slot(&'t AtomicU64, u64),
    /// Every table exists; this 4 KiB entry is lazy (holding the value seen):
    /// the page's rights are the entry's, not its region's.
    Lazy(&'t AtomicU64, u64),
    /// A sealed leaf: the guest may not access the page at all.
    Sealed,
    /// This many tables are missing on the way down (another fault may add
    /// some meanwhile, never remove them: an upper bound for
    /// [`Walker::install_leaf`]).
    Missing(usize),
}

/// What an install did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Installed {
    /// The leaf is in.
    Yes,
    /// Another fault (or a huge leaf) maps the address already.
    Lost,
    /// A parked entry is on the way (see [`Probe::Frozen`]).
    Frozen,
}

impl<'a, F: Format> Walker<'a, F> {
    /// What a fault at `gpa` finds, in one walk.
    pub fn probe(&self, gpa: Gpa) -> Result<Probe<'_>> {
        let f = self.find(gpa)?.ok_or(Error::Internal)?;
        Ok(match f.decode::<F>() {
            Entry::Leaf { .. } => Probe::Present(f.entry, f.raw),
            Entry::Sealed { .. } => Probe::Sealed,
            Entry::Lazy { .. } if f.level == 0 => Probe::Lazy(f.entry, f.raw),
            Entry::Lazy { .. } => return Err(Error::Internal),
            Entry::Parked => Probe::Frozen,
            Entry::Empty if f.level == 0 => Probe::Slot(f.entry, f.raw),
            Entry::Empty => Probe::Missing(f.level),
            Entry::Table(_) => return Err(Error::Internal),
        })
    }

    /// Installs the 4 KiB leaf `leaf` for `gpa` if nothing maps it yet,
    /// linking missing tables from `pool` (see [`Probe::Missing`]). Every store
    /// is a compare-exchange from the value seen, so concurrent faults are
    /// safe: a table that loses goes back to the pool.
    pub fn install_leaf(&self, gpa: Gpa, leaf: u64, pool: &mut TablePool) -> Result<Installed> {
        let gpa = gpa.as_usize();
        let mut it = Iter::root(self, gpa, gpa + 1, Descend::Present)?;
        while let Some(v) = it.next()? {
            let Visit::Slot(s) = v else { continue };
            match format::decode::<F>(s.raw, s.level) {
                Entry::Table(_) if s.level > 0 => {}
                // Protect got there first (lazy / sealed): the re-fault
                // sees the entry's rights.
                Entry::Leaf { .. } | Entry::Lazy { .. } | Entry::Sealed { .. } => {
                    return Ok(Installed::Lost);
                }
                Entry::Parked => return Ok(Installed::Frozen),
                Entry::Empty if s.level > 0 => {
                    let new = pool.take().ok_or(Error::Internal)?;
                    let link = format::table::<F>(new);
                    // Release: the new table's empty entries before the link.
                    match s
                        .entry
                        .compare_exchange(s.raw, link, Ordering::AcqRel, Ordering::Acquire)
                    {
                        Ok(_) => it.set(link),
                        Err(_) => {
                            pool.put_back(new)?;
                            it.retry();
                        }
                    }
                }
                Entry::Empty => {
                    // Release: the frame's zeroing is visible before the entry is.
                    match s
                        .entry
                        .compare_exchange(s.raw, leaf, Ordering::AcqRel, Ordering::Acquire)
                    {
                        Ok(_) => return Ok(Installed::Yes),
                        Err(_) => it.retry(),
                    }
                }
                Entry::Table(_) => return Err(Error::Internal),
            }
        }
        Err(Error::Internal)
    }
}
