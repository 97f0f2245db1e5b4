/* ferry: train and serve DeepSeek-V3-architecture models on any backend.
 * The entry point: picks the subcommand (cmd_*.c) and reports failures in
 * one shape, "ferry CMD: message" on stderr. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

#define FERRY_VERSION "0.1.0"

static const struct {
    const char *name;
    int (*run)(int, char **);
    const char *help;
} commands[] = {
    {"train", fy_cmd_train, "train a model (default: tiny on the King James Bible)"},
    {"generate", fy_cmd_generate, "sample text from a trained model"},
    {"serve", fy_cmd_serve, "serve a model over the OpenAI HTTP API, with a chat page"},
    {"tokenizer", fy_cmd_tokenizer, "train, encode with, decode with a byte-level BPE tokenizer"},
    {"data", fy_cmd_data, "tokenize text (or JSONL chat examples) into training shards; chat-kjv"},
    {"inspect", fy_cmd_inspect, "summarise and verify a checkpoint, safetensors file or shard"},
    {"verify", fy_cmd_verify, "check that backends agree on a model (logits, gradients, greedy text)"},
    {"convert", fy_cmd_convert, "convert a model to/from Hugging Face (safetensors) or llama.cpp (GGUF)"},
    {"devices", fy_cmd_devices, "list the backends and devices this build can use"},
};
#define N_COMMANDS ((int)(sizeof commands / sizeof commands[0]))

static void usage(FILE *f) {
    fprintf(f, "usage: ferry COMMAND [options]   (ferry COMMAND --help for its options)\n\ncommands:\n");
    for (int i = 0; i < N_COMMANDS; i++) fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].help);
    fprintf(f, "\nthreads: OMP_NUM_THREADS (default: every core). Idle threads spin briefly, then sleep\n"
               "(generate/serve: GOMP_SPINCOUNT 30000 on a quiet machine, 300 beside busy neighbours,\n"
               "looked at once at start-up; 0 otherwise) unless OMP_WAIT_POLICY or\n"
               "GOMP_SPINCOUNT is set (docs/PERFORMANCE.md, \"Under contention\").\n");
}

int fy_cli_fail(const char *cmd, const fy_err *err) {
    fprintf(stderr, "ferry %s: %s\n", cmd, err->msg);
    return 1;
}

int fy_cli_usage(int argc, char **argv, const char *usage) {
    int help = argc >= 1 && (!strcmp(argv[0], "--help") || !strcmp(argv[0], "-h"));
    fprintf(help ? stdout : stderr, "%s\n", usage);
    return help ? 0 : 2;
}

int fy_cli_failf(const char *cmd, const char *fmt, ...) {
    fy_err err;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err.msg, sizeof err.msg, fmt, ap);
    va_end(ap);
    return fy_cli_fail(cmd, &err);
}

int main(int argc, char **argv) {
    fy_cli_env_openmp(argc, argv); /* before any OpenMP region; may re-execute ferry */
    fy_cli_env_log();
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("ferry %s\n", FERRY_VERSION);
        return 0;
    }
    for (int i = 0; i < N_COMMANDS; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].run(argc - 2, argv + 2);
    fprintf(stderr, "ferry: unknown command '%s' (see ferry --help)\n", argv[1]);
    return 2;
}
