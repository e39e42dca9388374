/* tools/sweep.py and tools/sweep_fit.py end to end, at tiny sizes on the CPU: the table's rows
 * against the runs' own result.json files and independent counts, skipping finished runs,
 * resuming interrupted ones to the same results, the time cap, the budget file's precedence, and
 * the fits against known constants. The plots need matplotlib and are not tested here. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dataset.h"
#include "json.h"
#include "test.h"
#include "util.h"

/* Tiny settings: 300 users, batch 32, two epochs per stage, a few seconds for the whole sweep. */
#define SWEEP_EXTRA "-- --threads 1 --batch_size 32 --warmup_steps 5 --n_negatives 64"

static int sh(const char *cmd, char **out)
{
    char full[8192];
    snprintf(full, sizeof full, "%s", cmd);
    return test_run_capture(full, out);
}

/* The tiny synthetic dataset, generated once per test run. */
static const char *tiny_data(void)
{
    static char path[700];
    if (!path[0]) {
        snprintf(path, sizeof path, "%s/sweep_data.gpsd", test_tmp_dir());
        char cmd[2000], *o;
        snprintf(cmd, sizeof cmd, "%s synth --synth.users 300 --synth.items 200 --synth.cates 10 --synth.topics 5 --out %s",
                 test_binary(), path);
        int st = sh(cmd, &o);
        if (st != 0)
            fprintf(stderr, "synth failed:\n%s\n", o);
        free(o);
    }
    return path;
}

static int run_sweep(const char *out_dir, const char *options, char **output)
{
    char cmd[4000];
    snprintf(cmd, sizeof cmd, "python3 tools/sweep.py --bin %s --data %s --out %s --no-plots %s", test_binary(),
             tiny_data(), out_dir, options);
    return sh(cmd, output);
}

static int load_json(const char *path, json_doc *doc)
{
    char *text;
    size_t len;
    gp_err e;
    if (gp_read_file(path, &text, &len, &e) != 0)
        return -1;
    int rc = json_parse(doc, text, len, path, &e);
    free(text);
    return rc;
}

static double num_of(const json_value *obj, const char *key)
{
    const json_value *v = json_get(obj, key);
    return v && v->type == JSON_NUMBER ? v->number : NAN;
}

static const char *str_of(const json_value *obj, const char *key)
{
    const json_value *v = json_get(obj, key);
    return v && v->type == JSON_STRING ? v->string : "";
}

/* The paper's N for LxH: L blocks of wq, wk, wv, wo (H x H), SwiGLU w1, w2, w3 (F x H with
 * F = 32 * ceil(floor(8H/3) / 32)) and two norm weights. */
static long long expected_block_params(long long layers, long long dim)
{
    long long hidden = 8 * dim / 3, ffn = 32 * ((hidden + 31) / 32);
    return layers * (4 * dim * dim + 3 * ffn * dim + 2 * dim);
}

/* The first object of array arr whose string members k1 and k2 are v1 and v2. */
static const json_value *find_item(const json_value *arr, const char *k1, const char *v1, const char *k2,
                                   const char *v2)
{
    for (int i = 0; arr && i < arr->n; i++)
        if (strcmp(str_of(&arr->items[i], k1), v1) == 0 && strcmp(str_of(&arr->items[i], k2), v2) == 0)
            return &arr->items[i];
    return NULL;
}

static const json_value *find_row(const json_value *rows, const char *size, const char *strategy)
{
    return find_item(rows, "size", size, "strategy", strategy);
}

static long long mtime_ns(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return -1;
    return (long long)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec;
}

static int count_substr(const char *s, const char *what)
{
    int n = 0;
    for (const char *p = strstr(s, what); p; p = strstr(p + 1, what))
        n++;
    return n;
}

