#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

const char *const cfg_scopes[] = {"pretrain", "finetune", NULL};

#define CFG_MAX_INCLUDE_DEPTH 8

static void list_push(cfg_list *l, const char *key, const char *value, const char *source, int line)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 32;
        l->items = gp_xrealloc(l->items, (size_t)l->cap * sizeof *l->items);
    }
    cfg_assignment *a = &l->items[l->n++];
    a->key = gp_xstrdup(key);
    a->value = gp_xstrdup(value);
    a->source = gp_xstrdup(source);
    a->line = line;
}

void cfg_list_free(cfg_list *l)
{
    for (int i = 0; i < l->n; i++) {
        free(l->items[i].key);
        free(l->items[i].value);
        free(l->items[i].source);
    }
    free(l->items);
    memset(l, 0, sizeof *l);
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    char *end = s + strlen(s);
    while (end > s && isspace((unsigned char)end[-1]))
        *--end = '\0';
    return s;
}

static int valid_key_chars(const char *k)
{
    if (!*k)
        return 0;
    for (const char *p = k; *p; p++)
        if (!(isalnum((unsigned char)*p) || *p == '_' || *p == '.'))
            return 0;
    return 1;
}

/* Splits one line into key and value in place. Returns 1 for an assignment, 0 for a blank or
 * comment line, -1 for a malformed line (message in e). */
static int split_line(char *line, char **key_out, char **value_out, const char *source, int lineno, gp_err *e)
{
    char *s = trim(line);
    if (*s == '\0' || *s == '#')
        return 0;
    char *eq = strchr(s, '=');
    if (!eq)
        return gp_fail(e, "%s:%d: expected `key = value`, got \"%s\"", source, lineno, s);
    *eq = '\0';
    char *key = trim(s);
    char *value = trim(eq + 1);
    if (!valid_key_chars(key))
        return gp_fail(e, "%s:%d: \"%s\" is not a valid key (letters, digits, '_' and '.')", source, lineno, key);
    if (*value == '"') {
        char *close = strchr(value + 1, '"');
        if (!close)
            return gp_fail(e, "%s:%d: unterminated quoted value for %s", source, lineno, key);
        char *rest = trim(close + 1);
        if (*rest && *rest != '#')
            return gp_fail(e, "%s:%d: unexpected text after the quoted value of %s: \"%s\"", source, lineno, key, rest);
        *close = '\0';
        value = value + 1;
    } else {
        for (char *p = value; *p; p++) {
            if (*p == '#' && (p == value || isspace((unsigned char)p[-1]))) {
                *p = '\0';
                break;
            }
        }
        value = trim(value);
    }
    *key_out = key;
    *value_out = value;
    return 1;
}

static char *dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        return gp_xstrdup("");
    size_t n = (size_t)(slash - path);
    char *d = gp_xmalloc(n + 2);
    memcpy(d, path, n ? n : 1);
    d[n ? n : 1] = '\0';
    return d;
}

static int parse_text_depth(cfg_list *l, const char *text, const char *source, const char *base_dir,
                            const char **stack, int depth, gp_err *e);

static int parse_file_depth(cfg_list *l, const char *path, const char **stack, int depth, gp_err *e)
{
    for (int i = 0; i < depth; i++)
        if (strcmp(stack[i], path) == 0)
            return gp_fail(e, "%s: include cycle (%s includes itself through its includes)", path, path);
    if (depth >= CFG_MAX_INCLUDE_DEPTH)
        return gp_fail(e, "%s: includes nested deeper than %d", path, CFG_MAX_INCLUDE_DEPTH);
    char *text = NULL;
    if (gp_read_file(path, &text, NULL, e) != 0)
        return -1;
    char *base = dir_of(path);
    stack[depth] = path;
    int rc = parse_text_depth(l, text, path, base, stack, depth + 1, e);
    free(base);
    free(text);
    return rc;
}

