/* Hugging Face normalizers and pre-tokenizers beyond ferry's own ByteLevel
 * GPT-2 split (docs/DESIGN.md §3.6): the NFC normalizer (utf8proc) and the
 * pre-tokenizers Split (regex or literal, five delimiter behaviours,
 * invert), Digits and ByteLevel, alone or in a Sequence, read from
 * tokenizer.json and applied as `tokenizers` applies them. Hugging Face
 * regexes are Oniguruma (Ruby syntax); they are translated to PCRE2
 * (UTF + UCP) here, and a construct whose meaning differs and cannot be
 * translated is refused by name. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "io/tokenizer_impl.h"

#define FY_HF_MAX_STEPS 16

enum { STEP_SPLIT, STEP_BYTELEVEL };
enum { B_REMOVED, B_ISOLATED, B_MERGED_PREV, B_MERGED_NEXT, B_CONTIGUOUS };

typedef struct hf_step {
    int kind;
    int behavior, invert;  /* Split (Digits is a Split on \p{N}) */
    int add_prefix_space;  /* ByteLevel */
    pcre2_code *re;        /* NULL: ByteLevel without use_regex splits nothing */
    int jit;
} hf_step;

struct fy_hf_pre {
    int n;
    hf_step steps[FY_HF_MAX_STEPS];
    int nfc;
    const char *name; /* llama.cpp's tokenizer.ggml.pre, or NULL */
    int dsv3;         /* DeepSeek-V3's chain (with or without NFC) */
    uint32_t ovec;    /* largest ovector any step needs */
};

/* ---- the llama.cpp names ---- */

/* DeepSeek-V3's three Split regexes, as its tokenizer.json has them (the
 * third with literal CR LF characters; llama.cpp's llama-vocab.cpp,
 * LLAMA_VOCAB_PRE_TYPE_DEEPSEEK3_LLM, has the same with \r \n escapes). */
static const char DSV3_RE1[] = "\\p{N}{1,3}";
static const char DSV3_RE2[] = "[\xE4\xB8\x80-\xE9\xBE\xA5\xE3\x81\x80-\xE3\x82\x9F\xE3\x82\xA0-\xE3\x83\xBF]+";
static const char DSV3_RE3[] =
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+|"
    " ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+";
static const char DSV3_RE3_ESC[] =
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\\r\\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+|"
    " ?[\\p{P}\\p{S}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/* ---- Oniguruma -> PCRE2 ---- */

#define FY_WS_CLASS "\\t\\n\\x0B\\f\\r\\x{85}\\p{Z}"

