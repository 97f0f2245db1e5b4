#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

int fy_test_pass, fy_test_fail;

double fy_relerr(double a, double b, double floor_) {
    double d = fabs(b) > floor_ ? fabs(b) : floor_;
    return fabs(a - b) / d;
}

const char *fy_test_tmpdir(const char *test_name) {
    static char path[1024];
    const char *base = getenv("FERRY_TEST_TMP");
    if (!base) base = "/tmp";
    mkdir(base, 0755);
    snprintf(path, sizeof path, "%s/%s.%d", base, test_name, (int)getpid());
    mkdir(path, 0755);
    return path;
}

int fy_test_finish(const char *name) {
    printf("%s: %d passed, %d failed\n", name, fy_test_pass, fy_test_fail);
    /* A test that checked nothing proved nothing: a skip returns 77 itself,
     * before it gets here. */
    if (fy_test_pass + fy_test_fail == 0) {
        printf("%s: FAILED: no check ran\n", name);
        return 1;
    }
    return fy_test_fail ? 1 : 0;
}
