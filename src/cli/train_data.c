/* Where `ferry train` gets its data: a prepared shard directory, text files
 * (one file, or a directory's *.txt) or the default corpus, tokenized once.
 * Paths never reach a shell: directories are walked here, programs spawned. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <locale.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/train_cli.h"
#include "core/fsutil.h"
#include "core/strbuf.h"
#include "io/prepare.h"

static int is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static int has_shards(const char *dir) {
    char p[FY_PATH_MAX + 32];
    snprintf(p, sizeof p, "%s/train-00000.bin", dir);
    return fy_file_exists(p);
}

/* Copies `bible`'s output from `in` to `out` without the verse references
 * ("Gen1:1 In the beginning" -> "In the beginning"). */
static int strip_references(FILE *in, FILE *out) {
    regex_t re;
    if (regcomp(&re, "^[1-3]?[A-Za-z]+[0-9]+:[0-9]+ ", REG_EXTENDED)) return -1;
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    regmatch_t m;
    while ((n = getline(&line, &cap, in)) > 0) {
        size_t skip = regexec(&re, line, 1, &m, 0) == 0 ? (size_t)m.rm_eo : 0;
        fwrite(line + skip, 1, (size_t)n - skip, out);
    }
    free(line);
    regfree(&re);
    return ferror(in) || ferror(out) ? -1 : 0;
}

/* Runs `bible -f Gen1:1-Rev22:21` (stderr discarded) into `tmp`, the
 * references stripped. Success is judged by the size of the result. */
static void extract_kjv(const char *tmp) {
    char *argv[] = {"bible", "-f", "Gen1:1-Rev22:21", NULL};
    int fd[2];
    if (pipe2(fd, O_CLOEXEC)) return;
    int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
    pid_t pid;
    fy_err ignore;
    int started = fy_cli_spawn(argv, fd[1], devnull, &pid, &ignore) == 0;
    close(fd[1]);
    if (devnull >= 0) close(devnull);
    FILE *in = fdopen(fd[0], "r"), *out = fopen(tmp, "w");
    if (in && out && started) strip_references(in, out);
    if (out) fclose(out);
    if (in) fclose(in);
    else close(fd[0]);
    if (started) fy_cli_wait(pid);
}

/* The default corpus: the King James Bible from Debian's bible-kjv, one
 * verse per line without references. Extracted once into DIR/kjv.txt. */
static int default_corpus(const char *dir, char *txt, size_t cap, fy_err *err) {
    snprintf(txt, cap, "%s/kjv.txt", dir);
    if (fy_file_exists(txt)) return 0;
    if (fy_mkdir_p(dir, err)) return -1;
    char tmp[FY_PATH_MAX + 16];
    snprintf(tmp, sizeof tmp, "%s.tmp", txt);
    printf("preparing the default corpus (King James Bible, Debian bible-kjv) in %s\n", dir);
    fflush(stdout);
    extract_kjv(tmp);
    struct stat st;
    if (stat(tmp, &st) != 0 || st.st_size < 1000000) {
        remove(tmp);
        return fy_fail(err, "could not extract the default corpus with `bible` (install Debian's "
                            "bible-kjv package, or pass --data FILE|DIR)");
    }
    if (rename(tmp, txt) != 0) return fy_fail(err, "cannot rename %s", tmp);
    return 0;
}

/* Refuses a prepared shard directory whose tokenizer.json is not `want`
 * (compared as ferry serializes both). */
static int same_tokenizer(const char *data_dir, const fy_tokenizer *want, fy_err *err) {
    char tokpath[FY_PATH_MAX + 32];
    snprintf(tokpath, sizeof tokpath, "%s/tokenizer.json", data_dir);
    fy_tokenizer *have;
    if (fy_tokenizer_load(tokpath, &have, err)) return -1;
    size_t la, lb;
    char *a = fy_tokenizer_to_json(have, &la, err), *b = a ? fy_tokenizer_to_json(want, &lb, err) : NULL;
    int rc = !a || !b ? -1 : 0;
    if (!rc && (la != lb || memcmp(a, b, la)))
        rc = fy_fail(err, "%s: the shards were prepared with another tokenizer than the model's "
                          "(pass the text itself as --data)", tokpath);
    free(a);
    free(b);
    fy_tokenizer_free(have);
    return rc;
}

/* Makes data_dir hold tokenizer.json + shards for the given text files,
 * tokenized with `given` (the model's, kept by the caller) or with a new
 * tokenizer of `vocab` tokens trained on them. */
static int prepare(const char *data_dir, char **files, int nf, int vocab, const fy_tokenizer *given, fy_err *err) {
    char tokpath[FY_PATH_MAX + 32];
    snprintf(tokpath, sizeof tokpath, "%s/tokenizer.json", data_dir);
    if (has_shards(data_dir) && fy_file_exists(tokpath)) /* cached */
        return given ? same_tokenizer(data_dir, given, err) : 0;
    if (fy_mkdir_p(data_dir, err)) return -1;
    fy_tokenizer *tok = NULL;
    if (!given) {
        printf("training a %d-token byte-level BPE tokenizer on %d file(s)\n", vocab, nf);
        fflush(stdout);
        fy_tok_train_opts to = {vocab, 0, 0};
        if (fy_tokenizer_train_files((const char *const *)files, nf, &to, &tok, err)) return -1;
    }
    const fy_tokenizer *use = given ? given : tok;
    fy_prepare_opts po;
    fy_prepare_opts_default(&po);
    fy_prepare_stats st;
    int rc = fy_data_prepare((const char *const *)files, nf, use, data_dir, &po, &st, err);
    if (!rc) rc = fy_tokenizer_save(use, tokpath, err); /* last: marks the data ready */
    fy_tokenizer_free(tok);
    if (!rc)
        printf("data: %llu train tokens, %llu validation tokens in %s\n",
               (unsigned long long)st.train_tokens, (unsigned long long)st.val_tokens, data_dir);
    return rc;
}

