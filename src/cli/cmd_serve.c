/* ferry serve --model DIR: the OpenAI-compatible HTTP server
 * (docs/SERVING.md). Listens first (GET /health answers 503 "loading"),
 * loads the model (a ferry run or checkpoint directory, or a Hugging Face
 * directory), starts the continuous-batching scheduler (serve/sched.h) and
 * opens the model routes (serve/http.h). SIGINT/SIGTERM: stop accepting,
 * let running requests finish for --grace seconds (then cut them), exit 0.
 * Signals are taken by a sigwait thread: no handler runs inside library
 * code. FERRY_API_KEY may hold the API key (only src/cli reads the
 * environment). */
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "core/fsutil.h"
#include "core/log.h"
#include "model/decode.h"
#include "model/lora.h"
#include "io/chat.h"
#include "serve/http.h"
#include "serve/sched.h"

#define MAX_LORA 64 /* --lora adapters at most */

typedef struct serve_flags {
    const char *lora[MAX_LORA]; /* each --lora NAME=DIR or DIR */
    int n_lora;
    const char *model, *one_lora, *host, *backend, *weights, *api_key, *api_key_file, *chat_template, *alias;
    int port, slots, ctx, kv_tokens, max_tokens, max_connections, max_per_ip, queue, no_mmap;
    double max_body, timeout, grace;
} serve_flags;

/* The signal thread: waits for SIGINT/SIGTERM and posts `signalled`; while
 * the model is still loading it ends the process at once. */
typedef struct sigwaiter {
    sigset_t set;
    sem_t signalled;
    atomic_int loading, sig;
} sigwaiter;

static void *sig_main(void *arg) {
    sigwaiter *w = arg;
    int sig = 0;
    if (sigwait(&w->set, &sig)) return NULL;
    atomic_store(&w->sig, sig);
    if (atomic_load(&w->loading)) {
        fprintf(stderr, "ferry serve: %s while loading: exiting\n", sig == SIGINT ? "interrupted" : "terminated");
        _exit(0);
    }
    sem_post(&w->signalled);
    return NULL;
}

/* --api-key, else --api-key-file (first line), else FERRY_API_KEY. */
static int api_key(const serve_flags *f, char *key, size_t cap, fy_err *err) {
    key[0] = 0;
    if (f->api_key && f->api_key_file) return fy_fail(err, "give --api-key or --api-key-file, not both");
    const char *k = f->api_key ? f->api_key : getenv("FERRY_API_KEY");
    if (f->api_key_file) {
        char *text = NULL;
        size_t len = 0;
        if (fy_read_file(f->api_key_file, &text, &len, err)) return fy_wrap(err, "--api-key-file: ");
        text[strcspn(text, "\r\n")] = 0;
        snprintf(key, cap, "%s", text);
        free(text);
        if (!key[0]) return fy_fail(err, "--api-key-file %s: the first line is empty", f->api_key_file);
        return 0;
    }
    if (k && strlen(k) >= cap) return fy_fail(err, "the API key is too long (at most %zu bytes)", cap - 1);
    snprintf(key, cap, "%s", k ? k : "");
    return 0;
}

/* --alias, else the model directory's last name. */
static void model_id(const serve_flags *f, char *id, size_t cap) {
    if (f->alias) {
        snprintf(id, cap, "%s", f->alias);
        return;
    }
    char p[FY_PATH_MAX];
    snprintf(p, sizeof p, "%s", f->model);
    size_t n = strlen(p);
    while (n > 1 && p[n - 1] == '/') p[--n] = 0;
    const char *base = strrchr(p, '/');
    snprintf(id, cap, "%s", base ? base + 1 : p);
}

