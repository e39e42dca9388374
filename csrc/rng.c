#include "rng.h"

#include <math.h>

uint64_t gp_mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

gp_rng gp_rng_stream(uint64_t seed, uint64_t purpose, uint64_t a, uint64_t b)
{
    uint64_t h = gp_mix64(seed ^ 0x6a09e667f3bcc909ULL);
    h = gp_mix64(h ^ (purpose * 0x9e3779b97f4a7c15ULL));
    h = gp_mix64(h ^ (a + 0x3c6ef372fe94f82bULL));
    h = gp_mix64(h ^ (b + 0xa54ff53a5f1d36f1ULL));
    gp_rng r = {h};
    return r;
}

uint64_t gp_rng_u64(gp_rng *r)
{
    r->state += 0x9e3779b97f4a7c15ULL;
    return gp_mix64(r->state);
}

uint32_t gp_rng_below(gp_rng *r, uint32_t n)
{
    if (n <= 1)
        return 0;
    uint64_t m = (uint64_t)(uint32_t)gp_rng_u64(r) * n;
    uint32_t low = (uint32_t)m;
    if (low < n) {
        uint32_t threshold = (uint32_t)(-n) % n;
        while (low < threshold) {
            m = (uint64_t)(uint32_t)gp_rng_u64(r) * n;
            low = (uint32_t)m;
        }
    }
    return (uint32_t)(m >> 32);
}

uint64_t gp_rng_below64(gp_rng *r, uint64_t n)
{
    if (n <= 1)
        return 0;
    if (n <= 0xffffffffULL)
        return gp_rng_below(r, (uint32_t)n);
    uint64_t limit = UINT64_MAX - (UINT64_MAX % n);
    uint64_t x;
    do
        x = gp_rng_u64(r);
    while (x >= limit);
    return x % n;
}

double gp_rng_uniform(gp_rng *r) { return (double)(gp_rng_u64(r) >> 11) * 0x1.0p-53; }

double gp_rng_normal(gp_rng *r)
{
    double u1 = 1.0 - gp_rng_uniform(r); /* (0, 1] so log is finite */
    double u2 = gp_rng_uniform(r);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}
