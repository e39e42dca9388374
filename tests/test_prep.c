/* prep on the real data in ../shared/data: counts against expectations computed here with
 * plain code (not the prep pipeline), the official numbers for Amazon Beauty (DESIGN.md), and
 * determinism under a fixed seed whatever the thread count and block size. */
#include <omp.h>
#include <stdint.h>

#include "test_prep_support.h"

/* ---- independent MovieLens 100K reading ---------------------------------------------------- */

typedef struct {
    int user, item;
    long long time;
    int line;
} ml_row;

static int cmp_ll(const void *a, const void *b)
{
    long long x = *(const long long *)a, y = *(const long long *)b;
    return x < y ? -1 : x > y;
}

static char *shared_path(const char *rel)
{
    return gp_path_join(test_shared_dir(), rel);
}

TEST(prep_ml100k_counts_and_sequences)
{
    char *data = shared_path("data/ml-100k/u.data"), *item = shared_path("data/ml-100k/u.item");
    FILE *f = fopen(data, "r");
    REQUIRE(f, "cannot open %s", data);
    ml_row *rows = malloc(100000 * sizeof *rows);
    int n = 0, rating;
    while (n < 100000 && fscanf(f, "%d\t%d\t%d\t%lld", &rows[n].user, &rows[n].item, &rating, &rows[n].time) == 4) {
        rows[n].line = n;
        n++;
    }
    fclose(f);
    CHECK(n == 100000, "read %d rows", n);
    /* users 1..943 and items 1..1682 are dense in ml-100k (its README): count them anyway */
    static long long last[944];
    static int len[944], seen_item[1683];
    int n_users = 0, n_items = 0;
    for (int i = 0; i < 944; i++)
        last[i] = -1;
    for (int i = 0; i < n; i++) {
        if (len[rows[i].user]++ == 0)
            n_users++;
        if (!seen_item[rows[i].item]++)
            n_items++;
        if (rows[i].time > last[rows[i].user])
            last[rows[i].user] = rows[i].time;
    }
    long long sorted[943];
    int k = 0;
    for (int u = 1; u <= 943; u++)
        if (len[u])
            sorted[k++] = last[u];
    qsort(sorted, (size_t)k, sizeof *sorted, cmp_ll);
    long long split = sorted[(int)(k * 0.7)];
    int test_users = 0;
    for (int u = 1; u <= 943; u++)
        test_users += len[u] && last[u] > split;
    /* first genre flag of each item, from u.item */
    FILE *fi = fopen(item, "r");
    REQUIRE(fi, "cannot open %s", item);
    static int first_genre[1683];
    char line[2048];
    int genre_used[19] = {0}, n_genres = 0;
    while (fgets(line, sizeof line, fi)) {
        int id = atoi(line), bars = 0, g = -1;
        for (char *p = line; *p && g < 0; p++)
            if (*p == '|' && ++bars >= 5 && p[1] == '1')
                g = bars - 5;
        if (id > 0 && id <= 1682)
            first_genre[id] = g;
    }
    fclose(fi);
    for (int i = 1; i <= 1682; i++)
        if (seen_item[i] && first_genre[i] >= 0 && !genre_used[first_genre[i]]++)
            n_genres++;

    prep_opts o = prep_default_opts(PREP_FMT_MOVIELENS);
    o.input = data;
    o.meta = item;
    prep_report rep;
    gp_err e;
    prep_result *r = prep_test_build(&o, &rep, &e);
    REQUIRE(r, "%s", e.msg);
    const ds_contents *c = prep_contents(r);
    CHECK(c->n_users == (uint64_t)n_users, "users %llu vs %d", (unsigned long long)c->n_users, n_users);
    CHECK(c->n_items == (uint64_t)n_items + 1, "items %llu vs %d", (unsigned long long)c->n_items, n_items);
    CHECK(c->n_cates == (uint64_t)n_genres + 1, "categories %llu vs %d", (unsigned long long)c->n_cates, n_genres);
    CHECK(rep.protocol.split_time == split, "split time %lld vs %lld", (long long)rep.protocol.split_time, split);
    CHECK(rep.protocol.users_test == (uint64_t)test_users, "test users %llu vs %d",
          (unsigned long long)rep.protocol.users_test, test_users);
    CHECK(rep.records[DS_SPLIT_PRETRAIN] == (uint64_t)n_users, "pretrain records %llu",
          (unsigned long long)rep.records[DS_SPLIT_PRETRAIN]);
    CHECK(rep.records[DS_SPLIT_TRAIN] == 2ull * (uint64_t)(n_users - test_users), "train records %llu",
          (unsigned long long)rep.records[DS_SPLIT_TRAIN]);
    CHECK(rep.records[DS_SPLIT_TEST] == 2ull * (uint64_t)test_users, "test records");
    CHECK(c->n_tokens == (uint64_t)n, "tokens %llu", (unsigned long long)c->n_tokens);
    CHECK(rep.user_len_pct[0] == 20 && rep.user_len_pct[PREP_N_PCT - 1] == 737, "user length range %u..%u",
          rep.user_len_pct[0], rep.user_len_pct[PREP_N_PCT - 1]);

    /* Every user's tokens: its items sorted by time, ties in file order (a stable insertion sort
     * per user here). Users are numbered by raw id, so user u-1 is raw user u. */
    ml_row **by_user = calloc(944, sizeof *by_user);
    int *fill = calloc(944, sizeof *fill);
    for (int u = 1; u <= 943; u++)
        by_user[u] = malloc((size_t)(len[u] ? len[u] : 1) * sizeof **by_user);
    for (int i = 0; i < n; i++) {
        ml_row x = rows[i];
        ml_row *v = by_user[x.user];
        int j = fill[x.user]++;
        while (j > 0 && v[j - 1].time > x.time) {
            v[j] = v[j - 1];
            j--;
        }
        v[j] = x;
    }
    uint64_t off = 0;
    int bad_user = 0, bad_cate = 0;
    for (int u = 1; u <= 943 && !bad_user; u++) {
        for (int j = 0; j < len[u]; j++) {
            uint32_t it = c->tok_item[off + (uint64_t)j];
            char buf[64];
            const char *key = prep_item_key(r, it, buf, sizeof buf);
            if (!key || atoi(key) != by_user[u][j].item)
                bad_user = u;
            if (c->tok_cate[off + (uint64_t)j] != c->item_cate[it])
                bad_cate = u;
        }
        off += (uint64_t)len[u];
    }
    CHECK(!bad_user, "user %d's tokens are not its items in time order", bad_user);
    CHECK(!bad_cate, "user %d: a token's category differs from its item's", bad_cate);
    /* categories: the first genre's name (u.genre order: 0 unknown, 1 Action, ...) */
    static const char *const genres[19] = {"unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                                           "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
                                           "Romance", "Sci-Fi", "Thriller", "War", "Western"};
    int bad_genre = 0;
    for (uint32_t it = 1; it < c->n_items; it++) {
        char b1[64], b2[64];
        const char *key = prep_item_key(r, it, b1, sizeof b1);
        const char *cate = prep_cate_key(r, c->item_cate[it], b2, sizeof b2);
        int raw = key ? atoi(key) : 0;
        if (!cate || first_genre[raw] < 0 || strcmp(cate, genres[first_genre[raw]]) != 0)
            bad_genre = raw;
    }
    CHECK(!bad_genre, "item %d: category is not its first genre", bad_genre);
    for (int u = 0; u < 944; u++)
        free(by_user[u]);
    free(by_user);
    free(fill);
    free(rows);
    prep_result_free(r);
    free(data);
    free(item);
}

