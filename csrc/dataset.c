/* dataset: writer, mmap reader, validation and description of the binary dataset format.
 *
 * One validation routine (validate_vocab + validate_contents) serves both the writer and the
 * reader, so a producer can never write a file the reader would refuse. Content checks scan
 * blocks in parallel and keep the lowest offending index (a min-reduction), so the reported
 * problem is the same whatever the thread count.
 */
#include "dataset.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the file is little-endian and read in place through mmap");

#define DS_CHUNK ((uint64_t)1 << 20)   /* section checksum chunk */
#define CHECK_BLOCK ((uint64_t)1 << 16) /* elements per parallel validation block */
#define WRITE_BUFFER (16 * DS_CHUNK)     /* records gathered per step when the writer sorts */

static const char *const section_names[DS_N_SECTIONS] = {"item_cate", "tokens_item", "tokens_cate", "records"};
static const uint64_t section_elem_size[DS_N_SECTIONS] = {4, 4, 4, sizeof(ds_record)};

const char *ds_split_name(int split)
{
    static const char *const names[DS_N_SPLITS] = {"pretrain", "train", "test", "valid"};
    return split >= 0 && split < DS_N_SPLITS ? names[split] : "invalid";
}

ds_open_opts ds_default_open_opts(void) { return (ds_open_opts){.verify_checksums = 1, .verify_contents = 1}; }

/* ---- checksums ---------------------------------------------------------------------------- */

/* Continues a section checksum: CRC-32C of each DS_CHUNK piece of data (the last may be short),
 * folded as little-endian u32 into acc. data must start on a chunk boundary of its section. */
static uint32_t fold_chunk_crcs(uint32_t acc, const uint8_t *data, uint64_t len)
{
    enum { BATCH = 1024 };
    uint8_t le[4 * BATCH];
    uint64_t n_chunks = (len + DS_CHUNK - 1) / DS_CHUNK;
    for (uint64_t first = 0; first < n_chunks; first += BATCH) {
        int64_t nb = (int64_t)GP_MIN((uint64_t)BATCH, n_chunks - first);
#pragma omp parallel for schedule(static) if (nb > 1)
        for (int64_t k = 0; k < nb; k++) {
            uint64_t off = (first + (uint64_t)k) * DS_CHUNK;
            uint32_t crc = gp_crc32c(0, data + off, (size_t)GP_MIN(DS_CHUNK, len - off));
            for (int b = 0; b < 4; b++)
                le[4 * k + b] = (uint8_t)(crc >> (8 * b));
        }
        acc = gp_crc32c(acc, le, (size_t)(4 * nb));
    }
    return acc;
}

uint64_t ds_section_checksum(const void *data, uint64_t len) { return fold_chunk_crcs(0, data, len); }

static uint32_t header_crc_of(const ds_header *h)
{
    ds_header copy = *h;
    copy.header_crc = 0;
    return gp_crc32c(0, &copy, sizeof copy);
}

/* ---- validation shared by reader and writer ---------------------------------------------- */

typedef struct {
    const char *name; /* how messages name the file */
    uint64_t n_items, n_cates, n_users, n_tokens, n_records;
    const uint32_t *item_cate, *tok_item, *tok_cate;
    const ds_record *records;
} ds_view;

/* Lowest i in [0, n) for which BAD holds (an expression of i), else n. Blocks go out in
 * increasing order; a thread skips blocks above its own best hit, and the min-reduction makes
 * the answer independent of the schedule. */
#define FIRST_BAD(n, result, BAD)                                                         \
    do {                                                                                  \
        uint64_t n_ = (n), best_ = n_;                                                    \
        int64_t blocks_ = (int64_t)((n_ + CHECK_BLOCK - 1) / CHECK_BLOCK);                \
        _Pragma("omp parallel for schedule(dynamic, 1) reduction(min : best_)")           \
        for (int64_t b_ = 0; b_ < blocks_; b_++) {                                        \
            uint64_t lo_ = (uint64_t)b_ * CHECK_BLOCK, hi_ = GP_MIN(lo_ + CHECK_BLOCK, n_); \
            if (lo_ >= best_)                                                             \
                continue;                                                                 \
            for (uint64_t i = lo_; i < hi_; i++)                                          \
                if (BAD) {                                                                \
                    best_ = i;                                                            \
                    break;                                                                \
                }                                                                         \
        }                                                                                 \
        (result) = best_;                                                                 \
    } while (0)

