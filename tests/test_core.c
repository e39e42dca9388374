/* Metrics, JSON, safetensors, RNG, model layout, the learning-rate schedule and the batch loader. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "batch.h"
#include "dataset.h"
#include "json.h"
#include "metrics.h"
#include "model.h"
#include "rng.h"
#include "safetensors.h"
#include "settings.h"
#include "test.h"
#include "train.h"

/* Brute-force AUC: the fraction of (positive, negative) pairs ordered right, ties count half. */
static double auc_pairs(const float *s, const int32_t *y, size_t n)
{
    double good = 0, pairs = 0;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++)
            if (y[i] == 1 && y[j] == 0) {
                pairs += 1;
                good += s[i] > s[j] ? 1 : (s[i] == s[j] ? 0.5 : 0);
            }
    return good / pairs;
}

TEST(metrics_auc_matches_pair_count_with_ties)
{
    gp_rng r = gp_rng_stream(1, RNG_PURPOSE_TEST, 1, 0);
    for (int trial = 0; trial < 20; trial++) {
        size_t n = 5 + gp_rng_below(&r, 200);
        float *s = malloc(n * sizeof *s);
        int32_t *y = malloc(n * sizeof *y);
        for (size_t i = 0; i < n; i++) {
            s[i] = (float)gp_rng_below(&r, 7); /* many ties */
            y[i] = (int32_t)gp_rng_below(&r, 2);
        }
        y[0] = 1;
        y[1] = 0;
        CHECK_NEAR(metrics_auc(s, y, n), auc_pairs(s, y, n), 1e-12);
        free(s);
        free(y);
    }
    float c[4] = {0.3f, 0.3f, 0.3f, 0.3f};
    int32_t y[4] = {1, 0, 1, 0};
    CHECK_NEAR(metrics_auc(c, y, 4), 0.5, 0);
    int32_t only_pos[4] = {1, 1, 1, 2};
    CHECK(isnan(metrics_auc(c, only_pos, 4)));
}

TEST(metrics_gauc_and_logloss)
{
    /* user 0: perfect (auc 1, 4 samples); user 1: inverted (auc 0, 2 samples); user 2: one class only. */
    float s[] = {0.9f, 0.8f, 0.2f, 0.1f, 0.1f, 0.9f, 0.5f};
    int32_t y[] = {1, 1, 0, 0, 1, 0, 1};
    uint32_t u[] = {0, 0, 0, 0, 1, 1, 2};
    CHECK_NEAR(metrics_gauc(s, y, u, 7), (1.0 * 4 + 0.0 * 2) / 6, 1e-12);
    float p[] = {0.8f, 0.25f, 0.0f};
    int32_t l[] = {1, 0, 0};
    double want = (-log(0.8) - log(0.75) - log(1 - 1e-7)) / 3;
    CHECK_NEAR(metrics_logloss(p, l, 3), want, 1e-7);
}

TEST(json_parses_and_rejects)
{
    const char *good = "{\"a\": [1, -2.5e3, true, null], \"b\\u00e9\": \"x\\ny\\ud83d\\ude00\", \"c\": {}}";
    json_doc d;
    gp_err e = {{0}};
    REQUIRE(json_parse(&d, good, strlen(good), "good", &e) == 0, "%s", e.msg);
    const json_value *a = json_get(d.root, "a");
    REQUIRE(a && a->type == JSON_ARRAY && a->n == 4);
    int64_t v;
    CHECK(json_int(&a->items[0], &v) == 0 && v == 1);
    CHECK(a->items[1].number == -2500.0);
    const json_value *b = json_get(d.root, "b\xc3\xa9");
    REQUIRE(b && b->type == JSON_STRING);
    CHECK(strcmp(b->string, "x\ny\xf0\x9f\x98\x80") == 0);
    json_free(&d);
    const char *bad[] = {"{", "[1,]", "{\"a\" 1}", "\"\\x\"", "01", "[1] 2", "{\"a\":tru}", "\"\\ud800\"", ""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK(json_parse(&d, bad[i], strlen(bad[i]), "bad", &e) != 0, "accepted %s", bad[i]);
        CHECK(strstr(e.msg, "line 1 column"), "%s", e.msg);
    }
    /* Deep nesting is refused, not a stack overflow. */
    char deep[2001];
    memset(deep, '[', 2000);
    deep[2000] = '\0';
    CHECK(json_parse(&d, deep, 2000, "deep", &e) != 0 && strstr(e.msg, "nesting"), "%s", e.msg);
}

