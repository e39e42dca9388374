/* config: plain `key = value` settings files, `--set key=value` overrides, stage scopes.
 *
 * File syntax
 * - One assignment per line: `key = value`. Blank lines and lines starting with `#` are ignored;
 *   ` #` after a value starts a comment. A value in double quotes is taken literally (it may
 *   hold `#` or surrounding spaces).
 * - `include = other.conf` reads another file at that point (path relative to the including
 *   file); includes nest up to 8 deep and a cycle is an error.
 * - A key may carry a stage scope: `pretrain.lr = 5e-3` applies only when the stage being
 *   resolved is `pretrain` (likewise `finetune.`). Unscoped keys apply to every stage.
 *
 * Resolution (cfg_resolve): start from each key's default, then apply every assignment in the
 * order given (files in command-line order, includes where they stand, then --set overrides),
 * skipping those scoped to another stage: the last applicable assignment wins. Every assignment
 * is validated, whatever its scope: an unknown key is an error naming the file, the line, the
 * key and the nearest valid key; a bad value names the file, line, key, value and what was
 * expected (type, range or choices).
 *
 * The settings struct is the caller's: each key names the offset of its field, whose C type
 * follows the key's type (INT: int64_t, FLOAT: double, BOOL/ENUM: int, STRING: char[CFG_STR_MAX]).
 */
#ifndef GPSDREC_CONFIG_H
#define GPSDREC_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "util.h"

#define CFG_STR_MAX 512

typedef enum { CFG_INT, CFG_FLOAT, CFG_BOOL, CFG_STRING, CFG_ENUM } cfg_type;

typedef struct {
    const char *key;
    cfg_type type;
    const char *def;     /* default value, in config syntax */
    double lo, hi;       /* inclusive range for INT and FLOAT */
    const char *choices; /* "a|b|c" for ENUM; the field holds the index */
    size_t offset;       /* offset of the field in the settings struct */
    const char *help;
    const char *aliases; /* comma-separated names other tools use for this key (the official gin
                            names, e.g. "learning_rate"): suggested, never accepted silently */
} cfg_key;

typedef struct {
    char *key; /* as written, possibly with a scope: "pretrain.lr" */
    char *value;
    char *source; /* file path, "--set" or the name of an embedded text */
    int line;
} cfg_assignment;

typedef struct {
    cfg_assignment *items;
    int n, cap;
} cfg_list;

/* Append the assignments of a file (following includes). */
int cfg_parse_file(cfg_list *l, const char *path, gp_err *e);
/* Append the assignments of a text held in memory; `source` names it in messages. */
int cfg_parse_text(cfg_list *l, const char *text, const char *source, gp_err *e);
/* Append one "key=value" override, as given to --set. */
int cfg_add_override(cfg_list *l, const char *key_value, gp_err *e);
void cfg_list_free(cfg_list *l);

/* Fill `settings` for `scope` (e.g. "pretrain"; NULL applies unscoped keys only).
 * origin, if non-NULL, receives for each key the assignment that set it (NULL = default). */
int cfg_resolve(const cfg_key *keys, int n_keys, const cfg_list *l, const char *scope, void *settings,
                const cfg_assignment **origin, gp_err *e);

/* Print every key as a loadable `key = value` line, with the origin of non-default values as a
 * trailing comment. */
void cfg_dump(const cfg_key *keys, int n_keys, const void *settings, const cfg_assignment **origin, FILE *f);

/* Print the keys with their type, default and help (for --help). */
void cfg_print_help(const cfg_key *keys, int n_keys, FILE *f);

/* The nearest key to `name` by edit distance, or NULL if nothing is close. */
const char *cfg_nearest_key(const cfg_key *keys, int n_keys, const char *name);

/* Scope names accepted as key prefixes. */
extern const char *const cfg_scopes[];

#endif
