/*
 * migrate.c - axalloc-demo --migrate: live migration of the guest's memory
 * from one libaxalloc address space (the source) into another (the
 * destination) with libaxalloc's dirty logging, while the guest keeps
 * writing. See README.md, "Live migration".
 *
 * Two threads:
 *  - the vCPU thread runs KVM_RUN and resolves every guest #PF with
 *    axalloc_handle_fault on the address space the guest currently runs on
 *    (a write to a clean logged page is such a fault: the library
 *    write-protected it, the fault marks it dirty and makes it writable);
 *  - the migration thread (main) copies: present pages first, then rounds of
 *    axalloc_dirty_log_get(AXALLOC_BITMAP_CLEAR) + copy of the reported
 *    pages, until a round reports at most --mig-stop pages or --mig-rounds
 *    is reached; then it pauses the vCPU (signal + immediate_exit), copies
 *    the last dirty pages, checks destination == source page by page,
 *    points CR3 at the destination's root, destroys the source and resumes.
 * The guest then checks that every page holds the last value it wrote.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "axalloc.h"
#include "demo.h"
#include "frame_pool.h"
#include "layout.h"

#define COPY_CHUNK_PAGES 256          /* 1 MiB per axalloc_read / axalloc_write */
#define FAULT_SAMPLES    (1u << 16)

struct mig {
    struct vm *v;
    axalloc_as_t *_Atomic as;         /* the table the guest runs on: faults go there */
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    atomic_bool pause_req;
    bool paused, resume, started, done, failed, quit;   /* under mu */
    uint64_t passes, verified;                    /* reported by the guest (UINT64_MAX: not yet) */
    atomic_uint_fast64_t faults, write_faults;    /* handled by the vCPU thread */
    atomic_bool logging;                          /* write faults while the log runs are timed */
    /* Which get each logged write fault followed: get_seq is incremented
     * just before every axalloc_dirty_log_get; fault_seq[page] = get_seq
     * when that page's last logged write fault began, + 1 (0: none). */
    atomic_uint_fast64_t get_seq;
    atomic_uint_fast64_t *fault_seq;
    uint64_t ram_pages;
    uint64_t *fault_ns;                           /* handle_fault of logged write faults */
    atomic_uint_fast64_t nfault_ns;
    uint64_t fill_ns;
};

static struct kvm_run *volatile g_kick_run;

/* SIGUSR1 on the vCPU thread: leave KVM_RUN now, or do not enter it. */
static void on_kick(int sig)
{
    (void)sig;
    if (g_kick_run)
        g_kick_run->immediate_exit = 1;
}

static void mig_set(struct mig *m, bool *flag)
{
    pthread_mutex_lock(&m->mu);
    *flag = true;
    pthread_cond_broadcast(&m->cv);
    pthread_mutex_unlock(&m->mu);
}

