/*
 * vmm.c - axalloc-demo: a minimal KVM VMM whose guest page table is built by
 * libaxalloc, with guest RAM populated lazily, one page per guest #PF.
 *
 * This machine's KVM is a software one (shadow paging, no nested SVM/VMX), so
 * we cannot hand KVM a nested page table. Instead libaxalloc builds the
 * guest's own x86-64 page table (AXALLOC_FORMAT_X86_NPT is that format, U=1):
 * libaxalloc "guest-physical" = guest virtual address, "host-physical" = GPA
 * in memslot 0; CR3 = axalloc_as_root(). KVM's page walker walks those
 * tables, sets A/D bits in them and raises #PF on non-present entries; the
 * guest's tiny #PF handler reports the fault through an MMIO doorbell and the
 * VMM resolves it with axalloc_handle_fault. See README.md.
 *
 * Files: vmm.c (KVM plumbing, workload driver, report), guest.S (guest
 * code), frame_pool.c (the libaxalloc hooks), layout.h (shared addresses).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/kvm.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "axalloc.h"
#include "demo.h"
#include "frame_pool.h"
#include "layout.h"

/* What one run (lazy or eager) measured. */
struct result {
    bool eager, huge, completed;
    uint64_t mem, pages, seed;
    uint64_t map_ram_ns, fill_ns, verify_ns, run_ns, host_verify_ns, destroy_ns;
    uint64_t faults, faults_by_access[3];       /* READ, WRITE, EXEC */
    uint64_t fault_median_ns, fault_total_ns;   /* axalloc_handle_fault alone */
    uint64_t page_median_ns;                    /* PF exit to PF exit while filling */
    axalloc_stats_t stats;                      /* before destroy */
    uint64_t pool_in_use, pool_peak, pool_frames;
    uint64_t flushes, flush_ns;
    int failed;                                 /* failed checks */
};

/* ------------------------------------------------------------------ checks */

int g_failed;

void check(bool ok, const char *fmt, ...)
{
    va_list ap;
    printf("  [%s] ", ok ? "PASS" : "FAIL");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    if (!ok)
        g_failed++;
}

const char *access_name(uint32_t a)
{
    return a == AXALLOC_WRITE ? "write" : a == AXALLOC_EXEC ? "exec" : "read";
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

uint64_t median(uint64_t *v, uint64_t n)
{
    if (n == 0)
        return 0;
    qsort(v, n, sizeof(*v), cmp_u64);
    return v[n / 2];
}


/* --------------------------------------------------------------------- KVM */

/* Host pointer to a system-page VA (GDT/IDT/TSS/mailbox) or a kernel-stack VA. */
void *sys_host(struct vm *v, uint64_t va)
{
    if (va >= SYS_VA && va < SYS_VA + 4 * PAGE_SIZE)
        return v->slot + SYS_GPA + (va - SYS_VA);
    if (va >= KSTACK_VA && va < KSTACK_VA + STACK_PAGES * PAGE_SIZE)
        return v->slot + KSTACK_GPA + (va - KSTACK_VA);
    return NULL;
}


/* Opens /dev/kvm and checks that a VM with a vCPU can be created.
 * Returns the fd, or -1 after printing the one-line reason. */
static int kvm_probe(void)
{
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) {
        printf("axalloc-demo: skipped: /dev/kvm is not available (%s)\n", strerror(errno));
        return -1;
    }
    int ver = ioctl(kvm, KVM_GET_API_VERSION, 0);
    if (ver != KVM_API_VERSION) {
        printf("axalloc-demo: skipped: /dev/kvm is unusable (API version %d, want %d)\n",
               ver, KVM_API_VERSION);
        close(kvm);
        return -1;
    }
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    int vcpu = vm < 0 ? -1 : ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vm < 0 || vcpu < 0) {
        printf("axalloc-demo: skipped: /dev/kvm is unusable (cannot create a %s: %s)\n",
               vm < 0 ? "VM" : "vCPU", strerror(errno));
        if (vm >= 0)
            close(vm);
        close(kvm);
        return -1;
    }
    close(vcpu);
    close(vm);
    return kvm;
}

int vm_create(struct vm *v, int kvm, uint64_t slot_size)
{
    memset(v, 0, sizeof(*v));
    v->kvm = kvm;
    v->vm = v->vcpu = -1;
    v->slot_size = slot_size;
    v->slot = mmap(NULL, slot_size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_POPULATE, -1, 0);
    if (v->slot == MAP_FAILED) {
        v->slot = NULL;
        perror("axalloc-demo: mmap memslot");
        return -1;
    }
    v->vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (v->vm < 0) {
        perror("axalloc-demo: KVM_CREATE_VM");
        return -1;
    }
    struct kvm_userspace_memory_region region = {
        .slot = 0, .guest_phys_addr = 0, .memory_size = slot_size,
        .userspace_addr = (uint64_t)(uintptr_t)v->slot,
    };
    if (ioctl(v->vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) {
        perror("axalloc-demo: KVM_SET_USER_MEMORY_REGION");
        return -1;
    }
    v->vcpu = ioctl(v->vm, KVM_CREATE_VCPU, 0);
    if (v->vcpu < 0) {
        perror("axalloc-demo: KVM_CREATE_VCPU");
        return -1;
    }
    int sz = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (sz <= 0) {
        perror("axalloc-demo: KVM_GET_VCPU_MMAP_SIZE");
        return -1;
    }
    v->run_size = (size_t)sz;
    v->run = mmap(NULL, v->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, v->vcpu, 0);
    if (v->run == MAP_FAILED) {
        v->run = NULL;
        perror("axalloc-demo: mmap kvm_run");
        return -1;
    }

    /* KVM refuses EFER.LME until the vCPU has a CPUID that offers long mode. */
    struct kvm_cpuid2 *cpuid = NULL;
    for (uint32_t n = 128;; n *= 2) {
        cpuid = calloc(1, sizeof(*cpuid) + n * sizeof(struct kvm_cpuid_entry2));
        if (!cpuid)
            return -1;
        cpuid->nent = n;
        if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, cpuid) == 0)
            break;
        free(cpuid);
        if (errno != E2BIG || n > 4096) {
            perror("axalloc-demo: KVM_GET_SUPPORTED_CPUID");
            return -1;
        }
    }
    int rc = ioctl(v->vcpu, KVM_SET_CPUID2, cpuid);
    free(cpuid);
    if (rc < 0) {
        perror("axalloc-demo: KVM_SET_CPUID2");
        return -1;
    }
    return 0;
}

