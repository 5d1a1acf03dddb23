/*
 * shim.c - see shim.h. Just enough of a stage-2 builder for the stubs'
 * guest: 4 KiB leaves only, lazily faulted regions, unmap without table
 * reclaim. Arm VMSAv8-64 stage 2 (4 KiB granule, concatenated roots chosen
 * as Linux KVM does) and RISC-V Sv39x4 / Sv48x4.
 */
#include "shim.h"
#ifdef BAREMETAL_SHIM
#include <stdint.h>

#define NREG 16
struct region { uint64_t base, size; uint32_t flags; };
struct axalloc_as {
    uint32_t format, levels, root_pages, gpa_bits;
    uint64_t root, vtcr, base, size;
    axalloc_hooks_t h;
    struct region reg[NREG];
    uint64_t guest_frames, table_frames, faults;
};
static struct axalloc_as the_as;   /* one address space at a time */

static uint64_t *va(uint64_t hpa) { return (uint64_t *)the_as.h.phys_to_virt(the_as.h.ctx, hpa); }
static int arm(void) { return the_as.format == AXALLOC_FORMAT_ARM_S2; }

const char *axalloc_status_str(axalloc_status_t s)
{
    static const char *n[] = {"AXALLOC_OK", "AXALLOC_ERR_INVALID", "AXALLOC_ERR_NO_MEMORY",
        "AXALLOC_ERR_EXISTS", "AXALLOC_ERR_NOT_MAPPED", "AXALLOC_ERR_ACCESS",
        "AXALLOC_ERR_UNSUPPORTED", "AXALLOC_ERR_INTERNAL", "AXALLOC_ERR_HOOK"};
    return s <= 0 && s > -9 ? n[-s] : "AXALLOC_ERR_UNKNOWN";
}
uint32_t axalloc_version(void) { return 0; }
uint64_t axalloc_as_root(const axalloc_as_t *as) { return as->root; }

static uint64_t table_desc(uint64_t hpa) { return arm() ? hpa | 3 : (hpa >> 12) << 10 | 1; }
static int desc_valid(uint64_t d) { return d & 1; }
static uint64_t desc_addr(uint64_t d)
{
    return arm() ? d & 0x0000fffffffff000ull : (d >> 10) << 12;
}
static uint64_t leaf_desc(uint64_t hpa, uint32_t f)
{
    if (arm()) /* AF, SH inner, MemAttr Normal WB, S2AP, XN */
        return hpa | 3 | 1ull << 10 | 3ull << 8 | 0xfull << 2 | (f & AXALLOC_READ ? 1ull << 6 : 0) |
               (f & AXALLOC_WRITE ? 1ull << 7 : 0) | (f & AXALLOC_EXEC ? 0 : 1ull << 54);
    return (hpa >> 12) << 10 | 1 | 1 << 4 | 1 << 6 | (f & AXALLOC_READ ? 2 : 0) |
           (f & AXALLOC_WRITE ? 4 | 1 << 7 : 0) | (f & AXALLOC_EXEC ? 8 : 0);
}

axalloc_status_t shim_as_create(uint32_t format, uint32_t bits, uint64_t base, uint64_t size,
                                const axalloc_hooks_t *hooks, axalloc_as_t **as_out)
{
    struct axalloc_as *as = &the_as;
    *as = (struct axalloc_as){0};
    as->h = *hooks;
    as->format = format;
    as->base = base;
    as->size = size;
    uint32_t order;
    if (format == AXALLOC_FORMAT_ARM_S2) {
        /* Fewest levels with at most 16 concatenated root tables. */
        as->levels = (bits - 12 - 4 + 8) / 9;
        uint32_t root_bits = bits - 12 - 9 * (as->levels - 1);
        order = root_bits > 9 ? root_bits - 9 : 0;
        uint32_t sl0 = as->levels == 4 ? 2 : as->levels == 3 ? 1 : 0;
        as->vtcr = (64 - bits) | sl0 << 6 | 1 << 8 | 1 << 10 | 3 << 12;
    } else {
        as->levels = format == AXALLOC_FORMAT_RISCV_SV39X4 ? 3 : 4;
        bits = 12 + 9 * as->levels + 2;
        order = 2;
    }
    as->gpa_bits = bits;
    as->root_pages = 1u << order;
    if (as->h.alloc_contig(as->h.ctx, order, &as->root))
        return AXALLOC_ERR_NO_MEMORY;
    for (uint64_t i = 0; i < as->root_pages * 512ull; i++)
        va(as->root)[i] = 0;
    as->table_frames = as->root_pages;
    *as_out = as;
    return AXALLOC_OK;
}

axalloc_status_t axalloc_as_hw(const axalloc_as_t *as, axalloc_hw_t *o)
{
    o->root = as->root;
    o->root_pages = as->root_pages;
    o->levels = as->levels;
    o->vtcr = arm() ? as->vtcr : 0;
    o->root_pointer = arm() ? as->root
                    : (uint64_t)(as->levels == 3 ? 8 : 9) << 60 | as->root >> 12;
    return AXALLOC_OK;
}

/* The leaf slot of gpa; tables created on the way when make. */
static uint64_t *slot(uint64_t gpa, int make)
{
    uint64_t t = the_as.root;
    for (uint32_t l = 0; l < the_as.levels; l++) {
        uint32_t shift = 12 + 9 * (the_as.levels - 1 - l);
        uint64_t mask = l == 0 ? (the_as.root_pages * 512ull - 1) : 511;
        uint64_t *e = &va(t)[(gpa >> shift) & mask];
        if (l == the_as.levels - 1)
            return e;
        if (!desc_valid(*e)) {
            uint64_t n;
            if (!make || the_as.h.alloc_frame(the_as.h.ctx, &n))
                return 0;
            for (int i = 0; i < 512; i++)
                va(n)[i] = 0;
            the_as.table_frames++;
            __atomic_store_n(e, table_desc(n), __ATOMIC_RELEASE);
        }
        t = desc_addr(*e);
    }
    return 0;
}

