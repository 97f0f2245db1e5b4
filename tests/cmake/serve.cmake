# ferry serve end to end over loopback, with the venv's python and a micro
# model trained in a second (tools/serve/, docs/SERVING.md "Tests").
fy_interop_test(serve_openai tools/serve/serve_openai.py)
set_tests_properties(serve_openai PROPERTIES LABELS "interop;serve" TIMEOUT 120)
fy_interop_test(serve_concurrency tools/serve/serve_concurrency.py)
set_tests_properties(serve_concurrency PROPERTIES LABELS "interop;serve" TIMEOUT 120)
fy_interop_test(serve_bad_requests tools/serve/serve_bad_requests.py)
set_tests_properties(serve_bad_requests PROPERTIES LABELS "interop;serve" TIMEOUT 120)
fy_interop_test(serve_lora tools/serve/serve_lora.py)
set_tests_properties(serve_lora PROPERTIES LABELS "interop;serve" TIMEOUT 180)
