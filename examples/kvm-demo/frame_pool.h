/*
 * frame_pool.h - the libaxalloc hooks of the demo: a pool of 4 KiB frames
 * inside the KVM memslot, with bookkeeping that catches leaks, double frees,
 * foreign frees and frees that come before the TLB flush.
 *
 * "host-physical" for libaxalloc = guest-physical address in memslot 0, so
 * phys_to_virt(a) = slot_host + a.
 *
 * The lazy/eager runs are single-threaded (hooks run on the VMM thread while
 * the vCPU is stopped in an exit); in --migrate the vCPU thread's faults and
 * the migration thread's copies and flushes run at the same time, so the
 * hooks take the pool's mutex.
 */
#ifndef AXDEMO_FRAME_POOL_H
#define AXDEMO_FRAME_POOL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "axalloc.h"

#define POOL_HINT_MAX 64

struct frame_pool {
    pthread_mutex_t lock;   /* taken by every hook */
    bool lock_ready;
    /* flush_tlb while a vCPU runs (--migrate): the mprotect round trip toggles
     * PROT_EXEC instead of dropping PROT_WRITE, so a guest write that reaches
     * KVM mid-flush never finds the memory read-only (KVM_RUN would fail
     * with EFAULT); KVM's MMU notifier zaps its entries either way. */
    bool flush_keep_writable;
    uint8_t *slot_host;     /* host mapping of memslot 0 */
    uint64_t slot_size;     /* bytes */
    uint64_t base;          /* GPA of the first pool frame */
    uint64_t nframes;

    uint8_t *in_pool;       /* per frame: 1 = free (in the pool), 0 = handed out */
    uint64_t *ring;         /* FIFO of free frame indices (so a freed frame is not reused at once) */
    uint64_t head, count;

    /* counters */
    uint64_t in_use, peak, allocs, frees, alloc_failures;
    uint64_t double_frees, foreign_frees, bad_phys_to_virt;
    uint64_t flushes, flush_ns, flush_errors;
    uint64_t precise_flushes, slot_flushes, last_flush_ns;
    uint64_t last_flush_gpa, last_flush_size;

    /* Optional hint for the next flush_tlb (see pool_flush_hint). */
    bool hint_valid;
    uint64_t hint_gpa, hint_size;
    uint32_t hint_n;
    uint64_t hint_hpa[POOL_HINT_MAX];

    /* 2 MiB blocks for AXALLOC_HUGE (alloc_contig order 9), GPA
     * [block_base, block_base + nblocks * 2 MiB), 2 MiB aligned; none when
     * nblocks is 0 (then the hooks have no alloc_contig). */
    uint64_t block_base, nblocks;
    uint8_t *block_out;     /* per block: 1 = handed out */
    uint64_t blocks_in_use, block_allocs, block_frees, block_errors;
    uint64_t last_block_free_flushes; /* flush count at the last free_contig */

    /* One watched frame: the flush count when it came back (free before flush?). */
    uint64_t watch_hpa;
    bool watch_freed;
    uint64_t watch_flushes_at_free;
};

/* Pool over GPA [base, base + nframes * 4 KiB) of the memslot mapped at slot_host. 0 = ok. */
int pool_init(struct frame_pool *p, uint8_t *slot_host, uint64_t slot_size,
              uint64_t base, uint64_t nframes);
void pool_fini(struct frame_pool *p);
/* Adds nblocks 2 MiB blocks at GPA block_base (2 MiB aligned, inside the slot). 0 = ok. */
int pool_add_blocks(struct frame_pool *p, uint64_t block_base, uint64_t nblocks);

/* The hooks for axalloc_as_create; flush_tlb is NULL when with_flush is false. */
axalloc_hooks_t pool_hooks(struct frame_pool *p, bool with_flush);

/*
 * Precision for the next flush_tlb. The hook only receives the guest range;
 * what this KVM needs to hear about are the memslot pages the removed entries
 * pointed to. A VMM that calls axalloc_unmap itself, with no vCPU running and
 * no other thread changing the mappings, can list them first (axalloc_translate
 * of each present page of the range, at most POOL_HINT_MAX). If the next
 * flush_tlb range lies inside [gpa, gpa + size) the hook drops exactly those
 * pages (~10 us); otherwise (destroy, a range with more pages) it falls back
 * to the whole memslot.
 */
void pool_flush_hint(struct frame_pool *p, uint64_t gpa, uint64_t size,
                     const uint64_t *hpa, uint32_t n);

/* Leak / misuse check after axalloc_as_destroy: true when every frame is back
 * exactly once and nothing foreign or doubly freed was seen. */
bool pool_all_back(const struct frame_pool *p);

uint64_t now_ns(void);

#endif
