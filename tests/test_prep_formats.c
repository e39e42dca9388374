/* Every prep input format on small inline examples, with the expected ids, orders and
 * categories worked out by hand in the comments. */
#include "test_prep_support.h"

static prep_result *build(prep_opts *o, prep_report *rep)
{
    gp_err e;
    prep_result *r = prep_test_build(o, rep, &e);
    if (!r)
        test_failure(__FILE__, __LINE__, "prep failed: %s", e.msg);
    return r;
}

static const char *key_of(const prep_result *r, int cate, uint32_t id, char *buf)
{
    const char *k = cate ? prep_cate_key(r, id, buf, 64) : prep_item_key(r, id, buf, 64);
    return k ? k : "(none)";
}

/* The pretraining record of user u (records are sorted by split, then user). */
static const ds_record *pretrain_of(const ds_contents *c, uint32_t u)
{
    for (uint64_t i = 0; i < c->n_records; i++)
        if (c->records[i].split == DS_SPLIT_PRETRAIN && c->records[i].user == u)
            return &c->records[i];
    return NULL;
}

static const ds_record *positive_of(const ds_contents *c, uint32_t u)
{
    for (uint64_t i = 0; i < c->n_records; i++)
        if (c->records[i].split != DS_SPLIT_PRETRAIN && c->records[i].user == u && c->records[i].label == 1)
            return &c->records[i];
    return NULL;
}

TEST(prep_taobao_ids_order_categories)
{
    /* Raw ids sort numerically (9 < 10 < 100); user 20 has a tie at t=5 kept in file order
     * (item 100 then 9) and an out-of-order row (item 10 at t=1 goes first). Item 10's rows have
     * categories 3 (t=1) and 4 (t=7): its own category is the earliest, 3, while each token
     * keeps its row's. Behaviour filter: "buy" rows dropped. */
    char *in = prep_test_file("tb1.csv", "20,100,4,pv,5\n"
                                         "20,9,3,pv,5\n"
                                         "20,10,3,pv,1\n"
                                         "20,10,4,pv,7\n"
                                         "20,55,3,buy,8\n"
                                         "3,9,3,pv,2\n"
                                         "3,100,4,pv,3\n"
                                         "3,10,4,pv,4\n"
                                         "3,9,3,pv,9\n");
    prep_opts o = prep_default_opts(PREP_FMT_TAOBAO);
    CHECK(o.protocol.min_user_len == 10 && o.protocol.max_history == 200, "official taobao defaults");
    o.input = in;
    o.protocol.min_user_len = 3;
    o.behaviors = "pv,cart";
    prep_report rep;
    prep_result *r = build(&o, &rep);
    REQUIRE(r);
    const ds_contents *c = prep_contents(r);
    char b[64];
    CHECK(c->n_items == 4 && c->n_cates == 3 && c->n_users == 2, "vocab %llu %llu %llu", (unsigned long long)c->n_items,
          (unsigned long long)c->n_cates, (unsigned long long)c->n_users);
    CHECK(strcmp(key_of(r, 0, 1, b), "9") == 0 && strcmp(key_of(r, 0, 2, b), "10") == 0 && strcmp(key_of(r, 0, 3, b), "100") == 0,
          "item order");
    CHECK(rep.reasons[PREP_FILT_BEHAVIOR].count == 1, "behaviour filtered %llu",
          (unsigned long long)rep.reasons[PREP_FILT_BEHAVIOR].count);
    /* user index 0 = raw 3: 9 10? no: times 2,3,4,9 -> items 9,100,10,9 = ids 1,3,2,1 */
    static const uint32_t u3[] = {1, 3, 2, 1}, u20[] = {2, 3, 1, 2}; /* raw 20: 10@1, 100@5, 9@5, 10@7 */
    static const uint32_t c20[] = {1, 2, 1, 2};                       /* row categories 3,4,3,4 -> 1,2,1,2 */
    CHECK(memcmp(c->tok_item, u3, sizeof u3) == 0, "user 3 tokens %u %u %u %u", c->tok_item[0], c->tok_item[1],
          c->tok_item[2], c->tok_item[3]);
    CHECK(memcmp(c->tok_item + 4, u20, sizeof u20) == 0, "user 20 tokens %u %u %u %u", c->tok_item[4], c->tok_item[5],
          c->tok_item[6], c->tok_item[7]);
    CHECK(memcmp(c->tok_cate + 4, c20, sizeof c20) == 0, "user 20 token categories");
    CHECK(c->item_cate[2] == 1, "item 10's category is its earliest row's (3 -> id 1), got %u", c->item_cate[2]);
    CHECK(c->item_cate[3] == 2 && c->item_cate[1] == 1, "first-seen categories");
    /* split: last times 9 (raw 3) and 7 (raw 20); sorted [7, 9], index int(2*0.7)=1 -> 9; nobody later */
    CHECK(rep.protocol.split_time == 9 && rep.protocol.users_test == 0, "split %lld", (long long)rep.protocol.split_time);
    const ds_record *pos = positive_of(c, 1);
    REQUIRE(pos);
    CHECK(pos->item == 2 && pos->cate == 2 && pos->hist_len == 3, "user 20 positive: item 10 with its row's category");
    const ds_record *pre = pretrain_of(c, 1);
    REQUIRE(pre);
    CHECK(pre->item == 1 && pre->cate == c->item_cate[1] && pre->hist_len == 2, "pretraining target 9");
    prep_result_free(r);
    free(in);
}

