# Platform tests: entry formats bit by bit, threads, lifecycle, the public
# header (C99 / C11 / C++, drift against git), the shipped archive (undefined
# and exported symbols, a bare-metal link without libc) and `cargo test`.
#
# Included by c-tests/CMakeLists.txt. The same file doubles as the script the
# archive tests run (`cmake -DAXALLOC_PLATFORM_CHECK=<check> ... -P
# platform.cmake`), so the checks live next to their registration.

# --------------------------------------------------------------------------
# Script mode: the archive checks.
# --------------------------------------------------------------------------
if(CMAKE_SCRIPT_MODE_FILE)
  cmake_minimum_required(VERSION 3.22)
  if(NOT EXISTS "${ARCHIVE}")
    message(FATAL_ERROR "archive not found: ${ARCHIVE}")
  endif()

  if(AXALLOC_PLATFORM_CHECK STREQUAL "undefined")
    # `nm -u` of the shipped archive is exactly what README ("Building for a
    # kernel") documents:
    # - freestanding targets (*-none*, the default): nothing at all. On these
    #   targets compiler_builtins carries memcpy/memmove/memset/memcmp/bcmp;
    #   the packaging links the ones the library calls into the archive and
    #   makes them local, so a kernel needs to provide no symbol;
    # - a hosted target chosen with -DAXALLOC_RUST_TARGET (e.g.
    #   x86_64-unknown-linux-gnu): memory functions from the C library only,
    #   a subset of memcpy/memmove/memset/memcmp/bcmp.
    execute_process(COMMAND "${NM}" -u "${ARCHIVE}"
      OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE rc)
    if(NOT rc EQUAL 0)
      message(FATAL_ERROR "${NM} -u failed (${rc}): ${err}")
    endif()
    string(REPLACE "\n" ";" lines "${out}")
    set(seen "")
    foreach(line IN LISTS lines)
      if(line MATCHES "^[ \t]*[Uw][ \t]+([^ \t]+)")
        list(APPEND seen "${CMAKE_MATCH_1}")
      endif()
    endforeach()
    list(REMOVE_DUPLICATES seen)
    list(SORT seen)
    if(RUST_TARGET MATCHES "-none")
      if(seen)
        string(REPLACE ";" "\n  " seen_text "${seen}")
        message(FATAL_ERROR "${ARCHIVE} (${RUST_TARGET}) must leave no symbol undefined; nm -u lists:\n  ${seen_text}")
      endif()
      message(STATUS "undefined symbols: none (as documented for ${RUST_TARGET})")
    else()
      set(allowed memcpy memmove memset memcmp bcmp)
      set(bad "")
      foreach(sym IN LISTS seen)
        if(NOT sym IN_LIST allowed)
          list(APPEND bad "${sym}")
        endif()
      endforeach()
      if(bad)
        string(REPLACE ";" "\n  " bad_text "${bad}")
        message(FATAL_ERROR "undefined symbols beyond memcpy/memmove/memset/memcmp/bcmp in ${ARCHIVE} (${RUST_TARGET}):\n  ${bad_text}")
      endif()
      message(STATUS "undefined symbols (hosted target ${RUST_TARGET}): ${seen}")
    endif()

  elseif(AXALLOC_PLATFORM_CHECK STREQUAL "exports")
    # Every global defined symbol starts with axalloc_, and the whole API is
    # there.
    execute_process(COMMAND "${NM}" -g --defined-only "${ARCHIVE}"
      OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE rc)
    if(NOT rc EQUAL 0)
      message(FATAL_ERROR "${NM} -g --defined-only failed (${rc}): ${err}")
    endif()
    string(REPLACE "\n" ";" lines "${out}")
    set(bad "")
    set(defined "")
    foreach(line IN LISTS lines)
      if(line MATCHES "^[0-9a-fA-F]*[ \t]+([A-Za-z])[ \t]+([^ \t]+)$")
        set(type "${CMAKE_MATCH_1}")
        set(sym "${CMAKE_MATCH_2}")
        list(APPEND defined "${sym}")
        if(NOT sym MATCHES "^axalloc_")
          list(APPEND bad "${type} ${sym}")
        endif()
      endif()
    endforeach()
    if(bad)
      string(REPLACE ";" "\n  " bad_text "${bad}")
      message(FATAL_ERROR "global symbols outside the axalloc_ namespace in ${ARCHIVE}:\n  ${bad_text}")
    endif()
    set(api axalloc_status_str axalloc_as_create axalloc_as_destroy axalloc_as_root
        axalloc_as_stats axalloc_map_alloc axalloc_map_linear axalloc_unmap
        axalloc_handle_fault axalloc_translate axalloc_read axalloc_write)
    set(missing "")
    foreach(sym IN LISTS api)
      if(NOT sym IN_LIST defined)
        list(APPEND missing "${sym}")
      endif()
    endforeach()
    if(missing)
      message(FATAL_ERROR "API functions not exported by ${ARCHIVE}: ${missing}")
    endif()
    message(STATUS "exported: ${defined}")

  else()
    message(FATAL_ERROR "unknown AXALLOC_PLATFORM_CHECK '${AXALLOC_PLATFORM_CHECK}'")
  endif()
  return()
