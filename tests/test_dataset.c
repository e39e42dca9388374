/* Tests for the dataset format: CRC-32C, section checksums, writer, reader and every way the
 * reader must refuse a file. Bad files are made by patching a good one; where the content
 * check is the target, the patch re-seals checksums and header CRC so that nothing earlier fires. */
#include <dirent.h>
#include <omp.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dataset.h"
#include "test.h"

/* ---- helpers ------------------------------------------------------------------------------- */

/* Bit-at-a-time CRC-32C: slow, obviously right, independent of the table code under test. */
static uint32_t crc32c_bitwise(uint32_t crc, const uint8_t *p, size_t n)
{
    crc = ~crc;
    while (n--) {
        crc ^= *p++;
        for (int k = 0; k < 8; k++)
            crc = (crc & 1u) ? (crc >> 1) ^ 0x82F63B78u : crc >> 1;
    }
    return ~crc;
}

static uint64_t lcg_next(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return *s >> 33;
}

static char *tmp_file(const char *name) { return gp_path_join(test_tmp_dir(), name); }

/* Entries in dir whose name contains ".tmp." (leftovers of an atomic write). */
static int count_tmp_leftovers(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        n += strstr(de->d_name, ".tmp.") != NULL;
    closedir(d);
    return n;
}

static ds_record make_record(uint64_t offset, uint32_t hist_len, uint32_t user, uint32_t item, uint32_t cate, int label,
                             int split)
{
    ds_record r;
    memset(&r, 0, sizeof r);
    r.offset = offset;
    r.hist_len = hist_len;
    r.user = user;
    r.item = item;
    r.cate = cate;
    r.label = (uint8_t)label;
    r.split = (uint8_t)split;
    return r;
}

/* A small hand-made dataset: 5 items in 2 categories, 3 users with 4, 3 and 5 interactions,
 * and 8 records given out of split order. */
enum { SMALL_ITEMS = 6, SMALL_CATES = 3, SMALL_USERS = 3, SMALL_TOKENS = 12, SMALL_RECORDS = 8 };
static const uint32_t small_item_cate[SMALL_ITEMS] = {0, 1, 1, 2, 2, 1};
static const uint32_t small_tok_item[SMALL_TOKENS] = {1, 2, 3, 4, 2, 5, 1, 3, 3, 4, 5, 2};
static const uint32_t small_tok_cate[SMALL_TOKENS] = {1, 1, 2, 2, 1, 1, 1, 2, 2, 2, 1, 1};
/* Where each producer record lands once the writer sorts by split (stable). */
static const int small_sorted_order[SMALL_RECORDS] = {1, 4, 7, 0, 3, 2, 6, 5};

static void small_records(ds_record r[SMALL_RECORDS])
{
    r[0] = make_record(0, 2, 0, 3, 2, 1, DS_SPLIT_TRAIN);
    r[1] = make_record(0, 3, 0, 4, 2, 2, DS_SPLIT_PRETRAIN);
    r[2] = make_record(4, 2, 1, 1, 1, 1, DS_SPLIT_TEST);
    r[3] = make_record(0, 2, 0, 5, 1, 0, DS_SPLIT_TRAIN);
    r[4] = make_record(4, 2, 1, 1, 1, 2, DS_SPLIT_PRETRAIN);
    r[5] = make_record(7, 4, 2, 2, 1, 1, DS_SPLIT_VALID);
    r[6] = make_record(4, 2, 1, 3, 2, 0, DS_SPLIT_TEST);
    r[7] = make_record(7, 3, 2, 5, 1, 2, DS_SPLIT_PRETRAIN);
}

static ds_contents small_contents(const ds_record *records)
{
    ds_contents c;
    memset(&c, 0, sizeof c);
    c.n_items = SMALL_ITEMS;
    c.n_cates = SMALL_CATES;
    c.n_users = SMALL_USERS;
    c.n_tokens = SMALL_TOKENS;
    c.n_records = SMALL_RECORDS;
    c.item_cate = small_item_cate;
    c.tok_item = small_tok_item;
    c.tok_cate = small_tok_cate;
    c.records = records;
    c.max_history = 4;
    c.seed = 1234;
    c.producer = "test producer";
    c.description = "small hand-made dataset";
    return c;
}

static int write_small(const char *path, gp_err *e)
{
    ds_record r[SMALL_RECORDS];
    small_records(r);
    ds_contents c = small_contents(r);
    return dataset_write(path, &c, e);
}

/* A whole file in memory, to patch. */
typedef struct {
    uint8_t *bytes;
    size_t len;
} file_image;

static file_image image_load(const char *path)
{
    file_image f = {NULL, 0};
    char *data = NULL;
    gp_err e;
    if (gp_read_file(path, &data, &f.len, &e) == 0)
        f.bytes = (uint8_t *)data;
    return f;
}

static file_image image_copy(const file_image *src)
{
    file_image f = {gp_xmalloc(src->len + 64), src->len};
    memcpy(f.bytes, src->bytes, src->len);
    return f;
}

static ds_header *img_header(file_image *f) { return (ds_header *)f->bytes; }
static uint8_t *img_section(file_image *f, int s) { return f->bytes + img_header(f)->sections[s].offset; }
static uint32_t *img_item_cate(file_image *f) { return (uint32_t *)img_section(f, DS_SEC_ITEM_CATE); }
static uint32_t *img_tok_item(file_image *f) { return (uint32_t *)img_section(f, DS_SEC_TOKENS_ITEM); }
static uint32_t *img_tok_cate(file_image *f) { return (uint32_t *)img_section(f, DS_SEC_TOKENS_CATE); }
static ds_record *img_records(file_image *f) { return (ds_record *)img_section(f, DS_SEC_RECORDS); }

