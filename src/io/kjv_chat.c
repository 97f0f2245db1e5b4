/* Conversations about KJV verses (kjv_chat.h): verse lines parsed, example
 * k drawn from (seed, k), each written as one JSONL line through cJSON. */
#include "io/kjv_chat.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "core/fsutil.h"
#include "core/rng.h"

#define KJV_STREAM 0x6b6a76ull /* "kjv" */

/* bible-kjv's abbreviations (the order of `bible -f Gen1:1-Rev22:21`). */
static const char *const books[][2] = {
    {"Ge", "Genesis"}, {"Exo", "Exodus"}, {"Lev", "Leviticus"}, {"Num", "Numbers"}, {"Deu", "Deuteronomy"},
    {"Josh", "Joshua"}, {"Jdgs", "Judges"}, {"Ruth", "Ruth"}, {"1Sm", "1 Samuel"}, {"2Sm", "2 Samuel"},
    {"1Ki", "1 Kings"}, {"2Ki", "2 Kings"}, {"1Chr", "1 Chronicles"}, {"2Chr", "2 Chronicles"}, {"Ezra", "Ezra"},
    {"Neh", "Nehemiah"}, {"Est", "Esther"}, {"Job", "Job"}, {"Psa", "Psalms"}, {"Prv", "Proverbs"},
    {"Eccl", "Ecclesiastes"}, {"SSol", "Song of Solomon"}, {"Isa", "Isaiah"}, {"Jer", "Jeremiah"},
    {"Lam", "Lamentations"}, {"Eze", "Ezekiel"}, {"Dan", "Daniel"}, {"Hos", "Hosea"}, {"Joel", "Joel"},
    {"Amos", "Amos"}, {"Obad", "Obadiah"}, {"Jonah", "Jonah"}, {"Mic", "Micah"}, {"Nahum", "Nahum"},
    {"Hab", "Habakkuk"}, {"Zep", "Zephaniah"}, {"Hag", "Haggai"}, {"Zec", "Zechariah"}, {"Mal", "Malachi"},
    {"Mat", "Matthew"}, {"Mark", "Mark"}, {"Luke", "Luke"}, {"John", "John"}, {"Acts", "Acts"},
    {"Rom", "Romans"}, {"1Cor", "1 Corinthians"}, {"2Cor", "2 Corinthians"}, {"Gal", "Galatians"},
    {"Eph", "Ephesians"}, {"Phi", "Philippians"}, {"Col", "Colossians"}, {"1Th", "1 Thessalonians"},
    {"2Th", "2 Thessalonians"}, {"1Tim", "1 Timothy"}, {"2Tim", "2 Timothy"}, {"Titus", "Titus"},
    {"Phmn", "Philemon"}, {"Heb", "Hebrews"}, {"Jas", "James"}, {"1Pet", "1 Peter"}, {"2Pet", "2 Peter"},
    {"1Jn", "1 John"}, {"2Jn", "2 John"}, {"3Jn", "3 John"}, {"Jude", "Jude"}, {"Rev", "Revelation"},
};

const char *fy_kjv_book_name(const char *abbr) {
    for (size_t i = 0; i < sizeof books / sizeof books[0]; i++)
        if (!strcmp(abbr, books[i][0])) return books[i][1];
    return abbr;
}

typedef struct verse {
    char ref[64];     /* "Genesis 1:3" */
    char book[16];    /* abbreviation, to know whether the next verse is in the same book */
    const char *text; /* into the caller's buffer (NUL-terminated copy below) */
} verse;

/* "Ge1:3 text" -> v; 0 when the line is no verse. */
static int parse_verse(char *line, verse *v) {
    char *p = line;
    if (*p >= '1' && *p <= '3') p++;
    while (isalpha((unsigned char)*p)) p++;
    size_t bl = (size_t)(p - line);
    unsigned ch = 0, vs = 0;
    int used = 0;
    if (bl == 0 || bl >= sizeof v->book || !isdigit((unsigned char)*p) ||
        sscanf(p, "%u:%u %n", &ch, &vs, &used) != 2 || !used || !p[used])
        return 0;
    memcpy(v->book, line, bl);
    v->book[bl] = 0;
    snprintf(v->ref, sizeof v->ref, "%s %u:%u", fy_kjv_book_name(v->book), ch, vs);
    v->text = p + used;
    return 1;
}