endif()

# --------------------------------------------------------------------------
# C tests over the test host.
# --------------------------------------------------------------------------
axalloc_c_test(test_format SOURCES test_format.c TESTS
  ept_leaf_4k_populate npt_leaf_4k_populate ept_leaf_4k_fault npt_leaf_4k_fault
  ept_leaf_4k_write npt_leaf_4k_write ept_leaf_linear_4k npt_leaf_linear_4k
  ept_leaf_2m npt_leaf_2m ept_leaf_1g npt_leaf_1g ept_nonleaf npt_nonleaf
  ept_not_present npt_not_present ept_split npt_split ept_no_huge_1g npt_no_huge_1g
  ept_accessed_dirty npt_accessed_dirty)

axalloc_c_test(test_threads SOURCES test_threads.c TESTS
  same_page_ept same_page_npt
  diff_pages_interleaved_ept diff_pages_interleaved_npt
  diff_pages_disjoint_ept diff_pages_disjoint_npt
  diff_pages_overlapping_ept diff_pages_overlapping_npt
  faults_translate_read_ept faults_translate_read_npt
  faults_vs_map_unmap_ept faults_vs_map_unmap_npt
  faults_vs_unmap_same_ept faults_vs_unmap_same_npt)

axalloc_c_test(test_lifecycle SOURCES test_lifecycle.c TESTS
  destroy_returns_all_ept destroy_returns_all_npt destroy_null
  zeroed_before_visible_ept zeroed_before_visible_npt
  frames_zeroed_not_rezeroed_ept frames_zeroed_not_rezeroed_npt
  seeded_garbage_zeroed_ept seeded_garbage_zeroed_npt
  table_frames_small_ept table_frames_small_npt
  table_frames_1gib_ept table_frames_1gib_npt)
# 1 GiB of pool memory each: do not run the two at once.
set_tests_properties(test_lifecycle.table_frames_1gib_ept test_lifecycle.table_frames_1gib_npt
  PROPERTIES RESOURCE_LOCK axalloc_big_pool)

# --------------------------------------------------------------------------
# The public header as C99, C11 and C++ (sources generated into the build
# tree; each program links the shipped archive, so the C++ one also proves
# the extern "C" guards: a mangled reference would not resolve).
# --------------------------------------------------------------------------
set(_plat_gen "${CMAKE_CURRENT_BINARY_DIR}/platform")

# The package version as Cargo.toml states it: the header's AXALLOC_VERSION_*
# and axalloc_version() must both equal it (header_c* checks).
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS "${PROJECT_SOURCE_DIR}/Cargo.toml")
file(STRINGS "${PROJECT_SOURCE_DIR}/Cargo.toml" _plat_cargo_version REGEX "^version *=" LIMIT_COUNT 1)
if(NOT _plat_cargo_version MATCHES "\"([0-9]+)\\.([0-9]+)\\.([0-9]+)")
  message(FATAL_ERROR "Cargo.toml: no version = \"X.Y.Z\" line")
endif()
set(CARGO_VERSION_MAJOR ${CMAKE_MATCH_1})
set(CARGO_VERSION_MINOR ${CMAKE_MATCH_2})
set(CARGO_VERSION_PATCH ${CMAKE_MATCH_3})

