/* --add-special-tokens TOK[,TOK...], shared by ferry train --init-from and
 * ferry data prepare so both grow a model's tokenizer the same way (the
 * run's tokenizer.json and the prepared shards' must match byte for byte). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "interop/host.h"

#define MAX_NEW 1024

/* Splits list at commas into toks (pointers into buf); refuses empty ones. */
static int split_list(char *buf, char **toks, int *n, fy_err *err) {
    *n = 0;
    for (char *p = buf;;) {
        char *c = strchr(p, ',');
        if (c) *c = 0;
        if (!*p) return fy_fail(err, "an empty token in the list");
        if (*n == MAX_NEW) return fy_fail(err, "more than %d tokens", MAX_NEW);
        toks[(*n)++] = p;
        if (!c) return 0;
        p = c + 1;
    }
}

/* Drops the tokens tok already has as added tokens (with a note); refuses
 * ordinary ones. */
static int drop_present(const fy_tokenizer *tok, char **toks, int *n, fy_err *err) {
    int k = 0;
    for (int i = 0; i < *n; i++) {
        int32_t id = fy_tokenizer_token_to_id(tok, toks[i]);
        if (id < 0) {
            toks[k++] = toks[i];
        } else if (fy_tokenizer_token_type(tok, id) != FY_TOKEN_NORMAL) {
            printf("note: --add-special-tokens: \"%s\" is already an added token (id %d): skipped\n", toks[i], (int)id);
        } else {
            return fy_fail(err, "\"%s\" is an ordinary token of the vocabulary (id %d); "
                                "making it special would change how existing text encodes",
                           toks[i], (int)id);
        }
    }
    *n = k;
    return 0;
}

int fy_cli_add_special_tokens(const char *list, const fy_tokenizer *tok, fy_tokenizer **out, fy_err *err) {
    *out = NULL;
    char *buf = strdup(list);
    char **toks = malloc(MAX_NEW * sizeof *toks);
    int n = 0, rc = !buf || !toks ? fy_fail(err, "out of memory") : 0;
    if (!rc) rc = split_list(buf, toks, &n, err) || drop_present(tok, toks, &n, err) ? -1 : 0;
    if (!rc && n) rc = fy_tokenizer_add_special(tok, (const char *const *)toks, n, out, err);
    if (!rc && n) printf("added %d special token(s): vocabulary %d -> %d\n", n, (int)fy_tokenizer_vocab_size(tok),
                         (int)fy_tokenizer_vocab_size(*out));
    if (rc) fy_wrap(err, "--add-special-tokens");
    free(buf);
    free(toks);
    return rc;
}

int fy_cli_host_add_special_tokens(const char *list, struct fy_host_model *h, fy_err *err) {
    fy_tokenizer *tok;
    if (fy_cli_add_special_tokens(list, h->tok, &tok, err)) return -1;
    if (tok && fy_host_grow_vocab(h, tok, err)) {
        fy_tokenizer_free(tok);
        return -1;
    }
    return 0;
}
