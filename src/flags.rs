//! Region flags and fault access kinds, checked out of the C integers.

use page_table_multiarch::MappingFlags;

/// Flags of a region (`AXALLOC_READ` ... `AXALLOC_DEVICE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Flags(u32);

impl Flags {
    /// Readable.
    pub const READ: Self = Self(1 << 0);
    /// Writable.
    pub const WRITE: Self = Self(1 << 1);
    /// Executable.
    pub const EXEC: Self = Self(1 << 2);
    /// Device / uncached memory type instead of write-back.
    pub const DEVICE: Self = Self(1 << 3);
    /// Every defined bit.
    pub const ALL: Self = Self(0xf);
    /// The access kinds (what a fault may ask for).
    pub const RWX: Self = Self(0x7);

    /// Checks a C integer: `None` if it has bits this version does not define.
    pub const fn from_bits(bits: u32) -> Option<Self> {
        if bits & !Self::ALL.0 != 0 {
            None
        } else {
            Some(Self(bits))
        }
    }

    /// The raw bits.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// True if every bit of `other` is set in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// The page_table_multiarch vocabulary the entry encoders speak.
    pub fn to_mapping(self) -> MappingFlags {
        let mut m = MappingFlags::empty();
        if self.contains(Self::READ) {
            m |= MappingFlags::READ;
        }
        if self.contains(Self::WRITE) {
            m |= MappingFlags::WRITE;
        }
        if self.contains(Self::EXEC) {
            m |= MappingFlags::EXECUTE;
        }
        if self.contains(Self::DEVICE) {
            m |= MappingFlags::DEVICE;
        }
        m
    }
}

/// What a faulting access wanted: a non-empty subset of read/write/execute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access(Flags);

impl Access {
    /// Checks a C integer: `None` if empty or outside READ|WRITE|EXEC.
    pub const fn from_bits(bits: u32) -> Option<Self> {
        if bits == 0 || bits & !Flags::RWX.0 != 0 {
            None
        } else {
            Some(Self(Flags(bits)))
        }
    }

    /// True if a region with `flags` allows this access.
    pub const fn allowed_by(self, flags: Flags) -> bool {
        flags.contains(self.0)
    }

    /// True if the access writes.
    pub const fn writes(self) -> bool {
        self.0.contains(Flags::WRITE)
    }

    /// The access in page_table_multiarch's vocabulary.
    pub fn to_mapping(self) -> MappingFlags {
        self.0.to_mapping()
    }
}
