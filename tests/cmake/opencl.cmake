# OpenCL backend tests (tests/opencl): every op against the cpu backend, and
# 50 training steps on both. Label "opencl", not "unit": they need a device,
# and the ICD loader / PoCL keep allocations that LeakSanitizer would report.
# They exit 77 (skipped) when no OpenCL platform or device is present, and
# are built (to skip) even when ferry has no OpenCL.
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
