/* ferry generate --model DIR --prompt TEXT: loads a trained model (common.c)
 * and streams its continuation of the prompt to stdout (serve/generate.h);
 * --print-ids prints token ids instead of text, to compare with other
 * engines (llama.cpp, docs/INTEROP.md). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "core/clock.h"
#include "core/strbuf.h"
#include "model/decode.h"
#include "model/lora.h"
#include "serve/api.h"
#include "serve/generate.h"
#include "serve/sampler.h"
#include "serve/seq.h"

/* Writes s[0..n) as valid UTF-8: invalid bytes become U+FFFD (serve/api.h's
 * cleaner, so the text is the server's; fy_generate never splits a
 * character across pieces). With `escape` (a terminal), control characters
 * other than \n and \t are written as \xHH (C1 ones, U+0080..U+009F, as
 * \u00HH), so a model cannot drive the terminal; into a pipe or file they
 * stay the text's own bytes. Returns -1 when out of memory. */
static int put_clean(const char *s, size_t n, int escape) {
    fy_strbuf b = {0};
    if (fy_api_utf8_clean(s, n, &b, NULL)) {
        fy_strbuf_free(&b);
        return -1;
    }
    const unsigned char *u = (const unsigned char *)b.p;
    size_t run = 0;
    for (size_t i = 0; escape && i < b.n; i++) {
        int c0 = (u[i] < 0x20 && u[i] != '\n' && u[i] != '\t') || u[i] == 0x7f;
        int c1 = u[i] == 0xc2 && i + 1 < b.n && u[i + 1] >= 0x80 && u[i + 1] <= 0x9f;
        if (!c0 && !c1) continue;
        fwrite(b.p + run, 1, i - run, stdout);
        if (c0) printf("\\x%02x", u[i]);
        else printf("\\u%04x", u[++i]);
        run = i + 1;
    }
    fwrite(b.p + run, 1, b.n - run, stdout);
    fy_strbuf_free(&b);
    return 0;
}

/* The text callback's state: the prompt is echoed just before the first
 * generated token, so a run that fails before generating prints nothing.
 * first_s: when the first token came (fy_now_s; 0 before). */
typedef struct printer {
    const char *prompt;
    int escape, echoed, oom;
    double first_s;
} printer;

static void echo_prompt(printer *pr) {
    if (pr->echoed) return;
    pr->echoed = 1;
    if (put_clean(pr->prompt, strlen(pr->prompt), pr->escape)) pr->oom = 1;
}

static void print_text(const char *text, size_t n, void *ctx) {
    printer *pr = ctx;
    echo_prompt(pr);
    if (put_clean(text, n, pr->escape)) pr->oom = 1;
    fflush(stdout);
}

static void first_token(const fy_seq *s, void *ctx) {
    printer *pr = ctx;
    (void)s;
    if (!pr->first_s) pr->first_s = fy_now_s();
    echo_prompt(pr);
}

/* -n is clamped so the prompt and the tokens fit the context: say so when
 * that, not -n or the end of the sequence, ended it. */
static void note_short(const fy_gen_result *res, int n, int max_pos) {
    if (res->stopped_by == 0 && res->new_tokens < n)
        fprintf(stderr,
                "ferry generate: stopped after %d new tokens (-n %d): the prompt's %d tokens and the new ones "
                "fill the model's context (max_position_embeddings %d)\n",
                res->new_tokens, n, res->prompt_tokens, max_pos);
}

static void print_list(const char *label, const int32_t *ids, int n) {
    printf("%s", label);
    for (int i = 0; i < n; i++) printf(" %d", (int)ids[i]);
    printf("\n");
}

typedef struct id_list {
    int32_t *ids;
    int n;
    double *first_s; /* when the first came (printer.first_s) */
} id_list;

static void collect_id(const fy_seq *s, void *ctx) {
    id_list *l = ctx;
    if (!l->n) *l->first_s = fy_now_s();
    l->ids[l->n++] = s->token;
}

