/*
 * layout.h - the guest's memory layout, shared by the VMM (C) and the guest
 * code (guest.S, through the C preprocessor). Only #defines: no C here.
 *
 * Vocabulary (see README.md): libaxalloc's "guest-physical" addresses are the
 * guest's VIRTUAL addresses (VA), its "host-physical" addresses are the KVM
 * memslot's guest-physical addresses (GPA). The table libaxalloc builds is
 * the guest's own x86-64 page table (CR3 = axalloc_as_root()).
 *
 * Every VA below 2 GiB, so guest.S can use 32-bit absolute addresses.
 */
#ifndef AXDEMO_LAYOUT_H
#define AXDEMO_LAYOUT_H

#define PAGE_SIZE        0x1000

/* KVM memslot 0: GPA [0, SLOT_SYS_SIZE + pool). */
#define CODE_GPA         0x00001000   /* guest code, CODE_PAGES pages */
#define CODE_PAGES       4
#define SYS_GPA          0x00010000   /* GDT, IDT, TSS, mailbox: 4 pages */
#define KSTACK_GPA       0x00020000   /* #PF handler stack (CPL0) */
#define USTACK_GPA       0x00030000   /* workload stack (CPL3) */
#define STACK_PAGES      4
#define POOL_GPA         0x00100000   /* frame pool for libaxalloc: rest of the slot */
#define SLOT_SYS_SIZE    POOL_GPA

/* No memslot here: a guest access exits to the VMM as KVM_EXIT_MMIO. */
#define MMIO_GPA         0xd0000000

/* Guest virtual addresses (libaxalloc's "guest-physical" window). */
#define CODE_VA          0x00400000
#define SYS_VA           0x00600000
#define GDT_VA           (SYS_VA + 0x0000)
#define IDT_VA           (SYS_VA + 0x1000)
#define TSS_VA           (SYS_VA + 0x2000)
#define MAILBOX_VA       (SYS_VA + 0x3000)
#define KSTACK_VA        0x00700000
#define USTACK_VA        0x00800000
#define MMIO_VA          0x00a00000
#define RAM_VA           0x40000000   /* the lazy (or eager) guest RAM */
#define WINDOW_SIZE      0x800000000000ULL  /* [0, 2^47): the canonical lower half */

/* Mailbox (ordinary RAM, linear-mapped): parameters and #PF CR2. */
#define MB_CR2           (MAILBOX_VA + 0x00)  /* written by the #PF handler */
#define MB_RAM_BASE      (MAILBOX_VA + 0x08)  /* set by the VMM */
#define MB_RAM_END       (MAILBOX_VA + 0x10)
#define MB_SEED          (MAILBOX_VA + 0x18)
#define MB_UNMAP_VA      (MAILBOX_VA + 0x20)  /* page of the unmap -> re-touch cycle */
#define MB_BAD_VA        (MAILBOX_VA + 0x28)  /* nonzero: touch it at the end (--bad-access) */
/* --migrate (guest_migrate_entry): see README.md, "Live migration". */
#define MB_MIGRATED      (MAILBOX_VA + 0x30)  /* set by the VMM in the pause, after the switch */
#define MB_HOT_PAGES     (MAILBOX_VA + 0x38)  /* H: pages [0, H) are written in every pass */
#define MB_STRIDE        (MAILBOX_VA + 0x40)  /* S: pass k also writes cold pages H + c, c = k mod S (mod S) */

/* MMIO doorbells: the offset is the event, the 8-byte value its argument. */
#define MMIO_PF          (MMIO_VA + 0x00)  /* #PF handler: value = error code, CR2 in MB_CR2 */
#define MMIO_EXC         (MMIO_VA + 0x08)  /* other exception: value = vector */
#define MMIO_FILLED      (MMIO_VA + 0x10)  /* workload: pattern written to every page */
#define MMIO_VERIFIED    (MMIO_VA + 0x18)  /* value = mismatching qwords seen by the guest */
#define MMIO_UNMAP       (MMIO_VA + 0x20)  /* value = VA: please unmap and re-map lazily */
#define MMIO_RETOUCHED   (MMIO_VA + 0x28)  /* value = nonzero qwords in the re-touched page */
#define MMIO_DONE        (MMIO_VA + 0x30)  /* workload finished */
#define MMIO_MIG_START   (MMIO_VA + 0x38)  /* --migrate: every page filled, the write passes begin */
#define MMIO_MIG_PASSES  (MMIO_VA + 0x40)  /* value = passes completed when the guest saw MB_MIGRATED */
#define MMIO_MIG_VERIFIED (MMIO_VA + 0x48) /* value = pages not holding their last written value */

/* GDT selectors. */
#define SEL_KCODE        0x08
#define SEL_KDATA        0x10
#define SEL_UDATA        0x1b   /* 0x18 | RPL 3 */
#define SEL_UCODE        0x23   /* 0x20 | RPL 3 */
#define SEL_TSS          0x28

#endif
