/* PLACEHOLDER: replaced by the GGUF writer. */
#include <string.h>
#include "interop/gguf.h"
int fy_gguf_type_parse(const char *name, fy_gguf_type *out, fy_err *err) {
    static const struct { const char *n; fy_gguf_type t; } k[] = {
        {"f32", FY_GGUF_F32}, {"f16", FY_GGUF_F16}, {"bf16", FY_GGUF_BF16}, {"q8_0", FY_GGUF_Q8_0}, {"q4_0", FY_GGUF_Q4_0}};
    for (size_t i = 0; i < sizeof k / sizeof k[0]; i++)
        if (!strcmp(name, k[i].n)) return *out = k[i].t, 0;
    return fy_fail(err, "--type %s: expected f32, f16, bf16, q8_0 or q4_0", name);
}
int fy_gguf_export(const fy_host_model *h, const char *out_path, fy_gguf_type type, fy_err *err) {
    (void)h, (void)type;
    return fy_fail(err, "%s: GGUF export not built yet", out_path);
}
