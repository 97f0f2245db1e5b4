/* PLACEHOLDER: replaced by the HF converter. */
#include "interop/hf.h"
int fy_hf_export(const fy_host_model *h, const char *out_dir, const fy_hf_export_opts *o, fy_err *err) {
    (void)h, (void)o;
    return fy_fail(err, "%s: HF export not built yet", out_dir);
}
int fy_hf_is_dir(const char *dir) { (void)dir; return 0; }
int fy_hf_import(const char *dir, fy_host_model *out, fy_err *err) {
    (void)out;
    return fy_fail(err, "%s: HF import not built yet", dir);
}
