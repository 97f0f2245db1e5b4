/* ferry data prepare FILES... --tokenizer FILE|--model DIR --out DIR:
 * text files -> checksummed token shards (io/prepare.h), or JSONL examples
 * -> padded rows with a loss mask (io/sft.h) for fine-tuning. ferry data
 * chat-kjv writes the KJV chat data set (data_kjv.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "core/fsutil.h"
#include "core/log.h"
#include "core/strbuf.h"
#include "interop/host.h"
#include "io/chat.h"
#include "io/prepare.h"
#include "io/sft.h"

typedef struct data_flags {
    const char *tokf, *model, *out, *chat_template, *on_bad, *add_tokens;
    double val;
    int seq, train_on_prompt;
} data_flags;

/* The tokenizer of --model or --tokenizer, and where a tokenizer_config.json
 * with its chat template may be (cfg, or NULL). */
static int load_tokenizer(const data_flags *f, fy_tokenizer **tok, char *cfg, size_t cap, const char **cfgp,
                          fy_err *err) {
    *cfgp = NULL;
    if (f->model) {
        *cfgp = fy_cli_tokenizer_config(f->model, cfg, cap);
        return fy_host_model_tokenizer(f->model, tok, err);
    }
    char dir[FY_PATH_MAX];
    if (!fy_path_dirname(dir, sizeof dir, f->tokf, err)) {
        snprintf(cfg, cap, "%s/tokenizer_config.json", dir);
        if (fy_file_exists(cfg)) *cfgp = cfg;
    }
    return fy_tokenizer_load(f->tokf, tok, err);
}

static void sft_summary(const char *out, const fy_sft_stats *st, int T, const fy_chat_template *t) {
    uint64_t rows = st->train_rows + st->val_rows, slots = rows * (uint64_t)(T + 1);
    printf("%s: %ld lines -> %llu examples (%ld chat, %ld prompt/completion, %ld text), %ld bad line(s) skipped, "
           "%ld blank\n",
           out, st->lines, (unsigned long long)rows, st->examples[FY_SFT_MESSAGES], st->examples[FY_SFT_PROMPT],
           st->examples[FY_SFT_TEXT], st->bad, st->blank);
    printf("  rows of %d tokens: %llu train (%d shards), %llu val (%d shards); chat template %s\n", T + 1,
           (unsigned long long)st->train_rows, st->train_shards, (unsigned long long)st->val_rows, st->val_shards,
           t->source);
    printf("  tokens: %llu in examples, %llu trained on (%.1f%%), padding %llu = %.1f%% of the rows\n",
           (unsigned long long)st->tokens, (unsigned long long)st->trained,
           st->tokens ? 100.0 * (double)st->trained / (double)st->tokens : 0.0, (unsigned long long)st->pad,
           slots ? 100.0 * (double)st->pad / (double)slots : 0.0);
    if (st->boundary_mismatch)
        printf("  %ld later turn(s) whose history the server would tokenize differently at a reply's edge "
               "(docs/FINETUNE.md)\n",
               st->boundary_mismatch);
}

/* JSONL examples -> row shards + the tokenizer they were made with. */
static int prepare_sft(const data_flags *f, char **files, int nf, fy_tokenizer *tok, const char *tcfg, fy_err *err) {
    fy_chat_template t;
    if (fy_chat_select(f->chat_template, tcfg, tok, &t, err)) return -1;
    fy_sft_opts o;
    fy_sft_opts_default(&o);
    o.seq_len = f->seq;
    o.train_on_prompt = f->train_on_prompt;
    o.val_fraction = f->val;
    if (f->on_bad && strcmp(f->on_bad, "skip") && strcmp(f->on_bad, "fail"))
        return fy_fail(err, "--on-bad-line %s: skip or fail", f->on_bad);
    o.fail_on_bad_line = f->on_bad && !strcmp(f->on_bad, "fail");
    fy_sft_stats st;
    char p[FY_PATH_MAX + 32];
    snprintf(p, sizeof p, "%s/tokenizer.json", f->out);
    if (fy_sft_prepare((const char *const *)files, nf, tok, &t, f->out, &o, &st, err) ||
        fy_tokenizer_save(tok, p, err))
        return -1;
    sft_summary(f->out, &st, f->seq, &t);
    return 0;
}

/* Text -> token shards + the tokenizer they were made with, so that the
 * directory is what ferry train --data DIR takes. */
static int prepare_text(const data_flags *f, char **files, int nf, fy_tokenizer *tok, fy_err *err) {
    fy_prepare_opts o;
    fy_prepare_opts_default(&o);
    o.val_fraction = f->val;
    fy_prepare_stats st;
    char p[FY_PATH_MAX + 32];
    snprintf(p, sizeof p, "%s/tokenizer.json", f->out);
    if (fy_data_prepare((const char *const *)files, nf, tok, f->out, &o, &st, err) || fy_tokenizer_save(tok, p, err))
        return -1;
    printf("%s: %llu bytes -> %llu train tokens (%d shards), %llu val tokens (%d shards)\n", f->out,
           (unsigned long long)st.bytes, (unsigned long long)st.train_tokens, st.train_shards,
           (unsigned long long)st.val_tokens, st.val_shards);
    if (st.val_tokens == 0 && f->val > 0) /* lines are split in blocks of 32: long lines make few blocks */
        fy_warn("%s: the validation split is empty: train it with --eval-every 0, or prepare with a larger "
                "--val-fraction", f->out);
    return 0;
}

