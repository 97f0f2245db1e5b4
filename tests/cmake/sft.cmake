# Chat fine-tuning data end to end: ferry data chat-kjv, data prepare of
# JSONL, train --init-from on it (tests/cli/sft_test.sh).
if(TARGET ferry)
  add_test(NAME cli_sft
    COMMAND bash ${CMAKE_SOURCE_DIR}/tests/cli/sft_test.sh $<TARGET_FILE:ferry> ${CMAKE_CURRENT_BINARY_DIR}/cli_sft_work)
  set_tests_properties(cli_sft PROPERTIES LABELS cli TIMEOUT 120)
endif()
# --add-special-tokens: a micro model's vocabulary grown by two special
# tokens (tests/cli/add_tokens_test.sh; the HF check needs the interop venv:
# without it the test is reported as skipped, exit 77).
if(TARGET ferry)
  add_test(NAME cli_add_tokens
    COMMAND bash ${CMAKE_SOURCE_DIR}/tests/cli/add_tokens_test.sh $<TARGET_FILE:ferry> ${CMAKE_CURRENT_BINARY_DIR}/cli_add_tokens_work "${FERRY_INTEROP_PYTHON}")
  set_tests_properties(cli_add_tokens PROPERTIES LABELS cli TIMEOUT 120 SKIP_RETURN_CODE 77)
endif()
