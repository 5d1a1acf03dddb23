//! AMD NPT (AMD APM vol. 2, "Nested Paging" and "Long-Mode Page Translation"):
//! the x86-64 long-mode table format, walked with the guest treated as a user
//! access, so U/S must be 1 at every level.
//!
//! - bit 0 P (present), 1 R/W, 2 U/S, 3 PWT, 4 PCD, 5 A, 6 D (leaves),
//!   7 PS in a PDPE/PDE that maps a 1 GiB / 2 MiB page (PAT in a 4 KiB PTE),
//!   8 G, 11:9 AVL (software), 51:12 address, 63 NX;
//! - non-leaf entries: P|RW|US, permissions are decided at the leaf;
//! - DEVICE leaves use PWT|PCD (PAT entry 3 = UC with the default PAT);
//! - a not-present entry (P = 0) leaves bits 63:1 to software;
//! - in a 2 MiB / 1 GiB leaf, bit 12 is PAT and the address is bits 51:21 /
//!   51:30 (APM vol. 2, "2-Mbyte PDE" / "1-Gbyte PDPE" formats); in a 4 KiB
//!   PTE, PAT is bit 7. Addresses of huge leaves are decoded without bit 12,
//!   and a split moves PAT from bit 12 to bit 7 of the new PTEs.

use core::fmt;

use memory_addr::PhysAddr;
use page_table_multiarch::{GenericPTE, MappingFlags};

use super::Format;

/// Bits of an NPT entry.
pub mod bits {
    /// Present.
    pub const PRESENT: u64 = 1 << 0;
    /// Writable.
    pub const WRITE: u64 = 1 << 1;
    /// User: required at every level of a nested table.
    pub const USER: u64 = 1 << 2;
    /// Page-level write-through.
    pub const PWT: u64 = 1 << 3;
    /// Page-level cache disable.
    pub const PCD: u64 = 1 << 4;
    /// Accessed (set by the processor).
    pub const ACCESSED: u64 = 1 << 5;
    /// Dirty (set by the processor, leaves).
    pub const DIRTY: u64 = 1 << 6;
    /// Page size: this PDPE/PDE is a 1 GiB / 2 MiB leaf.
    pub const HUGE: u64 = 1 << 7;
    /// Software (AVL bit 9): the frame came from `alloc_frame`.
    pub const OWNED: u64 = 1 << 9;
    /// Software (AVL bit 10), non-present entries only: a parked entry.
    pub const PARKED: u64 = 1 << 10;
    /// Host-physical address bits 51:12.
    pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
    /// No-execute.
    pub const NX: u64 = 1 << 63;
    /// PAT index bit in a 2 MiB / 1 GiB leaf.
    pub const PAT_HUGE: u64 = 1 << 12;
    /// PAT index bit in a 4 KiB leaf (the PS position of upper levels).
    pub const PAT_4K: u64 = 1 << 7;
}
use bits::*;

/// An NPT entry.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(transparent)]
pub struct NptEntry(u64);

impl fmt::Debug for NptEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NptEntry({:#x})", self.0)
    }
}

impl GenericPTE for NptEntry {
    fn new_page(paddr: PhysAddr, flags: MappingFlags, is_huge: bool) -> Self {
        let mut raw = (paddr.as_usize() as u64 & ADDR_MASK) | PRESENT | USER;
        if flags.contains(MappingFlags::WRITE) {
            raw |= WRITE;
        }
        if !flags.contains(MappingFlags::EXECUTE) {
            raw |= NX;
        }
        if flags.intersects(MappingFlags::DEVICE | MappingFlags::UNCACHED) {
            raw |= PWT | PCD;
        }
        if is_huge {
            raw |= HUGE;
        }
        Self(raw)
    }

    fn new_table(paddr: PhysAddr) -> Self {
        Self((paddr.as_usize() as u64 & ADDR_MASK) | PRESENT | WRITE | USER)
    }

    fn paddr(&self) -> PhysAddr {
        // Only meaningful without the level for 4 KiB PTEs and tables;
        // the walker decodes with `Npt::addr`, which knows the level.
        PhysAddr::from_usize((self.0 & ADDR_MASK) as usize)
    }

    fn flags(&self) -> MappingFlags {
        let mut f = MappingFlags::empty();
        if self.0 & PRESENT != 0 {
            f |= MappingFlags::READ;
        }
        if self.0 & WRITE != 0 {
            f |= MappingFlags::WRITE;
        }
        if self.0 & NX == 0 {
            f |= MappingFlags::EXECUTE;
        }
        if self.0 & USER != 0 {
            f |= MappingFlags::USER;
        }
        if self.0 & PCD != 0 {
            f |= MappingFlags::DEVICE;
        }
        f
    }

