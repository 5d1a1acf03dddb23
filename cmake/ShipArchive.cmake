# Turns cargo's static archive into the archive we ship:
#   ld -r --gc-sections   one relocatable object holding only what the
#                         axalloc_* entry points reach (no unused
#                         compiler-builtins members with foreign references)
#   objcopy               axalloc_* stay global, everything else becomes local
#                         (no clash with another Rust library's core or panic
#                         symbols); embedded LLVM bitcode is dropped
#   ar                    the result as libaxalloc.a
# Inputs: RAW OUT LD OBJCOPY AR NM TARGET (see CMakeLists.txt).
get_filename_component(dir "${OUT}" DIRECTORY)
set(work "${dir}/axalloc-ship")
file(MAKE_DIRECTORY "${work}")

# cargo writes a target's artifacts to <target-dir>/<triple>/release when it
# is given --target (as CMakeLists.txt does), to <target-dir>/release when not:
# a build with CARGO_BUILD_TARGET set in the environment, say, leaves nothing
# where RAW points. Say so instead of reading a missing (or stale) archive.
if(NOT EXISTS "${RAW}")
  get_filename_component(raw_name "${RAW}" NAME)
  get_filename_component(cargo_dir "${RAW}/../../.." ABSOLUTE)
  file(GLOB_RECURSE found LIST_DIRECTORIES false "${cargo_dir}/${raw_name}")
  set(hint "")
  if(found)
    string(REPLACE ";" "\n  " found_text "${found}")
    set(hint "\ncargo left archives here instead (another target, or CARGO_BUILD_TARGET / build.target set?):\n  ${found_text}")
  endif()
  message(FATAL_ERROR "cargo produced no archive at ${RAW} (target ${TARGET})${hint}")
endif()

execute_process(COMMAND "${NM}" -g --defined-only "${RAW}"
  OUTPUT_VARIABLE syms ERROR_VARIABLE nm_err RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${NM} -g --defined-only ${RAW} failed (${rc}): ${nm_err} "
    "(an nm that cannot read ${TARGET} objects? set CMAKE_NM)")
endif()
# Global functions are T (text); a weak definition would be W.
string(REGEX MATCHALL "[^\n]* [TW] axalloc_[A-Za-z0-9_]+" lines "${syms}")
set(keep "")
foreach(line IN LISTS lines)
  string(REGEX REPLACE ".* [TW] " "" s "${line}")
  list(APPEND keep "${s}")
endforeach()
list(REMOVE_DUPLICATES keep)
set(required "")
foreach(s IN LISTS keep)
  list(APPEND required "-u" "${s}")
endforeach()
if(NOT keep)
  string(REGEX MATCHALL "[^\n]*axalloc_[^\n]*" other "${syms}")
  string(REPLACE ";" "\n  " other_text "${other}")
  if(other)
    message(FATAL_ERROR "no global axalloc_* functions (nm type T) in ${RAW}; nm lists:\n  ${other_text}")
  else()
    message(FATAL_ERROR "${RAW} defines no axalloc_* symbol at all (nm read it: is it libaxalloc?)")
  endif()
endif()
string(REPLACE ";" "\n" keep_text "${keep}")
file(WRITE "${work}/keep.txt" "${keep_text}\n")

execute_process(COMMAND "${LD}" -r --gc-sections ${required}
    -o "${work}/axalloc.o" --whole-archive "${RAW}"
  RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${LD} -r failed (${rc}) on ${RAW} (target ${TARGET}; a cross target needs that target's ld: set AXALLOC_LD)")
endif()
execute_process(COMMAND "${OBJCOPY}" "--keep-global-symbols=${work}/keep.txt"
    --remove-section=.llvmbc --remove-section=.llvmcmd
    "${work}/axalloc.o" "${work}/axalloc-shipped.o"
  RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "objcopy failed (${rc})")
endif()
file(REMOVE "${OUT}.tmp")
execute_process(COMMAND "${AR}" rcs "${OUT}.tmp" "${work}/axalloc-shipped.o" RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "ar failed (${rc})")
endif()
file(RENAME "${OUT}.tmp" "${OUT}")
