/* gpsdrec synth, and the synthetic dataset behind the embedded default. */
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "synth.h"

void cmd_synth_usage(FILE *f)
{
    fprintf(f, "usage: gpsdrec synth [CONFIG...] [--out FILE] [--set key=value]... [--KEY VALUE]...\n\n"
               "Generates a synthetic dataset (users with latent, drifting interests over topics that cross\n"
               "categories, power-law item popularity, item-to-item successors, sessions in time), applies the\n"
               "official split protocol and writes it to FILE (default: data = ... or synth.gpsd). Prints the\n"
               "best test AUC the generator's ground truth allows, and baselines. Deterministic by seed; the\n"
               "synth.* and protocol keys below set its size and structure.\n");
    cli_print_keys(f);
}

static void synth_config_from_settings(synth_config *c, const gp_settings *s)
{
    *c = synth_default_config();
    c->n_users = (uint64_t)s->synth_users;
    c->n_items = (uint64_t)s->synth_items;
    c->n_cates = (uint32_t)s->synth_cates;
    c->n_topics = (uint32_t)s->synth_topics;
    c->mean_len = s->synth_mean_len;
    c->min_len = (uint32_t)s->synth_min_len;
    c->max_len = (uint32_t)s->synth_max_len;
    c->zipf_exponent = s->synth_zipf;
    c->stickiness = s->synth_stickiness;
    c->transition_prob = s->synth_transition;
    c->drift = s->synth_drift;
    c->seed = (uint64_t)s->seed;
    c->threads = (int)s->threads;
    c->protocol.min_user_len = (uint32_t)s->min_user_len;
    c->protocol.max_history = (uint32_t)s->window;
    c->protocol.split_quantile = s->split_quantile;
    c->protocol.valid_quantile = s->valid_quantile;
    c->protocol.n_negatives = (uint32_t)s->ctr_negatives;
}

static int generate(const gp_settings *s, const char *out, gp_err *e)
{
    synth_config c;
    synth_config_from_settings(&c, s);
    if (s->threads > 0)
        omp_set_num_threads((int)s->threads);
    synth_report r;
    printf("gpsdrec synth: generating %llu users x %.0f interactions into %s ...\n", (unsigned long long)c.n_users,
           c.mean_len, out);
    fflush(stdout);
    if (synth_generate(&c, out, &r, e) != 0)
        return -1;
    synth_print_report(&c, &r, stdout);
    return 0;
}

int cli_ensure_data(gp_settings *s, const char *out_dir, gp_err *e)
{
    if (s->data[0])
        return 0;
    char path[CFG_STR_MAX];
    snprintf(path, sizeof path, "%s/data.gpsd", out_dir);
    struct stat st;
    if (stat(path, &st) == 0) {
        printf("using the synthetic dataset already at %s\n", path);
    } else {
        if (gp_mkdirs(out_dir, e) != 0)
            return -1;
        if (generate(s, path, e) != 0)
            return -1;
    }
    snprintf(s->data, sizeof s->data, "%s", path);
    return 0;
}

int cmd_synth(int argc, char **argv)
{
    cfg_list l;
    gp_err e = {{0}};
    char **rest = NULL;
    int n_rest = 0;
    /* --out FILE is the one option that is not a settings key. */
    const char *out = NULL;
    char **args = gp_xcalloc((size_t)argc + 1, sizeof *args);
    int n_args = 0;
    for (int i = 0; i < argc; i++) {
        if ((strcmp(argv[i], "--out") == 0 || strcmp(argv[i], "-o") == 0) && i + 1 < argc)
            out = argv[++i];
        else if (strncmp(argv[i], "--out=", 6) == 0)
            out = argv[i] + 6;
        else
            args[n_args++] = argv[i];
    }
    int rc = cli_collect_settings(n_args, args, NULL, NULL, &l, &rest, &n_rest, cmd_synth_usage, &e);
    if (rc == 0 && n_rest > 0)
        rc = gp_fail(&e, "unexpected argument \"%s\" (use --out FILE for the output)", rest[0]);
    free(rest);
    gp_settings s;
    if (rc == 0)
        rc = cli_resolve(&l, STAGE_PRETRAIN, &s, NULL, &e);
    if (rc == 0)
        rc = settings_validate(&s, &e);
    if (rc == 0)
        rc = generate(&s, out ? out : (s.data[0] ? s.data : "synth.gpsd"), &e);
    free(args);
    cfg_list_free(&l);
    if (rc > 0)
        return 0;
    return rc == 0 ? 0 : cli_error("synth", &e);
}
