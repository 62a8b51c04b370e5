# The GPU-required mode without a device: run by ctest as
#   cmake -DMIL_TESTS_CUDA=<mil_tests_cuda> -P gpu_required_test.cmake
# CUDA_VISIBLE_DEVICES=-1 hides every device, so this holds on a machine with a GPU as well.
set(ENV{MIL_REQUIRE_GPU} 1)
set(ENV{CUDA_VISIBLE_DEVICES} -1)

function(run_gpu_tests)
  execute_process(COMMAND ${MIL_TESTS_CUDA} ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out
                  ERROR_VARIABLE err TIMEOUT 120)
  set(rc "${rc}" PARENT_SCOPE)
  set(out "${out}${err}" PARENT_SCOPE)
endfunction()

function(fail what)
  message(FATAL_ERROR "${what}\nexit code: ${rc}\noutput:\n${out}")
endfunction()

# 1. The whole program refuses to start: exit code 2 and the reason, before any case runs.
run_gpu_tests()
string(FIND "${out}" "[mil] MIL_REQUIRE_GPU=1, no usable GPU: " reason)
string(FIND "${out}" "test cases:" summary)
if(NOT rc STREQUAL "2" OR reason EQUAL -1 OR NOT summary EQUAL -1)
  fail("without a device the GPU tests must refuse to run: exit code 2, the reason, no case run")
endif()

# 2. Listing needs no device (ctest discovers the cases this way after every build).
run_gpu_tests(--list-test-cases)
string(FIND "${out}" "cuda check: failed calls throw" listed)
if(NOT rc STREQUAL "0" OR listed EQUAL -1)
  fail("listing the GPU test cases must work without a device")
endif()

# 3. A case that gets past the program's check (--exit skips it) fails at its own guard.
run_gpu_tests(--exit "--test-case=cuda check: failed calls throw*")
string(FIND "${out}" "[mil] MIL_REQUIRE_GPU=1, no usable GPU: " reason)
string(FIND "${out}" "[mil] no CUDA device: test skipped" skipped)
if(rc STREQUAL "0" OR reason EQUAL -1 OR NOT skipped EQUAL -1)
  fail("a guarded GPU test case must fail, not skip, without a device")
endif()