/* fy_generate's tokens (no <|bos|>; <|eos|> ends them, unprinted; a stop
 * string ends them after the token completing it), printed as two lines:
 * "prompt: ID..." and "ids: ID...". */
static int generate_ids(fy_model *m, const fy_tokenizer *tok, const char *prompt, const fy_gen_opts *o,
                        fy_gen_result *res, fy_err *err) {
    int32_t *ids = NULL;
    size_t n = 0;
    id_list out = {malloc((size_t)o->p.max_tokens * sizeof(int32_t) + 1), 0, &((printer *)o->ctx)->first_s};
    fy_gen_opts io = *o;
    io.on_text = NULL;
    io.on_token = collect_id;
    io.ctx = &out;
    int rc = -1;
    if (!out.ids) fy_fail(err, "out of memory");
    else if (!fy_tokenizer_encode(tok, prompt, strlen(prompt), &ids, &n, err)) {
        if (n == 0 || (int)n > m->cfg.max_position_embeddings)
            fy_fail(err, "the prompt has %zu tokens: needs 1 to max_position_embeddings %d", n,
                    m->cfg.max_position_embeddings);
        else if (!fy_generate_ids(m, tok, ids, (int)n, &io, res, err)) {
            print_list("prompt:", ids, (int)n);
            print_list("ids:", out.ids, out.n);
            note_short(res, o->p.max_tokens, m->cfg.max_position_embeddings);
            rc = 0;
        }
    }
    free(ids);
    free(out.ids);
    return rc;
}

/* --stats: what a run measured, on one stderr line (docs/PERFORMANCE.md,
 * "Cold start and memory"), or (json) one JSON object with the same
 * numbers. Times are from the start of the command: load is until the model
 * was ready, ttft until the first new token; faults and peak RSS are the
 * process's own so far (getrusage), loading included. */
static void print_stats(const fy_gen_result *res, double t0, double loaded, double first, int json) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double pre = res->prompt_tokens / (res->prefill_s > 0 ? res->prefill_s : 1e-9);
    double dec = res->new_tokens / (res->decode_s > 0 ? res->decode_s : 1e-9);
    double ttft = first > 0 ? first - t0 : 0.0;
    if (json)
        fprintf(stderr,
                "{\"load_s\": %.4f, \"ttft_s\": %.4f, \"prefill_tokens\": %d, \"prefill_tok_s\": %.1f, "
                "\"decode_tokens\": %d, \"decode_tok_s\": %.1f, \"minor_faults\": %ld, \"major_faults\": %ld, "
                "\"peak_rss_kb\": %ld}\n",
                loaded - t0, ttft, res->prompt_tokens, pre, res->new_tokens, dec, ru.ru_minflt, ru.ru_majflt,
                ru.ru_maxrss);
    else
        fprintf(stderr,
                "prefill %d tokens: %.1f tok/s; decode %d tokens: %.1f tok/s; load %.3f s; ttft %.3f s; "
                "page faults %ld minor, %ld major; peak rss %.1f MiB\n",
                res->prompt_tokens, pre, res->new_tokens, dec, loaded - t0, ttft, ru.ru_minflt, ru.ru_majflt,
                ru.ru_maxrss / 1024.0);
}

/* Takes every --stop TEXT (or --stop=TEXT) out of argv[0..argc) into stop[]
 * (repeatable, which fy_args_parse is not), copying the other words to rest
 * and skipping the values of the flags in spec that take one. */