/* ByteLevel's own regex (use_regex), as `tokenizers` writes it. */
static const char FY_GPT2_PATTERN_HF[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static int is_hex(char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* Translates one backslash escape at p (p[0] == '\\'); returns how many
 * source bytes it used, 0 with *why set when it cannot be translated. */
static size_t tr_escape(const char *p, int in_class, fy_strbuf *o, const char **why) {
    char c = p[1];
    int r = 0;
    if (c == 0) {
        *why = "a trailing backslash";
        return 0;
    }
    if (c == 's') {
        r = fy_strbuf_add(o, in_class ? FY_WS_CLASS : "[" FY_WS_CLASS "]",
                          strlen(in_class ? FY_WS_CLASS : "[" FY_WS_CLASS "]"), NULL);
    } else if (c == 'S') {
        if (in_class) {
            *why = "\\S inside a character class";
            return 0;
        }
        r = fy_strbuf_add(o, "[^" FY_WS_CLASS "]", strlen("[^" FY_WS_CLASS "]"), NULL);
    } else if (c == 'h' || c == 'H') {
        *why = "\\h or \\H (a hex digit in Oniguruma, horizontal space in PCRE2)";
        return 0;
    } else if (c == 'u' && is_hex(p[2]) && is_hex(p[3]) && is_hex(p[4]) && is_hex(p[5])) {
        r = fy_strbuf_add(o, "\\x{", 3, NULL) || fy_strbuf_add(o, p + 2, 4, NULL) ||
            fy_strbuf_add(o, "}", 1, NULL);
        if (r) *why = "out of memory";
        return r ? 0 : 6;
    } else {
        r = fy_strbuf_add(o, p, 2, NULL);
    }
    if (r) {
        *why = "out of memory";
        return 0;
    }
    return 2;
}

/* Oniguruma (Ruby syntax, as `tokenizers` compiles it) to PCRE2: \s and
 * \S spelled as Oniguruma has them, \uHHHH as \x{HHHH}; ^ and $ are line
 * anchors in Ruby (compiled with PCRE2_MULTILINE). Refused: nested classes
 * and && (Ruby set operations), (?m) (dot-all in Ruby), \h. */
static int tr_regex(const char *src, fy_strbuf *o, const char **why) {
    int in_class = 0;
    const char *p = src;
    while (*p) {
        size_t used = 1;
        if (*p == '\\') {
            used = tr_escape(p, in_class, o, why);
            if (!used) return -1;
            p += used;
            continue;
        }
        if (in_class) {
            if (*p == '[' && p[1] != ':') {
                *why = "a nested character class (Ruby syntax)";
                return -1;
            }
            if (*p == '&' && p[1] == '&') {
                *why = "&& in a character class (Ruby set intersection)";
                return -1;
            }
            if (*p == '[') { /* POSIX [:name:]: copy through ":]" */
                const char *e = strstr(p, ":]");
                if (!e) {
                    *why = "an unterminated [: in a character class";
                    return -1;
                }
                used = (size_t)(e + 2 - p);
            } else if (*p == ']') {
                in_class = 0;
            }
        } else if (*p == '[') {
            in_class = 1;
            used = 1 + (p[1] == '^');
            if (p[used] == ']') used++; /* a leading ] is literal */
        } else if (*p == '(' && p[1] == '?') {
            size_t k = 2;
            while (p[k] && strchr("imx-", p[k])) {
                if (p[k] == 'm') {
                    *why = "the m flag (dot-all in Ruby, multi-line in PCRE2)";
                    return -1;
                }
                k++;
            }
        }
        if (fy_strbuf_add(o, p, used, NULL)) {
            *why = "out of memory";
            return -1;
        }
        p += used;
    }
    if (in_class) {
        *why = "an unterminated character class";
        return -1;
    }
    return 0;
}

/* Compiles a pattern (Oniguruma regex, or a literal when `literal`). */
static int compile_step(hf_step *st, const char *pat, int literal, const char *name, const char *key,
                        fy_err *err) {
    fy_strbuf o = {0};
    const char *why = NULL;
    uint32_t opts = PCRE2_UTF | PCRE2_UCP | PCRE2_NEVER_BACKSLASH_C;
    if (literal) {
        opts = PCRE2_UTF | PCRE2_LITERAL; /* the only options PCRE2_LITERAL allows */
        if (fy_strbuf_add(&o, pat, strlen(pat), NULL)) why = "out of memory";
    } else {
        opts |= PCRE2_MULTILINE;
        if (fy_strbuf_add(&o, "(*LF)", 5, NULL) == 0) tr_regex(pat, &o, &why);
        else why = "out of memory";
    }
    if (why) {
        free(o.p);
        return fy_fail(err, "%s: %s: regex \"%s\" uses %s, which ferry cannot translate to PCRE2", name,
                       key, pat, why);
    }
    int ec;
    PCRE2_SIZE eo;
    st->re = pcre2_compile((PCRE2_SPTR)(o.p ? o.p : ""), o.n, opts, &ec, &eo, NULL);
    free(o.p);
    if (!st->re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ec, msg, sizeof msg);
        return fy_fail(err, "%s: %s: regex \"%s\" does not compile: %s", name, key, pat, (const char *)msg);
    }
    st->jit = pcre2_jit_compile(st->re, PCRE2_JIT_COMPLETE) == 0;
    return 0;
}

/* ---- reading the JSON ---- */

static const char *jtype(const cJSON *j) {
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "type");
    return cJSON_IsString(t) ? t->valuestring : NULL;
}

/* A boolean key: absent gives dflt; anything but a boolean is refused. */
static int jbool(const cJSON *j, const char *k, int dflt, int *v, const char *name, const char *path,
                 fy_err *err) {
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(j, k);
    if (!b) {
        *v = dflt;
        return 0;
    }
    if (!cJSON_IsBool(b)) return fy_fail(err, "%s: %s.%s is not a boolean", name, path, k);
    *v = cJSON_IsTrue(b);
    return 0;
}

