/* guest_entry.S - the guest's first instructions (EL1, MMU off). The
 * hypervisor enters here with x0 = TOP (see layout.h). */
#include "layout.h"
    .text
    .global guest_entry
guest_entry:
    mov     x19, x0
    sub     x1, x0, #(STACK_OFF - STACK_SIZE) >> 12, lsl #12  /* stack top */
    mov     sp, x1
    bl      guest_main          /* x0 = TOP */
    hvc     #HC_DONE            /* x0 = guest_main's result; never returns */
1:  b       1b