/* One conversation as a JSON line (malloc'd). */
static char *conversation(const verse *vs, long nv, long i, int kind) {
    char q[256];
    cJSON *root = cJSON_CreateObject(), *msgs = cJSON_AddArrayToObject(root, "messages");
    const char *turns[4];
    char *quoted = NULL;
    int nt = 2;
    if (kind == 2) {
        size_t n = strlen(vs[i].text) + 32;
        quoted = malloc(n);
        if (quoted) snprintf(quoted, n, "Which book says \"%s\"?", vs[i].text);
        turns[0] = quoted, turns[1] = vs[i].ref;
    } else {
        snprintf(q, sizeof q, "What does %s say?", vs[i].ref);
        turns[0] = q, turns[1] = vs[i].text;
        if (kind == 3 && i + 1 < nv && !strcmp(vs[i].book, vs[i + 1].book))
            turns[2] = "And the next verse?", turns[3] = vs[i + 1].text, nt = 4;
    }
    for (int t = 0; t < nt && msgs && turns[t]; t++) {
        cJSON *m = cJSON_CreateObject();
        cJSON_AddItemToArray(msgs, m);
        cJSON_AddStringToObject(m, "role", t % 2 ? "assistant" : "user");
        cJSON_AddStringToObject(m, "content", turns[t]);
    }
    char *s = turns[0] ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    free(quoted);
    return s;
}

/* The verses of the text (lines cut in place) with at most max_chars bytes. */
static long read_verses(char *text, int max_chars, verse **out) {
    long n = 0, cap = 0;
    *out = NULL;
    for (char *line = text, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = 0;
        verse v;
        if (!parse_verse(line, &v) || (max_chars > 0 && strlen(v.text) > (size_t)max_chars)) continue;
        if (n == cap) {
            verse *w = realloc(*out, (size_t)(cap = cap ? 2 * cap : 1024) * sizeof *w);
            if (!w) return -1;
            *out = w;
        }
        (*out)[n++] = v;
    }
    return n;
}

int fy_kjv_chat_write(const char *verses, size_t len, const fy_kjv_chat_opts *o, const char *out_path,
                      long *n_verses, fy_err *err) {
    char *text = malloc(len + 1);
    if (!text) return fy_fail(err, "out of memory");
    memcpy(text, verses, len);
    text[len] = 0;
    verse *vs = NULL;
    long nv = read_verses(text, o->max_chars, &vs);
    *n_verses = nv;
    int rc = nv < 0 ? fy_fail(err, "out of memory") : 0;
    if (!rc && nv == 0) rc = fy_fail(err, "no verse lines (\"Ge1:3 text\", as `bible -f` prints them) in the input");
    fy_atomic_file a;
    if (!rc && fy_atomic_open(&a, out_path, err)) rc = -1;
    else if (!rc) {
        for (long k = 0; k < o->n && !rc; k++) {
            long i = (long)(fy_rng_u64(o->seed, KJV_STREAM, (uint64_t)k) % (uint64_t)nv);
            int kind = (int)(fy_rng_u64(o->seed, KJV_STREAM + 1, (uint64_t)k) % 4);
            char *line = conversation(vs, nv, i, kind < 2 ? 0 : kind);
            rc = !line ? fy_fail(err, "out of memory")
                       : fy_atomic_write(&a, line, strlen(line), err) || fy_atomic_write(&a, "\n", 1, err);
            free(line);
        }
        if (rc) fy_atomic_abort(&a);
        else rc = fy_atomic_commit(&a, err);
    }
    free(vs);
    free(text);
    return rc ? -1 : 0;
}