static int run_prepare(const data_flags *f, char **files, int nf, fy_err *err) {
    int jsonl = 0;
    for (int i = 0; i < nf; i++) jsonl += fy_str_ends_with(files[i], ".jsonl");
    if (jsonl && jsonl != nf) return fy_fail(err, "mixes .jsonl examples with text files: prepare them apart");
    if (!jsonl && (f->seq || f->train_on_prompt || f->on_bad || f->chat_template))
        return fy_fail(err, "--seq, --chat-template, --train-on-prompt and --on-bad-line are for .jsonl examples");
    if (jsonl && !f->seq) return fy_fail(err, "JSONL examples need --seq T (each example one row of T+1 tokens)");
    fy_tokenizer *tok;
    char cfg[FY_PATH_MAX + 32];
    const char *tcfg;
    if (load_tokenizer(f, &tok, cfg, sizeof cfg, &tcfg, err)) return -1;
    fy_tokenizer *grown = NULL;
    if (f->add_tokens && fy_cli_add_special_tokens(f->add_tokens, tok, &grown, err)) {
        fy_tokenizer_free(tok);
        return -1;
    }
    if (grown) { /* the same tokens as ferry train --init-from --add-special-tokens adds */
        fy_tokenizer_free(tok);
        tok = grown;
    }
    int rc = jsonl ? prepare_sft(f, files, nf, tok, tcfg, err) : prepare_text(f, files, nf, tok, err);
    fy_tokenizer_free(tok);
    return rc;
}

static int cmd_prepare(int argc, char **argv) {
    data_flags f = {0};
    f.val = 0.02;
    fy_arg spec[] = {
        {"--tokenizer", "-t", FY_ARG_STR, &f.tokf, "FILE", "tokenizer.json (or --model)", 0, 0, 0},
        {"--model", "-m", FY_ARG_STR, &f.model, "DIR", "take the tokenizer (and chat template) of this ferry run, checkpoint or Hugging Face directory", 0, 0, 0},
        {"--add-special-tokens", NULL, FY_ARG_STR, &f.add_tokens, "TOK,...", "tokenize with the model's tokenizer grown by these special tokens, as ferry train --init-from MODEL --add-special-tokens will grow it", 0, 0, 0},
        {"--out", "-o", FY_ARG_STR, &f.out, "DIR", "output directory for train-*.bin / val-*.bin and tokenizer.json: ferry train --data DIR takes it (required)", 0, 0, 0},
        {"--val-fraction", NULL, FY_ARG_FLOAT, &f.val, "F", "share held out for validation: of text, or of the examples (default 0.02)", 0, 0.5, 0},
        {"--seq", NULL, FY_ARG_INT, &f.seq, "T", "JSONL: the training sequence length; each example is one row of T+1 tokens, padded (required for .jsonl)", 1, 1 << 24, 0},
        {"--chat-template", NULL, FY_ARG_STR, &f.chat_template, "NAME|FILE", "JSONL chats: deepseek3, chatml, ferry, or a file with one of their Jinja texts (default: the model's, as ferry serve picks it)", 0, 0, 0},
        {"--train-on-prompt", NULL, FY_ARG_BOOL, &f.train_on_prompt, NULL, "JSONL: train on every token, not only the assistant replies (and completions)", 0, 0, 0},
        {"--on-bad-line", NULL, FY_ARG_STR, &f.on_bad, "skip|fail", "JSONL: a line that does not parse, has an unknown role or exceeds T+1 tokens is reported with its number and skipped (default) or fails the run", 0, 0, 0},
    };
    char **files = calloc((size_t)argc + 1, sizeof *files); /* any number of FILES */
    int nf;
    fy_err err;
    if (!files) return fy_cli_failf("data prepare", "out of memory");
    int r = fy_args_parse(argc - 1, argv + 1, spec, (int)(sizeof spec / sizeof spec[0]), "data prepare",
                          "FILES... (--tokenizer FILE | --model DIR) --out DIR [--seq T ...]",
                          "Tokenize text files into checksummed token shards with a held-out validation split;\n"
                          "or .jsonl examples ({\"messages\"}, {\"prompt\", \"completion\"}, {\"text\"}) into padded\n"
                          "rows with a loss mask for fine-tuning (ferry train --init-from MODEL --data DIR).\n"
                          "See docs/FINETUNE.md.",
                          files, argc, &nf, &err);
    if (r == 0 && (!(f.tokf || f.model) || (f.tokf && f.model) || !f.out || !nf))
        r = fy_fail(&err, "needs FILES, one of --tokenizer FILE and --model DIR, and --out DIR");
    if (r == 0) r = run_prepare(&f, files, nf, &err);
    free(files);
    if (r) return r > 0 ? 0 : fy_cli_fail("data prepare", &err);
    return 0;
}

int fy_cmd_data(int argc, char **argv) {
    if (argc >= 1 && !strcmp(argv[0], "prepare")) return cmd_prepare(argc, argv);
    if (argc >= 1 && !strcmp(argv[0], "chat-kjv")) return fy_cli_data_chat_kjv(argc - 1, argv + 1);
    return fy_cli_usage(argc, argv,
                        "usage: ferry data prepare FILES... (--tokenizer FILE | --model DIR) --out DIR  (see --help)\n"
                        "       ferry data chat-kjv --out FILE.jsonl [--n N] [--seed S]  (see --help)");
}
