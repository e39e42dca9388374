#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static const struct {
    const char *name;
    size_t size;
} dtypes[] = {
    [ST_BOOL] = {"BOOL", 1}, [ST_U8] = {"U8", 1},   [ST_I8] = {"I8", 1},     [ST_I16] = {"I16", 2},
    [ST_U16] = {"U16", 2},   [ST_F16] = {"F16", 2}, [ST_BF16] = {"BF16", 2}, [ST_I32] = {"I32", 4},
    [ST_U32] = {"U32", 4},   [ST_F32] = {"F32", 4}, [ST_I64] = {"I64", 8},   [ST_U64] = {"U64", 8},
    [ST_F64] = {"F64", 8},
};
#define N_DTYPES ((int)(sizeof dtypes / sizeof dtypes[0]))

const char *st_dtype_name(st_dtype d) { return (int)d < N_DTYPES ? dtypes[d].name : "?"; }
size_t st_dtype_size(st_dtype d) { return (int)d < N_DTYPES ? dtypes[d].size : 0; }

/* Upper bound on the JSON header, as in the reference implementation (100 MB). */
#define ST_MAX_HEADER ((uint64_t)100 * 1000 * 1000)

void st_close(st_file *f)
{
    if (f->map)
        munmap(f->map, f->map_len);
    json_free(&f->doc);
    free(f->tensors);
    free(f->path);
    memset(f, 0, sizeof *f);
}

typedef struct {
    size_t begin, end;
    int index;
} span;

static int by_begin(const void *a, const void *b)
{
    const span *x = a, *y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin;
}

