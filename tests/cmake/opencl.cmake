# OpenCL backend tests. tests/unit/test_opencl_ops.c (every op against the
# cpu backend) is a unit test like the others, so it also runs under ASan;
# here it gets its skip code and the "opencl" label as well. The model-level
# tests in tests/opencl/ (training and decode against cpu) are label
# "opencl" only. All exit 77 (skipped, with the reason) when no OpenCL
# platform or device is present, or when ferry was built without OpenCL.
if(TEST test_opencl_ops)
  set_tests_properties(test_opencl_ops PROPERTIES LABELS "unit;opencl" SKIP_RETURN_CODE 77)
endif()
# The batch step on OpenCL (tests/unit/test_batch.c's OpenCL half, its own
# test so that a missing device is reported as skipped, not as a pass).
if(TARGET test_batch)
  add_test(NAME test_batch_opencl COMMAND test_batch opencl)
  set_tests_properties(test_batch_opencl PROPERTIES LABELS "unit;opencl" SKIP_RETURN_CODE 77
    ENVIRONMENT "OMP_NUM_THREADS=2;FERRY_TEST_TMP=${CMAKE_CURRENT_BINARY_DIR}/tmp")
endif()
file(GLOB FERRY_OPENCL_TESTS CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/opencl/test_*.c)
foreach(src ${FERRY_OPENCL_TESTS})
  get_filename_component(name ${src} NAME_WE)
  add_executable(${name} ${src} ${CMAKE_CURRENT_SOURCE_DIR}/unit/testutil.c)
  target_include_directories(${name} PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/unit)
  target_link_libraries(${name} PRIVATE ferrycore)
  add_test(NAME ${name} COMMAND ${name})
  set_tests_properties(${name} PROPERTIES LABELS opencl SKIP_RETURN_CODE 77 TIMEOUT 900
    ENVIRONMENT "OMP_NUM_THREADS=2;FERRY_TEST_TMP=${CMAKE_CURRENT_BINARY_DIR}/tmp")
endforeach()
