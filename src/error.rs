//! The library's one error type. The C boundary (`capi.rs`) maps each variant
//! to an `axalloc_status_t`; nothing else in the crate knows about status codes.

/// Why an operation failed. Every failing operation leaves the address space
/// exactly as it was, except [`Error::Internal`], after which the caller should
/// destroy the address space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// A bad argument: NULL, unaligned, empty, overflowing, outside the window,
    /// unknown flag bits.
    Invalid,
    /// A hook could not supply a frame (`alloc_frame` returned non-zero).
    NoMemory,
    /// A documented limit of the library was reached (the regions one
    /// address space can hold), not a shortage of frames.
    Limit,
    /// A hook broke its contract: `phys_to_virt` returned NULL or a pointer
    /// that is not page-aligned for a frame, `alloc_frame` / `alloc_contig`
    /// returned a misaligned frame or one at or beyond 2^52. What the call
    /// obtained has been given back; the address space is as before.
    Hook,
    /// The range overlaps an existing region.
    Exists,
    /// No region covers the address, or nothing is present there.
    NotMapped,
    /// The access is not allowed by the region's flags (or the region is device
    /// memory and the hypervisor asked to copy through it).
    Access,
    /// The request is valid but not supported by this build or format.
    Unsupported,
    /// Another map, unmap or write-populate is working on an overlapping
    /// range (or on the table spans around it) right now; nothing changed.
    /// Retry once it has returned — the library never waits for it, since it
    /// may be waiting for this CPU (a TLB-flush IPI).
    Busy,
    /// An internal invariant broke (e.g. the table holds an entry no region
    /// explains).
    Internal,
}

/// Result with the crate's [`Error`].
pub type Result<T = ()> = core::result::Result<T, Error>;
