# ferry's chat templates against transformers' apply_chat_template on the
# real Jinja texts (tools/serve/chat_template_check.py, docs/SERVING.md).
fy_interop_test(serve_chat_template tools/serve/chat_template_check.py
  --test-chat $<TARGET_FILE:test_chat> --source ${CMAKE_SOURCE_DIR})
set_tests_properties(serve_chat_template PROPERTIES LABELS "interop;serve" TIMEOUT 300)
