# mil_require_package(NAME VERSION APT_PACKAGE [find_package args...])
# find_package, and when the package is missing a configure error that names the Debian package.
include(GNUInstallDirs)
macro(mil_require_package name version apt)
  find_package(${name} ${version} QUIET ${ARGN})
  if(NOT ${name}_FOUND)
    message(FATAL_ERROR "mil needs ${name} >= ${version}: install it with "
                        "'apt-get install ${apt}' (or run scripts/setup.sh)")
  endif()
endmacro()
