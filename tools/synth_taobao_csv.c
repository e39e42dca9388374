/* synth_taobao_csv: writes a Taobao UserBehavior-format CSV (user,item,category,behavior,timestamp)
 * from the synthetic generator (csrc/synth.c), for the prep benchmark.
 *
 *   synth_taobao_csv OUT.csv USERS ITEMS CATES MEAN_LEN [SEED]
 *
 * Raw ids are scrambled (odd multipliers mod 2^31) so the key maps see sparse, unordered ids as in
 * the real file; timestamps start at 2017-11-25; behaviours are pv/cart/fav/buy in the real file's
 * proportions (89.5/5.5/2.9/2.0 %); each user's rows come in time order with about one pair in
 * five swapped, so prep's per-user sort has work to do. Category = 1 + (the item's latent topic
 * mod CATES): structure from the generator, the exact category draw is not exposed by synth.h.
 * Built by tools/bench_prep.sh against the library objects of `make CUDA=0`. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"
#include "synth.h"

#define BATCH 8192

static uint32_t scramble(uint64_t x, uint64_t mul) { return (uint32_t)((x * mul + 12345) & 0x7FFFFFFF); }

int main(int argc, char **argv)
{
    if (argc < 6) {
        fprintf(stderr, "usage: %s OUT.csv USERS ITEMS CATES MEAN_LEN [SEED]\n", argv[0]);
        return 2;
    }
    synth_config c = synth_default_config();
    c.n_users = strtoull(argv[2], NULL, 10);
    c.n_items = strtoull(argv[3], NULL, 10);
    c.n_cates = (uint32_t)strtoul(argv[4], NULL, 10);
    c.mean_len = atof(argv[5]);
    c.n_topics = c.n_items / 50 > 100 ? (uint32_t)(c.n_items / 50) : 100;
    c.min_len = 1;
    c.max_len = 2000;
    c.seed = argc > 6 ? strtoull(argv[6], NULL, 10) : 1;
    gp_err e;
    synth_model *m;
    if (synth_model_build(&c, &m, &e) != 0) {
        fprintf(stderr, "synth: %s\n", e.msg);
        return 1;
    }
    FILE *f = fopen(argv[1], "wb");
    if (!f) {
        perror(argv[1]);
        return 1;
    }
    const int T = omp_get_max_threads();
    char **buf = calloc((size_t)T, sizeof *buf);
    size_t *len = calloc((size_t)T, sizeof *len), *cap = calloc((size_t)T, sizeof *cap);
    uint64_t rows = 0;
    static const char *const beh[4] = {"pv", "cart", "fav", "buy"};
    for (uint64_t u0 = 0; u0 < c.n_users; u0 += BATCH) {
        uint64_t u1 = u0 + BATCH < c.n_users ? u0 + BATCH : c.n_users;
#pragma omp parallel num_threads(T) reduction(+ : rows)
        {
            int t = omp_get_thread_num();
            len[t] = 0;
            uint64_t lo = u0 + (u1 - u0) * (uint64_t)t / (uint64_t)T, hi = u0 + (u1 - u0) * (uint64_t)(t + 1) / (uint64_t)T;
            uint32_t *items = NULL;
            int64_t *times = NULL;
            uint32_t items_cap = 0;
            for (uint64_t u = lo; u < hi; u++) {
                uint32_t n = synth_user_len(m, u);
                if (n > items_cap) {
                    items_cap = n;
                    items = realloc(items, n * sizeof *items);
                    times = realloc(times, n * sizeof *times);
                }
                synth_user_sequence(m, u, items, times, NULL);
                gp_rng r = gp_rng_stream(c.seed, RNG_PURPOSE_TEST, 77, u);
                for (uint32_t k = 0; k + 1 < n; k++)
                    if (gp_rng_below(&r, 5) == 0) {
                        uint32_t ti = items[k];
                        items[k] = items[k + 1], items[k + 1] = ti;
                        int64_t tt = times[k];
                        times[k] = times[k + 1], times[k + 1] = tt;
                        k++;
                    }
                if (cap[t] - len[t] < (size_t)n * 64 + 64) {
                    cap[t] = (cap[t] + (size_t)n * 64 + 64) * 2;
                    buf[t] = realloc(buf[t], cap[t]);
                }
                uint32_t uid = scramble(u + 1, 2654435761u);
                for (uint32_t k = 0; k < n; k++) {
                    uint32_t x = gp_rng_below(&r, 1000);
                    int b = x < 895 ? 0 : x < 950 ? 1 : x < 979 ? 2 : 3;
                    len[t] += (size_t)sprintf(buf[t] + len[t], "%u,%u,%u,%s,%lld\n", uid, scramble(items[k], 40503u * 2 + 1),
                                              1 + synth_item_topic(m, items[k]) % c.n_cates, beh[b],
                                              (long long)(1511539200 + times[k]));
                }
                rows += n;
            }
            free(items);
            free(times);
        }
        for (int t = 0; t < T; t++)
            if (len[t] && fwrite(buf[t], 1, len[t], f) != len[t]) {
                perror("write");
                return 1;
            }
    }
    fclose(f);
    fprintf(stderr, "wrote %llu rows of %llu users to %s\n", (unsigned long long)rows, (unsigned long long)c.n_users, argv[1]);
    synth_model_free(m);
    return 0;
}
