/* BPE training: count pre-token pieces, then merge the most frequent
 * adjacent pair until the vocabulary is full, updating pair counts
 * incrementally (only the words that contain the merged pair are touched). */
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <xxhash.h>

#include "core/log.h"
#include "io/tokenizer.h"
#include "io/tokenizer_impl.h"
#include "core/clock.h"

/* ---- piece counts: bytes -> count ---- */

typedef struct pc_ent {
    uint64_t h;
    uint64_t off; /* into the arena */
    uint32_t len; /* 0 = empty slot */
    uint32_t pad_;
    int64_t count;
} pc_ent;

typedef struct pcmap {
    pc_ent *e;
    uint64_t mask, n;
    char *arena;
    size_t alen, acap;
    uint64_t total;
    int oom;
} pcmap;

static int pcmap_init(pcmap *m) {
    memset(m, 0, sizeof *m);
    m->mask = 4095;
    m->e = calloc(m->mask + 1, sizeof *m->e);
    return m->e ? 0 : -1;
}

static void pcmap_free(pcmap *m) {
    free(m->e);
    free(m->arena);
    memset(m, 0, sizeof *m);
}

static int pcmap_grow(pcmap *m) {
    uint64_t nm = 2 * (m->mask + 1) - 1;
    pc_ent *ne = calloc(nm + 1, sizeof *ne);
    if (!ne) return -1;
    for (uint64_t i = 0; i <= m->mask; i++) {
        if (!m->e[i].len) continue;
        uint64_t k = m->e[i].h & nm;
        while (ne[k].len) k = (k + 1) & nm;
        ne[k] = m->e[i];
    }
    free(m->e);
    m->e = ne;
    m->mask = nm;
    return 0;
}

static int pcmap_add(pcmap *m, const void *p, size_t n, uint64_t h, int64_t count) {
    uint64_t k = h & m->mask;
    for (;; k = (k + 1) & m->mask) {
        pc_ent *e = &m->e[k];
        if (!e->len) break;
        if (e->h == h && e->len == n && memcmp(m->arena + e->off, p, n) == 0) {
            e->count += count;
            return 0;
        }
    }
    if (n > UINT32_MAX) return -1;
    char *a = fy_tok_grow(m->arena, &m->acap, m->alen + n, 1, 1 << 16);
    if (!a) return -1;
    m->arena = a;
    memcpy(m->arena + m->alen, p, n);
    pc_ent *e = &m->e[k];
    e->h = h;
    e->off = m->alen;
    e->len = (uint32_t)n;
    e->count = count;
    m->alen += n;
    if (++m->n * 2 > m->mask + 1 && pcmap_grow(m)) return -1;
    return 0;
}

static int count_piece(void *ctx, const unsigned char *p, size_t n) {
    pcmap *m = ctx;
    m->total++;
    if (pcmap_add(m, p, n, XXH3_64bits(p, n), 1)) {
        m->oom = 1;
        return 1;
    }
    return 0;
}

struct fy_bpe_trainer {
    fy_pretok pre;
    int threads;
    pcmap pieces;
};

int fy_bpe_trainer_new(fy_bpe_trainer **out, int threads, fy_err *err) {
    *out = NULL;
    fy_bpe_trainer *t = calloc(1, sizeof *t);
    if (!t || pcmap_init(&t->pieces)) {
        free(t);
        return fy_fail(err, "tokenizer training: out of memory");
    }
    if (fy_pretok_init(&t->pre, err)) {
        pcmap_free(&t->pieces);
        free(t);
        return -1;
    }
    t->threads = threads > 0 ? threads : omp_get_max_threads();
    *out = t;
    return 0;
}

void fy_bpe_trainer_free(fy_bpe_trainer *t) {
    if (!t) return;
    pcmap_free(&t->pieces);
    fy_pretok_free(&t->pre);
    free(t);
}

