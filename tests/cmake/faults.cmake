# Fault injection end to end (tests/cli/fault_test.sh, docs/RELIABILITY.md).
if(TARGET ferry)
  add_test(NAME fault_injection
    COMMAND bash ${CMAKE_SOURCE_DIR}/tests/cli/fault_test.sh $<TARGET_FILE:ferry> ${CMAKE_CURRENT_BINARY_DIR}/fault_work)
  set_tests_properties(fault_injection PROPERTIES LABELS "cli;faults" TIMEOUT 300)
endif()
