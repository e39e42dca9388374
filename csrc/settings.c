#include "settings.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#define OFF(field) offsetof(gp_settings, field)
#define BIG 1e15

const cfg_key settings_keys[] = {
    /* data */
    {"data", CFG_STRING, "", 0, 0, NULL, OFF(data), "dataset file (gpsdrec synth / gpsdrec prep output); empty: synthesise the embedded default", "data_path,dataset"},
    {"max_history", CFG_INT, "50", 1, 65535, NULL, OFF(max_history), "history positions the model sees (the last ones are kept; official: 50 Amazon, 200 Taobao)", "max_seq_len,seq_len,history_len"},
    {"eval_split", CFG_ENUM, "test", 0, 0, "test|valid", OFF(eval_split), "CTR split used for evaluation"},
    /* model */
    {"dim", CFG_INT, "64", 1, 65536, NULL, OFF(dim), "model width (H in LxHyAz)"},
    {"n_layers", CFG_INT, "4", 0, 1024, NULL, OFF(n_layers), "transformer blocks (L)"},
    {"n_heads", CFG_INT, "4", 1, 1024, NULL, OFF(n_heads), "attention heads (A); head_dim = dim / n_heads"},
    {"embedding_dim", CFG_INT, "0", 0, 65536, NULL, OFF(embedding_dim), "embedding width; 0 = dim; otherwise RMSNorm+Linear projectors map it to dim and back"},
    {"multiple_of", CFG_INT, "32", 1, 4096, NULL, OFF(multiple_of), "SwiGLU hidden = multiple_of * ceil(int(8*dim/3) / multiple_of)"},
    {"norm_eps", CFG_FLOAT, "1e-5", 0, 1, NULL, OFF(norm_eps), "RMSNorm epsilon of the blocks and the final norm"},
    {"rope_theta", CFG_FLOAT, "10000", 1, BIG, NULL, OFF(rope_theta), "RoPE base"},
    {"init_std", CFG_FLOAT, "0.02", 0, 10, NULL, OFF(init_std), "standard deviation of the N(0, std) initialisation of weights and embeddings"},
    {"attention", CFG_ENUM, "causal", 0, 0, "causal|bidirectional", OFF(attention), "attention mask (bidirectional: every position sees the whole history and candidate)", "use_causal_mask,causal"},
    {"n_negatives", CFG_INT, "4096", 1, 1 << 20, NULL, OFF(n_negatives), "sampled-softmax negatives per sequence, shared by its positions", "n_samples,negatives,num_negatives"},
    {"temperature", CFG_FLOAT, "0.05", 1e-6, 1e6, NULL, OFF(temperature), "softmax temperature of the item and category heads"},
    {"l2_norm", CFG_BOOL, "true", 0, 0, NULL, OFF(l2_norm), "L2-normalise hidden states and embeddings in the item and category heads"},
    {"logq_correction", CFG_BOOL, "false", 0, 0, NULL, OFF(logq_correction), "subtract log(kept negatives) from negative logits"},
    {"item_loss_weight", CFG_FLOAT, "0", 0, BIG, NULL, OFF(item_loss_weight), "weight of the next-item sampled-softmax loss (stage default: 1 pretrain, 0 finetune)", "item_ar_loss_weight"},
    {"cate_loss_weight", CFG_FLOAT, "0", 0, BIG, NULL, OFF(cate_loss_weight), "weight of the next-category softmax loss (stage default: 1 pretrain, 0 finetune)", "cate_ar_loss_weight"},
    {"rank_loss_weight", CFG_FLOAT, "0", 0, BIG, NULL, OFF(rank_loss_weight), "weight of the CTR BCE loss (stage default: 0 pretrain, 1 finetune)"},
    /* training */
    {"stage", CFG_ENUM, "pretrain", 0, 0, "pretrain|finetune", OFF(stage), "pretrain: next-item/category on sequences; finetune: CTR on train samples"},
    {"epochs", CFG_INT, "10", 0, 1e9, NULL, OFF(epochs), "passes over the training records", "epoch,num_epochs"},
    {"max_steps", CFG_INT, "0", 0, BIG, NULL, OFF(max_steps), "stop after this many optimizer steps (0 = run all epochs)"},
    {"batch_size", CFG_INT, "512", 1, 1 << 24, NULL, OFF(batch_size), "sequences per micro-batch, over all ranks of a data-parallel run (each rank takes its share; the training is the same for any number of GPUs)"},
    {"grad_accum", CFG_INT, "1", 1, 1 << 16, NULL, OFF(grad_accum), "micro-batches per optimizer step (gradients averaged)", "grad_accumulate_steps,gradient_accumulation_steps"},
    {"lr", CFG_FLOAT, "1e-3", 0, 10, NULL, OFF(lr), "peak learning rate (stage default: 5e-3 pretrain, 1e-3 finetune)", "learning_rate"},
    {"min_lr", CFG_FLOAT, "1e-4", 0, 10, NULL, OFF(min_lr), "learning rate at the end of the cosine decay (stage default: 5e-4 pretrain, 1e-4 finetune)", "min_learning_rate"},
    {"warmup_steps", CFG_INT, "500", 0, BIG, NULL, OFF(warmup_steps), "linear warmup steps"},
    {"weight_decay", CFG_FLOAT, "0.1", 0, 10, NULL, OFF(weight_decay), "AdamW decoupled weight decay (applied to every trained parameter, as the official code does)"},
    {"beta1", CFG_FLOAT, "0.9", 0, 0.999999, NULL, OFF(beta1), "AdamW beta1", "adam_beta1"},
    {"beta2", CFG_FLOAT, "0.98", 0, 0.999999, NULL, OFF(beta2), "AdamW beta2", "adam_beta2,adam_betas"},
    {"adam_eps", CFG_FLOAT, "1e-8", 0, 1, NULL, OFF(adam_eps), "AdamW epsilon"},
    {"max_grad_norm", CFG_FLOAT, "1.0", 0, BIG, NULL, OFF(max_grad_norm), "global gradient-norm clip (0 = off)", "max_grads_norm,clip_grad_norm,grad_clip"},
    {"shuffle", CFG_BOOL, "true", 0, 0, NULL, OFF(shuffle), "reshuffle the training records every epoch"},
    {"seed", CFG_INT, "17", 0, BIG, NULL, OFF(seed), "seed of initialisation, shuffling and negative sampling", "random_seed"},
    {"eval_every", CFG_INT, "0", 0, BIG, NULL, OFF(eval_every), "evaluate every N optimizer steps (0 = only at the end of each epoch)", "eval_steps"},
    {"eval_batch_size", CFG_INT, "2048", 1, 1 << 24, NULL, OFF(eval_batch_size), "sequences per evaluation batch (at most the training micro-batch of a rank, whose activations the backend plans)"},
    {"eval_max_samples", CFG_INT, "0", 0, BIG, NULL, OFF(eval_max_samples), "evaluate on at most this many records (0 = all)"},
    {"log_every", CFG_INT, "10", 1, BIG, NULL, OFF(log_every), "write a training log line every N optimizer steps", "log_steps"},
    {"checkpoint_every", CFG_INT, "0", 0, BIG, NULL, OFF(checkpoint_every), "write a resumable checkpoint every N optimizer steps (0 = only at the end of each epoch)"},
    {"keep_checkpoints", CFG_INT, "2", 1, 1000000, NULL, OFF(keep_checkpoints), "resumable checkpoints kept in out_dir/checkpoints (older ones are deleted)"},
    {"resume", CFG_ENUM, "auto", 0, 0, "auto|never", OFF(resume), "auto: continue from the latest checkpoint in out_dir/checkpoints when there is one", "restore"},
    {"stop_after_steps", CFG_INT, "0", 0, BIG, NULL, OFF(stop_after_steps), "stop (with a checkpoint) after this many steps of this invocation; rerun to continue (0 = off)"},
    {"out_dir", CFG_STRING, "runs/default", 0, 0, NULL, OFF(out_dir), "directory for settings, logs and checkpoints", "ckpt_root_dir,output_dir"},
    {"device", CFG_ENUM, "auto", 0, 0, "auto|cpu|cuda", OFF(device), "backend: auto = cuda when a GPU is present, else cpu"},
    {"attention_kernel", CFG_ENUM, "auto", 0, 0, "auto|own|cudnn", OFF(attention_kernel), "CUDA attention implementation: own = gpsdrec's tensor-core kernels, cudnn = cuDNN's fused flash attention, auto = whichever is faster on this model's shape, timed when the backend starts (cuDNN only where it is deterministic and agrees with the own kernels)"},
    {"sampled_softmax_kernel", CFG_ENUM, "auto", 0, 0, "auto|fused|gemm", OFF(sampled_softmax_kernel), "CUDA item head: fused = one flash-style kernel per sequence for the logits, loss and gradient products (emb_dim 32 or 64, max_history up to 256), gemm = cuBLAS logits and gradient GEMMs around a row softmax kernel, auto = fused where it applies"},
    {"gemm_autotune", CFG_BOOL, "false", 0, 0, NULL, OFF(gemm_autotune), "CUDA backend: the first product of each GEMM shape times cuBLASLt's first 8 candidate algorithms and keeps the fastest (about a second at start-up); a run stays reproducible within itself, but two runs may pick differently and differ in the last bits"},
    {"recompute_blocks", CFG_BOOL, "false", 0, 0, NULL, OFF(recompute_blocks), "CUDA backend: keep only each block's input through the forward and recompute the block's activations just before its backward (the same kernels on the same values: the same result to the bit); activation memory of one block instead of all, for one more forward of the blocks"},
    {"recompute_ffn", CFG_BOOL, "false", 0, 0, NULL, OFF(recompute_ffn), "CUDA backend: keep one feed-forward gate/up product for all blocks and recompute each block's (its norm and W1|W3 GEMM, the same bits) just before its backward; 2 F bf16 a token and block less memory for one more of those GEMMs per block (recompute_blocks already includes it)"},
    {"prefetch", CFG_BOOL, "true", 0, 0, NULL, OFF(prefetch), "build the next training micro-batch (its records and negatives) on a background thread while the current one trains; the same batches either way"},
    {"threads", CFG_INT, "0", 0, 4096, NULL, OFF(threads), "CPU threads (0 = all cores)"},
    /* data parallelism */
    {"nproc", CFG_INT, "1", 0, 4096, NULL, OFF(nproc), "processes (one per GPU) this command starts on this node for a data-parallel run; 0 = one per visible GPU; ignored under torchrun, mpirun or srun", "nproc_per_node"},
    {"dist_timeout", CFG_FLOAT, "600", 1, 1e7, NULL, OFF(dist_timeout), "seconds a rank waits for the others (joining, host collectives) before it stops with an error"},
    {"dist_item_grads", CFG_ENUM, "auto", 0, 0, "auto|rows|dense", OFF(dist_item_grads), "how ranks sum item-table gradients: rows = only the rows touched in the step travel, dense = the whole table is all-reduced, auto = whichever moves fewer bytes"},
    /* transfer */
    {"init_from", CFG_STRING, "", 0, 0, NULL, OFF(init_from), "checkpoint (.safetensors) to initialise from", "load_ckpt,checkpoint"},
    {"transfer", CFG_ENUM, "none", 0, 0, "none|full|sparse", OFF(transfer), "what init_from provides: nothing (NT), every parameter (FT), or the item table only (ST)"},
    {"freeze_sparse", CFG_BOOL, "false", 0, 0, NULL, OFF(freeze_sparse), "freeze the item embedding table (no gradient, no optimizer state, no update)", "frozen_params"},
    /* synthetic data */
    {"synth.users", CFG_INT, "50000", 1, 4e9, NULL, OFF(synth_users), "synthetic users"},
    {"synth.items", CFG_INT, "2000", 2, 4e9, NULL, OFF(synth_items), "synthetic items (ids 1..N)"},
    {"synth.cates", CFG_INT, "50", 1, 4e9, NULL, OFF(synth_cates), "synthetic categories"},
    {"synth.topics", CFG_INT, "30", 1, 1e7, NULL, OFF(synth_topics), "latent interest states"},
    {"synth.mean_len", CFG_FLOAT, "30", 1, 1e6, NULL, OFF(synth_mean_len), "mean interactions per user"},
    {"synth.min_len", CFG_INT, "5", 1, 1e9, NULL, OFF(synth_min_len), "shortest user sequence"},
    {"synth.max_len", CFG_INT, "400", 1, 1e9, NULL, OFF(synth_max_len), "longest user sequence"},
    {"synth.zipf", CFG_FLOAT, "0.6", 0, 10, NULL, OFF(synth_zipf), "exponent of the item popularity power law"},
    {"synth.stickiness", CFG_FLOAT, "0.6", 0, 1, NULL, OFF(synth_stickiness), "probability of staying in the current interest"},
    {"synth.transition", CFG_FLOAT, "0.15", 0, 1, NULL, OFF(synth_transition), "probability that the next item is a successor of the previous one"},
    {"synth.drift", CFG_FLOAT, "0.01", 0, 1, NULL, OFF(synth_drift), "per-interaction probability that long-term interests change"},
    /* protocol */
    {"min_user_len", CFG_INT, "4", 3, 1e9, NULL, OFF(min_user_len), "users with fewer interactions are dropped (official: 4 Amazon, 10 Taobao)"},
    {"window", CFG_INT, "50", 2, 65535, NULL, OFF(window), "history kept per sample when building a dataset (official: 50 Amazon, 200 Taobao)"},
    {"ctr_negatives", CFG_INT, "1", 1, 1000, NULL, OFF(ctr_negatives), "uniform negatives per CTR positive"},
    {"split_quantile", CFG_FLOAT, "0.7", 0.001, 0.999, NULL, OFF(split_quantile), "users whose last interaction is later than this quantile are test users"},
    {"valid_quantile", CFG_FLOAT, "0", 0, 0.999, NULL, OFF(valid_quantile), "if > 0, users between this quantile and split_quantile form a validation split"},
};
const int settings_n_keys = (int)(sizeof settings_keys / sizeof settings_keys[0]);

