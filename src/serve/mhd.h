/* libmicrohttpd, opened when ferry serve starts rather than linked into
 * the binary: a process that never serves (train, generate, ...) then never
 * loads it, nor gnutls and the libraries behind that, whose loading alone
 * raised every command's peak RSS by ~2.9 MB (docs/PERFORMANCE.md, "Cold
 * start and memory"). Defines fy_mhd, the table of the few MHD functions
 * serve/http.c calls, and fy_mhd_open, which fills it once.
 *
 * Including this header after <microhttpd.h> turns each call MHD_f(...)
 * into fy_mhd.f(...): http.c reads as plain libmicrohttpd code. */
#ifndef FY_SERVE_MHD_H
#define FY_SERVE_MHD_H

#include <stdint.h>

#include <microhttpd.h>

#include "core/err.h"

struct fy_mhd_table {
    struct MHD_Daemon *(*start_daemon)(unsigned int flags, uint16_t port, MHD_AcceptPolicyCallback apc,
                                       void *apc_cls, MHD_AccessHandlerCallback dh, void *dh_cls, ...);
    void (*stop_daemon)(struct MHD_Daemon *daemon);
    MHD_socket (*quiesce_daemon)(struct MHD_Daemon *daemon);
    const union MHD_DaemonInfo *(*get_daemon_info)(struct MHD_Daemon *daemon, enum MHD_DaemonInfoType type, ...);
    const union MHD_ConnectionInfo *(*get_connection_info)(struct MHD_Connection *c,
                                                           enum MHD_ConnectionInfoType type, ...);
    const char *(*lookup_connection_value)(struct MHD_Connection *c, enum MHD_ValueKind kind, const char *key);
    struct MHD_Response *(*create_response_from_buffer)(size_t size, void *buffer, enum MHD_ResponseMemoryMode mode);
    struct MHD_Response *(*create_response_from_callback)(uint64_t size, size_t block_size,
                                                          MHD_ContentReaderCallback crc, void *crc_cls,
                                                          MHD_ContentReaderFreeCallback crfc);
    enum MHD_Result (*add_response_header)(struct MHD_Response *r, const char *header, const char *content);
    enum MHD_Result (*queue_response)(struct MHD_Connection *c, unsigned int status, struct MHD_Response *r);
    void (*destroy_response)(struct MHD_Response *r);
};
extern struct fy_mhd_table fy_mhd;

/* Loads libmicrohttpd and fills fy_mhd (once; later calls return at once).
 * Fails, saying what to install, where the library or a function is
 * missing. Thread-safe. */
int fy_mhd_open(fy_err *err);

#ifndef FY_MHD_NO_RENAME
#define MHD_start_daemon fy_mhd.start_daemon
#define MHD_stop_daemon fy_mhd.stop_daemon
#define MHD_quiesce_daemon fy_mhd.quiesce_daemon
#define MHD_get_daemon_info fy_mhd.get_daemon_info
#define MHD_get_connection_info fy_mhd.get_connection_info
#define MHD_lookup_connection_value fy_mhd.lookup_connection_value
#define MHD_create_response_from_buffer fy_mhd.create_response_from_buffer
#define MHD_create_response_from_callback fy_mhd.create_response_from_callback
#define MHD_add_response_header fy_mhd.add_response_header
#define MHD_queue_response fy_mhd.queue_response
#define MHD_destroy_response fy_mhd.destroy_response
#endif

#endif