static uint32_t header_crc_independent(const ds_header *h)
{
    ds_header copy = *h;
    copy.header_crc = 0;
    return crc32c_bitwise(0, (const uint8_t *)&copy, sizeof copy);
}

/* Recompute every section checksum and the header CRC after a patch. */
static void image_reseal(file_image *f)
{
    ds_header *h = img_header(f);
    for (int s = 0; s < DS_N_SECTIONS; s++)
        h->sections[s].checksum = ds_section_checksum(img_section(f, s), h->sections[s].size);
    h->header_crc = header_crc_independent(h);
}

static char *image_save(const file_image *f, const char *name)
{
    char *path = tmp_file(name);
    FILE *out = fopen(path, "wb");
    if (out) {
        if (f->len)
            fwrite(f->bytes, 1, f->len, out);
        fclose(out);
    }
    return path;
}

/* Opening path must fail, leave ds zeroed, and the message must name the file and contain
 * want1 (and want2 when given). */
static void expect_open_fails(const char *what, const char *path, const ds_open_opts *opts, const char *want1, const char *want2)
{
    dataset ds;
    gp_err e;
    e.msg[0] = '\0';
    int rc = dataset_open(&ds, path, opts, &e);
    CHECK(rc != 0, "%s: dataset_open succeeded on a bad file", what);
    CHECK(ds.map == NULL && ds.path == NULL && ds.hdr == NULL, "%s: dataset struct not cleared after failure", what);
    CHECK(strstr(e.msg, path) != NULL, "%s: message does not name the file: %s", what, e.msg);
    CHECK(strstr(e.msg, want1) != NULL, "%s: message lacks \"%s\": %s", what, want1, e.msg);
    if (want2)
        CHECK(strstr(e.msg, want2) != NULL, "%s: message lacks \"%s\": %s", what, want2, e.msg);
    if (rc == 0)
        dataset_close(&ds);
}

/* Save the patched image under a name derived from `what`, then expect it to be refused. */
static void expect_image_fails(file_image *f, const char *what, const char *want1, const char *want2)
{
    char name[128];
    snprintf(name, sizeof name, "bad_%s.gpsd", what);
    char *path = image_save(f, name);
    expect_open_fails(what, path, NULL, want1, want2);
    free(path);
    free(f->bytes);
    f->bytes = NULL;
}

static file_image small_image(const char *name)
{
    char *path = tmp_file(name);
    gp_err e;
    file_image f = {NULL, 0};
    if (write_small(path, &e) == 0)
        f = image_load(path);
    free(path);
    return f;
}

/* ---- CRC and section checksum ----------------------------------------------------------------- */

TEST(dataset_crc32c_known_vectors)
{
    CHECK(gp_crc32c(0, "123456789", 9) == 0xE3069283u, "got 0x%08x", gp_crc32c(0, "123456789", 9));
    CHECK(gp_crc32c(0, "", 0) == 0u);
    /* RFC 3720 (iSCSI) B.4 vectors. */
    uint8_t zeros[32] = {0}, ones[32], inc[32];
    memset(ones, 0xff, sizeof ones);
    for (int i = 0; i < 32; i++)
        inc[i] = (uint8_t)i;
    CHECK(gp_crc32c(0, zeros, 32) == 0x8A9136AAu, "zeros: 0x%08x", gp_crc32c(0, zeros, 32));
    CHECK(gp_crc32c(0, ones, 32) == 0x62A8AB43u, "ones: 0x%08x", gp_crc32c(0, ones, 32));
    CHECK(gp_crc32c(0, inc, 32) == 0x46DD794Eu, "incrementing: 0x%08x", gp_crc32c(0, inc, 32));
    /* Chaining: a split anywhere gives the same CRC. */
    for (size_t cut = 0; cut <= 9; cut++) {
        uint32_t c = gp_crc32c(gp_crc32c(0, "123456789", cut), "123456789" + cut, 9 - cut);
        CHECK(c == 0xE3069283u, "split at %zu: 0x%08x", cut, c);
    }
}

TEST(dataset_crc32c_matches_bitwise_reference)
{
    enum { N = 4096 };
    uint8_t buf[N];
    uint64_t s = 7;
    for (int i = 0; i < N; i++)
        buf[i] = (uint8_t)lcg_next(&s);
    /* Every start alignment and many lengths, so the byte-wise head/tail paths are exercised. */
    for (size_t start = 0; start < 16; start++)
        for (size_t len = 0; len + start <= N; len += 1 + len / 3) {
            uint32_t got = gp_crc32c(0x1234u, buf + start, len), want = crc32c_bitwise(0x1234u, buf + start, len);
            CHECK(got == want, "start %zu len %zu: 0x%08x vs 0x%08x", start, len, got, want);
        }
}