file(CONFIGURE OUTPUT "${_plat_gen}/header_c.c" @ONLY CONTENT [=[
/* Generated by c-tests/platform.cmake: axalloc.h under a strict C standard. */
#include "axalloc.h"
#include "axalloc.h" /* include guard */

#include <string.h>

#if defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
_Static_assert(sizeof(axalloc_status_t) == 4, "axalloc_status_t is int32_t-sized");
_Static_assert(sizeof(axalloc_config_t) == 48, "axalloc_config_t layout");
_Static_assert(sizeof(axalloc_hw_t) == 32, "axalloc_hw_t layout");
_Static_assert(sizeof(axalloc_stats_t) == 56, "axalloc_stats_t layout");
_Static_assert(sizeof(axalloc_mapping_t) == 48, "axalloc_mapping_t layout");
#endif

/* The version: header macros == Cargo.toml (at configure time) ==
 * axalloc_version() (checked in main), and usable in #if. */
#if AXALLOC_VERSION_MAJOR != @CARGO_VERSION_MAJOR@ || AXALLOC_VERSION_MINOR != @CARGO_VERSION_MINOR@ || \
    AXALLOC_VERSION_PATCH != @CARGO_VERSION_PATCH@
#error "AXALLOC_VERSION_* differ from Cargo.toml's @CARGO_VERSION_MAJOR@.@CARGO_VERSION_MINOR@.@CARGO_VERSION_PATCH@"
#endif
#if AXALLOC_VERSION != AXALLOC_MAKE_VERSION(@CARGO_VERSION_MAJOR@, @CARGO_VERSION_MINOR@, @CARGO_VERSION_PATCH@)
#error "AXALLOC_VERSION is not (major << 16) | (minor << 8) | patch"
#endif
/* CMakeLists.txt's project(VERSION) (what CMake packages say) too */
#if AXALLOC_VERSION != AXALLOC_MAKE_VERSION(@PROJECT_VERSION_MAJOR@, @PROJECT_VERSION_MINOR@, @PROJECT_VERSION_PATCH@)
#error "project(axalloc VERSION @PROJECT_VERSION@) in CMakeLists.txt differs from Cargo.toml"
#endif

static int check(int ok, int code) { return ok ? 0 : code; }

int main(void) {
  int rc = 0;
  axalloc_config_t cfg;
  axalloc_hooks_t hooks;
  axalloc_stats_t stats;
  axalloc_as_t *as = NULL;
  memset(&cfg, 0, sizeof cfg);
  memset(&hooks, 0, sizeof hooks);
  cfg.struct_size = sizeof cfg;
  hooks.struct_size = sizeof hooks;
  cfg.format = AXALLOC_FORMAT_X86_EPT;
  cfg.flags = AXALLOC_CFG_FRAMES_ZEROED | AXALLOC_CFG_NO_HUGE_1G;
  /* the contract's values */
  rc |= check(AXALLOC_OK == 0 && AXALLOC_ERR_INVALID == -1 && AXALLOC_ERR_NO_MEMORY == -2 &&
              AXALLOC_ERR_EXISTS == -3 && AXALLOC_ERR_NOT_MAPPED == -4 && AXALLOC_ERR_ACCESS == -5 &&
              AXALLOC_ERR_UNSUPPORTED == -6 && AXALLOC_ERR_INTERNAL == -7 && AXALLOC_ERR_HOOK == -8 &&
              AXALLOC_ERR_LIMIT == -9 && AXALLOC_ERR_BUSY == -10, 2);
  rc |= check(AXALLOC_READ == 1 && AXALLOC_WRITE == 2 && AXALLOC_EXEC == 4 && AXALLOC_DEVICE == 8, 4);
  rc |= check(AXALLOC_FORMAT_X86_EPT == 1 && AXALLOC_FORMAT_X86_NPT == 2, 8);
  rc |= check(AXALLOC_CFG_FRAMES_ZEROED == 256 && AXALLOC_CFG_NO_HUGE_1G == 512, 16);
  rc |= check(sizeof(axalloc_status_t) == 4, 32);
  rc |= check(axalloc_version() == AXALLOC_VERSION, 256);
  /* calls: nothing here needs a hook */
  rc |= check(strcmp(axalloc_status_str(AXALLOC_OK), "AXALLOC_OK") == 0, 64);
  rc |= check(axalloc_status_str(12345) != NULL, 64);
  rc |= check(axalloc_as_create(&cfg, &hooks, &as) == AXALLOC_ERR_INVALID && as == NULL, 128);
  rc |= check(axalloc_as_stats(NULL, &stats) == AXALLOC_ERR_INVALID, 128);
  rc |= check(axalloc_as_root(NULL) == 0, 128);
  axalloc_as_destroy(NULL);
  return rc;
}
]=])