static const char *split_label(int split, char *buf, size_t n)
{
    if (split >= 0 && split < DS_N_SPLITS)
        return ds_split_name(split);
    snprintf(buf, n, "%d (invalid)", split);
    return buf;
}

/* The per-record rules. Returns 1 when r breaks one, and then (if msg) describes the first
 * broken rule; used both by the parallel scan and to word the message. */
static inline int record_problem(const ds_view *v, const ds_record *r, char *msg, size_t cap)
{
#define PROBLEM(...) return (msg ? snprintf(msg, cap, __VA_ARGS__) : 0), 1
    if (r->offset > v->n_tokens || r->hist_len > v->n_tokens - r->offset)
        PROBLEM("history span (offset %" PRIu64 " + hist_len %" PRIu32 ") lies beyond the pool (n_tokens = %" PRIu64 ")",
                r->offset, r->hist_len, v->n_tokens);
    if (r->hist_len == 0)
        PROBLEM("hist_len is 0 (every record needs at least one history token)");
    if (r->item == 0)
        PROBLEM("item 0 is padding, not a valid target/candidate item");
    if (r->item >= v->n_items)
        PROBLEM("item %" PRIu32 " out of range (n_items = %" PRIu64 ")", r->item, v->n_items);
    if (r->cate >= v->n_cates)
        PROBLEM("cate %" PRIu32 " out of range (n_cates = %" PRIu64 ")", r->cate, v->n_cates);
    if (r->label > DS_LABEL_PRETRAIN)
        PROBLEM("label %u is invalid (0/1 = click, 2 = pretraining sequence)", r->label);
    if (r->split >= DS_N_SPLITS)
        PROBLEM("split %u is invalid (0 pretrain, 1 train, 2 test, 3 valid)", r->split);
    if ((r->label == DS_LABEL_PRETRAIN) != (r->split == DS_SPLIT_PRETRAIN))
        PROBLEM("label %u does not fit split %s (label 2 is used exactly for pretrain records)", r->label,
                ds_split_name(r->split));
    if (r->user >= v->n_users)
        PROBLEM("user %" PRIu32 " out of range (n_users = %" PRIu64 ")", r->user, v->n_users);
    if (r->reserved0 != 0 || r->reserved1 != 0)
        PROBLEM("reserved fields are not zero (reserved0 = %u, reserved1 = %" PRIu32 ")", r->reserved0, r->reserved1);
    return 0;
#undef PROBLEM
}

static int validate_vocab(const ds_view *v, gp_err *e)
{
    if (v->n_items == 0)
        return gp_fail(e, "%s: n_items is 0, but the item vocabulary must at least hold padding id 0", v->name);
    if (v->n_cates == 0)
        return gp_fail(e, "%s: n_cates is 0, but the category vocabulary must at least hold id 0", v->name);
    return 0;
}

/* Every content rule. With split_count (the reader), records must also be sorted by split and
 * match those counts; without it (the writer, which sorts) any order is fine. */