static int take_stops(int argc, char **argv, const fy_arg *spec, int n_spec, const char **stop, int *n_stop,
                      char **rest, int *n_rest, fy_err *err) {
    *n_stop = *n_rest = 0;
    for (int i = 0; i < argc; i++) {
        const char *w = argv[i];
        if (!strcmp(w, "--stop") || !strncmp(w, "--stop=", 7)) {
            const char *v = w[6] ? w + 7 : i + 1 < argc ? argv[++i] : NULL;
            if (!v) return fy_fail(err, "--stop needs a value");
            if (*n_stop == FY_SEQ_MAX_STOP) return fy_fail(err, "--stop given more than %d times", FY_SEQ_MAX_STOP);
            stop[(*n_stop)++] = v;
            continue;
        }
        rest[(*n_rest)++] = argv[i];
        if (!strcmp(w, "--")) { /* the rest are not flags */
            while (++i < argc) rest[(*n_rest)++] = argv[i];
            break;
        }
        for (int k = 0; k < n_spec; k++)
            if (spec[k].type != FY_ARG_BOOL && i + 1 < argc &&
                (!strcmp(w, spec[k].name) || (spec[k].alias && !strcmp(w, spec[k].alias)))) {
                rest[(*n_rest)++] = argv[++i];
                break;
            }
    }
    return 0;
}

