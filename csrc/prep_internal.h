/* prep internals shared by csrc/prep*.c: the block reader, rejection accounting, key maps, the
 * row store of the event formats and the format parsers' entry points. Not a public contract. */
#ifndef GPSDREC_PREP_INTERNAL_H
#define GPSDREC_PREP_INTERNAL_H

#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#include "prep.h"

/* ---------------------------------------------------------------- reader (prep_reader.c) */

/* A run of whole lines of one file, handed to one thread. */
typedef struct {
    const char *path;
    const char *begin, *end;
    uint64_t first_line;   /* 1-based number of the first line */
    int last_unterminated; /* the piece ends with the file's last line, which has no newline */
} prep_piece;

/* Callbacks of prep_read_lines. block_begin and block_end run on the calling thread, parse on
 * every thread (piece t of a block always goes to worker t: outputs are merged in order). */
typedef struct {
    void *ctx;
    /* If set, called with the file's first line, which is then not parsed (a CSV header). */
    int (*header)(void *ctx, const char *line, size_t len, gp_err *e);
    int (*block_begin)(void *ctx, uint64_t n_lines, size_t n_bytes, gp_err *e);
    void (*parse)(void *ctx, int worker, const prep_piece *p);
    int (*block_end)(void *ctx, gp_err *e);
} prep_line_handler;

/* Reads path ("-" = stdin) in blocks of about block_bytes, splits each block into `workers`
 * pieces at line boundaries and calls the handler. Fails on an unreadable file, an empty file,
 * a line longer than 1 GiB or a callback failure. *n_lines receives the lines read. */
int prep_read_lines(const char *path, int workers, size_t block_bytes, const prep_line_handler *h, uint64_t *n_lines,
                    gp_err *e);

/* Next line of [*cur, end): sets *line and *len without the newline and a trailing '\r'; 0 at end. */
static inline int prep_next_line(const char **cur, const char *end, const char **line, size_t *len)
{
    const char *p = *cur;
    if (p >= end)
        return 0;
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    const char *stop = nl ? nl : end;
    *cur = nl ? nl + 1 : end;
    size_t n = (size_t)(stop - p);
    if (n > 0 && p[n - 1] == '\r')
        n--;
    *line = p;
    *len = n;
    return 1;
}

/* ---------------------------------------------------------------- rejections (prep_reject.c) */

typedef struct {
    prep_reason_stats reasons[PREP_N_REASONS];
    uint64_t blank;
    int failed;               /* an error in abort mode: the piece stops there */
    char error[GP_ERR_LEN];
} prep_rejects;

/* Counts a rejected line (or item) for `reason`, keeps its message among the first examples,
 * and, for an error with on_error = ABORT, records it as the failure. Returns 1 when parsing
 * must stop. The message is "<path>:<line>: <detail>: \"<text>\"" (text shortened, control bytes
 * escaped); line 0 leaves the line number out. */
int prep_reject(prep_rejects *r, int on_error, int reason, const char *path, uint64_t line, const char *text,
                size_t len, const char *fmt, ...) __attribute__((format(printf, 8, 9)));
/* Appends `from` to `into` (counts add, examples kept in order up to the limit; the first
 * failure wins). */
void prep_rejects_merge(prep_rejects *into, const prep_rejects *from);
void prep_rejects_clear(prep_rejects *r);
/* Escaped, shortened copy of text for messages. */
void prep_quote_text(char *out, size_t n, const char *text, size_t len);

/* ---------------------------------------------------------------- key maps (prep_keys.c) */

/* Raw key -> provisional id (0, 1, ... in order of insertion, which may depend on threads), then
 * finalize: final id = 1 + rank of the key among the used keys in ascending order (so results
 * never depend on the provisional numbering). Integer keys are in [0, 2^63-2]. put/get are
 * thread-safe; an integer map must have room reserved (prep_keymap_reserve, serially) for every
 * key a parallel phase may add. */
enum { PREP_KEY_INT = 0, PREP_KEY_STR = 1 };
#define PREP_NO_ID UINT32_MAX
#define PREP_MAX_INT_KEY (INT64_MAX - 1)
/* meta_cate value of an item described by metadata without a category (PREP_NO_ID: not described). */
#define PREP_META_NONE (PREP_NO_ID - 1)

