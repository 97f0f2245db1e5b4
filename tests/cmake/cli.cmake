# End-to-end tests of the ferry command (tests/cli/cli_test.sh).
if(TARGET ferry)
  add_test(NAME cli_end_to_end
    COMMAND bash ${CMAKE_SOURCE_DIR}/tests/cli/cli_test.sh $<TARGET_FILE:ferry> ${CMAKE_CURRENT_BINARY_DIR}/cli_work)
  set_tests_properties(cli_end_to_end PROPERTIES LABELS cli TIMEOUT 600)
endif()

# Paths with quotes, backslashes, ';' and spaces (tests/cli/paths_test.sh).
if(TARGET ferry)
  add_test(NAME cli_paths
    COMMAND bash ${CMAKE_SOURCE_DIR}/tests/cli/paths_test.sh $<TARGET_FILE:ferry> ${CMAKE_CURRENT_BINARY_DIR}/cli_paths_work)
  set_tests_properties(cli_paths PROPERTIES LABELS cli TIMEOUT 120)
endif()

# ferry train --init-from a ferry run and its Hugging Face export (tests/cli/init_from_test.sh).
if(TARGET ferry)
  add_test(NAME cli_init_from
    COMMAND bash ${CMAKE_SOURCE_DIR}/tests/cli/init_from_test.sh $<TARGET_FILE:ferry> ${CMAKE_CURRENT_BINARY_DIR}/cli_init_from_work)
  set_tests_properties(cli_init_from PROPERTIES LABELS cli TIMEOUT 120)
endif()

# ferry train --lora-* (tests/cli/lora_test.sh; skipped, exit 77, when the
# 2-rank part cannot run for want of mpirun).
if(TARGET ferry)
  add_test(NAME cli_lora
    COMMAND bash ${CMAKE_SOURCE_DIR}/tests/cli/lora_test.sh $<TARGET_FILE:ferry> ${CMAKE_CURRENT_BINARY_DIR}/cli_lora_work)
  set_tests_properties(cli_lora PROPERTIES LABELS cli TIMEOUT 300 SKIP_RETURN_CODE 77)
endif()

# Hostile input: special files, a DeepSeek-size tokenizer, NaN weights,
# overflowing sizes, unsafe generated text (tests/cli/hostile_test.sh).
if(TARGET ferry)
  add_test(NAME cli_hostile
    COMMAND bash ${CMAKE_SOURCE_DIR}/tests/cli/hostile_test.sh $<TARGET_FILE:ferry> ${CMAKE_CURRENT_BINARY_DIR}/cli_hostile_work)
  set_tests_properties(cli_hostile PROPERTIES LABELS cli TIMEOUT 600)
endif()

# Run directories against hostile use: locking, --resume's flags, checks before
# step 1, absolute paths, a full disk (tests/cli/rundir_test.sh).
if(TARGET ferry)
  add_test(NAME cli_rundir
    COMMAND bash ${CMAKE_SOURCE_DIR}/tests/cli/rundir_test.sh $<TARGET_FILE:ferry> ${CMAKE_CURRENT_BINARY_DIR}/cli_rundir_work)
  set_tests_properties(cli_rundir PROPERTIES LABELS cli TIMEOUT 120)
endif()

# ferry train --lora-rank --base-weights q8_0|q4_0: LoRA on a quantized
# frozen base (tests/cli/qlora_test.sh).
if(TARGET ferry)
  add_test(NAME cli_qlora
    COMMAND bash ${CMAKE_SOURCE_DIR}/tests/cli/qlora_test.sh $<TARGET_FILE:ferry> ${CMAKE_CURRENT_BINARY_DIR}/cli_qlora_work)
  set_tests_properties(cli_qlora PROPERTIES LABELS cli TIMEOUT 300)
endif()