static hf_step *new_step(fy_hf_pre *p, const char *name, fy_err *err) {
    if (p->n >= FY_HF_MAX_STEPS) {
        fy_fail(err, "%s: pre_tokenizer has more than %d steps", name, FY_HF_MAX_STEPS);
        return NULL;
    }
    hf_step *s = &p->steps[p->n++];
    memset(s, 0, sizeof *s);
    return s;
}

static int parse_split(fy_hf_pre *p, const cJSON *j, const char *name, const char *path, fy_err *err) {
    static const char *const beh[] = {"Removed", "Isolated", "MergedWithPrevious", "MergedWithNext",
                                      "Contiguous"};
    const cJSON *pat = cJSON_GetObjectItemCaseSensitive(j, "pattern");
    const cJSON *re = cJSON_GetObjectItemCaseSensitive(pat, "Regex");
    const cJSON *lit = cJSON_GetObjectItemCaseSensitive(pat, "String");
    if (!cJSON_IsString(re) && !cJSON_IsString(lit))
        return fy_fail(err, "%s: %s.pattern must be {\"Regex\": ...} or {\"String\": ...}", name, path);
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(j, "behavior");
    int bi = -1;
    for (int k = 0; k < 5 && cJSON_IsString(b); k++)
        if (strcmp(b->valuestring, beh[k]) == 0) bi = k;
    if (bi < 0)
        return fy_fail(err, "%s: %s.behavior %s%s%s is not one of Removed, Isolated, MergedWithPrevious, "
                            "MergedWithNext, Contiguous", name, path, cJSON_IsString(b) ? "\"" : "",
                       cJSON_IsString(b) ? b->valuestring : "(not a string)", cJSON_IsString(b) ? "\"" : "");
    hf_step *s = new_step(p, name, err);
    if (!s) return -1;
    s->kind = STEP_SPLIT;
    s->behavior = bi;
    if (jbool(j, "invert", 0, &s->invert, name, path, err)) return -1;
    char key[96];
    snprintf(key, sizeof key, "%s.pattern", path);
    return cJSON_IsString(re) ? compile_step(s, re->valuestring, 0, name, key, err)
                              : compile_step(s, lit->valuestring, 1, name, key, err);
}

static int parse_step(fy_hf_pre *p, const cJSON *j, const char *name, const char *path, int depth,
                      fy_err *err) {
    const char *ty = cJSON_IsObject(j) ? jtype(j) : NULL;
    if (!ty) return fy_fail(err, "%s: %s has no \"type\"", name, path);
    if (!strcmp(ty, "Sequence")) {
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(j, "pretokenizers"), *e;
        if (!cJSON_IsArray(a)) return fy_fail(err, "%s: %s.pretokenizers is not an array", name, path);
        if (depth > 4) return fy_fail(err, "%s: %s: Sequences nested too deep", name, path);
        int k = 0;
        cJSON_ArrayForEach(e, a) {
            char sub[96];
            snprintf(sub, sizeof sub, "%s.pretokenizers[%d]", path, k++);
            if (parse_step(p, e, name, sub, depth + 1, err)) return -1;
        }
        return 0;
    }
    if (!strcmp(ty, "Split")) return parse_split(p, j, name, path, err);
    if (!strcmp(ty, "Digits")) {
        int ind = 0;
        if (jbool(j, "individual_digits", 0, &ind, name, path, err)) return -1;
        hf_step *s = new_step(p, name, err);
        if (!s) return -1;
        /* Rust's char::is_numeric is \p{N}; runs merge (Contiguous) unless individual */
        s->kind = STEP_SPLIT;
        s->behavior = ind ? B_ISOLATED : B_CONTIGUOUS;
        return compile_step(s, "\\p{N}", 0, name, path, err);
    }
    if (!strcmp(ty, "ByteLevel")) {
        int aps = 0, ur = 1;
        if (jbool(j, "add_prefix_space", 0, &aps, name, path, err) ||
            jbool(j, "use_regex", 1, &ur, name, path, err))
            return -1;
        hf_step *s = new_step(p, name, err);
        if (!s) return -1;
        s->kind = STEP_BYTELEVEL;
        s->add_prefix_space = aps;
        s->behavior = B_ISOLATED;
        return ur ? compile_step(s, FY_GPT2_PATTERN_HF, 0, name, path, err) : 0;
    }
    return fy_fail(err, "%s: %s type \"%s\" is not supported (byte-level BPE needs ByteLevel, Split, "
                        "Digits or a Sequence of them)", name, path, ty);
}