int st_open(st_file *f, const char *path, gp_err *e)
{
    memset(f, 0, sizeof *f);
    f->path = gp_xstrdup(path);
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        gp_fail(e, "%s: cannot open: %s", path, strerror(errno));
        st_close(f);
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        gp_fail(e, "%s: cannot stat: %s", path, strerror(errno));
        st_close(f);
        return -1;
    }
    size_t size = (size_t)st.st_size;
    if (size < 8) {
        close(fd);
        gp_fail(e, "%s: %zu bytes is too short for a safetensors file (needs an 8-byte header length)", path, size);
        st_close(f);
        return -1;
    }
    f->map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (f->map == MAP_FAILED) {
        f->map = NULL;
        gp_fail(e, "%s: cannot map: %s", path, strerror(errno));
        st_close(f);
        return -1;
    }
    f->map_len = size;
    const unsigned char *bytes = f->map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | bytes[i];
    if (hlen > ST_MAX_HEADER || hlen > size - 8) {
        gp_fail(e, "%s: header length %llu does not fit the file of %zu bytes (truncated or not safetensors)", path,
                (unsigned long long)hlen, size);
        st_close(f);
        return -1;
    }
    if (json_parse(&f->doc, (const char *)bytes + 8, (size_t)hlen, path, e) != 0) {
        st_close(f);
        return -1;
    }
    const json_value *root = f->doc.root;
    if (root->type != JSON_OBJECT) {
        gp_fail(e, "%s: header is not a JSON object", path);
        st_close(f);
        return -1;
    }
    const unsigned char *data = bytes + 8 + hlen;
    size_t data_len = size - 8 - (size_t)hlen;
    f->tensors = gp_xcalloc((size_t)(root->n ? root->n : 1), sizeof *f->tensors);
    span *spans = gp_xcalloc((size_t)(root->n ? root->n : 1), sizeof *spans);
    int rc = 0;
    for (int i = 0; i < root->n && rc == 0; i++) {
        const char *name = root->keys[i];
        const json_value *v = &root->items[i];
        if (strcmp(name, "__metadata__") == 0) {
            if (v->type != JSON_OBJECT) {
                rc = gp_fail(e, "%s: __metadata__ is not an object", path);
                break;
            }
            for (int k = 0; k < v->n; k++)
                if (v->items[k].type != JSON_STRING)
                    rc = gp_fail(e, "%s: metadata value of \"%s\" is not a string", path, v->keys[k]);
            f->metadata = v;
            continue;
        }
        st_tensor *t = &f->tensors[f->n];
        t->name = name;
        const json_value *dt = json_get(v, "dtype"), *shape = json_get(v, "shape"), *offs = json_get(v, "data_offsets");
        if (v->type != JSON_OBJECT || !dt || dt->type != JSON_STRING || !shape || shape->type != JSON_ARRAY || !offs ||
            offs->type != JSON_ARRAY || offs->n != 2) {
            rc = gp_fail(e, "%s: tensor \"%s\" needs dtype, shape and data_offsets [begin, end]", path, name);
            break;
        }
        int d = -1;
        for (int k = 0; k < N_DTYPES; k++)
            if (dtypes[k].name && strcmp(dtypes[k].name, dt->string) == 0)
                d = k;
        if (d < 0) {
            rc = gp_fail(e, "%s: tensor \"%s\" has unsupported dtype \"%s\"", path, name, dt->string);
            break;
        }
        t->dtype = (st_dtype)d;
        if (shape->n > ST_MAX_DIMS) {
            rc = gp_fail(e, "%s: tensor \"%s\" has %d dimensions (at most %d)", path, name, shape->n, ST_MAX_DIMS);
            break;
        }
        t->ndim = shape->n;
        int64_t numel = 1;
        for (int k = 0; k < shape->n; k++) {
            int64_t dim;
            if (json_int(&shape->items[k], &dim) != 0 || dim < 0 || (dim > 0 && numel > INT64_MAX / 16 / dim)) {
                rc = gp_fail(e, "%s: tensor \"%s\" has an invalid shape", path, name);
                break;
            }
            t->shape[k] = dim;
            numel *= dim;
        }
        if (rc)
            break;
        t->numel = numel;
        int64_t b, en;
        if (json_int(&offs->items[0], &b) != 0 || json_int(&offs->items[1], &en) != 0 || b < 0 || en < b ||
            (uint64_t)en > data_len) {
            rc = gp_fail(e, "%s: tensor \"%s\" has data_offsets outside the %zu-byte data area", path, name, data_len);
            break;
        }
        if ((uint64_t)(en - b) != (uint64_t)numel * dtypes[d].size) {
            rc = gp_fail(e, "%s: tensor \"%s\" has %lld data bytes, its shape and dtype need %llu", path, name,
                         (long long)(en - b), (unsigned long long)numel * dtypes[d].size);
            break;
        }
        t->data = data + b;
        t->nbytes = (size_t)(en - b);
        spans[f->n] = (span){(size_t)b, (size_t)en, f->n};
        f->n++;
    }
    if (rc == 0) {
        qsort(spans, (size_t)f->n, sizeof *spans, by_begin);
        for (int i = 1; i < f->n; i++)
            if (spans[i].begin < spans[i - 1].end && spans[i].end > spans[i].begin)
                rc = gp_fail(e, "%s: tensors \"%s\" and \"%s\" overlap", path, f->tensors[spans[i - 1].index].name,
                             f->tensors[spans[i].index].name);
    }
    free(spans);
    if (rc != 0) {
        st_close(f);
        return -1;
    }
    return 0;
}

const st_tensor *st_find(const st_file *f, const char *name)
{
    for (int i = 0; i < f->n; i++)
        if (strcmp(f->tensors[i].name, name) == 0)
            return &f->tensors[i];
    return NULL;
}

const char *st_meta(const st_file *f, const char *key)
{
    const json_value *v = json_get(f->metadata, key);
    return v && v->type == JSON_STRING ? v->string : NULL;
}

