/* ferry verify --model DIR --backends A,B[,C...]: load one checkpoint onto
 * each backend, run the same batch and prompt, and compare everything with
 * the first backend (serve/verify.h). Read-only: nothing is written. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "core/clock.h"
#include "core/fsutil.h"
#include "core/rng.h"
#include "serve/verify.h"
#include "train/loader.h"

#define MAX_BACKENDS 8
#define WORST_SHOWN 5

/* Splits "a,b,c" in place into at most MAX_BACKENDS non-empty specs. */
static int split_backends(char *list, char **out, int *n, fy_err *err) {
    *n = 0;
    for (char *p = list;; p++) {
        char *comma = strchr(p, ',');
        if (comma) *comma = 0;
        if (!*p) return fy_fail(err, "--backends has an empty entry (expected e.g. cpu,opencl)");
        if (*n == MAX_BACKENDS) return fy_fail(err, "--backends: at most %d backends", MAX_BACKENDS);
        out[(*n)++] = p;
        if (!comma) break;
        p = comma;
    }
    if (*n < 2) return fy_fail(err, "--backends needs at least two backends to compare (e.g. cpu,opencl)");
    return 0;
}

/* The batch: validation batch 0 of the run's data when its data_dir still
 * exists (real text, as the model was trained on), else seeded random ids.
 * `what` says which, for the output. */
static int make_batch(const char *run, const fy_config *c, int B, int T, uint64_t seed, int32_t *in,
                      int32_t *lab, char *what, size_t cap, fy_err *err) {
    char p[FY_PATH_MAX + 32], why[FY_PATH_MAX + 256] = "the run names no data_dir";
    snprintf(p, sizeof p, "%s/config.json", run);
    char *txt = NULL;
    size_t len;
    if (fy_read_file(p, &txt, &len, err)) return -1;
    cJSON *js = cJSON_Parse(txt);
    free(txt);
    const char *dd = fy_cli_ferry_string(js, "data_dir");
    if (dd) {
        fy_loader L;
        fy_err lerr;
        if (fy_loader_open(&L, dd, "val", (uint32_t)c->vocab_size, &lerr) == 0) {
            int rc = fy_loader_val_batch(&L, 0, 0, 1, B, T, in, lab, &lerr);
            fy_loader_close(&L);
            if (rc == 0) {
                snprintf(what, cap, "validation batch 0 of %s", dd);
                cJSON_Delete(js);
                return 0;
            }
        }
        snprintf(why, sizeof why, "%s", lerr.msg);
    }
    cJSON_Delete(js);
    for (int i = 0; i < B * T; i++) in[i] = (int32_t)(fy_rng_u64(seed, 11, (uint64_t)i) % c->vocab_size);
    /* Labels are the next input (random text, but shaped like real batches). */
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            lab[b * T + t] = t + 1 < T ? in[b * T + t + 1]
                                       : (int32_t)(fy_rng_u64(seed, 12, (uint64_t)b) % c->vocab_size);
    snprintf(what, cap, "seeded random tokens (seed %llu; no validation data: %s)", (unsigned long long)seed, why);
    return 0;
}

static void print_report(const char *spec, const char *ref_spec, const fy_param_table *tab,
                         const fy_verify_report *r, const fy_verify_tol *tol) {
    const char *ok_l = r->logits.rel <= tol->logits ? "ok" : "OVER";
    printf("%s vs %s:\n", spec, ref_spec);
    printf("  logits     max abs %.3e  rel %.3e  (logit scale %.3g)  %s\n", r->logits.max_abs, r->logits.rel,
           r->logits.scale, ok_l);
    printf("  losses    ");
    for (int i = 0; i < r->n_losses; i++)
        printf(" %s %.6f (rel %.1e%s)", r->loss_name[i], r->loss_got[i], r->loss_rel[i],
               r->loss_rel[i] <= tol->logits ? "" : " OVER");
    printf("\n");
    printf("  gradients  %d tensors, %d over tol; worst:\n", r->n_grads, r->n_grads_over);
    for (int i = 0; i < r->n_grads && i < WORST_SHOWN; i++)
        printf("    %-56s max abs %.3e  rel %.3e%s\n", tab->t[r->grads[i].tensor].name, r->grads[i].d.max_abs,
               r->grads[i].d.rel, r->grads[i].d.rel <= tol->grad ? "" : "  OVER");
    printf("  router     %zu of %zu expert choices differ\n", r->route_diff, r->route_total);
    if (r->greedy_first_diff < 0)
        printf("  greedy     %d of %d tokens identical\n", r->greedy_n, r->greedy_n);
    else
        printf("  greedy     first difference at token %d of %d  OVER\n", r->greedy_first_diff, r->greedy_n);
    fflush(stdout);
}