file(CONFIGURE OUTPUT "${_plat_gen}/header_cxx.cpp" @ONLY CONTENT [=[
// Generated by c-tests/platform.cmake: axalloc.h from C++11. Linking against
// the C archive proves the extern "C" guards.
#include "axalloc.h"
#include "axalloc.h"

#include <cstring>

static_assert(sizeof(axalloc_status_t) == 4, "axalloc_status_t is int32_t-sized");
static_assert(sizeof(axalloc_stats_t) == 56, "axalloc_stats_t layout");

int main() {
  const char *s = axalloc_status_str(AXALLOC_ERR_NO_MEMORY);
  if (s == nullptr || std::strcmp(s, "AXALLOC_ERR_NO_MEMORY") != 0) return 1;
  axalloc_config_t cfg = {};
  cfg.struct_size = sizeof cfg;
  cfg.format = AXALLOC_FORMAT_X86_NPT;
  cfg.size = 4096;
  axalloc_hooks_t hooks = {};
  hooks.struct_size = sizeof hooks;
  if (axalloc_version() != AXALLOC_VERSION) return 4;
  axalloc_as_t *as = nullptr;
  if (axalloc_as_create(&cfg, &hooks, &as) != AXALLOC_ERR_INVALID || as != nullptr) return 2;
  if (axalloc_as_root(nullptr) != 0) return 3;
  axalloc_as_destroy(nullptr);
  return 0;
}
]=])

set(_plat_strict -Wall -Wextra -Werror -pedantic-errors)

foreach(std 99 11)
  add_executable(header_c${std} "${_plat_gen}/header_c.c")
  set_target_properties(header_c${std} PROPERTIES
    C_STANDARD ${std} C_STANDARD_REQUIRED ON C_EXTENSIONS OFF)
  target_compile_options(header_c${std} PRIVATE ${_plat_strict} ${AXALLOC_SANITIZE_FLAGS})
  target_link_options(header_c${std} PRIVATE ${AXALLOC_SANITIZE_FLAGS})
  target_link_libraries(header_c${std} PRIVATE axalloc::axalloc)
  add_test(NAME header_c${std} COMMAND header_c${std})
endforeach()

add_executable(header_cxx "${_plat_gen}/header_cxx.cpp")
set_target_properties(header_cxx PROPERTIES
  CXX_STANDARD 11 CXX_STANDARD_REQUIRED ON CXX_EXTENSIONS OFF)
target_compile_options(header_cxx PRIVATE ${_plat_strict} ${AXALLOC_SANITIZE_FLAGS})
target_link_options(header_cxx PRIVATE ${AXALLOC_SANITIZE_FLAGS})
target_link_libraries(header_cxx PRIVATE axalloc::axalloc)
add_test(NAME header_cxx COMMAND header_cxx)

# The build regenerates include/axalloc.h from src/capi.rs; a drift shows as
# a difference from git. Skipped (77) without git or a work tree.
find_program(AXALLOC_GIT git)
set(_plat_git "${AXALLOC_GIT}")
if(NOT _plat_git)
  set(_plat_git git)
endif()
add_test(NAME header_matches_git
  COMMAND sh -c "command -v \"$1\" >/dev/null 2>&1 && [ -e \"$2/.git\" ] || { echo 'git or .git missing: skipped'; exit 77; }; exec \"$1\" -C \"$2\" diff --exit-code -- include/axalloc.h"
          sh "${_plat_git}" "${PROJECT_SOURCE_DIR}")
set_tests_properties(header_matches_git PROPERTIES SKIP_RETURN_CODE 77)