TEST(dataset_section_checksum_definition_and_thread_independence)
{
    const uint64_t chunk = (uint64_t)1 << 20;
    const uint64_t len = 5 * chunk + 123;
    uint8_t *data = gp_xmalloc((size_t)len);
    uint64_t s = 99;
    for (uint64_t i = 0; i < len; i++)
        data[i] = (uint8_t)lcg_next(&s);

    /* The definition, computed serially: CRC of each 1 MiB chunk, then CRC of the LE u32 array. */
    uint8_t le[4 * 6];
    uint64_t n_chunks = 0;
    for (uint64_t off = 0; off < len; off += chunk, n_chunks++) {
        uint32_t c = gp_crc32c(0, data + off, (size_t)GP_MIN(chunk, len - off));
        for (int b = 0; b < 4; b++)
            le[4 * n_chunks + b] = (uint8_t)(c >> (8 * b));
    }
    CHECK(n_chunks == 6);
    uint64_t want = crc32c_bitwise(0, le, (size_t)(4 * n_chunks));

    int saved = omp_get_max_threads();
    for (int threads = 1; threads <= 3; threads++) {
        omp_set_num_threads(threads);
        uint64_t got = ds_section_checksum(data, len);
        CHECK(got == want, "%d threads: 0x%08llx vs 0x%08llx", threads, (unsigned long long)got, (unsigned long long)want);
    }
    omp_set_num_threads(saved);

    CHECK(ds_section_checksum(data, 0) == 0, "empty section");
    /* One byte less than a chunk vs exactly one chunk: a one-chunk checksum is CRC of one LE CRC. */
    uint32_t one = gp_crc32c(0, data, (size_t)chunk);
    uint8_t one_le[4] = {(uint8_t)one, (uint8_t)(one >> 8), (uint8_t)(one >> 16), (uint8_t)(one >> 24)};
    CHECK(ds_section_checksum(data, chunk) == gp_crc32c(0, one_le, 4));
    /* Any flipped byte changes it. */
    uint64_t before = ds_section_checksum(data, len);
    data[3 * chunk + 17] ^= 0x40;
    CHECK(ds_section_checksum(data, len) != before);
    free(data);
}

/* ---- writer and reader round trip --------------------------------------------------------------- */

TEST(dataset_round_trip_small)
{
    char *path = tmp_file("small.gpsd");
    ds_record producer_records[SMALL_RECORDS];
    small_records(producer_records);
    ds_contents c = small_contents(producer_records);
    gp_err e;
    REQUIRE(dataset_write(path, &c, &e) == 0, "write: %s", e.msg);

    dataset ds;
    int rc = dataset_open(&ds, path, NULL, &e);
    REQUIRE(rc == 0, "open: %s", e.msg);
    const ds_header *h = ds.hdr;
    struct stat st;
    REQUIRE(stat(path, &st) == 0);

    CHECK(memcmp(h->magic, "GPSDREC\0", 8) == 0);
    CHECK(h->version == 1 && h->header_size == 512);
    CHECK(h->file_size == (uint64_t)st.st_size && ds.map_len == (size_t)st.st_size, "file_size %llu, real %lld",
          (unsigned long long)h->file_size, (long long)st.st_size);
    CHECK(h->n_items == SMALL_ITEMS && h->n_cates == SMALL_CATES && h->n_users == SMALL_USERS);
    CHECK(h->n_tokens == SMALL_TOKENS && h->n_records == SMALL_RECORDS);
    CHECK(h->split_count[0] == 3 && h->split_count[1] == 2 && h->split_count[2] == 2 && h->split_count[3] == 1);
    CHECK(h->max_history == 4 && h->seed == 1234);
    CHECK(strcmp(h->producer, "test producer") == 0, "producer '%s'", h->producer);
    CHECK(strcmp(h->description, "small hand-made dataset") == 0);
    CHECK(h->header_crc == header_crc_independent(h), "header CRC");
    for (size_t i = 0; i < sizeof h->pad; i++)
        CHECK(h->pad[i] == 0, "pad[%zu]", i);

    const uint64_t want_size[DS_N_SECTIONS] = {SMALL_ITEMS * 4, SMALL_TOKENS * 4, SMALL_TOKENS * 4, SMALL_RECORDS * 32};
    uint64_t prev_end = 512;
    for (int s = 0; s < DS_N_SECTIONS; s++) {
        const ds_section_info *si = &h->sections[s];
        uint64_t misalignment = si->offset & 63;
        CHECK(misalignment == 0, "section %d offset %llu", s, (unsigned long long)si->offset);
        CHECK(si->offset >= prev_end && si->offset < prev_end + 64, "section %d not packed after the previous one", s);
        CHECK(si->size == want_size[s], "section %d size", s);
        CHECK(si->checksum == ds_section_checksum((const uint8_t *)ds.map + si->offset, si->size), "section %d checksum", s);
        prev_end = si->offset + si->size;
    }
    CHECK(prev_end == h->file_size);

    for (int i = 0; i < SMALL_ITEMS; i++)
        CHECK(ds.item_cate[i] == small_item_cate[i], "item_cate[%d]", i);
    for (int i = 0; i < SMALL_TOKENS; i++)
        CHECK(ds.tok_item[i] == small_tok_item[i] && ds.tok_cate[i] == small_tok_cate[i], "token %d", i);
    for (int k = 0; k < SMALL_RECORDS; k++) {
        const ds_record *got = &ds.records[k], *want = &producer_records[small_sorted_order[k]];
        CHECK(got->offset == want->offset && got->hist_len == want->hist_len && got->user == want->user, "record %d span/user", k);
        CHECK(got->item == want->item && got->cate == want->cate, "record %d item/cate", k);
        CHECK(got->label == want->label && got->split == want->split, "record %d label/split", k);
        CHECK(got->reserved0 == 0 && got->reserved1 == 0, "record %d reserved", k);
    }
    const uint64_t want_begin[DS_N_SPLITS] = {0, 3, 5, 7}, want_count[DS_N_SPLITS] = {3, 2, 2, 1};
    for (int s = 0; s < DS_N_SPLITS; s++) {
        CHECK(ds.split_begin[s] == ds.records + want_begin[s], "split_begin[%d]", s);
        CHECK(ds.split_count[s] == want_count[s], "split_count[%d]", s);
        for (uint64_t i = 0; i < ds.split_count[s]; i++)
            CHECK(ds.split_begin[s][i].split == s);
    }
    CHECK(strcmp(ds.path, path) == 0);
    dataset_close(&ds);
    CHECK(ds.map == NULL && ds.path == NULL && ds.records == NULL, "close clears the struct");
    dataset_close(&ds); /* twice is fine */
    dataset zeroed;
    memset(&zeroed, 0, sizeof zeroed);
    dataset_close(&zeroed);
    free(path);
}