static int parse_flags(int argc, char **argv, serve_flags *f, fy_err *err) {
    fy_arg spec[] = {
        {"--model", "-m", FY_ARG_STR, &f->model, "DIR", "run, checkpoint or Hugging Face directory (required)", 0, 0, 0},
        {"--lora", NULL, FY_ARG_STR, &f->one_lora, "[NAME=]DIR", "serve LoRA adapters (a ferry LoRA run or a PEFT directory) beside the base, unmerged, as model NAME (default: DIR's last name); repeatable", 0, 0, 0},
        {"--host", NULL, FY_ARG_STR, &f->host, "ADDR", "address to listen on (default 127.0.0.1; 0.0.0.0 or :: for all)", 0, 0, 0},
        {"--port", NULL, FY_ARG_INT, &f->port, "N", "port (default 8080; 0 = any free port, printed)", 0, 65535, 0},
        {"--backend", "-b", FY_ARG_STR, &f->backend, "SPEC", "cpu (default), opencl, ... (see ferry devices)", 0, 0, 0},
        {"--weights", NULL, FY_ARG_STR, &f->weights, "FMT", "weights: f32, bf16, f16, q8_0 or q4_0; default: the checkpoint's own (f32, or a weights image's format)", 0, 0, 0},
        {"--no-mmap", NULL, FY_ARG_BOOL, &f->no_mmap, NULL, "a weights image is copied into memory, not mapped and read in place (slower start; huge pages)", 0, 0, 0},
        {"--slots", NULL, FY_ARG_INT, &f->slots, "N", "requests decoded together (default 4)", 1, 1024, 0},
        {"--ctx", NULL, FY_ARG_INT, &f->ctx, "N", "prompt + max_tokens per request at most (default: the model's max_position_embeddings)", 1, 1 << 24, 0},
        {"--kv-tokens", NULL, FY_ARG_INT, &f->kv_tokens, "N", "KV cache positions shared by all slots (default slots x ctx)", 0, 1 << 30, 0},
        {"--max-tokens", NULL, FY_ARG_INT, &f->max_tokens, "N", "max_tokens of a request that gives none (default: fill the context)", 0, 1 << 24, 0},
        {"--queue", NULL, FY_ARG_INT, &f->queue, "N", "requests waiting for a slot at most; more get 503 (default 256)", 1, 1 << 20, 0},
        {"--api-key", NULL, FY_ARG_STR, &f->api_key, "KEY", "require 'Authorization: Bearer KEY' (or set FERRY_API_KEY)", 0, 0, 0},
        {"--api-key-file", NULL, FY_ARG_STR, &f->api_key_file, "FILE", "the API key is the first line of FILE", 0, 0, 0},
        {"--chat-template", NULL, FY_ARG_STR, &f->chat_template, "NAME|FILE", "deepseek3, chatml, ferry, or a file with one of their Jinja texts (default: the model's)", 0, 0, 0},
        {"--alias", NULL, FY_ARG_STR, &f->alias, "NAME", "the model's name in the API (default: the directory's name)", 0, 0, 0},
        {"--max-body", NULL, FY_ARG_FLOAT, &f->max_body, "BYTES", "request bodies above this get 413 (default 4194304)", 1024, 1e12, 0},
        {"--max-connections", NULL, FY_ARG_INT, &f->max_connections, "N", "open connections at most, a thread each (default 256)", 1, 65536, 0},
        {"--max-per-ip", NULL, FY_ARG_INT, &f->max_per_ip, "N", "connections per client address at most (default 0 = no limit)", 0, 65536, 0},
        {"--timeout", NULL, FY_ARG_FLOAT, &f->timeout, "S", "a request must arrive whole within S seconds; stalled readers and idle connections are dropped after S (default 30)", 0.1, 86400, 0},
        {"--grace", NULL, FY_ARG_FLOAT, &f->grace, "S", "on SIGTERM/SIGINT, running requests may finish for S seconds (default 10)", 0, 86400, 0},
    };
    char *pos[1];
    int npos, n_rest, n_spec = (int)(sizeof spec / sizeof spec[0]);
    char **rest = malloc((size_t)(argc + 1) * sizeof *rest);
    if (!rest) return fy_fail(err, "out of memory");
    int r = fy_args_take_repeated(argc, argv, spec, n_spec, "--lora", f->lora, MAX_LORA, &f->n_lora, rest, &n_rest, err);
    if (!r) r = fy_args_parse(n_rest, rest, spec, n_spec, "serve", "--model DIR [options]",
                          "Serve a model over the OpenAI HTTP API (/v1/completions, /v1/chat/completions, ...)\n"
                          "with continuous batching, and a chat page at /. See docs/SERVING.md.",
                          pos, 0, &npos, err);
    free(rest);
    if (r) return r;
    if (!f->model) return fy_fail(err, "needs --model DIR");
    return 0;
}

/* The adapters served beside the base: their API entries and names. */
typedef struct lora_set {
    fy_api_adapter ad[MAX_LORA];
    char name[MAX_LORA][256];
    int n;
} lora_set;

