/* Every bad-input path of prep: the message names file:line and shows the offending text,
 * --on-error skip counts each rejected line by reason, and nothing is written on failure. */
#include "test_prep_support.h"

static int build_fails(prep_opts *o, gp_err *e)
{
    prep_report rep;
    prep_result *r = prep_test_build(o, &rep, e);
    if (r) {
        prep_result_free(r);
        return 0;
    }
    return 1;
}

static void expect_fail(prep_opts *o, const char *const *needles, int line)
{
    gp_err e;
    if (!build_fails(o, &e)) {
        test_failure(__FILE__, line, "expected a failure");
        return;
    }
    for (int i = 0; needles[i]; i++)
        if (!strstr(e.msg, needles[i]))
            test_failure(__FILE__, line, "message lacks \"%s\": %s", needles[i], e.msg);
}
#define EXPECT_FAIL(o, ...)                                                   \
    do {                                                                      \
        static const char *const needles_[] = {__VA_ARGS__, NULL};            \
        expect_fail(o, needles_, __LINE__);                                   \
    } while (0)

TEST(prep_errors_taobao_lines)
{
    const char *good = "1,10,5,pv,100\n1,11,5,pv,101\n1,12,6,pv,102\n1,13,6,pv,103\n2,10,5,pv,100\n2,12,6,pv,104\n2,13,6,pv,105\n";
    char text[1024];
    prep_opts o = prep_default_opts(PREP_FMT_TAOBAO);
    o.protocol.min_user_len = 3;

    snprintf(text, sizeof text, "%s1,abc,5,pv,104\n", good);
    o.input = prep_test_file("e_id.csv", text);
    EXPECT_FAIL(&o, "e_id.csv:8:", "id does not parse", "\"abc\"", "1,abc,5,pv,104", "--on-error skip");
    free((char *)o.input);

    snprintf(text, sizeof text, "%s1,99999999999999999999,5,pv,104\n", good);
    o.input = prep_test_file("e_idr.csv", text);
    EXPECT_FAIL(&o, "e_idr.csv:8:", "id out of range");
    free((char *)o.input);

    snprintf(text, sizeof text, "1,10,5,pv,1e9\n%s", good);
    o.input = prep_test_file("e_t.csv", text);
    EXPECT_FAIL(&o, "e_t.csv:1:", "timestamp does not parse", "1e9");
    free((char *)o.input);

    snprintf(text, sizeof text, "%s2,10,5,pv,-99999999999999999999\n", good);
    o.input = prep_test_file("e_tr.csv", text);
    EXPECT_FAIL(&o, "e_tr.csv:8:", "timestamp out of range", "does not fit 64 bits");
    free((char *)o.input);

    /* a truncated file: the last line lacks fields and its newline */
    snprintf(text, sizeof text, "%s2,13,6", good);
    o.input = prep_test_file("e_trunc.csv", text);
    EXPECT_FAIL(&o, "e_trunc.csv:8:", "wrong number of fields", "truncated", "2,13,6");
    free((char *)o.input);

    o.input = prep_test_file("e_empty.csv", "");
    EXPECT_FAIL(&o, "e_empty.csv", "empty input");
    free((char *)o.input);

    o.input = prep_test_file("e_blank.csv", "\n\n");
    EXPECT_FAIL(&o, "e_blank.csv", "no usable interactions");
    free((char *)o.input);

    o.input = "/nonexistent/dir/file.csv";
    EXPECT_FAIL(&o, "/nonexistent/dir/file.csv", "cannot open");

    /* skip: every bad line counted by reason, the good rows used, the first examples kept */
    snprintf(text, sizeof text, "%sx,1,1,pv,1\n1,2,3\n1,2,3,pv,1,9\n3,4,5,pv,zz\n\n4,4,5,pv,7\r\n", good);
    o.input = prep_test_file("e_skip.csv", text);
    o.on_error = PREP_SKIP;
    prep_report rep;
    gp_err e;
    prep_result *r = prep_test_build(&o, &rep, &e);
    REQUIRE(r, "%s", e.msg);
    CHECK(rep.reasons[PREP_ERR_ID].count == 1 && rep.reasons[PREP_ERR_FIELDS].count == 2 &&
              rep.reasons[PREP_ERR_TIME].count == 1,
          "counts id %llu fields %llu time %llu", (unsigned long long)rep.reasons[PREP_ERR_ID].count,
          (unsigned long long)rep.reasons[PREP_ERR_FIELDS].count, (unsigned long long)rep.reasons[PREP_ERR_TIME].count);
    CHECK(rep.rows == 8 && rep.blank_lines == 1, "rows %llu blank %llu", (unsigned long long)rep.rows,
          (unsigned long long)rep.blank_lines);
    CHECK(rep.reasons[PREP_ERR_FIELDS].n_text == 2 && strstr(rep.reasons[PREP_ERR_FIELDS].text[0], "e_skip.csv:9:") &&
              strstr(rep.reasons[PREP_ERR_FIELDS].text[1], "e_skip.csv:10:"),
          "examples: %s", rep.reasons[PREP_ERR_FIELDS].text[0]);
    char *report = NULL;
    size_t rl = 0;
    FILE *mem = open_memstream(&report, &rl);
    prep_print_report(&rep, mem);
    fclose(mem);
    CHECK(strstr(report, "rows rejected: 4") && strstr(report, "wrong number of fields: 2"), "report: %s", report);
    free(report);
    prep_result_free(r);
    free((char *)o.input);
    /* the same errors in parallel blocks: the first bad line is reported whatever the split */
    snprintf(text, sizeof text, "%s%s%s1,10,5,pv,x1\n%s1,10,5,pv,x2\n", good, good, good, good);
    o.input = prep_test_file("e_first.csv", text);
    o.on_error = PREP_ABORT;
    o.threads = 4;
    o.block_bytes = 64;
    EXPECT_FAIL(&o, "e_first.csv:22:", "x1");
    free((char *)o.input);
}

