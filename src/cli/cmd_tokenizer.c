/* ferry tokenizer train|encode|decode: learns a byte-level BPE from text
 * files (Hugging Face tokenizer.json), and encodes or decodes with one. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "core/fsutil.h"

static int cmd_train(int argc, char **argv) {
    int vocab = 4096;
    const char *out = "tokenizer.json";
    fy_arg spec[] = {
        {"--vocab-size", NULL, FY_ARG_INT, &vocab, "N", "vocabulary size incl. 3 special tokens (default 4096)", 259, 1 << 24, 0},
        {"--out", "-o", FY_ARG_STR, &out, "FILE", "where to write tokenizer.json (default ./tokenizer.json)", 0, 0, 0},
    };
    char **files = calloc((size_t)argc + 1, sizeof *files); /* any number of files */
    int nf;
    fy_err err;
    if (!files) return fy_cli_failf("tokenizer train", "out of memory");
    int r = fy_args_parse(argc, argv, spec, 2, "tokenizer train", "[--vocab-size N] [--out FILE] TEXT_FILES...",
                          "Learn a GPT-2-style byte-level BPE from text files; writes Hugging Face tokenizer.json.",
                          files, argc, &nf, &err);
    if (r == 0 && !nf) r = fy_fail(&err, "no text files given (usage: ferry tokenizer train [--vocab-size N] FILES...)");
    fy_tok_train_opts o = {vocab, 0, 0};
    fy_tokenizer *tok = NULL;
    if (r == 0 && (fy_tokenizer_train_files((const char *const *)files, nf, &o, &tok, &err) ||
                   fy_tokenizer_save(tok, out, &err)))
        r = -1;
    free(files);
    if (r) {
        fy_tokenizer_free(tok);
        return r > 0 ? 0 : fy_cli_fail("tokenizer train", &err);
    }
    printf("wrote %s: %d tokens (%d merges)\n", out, fy_tokenizer_vocab_size(tok), fy_tokenizer_n_merges(tok));
    fy_tokenizer_free(tok);
    return 0;
}

static int cmd_encode(int argc, char **argv) {
    const char *tokf = NULL, *text = NULL;
    int special = 0;
    fy_arg spec[] = {
        {"--tokenizer", "-t", FY_ARG_STR, &tokf, "FILE", "tokenizer.json (required)", 0, 0, 0},
        {"--text", NULL, FY_ARG_STR, &text, "TEXT", "encode this text instead of a file", 0, 0, 0},
        {"--special", NULL, FY_ARG_BOOL, &special, NULL, "match added (special) tokens in the text as one id each, as chat templates and ferry serve do", 0, 0, 0},
    };
    char *files[1];
    int nf;
    fy_err err;
    int r = fy_args_parse(argc, argv, spec, 3, "tokenizer encode", "--tokenizer FILE (--text TEXT | TEXT_FILE)",
                          "Print the token ids of a text, one line, space separated.", files, 1, &nf, &err);
    if (r) return r > 0 ? 0 : fy_cli_fail("tokenizer encode", &err);
    if (!tokf || (!text && !nf)) {
        return fy_cli_failf("tokenizer encode", "needs --tokenizer FILE and --text TEXT or a file");
    }
    fy_tokenizer *tok;
    int32_t *ids;
    size_t n;
    if (fy_tokenizer_load(tokf, &tok, &err)) return fy_cli_fail("tokenizer encode", &err);
    unsigned flags = special ? FY_ENC_SPECIAL : 0;
    int rc = text ? fy_tokenizer_encode_ex(tok, text, strlen(text), flags, &ids, &n, &err)
                  : fy_tokenizer_encode_file(tok, files[0], flags, &ids, &n, &err);
    fy_tokenizer_free(tok);
    if (rc) return fy_cli_fail("tokenizer encode", &err);
    for (size_t i = 0; i < n; i++) printf("%s%d", i ? " " : "", ids[i]);
    printf("\n");
    free(ids);
    return 0;
}

static int cmd_decode(int argc, char **argv) {
    const char *tokf = NULL;
    fy_arg spec[] = {{"--tokenizer", "-t", FY_ARG_STR, &tokf, "FILE", "tokenizer.json (required)", 0, 0, 0}};
    char *words[65536];
    int nw;
    fy_err err;
    int r = fy_args_parse(argc, argv, spec, 1, "tokenizer decode", "--tokenizer FILE ID...",
                          "Print the text of token ids.", words, 65536, &nw, &err);
    if (r) return r > 0 ? 0 : fy_cli_fail("tokenizer decode", &err);
    if (!tokf) {
        return fy_cli_failf("tokenizer decode", "needs --tokenizer FILE");
    }
    int32_t *ids = malloc((nw + 1) * sizeof *ids);
    for (int i = 0; i < nw; i++) {
        char *end;
        long v = strtol(words[i], &end, 10);
        if (!*words[i] || *end || v < 0 || v > 0x7fffffff) {
            free(ids);
            return fy_cli_failf("tokenizer decode", "'%s' is not a token id", words[i]);
        }
        ids[i] = (int32_t)v;
    }
    fy_tokenizer *tok;
    char *out;
    size_t len;
    if (fy_tokenizer_load(tokf, &tok, &err)) {
        free(ids);
        return fy_cli_fail("tokenizer decode", &err);
    }
    int rc = fy_tokenizer_decode(tok, ids, nw, 0, &out, &len, &err);
    fy_tokenizer_free(tok);
    free(ids);
    if (rc) return fy_cli_fail("tokenizer decode", &err);
    fwrite(out, 1, len, stdout);
    printf("\n");
    free(out);
    return 0;
}

int fy_cmd_tokenizer(int argc, char **argv) {
    if (argc >= 1 && !strcmp(argv[0], "train")) return cmd_train(argc - 1, argv + 1);
    if (argc >= 1 && !strcmp(argv[0], "encode")) return cmd_encode(argc - 1, argv + 1);
    if (argc >= 1 && !strcmp(argv[0], "decode")) return cmd_decode(argc - 1, argv + 1);
    return fy_cli_usage(argc, argv, "usage: ferry tokenizer train|encode|decode [options]  (each has --help)");
}
