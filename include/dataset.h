/* dataset: the one binary file format the trainer reads (written by synth and prep).
 *
 * A dataset holds a pool of interaction tokens (item id and category id per interaction, users'
 * sequences in time order, one after another) and records that point into it:
 *   - pretraining sequences (label 2, split PRETRAIN): history = pool[offset, offset+hist_len),
 *     target = (item, cate) = the next interaction after that history;
 *   - CTR samples (label 0/1, split TRAIN/TEST/VALID): the same history span, and the candidate
 *     (item, cate) at the slot after it.
 * A positive and its negative share one history span, and a user's pretraining sequence is a
 * prefix of the same span, so the pool stores each user's sequence once.
 *
 * File layout (little-endian, every section 64-byte aligned, offsets are 64-bit):
 *   [ds_header, 512 bytes]
 *   [item_cate    u32 x n_items ]   category of each item id; item 0 (padding) has category 0
 *   [tokens_item  u32 x n_tokens]
 *   [tokens_cate  u32 x n_tokens]
 *   [records      ds_record x n_records]  sorted by split: PRETRAIN, TRAIN, TEST, VALID
 * Ids are 1-based; 0 means padding/unknown. Every id in the file is < n_items / < n_cates.
 *
 * Integrity: each section has a checksum (CRC-32C of each 1 MiB chunk, then CRC-32C of the
 * array of chunk CRCs, so it can be computed in parallel); the header has its own CRC-32C over
 * its bytes with the header_crc field zeroed. dataset_open checks, in this order: the file is at
 * least a header long; magic; version; header CRC; header_size; file_size equals the real size
 * (a truncated or padded file is rejected); section offsets/sizes are aligned, inside the file,
 * non-overlapping and consistent with the counts; section checksums (unless opts.verify_checksums
 * is 0); then contents: item_cate[i] < n_cates and item_cate[0] == 0; every token id in range;
 * every record's span inside the pool, hist_len >= 1, item/cate in range and item != 0, label and
 * split valid and consistent (label 2 <=> PRETRAIN), records sorted by split matching the header
 * counts, user < n_users, reserved fields zero. Every failure names the file and what is wrong,
 * with the offending index and value.
 *
 * Writing goes through gp_atomic_*: the file appears under its name only when complete.
 */
#ifndef GPSDREC_DATASET_H
#define GPSDREC_DATASET_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "util.h"

#define DS_MAGIC "GPSDREC\0"
#define DS_VERSION 1u
#define DS_HEADER_SIZE 512u
#define DS_ALIGN 64u
#define DS_LABEL_PRETRAIN 2

enum ds_split { DS_SPLIT_PRETRAIN = 0, DS_SPLIT_TRAIN = 1, DS_SPLIT_TEST = 2, DS_SPLIT_VALID = 3, DS_N_SPLITS = 4 };

enum ds_section { DS_SEC_ITEM_CATE = 0, DS_SEC_TOKENS_ITEM = 1, DS_SEC_TOKENS_CATE = 2, DS_SEC_RECORDS = 3, DS_N_SECTIONS = 4 };

typedef struct {
    uint64_t offset;   /* first history token in the pool */
    uint32_t hist_len; /* history tokens, >= 1 */
    uint32_t user;     /* 0-based user index, < n_users */
    uint32_t item;     /* target (pretrain) or candidate (CTR) item id, >= 1 */
    uint32_t cate;     /* its category id */
    uint8_t label;     /* 0/1 click; 2 = pretraining sequence */
    uint8_t split;     /* enum ds_split */
    uint16_t reserved0;
    uint32_t reserved1;
} ds_record; /* 32 bytes */

typedef struct {
    uint64_t offset, size, checksum;
} ds_section_info;

typedef struct {
    char magic[8];
    uint32_t version;
    uint32_t header_size;
    uint64_t file_size;
    uint64_t n_items;  /* item vocabulary including padding id 0 */
    uint64_t n_cates;  /* category vocabulary including 0 */
    uint64_t n_users;
    uint64_t n_tokens;
    uint64_t n_records;
    uint64_t split_count[DS_N_SPLITS];
    uint64_t max_history; /* longest hist_len the producer allowed (informational) */
    uint64_t seed;        /* producer's seed (informational) */
    ds_section_info sections[DS_N_SECTIONS];
    char producer[64];    /* e.g. "gpsdrec synth" or "gpsdrec prep taobao", NUL-padded */
    char description[128];/* free text, NUL-padded */
    uint8_t pad[108];     /* zero */
    uint32_t header_crc;
} ds_header;
_Static_assert(sizeof(ds_header) == DS_HEADER_SIZE, "ds_header must be 512 bytes");
_Static_assert(sizeof(ds_record) == 32, "ds_record must be 32 bytes");

/* An opened dataset: pointers into the read-only mapping. */
typedef struct {
    char *path;
    void *map;
    size_t map_len;
    const ds_header *hdr;
    const uint32_t *item_cate;
    const uint32_t *tok_item;
    const uint32_t *tok_cate;
    const ds_record *records;
    const ds_record *split_begin[DS_N_SPLITS]; /* records of split s: split_begin[s] .. + split_count[s] */
    uint64_t split_count[DS_N_SPLITS];
} dataset;

typedef struct {
    int verify_checksums; /* 1 (default): CRC every section */
    int verify_contents;  /* 1 (default): range-check every token and record */
} ds_open_opts;

ds_open_opts ds_default_open_opts(void);
/* opts may be NULL (defaults). On failure ds is left zeroed, so dataset_close on it is harmless.
 * With verify_contents = 0, split_begin/split_count follow the header's counts unchecked. */
int dataset_open(dataset *ds, const char *path, const ds_open_opts *opts, gp_err *e);
void dataset_close(dataset *ds); /* unmaps and frees; safe on a zeroed or already closed struct */

/* What a producer hands to the writer. Records need not be sorted; the writer sorts them by
 * split (stable, so the producer's order within a split is kept) and fills the header. */
typedef struct {
    uint64_t n_items, n_cates, n_users, n_tokens, n_records;
    const uint32_t *item_cate; /* n_items */
    const uint32_t *tok_item;  /* n_tokens */
    const uint32_t *tok_cate;  /* n_tokens */
    const ds_record *records;  /* n_records */
    uint64_t max_history, seed;
    const char *producer, *description;
} ds_contents;

/* Validates the contents with the same rules as the reader (so a bad producer fails early),
 * then writes atomically. Errors name records by their index in c->records (the producer's
 * order). producer/description are truncated to fit (never inside a UTF-8 character); NULL
 * means empty. On failure no file (and no temporary) is left and an existing file is kept. */
int dataset_write(const char *path, const ds_contents *c, gp_err *e);

/* CRC-32C (Castagnoli) of a buffer, and the chunked section checksum described above.
 * gp_crc32c chains like zlib's crc32: start with crc = 0 and pass the previous result to
 * continue; gp_crc32c(0, "123456789", 9) == 0xE3069283. ds_section_checksum returns the 32-bit
 * CRC widened to 64 bits; it is the same whatever the OpenMP thread count. */
uint32_t gp_crc32c(uint32_t crc, const void *data, size_t len);
uint64_t ds_section_checksum(const void *data, uint64_t len);

const char *ds_split_name(int split); /* "pretrain", "train", "test", "valid"; "invalid" otherwise */
/* Print a human-readable description (counts, vocab sizes, split sizes, label balance,
 * history length percentiles, sections) to f. */
void dataset_describe(const dataset *ds, FILE *f);

#endif
