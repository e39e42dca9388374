/* Tests of the official data protocol (csrc/protocol.c) against hand-computed records and an
 * independent straightforward reference on random pools. */
#include <stdlib.h>
#include <string.h>

#include "protocol.h"
#include "rng.h"
#include "test.h"

/* A pool built from per-user item lists, laid out user after user. */
typedef struct {
    uint64_t n_users, n_tokens, n_items;
    uint64_t *offset;
    uint32_t *len;
    int64_t *last;
    uint32_t *tok_item, *tok_cate, *item_cate;
} pool;

static void pool_free(pool *p)
{
    free(p->offset);
    free(p->len);
    free(p->last);
    free(p->tok_item);
    free(p->tok_cate);
    free(p->item_cate);
    memset(p, 0, sizeof *p);
}

static protocol_input pool_input(const pool *p)
{
    protocol_input in = {p->n_tokens, p->tok_item, p->tok_cate, p->n_users, p->offset, p->len, p->last, p->n_items, p->item_cate};
    return in;
}

/* Categories of items are (7i mod 5) + 1; a token's category is its item's + 10, so a test can
 * tell whether a record took the category from the token or from item_cate. */
static uint32_t cate_of(uint32_t item) { return item ? (7 * item) % 5 + 1 : 0; }

static void pool_init(pool *p, uint64_t n_users, uint64_t n_items, uint64_t max_tokens)
{
    memset(p, 0, sizeof *p);
    p->n_users = n_users;
    p->n_items = n_items;
    p->offset = calloc(n_users, sizeof *p->offset);
    p->len = calloc(n_users, sizeof *p->len);
    p->last = calloc(n_users, sizeof *p->last);
    p->tok_item = calloc(max_tokens + 1, sizeof *p->tok_item);
    p->tok_cate = calloc(max_tokens + 1, sizeof *p->tok_cate);
    p->item_cate = calloc(n_items, sizeof *p->item_cate);
    for (uint64_t i = 0; i < n_items; i++)
        p->item_cate[i] = cate_of((uint32_t)i);
}

static void pool_add_user(pool *p, uint64_t u, const uint32_t *items, uint32_t n, int64_t last_time)
{
    p->offset[u] = p->n_tokens;
    p->len[u] = n;
    p->last[u] = last_time;
    for (uint32_t k = 0; k < n; k++) {
        p->tok_item[p->n_tokens] = items[k];
        p->tok_cate[p->n_tokens] = cate_of(items[k]) + 10;
        p->n_tokens++;
    }
}

/* The hand-built pool: 10 users, ties at the split time, two users too short. */
static void hand_pool(pool *p)
{
    static const uint32_t u0[] = {1, 2, 3, 4, 5}, u1[] = {6, 7, 8}, u2[] = {9, 1, 2, 3}, u3[] = {2, 3, 4, 5, 6, 7, 8, 9},
                          u4[] = {4, 4, 4, 4, 4, 4}, u5[] = {1, 2}, u6[] = {5, 6, 7, 8}, u7[] = {9, 8, 7, 6, 5},
                          u8[] = {1, 3, 5, 7, 9, 2, 4}, u9[] = {2, 4, 6, 8};
    pool_init(p, 10, 10, 64);
    pool_add_user(p, 0, u0, 5, 100);
    pool_add_user(p, 1, u1, 3, 200);
    pool_add_user(p, 2, u2, 4, 300);
    pool_add_user(p, 3, u3, 8, 300);
    pool_add_user(p, 4, u4, 6, 400);
    pool_add_user(p, 5, u5, 2, 600);
    pool_add_user(p, 6, u6, 4, 600);
    pool_add_user(p, 7, u7, 5, 600);
    pool_add_user(p, 8, u8, 7, 700);
    pool_add_user(p, 9, u9, 4, 900);
}

typedef struct {
    uint64_t offset;
    uint32_t hist_len, user, item;
} expect;

static void check_pretrain(const ds_record *r, const expect *x, const pool *p)
{
    CHECK(r->split == DS_SPLIT_PRETRAIN && r->label == DS_LABEL_PRETRAIN, "user %u: split %d label %d", x->user,
          r->split, r->label);
    CHECK(r->user == x->user && r->offset == x->offset && r->hist_len == x->hist_len && r->item == x->item,
          "pretrain user %u: got user %u offset %llu hist %u item %u, want offset %llu hist %u item %u", x->user, r->user,
          (unsigned long long)r->offset, r->hist_len, r->item, (unsigned long long)x->offset, x->hist_len, x->item);
    CHECK(r->cate == p->item_cate[x->item], "pretrain user %u: cate %u, want item_cate %u", x->user, r->cate,
          p->item_cate[x->item]);
    CHECK(r->reserved0 == 0 && r->reserved1 == 0, "reserved fields must be zero");
}