void vm_destroy(struct vm *v)
{
    if (v->run)
        munmap(v->run, v->run_size);
    if (v->vcpu >= 0)
        close(v->vcpu);
    if (v->vm >= 0)
        close(v->vm);
    if (v->slot)
        munmap(v->slot, v->slot_size);
}

/* GDT, IDT, TSS in the system pages; the guest code at CODE_GPA. */
void guest_install(struct vm *v)
{
    size_t len = (size_t)(guest_code_end - guest_code_start);
    memcpy(v->slot + CODE_GPA, guest_code_start, len);

    uint8_t *gdt = sys_host(v, GDT_VA);
    const uint64_t desc[5] = {
        0,
        0x00af9b000000ffffull,   /* 0x08 kernel code: L=1, DPL 0 */
        0x00cf93000000ffffull,   /* 0x10 kernel data */
        0x00cff3000000ffffull,   /* 0x18 user data, DPL 3 */
        0x00affb000000ffffull,   /* 0x20 user code: L=1, DPL 3 */
    };
    memcpy(gdt, desc, sizeof(desc));
    uint64_t tss = TSS_VA;        /* 0x28: 64-bit TSS (busy), limit 0x67 */
    wr64(gdt + 40, 0x67 | (tss & 0xffffff) << 16 | 0x8bull << 40 | ((tss >> 24) & 0xff) << 56);
    wr64(gdt + 48, tss >> 32);

    uint8_t *idt = sys_host(v, IDT_VA);
    for (uint64_t vec = 0; vec < 32; vec++) {
        const uint8_t *h = vec == 14 ? guest_pf_handler : guest_exc_stubs + 16 * vec;
        uint64_t off = CODE_VA + (uint64_t)(h - guest_code_start);
        /* 64-bit interrupt gate, DPL 0, present, selector = kernel code */
        wr64(idt + 16 * vec, (off & 0xffff) | (uint64_t)SEL_KCODE << 16 | 0x8eull << 40 |
                                 ((off >> 16) & 0xffff) << 48);
        wr64(idt + 16 * vec + 8, off >> 32);
    }

    uint8_t *t = sys_host(v, TSS_VA);
    wr64(t + 4, KSTACK_VA + STACK_PAGES * PAGE_SIZE);  /* RSP0 */
    t[102] = 104;                                       /* I/O map base: none */
}

static void set_seg(struct kvm_segment *s, uint16_t sel, uint8_t type, uint8_t dpl, bool code)
{
    memset(s, 0, sizeof(*s));
    s->base = 0;
    s->limit = 0xffffffff;
    s->selector = sel;
    s->type = type;
    s->present = 1;
    s->dpl = dpl;
    s->s = 1;
    s->l = code;
    s->db = !code;
    s->g = 1;
}

/* Long mode, paging on with CR3 = libaxalloc's root, starting at CPL3 at
 * `entry` (a label of guest.S). */
int vcpu_setup(struct vm *v, uint64_t cr3, const uint8_t *entry)
{
    struct kvm_sregs sr;
    if (ioctl(v->vcpu, KVM_GET_SREGS, &sr) < 0) {
        perror("axalloc-demo: KVM_GET_SREGS");
        return -1;
    }
    set_seg(&sr.cs, SEL_UCODE, 0xb, 3, true);
    set_seg(&sr.ss, SEL_UDATA, 0x3, 3, false);
    sr.ds = sr.es = sr.fs = sr.gs = sr.ss;
    memset(&sr.tr, 0, sizeof(sr.tr));
    sr.tr.base = TSS_VA;
    sr.tr.limit = 0x67;
    sr.tr.selector = SEL_TSS;
    sr.tr.type = 0xb;
    sr.tr.present = 1;
    memset(&sr.ldt, 0, sizeof(sr.ldt));
    sr.ldt.type = 2;
    sr.ldt.unusable = 1;
    sr.gdt.base = GDT_VA;
    sr.gdt.limit = 7 * 8 - 1;
    sr.idt.base = IDT_VA;
    sr.idt.limit = 32 * 16 - 1;
    sr.cr0 = 0x80010033;         /* PG | WP | NE | ET | MP | PE */
    sr.cr3 = cr3;
    sr.cr4 = 0x20;               /* PAE */
    sr.efer = 0xd00;             /* NXE | LMA | LME: NPT leaves carry NX */
    if (ioctl(v->vcpu, KVM_SET_SREGS, &sr) < 0) {
        perror("axalloc-demo: KVM_SET_SREGS (long mode)");
        return -1;
    }
    struct kvm_regs r;
    memset(&r, 0, sizeof(r));
    r.rip = CODE_VA + (uint64_t)(entry - guest_code_start);
    r.rsp = USTACK_VA + STACK_PAGES * PAGE_SIZE;
    r.rflags = 0x2;
    if (ioctl(v->vcpu, KVM_SET_REGS, &r) < 0) {
        perror("axalloc-demo: KVM_SET_REGS");
        return -1;
    }
    return 0;
}

/* RIP saved by the CPU in the exception frame (rsp_off = its offset from RSP). */
uint64_t frame_rip(struct vm *v, uint64_t rsp_off)
{
    struct kvm_regs r;
    if (ioctl(v->vcpu, KVM_GET_REGS, &r) < 0)
        return 0;
    void *p = sys_host(v, r.rsp + rsp_off);
    return p ? rd64(p) : 0;
}

/* ----------------------------------------------------------------- one run */

