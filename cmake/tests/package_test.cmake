# Driver of the packaging tests (cmake -P), one step per MODE:
#
#   install       cmake --install the build into <WORK>/stage, check every
#                 promised file is there, then move the tree to <WORK>/prefix
#                 (the package must be relocatable: nothing may point back
#                 at the stage or at the configure-time prefix)
#   find_package  configure, build and run consumer/ (a CMake project using
#                 find_package(axalloc <version> EXACT CONFIG REQUIRED))
#   pkg_config    cc $(pkg-config --cflags axalloc) consumer.c $(pkg-config --libs axalloc)
#   plain_cc      cc -I<prefix>/include consumer.c <prefix>/<libdir>/libaxalloc.a
#
# Inputs: MODE BUILD_DIR WORK LIBDIR INCLUDEDIR DOCDIR CARGO_TOML ARCHIVE CC
#         GENERATOR (find_package) PKG_CONFIG (pkg_config)
# Every consumer is compiled with -std=c99 -Wall -Wextra -Werror and run.
cmake_minimum_required(VERSION 3.22)

# The version the package must report is the crate's, read here from
# Cargo.toml (not the CMake project's, which is what is being checked).
file(STRINGS "${CARGO_TOML}" VERSION REGEX "^version *=" LIMIT_COUNT 1)
string(REGEX REPLACE "^version *= *\"([^\"]+)\".*" "\\1" VERSION "${VERSION}")
if(NOT VERSION)
  message(FATAL_ERROR "no version line in ${CARGO_TOML}")
endif()

set(prefix "${WORK}/prefix")
set(consumer_dir "${CMAKE_CURRENT_LIST_DIR}/consumer")
set(strict -std=c99 -Wall -Wextra -Werror)

# Runs a command, echoing it; fails the test if it fails.
function(run)
  execute_process(COMMAND ${ARGN} COMMAND_ECHO STDOUT RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGN}")
  endif()
endfunction()

if(MODE STREQUAL "install")
  set(stage "${WORK}/stage")
  file(REMOVE_RECURSE "${stage}" "${prefix}")
  run("${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${stage}")
  set(missing "")
  foreach(f IN ITEMS
      "${LIBDIR}/libaxalloc.a"
      "${INCLUDEDIR}/axalloc.h"
      "${LIBDIR}/cmake/axalloc/axallocConfig.cmake"
      "${LIBDIR}/cmake/axalloc/axallocConfigVersion.cmake"
      "${LIBDIR}/pkgconfig/axalloc.pc"
      "${DOCDIR}/LICENSE")
    if(NOT EXISTS "${stage}/${f}")
      list(APPEND missing "${f}")
    endif()
  endforeach()
  if(missing)
    string(REPLACE ";" "\n  " missing "${missing}")
    message(FATAL_ERROR "not installed under ${stage}:\n  ${missing}")
  endif()
  # The archive installed is the one the build shipped.
  file(SHA256 "${ARCHIVE}" built)
  file(SHA256 "${stage}/${LIBDIR}/libaxalloc.a" installed)
  if(NOT built STREQUAL installed)
    message(FATAL_ERROR "installed libaxalloc.a differs from ${ARCHIVE}")
  endif()
  file(RENAME "${stage}" "${prefix}")
  message(STATUS "installed to ${stage}, moved to ${prefix}")

elseif(MODE STREQUAL "find_package")
  set(dir "${WORK}/find_package")
  file(REMOVE_RECURSE "${dir}")
  run("${CMAKE_COMMAND}" -S "${consumer_dir}" -B "${dir}" -G "${GENERATOR}"
      "-DCMAKE_C_COMPILER=${CC}" "-DCMAKE_PREFIX_PATH=${prefix}"
      "-DAXALLOC_EXPECTED_VERSION=${VERSION}"
      -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF -DCMAKE_FIND_USE_SYSTEM_PACKAGE_REGISTRY=OFF)
  run("${CMAKE_COMMAND}" --build "${dir}")
  run("${dir}/consumer")

elseif(MODE STREQUAL "pkg_config")
  set(dir "${WORK}/pkg_config")
  file(REMOVE_RECURSE "${dir}")
  file(MAKE_DIRECTORY "${dir}")
  # Only the test prefix's .pc files: an axalloc.pc installed on the machine
  # must not stand in for ours.
  set(ENV{PKG_CONFIG_PATH} "${prefix}/${LIBDIR}/pkgconfig")
  set(ENV{PKG_CONFIG_LIBDIR} "${prefix}/${LIBDIR}/pkgconfig")
  foreach(q modversion cflags libs)
    execute_process(COMMAND "${PKG_CONFIG}" --${q} axalloc RESULT_VARIABLE rc
      OUTPUT_VARIABLE ${q} ERROR_VARIABLE err OUTPUT_STRIP_TRAILING_WHITESPACE)
    if(NOT rc EQUAL 0)
      message(FATAL_ERROR "pkg-config --${q} axalloc failed (${rc}): ${err}")
    endif()
    message(STATUS "pkg-config --${q} axalloc: ${${q}}")
  endforeach()
  if(NOT modversion STREQUAL VERSION)
    message(FATAL_ERROR "axalloc.pc says version ${modversion}, Cargo.toml ${VERSION}")
  endif()
  # The flags must name the (moved) prefix: a .pc with the configure-time or
  # stage prefix baked in would point elsewhere.
  foreach(q cflags libs)
    string(FIND "${${q}}" "${prefix}/" at)
    if(at EQUAL -1)
      message(FATAL_ERROR "pkg-config --${q} axalloc does not point into ${prefix}: ${${q}}")
    endif()
  endforeach()
  separate_arguments(cflags UNIX_COMMAND "${cflags}")
  separate_arguments(libs UNIX_COMMAND "${libs}")
  # A static archive comes after the objects that use it.
  run("${CC}" ${strict} ${cflags} "${consumer_dir}/consumer.c" ${libs} -o "${dir}/consumer")
  run("${dir}/consumer")

elseif(MODE STREQUAL "plain_cc")
  set(dir "${WORK}/plain_cc")
  file(REMOVE_RECURSE "${dir}")
  file(MAKE_DIRECTORY "${dir}")
  run("${CC}" ${strict} "-I${prefix}/${INCLUDEDIR}" "${consumer_dir}/consumer.c"
      "${prefix}/${LIBDIR}/libaxalloc.a" -o "${dir}/consumer")
  run("${dir}/consumer")

else()
  message(FATAL_ERROR "unknown MODE '${MODE}'")
endif()