/* ---- Amazon Beauty: sequences + companion times + attributes ------------------------------- */

/* Reads a whitespace file of lines `user v v ...`: returns lines; tokens per line in *count and
 * the last token's value in *last (both arrays malloc'd). */
static int read_lines_last(const char *path, int **count, long long **last)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    int cap = 32768, n = 0;
    *count = malloc((size_t)cap * sizeof **count);
    *last = malloc((size_t)cap * sizeof **last);
    static char line[1 << 16];
    while (fgets(line, sizeof line, f) && n < cap) {
        int k = 0;
        long long v = 0;
        for (char *tok = strtok(line, " \n"); tok; tok = strtok(NULL, " \n")) {
            if (k++ > 0)
                v = atoll(tok);
        }
        (*count)[n] = k - 1;
        (*last)[n] = v;
        n++;
    }
    fclose(f);
    return n;
}

static prep_opts beauty_opts(char **seq, char **tim, char **attr)
{
    *seq = shared_path("data/amazon-beauty/s3rec/Beauty.txt");
    *tim = shared_path("data/amazon-beauty/ticoserec/Beauty_time_org_rank.txt");
    *attr = shared_path("data/amazon-beauty/s3rec/Beauty_item2attributes.json");
    prep_opts o = prep_default_opts(PREP_FMT_SEQ);
    o.input = *seq;
    o.times = *tim;
    o.meta = *attr;
    return o;
}

