/* protocol: the official GPSD split/sample construction (see include/protocol.h).
 *
 * Three passes, so the output is the same for any thread count:
 *   1. validate, then find split_time (and valid_time) by selection over all users' last times;
 *   2. per user (parallel): keep/drop, split, number of records it produces;
 *   3. serial prefix sums give every user its record slots per split, then a parallel fill where
 *      each user draws its negatives from its own stream gp_rng_stream(seed, PREP, user, 0).
 */
#include "protocol.h"

#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"

#define PROTOCOL_MAX_NEGATIVES 65536u

protocol_opts protocol_default_opts(void)
{
    protocol_opts o;
    memset(&o, 0, sizeof o);
    o.min_user_len = 4;
    o.max_history = 50;
    o.split_quantile = 0.7;
    o.valid_quantile = 0.0;
    o.n_negatives = 1;
    o.min_pretrain_history = 2;
    o.sliding_window = 0;
    o.min_window_history = 2;
    o.seed = 1;
    o.threads = 0;
    return o;
}

int protocol_validate_opts(const protocol_opts *o, gp_err *e)
{
    if (!(o->split_quantile > 0.0 && o->split_quantile < 1.0))
        return gp_fail(e, "protocol: split_quantile must be in (0, 1), got %g", o->split_quantile);
    if (!(o->valid_quantile >= 0.0 && o->valid_quantile < o->split_quantile))
        return gp_fail(e, "protocol: valid_quantile must be in [0, split_quantile = %g), got %g", o->split_quantile,
                       o->valid_quantile);
    if (o->max_history < 2)
        return gp_fail(e, "protocol: max_history must be >= 2 (the pretraining history is the window minus two), got %u",
                       o->max_history);
    if (o->min_user_len < 3)
        return gp_fail(e, "protocol: min_user_len must be >= 3 (a user needs a history, a pretraining target and a CTR "
                          "target), got %u",
                       o->min_user_len);
    if (o->n_negatives < 1 || o->n_negatives > PROTOCOL_MAX_NEGATIVES)
        return gp_fail(e, "protocol: n_negatives must be in [1, %u], got %u", PROTOCOL_MAX_NEGATIVES, o->n_negatives);
    if (o->min_pretrain_history < 1)
        return gp_fail(e, "protocol: min_pretrain_history must be >= 1, got %u", o->min_pretrain_history);
    if (o->sliding_window && o->min_window_history < 1)
        return gp_fail(e, "protocol: min_window_history must be >= 1 with sliding_window, got %u", o->min_window_history);
    if (o->threads < 0)
        return gp_fail(e, "protocol: threads must be >= 0 (0 = default), got %d", o->threads);
    return 0;
}

static int check_input(const protocol_input *in, int threads, gp_err *e)
{
    if (in->n_items < 3)
        return gp_fail(e, "protocol: n_items (vocabulary with padding) must be >= 3 so a negative other than the "
                          "positive exists, got %llu",
                       (unsigned long long)in->n_items);
    if (in->n_items > (uint64_t)UINT32_MAX + 1)
        return gp_fail(e, "protocol: n_items %llu does not fit 32-bit item ids", (unsigned long long)in->n_items);
    if (in->n_users < 1)
        return gp_fail(e, "protocol: no users (n_users = 0), the split time is undefined");
    if (in->n_users > (uint64_t)UINT32_MAX + 1)
        return gp_fail(e, "protocol: n_users %llu does not fit the 32-bit user field of a record",
                       (unsigned long long)in->n_users);
    if (!in->user_offset || !in->user_len || !in->user_last_time || !in->item_cate ||
        (in->n_tokens && (!in->tok_item || !in->tok_cate)))
        return gp_fail(e, "protocol: input array missing (NULL pointer)");

    /* The lowest offending user is reported whatever the thread count. */
    int64_t bad_span = INT64_MAX, bad_tok = INT64_MAX;
    const int64_t n_users = (int64_t)in->n_users;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 4096) reduction(min : bad_span, bad_tok)
    for (int64_t u = 0; u < n_users; u++) {
        uint64_t off = in->user_offset[u], len = in->user_len[u];
        if (off > in->n_tokens || len > in->n_tokens - off) {
            if (u < bad_span)
                bad_span = u;
            continue;
        }
        for (uint64_t k = 0; k < len; k++) {
            uint32_t it = in->tok_item[off + k];
            if (it == 0 || it >= in->n_items) {
                if (u < bad_tok)
                    bad_tok = u;
                break;
            }
        }
    }
    if (bad_span != INT64_MAX && bad_span <= bad_tok) {
        uint64_t u = (uint64_t)bad_span;
        return gp_fail(e, "protocol: user %llu spans tokens [%llu, %llu + %u) outside the pool of %llu tokens",
                       (unsigned long long)u, (unsigned long long)in->user_offset[u],
                       (unsigned long long)in->user_offset[u], in->user_len[u], (unsigned long long)in->n_tokens);
    }
    if (bad_tok != INT64_MAX) {
        uint64_t u = (uint64_t)bad_tok, off = in->user_offset[u];
        for (uint64_t k = 0; k < in->user_len[u]; k++) {
            uint32_t it = in->tok_item[off + k];
            if (it == 0 || it >= in->n_items)
                return gp_fail(e, "protocol: user %llu, interaction %llu (token %llu): item id %u outside 1..%llu",
                               (unsigned long long)u, (unsigned long long)k, (unsigned long long)(off + k), it,
                               (unsigned long long)(in->n_items - 1));
        }
    }
    return 0;
}

