/*
 * kvm_dirty.c - the peer of libaxalloc's dirty-log rows (issue 12): Linux
 * KVM's own dirty logging of a 1 GiB memslot, KVM_GET_DIRTY_LOG +
 * KVM_CLEAR_DIRTY_LOG with KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, in the same
 * process as the libaxalloc rows (bench/src/dirty.rs calls these functions
 * round by round, ABBA). Linked into axalloc-bench by bench/build.rs.
 *
 * The dirty pages are made the way a guest makes them: a tiny guest (64-bit,
 * CPL3, identity-mapped with 2 MiB pages over the memslot) writes one qword
 * into every `stride`-th page of the 1 GiB slot, then stores to an address
 * outside any memslot (KVM_EXIT_MMIO). Every page of the slot was written once
 * before logging starts, so KVM's translations exist (as libaxalloc's pages
 * are present): a logged write is KVM's write-protection fault, not a first
 * touch.
 *
 * What is timed (CLOCK_MONOTONIC, ns):
 *  - get_ns:   KVM_GET_DIRTY_LOG of the whole slot (manual protect: it only
 *              copies the bitmap out, it neither clears nor protects);
 *  - clear_ns: KVM_CLEAR_DIRTY_LOG of the whole slot with the bitmap GET
 *              returned (clears those bits, write-protects those pages, and
 *              flushes the TLBs once if it protected anything);
 *    get + clear = libaxalloc's axalloc_dirty_log_get(AXALLOC_BITMAP_CLEAR);
 *  - write_ns: the guest's pass over the chosen pages, KVM_RUN to the MMIO
 *              exit (each write to a clean page is one KVM write fault);
 *    rewrite_ns: the same pass again at once (pages already dirty, no fault):
 *              (write - rewrite) / pages = KVM's cost of a logged write fault;
 *  - start/stop: KVM_SET_USER_MEMORY_REGION setting / clearing
 *              KVM_MEM_LOG_DIRTY_PAGES on the 1 GiB slot.
 *
 * Also builds standalone: cc -O2 -DKVMD_MAIN bench/kvm_dirty.c && ./a.out
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define KVMD_PAGE      4096ull
#define KVMD_SYS_SIZE  (2ull << 20)          /* slot 0: tables, GDT, TSS, code */
#define KVMD_DATA_GPA  (1ull << 30)          /* slot 1: the logged 1 GiB */
#define KVMD_MMIO_GPA  (3ull << 30)          /* no memslot: exits as MMIO */
#define KVMD_PML4      0x1000
#define KVMD_PDPT      0x2000
#define KVMD_PD0       0x3000
#define KVMD_PD1       0x4000                /* 4 pages: up to 4 GiB of data */
#define KVMD_PD3       0x8000
#define KVMD_GDT       0x9000
#define KVMD_TSS       0xa000
#define KVMD_CODE      0xb000

struct kvmd {
    int kvm, vm, vcpu;
    struct kvm_run *run;
    size_t run_size;
    uint8_t *sys, *data;
    uint64_t data_size, pages;
    uint64_t *bitmap;
    int logging;
};

static uint64_t kvmd_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void kvmd_wr64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

void kvmd_close(struct kvmd *k)
{
    if (!k)
        return;
    if (k->run)
        munmap(k->run, k->run_size);
    if (k->vcpu >= 0)
        close(k->vcpu);
    if (k->vm >= 0)
        close(k->vm);
    if (k->kvm >= 0)
        close(k->kvm);
    if (k->sys)
        munmap(k->sys, KVMD_SYS_SIZE);
    if (k->data)
        munmap(k->data, k->data_size);
    free(k->bitmap);
    free(k);
}

static int kvmd_slot1(struct kvmd *k, uint32_t flags)
{
    struct kvm_userspace_memory_region r = {
        .slot = 1, .flags = flags, .guest_phys_addr = KVMD_DATA_GPA,
        .memory_size = k->data_size, .userspace_addr = (uint64_t)(uintptr_t)k->data,
    };
    return ioctl(k->vm, KVM_SET_USER_MEMORY_REGION, &r);
}

static void kvmd_seg(struct kvm_segment *s, uint16_t sel, uint8_t type, int code)
{
    memset(s, 0, sizeof(*s));
    s->limit = 0xffffffff;
    s->selector = sel;
    s->type = type;
    s->present = 1;
    s->dpl = 3;
    s->s = 1;
    s->l = code;
    s->db = !code;
    s->g = 1;
}

/* Runs the guest pass: one qword into every stride-th page of the first
 * `count` * stride pages. Returns the ns from KVM_RUN to the MMIO exit. */
