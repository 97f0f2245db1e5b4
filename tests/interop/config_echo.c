/* Test tool for tools/interop/config_check.py: parses a config.json with
 * ferry's reader and writes it back with ferry's writer (no "ferry" object,
 * dtype as read), plus the numbers ferry derives from it (RoPE frequencies,
 * YaRN's cos/sin multiplier, the attention softmax scale) as JSON.
 * usage: config_echo IN.json OUT_CONFIG.json OUT_DERIVED.json */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/fsutil.h"
#include "model/model.h"

static int write_derived(const fy_config *c, const char *path, fy_err *err) {
    fy_rope_params rp = fy_model_rope_params(c);
    int half = c->qk_rope_head_dim / 2;
    double *freq = malloc(sizeof *freq * (size_t)half);
    cJSON *o = cJSON_CreateObject(), *f = cJSON_AddArrayToObject(o, "inv_freq");
    if (!freq || !o || !f) {
        free(freq);
        cJSON_Delete(o);
        return fy_fail(err, "out of memory");
    }
    fy_rope_freqs(&rp, c->qk_rope_head_dim, freq);
    for (int j = 0; j < half; j++) cJSON_AddItemToArray(f, cJSON_CreateNumber(freq[j]));
    cJSON_AddNumberToObject(o, "attention_factor", rp.yarn ? rp.mul : 1.0);
    cJSON_AddNumberToObject(o, "softmax_scale", fy_cfg_softmax_scale(c));
    char *text = cJSON_Print(o);
    cJSON_Delete(o);
    free(freq);
    int rc = text ? fy_write_file_atomic(path, text, strlen(text), err) : fy_fail(err, "out of memory");
    free(text);
    return rc;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: config_echo IN.json OUT_CONFIG.json OUT_DERIVED.json\n");
        return 2;
    }
    fy_err err = {{0}};
    fy_config c;
    if (fy_config_load(argv[1], &c, &err) != 0) {
        fprintf(stderr, "config_echo: %s\n", err.msg);
        return 1;
    }
    fy_config_json_opts o = {NULL, c.dtype[0] ? c.dtype : NULL, 1};
    char *text = fy_config_to_json_opts(&c, &o);
    int rc = text ? fy_write_file_atomic(argv[2], text, strlen(text), &err) : fy_fail(&err, "out of memory");
    free(text);
    if (rc == 0) rc = write_derived(&c, argv[3], &err);
    if (rc != 0) fprintf(stderr, "config_echo: %s\n", err.msg);
    return rc ? 1 : 0;
}
