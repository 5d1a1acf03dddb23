//! Intel EPT (Intel SDM vol. 3C, "EPT Translation Mechanism", tables
//! "Format of an EPT PML4 Entry" ... "Format of an EPT Page-Table Entry").
//!
//! - bits 2:0 read / write / execute; an entry with all three clear is not
//!   present and the processor ignores bits 62:3;
//! - leaves: bits 5:3 EPT memory type (6 = write-back, 0 = uncacheable),
//!   bit 7 = 1 in a PDPTE/PDE that maps a 1 GiB / 2 MiB page;
//! - non-leaf entries: R|W|X and the table address; bits 7:3 must be 0;
//! - bits 8/9 are accessed/dirty when EPT A/D is enabled: the processor may
//!   set them at any time in present entries, so nothing here compares them;
//! - bits 11 and 56:52 are ignored by the processor: bit 52 marks owned frames;
//! - bit 63 is "suppress #VE" (SDM vol. 3C 28.2.2, 25.5.6.1): with the
//!   "EPT-violation #VE" control on, an EPT violation on a not-present entry
//!   whose bit 63 is 0 becomes a #VE *in the guest* instead of a VM exit.
//!   Every not-present entry this library writes has it set — empty entries
//!   are `1 << 63`, not 0, and parked ones keep it — so every lazy fault
//!   reaches the hypervisor, as KVM's `SHADOW_NONPRESENT_VALUE` does. Present
//!   leaves leave it 0: a hypervisor that enables #VE for its own purposes
//!   decides about permission violations itself.

use core::fmt;

use memory_addr::PhysAddr;
use page_table_multiarch::{GenericPTE, MappingFlags};

use super::Format;

/// Bits of an EPT entry.
pub mod bits {
    /// Read access.
    pub const READ: u64 = 1 << 0;
    /// Write access.
    pub const WRITE: u64 = 1 << 1;
    /// Execute access (supervisor execute with mode-based control).
    pub const EXEC: u64 = 1 << 2;
    /// The permission bits; all clear means "not present".
    pub const RWX: u64 = READ | WRITE | EXEC;
    /// Shift of the 3-bit memory type field in leaves.
    pub const MEMTYPE_SHIFT: u32 = 3;
    /// The memory type field.
    pub const MEMTYPE_MASK: u64 = 0b111 << MEMTYPE_SHIFT;
    /// Memory type "uncacheable" (UC).
    pub const MEMTYPE_UC: u64 = 0;
    /// Memory type "write-back" (WB).
    pub const MEMTYPE_WB: u64 = 6;
    /// Page size: this PDPTE/PDE is a 1 GiB / 2 MiB leaf.
    pub const HUGE: u64 = 1 << 7;
    /// Accessed flag (EPT A/D).
    pub const ACCESSED: u64 = 1 << 8;
    /// Dirty flag (EPT A/D, leaves only).
    pub const DIRTY: u64 = 1 << 9;
    /// Host-physical address bits 51:12.
    pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
    /// Software: the frame came from `alloc_frame` (bit 52, ignored).
    pub const OWNED: u64 = 1 << 52;
    /// Software, non-present entries only: a parked entry (bit 62; the
    /// processor ignores bits 62:3 of a not-present entry).
    pub const PARKED: u64 = 1 << 62;
    /// Software, parked entries only: where the permission bits wait (55:53).
    pub const PARKED_RWX_SHIFT: u32 = 53;
    /// Suppress #VE: set in every not-present entry (see module docs).
    pub const SUPPRESS_VE: u64 = 1 << 63;
}
use bits::*;

/// An EPT entry.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(transparent)]
pub struct EptEntry(u64);

impl fmt::Debug for EptEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EptEntry({:#x})", self.0)
    }
}

impl GenericPTE for EptEntry {
    fn new_page(paddr: PhysAddr, flags: MappingFlags, is_huge: bool) -> Self {
        let mut raw = paddr.as_usize() as u64 & ADDR_MASK;
        if flags.contains(MappingFlags::READ) {
            raw |= READ;
        }
        if flags.contains(MappingFlags::WRITE) {
            raw |= WRITE;
        }
        if flags.contains(MappingFlags::EXECUTE) {
            raw |= EXEC;
        }
        let memtype = if flags.intersects(MappingFlags::DEVICE | MappingFlags::UNCACHED) {
            MEMTYPE_UC
        } else {
            MEMTYPE_WB
        };
        raw |= memtype << MEMTYPE_SHIFT;
        if is_huge {
            raw |= HUGE;
        }
        Self(raw)
    }

