/* prep_group: rows in input order -> each user's time-ordered sequence.
 *
 * A counting sort by user (per-block counts, so each block scatters in parallel and a user's rows
 * keep their input order), then a stable sort by time inside each user that is not already in
 * order. Ties keep input order, as the official scripts' stable pandas sort does. */
#include <omp.h>
#include <stdlib.h>

#include "prep_internal.h"

void prep_pool_free(prep_pool *p)
{
    gp_free_aligned(p->user_offset);
    gp_free_aligned(p->user_len);
    gp_free_aligned(p->user_last);
    gp_free_aligned(p->tok_item);
    gp_free_aligned(p->tok_cate);
    memset(p, 0, sizeof *p);
}

typedef struct {
    int64_t time;
    uint32_t pos;
} time_pos;

static int cmp_time_pos(const void *a, const void *b)
{
    const time_pos *x = a, *y = b;
    if (x->time != y->time)
        return x->time < y->time ? -1 : 1;
    return x->pos < y->pos ? -1 : x->pos > y->pos;
}

/* Sorts one user's span by (time, input position); 0, or -1 when out of memory. */
static int sort_user(uint32_t *item, uint32_t *cate, int64_t *time, uint32_t n)
{
    uint32_t k = 1;
    while (k < n && time[k - 1] <= time[k])
        k++;
    if (k >= n)
        return 0;
    time_pos *tp = malloc((size_t)n * sizeof *tp);
    uint32_t *tmp = malloc((size_t)n * 2 * sizeof *tmp);
    if (!tp || !tmp) {
        free(tp);
        free(tmp);
        return -1;
    }
    for (uint32_t i = 0; i < n; i++) {
        tp[i].time = time[i];
        tp[i].pos = i;
    }
    qsort(tp, n, sizeof *tp, cmp_time_pos);
    for (uint32_t i = 0; i < n; i++) {
        tmp[i] = item[tp[i].pos];
        tmp[n + i] = cate[tp[i].pos];
    }
    for (uint32_t i = 0; i < n; i++) {
        item[i] = tmp[i];
        cate[i] = tmp[n + i];
        time[i] = tp[i].time;
    }
    free(tp);
    free(tmp);
    return 0;
}