    fn set_paddr(&mut self, paddr: PhysAddr) {
        self.0 = (self.0 & !ADDR_MASK) | (paddr.as_usize() as u64 & ADDR_MASK);
    }

    fn set_flags(&mut self, flags: MappingFlags, is_huge: bool) {
        let keep = self.0 & (ADDR_MASK | OWNED);
        *self = Self::new_page(PhysAddr::from_usize(0), flags, is_huge);
        self.0 |= keep;
    }

    fn bits(self) -> usize {
        self.0 as usize
    }

    fn is_unused(&self) -> bool {
        self.0 == 0
    }

    fn is_present(&self) -> bool {
        self.0 & PRESENT != 0
    }

    fn is_huge(&self) -> bool {
        self.0 & HUGE != 0
    }

    fn clear(&mut self) {
        self.0 = 0;
    }
}

/// The AMD NPT format with `LEVELS` levels: 4 (48-bit guest-physical
/// addresses) or 5 (57-bit; the same entries, one more level).
pub struct NptN<const LEVELS: usize>;

/// AMD NPT, 4 levels, 48-bit guest-physical addresses.
pub type Npt = NptN<4>;
/// AMD NPT, 5 levels, 57-bit guest-physical addresses.
pub type Npt5 = NptN<5>;

impl<const LEVELS: usize> Format for NptN<LEVELS> {
    type Pte = NptEntry;
    const LEVELS: usize = LEVELS;
    const ROOT_ORDER: u32 = 0;
    const GPA_BITS: u32 = 12 + 9 * LEVELS as u32;
    const MAX_LEAF_LEVEL: usize = 2;
    const OWNED: u64 = OWNED;
    const EMPTY: u64 = 0;
    const HW_BITS: u64 = ACCESSED | DIRTY;
    const PARK_TAG: u64 = PARKED;
    const ACCESSED: u64 = ACCESSED;
    const RIGHTS: u64 = WRITE | NX;
    // APM vol. 2, "Not-present" entries: with P = 0 bits 63:1 are available
    // to software; 61:60 are never set in our leaves (protection keys are
    // 62:59 in a present leaf and stay 0).
    const LAZY: u64 = 1 << 60;
    const SEALED: u64 = 1 << 61;

    /// Bits 51:12 hold the frame address in place (SDM / APM tables cited
    /// above); `hpa` is a 4 KiB-aligned frame below 2^52 (`Hooks` checks).
    #[inline(always)]
    fn leaf_at(template: u64, hpa: crate::addr::Hpa) -> u64 {
        template | (hpa.as_u64() & ADDR_MASK)
    }

    #[inline]
    fn from_raw(raw: u64) -> NptEntry {
        NptEntry(raw)
    }

    #[inline]
    fn addr(raw: u64, level: usize) -> usize {
        let mask = if level > 0 && raw & HUGE != 0 {
            ADDR_MASK & !PAT_HUGE
        } else {
            ADDR_MASK
        };
        (raw & mask) as usize
    }

    #[inline]
    fn next_table(raw: u64) -> Option<usize> {
        (raw & PRESENT != 0 && raw & HUGE == 0).then_some((raw & ADDR_MASK) as usize)
    }

    #[inline]
    fn child(raw: u64, level: usize, index: usize) -> u64 {
        let size = super::level_size(level - 1) as u64;
        let base = Self::addr(raw, level) as u64;
        let addr = base + index as u64 * size;
        let mut bits = raw & !(ADDR_MASK);
        if level - 1 == 0 {
            // PS goes; PAT moves from bit 12 to bit 7.
            bits &= !HUGE;
            if raw & PAT_HUGE != 0 {
                bits |= PAT_4K;
            }
        } else if raw & PAT_HUGE != 0 {
            bits |= PAT_HUGE;
        }
        bits | addr
    }

    #[inline]
    fn park(raw: u64) -> u64 {
        (raw & !PRESENT) | PARKED
    }

    #[inline]
    fn is_parked(raw: u64) -> bool {
        raw & (PARKED | PRESENT) == PARKED
    }

    #[inline]
    fn unpark(raw: u64) -> u64 {
        (raw & !PARKED) | PRESENT
    }
}
