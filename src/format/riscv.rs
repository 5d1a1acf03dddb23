//! RISC-V G-stage (the privileged specification, "Hypervisor Extension",
//! "Two-Stage Address Translation" / "Guest Physical Address Translation",
//! and the Sv39/Sv48/Sv57 page-table entry formats it reuses; Svpbmt for
//! PBMT).
//!
//! - bit 0 V, 1 R, 2 W, 3 X, 4 U, 5 G, 6 A, 7 D, 9:8 RSW (software), PPN in
//!   bits 53:10 (the physical address shifted right by 2), 62:61 PBMT
//!   (Svpbmt), 63 N (Svnapot); 60:54 reserved, 0 in valid entries;
//! - a valid entry with R = W = X = 0 points to the next table; such
//!   non-leaf entries have A = D = U = 0 (reserved for non-leaf PTEs) and
//!   PBMT = 0;
//! - leaves have U = 1 — every G-stage access is treated as a user-level
//!   access —, A = 1, and D = 1 when writable, so a hart without hardware
//!   A/D updating (Svade) never faults on them; W without R is reserved
//!   and never produced (every mapping has READ);
//! - megapages (level 1) and gigapages (level 2) need a PPN aligned to their
//!   size, or the access faults (misaligned superpage); the library only
//!   places them aligned;
//! - the root table of SvNNx4 is 16 KiB (2048 entries, 2 extra GPA bits),
//!   16 KiB aligned: `ROOT_ORDER` 2;
//! - an invalid entry (V = 0) leaves bits 63:1 to software: parked entries
//!   keep their bits there with bit 58 marking them.
//!
//! DEVICE leaves get PBMT = IO (2) only with `AXALLOC_CFG_RISCV_SVPBMT`;
//! without it PBMT stays 0 and the memory type is the PMA of the host
//! address (the encoder is given DEVICE only when the flag is set).

use core::fmt;

use memory_addr::PhysAddr;
use page_table_multiarch::{GenericPTE, MappingFlags};

use super::Format;

/// Bits of a RISC-V G-stage PTE.
pub mod bits {
    /// Valid.
    pub const V: u64 = 1 << 0;
    /// Readable.
    pub const R: u64 = 1 << 1;
    /// Writable.
    pub const W: u64 = 1 << 2;
    /// Executable.
    pub const X: u64 = 1 << 3;
    /// User: 1 in every G-stage leaf.
    pub const U: u64 = 1 << 4;
    /// Global (never set).
    pub const G: u64 = 1 << 5;
    /// Accessed.
    pub const A: u64 = 1 << 6;
    /// Dirty.
    pub const D: u64 = 1 << 7;
    /// R | W | X: any set makes a valid entry a leaf.
    pub const RWX: u64 = R | W | X;
    /// Shift of the PPN field.
    pub const PPN_SHIFT: u32 = 10;
    /// PPN, bits 53:10 (44 bits).
    pub const PPN_MASK: u64 = ((1 << 44) - 1) << PPN_SHIFT;
    /// Software (RSW bit 8): the frame came from `alloc_frame`.
    pub const OWNED: u64 = 1 << 8;
    /// Shift of the Svpbmt PBMT field (bits 62:61).
    pub const PBMT_SHIFT: u32 = 61;
    /// PBMT = IO (2): non-cacheable, strongly ordered I/O.
    pub const PBMT_IO: u64 = 2 << PBMT_SHIFT;
    /// PBMT field.
    pub const PBMT_MASK: u64 = 3 << PBMT_SHIFT;
    /// Software, invalid entries only (bit 58): a parked entry.
    pub const PARKED: u64 = 1 << 58;
}
use bits::*;

/// Physical address → PPN field.
#[inline(always)]
const fn ppn(pa: u64) -> u64 {
    (pa >> 2) & PPN_MASK
}

/// PPN field → physical address.
#[inline(always)]
const fn pa(raw: u64) -> u64 {
    (raw & PPN_MASK) << 2
}

/// A RISC-V G-stage PTE.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(transparent)]
pub struct RiscvEntry(u64);

impl fmt::Debug for RiscvEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RiscvEntry({:#x})", self.0)
    }
}

impl GenericPTE for RiscvEntry {
    fn new_page(paddr: PhysAddr, flags: MappingFlags, _is_huge: bool) -> Self {
        // Leaves look the same at every level.
        let mut raw = ppn(paddr.as_usize() as u64) | V | U | A;
        if flags.contains(MappingFlags::READ) {
            raw |= R;
        }
        if flags.contains(MappingFlags::WRITE) {
            raw |= W | D;
        }
        if flags.contains(MappingFlags::EXECUTE) {
            raw |= X;
        }
        if flags.contains(MappingFlags::DEVICE) {
            raw |= PBMT_IO;
        }
        Self(raw)
    }