int prep_group(const prep_rows *rows, const uint32_t *user_final, uint64_t n_users, const uint32_t *item_final,
               const uint32_t *cate_final, int row_cates, const uint32_t *item_cate, int workers, prep_pool *pool,
               gp_err *e)
{
    memset(pool, 0, sizeof *pool);
    const uint64_t n = rows->n;
    /* Per-block counters cost blocks x users x 8 bytes: fewer blocks for huge user counts. */
    int blocks = workers;
    while (blocks > 1 && (uint64_t)blocks * n_users * sizeof(uint64_t) > ((uint64_t)512 << 20))
        blocks--;
    uint64_t *cursor = gp_alloc_or_fail((size_t)blocks * n_users * sizeof *cursor, "prep: per-user counters", e);
    pool->user_offset = gp_alloc_or_fail(n_users * sizeof *pool->user_offset, "prep: user offsets", e);
    pool->user_len = gp_alloc_or_fail(n_users * sizeof *pool->user_len, "prep: user lengths", e);
    pool->user_last = gp_alloc_or_fail(n_users * sizeof *pool->user_last, "prep: user last times", e);
    pool->tok_item = gp_alloc_or_fail((n ? n : 1) * sizeof *pool->tok_item, "prep: token items", e);
    pool->tok_cate = gp_alloc_or_fail((n ? n : 1) * sizeof *pool->tok_cate, "prep: token categories", e);
    int64_t *tok_time = gp_alloc_or_fail((n ? n : 1) * sizeof *tok_time, "prep: token times", e);
    if (!cursor || !pool->user_offset || !pool->user_len || !pool->user_last || !pool->tok_item || !pool->tok_cate ||
        !tok_time) {
        gp_free_aligned(cursor);
        gp_free_aligned(tok_time);
        prep_pool_free(pool);
        return -1;
    }
    pool->n_users = n_users;
    pool->n_tokens = n;

#pragma omp parallel for num_threads(blocks) schedule(static, 1)
    for (int b = 0; b < blocks; b++) {
        uint64_t *cnt = cursor + (size_t)b * n_users;
        uint64_t lo = n * (uint64_t)b / (uint64_t)blocks, hi = n * (uint64_t)(b + 1) / (uint64_t)blocks;
        for (uint64_t r = lo; r < hi; r++)
            cnt[user_final[rows->user[r]] - 1]++;
    }
    /* Offsets: user by user, block by block, so a user's rows stay in input order. */
    uint64_t total = 0;
    int too_long = 0;
    uint64_t long_user = 0;
    for (uint64_t u = 0; u < n_users; u++) {
        pool->user_offset[u] = total;
        uint64_t len = 0;
        for (int b = 0; b < blocks; b++) {
            uint64_t c = cursor[(size_t)b * n_users + u];
            cursor[(size_t)b * n_users + u] = total + len;
            len += c;
        }
        if (len > UINT32_MAX && !too_long) {
            too_long = 1;
            long_user = u;
        }
        pool->user_len[u] = (uint32_t)(len > UINT32_MAX ? UINT32_MAX : len);
        total += len;
    }
    if (too_long) {
        gp_free_aligned(cursor);
        gp_free_aligned(tok_time);
        prep_pool_free(pool);
        return gp_fail(e, "prep: user %llu has more than 2^32-1 interactions", (unsigned long long)long_user);
    }

    int64_t tmin = INT64_MAX, tmax = INT64_MIN;
#pragma omp parallel for num_threads(blocks) schedule(static, 1) reduction(min : tmin) reduction(max : tmax)
    for (int b = 0; b < blocks; b++) {
        uint64_t *cur = cursor + (size_t)b * n_users;
        uint64_t lo = n * (uint64_t)b / (uint64_t)blocks, hi = n * (uint64_t)(b + 1) / (uint64_t)blocks;
        for (uint64_t r = lo; r < hi; r++) {
            uint64_t pos = cur[user_final[rows->user[r]] - 1]++;
            uint32_t it = item_final[rows->item[r]];
            pool->tok_item[pos] = it;
            pool->tok_cate[pos] = row_cates ? cate_final[rows->cate[r]] : item_cate[it];
            int64_t t = rows->time[r];
            tok_time[pos] = t;
            tmin = t < tmin ? t : tmin;
            tmax = t > tmax ? t : tmax;
        }
    }
    gp_free_aligned(cursor);
    pool->time_first = tmin;
    pool->time_last = tmax;

    int oom = 0;
#pragma omp parallel for num_threads(workers) schedule(dynamic, 256) reduction(| : oom)
    for (int64_t u = 0; u < (int64_t)n_users; u++) {
        uint64_t off = pool->user_offset[u];
        uint32_t len = pool->user_len[u];
        if (sort_user(pool->tok_item + off, pool->tok_cate + off, tok_time + off, len) != 0)
            oom = 1;
        pool->user_last[u] = len ? tok_time[off + len - 1] : INT64_MIN;
    }
    gp_free_aligned(tok_time);
    if (oom) {
        prep_pool_free(pool);
        return gp_fail(e, "prep: out of memory sorting a user's interactions by time");
    }
    return 0;
}

int prep_first_seen_cates(const prep_rows *rows, const uint32_t *item_final, const uint32_t *cate_final,
                          uint64_t n_items, int workers, uint32_t *item_cate, gp_err *e)
{
    /* n_items includes padding 0; worker t owns the items with id % workers == t and scans every
     * row in input order, so ties go to the first row whatever the thread count. */
    int64_t *best = gp_alloc_or_fail(n_items * sizeof *best, "prep: first-seen times of items", e);
    if (!best)
        return -1;
#pragma omp parallel for num_threads(workers) schedule(static, 1)
    for (int t = 0; t < workers; t++) {
        for (uint64_t r = 0; r < rows->n; r++) {
            uint32_t it = item_final[rows->item[r]];
            if (it % (uint32_t)workers != (uint32_t)t)
                continue;
            int64_t time = rows->time[r];
            if (item_cate[it] == 0 || time < best[it]) {
                item_cate[it] = cate_final[rows->cate[r]];
                best[it] = time;
            }
        }
    }
    gp_free_aligned(best);
    return 0;
}
