# Cross-backend CLI test (tests/cli/backends_test.sh): ferry devices, ferry
# verify (passing on cpu,chaos:cpu; failing under FERRY_PERTURB), error paths,
# and train/generate/resume across backends, with OpenCL when a device is
# listed. Without one, (a)-(d) still run and the test is reported as skipped
# (exit 77, naming the part that did not run) unless one of them failed.
if(TARGET ferry)
  add_test(NAME cli_backends
    COMMAND bash ${CMAKE_SOURCE_DIR}/tests/cli/backends_test.sh $<TARGET_FILE:ferry> ${CMAKE_CURRENT_BINARY_DIR}/backends_work)
  set_tests_properties(cli_backends PROPERTIES LABELS cli TIMEOUT 600 SKIP_RETURN_CODE 77)
endif()
