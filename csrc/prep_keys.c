/* prep_keys: raw keys to dense ids.
 *
 * Integer keys: one open-addressing table (linear probing, load <= 1/2) claimed slot by slot with a
 * compare-and-swap, so every worker inserts without a lock; the table only grows between parallel
 * phases (prep_keymap_reserve). String keys: 64 shards, each a table under its own mutex with an
 * arena for the bytes. Provisional ids come in insertion order (thread-dependent); the final ids
 * are ranks of the sorted keys, so the output never depends on threads. */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "prep_internal.h"

#define EMPTY_KEY UINT64_MAX
#define N_SHARDS 64
#define ARENA_CHUNK (1u << 20)
#define MAX_KEYS 0xFFFFFFF0ull

typedef struct {
    const char *p;
    uint32_t len;
} str_key;

typedef struct {
    uint64_t hash;
    uint32_t id; /* PREP_NO_ID = empty */
} str_slot;

typedef struct {
    _Atomic uint64_t key; /* EMPTY_KEY = free */
    _Atomic uint32_t val; /* PREP_NO_ID while the inserting thread has not published the id */
    uint32_t pad;
} int_slot;

typedef struct {
    pthread_mutex_t lock;
    str_slot *slot;
    uint64_t cap, used;
    char **chunks;
    size_t n_chunks, chunk_used, chunk_cap;
} str_shard;

struct prep_keymap {
    int kind;
    char what[32];
    uint64_t reserved; /* capacity of the by-id arrays */
    /* The id counter is written by every insert: alone on its cache line, so lookups (which read
     * the fields below) do not bounce it between cores. */
    _Alignas(64) _Atomic uint64_t count;
    _Alignas(64) char after_count;
    /* integers */
    int_slot *slot; /* key and id side by side: one cache miss per lookup */
    uint64_t cap;
    int64_t *ikeys;
    /* strings */
    str_shard shard[N_SHARDS];
    str_key *skeys;
    _Atomic int full;
    /* finalize */
    uint32_t *final;
    uint32_t *order; /* final id - 1 -> provisional id (PREP_NO_ID = gap) */
    uint64_t n_final;
    int numeric; /* string keys that all read as canonical integers sort numerically */
};

static inline uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0x100000001b3ull);
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, s, 8);
        h = mix64(h ^ v) + 0x632be59bd9b4e019ull;
        s += 8;
        n -= 8;
    }
    uint64_t v = 0;
    memcpy(&v, s, n);
    return mix64(h ^ v ^ ((uint64_t)n << 56));
}

prep_keymap *prep_keymap_new(int kind, const char *what)
{
    prep_keymap *m = aligned_alloc(64, (sizeof *m + 63) / 64 * 64);
    if (!m) {
        fprintf(stderr, "gpsdrec: out of memory\n");
        abort();
    }
    memset(m, 0, sizeof *m);
    m->kind = kind;
    snprintf(m->what, sizeof m->what, "%s", what);
    if (kind == PREP_KEY_STR)
        for (int s = 0; s < N_SHARDS; s++)
            pthread_mutex_init(&m->shard[s].lock, NULL);
    return m;
}

void prep_keymap_free(prep_keymap *m)
{
    if (!m)
        return;
    free(m->slot);
    free(m->ikeys);
    if (m->kind == PREP_KEY_STR)
        for (int s = 0; s < N_SHARDS; s++) {
            str_shard *sh = &m->shard[s];
            for (size_t c = 0; c < sh->n_chunks; c++)
                free(sh->chunks[c]);
            free(sh->chunks);
            free(sh->slot);
            pthread_mutex_destroy(&sh->lock);
        }
    free(m->skeys);
    free(m->final);
    free(m->order);
    free(m);
}

int prep_keymap_kind(const prep_keymap *m) { return m->kind; }
uint64_t prep_keymap_size(const prep_keymap *m) { return atomic_load(&m->count); }

/* ---- integers */

