//! Entry formats: what one stage-2 table entry means.
//!
//! Each architecture's encoder is a small file of bit definitions that
//! implements page_table_multiarch's [`GenericPTE`] (the ecosystem's
//! vocabulary: `new_page`, `new_table`, `paddr`, `flags`, `is_present`,
//! `is_huge`) plus the few things a stage-2 table needs beyond it, collected in
//! [`Format`]. Everything else — walking, installing, splitting, reclaiming —
//! is format-independent and lives in `table.rs`.
//!
//! Two software conventions, both encoded in bits the hardware ignores:
//! - **owned**: a leaf whose frame the library obtained from `alloc_frame`
//!   (an alloc-backend page). Only owned leaves are ever given back, so a
//!   linear (passthrough) page can never be freed by mistake.
//! - **parked**: a *non-present* entry that still names a frame or table. It is
//!   how a change is prepared without the hardware seeing it (map: entries
//!   waiting for commit) and how a removed entry remembers what to free after
//!   the TLB flush (unmap). Parked entries exist only while the address space
//!   is write-locked, so no reader ever observes one.

pub mod arm;
pub mod ept;
pub mod npt;
pub mod riscv;

use memory_addr::PhysAddr;
use page_table_multiarch::{GenericPTE, MappingFlags};

use crate::addr::Hpa;
use crate::error::{Error, Result};

/// One stage-2 entry format. Levels are numbered from the leaf: level 0 maps
/// 4 KiB, level 1 2 MiB, level 2 1 GiB, ..., level `LEVELS - 1` is the root.
pub trait Format: Sized + 'static {
    /// The entry type, speaking page_table_multiarch's vocabulary.
    type Pte: GenericPTE;
    /// Number of table levels (4 for x86 EPT/NPT).
    const LEVELS: usize;
    /// The root table is `2^ROOT_ORDER` contiguous frames (ARM stage-2
    /// concatenated roots, RISC-V x4 roots); 0 for x86.
    const ROOT_ORDER: u32;
    /// Width of the guest-physical space this format translates.
    const GPA_BITS: u32;
    /// The highest level at which a leaf (huge page) may be placed.
    const MAX_LEAF_LEVEL: usize;
    /// Software bit: the leaf's frame came from `alloc_frame` (ignored by hardware).
    const OWNED: u64;
    /// The value of an entry that maps nothing (0, or EPT's suppress-#VE bit).
    /// New tables are filled with it.
    const EMPTY: u64;
    /// Bits the hardware sets in present entries (accessed, dirty): never
    /// lost — changes to live entries use compare-exchange, and a split copies
    /// them into every child.
    const HW_BITS: u64;

    /// Host-physical address named by the present entry `raw` at `level`.
    fn addr(raw: u64, level: usize) -> usize;
    /// The next table `raw` (at a level above 0) links, if it is a present
    /// non-leaf entry: the walk's hot test, a couple of bit operations.
    fn next_table(raw: u64) -> Option<usize>;
    /// Child `index` (0..512) of the huge leaf `raw` at `level` (> 0): the
    /// same rights, memory type, software and hardware (A/D) bits, mapping
    /// the `index`-th piece of the parent page, as a leaf at `level - 1`.
    fn child(raw: u64, level: usize, index: usize) -> u64;

    /// The 4 KiB leaf `template` (an encoded leaf whose address field is
    /// zero) pointing at the frame `hpa`: the fault's leaf, one operation.
    /// The default goes through [`with_addr`]; formats whose address field
    /// holds the address in place override it with a plain OR.
    #[inline(always)]
    fn leaf_at(template: u64, hpa: Hpa) -> u64 {
        with_addr::<Self>(template, hpa)
    }

    /// A valid huge leaf may be replaced by a table only through an invalid
    /// entry and a TLB flush (Arm "break-before-make"); x86 allows the
    /// direct replacement when the translation is unchanged.
    const BREAK_BEFORE_MAKE: bool = false;

    /// Wraps raw bits.
    fn from_raw(raw: u64) -> Self::Pte;
    /// A non-present entry that remembers `raw` (present or not, never 0).
    fn park(raw: u64) -> u64;
    /// True if `raw` is a parked entry.
    fn is_parked(raw: u64) -> bool;
    /// The entry `park` was given.
    fn unpark(raw: u64) -> u64;

    /// The bit [`Format::park`] sets (software, non-present entries only).
    const PARK_TAG: u64;
    /// The bits that hold a present leaf's rights (read, write, execute, and
    /// what must change with them: RISC-V's D, set in every writable leaf).
    const RIGHTS: u64;
    /// The accessed bit of a leaf: EPT bit 8 (with EPTP bit 6, A/D enable),
    /// NPT bit 5, Arm AF (bit 10), RISC-V A (bit 6). Access tracking clears
    /// it; the hardware sets it again on the next access where it manages
    /// A/D, and elsewhere the access faults and the fault sets it.
    const ACCESSED: u64;
    /// Software, non-present entries only: a *lazy* entry — a page never
    /// touched whose rights differ from its region's (set by protect); the
    /// rights wait in bits 14:12 ([`Format::lazy`]). Also set in a parked
    /// entry whose reclaim must leave such an entry behind (a discard of a
    /// protected page). Chosen among the bits every format's hardware
    /// ignores in a non-present entry and none of our encoders uses.
    const LAZY: u64;
    /// Software, non-present entries only: a *sealed* leaf — a page whose
    /// guest rights are none (protect with flags 0): it keeps its frame and
    /// contents; the entry is the leaf parked under this tag instead of
    /// [`Format::PARK_TAG`].
    const SEALED: u64;

    /// The lazy entry with guest rights `rights` (a subset of READ | WRITE |
    /// EXEC in `Flags` bits; 0 = no access).
    #[inline]
    fn lazy(rights: u32) -> u64 {
        Self::EMPTY | Self::LAZY | (u64::from(rights & 7) << 12)
    }

    /// True if `raw` is a lazy entry.
    #[inline]
    fn is_lazy(raw: u64) -> bool {
        raw & Self::LAZY != 0 && !Self::from_raw(raw).is_present() && !Self::is_parked(raw)
    }

    /// The rights a lazy entry carries.
    #[inline]
    fn lazy_rights(raw: u64) -> u32 {
        ((raw >> 12) & 7) as u32
    }

    /// The sealed form of the present leaf `leaf` (see [`Format::SEALED`]).
    #[inline]
    fn seal(leaf: u64) -> u64 {
        (Self::park(leaf) & !Self::PARK_TAG) | Self::SEALED
    }

    /// True if `raw` is a sealed leaf.
    #[inline]
    fn is_sealed(raw: u64) -> bool {
        raw & Self::SEALED != 0 && !Self::from_raw(raw).is_present() && !Self::is_parked(raw)
    }

    /// The present leaf a sealed entry keeps (with the rights it had).
    #[inline]
    fn unseal(raw: u64) -> u64 {
        Self::unpark((raw & !Self::SEALED) | Self::PARK_TAG)
    }

    /// The present leaf `leaf` with the guest rights of `flags` (READ must
    /// be in it): every other bit kept — address, memory type, software
    /// bits, and what the hardware set (accessed/dirty).
    #[inline]
    fn with_rights(leaf: u64, flags: MappingFlags) -> u64 {
        let enc = Self::Pte::new_page(PhysAddr::from_usize(0), flags, false).bits() as u64;
        (leaf & !Self::RIGHTS) | (enc & Self::RIGHTS) | (leaf & Self::RIGHTS & Self::HW_BITS)
    }
}

