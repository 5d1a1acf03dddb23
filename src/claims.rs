//! Claims: guest-physical ranges that a map, unmap or write-populate is
//! working on while it holds **no** lock.
//!
//! The slow parts of those operations — allocating and zeroing frames, the
//! host's TLB flush, giving frames back — run with no lock held, so vCPUs never
//! wait for them. A claim, taken and dropped under the exclusive lock, is what
//! keeps the operations out of each other's way meanwhile:
//! - no other map, unmap or write-populate may overlap a claimed range (it gets
//!   [`Error::Busy`] at once and may retry; nothing waits for another CPU's
//!   flush);
//! - no unmap prunes a table whose span meets a claim (so the tables on a
//!   claimed range's path stay alive for its lock-free walk);
//! - a fault inside a range being mapped is spurious (the guest re-faults until
//!   the map commits) rather than "not mapped", which a VMM would take for
//!   MMIO.
//!
//! Claims live in the address-space object: a fixed array, no allocator. With
//! every slot taken, one more operation gets [`Error::Busy`] too.

use crate::addr::Gpa;
use crate::error::{Error, Result};

/// Operations that may be in flight at once on one address space.
pub const MAX_CLAIMS: usize = 16;

/// What a claim is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// A map building its pages (the region is added at commit).
    Map,
    /// An unmap between its detach and its reclaim.
    Unmap,
    /// A hypervisor write populating the holes of lazy regions.
    Fill,
    /// A protect changing the rights in the entries.
    Protect,
}

#[derive(Clone, Copy, Debug)]
struct Range {
    start: usize,
    end: usize,
    purpose: Purpose,
}

/// A claimed range; give it back with [`Claims::release`].
#[must_use = "a claim must be released"]
#[derive(Debug)]
pub struct Claim {
    slot: usize,
    start: Gpa,
    end: Gpa,
}

impl Claim {
    /// First byte of the claimed range.
    pub fn start(&self) -> Gpa {
        self.start
    }
    /// One past its last byte.
    pub fn end(&self) -> Gpa {
        self.end
    }
}

/// The claims of one address space (behind its lock).
#[derive(Default)]
pub struct Claims {
    ranges: [Option<Range>; MAX_CLAIMS],
}

impl Claims {
    /// No claims.
    pub const fn new() -> Self {
        Self {
            ranges: [None; MAX_CLAIMS],
        }
    }

    /// True if a claim (other than `except`) overlaps `[start, end)`.
    pub fn overlaps(&self, start: usize, end: usize, except: Option<&Claim>) -> bool {
        self.ranges.iter().enumerate().any(|(i, r)| {
            r.is_some_and(|r| r.start < end && start < r.end) && except.is_none_or(|c| c.slot != i)
        })
    }

    /// True if `gpa` lies in a range being mapped.
    pub fn mapping(&self, gpa: usize) -> bool {
        self.ranges
            .iter()
            .flatten()
            .any(|r| r.purpose == Purpose::Map && r.start <= gpa && gpa < r.end)
    }

    /// Claims `[start, end)`, or [`Error::Busy`] if another claim overlaps it
    /// or every slot is taken.
    pub fn claim(&mut self, start: Gpa, end: Gpa, purpose: Purpose) -> Result<Claim> {
        let (s, e) = (start.as_usize(), end.as_usize());
        if self.overlaps(s, e, None) {
            return Err(Error::Busy);
        }
        let (slot, free) = self
            .ranges
            .iter_mut()
            .enumerate()
            .find(|(_, r)| r.is_none())
            .ok_or(Error::Busy)?;
        *free = Some(Range {
            start: s,
            end: e,
            purpose,
        });
        Ok(Claim { slot, start, end })
    }

    /// Widens `claim` to cover `[start, end)` as well (an unmap whose detach
    /// pruned tables spanning more than the unmapped range).
    pub fn widen(&mut self, claim: &mut Claim, start: Gpa, end: Gpa) -> Result {
        let r = self
            .ranges
            .get_mut(claim.slot)
            .and_then(Option::as_mut)
            .ok_or(Error::Internal)?;
        r.start = r.start.min(start.as_usize());
        r.end = r.end.max(end.as_usize());
        claim.start = Gpa::from_usize(r.start);
        claim.end = Gpa::from_usize(r.end);
        Ok(())
    }

    /// Gives a claim back.
    pub fn release(&mut self, claim: Claim) {
        if let Some(r) = self.ranges.get_mut(claim.slot) {
            *r = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(x: usize) -> Gpa {
        Gpa::from_usize(x)
    }

    #[test]
    fn overlapping_claims_are_busy_and_release_frees_the_slot() {
        let mut c = Claims::new();
        let a = c.claim(g(0x1000), g(0x3000), Purpose::Map).unwrap();
        assert_eq!(
            c.claim(g(0x2000), g(0x4000), Purpose::Unmap).unwrap_err(),
            Error::Busy
        );
        let b = c.claim(g(0x3000), g(0x4000), Purpose::Unmap).unwrap();
        assert!(c.mapping(0x1000) && !c.mapping(0x3000));
        assert!(!c.overlaps(0x1000, 0x3000, Some(&a)));
        c.release(a);
        let a = c.claim(g(0x2000), g(0x3000), Purpose::Fill).unwrap();
        c.release(a);
        c.release(b);
        assert!(!c.overlaps(0, usize::MAX, None));
    }

    #[test]
    fn a_full_table_of_claims_is_busy() {
        let mut c = Claims::new();
        let all: Vec<_> = (0..MAX_CLAIMS)
            .map(|i| c.claim(g(i << 12), g((i + 1) << 12), Purpose::Map).unwrap())
            .collect();
        assert_eq!(
            c.claim(g(1 << 30), g(2 << 30), Purpose::Map).unwrap_err(),
            Error::Busy
        );
        all.into_iter().for_each(|x| c.release(x));
    }

    #[test]
    fn widen_grows_the_claim() {
        let mut c = Claims::new();
        let mut a = c.claim(g(0x1000), g(0x2000), Purpose::Unmap).unwrap();
        c.widen(&mut a, g(0), g(0x20_0000)).unwrap();
        assert_eq!((a.start(), a.end()), (g(0), g(0x20_0000)));
        assert_eq!(
            c.claim(g(0x10_0000), g(0x10_1000), Purpose::Map)
                .unwrap_err(),
            Error::Busy
        );
        c.release(a);
    }
}
