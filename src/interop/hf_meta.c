/* The small files of a Hugging Face directory (hf_internal.h): config.json
 * (DeepseekV3 keys only, floats as floats, both dtype spellings),
 * generation_config.json, the tokenizer files; and reading the tokenizer and
 * its bos/eos back. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/fsutil.h"
#include "interop/hf_internal.h"

/* A ferry model was trained without chat turns: this template renders each
 * message as "role: content" closed by the end-of-sequence token, and asks
 * for the reply with "assistant: " (docs/INTEROP.md). */
static const char chat_template[] =
    "{% for message in messages %}{{ message['role'] + ': ' + message['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}";

/* config.json as the config writer makes it: DeepseekV3 keys only, floats
 * as JSON floats (not re-printed through cJSON, which would write "1"). */
static int write_config(const fy_config *c, fy_st_dtype dt, const char *dir, fy_err *err) {
    char p[FY_PATH_MAX + 32];
    snprintf(p, sizeof p, "%s/config.json", dir);
    char *text = fy_config_to_json_opts(c, &(fy_config_json_opts){NULL, fy_hf_torch_dtype(dt), 1});
    if (!text) return fy_fail(err, "out of memory writing %s", p);
    int rc = fy_write_file_atomic(p, text, strlen(text), err);
    free(text);
    return rc;
}

/* bos/eos/pad ids: the config's (an imported model's), else the
 * tokenizer's <|bos|>, <|eos|>, <|pad|>; -1 when neither has one. */
static void special_ids(const fy_host_model *h, int32_t id[3]) {
    id[0] = h->cfg.bos_token_id >= 0 ? h->cfg.bos_token_id : fy_tokenizer_bos(h->tok);
    id[1] = h->cfg.eos_token_id >= 0 ? h->cfg.eos_token_id : fy_tokenizer_eos(h->tok);
    id[2] = fy_tokenizer_pad(h->tok);
}

/* Their token strings (NULL when none). */
static void special_strings(const fy_host_model *h, const char *s[3]) {
    int32_t id[3];
    special_ids(h, id);
    for (int i = 0; i < 3; i++) s[i] = id[i] >= 0 ? fy_tokenizer_token_str(h->tok, id[i]) : NULL;
}

static const char *const special_keys[3] = {"bos_token", "eos_token", "pad_token"};

static int add_specials(cJSON *o, const char *s[3]) {
    for (int i = 0; i < 3; i++)
        if (!(s[i] ? cJSON_AddStringToObject(o, special_keys[i], s[i]) : cJSON_AddNullToObject(o, special_keys[i])))
            return -1;
    return 0;
}