/// Guest rights of a present leaf, in `Flags` bits (READ 1, WRITE 2, EXEC 4).
#[inline]
pub fn leaf_rights<F: Format>(raw: u64) -> u32 {
    let m = leaf_flags::<F>(raw);
    let mut r = 0;
    if m.contains(MappingFlags::READ) {
        r |= 1;
    }
    if m.contains(MappingFlags::WRITE) {
        r |= 2;
    }
    if m.contains(MappingFlags::EXECUTE) {
        r |= 4;
    }
    r
}

/// What an entry means to the walker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// Not present and carrying nothing.
    Empty,
    /// Not present, but naming a frame or table (see the module docs).
    Parked,
    /// Points to a next-level table.
    Table(Hpa),
    /// Maps a page (4 KiB at level 0, larger above).
    Leaf {
        /// First byte of the page.
        hpa: Hpa,
        /// The frame came from `alloc_frame` and goes back through `free_frame`.
        owned: bool,
    },
    /// Not present: a page never touched, with its own guest rights
    /// (`Flags` bits; see [`Format::LAZY`]). Faults install a frame with them.
    Lazy {
        /// READ 1 | WRITE 2 | EXEC 4; 0 = no access.
        rights: u32,
    },
    /// Not present: a leaf whose guest rights are none, keeping its page
    /// (see [`Format::SEALED`]).
    Sealed {
        /// First byte of the page.
        hpa: Hpa,
        /// As for [`Entry::Leaf`].
        owned: bool,
    },
}

