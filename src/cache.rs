//! Arm cache maintenance for guest frames the library wrote.
//!
//! x86 (EPT / NPT) keeps every cache coherent with memory and with
//! instruction fetch: nothing to do. Arm does not, for two reasons:
//!
//! - **Data, to the Point of Coherency.** A guest running with its stage-1
//!   MMU or caches off makes Non-cacheable accesses: it reads memory, not
//!   the cache. Stage 2 without FEAT_S2FWB cannot force them cacheable
//!   (the stronger of the two stages' attributes wins). So a frame the
//!   library zeroed (or `axalloc_write` wrote) through the host's cacheable
//!   mapping must be cleaned to the PoC before the guest can reach it, or the
//!   guest reads whatever the frame held before — the previous owner's data.
//!   With FEAT_S2FWB (`AXALLOC_CFG_ARM_S2FWB`, HCR_EL2.FWB = 1) stage 2
//!   forces write-back cacheable and this clean is unnecessary. (KVM:
//!   `clean_dcache_guest_page` unless `kvm_stage2_has_fwb`.)
//! - **Instructions, to the Point of Unification.** Instruction fetch is not
//!   coherent with data stores: a page the guest may execute needs its new
//!   contents cleaned to the PoU and the instruction cache invalidated for
//!   it (stale lines from the frame's previous use), with or without FWB.
//!   (KVM: `invalidate_icache_guest_page` for executable mappings.)
//!
//! Arm ARM (DDI 0487), chapter D7 "The AArch64 System Level Memory Model",
//! "Cache support": data cache maintenance by VA (`DC CVAC` to the PoC,
//! `DC CVAU` to the PoU), instruction cache maintenance (`IC IVAU`), and the
//! sequence for instruction/data coherence (clean D to PoU, `DSB ISH`,
//! invalidate I, `DSB ISH`, `ISB`); the maintenance instructions complete
//! only at a following `DSB`, so one runs before the entry that makes the
//! frame reachable is stored. The `CTR_EL0` register description (chapter
//! D19 / D23 depending on the revision, "CTR_EL0, Cache Type Register"):
//! DminLine (19:16) and IminLine (3:0) give log2 of the smallest line in
//! 4-byte words; IDC (28) = 1: a data clean to the PoU is not required for
//! instruction/data coherence; DIC (29) = 1: an instruction invalidation to
//! the PoU is not required. IDC only concerns the PoU: the PoC clean for a
//! caches-off guest is still made (it covers the PoU clean anyway). EL2 and
//! EL1 always read `CTR_EL0`; EL0 may when the kernel lets it (Linux does).
//!
//! Maintenance by VA uses the host's virtual address of the frame (the
//! caches are physically tagged for data; for instruction caches with VIPT
//! aliasing, invalidating by one VA may not reach another alias — the Arm
//! ARM's "IVIPT" caches do not alias; PIPT ones never do).
//!
//! Table frames need none of this: the stage-2 walker's accesses are
//! cacheable (VTCR_EL2.IRGN0/ORGN0 = write-back, see `format::arm`).
//!
//! Where it runs: on an aarch64 host the library issues the instructions
//! itself. On any other host the functions here do nothing (a host building
//! Arm tables for another CPU does the maintenance itself, as the header
//! says), and compile to nothing: [`Policy::active`] is a constant `false`
//! there, so not even the policy test remains on x86's fault path.
//!
//! Under `cfg(test)` every operation is also recorded in a per-thread log
//! ([`test_log`]), on every host, so the policy is testable on x86.

use core::ptr::NonNull;

use crate::addr::FRAME_SIZE;
use crate::format::{self, Format};

/// What the guest's view of memory needs after the library writes to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Coherent (x86, RISC-V): nothing.
    None,
    /// Arm with FEAT_S2FWB: executable pages need I-side coherence only.
    ExecOnly,
    /// Arm without FEAT_S2FWB: everything written is cleaned to the PoC,
    /// and executable pages need I-side coherence too.
    Full,
}

impl Policy {
    /// The policy of an address space: Arm stage 2, with or without
    /// FEAT_S2FWB; `None` for the other formats.
    pub fn for_space(arm_s2: bool, s2fwb: bool) -> Self {
        match (arm_s2, s2fwb) {
            (false, _) => Self::None,
            (true, true) => Self::ExecOnly,
            (true, false) => Self::Full,
        }
    }

