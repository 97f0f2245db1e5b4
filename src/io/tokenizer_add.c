/* Growing a tokenizer by special tokens (ferry train --add-special-tokens):
 * done on its tokenizer.json form, so the result is exactly what loading
 * that file with the tokens appended to added_tokens gives, in ferry and in
 * Hugging Face `tokenizers` alike. */
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "io/tokenizer.h"

/* One entry of added_tokens as Hugging Face's add_special_tokens writes it. */
static int append_token(cJSON *arr, const char *content, int32_t id) {
    cJSON *a = cJSON_CreateObject();
    if (!a || !cJSON_AddItemToArray(arr, a)) {
        cJSON_Delete(a);
        return -1;
    }
    return cJSON_AddNumberToObject(a, "id", id) && cJSON_AddStringToObject(a, "content", content) &&
                   cJSON_AddFalseToObject(a, "single_word") && cJSON_AddFalseToObject(a, "lstrip") &&
                   cJSON_AddFalseToObject(a, "rstrip") && cJSON_AddFalseToObject(a, "normalized") &&
                   cJSON_AddTrueToObject(a, "special")
               ? 0
               : -1;
}

/* Refuses an empty token, one tok already has, and one given twice. */
static int check_new(const fy_tokenizer *tok, const char *const *toks, int n, fy_err *err) {
    for (int i = 0; i < n; i++) {
        if (!toks[i][0]) return fy_fail(err, "an empty special token");
        int32_t id = fy_tokenizer_token_to_id(tok, toks[i]);
        if (id >= 0) return fy_fail(err, "special token \"%s\" is already in the vocabulary (id %d)", toks[i], (int)id);
        for (int j = 0; j < i; j++)
            if (!strcmp(toks[i], toks[j])) return fy_fail(err, "special token \"%s\" given twice", toks[i]);
    }
    return 0;
}

int fy_tokenizer_add_special(const fy_tokenizer *tok, const char *const *toks, int n, fy_tokenizer **out,
                             fy_err *err) {
    *out = NULL;
    if (check_new(tok, toks, n, err)) return -1;
    size_t len;
    char *text = fy_tokenizer_to_json(tok, &len, err);
    if (!text) return -1;
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    cJSON *arr = root ? cJSON_GetObjectItemCaseSensitive(root, "added_tokens") : NULL;
    if (root && !arr) arr = cJSON_AddArrayToObject(root, "added_tokens");
    int32_t V = fy_tokenizer_vocab_size(tok);
    int rc = arr ? 0 : -1;
    for (int i = 0; i < n && !rc; i++) rc = append_token(arr, toks[i], V + i);
    char *grown = rc ? NULL : cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!grown) return fy_fail(err, "out of memory adding special tokens");
    rc = fy_tokenizer_from_json(grown, strlen(grown), "the tokenizer with the added special tokens", out, err);
    free(grown);
    /* An imported model's bos/eos/pad were set by id, not found by name. */
    if (!rc && fy_tokenizer_set_special(*out, fy_tokenizer_bos(tok), fy_tokenizer_eos(tok), fy_tokenizer_pad(tok), err)) {
        fy_tokenizer_free(*out);
        *out = NULL;
        rc = -1;
    }
    return rc;
}
