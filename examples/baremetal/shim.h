/*
 * shim.h - a stand-in for the parts of libaxalloc the stubs use, for as
 * long as the library's header has no ARM_S2 / RISC-V formats (issue 10).
 * It lets the boot, trap, UART and guest plumbing be developed and run
 * against a real MMU before the library's formats exist; the test that runs
 * a shim build reports SKIP (77), never PASS. Built only when axalloc.h
 * lacks AXALLOC_FORMAT_ARM_S2 (CMakeLists.txt decides).
 */
#ifndef BAREMETAL_SHIM_H
#define BAREMETAL_SHIM_H
#include "axalloc.h"

#ifndef AXALLOC_FORMAT_ARM_S2
#define BAREMETAL_SHIM 1
#define AXALLOC_FORMAT_ARM_S2       3u
#define AXALLOC_FORMAT_RISCV_SV39X4 4u
#define AXALLOC_FORMAT_RISCV_SV48X4 5u
#define AXALLOC_FORMAT_RISCV_SV57X4 6u
typedef struct axalloc_hw {
    uint64_t root;
    uint32_t root_pages;
    uint32_t levels;
    uint64_t root_pointer;
    uint64_t vtcr;
} axalloc_hw_t;
axalloc_status_t axalloc_as_hw(const axalloc_as_t *as, axalloc_hw_t *out);
axalloc_status_t shim_as_create(uint32_t format, uint32_t gpa_bits, uint64_t base,
                                uint64_t size, const axalloc_hooks_t *hooks,
                                axalloc_as_t **as_out);
#endif

#endif
