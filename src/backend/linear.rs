//! The linear backend: `[gpa, gpa + size)` maps to `[hpa, hpa + size)`, with
//! the largest leaves that both addresses and the remaining size allow.
//! Linear frames belong to the host: they are never marked owned, so the
//! library never frees them.

use page_table_multiarch::MappingFlags;

use crate::addr::{Gpa, Hpa};
use crate::error::Result;
use crate::format::{self, Format, level_size};
use crate::frames::Frames;
use crate::table::map::LeafSource;

/// Leaves of one linear mapping.
pub struct Linear {
    gpa: Gpa,
    hpa: Hpa,
    flags: MappingFlags,
    max_level: usize,
}

impl Linear {
    /// `gpa` maps to `hpa`; leaves no larger than `max_level` allows.
    pub fn new(gpa: Gpa, hpa: Hpa, flags: MappingFlags, max_level: usize) -> Self {
        Self {
            gpa,
            hpa,
            flags,
            max_level,
        }
    }

    fn hpa_of(&self, gpa: Gpa) -> Hpa {
        Hpa::from_usize(self.hpa.as_usize() + (gpa.as_usize() - self.gpa.as_usize()))
    }
}

impl<F: Format> LeafSource<F> for Linear {
    const FILL_HOLES: bool = false;

    fn huge_ok(&self, gpa: Gpa, level: usize) -> bool {
        level <= self.max_level
            && self
                .hpa_of(gpa)
                .as_usize()
                .is_multiple_of(level_size(level))
    }

    fn leaf(&mut self, _frames: &Frames<'_>, gpa: Gpa, level: usize) -> Result<u64> {
        Ok(format::leaf::<F>(
            self.hpa_of(gpa),
            self.flags,
            level,
            false,
        ))
    }
}
