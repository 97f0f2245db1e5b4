/* fy_mhd (serve/mhd.h): libmicrohttpd opened with dlopen at the first
 * server start. FY_MHD_SONAME (set by CMakeLists.txt from the library it
 * found, e.g. "libmicrohttpd.so.12") is the file the dynamic loader looks
 * up, so the same library the build compiled against is the one that
 * runs. */
#define FY_MHD_NO_RENAME
#include "serve/mhd.h"

#include <dlfcn.h>
#include <pthread.h>
#include <string.h>

#ifndef FY_MHD_SONAME
#define FY_MHD_SONAME "libmicrohttpd.so.12"
#endif

struct fy_mhd_table fy_mhd;

static pthread_mutex_t open_mu = PTHREAD_MUTEX_INITIALIZER;
static void *lib;

/* The symbol NAME of lib into *slot (a function pointer of the table). */
static int load(void *slot, const char *name, fy_err *err) {
    void *f = dlsym(lib, name);
    if (!f) return fy_fail(err, "%s has no %s: libmicrohttpd too old? (needs 0.9.71 or later)", FY_MHD_SONAME, name);
    memcpy(slot, &f, sizeof f); /* POSIX: a data pointer from dlsym holds a function's address */
    return 0;
}

static int open_locked(fy_err *err) {
    if (lib) return 0;
    void *h = dlopen(FY_MHD_SONAME, RTLD_NOW | RTLD_LOCAL);
    if (!h)
        return fy_fail(err, "cannot load %s, which ferry serve needs: %s (Debian: apt install libmicrohttpd12)",
                       FY_MHD_SONAME, dlerror());
    lib = h;
    struct fy_mhd_table t;
    if (load(&t.start_daemon, "MHD_start_daemon", err) || load(&t.stop_daemon, "MHD_stop_daemon", err) ||
        load(&t.quiesce_daemon, "MHD_quiesce_daemon", err) || load(&t.get_daemon_info, "MHD_get_daemon_info", err) ||
        load(&t.get_connection_info, "MHD_get_connection_info", err) ||
        load(&t.lookup_connection_value, "MHD_lookup_connection_value", err) ||
        load(&t.create_response_from_buffer, "MHD_create_response_from_buffer", err) ||
        load(&t.create_response_from_callback, "MHD_create_response_from_callback", err) ||
        load(&t.add_response_header, "MHD_add_response_header", err) ||
        load(&t.queue_response, "MHD_queue_response", err) ||
        load(&t.destroy_response, "MHD_destroy_response", err)) {
        dlclose(h);
        lib = NULL;
        return -1;
    }
    fy_mhd = t;
    return 0;
}

int fy_mhd_open(fy_err *err) {
    pthread_mutex_lock(&open_mu);
    int rc = open_locked(err);
    pthread_mutex_unlock(&open_mu);
    return rc;
}
