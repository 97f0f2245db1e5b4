# Hugging Face export and import (docs/INTEROP.md), checked against
# transformers with the interop venv. hf_probe (tests/interop/hf_probe.c)
# writes ferry's logits and greedy ids for the scripts to compare.
add_executable(hf_probe ${CMAKE_SOURCE_DIR}/tests/interop/hf_probe.c)
target_link_libraries(hf_probe PRIVATE ferrycore)
fy_interop_test(interop_hf_out tools/interop/hf_out_check.py --probe $<TARGET_FILE:hf_probe>)
fy_interop_test(interop_hf_in tools/interop/hf_in_check.py --probe $<TARGET_FILE:hf_probe>)
# Export -> import of a random model in C alone: runs without the venv too.
add_executable(hf_selftest ${CMAKE_SOURCE_DIR}/tests/interop/hf_selftest.c)
target_link_libraries(hf_selftest PRIVATE ferrycore)
add_test(NAME interop_hf_selftest COMMAND sh -c "rm -rf \"$1\" && exec \"$0\" \"$1\""
  $<TARGET_FILE:hf_selftest> ${CMAKE_CURRENT_BINARY_DIR}/tmp/interop_hf_selftest)
set_tests_properties(interop_hf_selftest PROPERTIES LABELS interop ENVIRONMENT "OMP_NUM_THREADS=2;FERRY_LOG=warn")
# A LoRA run's PEFT export loaded with peft onto the base's export (tools/interop/peft_check.py).
fy_interop_test(interop_peft tools/interop/peft_check.py --probe $<TARGET_FILE:hf_probe>)