static int validate_contents(const ds_view *v, const uint64_t *split_count, gp_err *e)
{
    uint64_t bad;
    const uint32_t *item_cate = v->item_cate, *ti = v->tok_item, *tc = v->tok_cate;
    const uint64_t n_items = v->n_items, n_cates = v->n_cates;

    FIRST_BAD(v->n_items, bad, item_cate[i] >= n_cates);
    if (bad < v->n_items)
        return gp_fail(e, "%s: item_cate[%" PRIu64 "] = %" PRIu32 " out of range (n_cates = %" PRIu64 ")", v->name, bad,
                       item_cate[bad], n_cates);
    if (v->n_items > 0 && item_cate[0] != 0)
        return gp_fail(e, "%s: item_cate[0] = %" PRIu32 ", but item 0 is padding and must have category 0", v->name,
                       item_cate[0]);

    FIRST_BAD(v->n_tokens, bad, ti[i] >= n_items || tc[i] >= n_cates);
    if (bad < v->n_tokens) {
        if (ti[bad] >= n_items)
            return gp_fail(e, "%s: token %" PRIu64 ": item %" PRIu32 " out of range (n_items = %" PRIu64 ")", v->name, bad,
                           ti[bad], n_items);
        return gp_fail(e, "%s: token %" PRIu64 ": cate %" PRIu32 " out of range (n_cates = %" PRIu64 ")", v->name, bad,
                       tc[bad], n_cates);
    }

    const ds_record *rec = v->records;
    FIRST_BAD(v->n_records, bad, record_problem(v, &rec[i], NULL, 0));
    if (bad < v->n_records) {
        char what[512], sb[32];
        record_problem(v, &rec[bad], what, sizeof what);
        return gp_fail(e, "%s: record %" PRIu64 " (split %s): %s", v->name, bad, split_label(rec[bad].split, sb, sizeof sb),
                       what);
    }
    if (!split_count)
        return 0;

    FIRST_BAD(v->n_records, bad, i > 0 && rec[i].split < rec[i - 1].split);
    if (bad < v->n_records)
        return gp_fail(e, "%s: records not sorted by split: record %" PRIu64 " (split %s) follows record %" PRIu64 " (split %s)",
                       v->name, bad, ds_split_name(rec[bad].split), bad - 1, ds_split_name(rec[bad - 1].split));
    /* Sorted, so each split is one run; find where each run starts. */
    uint64_t begin[DS_N_SPLITS + 1];
    for (int s = 0; s <= DS_N_SPLITS; s++) {
        uint64_t lo = 0, hi = v->n_records;
        while (lo < hi) {
            uint64_t mid = lo + (hi - lo) / 2;
            if (rec[mid].split < s)
                lo = mid + 1;
            else
                hi = mid;
        }
        begin[s] = lo;
    }
    for (int s = 0; s < DS_N_SPLITS; s++)
        if (begin[s + 1] - begin[s] != split_count[s])
            return gp_fail(e, "%s: split count mismatch: the header says %" PRIu64 " %s records but the file holds %" PRIu64,
                           v->name, split_count[s], ds_split_name(s), begin[s + 1] - begin[s]);
    return 0;
}

/* ---- reader -------------------------------------------------------------------------------- */

static int check_header(const ds_header *h, const char *path, uint64_t real_size, gp_err *e)
{
    if (memcmp(h->magic, DS_MAGIC, sizeof h->magic) != 0) {
        char shown[8 * 4 + 1];
        size_t n = 0;
        for (int i = 0; i < 8; i++) {
            unsigned char ch = (unsigned char)h->magic[i];
            n += (size_t)snprintf(shown + n, sizeof shown - n, ch >= 0x20 && ch < 0x7f && ch != '\\' ? "%c" : "\\x%02x", ch);
        }
        return gp_fail(e, "%s: not a gpsdrec dataset: bad magic \"%s\" (expected \"GPSDREC\\x00\")", path, shown);
    }
    if (h->version > DS_VERSION)
        return gp_fail(e, "%s: dataset format version %" PRIu32 " is newer than this build reads (version %u); update gpsdrec or re-create the file",
                       path, h->version, DS_VERSION);
    if (h->version != DS_VERSION)
        return gp_fail(e, "%s: invalid dataset format version %" PRIu32 " (this build reads version %u)", path, h->version,
                       DS_VERSION);
    uint32_t crc = header_crc_of(h);
    if (crc != h->header_crc)
        return gp_fail(e, "%s: header checksum mismatch (stored 0x%08" PRIx32 ", computed 0x%08" PRIx32 "): the header is corrupted",
                       path, h->header_crc, crc);
    if (h->header_size != DS_HEADER_SIZE)
        return gp_fail(e, "%s: header_size is %" PRIu32 ", expected %u", path, h->header_size, DS_HEADER_SIZE);
    if (h->file_size != real_size)
        return gp_fail(e, "%s: the header says the file is %" PRIu64 " bytes but it is %" PRIu64 " bytes (%s)", path, h->file_size,
                       real_size, real_size < h->file_size ? "truncated" : "trailing bytes after the dataset");
    return 0;
}

