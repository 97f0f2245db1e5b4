# dequant_rows on OpenCL against the host's decoding (tests/unit/test_dequant.c's
# OpenCL half, its own test so that a missing device is reported as skipped).
if(TARGET test_dequant)
  add_test(NAME test_dequant_opencl COMMAND test_dequant opencl)
  set_tests_properties(test_dequant_opencl PROPERTIES LABELS "unit;opencl" SKIP_RETURN_CODE 77
    ENVIRONMENT "OMP_NUM_THREADS=2;FERRY_TEST_TMP=${CMAKE_CURRENT_BINARY_DIR}/tmp")
endif()