static int parse_text_depth(cfg_list *l, const char *text, const char *source, const char *base_dir,
                            const char **stack, int depth, gp_err *e)
{
    char *copy = gp_xstrdup(text);
    int lineno = 0, rc = 0;
    /* strtok would merge blank lines and lose line numbers; walk the lines by hand. */
    char *p = copy;
    while (p && rc == 0) {
        char *nl = strchr(p, '\n');
        if (nl)
            *nl = '\0';
        lineno++;
        char *key = NULL, *value = NULL;
        int kind = split_line(p, &key, &value, source, lineno, e);
        if (kind < 0)
            rc = -1;
        else if (kind == 1 && strcmp(key, "include") == 0) {
            if (!*value) {
                rc = gp_fail(e, "%s:%d: include needs a file name", source, lineno);
            } else {
                char *inc = value[0] == '/' ? gp_xstrdup(value) : gp_path_join(base_dir, value);
                if (parse_file_depth(l, inc, stack, depth, e) != 0) {
                    gp_wrap(e, "%s:%d: in include", source, lineno);
                    rc = -1;
                }
                free(inc);
            }
        } else if (kind == 1) {
            list_push(l, key, value, source, lineno);
        }
        p = nl ? nl + 1 : NULL;
    }
    free(copy);
    return rc;
}

int cfg_parse_file(cfg_list *l, const char *path, gp_err *e)
{
    const char *stack[CFG_MAX_INCLUDE_DEPTH + 1];
    return parse_file_depth(l, path, stack, 0, e);
}

int cfg_parse_text(cfg_list *l, const char *text, const char *source, gp_err *e)
{
    const char *stack[CFG_MAX_INCLUDE_DEPTH + 1];
    return parse_text_depth(l, text, source, "", stack, 0, e);
}

int cfg_add_override(cfg_list *l, const char *key_value, gp_err *e)
{
    const char *eq = strchr(key_value, '=');
    if (!eq)
        return gp_fail(e, "--set %s: expected key=value", key_value);
    char *key = gp_xmalloc((size_t)(eq - key_value) + 1);
    memcpy(key, key_value, (size_t)(eq - key_value));
    key[eq - key_value] = '\0';
    char *k = trim(key);
    char *v = gp_xstrdup(eq + 1);
    char *vt = trim(v);
    int rc = 0;
    if (!valid_key_chars(k))
        rc = gp_fail(e, "--set %s: \"%s\" is not a valid key", key_value, k);
    else
        list_push(l, k, vt, "--set", 0);
    free(key);
    free(v);
    return rc;
}

/* ---- resolution ------------------------------------------------------------------------ */

static const cfg_key *find_key(const cfg_key *keys, int n, const char *name)
{
    for (int i = 0; i < n; i++)
        if (strcmp(keys[i].key, name) == 0)
            return &keys[i];
    return NULL;
}

/* Whether name is one of the comma-separated aliases. */
static int is_alias(const char *aliases, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = aliases; p && *p;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (len == n && strncasecmp(p, name, n) == 0)
            return 1;
        p = comma ? comma + 1 : NULL;
    }
    return 0;
}

const char *cfg_nearest_key(const cfg_key *keys, int n, const char *name)
{
    for (int i = 0; i < n; i++)
        if (is_alias(keys[i].aliases, name))
            return keys[i].key;
    const char *best = NULL;
    int best_d = 1 << 30;
    for (int i = 0; i < n; i++) {
        int d = gp_edit_distance(keys[i].key, name);
        /* A misspelt alias ("lerning_rate") points at its key too. */
        for (const char *p = keys[i].aliases; p && *p;) {
            const char *comma = strchr(p, ',');
            char alias[64];
            snprintf(alias, sizeof alias, "%.*s", (int)(comma ? (size_t)(comma - p) : strlen(p)), p);
            int da = gp_edit_distance(alias, name);
            if (da < d)
                d = da;
            p = comma ? comma + 1 : NULL;
        }
        if (d < best_d) {
            best_d = d;
            best = keys[i].key;
        }
    }
    int len = (int)strlen(name);
    int limit = len / 3 > 2 ? len / 3 : 2;
    if (best && best_d <= limit)
        return best;
    /* A key contained in the name or the other way round is also a good hint. */
    for (int i = 0; i < n; i++)
        if (strstr(keys[i].key, name) || strstr(name, keys[i].key))
            return keys[i].key;
    return NULL;
}

static const char *where(const cfg_assignment *a, char *buf, size_t n)
{
    if (a->line > 0)
        snprintf(buf, n, "%s:%d", a->source, a->line);
    else
        snprintf(buf, n, "%s", a->source);
    return buf;
}

