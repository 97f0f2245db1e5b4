# Interop checks (docs/INTEROP.md) run with the venv's python
# (FERRY_INTEROP_PYTHON, tests/CMakeLists.txt). Each fragment below adds its
# tests through fy_interop_test(NAME SCRIPT ARGS...): the script gets the
# ferry binary and a scratch directory after its own arguments. Without the
# venv every one is registered as a test that prints why and exits 77.
function(fy_interop_test name script)
  set(work ${CMAKE_CURRENT_BINARY_DIR}/tmp/${name})
  if(FERRY_INTEROP_PYTHON AND EXISTS "${FERRY_INTEROP_PYTHON}")
    add_test(NAME ${name}
      COMMAND ${FERRY_INTEROP_PYTHON} ${CMAKE_SOURCE_DIR}/${script} ${ARGN}
              --ferry $<TARGET_FILE:ferry> --work ${work})
  else()
    add_test(NAME ${name} COMMAND sh -c
      "echo 'SKIP: no interop venv (run scripts/pyenv.sh and configure with -DFERRY_INTEROP_PYTHON=PATH)'; exit 77")
  endif()
  set_tests_properties(${name} PROPERTIES SKIP_RETURN_CODE 77 LABELS interop TIMEOUT 600
    ENVIRONMENT "OMP_NUM_THREADS=2;PYTHONDONTWRITEBYTECODE=1;TRANSFORMERS_OFFLINE=1;HF_HUB_OFFLINE=1;HF_HUB_DISABLE_TELEMETRY=1")
endfunction()
