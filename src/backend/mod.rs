//! Backends: where a region's pages come from.
//!
//! - [`alloc`]: frames from the host's `alloc_frame`, zeroed, installed all at
//!   once (populate) or one by one on first fault (lazy).
//! - [`fast_fault`]: the common first-touch fault on an alloc region, lean.
//! - [`linear`]: a fixed host-physical range (device passthrough, shared
//!   memory), mapped with the largest leaves alignment allows.

pub mod alloc;
pub mod fast_fault;
pub mod linear;