/* k-th smallest of a[0..n) (a is permuted): quickselect with a three-way partition, so many tied
 * times cost nothing, and a pivot from a fixed stream, so it is deterministic and expected O(n). */
static int64_t select_kth(int64_t *a, uint64_t n, uint64_t k)
{
    gp_rng r = gp_rng_stream(0, RNG_PURPOSE_PREP, UINT64_MAX, UINT64_MAX);
    uint64_t lo = 0, hi = n; /* the answer lies in a[lo, hi) */
    for (;;) {
        if (hi - lo == 1)
            return a[lo];
        int64_t pivot = a[lo + gp_rng_below64(&r, hi - lo)];
        /* [lo, lt) < pivot, [lt, i) == pivot, (gt, hi) > pivot */
        uint64_t lt = lo, i = lo, gt = hi;
        while (i < gt) {
            if (a[i] < pivot) {
                int64_t t = a[lt];
                a[lt++] = a[i];
                a[i++] = t;
            } else if (a[i] > pivot) {
                int64_t t = a[--gt];
                a[gt] = a[i];
                a[i] = t;
            } else {
                i++;
            }
        }
        if (k < lt)
            hi = lt;
        else if (k < gt)
            return pivot;
        else
            lo = gt;
    }
}

static uint64_t quantile_index(uint64_t n, double q)
{
    /* int(len * q) in the official code: the same double product, truncated. */
    uint64_t k = (uint64_t)((double)n * q);
    return k < n ? k : n - 1;
}

/* What one user produces. */
typedef struct {
    uint64_t ctr_records; /* CTR records (positives and negatives) */
    uint8_t split;        /* TRAIN / TEST / VALID; meaningless when dropped */
    uint8_t kept;
    uint8_t pretrain;
} user_plan;

static uint32_t window_len(uint32_t n, uint32_t max_history)
{
    return n < max_history + 1 ? n : max_history + 1;
}

static void put_record(ds_record *r, uint64_t offset, uint32_t hist_len, uint32_t user, uint32_t item, uint32_t cate,
                       uint8_t label, uint8_t split)
{
    memset(r, 0, sizeof *r);
    r->offset = offset;
    r->hist_len = hist_len;
    r->user = user;
    r->item = item;
    r->cate = cate;
    r->label = label;
    r->split = split;
}

/* One CTR sample at position p of user u: the positive then n_negatives negatives, each drawn
 * uniformly from 1..n_items-1 and redrawn while it equals the positive. */
static void put_ctr_sample(ds_record *out, const protocol_input *in, const protocol_opts *o, uint64_t u, uint32_t p,
                           uint8_t split, gp_rng *rng)
{
    uint64_t off = in->user_offset[u];
    uint32_t start = p > o->max_history ? p - o->max_history : 0;
    uint32_t hist = p - start;
    uint32_t pos = in->tok_item[off + p];
    put_record(&out[0], off + start, hist, (uint32_t)u, pos, in->tok_cate[off + p], 1, split);
    for (uint32_t k = 0; k < o->n_negatives; k++) {
        uint32_t neg;
        do
            neg = 1 + (uint32_t)gp_rng_below64(rng, in->n_items - 1);
        while (neg == pos);
        put_record(&out[1 + k], off + start, hist, (uint32_t)u, neg, in->item_cate[neg], 0, split);
    }
}