TEST(prep_amazon_2014_python_literal_metadata)
{
    /* 2014 metadata is Python repr: single quotes, True, \x escapes, a double-quoted string
     * holding a quote. Category = first path joined by && with ' ,:#' removed. */
    char *meta = prep_test_file("am14_meta.json",
                                "{'asin': 'B2', 'title': \"Kid's\", 'categories': [['Electronics', 'Audio #1']], 'x': True}\n"
                                "{'asin': 'B1', 'categories': [['Electronics', 'Computers & Accessories', 'Cables: USB'], ['Other']], "
                                "'related': {'also_bought': ['B2']}, 'price': 3.5}\n"
                                "{'asin': 'B3', 'categories': [['Caf\\xe9, Bar']]}\n"
                                "{'asin': 'B9', 'categories': [['Never reviewed']]}\n"
                                "{'asin': 'B1', 'categories': [['A later duplicate']]}\n");
    char *rev = prep_test_file("am14_rev.json",
                               "{\"reviewerID\": \"U2\", \"asin\": \"B1\", \"overall\": 5.0, \"unixReviewTime\": 1300000000}\n"
                               "{\"reviewerID\": \"U2\", \"asin\": \"B2\", \"unixReviewTime\": 1300000001}\n"
                               "{\"reviewerID\": \"U2\", \"asin\": \"B4\", \"unixReviewTime\": 1300000002}\n"
                               "{\"reviewerID\": \"U2\", \"asin\": \"B3\", \"unixReviewTime\": 1300000001}\n"
                               "{\"reviewerID\": \"U1\", \"asin\": \"B3\", \"unixReviewTime\": 1200000000}\n"
                               "{\"reviewerID\": \"U1\", \"asin\": \"B2\", \"unixReviewTime\": 1200000001}\n"
                               "{\"reviewerID\": \"U1\", \"asin\": \"B1\", \"unixReviewTime\": 1200000002}\n"
                               "{\"reviewerID\": \"U1\", \"asin\": \"B1\", \"unixReviewTime\": 1200000003}\n");
    prep_opts o = prep_default_opts(PREP_FMT_AMAZON);
    CHECK(o.protocol.min_user_len == 4, "official amazon minimum");
    o.input = rev;
    o.meta = meta;
    prep_report rep;
    prep_result *r = build(&o, &rep);
    REQUIRE(r);
    const ds_contents *c = prep_contents(r);
    char b[64];
    CHECK(c->n_items == 4 && c->n_cates == 4, "items %llu categories %llu (B9 has no review, B4 no metadata)",
          (unsigned long long)c->n_items, (unsigned long long)c->n_cates);
    CHECK(strcmp(key_of(r, 1, 1, b), "Caf\xc3\xa9" "Bar") == 0, "category 1 = %s", key_of(r, 1, 1, b));
    CHECK(strcmp(key_of(r, 1, 2, b), "Electronics&&Audio1") == 0, "category 2 = %s", key_of(r, 1, 2, b));
    CHECK(strcmp(key_of(r, 1, 3, b), "Electronics&&Computers&Accessories&&CablesUSB") == 0, "category 3 = %s",
          key_of(r, 1, 3, b));
    CHECK(c->item_cate[1] == 3 && c->item_cate[2] == 2 && c->item_cate[3] == 1, "item categories (first metadata line wins)");
    CHECK(rep.reasons[PREP_FILT_NO_META].count == 1 && rep.reasons[PREP_FILT_DUP_META].count == 1, "filters %llu %llu",
          (unsigned long long)rep.reasons[PREP_FILT_NO_META].count, (unsigned long long)rep.reasons[PREP_FILT_DUP_META].count);
    /* U1 (user 0): B3 B2 B1 B1; U2: B1, then B2 and B3 tie at ...001 (file order), B4 dropped */
    static const uint32_t want[] = {3, 2, 1, 1, 1, 2, 3};
    CHECK(c->n_tokens == 7 && memcmp(c->tok_item, want, sizeof want) == 0, "tokens");
    prep_result_free(r);
    free(meta);
    free(rev);
}

