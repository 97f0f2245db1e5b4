/* ferry data prepare TEXT_FILES... --tokenizer FILE --out DIR: tokenizes
 * text files into checksummed training and validation shards (io/prepare.h)
 * with an existing tokenizer. */
#include <stdio.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "io/prepare.h"

int fy_cmd_data(int argc, char **argv) {
    if (argc < 1 || strcmp(argv[0], "prepare")) {
        return fy_cli_usage(argc, argv,
                            "usage: ferry data prepare TEXT_FILES... --tokenizer FILE --out DIR  (see --help)");
    }
    const char *tokf = NULL, *out = NULL;
    double val = 0.02;
    fy_arg spec[] = {
        {"--tokenizer", "-t", FY_ARG_STR, &tokf, "FILE", "tokenizer.json (required)", 0, 0, 0},
        {"--out", "-o", FY_ARG_STR, &out, "DIR", "output directory for train-*.bin / val-*.bin (required)", 0, 0, 0},
        {"--val-fraction", NULL, FY_ARG_FLOAT, &val, "F", "share of text held out for validation (default 0.02)", 0, 0.5, 0},
    };
    char *files[256];
    int nf;
    fy_err err;
    int r = fy_args_parse(argc - 1, argv + 1, spec, 3, "data prepare",
                          "TEXT_FILES... --tokenizer FILE --out DIR [--val-fraction F]",
                          "Tokenize text files into checksummed token shards with a held-out validation split.",
                          files, 256, &nf, &err);
    if (r) return r > 0 ? 0 : fy_cli_fail("data prepare", &err);
    if (!tokf || !out || !nf) {
        return fy_cli_failf("data prepare", "needs TEXT_FILES, --tokenizer FILE and --out DIR");
    }
    fy_tokenizer *tok;
    if (fy_tokenizer_load(tokf, &tok, &err)) return fy_cli_fail("data prepare", &err);
    fy_prepare_opts o;
    fy_prepare_opts_default(&o);
    o.val_fraction = val;
    fy_prepare_stats st;
    int rc = fy_data_prepare((const char *const *)files, nf, tok, out, &o, &st, &err);
    fy_tokenizer_free(tok);
    if (rc) return fy_cli_fail("data prepare", &err);
    printf("%s: %llu bytes -> %llu train tokens (%d shards), %llu val tokens (%d shards)\n", out,
           (unsigned long long)st.bytes, (unsigned long long)st.train_tokens, st.train_shards,
           (unsigned long long)st.val_tokens, st.val_shards);
    return 0;
}