/* --lora NAME=DIR (NAME without a '/') or DIR, named after its last name
 * like --model; names must differ from each other and from the base's. */
static int lora_name(const char *spec, const char *base_id, const lora_set *ls, char *name, const char **dir,
                     fy_err *err) {
    const char *eq = strchr(spec, '=');
    if (eq && eq > spec && !memchr(spec, '/', (size_t)(eq - spec))) {
        snprintf(name, 256, "%.*s", (int)(eq - spec) < 255 ? (int)(eq - spec) : 255, spec);
        *dir = eq + 1;
    } else {
        serve_flags g = {.model = spec};
        model_id(&g, name, 256);
        *dir = spec;
    }
    if (!name[0] || !**dir) return fy_fail(err, "--lora %s: needs NAME=DIR or DIR", spec);
    if (!strcmp(name, base_id)) return fy_fail(err, "--lora %s: the name '%s' is the base model's", spec, name);
    for (int i = 0; i < ls->n; i++)
        if (!strcmp(name, ls->name[i])) return fy_fail(err, "--lora %s: the name '%s' is given twice", spec, name);
    return 0;
}

static int load_loras(const serve_flags *f, const char *base_id, fy_loaded *l, lora_set *ls, fy_err *err) {
    for (int i = 0; i < f->n_lora; i++) {
        const char *dir;
        fy_lora_unmerged *u = NULL;
        if (lora_name(f->lora[i], base_id, ls, ls->name[ls->n], &dir, err) || fy_cli_load_lora(l, dir, &u, err))
            return -1;
        ls->ad[ls->n] = (fy_api_adapter){ls->name[ls->n], dir, u};
        ls->n++;
    }
    return 0;
}

static void free_loras(fy_loaded *l, lora_set *ls) {
    for (int i = 0; i < ls->n; i++) fy_lora_unmerged_free(l->be, (fy_lora_unmerged *)ls->ad[i].lora);
    ls->n = 0;
}

/* Loads the model and its adapters, starts the scheduler: *s, *l, *ls and
 * *chat are the caller's to free. */
static int load(const serve_flags *f, const char *id, fy_loaded *l, lora_set *ls, fy_chat_template *chat,
                fy_sched **s, int *ctx, fy_err *err) {
    char p[FY_PATH_MAX + 32];
    if (fy_cli_load_inference(f->model, f->backend, f->weights, f->no_mmap, l, err)) return -1;
    if (load_loras(f, id, l, ls, err)) return -1;
    int maxpos = l->model.cfg.max_position_embeddings;
    if (f->ctx > maxpos) return fy_fail(err, "--ctx %d: over the model's max_position_embeddings %d", f->ctx, maxpos);
    *ctx = f->ctx ? f->ctx : maxpos;
    if (fy_chat_select(f->chat_template, fy_cli_tokenizer_config(f->model, p, sizeof p), l->tok, chat, err)) return -1;
    fy_sched_opts so = {f->slots, *ctx, f->kv_tokens, 0, 0, f->queue};
    return fy_sched_create(s, &l->model, l->tok, &so, err);
}

/* load() on a thread of its own, which then exits. libgomp keeps a pool
 * of OpenMP workers for every thread that ever started a parallel region,
 * and once its workers and masters outnumber the CPUs it spins only 100
 * iterations before sleeping, whatever GOMP_SPINCOUNT says (its
 * "throttled" spin). The load's regions (quantizing, checks) on the main
 * thread left a worker behind beside the scheduler thread's, and each of
 * a decode step's many short regions then paid a futex wake: tiny q8_0
 * served one stream at ~600 tok/s where `ferry generate` decodes ~3500.
 * A thread's pool goes when it exits, so only the scheduler's remains. */
typedef struct load_job {
    const serve_flags *f;
    const char *id;
    fy_loaded *l;
    lora_set *ls;
    fy_chat_template *chat;
    fy_sched **s;
    int *ctx, rc;
    fy_err *err;
} load_job;

static void *load_main(void *arg) {
    load_job *j = arg;
    j->rc = load(j->f, j->id, j->l, j->ls, j->chat, j->s, j->ctx, j->err);
    return NULL;
}

static int load_apart(load_job *j) {
    pthread_t t;
    if (pthread_create(&t, NULL, load_main, j)) return fy_fail(j->err, "cannot start the loading thread");
    pthread_join(t, NULL);
    return j->rc;
}