/// Encodes a leaf at `level` mapping `hpa` with `flags`.
#[inline]
pub fn leaf<F: Format>(hpa: Hpa, flags: MappingFlags, level: usize, owned: bool) -> u64 {
    let pte = F::Pte::new_page(PhysAddr::from_usize(hpa.as_usize()), flags, level > 0);
    pte.bits() as u64 | if owned { F::OWNED } else { 0 }
}

/// `template` (an encoded leaf) pointed at `hpa` instead: the flags are
/// encoded once per operation, not once per page.
#[inline]
pub fn with_addr<F: Format>(template: u64, hpa: Hpa) -> u64 {
    let mut pte = F::from_raw(template);
    pte.set_paddr(PhysAddr::from_usize(hpa.as_usize()));
    pte.bits() as u64
}

/// Encodes a non-leaf entry pointing to the table at `hpa`.
#[inline]
pub fn table<F: Format>(hpa: Hpa) -> u64 {
    F::Pte::new_table(PhysAddr::from_usize(hpa.as_usize())).bits() as u64
}

/// Decodes `raw` found at `level`.
#[inline]
pub fn decode<F: Format>(raw: u64, level: usize) -> Entry {
    if raw == F::EMPTY {
        return Entry::Empty;
    }
    let pte = F::from_raw(raw);
    if !pte.is_present() {
        return if F::is_parked(raw) {
            Entry::Parked
        } else if raw & F::LAZY != 0 {
            Entry::Lazy {
                rights: F::lazy_rights(raw),
            }
        } else if raw & F::SEALED != 0 {
            let leaf = F::unseal(raw);
            Entry::Sealed {
                hpa: Hpa::from_usize(F::addr(leaf, level)),
                owned: leaf & F::OWNED != 0,
            }
        } else {
            Entry::Empty
        };
    }
    let hpa = Hpa::from_usize(F::addr(raw, level));
    if level == 0 || pte.is_huge() {
        Entry::Leaf {
            hpa,
            owned: raw & F::OWNED != 0,
        }
    } else {
        Entry::Table(hpa)
    }
}

/// The mapping flags of a present leaf.
#[inline]
pub fn leaf_flags<F: Format>(raw: u64) -> MappingFlags {
    F::from_raw(raw).flags()
}

/// True if the present leaf `raw` allows every access in `access`
/// (a subset of READ | WRITE | EXECUTE).
#[inline]
pub fn leaf_allows<F: Format>(raw: u64, access: MappingFlags) -> bool {
    leaf_flags::<F>(raw).contains(access)
}

/// Bytes mapped by one entry at `level`.
#[inline]
pub const fn level_size(level: usize) -> usize {
    1usize << (12 + 9 * level)
}

/// The runtime choice of format and shape (levels, root tables), from
/// `AXALLOC_FORMAT_*` and `gpa_bits`: each is its own monomorphised type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormatKind {
    /// Intel EPT, 4 levels (48-bit).
    X86Ept,
    /// Intel EPT, 5 levels (57-bit).
    X86Ept5,
    /// AMD NPT (x86-64 long-mode format with U=1), 4 levels (48-bit).
    X86Npt,
    /// AMD NPT, 5 levels (57-bit, LA57 host).
    X86Npt5,
    /// RISC-V G-stage Sv39x4 (41-bit).
    Sv39x4,
    /// RISC-V G-stage Sv48x4 (50-bit).
    Sv48x4,
    /// RISC-V G-stage Sv57x4 (59-bit).
    Sv57x4,
    /// Arm stage 2, 2 lookup levels (start level 2), 4 root table(s).
    ArmL2R2,
    /// Arm stage 2, 2 lookup levels (start level 2), 8 root table(s).
    ArmL2R3,
    /// Arm stage 2, 2 lookup levels (start level 2), 16 root table(s).
    ArmL2R4,
    /// Arm stage 2, 3 lookup levels (start level 1), 1 root table(s).
    ArmL3R0,
    /// Arm stage 2, 3 lookup levels (start level 1), 2 root table(s).
    ArmL3R1,
    /// Arm stage 2, 3 lookup levels (start level 1), 4 root table(s).
    ArmL3R2,
    /// Arm stage 2, 3 lookup levels (start level 1), 8 root table(s).
    ArmL3R3,
    /// Arm stage 2, 3 lookup levels (start level 1), 16 root table(s).
    ArmL3R4,
    /// Arm stage 2, 4 lookup levels (start level 0), 1 root table(s).
    ArmL4R0,
}

