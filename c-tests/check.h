/*
 * A tiny test framework. Each test executable lists its tests with TEST_LIST;
 * `exe` runs them all, `exe NAME` runs one (CTest registers one test per
 * name, so every rule shows up under its own name).
 */
#ifndef AXALLOC_TEST_CHECK_H
#define AXALLOC_TEST_CHECK_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern int check_failures;

#define CHECK(cond)                                                           \
  do {                                                                        \
    if (!(cond)) {                                                            \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      check_failures++;                                                       \
    }                                                                         \
  } while (0)

/* Compares two status codes and prints both names on mismatch. */
#define CHECK_STATUS(expr, want)                                               \
  do {                                                                         \
    int got_ = (int)(expr);                                                    \
    int want_ = (int)(want);                                                   \
    if (got_ != want_) {                                                       \
      fprintf(stderr, "%s:%d: %s = %s, want %s\n", __FILE__, __LINE__, #expr,  \
              axalloc_status_str(got_), axalloc_status_str(want_));            \
      check_failures++;                                                        \
    }                                                                          \
  } while (0)

#define CHECK_EQ_U64(a, b)                                                     \
  do {                                                                         \
    unsigned long long a_ = (unsigned long long)(a);                           \
    unsigned long long b_ = (unsigned long long)(b);                           \
    if (a_ != b_) {                                                            \
      fprintf(stderr, "%s:%d: %s = %#llx, want %#llx (%s)\n", __FILE__,        \
              __LINE__, #a, a_, b_, #b);                                       \
      check_failures++;                                                        \
    }                                                                          \
  } while (0)

typedef struct test_case {
  const char *name;
  void (*fn)(void);
} test_case_t;

int run_tests(const test_case_t *tests, int argc, char **argv);

#define TEST_MAIN(...)                                                    \
  int check_failures;                                                     \
  int main(int argc, char **argv) {                                       \
    static const test_case_t tests_[] = {__VA_ARGS__, {NULL, NULL}};      \
    return run_tests(tests_, argc, argv);                                 \
  }
#define T(fn) {#fn, fn}

#endif
