/* The gpsdrec binary end to end: commands, help, error messages and exit codes, and a tiny
 * synth -> gpsd (pretrain + finetune with the item table frozen) -> eval -> info run. */
#include <stdlib.h>
#include <string.h>

#include "test.h"
#include "util.h"

static int run(const char *args, char **out)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s %s", test_binary(), args);
    return test_run_capture(cmd, out);
}

#define EXPECT(args, want_status, ...)                                                                  \
    do {                                                                                                \
        char *_o;                                                                                       \
        int _st = run(args, &_o);                                                                       \
        CHECK(_st == (want_status), "`gpsdrec %s` exited %d, expected %d:\n%s", args, _st, want_status, _o); \
        const char *_want[] = {__VA_ARGS__, NULL};                                                      \
        for (int _i = 0; _want[_i]; _i++)                                                               \
            CHECK(strstr(_o, _want[_i]) != NULL, "`gpsdrec %s` output lacks \"%s\":\n%s", args, _want[_i], _o); \
        free(_o);                                                                                       \
    } while (0)

TEST(cli_help_and_unknown_commands)
{
    EXPECT("--help", 0, "usage: gpsdrec <command>", "gpsd", "train", "synth", "info", "eval", "score");
    EXPECT("score --help", 0, "usage: gpsdrec score");
    EXPECT("", 2, "usage");
    EXPECT("trian", 2, "unknown command \"trian\"", "did you mean \"train\"");
    EXPECT("train --help", 0, "usage: gpsdrec train", "max_history", "pretrain.KEY");
    EXPECT("gpsd --help", 0, "ST&SF", "embedded default");
    EXPECT("synth --help", 0, "usage: gpsdrec synth", "synth.users");
    EXPECT("info --help", 0, "usage: gpsdrec info");
    EXPECT("eval --help", 0, "usage: gpsdrec eval");
    EXPECT("--version", 0, "gpsdrec");
}

TEST(cli_bad_settings_exit_nonzero_with_location)
{
    char path[600], *o;
    snprintf(path, sizeof path, "%s/bad.conf", test_tmp_dir());
    gp_err e;
    const char *text = "dim = 64\nn_heads = 4\nlearning_rate = 3\n";
    REQUIRE(gp_write_atomic(path, text, strlen(text), &e) == 0);
    char args[800];
    snprintf(args, sizeof args, "train %s", path);
    int st = run(args, &o);
    CHECK(st == 1, "exit %d", st);
    CHECK(strstr(o, "bad.conf:3") && strstr(o, "learning_rate"), "%s", o);
    free(o);
    EXPECT("train --set dim=abc", 1, "--set", "dim", "abc");
    EXPECT("train --dimm 3", 1, "unknown option --dimm", "did you mean --dim");
    EXPECT("train --set n_heads=3 --set dim=64", 1, "divisible");
    EXPECT("train nonexistent.conf", 1, "nonexistent.conf");
    EXPECT("train --data /nonexistent/x.gpsd", 1, "/nonexistent/x.gpsd");
    EXPECT("synth --set synth.users=0", 1, "synth.users");
    EXPECT("info /nonexistent/file", 1, "/nonexistent/file");
}

TEST(cli_info_rejects_corrupt_dataset)
{
    char path[600], args[800];
    snprintf(path, sizeof path, "%s/garbage.gpsd", test_tmp_dir());
    gp_err e;
    REQUIRE(gp_write_atomic(path, "GPSDREC\0garbage", 15, &e) == 0);
    snprintf(args, sizeof args, "info %s", path);
    EXPECT(args, 1, "garbage.gpsd");
}

/* A tiny end-to-end run through the binary: synthetic data, pretraining, finetuning with the
 * pretrained item table frozen, evaluation of the saved checkpoint, and info on every output. */
TEST(cli_end_to_end_tiny)
{
    char args[2048], *o;
    const char *tmp = test_tmp_dir();
    snprintf(args, sizeof args,
             "gpsd --out_dir %s/e2e --synth.users 400 --synth.items 300 --synth.mean_len 12 --dim 16 --n_layers 1 "
             "--n_heads 2 --max_history 20 --n_negatives 32 --batch_size 64 --eval_batch_size 256 --warmup_steps 5 "
             "--set pretrain.epochs=2 --set finetune.epochs=2 --set finetune.transfer=sparse --device cpu --threads 2",
             tmp);
    int st = run(args, &o);
    CHECK(st == 0, "gpsd exited %d:\n%s", st, o);
    CHECK(strstr(o, "ceiling") && strstr(o, "test AUC"), "%s", o);
    CHECK(strstr(o, "initialised 1 tensor(s)") && strstr(o, "item table frozen"), "%s", o);
    free(o);
    /* Every output the README promises. */
    const char *files[] = {"e2e/data.gpsd", "e2e/pretrain/settings.conf", "e2e/pretrain/log.jsonl",
                           "e2e/pretrain/model.safetensors", "e2e/pretrain/result.json", "e2e/finetune/settings.conf",
                           "e2e/finetune/log.jsonl", "e2e/finetune/model.safetensors", "e2e/finetune/result.json"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char p[1024];
        snprintf(p, sizeof p, "%s/%s", tmp, files[i]);
        FILE *f = fopen(p, "rb");
        CHECK(f != NULL, "missing %s", p);
        if (f)
            fclose(f);
    }
    snprintf(args, sizeof args, "eval %s/e2e/finetune/model.safetensors --device cpu", tmp);
    EXPECT(args, 0, "auc", "gauc", "logloss");
    snprintf(args, sizeof args, "eval %s/e2e/pretrain/model.safetensors --device cpu", tmp);
    EXPECT(args, 0, "hr@10", "ndcg@10");
    /* score: one line per test sample after a header, written atomically */
    snprintf(args, sizeof args, "score %s/e2e/finetune/model.safetensors --out %s/e2e/scores.tsv --device cpu", tmp, tmp);
    EXPECT(args, 0, "test:", "predictions", "auc");
    {
        char p[1024], *text;
        size_t len;
        gp_err e;
        snprintf(p, sizeof p, "%s/e2e/scores.tsv", tmp);
        REQUIRE(gp_read_file(p, &text, &len, &e) == 0, "%s", e.msg);
        int lines = 0;
        for (size_t i = 0; i < len; i++)
            lines += text[i] == '\n';
        const char *header = "split\trecord\tuser\titem\tlabel\tprobability\n";
        CHECK(strncmp(text, header, strlen(header)) == 0, "%.60s", text);
        CHECK(lines > 10, "%d lines", lines);
        free(text);
    }
    snprintf(args, sizeof args, "score %s/e2e/finetune/model.safetensors --device cpu", tmp);
    EXPECT(args, 1, "--out FILE is required");
    snprintf(args, sizeof args, "score %s/e2e/finetune/model.safetensors --out /tmp/x --split sideways", tmp);
    EXPECT(args, 1, "--split sideways");
    snprintf(args, sizeof args, "info %s/e2e/data.gpsd %s/e2e/finetune/model.safetensors", tmp, tmp);
    EXPECT(args, 0, "item_embeddings.weight", "layers.0.attention.wq.weight", "rank_head.w2.bias", "pretrain");
    /* The saved settings reload as a config and reproduce the run's settings. */
    snprintf(args, sizeof args, "train %s/e2e/finetune/settings.conf --max_steps 1 --out_dir %s/e2e/again --eval_max_samples 10", tmp, tmp);
    EXPECT(args, 0, "[finetune] done", "item table frozen");
}