static int enum_index(const char *choices, const char *value)
{
    int idx = 0;
    const char *p = choices;
    size_t vl = strlen(value);
    while (*p) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == vl && strncmp(p, value, len) == 0)
            return idx;
        idx++;
        if (!bar)
            break;
        p = bar + 1;
    }
    return -1;
}

static int parse_bool(const char *v, int *out)
{
    static const char *yes[] = {"true", "1", "yes", "on"}, *no[] = {"false", "0", "no", "off"};
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(v, yes[i]) == 0) {
            *out = 1;
            return 0;
        }
        if (strcasecmp(v, no[i]) == 0) {
            *out = 0;
            return 0;
        }
    }
    return -1;
}

/* Integers may be written as integers or as integral floats ("1e6"). */
static int parse_int_value(const char *v, int64_t *out)
{
    if (gp_parse_i64(v, out) == 0)
        return 0;
    double d;
    if (gp_parse_f64(v, &d) == 0 && d == floor(d) && fabs(d) < 9.0e18) {
        *out = (int64_t)d;
        return 0;
    }
    return -1;
}

static void fmt_range(const cfg_key *k, char *buf, size_t n)
{
    if (k->type == CFG_INT)
        snprintf(buf, n, "an integer in [%.0f, %.0f]", k->lo, k->hi);
    else
        snprintf(buf, n, "a number in [%g, %g]", k->lo, k->hi);
}

/* Parse and range-check value for key k; store into settings when store is non-zero. */
static int apply_value(const cfg_key *k, const char *value, void *settings, int store, const char *loc,
                       const char *written_key, gp_err *e)
{
    char *field = (char *)settings + k->offset;
    char range[128];
    switch (k->type) {
    case CFG_INT: {
        int64_t v;
        fmt_range(k, range, sizeof range);
        if (parse_int_value(value, &v) != 0)
            return gp_fail(e, "%s: bad value \"%s\" for %s: expected %s", loc, value, written_key, range);
        if ((double)v < k->lo || (double)v > k->hi)
            return gp_fail(e, "%s: value %s for %s is out of range: expected %s", loc, value, written_key, range);
        if (store)
            *(int64_t *)field = v;
        return 0;
    }
    case CFG_FLOAT: {
        double v;
        fmt_range(k, range, sizeof range);
        if (gp_parse_f64(value, &v) != 0)
            return gp_fail(e, "%s: bad value \"%s\" for %s: expected %s", loc, value, written_key, range);
        if (v < k->lo || v > k->hi)
            return gp_fail(e, "%s: value %s for %s is out of range: expected %s", loc, value, written_key, range);
        if (store)
            *(double *)field = v;
        return 0;
    }
    case CFG_BOOL: {
        int v;
        if (parse_bool(value, &v) != 0)
            return gp_fail(e, "%s: bad value \"%s\" for %s: expected true or false", loc, value, written_key);
        if (store)
            *(int *)field = v;
        return 0;
    }
    case CFG_ENUM: {
        int idx = enum_index(k->choices, value);
        if (idx < 0)
            return gp_fail(e, "%s: bad value \"%s\" for %s: expected one of %s", loc, value, written_key, k->choices);
        if (store)
            *(int *)field = idx;
        return 0;
    }
    case CFG_STRING:
        if (strlen(value) >= CFG_STR_MAX)
            return gp_fail(e, "%s: value for %s is longer than %d characters", loc, written_key, CFG_STR_MAX - 1);
        if (store)
            snprintf(field, CFG_STR_MAX, "%s", value);
        return 0;
    }
    return gp_fail(e, "%s: internal error: key %s has an unknown type", loc, written_key);
}

/* Splits "scope.key" when the first component is a known scope. */
static const char *split_scope(const char *written, char *scope_buf, size_t n)
{
    scope_buf[0] = '\0';
    const char *dot = strchr(written, '.');
    if (!dot)
        return written;
    size_t len = (size_t)(dot - written);
    for (int i = 0; cfg_scopes[i]; i++) {
        if (strlen(cfg_scopes[i]) == len && strncmp(cfg_scopes[i], written, len) == 0) {
            snprintf(scope_buf, n, "%s", cfg_scopes[i]);
            return dot + 1;
        }
    }
    return written;
}

