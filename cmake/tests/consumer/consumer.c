/* A user's program: includes the installed header, links the installed
 * archive, makes one call that needs no hooks. Built by the packaging tests
 * (find_package, pkg-config, plain cc, add_subdirectory) with
 * -std=c99 -Wall -Wextra -Werror. */
#include <stdio.h>
#include <string.h>

#include <axalloc.h>

int main(void) {
  const char *ok = axalloc_status_str(AXALLOC_OK);
  if (ok == NULL || strcmp(ok, "AXALLOC_OK") != 0) {
    fprintf(stderr, "axalloc_status_str(AXALLOC_OK) = %s\n", ok ? ok : "NULL");
    return 1;
  }
  printf("consumer: axalloc_status_str(AXALLOC_OK) = %s\n", ok);
  return 0;
}
