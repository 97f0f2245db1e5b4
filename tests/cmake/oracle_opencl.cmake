# The PyTorch oracle cases and the training comparison again on the OpenCL
# backend (tests/cmake/oracle_cases.cmake, which this file follows in name
# order, defines the variants and the targets). check_case.py's tolerances
# are the cpu's; the training comparison's bound is its own: measured worst
# over the 200 steps 3.0e-4 (step 189, PoCL on 2 AMD EPYC cores, 2026-12-06;
# OpenCL's kernels sum in another order, and 200 AdamW steps amplify it, 3000x
# the cpu backend's 9.5e-8), so 1e-3 (3x margin). They skip (77) where
# python3-torch or an OpenCL device is absent; registered only when ferry is
# built with OpenCL. The training comparison runs the full 200 steps.
if(OpenCL_FOUND AND TARGET oracle_case AND TARGET oracle_train)
  foreach(v ${FERRY_ORACLE_VARIANTS})
    set(dir ${CMAKE_CURRENT_BINARY_DIR}/oracle_opencl/${v})
    add_test(NAME oracle_case_${v}_opencl
      COMMAND sh -c "\"$<TARGET_FILE:oracle_case>\" --variant ${v} --out \"${dir}\" --backend opencl && \"${FERRY_PYTHON}\" \"${CMAKE_SOURCE_DIR}/tools/oracle/check_case.py\" \"${dir}\"")
    set_tests_properties(oracle_case_${v}_opencl PROPERTIES SKIP_RETURN_CODE 77 LABELS opencl
      ENVIRONMENT "OMP_NUM_THREADS=1")
  endforeach()
  set(dir ${CMAKE_CURRENT_BINARY_DIR}/oracle_opencl/train200)
  add_test(NAME oracle_train_200_opencl
    COMMAND sh -c "\"$<TARGET_FILE:oracle_train>\" --out \"${dir}\" --steps 200 --backend opencl && \"${FERRY_PYTHON}\" \"${CMAKE_SOURCE_DIR}/tools/oracle/train_ref.py\" --tol 1e-3 \"${dir}\"")
  set_tests_properties(oracle_train_200_opencl PROPERTIES SKIP_RETURN_CODE 77 LABELS opencl
    TIMEOUT 900 ENVIRONMENT "OMP_NUM_THREADS=1")
endif()
