/* bench_cases: the groups of measurements bench_kernels runs, and the model shapes they use.
 *
 * Shapes are those of the paper's model sizes (configs/sizes/): dim 32 .. 1024, tokens = batch x
 * 201 positions (200 history slots + the candidate), batch 512 for the small and middle sizes and
 * 128 for L24H1024A16 (the batches of DESIGN.md's benchmark table); the loss rows are one
 * logits chunk of the CUDA backend (at most 512 MB of fp32 + bf16 logits: 109 sequences x 200
 * positions against 4096 negatives). Each group prints its own rows through bench_harness. */
#ifndef GPSDREC_BENCH_CASES_H
#define GPSDREC_BENCH_CASES_H

typedef struct {
    const char *name;
    int dim, heads, seqs; /* seqs: sequences of 201 positions in a micro-batch */
} bk_size;

#define BK_POSITIONS 201
extern const bk_size bk_sizes[];
extern const int bk_n_sizes;

/* SwiGLU hidden size of the official model (multiple_of 32). */
int bk_ffn_hidden(int dim);

void bk_cases_rows(void); /* norms, RoPE, SwiGLU, conversions (bench_kernels_rows.c) */
void bk_cases_gather(void); /* embeddings, gathers, scatter-adds, L2 norms, heads' row ops (bench_kernels_gather.c) */
void bk_cases_attn(void); /* attention forward and backward (bench_kernels_attn.c) */
void bk_cases_misc(void); /* losses, optimizer, reductions, evaluation, row exchange (bench_kernels_misc.c) */
void bk_cases_gemm(void); /* the linear layers' cuBLASLt algorithms (bench_kernels_gemm.c) */

#endif