# --------------------------------------------------------------------------
# The shipped archive.
# --------------------------------------------------------------------------
foreach(check undefined exports)
  if(check STREQUAL "undefined")
    set(name archive_undefined_symbols)
  else()
    set(name archive_exports_only_api)
  endif()
  add_test(NAME ${name}
    COMMAND "${CMAKE_COMMAND}" -DAXALLOC_PLATFORM_CHECK=${check}
            "-DARCHIVE=${AXALLOC_ARCHIVE}" "-DNM=${CMAKE_NM}"
            "-DRUST_TARGET=${AXALLOC_RUST_TARGET}"
            -P "${CMAKE_CURRENT_LIST_FILE}")
endforeach()

# Kernel safety (README, "Building for a kernel"): the archive touches no
# FP/SIMD register, links into a higher-half -mcmodel=kernel image and into a
# PIE. The scripted checks live in cmake/kernel-checks.sh.
set(_plat_checks "${PROJECT_SOURCE_DIR}/cmake/kernel-checks.sh")
string(REGEX MATCH "^[^-]+" _plat_arch "${AXALLOC_RUST_TARGET}")
if(_plat_arch MATCHES "^riscv64")
  set(_plat_arch riscv64)
endif()
set(_plat_host_arch "${CMAKE_SYSTEM_PROCESSOR}")
if(_plat_host_arch MATCHES "^(x86_64|AMD64|amd64|x64)$")
  set(_plat_host_arch x86_64)
elseif(_plat_host_arch MATCHES "^(aarch64|arm64|ARM64)$")
  set(_plat_host_arch aarch64)
endif()

# Disassemble every instruction of the archive; fail on any FP/SIMD or x87
# register or instruction. The C toolchain's objdump for a native target,
# else a cross objdump or llvm-objdump; skipped (77) when none is found.
set(_plat_objdump "")
if(_plat_arch STREQUAL _plat_host_arch AND CMAKE_OBJDUMP)
  set(_plat_objdump "${CMAKE_OBJDUMP}")
else()
  find_program(AXALLOC_OBJDUMP_${_plat_arch} NAMES
    ${_plat_arch}-linux-gnu-objdump ${_plat_arch}-unknown-elf-objdump ${_plat_arch}-elf-objdump llvm-objdump)
  set(_plat_objdump "${AXALLOC_OBJDUMP_${_plat_arch}}")
endif()
if(_plat_objdump)
  add_test(NAME archive_has_no_fp_simd
    COMMAND sh "${_plat_checks}" fp-simd "${_plat_objdump}" "${_plat_arch}" "${AXALLOC_ARCHIVE}")
else()
  add_test(NAME archive_has_no_fp_simd
    COMMAND sh -c "echo 'no disassembler for ${_plat_arch} (objdump / llvm-objdump): skipped'; exit 77")
endif()

# A higher-half kernel (linked at 0xffffffff80000000, -mcmodel=kernel,
# -mno-red-zone, no PIC, no libc) that references every exported function:
# the link must resolve every symbol with no relocation overflow. x86-64 only.
if(_plat_arch STREQUAL "x86_64" AND _plat_host_arch STREQUAL "x86_64"
   AND CMAKE_C_COMPILER_ID MATCHES "GNU|Clang" AND NOT WIN32 AND NOT APPLE)
  add_test(NAME archive_links_higher_half_kernel
    COMMAND sh "${_plat_checks}" higher-half "${CMAKE_C_COMPILER}" "${CMAKE_NM}"
            "${AXALLOC_INCLUDE_DIR}" "${AXALLOC_ARCHIVE}" "${_plat_gen}/higher-half")
else()
  add_test(NAME archive_links_higher_half_kernel
    COMMAND sh -c "echo 'higher-half kernel link is checked for x86_64 targets with GCC/Clang only: skipped'; exit 77")
endif()
set_tests_properties(archive_has_no_fp_simd archive_links_higher_half_kernel
  PROPERTIES SKIP_RETURN_CODE 77)