static int count_into(const fy_pretok *pre, pcmap *m, const unsigned char *s, size_t len) {
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(pre->re, NULL);
    if (!md) return -1;
    fy_pretok_split(pre, md, s, len, count_piece, m);
    pcre2_match_data_free(md);
    return m->oom ? -1 : 0;
}

int fy_bpe_trainer_add_text(fy_bpe_trainer *t, const char *text, size_t len, fy_err *err) {
    const unsigned char *s = (const unsigned char *)text;
    int nt = t->threads;
    if (len < (1u << 20) || nt <= 1) {
        if (count_into(&t->pre, &t->pieces, s, len))
            return fy_fail(err, "tokenizer training: out of memory counting pieces");
        return 0;
    }
    /* parallel: chunks cut where pre-tokenization cannot change, one map per thread */
    int nc = nt * 4;
    size_t *cut = malloc((nc + 1) * sizeof *cut);
    pcmap *maps = calloc(nt, sizeof *maps);
    int bad = !cut || !maps;
    for (int i = 0; i < nt && !bad; i++) bad = pcmap_init(&maps[i]);
    if (!bad) {
        fy_tok_cut_chunks(text, len, nc, cut);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) reduction(| : bad)
        for (int c = 0; c < nc; c++) {
            pcmap *m = &maps[omp_get_thread_num()];
            if (count_into(&t->pre, m, s + cut[c], cut[c + 1] - cut[c])) bad |= 1;
        }
    }
    for (int i = 0; i < nt && maps; i++) {
        pcmap *m = &maps[i];
        for (uint64_t k = 0; !bad && m->e && k <= m->mask; k++)
            if (m->e[k].len &&
                pcmap_add(&t->pieces, m->arena + m->e[k].off, m->e[k].len, m->e[k].h, m->e[k].count))
                bad = 1;
        t->pieces.total += m->total;
        pcmap_free(m);
    }
    free(maps);
    free(cut);
    if (bad) return fy_fail(err, "tokenizer training: out of memory counting pieces");
    return 0;
}

int fy_bpe_trainer_add_file(fy_bpe_trainer *t, const char *path, fy_err *err) {
    void *map;
    size_t len;
    if (fy_tok_map_file(path, &map, &len, err)) return -1;
    if (!map) return 0;
    int rc = fy_bpe_trainer_add_text(t, map, len, err);
    munmap(map, len);
    return rc ? fy_wrap(err, "%s", path) : 0;
}

/* ---- merging ----
 *
 * Every distinct piece is a doubly linked list of symbols in one arena (a
 * symbol lives at the position of its first byte). Each pair keeps its count
 * (sum of the counts of the pieces it occurs in) and a list of positions
 * where it may start (a superset: entries are checked when used). Merging a
 * pair visits only its occurrences, left to right, so the cost of training
 * does not depend on how long the pieces are. Ties and overlaps ("aaa" with
 * the pair (a,a) gives [aa, a]) follow Hugging Face's trainer. */

typedef struct tp_ent {
    uint64_t key;    /* (a << 32) | b; UINT64_MAX = empty */
    int64_t count;
    int64_t snap;    /* count before the current merge touched it */
    int32_t *occ;    /* positions where the pair may start */
    uint32_t nocc, cocc;
    uint32_t stamp;  /* merge number that last touched it */
    uint32_t merged; /* already merged: never again */
} tp_ent;

typedef struct tpmap {
    tp_ent *e;
    uint64_t mask, n;
} tpmap;

static tp_ent *tp_find(tpmap *m, uint64_t key) {
    for (uint64_t i = fy_tok_mix64(key) & m->mask;; i = (i + 1) & m->mask) {
        if (m->e[i].key == key) return &m->e[i];
        if (m->e[i].key == UINT64_MAX) return NULL;
    }
}