TEST(sweep_table_skip_and_resume)
{
    const char *sizes[2] = {"L1H8A2", "L1H16A2"};
    const int dims[2] = {8, 16};
    const char *strats[2] = {"NT", "ST&SF"}, *keys[2] = {"nt", "stsf"};
    char out[700], path[1200], *o;
    snprintf(out, sizeof out, "%s/sweep_a", test_tmp_dir());
    int st = run_sweep(out, "--sizes L1H8A2,l1h16a2 --strategies 'nt,ST&SF' --seeds 1 --budget-epochs 2 " SWEEP_EXTRA, &o);
    REQUIRE(st == 0, "sweep exited %d:\n%s", st, o);
    CHECK(strstr(o, "6 runs trained to the end now, 0 skipped"), "%s", o);
    free(o);

    /* Step counts the runs must have made: two epochs of floor(records / 32). */
    dataset ds;
    gp_err e;
    ds_open_opts oo = ds_default_open_opts();
    REQUIRE(dataset_open(&ds, tiny_data(), &oo, &e) == 0, "%s", e.msg);
    long long fin_steps = 2 * (long long)(ds.split_count[DS_SPLIT_TRAIN] / 32);
    long long pre_steps = 2 * (long long)(ds.split_count[DS_SPLIT_PRETRAIN] / 32);
    dataset_close(&ds);

    json_doc doc;
    snprintf(path, sizeof path, "%s/sweep.json", out);
    REQUIRE(load_json(path, &doc) == 0, "cannot parse %s", path);
    const json_value *rows = json_get(doc.root, "rows");
    REQUIRE(rows && rows->type == JSON_ARRAY && rows->n == 4, "expected 4 rows in %s", path);
    double auc_small[2] = {0, 0};
    for (int si = 0; si < 2; si++)
        for (int k = 0; k < 2; k++) {
            const json_value *r = find_row(rows, sizes[si], strats[k]);
            REQUIRE(r, "no row for %s %s", sizes[si], strats[k]);
            CHECK(strcmp(str_of(r, "status"), "done") == 0, "%s %s status %s", sizes[si], strats[k], str_of(r, "status"));
            CHECK(num_of(r, "params_N") == (double)expected_block_params(1, dims[si]), "%s N %.0f, expected %lld",
                  sizes[si], num_of(r, "params_N"), expected_block_params(1, dims[si]));
            CHECK(num_of(r, "steps") == (double)fin_steps, "%s %s: %.0f steps, expected %lld", sizes[si], strats[k],
                  num_of(r, "steps"), fin_steps);
            /* The row's metrics are the run's own result.json. */
            json_doc res;
            snprintf(path, sizeof path, "%s/runs/%s/seed1/%s/result.json", out, sizes[si], keys[k]);
            REQUIRE(load_json(path, &res) == 0, "cannot parse %s", path);
            double test_auc = num_of(res.root, "test_auc"), train_auc = num_of(res.root, "train_auc");
            CHECK(test_auc > 0 && test_auc < 1, "%s: test AUC %g", path, test_auc);
            CHECK(num_of(r, "test_auc") == test_auc, "%s %s: table %.9g vs result.json %.9g", sizes[si], strats[k],
                  num_of(r, "test_auc"), test_auc);
            CHECK(num_of(r, "test_logloss") == num_of(res.root, "test_logloss"), "%s %s logloss", sizes[si], strats[k]);
            CHECK_NEAR(num_of(r, "train_test_gap"), train_auc - test_auc, 1e-12);
            json_free(&res);
            CHECK(num_of(r, "wall_s") > 0, "%s %s wall %g", sizes[si], strats[k], num_of(r, "wall_s"));
            CHECK(strcmp(str_of(r, "device"), "cpu") == 0 && num_of(r, "gpu_hours") == 0, "%s %s: device %s, %g GPU h",
                  sizes[si], strats[k], str_of(r, "device"), num_of(r, "gpu_hours"));
            if (k == 1)
                CHECK(num_of(r, "pretrain_steps") == (double)pre_steps, "pretrain steps %.0f, expected %lld",
                      num_of(r, "pretrain_steps"), pre_steps);
            else
                CHECK(json_get(r, "pretrain_steps")->type == JSON_NULL, "NT has no pretraining");
            if (si == 0)
                auc_small[k] = test_auc;
        }
    json_free(&doc);

    /* The CSV: a header and the same four rows. */
    char *csv;
    size_t len;
    snprintf(path, sizeof path, "%s/sweep.csv", out);
    REQUIRE(gp_read_file(path, &csv, &len, &e) == 0, "%s", e.msg);
    CHECK(strncmp(csv, "size,n_layers,dim,n_heads,strategy,seed,status,params_N,", 56) == 0, "header: %.80s", csv);
    CHECK(count_substr(csv, "\n") == 5, "expected 5 lines:\n%s", csv);
    CHECK(count_substr(csv, "\nL1H16A2,1,16,2,ST&SF,1,done,4128,") == 1, "no L1H16A2 ST&SF row:\n%s", csv);
    free(csv);

    /* Nothing is retrained the second time: every run is reported skipped, no file changes. */
    const char *files[] = {"L1H8A2/seed1/pretrain/result.json", "L1H8A2/seed1/nt/result.json",
                           "L1H16A2/seed1/stsf/result.json", "L1H16A2/seed1/stsf/model.safetensors"};
    long long before[4];
    for (int i = 0; i < 4; i++) {
        snprintf(path, sizeof path, "%s/runs/%s", out, files[i]);
        before[i] = mtime_ns(path);
        CHECK(before[i] > 0, "%s missing", path);
    }
    snprintf(path, sizeof path, "%s/runs/L1H8A2/seed1/nt/checkpoints", out);
    CHECK(mtime_ns(path) < 0, "finished runs keep no resumable checkpoints: %s exists", path);
    st = run_sweep(out, "--sizes L1H8A2,L1H16A2 --strategies nt,stsf --budget-epochs 2 " SWEEP_EXTRA, &o);
    CHECK(st == 0, "rerun exited %d:\n%s", st, o);
    CHECK(count_substr(o, "skipped (finished: ") == 6 && strstr(o, "0 runs trained to the end now, 6 skipped"), "%s", o);
    free(o);
    for (int i = 0; i < 4; i++) {
        snprintf(path, sizeof path, "%s/runs/%s", out, files[i]);
        CHECK(mtime_ns(path) == before[i], "%s was rewritten by the second sweep", path);
    }

    /* Interrupted runs (every run stops after 3 steps) continue where they stopped and end with
     * exactly the results of runs that were never interrupted. */
    snprintf(out, sizeof out, "%s/sweep_b", test_tmp_dir());
    st = run_sweep(out, "--sizes L1H8A2 --strategies nt,stsf --budget-epochs 2 " SWEEP_EXTRA " --stop_after_steps 3", &o);
    CHECK(st == 3, "an interrupted sweep exits 3, got %d:\n%s", st, o);
    CHECK(strstr(o, "stopped at step 3 of") && strstr(o, "blocked: its pretraining"), "%s", o);
    free(o);
    snprintf(path, sizeof path, "%s/runs/L1H8A2/seed1/nt/result.json", out);
    CHECK(mtime_ns(path) < 0, "a stopped run has no result.json");
    st = run_sweep(out, "--sizes L1H8A2 --strategies nt,stsf --budget-epochs 2 " SWEEP_EXTRA, &o);
    CHECK(st == 0, "resumed sweep exited %d:\n%s", st, o);
    CHECK(count_substr(o, "resuming") == 2, "pretraining and NT resume:\n%s", o);
    free(o);
    snprintf(path, sizeof path, "%s/sweep.json", out);
    REQUIRE(load_json(path, &doc) == 0, "cannot parse %s", path);
    rows = json_get(doc.root, "rows");
    for (int k = 0; k < 2; k++) {
        const json_value *r = find_row(rows, "L1H8A2", strats[k]);
        REQUIRE(r, "no resumed row for %s", strats[k]);
        CHECK(num_of(r, "test_auc") == auc_small[k], "%s resumed: test AUC %.9g, uninterrupted %.9g", strats[k],
              num_of(r, "test_auc"), auc_small[k]);
        CHECK(num_of(r, "steps") == (double)fin_steps, "%s resumed: %.0f steps", strats[k], num_of(r, "steps"));
    }
    json_free(&doc);
}

