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
    uint32_t item, cate;
} tok;

/* Stable sort of a user's span by time: insertion sort for short or nearly sorted spans is
 * linear on them; longer ones go through a bottom-up merge sort (stable, O(n log n) whatever the
 * input). Returns -1 when out of memory. */
static int sort_user(uint32_t *item, uint32_t *cate, int64_t *time, uint32_t n)
{
    uint32_t k = 1;
    while (k < n && time[k - 1] <= time[k])
        k++;
    if (k >= n)
        return 0;
    tok *a = malloc((size_t)n * 2 * sizeof *a);
    if (!a)
        return -1;
    tok *b = a + n;
    for (uint32_t i = 0; i < n; i++) {
        a[i].time = time[i];
        a[i].item = item[i];
        a[i].cate = cate[i];
    }
    /* runs of 16 by insertion sort, then merges */
    const uint32_t run = 16;
    for (uint32_t lo = 0; lo < n; lo += run) {
        uint32_t hi = lo + run < n ? lo + run : n;
        for (uint32_t i = lo + 1; i < hi; i++) {
            tok x = a[i];
            uint32_t j = i;
            while (j > lo && a[j - 1].time > x.time) {
                a[j] = a[j - 1];
                j--;
            }
            a[j] = x;
        }
    }
    for (uint32_t width = run; width < n; width *= 2) {
        for (uint32_t lo = 0; lo < n; lo += 2 * width) {
            uint32_t mid = lo + width < n ? lo + width : n, hi = lo + 2 * width < n ? lo + 2 * width : n;
            uint32_t i = lo, j = mid, o = lo;
            while (i < mid && j < hi)
                b[o++] = a[j].time < a[i].time ? a[j++] : a[i++]; /* ties take the left run: stable */
            while (i < mid)
                b[o++] = a[i++];
            while (j < hi)
                b[o++] = a[j++];
        }
        tok *t = a;
        a = b;
        b = t;
    }
    for (uint32_t i = 0; i < n; i++) {
        time[i] = a[i].time;
        item[i] = a[i].item;
        cate[i] = a[i].cate;
    }
    free(a < b ? a : b);
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
    /* Each block of rows (in input order) finds its own earliest row per item; blocks are then
     * merged in order, an earlier block winning ties, so the result is the earliest row of the
     * whole input, ties going to the first in the file, whatever the thread count. */
    int blocks = workers;
    while (blocks > 1 && (uint64_t)blocks * n_items * 12 > ((uint64_t)1 << 30))
        blocks--;
    int64_t *best = gp_alloc_or_fail((size_t)blocks * n_items * sizeof *best, "prep: first-seen times of items", e);
    uint32_t *cat = gp_alloc_or_fail((size_t)blocks * n_items * sizeof *cat, "prep: first-seen categories", e);
    if (!best || !cat) {
        gp_free_aligned(best);
        gp_free_aligned(cat);
        return -1;
    }
    const uint64_t n = rows->n;
#pragma omp parallel for num_threads(blocks) schedule(static, 1)
    for (int b = 0; b < blocks; b++) {
        int64_t *bt = best + (size_t)b * n_items;
        uint32_t *bc = cat + (size_t)b * n_items;
        uint64_t lo = n * (uint64_t)b / (uint64_t)blocks, hi = n * (uint64_t)(b + 1) / (uint64_t)blocks;
        for (uint64_t r = lo; r < hi; r++) {
            uint32_t it = item_final[rows->item[r]];
            int64_t time = rows->time[r];
            if (bc[it] == 0 || time < bt[it]) {
                bc[it] = cate_final[rows->cate[r]];
                bt[it] = time;
            }
        }
    }
#pragma omp parallel for num_threads(workers) schedule(static)
    for (int64_t it = 0; it < (int64_t)n_items; it++) {
        uint32_t c = 0;
        int64_t t = 0;
        for (int b = 0; b < blocks; b++) {
            uint32_t bc = cat[(size_t)b * n_items + (uint64_t)it];
            int64_t bt = best[(size_t)b * n_items + (uint64_t)it];
            if (bc && (c == 0 || bt < t)) {
                c = bc;
                t = bt;
            }
        }
        item_cate[it] = c;
    }
    gp_free_aligned(best);
    gp_free_aligned(cat);
    return 0;
}