/* A positive and its n_neg negatives. */
static void check_ctr(const ds_record *r, const expect *x, int split, uint32_t n_neg, const pool *p)
{
    CHECK(r[0].split == split && r[0].label == 1, "user %u: split %d label %d, want %d/1", x->user, r[0].split,
          r[0].label, split);
    CHECK(r[0].user == x->user && r[0].offset == x->offset && r[0].hist_len == x->hist_len && r[0].item == x->item,
          "ctr user %u: got user %u offset %llu hist %u item %u, want offset %llu hist %u item %u", x->user, r[0].user,
          (unsigned long long)r[0].offset, r[0].hist_len, r[0].item, (unsigned long long)x->offset, x->hist_len, x->item);
    CHECK(r[0].cate == cate_of(x->item) + 10, "positive of user %u takes its token's category: %u", x->user, r[0].cate);
    for (uint32_t k = 1; k <= n_neg; k++) {
        CHECK(r[k].split == split && r[k].label == 0, "negative %u of user %u: split %d label %d", k, x->user,
              r[k].split, r[k].label);
        CHECK(r[k].user == x->user && r[k].offset == x->offset && r[k].hist_len == x->hist_len,
              "negative %u of user %u does not share the positive's history", k, x->user);
        CHECK(r[k].item >= 1 && r[k].item < p->n_items && r[k].item != x->item, "negative %u of user %u: item %u (pos %u)",
              k, x->user, r[k].item, x->item);
        CHECK(r[k].cate == p->item_cate[r[k].item], "negative cate %u != item_cate %u", r[k].cate,
              p->item_cate[r[k].item]);
    }
}

TEST(protocol_hand_built_records)
{
    pool p;
    hand_pool(&p);
    protocol_input in = pool_input(&p);
    protocol_opts o = protocol_default_opts();
    o.max_history = 4;
    o.min_user_len = 4;
    ds_record *rec = NULL;
    uint64_t n = 0;
    protocol_stats st;
    gp_err e = {{0}};
    REQUIRE(protocol_build(&in, &o, &rec, &n, &st, &e) == 0, "%s", e.msg);

    /* Sorted last times 100 200 300 300 400 600 600 600 700 900: index int(10*0.7) = 7 -> 600;
     * users at 600 stay train (strictly greater is test). */
    CHECK(st.split_time == 600, "split_time %lld", (long long)st.split_time);
    CHECK(st.users_in == 10 && st.users_kept == 8 && st.users_too_short == 2, "in %llu kept %llu short %llu",
          (unsigned long long)st.users_in, (unsigned long long)st.users_kept, (unsigned long long)st.users_too_short);
    CHECK(st.users_test == 2 && st.users_valid == 0 && st.users_no_pretrain == 0, "test %llu valid %llu nopre %llu",
          (unsigned long long)st.users_test, (unsigned long long)st.users_valid, (unsigned long long)st.users_no_pretrain);
    CHECK(st.records[0] == 8 && st.records[1] == 12 && st.records[2] == 4 && st.records[3] == 0,
          "records %llu %llu %llu %llu", (unsigned long long)st.records[0], (unsigned long long)st.records[1],
          (unsigned long long)st.records[2], (unsigned long long)st.records[3]);
    REQUIRE(n == 24, "n_records %llu", (unsigned long long)n);

    /* Window = last 5; pretraining history = window minus two, target = its second-to-last. */
    static const expect pre[] = {{0, 3, 0, 4},  {8, 2, 2, 2},  {15, 3, 3, 8}, {21, 3, 4, 4},
                                 {28, 2, 6, 7}, {32, 3, 7, 6}, {39, 3, 8, 2}, {44, 2, 9, 6}};
    for (int i = 0; i < 8; i++)
        check_pretrain(&rec[i], &pre[i], &p);
    static const expect train[] = {{0, 4, 0, 5}, {8, 3, 2, 3}, {15, 4, 3, 9}, {21, 4, 4, 4}, {28, 3, 6, 8}, {32, 4, 7, 5}};
    for (int i = 0; i < 6; i++)
        check_ctr(&rec[8 + 2 * i], &train[i], DS_SPLIT_TRAIN, 1, &p);
    static const expect test[] = {{39, 4, 8, 4}, {44, 3, 9, 8}};
    for (int i = 0; i < 2; i++)
        check_ctr(&rec[20 + 2 * i], &test[i], DS_SPLIT_TEST, 1, &p);
    free(rec);

    /* min_pretrain_history 3 drops the pretraining sequence of users whose window is 4 long. */
    o.min_pretrain_history = 3;
    REQUIRE(protocol_build(&in, &o, &rec, &n, &st, &e) == 0, "%s", e.msg);
    CHECK(st.users_no_pretrain == 3 && st.records[0] == 5, "no_pretrain %llu, pretrain records %llu",
          (unsigned long long)st.users_no_pretrain, (unsigned long long)st.records[0]);
    CHECK(rec[1].user == 3 && rec[2].user == 4 && rec[3].user == 7 && rec[4].user == 8, "pretrain users %u %u %u %u",
          rec[1].user, rec[2].user, rec[3].user, rec[4].user);
    free(rec);

    /* More negatives: each positive followed by 3 distinct-from-positive negatives. */
    o.min_pretrain_history = 2;
    o.n_negatives = 3;
    REQUIRE(protocol_build(&in, &o, &rec, &n, &st, &e) == 0, "%s", e.msg);
    CHECK(st.records[1] == 24 && st.records[2] == 8 && n == 40, "records %llu %llu", (unsigned long long)st.records[1],
          (unsigned long long)st.records[2]);
    for (int i = 0; i < 6; i++)
        check_ctr(&rec[8 + 4 * i], &train[i], DS_SPLIT_TRAIN, 3, &p);
    for (int i = 0; i < 2; i++)
        check_ctr(&rec[32 + 4 * i], &test[i], DS_SPLIT_TEST, 3, &p);
    free(rec);
    pool_free(&p);
}