static void int_insert_serial(prep_keymap *m, uint64_t key, uint32_t id)
{
    uint64_t mask = m->cap - 1, h = mix64(key) & mask;
    while (atomic_load_explicit(&m->slot[h].key, memory_order_relaxed) != EMPTY_KEY)
        h = (h + 1) & mask;
    atomic_store_explicit(&m->slot[h].key, key, memory_order_relaxed);
    atomic_store_explicit(&m->slot[h].val, id, memory_order_relaxed);
}

static int grow_ids(prep_keymap *m, uint64_t need, gp_err *e)
{
    if (need <= m->reserved)
        return 0;
    uint64_t cap = m->reserved ? m->reserved : 1024;
    while (cap < need)
        cap *= 2;
    if (m->kind == PREP_KEY_INT) {
        int64_t *k = realloc(m->ikeys, cap * sizeof *k);
        if (!k)
            return gp_fail(e, "prep: out of memory for %llu %s keys", (unsigned long long)cap, m->what);
        m->ikeys = k;
    } else {
        str_key *k = realloc(m->skeys, cap * sizeof *k);
        if (!k)
            return gp_fail(e, "prep: out of memory for %llu %s keys", (unsigned long long)cap, m->what);
        m->skeys = k;
    }
    m->reserved = cap;
    return 0;
}

int prep_keymap_reserve(prep_keymap *m, uint64_t extra, gp_err *e)
{
    uint64_t n = atomic_load(&m->count);
    if (n >= MAX_KEYS)
        return gp_fail(e, "prep: more than %llu distinct %s keys", MAX_KEYS, m->what);
    if (extra > MAX_KEYS - n)
        extra = MAX_KEYS - n;
    if (grow_ids(m, n + extra, e) != 0)
        return -1;
    if (m->kind != PREP_KEY_INT)
        return 0;
    uint64_t need = 2 * (n + extra);
    if (need <= m->cap)
        return 0;
    uint64_t cap = m->cap ? m->cap : 1024;
    while (cap < need)
        cap *= 2;
    int_slot *sl = malloc(cap * sizeof *sl);
    if (!sl)
        return gp_fail(e, "prep: out of memory for a %llu-slot %s table", (unsigned long long)cap, m->what);
    for (uint64_t i = 0; i < cap; i++) {
        atomic_init(&sl[i].key, EMPTY_KEY);
        atomic_init(&sl[i].val, PREP_NO_ID);
        sl[i].pad = 0;
    }
    free(m->slot);
    m->slot = sl;
    m->cap = cap;
    for (uint64_t id = 0; id < n; id++)
        int_insert_serial(m, (uint64_t)m->ikeys[id], (uint32_t)id);
    return 0;
}

static uint32_t wait_val(_Atomic uint32_t *v)
{
    uint32_t x;
    while ((x = atomic_load_explicit(v, memory_order_acquire)) == PREP_NO_ID)
        ;
    return x == PREP_NO_ID - 1 ? PREP_NO_ID : x; /* NO_ID - 1 marks a key that found the map full */
}

uint32_t prep_key_put_int(prep_keymap *m, int64_t key)
{
    if (key < 0 || key > PREP_MAX_INT_KEY || !m->cap)
        return PREP_NO_ID;
    uint64_t k = (uint64_t)key, mask = m->cap - 1, h = mix64(k) & mask;
    for (uint64_t probes = 0; probes < m->cap; probes++, h = (h + 1) & mask) {
        uint64_t cur = atomic_load_explicit(&m->slot[h].key, memory_order_acquire);
        if (cur == k)
            return wait_val(&m->slot[h].val);
        if (cur != EMPTY_KEY)
            continue;
        uint64_t expected = EMPTY_KEY;
        if (atomic_compare_exchange_strong_explicit(&m->slot[h].key, &expected, k, memory_order_acq_rel,
                                                    memory_order_acquire)) {
            uint64_t id = atomic_fetch_add(&m->count, 1);
            if (id >= m->reserved) { /* the caller reserved too little: never wait forever */
                atomic_store(&m->full, 1);
                atomic_store_explicit(&m->slot[h].val, PREP_NO_ID - 1, memory_order_release);
                return PREP_NO_ID;
            }
            m->ikeys[id] = key;
            atomic_store_explicit(&m->slot[h].val, (uint32_t)id, memory_order_release);
            return (uint32_t)id;
        }
        if (expected == k)
            return wait_val(&m->slot[h].val);
    }
    return PREP_NO_ID;
}