TEST(prep_amazon_2018_category_rules)
{
    /* 2018: `category` is one path; the food script turns "true" into "True" in the raw line;
     * an empty list is the empty category string. */
    char *meta = prep_test_file("am18_meta.json",
                                "{\"asin\": \"A1\", \"category\": [\"Grocery & Gourmet Food\", \"true Snacks\", \"Chips: #1\"]}\n"
                                "{\"asin\": \"A2\", \"category\": [], \"tech1\": \"\"}\n"
                                "{\"asin\": \"A3\", \"category\": [\"Bev\\u00e9rages\", \"false\"], \"details\": {\"a\": null}}\n");
    char *rev = prep_test_file("am18_rev.json",
                               "{\"overall\": 5.0, \"verified\": true, \"reviewerID\": \"R\", \"asin\": \"A1\", \"unixReviewTime\": 10, \"style\": {\"Size:\": \" 1\"}}\n"
                               "{\"reviewerID\": \"R\", \"asin\": \"A2\", \"unixReviewTime\": 11}\n"
                               "{\"reviewerID\": \"R\", \"asin\": \"A3\", \"unixReviewTime\": 12}\n"
                               "{\"reviewerID\": \"R\", \"asin\": \"A1\", \"unixReviewTime\": 13}\n");
    prep_opts o = prep_default_opts(PREP_FMT_AMAZON);
    o.input = rev;
    o.meta = meta;
    prep_report rep;
    prep_result *r = build(&o, &rep);
    REQUIRE(r);
    char b[64];
    CHECK(strcmp(key_of(r, 1, 1, b), "") == 0, "category 1 = \"%s\"", key_of(r, 1, 1, b));
    CHECK(strcmp(key_of(r, 1, 2, b), "Bev\xc3\xa9rages&&False") == 0, "category 2 = %s", key_of(r, 1, 2, b));
    CHECK(strcmp(key_of(r, 1, 3, b), "Grocery&GourmetFood&&TrueSnacks&&Chips1") == 0, "category 3 = %s", key_of(r, 1, 3, b));
    prep_result_free(r);
    free(meta);
    free(rev);
}

