//! Reading the table: the single-address walk behind `translate`, copies and
//! the fault's probe.

use core::sync::atomic::AtomicU64;

use crate::addr::Gpa;
use crate::error::Result;
use crate::format::{self, Entry, Format};

use super::Walker;
use super::iter::{Descend, Iter, Visit};

/// Where a walk towards one address stopped.
pub struct Found<'t> {
    /// The entry: a leaf, an empty or a parked entry, at `level`.
    pub entry: &'t AtomicU64,
    /// Its value.
    pub raw: u64,
    /// Its level.
    pub level: usize,
}

impl<'t> Found<'t> {
    /// What the entry means.
    pub fn decode<F: Format>(&self) -> Entry {
        format::decode::<F>(self.raw, self.level)
    }
}

impl<'a, F: Format> Walker<'a, F> {
    /// Walks from the root towards `gpa` through present tables and stops at
    /// the first entry that is not one: a leaf, an empty or a parked entry.
    /// Read-only; `None` outside the format's address space.
    pub fn find(&self, gpa: Gpa) -> Result<Option<Found<'_>>> {
        let gpa = gpa.as_usize();
        if gpa >> F::GPA_BITS != 0 {
            return Ok(None);
        }
        let mut it = Iter::root(self, gpa, gpa + 1, Descend::Present)?;
        while let Some(v) = it.next()? {
            if let Visit::Slot(s) = v {
                if !matches!(format::decode::<F>(s.raw, s.level), Entry::Table(_)) || s.level == 0 {
                    return Ok(Some(Found {
                        entry: s.entry,
                        raw: s.raw,
                        level: s.level,
                    }));
                }
            }
        }
        Ok(None)
    }

    /// The present leaf mapping `gpa`: its raw bits and level. A parked
    /// (frozen) entry is not present.
    pub fn lookup(&self, gpa: Gpa) -> Result<Option<(u64, usize)>> {
        Ok(self.find(gpa)?.and_then(|f| {
            matches!(f.decode::<F>(), Entry::Leaf { .. }).then_some((f.raw, f.level))
        }))
    }
}