static int check_sections(const ds_header *h, const char *path, gp_err *e)
{
    const ds_section_info *sec = h->sections;
    for (int s = 0; s < DS_N_SECTIONS; s++)
        if (sec[s].offset % DS_ALIGN != 0)
            return gp_fail(e, "%s: section %s: offset %" PRIu64 " is not %u-byte aligned", path, section_names[s],
                           sec[s].offset, DS_ALIGN);
    for (int s = 0; s < DS_N_SECTIONS; s++)
        if (sec[s].offset > h->file_size || sec[s].size > h->file_size - sec[s].offset)
            return gp_fail(e, "%s: section %s (offset %" PRIu64 ", size %" PRIu64 ") lies outside the file (%" PRIu64 " bytes)", path,
                           section_names[s], sec[s].offset, sec[s].size, h->file_size);
    /* Inside the file now, so offset + size cannot overflow. The header counts as a region. */
    for (int a = -1; a < DS_N_SECTIONS; a++) {
        uint64_t a_lo = a < 0 ? 0 : sec[a].offset, a_hi = a < 0 ? DS_HEADER_SIZE : sec[a].offset + sec[a].size;
        for (int b = a + 1; b < DS_N_SECTIONS; b++) {
            uint64_t b_lo = sec[b].offset, b_hi = sec[b].offset + sec[b].size;
            if (a_lo < a_hi && b_lo < b_hi && a_lo < b_hi && b_lo < a_hi)
                return gp_fail(e, "%s: section %s [%" PRIu64 ", %" PRIu64 ") overlaps %s%s [%" PRIu64 ", %" PRIu64 ")", path,
                               section_names[b], b_lo, b_hi, a < 0 ? "the header" : "section ", a < 0 ? "" : section_names[a],
                               a_lo, a_hi);
        }
    }
    const uint64_t counts[DS_N_SECTIONS] = {h->n_items, h->n_tokens, h->n_tokens, h->n_records};
    const char *count_names[DS_N_SECTIONS] = {"n_items", "n_tokens", "n_tokens", "n_records"};
    for (int s = 0; s < DS_N_SECTIONS; s++) {
        uint64_t want;
        if (__builtin_mul_overflow(counts[s], section_elem_size[s], &want) || want != sec[s].size)
            return gp_fail(e, "%s: section %s: size %" PRIu64 " bytes does not match %s = %" PRIu64 " (%" PRIu64 " bytes each)", path,
                           section_names[s], sec[s].size, count_names[s], counts[s], section_elem_size[s]);
    }
    uint64_t sum = 0;
    for (int s = 0; s < DS_N_SECTIONS; s++)
        sum += h->split_count[s] > h->n_records ? h->n_records + 1 : h->split_count[s]; /* no wrap-around */
    if (sum != h->n_records)
        return gp_fail(e, "%s: split counts (%" PRIu64 " + %" PRIu64 " + %" PRIu64 " + %" PRIu64 ") do not add up to n_records = %" PRIu64,
                       path, h->split_count[0], h->split_count[1], h->split_count[2], h->split_count[3], h->n_records);
    return 0;
}

static int check_checksums(const ds_header *h, const uint8_t *base, const char *path, gp_err *e)
{
    for (int s = 0; s < DS_N_SECTIONS; s++) {
        uint64_t got = ds_section_checksum(base + h->sections[s].offset, h->sections[s].size);
        if (got != h->sections[s].checksum)
            return gp_fail(e, "%s: section %s checksum mismatch (stored 0x%08" PRIx64 ", computed 0x%08" PRIx64 "): the file is corrupted",
                           path, section_names[s], h->sections[s].checksum, got);
    }
    return 0;
}

