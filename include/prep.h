/* prep: raw interaction logs to the binary dataset, with the official GPSD protocol.
 *
 * Formats (docs/prep.md has an example of each):
 *   taobao     UserBehavior CSV `user,item,category,behavior,timestamp` (integer ids, no header)
 *   amazon     review JSON lines (`reviewerID`, `asin`, `unixReviewTime`; 2014 and 2018 files) and
 *              the metadata lines (`asin` + `categories` (2014: list of paths, the first is used) or
 *              `category` (2018: one path)); a line may be JSON or a Python dict literal (the 2014
 *              metadata is written that way and the official scripts eval() every line)
 *   movielens  `u.data` (TAB) or `ratings.dat` (`::`): user, item, rating, timestamp; genres from
 *              `u.item` (flags, names from `u.genre` beside it) or `movies.dat` (`a|b|c`)
 *   csv        a CSV/TSV whose columns are named on the command line (header names or 1-based numbers)
 *   seq        one user per line `user item item ...`, an optional companion time file of the same
 *              shape and an optional item->attributes JSON object (category = first attribute)
 *   gpsd       the official gpsd-rec text files `user_id,item_id,cate_id,is_clicked,seq_value,seq_len`
 *              (pretrain_dataset.txt, ft_train_dataset.txt, ft_eval_dataset.txt, item2index.txt and
 *              cate2index.txt of a directory): records are taken as they are, no protocol is applied
 *
 * What prep reproduces (chqiwang/gpsd-rec dataset/preprocessing_*.py) for the event formats:
 * - item and category ids are the ranks of the raw keys sorted ascending (integers numerically,
 *   strings bytewise; a string column whose keys are all canonical integers sorts numerically),
 *   numbered from 1; 0 is padding/unknown. Written as `key,index` lines (item2index.txt, cate2index.txt).
 * - Amazon: the category key is the path joined with "&&", then ' ', ',', ':' and '#' removed
 *   (2018 lines also get the script's literal "true"->"True", "false"->"False"); the item vocabulary
 *   is the metadata items that have a review; a review of an item without metadata is dropped.
 * - Taobao: a history token keeps its row's category; an item's own category (for negatives and
 *   pretraining targets) is the category of its earliest row (ties: first in the file).
 * - each user's interactions sorted by time; equal times keep their input order (file order, or
 *   position in a sequence line), which is what the scripts' stable pandas sort does.
 * - then protocol_build (protocol.h): min_user_len 4 (Amazon, and every non-Taobao format) or 10
 *   (Taobao), window 200 (the scripts' MAX_LEN_ITEM; the official finetune config then truncates
 *   to 50 at training time, our max_history setting does the same), split quantile 0.7, one
 *   uniform negative per positive.
 *
 * Input handling: every line is parsed strictly. A bad line is an error naming the file, line
 * number, reason and the offending text; with on_error = SKIP it is counted by reason (the first
 * examples kept) and processing goes on. Filters (behaviour, rating, time range, missing metadata)
 * are counted the same way but never abort. Input is read in large blocks (stdin works: "-"), each
 * block split at line boundaries and parsed by all threads; results never depend on the thread
 * count. Outputs are written atomically (a file appears only when complete), the dataset last.
 */
#ifndef GPSDREC_PREP_H
#define GPSDREC_PREP_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "dataset.h"
#include "protocol.h"
#include "util.h"

enum prep_format { PREP_FMT_TAOBAO, PREP_FMT_AMAZON, PREP_FMT_MOVIELENS, PREP_FMT_CSV, PREP_FMT_SEQ, PREP_FMT_GPSD, PREP_N_FORMATS };
enum prep_on_error { PREP_ABORT = 0, PREP_SKIP = 1 };
enum prep_ids { PREP_IDS_AUTO = 0, PREP_IDS_INT = 1, PREP_IDS_STR = 2 };
enum prep_genre { PREP_GENRE_FIRST = 0, PREP_GENRE_JOINED = 1 };

/* Why a line (or part of one) was not used. Errors abort unless on_error = SKIP; filters never do. */
enum prep_reason {
    PREP_ERR_FIELDS,      /* wrong number of fields / a named column missing */
    PREP_ERR_QUOTE,       /* bad CSV quoting */
    PREP_ERR_ID,          /* an id that does not parse (empty, not an integer where one is needed) */
    PREP_ERR_ID_RANGE,    /* an integer id outside [0, 2^63-2] */
    PREP_ERR_TIME,        /* a timestamp that does not parse */
    PREP_ERR_TIME_RANGE,  /* a timestamp that does not fit 64 bits */
    PREP_ERR_RATING,      /* a rating that does not parse */
    PREP_ERR_JSON,        /* a JSON (or Python literal) syntax error */
    PREP_ERR_FIELD,       /* a required JSON field missing or of the wrong type */
    PREP_ERR_LABEL,       /* gpsd text: is_clicked not 0/1/2, or not what the file holds */
    PREP_ERR_SEQUENCE,    /* gpsd seq_value / seq_len, or a time line not matching its sequence line */
    PREP_N_ERRORS,
    PREP_FILT_BEHAVIOR = PREP_N_ERRORS, /* behaviour type not kept */
    PREP_FILT_RATING,     /* rating below min_rating */
    PREP_FILT_TIME,       /* timestamp outside time_min..time_max */
    PREP_FILT_NO_META,    /* Amazon review of an item without metadata */
    PREP_FILT_DUP_META,   /* metadata line of an item already described (the first is kept) */
    PREP_FILT_UNKNOWN,    /* gpsd text: target item not in item2index (an unknown history item is skipped) */
    PREP_FILT_SHORT,      /* gpsd text: fewer than 2 known history items (the official loader drops it) */
    PREP_N_REASONS
};
const char *prep_reason_name(int reason);
const char *prep_format_name(int format); /* "taobao", ... ; "?" otherwise */
int prep_format_parse(const char *name);  /* -1 if unknown */