static struct region *find(uint64_t gpa)
{
    for (int i = 0; i < NREG; i++)
        if (the_as.reg[i].size && gpa - the_as.reg[i].base < the_as.reg[i].size)
            return &the_as.reg[i];
    return 0;
}

axalloc_status_t axalloc_map_alloc(axalloc_as_t *as, uint64_t gpa, uint64_t size, uint32_t flags,
                                   bool populate)
{
    (void)as;
    (void)populate;
    for (int i = 0; i < NREG; i++)
        if (!the_as.reg[i].size) {
            the_as.reg[i] = (struct region){gpa, size, flags};
            return AXALLOC_OK;
        }
    return AXALLOC_ERR_LIMIT;
}

axalloc_status_t axalloc_handle_fault(axalloc_as_t *as, uint64_t gpa, uint32_t access)
{
    (void)as;
    struct region *r = find(gpa);
    if (!r)
        return AXALLOC_ERR_NOT_MAPPED;
    if (access & ~r->flags)
        return AXALLOC_ERR_ACCESS;
    uint64_t *e = slot(gpa, 1), f;
    if (!e)
        return AXALLOC_ERR_NO_MEMORY;
    if (desc_valid(*e))
        return AXALLOC_OK;
    if (the_as.h.alloc_frame(the_as.h.ctx, &f))
        return AXALLOC_ERR_NO_MEMORY;
    for (int i = 0; i < 512; i++)
        va(f)[i] = 0;
    __atomic_store_n(e, leaf_desc(f, r->flags), __ATOMIC_RELEASE);
    the_as.guest_frames++;
    the_as.faults++;
    return AXALLOC_OK;
}

axalloc_status_t axalloc_translate(const axalloc_as_t *as, uint64_t gpa, uint64_t *hpa,
                                   uint64_t *ps)
{
    (void)as;
    uint64_t *e = slot(gpa, 0);
    if (!e || !desc_valid(*e))
        return AXALLOC_ERR_NOT_MAPPED;
    if (hpa)
        *hpa = desc_addr(*e) | (gpa & 4095);
    if (ps)
        *ps = 4096;
    return AXALLOC_OK;
}

static axalloc_status_t copy(uint64_t gpa, char *buf, size_t len, int write)
{
    while (len) {
        uint64_t hpa, n = 4096 - (gpa & 4095);
        if (n > len)
            n = len;
        if (axalloc_translate(&the_as, gpa, &hpa, 0))
            return AXALLOC_ERR_NOT_MAPPED;
        char *p = (char *)va(hpa & ~4095ull) + (hpa & 4095);
        for (uint64_t i = 0; i < n; i++)
            if (write)
                p[i] = buf[i];
            else
                buf[i] = p[i];
        gpa += n, buf += n, len -= n;
    }
    return AXALLOC_OK;
}
axalloc_status_t axalloc_read(axalloc_as_t *as, uint64_t gpa, void *buf, size_t len)
{
    (void)as;
    return copy(gpa, buf, len, 0);
}
axalloc_status_t axalloc_write(axalloc_as_t *as, uint64_t gpa, const void *buf, size_t len)
{
    (void)as;
    return copy(gpa, (char *)buf, len, 1);
}

axalloc_status_t axalloc_unmap(axalloc_as_t *as, uint64_t gpa, uint64_t size)
{
    (void)as;
    static uint64_t frames[512];
    uint32_t n = 0;
    struct region *r = find(gpa);
    if (!r || r->base != gpa || r->size != size)
        return AXALLOC_ERR_INVALID;   /* the shim unmaps whole regions only */
    for (uint64_t a = gpa; a < gpa + size && n < 512; a += 4096) {
        uint64_t *e = slot(a, 0);
        if (e && desc_valid(*e)) {
            frames[n++] = desc_addr(*e);
            __atomic_store_n(e, 0, __ATOMIC_RELEASE);
        }
    }
    r->size = 0;
    if (the_as.h.flush_tlb)
        the_as.h.flush_tlb(the_as.h.ctx, gpa, size);
    for (uint32_t i = 0; i < n; i++)
        the_as.h.free_frame(the_as.h.ctx, frames[i]);
    the_as.guest_frames -= n;
    return AXALLOC_OK;
}

axalloc_status_t axalloc_as_stats(const axalloc_as_t *as, axalloc_stats_t *o)
{
    *o = (axalloc_stats_t){0};
    o->guest_frames = as->guest_frames;
    o->table_frames = as->table_frames;
    o->faults = as->faults;
    return AXALLOC_OK;
}

static void free_tree(uint64_t t, uint32_t l, uint64_t entries)
{
    for (uint64_t i = 0; i < entries; i++) {
        uint64_t d = va(t)[i];
        if (!desc_valid(d))
            continue;
        if (l + 1 < the_as.levels)
            free_tree(desc_addr(d), l + 1, 512);
        the_as.h.free_frame(the_as.h.ctx, desc_addr(d));
    }
}

void axalloc_as_destroy(axalloc_as_t *as)
{
    if (the_as.h.flush_tlb)
        the_as.h.flush_tlb(the_as.h.ctx, as->base, as->size);
    free_tree(as->root, 0, as->root_pages * 512ull);
    uint32_t order = 0;
    while ((1u << order) < as->root_pages)
        order++;
    the_as.h.free_contig(the_as.h.ctx, as->root, order);
}
#endif
