/* File-system helpers (core/fsutil.h): whole-file reads, atomic replacement
 * through a temporary + fsync + rename, directories published whole, mkdir -p,
 * rm -r, path joining and directory locks. */
#include "core/fsutil.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

/* What a non-regular file is, for the refusal. */
static const char *file_kind(mode_t m) {
    return S_ISDIR(m) ? "a directory" : S_ISFIFO(m) ? "a FIFO (named pipe)" : S_ISCHR(m) ? "a character device"
         : S_ISBLK(m) ? "a block device" : S_ISSOCK(m) ? "a socket" : "not a regular file";
}

int fy_open_regular(const char *path, struct stat *st, fy_err *err) {
    /* O_NONBLOCK: opening a FIFO with no writer would otherwise wait forever
     * (a device may block too) before fstat could refuse it. */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return fy_fail(err, "cannot open %s: %s", path, strerror(errno));
    if (fstat(fd, st) != 0) {
        int e = errno;
        close(fd);
        return fy_fail(err, "cannot stat %s: %s", path, strerror(e));
    }
    if (!S_ISREG(st->st_mode)) {
        close(fd);
        return fy_fail(err, "cannot read %s: it is %s, not a regular file", path, file_kind(st->st_mode));
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl != -1) fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    return fd;
}

int fy_read_file_max(const char *path, size_t max, char **buf, size_t *len, fy_err *err) {
    *buf = NULL;
    *len = 0;
    struct stat st;
    int fd = fy_open_regular(path, &st, err);
    if (fd < 0) return -1;
    if (max && (uint64_t)st.st_size > max) {
        close(fd);
        return fy_fail(err, "cannot read %s: %lld bytes, more than the %zu this file may have", path,
                       (long long)st.st_size, max);
    }
    /* st_size is only a hint (/proc reports 0, a file may grow): grow until
     * EOF, or past max. */
    size_t cap = st.st_size > 0 ? (size_t)st.st_size + 1 : 4096, n = 0;
    char *p = malloc(cap);
    if (!p) {
        close(fd);
        return fy_fail(err, "out of memory reading %s (%zu bytes)", path, cap);
    }
    for (;;) {
        if (max && n > max) {
            free(p);
            close(fd);
            return fy_fail(err, "cannot read %s: more than the %zu bytes this file may have", path, max);
        }
        if (n + 1 >= cap) {
            char *q = realloc(p, cap * 2);
            if (!q) {
                free(p);
                close(fd);
                return fy_fail(err, "out of memory reading %s (%zu bytes)", path, cap * 2);
            }
            p = q;
            cap *= 2;
        }
        ssize_t r = read(fd, p + n, cap - 1 - n);
        if (r < 0) {
            if (errno == EINTR) continue;
            int e = errno;
            free(p);
            close(fd);
            return fy_fail(err, "read error in %s at byte %zu: %s", path, n, strerror(e));
        }
        if (r == 0) break;
        n += (size_t)r;
    }
    close(fd);
    p[n] = '\0';
    *buf = p;
    *len = n;
    return 0;
}

int fy_read_file(const char *path, char **buf, size_t *len, fy_err *err) {
    return fy_read_file_max(path, 0, buf, len, err);
}

int fy_path_join(char *out, size_t cap, const char *dir, const char *name, fy_err *err) {
    size_t dl = strlen(dir);
    const char *sep = (dl == 0 || dir[dl - 1] == '/') ? "" : "/";
    int n = snprintf(out, cap, "%s%s%s", dir, sep, name);
    if (n < 0 || (size_t)n >= cap)
        return fy_fail(err, "path too long: %s/%s (limit %zu bytes)", dir, name, cap - 1);
    return 0;
}

int fy_path_dirname(char *out, size_t cap, const char *path, fy_err *err) {
    const char *slash = strrchr(path, '/');
    size_t n;
    if (!slash) { path = "."; n = 1; }
    else if (slash == path) n = 1;          /* "/x" -> "/" */
    else n = (size_t)(slash - path);
    if (n + 1 > cap) return fy_fail(err, "path too long: %s (limit %zu bytes)", path, cap - 1);
    memcpy(out, path, n);
    out[n] = '\0';
    return 0;
}

int fy_file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

int fy_fsync_dir(const char *dir, fy_err *err) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return fy_fail(err, "cannot open directory %s to fsync: %s", dir, strerror(errno));
    int rc = fsync(fd);
    int e = errno;
    close(fd);
    if (rc != 0 && e != EINVAL)
        return fy_fail(err, "fsync of directory %s failed: %s", dir, strerror(e));
    return 0;
}