# A position-independent executable (-fPIE -pie) linking the archive: the
# smoke rules over the test host. The test also checks the result really is
# a PIE (ELF type DYN) and needed no text relocations.
if(CMAKE_C_COMPILER_ID MATCHES "GNU|Clang" AND NOT WIN32 AND NOT APPLE
   AND _plat_arch STREQUAL _plat_host_arch)
  add_executable(archive_links_pie test_smoke.c host.c check.c)
  target_include_directories(archive_links_pie PRIVATE "${CMAKE_CURRENT_SOURCE_DIR}")
  target_compile_features(archive_links_pie PRIVATE c_std_11)
  target_compile_options(archive_links_pie PRIVATE ${AXALLOC_WARNINGS} ${AXALLOC_SANITIZE_FLAGS} -fPIE)
  target_link_options(archive_links_pie PRIVATE ${AXALLOC_SANITIZE_FLAGS} -pie)
  target_link_libraries(archive_links_pie PRIVATE axalloc::axalloc Threads::Threads)
  set(_plat_readelf "${CMAKE_READELF}")
  if(NOT _plat_readelf)
    set(_plat_readelf readelf)
  endif()
  add_test(NAME archive_links_pie
    COMMAND sh -c "h=$(\"$1\" -hd \"$2\") || exit 1; printf '%s\\n' \"$h\" | grep -q 'Type:.*DYN' || { echo \"$2 is not a PIE\"; exit 1; }; if printf '%s\\n' \"$h\" | grep -q TEXTREL; then echo \"$2 needs text relocations\"; exit 1; fi; exec \"$2\""
            sh "${_plat_readelf}" "$<TARGET_FILE:archive_links_pie>")
  set_tests_properties(archive_links_pie PROPERTIES TIMEOUT 300)
else()
  add_test(NAME archive_links_pie
    COMMAND sh -c "echo 'PIE link is checked for a ${_plat_arch} archive on a ${_plat_arch} host with GCC/Clang only: skipped'; exit 77")
  set_tests_properties(archive_links_pie PROPERTIES SKIP_RETURN_CODE 77)
endif()

