/*
 * The C test host: a frame pool that implements libaxalloc's hooks and
 * records everything the library does with them, so that tests can check the
 * rules of the contract rather than trust the library's own bookkeeping:
 *
 *   - every frame is obtained and given back exactly once (no leak, no double
 *     free, no free of a frame the pool never handed out);
 *   - no frame is given back while the stage-2 table still reaches it, or
 *     before a flush_tlb call that followed the last time it was reachable
 *     (the pool decodes the table itself, independently of the library);
 *   - flush_tlb is never called with size 0, and its calls are counted;
 *   - no hook is called after axalloc_as_destroy returned;
 *   - allocation failure can be injected at any point (a budget of successful
 *     allocations, then every further one fails).
 *
 * Host-physical addresses are pool offsets plus a base (0 by default is
 * avoided: base 0x40000000 unless the test asks for 0, to catch "address 0
 * means empty" bugs).
 */
#ifndef AXALLOC_TEST_HOST_H
#define AXALLOC_TEST_HOST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "axalloc.h"

#define TH_FRAME 4096u

typedef struct th_pool th_pool_t;

typedef struct th_flush {
  uint64_t gpa, size;
} th_flush_t;

/* Creates a pool of `frames` 4 KiB frames at host-physical `base`. The pool
 * fills frames with 0xA5 garbage when handing them out (so missing zeroing
 * shows), unless `zeroed`. */
th_pool_t *th_pool_new(size_t frames, uint64_t base, bool zeroed);
/* Frees the pool's memory (not the frames' accounting: check first). */
void th_pool_free(th_pool_t *p);

/* The hooks over this pool (ctx = p). */
axalloc_hooks_t th_hooks(th_pool_t *p);
/* Tells the pool which address space and format its frames serve, so it can
 * decode the table for reachability checks (call after create). */
void th_attach(th_pool_t *p, axalloc_as_t *as, uint32_t format);
/* Marks every frame the table reaches now as "exposed" (the hardware may
 * cache it until the next flush). Tests call it after operations that add
 * mappings; th_check_* and the hooks call it where needed. */
void th_scan(th_pool_t *p);
/* After axalloc_as_destroy: any later hook call is an error. */
void th_mark_destroyed(th_pool_t *p);

/* Failure injection: allow `n` more successful allocations, then fail every
 * further one; th_fail_never() lifts it. */
void th_fail_after(th_pool_t *p, long n);
void th_fail_never(th_pool_t *p);

/* Counters. */
size_t th_in_use(const th_pool_t *p);        /* frames handed out, not back */
size_t th_allocs(const th_pool_t *p);        /* successful alloc_frame calls */
size_t th_frees(const th_pool_t *p);         /* free_frame calls */
size_t th_failed_allocs(const th_pool_t *p); /* injected failures */
size_t th_flushes(const th_pool_t *p);       /* flush_tlb calls */
void th_contig_fails(th_pool_t *p, bool fails); /* alloc_contig fails (alloc_frame goes on) */
size_t th_contig_frees(const th_pool_t *p);   /* free_contig calls */
size_t th_blocks(th_pool_t *p, uint32_t order); /* live alloc_contig blocks of order */
th_flush_t th_last_flush(const th_pool_t *p);
/* Errors the pool detected (0 = the library kept every rule so far) and the
 * first message. */
size_t th_errors(const th_pool_t *p);
const char *th_first_error(const th_pool_t *p);

/* Direct access for bit-level checks. */
void *th_virt(th_pool_t *p, uint64_t hpa);
bool th_owns(const th_pool_t *p, uint64_t hpa);
/* Reads the raw entry at `level` (3 = root, 0 = 4 KiB) on the walk to gpa;
 * returns false if the walk stops above that level (non-present entry or leaf). */
bool th_entry(th_pool_t *p, uint64_t gpa, int level, uint64_t *raw_out);

/* Entry decoding per AXALLOC_FORMAT_*, from the manuals: present / valid;
 * a leaf above level 0 (EPT/NPT PS, Arm block, RISC-V R|W|X); the address
 * the entry names. */
bool th_present(uint32_t format, uint64_t raw);
/* The address space th_attach attached (NULL if none). */
axalloc_as_t *th_as_of(th_pool_t *p);
bool th_huge(uint32_t format, uint64_t raw);
uint64_t th_addr(uint32_t format, uint64_t raw);
/* Sets bits in the raw leaf mapping gpa (as hardware sets accessed/dirty). */
bool th_set_leaf_bits(th_pool_t *p, uint64_t gpa, uint64_t bits);

/* Enables/disables the (slow) reachability check on every free. On by default. */
void th_check_reachability(th_pool_t *p, bool on);

/* Clears bits in the raw leaf mapping gpa (as a host would to write-protect a
 * page); the counterpart of th_set_leaf_bits. False if no present leaf maps
 * gpa. */
