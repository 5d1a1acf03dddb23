/* guest_entry.S - the guest's first instructions (VS-mode, vsatp = Bare).
 * The hypervisor enters here with a0 = TOP (see layout.h). */
#include "layout.h"
    .option norvc
    .text
    .global guest_entry
guest_entry:
    li      t0, STACK_OFF - STACK_SIZE
    sub     sp, a0, t0          /* stack top */
    call    guest_main          /* a0 = TOP */
    li      a7, HC_DONE         /* a0 = guest_main's result; never returns */
    ecall
1:  j       1b