/* The text of ids on one line (newlines and tabs as spaces), cut at `max`
 * bytes, for printing. Returns -1 (text NULL, len 0) when it cannot be
 * decoded. */
static int one_line(const fy_tokenizer *tok, const int32_t *ids, size_t n, size_t max, char **text, size_t *len) {
    fy_err ignore;
    *text = NULL;
    *len = 0;
    if (fy_tokenizer_decode(tok, ids, n, FY_DEC_SKIP_SPECIAL | FY_DEC_LOSSY, text, len, &ignore)) {
        *len = 0;
        return -1;
    }
    for (size_t k = 0; k < *len; k++)
        if ((*text)[k] == '\n' || (*text)[k] == '\r' || (*text)[k] == '\t') (*text)[k] = ' ';
    if (*len > max) *len = max;
    return 0;
}

typedef struct verify_flags {
    const char *model, *backends, *prompt;
    int n_new, B, T, seed;
    double tol_logits, tol_grad;
} verify_flags;

/* Parses the flags: 0, 1 after --help, -1 on bad or missing flags (err set). */
static int parse_flags(int argc, char **argv, verify_flags *f, fy_err *err) {
    *f = (verify_flags){.n_new = 32, .B = 4, .T = 64, .tol_logits = 1e-4, .tol_grad = 1e-3};
    fy_arg spec[] = {
        {"--model", "-m", FY_ARG_STR, &f->model, "DIR", "run directory or checkpoint directory (required; read only)", 0, 0, 0},
        {"--backends", "-b", FY_ARG_STR, &f->backends, "A,B,...", "backends to compare, the first is the reference (required)", 0, 0, 0},
        {"--prompt", "-p", FY_ARG_STR, &f->prompt, "TEXT", "prompt for the greedy check (default: the batch's first 8 tokens)", 0, 0, 0},
        {"--n", "-n", FY_ARG_INT, &f->n_new, "N", "greedy tokens compared (default 32)", 0, 1 << 20, 0},
        {"--batch", NULL, FY_ARG_INT, &f->B, "B", "sequences in the forward+backward batch (default 4)", 1, 1 << 16, 0},
        {"--seq", NULL, FY_ARG_INT, &f->T, "T", "tokens per sequence (default 64)", 1, 1 << 20, 0},
        {"--seed", NULL, FY_ARG_INT, &f->seed, "S", "seed of the random batch when the run has no data (default 0)", 0, 2147483647, 0},
        {"--tol-logits", NULL, FY_ARG_FLOAT, &f->tol_logits, "X", "max |dlogit| / max |logit|, and each loss's relative error (default 1e-4)", 0, 1, 0},
        {"--tol-grad", NULL, FY_ARG_FLOAT, &f->tol_grad, "Y", "per gradient tensor: max |dg| / max |g| (default 1e-3)", 0, 1, 0},
    };
    char *pos[1];
    int npos;
    int r = fy_args_parse(
        argc, argv, spec, (int)(sizeof spec / sizeof spec[0]), "verify", "--model DIR --backends A,B[,...] [options]",
        "Load one checkpoint onto each backend, run the same batch through forward and backward,\n"
        "and compare with the first backend: logits, losses (main, MTP, balance), every parameter\n"
        "gradient, router choices, and N greedy tokens (which must be identical). The batch is the\n"
        "run's validation data when its data_dir exists, else seeded random tokens. Errors are\n"
        "rel = max|x - ref| / max|ref| per tensor. The defaults allow fp32 reassociation: a GEMM\n"
        "summing in another order differs by ~sqrt(K)*6e-8 relative per product, which grows to\n"
        "~1e-6..1e-5 through the layers (tol-logits 1e-4 leaves 10x margin); gradients pass through\n"
        "twice as many products and small tensors have little averaging (tol-grad 1e-3). Measured,\n"
        "cpu (OpenBLAS) vs opencl (PoCL) on a trained tiny run: logits 2e-7, worst gradient 2e-6.\n"
        "Exit 0 when every backend agrees, 3 when one does not (one line on stderr naming the worst\n"
        "tensor), 1 on bad input. The checkpoint is only read.\n"
        "Self-test: FERRY_PERTURB=rmsnorm:1e-3 makes chaos:INNER multiply every rmsnorm output by\n"
        "1+1e-3 (also swiglu:EPS, attn:EPS), so `--backends cpu,chaos:cpu` must then fail.",
        pos, 0, &npos, err);
    if (r) return r;
    if (!f->model || !f->backends) return fy_fail(err, "needs --model DIR and --backends A,B (e.g. cpu,opencl)");
    return 0;
}