static int tp_alloc(tpmap *m, uint64_t mask) {
    m->e = malloc((mask + 1) * sizeof *m->e);
    if (!m->e) return -1;
    for (uint64_t i = 0; i <= mask; i++) {
        memset(&m->e[i], 0, sizeof m->e[i]);
        m->e[i].key = UINT64_MAX;
    }
    m->mask = mask;
    return 0;
}

/* Finds or inserts; the pointer is valid until the next insert. */
static tp_ent *tp_get(tpmap *m, uint64_t key) {
    uint64_t i = fy_tok_mix64(key) & m->mask;
    for (;; i = (i + 1) & m->mask) {
        if (m->e[i].key == key) return &m->e[i];
        if (m->e[i].key == UINT64_MAX) break;
    }
    if ((m->n + 1) * 2 > m->mask + 1) {
        tpmap nm;
        if (tp_alloc(&nm, 2 * (m->mask + 1) - 1)) return NULL;
        for (uint64_t k = 0; k <= m->mask; k++) {
            if (m->e[k].key == UINT64_MAX) continue;
            uint64_t j = fy_tok_mix64(m->e[k].key) & nm.mask;
            while (nm.e[j].key != UINT64_MAX) j = (j + 1) & nm.mask;
            nm.e[j] = m->e[k];
        }
        free(m->e);
        m->e = nm.e;
        m->mask = nm.mask;
        for (i = fy_tok_mix64(key) & m->mask; m->e[i].key != UINT64_MAX; i = (i + 1) & m->mask) {}
    }
    m->n++;
    m->e[i].key = key;
    return &m->e[i];
}

static int tp_add_occ(tp_ent *e, int32_t pos) {
    if (e->nocc == e->cocc) {
        uint32_t c = e->cocc ? 2 * e->cocc : 4;
        int32_t *p = realloc(e->occ, c * sizeof *p);
        if (!p) return -1;
        e->occ = p;
        e->cocc = c;
    }
    e->occ[e->nocc++] = pos;
    return 0;
}

typedef struct hent {
    int64_t count;
    int32_t a, b;
} hent;

/* max-heap: higher count first, then the lower (a, b) */
static inline int hbetter(const hent *x, const hent *y) {
    if (x->count != y->count) return x->count > y->count;
    if (x->a != y->a) return x->a < y->a;
    return x->b < y->b;
}

typedef struct theap {
    hent *h;
    size_t n, cap;
} theap;

static int th_push(theap *q, hent v) {
    hent *h = fy_tok_grow(q->h, &q->cap, q->n + 1, sizeof *h, 1024);
    if (!h) return -1;
    q->h = h;
    size_t i = q->n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!hbetter(&v, &q->h[p])) break;
        q->h[i] = q->h[p];
        i = p;
    }
    q->h[i] = v;
    return 0;
}

static hent th_pop(theap *q) {
    hent top = q->h[0], v = q->h[--q->n];
    size_t i = 0, m = q->n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= m) break;
        if (c + 1 < m && hbetter(&q->h[c + 1], &q->h[c])) c++;
        if (!hbetter(&q->h[c], &v)) break;
        q->h[i] = q->h[c];
        i = c;
    }
    if (m) q->h[i] = v;
    return top;
}

static int cmp_i32(const void *x, const void *y) {
    int32_t a = *(const int32_t *)x, b = *(const int32_t *)y;
    return (a > b) - (a < b);
}

/* State of one training run. Every distinct piece is a linked list of
 * symbols in one arena: sym (token id, -1 once merged away), nxt/prv
 * (neighbours, -1 at the ends), wid (which piece); wcnt is a piece's count. */
typedef struct trainer_run {
    int32_t *sym, *nxt, *prv, *wid;
    int64_t *wcnt;
    tpmap pairs;
    theap heap;
    uint64_t *touched; /* pairs the current merge changed */
    size_t ntouched, ctouched;
    uint32_t mstamp;
    /* the vocabulary: ids < 256 are the bytes themselves, others live in tb */
    int32_t n_tokens, target;
    uint64_t *toff;
    uint32_t *tlen;
    char *tb;
    size_t tblen, tbcap;
    int32_t *tslot; /* token bytes -> id, to notice a merge whose result exists */
    uint64_t tsmask;
    int32_t *merges; /* 3 per merge: left, right, result */
    size_t cmerges;
    int32_t n_merges;
} trainer_run;