static void vcpu_fail(struct mig *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void vcpu_fail(struct mig *m, const char *fmt, ...)
{
    va_list ap;
    printf("  ");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    pthread_mutex_lock(&m->mu);
    m->failed = true;
    m->done = true;
    pthread_cond_broadcast(&m->cv);
    pthread_mutex_unlock(&m->mu);
}

static void *vcpu_thread(void *arg)
{
    struct mig *m = arg;
    struct vm *v = m->v;
    const uint64_t t_start = now_ns();
    for (;;) {
        if (atomic_load(&m->pause_req)) {
            /* Complete what the last exit left pending (KVM_RUN with
             * immediate_exit returns EINTR at once), then park. */
            v->run->immediate_exit = 1;
            if (ioctl(v->vcpu, KVM_RUN, 0) == 0 || errno != EINTR) {
                vcpu_fail(m, "KVM_RUN with immediate_exit did not return EINTR");
                return NULL;
            }
            v->run->immediate_exit = 0;
            pthread_mutex_lock(&m->mu);
            m->paused = true;
            pthread_cond_broadcast(&m->cv);
            while (!m->resume && !m->quit)
                pthread_cond_wait(&m->cv, &m->mu);
            if (m->quit) {
                m->done = true;
                pthread_cond_broadcast(&m->cv);
                pthread_mutex_unlock(&m->mu);
                return NULL;
            }
            m->resume = m->paused = false;
            atomic_store(&m->pause_req, false);
            pthread_mutex_unlock(&m->mu);
            continue;
        }
        if (ioctl(v->vcpu, KVM_RUN, 0) < 0) {
            if (errno == EINTR || errno == EAGAIN) {
                if (!atomic_load(&m->pause_req))
                    v->run->immediate_exit = 0;
                continue;
            }
            vcpu_fail(m, "KVM_RUN failed: %s", strerror(errno));
            return NULL;
        }
        struct kvm_run *kr = v->run;
        if (kr->exit_reason != KVM_EXIT_MMIO || !kr->mmio.is_write) {
            vcpu_fail(m, "guest stopped unexpectedly: exit reason %u%s", kr->exit_reason,
                      kr->exit_reason == KVM_EXIT_MMIO ? " (an MMIO read)" : "");
            return NULL;
        }
        uint64_t val = 0;
        memcpy(&val, kr->mmio.data, kr->mmio.len < 8 ? kr->mmio.len : 8);
        switch (kr->mmio.phys_addr - MMIO_GPA + MMIO_VA) {
        case MMIO_PF: {
            const uint64_t cr2 = rd64(sys_host(v, MB_CR2)), ec = val;
            const uint32_t access = (ec & PF_ID) ? AXALLOC_EXEC : (ec & PF_W) ? AXALLOC_WRITE : AXALLOC_READ;
            if (ec & PF_RSVD) {
                vcpu_fail(m, "GUEST FAULT: reserved bit set for VA 0x%" PRIx64 " (error code 0x%" PRIx64 ")", cr2, ec);
                return NULL;
            }
            const bool timed = atomic_load(&m->logging) && access == AXALLOC_WRITE;
            const uint64_t seq = atomic_load(&m->get_seq);
            const uint64_t f0 = now_ns();
            axalloc_status_t st = axalloc_handle_fault(atomic_load(&m->as), cr2, access);
            const uint64_t f1 = now_ns();
            if (st != AXALLOC_OK) {
                printf("  GUEST FAULT: %s access to VA 0x%" PRIx64 " at rip 0x%" PRIx64 ": axalloc_handle_fault -> %s\n",
                       access_name(access), cr2, frame_rip(v, 16), axalloc_status_str(st));
                vcpu_fail(m, "the guest is stopped");
                return NULL;
            }
            atomic_fetch_add(&m->faults, 1);
            if (access == AXALLOC_WRITE)
                atomic_fetch_add(&m->write_faults, 1);
            if (timed) {
                if (cr2 >= RAM_VA && (cr2 - RAM_VA) / PAGE_SIZE < m->ram_pages)
                    atomic_store(&m->fault_seq[(cr2 - RAM_VA) / PAGE_SIZE], seq + 1);
                uint64_t i = atomic_fetch_add(&m->nfault_ns, 1);
                if (i < FAULT_SAMPLES)
                    m->fault_ns[i] = f1 - f0;
            }
            break;
        }
        case MMIO_EXC:
            vcpu_fail(m, "GUEST EXCEPTION: vector %" PRIu64 "; the guest is stopped", val);
            return NULL;
        case MMIO_MIG_START:
            m->fill_ns = now_ns() - t_start;
            mig_set(m, &m->started);
            break;
        case MMIO_MIG_PASSES:
            m->passes = val;
            break;
        case MMIO_MIG_VERIFIED:
            m->verified = val;
            break;
        case MMIO_DONE:
            mig_set(m, &m->done);
            return NULL;
        default:
            vcpu_fail(m, "unexpected MMIO write at GPA 0x%" PRIx64 " (value 0x%" PRIx64 ")", (uint64_t)kr->mmio.phys_addr, val);
            return NULL;
        }
    }
}

/* Waits until *flag or the vCPU thread is done; true if *flag. */
static bool mig_wait(struct mig *m, const bool *flag)
{
    pthread_mutex_lock(&m->mu);
    while (!*flag && !m->done)
        pthread_cond_wait(&m->cv, &m->mu);
    bool ok = *flag;
    pthread_mutex_unlock(&m->mu);
    return ok;
}

static bool mig_done(struct mig *m)
{
    pthread_mutex_lock(&m->mu);
    bool d = m->done;
    pthread_mutex_unlock(&m->mu);
    return d;
}

static uint64_t popcount_bm(const uint64_t *bm, uint64_t words)
{
    uint64_t n = 0;
    for (uint64_t i = 0; i < words; i++)
        n += (uint64_t)__builtin_popcountll(bm[i]);
    return n;
}

/* Copies the pages set in bm (bit i = page RAM_VA + i * 4 KiB) from src to
 * dst, runs of consecutive pages at a time. Returns pages copied. */
static uint64_t copy_pages(axalloc_as_t *src, axalloc_as_t *dst, const uint64_t *bm, uint64_t pages,
                           uint8_t *buf, uint64_t *errors)
{
    uint64_t n = 0;
    for (uint64_t i = 0; i < pages;) {
        if (i % 64 == 0 && bm[i / 64] == 0) {
            i += 64;
            continue;
        }
        if (!(bm[i / 64] >> (i % 64) & 1)) {
            i++;
            continue;
        }
        uint64_t j = i;
        while (j < pages && j - i < COPY_CHUNK_PAGES && (bm[j / 64] >> (j % 64) & 1))
            j++;
        const uint64_t gpa = RAM_VA + i * PAGE_SIZE;
        const size_t len = (size_t)(j - i) * PAGE_SIZE;
        axalloc_status_t st = axalloc_read(src, gpa, buf, len);
        if (st == AXALLOC_OK)
            st = axalloc_write(dst, gpa, buf, len);
        if (st != AXALLOC_OK && (*errors)++ < 3)
            printf("  copy of [0x%" PRIx64 ", +0x%zx): %s\n", gpa, len, axalloc_status_str(st));
        n += j - i;
        i = j;
    }
    return n;
}

/* Pages bm reports that no logged write fault explains: get number s may
 * report a page whose write fault began after get s-1 began (it re-armed
 * the page), or after get s-2 began if that fault raced get s-1 ("reported
 * by this get or by the next one"). Anything else was never written. */
static uint64_t unexplained(struct mig *m, const uint64_t *bm, uint64_t s)
{
    uint64_t bad = 0;
    for (uint64_t p = 0; p < m->ram_pages; p++) {
        if (!(bm[p / 64] >> (p % 64) & 1))
            continue;
        const uint64_t f = atomic_load(&m->fault_seq[p]);
        bad += f == 0 || f - 1 + 2 < s;
    }
    return bad;
}

static uint64_t pool_flush_count(struct frame_pool *p)
{
    pthread_mutex_lock(&p->lock);
    uint64_t n = p->flushes;
    pthread_mutex_unlock(&p->lock);
    return n;
}

static axalloc_status_t build_space(struct frame_pool *pool, bool flush, uint64_t mem, axalloc_as_t **out)
{
    axalloc_config_t cfg = { .struct_size = sizeof(cfg), .format = AXALLOC_FORMAT_X86_NPT,
                             .flags = AXALLOC_CFG_NO_HUGE_1G, .base = 0, .size = WINDOW_SIZE };
    axalloc_hooks_t hooks = pool_hooks(pool, flush);
    axalloc_status_t st = axalloc_as_create(&cfg, &hooks, out);
    if (st != AXALLOC_OK)
        return st;
    /* The VMM's own pages (code, GDT/IDT/TSS/mailbox, stacks, doorbells) are
     * mapped identically in both spaces: the same memslot pages, so the
     * #PF handler and the mailbox work on either side of the switch. Only
     * the guest RAM (map_alloc) is migrated. */
    const struct { uint64_t va, gpa, size; uint32_t flags; } lin[] = {
        { CODE_VA, CODE_GPA, CODE_PAGES * PAGE_SIZE, AXALLOC_READ | AXALLOC_EXEC },
        { SYS_VA, SYS_GPA, 4 * PAGE_SIZE, AXALLOC_READ | AXALLOC_WRITE },
        { KSTACK_VA, KSTACK_GPA, STACK_PAGES * PAGE_SIZE, AXALLOC_READ | AXALLOC_WRITE },
        { USTACK_VA, USTACK_GPA, STACK_PAGES * PAGE_SIZE, AXALLOC_READ | AXALLOC_WRITE },
        { MMIO_VA, MMIO_GPA, PAGE_SIZE, AXALLOC_READ | AXALLOC_WRITE | AXALLOC_DEVICE },
    };
    for (size_t i = 0; i < sizeof(lin) / sizeof(lin[0]) && st == AXALLOC_OK; i++)
        st = axalloc_map_linear(*out, lin[i].va, lin[i].gpa, lin[i].size, lin[i].flags);
    if (st == AXALLOC_OK)
        st = axalloc_map_alloc(*out, RAM_VA, mem, AXALLOC_READ | AXALLOC_WRITE, false);
    if (st != AXALLOC_OK) {
        axalloc_as_destroy(*out);
        *out = NULL;
    }
    return st;
}

int run_migrate(int kvm, const struct opts *o)
{
    const uint64_t mem = o->mem_mib << 20, pages = mem / PAGE_SIZE, words = (pages + 63) / 64;
    /* two copies of the RAM + their tables + library state */
    const uint64_t pool_frames = 2 * (pages + pages / 256) + 1024;
    const uint64_t slot_size = POOL_GPA + pool_frames * PAGE_SIZE;
    const int failed_before = g_failed;
    int ret = -1;
    struct vm v;
    struct frame_pool pool;
    struct mig m;
    axalloc_as_t *src = NULL, *dst = NULL;
    uint64_t *bm = NULL, *prev = NULL;   /* prev: the pages the last get re-armed */
    uint8_t *buf = NULL, *buf2 = NULL;
    bool thread_started = false;
    axalloc_status_t st;

    memset(&v, 0, sizeof(v));
    v.vm = v.vcpu = -1;
    memset(&pool, 0, sizeof(pool));
    memset(&m, 0, sizeof(m));
    pthread_mutex_init(&m.mu, NULL);
    pthread_cond_init(&m.cv, NULL);
    m.v = &v;
    m.passes = m.verified = UINT64_MAX;
    const uint64_t seed = 0x9e3779b97f4a7c15ull ^ now_ns();
    const uint64_t hot = o->mig_hot < pages ? o->mig_hot : pages / 2;

    printf("=== migrate run: %" PRIu64 " MiB of guest RAM (%" PRIu64 " pages), pre-copy with dirty logging%s ===\n",
           o->mem_mib, pages, o->no_flush ? ", WITHOUT flush_tlb hook (--no-flush)" : "");
    printf("  guest: fills its RAM, then pass k = 1, 2, ... writes qword 0 of the %" PRIu64 " hot pages and of "
           "every %" PRIu64 "th other page (k mod %" PRIu64 "); pre-copy stops at <= %" PRIu64 " pages or after %"
           PRIu64 " rounds\n", hot, o->mig_stride, o->mig_stride, o->mig_stop, o->mig_rounds);
    m.fault_ns = calloc(FAULT_SAMPLES, sizeof(*m.fault_ns));
    m.fault_seq = calloc(pages, sizeof(*m.fault_seq));
    m.ram_pages = pages;
    bm = calloc(words, sizeof(*bm));
    prev = calloc(words, sizeof(*prev));
    buf = malloc(COPY_CHUNK_PAGES * PAGE_SIZE);
    buf2 = malloc(COPY_CHUNK_PAGES * PAGE_SIZE);
    if (!m.fault_ns || !m.fault_seq || !bm || !prev || !buf || !buf2)
        goto out;
    if (vm_create(&v, kvm, slot_size) < 0 || pool_init(&pool, v.slot, slot_size, POOL_GPA, pool_frames) < 0)
        goto out;
    pool.flush_keep_writable = true;   /* flushes run while the vCPU runs */
    if ((st = build_space(&pool, !o->no_flush, mem, &src)) != AXALLOC_OK ||
        (st = build_space(&pool, !o->no_flush, mem, &dst)) != AXALLOC_OK) {
        printf("  building the address spaces: %s\n", axalloc_status_str(st));
        goto out;
    }
    atomic_store(&m.as, src);
    if ((size_t)(guest_code_end - guest_code_start) > CODE_PAGES * PAGE_SIZE) {
        printf("  guest code does not fit in %d pages\n", CODE_PAGES);
        goto out;
    }
    guest_install(&v);
    wr64(sys_host(&v, MB_RAM_BASE), RAM_VA);
    wr64(sys_host(&v, MB_RAM_END), RAM_VA + mem);
    wr64(sys_host(&v, MB_SEED), seed);
    wr64(sys_host(&v, MB_HOT_PAGES), hot);
    wr64(sys_host(&v, MB_STRIDE), o->mig_stride);
    wr64(sys_host(&v, MB_MIGRATED), 0);
    if (vcpu_setup(&v, axalloc_as_root(src), guest_migrate_entry) < 0)
        goto out;

    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_kick;          /* no SA_RESTART: KVM_RUN returns EINTR */
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGUSR1, &sa, NULL) < 0)
        goto out;
    g_kick_run = v.run;
    if (pthread_create(&m.thread, NULL, vcpu_thread, &m) != 0)
        goto out;
    thread_started = true;

    /* ---- 1. the guest fills its RAM on the source (lazy faults) */
    if (!mig_wait(&m, &m.started))
        goto out;
    printf("  guest filled %" PRIu64 " pages on the source: %" PRIu64 " faults, %.1f ms\n", pages,
           (uint64_t)atomic_load(&m.faults), ms(m.fill_ns));

    /* ---- 2. pre-copy while the guest writes */
    const uint64_t t_mig = now_ns();
    atomic_store(&m.logging, true);   /* faults during the start may already be logged writes */
    uint64_t t0 = now_ns();
    st = axalloc_dirty_log_start(src, RAM_VA, mem);
    const uint64_t start_ns = now_ns() - t0;
    check(st == AXALLOC_OK, "axalloc_dirty_log_start(RAM, %" PRIu64 " MiB) -> %s (%.2f ms)", o->mem_mib,
          axalloc_status_str(st), ms(start_ns));
    if (st != AXALLOC_OK)
        goto out;
    uint64_t copy_err = 0, copied_total = 0;
    t0 = now_ns();
    st = axalloc_present_bitmap(src, RAM_VA, mem, bm);
    uint64_t n = popcount_bm(bm, words);
    check(st == AXALLOC_OK && n == pages, "axalloc_present_bitmap: %" PRIu64 " of %" PRIu64 " pages present (%s)",
          n, pages, axalloc_status_str(st));
    uint64_t wf0 = atomic_load(&m.write_faults);
    uint64_t c = copy_pages(src, dst, bm, pages, buf, &copy_err);
    copied_total += c;
    printf("  round  0: %6" PRIu64 " present pages (axalloc_present_bitmap), copy %6.2f ms; guest write faults meanwhile %" PRIu64 "\n",
           c, ms(now_ns() - t0), (uint64_t)atomic_load(&m.write_faults) - wf0);
    uint64_t rounds = 0, flush_bad = 0, rewritten = 0, unexplained_total = 0;
    bool converged = false;
    while (rounds < o->mig_rounds) {
        rounds++;
        wf0 = atomic_load(&m.write_faults);
        const uint64_t fl0 = pool_flush_count(&pool);
        const uint64_t seq = atomic_fetch_add(&m.get_seq, 1) + 1;
        t0 = now_ns();
        st = axalloc_dirty_log_get(src, RAM_VA, mem, bm, AXALLOC_BITMAP_CLEAR);
        const uint64_t t1 = now_ns();
        const uint64_t fl = pool_flush_count(&pool) - fl0;
        pthread_mutex_lock(&pool.lock);
        const uint64_t flush_ns = fl ? pool.last_flush_ns : 0;
        pthread_mutex_unlock(&pool.lock);
        if (st != AXALLOC_OK) {
            check(false, "round %" PRIu64 ": axalloc_dirty_log_get(CLEAR) -> %s", rounds, axalloc_status_str(st));
            goto out;
        }
        n = popcount_bm(bm, words);
        if (n > 0 && fl != 1)      /* re-armed pages: exactly one flush */
            flush_bad++;
        const uint64_t unexp = unexplained(&m, bm, seq);
        unexplained_total += unexp;
        for (uint64_t w = 0; w < words; w++) {
            rewritten += (uint64_t)__builtin_popcountll(bm[w] & prev[w]);
            prev[w] = bm[w];
        }
        c = copy_pages(src, dst, bm, pages, buf, &copy_err);
        copied_total += c;
        const uint64_t t2 = now_ns();
        if (unexp)
            printf("  round %2" PRIu64 ": %" PRIu64 " reported pages had no logged write fault since get %" PRIu64 "\n",
                   rounds, unexp, seq > 2 ? seq - 2 : 0);
        printf("  round %2" PRIu64 ": %6" PRIu64 " dirty pages, get+clear %6.2f ms (flush_tlb x%" PRIu64 ": %.2f ms), "
               "copy %6.2f ms; guest write faults meanwhile %" PRIu64 "\n", rounds, n, ms(t1 - t0), fl, ms(flush_ns), ms(t2 - t1),
               (uint64_t)atomic_load(&m.write_faults) - wf0);
        if (n <= o->mig_stop) {
            converged = true;
            break;
        }
        if (mig_done(&m))
            break;
    }
    check(o->no_flush || flush_bad == 0, "every get with AXALLOC_BITMAP_CLEAR that re-armed pages called flush_tlb exactly once (%"
          PRIu64 " rounds did not)", flush_bad);
    printf("  pre-copy: %" PRIu64 " rounds, %s\n", rounds,
           converged ? "the dirty set got small enough" : "round limit reached");

    /* ---- 3. pause, last copy, check, switch, destroy the source, resume */
    const uint64_t t_pause = now_ns();
    atomic_store(&m.pause_req, true);
    pthread_kill(m.thread, SIGUSR1);
    if (!mig_wait(&m, &m.paused)) {
        check(false, "the vCPU stopped for the switch");
        goto out;
    }
    const uint64_t t_paused = now_ns();
    const uint64_t seq_final = atomic_fetch_add(&m.get_seq, 1) + 1;
    st = axalloc_dirty_log_get(src, RAM_VA, mem, bm, 0);
    n = popcount_bm(bm, words);
    unexplained_total += unexplained(&m, bm, seq_final);
    check(unexplained_total == 0, "every page a get reported had a logged write fault since the get before "
          "(or one racing it): %" PRIu64 " reports without one", unexplained_total);
    for (uint64_t w = 0; w < words; w++)
        rewritten += (uint64_t)__builtin_popcountll(bm[w] & prev[w]);
    printf("  pages written again after a get re-armed them (each such write had to fault): %" PRIu64 "\n", rewritten);
    const uint64_t c_pause = copy_pages(src, dst, bm, pages, buf, &copy_err);
    copied_total += c_pause;
    const uint64_t t_copied = now_ns();
    check(st == AXALLOC_OK, "paused: axalloc_dirty_log_get -> %s, %" PRIu64 " dirty pages copied in the pause",
          axalloc_status_str(st), c_pause);
    atomic_store(&m.logging, false);
    /* destination == source, page by page (the vCPU is stopped) */
    uint64_t differ = 0, read_err = 0;
    for (uint64_t i = 0; i < pages; i += COPY_CHUNK_PAGES) {
        const uint64_t k = pages - i < COPY_CHUNK_PAGES ? pages - i : COPY_CHUNK_PAGES;
        if (axalloc_read(src, RAM_VA + i * PAGE_SIZE, buf, k * PAGE_SIZE) != AXALLOC_OK ||
            axalloc_read(dst, RAM_VA + i * PAGE_SIZE, buf2, k * PAGE_SIZE) != AXALLOC_OK) {
            read_err++;
            continue;
        }
        for (uint64_t j = 0; j < k; j++)
            differ += memcmp(buf + j * PAGE_SIZE, buf2 + j * PAGE_SIZE, PAGE_SIZE) != 0;
    }
    const uint64_t t_checked = now_ns();
    check(differ == 0 && read_err == 0 && copy_err == 0,
          "at the switch the destination equals the source: %" PRIu64 " of %" PRIu64 " pages differ, %" PRIu64
          " read errors, %" PRIu64 " copy errors (check %.1f ms, not part of the downtime)", differ, pages, read_err,
          copy_err, ms(t_checked - t_copied));
    st = axalloc_dirty_log_stop(src, RAM_VA, mem);
    const uint64_t t_stopped = now_ns();
    check(st == AXALLOC_OK, "axalloc_dirty_log_stop -> %s (%.2f ms)", axalloc_status_str(st), ms(t_stopped - t_checked));

    struct kvm_sregs sr;
    if (ioctl(v.vcpu, KVM_GET_SREGS, &sr) < 0) {
        perror("axalloc-demo: KVM_GET_SREGS");
        goto out;
    }
    const uint64_t old_cr3 = sr.cr3;
    sr.cr3 = axalloc_as_root(dst);
    if (ioctl(v.vcpu, KVM_SET_SREGS, &sr) < 0) {
        perror("axalloc-demo: KVM_SET_SREGS (CR3 = destination root)");
        goto out;
    }
    atomic_store(&m.as, dst);
    wr64(sys_host(&v, MB_MIGRATED), 1);
    const uint64_t t_switched = now_ns();
    axalloc_stats_t ss, ds;
    axalloc_as_stats(src, &ss);
    axalloc_as_destroy(src);
    src = NULL;
    const uint64_t t_destroyed = now_ns();
    axalloc_as_stats(dst, &ds);
    const uint64_t faults_before_resume = atomic_load(&m.faults);
    pthread_mutex_lock(&m.mu);
    m.resume = true;
    pthread_cond_broadcast(&m.cv);
    pthread_mutex_unlock(&m.mu);
    const uint64_t t_resumed = now_ns();
    printf("  switch: CR3 0x%" PRIx64 " (source root) -> 0x%" PRIx64 " (destination root); source destroyed "
           "(%" PRIu64 " guest + %" PRIu64 " table frames back, %.2f ms)\n", old_cr3, (uint64_t)sr.cr3, ss.guest_frames,
           ss.table_frames, ms(t_destroyed - t_switched));
    const uint64_t downtime = (t_resumed - t_pause) - (t_checked - t_copied);
    printf("  downtime: %.2f ms = stop vCPU %.2f + copy %" PRIu64 " pages %.2f + dirty_log_stop %.2f + CR3 switch %.2f"
           " + destroy source %.2f (its flush_tlb: the whole memslot) + resume %.2f ms\n", ms(downtime),
           ms(t_paused - t_pause), c_pause, ms(t_copied - t_paused), ms(t_stopped - t_checked),
           ms(t_switched - t_stopped), ms(t_destroyed - t_switched), ms(t_resumed - t_destroyed));

    /* ---- 4. the guest checks every page on the destination */
    pthread_mutex_lock(&m.mu);
    while (!m.done)
        pthread_cond_wait(&m.cv, &m.mu);
    pthread_mutex_unlock(&m.mu);
    pthread_join(m.thread, NULL);
    thread_started = false;
    const uint64_t t_end = now_ns();
    check(!m.failed && m.passes != UINT64_MAX && m.verified == 0,
          "guest on the destination: %" PRIu64 " of %" PRIu64 " pages do not hold the last value it wrote (after %"
          PRIu64 " write passes)", m.verified, pages, m.passes);
    /* A #PF the guest took on the source just before the pause may be
     * reported only after it (the vCPU stopped inside the handler): it is
     * resolved on the destination, where the page is present and writable,
     * as a spurious fault. Nothing else may fault there. */
    axalloc_stats_t ds_end;
    axalloc_as_stats(dst, &ds_end);
    const uint64_t faults_after = atomic_load(&m.faults) - faults_before_resume;
    check(faults_after <= 1 && ds_end.guest_frames == ds.guest_frames,
          "faults on the destination after the switch: %" PRIu64 " (at most the one in flight at the pause), "
          "none installed a frame (%" PRIu64 " -> %" PRIu64 " guest frames)", faults_after, ds.guest_frames,
          ds_end.guest_frames);
    check(ds.guest_frames == pages, "destination holds %" PRIu64 " guest frames (%" PRIu64 " pages)", ds.guest_frames,
          pages);
    uint64_t nf = atomic_load(&m.nfault_ns);
    if (nf > FAULT_SAMPLES)
        nf = FAULT_SAMPLES;
    printf("  migration: %.1f ms from dirty_log_start to resume, %" PRIu64 " pages copied (%.2f x RAM), "
           "%" PRIu64 " in the pause; guest verify %.1f ms\n", ms(t_resumed - t_mig), copied_total,
           (double)copied_total / (double)pages, c_pause, ms(t_end - t_resumed));
    printf("  logged write faults: %" PRIu64 ", axalloc_handle_fault median %.2f us\n",
           (uint64_t)atomic_load(&m.nfault_ns), us(median(m.fault_ns, nf)));

    /* ---- tear down */
    axalloc_as_destroy(dst);
    dst = NULL;
    check(pool_all_back(&pool), "after destroying both address spaces all %" PRIu64 " pool frames are back: %" PRIu64
          " allocs, %" PRIu64 " frees, %" PRIu64 " double, %" PRIu64 " foreign", pool.nframes, pool.allocs,
          pool.frees, pool.double_frees, pool.foreign_frees);
    check(pool.flush_errors == 0 && pool.bad_phys_to_virt == 0 && pool.alloc_failures == 0,
          "hooks: %" PRIu64 " flush_tlb calls (%.1f ms in all), %" PRIu64 " mprotect failures, %" PRIu64
          " bad phys_to_virt, %" PRIu64 " failed allocations", pool.flushes, ms(pool.flush_ns), pool.flush_errors,
          pool.bad_phys_to_virt, pool.alloc_failures);
    ret = 0;
out:
    if (ret != 0) {
        printf("  run aborted: see above\n");
        g_failed++;
    }
    if (thread_started) {
        /* stop the vCPU thread: it parks at a pause request and quits */
        pthread_mutex_lock(&m.mu);
        m.quit = true;
        pthread_cond_broadcast(&m.cv);
        pthread_mutex_unlock(&m.mu);
        if (!mig_done(&m)) {
            atomic_store(&m.pause_req, true);
            pthread_kill(m.thread, SIGUSR1);
        }
        pthread_join(m.thread, NULL);
    }
    g_kick_run = NULL;
    if (src)
        axalloc_as_destroy(src);
    if (dst)
        axalloc_as_destroy(dst);
    free(m.fault_ns);
    free(m.fault_seq);
    free(bm);
    free(prev);
    free(buf);
    free(buf2);
    pool_fini(&pool);
    vm_destroy(&v);
    pthread_mutex_destroy(&m.mu);
    pthread_cond_destroy(&m.cv);
    const int failed = g_failed - failed_before;
    printf("  => migrate run: %s\n\n", failed ? "FAILED" : "all checks passed");
    return failed;
}