TEST(prep_errors_csv_columns_and_quotes)
{
    prep_opts o = prep_default_opts(PREP_FMT_CSV);
    o.input = prep_test_file("e_hdr.csv", "u,i,t\n1,2,3\n");
    o.header = 1;
    o.col_user = "u", o.col_item = "item", o.col_time = "t";
    EXPECT_FAIL(&o, "e_hdr.csv:1:", "missing column", "\"item\"", "u,i,t");
    o.col_item = "i";
    o.header = 0;
    EXPECT_FAIL(&o, "is a name", "--header");
    free((char *)o.input);
    o.input = prep_test_file("e_q.csv", "1,2,3\n1,\"2,3\n");
    o.col_user = "1", o.col_item = "2", o.col_time = "3";
    EXPECT_FAIL(&o, "e_q.csv:2:", "bad quoting");
    free((char *)o.input);
    o.input = prep_test_file("e_miss.csv", "1,2,3\n1,2\n");
    EXPECT_FAIL(&o, "e_miss.csv:2:", "missing column", "1,2");
    free((char *)o.input);
    o.input = prep_test_file("e_emptyid.csv", "1,2,3\n,2,4\n");
    EXPECT_FAIL(&o, "e_emptyid.csv:2:", "empty user id");
    o.ids = PREP_IDS_INT;
    free((char *)o.input);
    o.input = prep_test_file("e_intid.csv", "1,2,3\n1,b,4\n");
    EXPECT_FAIL(&o, "e_intid.csv:2:", "is not an integer");
    free((char *)o.input);
    /* options that cannot work */
    prep_opts m = prep_default_opts(PREP_FMT_MOVIELENS);
    m.input = "x";
    m.behaviors = "pv";
    EXPECT_FAIL(&m, "behaviour column");
    prep_opts a = prep_default_opts(PREP_FMT_AMAZON);
    a.input = "x";
    EXPECT_FAIL(&a, "metadata");
    prep_opts g = prep_default_opts(PREP_FMT_CSV);
    g.input = "x";
    EXPECT_FAIL(&g, "--user-col");
}