TEST(protocol_split_counts_all_users_before_length_filter)
{
    /* Last times 0,100,...,900; users 7 and 8 are too short. Over all users the split time is
     * sorted[7] = 700, so only user 9 is test; over kept users only it would be 500 (user 6 too). */
    pool p;
    pool_init(&p, 10, 20, 64);
    static const uint32_t longer[] = {1, 2, 3, 4, 5}, shorter[] = {6, 7};
    for (uint64_t u = 0; u < 10; u++) {
        int is_short = u == 7 || u == 8;
        pool_add_user(&p, u, is_short ? shorter : longer, is_short ? 2 : 5, 100 * (int64_t)u);
    }
    protocol_input in = pool_input(&p);
    protocol_opts o = protocol_default_opts();
    ds_record *rec = NULL;
    uint64_t n = 0;
    protocol_stats st;
    gp_err e = {{0}};
    REQUIRE(protocol_build(&in, &o, &rec, &n, &st, &e) == 0, "%s", e.msg);
    CHECK(st.split_time == 700, "split_time %lld", (long long)st.split_time);
    CHECK(st.users_test == 1 && st.records[DS_SPLIT_TEST] == 2, "users_test %llu", (unsigned long long)st.users_test);
    CHECK(n == 8 + 14 + 2 && rec[n - 2].user == 9 && rec[n - 2].split == DS_SPLIT_TEST, "last record user %u",
          rec[n - 2].user);
    free(rec);
    pool_free(&p);
}

