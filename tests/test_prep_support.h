/* Helpers shared by the prep tests. */
#ifndef GPSDREC_TEST_PREP_SUPPORT_H
#define GPSDREC_TEST_PREP_SUPPORT_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "prep.h"
#include "test.h"

/* Writes text to <tmp>/name and returns the malloc'd path. */
static inline char *prep_test_file(const char *name, const char *text)
{
    char *p = gp_path_join(test_tmp_dir(), name);
    char *slash = strrchr(p, '/');
    if (slash) {
        *slash = 0;
        gp_mkdirs(p, NULL);
        *slash = '/';
    }
    FILE *f = fopen(p, "wb");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
    return p;
}

/* Runs prep_build; returns the result (NULL on failure, message in e). */
static inline prep_result *prep_test_build(const prep_opts *o, prep_report *rep, gp_err *e)
{
    prep_result *r = NULL;
    memset(e, 0, sizeof *e);
    if (prep_build(o, &r, rep, e) != 0)
        return NULL;
    return r;
}

/* Item ids of user u's tokens, as raw key texts joined by spaces, into buf. */
static inline const char *prep_test_user_items(const prep_result *r, const ds_contents *c, uint64_t offset, uint32_t n,
                                               char *buf, size_t cap)
{
    size_t o = 0;
    buf[0] = 0;
    for (uint32_t k = 0; k < n && o + 1 < cap; k++) {
        char tmp[64];
        const char *key = prep_item_key(r, c->tok_item[offset + k], tmp, sizeof tmp);
        o += (size_t)snprintf(buf + o, cap - o, "%s%s", k ? " " : "", key ? key : "?");
    }
    return buf;
}

#endif