#define PREP_MAX_EXAMPLES 3
#define PREP_EXAMPLE_LEN 320

typedef struct {
    int format;
    const char *input;    /* interactions (or, for gpsd, the directory of the official files); "-" = stdin */
    const char *meta;     /* amazon: metadata (required); movielens: u.item / movies.dat; seq: item->attributes
                             JSON; csv: `item,category` lines. NULL: none (category 0 = unknown) */
    const char *times;    /* seq: companion timestamp file; NULL: time = line number (see docs/prep.md) */
    /* csv / tsv */
    const char *delim;    /* field separator (1 or 2 characters); NULL: ',' ('\t' for a .tsv input) */
    int header;           /* the first line names the columns */
    const char *col_user, *col_item, *col_time, *col_cate, *col_behavior, *col_rating; /* names or 1-based numbers */
    int ids;              /* csv/seq key type: AUTO = string keys (numeric order when all are integers) */
    /* filters */
    const char *behaviors;  /* comma-separated behaviour values to keep; NULL = all (the official default) */
    double min_rating;      /* keep rows with rating >= this (movielens, csv with a rating column); NAN = all */
    int64_t time_min, time_max; /* rows outside are filtered (defaults: all of int64) */
    int genre;              /* movielens: FIRST genre of a movie, or all of them JOINED as one category */
    /* gpsd text */
    const char *item_map, *cate_map; /* default: <input>/item2index.txt, <input>/cate2index.txt if present */
    int on_error;
    protocol_opts protocol; /* prep_default_opts fills the format's official values */
    int threads;            /* 0 = OpenMP default */
    size_t block_bytes;     /* input block size (default 32 MiB) */
} prep_opts;

prep_opts prep_default_opts(int format);
int prep_validate_opts(const prep_opts *o, gp_err *e);

/* Percentiles reported for lengths: 0, 10, 25, 50, 75, 90, 99, 100. */
#define PREP_N_PCT 8
extern const double prep_pct_levels[PREP_N_PCT];

typedef struct {
    uint64_t count;
    char text[PREP_MAX_EXAMPLES][PREP_EXAMPLE_LEN];
    int n_text;
} prep_reason_stats;

typedef struct {
    int format;
    uint64_t lines;        /* input lines read (every file) */
    uint64_t blank_lines;  /* empty lines, skipped */
    uint64_t rows;         /* interactions (or gpsd records) accepted */
    prep_reason_stats reasons[PREP_N_REASONS];
    uint64_t users, items, cates; /* users with an accepted row; vocabulary without padding */
    int64_t time_first, time_last;
    protocol_stats protocol;     /* event formats */
    uint64_t records[DS_N_SPLITS], positives[DS_N_SPLITS];
    uint64_t n_tokens;
    uint32_t user_len_pct[PREP_N_PCT]; /* interactions per user (all users) */
    uint32_t hist_len_pct[PREP_N_PCT]; /* history length of the CTR records (train+test+valid) */
    double seconds_read, seconds_group, seconds_protocol, seconds_write, seconds_total;
    int threads;
} prep_report;

/* A prepared dataset in memory: contents views the arrays (ready for dataset_write). */
typedef struct prep_result prep_result;

/* Parses the input, builds ids, sequences and records. On failure *out is NULL. */
int prep_build(const prep_opts *o, prep_result **out, prep_report *report, gp_err *e);
const ds_contents *prep_contents(const prep_result *r);
/* Raw key of item / category id (1-based) as written to the maps; NULL when out of range. */
const char *prep_item_key(const prep_result *r, uint32_t id, char *buf, size_t n);
const char *prep_cate_key(const prep_result *r, uint32_t id, char *buf, size_t n);
/* Writes <dir>/item2index.txt, cate2index.txt, stats.txt, then data.gpsd, each atomically. */
int prep_write(const prep_result *r, const prep_report *report, const char *dir, gp_err *e);
void prep_result_free(prep_result *r);

/* prep_build + prep_write + free. */
int prep_run(const prep_opts *o, const char *out_dir, prep_report *report, gp_err *e);

void prep_print_report(const prep_report *r, FILE *f);

#endif