/* normalizer: null, NFC, or a Sequence of NFCs (possibly empty). */
static int parse_normalizer(const cJSON *nz, int *nfc, const char *name, fy_err *err) {
    *nfc = 0;
    if (!nz || cJSON_IsNull(nz)) return 0;
    const char *ty = cJSON_IsObject(nz) ? jtype(nz) : NULL;
    if (ty && !strcmp(ty, "NFC")) {
        *nfc = 1;
        return 0;
    }
    if (ty && !strcmp(ty, "Sequence")) {
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(nz, "normalizers"), *e;
        if (!cJSON_IsArray(a)) return fy_fail(err, "%s: normalizer.normalizers is not an array", name);
        int k = 0;
        cJSON_ArrayForEach(e, a) {
            const char *et = cJSON_IsObject(e) ? jtype(e) : NULL;
            if (!et || strcmp(et, "NFC"))
                return fy_fail(err, "%s: normalizer.normalizers[%d] %s%s%s is not supported (only NFC)", name,
                               k, et ? "\"" : "", et ? et : "(no type)", et ? "\"" : "");
            *nfc = 1;
            k++;
        }
        return 0;
    }
    return fy_fail(err, "%s: normalizer %s%s%s is not supported (null or NFC)", name, ty ? "\"" : "",
                   ty ? ty : "(no type)", ty ? "\"" : "");
}

static int str_is(const cJSON *j, const char *a, const char *b) {
    const cJSON *pat = cJSON_GetObjectItemCaseSensitive(j, "pattern");
    const cJSON *re = cJSON_GetObjectItemCaseSensitive(pat, "Regex");
    if (!cJSON_IsString(re)) return 0;
    return !strcmp(re->valuestring, a) || (b && !strcmp(re->valuestring, b));
}

static int is_isolated_split(const cJSON *j) {
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(j, "behavior");
    return jtype(j) && !strcmp(jtype(j), "Split") && cJSON_IsString(b) &&
           !strcmp(b->valuestring, "Isolated") &&
           !cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "invert"));
}

/* pt is exactly DeepSeek-V3's Sequence. */
static int is_dsv3(const cJSON *pt) {
    if (!jtype(pt) || strcmp(jtype(pt), "Sequence")) return 0;
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(pt, "pretokenizers");
    if (cJSON_GetArraySize(a) != 4) return 0;
    const cJSON *s1 = a->child, *s2 = s1->next, *s3 = s2->next, *bl = s3->next;
    if (!is_isolated_split(s1) || !is_isolated_split(s2) || !is_isolated_split(s3)) return 0;
    if (!str_is(s1, DSV3_RE1, NULL) || !str_is(s2, DSV3_RE2, NULL) || !str_is(s3, DSV3_RE3, DSV3_RE3_ESC))
        return 0;
    return jtype(bl) && !strcmp(jtype(bl), "ByteLevel") &&
           !cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(bl, "add_prefix_space")) &&
           cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(bl, "use_regex"));
}

