# The x86 bare-metal hypervisor of issue 10 (included from
# ../baremetal/CMakeLists.txt): libaxalloc's EPT and NPT tables judged by
# Bochs's VMX and SVM. Built with the host C compiler when the archive is
# the x86-64 kernel-safe one (the default, x86_64-unknown-none) -- no
# second cargo build; the tests skip (77) without the ROM or Bochs
# (run-bochs.sh fetches Debian's Bochs 2.7 into ${AXALLOC_BOCHS_DIR}).
set(AXALLOC_BOCHS_DIR "${PROJECT_BINARY_DIR}/bochs" CACHE PATH
  "Where run-bochs.sh unpacks Bochs for the bare-metal x86 tests (fetch-bochs.sh)")
set(_x86 "${PROJECT_SOURCE_DIR}/examples/baremetal-x86")
set(_x86_rom "${PROJECT_BINARY_DIR}/baremetal-x86.rom")

if(AXALLOC_RUST_TARGET STREQUAL "x86_64-unknown-none" AND CMAKE_C_COMPILER_ID MATCHES "GNU|Clang"
   AND CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64)$")
  set(dir "${CMAKE_CURRENT_BINARY_DIR}/x86")
  set(elf "${PROJECT_BINARY_DIR}/baremetal-x86.elf")
  file(MAKE_DIRECTORY "${dir}")
  # No SSE anywhere (the guest runs with CR4.OSFXSR clear, the host does
  # not save vector state), no red zone, no stack protector, no CET notes.
  set(common -O2 -g -ffreestanding -nostdlib -std=gnu11 ${AXALLOC_WARNINGS}
    -mno-red-zone -mgeneral-regs-only -fno-stack-protector -fcf-protection=none
    -fno-asynchronous-unwind-tables -I${_bm} -I${AXALLOC_INCLUDE_DIR})
  set(cc "${CMAKE_C_COMPILER}")
  # The guest: position-independent, run at CODE_GPA (see ../baremetal).
  add_custom_command(OUTPUT "${dir}/guest.c.o"
    COMMAND "${cc}" ${common} -fpie -fvisibility=hidden -fno-tree-loop-distribute-patterns
            -c "${_bm}/guest.c" -o "${dir}/guest.c.o"
    DEPENDS "${_bm}/guest.c" ${_bm_headers} VERBATIM)
  add_custom_command(OUTPUT "${dir}/guest_entry.S.o"
    COMMAND "${cc}" ${common} -fpie -c "${_x86}/guest_entry.S" -o "${dir}/guest_entry.S.o"
    DEPENDS "${_x86}/guest_entry.S" "${_bm}/layout.h" VERBATIM)
  set(hsrc "${_x86}/start.S" "${_x86}/hyp.c" "${_x86}/vmx.c" "${_x86}/svm.c" "${_bm}/hv.c"
    "${_bm}/pool.c" "${_bm}/console.c" "${_bm}/libc.c")
  add_custom_command(OUTPUT "${elf}" "${_x86_rom}"
    COMMAND "${cc}" ${common} -fno-pic -no-pie -static -nostartfiles -T "${_x86}/link.ld"
            -Wl,--no-warn-rwx-segments -Wl,--build-id=none -o "${elf}"
            ${hsrc} "${dir}/guest.c.o" "${dir}/guest_entry.S.o" "${AXALLOC_ARCHIVE}" -lgcc
    COMMAND "${AXALLOC_OBJCOPY}" -O binary "${elf}" "${_x86_rom}"
    DEPENDS ${hsrc} "${_x86}/link.ld" "${_x86}/x86.h" "${dir}/guest.c.o" "${dir}/guest_entry.S.o"
            ${_bm_headers} "${AXALLOC_ARCHIVE}" axalloc_cargo
    COMMENT "bare-metal x86 hypervisor stub (a 2 MiB Bochs BIOS ROM)"
    VERBATIM)
  add_custom_target(baremetal_x86 ALL DEPENDS "${_x86_rom}")
  add_dependencies(baremetal_x86 axalloc_cargo)
else()
  message(STATUS "libaxalloc: bare-metal x86 stub not built: needs the x86_64-unknown-none archive and an x86-64 GCC/Clang (its tests skip)")
endif()

if(BUILD_TESTING OR AXALLOC_BUILD_TESTS)
  # One run per format Bochs 2.7 has: EPT 4-level (VMX, corei7_skylake_x),
  # NPT 4-level (SVM, ryzen). No 5-level test: no Bochs 2.7 model reports
  # EPT page-walk length 5 (IA32_VMX_EPT_VPID_CAP bit 7) or LA57
  # (`run-bochs.sh ... ept5` / `npt5` print SKIP).
  add_test(NAME baremetal_x86_ept4
    COMMAND "${_x86}/run-bochs.sh" "${AXALLOC_BOCHS_DIR}" "${_x86_rom}" ept4)
  add_test(NAME baremetal_x86_npt4
    COMMAND "${_x86}/run-bochs.sh" "${AXALLOC_BOCHS_DIR}" "${_x86_rom}" npt4)
  set_tests_properties(baremetal_x86_ept4 baremetal_x86_npt4
    PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 300 LABELS baremetal)
endif()
