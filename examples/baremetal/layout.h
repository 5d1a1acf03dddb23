/*
 * layout.h - the guest-physical layout the bare-metal hypervisors give
 * their guest, shared by the hypervisor (hv.c) and the guest (guest.c).
 *
 * Everything but the code sits just below TOP, the first address past the
 * usable guest-physical space (2^gpa_bits on Arm; on RISC-V the lower half
 * of the GPA space; on x86 2^MAXPHYADDR; see README.md), so the top of the
 * space -- the last root page of a concatenated Arm root, the last entries
 * of every level -- is what the MMU walks. The guest learns TOP in its
 * first argument register (x86: 0, see guest.c).
 */
#ifndef BAREMETAL_LAYOUT_H
#define BAREMETAL_LAYOUT_H

/* Constants usable from C and from assembly. */
#ifdef __ASSEMBLER__
#define U64(x) x
#else
#define U64(x) x##ull
#endif

#define PAGE U64(0x1000)

/* Guest code (and its read-only data), R|X, demand-loaded from the image. */
#define CODE_GPA U64(0x200000)

/* Each range starts at TOP - *_OFF; every range is page-aligned. */
#define RAM_OFF    U64(0x90000)             /* R|W, lazy: pattern written and verified */
#define RAM_SIZE      U64(0x40000)          /* 64 pages */
#define STACK_OFF  U64(0x48000)             /* R|W, lazy: the guest's stack */
#define STACK_SIZE    U64(0x4000)
#define UNMAP_OFF  U64(0x40000)             /* R|W, lazy: written, unmapped, re-read as zeros */
#define UNMAP_SIZE    U64(0x8000)
#define RO_OFF     U64(0x30000)             /* R, lazy: reads zeros, a write is refused */
#define RO_SIZE       U64(0x2000)
#define NX_OFF     U64(0x20000)             /* R|W, lazy: a fetch is refused */
#define NX_SIZE       U64(0x1000)
#define MMIO_OFF   U64(0x1000)              /* no region: the emulated console (last page) */
/* A 2 MiB range of the hypervisor's own memory, map_linear'ed (one 2 MiB
 * leaf), then split by unmapping one page in its middle (HOLE_OFF). */
#define LIN_OFF    U64(0x400000)
#define LIN_SIZE   U64(0x200000)
#define HOLE_OFF   U64(0x100000)            /* from the start of the linear range */
/* The first GiB of the hypervisor's RAM, map_linear'ed at TOP - G1_OFF
 * (1 GiB leaves where the format has them: 3 levels or more), then split
 * by unmapping the page at G1_HOLE. The 2 MiB linear range above is the
 * same host memory, at LIN_HOST_OFF into it. */
#define G1_OFF       U64(0x80000000)
#define G1_SIZE      U64(0x40000000)
#define G1_HOLE      U64(0x3001000)
#define LIN_HOST_OFF U64(0x2000000)
/* The machine's UART page, map_linear'ed with AXALLOC_DEVICE (passthrough). */
#define DEV_OFF    U64(0x600000)

/* Hypercalls (Arm: HVC #n, RISC-V: ECALL with a7 = n; arguments and result
 * in the first argument registers. x86: VMCALL with rax = n, arguments in
 * rdi and rsi, the result in rax). */
#define HC_DONE      0   /* a0 = 0 pass, else the guest's failure code */
#define HC_REMAP     1   /* unmap [a0, a0 + a1) and map it again, lazily; returns the status */
#define HC_DENIED    2   /* returns how many accesses the hypervisor refused so far */
#define HC_HOLE      3   /* unmap the page at LIN + HOLE_OFF; returns the status */
#define HC_HOLE1G    4   /* unmap the page at G1 + G1_HOLE; returns the status */

#endif