TEST(prep_movielens_both_formats)
{
    /* ratings.dat (::) with movies.dat genres; --genre first / joined; --min-rating filter. */
    char *movies = prep_test_file("ml1m/movies.dat", "1::Toy Story (1995)::Animation|Children's|Comedy\n"
                                                    "2::Jumanji (1995)::Adventure|Children's|Fantasy\n"
                                                    "3::Heat (1995)::Action|Crime|Thriller\n");
    char *ratings = prep_test_file("ml1m/ratings.dat", "1::1::5::978300760\n1::2::3::978300761\n1::3::1::978300762\n"
                                                      "1::2::4::978300763\n2::3::5::978300700\n2::1::4::978300701\n"
                                                      "2::2::5::978300702\n2::3::5::978300703\n");
    prep_opts o = prep_default_opts(PREP_FMT_MOVIELENS);
    o.input = ratings;
    o.meta = movies;
    prep_report rep;
    prep_result *r = build(&o, &rep);
    REQUIRE(r);
    const ds_contents *c = prep_contents(r);
    char b[64];
    CHECK(c->n_cates == 4 && strcmp(key_of(r, 1, c->item_cate[3], b), "Action") == 0, "first genres");
    prep_result_free(r);
    o.genre = PREP_GENRE_JOINED;
    o.min_rating = 3;
    o.protocol.min_user_len = 3;
    r = build(&o, &rep);
    REQUIRE(r);
    c = prep_contents(r);
    CHECK(strcmp(key_of(r, 1, c->item_cate[1], b), "Animation|Children's|Comedy") == 0, "joined genres: %s",
          key_of(r, 1, c->item_cate[1], b));
    CHECK(rep.reasons[PREP_FILT_RATING].count == 1 && c->n_tokens == 7, "rating filter");
    prep_result_free(r);

    /* u.data (TAB) with u.item flags named by u.genre beside it. */
    char *genre = prep_test_file("ml100/u.genre", "unknown|0\nAction|1\nDrama|2\n\n");
    char *item = prep_test_file("ml100/u.item", "1|A (1995)|01-Jan-1995||http://x|0|0|1\n"
                                                "2|B (1995)|01-Jan-1995||http://x|0|1|1\n"
                                                "7|C|||x|1|0|0\n");
    char *data = prep_test_file("ml100/u.data", "5\t1\t3\t100\n5\t2\t3\t101\n5\t7\t3\t102\n5\t9\t3\t103\n");
    prep_opts m = prep_default_opts(PREP_FMT_MOVIELENS);
    m.input = data;
    m.meta = item;
    r = build(&m, &rep);
    REQUIRE(r);
    c = prep_contents(r);
    /* items 1,2,7,9 -> ids 1..4; categories Drama, Action, unknown; item 9 has no u.item line */
    CHECK(c->n_items == 5 && c->item_cate[4] == 0, "item without genre -> category 0");
    CHECK(strcmp(key_of(r, 1, c->item_cate[1], b), "Drama") == 0 && strcmp(key_of(r, 1, c->item_cate[2], b), "Action") == 0 &&
              strcmp(key_of(r, 1, c->item_cate[3], b), "unknown") == 0,
          "u.genre names");
    prep_result_free(r);
    free(movies), free(ratings), free(genre), free(item), free(data);
}

