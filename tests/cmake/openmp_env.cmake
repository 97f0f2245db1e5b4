# ferry's OpenMP waiting (tests/cli/openmp_env_test.sh): GOMP_SPINCOUNT per
# command through one re-exec, and a user's setting left alone. The script
# unsets the OMP_WAIT_POLICY=PASSIVE that tests/CMakeLists.txt gives every test.
if(TARGET ferry)
  add_test(NAME cli_openmp_env
    COMMAND bash ${CMAKE_SOURCE_DIR}/tests/cli/openmp_env_test.sh $<TARGET_FILE:ferry> ${CMAKE_CURRENT_BINARY_DIR}/cli_openmp_env_work)
  set_tests_properties(cli_openmp_env PROPERTIES LABELS cli TIMEOUT 60)
endif()