void prep_key_prefetch_int(const prep_keymap *m, int64_t key)
{
    if (m->cap)
        __builtin_prefetch(&m->slot[mix64((uint64_t)key) & (m->cap - 1)]);
}

uint32_t prep_key_get_int(prep_keymap *m, int64_t key)
{
    if (key < 0 || key > PREP_MAX_INT_KEY || !m->cap)
        return PREP_NO_ID;
    uint64_t k = (uint64_t)key, mask = m->cap - 1, h = mix64(k) & mask;
    for (uint64_t probes = 0; probes < m->cap; probes++, h = (h + 1) & mask) {
        uint64_t cur = atomic_load_explicit(&m->slot[h].key, memory_order_acquire);
        if (cur == k)
            return wait_val(&m->slot[h].val);
        if (cur == EMPTY_KEY)
            return PREP_NO_ID;
    }
    return PREP_NO_ID;
}

/* ---- strings */

static int shard_grow(str_shard *sh)
{
    uint64_t cap = sh->cap ? sh->cap * 2 : 256;
    str_slot *s = malloc(cap * sizeof *s);
    if (!s)
        return -1;
    for (uint64_t i = 0; i < cap; i++)
        s[i].id = PREP_NO_ID;
    for (uint64_t i = 0; i < sh->cap; i++) {
        if (sh->slot[i].id == PREP_NO_ID)
            continue;
        uint64_t h = (sh->slot[i].hash >> 6) & (cap - 1);
        while (s[h].id != PREP_NO_ID)
            h = (h + 1) & (cap - 1);
        s[h] = sh->slot[i];
    }
    free(sh->slot);
    sh->slot = s;
    sh->cap = cap;
    return 0;
}

static const char *arena_copy(str_shard *sh, const char *s, size_t n)
{
    if (sh->n_chunks == 0 || sh->chunk_used + n + 1 > sh->chunk_cap) {
        size_t cap = n + 1 > ARENA_CHUNK ? n + 1 : ARENA_CHUNK;
        char *c = malloc(cap);
        char **list = realloc(sh->chunks, (sh->n_chunks + 1) * sizeof *list);
        if (!c || !list) {
            free(c);
            if (list)
                sh->chunks = list;
            return NULL;
        }
        sh->chunks = list;
        sh->chunks[sh->n_chunks++] = c;
        sh->chunk_used = 0;
        sh->chunk_cap = cap;
    }
    char *dst = sh->chunks[sh->n_chunks - 1] + sh->chunk_used;
    memcpy(dst, s, n);
    dst[n] = 0;
    sh->chunk_used += n + 1;
    return dst;
}