static void run_free(trainer_run *R) {
    if (R->pairs.e)
        for (uint64_t k = 0; k <= R->pairs.mask; k++) free(R->pairs.e[k].occ);
    free(R->pairs.e);
    free(R->heap.h);
    free(R->touched);
    free(R->merges);
    free(R->sym);
    free(R->nxt);
    free(R->prv);
    free(R->wid);
    free(R->wcnt);
    free(R->toff);
    free(R->tlen);
    free(R->tb);
    free(R->tslot);
}

/* Adds d to a pair's count (recording it as touched by this merge) and, if
 * pos >= 0, lists pos as a place where it starts. */
static int pair_delta(trainer_run *r, int32_t a, int32_t b, int64_t d, int32_t pos) {
    uint64_t k = fy_tok_pair_key(a, b);
    tp_ent *e = tp_get(&r->pairs, k);
    if (!e) return -1;
    if (e->stamp != r->mstamp) {
        e->stamp = r->mstamp;
        e->snap = e->count;
        uint64_t *p = fy_tok_grow(r->touched, &r->ctouched, r->ntouched + 1, sizeof *p, 1024);
        if (!p) return -1;
        r->touched = p;
        r->touched[r->ntouched++] = k;
    }
    e->count += d;
    return pos >= 0 ? tp_add_occ(e, pos) : 0;
}

/* The options, checked; *target is the number of non-special tokens. */
static int check_train_opts(const fy_tok_train_opts *opts, const pcmap *pm, int32_t *target,
                            int64_t *min_freq, fy_err *err) {
    int vocab_size = opts ? opts->vocab_size : 0;
    *min_freq = opts && opts->min_freq > 0 ? opts->min_freq : 2;
    if (vocab_size < FY_TOK_MIN_VOCAB)
        return fy_fail(err, "tokenizer training: vocab size %d is too small (at least %d: 256 "
                            "bytes + %d special tokens)", vocab_size, FY_TOK_MIN_VOCAB, FY_TOK_N_SPECIAL);
    if (vocab_size > FY_TOK_MAX_VOCAB)
        return fy_fail(err, "tokenizer training: vocab size %d is too large (at most %d)", vocab_size,
                       FY_TOK_MAX_VOCAB);
    if (pm->alen >= (size_t)INT32_MAX)
        return fy_fail(err, "tokenizer training: %zu bytes of distinct pieces; at most %d are "
                            "supported", pm->alen, INT32_MAX - 1);
    *target = vocab_size - FY_TOK_N_SPECIAL;
    return 0;
}

/* Allocates the run: symbol arena for the pieces, the 256 byte tokens. */
static int run_init(trainer_run *R, const pcmap *pm, int32_t target) {
    const size_t npos = pm->alen;
    R->target = target;
    R->n_tokens = 256;
    R->sym = malloc((npos + 1) * sizeof *R->sym);
    R->nxt = malloc((npos + 1) * sizeof *R->nxt);
    R->prv = malloc((npos + 1) * sizeof *R->prv);
    R->wid = malloc((npos + 1) * sizeof *R->wid);
    R->wcnt = malloc((pm->n + 1) * sizeof *R->wcnt);
    R->toff = malloc((size_t)(target + 1) * sizeof *R->toff);
    R->tlen = malloc((size_t)(target + 1) * sizeof *R->tlen);
    R->tsmask = 1;
    while (R->tsmask + 1 < 2 * (uint64_t)target) R->tsmask = 2 * R->tsmask + 1;
    R->tslot = malloc((R->tsmask + 1) * sizeof *R->tslot);
    if (!R->sym || !R->nxt || !R->prv || !R->wid || !R->wcnt || !R->toff || !R->tlen || !R->tslot ||
        tp_alloc(&R->pairs, 4095))
        return -1;
    for (uint64_t i = 0; i <= R->tsmask; i++) R->tslot[i] = -1;
    for (int32_t i = 0; i < 256; i++) {
        R->toff[i] = 0;
        R->tlen[i] = 1;
    }
    return 0;
}