    /// True if writes to guest frames may need maintenance on this host.
    /// A constant `false` on hosts that are not aarch64 (outside tests), so
    /// every caller's branch compiles away there.
    #[inline(always)]
    pub fn active(self) -> bool {
        ACTIVE && !matches!(self, Self::None)
    }
}

/// Maintenance can happen on this build at all: an aarch64 host, or the
/// unit tests (which record it on any host).
const ACTIVE: bool = cfg!(any(target_arch = "aarch64", test));

/// True if the leaf (or leaf template) `raw` of format `F` lets the guest
/// execute — only asked when a policy is [`Policy::active`].
#[inline]
pub fn leaf_exec<F: Format>(raw: u64) -> bool {
    format::leaf_flags::<F>(raw).contains(page_table_multiarch::MappingFlags::EXECUTE)
}

/// `[offset, offset + len)` inside one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// First byte, from the frame's start.
    pub offset: usize,
    /// Bytes.
    pub len: usize,
}

impl Span {
    /// The whole 4 KiB frame.
    pub const FRAME: Span = Span {
        offset: 0,
        len: FRAME_SIZE,
    };
    /// Nothing.
    pub const NONE: Span = Span { offset: 0, len: 0 };
}

/// Makes what the library wrote to a guest frame visible to the guest,
/// before the entry that reaches it is stored (or, for a present page,
/// right after the write). `frame` is the host's view of the frame's first
/// byte; `dirty`: the bytes the library wrote since the frame was last
/// cleaned to the PoC (by the library, or by the host before handing it
/// over); `exec`: the guest may execute the page, whose `code` bytes are
/// new to it (the whole frame for a frame just installed). Ends with the
/// barriers that complete the maintenance, so the caller's next store (the
/// entry) follows it.
///
/// - [`Policy::Full`]: `DC CVAC` over `dirty`, `DSB ISH`.
/// - [`Policy::ExecOnly`]: nothing for data.
/// - `exec`, either policy: `DC CVAU` over `code` (skipped with
///   `CTR_EL0.IDC`; it repeats nothing costly after a PoC clean — the
///   lines are clean), `DSB ISH`, `IC IVAU` over `code` (skipped with
///   `CTR_EL0.DIC`), `DSB ISH`, `ISB`.
#[inline]
pub fn publish(policy: Policy, frame: NonNull<u8>, dirty: Span, exec: bool, code: Span) {
    if !policy.active() {
        return;
    }
    let base = frame.as_ptr() as usize;
    if policy == Policy::Full && dirty.len != 0 {
        op(Op::CleanPoc, base + dirty.offset, dirty.len);
        op(Op::Barrier, 0, 0);
    }
    if exec && code.len != 0 {
        op(Op::CleanPou, base + code.offset, code.len);
        op(Op::Barrier, 0, 0);
        op(Op::InvalidateI, base + code.offset, code.len);
        op(Op::Barrier, 0, 0);
        op(Op::Isb, 0, 0);
    }
}

/// [`publish`] for `len` bytes the hypervisor wrote at `at` into a present
/// page (`axalloc_write`): cleaned, and for an executable page (`exec()`,
/// only asked on Arm) made coherent for instruction fetch.
#[inline]
pub fn publish_write(policy: Policy, at: NonNull<u8>, len: usize, exec: impl FnOnce() -> bool) {
    if policy.active() {
        let bytes = Span { offset: 0, len };
        publish(policy, at, bytes, exec(), bytes);
    }
}

/// One maintenance step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `DC CVAC` per data cache line.
    CleanPoc,
    /// `DC CVAU` per data cache line (skipped with `CTR_EL0.IDC`).
    CleanPou,
    /// `IC IVAU` per instruction cache line (skipped with `CTR_EL0.DIC`).
    InvalidateI,
    /// `DSB ISH`.
    Barrier,
    /// `ISB`.
    Isb,
}

