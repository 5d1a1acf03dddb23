//! A stock of empty tables obtained before an operation that may need many
//! (protect: one leaf table per 2 MiB of never-touched memory whose rights
//! change), so that it either has every table up front or changes nothing.
//!
//! [`TablePool`](super::TablePool) holds the handful a fault or a split
//! needs; a stock holds any number without an allocator: the free tables
//! are chained through their own first entry (a frame nobody else can see),
//! which is set back to empty when the table is taken.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::addr::Hpa;
use crate::error::{Error, Result};
use crate::format::Format;

use super::Walker;

/// Empty tables chained through their first entry; give the rest back with
/// [`TableStock::release`].
#[must_use = "give unused tables back with `release`"]
pub struct TableStock {
    head: Option<Hpa>,
    len: usize,
}

impl Default for TableStock {
    fn default() -> Self {
        Self::new()
    }
}

impl TableStock {
    /// No tables.
    pub const fn new() -> Self {
        Self { head: None, len: 0 }
    }

    /// Tables held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if no table is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first entry of table `t` (a frame of this stock or just
    /// allocated: nobody else sees it).
    fn link<'w, F: Format>(w: &'w Walker<'_, F>, t: Hpa) -> Result<&'w AtomicU64> {
        w.view(t, 0)?.first().ok_or(Error::Internal)
    }

    /// Obtains `n` more empty tables (`alloc_frame`; may run under the
    /// lock). On failure the tables obtained so far stay in the stock.
    pub fn fill<F: Format>(&mut self, w: &Walker<'_, F>, n: usize) -> Result {
        for _ in 0..n {
            let t = w.frames().alloc_table()?;
            let next = self.head.map_or(0, |h| h.as_u64() | 1);
            Self::link(w, t)?.store(next, Ordering::Relaxed);
            self.head = Some(t);
            self.len += 1;
        }
        Ok(())
    }

    /// An empty table, every entry `F::EMPTY` again.
    pub fn take<F: Format>(&mut self, w: &Walker<'_, F>) -> Result<Hpa> {
        let t = self.head.ok_or(Error::Internal)?;
        let first = Self::link(w, t)?;
        let next = first.load(Ordering::Relaxed);
        first.store(F::EMPTY, Ordering::Relaxed);
        // Bit 0 marks "there is a next" (a frame address is 4 KiB aligned).
        self.head = (next & 1 != 0).then(|| Hpa::from_u64(next & !1));
        self.len -= 1;
        Ok(t)
    }

    /// Puts back a table taken from this stock and never linked.
    pub fn put_back<F: Format>(&mut self, w: &Walker<'_, F>, t: Hpa) -> Result {
        let next = self.head.map_or(0, |h| h.as_u64() | 1);
        Self::link(w, t)?.store(next, Ordering::Relaxed);
        self.head = Some(t);
        self.len += 1;
        Ok(())
    }

    /// Gives every table left back (call with no lock held).
    pub fn release<F: Format>(mut self, w: &Walker<'_, F>) {
        while !self.is_empty() {
            match self.take(w) {
                // SAFETY: stock tables were never linked.
                Ok(t) => unsafe { w.frames().free_table(t) },
                // `phys_to_virt` failed on a frame it showed before: keep
                // it rather than free a table we cannot read.
                Err(_) => break,
            }
        }
    }
}