TEST(sweep_budget_file_and_time_cap)
{
    char out[700], budget[700], path[1200], opts[2000], *o;
    snprintf(out, sizeof out, "%s/sweep_cap", test_tmp_dir());
    snprintf(budget, sizeof budget, "%s/budget.conf", test_tmp_dir());
    /* A cap no run can meet: the probe's 7 steps are all the run gets. The size-scoped warmup and
     * the finetune lr show which settings reach gpsdrec, and that NT's own lr wins over the budget. */
    const char *text = "# test budget: a gpsdrec config, with the driver's lines behind #@\n"
                       "epochs = 3   # every stage\n"
                       "batch_size = 32\n"
                       "n_negatives = 64\n"
                       "finetune.lr = 2e-3\n"
                       "#@ probe_steps = 7\n"
                       "#@ time_cap = 0.001\n"
                       "#@ L1H8A2.warmup_steps = 9\n"
                       "#@ L4H64A4.warmup_steps = 11\n"
                       "#@ L1H8A2.finetune.min_lr = 1e-5\n"  /* nt.conf sets it again: a warning */
                       "#@ nt.finetune.weight_decay = 0.03\n"
                       "#@ L1H8A2.nt.finetune.lr = 3e-3\n"
                       "#@ L4H64A4.nt.finetune.lr = 4e-3\n";
    gp_err e;
    REQUIRE(gp_write_atomic(budget, text, strlen(text), &e) == 0);
    snprintf(opts, sizeof opts, "--sizes L1H8A2 --strategies nt,stsf --budget %s -- --threads 1", budget);
    int st = run_sweep(out, opts, &o);
    REQUIRE(st == 0, "sweep exited %d:\n%s", st, o);
    CHECK(count_substr(o, "capped at 7 steps") == 3, "all three runs capped:\n%s", o);
    CHECK(count_substr(o, "does not reach NT") == 1 && strstr(o, "budget.conf:10") &&
              strstr(o, "#@ L1H8A2.nt.finetune.min_lr = 1e-5"), "one warning for the shadowed line:\n%s", o);
    free(o);
    json_doc doc;
    snprintf(path, sizeof path, "%s/sweep.json", out);
    REQUIRE(load_json(path, &doc) == 0, "cannot parse %s", path);
    const json_value *rows = json_get(doc.root, "rows");
    dataset ds;
    ds_open_opts oo = ds_default_open_opts();
    REQUIRE(dataset_open(&ds, tiny_data(), &oo, &e) == 0, "%s", e.msg);
    long long planned = 3 * (long long)(ds.split_count[DS_SPLIT_TRAIN] / 32);
    dataset_close(&ds);
    for (int k = 0; k < 2; k++) {
        const json_value *r = find_row(rows, "L1H8A2", k ? "ST&SF" : "NT");
        REQUIRE(r);
        CHECK(strcmp(str_of(r, "status"), "done") == 0 && num_of(r, "steps") == 7, "status %s, %.0f steps",
              str_of(r, "status"), num_of(r, "steps"));
        CHECK(json_get(r, "capped")->type == JSON_BOOL && json_get(r, "capped")->boolean, "capped flag");
        CHECK(num_of(r, "planned_steps") == (double)planned, "planned %.0f, expected %lld",
              num_of(r, "planned_steps"), planned);
    }
    json_free(&doc);
    char *conf;
    size_t len;
    snprintf(path, sizeof path, "%s/runs/L1H8A2/seed1/nt/settings.conf", out);
    REQUIRE(gp_read_file(path, &conf, &len, &e) == 0, "%s", e.msg);
    CHECK(strstr(conf, "\nwarmup_steps         = 9 ") && strstr(conf, "\nepochs               = 3 "), "%s", conf);
    CHECK(strstr(conf, "\nlr                   = 0.003 ") && strstr(conf, "\nmax_steps            = 7 ") &&
              strstr(conf, "\nmin_lr               = 0.0005 ") && strstr(conf, "\nweight_decay         = 0.03 "),
          "NT: its own min_lr over the size-scoped one, the strategy-scoped lr and weight decay over its "
          "own, the cap's max_steps:\n%s", conf);
    free(conf);
    snprintf(path, sizeof path, "%s/runs/L1H8A2/seed1/stsf/settings.conf", out);
    REQUIRE(gp_read_file(path, &conf, &len, &e) == 0, "%s", e.msg);
    CHECK(strstr(conf, "\nlr                   = 0.002 ") && strstr(conf, "\nmin_lr               = 1e-05 ") &&
              !strstr(conf, "= 0.03 "), "ST&SF takes the budget's lr and size-scoped min_lr, not NT's:\n%s", conf);
    free(conf);
    snprintf(path, sizeof path, "%s/runs/L1H8A2/seed1/stsf/sweep_budget_strategy.conf", out);
    CHECK(!test_file_exists(path), "ST&SF has no strategy-scoped settings, so no %s", path);
    snprintf(path, sizeof path, "%s/runs/L1H8A2/seed1/nt/sweep_budget_strategy.conf", out);
    REQUIRE(gp_read_file(path, &conf, &len, &e) == 0, "%s", e.msg);
    CHECK(strstr(conf, "finetune.weight_decay = 0.03") && strstr(conf, "finetune.lr = 3e-3") && !strstr(conf, "4e-3"),
          "%s", conf);
    free(conf);
    /* Only the size's own #@ settings reach its runs. */
    snprintf(path, sizeof path, "%s/runs/L1H8A2/seed1/stsf/sweep_budget.conf", out);
    REQUIRE(gp_read_file(path, &conf, &len, &e) == 0, "%s", e.msg);
    CHECK(strstr(conf, "warmup_steps = 9") && !strstr(conf, "= 11"), "%s", conf);
    free(conf);
}