void print_layout(uint64_t mem, uint64_t slot_size, uint64_t pool_frames)
{
    printf("memory layout (guest virtual -> memslot GPA; the table is libaxalloc's, NPT format):\n");
    printf("  code      VA 0x%08x -> GPA 0x%08x  %3d KiB  R-X  map_linear\n", CODE_VA, CODE_GPA, CODE_PAGES * 4);
    printf("  GDT/IDT/TSS/mailbox 0x%08x -> 0x%08x  16 KiB  RW-  map_linear\n", SYS_VA, SYS_GPA);
    printf("  #PF stack VA 0x%08x -> GPA 0x%08x  %3d KiB  RW-  map_linear\n", KSTACK_VA, KSTACK_GPA, STACK_PAGES * 4);
    printf("  user stack VA 0x%08x -> GPA 0x%08x %3d KiB  RW-  map_linear\n", USTACK_VA, USTACK_GPA, STACK_PAGES * 4);
    printf("  MMIO      VA 0x%08x -> GPA 0x%08x    4 KiB  RW- DEVICE, no memslot (doorbells)\n", MMIO_VA, MMIO_GPA);
    printf("  RAM       VA 0x%08x .. 0x%08" PRIx64 "  %" PRIu64 " MiB  RW-  map_alloc\n",
           RAM_VA, RAM_VA + mem, mem >> 20);
    printf("  frame pool GPA 0x%08x .. 0x%08" PRIx64 "  %" PRIu64 " frames (guest frames, page tables, library state)\n",
           POOL_GPA, POOL_GPA + pool_frames * PAGE_SIZE, pool_frames);
    printf("  memslot 0 GPA 0 .. 0x%" PRIx64 " (%" PRIu64 " MiB of host memory, pre-faulted like a hypervisor's RAM)\n\n",
           slot_size, slot_size >> 20);
}

#define BLOCK_BYTES (2ull << 20)