int fy_hf_pre_parse(const cJSON *nz, const cJSON *pt, const char *name, fy_hf_pre **out, fy_err *err) {
    *out = NULL;
    int nfc;
    if (parse_normalizer(nz, &nfc, name, err)) return -1;
    if (!pt || cJSON_IsNull(pt))
        return fy_fail(err, "%s: pre_tokenizer is null (byte-level BPE needs a ByteLevel step)", name);
    /* ferry's own: a lone ByteLevel with the GPT-2 regex, no prefix space */
    const char *ty = cJSON_IsObject(pt) ? jtype(pt) : NULL;
    if (!nfc && ty && !strcmp(ty, "ByteLevel") &&
        !cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(pt, "add_prefix_space")) &&
        !cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(pt, "use_regex")))
        return 0;
    fy_hf_pre *p = calloc(1, sizeof *p);
    if (!p) return fy_fail(err, "%s: out of memory", name);
    p->nfc = nfc;
    if (parse_step(p, pt, name, "pre_tokenizer", 0, err)) {
        fy_hf_pre_free(p);
        return -1;
    }
    int has_bl = 0;
    for (int k = 0; k < p->n; k++) {
        has_bl |= p->steps[k].kind == STEP_BYTELEVEL;
        uint32_t cc = 0;
        if (p->steps[k].re) pcre2_pattern_info(p->steps[k].re, PCRE2_INFO_CAPTURECOUNT, &cc);
        if (cc + 1 > p->ovec) p->ovec = cc + 1;
    }
    if (!has_bl) {
        fy_hf_pre_free(p);
        return fy_fail(err, "%s: pre_tokenizer has no ByteLevel step (ferry needs a byte-level BPE)", name);
    }
    if (p->ovec == 0) p->ovec = 1;
    p->dsv3 = is_dsv3(pt);
    p->name = p->dsv3 && !nfc ? "deepseek-v3" : NULL; /* llama.cpp does not normalize */
    *out = p;
    return 0;
}

void fy_hf_pre_free(fy_hf_pre *p) {
    if (!p) return;
    for (int k = 0; k < p->n; k++)
        if (p->steps[k].re) pcre2_code_free(p->steps[k].re);
    free(p);
}

int fy_hf_pre_nfc(const fy_hf_pre *p) { return p && p->nfc; }

const char *fy_hf_pre_name(const fy_hf_pre *p) { return p ? p->name : "gpt-2"; }

/* DeepSeek-V3's chain never puts a piece across a "\n" between printable
 * ASCII characters (no alternative of its regexes crosses one; NFC composes
 * nothing there), so fy_tokenizer_split_point cuts hold for it too. */
int fy_hf_pre_cut_safe(const fy_hf_pre *p) { return !p || p->dsv3; }

/* ---- applying it ---- */

typedef struct range {
    size_t b, e;
    int m; /* a match (after invert) */
} range;

typedef struct level {
    range *r;
    size_t n, cap;
    char *pfx; /* the piece with a space prepended (ByteLevel add_prefix_space) */
    size_t pcap;
} level;

struct fy_hf_scratch {
    pcre2_match_data *md;
    level lv[FY_HF_MAX_STEPS];
};

fy_hf_scratch *fy_hf_scratch_new(const fy_hf_pre *p) {
    fy_hf_scratch *sc = calloc(1, sizeof *sc);
    if (!sc) return NULL;
    sc->md = pcre2_match_data_create(p->ovec, NULL);
    if (!sc->md) {
        free(sc);
        return NULL;
    }
    return sc;
}

void fy_hf_scratch_free(fy_hf_scratch *sc) {
    if (!sc) return;
    pcre2_match_data_free(sc->md);
    for (int k = 0; k < FY_HF_MAX_STEPS; k++) {
        free(sc->lv[k].r);
        free(sc->lv[k].pfx);
    }
    free(sc);
}

static int push_range(level *L, size_t b, size_t e, int m) {
    range *r = fy_tok_grow(L->r, &L->cap, L->n + 1, sizeof *r, 32);
    if (!r) return -1;
    L->r = r;
    L->r[L->n++] = (range){b, e, m};
    return 0;
}

/* The matches of st's regex over s[0,n) and the gaps between them, in
 * order, covering it all (empty matches are skipped). */
static int find_matches(const hf_step *st, pcre2_match_data *md, const unsigned char *s, size_t n,
                        level *L) {
    size_t prev = 0, at = 0;
    L->n = 0;
    while (at <= n) {
        int rc = st->jit ? pcre2_jit_match(st->re, s, n, at, 0, md, NULL) : PCRE2_ERROR_JIT_BADOPTION;
        if (rc < 0 && rc != PCRE2_ERROR_NOMATCH)
            rc = pcre2_match(st->re, s, n, at, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md, NULL);
        if (rc < 0) break;
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t b = ov[0], e = ov[1];
        if (e == b) {
            if (b >= n) break;
            size_t need;
            fy_utf8_scan(s + b, n - b, &need);
            at = b + need;
            continue;
        }
        if (b > prev && push_range(L, prev, b, 0)) return -1;
        if (push_range(L, b, e, 1)) return -1;
        prev = at = e;
    }
    if (prev < n && push_range(L, prev, n, 0)) return -1;
    return 0;
}