TEST(prep_errors_json)
{
    char *meta = prep_test_file("e_meta.json", "{'asin': 'B1', 'categories': [['A']]}\n{'asin': 'B2', 'categories': [['A']]}\n");
    prep_opts o = prep_default_opts(PREP_FMT_AMAZON);
    o.meta = meta;
    o.input = prep_test_file("e_rev1.json", "{\"reviewerID\": \"U\", \"asin\": \"B1\", \"unixReviewTime\": 1}\n"
                                            "{\"reviewerID\": \"U\", \"asin\": \"B2\", \"unixReviewT");
    EXPECT_FAIL(&o, "e_rev1.json:2:", "bad JSON", "truncated", "unixReviewT");
    free((char *)o.input);
    o.input = prep_test_file("e_rev2.json", "{\"reviewerID\": \"U\", \"asin\": \"B1\"}\n");
    EXPECT_FAIL(&o, "e_rev2.json:1:", "missing or wrong field", "unixReviewTime");
    free((char *)o.input);
    o.input = prep_test_file("e_rev3.json", "{\"reviewerID\": \"U\", \"asin\": \"B1\", \"unixReviewTime\": \"x\"}\n");
    EXPECT_FAIL(&o, "e_rev3.json:1:", "timestamp does not parse");
    free((char *)o.input);
    o.input = prep_test_file("e_rev4.json", "[1, 2]\n");
    EXPECT_FAIL(&o, "e_rev4.json:1:", "bad JSON");
    free((char *)o.input);
    o.input = prep_test_file("e_rev5.json", "{\"a\": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}\n");
    EXPECT_FAIL(&o, "e_rev5.json:1:", "nesting");
    free((char *)o.input);
    char *bad_meta = prep_test_file("e_meta2.json", "{'asin': 'B1', 'categories': 'A'}\n");
    o.meta = bad_meta;
    o.input = "unused";
    EXPECT_FAIL(&o, "e_meta2.json:1:", "not a list");
    free(bad_meta);
    free(meta);

    /* sequence files: a bad attributes JSON, a time file of another shape */
    prep_opts s = prep_default_opts(PREP_FMT_SEQ);
    s.input = prep_test_file("e_seq.txt", "1 1 2 3 4\n2 2 3 4 5\n");
    s.meta = prep_test_file("e_attr.json", "{\"1\": [1, 2], \"2\": [3}");
    EXPECT_FAIL(&s, "e_attr.json");
    free((char *)s.meta);
    s.meta = NULL;
    s.times = prep_test_file("e_time.txt", "1 10 11 12 13\n2 10 11 12\n");
    EXPECT_FAIL(&s, "e_time.txt:2:", "bad sequence", "3 timestamps for 4 items");
    free((char *)s.times);
    s.times = prep_test_file("e_time2.txt", "1 10 11 12 13\n3 10 11 12 13\n");
    EXPECT_FAIL(&s, "e_time2.txt:2:", "for user \"3\"");
    free((char *)s.times);
    s.times = prep_test_file("e_time3.txt", "1 10 11 12 13\n");
    EXPECT_FAIL(&s, "ends before this line");
    free((char *)s.times);
    free((char *)s.input);
}