TEST(protocol_valid_split)
{
    pool p;
    hand_pool(&p);
    protocol_input in = pool_input(&p);
    protocol_opts o = protocol_default_opts();
    o.max_history = 4;
    o.valid_quantile = 0.3; /* sorted[3] = 300: valid = last time in (300, 600] */
    ds_record *rec = NULL;
    uint64_t n = 0;
    protocol_stats st;
    gp_err e = {{0}};
    REQUIRE(protocol_build(&in, &o, &rec, &n, &st, &e) == 0, "%s", e.msg);
    CHECK(st.valid_time == 300 && st.split_time == 600, "valid_time %lld split_time %lld", (long long)st.valid_time,
          (long long)st.split_time);
    CHECK(st.users_valid == 3 && st.users_test == 2, "valid %llu test %llu", (unsigned long long)st.users_valid,
          (unsigned long long)st.users_test);
    CHECK(st.records[1] == 6 && st.records[2] == 4 && st.records[3] == 6, "train %llu test %llu valid %llu",
          (unsigned long long)st.records[1], (unsigned long long)st.records[2], (unsigned long long)st.records[3]);
    /* Sorted PRETRAIN, TRAIN (users 0 2 3), TEST (8 9), VALID (4 6 7). */
    static const uint32_t users[] = {0, 2, 3, 8, 9, 4, 6, 7};
    static const int splits[] = {1, 1, 1, 2, 2, 3, 3, 3};
    REQUIRE(n == 24, "n %llu", (unsigned long long)n);
    for (int i = 0; i < 8; i++)
        CHECK(rec[8 + 2 * i].user == users[i] && rec[8 + 2 * i].split == splits[i], "slot %d: user %u split %d", i,
              rec[8 + 2 * i].user, rec[8 + 2 * i].split);
    free(rec);
    pool_free(&p);
}

TEST(protocol_sliding_window)
{
    pool p;
    hand_pool(&p);
    protocol_input in = pool_input(&p);
    protocol_opts o = protocol_default_opts();
    o.max_history = 4;
    ds_record *plain = NULL, *slid = NULL;
    uint64_t n_plain = 0, n_slid = 0;
    protocol_stats st0, st1;
    gp_err e = {{0}};
    REQUIRE(protocol_build(&in, &o, &plain, &n_plain, &st0, &e) == 0, "%s", e.msg);
    o.sliding_window = 1;
    o.min_window_history = 2;
    REQUIRE(protocol_build(&in, &o, &slid, &n_slid, &st1, &e) == 0, "%s", e.msg);
    /* Train users 0 2 3 4 6 7 (lengths 5 4 8 6 4 5): positions 2..n-1 each -> 3+2+6+4+2+3 = 20
     * samples; test users keep one sample each. */
    CHECK(st1.records[DS_SPLIT_TRAIN] == 40 && st1.records[DS_SPLIT_TEST] == 4, "train %llu test %llu",
          (unsigned long long)st1.records[1], (unsigned long long)st1.records[2]);
    REQUIRE(n_slid == 8 + 40 + 4, "n %llu", (unsigned long long)n_slid);
    CHECK(memcmp(plain, slid, 8 * sizeof *plain) == 0, "pretraining records change with sliding windows");
    /* User 3 (offset 12, items 2 3 4 5 6 7 8 9): samples at p = 2..7 are records 8+6+4 = 18.. */
    const ds_record *u3 = &slid[8 + 2 * 3 + 2 * 2];
    for (uint32_t p3 = 2; p3 < 8; p3++) {
        const ds_record *r = &u3[2 * (p3 - 2)];
        uint32_t start = p3 > 4 ? p3 - 4 : 0;
        expect x = {12 + start, p3 - start, 3, 2 + p3};
        check_ctr(r, &x, DS_SPLIT_TRAIN, 1, &p);
    }
    /* The final sample of every user is exactly the one without sliding windows, negatives too. */
    static const uint32_t train_users_first[] = {0, 6, 10, 22, 30, 34}; /* record index - 8, /2 in samples */
    static const uint32_t train_samples[] = {3, 2, 6, 4, 2, 3};
    for (int i = 0; i < 6; i++) {
        const ds_record *fin = &slid[8 + 2 * (train_users_first[i] / 2 + train_samples[i] - 1)];
        CHECK(memcmp(fin, &plain[8 + 2 * i], 2 * sizeof *fin) == 0, "train user slot %d: final sample differs", i);
    }
    CHECK(memcmp(&slid[48], &plain[20], 4 * sizeof *plain) == 0, "test samples differ with sliding windows");
    free(plain);
    free(slid);
    pool_free(&p);
}

