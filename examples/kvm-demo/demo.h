/*
 * demo.h - what vmm.c (KVM plumbing, the lazy/eager runs) shares with
 * migrate.c (the --migrate run).
 */
#ifndef AXDEMO_DEMO_H
#define AXDEMO_DEMO_H

#include <linux/kvm.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define EXIT_SKIP 77   /* KVM missing or unusable: CTest SKIP_RETURN_CODE */

/* guest.S */
extern const uint8_t guest_code_start[], guest_code_end[];
extern const uint8_t guest_pf_handler[], guest_exc_stubs[], guest_user_entry[];
extern const uint8_t guest_migrate_entry[];

#define PF_P    (1u << 0)
#define PF_W    (1u << 1)
#define PF_U    (1u << 2)
#define PF_RSVD (1u << 3)
#define PF_ID   (1u << 4)

struct opts {
    uint64_t mem_mib;
    bool lazy, eager;     /* which runs */
    bool no_flush;        /* diagnostic: no flush_tlb hook (the re-touch check should fail) */
    bool bad_access;      /* diagnostic: the guest touches an unmapped address at the end */
    bool huge;            /* also a lazy run with 2 MiB pages (AXALLOC_HUGE) */
    bool migrate;         /* --migrate: the live-migration run instead (migrate.c) */
    uint64_t mig_rounds;  /* pre-copy round limit */
    uint64_t mig_stop;    /* pause once a round copies at most this many pages */
    uint64_t mig_hot;     /* pages written in every guest pass */
    uint64_t mig_stride;  /* every S-th other page is written once per S passes */
};

struct vm {
    int kvm, vm, vcpu;
    struct kvm_run *run;
    size_t run_size;
    uint8_t *slot;          /* host mapping of memslot 0 (GPA 0) */
    uint64_t slot_size;
};

extern int g_failed;
void check(bool ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
const char *access_name(uint32_t a);
uint64_t median(uint64_t *v, uint64_t n);
static inline double ms(uint64_t ns) { return (double)ns / 1e6; }
static inline double us(uint64_t ns) { return (double)ns / 1e3; }
static inline uint64_t rd64(const void *p) { uint64_t x; memcpy(&x, p, 8); return x; }
static inline void wr64(void *p, uint64_t x) { memcpy(p, &x, 8); }

void *sys_host(struct vm *v, uint64_t va);
int vm_create(struct vm *v, int kvm, uint64_t slot_size);
void vm_destroy(struct vm *v);
void guest_install(struct vm *v);
int vcpu_setup(struct vm *v, uint64_t cr3, const uint8_t *entry);
uint64_t frame_rip(struct vm *v, uint64_t rsp_off);
void print_layout(uint64_t mem, uint64_t slot_size, uint64_t pool_frames);

/* migrate.c: the whole --migrate run; returns the number of failed checks. */
int run_migrate(int kvm, const struct opts *o);

#endif
