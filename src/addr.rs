//! Typed addresses, so that a guest-physical address can never be passed where
//! a host-physical one is expected (Hafnium's `ipaddr_t`/`paddr_t`).

use memory_addr::{def_usize_addr, def_usize_addr_formatter};

def_usize_addr! {
    /// A guest-physical address (GPA): what the guest believes is physical
    /// memory, translated by the stage-2 table this library maintains.
    pub type Gpa;
    /// A host-physical address (HPA): real memory, as the hooks hand it out.
    pub type Hpa;
}

def_usize_addr_formatter! {
    Gpa = "GPA:{}";
    Hpa = "HPA:{}";
}

/// Size of a frame and of the smallest page: 4 KiB.
pub const FRAME_SIZE: usize = 0x1000;

// The C API speaks `uint64_t`; every conversion to `usize` below relies on this.
const _: () = assert!(usize::BITS == 64, "libaxalloc supports 64-bit hosts only");

impl Gpa {
    /// Converts from the C representation.
    #[inline]
    pub const fn from_u64(v: u64) -> Self {
        Self::from_usize(v as usize)
    }
    /// The address as the C API spells it.
    #[inline]
    pub const fn as_u64(self) -> u64 {
        self.as_usize() as u64
    }
}

impl Hpa {
    /// Converts from the C representation.
    #[inline]
    pub const fn from_u64(v: u64) -> Self {
        Self::from_usize(v as usize)
    }
    /// The address as the C API spells it.
    #[inline]
    pub const fn as_u64(self) -> u64 {
        self.as_usize() as u64
    }
}
