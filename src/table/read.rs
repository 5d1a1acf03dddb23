//! Reading the table: the single-address walk behind `translate`, copies and
//! the fault's probe (the iterator's point mode, [`iter::point`]).

use crate::addr::Gpa;
use crate::error::Result;
use crate::format::{Entry, Format};

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

    /// The present leaf mapping `gpa`: its raw bits and level. A parked
    /// (frozen) entry is not present.
    #[inline]
    pub fn lookup(&self, gpa: Gpa) -> Result<Option<(u64, usize)>> {
        Ok(self.find(gpa)?.and_then(|f| {
            matches!(f.decode::<F>(), Entry::Leaf { .. }).then_some((f.raw, f.level))
        }))
    }
}
