# install(): headers, the exported mil::mil target, milConfig.cmake and a version file, so that
# another project can find_package(mil) and link mil::mil.
include(CMakePackageConfigHelpers)
install(DIRECTORY include/mil DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(TARGETS mil EXPORT milTargets)
install(EXPORT milTargets NAMESPACE mil:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/mil)
configure_package_config_file(cmake/milConfig.cmake.in ${CMAKE_CURRENT_BINARY_DIR}/milConfig.cmake
                              INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/mil)
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/milConfigVersion.cmake
                                 COMPATIBILITY SameMinorVersion ARCH_INDEPENDENT)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/milConfig.cmake
              ${CMAKE_CURRENT_BINARY_DIR}/milConfigVersion.cmake
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/mil)