TEST(prep_beauty_official_counts)
{
    char *seq, *tim, *attr;
    prep_opts o = beauty_opts(&seq, &tim, &attr);
    int *cnt_s, *cnt_t;
    long long *last_s, *last_t;
    int n_s = read_lines_last(seq, &cnt_s, &last_s), n_t = read_lines_last(tim, &cnt_t, &last_t);
    REQUIRE(n_s > 0 && n_s == n_t, "lines %d vs %d", n_s, n_t);
    /* The times never decrease within a line (data README), so the last token is the last time. */
    long long *sorted = malloc((size_t)n_t * sizeof *sorted);
    long long interactions = 0;
    for (int i = 0; i < n_t; i++) {
        sorted[i] = last_t[i];
        interactions += cnt_s[i];
    }
    qsort(sorted, (size_t)n_t, sizeof *sorted, cmp_ll);
    long long split = sorted[(int)(n_t * 0.7)];
    int test_users = 0;
    for (int i = 0; i < n_t; i++)
        test_users += last_t[i] > split;

    prep_report rep;
    gp_err e;
    prep_result *r = prep_test_build(&o, &rep, &e);
    REQUIRE(r, "%s", e.msg);
    const ds_contents *c = prep_contents(r);
    uint64_t train_users = rep.protocol.users_kept - rep.protocol.users_test;
    CHECK(rep.protocol.users_test == (uint64_t)test_users, "test users %llu vs %d", (unsigned long long)rep.protocol.users_test,
          test_users);
    CHECK(c->n_tokens == (uint64_t)interactions, "tokens %llu vs %lld", (unsigned long long)c->n_tokens, interactions);
    /* The official numbers (DESIGN.md, produced by the official pipeline on these files). */
    CHECK(train_users == 15659, "train users %llu", (unsigned long long)train_users);
    CHECK(rep.protocol.users_test == 6704, "test users %llu", (unsigned long long)rep.protocol.users_test);
    CHECK(c->n_items - 1 == 12101, "items %llu", (unsigned long long)(c->n_items - 1));
    CHECK(c->n_cates - 1 == 443, "categories %llu", (unsigned long long)(c->n_cates - 1));
    CHECK(rep.records[DS_SPLIT_TRAIN] == 2 * 15659 && rep.records[DS_SPLIT_TEST] == 2 * 6704, "CTR records");
    /* The s3rec ids are 1..12101, so the item map is the identity and the first user's line
     * "1 1 2 3 4 5" must come back as items 1..5. */
    char buf[256];
    CHECK(strcmp(prep_test_user_items(r, c, 0, 5, buf, sizeof buf), "1 2 3 4 5") == 0, "user 1: %s", buf);
    char kb[32];
    const char *k1 = prep_item_key(r, 1, kb, sizeof kb);
    CHECK(k1 && strcmp(k1, "1") == 0, "item 1 key %s", k1 ? k1 : "(null)");
    /* Item 4's attributes start with 1 (the data README example {"4": [1, 2, 3], ...}). */
    const char *ck = prep_cate_key(r, c->item_cate[4], kb, sizeof kb);
    CHECK(ck && strcmp(ck, "1") == 0, "item 4 category key %s", ck ? ck : "(null)");
    prep_result_free(r);
    free(sorted);
    free(cnt_s), free(cnt_t), free(last_s), free(last_t);
    free(seq), free(tim), free(attr);
}