static int open_mapped(dataset *ds, const char *path, const ds_open_opts *o, gp_err *e)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return gp_fail(e, "%s: cannot open dataset: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int rc = gp_fail(e, "%s: cannot stat dataset: %s", path, strerror(errno));
        close(fd);
        return rc;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return gp_fail(e, "%s: not a regular file", path);
    }
    uint64_t size = (uint64_t)st.st_size;
    if (size == 0) {
        close(fd);
        return gp_fail(e, "%s: empty file (0 bytes); a dataset starts with a %u-byte header", path, DS_HEADER_SIZE);
    }
    if (size < DS_HEADER_SIZE) {
        close(fd);
        return gp_fail(e, "%s: file is %" PRIu64 " bytes, shorter than the %u-byte dataset header", path, size, DS_HEADER_SIZE);
    }
    void *map = mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, fd, 0);
    int map_errno = errno;
    close(fd);
    if (map == MAP_FAILED)
        return gp_fail(e, "%s: cannot mmap %" PRIu64 " bytes: %s", path, size, strerror(map_errno));
    ds->map = map;
    ds->map_len = (size_t)size;

    const ds_header *h = map;
    if (check_header(h, path, size, e) != 0 || check_sections(h, path, e) != 0)
        return -1;
    const uint8_t *base = map;
    ds->hdr = h;
    ds->item_cate = (const uint32_t *)(base + h->sections[DS_SEC_ITEM_CATE].offset);
    ds->tok_item = (const uint32_t *)(base + h->sections[DS_SEC_TOKENS_ITEM].offset);
    ds->tok_cate = (const uint32_t *)(base + h->sections[DS_SEC_TOKENS_CATE].offset);
    ds->records = (const ds_record *)(base + h->sections[DS_SEC_RECORDS].offset);
    ds_view v = {path, h->n_items, h->n_cates, h->n_users, h->n_tokens, h->n_records, ds->item_cate, ds->tok_item, ds->tok_cate,
                 ds->records};
    if (validate_vocab(&v, e) != 0)
        return -1;
    if (o->verify_checksums && check_checksums(h, base, path, e) != 0)
        return -1;
    if (o->verify_contents && validate_contents(&v, h->split_count, e) != 0)
        return -1;
    uint64_t begin = 0;
    for (int s = 0; s < DS_N_SPLITS; s++) {
        ds->split_begin[s] = ds->records + begin;
        ds->split_count[s] = h->split_count[s];
        begin += h->split_count[s];
    }
    return 0;
}

int dataset_open(dataset *ds, const char *path, const ds_open_opts *opts, gp_err *e)
{
    memset(ds, 0, sizeof *ds);
    ds_open_opts o = opts ? *opts : ds_default_open_opts();
    if (open_mapped(ds, path, &o, e) != 0) {
        dataset_close(ds);
        return -1;
    }
    ds->path = gp_xstrdup(path);
    return 0;
}

void dataset_close(dataset *ds)
{
    if (!ds)
        return;
    if (ds->map)
        munmap(ds->map, ds->map_len);
    free(ds->path);
    memset(ds, 0, sizeof *ds);
}

/* ---- writer -------------------------------------------------------------------------------- */

/* NUL-padded copy that always leaves a terminator and never cuts a UTF-8 sequence in half. */
static void copy_text_field(char *dst, size_t cap, const char *src)
{
    memset(dst, 0, cap);
    if (!src)
        return;
    size_t n = strnlen(src, cap - 1);
    if (src[n] != '\0')
        while (n > 0 && ((unsigned char)src[n] & 0xC0) == 0x80)
            n--;
    memcpy(dst, src, n);
}

/* Yields the records in split order, keeping the producer's order within a split. */
typedef struct {
    const ds_record *records;
    uint64_t n_records;
    const uint64_t *split_count;
    int split;
    uint64_t next, emitted;
} sorted_records;