static int64_t kvmd_pass(struct kvmd *k, uint64_t stride, uint64_t count, uint64_t value)
{
    struct kvm_regs r;
    memset(&r, 0, sizeof(r));
    r.rip = KVMD_CODE;
    r.rsp = KVMD_CODE + 0x800;
    r.rflags = 0x2;
    r.rdi = KVMD_DATA_GPA;
    r.rdx = stride * KVMD_PAGE;
    r.rcx = count;
    r.rax = value;
    r.rsi = KVMD_MMIO_GPA;
    if (count == 0)
        return 0;
    if (ioctl(k->vcpu, KVM_SET_REGS, &r) < 0)
        return -1;
    uint64_t t0 = kvmd_now();
    for (;;) {
        if (ioctl(k->vcpu, KVM_RUN, 0) < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            return -1;
        }
        if (k->run->exit_reason == KVM_EXIT_MMIO && k->run->mmio.phys_addr == KVMD_MMIO_GPA)
            break;
        fprintf(stderr, "kvm_dirty: unexpected exit %u\n", k->run->exit_reason);
        return -1;
    }
    return (int64_t)(kvmd_now() - t0);
}

/* Opens /dev/kvm and builds the VM with a `mib` MiB data slot (multiple of
 * 2, at most 4096), every page written once by the guest, logging off.
 * Returns 0, 77 when KVM (or manual-protect dirty logging) is unavailable
 * (*why says why), -1 on another error. */