/// Calls `$body` with `$F` bound to the format type of `$kind`, so operations
/// are monomorphised per format while the C handle stays format-agnostic.
macro_rules! with_format {
    ($kind:expr, $F:ident => $body:expr) => {
        match $kind {
            $crate::format::FormatKind::X86Ept => {
                type $F = $crate::format::ept::Ept;
                $body
            }
            $crate::format::FormatKind::X86Ept5 => {
                type $F = $crate::format::ept::Ept5;
                $body
            }
            $crate::format::FormatKind::X86Npt => {
                type $F = $crate::format::npt::Npt;
                $body
            }
            $crate::format::FormatKind::X86Npt5 => {
                type $F = $crate::format::npt::Npt5;
                $body
            }
            $crate::format::FormatKind::Sv39x4 => {
                type $F = $crate::format::riscv::Sv39x4;
                $body
            }
            $crate::format::FormatKind::Sv48x4 => {
                type $F = $crate::format::riscv::Sv48x4;
                $body
            }
            $crate::format::FormatKind::Sv57x4 => {
                type $F = $crate::format::riscv::Sv57x4;
                $body
            }
            $crate::format::FormatKind::ArmL2R2 => {
                type $F = $crate::format::arm::ArmS2<2, 2>;
                $body
            }
            $crate::format::FormatKind::ArmL2R3 => {
                type $F = $crate::format::arm::ArmS2<2, 3>;
                $body
            }
            $crate::format::FormatKind::ArmL2R4 => {
                type $F = $crate::format::arm::ArmS2<2, 4>;
                $body
            }
            $crate::format::FormatKind::ArmL3R0 => {
                type $F = $crate::format::arm::ArmS2<3, 0>;
                $body
            }
            $crate::format::FormatKind::ArmL3R1 => {
                type $F = $crate::format::arm::ArmS2<3, 1>;
                $body
            }
            $crate::format::FormatKind::ArmL3R2 => {
                type $F = $crate::format::arm::ArmS2<3, 2>;
                $body
            }
            $crate::format::FormatKind::ArmL3R3 => {
                type $F = $crate::format::arm::ArmS2<3, 3>;
                $body
            }
            $crate::format::FormatKind::ArmL3R4 => {
                type $F = $crate::format::arm::ArmS2<3, 4>;
                $body
            }
            $crate::format::FormatKind::ArmL4R0 => {
                type $F = $crate::format::arm::ArmS2<4, 0>;
                $body
            }
        }
    };
}
pub(crate) use with_format;

/// A format family as the C API names it (`AXALLOC_FORMAT_*`); the
/// guest-physical width then picks the [`FormatKind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// Intel EPT.
    Ept,
    /// AMD NPT.
    Npt,
    /// Arm VMSAv8-64 stage 2, 4 KiB granule.
    ArmS2,
    /// RISC-V G-stage Sv39x4.
    Sv39x4,
    /// RISC-V G-stage Sv48x4.
    Sv48x4,
    /// RISC-V G-stage Sv57x4.
    Sv57x4,
}

/// What the hardware needs to walk a table (`axalloc_hw_t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Hw {
    /// Host-physical address of the root (its first frame).
    pub root: u64,
    /// Frames in the root: 1, 2..16 (Arm concatenated) or 4 (RISC-V).
    pub root_pages: u32,
    /// Lookup levels, root included.
    pub levels: u32,
    /// EPTP / nCR3 / VTTBR_EL2 / hgatp.
    pub root_pointer: u64,
    /// Arm VTCR_EL2 fields (T0SZ, SL0, IRGN0, ORGN0, SH0, TG0); 0 otherwise.
    pub vtcr: u64,
}

impl FormatKind {
    /// Every format and shape, for tests that hold for all of them.
    #[cfg(test)]
    pub const ALL: [Self; 16] = [
        Self::X86Ept,
        Self::X86Ept5,
        Self::X86Npt,
        Self::X86Npt5,
        Self::Sv39x4,
        Self::Sv48x4,
        Self::Sv57x4,
        Self::ArmL2R2,
        Self::ArmL2R3,
        Self::ArmL2R4,
        Self::ArmL3R0,
        Self::ArmL3R1,
        Self::ArmL3R2,
        Self::ArmL3R3,
        Self::ArmL3R4,
        Self::ArmL4R0,
    ];

