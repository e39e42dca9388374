/* Config files, overrides, scopes and every error path of the settings. */
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "config.h"
#include "settings.h"
#include "test.h"

static char *write_tmp(const char *name, const char *text)
{
    char *path = gp_path_join(test_tmp_dir(), name);
    gp_err e;
    if (gp_write_atomic(path, text, strlen(text), &e) != 0)
        test_failure(__FILE__, __LINE__, "%s", e.msg);
    return path;
}

/* Resolve text for a stage; returns 0/-1 and leaves the message in e. */
static int resolve_text(const char *text, int stage, gp_settings *s, gp_err *e)
{
    cfg_list l = {0};
    int rc = cfg_parse_text(&l, settings_stage_defaults, "stage defaults", e);
    char *path = write_tmp("t.conf", text);
    if (rc == 0)
        rc = cfg_parse_file(&l, path, e);
    if (rc == 0)
        rc = settings_resolve(&l, stage, s, NULL, e);
    if (rc == 0)
        rc = settings_validate(s, e);
    cfg_list_free(&l);
    free(path);
    return rc;
}

TEST(config_values_comments_quotes)
{
    gp_settings s;
    gp_err e = {{0}};
    REQUIRE(resolve_text("# a comment\n\n  dim = 128   # trailing comment\nn_heads=8\nout_dir = \"runs/a #1\"\n"
                         "l2_norm = off\nattention = bidirectional\nmax_steps = 1e3\nlr = 2.5e-3\n",
                         STAGE_PRETRAIN, &s, &e) == 0,
            "%s", e.msg);
    CHECK(s.dim == 128);
    CHECK(s.n_heads == 8);
    CHECK(strcmp(s.out_dir, "runs/a #1") == 0, "out_dir %s", s.out_dir);
    CHECK(s.l2_norm == 0);
    CHECK(s.attention == ATTN_BIDIRECTIONAL);
    CHECK(s.max_steps == 1000);
    CHECK_NEAR(s.lr, 2.5e-3, 0);
}

TEST(config_stage_scopes_and_order)
{
    gp_settings s;
    gp_err e = {{0}};
    /* Stage defaults: pretrain lr 5e-3 with item/cate losses, finetune 1e-3 with the rank loss. */
    REQUIRE(resolve_text("dim = 64\n", STAGE_PRETRAIN, &s, &e) == 0, "%s", e.msg);
    CHECK_NEAR(s.lr, 5e-3, 0);
    CHECK(s.item_loss_weight == 1 && s.cate_loss_weight == 1 && s.rank_loss_weight == 0);
    REQUIRE(resolve_text("dim = 64\n", STAGE_FINETUNE, &s, &e) == 0, "%s", e.msg);
    CHECK_NEAR(s.lr, 1e-3, 0);
    CHECK(s.item_loss_weight == 0 && s.rank_loss_weight == 1);
    /* A scoped key applies only to its stage; the last applicable assignment wins. */
    REQUIRE(resolve_text("lr = 1e-2\nfinetune.lr = 3e-4\nfinetune.min_lr = 1e-5\n", STAGE_FINETUNE, &s, &e) == 0, "%s",
            e.msg);
    CHECK_NEAR(s.lr, 3e-4, 0);
    REQUIRE(resolve_text("lr = 1e-2\nfinetune.lr = 3e-4\n", STAGE_PRETRAIN, &s, &e) == 0, "%s", e.msg);
    CHECK_NEAR(s.lr, 1e-2, 0);
    REQUIRE(resolve_text("finetune.lr = 3e-4\nlr = 2e-3\nmin_lr = 1e-4\n", STAGE_FINETUNE, &s, &e) == 0, "%s", e.msg);
    CHECK_NEAR(s.lr, 2e-3, 0);
}

TEST(config_override_wins_and_include)
{
    char *inc = write_tmp("base.conf", "dim = 32\nn_layers = 3\n");
    char *top = write_tmp("top.conf", "include = base.conf\nn_layers = 5\n");
    cfg_list l = {0};
    gp_err e = {{0}};
    REQUIRE(cfg_parse_file(&l, top, &e) == 0, "%s", e.msg);
    REQUIRE(cfg_add_override(&l, "dim=48", &e) == 0, "%s", e.msg);
    gp_settings s;
    const cfg_assignment *origin[256];
    REQUIRE(settings_resolve(&l, STAGE_PRETRAIN, &s, origin, &e) == 0, "%s", e.msg);
    CHECK(s.dim == 48);
    CHECK(s.n_layers == 5);
    /* The origin of each value is tracked for the printed settings. */
    int dim_key = -1;
    for (int i = 0; i < settings_n_keys; i++)
        if (strcmp(settings_keys[i].key, "n_layers") == 0)
            dim_key = i;
    REQUIRE(dim_key >= 0);
    CHECK(origin[dim_key] && origin[dim_key]->line == 2 && strstr(origin[dim_key]->source, "top.conf"));
    cfg_list_free(&l);
    free(inc);
    free(top);
}