TEST(protocol_rejection_with_two_items)
{
    /* Two real items: the negative is always the other one. */
    pool p;
    pool_init(&p, 4, 3, 64);
    static const uint32_t a[] = {1, 2, 1, 2, 1}, b[] = {2, 2, 2, 2};
    pool_add_user(&p, 0, a, 5, 1);
    pool_add_user(&p, 1, b, 4, 2);
    pool_add_user(&p, 2, a, 5, 3);
    pool_add_user(&p, 3, b, 4, 4);
    protocol_input in = pool_input(&p);
    protocol_opts o = protocol_default_opts();
    o.n_negatives = 5;
    ds_record *rec = NULL;
    uint64_t n = 0;
    gp_err e = {{0}};
    REQUIRE(protocol_build(&in, &o, &rec, &n, NULL, &e) == 0, "%s", e.msg);
    int seen = 0;
    for (uint64_t i = 0; i < n; i++) {
        if (rec[i].label != 1)
            continue;
        for (uint32_t k = 1; k <= 5; k++) {
            CHECK(rec[i + k].label == 0 && rec[i + k].item == 3 - rec[i].item, "negative %u: item %u for positive %u", k,
                  rec[i + k].item, rec[i].item);
            seen++;
        }
    }
    CHECK(seen == 20, "negatives seen %d", seen);
    free(rec);
    pool_free(&p);
}