/* Splits --backends into specs (in list) and checks that every backend
 * exists before any work is done. */
static int check_backends(const char *backends, char *list, size_t cap, char **specs, int *nb, fy_err *err) {
    snprintf(list, cap, "%s", backends);
    if (split_backends(list, specs, nb, err)) return -1;
    for (int i = 0; i < *nb; i++) {
        fy_backend *be;
        if (fy_backend_create_opts(specs[i], fy_cli_backend_opts(&(fy_backend_opts){0}), &be, err)) return -1;
        fy_backend_destroy(be);
    }
    return 0;
}

/* What every backend runs, and the prompt's origin for the output. */
typedef struct verify_inputs {
    int32_t *in, *lab, *ids;
    size_t n_ids;
    char what[FY_PATH_MAX + 512];
    fy_verify_input vin;
} verify_inputs;

static void inputs_free(verify_inputs *v) {
    free(v->in);
    free(v->lab);
    free(v->ids);
}

/* The prompt of the greedy check: --prompt, else the batch's first tokens. */
static int prompt_ids(const verify_flags *f, const fy_tokenizer *tok, verify_inputs *v, fy_err *err) {
    if (f->prompt) {
        if (fy_tokenizer_encode(tok, f->prompt, strlen(f->prompt), &v->ids, &v->n_ids, err)) return -1;
        if (!v->n_ids) return fy_fail(err, "--prompt is empty");
        return 0;
    }
    v->n_ids = f->T < 8 ? (size_t)f->T : 8;
    v->ids = malloc(v->n_ids * sizeof *v->ids);
    if (!v->ids) return fy_fail(err, "out of memory");
    memcpy(v->ids, v->in, v->n_ids * sizeof *v->ids);
    return 0;
}

/* The batch and the prompt, checked against the model's context length. */
static int make_inputs(const verify_flags *f, const char *run, const fy_loaded *l, verify_inputs *v, fy_err *err) {
    const fy_config *c = &l->model.cfg;
    int B = f->B, T = f->T, n_new = f->n_new;
    if (T > c->max_position_embeddings)
        return fy_fail(err, "--seq %d exceeds max_position_embeddings %d", T, c->max_position_embeddings);
    v->in = malloc((size_t)B * T * sizeof *v->in);
    v->lab = malloc((size_t)B * T * sizeof *v->lab);
    if (!v->in || !v->lab) return fy_fail(err, "out of memory for a %d x %d batch", B, T);
    if (make_batch(run, c, B, T, (uint64_t)f->seed, v->in, v->lab, v->what, sizeof v->what, err) ||
        prompt_ids(f, l->tok, v, err))
        return -1;
    if ((int)v->n_ids >= c->max_position_embeddings)
        return fy_fail(err, "prompt of %zu tokens leaves no room under max_position_embeddings %d", v->n_ids,
                       c->max_position_embeddings);
    if ((int)v->n_ids + n_new > c->max_position_embeddings) n_new = c->max_position_embeddings - (int)v->n_ids;
    v->vin = (fy_verify_input){B, T, v->in, v->lab, v->ids, (int)v->n_ids, n_new};
    return 0;
}

static void print_setup(const verify_flags *f, const char *ckpt, const fy_loaded *l, const verify_inputs *v,
                        const char *ref_spec) {
    printf("model: %s (%zu parameters)\n", ckpt, fy_params_count(&l->model.tab));
    printf("batch: %d x %d tokens, %s\n", f->B, f->T, v->what);
    size_t ptl;
    char *ptext;
    one_line(l->tok, v->ids, v->n_ids, 80, &ptext, &ptl);
    printf("greedy: %d tokens after the %zu-token prompt \"%.*s\"%s\n", v->vin.n_new, v->n_ids, (int)ptl,
           ptl ? ptext : "", f->prompt ? "" : " (the batch's first tokens)");
    free(ptext);
    printf("tolerances: logits and losses rel %.1e, gradients rel %.1e per tensor; reference %s\n", f->tol_logits,
           f->tol_grad, ref_spec);
    fflush(stdout);
}