static int same_contents(const ds_contents *a, const ds_contents *b)
{
    return a->n_items == b->n_items && a->n_cates == b->n_cates && a->n_users == b->n_users &&
           a->n_tokens == b->n_tokens && a->n_records == b->n_records &&
           memcmp(a->item_cate, b->item_cate, a->n_items * 4) == 0 && memcmp(a->tok_item, b->tok_item, a->n_tokens * 4) == 0 &&
           memcmp(a->tok_cate, b->tok_cate, a->n_tokens * 4) == 0 &&
           memcmp(a->records, b->records, a->n_records * sizeof *a->records) == 0;
}

TEST(prep_determinism_threads_blocks_seed)
{
    char *seq, *tim, *attr;
    prep_opts o = beauty_opts(&seq, &tim, &attr);
    o.protocol.seed = 7;
    o.threads = 1;
    prep_report rep;
    gp_err e;
    prep_result *a = prep_test_build(&o, &rep, &e);
    REQUIRE(a, "%s", e.msg);
    o.threads = 3;
    o.block_bytes = 4096; /* many blocks, lines cut across workers */
    prep_result *b = prep_test_build(&o, &rep, &e);
    REQUIRE(b, "%s", e.msg);
    CHECK(same_contents(prep_contents(a), prep_contents(b)), "1 thread vs 3 threads with small blocks differ");
    o.protocol.seed = 8;
    prep_result *c = prep_test_build(&o, &rep, &e);
    REQUIRE(c, "%s", e.msg);
    const ds_contents *ca = prep_contents(a), *cc = prep_contents(c);
    int negatives_differ = 0, positives_same = ca->n_records == cc->n_records;
    for (uint64_t i = 0; positives_same && i < ca->n_records; i++) {
        if (ca->records[i].label == 0)
            negatives_differ += ca->records[i].item != cc->records[i].item;
        else
            positives_same = memcmp(&ca->records[i], &cc->records[i], sizeof ca->records[i]) == 0;
    }
    CHECK(positives_same, "another seed changed positives or pretraining records");
    CHECK(negatives_differ > 1000, "another seed changed only %d negatives", negatives_differ);
    prep_result_free(a);
    prep_result_free(b);
    prep_result_free(c);

    /* MovieLens too (integer key maps, a metadata file), 1 vs 2 threads. */
    char *data = shared_path("data/ml-100k/u.data"), *item = shared_path("data/ml-100k/u.item");
    prep_opts m = prep_default_opts(PREP_FMT_MOVIELENS);
    m.input = data;
    m.meta = item;
    m.threads = 1;
    a = prep_test_build(&m, &rep, &e);
    REQUIRE(a, "%s", e.msg);
    m.threads = 2;
    m.block_bytes = 8192;
    b = prep_test_build(&m, &rep, &e);
    REQUIRE(b, "%s", e.msg);
    CHECK(same_contents(prep_contents(a), prep_contents(b)), "movielens: 1 vs 2 threads differ");
    prep_result_free(a);
    prep_result_free(b);
    free(data), free(item), free(seq), free(tim), free(attr);
}

