/* Fuzz target: a model's config.json (model/config.c): fy_config_load of
 * the input as a file (what --config and a run's config.json go through),
 * fy_config_parse of the text and fy_config_validate, then the parsed
 * config written back as JSON, which must parse again. */
#include <stdio.h>
#include <stdlib.h>

#include "fuzz_common.h"
#include "model/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = fz_strndup(data, size), path[4096];
    fy_config c;
    fy_err err;
    fy_config_load(fz_write("config.json", data, size, path), &c, &err);
    if (fy_config_parse(text, "config.json", &c, &err) == 0 && fy_config_validate(&c, &err) == 0) {
        char *again = fy_config_to_json(&c, NULL);
        fy_config c2;
        if (again && fy_config_parse(again, "config.json (written back)", &c2, &err)) {
            /* what ferry writes it must read */
            fprintf(stderr, "config written back does not parse: %s\n", err.msg);
            abort();
        }
        free(again);
    }
    free(text);
    return 0;
}
