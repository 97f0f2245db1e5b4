# Unmerged LoRA adapters in the batch step on OpenCL (tests/unit/test_lora_serve.c
# with the backend's name; skipped, exit 77, without OpenCL or a device).
if(TARGET test_lora_serve)
  add_test(NAME test_lora_serve_opencl COMMAND test_lora_serve opencl)
  set_tests_properties(test_lora_serve_opencl PROPERTIES LABELS "unit;opencl" SKIP_RETURN_CODE 77
    ENVIRONMENT "OMP_NUM_THREADS=2;FERRY_TEST_TMP=${CMAKE_CURRENT_BINARY_DIR}/tmp")
endif()