TEST(dataset_writer_sorted_input_gives_identical_file)
{
    ds_record unsorted[SMALL_RECORDS], sorted[SMALL_RECORDS];
    small_records(unsorted);
    for (int k = 0; k < SMALL_RECORDS; k++)
        sorted[k] = unsorted[small_sorted_order[k]];
    ds_contents a = small_contents(unsorted), b = small_contents(sorted);
    char *pa = tmp_file("order_a.gpsd"), *pb = tmp_file("order_b.gpsd");
    gp_err e;
    REQUIRE(dataset_write(pa, &a, &e) == 0, "%s", e.msg);
    REQUIRE(dataset_write(pb, &b, &e) == 0, "%s", e.msg);
    file_image fa = image_load(pa), fb = image_load(pb);
    REQUIRE(fa.bytes && fb.bytes);
    CHECK(fa.len == fb.len && memcmp(fa.bytes, fb.bytes, fa.len) == 0, "sorting in the writer must equal sorting beforehand");
    free(fa.bytes);
    free(fb.bytes);
    free(pa);
    free(pb);
}

/* More records than the writer's sort buffer holds, so the sorted stream crosses buffer (and
 * checksum chunk) boundaries. */
TEST(dataset_writer_sorts_large_record_sets)
{
    const uint64_t n = 600000, n_tokens = 1000;
    ds_record *recs = gp_xmalloc(n * sizeof *recs), *want = gp_xmalloc(n * sizeof *want);
    uint32_t *ti = gp_xmalloc(n_tokens * 4), *tc = gp_xmalloc(n_tokens * 4);
    uint32_t item_cate[11] = {0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2};
    for (uint64_t i = 0; i < n_tokens; i++) {
        ti[i] = (uint32_t)(1 + i % 10);
        tc[i] = item_cate[ti[i]];
    }
    uint64_t s = 5;
    for (uint64_t i = 0; i < n; i++) {
        int split = (int)(lcg_next(&s) % 4);
        uint32_t item = (uint32_t)(1 + i % 10);
        recs[i] = make_record(i % 900, (uint32_t)(1 + i % 97), (uint32_t)(i % 50), item, item_cate[item],
                              split == 0 ? 2 : (int)(i & 1), split);
    }
    uint64_t k = 0;
    for (int sp = 0; sp < DS_N_SPLITS; sp++)
        for (uint64_t i = 0; i < n; i++)
            if (recs[i].split == sp)
                want[k++] = recs[i];
    ds_contents c;
    memset(&c, 0, sizeof c);
    c.n_items = 11;
    c.n_cates = 3;
    c.n_users = 50;
    c.n_tokens = n_tokens;
    c.n_records = n;
    c.item_cate = item_cate;
    c.tok_item = ti;
    c.tok_cate = tc;
    c.records = recs;
    char *p1 = tmp_file("large_unsorted.gpsd"), *p2 = tmp_file("large_sorted.gpsd");
    gp_err e;
    REQUIRE(dataset_write(p1, &c, &e) == 0, "%s", e.msg);
    c.records = want;
    REQUIRE(dataset_write(p2, &c, &e) == 0, "%s", e.msg);
    dataset d1, d2;
    REQUIRE(dataset_open(&d1, p1, NULL, &e) == 0, "%s", e.msg);
    REQUIRE(dataset_open(&d2, p2, NULL, &e) == 0, "%s", e.msg);
    CHECK(memcmp(d1.records, want, n * sizeof *want) == 0, "records re-sorted stably");
    CHECK(d1.hdr->sections[DS_SEC_RECORDS].checksum == d2.hdr->sections[DS_SEC_RECORDS].checksum);
    CHECK(d1.map_len == d2.map_len && memcmp(d1.map, d2.map, d1.map_len) == 0);
    dataset_close(&d1);
    dataset_close(&d2);
    free(recs);
    free(want);
    free(ti);
    free(tc);
    free(p1);
    free(p2);
}

TEST(dataset_writer_truncates_text_fields_safely)
{
    ds_record r[SMALL_RECORDS];
    small_records(r);
    ds_contents c = small_contents(r);
    char producer[101], description[131];
    memset(producer, 'a', 100);
    producer[100] = '\0';
    /* 126 ASCII bytes then a 2-byte UTF-8 character that would straddle the 127-byte limit. */
    memset(description, 'x', 126);
    memcpy(description + 126, "\xc3\xa9yy", 5);
    c.producer = producer;
    c.description = description;
    char *path = tmp_file("long_text.gpsd");
    gp_err e;
    REQUIRE(dataset_write(path, &c, &e) == 0, "%s", e.msg);
    dataset ds;
    REQUIRE(dataset_open(&ds, path, NULL, &e) == 0, "%s", e.msg);
    CHECK(strnlen(ds.hdr->producer, 64) == 63, "producer kept %zu bytes", strnlen(ds.hdr->producer, 64));
    CHECK(strnlen(ds.hdr->description, 128) == 126, "description kept %zu bytes (must not split the UTF-8 character)",
          strnlen(ds.hdr->description, 128));
    dataset_close(&ds);

    c.producer = NULL;
    c.description = NULL;
    REQUIRE(dataset_write(path, &c, &e) == 0, "%s", e.msg);
    REQUIRE(dataset_open(&ds, path, NULL, &e) == 0, "%s", e.msg);
    CHECK(ds.hdr->producer[0] == '\0' && ds.hdr->description[0] == '\0');
    dataset_close(&ds);
    free(path);
}

/* ---- writer refusals ------------------------------------------------------------------------- */

