/*
 * guest.c - the guest of the bare-metal hypervisors: EL1 with its MMU off
 * (Arm) or VS-mode with vsatp = Bare (RISC-V), so every address below is a
 * guest-physical address the stage-2 / G-stage table translates. On x86
 * the guest runs in 64-bit mode, which needs paging: its own table (built
 * by baremetal-x86/hyp.c) maps the code at its guest-physical address and
 * the ranges below TOP at the top of the virtual space, and the guest is
 * told TOP = 0 -- the same offsets, one fixed translation in front.
 *
 * Position-independent (-fpie): it runs at CODE_GPA, not where the linker
 * put it in the hypervisor's image. No writable static data (the code region
 * is read-only); no library calls. Only aligned accesses: with the stage-1
 * MMU off, Arm treats data accesses as Device memory, where a misaligned
 * access faults.
 *
 * Every rule is printed; the first broken one ends the guest with a FAIL
 * line and a non-zero code to HC_DONE.
 */
#include <stdint.h>
#include "guest_arch.h"
#include "layout.h"

int guest_main(uint64_t top);

static void gput(uint64_t console, const char *s)
{
    for (; *s; s++)
        mmio_w8(console, (uint8_t)*s);
}

#define CHECK(cond, code)                                              \
    do {                                                               \
        if (!(cond)) {                                                 \
            gput(con, "guest: FAIL: " #cond "\n");                     \
            return (code);                                             \
        }                                                              \
        gput(con, "guest: ok: " #cond "\n");                           \
    } while (0)

/* The pattern: different in every word, tied to the address and a seed. */
static inline uint64_t pat(uint64_t a, uint64_t seed)
{
    return (a * 0x9e3779b97f4a7c15ull) ^ seed;
}

static void fill(uint64_t base, uint64_t size, uint64_t seed)
{
    volatile uint64_t *p = (volatile uint64_t *)base;
    for (uint64_t i = 0; i < size / 8; i++)
        p[i] = pat(base + 8 * i, seed);
}

static int check(uint64_t base, uint64_t size, uint64_t seed)
{
    volatile uint64_t *p = (volatile uint64_t *)base;
    for (uint64_t i = 0; i < size / 8; i++)
        if (p[i] != pat(base + 8 * i, seed))
            return 0;
    return 1;
}

/* check() for bytes read at `at` that were written for address `as`. */
static int check2(uint64_t at, uint64_t as, uint64_t size, uint64_t seed)
{
    volatile uint64_t *p = (volatile uint64_t *)at;
    for (uint64_t i = 0; i < size / 8; i++)
        if (p[i] != pat(as + 8 * i, seed))
            return 0;
    return 1;
}

static int all_zero(uint64_t base, uint64_t size)
{
    volatile uint64_t *p = (volatile uint64_t *)base;
    for (uint64_t i = 0; i < size / 8; i++)
        if (p[i])
            return 0;
    return 1;
}

int guest_main(uint64_t top)
{
    uint64_t con = top - MMIO_OFF;
    uint64_t ram = top - RAM_OFF, unm = top - UNMAP_OFF;
    uint64_t ro = top - RO_OFF, nx = top - NX_OFF;

    gput(con, "guest: running; every page below faults in on first touch\n");

    /* Lazy RAM: one fault per page, zero-filled, then every byte written
     * (as 64-bit words) is read back. */
    CHECK(all_zero(ram, RAM_SIZE), 10);
    fill(ram, RAM_SIZE, 0x1111);
    CHECK(check(ram, RAM_SIZE, 0x1111), 11);

    /* Read-only RAM: reads fault in zeros; a write is refused
     * (ERR_ACCESS) and skipped by the hypervisor, and changes nothing. */
    uint64_t denied = HCALL(HC_DENIED, 0, 0);
    CHECK(all_zero(ro, RO_SIZE), 20);
    *(volatile uint64_t *)(ro + 8) = 0xdead;
    CHECK(HCALL(HC_DENIED, 0, 0) == denied + 1, 21);
    CHECK(all_zero(ro, RO_SIZE), 22);

    /* Non-executable RAM: code written there is not run; the refused fetch
     * is answered by the hypervisor as an immediate return. */
    static const uint32_t code[2] = RET42_CODE;
    volatile uint32_t *c = (volatile uint32_t *)nx;
    c[0] = code[0];
    c[1] = code[1];
    CHECK(c[0] == code[0] && c[1] == code[1], 30);
    int (*f)(void) = (int (*)(void))nx;
    int r = f();
    CHECK(HCALL(HC_DENIED, 0, 0) == denied + 2, 31);
    CHECK(r != 42, 32);

    /* Unmap: written, unmapped and mapped again (lazily) by the hypervisor,
     * whose flush must drop the old translations: re-read as zeros. */
    fill(unm, UNMAP_SIZE, 0x2222);
    CHECK(check(unm, UNMAP_SIZE, 0x2222), 40);
    CHECK(HCALL(HC_REMAP, unm, UNMAP_SIZE) == 0, 41);
    CHECK(all_zero(unm, UNMAP_SIZE), 42);
    fill(unm, UNMAP_SIZE, 0x3333);
    CHECK(check(unm, UNMAP_SIZE, 0x3333), 43);

    /* Linear memory, one 2 MiB leaf: the hypervisor's bytes are there;
     * then one page in its middle is unmapped (the leaf is split into a
     * table -- on Arm, break-before-make): the rest still reads the same,
     * and a read of the hole is refused (ERR_NOT_MAPPED, skipped). */
    uint64_t lin = top - LIN_OFF;
    CHECK(check(lin, LIN_SIZE, 0x4444), 60);
    CHECK(HCALL(HC_HOLE, 0, 0) == 0, 61);
    CHECK(check(lin, HOLE_OFF, 0x4444), 62);
    CHECK(check(lin + HOLE_OFF + PAGE, LIN_SIZE - HOLE_OFF - PAGE, 0x4444), 63);
    denied = HCALL(HC_DENIED, 0, 0);
    (void)*(volatile uint64_t *)(lin + HOLE_OFF + 64);
    CHECK(HCALL(HC_DENIED, 0, 0) == denied + 1, 64);
    fill(lin + LIN_SIZE - 2 * PAGE, 2 * PAGE, 0x5555);   /* the host checks these */
    CHECK(check(lin + LIN_SIZE - 2 * PAGE, 2 * PAGE, 0x5555), 65);

    /* The same host bytes through the 1 GiB alias; then a hole punched in
     * it (a 1 GiB leaf split down to 4 KiB): the rest reads the same, the
     * hole faults. */
    uint64_t g1 = top - G1_OFF, alias = g1 + LIN_HOST_OFF;
    CHECK(check2(alias, lin, 16 * PAGE, 0x4444), 80);
    CHECK(HCALL(HC_HOLE1G, 0, 0) == 0, 81);
    CHECK(check2(alias, lin, 16 * PAGE, 0x4444), 82);
    denied = HCALL(HC_DENIED, 0, 0);
    (void)*(volatile uint64_t *)(g1 + G1_HOLE);
    CHECK(HCALL(HC_DENIED, 0, 0) == denied + 1, 83);
    (void)*(volatile uint64_t *)(g1 + G1_HOLE - PAGE);    /* the neighbours and a */
    (void)*(volatile uint64_t *)(g1 + G1_HOLE + PAGE);    /* far 2 MiB still map */
    (void)*(volatile uint64_t *)(g1 + 0x7000000);
    CHECK(HCALL(HC_DENIED, 0, 0) == denied + 1, 84);

    /* Device passthrough: the machine's UART, mapped AXALLOC_DEVICE; its
     * registers answer as that device's, and a line goes out directly. */
    uint64_t uart = top - DEV_OFF;
    CHECK(uart_id_ok(uart), 70);
    for (const char *s = DEV_LINE; *s; s++) {
        if (*s == '\n')
            uart_putc(uart, '\r');
        uart_putc(uart, *s);
    }

    /* The first RAM is still intact after all that. */
    CHECK(check(ram, RAM_SIZE, 0x1111), 50);
    gput(con, "guest: done\n");
    return 0;
}
