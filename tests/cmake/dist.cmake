# Scale-out (src/parallel, docs/SCALING.md): the communicator and data-parallel
# training under mpirun, oversubscribed on loopback. Without MPI each test is
# registered as skipped (exit 77), so the summary says what did not run.
# Running as root (containers, CI) needs Open MPI's allow-run-as-root pair:
# it is set here, in the test environment, never in ferry's code.
set(FERRY_MPI_ENV "OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1;OMPI_MCA_rmaps_base_oversubscribe=1;OMP_NUM_THREADS=1")
if(MPI_C_FOUND AND TARGET ferry)
  add_executable(test_comm ${CMAKE_CURRENT_SOURCE_DIR}/dist/test_comm.c)
  target_link_libraries(test_comm PRIVATE ferrycore)
  add_executable(test_ep ${CMAKE_CURRENT_SOURCE_DIR}/dist/test_ep.c)
  target_link_libraries(test_ep PRIVATE ferrycore)
  foreach(np 1 2 3)
    add_test(NAME dist_ep_np${np} COMMAND ${MPIEXEC_EXECUTABLE} -np ${np} $<TARGET_FILE:test_ep>)
    set_tests_properties(dist_ep_np${np} PROPERTIES LABELS dist TIMEOUT 120 ENVIRONMENT "${FERRY_MPI_ENV}")
  endforeach()
  add_executable(pingpong ${CMAKE_CURRENT_SOURCE_DIR}/dist/pingpong.c)
  target_link_libraries(pingpong PRIVATE MPI::MPI_C)
  foreach(np 1 2 3)
    add_test(NAME dist_comm_np${np} COMMAND ${MPIEXEC_EXECUTABLE} -np ${np} $<TARGET_FILE:test_comm>)
    set_tests_properties(dist_comm_np${np} PROPERTIES LABELS dist TIMEOUT 120 ENVIRONMENT "${FERRY_MPI_ENV}")
  endforeach()
  add_test(NAME dist_comm_timeout COMMAND ${MPIEXEC_EXECUTABLE} -np 2 $<TARGET_FILE:test_comm> --timeout-case)
  set_tests_properties(dist_comm_timeout PROPERTIES LABELS dist TIMEOUT 60 ENVIRONMENT "${FERRY_MPI_ENV}"
    PASS_REGULAR_EXPRESSION "timeout: [1-9][0-9]* passed, 0 failed")
  add_test(NAME dist_train COMMAND bash ${CMAKE_SOURCE_DIR}/tests/dist/dp_test.sh $<TARGET_FILE:ferry>
    ${CMAKE_CURRENT_BINARY_DIR}/dist_work)
  set_tests_properties(dist_train PROPERTIES LABELS "dist;cli" TIMEOUT 600 ENVIRONMENT "${FERRY_MPI_ENV}"
    SKIP_RETURN_CODE 77)
  # The user-space delay for kernels without netem (tests/dist/slowlink.sh).
  add_executable(delaylink ${CMAKE_CURRENT_SOURCE_DIR}/dist/delaylink.c)
  add_test(NAME dist_slowlink COMMAND bash ${CMAKE_SOURCE_DIR}/tests/dist/slowlink_test.sh $<TARGET_FILE:pingpong>)
  set_tests_properties(dist_slowlink PROPERTIES LABELS dist TIMEOUT 120 SKIP_RETURN_CODE 77
    ENVIRONMENT "FERRY_DELAYLINK=$<TARGET_FILE:delaylink>")
else()
  add_test(NAME dist_mpi COMMAND sh -c "echo 'SKIP: built without MPI (apt-get install libopenmpi-dev openmpi-bin)'; exit 77")
  set_tests_properties(dist_mpi PROPERTIES LABELS dist SKIP_RETURN_CODE 77)
endif()