TEST(dataset_writer_rejects_invalid_contents_and_leaves_nothing)
{
    char *dir = tmp_file("writer_reject");
    gp_err e;
    REQUIRE(gp_mkdirs(dir, &e) == 0, "%s", e.msg);
    char *path = gp_path_join(dir, "bad.gpsd");

    ds_record r[SMALL_RECORDS];
    small_records(r);
    r[6].item = 0;
    ds_contents c = small_contents(r);
    e.msg[0] = '\0';
    CHECK(dataset_write(path, &c, &e) != 0, "writer accepted item 0");
    CHECK(strstr(e.msg, path) && strstr(e.msg, "record 6 (split test)") && strstr(e.msg, "item 0"), "message: %s", e.msg);
    CHECK(strstr(e.msg, "not written"), "message: %s", e.msg);
    CHECK(!test_file_exists(path), "a refused write left %s", path);
    CHECK(count_tmp_leftovers(dir) == 0, "temporary file left behind");

    /* Same rules as the reader: tokens, item_cate, users. */
    small_records(r);
    uint32_t bad_tok[SMALL_TOKENS];
    memcpy(bad_tok, small_tok_item, sizeof bad_tok);
    bad_tok[3] = 99;
    c = small_contents(r);
    c.tok_item = bad_tok;
    CHECK(dataset_write(path, &c, &e) != 0);
    CHECK(strstr(e.msg, "token 3: item 99 out of range (n_items = 6)"), "message: %s", e.msg);
    c = small_contents(r);
    c.n_users = 2;
    CHECK(dataset_write(path, &c, &e) != 0);
    CHECK(strstr(e.msg, "user 2 out of range (n_users = 2)"), "message: %s", e.msg);
    c = small_contents(r);
    c.tok_cate = NULL;
    CHECK(dataset_write(path, &c, &e) != 0);
    CHECK(strstr(e.msg, "missing"), "message: %s", e.msg);
    c = small_contents(r);
    c.n_items = 0;
    c.n_records = 0;
    c.n_tokens = 0;
    CHECK(dataset_write(path, &c, &e) != 0);
    CHECK(strstr(e.msg, "n_items is 0"), "message: %s", e.msg);
    CHECK(!test_file_exists(path) && count_tmp_leftovers(dir) == 0, "refused writes left files behind");

    /* A directory that does not exist: the atomic open fails, nothing appears. */
    char *nowhere = gp_path_join(dir, "missing/sub/x.gpsd");
    CHECK(write_small(nowhere, &e) != 0, "write into a missing directory succeeded");
    CHECK(strstr(e.msg, nowhere), "message: %s", e.msg);
    CHECK(count_tmp_leftovers(dir) == 0);
    free(nowhere);
    free(path);
    free(dir);
}

TEST(dataset_failed_write_keeps_existing_file)
{
    char *path = tmp_file("keep.gpsd");
    gp_err e;
    REQUIRE(write_small(path, &e) == 0, "%s", e.msg);
    file_image before = image_load(path);
    REQUIRE(before.bytes);

    ds_record r[SMALL_RECORDS];
    small_records(r);
    r[2].label = 7;
    ds_contents c = small_contents(r);
    c.description = "this version must never land";
    CHECK(dataset_write(path, &c, &e) != 0, "writer accepted label 7");
    CHECK(strstr(e.msg, "label 7"), "message: %s", e.msg);

    file_image after = image_load(path);
    REQUIRE(after.bytes, "the existing file vanished");
    CHECK(after.len == before.len && memcmp(after.bytes, before.bytes, before.len) == 0, "existing file changed");
    dataset ds;
    CHECK(dataset_open(&ds, path, NULL, &e) == 0, "existing file no longer opens: %s", e.msg);
    dataset_close(&ds);
    CHECK(count_tmp_leftovers(test_tmp_dir()) == 0);
    free(before.bytes);
    free(after.bytes);
    free(path);
}

/* ---- reader refusals: file-level ------------------------------------------------------------- */

TEST(dataset_open_rejects_unreadable_and_short_files)
{
    char *missing = tmp_file("does_not_exist.gpsd");
    expect_open_fails("missing", missing, NULL, "cannot open", "No such file");
    free(missing);

    file_image empty = {NULL, 0};
    char *p = image_save(&empty, "empty.gpsd");
    expect_open_fails("empty", p, NULL, "empty file", NULL);
    free(p);

    file_image base = small_image("short_base.gpsd");
    REQUIRE(base.bytes);
    base.len = 100;
    p = image_save(&base, "short.gpsd");
    expect_open_fails("short", p, NULL, "100 bytes, shorter than the 512-byte dataset header", NULL);
    free(p);
    free(base.bytes);

    p = tmp_file("a_directory.gpsd");
    gp_err e;
    REQUIRE(gp_mkdirs(p, &e) == 0);
    expect_open_fails("directory", p, NULL, "not a regular file", NULL);
    free(p);
}

