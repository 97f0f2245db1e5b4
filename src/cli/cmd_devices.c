/* ferry devices: what fy_backend_create() can be given on this machine, one
 * backend or device per line (backend/backend.h does the listing). */
#include <stdio.h>

#include "backend/backend.h"
#include "cli/args.h"
#include "cli/cli.h"

int fy_cmd_devices(int argc, char **argv) {
    char *pos[1];
    int npos;
    fy_err err;
    int r = fy_args_parse(argc, argv, NULL, 0, "devices", "",
                          "List the backends and devices this ferry can use, one per line as\n"
                          "\"SPEC  description\": SPEC is what --backend (train, generate) and --backends\n"
                          "(verify) accept. Backends not built in, or whose runtime is missing, are listed\n"
                          "with the reason.",
                          pos, 0, &npos, &err);
    if (r) return r > 0 ? 0 : fy_cli_fail("devices", &err);
    if (fy_backend_list_devices(stdout, &err)) return fy_cli_fail("devices", &err);
    return 0;
}
