# linear_h16 on OpenCL against the cpu's bits (tests/unit/test_h16.c's
# OpenCL half, its own test so that a missing device is reported as
# skipped, not as a pass).
if(TARGET test_h16)
  add_test(NAME test_h16_opencl COMMAND test_h16 opencl)
  set_tests_properties(test_h16_opencl PROPERTIES LABELS "unit;opencl" SKIP_RETURN_CODE 77
    ENVIRONMENT "OMP_NUM_THREADS=2;FERRY_TEST_TMP=${CMAKE_CURRENT_BINARY_DIR}/tmp")
endif()
