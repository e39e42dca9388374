#include "cli.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int cli_error(const char *cmd, const gp_err *e)
{
    fprintf(stderr, "gpsdrec %s: error: %s\n", cmd, e->msg);
    return 1;
}

void cli_print_keys(FILE *f)
{
    fprintf(f, "\nsettings (config files hold `key = value` lines; `pretrain.KEY` / `finetune.KEY` apply to one stage):\n");
    cfg_print_help(settings_keys, settings_n_keys, f);
}

static int is_key(const char *name)
{
    char scope_free[CFG_STR_MAX];
    snprintf(scope_free, sizeof scope_free, "%s", name);
    const char *k = scope_free;
    for (int i = 0; cfg_scopes[i]; i++) {
        size_t n = strlen(cfg_scopes[i]);
        if (strncmp(k, cfg_scopes[i], n) == 0 && k[n] == '.')
            k += n + 1;
    }
    for (int i = 0; i < settings_n_keys; i++)
        if (strcmp(settings_keys[i].key, k) == 0)
            return 1;
    return 0;
}

int cli_collect_settings(int argc, char **argv, const char *embedded, const char *embedded_name, cfg_list *l,
                         char ***rest, int *n_rest, void (*usage)(FILE *), gp_err *e)
{
    memset(l, 0, sizeof *l);
    if (rest) {
        *rest = gp_xcalloc((size_t)argc + 1, sizeof **rest);
        *n_rest = 0;
    }
    if (cfg_parse_text(l, settings_stage_defaults, "stage defaults", e) != 0)
        return -1;
    if (embedded && cfg_parse_text(l, embedded, embedded_name, e) != 0)
        return -1;
    cfg_list overrides = {0};
    int rc = 0;
    for (int i = 1; i < argc && rc == 0; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            cfg_list_free(&overrides);
            return 1;
        }
        if (strcmp(a, "--set") == 0) {
            if (i + 1 >= argc) {
                rc = gp_fail(e, "--set needs key=value");
                break;
            }
            rc = cfg_add_override(&overrides, argv[++i], e);
        } else if (strncmp(a, "--set=", 6) == 0) {
            rc = cfg_add_override(&overrides, a + 6, e);
        } else if (strncmp(a, "--", 2) == 0) {
            /* --key value or --key=value for any settings key */
            const char *name = a + 2;
            const char *eq = strchr(name, '=');
            char key[CFG_STR_MAX];
            snprintf(key, sizeof key, "%.*s", (int)(eq ? (size_t)(eq - name) : strlen(name)), name);
            for (char *p = key; *p; p++)
                if (*p == '-')
                    *p = '_';
            if (!is_key(key)) {
                const char *near = cfg_nearest_key(settings_keys, settings_n_keys, key);
                rc = near ? gp_fail(e, "unknown option %s (did you mean --%s?)", a, near)
                          : gp_fail(e, "unknown option %s (--help lists the options)", a);
                break;
            }
            const char *value = eq ? eq + 1 : NULL;
            if (!value) {
                if (i + 1 >= argc) {
                    rc = gp_fail(e, "option %s needs a value", a);
                    break;
                }
                value = argv[++i];
            }
            size_t n = strlen(key) + strlen(value) + 2;
            char *kv = gp_xmalloc(n);
            snprintf(kv, n, "%s=%s", key, value);
            rc = cfg_add_override(&overrides, kv, e);
            free(kv);
        } else {
            struct stat st;
            const char *dot = strrchr(a, '.');
            int looks_config = dot && (strcmp(dot, ".conf") == 0 || strcmp(dot, ".cfg") == 0);
            if (looks_config || !rest) {
                if (stat(a, &st) != 0) {
                    rc = gp_fail(e, "%s: config file not found", a);
                    break;
                }
                rc = cfg_parse_file(l, a, e);
            } else {
                (*rest)[(*n_rest)++] = argv[i];
            }
        }
    }
    /* Overrides come last whatever their position on the command line. */
    for (int i = 0; rc == 0 && i < overrides.n; i++) {
        const cfg_assignment *o = &overrides.items[i];
        size_t n = strlen(o->key) + strlen(o->value) + 2;
        char *kv = gp_xmalloc(n);
        snprintf(kv, n, "%s=%s", o->key, o->value);
        rc = cfg_add_override(l, kv, e);
        free(kv);
    }
    cfg_list_free(&overrides);
    return rc;
}

int cli_resolve(const cfg_list *l, int stage, gp_settings *s, const cfg_assignment **origin, gp_err *e)
{
    return settings_resolve(l, stage, s, origin, e);
}