static uint32_t str_lookup(prep_keymap *m, const char *s, size_t n, int insert)
{
    if (n > UINT32_MAX)
        return PREP_NO_ID;
    uint64_t hash = hash_bytes(s, n);
    str_shard *sh = &m->shard[hash & (N_SHARDS - 1)];
    uint32_t id = PREP_NO_ID;
    pthread_mutex_lock(&sh->lock);
    if (sh->cap == 0 && (!insert || shard_grow(sh) != 0))
        goto out;
    uint64_t mask = sh->cap - 1, h = (hash >> 6) & mask;
    for (;; h = (h + 1) & mask) {
        str_slot *sl = &sh->slot[h];
        if (sl->id == PREP_NO_ID)
            break;
        if (sl->hash == hash && m->skeys[sl->id].len == n && memcmp(m->skeys[sl->id].p, s, n) == 0) {
            id = sl->id;
            goto out;
        }
    }
    if (!insert)
        goto out;
    if ((sh->used + 1) * 2 > sh->cap) {
        if (shard_grow(sh) != 0)
            goto out;
        mask = sh->cap - 1;
        h = (hash >> 6) & mask;
        while (sh->slot[h].id != PREP_NO_ID)
            h = (h + 1) & mask;
    }
    const char *copy = arena_copy(sh, s, n);
    if (!copy)
        goto out;
    /* The by-id array only grows in prep_keymap_reserve, between parallel phases. */
    uint64_t new_id = atomic_fetch_add(&m->count, 1);
    if (new_id >= m->reserved) {
        atomic_store(&m->full, 1);
        goto out;
    }
    m->skeys[new_id].p = copy;
    m->skeys[new_id].len = (uint32_t)n;
    sh->slot[h].hash = hash;
    sh->slot[h].id = (uint32_t)new_id;
    sh->used++;
    id = (uint32_t)new_id;
out:
    pthread_mutex_unlock(&sh->lock);
    return id;
}

uint32_t prep_key_put_str(prep_keymap *m, const char *s, size_t n) { return str_lookup(m, s, n, 1); }
uint32_t prep_key_get_str(prep_keymap *m, const char *s, size_t n) { return str_lookup(m, s, n, 0); }

/* ---- parsing helpers */

int prep_parse_i64(const char *s, size_t n, int64_t *out)
{
    size_t i = 0;
    int neg = 0;
    if (n == 0)
        return -1;
    if (s[0] == '-' || s[0] == '+') {
        neg = s[0] == '-';
        i = 1;
        if (n == 1)
            return -1;
    }
    uint64_t v = 0;
    if (n - i <= 18) { /* cannot overflow: no per-digit check (this runs for every field) */
        for (; i < n; i++) {
            unsigned d = (unsigned)((unsigned char)s[i] - '0');
            if (d > 9)
                return -1;
            v = v * 10 + d;
        }
        *out = neg ? -(int64_t)v : (int64_t)v;
        return 0;
    }
    const uint64_t limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    int overflow = 0;
    for (; i < n; i++) {
        unsigned d = (unsigned)((unsigned char)s[i] - '0');
        if (d > 9)
            return -1;
        if (v > (limit - d) / 10)
            overflow = 1; /* keep scanning: a later non-digit makes it "does not parse" */
        else
            v = v * 10 + d;
    }
    if (overflow)
        return -2;
    *out = neg ? (int64_t)(0 - v) : (int64_t)v;
    return 0;
}

int prep_parse_f64(const char *s, size_t n, double *out)
{
    char buf[64];
    if (n == 0 || n >= sizeof buf)
        return -1;
    memcpy(buf, s, n);
    buf[n] = 0;
    for (size_t i = 0; i < n; i++)
        if (!((buf[i] >= '0' && buf[i] <= '9') || buf[i] == '.' || buf[i] == '-' || buf[i] == '+' || buf[i] == 'e' ||
              buf[i] == 'E'))
            return -1;
    char *end;
    errno = 0;
    double v = strtod(buf, &end);
    if (end != buf + n || errno || !isfinite(v))
        return -1;
    *out = v;
    return 0;
}

/* ---- finalize */

static int canonical_int(const char *s, size_t n, int64_t *v)
{
    if (n == 0 || n > 20)
        return 0;
    size_t i = s[0] == '-' ? 1 : 0;
    if (i == n || (s[i] == '0' && n - i > 1) || (s[0] == '-' && n == 2 && s[1] == '0'))
        return 0;
    return prep_parse_i64(s, n, v) == 0;
}

typedef struct {
    int64_t key;
    uint32_t id;
} int_pair;

static int cmp_int_pair(const void *a, const void *b)
{
    const int_pair *x = a, *y = b;
    return x->key < y->key ? -1 : x->key > y->key;
}

