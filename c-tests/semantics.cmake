# Semantics tests: one executable per entry point family, one CTest test per
# rule (`<exe>.<rule>`). The rule names are read from each file's TEST_MAIN
# list, so a test added there is registered without touching this file.
# Shared helpers live in sem.h (header-only).
function(axalloc_semantics_test exe)
  set(src "${CMAKE_CURRENT_SOURCE_DIR}/${exe}.c")
  file(READ "${src}" text)
  string(REGEX MATCH "TEST_MAIN\\(.*\\)" main "${text}")
  string(REGEX MATCHALL "T\\(([A-Za-z0-9_]+)\\)" calls "${main}")
  set(names "")
  foreach(c IN LISTS calls)
    string(REGEX REPLACE "T\\(([A-Za-z0-9_]+)\\)" "\\1" n "${c}")
    list(APPEND names ${n})
  endforeach()
  if(NOT names)
    message(FATAL_ERROR "${src}: no tests found in TEST_MAIN")
  endif()
  set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS "${src}")
  axalloc_c_test(${exe} SOURCES ${exe}.c TESTS ${names})
endfunction()

foreach(exe IN ITEMS test_create test_map test_unmap test_fault test_copy test_api test_reserve test_fastpath test_core test_abi test_discard test_protect test_dirty test_huge)
  axalloc_semantics_test(${exe})
endforeach()

# test_abi checks the header's version against Cargo.toml's.
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS "${PROJECT_SOURCE_DIR}/Cargo.toml")
file(STRINGS "${PROJECT_SOURCE_DIR}/Cargo.toml" _sem_version REGEX "^version *=" LIMIT_COUNT 1)
string(REGEX MATCH "([0-9]+)\\.([0-9]+)\\.([0-9]+)" _sem_version "${_sem_version}")
target_compile_definitions(test_abi PRIVATE CARGO_VERSION_MAJOR=${CMAKE_MATCH_1}
  CARGO_VERSION_MINOR=${CMAKE_MATCH_2} CARGO_VERSION_PATCH=${CMAKE_MATCH_3})
