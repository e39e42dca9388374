/* checkpoint: model parameters as safetensors files with the official PyTorch names
 * (`item_embeddings.weight`, `layers.0.attention.wq.weight`, ...), readable by the
 * `safetensors` Python package and loadable into the official model's state_dict.
 *
 * Contract
 * - checkpoint_save_model writes every tensor of the layout in fp32 with its official name and
 *   shape, plus metadata: format "gpsdrec", the effective settings (loadable config text), the
 *   stage and the optimizer step. Atomic.
 * - checkpoint_load_params copies tensors from a checkpoint into the arenas: with
 *   TRANSFER_SPARSE only item_embeddings.weight, with TRANSFER_FULL every tensor of the layout
 *   the checkpoint has (tensors it lacks keep their initialisation and are listed in *missing
 *   when non-NULL). A tensor whose shape differs from the layout's is an error naming both
 *   shapes; so is a checkpoint without the item table. F32 and BF16 tensors are accepted.
 */
#ifndef GPSDREC_CHECKPOINT_H
#define GPSDREC_CHECKPOINT_H

#include <stdint.h>

#include "model.h"
#include "util.h"

int checkpoint_save_model(const char *path, const model_layout *l, const float *sparse, const float *dense,
                          const char *settings_text, const char *stage, int64_t step, gp_err *e);
int checkpoint_load_params(const char *path, const model_layout *l, float *sparse, float *dense, int transfer,
                           int *n_loaded, char *missing, size_t missing_len, gp_err *e);

#endif