int fy_mkdir_p(const char *path, fy_err *err) {
    char buf[FY_PATH_MAX];
    size_t n = strlen(path);
    if (n == 0) return fy_fail(err, "mkdir: empty path");
    if (n >= sizeof buf) return fy_fail(err, "mkdir: path too long: %s", path);
    memcpy(buf, path, n + 1);
    /* Visit each prefix ending before a '/', then the whole path. */
    for (size_t i = 1; i <= n; i++) {
        if (i < n && buf[i] != '/') continue;
        char saved = buf[i];
        buf[i] = '\0';
        if (mkdir(buf, 0755) != 0) {
            int e = errno;
            struct stat st;
            if (stat(buf, &st) != 0) {
                buf[i] = saved;
                return fy_fail(err, "cannot create directory %.*s (making %s): %s",
                               (int)i, path, path, strerror(e));
            }
            if (!S_ISDIR(st.st_mode)) {
                buf[i] = saved;
                return fy_fail(err, "cannot create directory %s: %.*s exists and is not a directory",
                               path, (int)i, path);
            }
        }
        buf[i] = saved;
    }
    return 0;
}

int fy_atomic_open(fy_atomic_file *a, const char *path, fy_err *err) {
    a->fd = -1;
    a->renamed = 0;
    a->tmp[0] = '\0';
    size_t n = strlen(path);
    if (n == 0) return fy_fail(err, "cannot write a file with an empty path");
    if (n >= sizeof a->path) return fy_fail(err, "path too long: %s", path);
    memcpy(a->path, path, n + 1);
    int m = snprintf(a->tmp, sizeof a->tmp, "%s.tmp.%ld", path, (long)getpid());
    if (m < 0 || (size_t)m >= sizeof a->tmp) {
        a->tmp[0] = '\0';
        return fy_fail(err, "path too long: %s", path);
    }
    /* O_TRUNC without O_EXCL: a stale temp left by a crashed process with the
     * same pid (common in containers) is simply overwritten. */
    a->fd = open(a->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (a->fd < 0) {
        int e = errno;
        a->tmp[0] = '\0';   /* nothing of ours to remove */
        return fy_fail(err, "cannot create temporary file for %s: %s", path, strerror(e));
    }
    return 0;
}

int fy_atomic_write(fy_atomic_file *a, const void *data, size_t len, fy_err *err) {
    const char *p = data;
    while (len > 0) {
        /* Linux caps one write at ~2 GiB; loop for partial writes anyway. */
        size_t chunk = len > ((size_t)1 << 30) ? ((size_t)1 << 30) : len;
        ssize_t w = write(a->fd, p, chunk);
        if (w < 0) {
            if (errno == EINTR) continue;
            int e = errno;
            off_t at = lseek(a->fd, 0, SEEK_CUR);
            return fy_fail(err, "write error in %s at byte %lld: %s", a->tmp,
                           (long long)at, strerror(e));
        }
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

int fy_atomic_commit(fy_atomic_file *a, fy_err *err) {
    if (fsync(a->fd) != 0) {
        int e = errno;
        fy_atomic_abort(a);
        return fy_fail(err, "fsync of %s failed: %s", a->path, strerror(e));
    }
    int rc = close(a->fd);
    a->fd = -1;
    if (rc != 0) {
        int e = errno;
        fy_atomic_abort(a);
        return fy_fail(err, "close of %s failed: %s", a->path, strerror(e));
    }
    if (rename(a->tmp, a->path) != 0) {
        int e = errno;
        fy_atomic_abort(a);
        return fy_fail(err, "cannot rename temporary file over %s: %s", a->path, strerror(e));
    }
    a->renamed = 1;
    char dir[FY_PATH_MAX];
    if (fy_path_dirname(dir, sizeof dir, a->path, err) != 0) return -1;
    return fy_fsync_dir(dir, err);
}

void fy_atomic_abort(fy_atomic_file *a) {
    if (a->fd >= 0) close(a->fd);
    a->fd = -1;
    if (!a->renamed && a->tmp[0]) unlink(a->tmp);
    a->tmp[0] = '\0';
}

int fy_write_file_atomic(const char *path, const void *data, size_t len, fy_err *err) {
    fy_atomic_file a;
    if (fy_atomic_open(&a, path, err) != 0) return -1;
    if (fy_atomic_write(&a, data, len, err) != 0) {
        fy_atomic_abort(&a);
        return -1;
    }
    return fy_atomic_commit(&a, err);
}

int fy_dir_tmp_beside(const char *out, char *tmp, size_t cap, fy_err *err) {
    size_t n = strlen(out);
    while (n > 1 && out[n - 1] == '/') n--;
    if (n + 12 >= cap) return fy_fail(err, "%s: path too long", out);
    snprintf(tmp, cap, "%.*s.tmp-XXXXXX", (int)n, out);
    if (!mkdtemp(tmp)) return fy_fail(err, "%s: cannot create a temporary directory: %s", tmp, strerror(errno));
    chmod(tmp, 0755);   /* mkdtemp's 0700 would stay on the published directory */
    return 0;
}

int fy_dir_publish(const char *tmp, const char *out, fy_err *err) {
    char parent[FY_PATH_MAX];
    if (fy_file_exists(out)) return fy_fail(err, "%s appeared while it was written: not overwriting it", out);
    if (rename(tmp, out)) return fy_fail(err, "rename %s -> %s: %s", tmp, out, strerror(errno));
    if (fy_path_dirname(parent, sizeof parent, out, err)) return -1;
    return fy_fsync_dir(parent, err);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path) == 0 ? 0 : -1;
}

int fy_remove_tree(const char *path, fy_err *err) {
    if (nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS) != 0)
        return fy_fail(err, "cannot remove %s: %s", path, strerror(errno));
    return 0;
}

int fy_path_absolute(char *out, size_t cap, const char *path, fy_err *err) {
    if (path[0] == '/') {
        if (snprintf(out, cap, "%s", path) >= (int)cap) return fy_fail(err, "path too long: %s", path);
        return 0;
    }
    char cwd[FY_PATH_MAX];
    if (!getcwd(cwd, sizeof cwd))
        return fy_fail(err, "%s: cannot read the current directory: %s", path, strerror(errno));
    while (path[0] == '.' && path[1] == '/') {
        path += 2;
        while (path[0] == '/') path++;
    }
    if (!strcmp(path, ".") || !path[0])
        return snprintf(out, cap, "%s", cwd) >= (int)cap ? fy_fail(err, "path too long: %s", cwd) : 0;
    return fy_path_join(out, cap, cwd, path, err);
}

void fy_host_name(char *out, size_t cap) {
    if (gethostname(out, cap) != 0 || !out[0]) snprintf(out, cap, "unknown");
    out[cap - 1] = '\0';
}

/* The owner a lock file names ("pid PID host HOST"); pid 0 when none. */
static void read_owner(int fd, fy_lock_owner *o) {
    char text[320];
    memset(o, 0, sizeof *o);
    ssize_t n = pread(fd, text, sizeof text - 1, 0);
    if (n <= 0) return;
    text[n] = '\0';
    if (sscanf(text, "pid %ld host %255s", &o->pid, o->host) != 2 || o->pid <= 0) memset(o, 0, sizeof *o);
}

int fy_dir_lock_take(const char *dir, const char *name, fy_dir_lock *l, fy_lock_owner *prev, fy_err *err) {
    char path[FY_PATH_MAX];
    l->fd = -1;
    memset(prev, 0, sizeof *prev);
    if (fy_path_join(path, sizeof path, dir, name, err)) return -1;
    /* Not close-on-exec: a child started with exec (a supervisor's trainer)
     * shares the open file, and so the lock, should its parent die. */
    int fd = open(path, O_RDWR | O_CREAT, 0644);
    if (fd < 0) return fy_fail(err, "cannot open the lock file %s: %s", path, strerror(errno));
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        read_owner(fd, prev);
        close(fd);
        if (e == EWOULDBLOCK) return 1;
        return fy_fail(err, "cannot lock %s: %s", path, strerror(e));
    }
    read_owner(fd, prev); /* what a process that ended without releasing left */
    char host[256], text[320];
    fy_host_name(host, sizeof host);
    int n = snprintf(text, sizeof text, "pid %ld host %s\n", (long)getpid(), host);
    if (ftruncate(fd, 0) != 0 || pwrite(fd, text, (size_t)n, 0) != n) {
        int e = errno;
        close(fd);
        return fy_fail(err, "cannot write the lock file %s: %s", path, strerror(e));
    }
    l->fd = fd;
    return 0;
}

void fy_dir_lock_release(fy_dir_lock *l) {
    if (l->fd < 0) return;
    if (ftruncate(l->fd, 0) != 0) { /* the next owner then reports this one as gone: harmless */ }
    close(l->fd); /* releases the flock */
    l->fd = -1;
}