TEST(dataset_open_rejects_bad_headers)
{
    file_image base = small_image("hdr_base.gpsd");
    REQUIRE(base.bytes);
    file_image f;
    char want[160];

    f = image_copy(&base);
    memcpy(f.bytes, "GPSDRAC", 7);
    image_reseal(&f);
    expect_image_fails(&f, "magic", "bad magic \"GPSDRAC\\x00\"", NULL);

    f = image_copy(&base);
    img_header(&f)->version = 2;
    image_reseal(&f);
    expect_image_fails(&f, "newer_version", "version 2 is newer than this build reads", "(version 1)");

    f = image_copy(&base);
    img_header(&f)->version = 0;
    image_reseal(&f);
    expect_image_fails(&f, "version_zero", "invalid dataset format version 0", NULL);

    f = image_copy(&base);
    img_header(&f)->description[3] ^= 0x20; /* no reseal */
    expect_image_fails(&f, "header_crc", "header checksum mismatch", NULL);

    f = image_copy(&base);
    img_header(&f)->header_crc ^= 1;
    expect_image_fails(&f, "header_crc_field", "header checksum mismatch", NULL);

    f = image_copy(&base);
    img_header(&f)->header_size = 256;
    image_reseal(&f);
    expect_image_fails(&f, "header_size", "header_size is 256, expected 512", NULL);

    f = image_copy(&base);
    f.len -= 10;
    snprintf(want, sizeof want, "the file is %zu bytes but it is %zu bytes (truncated)", base.len, base.len - 10);
    expect_image_fails(&f, "truncated", want, NULL);

    f = image_copy(&base);
    memset(f.bytes + f.len, 0xab, 7);
    f.len += 7;
    snprintf(want, sizeof want, "the file is %zu bytes but it is %zu bytes (trailing bytes", base.len, base.len + 7);
    expect_image_fails(&f, "trailing", want, NULL);
    free(base.bytes);
}

TEST(dataset_open_rejects_bad_section_tables)
{
    file_image base = small_image("sec_base.gpsd");
    REQUIRE(base.bytes);
    file_image f;
    ds_header *h;

    f = image_copy(&base);
    h = img_header(&f);
    h->sections[DS_SEC_RECORDS].offset = (h->file_size + 63) / 64 * 64 + 64;
    image_reseal(&f);
    expect_image_fails(&f, "section_out_of_range", "section records", "lies outside the file");

    f = image_copy(&base);
    h = img_header(&f);
    h->sections[DS_SEC_TOKENS_ITEM].size = UINT64_MAX - 8; /* offset + size would wrap */
    h->header_crc = header_crc_independent(h);
    expect_image_fails(&f, "section_size_wraps", "section tokens_item", "lies outside the file");

    f = image_copy(&base);
    img_header(&f)->sections[DS_SEC_TOKENS_CATE].offset += 4;
    img_header(&f)->header_crc = header_crc_independent(img_header(&f));
    expect_image_fails(&f, "misaligned", "section tokens_cate: offset", "is not 64-byte aligned");

    f = image_copy(&base);
    h = img_header(&f);
    h->sections[DS_SEC_TOKENS_CATE].offset = h->sections[DS_SEC_TOKENS_ITEM].offset;
    image_reseal(&f);
    expect_image_fails(&f, "overlap", "section tokens_cate", "overlaps section tokens_item");

    f = image_copy(&base);
    h = img_header(&f);
    h->sections[DS_SEC_ITEM_CATE].offset = 448; /* inside the header */
    image_reseal(&f);
    expect_image_fails(&f, "overlap_header", "section item_cate", "overlaps the header");

    f = image_copy(&base);
    h = img_header(&f);
    h->sections[DS_SEC_ITEM_CATE].size += 4;
    image_reseal(&f);
    expect_image_fails(&f, "size_vs_count", "section item_cate: size 28 bytes does not match n_items = 6", NULL);

    f = image_copy(&base);
    h = img_header(&f);
    h->n_tokens += 1;
    image_reseal(&f);
    expect_image_fails(&f, "count_vs_size", "section tokens_item: size 48 bytes does not match n_tokens = 13", NULL);

    f = image_copy(&base);
    h = img_header(&f);
    h->split_count[DS_SPLIT_VALID] += 1;
    image_reseal(&f);
    expect_image_fails(&f, "split_sum", "split counts (3 + 2 + 2 + 2) do not add up to n_records = 8", NULL);

    f = image_copy(&base);
    h = img_header(&f);
    h->n_cates = 0;
    image_reseal(&f);
    expect_image_fails(&f, "zero_cates", "n_cates is 0", NULL);
    free(base.bytes);
}

TEST(dataset_open_rejects_corrupted_sections)
{
    file_image base = small_image("crc_base.gpsd");
    REQUIRE(base.bytes);
    static const char *names[DS_N_SECTIONS] = {"item_cate", "tokens_item", "tokens_cate", "records"};
    for (int s = 0; s < DS_N_SECTIONS; s++) {
        file_image f = image_copy(&base);
        img_section(&f, s)[1] ^= 0x10; /* no reseal */
        char what[64], want[96];
        snprintf(what, sizeof what, "flipped_%s", names[s]);
        snprintf(want, sizeof want, "section %s checksum mismatch", names[s]);
        expect_image_fails(&f, what, want, "corrupted");
    }
    free(base.bytes);
}

/* ---- reader refusals: contents (checksums re-sealed so the content check is what fires) ------ */

