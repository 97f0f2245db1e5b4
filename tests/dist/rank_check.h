/* CHECK for the tests that run under mpirun: like tests/unit/testutil.h's,
 * but each failure names the rank that saw it. The test sets rank_. */
#ifndef FY_RANK_CHECK_H
#define FY_RANK_CHECK_H

#include <stdio.h>

static int pass, fail, rank_;
#define CHECK(cond, ...)                                                        \
    do {                                                                        \
        if (cond) pass++;                                                       \
        else {                                                                  \
            fail++;                                                             \
            fprintf(stderr, "FAIL rank %d %s:%d: ", rank_, __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                                       \
            fprintf(stderr, "\n");                                              \
        }                                                                       \
    } while (0)

#endif
