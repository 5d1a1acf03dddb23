# Driver of the add_subdirectory test (cmake -P): a C-only parent project
# (subdir-parent/) adds the repository as a subdirectory, builds and runs a
# consumer linked with axalloc::axalloc. libaxalloc must then add nothing but
# the library:
#   - the only build target from its directories is axalloc_cargo (no C tests,
#     no demo, no benchmark) and it registers no test;
#   - C is the only language enabled (no C++ compiler needed);
#   - its outputs (cargo dir, archive) are under its own binary dir
#     <parent build>/axalloc, never in the parent's build root;
#   - the parent's `cmake --install` installs none of it.
#
# Inputs: AXALLOC_SOURCE_DIR WORK CC GENERATOR CARGO RUSTC RUST_TARGET
#         CARGO_DIR (the main build's cargo target dir, shared so that the
#         test does not build the crate a second time)
cmake_minimum_required(VERSION 3.22)

# Runs a command, echoing it; fails the test if it fails.
function(run)
  execute_process(COMMAND ${ARGN} COMMAND_ECHO STDOUT RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGN}")
  endif()
endfunction()

set(build "${WORK}/build")
set(sub "${build}/axalloc")
file(REMOVE_RECURSE "${build}")

# A C++ compiler that does not exist: enabling CXX would fail the configure.
# (CMake warns that CMAKE_CXX_COMPILER was not used: that is the point.)
set(configure "${CMAKE_COMMAND}" -S "${CMAKE_CURRENT_LIST_DIR}/subdir-parent" -B "${build}"
    -G "${GENERATOR}" "-DAXALLOC_SOURCE_DIR=${AXALLOC_SOURCE_DIR}"
    "-DCMAKE_C_COMPILER=${CC}" "-DCMAKE_CXX_COMPILER=${WORK}/no-such-c++"
    "-DCARGO=${CARGO}" "-DRUSTC=${RUSTC}" "-DAXALLOC_RUST_TARGET=${RUST_TARGET}")
run(${configure})

# The default cargo dir, before the test points it at the shared one.
file(STRINGS "${build}/CMakeCache.txt" cargo_dir REGEX "^AXALLOC_CARGO_DIR:")
string(REGEX REPLACE "^[^=]*=" "" cargo_dir "${cargo_dir}")
if(NOT cargo_dir STREQUAL "${sub}/cargo")
  message(FATAL_ERROR "cargo target dir under add_subdirectory is '${cargo_dir}', expected ${sub}/cargo")
endif()

include("${build}/axalloc-added.cmake")
if(NOT AXALLOC_TARGETS STREQUAL "axalloc_cargo")
  message(FATAL_ERROR "add_subdirectory(libaxalloc) added build targets '${AXALLOC_TARGETS}'; expected only axalloc_cargo")
endif()
if(NOT ENABLED_LANGUAGES STREQUAL "C")
  message(FATAL_ERROR "languages enabled: '${ENABLED_LANGUAGES}'; a C-only parent must need only C")
endif()
if(NOT AXALLOC_ARCHIVE STREQUAL "${sub}/libaxalloc.a")
  message(FATAL_ERROR "axalloc::axalloc is ${AXALLOC_ARCHIVE}, expected ${sub}/libaxalloc.a")
endif()

run(${configure} "-DAXALLOC_CARGO_DIR=${CARGO_DIR}")
run("${CMAKE_COMMAND}" --build "${build}")
run("${build}/consumer")

execute_process(COMMAND "${CMAKE_CTEST_COMMAND}" -N WORKING_DIRECTORY "${build}"
  OUTPUT_VARIABLE tests ERROR_VARIABLE tests)
if(NOT tests MATCHES "Total Tests: 0")
  message(FATAL_ERROR "add_subdirectory(libaxalloc) registered tests:\n${tests}")
endif()

# Exactly one archive in the parent's tree, libaxalloc's, and none of its
# outputs in the parent's build root.
file(GLOB_RECURSE archives LIST_DIRECTORIES false "${build}/*libaxalloc.a")
if(NOT archives STREQUAL "${sub}/libaxalloc.a")
  message(FATAL_ERROR "archives in the parent's build: '${archives}'; expected only ${sub}/libaxalloc.a")
endif()
foreach(out IN ITEMS cargo axalloc-ship axalloc-install axalloc-demo c-tests)
  if(EXISTS "${build}/${out}")
    message(FATAL_ERROR "libaxalloc wrote ${build}/${out} into the parent's build root")
  endif()
endforeach()
# Nor does it add to the parent's install: a VMM that links the archive
# into its binary does not ship libaxalloc.a and axalloc.h (AXALLOC_INSTALL
# defaults to OFF below the top level).
file(REMOVE_RECURSE "${WORK}/install")
run("${CMAKE_COMMAND}" --install "${build}" --prefix "${WORK}/install")
file(GLOB_RECURSE installed LIST_DIRECTORIES false "${WORK}/install/*")
if(installed)
  message(FATAL_ERROR "the parent's install installs libaxalloc files:\n${installed}")
endif()
message(STATUS "add_subdirectory: library only, C only, outputs under ${sub}, nothing installed")