typedef struct prep_keymap prep_keymap;
prep_keymap *prep_keymap_new(int kind, const char *what);
void prep_keymap_free(prep_keymap *m);
int prep_keymap_kind(const prep_keymap *m);
int prep_keymap_reserve(prep_keymap *m, uint64_t extra, gp_err *e);
uint64_t prep_keymap_size(const prep_keymap *m);
/* PREP_NO_ID when the map is full (reserve failed to be called or 2^32-2 keys). */
uint32_t prep_key_put_int(prep_keymap *m, int64_t key);
uint32_t prep_key_put_str(prep_keymap *m, const char *s, size_t n);
uint32_t prep_key_get_int(prep_keymap *m, int64_t key);
/* Starts loading the slot of an integer key (a later put/get of it then finds it in cache). */
void prep_key_prefetch_int(const prep_keymap *m, int64_t key);
uint32_t prep_key_get_str(prep_keymap *m, const char *s, size_t n);
/* used[prov] != 0 marks the keys that get a final id (NULL: all). */
int prep_keymap_finalize(prep_keymap *m, const uint8_t *used, gp_err *e);
/* After finalize: final id of a provisional id (0 = unused), count of final ids, key text of a
 * final id (NULL if none). */
const uint32_t *prep_keymap_final(const prep_keymap *m);
uint64_t prep_keymap_n_final(const prep_keymap *m);
const char *prep_keymap_key_text(const prep_keymap *m, uint32_t final_id, char *buf, size_t n);
/* Use explicit final ids instead of ranks (gpsd item2index): final[prov] = ids[prov]. */
int prep_keymap_set_final(prep_keymap *m, const uint32_t *ids, uint64_t max_id, gp_err *e);
/* Writes "key,index\n" for every final id in order, atomically. */
int prep_keymap_write(const prep_keymap *m, const char *path, gp_err *e);

/* Strict integer parse of [s, s+n): optional '-', digits, fits int64. 0 on success. */
int prep_parse_i64(const char *s, size_t n, int64_t *out);
/* Strict decimal number (for ratings). */
int prep_parse_f64(const char *s, size_t n, double *out);

/* ---------------------------------------------------------------- rows (prep_rows.c) */

/* Interactions in input order, with provisional ids. cate is PREP_NO_ID where the category
 * comes from the item (metadata formats). */
typedef struct {
    uint32_t *user, *item, *cate;
    int64_t *time;
    uint64_t n, cap;
} prep_rows;

int prep_rows_push(prep_rows *r, uint32_t user, uint32_t item, uint32_t cate, int64_t time);
int prep_rows_append(prep_rows *into, const prep_rows *from, gp_err *e);
void prep_rows_free(prep_rows *r);

/* Per-worker state of an event-format parse. */
typedef struct {
    prep_rows rows;
    prep_rejects rej;
    uint64_t lines;
    int oom;
} prep_worker;

/* ---------------------------------------------------------------- event pipeline (prep.c) */

/* The state every event format fills: maps, rows, and for metadata formats each item's
 * category (meta_cate[item prov] = category prov, PREP_NO_ID = unknown). */
typedef struct {
    const prep_opts *o;
    int workers;
    prep_keymap *users, *items, *cates;
    int row_cates;          /* categories per row (taobao, csv with a category column) */
    uint32_t *meta_cate;
    uint64_t meta_cate_n, meta_cate_cap;
    prep_rows rows;
    prep_worker *w;
    prep_rejects rej;       /* merged, in input order */
    uint64_t lines;
    uint64_t key_reserve;   /* new keys a block may add (set by block_begin) */
    char producer[64];
} prep_events;

/* Shared block callbacks for row formats: reserve room in the maps, then merge the workers'
 * rows and rejections in order (failing on the first error in abort mode). Their ctx is a
 * format's context whose first member is the prep_events pointer. */
int prep_events_block_begin(void *ctx, uint64_t n_lines, size_t n_bytes, gp_err *e);
int prep_events_block_end(void *ctx, gp_err *e);
/* Sets meta_cate[item] = cate, growing the array (serial). */
int prep_events_set_meta(prep_events *ev, uint32_t item, uint32_t cate, gp_err *e);
/* Fails with the merged first error, if any (abort mode). */
int prep_events_check(prep_events *ev, gp_err *e);

