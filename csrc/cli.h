/* cli: the `gpsdrec <command>` front end. Each command lives in its own cmd_*.c and returns the
 * process exit status; only this layer prints errors (from a gp_err) and exits.
 *
 * Arguments of the config-driven commands: config files (positional), `--set key=value`, or the
 * shorthand `--key value` / `--key=value` for any settings key; later ones win. `--help`
 * prints the command's usage and every key with its default.
 */
#ifndef GPSDREC_CLI_H
#define GPSDREC_CLI_H

#include "config.h"
#include "settings.h"

typedef struct {
    const char *name;
    const char *summary;
    int (*run)(int argc, char **argv);
    void (*usage)(FILE *f);
} cli_command;

/* Collect config files and overrides after the stage defaults and `embedded` (may be NULL).
 * Positional arguments other than config files are returned in *rest (argv order); the caller
 * owns the array. Returns 0, 1 when --help was given (usage printed), or -1 on error. */
int cli_collect_settings(int argc, char **argv, const char *embedded, const char *embedded_name, cfg_list *l,
                         char ***rest, int *n_rest, void (*usage)(FILE *), gp_err *e);
/* Resolve for a stage and validate, printing nothing. */
int cli_resolve(const cfg_list *l, int stage, gp_settings *s, const cfg_assignment **origin, gp_err *e);
/* Print "gpsdrec <cmd>: error: <msg>" and return the exit status for errors (1). */
int cli_error(const char *cmd, const gp_err *e);
void cli_print_keys(FILE *f);

int cmd_synth(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_gpsd(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_score(int argc, char **argv);
int cmd_prep(int argc, char **argv);
void cmd_synth_usage(FILE *f);
void cmd_train_usage(FILE *f);
void cmd_gpsd_usage(FILE *f);
void cmd_eval_usage(FILE *f);
void cmd_info_usage(FILE *f);
void cmd_score_usage(FILE *f);
void cmd_prep_usage(FILE *f);

/* The embedded default run of `gpsdrec gpsd` with no config (synthetic data, a small model). */
extern const char cli_embedded_default[];

/* Ensure s->data exists: when empty, synthesise the embedded default dataset into
 * <out_dir>/data.gpsd (reused when already there) and point s->data at it. */
int cli_ensure_data(gp_settings *s, const char *out_dir, gp_err *e);

#endif