TEST(safetensors_roundtrip_and_validation)
{
    float a[6] = {1, 2, 3, 4, 5, 6};
    int64_t b[3] = {7, -8, 9};
    st_out_tensor t[2] = {{"layer.w", ST_F32, 2, {2, 3}, a}, {"ids", ST_I64, 1, {3}, b}};
    const char *meta[] = {"k", "v \"quoted\"", NULL};
    char *path = gp_path_join(test_tmp_dir(), "t.safetensors");
    gp_err e = {{0}};
    REQUIRE(st_write(path, t, 2, meta, &e) == 0, "%s", e.msg);
    st_file f;
    REQUIRE(st_open(&f, path, &e) == 0, "%s", e.msg);
    const st_tensor *w = st_find(&f, "layer.w");
    REQUIRE(w && w->dtype == ST_F32 && w->ndim == 2 && w->shape[1] == 3);
    CHECK(memcmp(w->data, a, sizeof a) == 0);
    CHECK(((uintptr_t)w->data - (uintptr_t)f.map) % 8 == 0, "data not 8-byte aligned");
    const st_tensor *ids = st_find(&f, "ids");
    REQUIRE(ids && ids->dtype == ST_I64);
    CHECK(memcmp(ids->data, b, sizeof b) == 0);
    CHECK(strcmp(st_meta(&f, "k"), "v \"quoted\"") == 0);
    st_close(&f);
    /* Corruptions: truncated data, absurd header length, a shape that disagrees with the bytes. */
    char *data;
    size_t len;
    REQUIRE(gp_read_file(path, &data, &len, &e) == 0);
    char *bad = gp_path_join(test_tmp_dir(), "bad.safetensors");
    gp_write_atomic(bad, data, len - 4, &e);
    CHECK(st_open(&f, bad, &e) != 0 && strstr(e.msg, "data_offsets"), "%s", e.msg);
    char hdr[8] = {(char)0xff, (char)0xff, 0, 0, 0, 0, 0, 0};
    memcpy(data, hdr, 8);
    gp_write_atomic(bad, data, len, &e);
    CHECK(st_open(&f, bad, &e) != 0 && strstr(e.msg, "header length"), "%s", e.msg);
    gp_write_atomic(bad, "abc", 3, &e);
    CHECK(st_open(&f, bad, &e) != 0 && strstr(e.msg, "too short"), "%s", e.msg);
    free(data);
    free(bad);
    free(path);
}

TEST(rng_streams_are_independent_and_uniform)
{
    gp_rng a = gp_rng_stream(7, RNG_PURPOSE_TEST, 1, 2), b = gp_rng_stream(7, RNG_PURPOSE_TEST, 1, 3);
    CHECK(gp_rng_u64(&a) != gp_rng_u64(&b));
    gp_rng c = gp_rng_stream(7, RNG_PURPOSE_TEST, 1, 2), d = gp_rng_stream(7, RNG_PURPOSE_TEST, 1, 2);
    for (int i = 0; i < 100; i++)
        CHECK(gp_rng_u64(&c) == gp_rng_u64(&d));
    int counts[10] = {0};
    gp_rng r = gp_rng_stream(3, RNG_PURPOSE_TEST, 0, 0);
    for (int i = 0; i < 100000; i++)
        counts[gp_rng_below(&r, 10)]++;
    for (int i = 0; i < 10; i++)
        CHECK(abs(counts[i] - 10000) < 500, "bucket %d: %d", i, counts[i]);
    double sum = 0, sq = 0;
    for (int i = 0; i < 100000; i++) {
        double z = gp_rng_normal(&r);
        sum += z;
        sq += z * z;
    }
    CHECK(fabs(sum / 1e5) < 0.02 && fabs(sq / 1e5 - 1) < 0.02, "mean %g var %g", sum / 1e5, sq / 1e5);
}

TEST(model_layout_paper_sizes)
{
    /* Dense block parameters of the paper's sizes: 13K for L1H32A4 up to 0.3B for L24H1024A16. */
    struct {
        int L, H;
        int64_t lo, hi;
    } sizes[] = {{1, 32, 13000, 14000}, {24, 1024, 290000000, 310000000}};
    for (int i = 0; i < 2; i++) {
        gp_settings s;
        cfg_list l = {0};
        gp_err e = {{0}};
        REQUIRE(settings_resolve(&l, STAGE_PRETRAIN, &s, NULL, &e) == 0, "%s", e.msg);
        s.dim = sizes[i].H;
        s.n_layers = sizes[i].L;
        s.n_heads = 4;
        model_config c;
        model_layout ml;
        REQUIRE(model_config_from_settings(&c, &s, 1000, 10, &e) == 0, "%s", e.msg);
        REQUIRE(model_layout_build(&ml, &c, &e) == 0, "%s", e.msg);
        int64_t n = model_block_params(&ml);
        CHECK(n >= sizes[i].lo && n <= sizes[i].hi, "L%dH%d: %lld block params", sizes[i].L, sizes[i].H, (long long)n);
        model_layout_free(&ml);
    }
    CHECK(model_ffn_hidden(16, 32) == 64);
    CHECK(model_ffn_hidden(32, 32) == 96);
    CHECK(model_ffn_hidden(64, 32) == 192);
    CHECK(model_ffn_hidden(1024, 32) == 2752);
}