/* Appends s to the growing buffer as a JSON string. */
static void json_put_string(char **buf, size_t *len, size_t *cap, const char *s)
{
    size_t need = strlen(s) * 6 + 3;
    if (*len + need >= *cap) {
        while (*len + need >= *cap)
            *cap *= 2;
        *buf = gp_xrealloc(*buf, *cap);
    }
    char *o = *buf + *len;
    *o++ = '"';
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') {
            *o++ = '\\';
            *o++ = (char)*p;
        } else if (*p < 0x20) {
            o += sprintf(o, "\\u%04x", *p);
        } else {
            *o++ = (char)*p;
        }
    }
    *o++ = '"';
    *len = (size_t)(o - *buf);
}

static void put_raw(char **buf, size_t *len, size_t *cap, const char *s)
{
    size_t n = strlen(s);
    if (*len + n + 1 >= *cap) {
        while (*len + n + 1 >= *cap)
            *cap *= 2;
        *buf = gp_xrealloc(*buf, *cap);
    }
    memcpy(*buf + *len, s, n);
    *len += n;
}

int st_write(const char *path, const st_out_tensor *tensors, int n, const char *const *meta, gp_err *e)
{
    size_t cap = 4096, len = 0;
    char *h = gp_xmalloc(cap);
    char num[64];
    put_raw(&h, &len, &cap, "{");
    int first = 1;
    if (meta && meta[0]) {
        put_raw(&h, &len, &cap, "\"__metadata__\":{");
        for (int i = 0; meta[i] && meta[i + 1]; i += 2) {
            if (i)
                put_raw(&h, &len, &cap, ",");
            json_put_string(&h, &len, &cap, meta[i]);
            put_raw(&h, &len, &cap, ":");
            json_put_string(&h, &len, &cap, meta[i + 1]);
        }
        put_raw(&h, &len, &cap, "}");
        first = 0;
    }
    uint64_t offset = 0;
    for (int i = 0; i < n; i++) {
        const st_out_tensor *t = &tensors[i];
        int64_t numel = 1;
        for (int k = 0; k < t->ndim; k++)
            numel *= t->shape[k];
        uint64_t bytes = (uint64_t)numel * st_dtype_size(t->dtype);
        if (!first)
            put_raw(&h, &len, &cap, ",");
        first = 0;
        json_put_string(&h, &len, &cap, t->name);
        put_raw(&h, &len, &cap, ":{\"dtype\":");
        json_put_string(&h, &len, &cap, st_dtype_name(t->dtype));
        put_raw(&h, &len, &cap, ",\"shape\":[");
        for (int k = 0; k < t->ndim; k++) {
            snprintf(num, sizeof num, k ? ",%lld" : "%lld", (long long)t->shape[k]);
            put_raw(&h, &len, &cap, num);
        }
        snprintf(num, sizeof num, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)offset,
                 (unsigned long long)(offset + bytes));
        put_raw(&h, &len, &cap, num);
        offset += bytes;
    }
    put_raw(&h, &len, &cap, "}");
    /* Pad the header with spaces so the data starts 8-byte aligned. */
    while ((len + 8) % 8 != 0)
        put_raw(&h, &len, &cap, " ");
    unsigned char lenbuf[8];
    for (int i = 0; i < 8; i++)
        lenbuf[i] = (unsigned char)((uint64_t)len >> (8 * i));
    gp_atomic_file af;
    if (gp_atomic_open(&af, path, e) != 0) {
        free(h);
        return -1;
    }
    int rc = gp_atomic_write(&af, lenbuf, 8, e);
    if (rc == 0)
        rc = gp_atomic_write(&af, h, len, e);
    for (int i = 0; i < n && rc == 0; i++) {
        int64_t numel = 1;
        for (int k = 0; k < tensors[i].ndim; k++)
            numel *= tensors[i].shape[k];
        rc = gp_atomic_write(&af, tensors[i].data, (size_t)numel * st_dtype_size(tensors[i].dtype), e);
    }
    free(h);
    if (rc != 0) {
        gp_atomic_abort(&af);
        return -1;
    }
    return gp_atomic_commit(&af, e);
}
