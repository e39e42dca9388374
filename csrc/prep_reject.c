/* prep_reject: counting rejected lines by reason, with the first examples kept for the report. */
#include <stdio.h>

#include "prep_internal.h"

static const char *const reason_names[PREP_N_REASONS] = {
    [PREP_ERR_FIELDS] = "wrong number of fields",
    [PREP_ERR_QUOTE] = "bad quoting",
    [PREP_ERR_ID] = "id does not parse",
    [PREP_ERR_ID_RANGE] = "id out of range",
    [PREP_ERR_TIME] = "timestamp does not parse",
    [PREP_ERR_TIME_RANGE] = "timestamp out of range",
    [PREP_ERR_RATING] = "rating does not parse",
    [PREP_ERR_JSON] = "bad JSON",
    [PREP_ERR_FIELD] = "missing or wrong field",
    [PREP_ERR_LABEL] = "bad label",
    [PREP_ERR_SEQUENCE] = "bad sequence",
    [PREP_FILT_BEHAVIOR] = "filtered: behaviour type not kept",
    [PREP_FILT_RATING] = "filtered: rating below min_rating",
    [PREP_FILT_TIME] = "filtered: timestamp outside time range",
    [PREP_FILT_NO_META] = "filtered: item without metadata",
    [PREP_FILT_DUP_META] = "filtered: duplicate metadata of an item",
    [PREP_FILT_UNKNOWN] = "filtered: target item not in item2index",
    [PREP_FILT_SHORT] = "filtered: fewer than 2 known history items",
};

const char *prep_reason_name(int reason)
{
    return reason >= 0 && reason < PREP_N_REASONS ? reason_names[reason] : "?";
}

void prep_quote_text(char *out, size_t n, const char *text, size_t len)
{
    const size_t max_shown = 160;
    size_t o = 0;
    if (n == 0)
        return;
    for (size_t i = 0; i < len && i < max_shown && o + 5 < n; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c < 0x20 || c == 0x7f) {
            o += (size_t)snprintf(out + o, n - o, "\\x%02x", c);
        } else {
            out[o++] = (char)c;
        }
    }
    if (len > max_shown && o + 4 < n) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o < n ? o : n - 1] = 0;
}

int prep_reject(prep_rejects *r, int on_error, int reason, const char *path, uint64_t line, const char *text,
                size_t len, const char *fmt, ...)
{
    prep_reason_stats *s = &r->reasons[reason];
    s->count++;
    int fatal = reason < PREP_N_ERRORS && on_error == PREP_ABORT;
    if (s->n_text >= PREP_MAX_EXAMPLES && !fatal)
        return 0;
    char detail[256], quoted[200], where[64] = "";
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    prep_quote_text(quoted, sizeof quoted, text, len);
    if (line)
        snprintf(where, sizeof where, ":%llu", (unsigned long long)line);
    char msg[GP_ERR_LEN];
    if (text)
        snprintf(msg, sizeof msg, "%s%s: %s: %s in \"%s\"", path, where, prep_reason_name(reason), detail, quoted);
    else
        snprintf(msg, sizeof msg, "%s%s: %s: %s", path, where, prep_reason_name(reason), detail);
    if (s->n_text < PREP_MAX_EXAMPLES)
        snprintf(s->text[s->n_text++], PREP_EXAMPLE_LEN, "%s", msg);
    if (fatal && !r->failed) {
        r->failed = 1;
        snprintf(r->error, sizeof r->error, "%s (--on-error skip counts and skips such lines)", msg);
    }
    return fatal;
}

void prep_rejects_merge(prep_rejects *into, const prep_rejects *from)
{
    for (int k = 0; k < PREP_N_REASONS; k++) {
        prep_reason_stats *a = &into->reasons[k];
        const prep_reason_stats *b = &from->reasons[k];
        a->count += b->count;
        for (int i = 0; i < b->n_text && a->n_text < PREP_MAX_EXAMPLES; i++)
            memcpy(a->text[a->n_text++], b->text[i], PREP_EXAMPLE_LEN);
    }
    into->blank += from->blank;
    if (from->failed && !into->failed) {
        into->failed = 1;
        memcpy(into->error, from->error, sizeof into->error);
    }
}

void prep_rejects_clear(prep_rejects *r) { memset(r, 0, sizeof *r); }
