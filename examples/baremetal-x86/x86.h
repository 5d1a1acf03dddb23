/*
 * x86.h - what hyp.c, vmx.c and svm.c share: CPU instructions, the guest's
 * registers and its address translation, and the exit handling both
 * hypervisors use.
 */
#ifndef BAREMETAL_X86_H
#define BAREMETAL_X86_H
#include <stdint.h>
#include "axalloc.h"

/* The guest's registers but rsp/rip/rflags (VMCS / VMCB); start.S uses
 * these offsets. */
struct gregs {
    uint64_t rax, rbx, rcx, rdx, rsi, rdi, rbp, r8, r9, r10, r11, r12, r13, r14, r15;
};
_Static_assert(sizeof(struct gregs) == 15 * 8, "start.S offsets");

int vmx_run(struct gregs *g, int launched);
void svm_run(struct gregs *g, uint64_t vmcb);

static inline uint64_t rdmsr(uint32_t msr)
{
    uint32_t lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
    return (uint64_t)hi << 32 | lo;
}
static inline void wrmsr(uint32_t msr, uint64_t v)
{
    __asm__ volatile("wrmsr" : : "c"(msr), "a"((uint32_t)v), "d"((uint32_t)(v >> 32)));
}
static inline void cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4])
{
    __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
}
#define READ_CR(n) ({ uint64_t v_; __asm__ volatile("mov %%cr" #n ", %0" : "=r"(v_)); v_; })
#define WRITE_CR(n, v) __asm__ volatile("mov %0, %%cr" #n : : "r"((uint64_t)(v)) : "memory")

#define MSR_EFER 0xc0000080u
#define EFER_LME (1u << 8)
#define EFER_LMA (1u << 10)
#define EFER_NXE (1u << 11)
#define EFER_SVME (1u << 12)

/* The guest's own page tables (4-level, built by hyp.c at GUEST_PT_GPA):
 * the code's 2 MiB identity-mapped, and the top 2 GiB of the guest-physical
 * window [0, top) at the top 2 GiB of the virtual space, so the guest, told
 * TOP = 0, computes canonical virtual addresses with layout.h's offsets. */
#define GUEST_PT_GPA 0x100000ull
uint64_t gva_to_gpa(uint64_t va);

/* The exit-time work both hypervisors share (hyp.c). */
enum { MODE_EPT4 = 1, MODE_NPT4 = 2, MODE_EPT5 = 3, MODE_NPT5 = 4 };
extern uint64_t x86_top;
struct exit_ctx {
    struct gregs *g;
    uint64_t rip, rsp;      /* the guest's, updated by the handler */
};
/* A stage-2 fault at gpa for access, which the exit says hit a present
 * entry (present: EPT qualification bits 5:3 != 0 / #NPF EXITINFO1.P)
 * allowing `perms` (EPT: bits 5:3, the AND of the walk's R/W/X; -1 when
 * the exit does not say, NPT). Emulates the console store, skips a
 * refused access; returns with the guest's state ready to resume. */
void x86_fault(struct exit_ctx *x, uint64_t gpa, uint32_t access, int present, int perms);
/* VMCALL (Intel; on AMD its #UD, intercepted): the hypercall in rax with
 * rdi, rsi; the result in rax. rip past the 3-byte instruction. */
void x86_hypercall(struct exit_ctx *x);

/* flush_tlb (pool.c's arch_flush_tlb) of the hypervisor in use. */
extern void (*x86_flush_tlb)(uint64_t gpa, uint64_t size);

void vmx_main(uint32_t mode, uint32_t gpa_bits);
void svm_main(uint32_t mode, uint32_t gpa_bits);
/* Set up the address space and the guest's page tables; returns hw. */
void x86_init(uint32_t format, uint32_t gpa_bits, const char *title, axalloc_hw_t *hw);

#endif