static size_t sorted_records_fill(sorted_records *it, ds_record *buf, size_t cap)
{
    size_t k = 0;
    while (k < cap && it->split < DS_N_SPLITS) {
        if (it->emitted == it->split_count[it->split] || it->next == it->n_records) {
            it->split++;
            it->next = it->emitted = 0;
            continue;
        }
        const ds_record *r = &it->records[it->next++];
        if (r->split == it->split) {
            buf[k++] = *r;
            it->emitted++;
        }
    }
    return k;
}

static int write_zeros(gp_atomic_file *af, uint64_t *pos, uint64_t to, gp_err *e)
{
    static const uint8_t zeros[DS_ALIGN];
    while (*pos < to) {
        size_t n = (size_t)GP_MIN(to - *pos, (uint64_t)sizeof zeros);
        if (gp_atomic_write(af, zeros, n, e) != 0)
            return -1;
        *pos += n;
    }
    return 0;
}

static int write_sections(gp_atomic_file *af, const ds_header *h, const ds_contents *c, int sorted, ds_record *buf, gp_err *e)
{
    uint64_t pos = 0;
    if (gp_atomic_write(af, h, sizeof *h, e) != 0)
        return -1;
    pos = sizeof *h;
    const void *arrays[DS_SEC_RECORDS] = {c->item_cate, c->tok_item, c->tok_cate};
    for (int s = 0; s < DS_SEC_RECORDS; s++) {
        if (write_zeros(af, &pos, h->sections[s].offset, e) != 0 || gp_atomic_write(af, arrays[s], h->sections[s].size, e) != 0)
            return -1;
        pos += h->sections[s].size;
    }
    if (write_zeros(af, &pos, h->sections[DS_SEC_RECORDS].offset, e) != 0)
        return -1;
    if (sorted)
        return gp_atomic_write(af, c->records, h->sections[DS_SEC_RECORDS].size, e);
    sorted_records it = {c->records, c->n_records, h->split_count, 0, 0, 0};
    size_t n;
    while ((n = sorted_records_fill(&it, buf, WRITE_BUFFER / sizeof *buf)) > 0)
        if (gp_atomic_write(af, buf, n * sizeof *buf, e) != 0)
            return -1;
    return 0;
}

