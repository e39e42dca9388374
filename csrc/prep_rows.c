/* prep_rows: the growable columns of parsed interactions. */
#include <stdlib.h>

#include "prep_internal.h"

static int grow(prep_rows *r, uint64_t need)
{
    if (need <= r->cap)
        return 0;
    uint64_t cap = r->cap ? r->cap : 4096;
    while (cap < need)
        cap += cap / 2 + 4096;
    uint32_t *u = realloc(r->user, cap * sizeof *u);
    if (u)
        r->user = u;
    uint32_t *i = realloc(r->item, cap * sizeof *i);
    if (i)
        r->item = i;
    uint32_t *c = realloc(r->cate, cap * sizeof *c);
    if (c)
        r->cate = c;
    int64_t *t = realloc(r->time, cap * sizeof *t);
    if (t)
        r->time = t;
    if (!u || !i || !c || !t)
        return -1;
    r->cap = cap;
    return 0;
}

int prep_rows_push(prep_rows *r, uint32_t user, uint32_t item, uint32_t cate, int64_t time)
{
    if (r->n == r->cap && grow(r, r->n + 1) != 0)
        return -1;
    r->user[r->n] = user;
    r->item[r->n] = item;
    r->cate[r->n] = cate;
    r->time[r->n] = time;
    r->n++;
    return 0;
}

int prep_rows_append(prep_rows *into, const prep_rows *from, gp_err *e)
{
    if (from->n == 0)
        return 0;
    if (grow(into, into->n + from->n) != 0)
        return gp_fail(e, "prep: out of memory for %llu interactions", (unsigned long long)(into->n + from->n));
    memcpy(into->user + into->n, from->user, from->n * sizeof *from->user);
    memcpy(into->item + into->n, from->item, from->n * sizeof *from->item);
    memcpy(into->cate + into->n, from->cate, from->n * sizeof *from->cate);
    memcpy(into->time + into->n, from->time, from->n * sizeof *from->time);
    into->n += from->n;
    return 0;
}

void prep_rows_free(prep_rows *r)
{
    free(r->user);
    free(r->item);
    free(r->cate);
    free(r->time);
    memset(r, 0, sizeof *r);
}
