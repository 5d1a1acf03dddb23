/* guest_entry.S - the guest's first instructions (64-bit mode, its own
 * page tables: see hyp.c). The hypervisor enters here with rdi = TOP as
 * the guest sees it (0: layout.h's ranges are at the top of the virtual
 * space). */
#include "layout.h"
    .text
    .global guest_entry
guest_entry:
    mov     %rdi, %rsp
    sub     $(STACK_OFF - STACK_SIZE), %rsp     /* stack top */
    call    guest_main                          /* rdi = TOP */
    mov     %rax, %rdi                          /* guest_main's result */
    mov     $HC_DONE, %eax
    vmcall                                      /* never returns */
1:  jmp     1b
    .section .note.GNU-stack,"",@progbits