int cfg_resolve(const cfg_key *keys, int n_keys, const cfg_list *l, const char *scope, void *settings,
                const cfg_assignment **origin, gp_err *e)
{
    char loc[CFG_STR_MAX + 32];
    for (int i = 0; i < n_keys; i++) {
        snprintf(loc, sizeof loc, "default of %s", keys[i].key);
        if (apply_value(&keys[i], keys[i].def, settings, 1, loc, keys[i].key, e) != 0)
            return gp_wrap(e, "internal error");
        if (origin)
            origin[i] = NULL;
    }
    for (int a = 0; a < l->n; a++) {
        const cfg_assignment *as = &l->items[a];
        char sc[32];
        const char *name = split_scope(as->key, sc, sizeof sc);
        where(as, loc, sizeof loc);
        const cfg_key *k = find_key(keys, n_keys, name);
        if (!k) {
            const char *near = cfg_nearest_key(keys, n_keys, name);
            if (near)
                return gp_fail(e, "%s: unknown key \"%s\" (did you mean \"%s\"?)", loc, as->key, near);
            return gp_fail(e, "%s: unknown key \"%s\" (`gpsdrec <command> --help` lists the keys)", loc, as->key);
        }
        int applies = sc[0] == '\0' || (scope && strcmp(sc, scope) == 0);
        if (apply_value(k, as->value, settings, applies, loc, as->key, e) != 0)
            return -1;
        if (applies && origin)
            origin[k - keys] = as;
    }
    return 0;
}

static void format_value(const cfg_key *k, const void *settings, char *buf, size_t n)
{
    const char *field = (const char *)settings + k->offset;
    switch (k->type) {
    case CFG_INT:
        snprintf(buf, n, "%lld", (long long)*(const int64_t *)field);
        break;
    case CFG_FLOAT:
        snprintf(buf, n, "%.9g", *(const double *)field);
        break;
    case CFG_BOOL:
        snprintf(buf, n, "%s", *(const int *)field ? "true" : "false");
        break;
    case CFG_ENUM: {
        int idx = *(const int *)field, i = 0;
        const char *p = k->choices;
        while (i < idx && strchr(p, '|')) {
            p = strchr(p, '|') + 1;
            i++;
        }
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        snprintf(buf, n, "%.*s", (int)len, p);
        break;
    }
    case CFG_STRING: {
        const char *s = field;
        int needs_quotes = !*s || strchr(s, '#') || isspace((unsigned char)s[0]) ||
                           isspace((unsigned char)s[strlen(s) - 1]);
        snprintf(buf, n, needs_quotes ? "\"%s\"" : "%s", s);
        break;
    }
    }
}

void cfg_dump(const cfg_key *keys, int n_keys, const void *settings, const cfg_assignment **origin, FILE *f)
{
    char val[CFG_STR_MAX + 8], loc[CFG_STR_MAX + 32];
    for (int i = 0; i < n_keys; i++) {
        format_value(&keys[i], settings, val, sizeof val);
        if (origin && origin[i])
            fprintf(f, "%-20s = %-24s # %s\n", keys[i].key, val, where(origin[i], loc, sizeof loc));
        else
            fprintf(f, "%-20s = %s\n", keys[i].key, val);
    }
}

void cfg_print_help(const cfg_key *keys, int n_keys, FILE *f)
{
    static const char *type_names[] = {"int", "float", "bool", "string", "enum"};
    for (int i = 0; i < n_keys; i++) {
        const cfg_key *k = &keys[i];
        char extra[160] = "";
        if (k->type == CFG_ENUM)
            snprintf(extra, sizeof extra, " (%s)", k->choices);
        else if (k->type == CFG_INT)
            snprintf(extra, sizeof extra, " [%.0f, %.0f]", k->lo, k->hi);
        else if (k->type == CFG_FLOAT)
            snprintf(extra, sizeof extra, " [%g, %g]", k->lo, k->hi);
        fprintf(f, "  %-20s %-6s default %s%s\n      %s\n", k->key, type_names[k->type], *k->def ? k->def : "\"\"",
                extra, k->help);
    }
}