TEST(sweep_rejects_bad_arguments)
{
    char out[700], cmd[2000], *o;
    snprintf(out, sizeof out, "%s/sweep_bad", test_tmp_dir());
    struct {
        const char *opts, *want;
    } cases[] = {
        {"--sizes L1H7A2", "L1H7A2"},
        {"--sizes L1H8", "LxHyAz"},
        {"--strategies nt,xyz", "xyz"},
        {"--seeds 1,x", "seed"},
        {"--budget /nonexistent/budget.conf", "/nonexistent/budget.conf"},
        {"--budget-steps 5 --budget-epochs 2", "not allowed with"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int st = run_sweep(out, cases[i].opts, &o);
        CHECK(st == 2 && strstr(o, cases[i].want), "`%s`: exit %d, expected 2 with \"%s\":\n%s", cases[i].opts, st,
              cases[i].want, o);
        free(o);
    }
    /* A `#@` line must be the driver's key or scoped to a size. */
    char budget[700], opts[1000];
    snprintf(budget, sizeof budget, "%s/bad_budget.conf", test_tmp_dir());
    const char *text = "epochs = 2\n#@ L4H64A4.time_cap = 30\n#@ epochs = 3\n";
    gp_err e;
    REQUIRE(gp_write_atomic(budget, text, strlen(text), &e) == 0);
    snprintf(opts, sizeof opts, "--budget %s", budget);
    int st = run_sweep(out, opts, &o);
    CHECK(st == 2 && strstr(o, "bad_budget.conf:3") && strstr(o, "plain line"), "exit %d:\n%s", st, o);
    free(o);
    /* A strategy scopes finetuning settings only. */
    const char *bad_scopes[] = {"#@ L4H64A4.nt.time_cap = 30\n", "#@ stsf.pretrain.lr = 1e-3\n"};
    for (int i = 0; i < 2; i++) {
        char t[200];
        snprintf(t, sizeof t, "epochs = 2\n%s", bad_scopes[i]);
        REQUIRE(gp_write_atomic(budget, t, strlen(t), &e) == 0);
        st = run_sweep(out, opts, &o);
        CHECK(st == 2 && strstr(o, "bad_budget.conf:2") && strstr(o, "only finetuning settings"), "`%s`: exit %d:\n%s",
              bad_scopes[i], st, o);
        free(o);
    }
    snprintf(cmd, sizeof cmd, "python3 tools/sweep.py --data /nonexistent/x.gpsd --out %s --bin %s", out, test_binary());
    st = sh(cmd, &o);
    CHECK(st == 2 && strstr(o, "/nonexistent/x.gpsd") && strstr(o, "gpsdrec prep"), "exit %d:\n%s", st, o);
    free(o);
}

/* Every shipped budget reads, and plans the eight paper sizes with their caps (a dry run). */
TEST(sweep_shipped_budgets_plan)
{
    const char *budgets[] = {"amazon_beauty", "ml100k", "synthetic_30m"};
    for (int i = 0; i < 3; i++) {
        char out[700], opts[1000], *o;
        snprintf(out, sizeof out, "%s/sweep_dry_%s", test_tmp_dir(), budgets[i]);
        snprintf(opts, sizeof opts, "--budget configs/sweep/%s.conf --dry-run", budgets[i]);
        int st = run_sweep(out, opts, &o);
        CHECK(st == 0 && count_substr(o, "would run (time cap ") == 24 &&
                  strstr(o, "L24H1024A16 seed 1 ST&SF         would run (time cap "),
              "%s: exit %d:\n%s", budgets[i], st, o);
        free(o);
    }
}

/* The scheduler's own checks on simulated runs (tools/sweep.py --self-test): dependency order, the
 * longest chain first, the list-scheduling bound, GPU-seconds that add up to each GPU's busy time,
 * shared and exclusive slots, draining for a large run, skipped runs, the deadline (with and
 * without estimates, and scaled by how finished runs compared with their estimates), the hard stop
 * and a failed pretraining blocking its finetunings. */
TEST(sweep_scheduler_self_test)
{
    char *o;
    int st = sh("python3 tools/sweep.py --self-test", &o);
    CHECK(st == 0 && strstr(o, "scheduler self-test passed"), "exit %d:\n%s", st, o);
    free(o);
}

/* One invocation's facts about a run, from its sweep_run.json. */
typedef struct {
    char gpu[16];
    double t_start, t_end, gpu_s, wall_s;
    int invocations;
} run_facts;

static int read_run(const char *out, const char *size, const char *run, run_facts *f)
{
    char path[1200];
    json_doc doc;
    memset(f, 0, sizeof *f);
    snprintf(path, sizeof path, "%s/runs/%s/seed1/%s/sweep_run.json", out, size, run);
    if (load_json(path, &doc) != 0)
        return -1;
    const json_value *inv = json_get(doc.root, "invocations");
    if (inv && inv->type == JSON_ARRAY && inv->n > 0) {
        const json_value *last = &inv->items[inv->n - 1];
        snprintf(f->gpu, sizeof f->gpu, "%s", str_of(last, "gpu"));
        f->t_start = num_of(last, "t_start");
        f->t_end = num_of(last, "t_end");
        f->invocations = inv->n;
    }
    f->gpu_s = num_of(doc.root, "gpu_s");
    f->wall_s = num_of(doc.root, "wall_s");
    json_free(&doc);
    return 0;
}

static double row_auc(const char *out, const char *size, const char *strategy, char *status, size_t status_len)
{
    char path[1200];
    json_doc doc;
    snprintf(path, sizeof path, "%s/sweep.json", out);
    if (load_json(path, &doc) != 0)
        return NAN;
    const json_value *r = find_row(json_get(doc.root, "rows"), size, strategy);
    double auc = r ? num_of(r, "test_auc") : NAN;
    if (status)
        snprintf(status, status_len, "%s", r ? str_of(r, "status") : "(no row)");
    json_free(&doc);
    return auc;
}

/* Runs spread over two (fake) GPU ids on the CPU backend, two at a time on each: a deadline that
 * has passed starts nothing and a later invocation runs it all; every run sees its own
 * CUDA_VISIBLE_DEVICES, a finetuning starts after its pretraining, runs overlap; a hard stop
 * leaves resumable runs that end with the results of uninterrupted ones; a pretraining whose
 * model is gone is trained again when a finetuning still needs it. */
TEST(sweep_parallel_gpus_deadline_resume)
{
    const char *sizes[2] = {"L1H8A2", "L1H16A2"}, *runs[3] = {"pretrain", "nt", "stsf"};
    const char *common = "--sizes L1H8A2,L1H16A2 --strategies nt,stsf --budget-epochs 2 --gpus 0,1 --jobs-per-gpu 2 "
                         "--device cpu";
    char out[700], opts[2000], path[1200], status[64], *o;
    snprintf(out, sizeof out, "%s/sweep_par", test_tmp_dir());
    snprintf(opts, sizeof opts, "%s --deadline-min 0 " SWEEP_EXTRA, common);
    int st = run_sweep(out, opts, &o);
    CHECK(st == 3 && count_substr(o, "not started: the deadline passed") == 6 &&
              strstr(o, "0 runs trained to the end now, 0 skipped (finished before), 6 unfinished"),
          "a passed deadline starts nothing (exit %d):\n%s", st, o);
    free(o);
    row_auc(out, "L1H8A2", "NT", status, sizeof status);
    CHECK(strcmp(status, "not started") == 0, "the table lists the run as %s", status);

    snprintf(opts, sizeof opts, "%s " SWEEP_EXTRA, common);
    st = run_sweep(out, opts, &o);
    REQUIRE(st == 0 && strstr(o, "6 runs trained to the end now, 0 skipped"), "exit %d:\n%s", st, o);
    free(o);
    run_facts f[2][3];
    double auc[2][2];
    for (int si = 0; si < 2; si++) {
        for (int k = 0; k < 3; k++) {
            REQUIRE(read_run(out, sizes[si], runs[k], &f[si][k]) == 0, "%s %s: no sweep_run.json", sizes[si], runs[k]);
            run_facts *x = &f[si][k];
            CHECK(strcmp(x->gpu, "0") == 0 || strcmp(x->gpu, "1") == 0, "%s %s ran on GPU '%s'", sizes[si], runs[k], x->gpu);
            CHECK(x->gpu_s > 0 && x->gpu_s <= x->wall_s + 2, "%s %s: %g GPU-seconds, %g s wall", sizes[si], runs[k],
                  x->gpu_s, x->wall_s);
            char want[64], *log;
            size_t len;
            gp_err e;
            snprintf(path, sizeof path, "%s/runs/%s/seed1/%s/stdout.log", out, sizes[si], runs[k]);
            snprintf(want, sizeof want, "[CUDA_VISIBLE_DEVICES=%s]", x->gpu);
            REQUIRE(gp_read_file(path, &log, &len, &e) == 0, "%s", e.msg);
            CHECK(strstr(log, want) != NULL, "%s has no %s", path, want);
            free(log);
        }
        CHECK(f[si][2].t_start >= f[si][0].t_end, "%s: ST&SF started at %.3f, its pretraining ended at %.3f", sizes[si],
              f[si][2].t_start, f[si][0].t_end);
        auc[si][0] = row_auc(out, sizes[si], "NT", NULL, 0);
        auc[si][1] = row_auc(out, sizes[si], "ST&SF", NULL, 0);
    }
    int overlap = 0;
    for (int a = 0; a < 6; a++)
        for (int b = a + 1; b < 6; b++) {
            run_facts *x = &f[a / 3][a % 3], *y = &f[b / 3][b % 3];
            overlap += x->t_start < y->t_end && y->t_start < x->t_end;
        }
    CHECK(overlap >= 2, "only %d pairs of runs overlapped in time", overlap);

    /* A hard stop 30 ms in: the runs going are stopped; a rerun ends them with the same results. */
    snprintf(out, sizeof out, "%s/sweep_par_stop", test_tmp_dir());
    snprintf(opts, sizeof opts, "%s --hard-stop-min 0.0005 " SWEEP_EXTRA, common);
    st = run_sweep(out, opts, &o);
    CHECK(st == 3 && strstr(o, "still running at the hard stop") && strstr(o, "stopped at the sweep's hard stop"),
          "exit %d:\n%s", st, o);
    free(o);
    row_auc(out, "L1H16A2", "NT", status, sizeof status);
    CHECK(strcmp(status, "deadline") == 0, "a run cut at the hard stop is listed as %s", status);
    snprintf(opts, sizeof opts, "%s " SWEEP_EXTRA, common);
    st = run_sweep(out, opts, &o);
    CHECK(st == 0, "exit %d:\n%s", st, o);
    free(o);
    for (int si = 0; si < 2; si++)
        for (int k = 0; k < 2; k++) {
            double a = row_auc(out, sizes[si], k ? "ST&SF" : "NT", status, sizeof status);
            CHECK(a == auc[si][k] && strcmp(status, "done") == 0, "%s %s after the hard stop: %.9g (%s), uninterrupted %.9g",
                  sizes[si], k ? "ST&SF" : "NT", a, status, auc[si][k]);
        }

    /* The sweep directory without a pretrained model (as sweep_device.sh carries it) and with
     * ST&SF unfinished: the pretraining runs again, then ST&SF, to the same result. */
    snprintf(out, sizeof out, "%s/sweep_par", test_tmp_dir());
    snprintf(path, sizeof path, "%s/runs/L1H16A2/seed1/pretrain/model.safetensors", out);
    CHECK(remove(path) == 0, "cannot remove %s", path);
    snprintf(path, sizeof path, "%s/runs/L1H16A2/seed1/stsf/result.json", out);
    CHECK(remove(path) == 0, "cannot remove %s", path);
    snprintf(opts, sizeof opts, "%s " SWEEP_EXTRA, common);
    st = run_sweep(out, opts, &o);
    CHECK(st == 0 && strstr(o, "L1H16A2 seed 1 pretrain          its model.safetensors is missing") &&
              strstr(o, "2 runs trained to the end now, 4 skipped"),
          "exit %d:\n%s", st, o);
    free(o);
    double a = row_auc(out, "L1H16A2", "ST&SF", status, sizeof status);
    CHECK(a == auc[1][1], "ST&SF after pretraining again: %.9g, before %.9g", a, auc[1][1]);
}

/* A finished run with AUC 0.5 on train and on test (a model that gives every sample one
 * probability) is marked collapsed: kept in the table, named in the report, out of the fits. A run
 * at 0.5 on test alone (it learned its training samples) stays a point of the curve. */
static void set_aucs(const char *result_path, double test_auc, double train_auc)
{
    char cmd[3000], *o;
    snprintf(cmd, sizeof cmd,
             "python3 -c \"import json,sys; p=sys.argv[1]; d=json.load(open(p)); d['test_auc']=%g; d['train_auc']=%g; "
             "json.dump(d, open(p, 'w'))\" %s",
             test_auc, train_auc, result_path);
    int st = sh(cmd, &o);
    CHECK(st == 0, "editing %s: %s", result_path, o);
    free(o);
}

TEST(sweep_marks_collapsed_runs)
{
    char out[700], path[1200], cmd[2000], *o;
    snprintf(out, sizeof out, "%s/sweep_collapse", test_tmp_dir());
    int st = run_sweep(out, "--sizes L1H8A2,L1H16A2,L2H16A2 --strategies nt --seeds 1 --budget-epochs 1 " SWEEP_EXTRA, &o);
    REQUIRE(st == 0, "sweep exited %d:\n%s", st, o);
    CHECK(!strstr(o, "collapsed"), "a run of the tiny sweep is marked collapsed:\n%s", o);
    free(o);

    /* L1H16A2 collapsed on both splits; L2H16A2 at chance on test only */
    snprintf(path, sizeof path, "%s/runs/L1H16A2/seed1/nt/result.json", out);
    set_aucs(path, 0.5, 0.5005);
    snprintf(path, sizeof path, "%s/runs/L2H16A2/seed1/nt/result.json", out);
    set_aucs(path, 0.5, 0.71);
    snprintf(cmd, sizeof cmd, "python3 tools/sweep.py --report-only --no-plots --out %s", out);
    st = sh(cmd, &o);
    REQUIRE(st == 0, "report exited %d:\n%s", st, o);
    CHECK(count_substr(o, "collapsed: ") == 1 && strstr(o, "collapsed: L1H16A2 seed 1 NT: AUC 0.5000 on test and 0.5005"),
          "%s", o);
    CHECK(strstr(o, "3 runs (3 finished)"), "a collapsed run is still a finished one:\n%s", o);
    free(o);

    json_doc doc;
    snprintf(path, sizeof path, "%s/sweep.json", out);
    REQUIRE(load_json(path, &doc) == 0, "cannot parse %s", path);
    const json_value *rows = json_get(doc.root, "rows");
    CHECK(strcmp(str_of(find_row(rows, "L1H16A2", "NT"), "status"), "collapsed") == 0, "L1H16A2 not collapsed");
    CHECK(strcmp(str_of(find_row(rows, "L2H16A2", "NT"), "status"), "done") == 0, "L2H16A2 (0.71 on train) marked");
    CHECK(strcmp(str_of(find_row(rows, "L1H8A2", "NT"), "status"), "done") == 0, "L1H8A2 marked");
    CHECK(num_of(json_get(doc.root, "totals"), "collapsed") == 1, "totals.collapsed is not 1");
    json_free(&doc);

    snprintf(path, sizeof path, "%s/fits.json", out);
    REQUIRE(load_json(path, &doc) == 0, "cannot parse %s", path);
    const json_value *auc_fit = find_item(json_get(doc.root, "fits"), "strategy", "NT", "metric", "auc");
    CHECK(auc_fit && num_of(auc_fit, "points") == 2, "the NT fit should use the 2 uncollapsed points, has %g",
          auc_fit ? num_of(auc_fit, "points") : -1.0);
    json_free(&doc);

    snprintf(path, sizeof path, "%s/sweep.csv", out);
    char *csv;
    size_t len;
    gp_err e;
    REQUIRE(gp_read_file(path, &csv, &len, &e) == 0, "%s", e.msg);
    CHECK(count_substr(csv, ",collapsed,") == 1, "sweep.csv:\n%s", csv);
    free(csv);
}

TEST(sweep_fit_self_test)
{
    char *o;
    int st = sh("python3 tools/sweep_fit.py --self-test", &o);
    CHECK(st == 0 && strstr(o, "self-test passed"), "exit %d:\n%s", st, o);
    free(o);
}

/* Points from known constants, written here and fitted by the command-line tool: exact points give
 * the constants back, noisy ones within their standard errors. */
TEST(sweep_fit_recovers_known_constants)
{
    const double ns[6] = {13376, 53504, 213504, 803840, 3213312, 25305088};
    const double ta = 0.74, tb = 1.3, tc = 0.31; /* AUC = a - b N^-c */
    const double la = 0.45, lb = 0.62, lc = 0.22; /* loss = a + b N^-c */
    const double noise[3] = {0.0015, -0.001, -0.0005};
    char path[700], fits[700], cmd[2000], *o;
    for (int noisy = 0; noisy < 2; noisy++) {
        snprintf(path, sizeof path, "%s/fit_table%d.json", test_tmp_dir(), noisy);
        snprintf(fits, sizeof fits, "%s/fits%d.json", test_tmp_dir(), noisy);
        char *text = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&text, &len);
        fprintf(f, "{\"rows\": [");
        int first = 1;
        for (int i = 0; i < 6; i++)
            for (int s = 0; s < (noisy ? 3 : 1); s++) {
                double eps = noisy ? noise[(i + s) % 3] : 0;
                fprintf(f, "%s{\"strategy\": \"ST&SF\", \"status\": \"done\", \"params_N\": %.0f, \"test_auc\": %.17g, "
                           "\"test_logloss\": %.17g}",
                        first ? "" : ",", ns[i], ta - tb * pow(ns[i], -tc) + eps, la + lb * pow(ns[i], -lc) - eps / 2);
                first = 0;
            }
        fprintf(f, "]}\n");
        fclose(f);
        gp_err e;
        REQUIRE(gp_write_atomic(path, text, len, &e) == 0);
        free(text);
        snprintf(cmd, sizeof cmd, "python3 tools/sweep_fit.py %s --json %s", path, fits);
        int st = sh(cmd, &o);
        CHECK(st == 0 && strstr(o, "| ST&SF | AUC = a - b*N^-c |") && strstr(o, "paper (Figure 5)"), "exit %d:\n%s", st, o);
        free(o);
        json_doc doc;
        REQUIRE(load_json(fits, &doc) == 0, "cannot parse %s", fits);
        const json_value *list = json_get(doc.root, "fits");
        REQUIRE(list && list->type == JSON_ARRAY && list->n == 2);
        for (int m = 0; m < 2; m++) {
            const json_value *fit = &list->items[m];
            const int is_auc = strcmp(str_of(fit, "metric"), "auc") == 0;
            const double want[3] = {is_auc ? ta : la, is_auc ? tb : lb, is_auc ? tc : lc};
            const char *names[3] = {"a", "b", "c"}, *ses[3] = {"se_a", "se_b", "se_c"};
            for (int k = 0; k < 3; k++) {
                double got = num_of(fit, names[k]), se = num_of(fit, ses[k]);
                if (!noisy)
                    CHECK(fabs(got - want[k]) <= 1e-6 * fmax(1, fabs(want[k])), "exact %s: %s = %.9g, expected %.9g",
                          str_of(fit, "metric"), names[k], got, want[k]);
                else
                    CHECK(se > 0 && fabs(got - want[k]) <= 4 * se, "noisy %s: %s = %.5f ± %.5f, truth %.5f",
                          str_of(fit, "metric"), names[k], got, se, want[k]);
            }
            CHECK(num_of(fit, "r2") > (noisy ? 0.9 : 1 - 1e-9), "R^2 %.9g", num_of(fit, "r2"));
        }
        json_free(&doc);
    }
}

