# Turns cargo's static archive into the archive we ship:
#   ld -r --gc-sections   one relocatable object holding only what the
#                         axalloc_* entry points reach (no unused
#                         compiler-builtins members with foreign references)
#   objcopy               axalloc_* stay global, everything else becomes local
#                         (no clash with another Rust library's core or panic
#                         symbols); embedded LLVM bitcode is dropped
#   ar                    the result as libaxalloc.a
# Inputs: RAW OUT LD OBJCOPY AR NM (see CMakeLists.txt).
get_filename_component(dir "${OUT}" DIRECTORY)
set(work "${dir}/axalloc-ship")
file(MAKE_DIRECTORY "${work}")

execute_process(COMMAND "${NM}" -g --defined-only "${RAW}"
  OUTPUT_VARIABLE syms ERROR_QUIET RESULT_VARIABLE rc)
string(REGEX MATCHALL "[^\n]* T axalloc_[A-Za-z0-9_]+" lines "${syms}")
set(keep "")
foreach(line IN LISTS lines)
  string(REGEX REPLACE ".* T " "" s "${line}")
  list(APPEND keep "${s}")
endforeach()
list(REMOVE_DUPLICATES keep)
set(required "")
foreach(s IN LISTS keep)
  list(APPEND required "-u" "${s}")
endforeach()
if(NOT keep)
  message(FATAL_ERROR "no axalloc_* symbols found in ${RAW}")
endif()
string(REPLACE ";" "\n" keep_text "${keep}")
file(WRITE "${work}/keep.txt" "${keep_text}\n")

execute_process(COMMAND "${LD}" -r --gc-sections ${required}
    -o "${work}/axalloc.o" --whole-archive "${RAW}"
  RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "ld -r failed (${rc})")
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