TEST(dataset_open_rejects_bad_contents)
{
    file_image base = small_image("content_base.gpsd");
    REQUIRE(base.bytes);
    file_image f;
    ds_record *r;
    /* File order of the small dataset: 0-2 pretrain, 3-4 train, 5-6 test, 7 valid. */

    f = image_copy(&base);
    img_item_cate(&f)[2] = 3;
    image_reseal(&f);
    expect_image_fails(&f, "item_cate_range", "item_cate[2] = 3 out of range (n_cates = 3)", NULL);

    f = image_copy(&base);
    img_item_cate(&f)[0] = 1;
    image_reseal(&f);
    expect_image_fails(&f, "item_cate_padding", "item_cate[0] = 1", "padding");

    f = image_copy(&base);
    img_tok_item(&f)[5] = 6;
    image_reseal(&f);
    expect_image_fails(&f, "token_item", "token 5: item 6 out of range (n_items = 6)", NULL);

    f = image_copy(&base);
    img_tok_cate(&f)[9] = 70000;
    image_reseal(&f);
    expect_image_fails(&f, "token_cate", "token 9: cate 70000 out of range (n_cates = 3)", NULL);

    f = image_copy(&base);
    r = img_records(&f);
    r[4].offset = 11;
    image_reseal(&f);
    expect_image_fails(&f, "span", "record 4 (split train): history span (offset 11 + hist_len 2)", "beyond the pool (n_tokens = 12)");

    f = image_copy(&base);
    img_records(&f)[4].offset = UINT64_MAX;
    image_reseal(&f);
    expect_image_fails(&f, "span_huge_offset", "record 4 (split train)", "beyond the pool");

    f = image_copy(&base);
    img_records(&f)[6].hist_len = 0;
    image_reseal(&f);
    expect_image_fails(&f, "hist_len", "record 6 (split test): hist_len is 0", NULL);

    f = image_copy(&base);
    img_records(&f)[0].item = 0;
    image_reseal(&f);
    expect_image_fails(&f, "item_zero", "record 0 (split pretrain): item 0", NULL);

    f = image_copy(&base);
    img_records(&f)[3].item = 99999;
    image_reseal(&f);
    expect_image_fails(&f, "item_range", "record 3 (split train): item 99999 out of range (n_items = 6)", NULL);

    f = image_copy(&base);
    img_records(&f)[5].cate = 3;
    image_reseal(&f);
    expect_image_fails(&f, "cate_range", "record 5 (split test): cate 3 out of range (n_cates = 3)", NULL);

    f = image_copy(&base);
    img_records(&f)[3].label = 3;
    image_reseal(&f);
    expect_image_fails(&f, "label_3", "record 3 (split train): label 3 is invalid", NULL);

    f = image_copy(&base);
    img_records(&f)[3].label = 2;
    image_reseal(&f);
    expect_image_fails(&f, "label_2_in_train", "record 3 (split train): label 2 does not fit split train", NULL);

    f = image_copy(&base);
    img_records(&f)[1].label = 1;
    image_reseal(&f);
    expect_image_fails(&f, "click_in_pretrain", "record 1 (split pretrain): label 1 does not fit split pretrain", NULL);

    f = image_copy(&base);
    img_records(&f)[7].split = 9;
    image_reseal(&f);
    expect_image_fails(&f, "split_invalid", "record 7 (split 9 (invalid)): split 9 is invalid", NULL);

    f = image_copy(&base);
    r = img_records(&f);
    ds_record tmp = r[2];
    r[2] = r[3];
    r[3] = tmp;
    image_reseal(&f);
    expect_image_fails(&f, "unsorted", "records not sorted by split: record 3 (split pretrain) follows record 2 (split train)", NULL);

    f = image_copy(&base);
    img_header(&f)->split_count[DS_SPLIT_TRAIN] -= 1;
    img_header(&f)->split_count[DS_SPLIT_TEST] += 1;
    image_reseal(&f);
    expect_image_fails(&f, "split_count", "split count mismatch: the header says 1 train records but the file holds 2", NULL);

    f = image_copy(&base);
    img_records(&f)[7].user = 3;
    image_reseal(&f);
    expect_image_fails(&f, "user", "record 7 (split valid): user 3 out of range (n_users = 3)", NULL);

    f = image_copy(&base);
    img_records(&f)[2].reserved0 = 1;
    image_reseal(&f);
    expect_image_fails(&f, "reserved0", "record 2 (split pretrain): reserved fields are not zero (reserved0 = 1", NULL);

    f = image_copy(&base);
    img_records(&f)[5].reserved1 = 7;
    image_reseal(&f);
    expect_image_fails(&f, "reserved1", "record 5 (split test): reserved fields are not zero", "reserved1 = 7");

    /* Two bad records: the lower index is the one reported. */
    f = image_copy(&base);
    img_records(&f)[6].user = 3;
    img_records(&f)[2].item = 0;
    image_reseal(&f);
    expect_image_fails(&f, "two_bad_records", "record 2 (split pretrain): item 0", NULL);
    free(base.bytes);
}

TEST(dataset_open_options_select_checks)
{
    file_image base = small_image("opts_base.gpsd");
    REQUIRE(base.bytes);
    ds_open_opts def = ds_default_open_opts();
    CHECK(def.verify_checksums == 1 && def.verify_contents == 1);
    ds_open_opts no_crc = {.verify_checksums = 0, .verify_contents = 1};
    ds_open_opts no_content = {.verify_checksums = 1, .verify_contents = 0};
    gp_err e;
    dataset ds;

    /* Out-of-range token, checksum NOT re-sealed: without CRCs the content check still fires. */
    file_image f = image_copy(&base);
    img_tok_item(&f)[5] = 6;
    char *p = image_save(&f, "opts_bad_token.gpsd");
    expect_open_fails("default opts", p, &def, "section tokens_item checksum mismatch", NULL);
    expect_open_fails("verify_checksums=0", p, &no_crc, "token 5: item 6 out of range", NULL);
    free(p);
    free(f.bytes);

    /* An in-range change with a stale checksum: only the CRC can see it. */
    f = image_copy(&base);
    img_tok_item(&f)[5] = 1;
    p = image_save(&f, "opts_benign.gpsd");
    expect_open_fails("benign change, default", p, NULL, "checksum mismatch", NULL);
    CHECK(dataset_open(&ds, p, &no_crc, &e) == 0, "verify_checksums=0 still checked the CRC: %s", e.msg);
    dataset_close(&ds);
    free(p);
    free(f.bytes);

    /* A content error with valid checksums passes when content checks are off. */
    f = image_copy(&base);
    img_records(&f)[3].label = 3;
    image_reseal(&f);
    p = image_save(&f, "opts_no_content.gpsd");
    CHECK(dataset_open(&ds, p, &no_content, &e) == 0, "verify_contents=0 still checked contents: %s", e.msg);
    dataset_close(&ds);
    expect_open_fails("content on", p, &def, "label 3 is invalid", NULL);
    free(p);
    free(f.bytes);
    free(base.bytes);
}

