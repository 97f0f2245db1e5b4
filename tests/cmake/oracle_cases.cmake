# ferry vs the independent PyTorch oracle (tools/oracle): one test per model
# variant (oracle_case dumps, check_case.py recomputes), and a 200-step
# training comparison. They skip (exit 77) only where python3-torch is absent.
# The training comparison's bound, |ferry - ref| / |ref| per step up to the
# first near tie of a router (train_ref.py; 1e-3 after it): measured worst
# 9.5e-08 over all 200 steps on an AMD EPYC (AVX2), 2.3e-07 before step 166's
# near tie on an Intel Xeon (AVX-512), where step 189 (margin 2.8e-7) picked
# the other expert (3.0e-4), 2026-12-06; 1e-5 leaves 40x for another CPU's
# float32 kernels and still fails a wrong step.
set(FERRY_ORACLE_TRAIN_TOL 1e-5)
add_executable(oracle_case ${CMAKE_SOURCE_DIR}/tests/oracle/oracle_case.c)
target_link_libraries(oracle_case PRIVATE ferrycore)
add_executable(oracle_train ${CMAKE_SOURCE_DIR}/tests/oracle/oracle_train.c)
target_link_libraries(oracle_train PRIVATE ferrycore)

set(FERRY_ORACLE_VARIANTS base noqlora group nonorm mtp0 mtp2 dense moeonly seq1 noshared nobalance odd
    yarn yarnaf lora lora_noqlora lora_dropout)
foreach(v ${FERRY_ORACLE_VARIANTS})
  set(dir ${CMAKE_CURRENT_BINARY_DIR}/oracle/${v})
  add_test(NAME oracle_case_${v}
    COMMAND sh -c "\"$<TARGET_FILE:oracle_case>\" --variant ${v} --out \"${dir}\" && \"${FERRY_PYTHON}\" \"${CMAKE_SOURCE_DIR}/tools/oracle/check_case.py\" \"${dir}\"")
  set_tests_properties(oracle_case_${v} PROPERTIES SKIP_RETURN_CODE 77 LABELS oracle
    ENVIRONMENT "OMP_NUM_THREADS=1")
endforeach()

set(dir ${CMAKE_CURRENT_BINARY_DIR}/oracle/train200)
add_test(NAME oracle_train_200
  COMMAND sh -c "\"$<TARGET_FILE:oracle_train>\" --out \"${dir}\" --steps 200 && \"${FERRY_PYTHON}\" \"${CMAKE_SOURCE_DIR}/tools/oracle/train_ref.py\" --tol ${FERRY_ORACLE_TRAIN_TOL} \"${dir}\"")
set_tests_properties(oracle_train_200 PROPERTIES SKIP_RETURN_CODE 77 LABELS oracle
  ENVIRONMENT "OMP_NUM_THREADS=1")
