//! Arm VMSAv8-64 stage 2, 4 KiB granule (Arm ARM, DDI 0487, chapter "The
//! AArch64 Virtual Memory System Architecture": "VMSAv8-64 translation table
//! format descriptors", "Stage 2 memory region attributes", "Stage 2 access
//! permissions", "Stage 2 instruction execution permissions").
//!
//! Lookup levels here are numbered from the leaf (level 0 maps 4 KiB): the
//! Arm ARM's level 3 is our level 0, its level 2 our level 1, its level 1 our
//! level 2, its level 0 our level 3.
//!
//! - bits 1:0 — `0b11` a table descriptor at Arm levels 0-2 and a page
//!   descriptor at Arm level 3; `0b01` a block descriptor (Arm level 1:
//!   1 GiB, level 2: 2 MiB; never at level 0 with a 4 KiB granule and
//!   48-bit output addresses); bit 0 = 0 an invalid descriptor, whose
//!   bits 63:1 the hardware ignores (parked entries use them);
//! - output / next-level table address: bits 47:12 (48-bit OA, no FEAT_LPA2);
//! - leaves: MemAttr 5:2 (without FEAT_S2FWB: `0b1111` Normal, inner and
//!   outer write-back cacheable; `0b0001` Device-nGnRE), S2AP 7:6
//!   (`01` read-only, `10` write-only, `11` read/write), SH 9:8 (`11` inner
//!   shareable), AF 10 (set: the library never relies on hardware access
//!   flag management, so a leaf never faults for AF), XN\[1:0\] 54:53
//!   (`0b10`: not executable at EL1 nor EL0 — bit 54 alone, the pre-FEAT_XNX
//!   XN bit), bits 58:55 reserved for software: bit 55 marks owned frames;
//! - table descriptors at stage 2 carry no hierarchical attributes: the
//!   address and `0b11` only.
//!
//! Stage 2 has no hardware-set bits the library relies on: AF (bit 10) is
//! always 1 in leaves, and with FEAT_HAFDBS dirty-state management the
//! hardware only writes S2AP\[1\] of entries whose DBM bit (51) is set, which
//! the library never sets. AF stays in `HW_BITS` so a compare-exchange never
//! fails over it.

use core::fmt;

use memory_addr::PhysAddr;
use page_table_multiarch::{GenericPTE, MappingFlags};

use super::Format;

/// The space's `AXALLOC_CFG_ARM_S2FWB` reaches the encoder as
/// `MappingFlags::USER`, a flag that means nothing at stage 2 (every stage-2
/// access is checked the same way) and that no other path sets for Arm
/// leaves: Normal memory then gets the FWB encoding.
pub const FWB: MappingFlags = MappingFlags::USER;

/// Bits of an Arm stage-2 descriptor.
pub mod bits {
    /// Bit 0: the descriptor is valid.
    pub const VALID: u64 = 1 << 0;
    /// Bits 1:0 of a table descriptor (Arm levels 0-2) or a page
    /// descriptor (Arm level 3).
    pub const TABLE_OR_PAGE: u64 = 0b11;
    /// Bits 1:0 of a block descriptor (Arm levels 1-2).
    pub const BLOCK: u64 = 0b01;
    /// Bits 1:0.
    pub const TYPE_MASK: u64 = 0b11;
    /// Shift of MemAttr\[3:0\] (bits 5:2).
    pub const MEMATTR_SHIFT: u32 = 2;
    /// MemAttr\[3:0\].
    pub const MEMATTR_MASK: u64 = 0b1111 << MEMATTR_SHIFT;
    /// MemAttr `0b1111`: Normal, outer and inner write-back cacheable
    /// (without FEAT_S2FWB).
    pub const MEMATTR_NORMAL_WB: u64 = 0b1111;
    /// MemAttr `0b0001`: Device-nGnRE (with or without FEAT_S2FWB).
    pub const MEMATTR_DEVICE_NGNRE: u64 = 0b0001;
    /// MemAttr `0b0110` under FEAT_S2FWB (HCR_EL2.FWB = 1): Normal
    /// write-back, forced whatever stage 1 says (Arm ARM, "Stage 2 memory
    /// type and Cacheability attributes when FEAT_S2FWB is enabled"; Linux
    /// `MT_S2_FWB_NORMAL`).
    pub const MEMATTR_FWB_NORMAL_WB: u64 = 0b0110;
    /// S2AP\[0\] (bit 6): stage-2 read access.
    pub const S2AP_R: u64 = 1 << 6;
    /// S2AP\[1\] (bit 7): stage-2 write access.
    pub const S2AP_W: u64 = 1 << 7;
    /// SH\[1:0\] (bits 9:8) = `0b11`, inner shareable.
    pub const SH_INNER: u64 = 0b11 << 8;
    /// Access flag (bit 10).
    pub const AF: u64 = 1 << 10;
    /// Output address bits 47:12.
    pub const ADDR_MASK: u64 = 0x0000_ffff_ffff_f000;
    /// XN\[1\] (bit 54): with XN\[0\] = 0, not executable at EL1 nor EL0.
    pub const XN: u64 = 1 << 54;
    /// Software (bit 55, reserved for software use): owned frame.
    pub const OWNED: u64 = 1 << 55;
    /// Software, invalid descriptors only (bit 56): a parked entry.
    pub const PARKED: u64 = 1 << 56;
}
use bits::*;