/* The first offending index must not depend on how blocks are spread over threads. */
TEST(dataset_first_error_is_lowest_index_for_any_thread_count)
{
    const uint64_t n_tokens = 300000;
    uint32_t *ti = gp_xmalloc(n_tokens * 4), *tc = gp_xmalloc(n_tokens * 4);
    for (uint64_t i = 0; i < n_tokens; i++) {
        ti[i] = (uint32_t)(1 + i % 5);
        tc[i] = small_item_cate[ti[i]];
    }
    ds_record r = make_record(0, 10, 0, 1, 1, 2, DS_SPLIT_PRETRAIN);
    ds_contents c;
    memset(&c, 0, sizeof c);
    c.n_items = SMALL_ITEMS;
    c.n_cates = SMALL_CATES;
    c.n_users = 1;
    c.n_tokens = n_tokens;
    c.n_records = 1;
    c.item_cate = small_item_cate;
    c.tok_item = ti;
    c.tok_cate = tc;
    c.records = &r;
    char *path = tmp_file("first_error.gpsd");
    gp_err e;
    REQUIRE(dataset_write(path, &c, &e) == 0, "%s", e.msg);
    file_image f = image_load(path);
    REQUIRE(f.bytes);
    img_tok_item(&f)[250001] = 9;
    img_tok_cate(&f)[70003] = 9;
    img_tok_item(&f)[299999] = 9;
    char *bad = image_save(&f, "first_error_bad.gpsd");
    ds_open_opts no_crc = {0, 1};

    ti[250001] = 9;
    tc[70003] = 9;
    int saved = omp_get_max_threads();
    for (int threads = 1; threads <= 4; threads++) {
        omp_set_num_threads(threads);
        expect_open_fails("reader", bad, &no_crc, "token 70003: cate 9 out of range", NULL);
        CHECK(dataset_write(path, &c, &e) != 0);
        CHECK(strstr(e.msg, "token 70003: cate 9"), "%d threads, writer: %s", threads, e.msg);
    }
    omp_set_num_threads(saved);
    free(f.bytes);
    free(bad);
    free(path);
    free(ti);
    free(tc);
}

/* ---- describe --------------------------------------------------------------------------------- */

TEST(dataset_describe_reports_counts_balance_and_history)
{
    char *path = tmp_file("describe.gpsd");
    gp_err e;
    REQUIRE(write_small(path, &e) == 0, "%s", e.msg);
    dataset ds;
    REQUIRE(dataset_open(&ds, path, NULL, &e) == 0, "%s", e.msg);
    char *text = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&text, &len);
    REQUIRE(mem);
    dataset_describe(&ds, mem);
    fclose(mem);

    CHECK(strstr(text, path), "describe names the file");
    CHECK(strstr(text, "version 1"));
    CHECK(strstr(text, "test producer") && strstr(text, "small hand-made dataset"));
    CHECK(strstr(text, "n_items 6") && strstr(text, "n_cates 3") && strstr(text, "n_users 3"));
    CHECK(strstr(text, "n_tokens 12"));
    char size_str[32];
    snprintf(size_str, sizeof size_str, "(%llu bytes)", (unsigned long long)ds.hdr->file_size);
    CHECK(strstr(text, size_str), "file size");
    CHECK(strstr(text, "tokens_cate") && strstr(text, "records"));

    /* Parse the split rows and the hist_len rows back; the expected values come from the
     * hand-made records (pretrain hist 3,2,3; train 2,2 with 1 positive; test 2,2 with 1
     * positive; valid 4 with 1 positive). */
    unsigned long long n, pos, neg;
    unsigned mn, med, p90, p99, mx;
    int found_train = 0, found_valid_hist = 0, found_pre_hist = 0, in_hist_table = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        char name[16];
        if (strstr(line, "hist_len") && strstr(line, "median"))
            in_hist_table = 1;
        if (strstr(line, "section") && strstr(line, "offset"))
            in_hist_table = 0;
        if (!in_hist_table && sscanf(line, " %15s %llu %llu %llu", name, &n, &pos, &neg) == 4 && strcmp(name, "train") == 0) {
            found_train = 1;
            const char *rate = strstr(line, "50.00");
            CHECK(n == 2 && pos == 1 && neg == 1 && rate, "train row: %s", line);
        }
        if (in_hist_table && sscanf(line, " %15s %u %u %u %u %u", name, &mn, &med, &p90, &p99, &mx) == 6) {
            if (strcmp(name, "valid") == 0) {
                found_valid_hist = 1;
                CHECK(mn == 4 && med == 4 && mx == 4, "valid hist row: %s", line);
            }
            if (strcmp(name, "pretrain") == 0) {
                found_pre_hist = 1;
                CHECK(mn == 2 && med == 3 && p90 == 3 && p99 == 3 && mx == 3, "pretrain hist row: %s", line);
            }
        }
    }
    CHECK(found_train && found_valid_hist && found_pre_hist, "rows not found");
    free(text);
    dataset_close(&ds);
    free(path);

    CHECK(strcmp(ds_split_name(DS_SPLIT_PRETRAIN), "pretrain") == 0 && strcmp(ds_split_name(DS_SPLIT_TRAIN), "train") == 0 &&
          strcmp(ds_split_name(DS_SPLIT_TEST), "test") == 0 && strcmp(ds_split_name(DS_SPLIT_VALID), "valid") == 0);
    CHECK(strcmp(ds_split_name(7), "invalid") == 0);
}
