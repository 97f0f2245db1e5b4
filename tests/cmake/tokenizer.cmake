# Tokenizer agreement with Hugging Face `tokenizers` (tools/tok_hf_check.py):
# test_tokenizer --train-and-encode trains on a generated text, saves
# tokenizer.json and writes ids; Python checks them (and more) against HF.
# Skipped (77) when the `tokenizers` module is not importable.
if(FERRY_PYTHON AND TARGET test_tokenizer)
  add_test(NAME tokenizer_hf_agreement
    COMMAND ${FERRY_PYTHON} ${CMAKE_SOURCE_DIR}/tools/tok_hf_check.py --drive
            $<TARGET_FILE:test_tokenizer> ${CMAKE_CURRENT_BINARY_DIR}/tmp/tokenizer_hf_agreement)
  set_tests_properties(tokenizer_hf_agreement PROPERTIES
    SKIP_RETURN_CODE 77 LABELS oracle TIMEOUT 300
    ENVIRONMENT "OMP_NUM_THREADS=2")
endif()
