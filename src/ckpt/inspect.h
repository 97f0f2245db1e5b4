/* `ferry inspect`: a human summary of any ferry artifact, with every
 * checksum it can check verified. The kind is decided from stat and magic
 * bytes, not the file name:
 *   - token shard (file starting "FERRYTOK"): vocab, tokens, width, payload
 *     checksum and token range;
 *   - safetensors file (8-byte header length, then '{'): tensor count, total
 *     parameters, dtype breakdown, the first tensors with shapes, metadata,
 *     non-finite values; when a MANIFEST.json beside it lists the file, its
 *     size and xxh64 too;
 *   - checkpoint directory (has MANIFEST.json or model.safetensors): the
 *     manifest verified file by file, step, model and optimizer summaries,
 *     trainer state;
 *   - run directory (has checkpoints/ or config.json): config summary,
 *     LATEST, and every checkpoint with whether it verifies.
 * Files are only ever opened read-only. Returns -1 (err naming the first
 * problem's file) on any corruption, after printing the whole summary. */
#ifndef FY_INSPECT_H
#define FY_INSPECT_H

#include <stdio.h>

#include "core/err.h"

/* out may be NULL (check only). */
int fy_inspect(const char *path, FILE *out, fy_err *err);

#endif