int fy_cmd_generate(int argc, char **argv) {
    double t0 = fy_now_s();
    const char *model = NULL, *lora = NULL, *prompt = NULL, *backend = "cpu", *stop_flag = NULL, *weights = NULL;
    int n = 128, top_k = 0, seed = 0, stats = 0, stats_json = 0, print_ids = 0, chunk = 0, ignore_eos = 0, escape = 0;
    int no_mmap = 0;
    double temperature = 0.8, top_p = 1.0;
    fy_arg spec[] = {
        {"--model", "-m", FY_ARG_STR, &model, "DIR", "run directory or checkpoint directory (required)", 0, 0, 0},
        {"--lora", NULL, FY_ARG_STR, &lora, "DIR", "apply LoRA adapters (a ferry LoRA run or a PEFT directory) to the model, unmerged as ferry serve runs them", 0, 0, 0},
        {"--prompt", "-p", FY_ARG_STR, &prompt, "TEXT", "text to continue (required)", 0, 0, 0},
        {"--n", "-n", FY_ARG_INT, &n, "N", "new tokens at most (default 128)", 0, 1 << 20, 0},
        {"--temperature", NULL, FY_ARG_FLOAT, &temperature, "T", "0 = greedy (default 0.8)", 0, 100, 0},
        {"--top-k", NULL, FY_ARG_INT, &top_k, "K", "sample among the K likeliest (0 = all)", 0, 1 << 24, 0},
        {"--top-p", NULL, FY_ARG_FLOAT, &top_p, "P", "nucleus sampling mass (default 1 = off)", 1e-6, 1, 0},
        {"--seed", NULL, FY_ARG_INT, &seed, "S", "sampling seed (default 0)", 0, 2147483647, 0},
        {"--stop", NULL, FY_ARG_STR, &stop_flag, "TEXT",
         "stop when this text is generated (not printed); repeatable, up to 4", 0, 0, 0},
        {"--ignore-eos", NULL, FY_ARG_BOOL, &ignore_eos, NULL,
         "the end-of-sequence token is just a token: generate all N (as the server's ignore_eos)", 0, 0, 0},
        {"--prefill-chunk", NULL, FY_ARG_INT, &chunk, "N",
         "prompt tokens per forward (0 = all; the tokens do not change)", 0, 1 << 20, 0},
        {"--backend", "-b", FY_ARG_STR, &backend, "SPEC", "cpu (default), opencl, ... (see ferry devices)", 0, 0, 0},
        {"--weights", NULL, FY_ARG_STR, &weights, "FMT", "weights: f32, bf16, f16, q8_0 (int8) or q4_0 (docs/PERFORMANCE.md); default: the checkpoint's own (f32, or a weights image's format)", 0, 0, 0},
        {"--no-mmap", NULL, FY_ARG_BOOL, &no_mmap, NULL, "a weights image is copied into memory, not mapped and read in place (slower start; huge pages)", 0, 0, 0},
        {"--print-ids", NULL, FY_ARG_BOOL, &print_ids, NULL,
         "print token ids, not text: a line 'prompt: ID...' then 'ids: ID...' (the new tokens; <|eos|> ends them, unprinted; a --stop string after the token completing it)",
         0, 0, 0},
        {"--escape-controls", NULL, FY_ARG_BOOL, &escape, NULL,
         "write control characters (but newline and tab) as \\xHH also when stdout is not a terminal", 0, 0, 0},
        {"--stats", NULL, FY_ARG_BOOL, &stats, NULL,
         "print to stderr: prefill and decode tok/s, load and time-to-first-token seconds (from the command's "
         "start), page faults (minor, major) and peak RSS",
         0, 0, 0},
        {"--stats-json", NULL, FY_ARG_BOOL, &stats_json, NULL,
         "the same as one JSON object (load_s, ttft_s, prefill_tokens, prefill_tok_s, decode_tokens, decode_tok_s, "
         "minor_faults, major_faults, peak_rss_kb)",
         0, 0, 0},
    };
    char *pos[1];
    int npos, n_stop, n_rest;
    fy_err err;
    const char *stops[FY_SEQ_MAX_STOP];
    char **rest = malloc((size_t)(argc + 1) * sizeof *rest);
    if (!rest) return fy_cli_failf("generate", "out of memory");
    int r = take_stops(argc, argv, spec, (int)(sizeof spec / sizeof spec[0]), stops, &n_stop, rest, &n_rest, &err);
    if (!r) r = fy_args_parse(n_rest, rest, spec, (int)(sizeof spec / sizeof spec[0]), "generate",
                          "--model DIR --prompt TEXT [options]",
                          "Continue a prompt with a trained model: prefill, then token-by-token decoding\n"
                          "from the latent KV cache, streamed to stdout as valid UTF-8 (invalid bytes as\n"
                          "U+FFFD); on a terminal, control characters other than newline and tab as \\xHH.",
                          pos, 0, &npos, &err);
    free(rest);
    if (r) return r > 0 ? 0 : fy_cli_fail("generate", &err);
    if (!model || !prompt) {
        return fy_cli_failf("generate", "needs --model DIR and --prompt TEXT");
    }
    fy_loaded l;
    if (fy_cli_load_inference(model, backend, weights, no_mmap, &l, &err)) return fy_cli_fail("generate", &err);
    fy_lora_unmerged *ad = NULL; /* --lora: unmerged, as serve runs it (the same tokens) */
    if (lora && fy_cli_load_lora(&l, lora, &ad, &err)) {
        fy_cli_unload(&l);
        return fy_cli_fail("generate", &err);
    }
    double loaded = fy_now_s();
    printer pr = {prompt, escape || isatty(STDOUT_FILENO), 0, 0, 0.0};
    fy_gen_opts o = {.p = {.max_tokens = n, .sampler = {(float)temperature, top_k, (float)top_p, (uint64_t)seed},
                           .n_stop = n_stop, .ignore_eos = ignore_eos},
                     .prefill_chunk = chunk, .lora = ad, .on_text = print_text, .on_token = first_token, .ctx = &pr};
    for (int i = 0; i < n_stop; i++) o.p.stop[i] = stops[i];
    fy_gen_result res;
    if (print_ids) {
        int rc = generate_ids(&l.model, l.tok, prompt, &o, &res, &err);
        fy_lora_unmerged_free(l.be, ad);
        fy_cli_unload(&l);
        if (rc) return fy_cli_fail("generate", &err);
        if (stats || stats_json) print_stats(&res, t0, loaded, pr.first_s, stats_json);
        return 0;
    }
    int rc = fy_generate(&l.model, l.tok, prompt, &o, &res, &err);
    int max_pos = l.model.cfg.max_position_embeddings;
    fy_lora_unmerged_free(l.be, ad);
    fy_cli_unload(&l);
    if (!rc) echo_prompt(&pr); /* nothing generated (end of sequence at once): still the prompt */
    if (pr.echoed) printf("\n");
    fflush(stdout);
    if (rc) return fy_cli_fail("generate", &err);
    if (pr.oom) return fy_cli_failf("generate", "out of memory writing the text");
    note_short(&res, n, max_pos);
    if (stats || stats_json) print_stats(&res, t0, loaded, pr.first_s, stats_json);
    return 0;
}
