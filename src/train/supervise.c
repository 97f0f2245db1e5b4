/* The supervisor of `ferry train --supervise` (supervise.h): forks the
 * trainer, watches its heartbeat, restarts it with backoff and records each
 * restart. It never trains: the child process does. */
#include "train/supervise.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"
#include "core/clock.h"
#include "train/jsonl.h"

static volatile sig_atomic_t g_forward_sig; /* SIGINT/SIGTERM to pass to the child */
static void on_signal(int sig) { g_forward_sig = sig; }

static void sleep_s(double s) {
    struct timespec ts = {(time_t)s, (long)((s - (time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR && !g_forward_sig) {}
}

/* Last time the child showed progress: metrics.jsonl's modification time. */
static double last_beat(const char *run_dir, double since) {
    char p[4200];
    struct stat st;
    snprintf(p, sizeof p, "%s/metrics.jsonl", run_dir);
    if (stat(p, &st) != 0) return since;
    double m = st.st_mtim.tv_sec + st.st_mtim.tv_nsec * 1e-9;
    return m > since ? m : since;
}

/* The newest complete checkpoint's name ("" if none): progress marker. */
static void read_latest(const char *run_dir, char *out, size_t cap) {
    char p[4200];
    snprintf(p, sizeof p, "%s/checkpoints/LATEST", run_dir);
    out[0] = '\0';
    FILE *f = fopen(p, "r");
    if (!f) return;
    if (!fgets(out, (int)cap, f)) out[0] = '\0';
    fclose(f);
}

/* One line of restarts.jsonl per restart. */
static void record(const char *run_dir, int attempt, const char *reason, double backoff) {
    char p[4200];
    snprintf(p, sizeof p, "%s/restarts.jsonl", run_dir);
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "time", round(fy_wall_s() * 1000) / 1000);
    cJSON_AddNumberToObject(j, "restart", attempt);
    cJSON_AddStringToObject(j, "reason", reason);
    cJSON_AddNumberToObject(j, "backoff_s", round(backoff * 1000) / 1000);
    FILE *f = fopen(p, "a");
    if (!f || fy_json_append_line(f, j)) fy_warn("supervisor: cannot write %s: %s", p, strerror(errno));
    if (f) fclose(f);
    cJSON_Delete(j);
}

int fy_supervise(char *const *first_argv, char *const *resume_argv, const fy_supervise_opts *o,
                 fy_err *err) {
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    double backoff = o->backoff_s;
    char before[64], after[64];
    for (int attempt = 0;; attempt++) {
        char *const *argv = attempt == 0 ? first_argv : resume_argv;
        read_latest(o->run_dir, before, sizeof before);
        pid_t pid = fork();
        if (pid < 0) return fy_fail(err, "supervisor: fork failed: %s", strerror(errno));
        if (pid == 0) {
            signal(SIGINT, SIG_DFL);
            signal(SIGTERM, SIG_DFL);
            execv("/proc/self/exe", argv);
            fprintf(stderr, "ferry train: supervisor could not start the trainer: %s\n", strerror(errno));
            _exit(127);
        }
        double start = fy_wall_s();
        int status = 0, hung = 0, forwarded = 0;
        for (;;) {
            pid_t r = waitpid(pid, &status, WNOHANG);
            if (r == pid) break;
            if (r < 0 && errno != EINTR) return fy_fail(err, "supervisor: waitpid: %s", strerror(errno));
            if (g_forward_sig && !forwarded) { /* the user's Ctrl-C: the trainer checkpoints and exits */
                kill(pid, g_forward_sig);
                forwarded = 1;
            }
            if (!forwarded && fy_wall_s() - last_beat(o->run_dir, start) > o->heartbeat_timeout_s) {
                hung = 1;
                kill(pid, SIGKILL);
            }
            sleep_s(0.05);
        }
        if (forwarded) return 130;
        char reason[128];
        if (hung) {
            snprintf(reason, sizeof reason, "hang: no progress for %.0f s", o->heartbeat_timeout_s);
        } else if (WIFEXITED(status)) {
            int code = WEXITSTATUS(status);
            if (code == 0 || code == 1 || code == 2 || code == 130) return code; /* done, or a clean stop */
            snprintf(reason, sizeof reason, "exit code %d", code);
            if (o->fewer_ranks && code == o->unavailable_code) {
                char note[96] = "";
                if (o->fewer_ranks(o->ctx, note, sizeof note, err)) return 1;
                snprintf(reason, sizeof reason, "exit code %d: %s", code, note);
            }
        } else if (WIFSIGNALED(status)) {
            snprintf(reason, sizeof reason, "killed by signal %d (%s)", WTERMSIG(status),
                     strsignal(WTERMSIG(status)));
        } else {
            snprintf(reason, sizeof reason, "stopped (status %d)", status);
        }
        /* Back off harder only while crashes make no progress. */
        read_latest(o->run_dir, after, sizeof after);
        if (strcmp(before, after) != 0) backoff = o->backoff_s;
        if (attempt >= o->max_restarts)
            return fy_fail(err, "supervisor: gave up after %d restarts; last failure: %s", attempt, reason);
        fy_warn("supervisor: trainer %s; restart %d/%d in %.2f s from the newest complete checkpoint",
                reason, attempt + 1, o->max_restarts, backoff);
        record(o->run_dir, attempt + 1, reason, backoff);
        sleep_s(backoff);
        if (g_forward_sig) return 130;
        backoff = backoff * 2 > o->backoff_max_s ? o->backoff_max_s : backoff * 2;
    }
}
