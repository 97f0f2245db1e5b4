# Supervisor chaos test: 20+ SIGKILLs and a hang under `ferry train --supervise`.
if(TARGET ferry)
  add_test(NAME chaos_supervisor
    COMMAND bash ${CMAKE_SOURCE_DIR}/tests/cli/chaos_test.sh $<TARGET_FILE:ferry> ${CMAKE_CURRENT_BINARY_DIR}/chaos_work)
  set_tests_properties(chaos_supervisor PROPERTIES LABELS faults TIMEOUT 600 RUN_SERIAL TRUE)
endif()