/* LSD radix sort by key (keys >= 0), 11 bits a pass, only the passes the largest key needs:
 * stable, linear, no comparison calls for millions of ids. */
static int radix_sort_pairs(int_pair *a, uint64_t n)
{
    if (n < 2)
        return 0;
    int_pair *b = malloc(n * sizeof *b);
    if (!b) {
        qsort(a, n, sizeof *a, cmp_int_pair);
        return 0;
    }
    uint64_t max = 0;
    for (uint64_t i = 0; i < n; i++)
        if ((uint64_t)a[i].key > max)
            max = (uint64_t)a[i].key;
    int_pair *src = a, *dst = b;
    for (int shift = 0; shift < 64 && (max >> shift) != 0; shift += 11) {
        uint64_t count[2048];
        memset(count, 0, sizeof count);
        for (uint64_t i = 0; i < n; i++)
            count[((uint64_t)src[i].key >> shift) & 2047]++;
        uint64_t sum = 0;
        for (int d = 0; d < 2048; d++) {
            uint64_t c = count[d];
            count[d] = sum;
            sum += c;
        }
        for (uint64_t i = 0; i < n; i++)
            dst[count[((uint64_t)src[i].key >> shift) & 2047]++] = src[i];
        int_pair *t = src;
        src = dst;
        dst = t;
    }
    if (src != a)
        memcpy(a, src, n * sizeof *a);
    free(b);
    return 0;
}

static const str_key *g_sort_keys; /* qsort has no context argument; finalize is serial */

static int cmp_str_id(const void *a, const void *b)
{
    const str_key *x = &g_sort_keys[*(const uint32_t *)a], *y = &g_sort_keys[*(const uint32_t *)b];
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->p, y->p, n);
    if (c)
        return c;
    return x->len < y->len ? -1 : x->len > y->len;
}

int prep_keymap_finalize(prep_keymap *m, const uint8_t *used, gp_err *e)
{
    if (atomic_load(&m->full))
        return gp_fail(e, "prep: the %s key map overflowed (more than %llu keys, or out of memory)", m->what, MAX_KEYS);
    uint64_t n = atomic_load(&m->count);
    free(m->final);
    free(m->order);
    m->final = calloc(n ? n : 1, sizeof *m->final);
    m->order = malloc((n ? n : 1) * sizeof *m->order);
    int_pair *pairs = malloc((n ? n : 1) * sizeof *pairs);
    if (!m->final || !m->order || !pairs) {
        free(pairs);
        return gp_fail(e, "prep: out of memory sorting %llu %s keys", (unsigned long long)n, m->what);
    }
    uint64_t k = 0;
    m->numeric = m->kind == PREP_KEY_INT;
    if (m->kind == PREP_KEY_STR) {
        m->numeric = 1;
        for (uint64_t id = 0; id < n && m->numeric; id++)
            if (!used || used[id])
                m->numeric = canonical_int(m->skeys[id].p, m->skeys[id].len, &pairs[0].key);
    }
    if (m->numeric) {
        for (uint64_t id = 0; id < n; id++) {
            if (used && !used[id])
                continue;
            pairs[k].id = (uint32_t)id;
            if (m->kind == PREP_KEY_INT)
                pairs[k].key = m->ikeys[id];
            else
                canonical_int(m->skeys[id].p, m->skeys[id].len, &pairs[k].key);
            k++;
        }
        int neg = 0;
        for (uint64_t r = 0; r < k && !neg; r++)
            neg = pairs[r].key < 0;
        if (neg)
            qsort(pairs, k, sizeof *pairs, cmp_int_pair);
        else
            radix_sort_pairs(pairs, k);
        for (uint64_t r = 0; r < k; r++)
            m->order[r] = pairs[r].id;
    } else {
        for (uint64_t id = 0; id < n; id++)
            if (!used || used[id])
                m->order[k++] = (uint32_t)id;
        g_sort_keys = m->skeys;
        qsort(m->order, k, sizeof *m->order, cmp_str_id);
    }
    free(pairs);
    for (uint64_t r = 0; r < k; r++)
        m->final[m->order[r]] = (uint32_t)(r + 1);
    m->n_final = k;
    return 0;
}