/* The pieces as linked symbol lists; initial pair counts and occurrences;
 * every pair queued. */
static int load_pieces(trainer_run *R, const pcmap *pm) {
    int32_t w = 0, pos = 0;
    for (uint64_t k = 0; k <= pm->mask; k++) {
        const pc_ent *e = &pm->e[k];
        if (!e->len) continue;
        const unsigned char *p = (const unsigned char *)pm->arena + e->off;
        R->wcnt[w] = e->count;
        for (uint32_t i = 0; i < e->len; i++) {
            int32_t q = pos + (int32_t)i;
            R->sym[q] = p[i];
            R->wid[q] = w;
            R->prv[q] = i ? q - 1 : -1;
            R->nxt[q] = i + 1 < e->len ? q + 1 : -1;
            if (i + 1 < e->len) {
                tp_ent *pe = tp_get(&R->pairs, fy_tok_pair_key(p[i], p[i + 1]));
                if (!pe || tp_add_occ(pe, q)) return -1;
                pe->count += e->count;
            }
        }
        pos += (int32_t)e->len;
        w++;
    }
    for (uint64_t k = 0; k <= R->pairs.mask; k++) {
        const tp_ent *e = &R->pairs.e[k];
        if (e->key != UINT64_MAX && e->count > 0 &&
            th_push(&R->heap, (hent){e->count, (int32_t)(e->key >> 32), (int32_t)(uint32_t)e->key}))
            return -1;
    }
    return 0;
}

/* Pops the most frequent pair not yet merged whose queued count is current
 * (a stale entry with a lower count is re-queued; a higher one has its own
 * entry). 1 with *top and its map entry, 0 when none occurs min_freq times,
 * -1 when out of memory. */
static int next_pair(trainer_run *R, int64_t min_freq, hent *top, tp_ent **pe) {
    while (R->heap.n) {
        *top = th_pop(&R->heap);
        tp_ent *e = tp_find(&R->pairs, fy_tok_pair_key(top->a, top->b));
        if (!e || e->merged) continue;
        if (e->count != top->count) {
            if (e->count > 0 && e->count < top->count &&
                th_push(&R->heap, (hent){e->count, top->a, top->b}))
                return -1;
            continue;
        }
        if (top->count < min_freq) return 0;
        *pe = e;
        return 1;
    }
    return 0;
}

/* The token a+b: an existing one with the same bytes, else a new id. */
static int32_t token_for(trainer_run *R, int32_t a, int32_t b) {
    size_t la = R->tlen[a], lb = R->tlen[b], nl = la + lb;
    char *tb = fy_tok_grow(R->tb, &R->tbcap, R->tblen + nl, 1, 1 << 16);
    if (!tb) return -1;
    R->tb = tb;
    char *nb = tb + R->tblen;
    unsigned char ca = (unsigned char)a, cb = (unsigned char)b;
    memcpy(nb, a < 256 ? (const char *)&ca : tb + R->toff[a], la);
    memcpy(nb + la, b < 256 ? (const char *)&cb : tb + R->toff[b], lb);
    uint64_t slot = XXH3_64bits(nb, nl) & R->tsmask;
    for (; R->tslot[slot] >= 0; slot = (slot + 1) & R->tsmask) {
        int32_t o = R->tslot[slot];
        if (R->tlen[o] == nl && memcmp(tb + R->toff[o], nb, nl) == 0) return o;
    }
    int32_t res = R->n_tokens++;
    R->toff[res] = R->tblen;
    R->tlen[res] = (uint32_t)nl;
    R->tblen += nl;
    R->tslot[slot] = res;
    return res;
}

