/* The communicator in a build without MPI (CMake compiles it instead of
 * comm_mpi.c): the one rank of comm.c's one-rank communicator, whose
 * collectives are copies or nothing; it cannot join a job mpirun started. */
#include "parallel/comm_impl.h"

int fy_comm_have_mpi(void) { return 0; }

int fy_comm_net_join(fy_comm *c, fy_err *err) {
    (void)c;
    return fy_fail(err, "this process was started by mpirun, but ferry was built without MPI "
                        "(apt-get install libopenmpi-dev openmpi-bin, then rebuild)");
}
