/* Test helper of the Hugging Face checks (tools/interop/hf_*.py): loads a
 * model directory (a ferry run or checkpoint, or a Hugging Face directory
 * through fy_hf_import) on the cpu backend and writes
 *   - the main head's logits of a batch (full forward, no cache) as raw
 *     little-endian f32 [B, T, V], and
 *   - optionally, the greedy continuation of the first row by the latent-cache
 *     decode path `ferry generate` uses (prefill, then one token at a time),
 *     one id per line.
 * usage: hf_probe MODEL_DIR IDS_FILE LOGITS_OUT [N_GREEDY IDS_OUT]
 * IDS_FILE: B lines of T token ids each. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "interop/hf.h"
#include "model/decode.h"
#include "model/model.h"

static int read_ids(const char *path, int32_t **ids, int *B, int *T) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    int cap = 1 << 16, n = 0, rows = 0, cols = -1, c = 0;
    *ids = malloc((size_t)cap * sizeof **ids);
    char line[1 << 16];
    while (fgets(line, sizeof line, f)) {
        char *p = line, *end;
        c = 0;
        for (long v = strtol(p, &end, 10); end != p; p = end, v = strtol(p, &end, 10)) {
            if (n == cap) *ids = realloc(*ids, (size_t)(cap *= 2) * sizeof **ids);
            (*ids)[n++] = (int32_t)v, c++;
        }
        if (!c) continue;
        if (cols >= 0 && c != cols) break;
        cols = c, rows++;
    }
    fclose(f);
    *B = rows, *T = cols;
    return rows > 0 && n == rows * cols ? 0 : -1;
}

static int greedy(fy_model *m, const int32_t *prompt, int n, int steps, const char *out, fy_err *err) {
    int V = m->cfg.vocab_size;
    fy_kv_cache kv;
    float *logits = malloc((size_t)V * sizeof *logits);
    FILE *f = fopen(out, "w");
    if (!logits || !f || fy_kv_cache_create(&kv, m, n + steps, err)) return fy_fail(err, "greedy: setup failed");
    int rc = fy_model_prefill(m, &kv, prompt, n, logits, err);
    for (int s = 0; s < steps && !rc; s++) {
        int best = 0;
        for (int i = 1; i < V; i++)
            if (logits[i] > logits[best]) best = i;
        fprintf(f, "%d\n", best);
        if (s + 1 < steps) rc = fy_model_decode(m, &kv, best, logits, err);
    }
    fy_kv_cache_free(&kv, m);
    fclose(f);
    free(logits);
    return rc;
}

int main(int argc, char **argv) {
    if (argc != 4 && argc != 6) {
        fprintf(stderr, "usage: hf_probe MODEL_DIR IDS_FILE LOGITS_OUT [N_GREEDY IDS_OUT]\n");
        return 2;
    }
    fy_err err = {{0}};
    fy_host_model h;
    fy_backend *be = NULL;
    fy_model m;
    int32_t *ids = NULL;
    int B, T;
    if (read_ids(argv[2], &ids, &B, &T)) {
        fprintf(stderr, "hf_probe: %s: expected B lines of T ids\n", argv[2]);
        return 1;
    }
    int rc = fy_hf_is_dir(argv[1]) ? fy_hf_import(argv[1], &h, &err) : fy_host_load_run(argv[1], &h, &err);
    if (!rc) rc = fy_backend_create("cpu", &be, &err) || fy_model_create(&m, &h.cfg, be, &err) || fy_host_to_model(&h, &m, &err);
    fy_loss loss;
    if (!rc) rc = fy_model_forward(&m, ids, NULL, B, T, 0, &loss, &err);
    if (!rc) {
        size_t n = (size_t)B * T * m.cfg.vocab_size;
        float *lg = malloc(n * sizeof *lg);
        be->ops->download(be, lg, fy_model_logits(&m), n);
        FILE *f = fopen(argv[3], "wb");
        rc = !f || fwrite(lg, sizeof *lg, n, f) != n || fclose(f) ? fy_fail(&err, "%s: write failed", argv[3]) : 0;
        free(lg);
    }
    if (!rc && argc == 6) rc = greedy(&m, ids, T, atoi(argv[4]), argv[5], &err);
    if (rc) fprintf(stderr, "hf_probe: %s\n", err.msg);
    free(ids);
    return rc ? 1 : 0;
}