TEST(lr_schedule_matches_official)
{
    gp_settings s;
    memset(&s, 0, sizeof s);
    s.lr = 5e-3;
    s.min_lr = 5e-4;
    s.warmup_steps = 10;
    int64_t total = 110;
    CHECK_NEAR(train_lr_at(&s, 0, total), 5e-3 * 1 / 10, 1e-15);
    CHECK_NEAR(train_lr_at(&s, 9, total), 5e-3, 1e-15);
    /* After warmup: min + (peak-min) * (1 + cos(pi * cur/max)) / 2 with cur = step+1-warmup. */
    for (int64_t step = 10; step < total; step += 7) {
        double cur = (double)(step + 1 - 10), mx = 100;
        double want = 5e-4 + (5e-3 - 5e-4) * (1 + cos(M_PI * cur / mx)) / 2;
        CHECK_NEAR(train_lr_at(&s, step, total), want, 1e-15);
    }
    CHECK_NEAR(train_lr_at(&s, total - 1, total), 5e-4, 1e-15);
}

/* A tiny dataset: two users' pools, a pretraining record and two CTR records. */
static int tiny_dataset(const char *path, gp_err *e)
{
    uint32_t item_cate[8] = {0, 1, 1, 2, 2, 3, 3, 1};
    uint32_t tok_item[9] = {1, 2, 3, 4, 5, 6, 7, 2, 3};
    uint32_t tok_cate[9] = {1, 1, 2, 2, 3, 3, 1, 1, 2};
    ds_record recs[3];
    memset(recs, 0, sizeof recs);
    recs[0] = (ds_record){.offset = 0, .hist_len = 5, .user = 0, .item = 6, .cate = 3, .label = 2, .split = DS_SPLIT_PRETRAIN};
    recs[1] = (ds_record){.offset = 0, .hist_len = 6, .user = 0, .item = 7, .cate = 1, .label = 1, .split = DS_SPLIT_TRAIN};
    recs[2] = (ds_record){.offset = 7, .hist_len = 2, .user = 1, .item = 5, .cate = 3, .label = 0, .split = DS_SPLIT_TEST};
    ds_contents c = {.n_items = 8, .n_cates = 4, .n_users = 2, .n_tokens = 9, .n_records = 3, .item_cate = item_cate,
                     .tok_item = tok_item, .tok_cate = tok_cate, .records = recs, .max_history = 50, .seed = 1,
                     .producer = "test", .description = "tiny"};
    return dataset_write(path, &c, e);
}

TEST(batch_fill_follows_official_loader)
{
    char *path = gp_path_join(test_tmp_dir(), "tiny.gpsd");
    gp_err e = {{0}};
    REQUIRE(tiny_dataset(path, &e) == 0, "%s", e.msg);
    dataset ds;
    ds_open_opts oo = ds_default_open_opts();
    REQUIRE(dataset_open(&ds, path, &oo, &e) == 0, "%s", e.msg);
    batch b;
    const int S = 4; /* shorter than the pretraining history: truncation keeps the last 4 */
    batch_alloc(&b, 3, S, 5);
    const ds_record *recs[3] = {ds.split_begin[DS_SPLIT_PRETRAIN], ds.split_begin[DS_SPLIT_TRAIN],
                                ds.split_begin[DS_SPLIT_TEST]};
    batch_fill(&b, &ds, recs, 3);
    /* pretraining: history 1..5 truncated to 2,3,4,5; labels = next items, the last = target 6 */
    int32_t want_hist[4] = {2, 3, 4, 5}, want_lab[4] = {3, 4, 5, 6}, want_clab[4] = {2, 2, 3, 3};
    for (int k = 0; k < S; k++) {
        CHECK(b.hist_item[k] == want_hist[k], "hist[%d] = %d", k, b.hist_item[k]);
        CHECK(b.item_label[k] == want_lab[k], "label[%d] = %d", k, b.item_label[k]);
        CHECK(b.cate_label[k] == want_clab[k], "cate label[%d] = %d", k, b.cate_label[k]);
    }
    CHECK(b.hist_len[0] == 4 && b.target_item[0] == 6 && b.click[0] == 2);
    /* CTR: no next-item labels; the short history is right-padded with 0 */
    CHECK(b.click[1] == 1 && b.hist_len[1] == 4 && b.target_item[1] == 7);
    for (int k = 0; k < S; k++)
        CHECK(b.item_label[S + k] == LABEL_IGNORE && b.cate_label[S + k] == LABEL_IGNORE);
    CHECK(b.hist_len[2] == 2 && b.hist_item[2 * S] == 2 && b.hist_item[2 * S + 1] == 3 && b.hist_item[2 * S + 2] == 0 &&
          b.hist_item[2 * S + 3] == 0);
    CHECK(b.user[2] == 1 && b.click[2] == 0);
    /* Negatives: deterministic per (seed, micro-step, sequence), in [0, n_items). */
    batch_sample_negatives(&b, 5, 9, 8);
    int32_t first[15];
    memcpy(first, b.negatives, sizeof first);
    for (int i = 0; i < 15; i++)
        CHECK(first[i] >= 0 && first[i] < 8);
    batch_sample_negatives(&b, 5, 9, 8);
    CHECK(memcmp(first, b.negatives, sizeof first) == 0);
    batch_sample_negatives(&b, 5, 10, 8);
    CHECK(memcmp(first, b.negatives, sizeof first) != 0);
    batch_free(&b);
    dataset_close(&ds);
    free(path);
}
