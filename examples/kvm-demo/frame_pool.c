/*
 * frame_pool.c - see frame_pool.h.
 */
#define _GNU_SOURCE
#include "frame_pool.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "layout.h"

uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int pool_init(struct frame_pool *p, uint8_t *slot_host, uint64_t slot_size,
              uint64_t base, uint64_t nframes)
{
    memset(p, 0, sizeof(*p));
    if (base % PAGE_SIZE || base + nframes * PAGE_SIZE > slot_size)
        return -1;
    p->slot_host = slot_host;
    p->slot_size = slot_size;
    p->base = base;
    p->nframes = nframes;
    p->in_pool = malloc(nframes);
    p->ring = malloc(nframes * sizeof(*p->ring));
    if (!p->in_pool || !p->ring) {
        pool_fini(p);
        return -1;
    }
    for (uint64_t i = 0; i < nframes; i++) {
        p->in_pool[i] = 1;
        p->ring[i] = i;
    }
    p->count = nframes;
    p->watch_hpa = UINT64_MAX;
    pthread_mutex_init(&p->lock, NULL);
    p->lock_ready = true;
    return 0;
}

void pool_fini(struct frame_pool *p)
{
    if (p->lock_ready)
        pthread_mutex_destroy(&p->lock);
    p->lock_ready = false;
    free(p->in_pool);
    free(p->ring);
    free(p->block_out);
    p->in_pool = NULL;
    p->ring = NULL;
    p->block_out = NULL;
}

#define BLOCK_SIZE (512ull * PAGE_SIZE)

int pool_add_blocks(struct frame_pool *p, uint64_t block_base, uint64_t nblocks)
{
    if (block_base % BLOCK_SIZE || block_base + nblocks * BLOCK_SIZE > p->slot_size ||
        block_base < p->base + p->nframes * PAGE_SIZE)
        return -1;
    p->block_out = calloc(nblocks ? nblocks : 1, 1);
    if (!p->block_out)
        return -1;
    p->block_base = block_base;
    p->nblocks = nblocks;
    return 0;
}

/* alloc_contig: 2 MiB blocks only (order 9, AXALLOC_HUGE); lowest free first. */
static int32_t hook_alloc_contig(void *ctx, uint32_t order, uint64_t *hpa_out)
{
    struct frame_pool *p = ctx;
    if (order != 9) {
        p->block_errors++;
        return -1;
    }
    for (uint64_t i = 0; i < p->nblocks; i++) {
        if (p->block_out[i])
            continue;
        p->block_out[i] = 1;
        p->blocks_in_use++;
        p->block_allocs++;
        *hpa_out = p->block_base + i * BLOCK_SIZE;
        return 0;
    }
    p->alloc_failures++;
    return -1;
}

/* free_contig: exactly a block handed out, with its order, once. */
static void hook_free_contig(void *ctx, uint64_t hpa, uint32_t order)
{
    struct frame_pool *p = ctx;
    uint64_t i = (hpa - p->block_base) / BLOCK_SIZE;
    if (order != 9 || hpa < p->block_base || hpa % BLOCK_SIZE || i >= p->nblocks || !p->block_out[i]) {
        p->block_errors++;
        fprintf(stderr, "axalloc-demo: free_contig(0x%llx, %u): not a block handed out\n",
                (unsigned long long)hpa, order);
        return;
    }
    p->block_out[i] = 0;
    p->blocks_in_use--;
    p->block_frees++;
    p->last_block_free_flushes = p->flushes;
}

static int32_t hook_alloc_frame(void *ctx, uint64_t *hpa_out)
{
    struct frame_pool *p = ctx;
    pthread_mutex_lock(&p->lock);
    if (p->count == 0) {
        p->alloc_failures++;
        pthread_mutex_unlock(&p->lock);
        return -1;
    }
    uint64_t i = p->ring[p->head];
    p->head = (p->head + 1) % p->nframes;
    p->count--;
    p->in_pool[i] = 0;
    p->allocs++;
    if (++p->in_use > p->peak)
        p->peak = p->in_use;
    /* Contents are left as they are: the library zeroes what it hands out
     * (the address space is created without AXALLOC_CFG_FRAMES_ZEROED). */
    *hpa_out = p->base + i * PAGE_SIZE;
    pthread_mutex_unlock(&p->lock);
    return 0;
}

static void hook_free_frame_locked(struct frame_pool *p, uint64_t hpa)
{
    if (hpa < p->base || hpa % PAGE_SIZE || (hpa - p->base) / PAGE_SIZE >= p->nframes) {
        p->foreign_frees++;
        fprintf(stderr, "axalloc-demo: free_frame(0x%llx): not a pool frame\n",
                (unsigned long long)hpa);
        return;
    }
    uint64_t i = (hpa - p->base) / PAGE_SIZE;
    if (p->in_pool[i]) {
        p->double_frees++;
        fprintf(stderr, "axalloc-demo: free_frame(0x%llx): double free\n",
                (unsigned long long)hpa);
        return;
    }
    p->in_pool[i] = 1;
    p->ring[(p->head + p->count) % p->nframes] = i;   /* FIFO: to the tail */
    p->count++;
    p->in_use--;
    p->frees++;
    if (hpa == p->watch_hpa) {
        p->watch_freed = true;
        p->watch_flushes_at_free = p->flushes;
    }
}