int kvmd_open(uint64_t mib, struct kvmd **out, const char **why)
{
    *out = NULL;
    *why = "";
    if (mib == 0 || mib % 2 || mib > 4096) {
        *why = "bad size";
        return -1;
    }
    struct kvmd *k = calloc(1, sizeof(*k));
    if (!k)
        return -1;
    k->kvm = k->vm = k->vcpu = -1;
    k->data_size = mib << 20;
    k->pages = k->data_size / KVMD_PAGE;
    k->kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (k->kvm < 0) {
        *why = "/dev/kvm is not available";
        kvmd_close(k);
        return 77;
    }
    k->vm = ioctl(k->kvm, KVM_CREATE_VM, 0);
    if (k->vm < 0) {
        *why = "KVM_CREATE_VM failed";
        kvmd_close(k);
        return 77;
    }
    if (ioctl(k->vm, KVM_CHECK_EXTENSION, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2) <= 0) {
        *why = "no KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2";
        kvmd_close(k);
        return 77;
    }
    struct kvm_enable_cap cap = { .cap = KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 };
    cap.args[0] = KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE;   /* not INITIALLY_SET: clean at start */
    if (ioctl(k->vm, KVM_ENABLE_CAP, &cap) < 0) {
        *why = "KVM_ENABLE_CAP(MANUAL_DIRTY_LOG_PROTECT2) failed";
        kvmd_close(k);
        return 77;
    }
    k->sys = mmap(NULL, KVMD_SYS_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    k->data = mmap(NULL, k->data_size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_POPULATE, -1, 0);
    k->bitmap = calloc(k->pages / 64 + 1, 8);
    if (k->sys == MAP_FAILED || k->data == MAP_FAILED || !k->bitmap) {
        if (k->sys == MAP_FAILED)
            k->sys = NULL;
        if (k->data == MAP_FAILED)
            k->data = NULL;
        *why = "out of memory";
        kvmd_close(k);
        return -1;
    }
    struct kvm_userspace_memory_region r0 = {
        .slot = 0, .guest_phys_addr = 0, .memory_size = KVMD_SYS_SIZE,
        .userspace_addr = (uint64_t)(uintptr_t)k->sys,
    };
    if (ioctl(k->vm, KVM_SET_USER_MEMORY_REGION, &r0) < 0 || kvmd_slot1(k, 0) < 0) {
        *why = "KVM_SET_USER_MEMORY_REGION failed";
        kvmd_close(k);
        return -1;
    }

    /* Page tables: identity map with 2 MiB user pages: [0, 2M) (slot 0),
     * the data slot, and one page at KVMD_MMIO_GPA (no slot). */
    uint8_t *s = k->sys;
    const uint64_t pde = 0x87;            /* P | RW | US | PS */
    kvmd_wr64(s + KVMD_PML4, KVMD_PDPT | 7);
    kvmd_wr64(s + KVMD_PDPT + 0 * 8, KVMD_PD0 | 7);
    for (uint64_t g = 0; g < k->data_size >> 30 || g == 0; g++)
        kvmd_wr64(s + KVMD_PDPT + (1 + g) * 8, (KVMD_PD1 + g * 0x1000) | 7);
    kvmd_wr64(s + KVMD_PDPT + 3 * 8, KVMD_PD3 | 7);
    if ((k->data_size >> 30) >= 3) {      /* slot would overlap MMIO at 3 GiB */
        *why = "size too large";
        kvmd_close(k);
        return -1;
    }
    kvmd_wr64(s + KVMD_PD0, 0 | pde);
    for (uint64_t i = 0; i < k->data_size >> 21; i++)
        kvmd_wr64(s + KVMD_PD1 + i * 8, (KVMD_DATA_GPA + (i << 21)) | pde);
    kvmd_wr64(s + KVMD_PD3, KVMD_MMIO_GPA | pde);
    /* GDT: null, -, -, user data (0x18), user code (0x20), TSS (0x28). */
    const uint64_t gdt[5] = { 0, 0x00af9b000000ffffull, 0x00cf93000000ffffull,
                              0x00cff3000000ffffull, 0x00affb000000ffffull };
    memcpy(s + KVMD_GDT, gdt, sizeof(gdt));
    kvmd_wr64(s + KVMD_GDT + 40, 0x67 | (uint64_t)(KVMD_TSS & 0xffffff) << 16 | 0x8bull << 40);
    kvmd_wr64(s + KVMD_GDT + 48, 0);
    s[KVMD_TSS + 102] = 104;
    /* The guest: loop: mov [rdi],rax; add rdi,rdx; dec rcx; jnz loop;
     *        mov [rsi],rax (MMIO exit); jmp $ */
    static const uint8_t code[] = { 0x48, 0x89, 0x07, 0x48, 0x01, 0xd7, 0x48, 0xff, 0xc9, 0x75, 0xf5,
                                    0x48, 0x89, 0x06, 0xeb, 0xfe };
    memcpy(s + KVMD_CODE, code, sizeof(code));

    k->vcpu = ioctl(k->vm, KVM_CREATE_VCPU, 0);
    int sz = ioctl(k->kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (k->vcpu < 0 || sz <= 0) {
        *why = "KVM_CREATE_VCPU failed";
        kvmd_close(k);
        return 77;
    }
    k->run_size = (size_t)sz;
    k->run = mmap(NULL, k->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, k->vcpu, 0);
    if (k->run == MAP_FAILED) {
        k->run = NULL;
        kvmd_close(k);
        return -1;
    }
    struct kvm_cpuid2 *cpuid = NULL;
    for (uint32_t n = 128;; n *= 2) {
        cpuid = calloc(1, sizeof(*cpuid) + n * sizeof(struct kvm_cpuid_entry2));
        if (!cpuid) {
            kvmd_close(k);
            return -1;
        }
        cpuid->nent = n;
        if (ioctl(k->kvm, KVM_GET_SUPPORTED_CPUID, cpuid) == 0)
            break;
        free(cpuid);
        cpuid = NULL;
        if (errno != E2BIG || n > 4096)
            break;
    }
    if (!cpuid || ioctl(k->vcpu, KVM_SET_CPUID2, cpuid) < 0) {
        free(cpuid);
        *why = "KVM_SET_CPUID2 failed";
        kvmd_close(k);
        return 77;
    }
    free(cpuid);
    struct kvm_sregs sr;
    if (ioctl(k->vcpu, KVM_GET_SREGS, &sr) < 0) {
        kvmd_close(k);
        return -1;
    }
    kvmd_seg(&sr.cs, 0x23, 0xb, 1);
    kvmd_seg(&sr.ss, 0x1b, 0x3, 0);
    sr.ds = sr.es = sr.fs = sr.gs = sr.ss;
    memset(&sr.tr, 0, sizeof(sr.tr));
    sr.tr.base = KVMD_TSS;
    sr.tr.limit = 0x67;
    sr.tr.selector = 0x28;
    sr.tr.type = 0xb;
    sr.tr.present = 1;
    memset(&sr.ldt, 0, sizeof(sr.ldt));
    sr.ldt.type = 2;
    sr.ldt.unusable = 1;
    sr.gdt.base = KVMD_GDT;
    sr.gdt.limit = 7 * 8 - 1;
    sr.idt.base = 0;
    sr.idt.limit = 0;
    sr.cr0 = 0x80010033;
    sr.cr3 = KVMD_PML4;
    sr.cr4 = 0x20;
    sr.efer = 0x500;                      /* LMA | LME */
    if (ioctl(k->vcpu, KVM_SET_SREGS, &sr) < 0) {
        *why = "KVM_SET_SREGS (long mode) failed";
        kvmd_close(k);
        return 77;
    }
    /* Every page written once: KVM's translations exist before logging. */
    if (kvmd_pass(k, 1, k->pages, 1) < 0) {
        *why = "the guest did not run";
        kvmd_close(k);
        return -1;
    }
    *out = k;
    return 0;
}

uint64_t kvmd_pages(const struct kvmd *k) { return k->pages; }

/* Dirty logging on (start=1) or off: ns of the KVM_SET_USER_MEMORY_REGION. */
int64_t kvmd_log(struct kvmd *k, int start)
{
    uint64_t t0 = kvmd_now();
    if (kvmd_slot1(k, start ? KVM_MEM_LOG_DIRTY_PAGES : 0) < 0)
        return -1;
    uint64_t t = kvmd_now() - t0;
    k->logging = start;
    return (int64_t)t;
}

/* The guest writes every `stride`-th page (stride 0: none), twice: out[0] =
 * first pass ns (clean pages: KVM write faults), out[1] = second pass ns. */
int kvmd_dirty(struct kvmd *k, uint64_t stride, uint64_t value, int64_t out[2])
{
    uint64_t count = stride ? (k->pages + stride - 1) / stride : 0;
    out[0] = kvmd_pass(k, stride, count, value);
    out[1] = kvmd_pass(k, stride, count, value + 1);
    return out[0] < 0 || out[1] < 0 ? -1 : 0;
}

/* GET + CLEAR of the whole slot. out[0] = GET ns, out[1] = CLEAR ns, out[2]
 * = dirty pages reported. Returns 0 or -1. */
int kvmd_get_clear(struct kvmd *k, int64_t out[3])
{
    const uint64_t words = k->pages / 64;
    struct kvm_dirty_log log;
    memset(&log, 0, sizeof(log));
    log.slot = 1;
    log.dirty_bitmap = k->bitmap;
    uint64_t t0 = kvmd_now();
    if (ioctl(k->vm, KVM_GET_DIRTY_LOG, &log) < 0)
        return -1;
    uint64_t t1 = kvmd_now();
    struct kvm_clear_dirty_log clr;
    memset(&clr, 0, sizeof(clr));
    clr.slot = 1;
    clr.first_page = 0;
    clr.num_pages = (uint32_t)k->pages;
    clr.dirty_bitmap = k->bitmap;
    if (ioctl(k->vm, KVM_CLEAR_DIRTY_LOG, &clr) < 0)
        return -1;
    uint64_t t2 = kvmd_now();
    uint64_t n = 0;
    for (uint64_t i = 0; i < words; i++)
        n += (uint64_t)__builtin_popcountll(k->bitmap[i]);
    out[0] = (int64_t)(t1 - t0);
    out[1] = (int64_t)(t2 - t1);
    out[2] = (int64_t)n;
    return 0;
}

/* The bitmap of the last GET (bit i = page i of the slot). */
const uint64_t *kvmd_bitmap(const struct kvmd *k) { return k->bitmap; }

#ifdef KVMD_MAIN
int main(int argc, char **argv)
{
    uint64_t mib = argc > 1 ? strtoull(argv[1], NULL, 10) : 1024;
    struct kvmd *k;
    const char *why;
    int rc = kvmd_open(mib, &k, &why);
    if (rc) {
        printf("kvm_dirty: %s (%d)\n", why, rc);
        return rc == 77 ? 77 : 1;
    }
    printf("start: %.3f ms\n", kvmd_log(k, 1) / 1e6);
    static const uint64_t strides[] = { 0, 100, 10, 1 };
    for (int rep = 0; rep < 3; rep++) {
        for (int i = 0; i < 4; i++) {
            int64_t w[2], g[3];
            if (kvmd_dirty(k, strides[i], rep * 10 + i, w) || kvmd_get_clear(k, g)) {
                perror("kvm_dirty");
                return 1;
            }
            uint64_t want = strides[i] ? (k->pages + strides[i] - 1) / strides[i] : 0;
            printf("stride %3llu: dirty %lld (want %llu) get %.3f ms clear %.3f ms = %.2f ns/page; "
                   "write pass %.2f ms, rewrite %.2f ms -> %.0f ns per logged write fault\n",
                   (unsigned long long)strides[i], (long long)g[2], (unsigned long long)want,
                   g[0] / 1e6, g[1] / 1e6, (double)(g[0] + g[1]) / k->pages, w[0] / 1e6, w[1] / 1e6,
                   want ? (double)(w[0] - w[1]) / want : 0.0);
        }
    }
    printf("stop: %.3f ms\n", kvmd_log(k, 0) / 1e6);
    kvmd_close(k);
    return 0;
}
#endif
