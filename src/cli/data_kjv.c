/* ferry data chat-kjv: the KJV chat data set (io/kjv_chat.h) from Debian's
 * bible-kjv (`bible -f Gen1:1-Rev22:21`, spawned without a shell) or from a
 * file of verse lines in the same form (--from). */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "core/fsutil.h"
#include "core/strbuf.h"
#include "io/kjv_chat.h"

/* Every verse, with references, as `bible` prints them, into b. */
static int bible_verses(fy_strbuf *b, fy_err *err) {
    char *argv[] = {"bible", "-f", "Gen1:1-Rev22:21", NULL};
    int fd[2];
    if (pipe2(fd, O_CLOEXEC)) return fy_fail(err, "pipe failed");
    int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
    pid_t pid;
    int rc = fy_cli_spawn(argv, fd[1], devnull, &pid, err);
    close(fd[1]);
    if (devnull >= 0) close(devnull);
    char buf[1 << 16];
    ssize_t n;
    while (!rc && (n = read(fd[0], buf, sizeof buf)) > 0) rc = fy_strbuf_add(b, buf, (size_t)n, err);
    close(fd[0]);
    int status = rc ? 0 : fy_cli_wait(pid);
    if (!rc && (status || b->n < 1000000))
        rc = fy_fail(err, "`bible -f Gen1:1-Rev22:21` gave no Bible (install Debian's bible-kjv, or pass --from FILE)");
    return rc;
}

int fy_cli_data_chat_kjv(int argc, char **argv) {
    const char *out = NULL, *from = NULL;
    int n = 2000, seed = 1, max_chars = 0;
    fy_arg spec[] = {
        {"--out", "-o", FY_ARG_STR, &out, "FILE", "the JSONL file to write (required)", 0, 0, 0},
        {"--n", NULL, FY_ARG_INT, &n, "N", "conversations (default 2000)", 1, 1e9, 0},
        {"--seed", NULL, FY_ARG_INT, &seed, "S", "which verses and questions (default 1); the same seed gives the same file", 0, 2147483647, 0},
        {"--max-chars", NULL, FY_ARG_INT, &max_chars, "N", "only verses of at most N bytes (default 0: all), for short sequences", 0, 1 << 20, 0},
        {"--from", NULL, FY_ARG_STR, &from, "FILE", "verse lines as `bible -f` prints them (\"Ge1:3 text\"; default: run bible)", 0, 0, 0},
    };
    char *pos[1];
    int npos;
    fy_err err;
    int r = fy_args_parse(argc, argv, spec, (int)(sizeof spec / sizeof spec[0]), "data chat-kjv",
                          "--out FILE.jsonl [--n N] [--seed S] [--max-chars N] [--from FILE]",
                          "Write chat examples made from the King James Bible (Debian bible-kjv): \"What does\n"
                          "Genesis 1:3 say?\" -> the verse, \"Which book says '...'?\" -> the reference, and\n"
                          "two-turn ones asking for the next verse. See docs/FINETUNE.md.",
                          pos, 0, &npos, &err);
    if (r) return r > 0 ? 0 : fy_cli_fail("data chat-kjv", &err);
    if (!out) return fy_cli_failf("data chat-kjv", "needs --out FILE.jsonl");
    fy_strbuf text = {0};
    long nv = 0;
    int rc = from ? fy_read_file(from, &text.p, &text.n, &err) : bible_verses(&text, &err);
    fy_kjv_chat_opts o = {n, (uint64_t)seed, max_chars};
    if (!rc) rc = fy_kjv_chat_write(text.p, text.n, &o, out, &nv, &err);
    fy_strbuf_free(&text);
    if (rc) return fy_cli_fail("data chat-kjv", &err);
    printf("%s: %d conversations from %ld verses (seed %d)\n", out, n, nv, seed);
    return 0;
}