/* A random pool with many tied times and a wide range of lengths. */
static void random_pool(pool *p, uint64_t n_users, uint64_t n_items, uint64_t seed)
{
    gp_rng r = gp_rng_stream(seed, RNG_PURPOSE_TEST, 1, 0);
    uint32_t *len = malloc(n_users * sizeof *len);
    uint64_t total = 0;
    for (uint64_t u = 0; u < n_users; u++) {
        len[u] = 1 + gp_rng_below(&r, gp_rng_below(&r, 10) == 0 ? 120 : 12);
        total += len[u];
    }
    pool_init(p, n_users, n_items, total);
    uint32_t *items = malloc(200 * sizeof *items);
    /* Users are laid out in reverse order so offsets are not monotone in the user index. */
    for (uint64_t i = 0; i < n_users; i++) {
        uint64_t u = n_users - 1 - i;
        for (uint32_t k = 0; k < len[u]; k++)
            items[k] = 1 + gp_rng_below(&r, (uint32_t)n_items - 1);
        pool_add_user(p, u, items, len[u], (int64_t)gp_rng_below(&r, 50));
    }
    free(items);
    free(len);
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

TEST(protocol_matches_reference_and_threads)
{
    pool p;
    random_pool(&p, 3000, 500, 7);
    protocol_input in = pool_input(&p);
    protocol_opts o = protocol_default_opts();
    o.max_history = 20;
    o.min_user_len = 4;
    o.n_negatives = 2;
    o.seed = 99;

    ds_record *r1 = NULL, *r2 = NULL;
    uint64_t n1 = 0, n2 = 0;
    protocol_stats s1, s2;
    gp_err e = {{0}};
    o.threads = 1;
    REQUIRE(protocol_build(&in, &o, &r1, &n1, &s1, &e) == 0, "%s", e.msg);
    o.threads = 2;
    REQUIRE(protocol_build(&in, &o, &r2, &n2, &s2, &e) == 0, "%s", e.msg);
    CHECK(n1 == n2 && memcmp(r1, r2, n1 * sizeof *r1) == 0, "records depend on the thread count");
    CHECK(memcmp(&s1, &s2, sizeof s1) == 0, "stats depend on the thread count");

    /* Reference: sort every user's last time, walk users in order, draw negatives as documented. */
    int64_t *t = malloc(p.n_users * sizeof *t);
    memcpy(t, p.last, p.n_users * sizeof *t);
    qsort(t, p.n_users, sizeof *t, cmp_i64);
    int64_t split_time = t[(uint64_t)((double)p.n_users * 0.7)];
    free(t);
    CHECK(s1.split_time == split_time, "split_time %lld vs %lld", (long long)s1.split_time, (long long)split_time);
    ds_record *ref = calloc(n1 + 8 * p.n_users, sizeof *ref);
    uint64_t k = 0;
    for (int pass = 0; pass < 3; pass++) {
        for (uint64_t u = 0; u < p.n_users; u++) {
            uint32_t n = p.len[u];
            if (n < 4)
                continue;
            int test = p.last[u] > split_time;
            uint32_t w = n < 21 ? n : 21;
            uint64_t win = p.offset[u] + n - w;
            if (pass == 0) {
                uint32_t it = p.tok_item[win + w - 2];
                ref[k++] = (ds_record){win, w - 2, (uint32_t)u, it, p.item_cate[it], 2, 0, 0, 0};
            } else if (pass == 1 + test) {
                uint32_t it = p.tok_item[win + w - 1];
                ref[k++] = (ds_record){win, w - 1, (uint32_t)u, it, p.tok_cate[win + w - 1], 1, (uint8_t)(1 + test), 0, 0};
                gp_rng g = gp_rng_stream(99, RNG_PURPOSE_PREP, u, 0);
                for (int j = 0; j < 2; j++) {
                    uint32_t neg;
                    do
                        neg = 1 + gp_rng_below(&g, (uint32_t)p.n_items - 1);
                    while (neg == it);
                    ref[k++] = (ds_record){win, w - 1, (uint32_t)u, neg, p.item_cate[neg], 0, (uint8_t)(1 + test), 0, 0};
                }
            }
        }
    }
    CHECK(k == n1, "reference has %llu records, protocol %llu", (unsigned long long)k, (unsigned long long)n1);
    uint64_t first_bad = UINT64_MAX;
    for (uint64_t i = 0; i < k && i < n1; i++)
        if (memcmp(&ref[i], &r1[i], sizeof *ref) != 0) {
            first_bad = i;
            break;
        }
    CHECK(first_bad == UINT64_MAX, "record %llu differs from the reference", (unsigned long long)first_bad);
    free(ref);

    /* A different seed changes negatives only. */
    ds_record *r3 = NULL;
    uint64_t n3 = 0;
    o.seed = 100;
    REQUIRE(protocol_build(&in, &o, &r3, &n3, NULL, &e) == 0, "%s", e.msg);
    uint64_t diff_pos = 0, diff_neg = 0;
    for (uint64_t i = 0; i < n3; i++) {
        int d = memcmp(&r1[i], &r3[i], sizeof *r3) != 0;
        if (r1[i].label == 0)
            diff_neg += d;
        else
            diff_pos += d;
    }
    CHECK(diff_pos == 0 && diff_neg > n3 / 4, "seed change: %llu positives/pretrain and %llu negatives differ",
          (unsigned long long)diff_pos, (unsigned long long)diff_neg);
    free(r1);
    free(r2);
    free(r3);
    pool_free(&p);
}

static void expect_error(const protocol_input *in, const protocol_opts *o, const char *word)
{
    ds_record *rec = (ds_record *)1;
    uint64_t n = 7;
    gp_err e = {{0}};
    int rc = protocol_build(in, o, &rec, &n, NULL, &e);
    CHECK(rc == -1, "expected an error mentioning '%s'", word);
    CHECK(rec == NULL && n == 0, "outputs must be cleared on error");
    CHECK(strstr(e.msg, word) != NULL, "message '%s' should mention '%s'", e.msg, word);
}

TEST(protocol_rejects_bad_options_and_input)
{
    pool p;
    hand_pool(&p);
    protocol_input in = pool_input(&p);
    protocol_opts good = protocol_default_opts(), o;
    o = good, o.split_quantile = 0;
    expect_error(&in, &o, "split_quantile");
    o = good, o.split_quantile = 1;
    expect_error(&in, &o, "split_quantile");
    o = good, o.split_quantile = 0.0 / 0.0;
    expect_error(&in, &o, "split_quantile");
    o = good, o.valid_quantile = 0.8;
    expect_error(&in, &o, "valid_quantile");
    o = good, o.max_history = 1;
    expect_error(&in, &o, "max_history");
    o = good, o.min_user_len = 2;
    expect_error(&in, &o, "min_user_len");
    o = good, o.n_negatives = 0;
    expect_error(&in, &o, "n_negatives");
    o = good, o.min_pretrain_history = 0;
    expect_error(&in, &o, "min_pretrain_history");
    o = good, o.sliding_window = 1, o.min_window_history = 0;
    expect_error(&in, &o, "min_window_history");

    protocol_input bad = in;
    bad.n_items = 2;
    expect_error(&bad, &good, "n_items");
    bad = in, bad.n_users = 0;
    expect_error(&bad, &good, "n_users");
    bad = in, bad.n_tokens = 40; /* users 8 and 9 reach past token 40 */
    expect_error(&bad, &good, "user 8");
    bad = in, bad.user_last_time = NULL;
    expect_error(&bad, &good, "NULL");
    p.tok_item[13] = 10; /* user 3, interaction 1: id == n_items */
    expect_error(&in, &good, "user 3, interaction 1");
    p.tok_item[13] = 0;
    expect_error(&in, &good, "item id 0");
    pool_free(&p);
}