TEST(prep_csv_named_columns_quotes_and_tsv)
{
    /* Header names in any order, a quoted field with a comma and "" inside, string ids that
     * are not all integers (bytewise order), an extra column. */
    char *in = prep_test_file("g1.csv", "ts,uid,extra,iid,cat,kind\n"
                                        "3,u1,\"a,\"\"b\"\"\",x2,c1,click\n"
                                        "1,u1,,x10,c2,click\n"
                                        "2,u1,,\"x2\",c1,view\n"
                                        "4,u1,,x1,c2,click\n"
                                        "1,u0,,x1,c2,click\n"
                                        "2,u0,,x10,c2,click\n"
                                        "3,u0,,x2,c1,click\n");
    prep_opts o = prep_default_opts(PREP_FMT_CSV);
    o.input = in;
    o.header = 1;
    o.col_user = "uid", o.col_item = "iid", o.col_time = "ts", o.col_cate = "cat", o.col_behavior = "kind";
    o.behaviors = "click";
    o.protocol.min_user_len = 3;
    prep_report rep;
    prep_result *r = build(&o, &rep);
    REQUIRE(r);
    const ds_contents *c = prep_contents(r);
    char b[64];
    /* items x1 < x10 < x2 bytewise */
    CHECK(strcmp(key_of(r, 0, 1, b), "x1") == 0 && strcmp(key_of(r, 0, 2, b), "x10") == 0 && strcmp(key_of(r, 0, 3, b), "x2") == 0,
          "bytewise key order");
    static const uint32_t want[] = {1, 2, 3, 2, 3, 1}; /* u0: x1 x10 x2; u1: x10 x2(t3) x1 ("view" dropped) */
    CHECK(c->n_tokens == 6 && memcmp(c->tok_item, want, sizeof want) == 0, "tokens");
    CHECK(rep.reasons[PREP_FILT_BEHAVIOR].count == 1, "behaviour filter");
    prep_result_free(r);

    /* TSV by 1-based column numbers, no header, integer-looking string ids order numerically,
     * categories from an item,category file. */
    char *tsv = prep_test_file("g2.tsv", "7\t10\t5\n7\t9\t6\n7\t100\t7\n8\t9\t1\n8\t10\t2\n8\t100\t3\n");
    char *cats = prep_test_file("g2_cats.csv", "9,k\n10,j\n100,j\n");
    prep_opts t = prep_default_opts(PREP_FMT_CSV);
    t.input = tsv;
    t.meta = cats;
    t.col_user = "1", t.col_item = "2", t.col_time = "3";
    t.protocol.min_user_len = 3;
    r = build(&t, &rep);
    REQUIRE(r);
    c = prep_contents(r);
    CHECK(strcmp(key_of(r, 0, 1, b), "9") == 0 && strcmp(key_of(r, 0, 3, b), "100") == 0, "numeric order of integer keys");
    CHECK(c->item_cate[1] == 2 && c->item_cate[2] == 1 && c->item_cate[3] == 1, "categories from the item file");
    prep_result_free(r);
    free(in), free(tsv), free(cats);
}

TEST(prep_seq_without_times_and_valid_split)
{
    /* No time file: time = line number, so the last lines' users are the test users; tokens
     * keep the line's order. 10 users; split index int(10*0.7) = 7 -> line 8; lines 9, 10 are
     * test; valid_quantile 0.5 -> index 5 -> line 6: lines 7, 8 are valid. */
    char text[1024];
    size_t o2 = 0;
    for (int u = 1; u <= 10; u++)
        o2 += (size_t)snprintf(text + o2, sizeof text - o2, "%d %d %d %d %d\n", u, 30 - u, 2, 3 + u % 2, 7);
    char *in = prep_test_file("seq1.txt", text);
    prep_opts o = prep_default_opts(PREP_FMT_SEQ);
    o.input = in;
    o.protocol.valid_quantile = 0.5;
    prep_report rep;
    prep_result *r = build(&o, &rep);
    REQUIRE(r);
    const ds_contents *c = prep_contents(r);
    CHECK(rep.protocol.users_test == 2 && rep.protocol.users_valid == 2, "test %llu valid %llu",
          (unsigned long long)rep.protocol.users_test, (unsigned long long)rep.protocol.users_valid);
    char buf[128];
    CHECK(strcmp(prep_test_user_items(r, c, 0, 4, buf, sizeof buf), "29 2 4 7") == 0, "user 1: %s", buf);
    CHECK(c->n_cates == 1 && c->item_cate[1] == 0, "no attributes: category 0");
    prep_result_free(r);
    free(in);
}

TEST(prep_sliding_window_and_negatives)
{
    char *in = prep_test_file("seq2.txt", "1 1 2 3 4 5 6\n2 6 5 4 3\n3 1 3 5 2\n");
    prep_opts o = prep_default_opts(PREP_FMT_SEQ);
    o.input = in;
    o.protocol.n_negatives = 3;
    prep_report rep;
    prep_result *a = build(&o, &rep);
    REQUIRE(a);
    /* split: last times 1,2,3 -> index 2 -> 3; no test users; 3 users x (1 + 3) CTR records */
    CHECK(rep.records[DS_SPLIT_TRAIN] == 12, "train records %llu", (unsigned long long)rep.records[DS_SPLIT_TRAIN]);
    o.protocol.sliding_window = 1;
    prep_result *b = build(&o, &rep);
    REQUIRE(b);
    /* positions 2..n-2 add samples: user 1 (n=6): 2,3,4; user 2 (n=4): 2; user 3 (n=4): 2 */
    CHECK(rep.records[DS_SPLIT_TRAIN] == 12 + 5 * 4, "sliding train records %llu", (unsigned long long)rep.records[DS_SPLIT_TRAIN]);
    prep_result_free(a);
    prep_result_free(b);
    free(in);
}