static int record_merge(trainer_run *R, int32_t a, int32_t b, int32_t res) {
    int32_t *m = fy_tok_grow(R->merges, &R->cmerges, (size_t)R->n_merges + 1, 3 * sizeof *m, 1024);
    if (!m) return -1;
    R->merges = m;
    m[3 * R->n_merges] = a;
    m[3 * R->n_merges + 1] = b;
    m[3 * R->n_merges + 2] = res;
    R->n_merges++;
    return 0;
}

/* Replaces (a, b) by res at every occurrence, left to right, moving the
 * counts of the neighbouring pairs; then queues the pairs that gained. */
static int apply_merge(trainer_run *R, tp_ent *pe, int32_t a, int32_t b, int32_t res) {
    pe->merged = 1;
    int32_t *occ = pe->occ, *sym = R->sym, *nxt = R->nxt, *prv = R->prv;
    uint32_t nocc = pe->nocc;
    pe->occ = NULL;
    pe->nocc = pe->cocc = 0;
    qsort(occ, nocc, sizeof *occ, cmp_i32);
    R->mstamp++;
    R->ntouched = 0;
    int rc = 0;
    for (uint32_t k = 0; k < nocc && !rc; k++) {
        int32_t i = occ[k];
        if (k && occ[k - 1] == i) continue;
        int32_t j = nxt[i];
        if (sym[i] != a || j < 0 || sym[j] != b) continue;
        int64_t c = R->wcnt[R->wid[i]];
        int32_t L = prv[i], Rn = nxt[j];
        rc = (L >= 0 && (pair_delta(R, sym[L], a, -c, -1) || pair_delta(R, sym[L], res, c, L))) ||
             (Rn >= 0 && (pair_delta(R, b, sym[Rn], -c, -1) || pair_delta(R, res, sym[Rn], c, i))) ||
             pair_delta(R, a, b, -c, -1);
        sym[i] = res;
        sym[j] = -1;
        nxt[i] = Rn;
        if (Rn >= 0) prv[Rn] = i;
    }
    free(occ);
    for (size_t k = 0; k < R->ntouched && !rc; k++) {
        tp_ent *e = tp_find(&R->pairs, R->touched[k]);
        if (!e->merged && e->count > e->snap)
            rc = th_push(&R->heap, (hent){e->count, (int32_t)(R->touched[k] >> 32),
                                          (int32_t)(uint32_t)R->touched[k]});
    }
    return rc ? -1 : 0;
}

/* The tokenizer: bytes, merged tokens, then the specials. */
static int assemble(const trainer_run *R, fy_tokenizer **out, fy_err *err) {
    int32_t nv = R->n_tokens + FY_TOK_N_SPECIAL;
    char **strs = calloc(nv, sizeof *strs);
    uint8_t *types = malloc(nv);
    int rc = -1;
    if (!strs || !types) goto oom;
    memset(types, FY_TOKEN_NORMAL, nv);
    for (int32_t i = 0; i < R->n_tokens; i++) {
        unsigned char c = (unsigned char)i;
        strs[i] = i < 256 ? fy_tok_bytes_to_str(&c, 1)
                          : fy_tok_bytes_to_str((const unsigned char *)R->tb + R->toff[i], R->tlen[i]);
        if (!strs[i]) goto oom;
    }
    static const char *const specials[FY_TOK_N_SPECIAL] = {FY_TOK_BOS, FY_TOK_EOS, FY_TOK_PAD};
    for (int k = 0; k < FY_TOK_N_SPECIAL; k++) {
        strs[R->n_tokens + k] = strdup(specials[k]);
        if (!strs[R->n_tokens + k]) goto oom;
        types[R->n_tokens + k] = FY_TOKEN_CONTROL;
    }
    fy_tokenizer *tok = NULL;
    rc = fy_tok_new(nv, strs, types, "tokenizer training", &tok, err) ||
                 fy_tok_set_merges(tok, R->n_merges, R->merges, "tokenizer training", err)
             ? -1
             : 0;
    if (rc) fy_tokenizer_free(tok);
    else *out = tok;
    goto done;
oom:
    rc = fy_fail(err, "tokenizer training: out of memory");
done:
    for (int32_t i = 0; strs && i < nv; i++) free(strs[i]);
    free(strs);
    free(types);
    return rc;
}