static int run_once(int kvm, const struct opts *o, bool eager, bool reserve, bool huge, struct result *res)
{
    const uint64_t mem = o->mem_mib << 20, pages = mem / PAGE_SIZE;
    /* guest frames + one table per 512 pages + upper levels and library state */
    const uint64_t pool_frames = pages + pages / 256 + 512;
    /* --huge: 2 MiB blocks after the frames, one per 2 MiB of RAM */
    const uint64_t block_base = (POOL_GPA + pool_frames * PAGE_SIZE + BLOCK_BYTES - 1) & ~(BLOCK_BYTES - 1);
    const uint64_t nblocks = huge ? mem / BLOCK_BYTES : 0;
    const uint64_t slot_size = huge ? block_base + nblocks * BLOCK_BYTES : POOL_GPA + pool_frames * PAGE_SIZE;
    int failed_before = g_failed, ret = -1;
    struct vm v;
    struct frame_pool pool;
    axalloc_as_t *as = NULL;
    uint64_t *fault_ns = NULL, *page_ns = NULL;
    uint8_t *buf = NULL;

    memset(res, 0, sizeof(*res));
    memset(&pool, 0, sizeof(pool));
    v.slot = NULL;
    v.run = NULL;
    v.vm = v.vcpu = -1;
    res->eager = eager;
    res->huge = huge;
    res->mem = mem;
    res->pages = pages;
    res->pool_frames = pool_frames;
    res->seed = 0x9e3779b97f4a7c15ull ^ now_ns();

    printf("=== %s run: %" PRIu64 " MiB of guest RAM, map_alloc(populate=%s%s)%s%s ===\n",
           eager ? "eager" : huge ? "lazy 2 MiB" : "lazy", o->mem_mib, eager ? "true" : "false",
           huge ? ", AXALLOC_HUGE: 2 MiB blocks from alloc_contig(9)" : "",
           reserve ? ", every page's frame zeroed ahead in axalloc_reserve" : "",
           o->no_flush ? ", WITHOUT flush_tlb hook (--no-flush)" : "");
    if (vm_create(&v, kvm, slot_size) < 0 ||
        pool_init(&pool, v.slot, slot_size, POOL_GPA, pool_frames) < 0 ||
        (huge && pool_add_blocks(&pool, block_base, nblocks) < 0))
        goto out;
    fault_ns = calloc(pages + 16, sizeof(*fault_ns));
    page_ns = calloc(pages + 16, sizeof(*page_ns));
    if (!fault_ns || !page_ns)
        goto out;

    /* The address space: the guest's own page table, window = lower half. */
    axalloc_config_t cfg = { .struct_size = sizeof(cfg), .format = AXALLOC_FORMAT_X86_NPT, .flags = AXALLOC_CFG_NO_HUGE_1G,
                             .base = 0, .size = WINDOW_SIZE };
    axalloc_hooks_t hooks = pool_hooks(&pool, !o->no_flush);
    axalloc_status_t st = axalloc_as_create(&cfg, &hooks, &as);
    if (st != AXALLOC_OK) {
        printf("  axalloc_as_create: %s\n", axalloc_status_str(st));
        goto out;
    }
    const struct { const char *what; uint64_t va, gpa, size; uint32_t flags; } lin[] = {
        { "code", CODE_VA, CODE_GPA, CODE_PAGES * PAGE_SIZE, AXALLOC_READ | AXALLOC_EXEC },
        { "system pages", SYS_VA, SYS_GPA, 4 * PAGE_SIZE, AXALLOC_READ | AXALLOC_WRITE },
        { "kernel stack", KSTACK_VA, KSTACK_GPA, STACK_PAGES * PAGE_SIZE, AXALLOC_READ | AXALLOC_WRITE },
        { "user stack", USTACK_VA, USTACK_GPA, STACK_PAGES * PAGE_SIZE, AXALLOC_READ | AXALLOC_WRITE },
        { "MMIO", MMIO_VA, MMIO_GPA, PAGE_SIZE, AXALLOC_READ | AXALLOC_WRITE | AXALLOC_DEVICE },
    };
    for (size_t i = 0; i < sizeof(lin) / sizeof(lin[0]); i++) {
        st = axalloc_map_linear(as, lin[i].va, lin[i].gpa, lin[i].size, lin[i].flags);
        if (st != AXALLOC_OK) {
            printf("  axalloc_map_linear(%s): %s\n", lin[i].what, axalloc_status_str(st));
            goto out;
        }
    }
    uint64_t t0 = now_ns();
    st = axalloc_map_alloc(as, RAM_VA, mem, AXALLOC_READ | AXALLOC_WRITE | (huge ? AXALLOC_HUGE : 0), eager);
    res->map_ram_ns = now_ns() - t0;
    if (st != AXALLOC_OK) {
        printf("  axalloc_map_alloc(RAM): %s\n", axalloc_status_str(st));
        goto out;
    }
    if (reserve) {
        /* What a hypervisor's idle loop would do ahead of the guest: zeroed
         * frames ready, so each fault installs one without zeroing or a hook. */
        t0 = now_ns();
        st = axalloc_reserve(as, pages);
        check(st == AXALLOC_OK, "axalloc_reserve(%" PRIu64 ") -> %s", pages, axalloc_status_str(st));
        axalloc_stats_t rs;
        check(axalloc_as_stats(as, &rs) == AXALLOC_OK && rs.reserve_frames == pages,
              "stats.reserve_frames == %" PRIu64, pages);
        printf("  axalloc_reserve(%" PRIu64 " frames): %.1f ms (zeroing done here, off the fault path)\n", pages,
               (double)(now_ns() - t0) / 1e6);
    }
    if ((size_t)(guest_code_end - guest_code_start) > CODE_PAGES * PAGE_SIZE) {
        printf("  guest code does not fit in %d pages\n", CODE_PAGES);
        goto out;
    }
    guest_install(&v);
    const uint64_t unmap_va = RAM_VA + (pages / 2) * PAGE_SIZE;
    wr64(sys_host(&v, MB_RAM_BASE), RAM_VA);
    wr64(sys_host(&v, MB_RAM_END), RAM_VA + mem);
    wr64(sys_host(&v, MB_SEED), res->seed);
    wr64(sys_host(&v, MB_UNMAP_VA), unmap_va);
    wr64(sys_host(&v, MB_BAD_VA), o->bad_access ? RAM_VA + mem : 0);
    if (vcpu_setup(&v, axalloc_as_root(as), guest_user_entry) < 0)
        goto out;

    /* ---- run the guest until it reports done (or something goes wrong) */
    uint64_t nfault = 0, npage = 0, last_pf = 0, filled_at = 0, verified_at = 0;
    uint64_t guest_mismatch = UINT64_MAX, retouch_nonzero = UINT64_MAX;
    uint64_t old_hpa = 0, flushes_before = 0, repeat = 0, last_key = UINT64_MAX;
    bool filled = false, done = false;
    const uint64_t start = now_ns();
    while (!done) {
        if (ioctl(v.vcpu, KVM_RUN, 0) < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            perror("axalloc-demo: KVM_RUN");
            goto out;
        }
        const uint64_t t_exit = now_ns();
        struct kvm_run *kr = v.run;
        if (kr->exit_reason != KVM_EXIT_MMIO) {
            printf("  guest stopped unexpectedly: exit reason %u", kr->exit_reason);
            if (kr->exit_reason == KVM_EXIT_SHUTDOWN)
                printf(" (shutdown: triple fault)");
            else if (kr->exit_reason == KVM_EXIT_INTERNAL_ERROR)
                printf(" (internal error, suberror %u)", kr->internal.suberror);
            else if (kr->exit_reason == KVM_EXIT_FAIL_ENTRY)
                printf(" (entry failed, reason 0x%llx)",
                       (unsigned long long)kr->fail_entry.hardware_entry_failure_reason);
            struct kvm_regs r;
            if (ioctl(v.vcpu, KVM_GET_REGS, &r) == 0)
                printf(", rip 0x%llx", (unsigned long long)r.rip);
            printf("\n");
            goto out;
        }
        uint64_t addr = kr->mmio.phys_addr, val = 0;
        if (!kr->mmio.is_write) {
            memset(kr->mmio.data, 0, sizeof(kr->mmio.data));
            printf("  unexpected MMIO read at GPA 0x%" PRIx64 "\n", addr);
            goto out;
        }
        memcpy(&val, kr->mmio.data, kr->mmio.len < 8 ? kr->mmio.len : 8);
        switch (addr - MMIO_GPA + MMIO_VA) {
        case MMIO_PF: {
            const uint64_t cr2 = rd64(sys_host(&v, MB_CR2)), ec = val;
            const uint32_t access = (ec & PF_ID) ? AXALLOC_EXEC : (ec & PF_W) ? AXALLOC_WRITE : AXALLOC_READ;
            if (ec & PF_RSVD) {
                printf("  GUEST FAULT: reserved bit set in a page-table entry for VA 0x%" PRIx64
                       " (error code 0x%" PRIx64 ", rip 0x%" PRIx64 ") - a bad entry from libaxalloc\n",
                       cr2, ec, frame_rip(&v, 16));
                goto out;
            }
            const uint64_t key = (cr2 & ~0xfffull) | (ec & 0x1f);
            repeat = key == last_key ? repeat + 1 : 0;
            last_key = key;
            if (repeat >= 3) {
                printf("  GUEST FAULT LOOP: #PF at VA 0x%" PRIx64 " (error code 0x%" PRIx64
                       ") repeats although axalloc_handle_fault returned OK\n", cr2, ec);
                goto out;
            }
            const uint64_t f0 = now_ns();
            st = axalloc_handle_fault(as, cr2, access);
            const uint64_t f1 = now_ns();
            if (st != AXALLOC_OK) {
                printf("  GUEST FAULT: %s of VA 0x%" PRIx64 " at rip 0x%" PRIx64 " (error code 0x%" PRIx64
                       "): axalloc_handle_fault -> %s; a real guest fault, the guest is stopped\n",
                       access_name(access), cr2, frame_rip(&v, 16), ec, axalloc_status_str(st));
                goto out;
            }
            if (nfault < pages + 16)
                fault_ns[nfault] = f1 - f0;
            nfault++;
            res->faults_by_access[access == AXALLOC_READ ? 0 : access == AXALLOC_WRITE ? 1 : 2]++;
            if (!filled && last_pf && npage < pages + 16)
                page_ns[npage++] = t_exit - last_pf;
            last_pf = t_exit;
            break;
        }
        case MMIO_EXC: {
            const bool has_ec = val == 8 || (val >= 10 && val <= 14) || val == 17 || val == 21 ||
                                val == 29 || val == 30;
            printf("  GUEST EXCEPTION: vector %" PRIu64 " at rip 0x%" PRIx64 "; the guest is stopped\n",
                   val, frame_rip(&v, has_ec ? 8 : 0));
            goto out;
        }
        case MMIO_FILLED:
            filled = true;
            filled_at = t_exit;
            break;
        case MMIO_VERIFIED:
            guest_mismatch = val;
            verified_at = t_exit;
            check(val == 0, "guest wrote and verified all %" PRIu64 " pages: %" PRIu64 " mismatching qwords",
                  pages, val);
            break;
        case MMIO_UNMAP: {
            /* The unmap -> re-touch cycle: take the page away (its frame goes
             * back to the pool after flush_tlb), map it again (lazily in the
             * lazy run), and let the guest read it. */
            if (val != unmap_va) {
                printf("  guest asked to unmap 0x%" PRIx64 ", expected 0x%" PRIx64 "\n", val, unmap_va);
                goto out;
            }
            uint64_t psz = 0;
            st = axalloc_translate(as, val, &old_hpa, &psz);
            if (huge) {
                /* Discard one 4 KiB page of a 2 MiB page while the guest
                 * runs: the block is split into 512 entries over the same
                 * memory, the page goes lazy (its next access faults in a
                 * zeroed 4 KiB frame), the other 511 keep their data, and
                 * the block stays (its other pages are still mapped). */
                check(st == AXALLOC_OK && psz == BLOCK_BYTES, "discard cycle: VA 0x%" PRIx64
                      " is backed by a 2 MiB page (GPA 0x%" PRIx64 ") before discard", val, old_hpa);
                pool_flush_hint(&pool, val, PAGE_SIZE, &old_hpa, 1);
                flushes_before = pool.flushes;
                const uint64_t block_frees = pool.block_frees;
                st = axalloc_discard(as, val, PAGE_SIZE);
                check(st == AXALLOC_OK, "axalloc_discard(0x%" PRIx64 ", 4 KiB) of part of a 2 MiB page -> %s", val,
                      axalloc_status_str(st));
                if (!o->no_flush)
                    check(pool.flushes == flushes_before + 1 && pool.last_flush_gpa <= val &&
                          pool.last_flush_gpa + pool.last_flush_size >= val + PAGE_SIZE,
                          "discard called flush_tlb once over [0x%" PRIx64 ", +0x%" PRIx64 ") covering the page",
                          pool.last_flush_gpa, pool.last_flush_size);
                uint64_t nb = 0, nps = 0;
                const bool gone = axalloc_translate(as, val, NULL, NULL) == AXALLOC_ERR_NOT_MAPPED;
                const bool next = axalloc_translate(as, val + PAGE_SIZE, &nb, &nps) == AXALLOC_OK;
                check(gone && next && nps == PAGE_SIZE && nb == old_hpa + PAGE_SIZE && pool.block_frees == block_frees,
                      "the 2 MiB page is split over the same block: VA 0x%" PRIx64 " lazy again, its neighbour "
                      "-> GPA 0x%" PRIx64 " (4 KiB), the block kept", val, nb);
                break;
            }
            check(st == AXALLOC_OK && psz == PAGE_SIZE, "unmap cycle: VA 0x%" PRIx64 " is backed by frame GPA 0x%"
                  PRIx64 " (4 KiB) before unmap", val, old_hpa);
            pool.watch_hpa = old_hpa;
            pool_flush_hint(&pool, val, PAGE_SIZE, &old_hpa, 1);
            flushes_before = pool.flushes;
            const uint64_t precise_before = pool.precise_flushes;
            st = axalloc_unmap(as, val, PAGE_SIZE);
            check(st == AXALLOC_OK, "axalloc_unmap(0x%" PRIx64 ", 4 KiB) -> %s", val, axalloc_status_str(st));
            if (!o->no_flush)
                check(pool.flushes == flushes_before + 1 && pool.last_flush_gpa <= val &&
                      pool.last_flush_gpa + pool.last_flush_size >= val + PAGE_SIZE,
                      "unmap called flush_tlb %" PRIu64 " time(s) over [0x%" PRIx64 ", +0x%" PRIx64
                      ") covering the page: %s, %.1f us", pool.flushes - flushes_before, pool.last_flush_gpa, pool.last_flush_size,
                      pool.precise_flushes > precise_before ? "KVM dropped its translations to the old frame" : "whole memslot",
                      us(pool.last_flush_ns));
            check(pool.watch_freed && (o->no_flush || pool.watch_flushes_at_free > flushes_before),
                  "old frame 0x%" PRIx64 " returned to the pool%s", old_hpa,
                  o->no_flush ? " (no flush hook)" : " after the flush");
            check(axalloc_translate(as, val, NULL, NULL) == AXALLOC_ERR_NOT_MAPPED,
                  "VA 0x%" PRIx64 " no longer translates", val);
            st = axalloc_map_alloc(as, val, PAGE_SIZE, AXALLOC_READ | AXALLOC_WRITE, eager);
            check(st == AXALLOC_OK, "axalloc_map_alloc(0x%" PRIx64 ", 4 KiB, populate=%s) -> %s", val,
                  eager ? "true" : "false", axalloc_status_str(st));
            break;
        }
        case MMIO_RETOUCHED: {
            retouch_nonzero = val;
            uint64_t new_hpa = 0;
            st = axalloc_translate(as, unmap_va, &new_hpa, NULL);
            check(val == 0, "re-touched page reads as zeros in the guest (%" PRIu64 " nonzero qwords of 512)%s",
                  val, val ? ": the guest still sees the old frame (stale translation)" : "");
            check(st == AXALLOC_OK, "re-touched page is backed by frame GPA 0x%" PRIx64 " (old frame 0x%" PRIx64
                  "%s)", new_hpa, old_hpa, new_hpa == old_hpa ? ", the same one" : ", a different one");
            if (huge)
                check(new_hpa >= POOL_GPA && new_hpa < POOL_GPA + pool_frames * PAGE_SIZE,
                      "the discarded page of the split block came back as a 4 KiB frame from the pool");
            break;
        }
        case MMIO_DONE:
            done = true;
            break;
        default:
            printf("  unexpected MMIO write at GPA 0x%" PRIx64 " (value 0x%" PRIx64 ")\n", addr, val);
            goto out;
        }
    }
    res->run_ns = now_ns() - start;
    res->fill_ns = filled_at - start;
    res->verify_ns = verified_at - filled_at;
    res->faults = nfault;
    uint64_t nrec = nfault < pages + 16 ? nfault : pages + 16;
    for (uint64_t i = 0; i < nrec; i++)
        res->fault_total_ns += fault_ns[i];
    res->fault_median_ns = median(fault_ns, nrec);
    res->page_median_ns = median(page_ns, npage);
    res->completed = true;

    /* ---- guest-side results */
    if (guest_mismatch == UINT64_MAX || retouch_nonzero == UINT64_MAX)
        check(false, "the guest reported every phase");
    const uint64_t want_faults = eager ? 0 : huge ? pages / 512 + 1 : pages + 1;
    check(nfault == want_faults, "guest #PF handled: %" PRIu64 " (read %" PRIu64 ", write %" PRIu64 ", exec %" PRIu64
          "); expected %" PRIu64 " = %s", nfault, res->faults_by_access[0], res->faults_by_access[1],
          res->faults_by_access[2], want_faults,
          eager ? "none, all populated" : huge ? "one per 2 MiB + the re-touch" : "one per page + the re-touch");

    /* ---- host-side verification through the library */
    const size_t chunk = 1 << 20;
    buf = malloc(chunk);
    if (!buf)
        goto out;
    uint64_t host_bad = 0, read_err = 0, present = 0, not_4k = 0, in_blocks = 0;
    t0 = now_ns();
    for (uint64_t off = 0; off < mem; off += chunk) {
        size_t n = mem - off < chunk ? (size_t)(mem - off) : chunk;
        if (axalloc_read(as, RAM_VA + off, buf, n) != AXALLOC_OK) {
            read_err++;
            continue;
        }
        for (size_t i = 0; i < n; i += 8)
            host_bad += rd64(buf + i) != ((RAM_VA + off + i) ^ res->seed);
    }
    res->host_verify_ns = now_ns() - t0;
    for (uint64_t pg = 0; pg < pages; pg++) {
        uint64_t hpa, psz;
        if (axalloc_translate(as, RAM_VA + pg * PAGE_SIZE, &hpa, &psz) == AXALLOC_OK) {
            present++;
            bool block = huge && hpa >= block_base && hpa < block_base + nblocks * BLOCK_BYTES;
            in_blocks += block;
            not_4k += !block && (psz != PAGE_SIZE || hpa < POOL_GPA || hpa >= POOL_GPA + pool_frames * PAGE_SIZE);
        }
    }
    check(read_err == 0 && host_bad == 0, "host verified all %" PRIu64 " MiB with axalloc_read: %" PRIu64
          " mismatching qwords, %" PRIu64 " failed reads (%.1f ms)", o->mem_mib, host_bad, read_err,
          ms(res->host_verify_ns));
    if (huge)
        check(present == pages && not_4k == 0 && in_blocks == pages - 1,
              "axalloc_translate: %" PRIu64 "/%" PRIu64 " RAM pages present, %" PRIu64
              " in 2 MiB blocks, the re-touched one a 4 KiB frame from the pool", present, pages, in_blocks);
    else
        check(present == pages && not_4k == 0, "axalloc_translate: %" PRIu64 "/%" PRIu64
              " RAM pages present, all 4 KiB frames from the pool", present, pages);

    /* ---- the library's counters vs. the pool's */
    st = axalloc_as_stats(as, &res->stats);
    const axalloc_stats_t *s = &res->stats;
    check(st == AXALLOC_OK && s->guest_frames == pages + (huge ? 1 : 0) && s->huge_pages == nblocks,
          "axalloc_as_stats: %" PRIu64 " regions, %" PRIu64 " MiB mapped, guest_frames %" PRIu64
          ", table_frames %" PRIu64 ", faults %" PRIu64 ", huge_pages %" PRIu64,
          s->regions, s->mapped_bytes >> 20, s->guest_frames, s->table_frames, s->faults, s->huge_pages);
    check(s->faults == nfault, "library fault counter (%" PRIu64 ") = faults the VMM handled (%" PRIu64 ")",
          s->faults, nfault);
    res->pool_in_use = pool.in_use;
    res->pool_peak = pool.peak;
    if (huge)
        check(pool.blocks_in_use == nblocks, "pool blocks in use: %" PRIu64 " of %" PRIu64
              " (%" PRIu64 " alloc_contig calls, %" PRIu64 " free_contig)", pool.blocks_in_use, nblocks,
              pool.block_allocs, pool.block_frees);
    check(pool.in_use + 512 * pool.blocks_in_use >= s->guest_frames + s->table_frames,
          "pool frames in use: %" PRIu64 " = %" PRIu64 " guest + %" PRIu64 " page-table + %" PRIu64
          " library state (peak %" PRIu64 ", %" PRIu64 " allocs, %" PRIu64 " frees so far)",
          pool.in_use + 512 * pool.blocks_in_use, s->guest_frames, s->table_frames,
          pool.in_use + 512 * pool.blocks_in_use - s->guest_frames - s->table_frames, pool.peak, pool.allocs,
          pool.frees);

    /* ---- tear down: every frame must come back exactly once */
    const uint64_t flushes_pre_destroy = pool.flushes;
    t0 = now_ns();
    axalloc_as_destroy(as);
    as = NULL;
    res->destroy_ns = now_ns() - t0;
    check(pool_all_back(&pool), "after axalloc_as_destroy all %" PRIu64 " pool frames are back: %" PRIu64
          " allocs, %" PRIu64 " frees, %" PRIu64 " double, %" PRIu64 " foreign, %" PRIu64 " still out",
          pool.nframes, pool.allocs, pool.frees, pool.double_frees, pool.foreign_frees, pool.in_use);
    if (huge)
        check(pool.blocks_in_use == 0 && pool.block_errors == 0 && pool.last_block_free_flushes > flushes_pre_destroy,
              "and all %" PRIu64 " 2 MiB blocks, each through free_contig once, after the flush "
              "(%" PRIu64 " bad free_contig)", nblocks, pool.block_errors);
    if (!o->no_flush)
        check(pool.flushes == flushes_pre_destroy + 1 && pool.flush_errors == 0,
              "destroy called flush_tlb once over [0x%" PRIx64 ", +0x%" PRIx64 "): whole memslot, %.1f ms; "
              "%" PRIu64 " flush_tlb calls in all, %" PRIu64 " mprotect failures", pool.last_flush_gpa,
              pool.last_flush_size, ms(pool.last_flush_ns), pool.flushes, pool.flush_errors);
    check(pool.bad_phys_to_virt == 0 && pool.alloc_failures == 0,
          "hooks: %" PRIu64 " phys_to_virt outside the memslot, %" PRIu64 " failed allocations",
          pool.bad_phys_to_virt, pool.alloc_failures);
    res->flushes = pool.flushes;
    res->flush_ns = pool.flush_ns;

    printf("  timing: map_alloc(RAM) %.2f ms; guest fill %.1f ms, guest verify %.1f ms, whole run %.1f ms\n",
           ms(res->map_ram_ns), ms(res->fill_ns), ms(res->verify_ns), ms(res->run_ns));
    if (nfault)
        printf("  per fault: axalloc_handle_fault median %.2f us (total %.1f ms for %" PRIu64
               " faults); guest #PF -> next #PF median %.1f us (handler, exit, resume, 4 KiB of writes)\n",
               us(res->fault_median_ns), ms(res->fault_total_ns), nfault, us(res->page_median_ns));
    ret = 0;
out:
    if (ret != 0) {
        printf("  run aborted: see above\n");
        g_failed++;
    }
    if (as) {
        axalloc_as_destroy(as);
        /* still check the pool: a failed run must not leak either */
        if (!pool_all_back(&pool))
            printf("  [FAIL] pool after destroy: %" PRIu64 " frames still out, %" PRIu64 " double, %" PRIu64
                   " foreign frees\n", pool.in_use, pool.double_frees, pool.foreign_frees), g_failed++;
    }
    free(buf);
    free(fault_ns);
    free(page_ns);
    pool_fini(&pool);
    vm_destroy(&v);
    res->failed = g_failed - failed_before;
    printf("  => %s run: %s\n\n", eager ? "eager" : huge ? "lazy 2 MiB" : "lazy",
           res->failed ? "FAILED" : "all checks passed");
    return ret;
}

