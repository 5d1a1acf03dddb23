/*
 * hv.h - the CPU-independent half of the bare-metal hypervisors: the
 * address space, the guest's regions, the fault policy and the checks. The
 * CPU-dependent half (boot, traps, registers, TLB maintenance) is each
 * stub's hyp.c, which calls these.
 */
#ifndef BAREMETAL_HV_H
#define BAREMETAL_HV_H
#include <stdint.h>
#include "axalloc.h"

/* What a trap handler does after hv_fault. */
enum hv_action {
    HV_RESUME,   /* the page is there now: re-run the instruction */
    HV_CONSOLE,  /* a store to the console page: emulate, skip the instruction */
    HV_DENIED,   /* refused (ERR_ACCESS): skip a data access / return from a fetch */
};

/* Provided by hyp.c. */
void arch_exit(int code) __attribute__((noreturn));
void arch_sync_code(uint64_t hpa, uint64_t size);   /* after the host wrote guest code */
extern const uint64_t arch_uart_hpa;                 /* the UART page, passed through */

/* Sets up the address space and the guest's regions; fills *hw. Does not
 * return on failure. */
/* ram: the start of the hypervisor's RAM, 1 GiB aligned; its first GiB is
 * mapped linearly into the guest (G1_OFF), and 2 MiB of it, at
 * LIN_HOST_OFF (outside the pool), once more (LIN_OFF). */
void hv_init(uint32_t format, uint32_t gpa_bits, uint64_t top, uint64_t pool_base,
             uint64_t ram, const char *title, axalloc_hw_t *hw);
/* What the guest is told TOP is, when not the guest-physical top (x86: its
 * own page tables put the ranges at the top of the virtual space, TOP =
 * 0); the patterns the guest and host compare are keyed by the guest's
 * addresses. Call before hv_init. */
void hv_guest_top(uint64_t t);
/* The guest's entry point as a guest-physical address. */
uint64_t hv_guest_entry(void);
/* A stage-2 fault at gpa for access (AXALLOC_READ/WRITE/EXEC). */
enum hv_action hv_fault(uint64_t gpa, uint32_t access);
/* A console store. */
void hv_console(uint64_t gpa, uint64_t value);
/* A hypercall; HC_DONE does not return. */
uint64_t hv_hypercall(uint64_t nr, uint64_t a0, uint64_t a1);
/* Reads guest memory through the library (RISC-V: the trapping instruction). */
int hv_read_guest(uint64_t gpa, void *buf, uint64_t len);
/* The address space, for a stub's own extra mappings (x86: the guest's
 * page tables). */
axalloc_as_t *hv_as(void);
/* Ends the run: prints FAIL and exits non-zero. */
void hv_fail(const char *what, uint64_t v) __attribute__((noreturn));
/* Prints a rule that held ("check: ... ok") or ends the run with FAIL. */
void hv_check(int ok, const char *rule);

#endif