TEST(prep_gpsd_official_text_files)
{
    /* Official files with maps: unknown history items skipped, an unknown target dropped, a
     * pretraining history that is a prefix of the CTR history shares its tokens. */
    prep_test_file("gpsd1/item2index.txt", "a,1\nb,2\nc,3\n");
    prep_test_file("gpsd1/cate2index.txt", "c1,1\nc2,2\n");
    prep_test_file("gpsd1/pretrain_dataset.txt",
                   "u1,a,c1,2,item__item_id:a#item__cate_id:c1;item__item_id:b#item__cate_id:c2,2\n"
                   "u2,b,c2,2,item__item_id:c#item__cate_id:c1;item__item_id:zz#item__cate_id:c1;item__item_id:a#item__cate_id:c1,3\n"
                   "u3,a,c1,2,item__item_id:zz#item__cate_id:c1;item__item_id:a#item__cate_id:c1,2\n");
    prep_test_file("gpsd1/ft_train_dataset.txt",
                   "u1,c,c1,1,item__item_id:a#item__cate_id:c1;item__item_id:b#item__cate_id:c2;item__item_id:a#item__cate_id:c1,3\n"
                   "u1,b,c2,0,item__item_id:a#item__cate_id:c1;item__item_id:b#item__cate_id:c2;item__item_id:a#item__cate_id:c1,3\n");
    char *dir_file = prep_test_file("gpsd1/ft_eval_dataset.txt",
                                    "u2,a,c1,1,item__item_id:c#item__cate_id:c1;item__item_id:a#item__cate_id:c1;item__item_id:b#item__cate_id:c2,3\n"
                                    "u2,zz,c1,0,item__item_id:c#item__cate_id:c1;item__item_id:a#item__cate_id:c1;item__item_id:b#item__cate_id:c2,3\n");
    *strrchr(dir_file, '/') = 0;
    prep_opts o = prep_default_opts(PREP_FMT_GPSD);
    o.input = dir_file;
    prep_report rep;
    prep_result *r = build(&o, &rep);
    REQUIRE(r);
    const ds_contents *c = prep_contents(r);
    CHECK(rep.reasons[PREP_FILT_UNKNOWN].count == 1 && rep.reasons[PREP_FILT_SHORT].count == 1, "filtered %llu %llu",
          (unsigned long long)rep.reasons[PREP_FILT_UNKNOWN].count, (unsigned long long)rep.reasons[PREP_FILT_SHORT].count);
    CHECK(c->n_records == 5 && c->n_items == 4 && c->n_cates == 3, "records %llu", (unsigned long long)c->n_records);
    CHECK(c->n_tokens == 6, "u1 shares its pretraining history with its CTR one: %llu tokens", (unsigned long long)c->n_tokens);
    const ds_record *pre = pretrain_of(c, 0), *pos = positive_of(c, 0);
    REQUIRE(pre && pos);
    CHECK(pre->offset == pos->offset && pre->hist_len == 2 && pos->hist_len == 3 && pos->item == 3, "u1 spans");
    const ds_record *p2 = pretrain_of(c, 1);
    REQUIRE(p2);
    CHECK(p2->hist_len == 2 && c->tok_item[p2->offset] == 3 && c->tok_item[p2->offset + 1] == 1, "u2: zz skipped");
    /* the written maps are the given ones */
    char *out = gp_path_join(test_tmp_dir(), "gpsd1_out");
    gp_err e = {{0}};
    CHECK(prep_write(r, &rep, out, &e) == 0, "%s", e.msg);
    char *imap = gp_path_join(out, "item2index.txt");
    char *text = NULL;
    size_t n;
    CHECK(gp_read_file(imap, &text, &n, &e) == 0 && strcmp(text, "a,1\nb,2\nc,3\n") == 0, "item2index: %s", text ? text : "");
    free(text), free(imap), free(out);
    prep_result_free(r);
    free(dir_file);
}