    /// The format (and its width) for `family` and the requested
    /// guest-physical width (0: the family's default): EPT / NPT 48 (4
    /// levels) or 57 (5 levels); Arm 32..=48 with the fewest lookup levels
    /// and up to 16 concatenated root tables; RISC-V the mode's width.
    /// Anything else is [`Error::Invalid`].
    pub fn choose(family: Family, gpa_bits: u32) -> Result<(Self, u32)> {
        let kind = match (family, gpa_bits) {
            (Family::Ept, 0 | 48) => Self::X86Ept,
            (Family::Ept, 57) => Self::X86Ept5,
            (Family::Npt, 0 | 48) => Self::X86Npt,
            (Family::Npt, 57) => Self::X86Npt5,
            (Family::Sv39x4, 0 | 41) => Self::Sv39x4,
            (Family::Sv48x4, 0 | 50) => Self::Sv48x4,
            (Family::Sv57x4, 0 | 59) => Self::Sv57x4,
            (Family::ArmS2, 0) => return Self::choose(family, 40),
            (Family::ArmS2, 32..=48) => match arm::shape(gpa_bits) {
                (2, 2) => Self::ArmL2R2,
                (2, 3) => Self::ArmL2R3,
                (2, 4) => Self::ArmL2R4,
                (3, 0) => Self::ArmL3R0,
                (3, 1) => Self::ArmL3R1,
                (3, 2) => Self::ArmL3R2,
                (3, 3) => Self::ArmL3R3,
                (3, 4) => Self::ArmL3R4,
                (4, 0) => Self::ArmL4R0,
                _ => return Err(Error::Internal),
            },
            _ => return Err(Error::Invalid),
        };
        let bits = if gpa_bits == 0 {
            kind.max_gpa_bits()
        } else {
            gpa_bits
        };
        Ok((kind, bits))
    }

    /// The family this format belongs to.
    pub fn family(self) -> Family {
        match self {
            Self::X86Ept | Self::X86Ept5 => Family::Ept,
            Self::X86Npt | Self::X86Npt5 => Family::Npt,
            Self::Sv39x4 => Family::Sv39x4,
            Self::Sv48x4 => Family::Sv48x4,
            Self::Sv57x4 => Family::Sv57x4,
            _ => Family::ArmS2,
        }
    }

    /// Widest guest-physical space the table shape can translate (the
    /// space's own width may be smaller: Arm).
    pub fn max_gpa_bits(self) -> u32 {
        with_format!(self, F => F::GPA_BITS)
    }

    /// Width of the host-physical addresses the entries can name (frames
    /// and linear ranges must lie below): x86 52, Arm 48 (no FEAT_LPA2),
    /// RISC-V 56 (44-bit PPN).
    pub fn hpa_bits(self) -> u32 {
        match self.family() {
            Family::ArmS2 => 48,
            Family::Sv39x4 | Family::Sv48x4 | Family::Sv57x4 => 56,
            Family::Ept | Family::Npt => 52,
        }
    }

    /// Lookup levels, root included.
    pub fn levels(self) -> usize {
        with_format!(self, F => F::LEVELS)
    }

    /// The root is `2^root_order` contiguous frames.
    pub fn root_order(self) -> u32 {
        with_format!(self, F => F::ROOT_ORDER)
    }

    /// The hardware view of a table of this format rooted at `root`,
    /// translating `gpa_bits`.
    pub fn hw(self, root: Hpa, gpa_bits: u32) -> Hw {
        let root = root.as_u64();
        let levels = self.levels();
        let (root_pointer, vtcr) = match self.family() {
            // EPTP (Intel SDM vol. 3C, "Extended-Page-Table Pointer
            // (EPTP)"): bits 2:0 memory type 6 (write-back), bits 5:3 the
            // page-walk length minus 1, bit 6 A/D enable: the processor
            // sets accessed bits, which access tracking reads
            // (`axalloc_young_get`; SDM vol. 3C, "Accessed and Dirty Flags
            // for EPT").
            Family::Ept => (root | 1 << 6 | ((levels as u64 - 1) << 3) | 6, 0),
            // nCR3: the root with PWT = PCD = 0; 5 levels need an LA57 host.
            Family::Npt => (root, 0),
            // VTTBR_EL2: BADDR = the root (aligned to the concatenated
            // tables' size), VMID (63:48) 0, CnP 0.
            Family::ArmS2 => (root, arm::vtcr(gpa_bits, levels)),
            Family::Sv39x4 | Family::Sv48x4 | Family::Sv57x4 => (riscv::hgatp(root, levels), 0),
        };
        Hw {
            root,
            root_pages: 1 << self.root_order(),
            levels: levels as u32,
            root_pointer,
            vtcr,
        }
    }
}
