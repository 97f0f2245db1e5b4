/* Hugging Face directories (hf.h): recognising one, the temporary name an
 * export is written under, and the JSON helpers hf_meta.c, hf_export.c and
 * hf_import.c share (hf_internal.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/fsutil.h"
#include "interop/hf.h"
#include "interop/hf_internal.h"

int fy_hf_is_dir(const char *dir) {
    char p[FY_PATH_MAX + 64];
    struct stat st;
    snprintf(p, sizeof p, "%s/checkpoints", dir);
    if (stat(p, &st) == 0 && S_ISDIR(st.st_mode)) return 0;   /* a ferry run */
    snprintf(p, sizeof p, "%s/MANIFEST.json", dir);
    if (fy_file_exists(p)) return 0;                          /* a ferry checkpoint */
    snprintf(p, sizeof p, "%s/config.json", dir);
    if (!fy_file_exists(p)) return 0;
    snprintf(p, sizeof p, "%s/" FY_HF_INDEX, dir);
    if (fy_file_exists(p)) return 1;
    snprintf(p, sizeof p, "%s/" FY_HF_SINGLE, dir);
    return fy_file_exists(p);
}

void fy_hf_mtp_copy_names(int layer, char *embed, char *head, size_t cap) {
    snprintf(embed, cap, "model.layers.%d.embed_tokens.weight", layer);
    snprintf(head, cap, "model.layers.%d.shared_head.head.weight", layer);
}

const char *fy_hf_torch_dtype(fy_st_dtype t) {
    return t == FY_ST_BF16 ? "bfloat16" : t == FY_ST_F16 ? "float16" : "float32";
}

cJSON *fy_hf_read_json(const char *dir, const char *name, int *missing, fy_err *err) {
    char p[FY_PATH_MAX + 64], *text;
    size_t len;
    *missing = 0;
    snprintf(p, sizeof p, "%s/%s", dir, name);
    if (!fy_file_exists(p)) {
        *missing = 1;
        return NULL;
    }
    if (fy_read_file(p, &text, &len, err)) return NULL;
    cJSON *j = cJSON_ParseWithLength(text, len);
    free(text);
    if (!j) fy_fail(err, "%s: not valid JSON", p);
    return j;
}

int fy_hf_write_json(const char *dir, const char *name, const cJSON *j, fy_err *err) {
    char p[FY_PATH_MAX + 64];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    char *text = cJSON_Print(j);
    if (!text) return fy_fail(err, "out of memory writing %s", p);
    size_t n = strlen(text);
    char *t2 = realloc(text, n + 2);
    if (!t2) {
        free(text);
        return fy_fail(err, "out of memory writing %s", p);
    }
    t2[n] = '\n';
    int rc = fy_write_file_atomic(p, t2, n + 1, err);
    free(t2);
    return rc;
}