    fn new_table(paddr: PhysAddr) -> Self {
        Self(ppn(paddr.as_usize() as u64) | V)
    }

    fn paddr(&self) -> PhysAddr {
        PhysAddr::from_usize(pa(self.0) as usize)
    }

    fn flags(&self) -> MappingFlags {
        let mut f = MappingFlags::empty();
        if self.0 & R != 0 {
            f |= MappingFlags::READ;
        }
        if self.0 & W != 0 {
            f |= MappingFlags::WRITE;
        }
        if self.0 & X != 0 {
            f |= MappingFlags::EXECUTE;
        }
        if self.0 & U != 0 {
            f |= MappingFlags::USER;
        }
        if self.0 & PBMT_MASK == PBMT_IO {
            f |= MappingFlags::DEVICE;
        }
        f
    }

    fn set_paddr(&mut self, paddr: PhysAddr) {
        self.0 = (self.0 & !PPN_MASK) | ppn(paddr.as_usize() as u64);
    }

    fn set_flags(&mut self, flags: MappingFlags, is_huge: bool) {
        let keep = self.0 & (PPN_MASK | OWNED);
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
        self.0 & V != 0
    }

    /// A leaf (R, W or X set); above level 0 that is a mega/giga page.
    fn is_huge(&self) -> bool {
        self.0 & RWX != 0
    }

    fn clear(&mut self) {
        self.0 = 0;
    }
}

/// RISC-V G-stage with `LEVELS` levels (3: Sv39x4, 4: Sv48x4, 5: Sv57x4)
/// and a 16 KiB root.
pub struct Riscv<const LEVELS: usize>;

/// Sv39x4: 41-bit guest-physical addresses.
pub type Sv39x4 = Riscv<3>;
/// Sv48x4: 50-bit guest-physical addresses.
pub type Sv48x4 = Riscv<4>;
/// Sv57x4: 59-bit guest-physical addresses.
pub type Sv57x4 = Riscv<5>;

impl<const LEVELS: usize> Format for Riscv<LEVELS> {
    type Pte = RiscvEntry;
    const LEVELS: usize = LEVELS;
    const ROOT_ORDER: u32 = 2;
    const GPA_BITS: u32 = 12 + 9 * LEVELS as u32 + 2;
    // Megapages and gigapages; terapages (Sv48x4 level 3) are not produced.
    const MAX_LEAF_LEVEL: usize = 2;
    const OWNED: u64 = OWNED;
    const EMPTY: u64 = 0;
    const HW_BITS: u64 = A | D;
    const PARK_TAG: u64 = PARKED;
    const ACCESSED: u64 = A;
    const RIGHTS: u64 = R | W | X | D;
    // Privileged spec, "Sv39 Implementation" (V = 0: the other bits are
    // ignored); 60:59 are reserved in valid leaves, so never set in the
    // leaf a sealed entry keeps.
    const LAZY: u64 = 1 << 59;
    const SEALED: u64 = 1 << 60;

    #[inline]
    fn from_raw(raw: u64) -> RiscvEntry {
        RiscvEntry(raw)
    }

    #[inline]
    fn addr(raw: u64, _level: usize) -> usize {
        pa(raw) as usize
    }

    #[inline]
    fn next_table(raw: u64) -> Option<usize> {
        (raw & (V | RWX) == V).then_some(pa(raw) as usize)
    }

    #[inline]
    fn child(raw: u64, level: usize, index: usize) -> u64 {
        let size = super::level_size(level - 1) as u64;
        let addr = pa(raw) + index as u64 * size;
        (raw & !PPN_MASK) | ppn(addr)
    }

    #[inline]
    fn park(raw: u64) -> u64 {
        (raw & !V) | PARKED
    }

    #[inline]
    fn is_parked(raw: u64) -> bool {
        raw & (PARKED | V) == PARKED
    }

    #[inline]
    fn unpark(raw: u64) -> u64 {
        (raw & !PARKED) | V
    }
}

/// hgatp MODE for `levels` (privileged spec, "Hypervisor Guest Address
/// Translation and Protection Register (hgatp)"): 8 Sv39x4, 9 Sv48x4,
/// 10 Sv57x4.
pub const fn hgatp(root: u64, levels: usize) -> u64 {
    let mode = (levels as u64 + 5) << 60;
    // VMID (57:44) = 0; PPN (43:0) of the 16 KiB-aligned root.
    mode | (root >> 12)
}