const char settings_stage_defaults[] =
    "pretrain.lr = 5e-3\n"
    "pretrain.min_lr = 5e-4\n"
    "pretrain.item_loss_weight = 1\n"
    "pretrain.cate_loss_weight = 1\n"
    "pretrain.rank_loss_weight = 0\n"
    "finetune.lr = 1e-3\n"
    "finetune.min_lr = 1e-4\n"
    "finetune.item_loss_weight = 0\n"
    "finetune.cate_loss_weight = 0\n"
    "finetune.rank_loss_weight = 1\n";

const char *settings_stage_name(int stage) { return stage == STAGE_FINETUNE ? "finetune" : "pretrain"; }

int settings_resolve(const cfg_list *l, int stage, gp_settings *s, const cfg_assignment **origin, gp_err *e)
{
    memset(s, 0, sizeof *s);
    if (cfg_resolve(settings_keys, settings_n_keys, l, settings_stage_name(stage), s, origin, e) != 0)
        return -1;
    /* The stage is chosen by the command (train's `stage` key or gpsd's two stages); a scoped
     * resolution always describes that stage. */
    s->stage = stage;
    return 0;
}

int settings_stage_of(const cfg_list *l, int *stage, gp_err *e)
{
    gp_settings *s = gp_xcalloc(1, sizeof *s);
    int rc = cfg_resolve(settings_keys, settings_n_keys, l, NULL, s, NULL, e);
    if (rc == 0)
        *stage = s->stage;
    free(s);
    return rc;
}