/* Runs every backend on the inputs (l: the reference, already loaded; it
 * is reloaded from ckpt on each other backend) and compares each with the
 * first. Returns 0 when all agree, 3 when one does not (reason set), -1 on
 * an error (err set). */
static int compare_backends(char **specs, int nb, const char *ckpt, fy_loaded *l, const verify_inputs *v,
                            const fy_verify_tol *tol, char *reason, size_t cap, fy_err *err) {
    fy_verify_capture ref = {0}, got = {0};
    fy_verify_report rep = {0};
    int verdict = 0;
    for (int i = 0; i < nb; i++) {
        double t0 = fy_now_s();
        if (i > 0 && fy_cli_load_model(ckpt, specs[i], l, err)) goto fail;
        fy_verify_capture *cap_i = i == 0 ? &ref : &got;
        if (fy_verify_capture_run(&l->model, &v->vin, cap_i, err)) {
            fy_wrap(err, "backend %s", specs[i]);
            goto fail;
        }
        printf("%s (%s): loss %.6f (main %.6f), forward+backward+greedy in %.2f s\n", specs[i], l->be->ops->name,
               cap_i->loss.total, cap_i->loss.main, fy_now_s() - t0);
        fy_param_table *tab = &l->model.tab;
        if (i > 0) {
            if (fy_verify_compare(tab, &ref, &got, tol, &rep, err)) goto fail;
            print_report(specs[i], specs[0], tab, &rep, tol);
            if (!rep.pass && !verdict) {
                verdict = 3;
                snprintf(reason, cap, "%s disagrees with %s: %s", specs[i], specs[0], rep.reason);
            }
            fy_verify_report_free(&rep);
            fy_verify_capture_free(&got);
        } else {
            size_t tl;
            char *text;
            if (!one_line(l->tok, ref.greedy, (size_t)ref.n_greedy, 200, &text, &tl))
                printf("  greedy text: %.*s\n", (int)tl, text);
            free(text);
        }
        fy_cli_unload(l);
    }
    fy_verify_capture_free(&ref);
    return verdict;
fail:
    fy_verify_report_free(&rep);
    fy_verify_capture_free(&ref);
    fy_verify_capture_free(&got);
    return -1;
}

int fy_cmd_verify(int argc, char **argv) {
    verify_flags f;
    fy_err err;
    int r = parse_flags(argc, argv, &f, &err);
    if (r) return r > 0 ? 0 : fy_cli_fail("verify", &err);
    char list[1024], *specs[MAX_BACKENDS];
    int nb;
    if (check_backends(f.backends, list, sizeof list, specs, &nb, &err)) return fy_cli_fail("verify", &err);

    fy_loaded l;
    char run[FY_PATH_MAX], ckpt[4096], reason[1024] = "";
    if (fy_cli_run_dir(f.model, run, sizeof run, &err) || fy_cli_load_model(f.model, specs[0], &l, &err))
        return fy_cli_fail("verify", &err);
    /* Every backend loads this very checkpoint, even if a trainer adds one meanwhile. */
    snprintf(ckpt, sizeof ckpt, "%s", l.ckpt_dir);
    verify_inputs v = {0};
    fy_verify_tol tol = {f.tol_logits, f.tol_grad};
    int rc = make_inputs(&f, run, &l, &v, &err);
    if (!rc) {
        print_setup(&f, ckpt, &l, &v, specs[0]);
        rc = compare_backends(specs, nb, ckpt, &l, &v, &tol, reason, sizeof reason, &err);
    }
    fy_cli_unload(&l);
    inputs_free(&v);
    if (rc < 0) return fy_cli_fail("verify", &err);
    if (rc == 3) {
        printf("FAIL\n");
        fprintf(stderr, "ferry verify: %s\n", reason);
        return 3;
    }
    printf("PASS: %s agree%s with %s within tolerance\n", f.backends + strlen(specs[0]) + 1, nb > 2 ? "" : "s",
           specs[0]);
    return 0;
}