/// An Arm stage-2 descriptor.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(transparent)]
pub struct ArmS2Entry(u64);

impl fmt::Debug for ArmS2Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ArmS2Entry({:#x})", self.0)
    }
}

impl GenericPTE for ArmS2Entry {
    fn new_page(paddr: PhysAddr, flags: MappingFlags, is_huge: bool) -> Self {
        let mut raw = (paddr.as_usize() as u64 & ADDR_MASK) | AF | SH_INNER;
        raw |= if is_huge { BLOCK } else { TABLE_OR_PAGE };
        if flags.contains(MappingFlags::READ) {
            raw |= S2AP_R;
        }
        if flags.contains(MappingFlags::WRITE) {
            raw |= S2AP_W;
        }
        if !flags.contains(MappingFlags::EXECUTE) {
            raw |= XN;
        }
        let attr = if flags.intersects(MappingFlags::DEVICE | MappingFlags::UNCACHED) {
            MEMATTR_DEVICE_NGNRE
        } else if flags.contains(FWB) {
            MEMATTR_FWB_NORMAL_WB
        } else {
            MEMATTR_NORMAL_WB
        };
        raw |= attr << MEMATTR_SHIFT;
        Self(raw)
    }

    fn new_table(paddr: PhysAddr) -> Self {
        Self((paddr.as_usize() as u64 & ADDR_MASK) | TABLE_OR_PAGE)
    }

    fn paddr(&self) -> PhysAddr {
        PhysAddr::from_usize((self.0 & ADDR_MASK) as usize)
    }

    fn flags(&self) -> MappingFlags {
        let mut f = MappingFlags::empty();
        if self.0 & S2AP_R != 0 {
            f |= MappingFlags::READ;
        }
        if self.0 & S2AP_W != 0 {
            f |= MappingFlags::WRITE;
        }
        if self.0 & XN == 0 {
            f |= MappingFlags::EXECUTE;
        }
        // MemAttr[3:2] = 0b00 (also under FWB, where MemAttr[2] = 0 with
        // [1:0] != 0b00 is a Device type; 0b0110 is Normal): Device.
        if self.0 & (0b1100 << MEMATTR_SHIFT) == 0 {
            f |= MappingFlags::DEVICE;
        }
        if self.0 & MEMATTR_MASK == MEMATTR_FWB_NORMAL_WB << MEMATTR_SHIFT {
            f |= FWB;
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
        self.0 & VALID != 0
    }

    /// A block descriptor. Only meaningful above the leaf level, where
    /// `0b11` is a table (the walker treats level 0 as leaves regardless).
    fn is_huge(&self) -> bool {
        self.0 & TYPE_MASK == BLOCK
    }

    fn clear(&mut self) {
        self.0 = 0;
    }
}

/// Arm stage 2 with `LEVELS` lookup levels (2, 3 or 4: start level 2, 1
/// or 0) and a root of `2^ROOT_ORDER` concatenated tables (0..=4).
pub struct ArmS2<const LEVELS: usize, const ROOT_ORDER: u32>;

impl<const LEVELS: usize, const ROOT_ORDER: u32> Format for ArmS2<LEVELS, ROOT_ORDER> {
    type Pte = ArmS2Entry;
    const LEVELS: usize = LEVELS;
    const ROOT_ORDER: u32 = ROOT_ORDER;
    const GPA_BITS: u32 = 12 + 9 * LEVELS as u32 + ROOT_ORDER;
    // Blocks at Arm levels 1 and 2 only (1 GiB, 2 MiB); with two lookup
    // levels the root is Arm level 2.
    const MAX_LEAF_LEVEL: usize = if LEVELS > 2 { 2 } else { 1 };
    const OWNED: u64 = OWNED;
    const EMPTY: u64 = 0;
    const HW_BITS: u64 = AF;
    const PARK_TAG: u64 = PARKED;
    const ACCESSED: u64 = AF;
    const RIGHTS: u64 = S2AP_R | S2AP_W | XN;
    // Arm ARM D8.3 (invalid descriptors): bits 63:1 are ignored when bit 0
    // is 0; 61:60 are never set in our descriptors.
    const LAZY: u64 = 1 << 60;
    const SEALED: u64 = 1 << 61;
    // Arm ARM, "Translation table entry changes" / "Using break-before-make
    // when updating translation table entries": a change of block size (a
    // block replaced by a table of smaller entries) needs the old entry made
    // invalid and its TLB entries invalidated before the new one is written.
    const BREAK_BEFORE_MAKE: bool = true;