    fn new_table(paddr: PhysAddr) -> Self {
        Self((paddr.as_usize() as u64 & ADDR_MASK) | RWX)
    }

    fn paddr(&self) -> PhysAddr {
        PhysAddr::from_usize((self.0 & ADDR_MASK) as usize)
    }

    fn flags(&self) -> MappingFlags {
        let mut f = MappingFlags::empty();
        if self.0 & READ != 0 {
            f |= MappingFlags::READ;
        }
        if self.0 & WRITE != 0 {
            f |= MappingFlags::WRITE;
        }
        if self.0 & EXEC != 0 {
            f |= MappingFlags::EXECUTE;
        }
        if (self.0 & MEMTYPE_MASK) >> MEMTYPE_SHIFT == MEMTYPE_UC {
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
        self.0 == Ept::EMPTY
    }

    fn is_present(&self) -> bool {
        self.0 & RWX != 0
    }

    fn is_huge(&self) -> bool {
        self.0 & HUGE != 0
    }

    fn clear(&mut self) {
        self.0 = Ept::EMPTY;
    }
}

/// The Intel EPT format with `LEVELS` levels: 4 (48-bit guest-physical
/// addresses) or 5 (57-bit; the same entries, one more level).
pub struct EptN<const LEVELS: usize>;

/// Intel EPT, 4 levels, 48-bit guest-physical addresses.
pub type Ept = EptN<4>;
/// Intel EPT, 5 levels, 57-bit guest-physical addresses.
pub type Ept5 = EptN<5>;

impl<const LEVELS: usize> Format for EptN<LEVELS> {
    type Pte = EptEntry;
    const LEVELS: usize = LEVELS;
    const ROOT_ORDER: u32 = 0;
    const GPA_BITS: u32 = 12 + 9 * LEVELS as u32;
    const MAX_LEAF_LEVEL: usize = 2;
    const OWNED: u64 = OWNED;
    const EMPTY: u64 = SUPPRESS_VE;
    const HW_BITS: u64 = ACCESSED | DIRTY;
    const PARK_TAG: u64 = PARKED;
    const ACCESSED: u64 = ACCESSED;
    const RIGHTS: u64 = RWX;
    // SDM vol. 3C, 29.3.2: bits 62:3 of an entry with bits 2:0 clear are
    // ignored; 61 and 60 are used by nothing else here (the parked stash is
    // 55:53, the parked tag 62, the owned marker 52).
    const LAZY: u64 = 1 << 61;
    const SEALED: u64 = 1 << 60;

    /// Bits 51:12 hold the frame address in place (SDM / APM tables cited
    /// above); `hpa` is a 4 KiB-aligned frame below 2^52 (`Hooks` checks).
    #[inline(always)]
    fn leaf_at(template: u64, hpa: crate::addr::Hpa) -> u64 {
        template | (hpa.as_u64() & ADDR_MASK)
    }

    #[inline]
    fn from_raw(raw: u64) -> EptEntry {
        EptEntry(raw)
    }

    #[inline]
    fn addr(raw: u64, _level: usize) -> usize {
        // Bits 51:12 in every entry; in 2 MiB / 1 GiB leaves the bits below
        // the page size are reserved (always 0 here).
        (raw & ADDR_MASK) as usize
    }

    #[inline]
    fn next_table(raw: u64) -> Option<usize> {
        (raw & RWX != 0 && raw & HUGE == 0).then_some((raw & ADDR_MASK) as usize)
    }

    #[inline]
    fn child(raw: u64, level: usize, index: usize) -> u64 {
        let size = super::level_size(level - 1) as u64;
        let addr = (raw & ADDR_MASK) + index as u64 * size;
        let huge = if level - 1 == 0 { HUGE } else { 0 };
        (raw & !(ADDR_MASK | huge)) | addr
    }

    #[inline]
    fn park(raw: u64) -> u64 {
        // Not present = bits 2:0 clear; keep the permissions in ignored bits.
        (raw & !RWX) | ((raw & RWX) << PARKED_RWX_SHIFT) | PARKED | SUPPRESS_VE
    }

    #[inline]
    fn is_parked(raw: u64) -> bool {
        raw & (PARKED | RWX) == PARKED
    }

    #[inline]
    fn unpark(raw: u64) -> u64 {
        let rwx = (raw >> PARKED_RWX_SHIFT) & RWX;
        (raw & !(PARKED | SUPPRESS_VE | (RWX << PARKED_RWX_SHIFT))) | rwx
    }
}