/* Format parsers: fill ev (rows, maps, metadata). */
int prep_parse_delimited(prep_events *ev, gp_err *e); /* taobao, movielens ratings, csv */
int prep_parse_movielens_items(prep_events *ev, gp_err *e);
int prep_parse_item_cate_csv(prep_events *ev, gp_err *e);
int prep_parse_amazon(prep_events *ev, gp_err *e);
int prep_parse_seq(prep_events *ev, gp_err *e);

/* ---------------------------------------------------------------- grouping (prep_group.c) */

/* Users' time-ordered sequences, laid out user after user in final user id order. */
typedef struct {
    uint64_t n_users, n_tokens;
    uint64_t *user_offset;
    uint32_t *user_len;
    int64_t *user_last;
    uint32_t *tok_item, *tok_cate;
    int64_t time_first, time_last;
} prep_pool;

/* Groups the rows by final user id (user_final[prov] - 1), keeps input order within a user, then
 * sorts each user's interactions by time (stable). Token items are item_final[prov]; token
 * categories are cate_final[row cate] when row_cates, else item_cate[token item]. */
int prep_group(const prep_rows *rows, const uint32_t *user_final, uint64_t n_users, const uint32_t *item_final,
               const uint32_t *cate_final, int row_cates, const uint32_t *item_cate, int workers, prep_pool *pool,
               gp_err *e);
void prep_pool_free(prep_pool *p);
/* item_cate[final item] = final category of the item's earliest row (ties: the first in the input). */
int prep_first_seen_cates(const prep_rows *rows, const uint32_t *item_final, const uint32_t *cate_final,
                          uint64_t n_items, int workers, uint32_t *item_cate, gp_err *e);

/* ---------------------------------------------------------------- results (prep.c) */

struct prep_result {
    ds_contents contents;
    uint32_t *item_cate, *tok_item, *tok_cate;
    ds_record *records;
    prep_keymap *items, *cates; /* for the key text of final ids */
    char producer[64], description[128];
};

/* The gpsd text format builds its result itself (prep_fmt_gpsd.c). */
int prep_build_gpsd(const prep_opts *o, prep_result *res, prep_report *rep, gp_err *e);

/* Fills the length percentiles and record counts of the report from the result. */
void prep_stats_fill(prep_report *rep, const prep_result *res, const uint32_t *user_len, uint64_t n_users);
/* Copies merged rejections into the report. */
void prep_stats_rejects(prep_report *rep, const prep_rejects *rej);
int prep_report_write(const prep_report *r, const char *path, gp_err *e);

/* ---------------------------------------------------------------- literal scanner (prep_pyjson.c) */

/* A top-level object of one line, JSON or a Python dict literal (single or double quoted
 * strings, True/False/None, tuples), scanned without building a tree. */
typedef struct {
    const char *p, *end;
    int depth;
    const char *err;       /* what went wrong */
    const char *err_at;
} prep_lit;

enum { PREP_LIT_STRING, PREP_LIT_NUMBER, PREP_LIT_LIST, PREP_LIT_DICT, PREP_LIT_CONST };

typedef struct {
    int type;
    const char *begin, *end; /* the value's text (strings: inside the quotes, undecoded) */
    char quote;
} prep_lit_value;

/* Iterates the top-level members of a dict: calls fn(ctx, key_decoded, key_len, value) for each.
 * fn returns 0 to go on. Returns 0, or -1 with l->err set on a syntax error. */
int prep_lit_members(prep_lit *l, int (*fn)(void *ctx, const char *key, size_t klen, const prep_lit_value *v),
                     void *ctx);
/* Iterates the elements of a list value. */
int prep_lit_elements(const prep_lit_value *list, int (*fn)(void *ctx, const prep_lit_value *v), void *ctx,
                      const char **err);
/* Decodes a string value (escapes, \x, \u, \U, surrogate pairs) into UTF-8; returns the length or
 * -1 on a bad escape. out must hold (end - begin) * 2 + 4 bytes. */
long prep_lit_decode(const prep_lit_value *v, char *out);

#endif