/* tokenizers' split behaviours (NormalizedString::split), in place:
 * afterwards m != 0 marks a range to remove. */
static void apply_behavior(level *L, int behavior, int invert) {
    range *r = L->r;
    size_t n = L->n, k = 0;
    if (invert)
        for (size_t i = 0; i < n; i++) r[i].m = !r[i].m;
    if (behavior == B_REMOVED) return;
    if (behavior == B_ISOLATED) {
        for (size_t i = 0; i < n; i++) r[i].m = 0;
        return;
    }
    if (behavior == B_MERGED_NEXT) {
        /* walk backwards: a match joins the range after it */
        int prev = 0;
        size_t w = n;
        for (size_t i = n; i-- > 0;) {
            range c = r[i];
            if (c.m && !prev && w < n) r[w].b = c.b;
            else r[--w] = (range){c.b, c.e, 0};
            prev = c.m;
        }
        memmove(r, r + w, (n - w) * sizeof *r);
        L->n = n - w;
        return;
    }
    int prev = 0;
    for (size_t i = 0; i < n; i++) {
        range c = r[i];
        int join = behavior == B_CONTIGUOUS ? c.m == prev : (c.m && !prev);
        if (join && k > 0) r[k - 1].e = c.e;
        else r[k++] = (range){c.b, c.e, 0};
        prev = c.m;
    }
    L->n = k;
}

static int run_level(const fy_hf_pre *p, fy_hf_scratch *sc, int k, const unsigned char *s, size_t n,
                     fy_piece_fn cb, void *ctx) {
    if (n == 0) return 0;
    if (k == p->n) return cb(ctx, s, n);
    const hf_step *st = &p->steps[k];
    level *L = &sc->lv[k];
    if (st->kind == STEP_BYTELEVEL && st->add_prefix_space && s[0] != ' ') {
        char *b = fy_tok_grow(L->pfx, &L->pcap, n + 1, 1, 64);
        if (!b) return -1;
        L->pfx = b;
        b[0] = ' ';
        memcpy(b + 1, s, n);
        s = (const unsigned char *)b;
        n++;
    }
    if (!st->re) return run_level(p, sc, k + 1, s, n, cb, ctx);
    if (find_matches(st, sc->md, s, n, L)) return -1;
    apply_behavior(L, st->behavior, st->invert);
    for (size_t i = 0; i < L->n; i++) {
        if (L->r[i].m) continue;
        int r = run_level(p, sc, k + 1, s + L->r[i].b, L->r[i].e - L->r[i].b, cb, ctx);
        if (r) return r;
    }
    return 0;
}

int fy_hf_pre_split(const fy_hf_pre *p, fy_hf_scratch *sc, const unsigned char *s, size_t len,
                    fy_piece_fn cb, void *ctx) {
    size_t i = 0;
    while (i < len) {
        size_t v = fy_utf8_valid_run(s + i, len - i);
        if (v) {
            int r = run_level(p, sc, 0, s + i, v, cb, ctx);
            if (r) return r;
            i += v;
        } else { /* bytes that start no valid sequence: one piece */
            size_t j = i + 1, need;
            while (j < len && fy_utf8_scan(s + j, len - j, &need) != need) j++;
            int r = cb(ctx, s + i, j - i);
            if (r) return r;
            i = j;
        }
    }
    return 0;
}

int fy_hf_nfc_append(const unsigned char *s, size_t n, fy_strbuf *out) {
    size_t i = 0;
    while (i < n) {
        size_t v = fy_utf8_valid_run(s + i, n - i);
        if (v) {
            utf8proc_uint8_t *d = NULL;
            utf8proc_ssize_t l = utf8proc_map(s + i, (utf8proc_ssize_t)v, &d, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
            int rc = l < 0 ? -1 : fy_strbuf_add(out, d, (size_t)l, NULL);
            free(d);
            if (rc) return -1;
            i += v;
        } else {
            if (fy_strbuf_add(out, s + i, 1, NULL)) return -1;
            i++;
        }
    }
    if (!out->p && fy_strbuf_reserve(out, 0, NULL)) return -1;
    return 0;
}