int prep_keymap_set_final(prep_keymap *m, const uint32_t *ids, uint64_t max_id, gp_err *e)
{
    uint64_t n = atomic_load(&m->count);
    free(m->final);
    free(m->order);
    m->final = calloc(n ? n : 1, sizeof *m->final);
    m->order = malloc((max_id ? max_id : 1) * sizeof *m->order);
    if (!m->final || !m->order)
        return gp_fail(e, "prep: out of memory for the %s map", m->what);
    for (uint64_t i = 0; i < max_id; i++)
        m->order[i] = PREP_NO_ID;
    for (uint64_t id = 0; id < n; id++) {
        m->final[id] = ids[id];
        if (ids[id])
            m->order[ids[id] - 1] = (uint32_t)id;
    }
    m->n_final = max_id;
    return 0;
}

const uint32_t *prep_keymap_final(const prep_keymap *m) { return m->final; }
uint64_t prep_keymap_n_final(const prep_keymap *m) { return m->n_final; }

const char *prep_keymap_key_text(const prep_keymap *m, uint32_t final_id, char *buf, size_t n)
{
    if (!m->order || final_id == 0 || final_id > m->n_final)
        return NULL;
    uint32_t id = m->order[final_id - 1];
    if (id == PREP_NO_ID)
        return NULL;
    if (m->kind == PREP_KEY_INT) {
        /* by hand: this runs once per key of maps with millions of keys */
        int64_t v = m->ikeys[id];
        char tmp[24];
        int d = 0, neg = v < 0;
        uint64_t u = neg ? 0 - (uint64_t)v : (uint64_t)v;
        do
            tmp[d++] = (char)('0' + u % 10);
        while ((u /= 10) && d < 22);
        if (n < (size_t)d + 2)
            return NULL;
        size_t o = 0;
        if (neg)
            buf[o++] = '-';
        while (d)
            buf[o++] = tmp[--d];
        buf[o] = 0;
        return buf;
    }
    return m->skeys[id].p;
}

int prep_keymap_write(const prep_keymap *m, const char *path, gp_err *e)
{
    gp_atomic_file af;
    if (gp_atomic_open(&af, path, e) != 0)
        return -1;
    /* formatted by hand into a large buffer: millions of lines */
    size_t cap = (size_t)1 << 20, len = 0;
    char *buf = malloc(cap);
    char num[32];
    int rc = buf ? 0 : gp_fail(e, "%s: out of memory", path);
    for (uint64_t r = 1; rc == 0 && r <= m->n_final; r++) {
        const char *key = prep_keymap_key_text(m, (uint32_t)r, num, sizeof num);
        if (!key)
            continue;
        size_t kl = strlen(key);
        if (len + kl + 32 > cap) {
            if (len && gp_atomic_write(&af, buf, len, e) != 0)
                rc = -1;
            len = 0;
            if (rc == 0 && kl + 32 > cap) {
                char *bigger = realloc(buf, kl + 32);
                if (!bigger)
                    rc = gp_fail(e, "%s: out of memory", path);
                else
                    buf = bigger, cap = kl + 32;
            }
            if (rc)
                break;
        }
        memcpy(buf + len, key, kl);
        len += kl;
        buf[len++] = ',';
        char digits[24];
        int d = 0;
        for (uint64_t v = r; v; v /= 10)
            digits[d++] = (char)('0' + v % 10);
        while (d)
            buf[len++] = digits[--d];
        buf[len++] = '\n';
    }
    if (rc == 0 && len && gp_atomic_write(&af, buf, len, e) != 0)
        rc = -1;
    free(buf);
    if (rc != 0) {
        gp_atomic_abort(&af);
        return -1;
    }
    return gp_atomic_commit(&af, e);
}
