/* rng: counter-based random streams, so every random draw is a pure function of
 * (seed, purpose, index...) and results never depend on thread count or call order.
 *
 * Contract
 * - gp_rng_stream(seed, purpose, a, b) returns an independent stream for that tuple; the
 *   purpose constants below keep the uses apart (model init, shuffling, negatives, synth...).
 * - The generator is SplitMix64 seeded through a strong 64-bit mix of the tuple.
 * - gp_rng_below(r, n) is unbiased (Lemire's multiply-shift with rejection).
 * - gp_rng_normal uses Box-Muller on two uniform draws; both the output and the number of
 *   draws consumed are deterministic.
 */
#ifndef GPSDREC_RNG_H
#define GPSDREC_RNG_H

#include <stdint.h>

enum {
    RNG_PURPOSE_INIT = 1,      /* parameter initialisation: a = parameter index, b = chunk */
    RNG_PURPOSE_SHUFFLE = 2,   /* epoch permutation: a = epoch */
    RNG_PURPOSE_NEGATIVES = 3, /* sampled-softmax negatives: a = global micro-step, b = sequence in batch */
    RNG_PURPOSE_SYNTH = 4,     /* synthetic data generator: a = sub-purpose, b = entity index */
    RNG_PURPOSE_PREP = 5,      /* preprocessing: CTR negatives per user */
    RNG_PURPOSE_TEST = 6,      /* tests */
};

typedef struct {
    uint64_t state;
} gp_rng;

uint64_t gp_mix64(uint64_t x);
gp_rng gp_rng_stream(uint64_t seed, uint64_t purpose, uint64_t a, uint64_t b);
uint64_t gp_rng_u64(gp_rng *r);
uint32_t gp_rng_below(gp_rng *r, uint32_t n);
uint64_t gp_rng_below64(gp_rng *r, uint64_t n);
double gp_rng_uniform(gp_rng *r);  /* [0, 1), 53 random bits */
double gp_rng_normal(gp_rng *r);   /* standard normal */

#endif