int protocol_build(const protocol_input *in, const protocol_opts *opts, ds_record **records, uint64_t *n_records,
                   protocol_stats *stats, gp_err *e)
{
    *records = NULL;
    *n_records = 0;
    if (!in || !opts)
        return gp_fail(e, "protocol: missing input or options");
    if (protocol_validate_opts(opts, e) != 0)
        return -1;
    const int threads = opts->threads > 0 ? opts->threads : omp_get_max_threads();
    if (check_input(in, threads, e) != 0)
        return -1;

    protocol_stats st;
    memset(&st, 0, sizeof st);
    const uint64_t n_users = in->n_users;
    st.users_in = n_users;

    int64_t *times = gp_alloc_or_fail(n_users * sizeof *times, "protocol: last interaction times", e);
    if (!times)
        return -1;
    memcpy(times, in->user_last_time, n_users * sizeof *times);
    st.split_time = select_kth(times, n_users, quantile_index(n_users, opts->split_quantile));
    const int has_valid = opts->valid_quantile > 0.0;
    st.valid_time = has_valid ? select_kth(times, n_users, quantile_index(n_users, opts->valid_quantile)) : st.split_time;
    gp_free_aligned(times);

    user_plan *plan = gp_alloc_or_fail(n_users * sizeof *plan, "protocol: per-user plan", e);
    uint64_t *slot = gp_alloc_or_fail(2 * n_users * sizeof *slot, "protocol: per-user record slots", e);
    if (!plan || !slot) {
        gp_free_aligned(plan);
        gp_free_aligned(slot);
        return -1;
    }

    const uint32_t per_sample = 1 + opts->n_negatives;
    const uint32_t first_window_pos = opts->min_window_history > 0 ? opts->min_window_history : 1;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t ui = 0; ui < (int64_t)n_users; ui++) {
        user_plan *pl = &plan[ui];
        uint32_t n = in->user_len[ui];
        memset(pl, 0, sizeof *pl);
        if (n < opts->min_user_len)
            continue;
        pl->kept = 1;
        int64_t last = in->user_last_time[ui];
        pl->split = last > st.split_time ? DS_SPLIT_TEST
                    : (has_valid && last > st.valid_time) ? DS_SPLIT_VALID
                                                            : DS_SPLIT_TRAIN;
        pl->pretrain = window_len(n, opts->max_history) - 2 >= opts->min_pretrain_history;
        uint64_t samples = 1;
        if (opts->sliding_window && pl->split == DS_SPLIT_TRAIN && n - 1 > first_window_pos)
            samples += n - 1 - first_window_pos; /* positions first_window_pos .. n-2 */
        pl->ctr_records = samples * per_sample;
    }

    /* Serial prefix sums: slot[2u] = index of u's pretraining record, slot[2u+1] = of its first CTR record. */
    uint64_t count[DS_N_SPLITS] = {0};
    for (uint64_t u = 0; u < n_users; u++) {
        const user_plan *pl = &plan[u];
        if (!pl->kept) {
            st.users_too_short++;
            continue;
        }
        st.users_kept++;
        st.users_test += pl->split == DS_SPLIT_TEST;
        st.users_valid += pl->split == DS_SPLIT_VALID;
        st.users_no_pretrain += !pl->pretrain;
        count[DS_SPLIT_PRETRAIN] += pl->pretrain;
        count[pl->split] += pl->ctr_records;
    }
    uint64_t base[DS_N_SPLITS], total = 0;
    for (int s = 0; s < DS_N_SPLITS; s++) {
        base[s] = total;
        total += count[s];
        st.records[s] = count[s];
    }
    uint64_t next[DS_N_SPLITS];
    memcpy(next, base, sizeof next);
    for (uint64_t u = 0; u < n_users; u++) {
        const user_plan *pl = &plan[u];
        if (!pl->kept)
            continue;
        slot[2 * u] = next[DS_SPLIT_PRETRAIN];
        next[DS_SPLIT_PRETRAIN] += pl->pretrain;
        slot[2 * u + 1] = next[pl->split];
        next[pl->split] += pl->ctr_records;
    }

    ds_record *rec = gp_alloc_or_fail((total ? total : 1) * sizeof *rec, "protocol: records", e);
    if (!rec) {
        gp_free_aligned(plan);
        gp_free_aligned(slot);
        return -1;
    }

#pragma omp parallel for num_threads(threads) schedule(dynamic, 1024)
    for (int64_t ui = 0; ui < (int64_t)n_users; ui++) {
        const user_plan *pl = &plan[ui];
        if (!pl->kept)
            continue;
        uint64_t u = (uint64_t)ui;
        uint32_t n = in->user_len[u];
        uint64_t off = in->user_offset[u];
        uint32_t w = window_len(n, opts->max_history);
        uint64_t win = off + (n - w);
        if (pl->pretrain) {
            uint32_t target = in->tok_item[win + w - 2];
            put_record(&rec[slot[2 * u]], win, w - 2, (uint32_t)u, target, in->item_cate[target], DS_LABEL_PRETRAIN,
                       DS_SPLIT_PRETRAIN);
        }
        gp_rng rng = gp_rng_stream(opts->seed, RNG_PURPOSE_PREP, u, 0);
        ds_record *ctr = &rec[slot[2 * u + 1]];
        uint64_t n_samples = pl->ctr_records / per_sample;
        /* The final sample (position n-1) first, so sliding windows leave it unchanged. */
        put_ctr_sample(ctr + (n_samples - 1) * per_sample, in, opts, u, n - 1, pl->split, &rng);
        for (uint64_t k = 0; k + 1 < n_samples; k++)
            put_ctr_sample(ctr + k * per_sample, in, opts, u, first_window_pos + (uint32_t)k, pl->split, &rng);
    }

    gp_free_aligned(plan);
    gp_free_aligned(slot);
    *records = rec;
    *n_records = total;
    if (stats)
        *stats = st;
    return 0;
}
