//! Splitting every huge leaf of a range (dirty logging tracks 4 KiB pages:
//! `axalloc_dirty_log_start` turns the range's 2 MiB blocks into 512 pieces
//! over the same block). Unmap, discard and protect split only the leaves
//! their edges cut (`unmap.rs`); this splits all of them, with the tables
//! obtained before (a [`TableStock`]), so it cannot fail half-way.
//!
//! The translation does not change, so on x86 and RISC-V each leaf is
//! replaced in place by a table of its children, with a compare-exchange
//! that keeps accessed/dirty bits the hardware sets meanwhile. On Arm
//! (break-before-make) the caller first parks every huge leaf
//! ([`Walker::break_huge`]), flushes once with no lock held, then links the
//! tables ([`Walker::make_huge`]). A sealed huge leaf is invalid already and
//! is replaced directly on every format.

use core::sync::atomic::Ordering;

use crate::error::{Error, Result};
use crate::format::{self, Entry, Format};
use crate::sync::Exclusive;

use super::Walker;
use super::iter::{Descend, Iter, Visit};
use super::stock::TableStock;

impl<'a, F: Format> Walker<'a, F> {
    /// Huge leaves (present or sealed) in `[start, end)`: the tables
    /// [`Walker::make_huge`] takes (one each; alloc regions hold 2 MiB
    /// blocks only, whose children are 4 KiB leaves).
    pub fn huge_in(&self, start: usize, end: usize) -> Result<usize> {
        let mut n = 0;
        let mut it = Iter::root(self, start, end, Descend::Present)?;
        while let Some(v) = it.next()? {
            let Visit::Slot(s) = v else { continue };
            if s.level > 0
                && matches!(
                    format::decode::<F>(s.raw, s.level),
                    Entry::Leaf { .. } | Entry::Sealed { .. }
                )
            {
                if s.level > 1 {
                    return Err(Error::Internal);
                }
                n += 1;
            }
        }
        Ok(n)
    }

    /// Break-before-make, the break: parks every present huge leaf in
    /// `[start, end)` and returns the hull of their spans (`lo == hi`:
    /// none) — the caller's claim must cover it, and the caller flushes it
    /// before [`Walker::make_huge`].
    pub fn break_huge(
        &self,
        _x: &Exclusive<'_>,
        start: usize,
        end: usize,
    ) -> Result<(usize, usize)> {
        let (mut lo, mut hi) = (0, 0);
        let mut it = Iter::root(self, start, end, Descend::Present)?;
        while let Some(v) = it.next()? {
            let Visit::Slot(s) = v else { continue };
            if s.level > 0 && matches!(format::decode::<F>(s.raw, s.level), Entry::Leaf { .. }) {
                // Swap: the parked value keeps what the hardware set.
                let old = s.entry.swap(F::EMPTY, Ordering::AcqRel);
                s.entry.store(F::park(old), Ordering::Release);
                (lo, hi) = if lo == hi {
                    (s.base, s.span_end())
                } else {
                    (lo.min(s.base), hi.max(s.span_end()))
                };
            }
        }
        Ok((lo, hi))
    }

    /// Replaces every huge leaf in `[start, end)` — present (no
    /// break-before-make), parked by [`Walker::break_huge`] and flushed
    /// since, or sealed — by a table of its 512 children, tables from
    /// `stock`.
    pub fn make_huge(
        &self,
        _x: &Exclusive<'_>,
        start: usize,
        end: usize,
        stock: &mut TableStock,
    ) -> Result {
        let mut it = Iter::root(self, start, end, Descend::Present)?;
        while let Some(v) = it.next()? {
            let Visit::Slot(s) = v else { continue };
            if s.level == 0 {
                continue;
            }
            let (leaf, live) = match format::decode::<F>(s.raw, s.level) {
                Entry::Leaf { .. } if !F::BREAK_BEFORE_MAKE => (s.raw, true),
                Entry::Sealed { .. } => (s.raw, false),
                Entry::Parked if F::BREAK_BEFORE_MAKE => {
                    let leaf = F::unpark(s.raw);
                    if !matches!(format::decode::<F>(leaf, s.level), Entry::Leaf { .. }) {
                        continue;
                    }
                    (leaf, false)
                }
                _ => continue,
            };
            it.step_over();
            let t = stock.take(self)?;
            let children = self.view(t, s.level - 1)?;
            let link = format::table::<F>(t);
            let mut raw = leaf;
            loop {
                for (i, c) in children.iter().enumerate() {
                    let child = if F::is_sealed(raw) {
                        F::seal(F::child(F::unseal(raw), s.level, i))
                    } else {
                        F::child(raw, s.level, i)
                    };
                    c.store(child, Ordering::Relaxed);
                }
                if !live {
                    // Invalid (parked by us, or sealed): nothing else
                    // writes it. Release: the children before the link.
                    s.entry.store(link, Ordering::Release);
                    break;
                }
                match s
                    .entry
                    .compare_exchange(raw, link, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => break,
                    // Only the hardware writes a live leaf meanwhile
                    // (accessed/dirty): rebuild from what it wrote.
                    Err(now) if now & !F::HW_BITS == raw & !F::HW_BITS => raw = now,
                    Err(_) => {
                        stock.put_back(self, t)?;
                        return Err(Error::Internal);
                    }
                }
            }
        }
        Ok(())
    }
}