    /// Bits 47:12 hold the output address in place; `hpa` is a 4 KiB-aligned
    /// frame (`Hooks` checks; frames at or above 2^48 are refused at
    /// creation's documented contract).
    #[inline(always)]
    fn leaf_at(template: u64, hpa: crate::addr::Hpa) -> u64 {
        template | (hpa.as_u64() & ADDR_MASK)
    }

    #[inline]
    fn from_raw(raw: u64) -> ArmS2Entry {
        ArmS2Entry(raw)
    }

    #[inline]
    fn addr(raw: u64, _level: usize) -> usize {
        (raw & ADDR_MASK) as usize
    }

    #[inline]
    fn next_table(raw: u64) -> Option<usize> {
        (raw & TYPE_MASK == TABLE_OR_PAGE).then_some((raw & ADDR_MASK) as usize)
    }

    #[inline]
    fn child(raw: u64, level: usize, index: usize) -> u64 {
        let size = super::level_size(level - 1) as u64;
        let addr = (raw & ADDR_MASK) + index as u64 * size;
        // A block at Arm level 2 splits into pages (bits 1:0 = 0b11), a
        // block at level 1 into blocks.
        let kind = if level - 1 == 0 { TABLE_OR_PAGE } else { BLOCK };
        (raw & !(ADDR_MASK | TYPE_MASK)) | addr | kind
    }

    #[inline]
    fn park(raw: u64) -> u64 {
        // Invalid (bit 0 clear): bits 63:1 are ignored by the hardware.
        (raw & !VALID) | PARKED
    }

    #[inline]
    fn is_parked(raw: u64) -> bool {
        raw & (PARKED | VALID) == PARKED
    }

    #[inline]
    fn unpark(raw: u64) -> u64 {
        (raw & !PARKED) | VALID
    }
}

/// VTCR_EL2 fields for an address space of `gpa_bits` walked in `levels`
/// lookup levels, 4 KiB granule (Arm ARM, "VTCR_EL2, Virtualization
/// Translation Control Register"): T0SZ (5:0) = 64 - gpa_bits; SL0 (7:6)
/// with TG0 = 4 KiB: 0 start at level 2, 1 level 1, 2 level 0; IRGN0 (9:8)
/// and ORGN0 (11:10) = 0b01, write-back read/write-allocate table walks;
/// SH0 (13:12) = 0b11 inner shareable; TG0 (15:14) = 0b00, 4 KiB.
pub const fn vtcr(gpa_bits: u32, levels: usize) -> u64 {
    let t0sz = (64 - gpa_bits) as u64;
    let sl0 = (levels as u64).saturating_sub(2);
    t0sz | (sl0 << 6) | (0b01 << 8) | (0b01 << 10) | (0b11 << 12)
}

/// Lookup levels and root order for an IPA width (32..=48): the fewest
/// levels, concatenating up to 16 root tables, as Linux KVM does
/// (`stage2_pgtable_levels(ipa) = ARM64_HW_PGTABLE_LEVELS(ipa - 4)`).
pub const fn shape(gpa_bits: u32) -> (usize, u32) {
    let levels = ((gpa_bits - 8) / 9) as usize;
    let root_bits = gpa_bits - 12 - 9 * (levels as u32 - 1);
    (levels, root_bits.saturating_sub(9))
}
