# Hugging Face export and import (docs/INTEROP.md), checked against
# transformers with the interop venv. hf_probe (tests/interop/hf_probe.c)
# writes ferry's logits and greedy ids for the scripts to compare.
add_executable(hf_probe ${CMAKE_SOURCE_DIR}/tests/interop/hf_probe.c)
target_link_libraries(hf_probe PRIVATE ferrycore)
fy_interop_test(interop_hf_out tools/interop/hf_out_check.py --probe $<TARGET_FILE:hf_probe>)
fy_interop_test(interop_hf_in tools/interop/hf_in_check.py --probe $<TARGET_FILE:hf_probe>)