/* -------------------------------------------------------------------- main */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: axalloc-demo [--mem-mib N] [--lazy | --eager] [--huge] [--no-flush] [--bad-access]\n"
            "       axalloc-demo --migrate [--mem-mib N] [--mig-rounds N] [--mig-stop PAGES]\n"
            "                    [--mig-hot PAGES] [--mig-stride S] [--no-flush]\n"
            "  Runs a KVM guest whose x86-64 page table is built by libaxalloc; the guest\n"
            "  touches, writes and verifies every page of its RAM; the host verifies it too.\n"
            "  --mem-mib N   guest RAM size (default 64)\n"
            "  --lazy        only the lazy run (map_alloc populate=false, one #PF per page)\n"
            "  --eager       only the eager run (populate=true); default: lazy, then eager\n"
            "  --huge        lazy runs with 4 KiB and with 2 MiB guest pages (AXALLOC_HUGE,\n"
            "                blocks from alloc_contig), compared; the 2 MiB run discards one\n"
            "                4 KiB page of a 2 MiB page while the guest runs\n"
            "  --no-flush    diagnostic: no flush_tlb hook; the unmap -> re-touch check then\n"
            "                shows the stale translation this KVM keeps (expected to FAIL)\n"
            "  --bad-access  diagnostic: the guest finally reads an unmapped address, which\n"
            "                the VMM reports as a real guest fault (expected to FAIL)\n"
            "  --migrate     live migration instead: while the guest keeps writing, pre-copy\n"
            "                its RAM into a second address space with dirty logging, pause,\n"
            "                copy the rest, switch CR3, destroy the source, resume; the guest\n"
            "                then checks every page (--no-flush: expected to FAIL)\n"
            "  --mig-rounds N   pre-copy round limit (default 30)\n"
            "  --mig-stop P     pause once a round copies at most P pages (default 32)\n"
            "  --mig-hot P      pages the guest writes in every pass (default 16)\n"
            "  --mig-stride S   every pass also writes every S-th other page (default 64)\n"
            "Exit status: 0 all checks passed, 1 a check failed, 2 usage, 77 no usable KVM.\n");
}