# A freestanding program with its own _start and memory functions, linked
# with -nostdlib -static: the archive needs no libc, no malloc, no unwinder.
# Running it exercises every entry point over a static pool and exits through
# the exit system call. Not with sanitizers (they need libc), and only where
# the _start below is valid (x86-64 Linux).
if(NOT AXALLOC_SANITIZE AND CMAKE_SYSTEM_NAME STREQUAL "Linux"
   AND CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64)$"
   AND CMAKE_C_COMPILER_ID MATCHES "GNU|Clang")
  file(CONFIGURE OUTPUT "${_plat_gen}/bare_metal.c" @ONLY CONTENT [=[
/* Generated by c-tests/platform.cmake: a bare-metal-style user of the
 * archive. No libc: _start, the memory functions and the exit are ours. */
#include <stddef.h>
#include <stdint.h>

#include "axalloc.h"

void *memcpy(void *d, const void *s, size_t n);
void *memmove(void *d, const void *s, size_t n);
void *memset(void *d, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
int bcmp(const void *a, const void *b, size_t n);

void *memcpy(void *d, const void *s, size_t n) {
  volatile unsigned char *dp = d;
  const unsigned char *sp = s;
  while (n--) *dp++ = *sp++;
  return d;
}
void *memmove(void *d, const void *s, size_t n) {
  volatile unsigned char *dp = d;
  const unsigned char *sp = s;
  if (dp < sp) {
    while (n--) *dp++ = *sp++;
  } else {
    while (n--) dp[n] = sp[n];
  }
  return d;
}
void *memset(void *d, int c, size_t n) {
  volatile unsigned char *dp = d;
  while (n--) *dp++ = (unsigned char)c;
  return d;
}
int memcmp(const void *a, const void *b, size_t n) {
  const unsigned char *x = a, *y = b;
  for (; n; n--, x++, y++)
    if (*x != *y) return *x < *y ? -1 : 1;
  return 0;
}
int bcmp(const void *a, const void *b, size_t n) { return memcmp(a, b, n); }

/* The pool: identity "physical" addresses (the program's own addresses). */
#define FRAMES 64
static unsigned char pool[FRAMES][4096] __attribute__((aligned(4096)));
static unsigned char used[FRAMES];
static int flushes;

static int32_t bm_alloc(void *ctx, uint64_t *out) {
  (void)ctx;
  for (int i = 0; i < FRAMES; i++)
    if (!used[i]) {
      used[i] = 1;
      *out = (uint64_t)(uintptr_t)pool[i];
      return 0;
    }
  return -1;
}
static void bm_free(void *ctx, uint64_t hpa) {
  (void)ctx;
  used[(hpa - (uint64_t)(uintptr_t)pool[0]) / 4096] = 0;
}
static void *bm_p2v(void *ctx, uint64_t hpa) {
  (void)ctx;
  return (void *)(uintptr_t)hpa;
}
static void bm_flush(void *ctx, uint64_t gpa, uint64_t size) {
  (void)ctx;
  (void)gpa;
  (void)size;
  flushes++;
}

int bm_main(void);
int bm_main(void) {
  axalloc_hooks_t h = {sizeof(axalloc_hooks_t), 0, 0, bm_alloc, bm_free, bm_p2v, bm_flush, 0, 0, 0};
  axalloc_config_t cfg = {sizeof(axalloc_config_t), AXALLOC_FORMAT_X86_EPT, 0, 0, 0, 1ull << 32, 0, 0, 0};
  axalloc_as_t *as = 0;
  axalloc_stats_t st;
  uint64_t hpa = 0, ps = 0;
  char msg[] = "bare metal";
  char back[sizeof msg];
  const char *s = axalloc_status_str(AXALLOC_OK);
  if (!s || s[0] != 'A') return 10;
  if (axalloc_as_create(&cfg, &h, &as) != AXALLOC_OK) return 11;
  if (axalloc_as_root(as) == 0) return 12;
  if (axalloc_map_alloc(as, 0x100000, 4 * 4096, AXALLOC_READ | AXALLOC_WRITE, 0) != AXALLOC_OK) return 13;
  if (axalloc_handle_fault(as, 0x101000, AXALLOC_WRITE) != AXALLOC_OK) return 14;
  if (axalloc_translate(as, 0x101010, &hpa, &ps) != AXALLOC_OK || ps != 4096 || (hpa & 0xfff) != 0x10) return 15;
  if (axalloc_write(as, 0x100ffc, msg, sizeof msg) != AXALLOC_OK) return 16;
  if (axalloc_read(as, 0x100ffc, back, sizeof back) != AXALLOC_OK || memcmp(msg, back, sizeof msg)) return 17;
  if (axalloc_map_linear(as, 0x200000, (uint64_t)(uintptr_t)pool[FRAMES - 1], 4096, AXALLOC_READ) != AXALLOC_OK) return 18;
  if (axalloc_as_stats(as, &st) != AXALLOC_OK || st.regions != 2 || st.guest_frames != 2) return 19;
  if (axalloc_unmap(as, 0, 1ull << 32) != AXALLOC_OK || flushes != 1) return 20;
  if (axalloc_as_stats(as, &st) != AXALLOC_OK || st.regions != 0 || st.table_frames != 1) return 21;
  axalloc_as_destroy(as);
  for (int i = 0; i < FRAMES; i++)
    if (used[i]) return 22;
  return 0;
}

/* Entry: align the stack as the ABI wants at a call, run, exit(2) via the
 * exit_group system call. */
__asm__(".text\n"
        ".globl _start\n"
        "_start:\n"
        "  xor %ebp, %ebp\n"
        "  and $-16, %rsp\n"
        "  call bm_main\n"
        "  mov %eax, %edi\n"
        "  mov $231, %eax\n"
        "  syscall\n"
        "  hlt\n");
]=])
  add_executable(bare_metal_link "${_plat_gen}/bare_metal.c")
  target_include_directories(bare_metal_link PRIVATE "${AXALLOC_INCLUDE_DIR}")
  target_compile_options(bare_metal_link PRIVATE ${AXALLOC_WARNINGS}
    -ffreestanding -fno-builtin -fno-stack-protector -fno-tree-loop-distribute-patterns
    -fno-asynchronous-unwind-tables)
  # The archive by path (not axalloc::axalloc) so that nothing else comes
  # along; the link fails on any undefined symbol.
  target_link_options(bare_metal_link PRIVATE -nostdlib -static -Wl,--no-undefined)
  target_link_libraries(bare_metal_link PRIVATE "${AXALLOC_ARCHIVE}")
  add_dependencies(bare_metal_link axalloc_cargo)
  set_target_properties(bare_metal_link PROPERTIES LINK_DEPENDS "${AXALLOC_ARCHIVE}")
  add_test(NAME bare_metal_link COMMAND bare_metal_link)
endif()

# --------------------------------------------------------------------------
# The Rust unit tests.
# --------------------------------------------------------------------------
if(CARGO)
  set(_plat_cargo "${CARGO}")
else()
  find_program(AXALLOC_CARGO_TEST cargo)
  set(_plat_cargo "${AXALLOC_CARGO_TEST}")
endif()
if(_plat_cargo)
  add_test(NAME cargo_test
    COMMAND "${_plat_cargo}" test --manifest-path "${PROJECT_SOURCE_DIR}/Cargo.toml"
            --target-dir "${PROJECT_BINARY_DIR}/cargo-test"
    WORKING_DIRECTORY "${PROJECT_SOURCE_DIR}")
  set_tests_properties(cargo_test PROPERTIES TIMEOUT 900)

  # The unit tests under Miri (nightly): undefined behaviour in the unsafe
  # code fails the test. The library turns host-physical addresses into
  # pointers (phys_to_virt), so provenance is permissive. Skipped (77)
  # without a nightly toolchain that has Miri.
  add_test(NAME miri_unit_tests
    COMMAND sh -c "RUSTUP_AUTO_INSTALL=0 \"$1\" +nightly miri --version >/dev/null 2>&1 || { echo 'no nightly toolchain with Miri (rustup toolchain install nightly; rustup +nightly component add miri rust-src): skipped'; exit 77; }; MIRIFLAGS=\"\${MIRIFLAGS:--Zmiri-permissive-provenance}\" RUSTUP_AUTO_INSTALL=0 exec \"$1\" +nightly miri test --lib --manifest-path \"$2/Cargo.toml\" --target-dir \"$3\""
            sh "${_plat_cargo}" "${PROJECT_SOURCE_DIR}" "${PROJECT_BINARY_DIR}/cargo-miri"
    WORKING_DIRECTORY "${PROJECT_SOURCE_DIR}")
  # Miri builds std and the crate before it runs (~1.5 min of tests); on a
  # loaded machine the build alone took 12 min once, hence the margin.
  set_tests_properties(miri_unit_tests PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 1500)

  # The reader-writer lock (src/sync.rs) under loom: every interleaving of
  # the `#[cfg(loom)]` tests whose names contain "loom". Fails when none ran,
  # so a filter that matches nothing cannot pass.
  add_test(NAME loom_lock_model
    COMMAND sh -c "log=\"$3.log\"; mkdir -p \"$3\"; RUSTFLAGS='--cfg loom' \"$1\" test --release --lib --manifest-path \"$2/Cargo.toml\" --target-dir \"$3\" loom >\"$log\" 2>&1; rc=$?; cat \"$log\"; [ $rc -eq 0 ] || exit $rc; grep -q '^running [1-9]' \"$log\" || { echo 'loom_lock_model: no loom test ran (expected #[cfg(loom)] tests with loom in their names)'; exit 1; }"
            sh "${_plat_cargo}" "${PROJECT_SOURCE_DIR}" "${PROJECT_BINARY_DIR}/cargo-loom"
    WORKING_DIRECTORY "${PROJECT_SOURCE_DIR}")
  set_tests_properties(loom_lock_model PROPERTIES TIMEOUT 900)
endif()

# The lean fault path's instruction budget (issue 8): bench/callgrind/fault.c
# against the shipped archive, counted by callgrind, checked against the
# bounds in bench/callgrind/check.sh. Built without sanitizers (valgrind runs
# it) and optimised like a user's build. Skipped (77) without valgrind.
add_executable(callgrind_fault "${PROJECT_SOURCE_DIR}/bench/callgrind/fault.c")
target_compile_options(callgrind_fault PRIVATE ${AXALLOC_WARNINGS} -O2)
target_link_libraries(callgrind_fault PRIVATE axalloc::axalloc)
add_test(NAME fault_ir_bound
  COMMAND sh "${PROJECT_SOURCE_DIR}/bench/callgrind/check.sh" $<TARGET_FILE:callgrind_fault>)
set_tests_properties(fault_ir_bound PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 300)