/* Runs until a signal; then drains and stops. */
static int serve(const serve_flags *f, sigwaiter *sw, fy_err *err) {
    char key[512], id[256];
    if (api_key(f, key, sizeof key, err)) return -1;
    model_id(f, id, sizeof id);
    fy_http_opts ho = {f->host, f->port, key, id, (size_t)f->max_body, f->max_connections, f->max_per_ip, f->timeout};
    fy_http *h = NULL;
    fy_loaded l;
    memset(&l, 0, sizeof l);
    fy_chat_template chat;
    fy_sched *s = NULL;
    int ctx = 0;
    lora_set ls;
    ls.n = 0;
    /* The limits a request is checked against need the model: the server
     * listens first (health says "loading") and learns them at ready. */
    if (fy_http_start(&h, &ho, err)) return -1;
    load_job job = {f, id, &l, &ls, &chat, &s, &ctx, -1, err};
    if (load_apart(&job)) {
        fy_http_stop(h);
        free_loras(&l, &ls);
        fy_cli_unload(&l);
        return -1;
    }
    fy_http_set_ready(h, s, l.tok, &chat, ctx, f->max_tokens, ls.ad, ls.n);
    atomic_store(&sw->loading, 0);
    fprintf(stderr, "ferry serve: model '%s' (%d slots, context %d, chat template: %s%s)\n", id,
            f->slots, ctx, fy_chat_name(chat.kind), key[0] ? ", API key required" : "");
    for (int i = 0; i < ls.n; i++)
        fprintf(stderr, "ferry serve: LoRA adapter '%s' (%s: rank %d, alpha %g), unmerged\n", ls.ad[i].name,
                ls.ad[i].root, ls.ad[i].lora->cfg.rank, ls.ad[i].lora->cfg.alpha);
    fprintf(stderr, "ferry serve: listening on http://%s%s%s:%d\n", strchr(f->host, ':') ? "[" : "", f->host,
            strchr(f->host, ':') ? "]" : "", fy_http_port(h));
    if (atomic_load(&sw->sig) == 0) sem_wait(&sw->signalled);
    fprintf(stderr, "ferry serve: %s: no new requests; running ones may finish for %.0f s\n",
            atomic_load(&sw->sig) == SIGINT ? "interrupted" : "terminated", f->grace);
    fy_http_quiesce(h);
    fy_sched_stop(s, f->grace);
    /* Every request has its last event now; without this wait, closing the
     * connections could cut streams before their final chunks and [DONE]. */
    int left = fy_http_drain(h, 5);
    if (left) fy_warn("serve: %d answers still being sent after 5 s: cut", left);
    fy_http_stop(h);
    fy_sched_free(s);
    free_loras(&l, &ls);
    fy_cli_unload(&l);
    fprintf(stderr, "ferry serve: stopped\n");
    return 0;
}

int fy_cmd_serve(int argc, char **argv) {
    serve_flags f = {0};
    f.host = "127.0.0.1";
    f.backend = "cpu";
    f.port = 8080;
    f.slots = 4;
    f.queue = 256;
    f.max_connections = 256;
    f.max_body = 4 << 20;
    f.timeout = 30;
    f.grace = 10;
    fy_err err;
    int r = parse_flags(argc, argv, &f, &err);
    if (r) return r > 0 ? 0 : fy_cli_fail("serve", &err);
    /* Signals go to the sigwait thread only: blocked here before any
     * thread starts, so every thread inherits the mask. A client gone
     * mid-write must not kill the process. */
    sigwaiter sw;
    memset(&sw, 0, sizeof sw);
    atomic_store(&sw.loading, 1);
    sigemptyset(&sw.set);
    sigaddset(&sw.set, SIGINT);
    sigaddset(&sw.set, SIGTERM);
    signal(SIGPIPE, SIG_IGN);
    pthread_t t;
    if (sem_init(&sw.signalled, 0, 0) || pthread_sigmask(SIG_BLOCK, &sw.set, NULL) ||
        pthread_create(&t, NULL, sig_main, &sw))
        return fy_cli_failf("serve", "cannot set up signal handling");
    pthread_detach(t);
    if (serve(&f, &sw, &err)) return fy_cli_fail("serve", &err);
    return 0;
}