TEST(prep_errors_gpsd_text)
{
    char *f = prep_test_file("e_gpsd/ft_train_dataset.txt",
                             "u1,a,c1,1,item__item_id:a#item__cate_id:c1;item__item_id:b#item__cate_id:c1,3\n");
    *strrchr(f, '/') = 0;
    prep_opts o = prep_default_opts(PREP_FMT_GPSD);
    o.input = f;
    EXPECT_FAIL(&o, "ft_train_dataset.txt:1:", "seq_len 3 but seq_value has 2");
    prep_test_file("e_gpsd/ft_train_dataset.txt", "u1,a,c1,2,item__item_id:a#item__cate_id:c1;item__item_id:b#item__cate_id:c1,2\n");
    EXPECT_FAIL(&o, "ft_train_dataset.txt:1:", "bad label");
    prep_test_file("e_gpsd/ft_train_dataset.txt", "u1,a,c1,1,item__item_id:a:b#item__cate_id:c1,1\n");
    EXPECT_FAIL(&o, "not key:value");
    prep_test_file("e_gpsd/ft_train_dataset.txt", "u1,a,c1,1\n");
    EXPECT_FAIL(&o, "6 fields expected");
    prep_test_file("e_gpsd/item2index.txt", "a,1\nb,x\n");
    EXPECT_FAIL(&o, "item2index.txt:2:", "key,index");
    /* found by fuzzing: a huge index must not size the vocabulary */
    prep_test_file("e_gpsd/item2index.txt", "a,888888888\n");
    EXPECT_FAIL(&o, "item2index.txt:1:", "exceeds the number of keys");
    prep_test_file("e_gpsd/item2index.txt", "a,1\nb,1\n");
    EXPECT_FAIL(&o, "item2index.txt:2:", "given twice");
    prep_opts n = prep_default_opts(PREP_FMT_GPSD);
    n.input = test_tmp_dir();
    EXPECT_FAIL(&n, "none of pretrain_dataset.txt");
    n.input = "/nonexistent";
    EXPECT_FAIL(&n, "not a directory");
    free(f);
}

TEST(prep_cli_end_to_end)
{
    char *in = prep_test_file("cli_tb.csv", "1,10,5,pv,100\n1,11,5,pv,101\n1,12,6,pv,102\n1,13,6,pv,103\n"
                                            "2,10,5,pv,100\n2,12,6,pv,104\n2,13,6,buy,105\n");
    char *out = gp_path_join(test_tmp_dir(), "cli_tb_out");
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s prep --format taobao --input %s --out %s --min-user-len 3 --behaviors pv --seed 3 2>&1",
             test_binary(), in, out);
    char *text = NULL;
    int rc = test_run_capture(cmd, &text);
    CHECK(rc == 0, "exit %d: %s", rc, text ? text : "");
    CHECK(text && strstr(text, "filtered: behaviour type not kept: 1") && strstr(text, "records train"), "report: %s",
          text ? text : "");
    free(text);
    char *stats = gp_path_join(out, "stats.txt");
    text = NULL;
    size_t n;
    gp_err e;
    CHECK(gp_read_file(stats, &text, &n, &e) == 0 && strstr(text, "users: 2"), "stats.txt");
    free(text);
    snprintf(cmd, sizeof cmd, "%s info %s/data.gpsd 2>&1", test_binary(), out);
    text = NULL;
    rc = test_run_capture(cmd, &text);
    CHECK(rc == 0 && text && strstr(text, "gpsdrec prep taobao"), "info: %s", text ? text : "");
    free(text);
    snprintf(cmd, sizeof cmd, "printf '1,x,1,pv,1\\n' | %s prep --format taobao --input - --out %s_bad 2>&1", test_binary(), out);
    text = NULL;
    rc = test_run_capture(cmd, &text);
    CHECK(rc != 0 && text && strstr(text, "-:1:") && strstr(text, "id does not parse"), "stdin error: %s", text ? text : "");
    free(text);
    snprintf(cmd, sizeof cmd, "%s prep --format nope --input x --out y 2>&1", test_binary());
    text = NULL;
    rc = test_run_capture(cmd, &text);
    CHECK(rc != 0 && text && strstr(text, "unknown format"), "bad format: %s", text ? text : "");
    free(text);
    free(stats), free(in), free(out);
}