TEST(config_unknown_key_names_file_line_and_nearest)
{
    gp_settings s;
    gp_err e = {{0}};
    CHECK(resolve_text("dim = 64\nn_layer = 3\n", STAGE_PRETRAIN, &s, &e) != 0);
    CHECK(strstr(e.msg, "t.conf:2") && strstr(e.msg, "n_layer") && strstr(e.msg, "did you mean \"n_layers\""), "%s",
          e.msg);
    CHECK(resolve_text("finetune.lerning_rate = 1\n", STAGE_PRETRAIN, &s, &e) != 0);
    CHECK(strstr(e.msg, "t.conf:1") && strstr(e.msg, "finetune.lerning_rate"), "%s", e.msg);
    /* A key scoped to the other stage is still validated. */
    CHECK(resolve_text("finetune.dimm = 3\n", STAGE_PRETRAIN, &s, &e) != 0);
    CHECK(strstr(e.msg, "did you mean \"dim\""), "%s", e.msg);
    CHECK(resolve_text("pretrain.lr = fast\n", STAGE_FINETUNE, &s, &e) != 0);
    CHECK(strstr(e.msg, "fast") && strstr(e.msg, "pretrain.lr"), "%s", e.msg);
}

TEST(config_bad_values)
{
    gp_settings s;
    gp_err e = {{0}};
    struct {
        const char *text, *expect;
    } cases[] = {
        {"dim = abc\n", "expected an integer"},
        {"dim = 0\n", "out of range"},
        {"dim = 12.5\n", "expected an integer"},
        {"lr = 1e-3x\n", "expected a number"},
        {"lr = -1\n", "out of range"},
        {"lr = nan\n", "expected a number"},
        {"shuffle = maybe\n", "expected true or false"},
        {"attention = sideways\n", "causal|bidirectional"},
        {"device = tpu\n", "auto|cpu|cuda"},
        {"sampled_softmax_kernel = flash\n", "auto|fused|gemm"},
        {"dim = 64\nn_heads = 3\n", "divisible"},
        {"dim = 12\nn_heads = 4\n", "even"},
        {"lr = 1e-4\nmin_lr = 1e-3\n", "min_lr"},
        {"transfer = sparse\n", "init_from"},
        {"this line has no equals sign\n", "expected `key = value`"},
        {"bad key! = 3\n", "not a valid key"},
        {"out_dir = \"unterminated\n", "unterminated"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        memset(&e, 0, sizeof e);
        CHECK(resolve_text(cases[i].text, STAGE_PRETRAIN, &s, &e) != 0, "accepted: %s", cases[i].text);
        CHECK(strstr(e.msg, cases[i].expect) != NULL, "for %s: message \"%s\" lacks \"%s\"", cases[i].text, e.msg,
              cases[i].expect);
    }
    /* The CUDA item head's choice resolves on any backend (it is read only by the CUDA one). */
    memset(&e, 0, sizeof e);
    CHECK(resolve_text("sampled_softmax_kernel = gemm\n", STAGE_PRETRAIN, &s, &e) == 0 &&
              s.sampled_softmax_kernel == SOFTMAX_KERNEL_GEMM,
          "%s", e.msg);
    CHECK(resolve_text("", STAGE_PRETRAIN, &s, &e) == 0 && s.sampled_softmax_kernel == SOFTMAX_KERNEL_AUTO, "%s", e.msg);
    /* Every value error names the file and the line. */
    resolve_text("dim = 64\nn_layers = lots\n", STAGE_PRETRAIN, &s, &e);
    CHECK(strstr(e.msg, "t.conf:2"), "%s", e.msg);
}

/* The backend options every command builds from the settings carry each backend setting. */
TEST(config_backend_opts_follow_settings)
{
    gp_err e = {{0}};
    gp_settings s;
    REQUIRE(resolve_text("recompute_ffn = true\nattention_kernel = cudnn\nsampled_softmax_kernel = gemm\n"
                         "freeze_sparse = true\nthreads = 3\n",
                         STAGE_FINETUNE, &s, &e) == 0,
            "%s", e.msg);
    backend_opts o = backend_opts_from_settings(&s, 17);
    CHECK(o.max_batch == 17 && o.recompute_ffn == 1 && o.recompute_blocks == 0 &&
              o.attention_kernel == ATTN_KERNEL_CUDNN && o.sampled_softmax_kernel == SOFTMAX_KERNEL_GEMM &&
              o.freeze_sparse == 1 && o.threads == 3 && o.dist == NULL,
          "options: batch %d ffn %d blocks %d attention %d softmax %d freeze %d threads %d", o.max_batch,
          o.recompute_ffn, o.recompute_blocks, o.attention_kernel, o.sampled_softmax_kernel, o.freeze_sparse,
          o.threads);
    CHECK(o.gemm_autotune == 0, "gemm_autotune on by default");
    REQUIRE(resolve_text("recompute_blocks = true\ngemm_autotune = true\n", STAGE_PRETRAIN, &s, &e) == 0, "%s", e.msg);
    o = backend_opts_from_settings(&s, 1);
    CHECK(o.recompute_blocks == 1 && o.recompute_ffn == 0 && o.gemm_autotune == 1,
          "recompute_blocks %d, recompute_ffn %d, gemm_autotune %d", o.recompute_blocks, o.recompute_ffn,
          o.gemm_autotune);
    CHECK(resolve_text("recompute_ffn = sometimes\n", STAGE_PRETRAIN, &s, &e) != 0 &&
              strstr(e.msg, "expected true or false"),
          "%s", e.msg);
}

TEST(config_include_errors)
{
    gp_err e = {{0}};
    cfg_list l = {0};
    char *a = write_tmp("cyc_a.conf", "include = cyc_b.conf\n");
    char *b = write_tmp("cyc_b.conf", "include = cyc_a.conf\n");
    CHECK(cfg_parse_file(&l, a, &e) != 0);
    CHECK(strstr(e.msg, "cycle"), "%s", e.msg);
    cfg_list_free(&l);
    char *m = write_tmp("missing_inc.conf", "dim = 3\ninclude = nowhere.conf\n");
    CHECK(cfg_parse_file(&l, m, &e) != 0);
    CHECK(strstr(e.msg, "missing_inc.conf:2") && strstr(e.msg, "nowhere.conf"), "%s", e.msg);
    cfg_list_free(&l);
    CHECK(cfg_parse_file(&l, "/nonexistent/x.conf", &e) != 0);
    CHECK(strstr(e.msg, "/nonexistent/x.conf"), "%s", e.msg);
    cfg_list_free(&l);
    CHECK(cfg_add_override(&l, "no_equals", &e) != 0);
    cfg_list_free(&l);
    free(a);
    free(b);
    free(m);
}

TEST(config_dump_roundtrips)
{
    gp_settings s, t;
    gp_err e = {{0}};
    REQUIRE(resolve_text("dim = 96\nn_heads = 6\nout_dir = \"a b\"\nattention = bidirectional\nlr = 1.25e-3\n"
                         "min_lr = 1e-5\nstage = finetune\n",
                         STAGE_FINETUNE, &s, &e) == 0,
            "%s", e.msg);
    char *path = gp_path_join(test_tmp_dir(), "saved.conf");
    REQUIRE(settings_save(&s, NULL, path, &e) == 0, "%s", e.msg);
    cfg_list l = {0};
    REQUIRE(cfg_parse_text(&l, settings_stage_defaults, "stage defaults", &e) == 0, "%s", e.msg);
    REQUIRE(cfg_parse_file(&l, path, &e) == 0, "%s", e.msg);
    REQUIRE(settings_resolve(&l, STAGE_FINETUNE, &t, NULL, &e) == 0, "%s", e.msg);
    CHECK(memcmp(&s, &t, sizeof s) == 0, "saved settings do not reload identically");
    cfg_list_free(&l);
    free(path);
}

TEST(config_nearest_key)
{
    CHECK(strcmp(cfg_nearest_key(settings_keys, settings_n_keys, "n_head"), "n_heads") == 0);
    CHECK(strcmp(cfg_nearest_key(settings_keys, settings_n_keys, "warmup"), "warmup_steps") == 0);
    CHECK(cfg_nearest_key(settings_keys, settings_n_keys, "zzzzzzzzzzzz") == NULL);
    /* The official gin names (and misspellings of them) point at gpsdrec's keys. */
    CHECK(strcmp(cfg_nearest_key(settings_keys, settings_n_keys, "learning_rate"), "lr") == 0);
    CHECK(strcmp(cfg_nearest_key(settings_keys, settings_n_keys, "lerning_rate"), "lr") == 0);
    CHECK(strcmp(cfg_nearest_key(settings_keys, settings_n_keys, "max_grads_norm"), "max_grad_norm") == 0);
    CHECK(strcmp(cfg_nearest_key(settings_keys, settings_n_keys, "n_samples"), "n_negatives") == 0);
    CHECK(strcmp(cfg_nearest_key(settings_keys, settings_n_keys, "epoch"), "epochs") == 0);
}

#include <dirent.h>

/* Every config shipped in configs/ resolves for both stages (run from the repository root). */
static int check_config_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    int n = 0;
    struct dirent *ent;
    while ((ent = readdir(d))) {
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, ent->d_name);
        if (ent->d_name[0] == '.')
            continue;
        if (ent->d_type == DT_DIR) {
            n += check_config_dir(path);
            continue;
        }
        if (!strstr(ent->d_name, ".conf"))
            continue;
        for (int stage = 0; stage < 2; stage++) {
            cfg_list l = {0};
            gp_err e = {{0}};
            gp_settings s;
            int rc = cfg_parse_text(&l, settings_stage_defaults, "stage defaults", &e);
            if (rc == 0)
                rc = cfg_parse_file(&l, path, &e);
            if (rc == 0)
                rc = settings_resolve(&l, stage, &s, NULL, &e);
            CHECK(rc == 0, "%s: %s", path, e.msg);
            cfg_list_free(&l);
        }
        n++;
    }
    closedir(d);
    return n;
}

TEST(config_shipped_configs_resolve)
{
    int n = check_config_dir("configs");
    CHECK(n >= 10, "only %d configs found under configs/", n);
}
