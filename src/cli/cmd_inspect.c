/* ferry inspect PATH: summary + checksum verification of any artifact (run,
 * checkpoint, safetensors file, token shard; ckpt/inspect.h). Read-only. */
#include <stdio.h>

#include "ckpt/inspect.h"
#include "cli/args.h"
#include "cli/cli.h"

int fy_cmd_inspect(int argc, char **argv) {
    char *pos[1];
    int npos;
    fy_err err;
    int r = fy_args_parse(argc, argv, NULL, 0, "inspect", "FILE_OR_DIR",
                          "Summarise a run directory, checkpoint, safetensors file or token shard,\n"
                          "and verify every checksum it carries. Exits non-zero on any corruption.",
                          pos, 1, &npos, &err);
    if (r) return r > 0 ? 0 : fy_cli_fail("inspect", &err);
    if (npos != 1) {
        return fy_cli_failf("inspect", "needs one FILE_OR_DIR (see ferry inspect --help)");
    }
    if (fy_inspect(pos[0], stdout, &err)) return fy_cli_fail("inspect", &err);
    return 0;
}
