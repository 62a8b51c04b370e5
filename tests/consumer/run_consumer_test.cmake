# Install test, run as a script:
#   cmake -DMIL_SOURCE_DIR=<mil checkout> -DMIL_WORK_DIR=<scratch dir> -DMIL_CUDA=ON|OFF
#         -P tests/consumer/run_consumer_test.cmake
# Installs mil (library only) into a fresh prefix under MIL_WORK_DIR, then configures, builds and
# runs tests/consumer/project against that prefix: find_package(mil) must find the installed
# package, and the program must compile, link and print "consumer ok".
cmake_minimum_required(VERSION 3.25)

foreach(var MIL_SOURCE_DIR MIL_WORK_DIR MIL_CUDA)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "consumer test: pass -D${var}=... (see the top of this script)")
  endif()
endforeach()
if(MIL_CUDA)
  set(cuda ON)
else()
  set(cuda OFF)
endif()

set(prefix ${MIL_WORK_DIR}/prefix)
set(mil_build ${MIL_WORK_DIR}/mil-build)
set(consumer_build ${MIL_WORK_DIR}/consumer-build)
file(REMOVE_RECURSE ${MIL_WORK_DIR})  # a stale prefix must not make the test pass
file(MAKE_DIRECTORY ${MIL_WORK_DIR})

# Ninja when present (faster), otherwise CMake's default generator.
find_program(MIL_NINJA NAMES ninja ninja-build)
set(generator)
if(MIL_NINJA)
  set(generator -G Ninja -DCMAKE_MAKE_PROGRAM=${MIL_NINJA})
endif()

# run(WHAT COMMAND...): runs the command; on failure stops with its output.
function(run what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "consumer test: ${what} failed (${rc}):\n${out}")
  endif()
  set(run_output "${out}" PARENT_SCOPE)
endfunction()

message(STATUS "consumer test: installing mil (MIL_CUDA=${cuda}) into ${prefix}")
run("configuring mil" ${CMAKE_COMMAND} -S ${MIL_SOURCE_DIR} -B ${mil_build} ${generator}
    -DCMAKE_BUILD_TYPE=Release -DMIL_CUDA=${cuda} -DMIL_BUILD_TESTS=OFF -DMIL_BUILD_BENCH=OFF
    -DMIL_BUILD_EXAMPLES=OFF -DCMAKE_INSTALL_PREFIX=${prefix})
string(FIND "${run_output}" "(MIL_NATIVE) ON" native_at)
run("installing mil" ${CMAKE_COMMAND} --build ${mil_build} --target install)
# MIL_NATIVE (on for this Release build where the compiler has -march=native) is for the project's
# own programs: the installed target must not hand -march=native to mil's users.
file(GLOB_RECURSE package_files ${prefix}/*/mil*.cmake)
foreach(f ${package_files})
  file(READ ${f} text)
  if(text MATCHES "march=native")
    message(FATAL_ERROR "consumer test: ${f} passes -march=native on to mil's users")
  endif()
endforeach()
if(native_at EQUAL -1)
  message(STATUS "consumer test: MIL_NATIVE was off, so the -march=native check proves nothing")
endif()
foreach(f include/mil/mil.hpp include/mil/core/tensor.hpp)
  if(NOT EXISTS ${prefix}/${f})
    message(FATAL_ERROR "consumer test: ${f} was not installed into ${prefix}")
  endif()
endforeach()
file(GLOB_RECURSE config_files ${prefix}/*/milConfig.cmake)
if(NOT config_files)
  message(FATAL_ERROR "consumer test: no milConfig.cmake was installed into ${prefix}")
endif()

message(STATUS "consumer test: building tests/consumer/project against the installed mil")
run("configuring the consumer project" ${CMAKE_COMMAND} -S ${CMAKE_CURRENT_LIST_DIR}/project
    -B ${consumer_build} ${generator} -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH=${prefix}
    -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF -DCMAKE_FIND_USE_SYSTEM_PACKAGE_REGISTRY=OFF
    -DMIL_EXPECT_CUDA=${cuda})
# The package must come from the prefix, not from the source tree or another installation.
file(STRINGS ${consumer_build}/CMakeCache.txt mil_dir_line REGEX "^mil_DIR:")
string(REGEX REPLACE "^mil_DIR:[A-Z]+=" "" mil_dir "${mil_dir_line}")
file(REAL_PATH "${mil_dir}" mil_dir)
file(REAL_PATH "${prefix}" real_prefix)
string(FIND "${mil_dir}" "${real_prefix}/" at)
if(NOT at EQUAL 0)
  message(FATAL_ERROR "consumer test: find_package(mil) used '${mil_dir}', not the package "
                      "installed in ${prefix}")
endif()
run("building the consumer project" ${CMAKE_COMMAND} --build ${consumer_build})

file(GLOB consumer_exe ${consumer_build}/mil_consumer ${consumer_build}/*/mil_consumer
     ${consumer_build}/mil_consumer.exe ${consumer_build}/*/mil_consumer.exe)
if(NOT consumer_exe)
  message(FATAL_ERROR "consumer test: the consumer program was not built in ${consumer_build}")
endif()
list(GET consumer_exe 0 consumer_exe)
run("running the consumer program" ${consumer_exe})
message(STATUS "consumer test: program output:\n${run_output}")
if(NOT run_output MATCHES "consumer ok")
  message(FATAL_ERROR "consumer test: the program did not print 'consumer ok'")
endif()
message(STATUS "consumer test: passed")