static void hook_free_frame(void *ctx, uint64_t hpa)
{
    struct frame_pool *p = ctx;
    pthread_mutex_lock(&p->lock);
    hook_free_frame_locked(p, hpa);
    pthread_mutex_unlock(&p->lock);
}

static void *hook_phys_to_virt(void *ctx, uint64_t hpa)
{
    struct frame_pool *p = ctx;
    if (hpa >= p->slot_size) {
        p->bad_phys_to_virt++;
        return NULL;
    }
    return p->slot_host + hpa;
}

/* Makes KVM drop every translation it holds that points into [off, off+len)
 * of the memslot: an mprotect read-only -> read-write round trip. The kernel's
 * MMU notifier tells KVM about the protection change and KVM zaps its shadow
 * entries for those pages; the contents of the pages do not change. */
static int drop_kvm_translations(struct frame_pool *p, uint64_t off, uint64_t len)
{
    if (p->flush_keep_writable) {
        if (mprotect(p->slot_host + off, len, PROT_READ | PROT_WRITE | PROT_EXEC) != 0 ||
            mprotect(p->slot_host + off, len, PROT_READ | PROT_WRITE) != 0) {
            perror("axalloc-demo: flush_tlb: mprotect");
            return -1;
        }
        return 0;
    }
    if (mprotect(p->slot_host + off, len, PROT_READ) != 0 ||
        mprotect(p->slot_host + off, len, PROT_READ | PROT_WRITE) != 0) {
        perror("axalloc-demo: flush_tlb: mprotect");
        return -1;
    }
    return 0;
}

void pool_flush_hint(struct frame_pool *p, uint64_t gpa, uint64_t size,
                     const uint64_t *hpa, uint32_t n)
{
    p->hint_valid = n <= POOL_HINT_MAX;
    p->hint_gpa = gpa;
    p->hint_size = size;
    p->hint_n = n;
    for (uint32_t i = 0; p->hint_valid && i < n; i++)
        p->hint_hpa[i] = hpa[i] & ~(uint64_t)(PAGE_SIZE - 1);
}

/*
 * The flush_tlb hook. This KVM (software "PVM", shadow paging) keeps its own
 * copies of the guest page table's translations and does not notice that the
 * host edited a present entry (not even after INVLPG in the guest), so this
 * plays the part INVEPT / an ASID flush plays on hardware: with a hint (see
 * pool_flush_hint) it drops the translations to the listed pages, otherwise
 * those to the whole memslot (the analogue of a single-context INVEPT).
 */
static void hook_flush_tlb(void *ctx, uint64_t gpa, uint64_t size)
{
    struct frame_pool *p = ctx;
    pthread_mutex_lock(&p->lock);
    uint64_t t0 = now_ns();
    int rc = 0;
    if (p->hint_valid && gpa >= p->hint_gpa && gpa + size <= p->hint_gpa + p->hint_size) {
        for (uint32_t i = 0; i < p->hint_n; i++)
            rc |= drop_kvm_translations(p, p->hint_hpa[i], PAGE_SIZE);
        p->precise_flushes++;
    } else {
        rc = drop_kvm_translations(p, 0, p->slot_size);
        p->slot_flushes++;
    }
    p->hint_valid = false;
    if (rc)
        p->flush_errors++;
    p->last_flush_ns = now_ns() - t0;
    p->flush_ns += p->last_flush_ns;
    p->flushes++;
    p->last_flush_gpa = gpa;
    p->last_flush_size = size;
    pthread_mutex_unlock(&p->lock);
}

axalloc_hooks_t pool_hooks(struct frame_pool *p, bool with_flush)
{
    axalloc_hooks_t h;
    memset(&h, 0, sizeof(h));
    h.struct_size = sizeof(h);
    h.ctx = p;
    h.alloc_frame = hook_alloc_frame;
    h.free_frame = hook_free_frame;
    h.phys_to_virt = hook_phys_to_virt;
    h.flush_tlb = with_flush ? hook_flush_tlb : NULL;
    if (p->nblocks) {
        h.alloc_contig = hook_alloc_contig;
        h.free_contig = hook_free_contig;
    }
    return h;
}

bool pool_all_back(const struct frame_pool *p)
{
    return p->in_use == 0 && p->count == p->nframes && p->allocs == p->frees &&
           p->double_frees == 0 && p->foreign_frees == 0 && p->blocks_in_use == 0 &&
           p->block_allocs == p->block_frees && p->block_errors == 0;
}
