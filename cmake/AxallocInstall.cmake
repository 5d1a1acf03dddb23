# Install rules: what `cmake --install` puts under the prefix.
#
#   <libdir>/libaxalloc.a                           the shipped archive
#   <includedir>/axalloc.h                          its header
#   <libdir>/cmake/axalloc/axallocConfig.cmake      find_package(axalloc CONFIG):
#   <libdir>/cmake/axalloc/axallocConfigVersion.cmake   target axalloc::axalloc
#   <libdir>/pkgconfig/axalloc.pc                   pkg-config --cflags --libs axalloc
#   <docdir>/LICENSE, README.md                     share/doc/axalloc
#
# The archive is built by cargo (a custom target), not by add_library(), so
# there is no CMake target to install(EXPORT): the package config is written
# by hand from cmake/axallocConfig.cmake.in. Both it and axalloc.pc locate
# the prefix relative to where they are installed, so the prefix given to
# `cmake --install --prefix` (or a moved install tree) works, not only the
# CMAKE_INSTALL_PREFIX seen at configure time.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(_axalloc_cmake_dir "${CMAKE_INSTALL_LIBDIR}/cmake/axalloc")
set(_axalloc_pc_dir "${CMAKE_INSTALL_LIBDIR}/pkgconfig")
set(_axalloc_gen "${CMAKE_CURRENT_BINARY_DIR}/axalloc-install")

install(FILES "${AXALLOC_ARCHIVE}" DESTINATION "${CMAKE_INSTALL_LIBDIR}")
install(FILES "${AXALLOC_INCLUDE_DIR}/axalloc.h" DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}")
install(FILES "${CMAKE_CURRENT_SOURCE_DIR}/LICENSE" "${CMAKE_CURRENT_SOURCE_DIR}/README.md"
  DESTINATION "${CMAKE_INSTALL_DOCDIR}")

# --- CMake package ---------------------------------------------------------
# PATH_VARS become PACKAGE_<var>: absolute paths computed at find time from
# the config file's own location.
set(AXALLOC_INSTALL_ARCHIVE "${CMAKE_INSTALL_LIBDIR}/libaxalloc.a")
set(AXALLOC_INSTALL_INCLUDEDIR "${CMAKE_INSTALL_INCLUDEDIR}")
configure_package_config_file(
  "${CMAKE_CURRENT_SOURCE_DIR}/cmake/axallocConfig.cmake.in"
  "${_axalloc_gen}/axallocConfig.cmake"
  INSTALL_DESTINATION "${_axalloc_cmake_dir}"
  PATH_VARS AXALLOC_INSTALL_ARCHIVE AXALLOC_INSTALL_INCLUDEDIR)
# Pre-1.0 the minor version is the ABI (0.1 -> 0.2 breaks it): a request for
# 0.1 accepts any 0.1.x, nothing else. The archive is for one architecture,
# so the version file also rejects a consumer with another pointer size.
write_basic_package_version_file("${_axalloc_gen}/axallocConfigVersion.cmake"
  VERSION "${PROJECT_VERSION}"
  COMPATIBILITY SameMinorVersion)
install(FILES "${_axalloc_gen}/axallocConfig.cmake" "${_axalloc_gen}/axallocConfigVersion.cmake"
  DESTINATION "${_axalloc_cmake_dir}")

# --- pkg-config -------------------------------------------------------------
# prefix is ${pcfiledir} walked back up <libdir>/pkgconfig (pkg-config and
# pkgconf both define pcfiledir); an absolute libdir/includedir is used as is.
if(IS_ABSOLUTE "${_axalloc_pc_dir}")
  set(AXALLOC_PC_PREFIX "${CMAKE_INSTALL_PREFIX}")
else()
  file(RELATIVE_PATH _axalloc_up "/prefix/${_axalloc_pc_dir}" "/prefix")
  string(REGEX REPLACE "/$" "" _axalloc_up "${_axalloc_up}")
  set(AXALLOC_PC_PREFIX "\${pcfiledir}/${_axalloc_up}")
endif()
foreach(_axalloc_dir IN ITEMS LIBDIR INCLUDEDIR)
  if(IS_ABSOLUTE "${CMAKE_INSTALL_${_axalloc_dir}}")
    set(AXALLOC_PC_${_axalloc_dir} "${CMAKE_INSTALL_${_axalloc_dir}}")
  else()
    set(AXALLOC_PC_${_axalloc_dir} "\${prefix}/${CMAKE_INSTALL_${_axalloc_dir}}")
  endif()
endforeach()
configure_file("${CMAKE_CURRENT_SOURCE_DIR}/cmake/axalloc.pc.in" "${_axalloc_gen}/axalloc.pc" @ONLY)
install(FILES "${_axalloc_gen}/axalloc.pc" DESTINATION "${_axalloc_pc_dir}")