int fy_bpe_trainer_train(fy_bpe_trainer *tr, const fy_tok_train_opts *opts, fy_tokenizer **out,
                         fy_err *err) {
    *out = NULL;
    const pcmap *pm = &tr->pieces;
    int32_t target = 0;
    int64_t min_freq = 0;
    if (check_train_opts(opts, pm, &target, &min_freq, err)) return -1;
    double t0 = fy_now_s();
    trainer_run R = {0};
    int found = 0;
    if (run_init(&R, pm, target) || load_pieces(&R, pm)) goto oom;
    hent top;
    tp_ent *pe;
    while (R.n_tokens < target && (found = next_pair(&R, min_freq, &top, &pe)) == 1) {
        int32_t res = token_for(&R, top.a, top.b);
        if (res < 0 || record_merge(&R, top.a, top.b, res) || apply_merge(&R, pe, top.a, top.b, res))
            goto oom;
    }
    if (found < 0) goto oom;
    if (R.n_tokens < target)
        fy_warn("tokenizer training: vocabulary is %d, not the %d asked: no pair left that occurs "
                "at least %lld times", R.n_tokens + FY_TOK_N_SPECIAL, target + FY_TOK_N_SPECIAL,
                (long long)min_freq);
    int rc = assemble(&R, out, err);
    if (rc == 0)
        fy_info("tokenizer: trained %d merges, vocab %d, from %llu pieces (%llu distinct) in %.2f s",
                (int)R.n_merges, (int)(R.n_tokens + FY_TOK_N_SPECIAL), (unsigned long long)pm->total,
                (unsigned long long)pm->n, fy_now_s() - t0);
    run_free(&R);
    return rc;
oom:
    run_free(&R);
    return fy_fail(err, "tokenizer training: out of memory");
}

int fy_tokenizer_train_text(const char *text, size_t len, const fy_tok_train_opts *opts,
                            fy_tokenizer **out, fy_err *err) {
    *out = NULL;
    fy_bpe_trainer *t;
    if (fy_bpe_trainer_new(&t, opts ? opts->threads : 0, err)) return -1;
    int rc = fy_bpe_trainer_add_text(t, text, len, err);
    if (rc == 0) rc = fy_bpe_trainer_train(t, opts, out, err);
    fy_bpe_trainer_free(t);
    return rc;
}

int fy_tokenizer_train_files(const char *const *paths, int n_paths, const fy_tok_train_opts *opts,
                             fy_tokenizer **out, fy_err *err) {
    *out = NULL;
    if (opts && opts->vocab_size < FY_TOK_MIN_VOCAB)
        return fy_fail(err, "tokenizer training: vocab size %d is too small (at least %d: 256 "
                            "bytes + %d special tokens)", opts->vocab_size, FY_TOK_MIN_VOCAB,
                       FY_TOK_N_SPECIAL);
    fy_bpe_trainer *t;
    if (fy_bpe_trainer_new(&t, opts ? opts->threads : 0, err)) return -1;
    int rc = 0;
    for (int i = 0; i < n_paths && rc == 0; i++) rc = fy_bpe_trainer_add_file(t, paths[i], err);
    if (rc == 0) rc = fy_bpe_trainer_train(t, opts, out, err);
    fy_bpe_trainer_free(t);
    return rc;
}