int main(int argc, char **argv)
{
    struct opts o = { .mem_mib = 64, .lazy = true, .eager = true,
                      .mig_rounds = 30, .mig_stop = 32, .mig_hot = 16, .mig_stride = 64 };
    bool only_lazy = false, only_eager = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--mem-mib") && i + 1 < argc) {
            char *end;
            unsigned long long n = strtoull(argv[++i], &end, 10);
            if (*end || n < 1 || n > 16384) {
                fprintf(stderr, "axalloc-demo: --mem-mib wants 1..16384\n");
                return 2;
            }
            o.mem_mib = n;
        } else if ((!strcmp(argv[i], "--mig-rounds") || !strcmp(argv[i], "--mig-stop") ||
                    !strcmp(argv[i], "--mig-hot") || !strcmp(argv[i], "--mig-stride")) && i + 1 < argc) {
            const char *name = argv[i];
            char *end;
            unsigned long long n = strtoull(argv[++i], &end, 10);
            if (*end || n > (1ull << 32) || (n == 0 && strcmp(name, "--mig-stop") && strcmp(name, "--mig-hot"))) {
                fprintf(stderr, "axalloc-demo: bad value for %s\n", name);
                return 2;
            }
            if (!strcmp(name, "--mig-rounds"))
                o.mig_rounds = n;
            else if (!strcmp(name, "--mig-stop"))
                o.mig_stop = n;
            else if (!strcmp(name, "--mig-hot"))
                o.mig_hot = n;
            else
                o.mig_stride = n;
        } else if (!strcmp(argv[i], "--migrate")) {
            o.migrate = true;
        } else if (!strcmp(argv[i], "--lazy")) {
            only_lazy = true;
        } else if (!strcmp(argv[i], "--eager")) {
            only_eager = true;
        } else if (!strcmp(argv[i], "--no-flush")) {
            o.no_flush = true;
        } else if (!strcmp(argv[i], "--bad-access")) {
            o.bad_access = true;
        } else if (!strcmp(argv[i], "--huge")) {
            o.huge = true;
        } else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return 0;
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (only_lazy || only_eager) {
        o.lazy = only_lazy;
        o.eager = only_eager;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (o.huge && o.mem_mib % 2) {
        fprintf(stderr, "axalloc-demo: --huge wants an even --mem-mib (whole 2 MiB pages)\n");
        return 2;
    }

    int kvm = kvm_probe();
    if (kvm < 0)
        return EXIT_SKIP;

    printf("axalloc-demo: a KVM guest whose page table is built by libaxalloc\n");
    printf("(libaxalloc \"guest-physical\" = guest virtual, \"host-physical\" = memslot GPA, CR3 = axalloc_as_root())\n\n");
    const uint64_t pages = (o.mem_mib << 20) / PAGE_SIZE, pool_frames = pages + pages / 256 + 512;
    if (o.migrate) {
        const uint64_t mig_frames = 2 * (pages + pages / 256) + 1024;
        print_layout(o.mem_mib << 20, POOL_GPA + mig_frames * PAGE_SIZE, mig_frames);
        run_migrate(kvm, &o);
        close(kvm);
        printf("axalloc-demo: %s\n", g_failed ? "FAILED (see [FAIL] above)" : "every check passed");
        return g_failed ? 1 : 0;
    }
    print_layout(o.mem_mib << 20, POOL_GPA + pool_frames * PAGE_SIZE, pool_frames);

    struct result lazy = { 0 }, reserved = { 0 }, eager = { 0 }, huge = { 0 };
    if (o.lazy) {
        run_once(kvm, &o, false, false, false, &lazy);
        if (!o.huge)
            run_once(kvm, &o, false, true, false, &reserved);
    }
    if (o.huge)
        run_once(kvm, &o, false, false, true, &huge);
    if (o.eager && !o.huge)
        run_once(kvm, &o, true, false, false, &eager);
    close(kvm);

    if (lazy.completed && huge.completed) {
        printf("=== 4 KiB vs 2 MiB guest pages (lazy), %" PRIu64 " MiB ===\n", o.mem_mib);
        printf("                                    4 KiB pages   2 MiB pages\n");
        printf("  guest #PF handled              %10" PRIu64 "     %10" PRIu64 "\n", lazy.faults, huge.faults);
        printf("  guest first-touch fill         %10.1f ms  %10.1f ms\n", ms(lazy.fill_ns), ms(huge.fill_ns));
        printf("  axalloc_handle_fault median    %10.2f us  %10.2f us\n", us(lazy.fault_median_ns),
               us(huge.fault_median_ns));
        printf("  axalloc_handle_fault total     %10.1f ms  %10.1f ms\n", ms(lazy.fault_total_ns),
               ms(huge.fault_total_ns));
        printf("  guest frames / table frames    %6" PRIu64 " / %-4" PRIu64 "  %6" PRIu64 " / %-4" PRIu64 "\n",
               lazy.stats.guest_frames, lazy.stats.table_frames, huge.stats.guest_frames, huge.stats.table_frames);
        printf("  huge_pages                     %10" PRIu64 "     %10" PRIu64 "\n", lazy.stats.huge_pages,
               huge.stats.huge_pages);
        printf("\n");
    }

    if (lazy.completed && eager.completed) {
        printf("=== lazy vs eager, %" PRIu64 " MiB (%" PRIu64 " pages) ===\n", o.mem_mib, lazy.pages);
        printf("                                      lazy          eager\n");
        printf("  map_alloc(RAM)                 %10.2f ms  %10.2f ms\n", ms(lazy.map_ram_ns), ms(eager.map_ram_ns));
        printf("  guest first-touch fill         %10.1f ms  %10.1f ms\n", ms(lazy.fill_ns), ms(eager.fill_ns));
        printf("  map_alloc + whole guest run    %10.1f ms  %10.1f ms\n",
               ms(lazy.map_ram_ns + lazy.run_ns), ms(eager.map_ram_ns + eager.run_ns));
        printf("  guest #PF handled              %10" PRIu64 "     %10" PRIu64 "\n", lazy.faults, eager.faults);
        printf("  axalloc_handle_fault median    %10.2f us  %13s\n", us(lazy.fault_median_ns), "-");
        if (reserved.completed)
            printf("    ... with axalloc_reserve     %10.2f us  %13s\n", us(reserved.fault_median_ns), "-");
        printf("  guest #PF -> next #PF median   %10.1f us  %13s\n", us(lazy.page_median_ns), "-");
        printf("  guest frames / table frames    %6" PRIu64 " / %-4" PRIu64 "  %6" PRIu64 " / %-4" PRIu64 "\n",
               lazy.stats.guest_frames, lazy.stats.table_frames, eager.stats.guest_frames, eager.stats.table_frames);
        printf("  pool frames in use (peak)      %10" PRIu64 "     %10" PRIu64 "\n", lazy.pool_peak, eager.pool_peak);
        printf("\n");
    }
    printf("axalloc-demo: %s\n", g_failed ? "FAILED (see [FAIL] above)" : "every check passed");
    return g_failed ? 1 : 0;
}
