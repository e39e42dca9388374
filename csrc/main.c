/* gpsdrec: command dispatch. */
#include <malloc.h>
#include <stdio.h>
#include <string.h>

#include "backend.h"
#include "cli.h"
#include "util.h"

#define GPSDREC_VERSION "0.1.0"

static const cli_command commands[] = {
    {"gpsd", "the whole method: pretrain, then finetune from it (embedded default: synthetic data, ST&SF)", cmd_gpsd,
     cmd_gpsd_usage},
    {"train", "one training stage (pretrain or finetune) from config files", cmd_train, cmd_train_usage},
    {"eval", "evaluate a checkpoint on a dataset's test (or valid) split", cmd_eval, cmd_eval_usage},
    {"score", "write a CTR prediction per sample of a dataset split with a checkpoint", cmd_score, cmd_score_usage},
    {"synth", "generate a synthetic dataset with a known AUC ceiling", cmd_synth, cmd_synth_usage},
    {"prep", "raw logs (taobao, amazon, movielens, csv, sequences, gpsd-rec text) to a dataset", cmd_prep, cmd_prep_usage},
    {"info", "describe a dataset (.gpsd) or a checkpoint (.safetensors)", cmd_info, cmd_info_usage},
};
static const int n_commands = (int)(sizeof commands / sizeof commands[0]);

static void usage(FILE *f)
{
    fprintf(f, "gpsdrec %s: generative pretraining for scalable discriminative recommendation (GPSD)\n\n", GPSDREC_VERSION);
    fprintf(f, "usage: gpsdrec <command> [options]   (gpsdrec <command> --help for its options)\n\ncommands:\n");
    for (int i = 0; i < n_commands; i++)
        fprintf(f, "  %-8s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\nbuild: CPU backend%s\n",
            backend_cuda_compiled() ? " + CUDA backend (sm_90)" : " only (built without nvcc)");
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    /* Training allocates and frees the same large scratch buffers every step; letting glibc hand
     * them back to the kernel each time turns every step into page faults (measured 8x slower
     * after synth had grown and shrunk the heap). Keep freed memory for reuse instead. */
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
    mallopt(M_MMAP_THRESHOLD, 1 << 30);
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
        if (argc >= 3 && strcmp(argv[1], "help") == 0) {
            for (int i = 0; i < n_commands; i++)
                if (strcmp(argv[2], commands[i].name) == 0) {
                    commands[i].usage(stdout);
                    return 0;
                }
        }
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("gpsdrec %s (%s)\n", GPSDREC_VERSION, backend_cuda_compiled() ? "cpu+cuda" : "cpu");
        return 0;
    }
    for (int i = 0; i < n_commands; i++)
        if (strcmp(argv[1], commands[i].name) == 0)
            return commands[i].run(argc - 1, argv + 1);
    const char *best = NULL;
    int best_d = 1 << 30;
    for (int i = 0; i < n_commands; i++) {
        int d = gp_edit_distance(argv[1], commands[i].name);
        if (d < best_d) {
            best_d = d;
            best = commands[i].name;
        }
    }
    if (best && best_d <= 2)
        fprintf(stderr, "gpsdrec: unknown command \"%s\" (did you mean \"%s\"?)\n", argv[1], best);
    else
        fprintf(stderr, "gpsdrec: unknown command \"%s\"; `gpsdrec --help` lists the commands\n", argv[1]);
    return 2;
}
