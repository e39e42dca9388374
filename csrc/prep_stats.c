/* prep_stats: the report of a prep run (counts, splits, length percentiles, rejected rows). */
#include <inttypes.h>
#include <stdlib.h>

#include "prep_internal.h"

const double prep_pct_levels[PREP_N_PCT] = {0, 10, 25, 50, 75, 90, 99, 100};

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* Nearest rank on the ascending order: index floor(p/100 * (n-1)). */
static void percentiles(uint32_t *v, uint64_t n, uint32_t *out)
{
    memset(out, 0, PREP_N_PCT * sizeof *out);
    if (n == 0)
        return;
    qsort(v, n, sizeof *v, cmp_u32);
    for (int k = 0; k < PREP_N_PCT; k++)
        out[k] = v[(uint64_t)(prep_pct_levels[k] / 100.0 * (double)(n - 1))];
}

void prep_stats_fill(prep_report *rep, const prep_result *res, const uint32_t *user_len, uint64_t n_users)
{
    const ds_contents *c = &res->contents;
    memset(rep->records, 0, sizeof rep->records);
    memset(rep->positives, 0, sizeof rep->positives);
    uint64_t n_ctr = 0;
    for (uint64_t i = 0; i < c->n_records; i++) {
        const ds_record *r = &c->records[i];
        rep->records[r->split]++;
        rep->positives[r->split] += r->label == 1;
        n_ctr += r->split != DS_SPLIT_PRETRAIN;
    }
    rep->n_tokens = c->n_tokens;
    uint32_t *v = malloc((n_ctr > n_users ? n_ctr : n_users) * sizeof *v + 4);
    if (!v)
        return;
    if (user_len) {
        memcpy(v, user_len, n_users * sizeof *v);
        percentiles(v, n_users, rep->user_len_pct);
    }
    uint64_t k = 0;
    for (uint64_t i = 0; i < c->n_records; i++)
        if (c->records[i].split != DS_SPLIT_PRETRAIN)
            v[k++] = c->records[i].hist_len;
    percentiles(v, k, rep->hist_len_pct);
    free(v);
}

void prep_stats_rejects(prep_report *rep, const prep_rejects *rej)
{
    memcpy(rep->reasons, rej->reasons, sizeof rep->reasons);
    rep->blank_lines = rej->blank;
}

static void print_pct(FILE *f, const char *what, const uint32_t *p)
{
    fprintf(f, "%s:", what);
    for (int k = 0; k < PREP_N_PCT; k++)
        fprintf(f, " p%g=%u", prep_pct_levels[k], p[k]);
    fprintf(f, "\n");
}

void prep_print_report(const prep_report *r, FILE *f)
{
    fprintf(f, "format: %s\n", prep_format_name(r->format));
    fprintf(f, "lines read: %" PRIu64 " (blank: %" PRIu64 ")\n", r->lines, r->blank_lines);
    fprintf(f, "rows used: %" PRIu64 "\n", r->rows);
    uint64_t rejected = 0, filtered = 0;
    for (int k = 0; k < PREP_N_REASONS; k++) {
        if (k < PREP_N_ERRORS)
            rejected += r->reasons[k].count;
        else
            filtered += r->reasons[k].count;
    }
    fprintf(f, "rows rejected: %" PRIu64 "\n", rejected);
    fprintf(f, "rows filtered: %" PRIu64 "\n", filtered);
    for (int k = 0; k < PREP_N_REASONS; k++) {
        if (!r->reasons[k].count)
            continue;
        fprintf(f, "  %s: %" PRIu64 "\n", prep_reason_name(k), r->reasons[k].count);
        for (int i = 0; i < r->reasons[k].n_text; i++)
            fprintf(f, "    e.g. %s\n", r->reasons[k].text[i]);
    }
    fprintf(f, "users: %" PRIu64 "\nitems: %" PRIu64 "\ncategories: %" PRIu64 "\ntokens: %" PRIu64 "\n", r->users, r->items,
            r->cates, r->n_tokens);
    if (r->format != PREP_FMT_GPSD) {
        const protocol_stats *p = &r->protocol;
        fprintf(f, "time range: %lld .. %lld\n", (long long)r->time_first, (long long)r->time_last);
        fprintf(f, "users kept: %" PRIu64 " (too short: %" PRIu64 ", no pretraining sequence: %" PRIu64 ")\n", p->users_kept,
                p->users_too_short, p->users_no_pretrain);
        fprintf(f, "users train: %" PRIu64 "\nusers test: %" PRIu64 "\nusers valid: %" PRIu64 "\n",
                p->users_kept - p->users_test - p->users_valid, p->users_test, p->users_valid);
        fprintf(f, "split time: %lld", (long long)p->split_time);
        if (p->users_valid)
            fprintf(f, " (valid time: %lld)", (long long)p->valid_time);
        fprintf(f, "\n");
        print_pct(f, "interactions per user", r->user_len_pct);
    }
    for (int s = 0; s < DS_N_SPLITS; s++)
        fprintf(f, "records %s: %" PRIu64 " (positives %" PRIu64 ")\n", ds_split_name(s), r->records[s], r->positives[s]);
    print_pct(f, "CTR history length", r->hist_len_pct);
    fprintf(f, "threads: %d\n", r->threads);
    fprintf(f, "seconds: read+parse %.3f, ids+group %.3f, protocol %.3f, write %.3f, total %.3f\n", r->seconds_read,
            r->seconds_group, r->seconds_protocol, r->seconds_write, r->seconds_total);
    if (r->seconds_read + r->seconds_group + r->seconds_protocol > 0 && r->rows)
        fprintf(f, "rows/s (excluding write): %.0f\n",
                (double)(r->rows + rejected + filtered) / (r->seconds_read + r->seconds_group + r->seconds_protocol));
}

int prep_report_write(const prep_report *r, const char *path, gp_err *e)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&buf, &len);
    if (!mem)
        return gp_fail(e, "%s: cannot format the report", path);
    prep_print_report(r, mem);
    fclose(mem);
    int rc = gp_write_atomic(path, buf, len, e);
    free(buf);
    return rc;
}