/* The table without its last column, run_dir, which names the work directory. */
static void drop_run_dir_column(char *csv)
{
    char *w = csv;
    for (char *line = csv; *line;) {
        char *end = strchr(line, '\n');
        size_t n = end ? (size_t)(end - line) : strlen(line);
        size_t keep = n;
        while (keep > 0 && line[keep - 1] != ',')
            keep--;
        memmove(w, line, keep);
        w += keep;
        *w++ = '\n';
        line += n + (end ? 1 : 0);
    }
    *w = 0;
}

static int run_device_script(const char *work, const char *out, const char *state, char **o)
{
    char cmd[4000];
    snprintf(cmd, sizeof cmd,
             "SWEEP_WORK=%s SWEEP_DATASETS=beauty GPSDREC_SHARED=%s SWEEP_SIZES=L1H8A2,L2H16A2 SWEEP_DEVICE=cpu "
             "SWEEP_EXTRA='--max_steps 4 --threads 1' SWEEP_WALL_S=400 JOBS_PER_GPU=1 bash tools/sweep_device.sh %s %s",
             work, test_shared_dir(), out, state);
    return sh(cmd, o);
}

/* tools/sweep_device.sh, the one-call device script, on the CPU: a beauty-only call returns the
 * beauty table, JSON, summary and state and nothing of the synthetic sweep, and a second call in
 * a fresh work directory restores that state and skips every finished run, to the same table. */