TEST(prep_write_outputs_and_reopen)
{
    char *data = shared_path("data/ml-100k/u.data"), *item = shared_path("data/ml-100k/u.item");
    prep_opts o = prep_default_opts(PREP_FMT_MOVIELENS);
    o.input = data;
    o.meta = item;
    char *dir = gp_path_join(test_tmp_dir(), "prep_out_ml");
    prep_report rep;
    gp_err e = {{0}};
    REQUIRE(prep_run(&o, dir, &rep, &e) == 0, "%s", e.msg);
    char *ds_path = gp_path_join(dir, "data.gpsd"), *imap = gp_path_join(dir, "item2index.txt");
    dataset ds;
    REQUIRE(dataset_open(&ds, ds_path, NULL, &e) == 0, "%s", e.msg);
    CHECK(ds.hdr->n_users == 943 && ds.hdr->max_history == 200, "header users %llu window %llu",
          (unsigned long long)ds.hdr->n_users, (unsigned long long)ds.hdr->max_history);
    CHECK(strcmp(ds.hdr->producer, "gpsdrec prep movielens") == 0, "producer %s", ds.hdr->producer);
    dataset_close(&ds);
    /* item2index: `key,index`, keys sorted numerically, indices 1..N */
    FILE *f = fopen(imap, "r");
    REQUIRE(f, "no item2index.txt");
    long long key, idx, prev = -1, lines = 0;
    int ok = 1;
    while (fscanf(f, "%lld,%lld\n", &key, &idx) == 2) {
        lines++;
        ok &= idx == lines && key > prev;
        prev = key;
    }
    fclose(f);
    CHECK(ok && lines == 1682, "item2index not 1..1682 in key order (%lld lines)", lines);
    /* A failing run leaves the outputs as they were (and no temporary files). */
    prep_opts bad = o;
    bad.input = prep_test_file("prep_bad_ml.data", "1\t2\t3\t4\nnot a line\n");
    CHECK(prep_run(&bad, dir, &rep, &e) != 0, "a bad input should fail");
    REQUIRE(dataset_open(&ds, ds_path, NULL, &e) == 0, "the earlier dataset is gone: %s", e.msg);
    CHECK(ds.hdr->n_users == 943, "the earlier dataset was replaced");
    dataset_close(&ds);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "ls -a '%s' | grep -c tmp", dir);
    char *out = NULL;
    test_run_capture(cmd, &out);
    CHECK(out && atoi(out) == 0, "temporary files left in %s", dir);
    free(out);
    free((char *)bad.input);
    free(ds_path), free(imap), free(dir), free(data), free(item);
}

/* The Taobao path (integer maps, key memo, prefetch ring, first-seen categories by blocks) on a
 * generated file with many ties and shuffled rows: the same bytes for 1 and 3 threads, any block
 * size, and each item's category is the one of its earliest row (checked here directly). */
TEST(prep_taobao_threads_and_first_seen)
{
    char *path = gp_path_join(test_tmp_dir(), "gen_taobao.csv");
    FILE *f = fopen(path, "w");
    REQUIRE(f);
    uint64_t s = 12345;
    enum { ROWS = 30000, ITEMS = 700 };
    static long long best_time[ITEMS];
    static int best_cate[ITEMS];
    for (int i = 0; i < ITEMS; i++)
        best_time[i] = -1;
    for (int r = 0; r < ROWS; r++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        int user = (int)((s >> 33) % 900), item = (int)((s >> 20) % ITEMS), cate = (int)((s >> 45) % 3) + item % 7 * 3;
        long long t = 1000 + (long long)((s >> 40) % 50); /* many equal times */
        fprintf(f, "%d,%d,%d,pv,%lld\n", user * 7919 % 100003, item * 31 + 5, cate, t);
        if (best_time[item] < 0 || t < best_time[item]) {
            best_time[item] = t;
            best_cate[item] = cate;
        }
    }
    fclose(f);
    prep_opts o = prep_default_opts(PREP_FMT_TAOBAO);
    o.input = path;
    o.threads = 1;
    prep_report rep;
    gp_err e;
    prep_result *a = prep_test_build(&o, &rep, &e);
    REQUIRE(a, "%s", e.msg);
    o.threads = 3;
    o.block_bytes = 5000;
    prep_result *b = prep_test_build(&o, &rep, &e);
    REQUIRE(b, "%s", e.msg);
    CHECK(same_contents(prep_contents(a), prep_contents(b)), "taobao: 1 thread vs 3 threads with small blocks differ");
    const ds_contents *c = prep_contents(b);
    int bad = 0;
    for (uint32_t it = 1; it < c->n_items && !bad; it++) {
        char kb[32], cb[32];
        const char *key = prep_item_key(b, it, kb, sizeof kb), *ck = prep_cate_key(b, c->item_cate[it], cb, sizeof cb);
        int raw = key ? (atoi(key) - 5) / 31 : -1;
        if (raw < 0 || raw >= ITEMS || !ck || atoi(ck) != best_cate[raw])
            bad = (int)it;
    }
    CHECK(!bad, "item %d: category is not its earliest row's", bad);
    prep_result_free(a);
    prep_result_free(b);
    free(path);
}
