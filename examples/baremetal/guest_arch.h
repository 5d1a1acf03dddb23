/*
 * guest_arch.h - the three things the guest does differently per CPU: a
 * console store (one instruction whose syndrome / encoding the hypervisor
 * decodes), a hypercall, and the machine code of `return 42`.
 */
#ifndef BAREMETAL_GUEST_ARCH_H
#define BAREMETAL_GUEST_ARCH_H
#include <stdint.h>

#if defined(__aarch64__)
/* A plain STRB without writeback: the data abort reports ISV = 1 and the
 * source register in ESR_EL2.SRT. */
static inline void mmio_w8(uint64_t addr, uint8_t v)
{
    __asm__ volatile("strb %w0, [%1]" : : "r"(v), "r"(addr) : "memory");
}
#define HCALL(nr, a0, a1) ({                                                   \
    register uint64_t x0 __asm__("x0") = (a0);                                 \
    register uint64_t x1 __asm__("x1") = (a1);                                 \
    __asm__ volatile("hvc %2" : "+r"(x0) : "r"(x1), "i"(nr) : "memory");       \
    x0; })
/* mov x0, #42; ret */
#define RET42_CODE { 0xd2800540u, 0xd65f03c0u }
/* The passed-through UART is a PL011: its PrimeCell ID registers
 * (0xff0..0xffc) read 0x0d, 0xf0, 0x05, 0xb1; DR at 0, FR.TXFF bit 5. */
static inline int uart_id_ok(uint64_t u)
{
    volatile uint32_t *r = (volatile uint32_t *)u;
    return r[0xff0 / 4] == 0x0d && r[0xff4 / 4] == 0xf0 && r[0xff8 / 4] == 0x05 &&
           r[0xffc / 4] == 0xb1;
}
static inline void uart_putc(uint64_t u, char c)
{
    volatile uint32_t *r = (volatile uint32_t *)u;
    while (r[0x18 / 4] & (1u << 5))
        ;
    r[0] = (uint8_t)c;
}
#elif defined(__riscv)
/* An uncompressed SB: the hypervisor reads the instruction at sepc and takes
 * the value from rs2. */
static inline void mmio_w8(uint64_t addr, uint8_t v)
{
    __asm__ volatile(".option push\n.option norvc\nsb %0, 0(%1)\n.option pop"
                     : : "r"(v), "r"(addr) : "memory");
}
#define HCALL(nr, a0_, a1_) ({                                                 \
    register uint64_t a0 __asm__("a0") = (a0_);                                \
    register uint64_t a1 __asm__("a1") = (a1_);                                \
    register uint64_t a7 __asm__("a7") = (nr);                                 \
    __asm__ volatile("ecall" : "+r"(a0) : "r"(a1), "r"(a7) : "memory");        \
    a0; })
/* li a0, 42; ret */
#define RET42_CODE { 0x02a00513u, 0x00008067u }
/* The passed-through UART is a 16550: LSR (5) has THRE (bit 5) set when
 * idle and bit 7 (FIFO error) clear; THR at 0. */
static inline int uart_id_ok(uint64_t u)
{
    uint8_t lsr = *(volatile uint8_t *)(u + 5);
    return (lsr & 0x20) && !(lsr & 0x80);
}
static inline void uart_putc(uint64_t u, char c)
{
    volatile uint8_t *r = (volatile uint8_t *)u;
    while (!(r[5] & 0x20))
        ;
    r[0] = (uint8_t)c;
}
#elif defined(__x86_64__)
/* MOV %al, (%rdx) -- bytes 88 02: the hypervisor (baremetal-x86/hyp.c)
 * checks them and takes the value from the guest's rax. */
static inline void mmio_w8(uint64_t addr, uint8_t v)
{
    __asm__ volatile("movb %%al, (%%rdx)" : : "a"(v), "d"(addr) : "memory");
}
/* VMCALL: an exit on Intel; on AMD a #UD the hypervisor intercepts (as KVM
 * does). The call in rax, the arguments in rdi and rsi, the result in rax. */
#define HCALL(nr, a0, a1) ({                                                   \
    uint64_t r_ = (nr);                                                        \
    __asm__ volatile("vmcall" : "+a"(r_) : "D"((uint64_t)(a0)), "S"((uint64_t)(a1)) : "memory"); \
    r_; })
/* mov $42, %eax; ret (b8 2a 00 00 00 c3) */
#define RET42_CODE { 0x00002ab8u, 0x9090c300u }
/* The passed-through device is the local APIC page (a PC has no MMIO
 * UART): its version register (0x30) holds an integrated APIC's version,
 * 0x10..0x15, and the number of LVT entries - 1 (bits 23:16), 3 or more. */
static inline int uart_id_ok(uint64_t u)
{
    uint32_t v = *(volatile uint32_t *)(u + 0x30);
    return (v & 0xff) >= 0x10 && (v & 0xff) <= 0x15 && ((v >> 16) & 0xff) >= 3;
}
/* ... and the line goes straight out through Bochs's port 0xe9, an I/O
 * port the hypervisor does not intercept. */
static inline void uart_putc(uint64_t u, char c)
{
    (void)u;
    if (c != '\r')
        __asm__ volatile("outb %0, $0xe9" : : "a"(c));
}
#define DEV_LINE "guest: this line went straight to port 0xe9 (no exit); the LAPIC answered through its DEVICE leaf\n"
#else
#error "the bare-metal guest is for AArch64, RISC-V or x86-64"
#endif

#ifndef DEV_LINE
#define DEV_LINE "guest: this line went straight to the UART (DEVICE passthrough)\n"
#endif

#endif