TEST(sweep_device_script_beauty_only_and_resume)
{
    char beauty[900], work[700], out[700], work2[700], out2[700], path[1200], state[1200], *o;
    snprintf(beauty, sizeof beauty, "%s/data/amazon-beauty/s3rec/Beauty.txt", test_shared_dir());
    REQUIRE(test_file_exists(beauty), "%s is missing (GPSDREC_SHARED)", beauty);
    snprintf(work, sizeof work, "%s/device_work", test_tmp_dir());
    snprintf(out, sizeof out, "%s/device_out", test_tmp_dir());
    int st = run_device_script(work, out, "", &o);
    REQUIRE(st == 0, "sweep_device.sh exited %d:\n%s", st, o);
    CHECK(strstr(o, "6 runs trained to the end now, 0 skipped"), "%s", o);
    free(o);
    static const char *const want[] = {"summary.md", "beauty.csv", "beauty.json", "sweep_state.tgz"};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", out, want[i]);
        CHECK(test_file_exists(path), "%s is missing", path);
    }
    snprintf(path, sizeof path, "%s/synth.csv", out);
    CHECK(!test_file_exists(path), "a beauty-only call returned %s", path);
    snprintf(path, sizeof path, "%s/synth", work);
    CHECK(!test_file_exists(path), "a beauty-only call created %s", path);

    char *summary, *csv;
    size_t len;
    gp_err e;
    snprintf(path, sizeof path, "%s/summary.md", out);
    REQUIRE(gp_read_file(path, &summary, &len, &e) == 0, "%s", e.msg);
    CHECK(strstr(summary, "## beauty") && !strstr(summary, "## synth") && strstr(summary, "Sweep command: tools/sweep.py") &&
              strstr(summary, "6 runs (6 finished)"),
          "summary.md:\n%s", summary);
    free(summary);
    snprintf(path, sizeof path, "%s/beauty.csv", out);
    REQUIRE(gp_read_file(path, &csv, &len, &e) == 0, "%s", e.msg);
    CHECK(count_substr(csv, ",done,") == 4, "beauty.csv should hold 4 finished finetunings:\n%s", csv);

    snprintf(state, sizeof state, "%s/sweep_state.tgz", out);
    snprintf(work2, sizeof work2, "%s/device_work2", test_tmp_dir());
    snprintf(out2, sizeof out2, "%s/device_out2", test_tmp_dir());
    st = run_device_script(work2, out2, state, &o);
    REQUIRE(st == 0, "sweep_device.sh with the state exited %d:\n%s", st, o);
    CHECK(strstr(o, "6 finished runs") && strstr(o, "0 runs trained to the end now, 6 skipped"), "%s", o);
    free(o);
    char *csv2;
    snprintf(path, sizeof path, "%s/beauty.csv", out2);
    REQUIRE(gp_read_file(path, &csv2, &len, &e) == 0, "%s", e.msg);
    drop_run_dir_column(csv);
    drop_run_dir_column(csv2);
    CHECK(strcmp(csv, csv2) == 0, "the resumed table differs:\n%s\nagainst\n%s", csv2, csv);
    free(csv);
    free(csv2);
}
