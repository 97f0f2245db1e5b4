#include "core/clock.h"

#include <time.h>

static double seconds(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

double fy_now_s(void) { return seconds(CLOCK_MONOTONIC); }
double fy_wall_s(void) { return seconds(CLOCK_REALTIME); }