int settings_validate(const gp_settings *s, gp_err *e)
{
    if (s->dim % s->n_heads != 0)
        return gp_fail(e, "dim (%lld) must be divisible by n_heads (%lld)", (long long)s->dim, (long long)s->n_heads);
    if ((s->dim / s->n_heads) % 2 != 0)
        return gp_fail(e, "head_dim = dim / n_heads = %lld must be even for RoPE", (long long)(s->dim / s->n_heads));
    if (s->min_lr > s->lr)
        return gp_fail(e, "min_lr (%g) must not exceed lr (%g)", s->min_lr, s->lr);
    if (s->item_loss_weight == 0 && s->cate_loss_weight == 0 && s->rank_loss_weight == 0)
        return gp_fail(e, "every loss weight is 0 for stage %s: nothing to train", settings_stage_name(s->stage));
    if (s->transfer != TRANSFER_NONE && !s->init_from[0])
        return gp_fail(e, "transfer = %s needs init_from = <checkpoint>", s->transfer == TRANSFER_FULL ? "full" : "sparse");
    if (s->synth_min_len > s->synth_max_len)
        return gp_fail(e, "synth.min_len (%lld) exceeds synth.max_len (%lld)", (long long)s->synth_min_len,
                       (long long)s->synth_max_len);
    if (s->valid_quantile > 0 && s->valid_quantile >= s->split_quantile)
        return gp_fail(e, "valid_quantile (%g) must be below split_quantile (%g)", s->valid_quantile, s->split_quantile);
    return 0;
}

void settings_print(const gp_settings *s, const cfg_assignment **origin, FILE *f)
{
    cfg_dump(settings_keys, settings_n_keys, s, origin, f);
}

int settings_save(const gp_settings *s, const cfg_assignment **origin, const char *path, gp_err *e)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&buf, &len);
    if (!mem)
        return gp_fail(e, "%s: cannot format settings", path);
    fprintf(mem, "# effective settings of this run (stage %s); loadable with gpsdrec train %s\n",
            settings_stage_name(s->stage), path);
    settings_print(s, origin, mem);
    fclose(mem);
    int rc = gp_write_atomic(path, buf, len, e);
    free(buf);
    return rc;
}
