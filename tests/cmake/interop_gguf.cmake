# GGUF export for llama.cpp (docs/INTEROP.md, "Out: GGUF for llama.cpp").
# interop_gguf reads every export with the gguf package; interop_gguf_llamacpp
# runs the exports in llama.cpp itself when tools/llamacpp/check.sh has built
# it (FERRY_LLAMACPP_DIR, default its cache directory) and skips otherwise.
if(DEFINED ENV{XDG_CACHE_HOME} AND NOT "$ENV{XDG_CACHE_HOME}" STREQUAL "")
  set(_fy_llamacpp_default "$ENV{XDG_CACHE_HOME}/ferry/llama.cpp")
else()
  set(_fy_llamacpp_default "$ENV{HOME}/.cache/ferry/llama.cpp")
endif()
set(FERRY_LLAMACPP_DIR "${_fy_llamacpp_default}" CACHE PATH
    "llama.cpp build made by tools/llamacpp/check.sh (holds llama_ids); the test skips without one")

fy_interop_test(interop_gguf tools/interop/gguf_check.py)
fy_interop_test(interop_gguf_llamacpp tools/interop/gguf_llamacpp.py --llamacpp ${FERRY_LLAMACPP_DIR})
