# PyTorch oracle (tools/oracle): its own self-test needs no C side.
# Exits 77 (reported as skipped) when python3-torch is not installed.
if(FERRY_PYTHON)
  add_test(NAME oracle_selftest
           COMMAND ${FERRY_PYTHON} ${CMAKE_SOURCE_DIR}/tools/oracle/selftest.py)
  set_tests_properties(oracle_selftest PROPERTIES
    LABELS oracle
    SKIP_RETURN_CODE 77
    TIMEOUT 300
    ENVIRONMENT "OMP_NUM_THREADS=2;PYTHONDONTWRITEBYTECODE=1")
endif()