int dataset_write(const char *path, const ds_contents *c, gp_err *e)
{
    if (!c)
        return gp_fail(e, "%s: not written: no contents given", path);
    if ((c->n_items && !c->item_cate) || (c->n_tokens && (!c->tok_item || !c->tok_cate)) || (c->n_records && !c->records))
        return gp_fail(e, "%s: not written: the contents declare %" PRIu64 " items, %" PRIu64 " tokens and %" PRIu64
                          " records but an array is missing", path, c->n_items, c->n_tokens, c->n_records);
    size_t name_len = strlen(path) + 16;
    char *name = gp_xmalloc(name_len);
    snprintf(name, name_len, "%s (not written)", path);
    ds_view v = {name, c->n_items, c->n_cates, c->n_users, c->n_tokens, c->n_records, c->item_cate, c->tok_item, c->tok_cate,
                 c->records};
    int rc = validate_vocab(&v, e) != 0 || validate_contents(&v, NULL, e) != 0 ? -1 : 0;
    free(name);
    if (rc != 0)
        return -1;

    ds_header h;
    memset(&h, 0, sizeof h);
    memcpy(h.magic, DS_MAGIC, sizeof h.magic);
    h.version = DS_VERSION;
    h.header_size = DS_HEADER_SIZE;
    h.n_items = c->n_items;
    h.n_cates = c->n_cates;
    h.n_users = c->n_users;
    h.n_tokens = c->n_tokens;
    h.n_records = c->n_records;
    h.max_history = c->max_history;
    h.seed = c->seed;
    copy_text_field(h.producer, sizeof h.producer, c->producer);
    copy_text_field(h.description, sizeof h.description, c->description);
    int sorted = 1;
    for (uint64_t i = 0; i < c->n_records; i++) {
        h.split_count[c->records[i].split]++; /* split < DS_N_SPLITS: validated above */
        if (i > 0 && c->records[i].split < c->records[i - 1].split)
            sorted = 0;
    }
    const uint64_t counts[DS_N_SECTIONS] = {c->n_items, c->n_tokens, c->n_tokens, c->n_records};
    uint64_t end = DS_HEADER_SIZE;
    for (int s = 0; s < DS_N_SECTIONS; s++) {
        h.sections[s].offset = (end + DS_ALIGN - 1) / DS_ALIGN * DS_ALIGN;
        h.sections[s].size = counts[s] * section_elem_size[s]; /* the arrays exist in memory: no overflow */
        end = h.sections[s].offset + h.sections[s].size;
    }
    h.file_size = end;
    h.sections[DS_SEC_ITEM_CATE].checksum = ds_section_checksum(c->item_cate, h.sections[DS_SEC_ITEM_CATE].size);
    h.sections[DS_SEC_TOKENS_ITEM].checksum = ds_section_checksum(c->tok_item, h.sections[DS_SEC_TOKENS_ITEM].size);
    h.sections[DS_SEC_TOKENS_CATE].checksum = ds_section_checksum(c->tok_cate, h.sections[DS_SEC_TOKENS_CATE].size);

    ds_record *buf = NULL;
    if (sorted) {
        h.sections[DS_SEC_RECORDS].checksum = ds_section_checksum(c->records, h.sections[DS_SEC_RECORDS].size);
    } else {
        /* Stream the sorted order twice (checksum, then write) rather than copy all records;
         * WRITE_BUFFER is whole chunks, so the chunk boundaries match the file's. */
        buf = gp_alloc_or_fail(WRITE_BUFFER, "sorting dataset records", e);
        if (!buf)
            return gp_wrap(e, "%s: not written", path);
        sorted_records it = {c->records, c->n_records, h.split_count, 0, 0, 0};
        uint32_t acc = 0;
        size_t n;
        while ((n = sorted_records_fill(&it, buf, WRITE_BUFFER / sizeof *buf)) > 0)
            acc = fold_chunk_crcs(acc, (const uint8_t *)buf, n * sizeof *buf);
        h.sections[DS_SEC_RECORDS].checksum = acc;
    }
    h.header_crc = header_crc_of(&h);

    gp_atomic_file af;
    if (gp_atomic_open(&af, path, e) != 0) {
        gp_free_aligned(buf);
        return -1;
    }
    if (write_sections(&af, &h, c, sorted, buf, e) != 0) {
        gp_atomic_abort(&af);
        gp_free_aligned(buf);
        return -1;
    }
    gp_free_aligned(buf);
    return gp_atomic_commit(&af, e);
}

/* ---- description --------------------------------------------------------------------------- */

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* min, median, p90, p99, max of hist_len (nearest rank). Returns -1 if memory runs out. */
static int hist_len_percentiles(const ds_record *r, uint64_t n, uint32_t out[5])
{
    static const double ranks[5] = {0.0, 0.5, 0.9, 0.99, 1.0};
    uint64_t want[5];
    for (int k = 0; k < 5; k++) {
        uint64_t rank = (uint64_t)ceil(ranks[k] * (double)n); /* 1-based */
        want[k] = rank < 1 ? 0 : GP_MIN(rank, n) - 1;
    }
    uint32_t hi = 0;
    for (uint64_t i = 0; i < n; i++)
        hi = GP_MAX(hi, r[i].hist_len);
    if (hi < (1u << 22)) { /* a histogram beats sorting for realistic history lengths */
        uint64_t *hist = calloc((size_t)hi + 1, sizeof *hist);
        if (!hist)
            return -1;
        for (uint64_t i = 0; i < n; i++)
            hist[r[i].hist_len]++;
        uint64_t seen = 0;
        int k = 0;
        for (uint32_t len = 0; len <= hi && k < 5; len++) {
            seen += hist[len];
            while (k < 5 && want[k] < seen)
                out[k++] = len;
        }
        free(hist);
        return 0;
    }
    uint32_t *lens = malloc((size_t)n * sizeof *lens);
    if (!lens)
        return -1;
    for (uint64_t i = 0; i < n; i++)
        lens[i] = r[i].hist_len;
    qsort(lens, (size_t)n, sizeof *lens, cmp_u32);
    for (int k = 0; k < 5; k++)
        out[k] = lens[want[k]];
    free(lens);
    return 0;
}

