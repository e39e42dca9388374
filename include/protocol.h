/* protocol: the official GPSD data protocol, turning users' time-ordered sequences into
 * dataset records. Shared by `gpsdrec synth` and `gpsdrec prep`.
 *
 * What it reproduces (chqiwang/gpsd-rec dataset/preprocessing_*.py):
 * - split_time = the ascending-sorted last-interaction times of ALL users (before any length
 *   filter) at index floor(n_users * split_quantile); a user is a test user when its last time
 *   is strictly greater than split_time.
 * - users with fewer than min_user_len interactions are dropped (counted in stats).
 * - each kept user's window = its last (max_history + 1) interactions.
 * - CTR samples (split TRAIN or TEST by the user's flag): history = the window without its last
 *   interaction (hist_len = min(n-1, max_history)); a positive with the last interaction as the
 *   candidate, and n_negatives negatives, each an item drawn uniformly from 1..n_items-1 and
 *   redrawn while it equals the positive item (the official rejection loop); a negative's
 *   category is item_cate[item].
 * - pretraining sequence (split PRETRAIN, label 2), for every kept user whatever its split:
 *   history = the window without its last two interactions (hist_len = min(n-2, max_history-1)),
 *   target = the window's second-to-last interaction, its category = item_cate[target].
 * - users whose pretraining history would be shorter than min_pretrain_history (default 2, the
 *   official loader drops shorter ones) get no pretraining sequence (counted).
 * - the negatives of user u come from gp_rng_stream(seed, RNG_PURPOSE_PREP, u, 0): deterministic
 *   and independent of threads and of other users.
 * Options beyond the protocol: valid_quantile > 0 moves the users whose last time falls in
 * (valid_time, split_time] into VALID (valid_time computed like split_time), sliding_window adds
 * a CTR sample at every position >= min_window_history of train users (not only the last):
 * position p (0-based in the user's whole sequence) has the candidate pool[p] and the history of
 * the up to max_history interactions before it.
 */
#ifndef GPSDREC_PROTOCOL_H
#define GPSDREC_PROTOCOL_H

#include <stdint.h>

#include "dataset.h"
#include "util.h"

typedef struct {
    uint32_t min_user_len;         /* 4 Amazon, 10 Taobao */
    uint32_t max_history;          /* 50 Amazon, 200 Taobao (the stored window; training may truncate more) */
    double split_quantile;         /* 0.7 */
    double valid_quantile;         /* 0 = no validation split */
    uint32_t n_negatives;          /* CTR negatives per positive, 1 */
    uint32_t min_pretrain_history; /* 2 */
    int sliding_window;            /* 0 */
    uint32_t min_window_history;   /* 2, with sliding_window */
    uint64_t seed;
    int threads;                   /* 0 = OpenMP's default; the records never depend on it */
} protocol_opts;

protocol_opts protocol_default_opts(void);
/* The option checks protocol_build does first (so a producer can fail before heavy work). */
int protocol_validate_opts(const protocol_opts *opts, gp_err *e);

typedef struct {
    uint64_t n_tokens;             /* the pool: tokens_item/tokens_cate of the dataset */
    const uint32_t *tok_item;      /* [n_tokens], every id a user covers in 1..n_items-1 */
    const uint32_t *tok_cate;      /* [n_tokens] (the positive's category is its token's) */
    uint64_t n_users;
    const uint64_t *user_offset;   /* first token of user u in the pool */
    const uint32_t *user_len;      /* its number of interactions */
    const int64_t *user_last_time; /* time of its last interaction */
    uint64_t n_items;              /* vocabulary including padding 0 */
    const uint32_t *item_cate;     /* [n_items] */
} protocol_input;

/* users_test / users_valid count kept users only (a dropped user has no samples). */
typedef struct {
    uint64_t users_in, users_kept, users_too_short, users_test, users_valid, users_no_pretrain;
    int64_t split_time, valid_time;
    uint64_t records[DS_N_SPLITS];
} protocol_stats;

/* Builds the records (malloc'd, sorted by split then user) for the users' sequences in the pool
 * described by in. Returns -1 with a message on an invalid option or input.
 * Within a user: CTR samples by increasing position, each a positive followed by its negatives.
 * With sliding_window the final sample's negatives are drawn first, so turning it on leaves the
 * standard samples unchanged.
 * Limits checked: split_quantile in (0,1), 0 <= valid_quantile < split_quantile, max_history >= 2,
 * min_user_len >= 3, 1 <= n_negatives <= 65536, min_pretrain_history >= 1,
 * min_window_history >= 1, n_items >= 3, 1 <= n_users <= 2^32, every user's span inside the pool,
 * every token item in 1..n_items-1. */
int protocol_build(const protocol_input *in, const protocol_opts *opts, ds_record **records, uint64_t *n_records,
                   protocol_stats *stats, gp_err *e);

#endif