#[inline(always)]
fn op(kind: Op, addr: usize, len: usize) {
    #[cfg(test)]
    test_log::record(kind, addr, len);
    #[cfg(all(target_arch = "aarch64", not(miri)))]
    arm::run(kind, addr, len);
    #[cfg(not(all(target_arch = "aarch64", not(miri))))]
    let _ = (kind, addr, len);
}

#[cfg(all(target_arch = "aarch64", not(miri)))]
mod arm {
    use core::sync::atomic::{AtomicU64, Ordering};

    use super::Op;

    /// `CTR_EL0`, read once (bit 31 is RES1, so 0 means "not read yet").
    static CTR: AtomicU64 = AtomicU64::new(0);

    fn ctr() -> u64 {
        let c = CTR.load(Ordering::Relaxed);
        if c != 0 {
            return c;
        }
        let c: u64;
        // SAFETY: reading the Cache Type Register has no side effect; EL1
        // and EL2 may always read it (EL0 when the kernel allows it).
        unsafe {
            core::arch::asm!("mrs {}, ctr_el0", out(reg) c, options(nomem, nostack, preserves_flags))
        };
        CTR.store(c, Ordering::Relaxed);
        c
    }

    const IDC: u64 = 1 << 28;
    const DIC: u64 = 1 << 29;

    /// Bytes in the smallest line: 4 << field (log2 of words).
    fn line(ctr: u64, shift: u32) -> usize {
        4 << ((ctr >> shift) & 0xf)
    }

    pub(super) fn run(kind: Op, addr: usize, len: usize) {
        let c = ctr();
        match kind {
            Op::CleanPoc => each_line(addr, len, line(c, 16), |a| {
                // SAFETY: clean by VA of a mapped page of ours (the
                // caller's frame); changes no architectural memory content.
                unsafe {
                    core::arch::asm!("dc cvac, {}", in(reg) a, options(nostack, preserves_flags))
                }
            }),
            Op::CleanPou if c & IDC == 0 => each_line(addr, len, line(c, 16), |a| {
                // SAFETY: as above, to the PoU.
                unsafe {
                    core::arch::asm!("dc cvau, {}", in(reg) a, options(nostack, preserves_flags))
                }
            }),
            Op::InvalidateI if c & DIC == 0 => each_line(addr, len, line(c, 0), |a| {
                // SAFETY: invalidating instruction cache lines by VA only
                // makes later fetches read memory (through the PoU).
                unsafe {
                    core::arch::asm!("ic ivau, {}", in(reg) a, options(nostack, preserves_flags))
                }
            }),
            Op::CleanPou | Op::InvalidateI => {}
            // SAFETY: a barrier: no operands, no memory of its own.
            Op::Barrier => unsafe {
                core::arch::asm!("dsb ish", options(nostack, preserves_flags))
            },
            // SAFETY: as above.
            Op::Isb => unsafe { core::arch::asm!("isb", options(nostack, preserves_flags)) },
        }
    }

    #[inline(always)]
    fn each_line(addr: usize, len: usize, line: usize, mut f: impl FnMut(usize)) {
        let end = addr + len;
        let mut a = addr & !(line - 1);
        while a < end {
            f(a);
            a += line;
        }
    }
}

/// The unit tests' record of maintenance, per thread.
#[cfg(test)]
pub mod test_log {
    use std::cell::RefCell;

    use super::Op;

    type Check = Box<dyn Fn(Op, usize, usize)>;

    thread_local! {
        static LOG: RefCell<Vec<(Op, usize, usize)>> = const { RefCell::new(Vec::new()) };
        static CHECK: RefCell<Option<Check>> = const { RefCell::new(None) };
    }

    pub(super) fn record(kind: Op, addr: usize, len: usize) {
        CHECK.with(|c| {
            if let Some(f) = c.borrow().as_ref() {
                f(kind, addr, len);
            }
        });
        LOG.with(|l| l.borrow_mut().push((kind, addr, len)));
    }

    /// Takes this thread's log (clearing it).
    pub fn take() -> Vec<(Op, usize, usize)> {
        LOG.with(|l| std::mem::take(&mut *l.borrow_mut()))
    }

    /// Runs `f` at every recorded operation from now on (this thread),
    /// before it is logged; `None` stops.
    pub fn check(f: Option<Check>) {
        CHECK.with(|c| *c.borrow_mut() = f);
    }
}
