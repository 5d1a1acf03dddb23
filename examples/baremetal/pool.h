/*
 * pool.h - the frame pool of the bare-metal hypervisors: the libaxalloc
 * hooks over a range of the hypervisor's own RAM, identity-mapped (so
 * phys_to_virt is the identity).
 */
#ifndef BAREMETAL_POOL_H
#define BAREMETAL_POOL_H

#include <stdint.h>
#include "axalloc.h"

#define POOL_FRAMES 4096u          /* 16 MiB */

/* Arch hooks (in each stub's hyp.c). */
void arch_flush_tlb(uint64_t gpa, uint64_t size);

void pool_init(uint64_t base);
axalloc_hooks_t pool_hooks(void);
uint64_t pool_in_use(void);        /* frames handed out and not given back */
uint64_t pool_flushes(void);       /* flush_tlb calls so far */
int pool_errors(void);             /* hook contract violations seen (double free, ...) */
/* When set, flush_tlb is counted but does nothing: the run that checks the
 * checks (a stale translation must make the guest fail). */
extern int pool_skip_flush;

#endif
