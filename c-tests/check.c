#include "check.h"

#include "axalloc.h"

int run_tests(const test_case_t *tests, int argc, char **argv) {
  int ran = 0;
  for (const test_case_t *t = tests; t->name; t++) {
    if (argc > 1 && strcmp(argv[1], t->name) != 0) continue;
    int before = check_failures;
    t->fn();
    ran++;
    printf("%s %s\n", check_failures == before ? "PASS" : "FAIL", t->name);
  }
  if (ran == 0) {
    fprintf(stderr, "no test named %s\n", argc > 1 ? argv[1] : "(any)");
    return 2;
  }
  return check_failures ? 1 : 0;
}
