/* The fuzz targets without libFuzzer (normal and ASan builds): runs
 * LLVMFuzzerTestOneInput once on each file named, or on each file of each
 * directory named (the committed seeds and the crash inputs of
 * tests/fuzz/regress), so every crash found stays fixed. A missing
 * directory is skipped; exit status 0 means every input ran, and at
 * least one did. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/fsutil.h"
#include "fuzz_common.h"

static int run_file(const char *path) {
    char *buf;
    size_t len;
    fy_err e;
    if (fy_read_file(path, &buf, &len, &e)) {
        fprintf(stderr, "replay: %s\n", e.msg);
        return -1;
    }
    LLVMFuzzerTestOneInput((const uint8_t *)buf, len);
    free(buf);
    return 0;
}

static int by_name(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Files of dir in name order (a stable order makes a failure repeatable). */
static int run_dir(const char *dir, int *n_run) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    char **names = NULL;
    size_t n = 0, cap = 0;
    for (struct dirent *de; (de = readdir(d));) {
        if (de->d_name[0] == '.') continue;
        if (n == cap && !(names = realloc(names, (cap = cap ? 2 * cap : 64) * sizeof *names))) abort();
        if (!(names[n++] = strdup(de->d_name))) abort();
    }
    closedir(d);
    if (n) qsort(names, n, sizeof *names, by_name);
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        char p[4096];
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        struct stat st;
        if (stat(p, &st) == 0 && S_ISREG(st.st_mode)) rc |= run_file(p), ++*n_run;
        free(names[i]);
    }
    free(names);
    return rc;
}

int main(int argc, char **argv) {
    int rc = 0, n_run = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st)) continue;
        if (S_ISDIR(st.st_mode)) rc |= run_dir(argv[i], &n_run);
        else rc |= run_file(argv[i]), n_run++;
    }
    printf("replay: %d inputs ran%s\n", n_run, rc ? ", some could not be read" : "");
    if (n_run == 0) fprintf(stderr, "replay: no input found (the seeds directory is missing?)\n");
    return rc || n_run == 0 ? 1 : 0;
}
