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

pub mod ept;
pub mod npt;

use memory_addr::PhysAddr;
use page_table_multiarch::{GenericPTE, MappingFlags};

use crate::addr::Hpa;

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

    /// Wraps raw bits.
    fn from_raw(raw: u64) -> Self::Pte;
    /// A non-present entry that remembers `raw` (present or not, never 0).
    fn park(raw: u64) -> u64;
    /// True if `raw` is a parked entry.
    fn is_parked(raw: u64) -> bool;
    /// The entry `park` was given.
    fn unpark(raw: u64) -> u64;
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

/// The runtime choice of format, from `AXALLOC_FORMAT_*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormatKind {
    /// Intel EPT, 4 levels.
    X86Ept,
    /// AMD NPT (x86-64 long-mode format with U=1), 4 levels.
    X86Npt,
}

impl FormatKind {
    /// Width of the guest-physical space of this format.
    pub const fn gpa_bits(self) -> u32 {
        match self {
            Self::X86Ept => ept::Ept::GPA_BITS,
            Self::X86Npt => npt::Npt::GPA_BITS,
        }
    }
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
            $crate::format::FormatKind::X86Npt => {
                type $F = $crate::format::npt::Npt;
                $body
            }
        }
    };
}
pub(crate) use with_format;
