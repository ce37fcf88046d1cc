# `cmake --install`: headers, the static library, the mpx command and a CMake package, so that a project
# can use find_package(mpx) and target_link_libraries(app mpx::mpx) (examples/ shows one, and a test
# builds it against an installed tree).
include(CMakePackageConfigHelpers)
set(MPX_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/mpx)

install(TARGETS mpx EXPORT mpxTargets ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(TARGETS mpx_cli RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/mpx DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(FILES ${PROJECT_BINARY_DIR}/src/generated/mpx/build_info.h DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/mpx)
install(EXPORT mpxTargets NAMESPACE mpx:: DESTINATION ${MPX_CMAKE_DIR})

# The toolkit this mpx was built with, for find_dependency(CUDAToolkit) in a consumer.
if(MPX_WITH_CUDA)
  get_filename_component(MPX_CUDA_TOOLKIT_ROOT "${CUDAToolkit_BIN_DIR}" DIRECTORY)
endif()
configure_package_config_file(${CMAKE_CURRENT_LIST_DIR}/mpxConfig.cmake.in ${PROJECT_BINARY_DIR}/mpxConfig.cmake
                              INSTALL_DESTINATION ${MPX_CMAKE_DIR})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/mpxConfigVersion.cmake COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/mpxConfig.cmake ${PROJECT_BINARY_DIR}/mpxConfigVersion.cmake
        DESTINATION ${MPX_CMAKE_DIR})