/* The order `sort` gives: the user's collation (LC_ALL, LC_COLLATE, LANG),
 * bytes breaking ties. The file order decides the token stream. */
static int by_collation(const void *a, const void *b) {
    const char *x = *(const char *const *)a, *y = *(const char *const *)b;
    int c = strcoll(x, y);
    return c ? c : strcmp(x, y);
}

static void sort_as_sort_does(char **files, size_t n) {
    const char *cur = setlocale(LC_COLLATE, NULL);
    char saved[256];
    snprintf(saved, sizeof saved, "%s", cur ? cur : "C");
    setlocale(LC_COLLATE, "");
    qsort(files, n, sizeof *files, by_collation);
    setlocale(LC_COLLATE, saved);
}

/* The regular files (not links) named *.txt directly in dir, as
 * "DIR/NAME" (no second '/' when DIR ends with one), sorted: what
 * `find DIR -maxdepth 1 -type f -name '*.txt' | sort` lists. */
static int list_txt(const char *dir, char ***out, size_t *n, fy_err *err) {
    *out = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d) return fy_fail(err, "--data %s: %s", dir, strerror(errno));
    const char *sep = dir[0] && dir[strlen(dir) - 1] == '/' ? "" : "/";
    char **v = NULL;
    size_t cap = 0;
    int rc = 0;
    struct dirent *e;
    while (!rc && (e = readdir(d))) {
        if (fnmatch("*.txt", e->d_name, 0)) continue;
        char path[FY_PATH_MAX + 256];
        struct stat st;
        snprintf(path, sizeof path, "%s%s%s", dir, sep, e->d_name);
        if (lstat(path, &st) || !S_ISREG(st.st_mode)) continue;
        if (*n == cap) {
            char **w = realloc(v, (cap ? 2 * cap : 16) * sizeof *v);
            if (!w) {
                rc = fy_fail(err, "out of memory listing %s", dir);
                break;
            }
            v = w;
            cap = cap ? 2 * cap : 16;
        }
        if (!(v[*n] = strdup(path))) rc = fy_fail(err, "out of memory listing %s", dir);
        else (*n)++;
    }
    closedir(d);
    if (*n) sort_as_sort_does(v, *n);
    *out = v;
    return rc;
}

/* Collects text files from --data: a file, or every *.txt of a directory
 * (any number: *files is malloc'd, its strings too). */
static int text_files(const char *data, char ***files, int *n, fy_err *err) {
    *n = 0;
    *files = NULL;
    if (!is_dir(data)) {
        if (!fy_file_exists(data)) return fy_fail(err, "--data %s: no such file or directory", data);
        /* Examples would be trained on as raw JSON text. */
        if (fy_str_ends_with(data, ".jsonl"))
            return fy_fail(err, "--data %s: JSONL examples are prepared first: ferry data prepare %s --model MODEL "
                                "--seq T --out DIR, then --data DIR (docs/FINETUNE.md)",
                           data, data);
        if (!(*files = malloc(sizeof **files)) || !((*files)[0] = strdup(data))) return fy_fail(err, "out of memory");
        *n = 1;
        return 0;
    }
    size_t na;
    int rc = list_txt(data, files, &na, err);
    *n = (int)na;
    if (rc) return -1;
    if (!*n) return fy_fail(err, "--data %s: no *.txt files and no train-*.bin shards there", data);
    return 0;
}

/* The data directory as an absolute path: the run records it, and --resume
 * may start anywhere. */
static int absolute(char *data_dir, size_t cap, fy_err *err) {
    char abs[FY_PATH_MAX];
    if (fy_path_absolute(abs, sizeof abs, data_dir, err)) return -1;
    if (snprintf(data_dir, cap, "%s", abs) >= (int)cap) return fy_fail(err, "path too long: %s", abs);
    return 0;
}

int fy_cli_train_data(const char *data, const char *run_dir, int vocab, const fy_tokenizer *tok, char *data_dir,
                      size_t cap, fy_err *err) {
    if (data && is_dir(data) && has_shards(data)) {
        snprintf(data_dir, cap, "%s", data);
        return (tok && same_tokenizer(data, tok, err)) || absolute(data_dir, cap, err) ? -1 : 0;
    }
    char **files = NULL;
    int nf = 0, rc;
    if (data) {
        snprintf(data_dir, cap, "%s/data", run_dir);
        rc = text_files(data, &files, &nf, err) || prepare(data_dir, files, nf, vocab, tok, err) ? -1 : 0;
    } else {
        char txt[FY_PATH_MAX];
        /* The shared cache holds the corpus with a tokenizer of its own;
         * a model's tokenizer prepares it inside the run. */
        if (tok) snprintf(data_dir, cap, "%s/data", run_dir);
        else snprintf(data_dir, cap, "data/kjv-v%d", vocab);
        rc = default_corpus("data", txt, sizeof txt, err);
        if (!rc && (!(files = malloc(sizeof *files)) || !(files[0] = strdup(txt)))) rc = fy_fail(err, "out of memory");
        if (!rc) rc = prepare(data_dir, files, ++nf, vocab, tok, err);
    }
    for (int i = 0; i < nf; i++) free(files[i]);
    free(files);
    return rc || absolute(data_dir, cap, err) ? -1 : 0;
}