bool th_clear_leaf_bits(th_pool_t *p, uint64_t gpa, uint64_t bits);

/* One table frame of the stage-2 table, as the pool decodes it. */
typedef struct th_table {
  uint64_t hpa;  /* the table frame */
  int level;     /* 3 = root, 2 = 1 GiB entries, 1 = 2 MiB entries, 0 = 4 KiB entries */
  uint64_t gpa;  /* first guest-physical address it translates */
  uint64_t span; /* bytes of guest-physical space it translates: 512 entries
                    of the level's page size (2 MiB at level 0, 1 GiB at 1,
                    512 GiB at 2, 2^48 for the root) */
} th_table_t;
/* Lists the table frames the table reaches now, root first, parents before
 * children; writes at most `max` to `out` and returns how many there are. */
size_t th_list_tables(th_pool_t *p, th_table_t *out, size_t max);

/*
 * Hook taps: a test's callbacks that run inside the library's hook calls,
 * before the pool's own hook. A callback runs on the thread that called into
 * the library, possibly while the library holds its lock, and with no pool
 * lock held — so it may block, e.g. wait for another thread that calls into
 * the same address space (as a host's flush that IPIs vCPUs would). Each
 * callback is optional and may be changed between library calls; callbacks
 * that other threads can reach must be thread-safe.
 */
typedef struct th_tap th_tap_t;
struct th_tap {
  void *arg; /* for the callbacks; never touched by the host */
  void (*on_alloc)(th_tap_t *t);                          /* before alloc_frame */
  void (*on_free)(th_tap_t *t, uint64_t hpa);             /* before free_frame */
  void (*on_flush)(th_tap_t *t, uint64_t gpa, uint64_t size); /* before flush_tlb */
  /* After the pool's phys_to_virt: may replace its answer (a host breaking
   * the contract: NULL, a misaligned pointer). */
  void *(*on_p2v)(th_tap_t *t, uint64_t hpa, void *virt);
  /* After a successful alloc_frame: may replace the frame's address (a host
   * breaking the contract: misaligned, beyond 2^52). The library must hand
   * the value back through free_frame; the tap then frees the real frame. */
  uint64_t (*on_alloced)(th_tap_t *t, uint64_t hpa);
  uint64_t replaced_real, replaced_fake; /* the last frame on_alloced replaced */
  axalloc_hooks_t inner; /* the pool's hooks; set by th_fx_new_tapped */
};

/*
 * A side job: a thread that waits until it is triggered, runs fn(arg) once
 * and reports completion. For tests that, from inside a hook, need another
 * thread to make progress in the library and must not hang if it cannot:
 * every wait has a timeout.
 */
typedef struct th_side th_side_t;
/* Starts the thread (aborts if it cannot). */
th_side_t *th_side_new(void (*fn)(void *arg), void *arg);
/* Triggers fn (the first call only) and waits up to timeout_s seconds for it
 * to return. True if it has returned. */
bool th_side_run(th_side_t *s, unsigned timeout_s);
/* True if fn was triggered at least once. */
bool th_side_triggered(th_side_t *s);
/* Ends the side job: if it was never triggered, the thread exits without
 * running fn; otherwise waits up to timeout_s seconds for fn to return, and
 * if it does not, reports that and ends the process (exit status 1) — the
 * thread is stuck inside the library and the address space cannot be
 * destroyed under it. Joins the thread and frees `s`. Returns whether fn ran
 * to completion. */
bool th_side_end(th_side_t *s, unsigned timeout_s);

#endif

/* A fixture: one pool + one address space attached to it. */
typedef struct th_fx {
  th_pool_t *pool;
  axalloc_as_t *as;
  uint32_t format;
} th_fx_t;

/* Creates pool (`frames` frames at base 0x40000000) and address space over
 * window [base, base + size); aborts the test program if creation fails. */
th_fx_t th_fx_new(uint32_t format, uint32_t cfg_flags, uint64_t base, uint64_t size, size_t frames);
/* Destroys the address space, then reports problems: frames still in use,
 * errors the pool detected. Returns the number of problems (0 = clean) and
 * frees the pool. */
int th_fx_done(th_fx_t *f);
/* Stats shortcut (aborts on error). */
axalloc_stats_t th_stats(const th_fx_t *f);
/* As th_fx_new, but the address space's hooks go through `tap` (its
 * callbacks first, then the pool's hooks). `tap` must stay valid until
 * th_fx_done returns; its callbacks are also called by the destroy. */
/* Hooks that go through `tap` (its callbacks, then tap->inner, which the
 * caller sets, e.g. to th_hooks(pool)). */
axalloc_hooks_t th_tap_hooks(th_tap_t *tap);
th_fx_t th_fx_new_tapped(th_tap_t *tap, uint32_t format, uint32_t cfg_flags, uint64_t base, uint64_t size,
                         size_t frames);