static cJSON *tokenizer_config(const fy_host_model *h) {
    const char *s[3];
    special_strings(h, s);
    cJSON *o = cJSON_CreateObject();
    if (!o || !cJSON_AddStringToObject(o, "tokenizer_class", "PreTrainedTokenizerFast") || add_specials(o, s) ||
        !cJSON_AddBoolToObject(o, "add_bos_token", 0) || !cJSON_AddBoolToObject(o, "add_eos_token", 0) ||
        !cJSON_AddBoolToObject(o, "clean_up_tokenization_spaces", 0) ||
        !cJSON_AddNumberToObject(o, "model_max_length", h->cfg.max_position_embeddings) ||
        !cJSON_AddStringToObject(o, "chat_template", chat_template)) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

static cJSON *generation_config(const fy_host_model *h) {
    int32_t id[3];
    special_ids(h, id);
    static const char *const keys[3] = {"bos_token_id", "eos_token_id", "pad_token_id"};
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    for (int i = 0; i < 3; i++)
        if (id[i] >= 0 && !cJSON_AddNumberToObject(o, keys[i], id[i])) {
            cJSON_Delete(o);
            return NULL;
        }
    return o;
}

int fy_hf_write_meta(const fy_host_model *h, const char *dir, fy_st_dtype dt, fy_err *err) {
    fy_config c = h->cfg;
    int32_t id[3];
    special_ids(h, id);
    c.bos_token_id = id[0], c.eos_token_id = id[1];
    const char *s[3];
    special_strings(h, s);
    cJSON *j[3] = {generation_config(h), tokenizer_config(h), cJSON_CreateObject()};
    static const char *const names[3] = {"generation_config.json", "tokenizer_config.json", "special_tokens_map.json"};
    int rc = write_config(&c, dt, dir, err);
    if (j[2] && add_specials(j[2], s)) rc = rc ? rc : fy_fail(err, "out of memory writing %s/%s", dir, names[2]);
    for (int i = 0; i < 3 && !rc; i++)
        if (!j[i]) rc = fy_fail(err, "out of memory writing %s/%s", dir, names[i]);
        else if (fy_hf_write_json(dir, names[i], j[i], err)) rc = -1;
    for (int i = 0; i < 3; i++) cJSON_Delete(j[i]);
    if (rc) return rc;
    char p[FY_PATH_MAX + 32];
    snprintf(p, sizeof p, "%s/tokenizer.json", dir);
    return fy_tokenizer_save(h->tok, p, err);
}

/* tokenizer_config's "bos_token": a string or {"content": string}. */
static const char *token_field(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (cJSON_IsObject(v)) v = cJSON_GetObjectItemCaseSensitive(v, "content");
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* generation_config's "eos_token_id": an int or a list (the first). */
static int id_field(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (cJSON_IsArray(v)) v = cJSON_GetArrayItem(v, 0);
    return cJSON_IsNumber(v) ? v->valueint : -1;
}

/* bos/eos (into c) and pad: tokenizer_config.json's token names, else
 * generation_config.json's ids, else config.json's; then set in the
 * tokenizer, so generation stops at this model's eos. */
static int resolve_ids(const char *dir, fy_tokenizer *tok, fy_config *c, fy_err *err) {
    int miss;
    cJSON *tc = fy_hf_read_json(dir, "tokenizer_config.json", &miss, err);
    if (!tc && !miss) return -1;
    cJSON *gc = fy_hf_read_json(dir, "generation_config.json", &miss, err);
    if (!gc && !miss) {
        cJSON_Delete(tc);
        return -1;
    }
    int32_t pad = fy_tokenizer_pad(tok);
    int32_t *ids[3] = {&c->bos_token_id, &c->eos_token_id, &pad};
    int rc = 0;
    static const char *const ik[3] = {"bos_token_id", "eos_token_id", "pad_token_id"};
    for (int i = 0; i < 3 && !rc; i++) {
        const char *s = tc ? token_field(tc, special_keys[i]) : NULL;
        int id = gc ? id_field(gc, ik[i]) : -1;
        if (s) {
            id = fy_tokenizer_token_to_id(tok, s);
            if (id < 0)
                rc = fy_fail(err, "%s/tokenizer_config.json: %s \"%s\" is not in tokenizer.json", dir, special_keys[i], s);
        }
        if (id >= 0) *ids[i] = id;
        if (!rc && *ids[i] >= fy_tokenizer_vocab_size(tok))
            rc = fy_fail(err, "%s: %s %d is outside the tokenizer's %d tokens", dir, ik[i], *ids[i],
                         fy_tokenizer_vocab_size(tok));
    }
    if (!rc && fy_tokenizer_set_special(tok, c->bos_token_id, c->eos_token_id, pad, err))
        rc = fy_wrap(err, "%s", dir);
    cJSON_Delete(tc);
    cJSON_Delete(gc);
    return rc;
}

int fy_hf_read_tokenizer(const char *dir, fy_config *c, fy_tokenizer **tok, fy_err *err) {
    char p[FY_PATH_MAX + 32];
    snprintf(p, sizeof p, "%s/tokenizer.json", dir);
    if (!fy_file_exists(p)) return fy_fail(err, "%s: no tokenizer.json (ferry needs the tokenizer with the model)", dir);
    if (fy_tokenizer_load(p, tok, err)) return -1;
    int v = fy_tokenizer_vocab_size(*tok);
    if (v > c->vocab_size || resolve_ids(dir, *tok, c, err)) {
        if (v > c->vocab_size) fy_fail(err, "%s: %d tokens, more than config.json's vocab_size %d", p, v, c->vocab_size);
        fy_tokenizer_free(*tok);
        *tok = NULL;
        return -1;
    }
    return 0;
}
