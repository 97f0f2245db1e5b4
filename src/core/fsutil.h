/* File-system helpers for crash-safe artifacts: whole-file reads, atomic
 * replacement (temp file + fsync + rename + directory fsync), mkdir -p.
 *
 * Atomic replacement is what keeps a checkpoint usable when the process dies
 * at any instant (docs/DESIGN.md §3, §5): readers see either the old file or the
 * complete new one, never a prefix. */
#ifndef FY_FSUTIL_H
#define FY_FSUTIL_H

#include <stddef.h>

#include "core/err.h"

#define FY_PATH_MAX 4096

/* Reads the whole file into a malloc'd buffer with a NUL appended (not
 * counted in *len), so text can be used as a C string. Caller frees.
 * Only regular files (symlinks to them too): a FIFO, device, socket or
 * directory is refused at once, naming what it is, rather than blocking
 * or reading forever (docs/RELIABILITY.md, "Hostile input"). */
int fy_read_file(const char *path, char **buf, size_t *len, fy_err *err);
/* The same, refusing a file of more than max bytes (0: no limit) before
 * reading it, and one that grows past max while it is read. */
int fy_read_file_max(const char *path, size_t max, char **buf, size_t *len, fy_err *err);

/* Opens path read-only (close-on-exec) when it is a regular file, filling
 * *st; else fails without blocking, as fy_read_file does. Returns the
 * descriptor, or -1 with err set. For readers that mmap or stream. */
struct stat;
int fy_open_regular(const char *path, struct stat *st, fy_err *err);

/* Replaces `path` with `data` atomically. On any failure the temporary is
 * removed and an existing `path` is left as it was. */
int fy_write_file_atomic(const char *path, const void *data, size_t len, fy_err *err);

/* fsync of a directory, making a rename or create inside it durable.
 * File systems that cannot fsync a directory (EINVAL) count as success. */
int fy_fsync_dir(const char *dir, fy_err *err);

/* Creates `path` and missing parents (mode 0755); an existing directory is
 * fine, an existing non-directory is an error naming it. */
int fy_mkdir_p(const char *path, fy_err *err);

/* out = dir + "/" + name (no doubled slash; empty dir gives name). Fails,
 * naming both parts, when the result does not fit in `cap` bytes. */
int fy_path_join(char *out, size_t cap, const char *dir, const char *name, fy_err *err);

/* The directory part of `path` ("." when it has none, "/" for "/x"). */
int fy_path_dirname(char *out, size_t cap, const char *path, fy_err *err);

/* `path` made absolute: as it is when it starts with '/', else the current
 * directory + "/" + path ("./" prefixes dropped; symlinks are kept as
 * named, not resolved). Paths recorded in a run must not depend on the
 * directory a command was started in. */
int fy_path_absolute(char *out, size_t cap, const char *path, fy_err *err);

/* 1 when something exists at `path` (file, directory, ...), else 0. */
int fy_file_exists(const char *path);

/* Directories published whole: fy_dir_tmp_beside makes a fresh directory
 * next to `out` ("<out>.tmp-XXXXXX", mode 0755), the caller fills it, and
 * fy_dir_publish renames it to `out` (refused if `out` appeared meanwhile)
 * and syncs out's parent; on failure the caller removes it with
 * fy_remove_tree, so nothing half-written is ever under `out`. */
int fy_dir_tmp_beside(const char *out, char *tmp, size_t cap, fy_err *err);
int fy_dir_publish(const char *tmp, const char *out, fy_err *err);
/* rm -r of a tree this process wrote; symlinks are not followed. */
int fy_remove_tree(const char *path, fy_err *err);

/* An advisory lock on a directory: flock of DIR/NAME, held until
 * fy_dir_lock_release or the end of the process (a crash or SIGKILL
 * releases it too). Children share it: the descriptor stays open across
 * fork and exec, so a supervisor's trainer keeps the lock should the
 * supervisor die. The file names its owner, "pid PID host HOST", for
 * messages. Readers need no lock. */
typedef struct fy_dir_lock {
    int fd;                      /* -1: not held */
} fy_dir_lock;
typedef struct fy_lock_owner {
    long pid;                    /* 0: unknown (the file names nobody) */
    char host[256];
} fy_lock_owner;
/* 0: taken; *prev then names the owner the file still named (pid 0: none),
 * one that ended without releasing it (a stale lock, now taken over).
 * 1: another open file holds it (*prev: its owner as the file says; pid 0
 * while it is still writing it); nothing is taken. -1: an error (err). */
int fy_dir_lock_take(const char *dir, const char *name, fy_dir_lock *l, fy_lock_owner *prev, fy_err *err);
/* Empties the file (no owner named) and releases the lock; a lock not held
 * (fd -1) is left alone. */
void fy_dir_lock_release(fy_dir_lock *l);
/* This machine's host name as the lock file writes it. */
void fy_host_name(char *out, size_t cap);

/* Streaming form of fy_write_file_atomic, for files too large to build in
 * memory (safetensors): open, write any number of times, then commit.
 * After a failed fy_atomic_write the caller calls fy_atomic_abort; a failed
 * commit has already cleaned up (abort after it is harmless). */
typedef struct fy_atomic_file {
    int fd;                      /* -1 once closed */
    int renamed;                 /* the temp already became `path` */
    char path[FY_PATH_MAX];
    char tmp[FY_PATH_MAX];       /* path + ".tmp.<pid>" */
} fy_atomic_file;

int fy_atomic_open(fy_atomic_file *a, const char *path, fy_err *err);
int fy_atomic_write(fy_atomic_file *a, const void *data, size_t len, fy_err *err);
/* fsync, close, rename over `path`, fsync the directory. */
int fy_atomic_commit(fy_atomic_file *a, fy_err *err);
/* Closes and removes the temporary; `path` is untouched. */
void fy_atomic_abort(fy_atomic_file *a);

#endif
