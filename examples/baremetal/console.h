/* console.h - output of the bare-metal hypervisors (arch_putc in hyp.c). */
#ifndef BAREMETAL_CONSOLE_H
#define BAREMETAL_CONSOLE_H
#include <stdint.h>
void arch_putc(char c);
void put(const char *s);
void puthex(uint64_t v);
void putdec(uint64_t v);
#endif