void dataset_describe(const dataset *ds, FILE *f)
{
    const ds_header *h = ds->hdr;
    if (!h) {
        fprintf(f, "(no dataset open)\n");
        return;
    }
    char size_buf[32];
    fprintf(f, "dataset      %s\n", ds->path ? ds->path : "?");
    fprintf(f, "format       version %" PRIu32 ", %s (%" PRIu64 " bytes)\n", h->version,
            gp_fmt_bytes((double)h->file_size, size_buf, sizeof size_buf), h->file_size);
    fprintf(f, "producer     %.*s\n", (int)strnlen(h->producer, sizeof h->producer), h->producer);
    fprintf(f, "description  %.*s\n", (int)strnlen(h->description, sizeof h->description), h->description);
    fprintf(f, "vocabulary   n_items %" PRIu64 " (incl. padding 0), n_cates %" PRIu64 ", n_users %" PRIu64 "\n", h->n_items,
            h->n_cates, h->n_users);
    fprintf(f, "pool         n_tokens %" PRIu64 "\n", h->n_tokens);
    fprintf(f, "records      %" PRIu64 " (max_history %" PRIu64 ", seed %" PRIu64 ")\n", h->n_records, h->max_history, h->seed);
    fprintf(f, "\n  %-10s %12s %12s %12s %9s\n", "split", "records", "positives", "negatives", "pos rate");
    for (int s = 0; s < DS_N_SPLITS; s++) {
        const ds_record *r = ds->split_begin[s];
        uint64_t n = ds->split_count[s], pos = 0, neg = 0;
        if (s == DS_SPLIT_PRETRAIN) {
            fprintf(f, "  %-10s %12" PRIu64 " %12s %12s %9s\n", ds_split_name(s), n, "-", "-", "-");
            continue;
        }
        for (uint64_t i = 0; i < n; i++) {
            pos += r[i].label == 1;
            neg += r[i].label == 0;
        }
        fprintf(f, "  %-10s %12" PRIu64 " %12" PRIu64 " %12" PRIu64, ds_split_name(s), n, pos, neg);
        if (n)
            fprintf(f, " %8.2f%%\n", 100.0 * (double)pos / (double)n);
        else
            fprintf(f, " %9s\n", "-");
    }
    fprintf(f, "\n  %-10s %10s %10s %10s %10s %10s\n", "hist_len", "min", "median", "p90", "p99", "max");
    for (int s = 0; s < DS_N_SPLITS; s++) {
        uint32_t p[5];
        if (ds->split_count[s] == 0)
            fprintf(f, "  %-10s %10s %10s %10s %10s %10s\n", ds_split_name(s), "-", "-", "-", "-", "-");
        else if (hist_len_percentiles(ds->split_begin[s], ds->split_count[s], p) != 0)
            fprintf(f, "  %-10s (not enough memory for percentiles)\n", ds_split_name(s));
        else
            fprintf(f, "  %-10s %10" PRIu32 " %10" PRIu32 " %10" PRIu32 " %10" PRIu32 " %10" PRIu32 "\n", ds_split_name(s), p[0],
                    p[1], p[2], p[3], p[4]);
    }
    fprintf(f, "\n  %-12s %14s %14s %12s\n", "section", "offset", "size", "checksum");
    for (int s = 0; s < DS_N_SECTIONS; s++)
        fprintf(f, "  %-12s %14" PRIu64 " %14" PRIu64 "   0x%08" PRIx64 "  %s\n", section_names[s], h->sections[s].offset,
                h->sections[s].size, h->sections[s].checksum,
                gp_fmt_bytes((double)h->sections[s].size, size_buf, sizeof size_buf));
}
