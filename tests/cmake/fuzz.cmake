# Fuzz targets of the parsers (tests/fuzz, docs/RELIABILITY.md "Fuzzing").
# Each tests/fuzz/fuzz_NAME.c defines LLVMFuzzerTestOneInput over one
# parser's real entry point.
#  - FERRY_FUZZ build (clang, its own build directory; scripts/test.sh's
#    build-fuzz): fuzz_NAME links libFuzzer; ctest label "fuzz" makes the
#    seed corpora from files ferry writes (fuzz_seeds, make_seeds.sh), then
#    runs each target FERRY_FUZZ_SECONDS from them (run_fuzz.sh). When the
#    compiler cannot link -fsanitize=fuzzer, one test says so and skips.
#  - every other build (gcc Release, the ASan build): fuzz_replay_NAME is
#    the same target with replay_main.c's main, and ctest (labels unit and
#    fuzz-replay) runs it on the committed seeds and on every crash input
#    of tests/fuzz/regress/NAME, so a crash found once stays fixed.
set(FERRY_FUZZ_TARGETS safetensors checkpoint config tokenizer shard gguf sft api args)
set(FERRY_FUZZ_SECONDS 25 CACHE STRING "seconds each fuzz target runs in ctest -L fuzz")
set(fz ${CMAKE_SOURCE_DIR}/tests/fuzz)

function(ferry_fuzz_exe exe t)
  add_executable(${exe} ${fz}/fuzz_${t}.c ${fz}/fuzz_common.c ${ARGN})
  target_include_directories(${exe} PRIVATE ${fz})
  target_link_libraries(${exe} PRIVATE ferrycore)
  # the flag parser is the CLI's (src/cli is not in ferrycore)
  if(t STREQUAL "args")
    target_sources(${exe} PRIVATE ${CMAKE_SOURCE_DIR}/src/cli/args.c)
  endif()
endfunction()

if(FERRY_FUZZ AND FERRY_FUZZ_LINKS)
  set(work ${CMAKE_CURRENT_BINARY_DIR}/fuzz_work)
  add_test(NAME fuzz_seeds COMMAND bash ${fz}/make_seeds.sh $<TARGET_FILE:ferry> ${work})
  set_tests_properties(fuzz_seeds PROPERTIES LABELS fuzz FIXTURES_SETUP fuzz_corpus TIMEOUT 600)
  set(all)
  foreach(t ${FERRY_FUZZ_TARGETS})
    ferry_fuzz_exe(fuzz_${t} ${t})
    target_link_options(fuzz_${t} PRIVATE -fsanitize=fuzzer)
    list(APPEND all fuzz_${t})
    add_test(NAME fuzz_${t}
      COMMAND bash ${fz}/run_fuzz.sh $<TARGET_FILE:fuzz_${t}> ${t} ${work} ${FERRY_FUZZ_SECONDS})
    math(EXPR limit "${FERRY_FUZZ_SECONDS} + 180")
    set_tests_properties(fuzz_${t} PROPERTIES LABELS fuzz FIXTURES_REQUIRED fuzz_corpus
      TIMEOUT ${limit} SKIP_RETURN_CODE 77)
  endforeach()
  # what scripts/test.sh builds in build-fuzz: the targets and the ferry
  # that makes their seeds, not the whole test suite
  add_custom_target(fuzz_all DEPENDS ${all} ferry)
else()
  foreach(t ${FERRY_FUZZ_TARGETS})
    ferry_fuzz_exe(fuzz_replay_${t} ${t} ${fz}/replay_main.c)
    add_test(NAME fuzz_replay_${t} COMMAND fuzz_replay_${t} ${fz}/seeds/${t} ${fz}/regress/${t})
    set_tests_properties(fuzz_replay_${t} PROPERTIES LABELS "unit;fuzz-replay" TIMEOUT 120
      ENVIRONMENT "OMP_NUM_THREADS=1")
  endforeach()
  if(FERRY_FUZZ)
    add_test(NAME fuzz_unavailable COMMAND sh -c
      "echo 'fuzz: SKIP: ${CMAKE_C_COMPILER} cannot link -fsanitize=fuzzer (clang with libFuzzer needed; Debian: apt-get install clang libclang-rt-14-dev)'; exit 77")
    set_tests_properties(fuzz_unavailable PROPERTIES LABELS fuzz SKIP_RETURN_CODE 77)
    add_custom_target(fuzz_all DEPENDS ferry)
  endif()
endif()
