/* What checkpoint.c shares with image.c, the weights images' loader: the
 * checks and the chunked load of one f32 tensor of a checkpoint file. Not
 * for use outside src/ckpt. */
#ifndef FY_CKPT_IMPL_H
#define FY_CKPT_IMPL_H

#include "ckpt/safetensors.h"
#include "model/model.h"

/* f holds table tensor t (name + suffix) in t's shape and a float dtype;
 * *out gets its entry. Errors name dir and file. */
int fy__ckpt_check_tensor(const fy_st_file *f, const char *dir, const char *file, const fy_tensor_info *t,
                          const char *suffix, const fy_st_entry **out, fy_err *err);
/* Tensor ti of the model from entry e, in chunks of rows through
 * fy_model_load_rows (staging: room for ti's floats when e is not F32). */
int fy__ckpt_load_model_tensor(fy_model *m, const fy_st_file *f, const fy_st_entry *e, const fy_tensor_info *ti,
                               float *staging, fy_err *err);

#endif
