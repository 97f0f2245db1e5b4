/* The record of a LoRA run's frozen base (docs/FINETUNE.md): RUN_DIR/
 * lora_base.json holds where the base came from ("source": the --init-from
 * model, or null for the seeded init) and the xxh64 of its weights and
 * buffers. Written when the run starts, checked on every resume, so the
 * adapters never continue on another base. */
#ifndef FY_LORA_BASE_H
#define FY_LORA_BASE_H

#include <stddef.h>

#include "core/err.h"
#include "model/model.h"
#include "parallel/comm.h"

/* Hashes m's weights (call before fy_model_set_lora); write: saves the
 * record with source (NULL: the seeded init; rank 0 writes); else compares
 * with the saved one and fails on a difference or a missing record. The
 * record's "tensors_xxh64" hashes each tensor on its own, so it is the same
 * whether the base is whole or an expert shard per rank (expert parallel:
 * every rank of comm calls together; comm NULL: one rank); "xxh64" (the
 * whole blocks, written when the base is whole) is what older records hold. */
int fy_lora_base_record(fy_model *m, const char *run_dir, const char *source, int write, fy_comm *comm,
                        fy_err *err);

/* The recorded source into buf ("" for the seeded init). */
int fy_lora_base_source(const char *run_dir, char *buf, size_t cap, fy_err *err);

#endif
