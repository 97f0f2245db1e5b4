/* Build: mpicc -std=c11 -O2 -Wall -Wextra -o pingpong tests/dist/pingpong.c
 *
 * pingpong: a two-rank MPI round-trip probe, used by tests/dist/slowlink_test.sh
 * to check that tests/dist/slowlink.sh really slows the link between ranks.
 *
 * Rank 0 sends a message of N bytes to rank 1, which sends it straight back;
 * that is one round trip.  For each size rank 0 prints one line:
 *
 *   pingpong size=<bytes> reps=<n> rtt_ms=<median round trip> mbit_s=<bw>
 *
 * bw counts the payload of both directions (2*N bytes per round trip) over
 * the median round-trip time, so for a large message it approximates the
 * one-way link rate of a symmetric link.  The median (not the mean) is used
 * so that one slow repetition on a busy 2-core box does not skew the result;
 * one untimed warm-up round trip per size lets Open MPI set up its TCP
 * connections first.
 *
 * Optional arguments: a list of sizes in bytes (default: 8 4194304), and the
 * environment variables PINGPONG_REPS (default 5) and PINGPONG_VERBOSE=1
 * (also print every repetition's round-trip time, in order).
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank = 0, nranks = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);
    if (nranks != 2) {
        if (rank == 0)
            fprintf(stderr, "pingpong: needs exactly 2 ranks, got %d\n", nranks);
        MPI_Finalize();
        return 2;
    }

    long default_sizes[] = {8, 4L << 20};
    int nsizes = argc > 1 ? argc - 1 : 2;
    long *sizes = malloc(sizeof(long) * (size_t)nsizes);
    if (!sizes)
        MPI_Abort(MPI_COMM_WORLD, 1);
    for (int i = 0; i < nsizes; i++) {
        sizes[i] = argc > 1 ? strtol(argv[i + 1], NULL, 10) : default_sizes[i];
        if (sizes[i] < 1 || sizes[i] > (1L << 30)) {
            if (rank == 0)
                fprintf(stderr, "pingpong: bad size '%s'\n", argv[i + 1]);
            MPI_Abort(MPI_COMM_WORLD, 2);
        }
    }
    const char *reps_env = getenv("PINGPONG_REPS");
    int reps = reps_env ? atoi(reps_env) : 5;
    if (reps < 1)
        reps = 1;
    const char *verbose_env = getenv("PINGPONG_VERBOSE");
    int verbose = verbose_env && *verbose_env && *verbose_env != '0';

    long maxsize = 0;
    for (int i = 0; i < nsizes; i++)
        if (sizes[i] > maxsize)
            maxsize = sizes[i];
    char *buf = malloc((size_t)maxsize);
    double *times = malloc(sizeof(double) * (size_t)reps);
    if (!buf || !times)
        MPI_Abort(MPI_COMM_WORLD, 1);
    memset(buf, 0x5a, (size_t)maxsize);

    for (int s = 0; s < nsizes; s++) {
        int n = (int)sizes[s];
        /* rep -1 is the untimed warm-up */
        for (int r = -1; r < reps; r++) {
            MPI_Barrier(MPI_COMM_WORLD);
            double t0 = MPI_Wtime();
            if (rank == 0) {
                MPI_Send(buf, n, MPI_BYTE, 1, s, MPI_COMM_WORLD);
                MPI_Recv(buf, n, MPI_BYTE, 1, s, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            } else {
                MPI_Recv(buf, n, MPI_BYTE, 0, s, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
                MPI_Send(buf, n, MPI_BYTE, 0, s, MPI_COMM_WORLD);
            }
            double dt = MPI_Wtime() - t0;
            if (r >= 0)
                times[r] = dt;
        }
        if (rank == 0) {
            if (verbose) {
                printf("pingpong size=%d times_ms", n);
                for (int r = 0; r < reps; r++)
                    printf(" %.3f", times[r] * 1e3);
                printf("\n");
            }
            qsort(times, (size_t)reps, sizeof(double), cmp_double);
            double med = reps % 2 ? times[reps / 2]
                                  : 0.5 * (times[reps / 2 - 1] + times[reps / 2]);
            double mbit = med > 0 ? 2.0 * (double)n * 8.0 / med / 1e6 : 0.0;
            printf("pingpong size=%d reps=%d rtt_ms=%.3f mbit_s=%.1f\n", n, reps,
                   med * 1e3, mbit);
            fflush(stdout);
        }
    }

    free(times);
    free(buf);
    free(sizes);
    MPI_Finalize();
    return 0;
}
