# Tokenizers as Hugging Face writes them (docs/DESIGN.md §3.6): tokenizer.json
# files built by the `tokenizers` library (DeepSeek-V3's Split/ByteLevel
# Sequence, NFC, Digits, the Split behaviours, ignore_merges, added tokens)
# loaded by ferry (test_tokenizer --encode-cases); ids, decoding, the saved
# file and fy_tokenizer_pre_name checked against the library.
fy_interop_test(tok_hf_pretok tools/interop/tok_hf_pretok.py
  --test-tokenizer $<TARGET_FILE:test_tokenizer>)
