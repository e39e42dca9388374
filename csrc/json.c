#include "json.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define JSON_MAX_DEPTH 256

/* A simple chained arena: every node, string and array of the document lives in it. */
typedef struct arena_block {
    struct arena_block *next;
    size_t used, cap;
    char data[];
} arena_block;

typedef struct {
    const char *s;
    size_t len, pos;
    const char *what;
    arena_block *arena;
    gp_err *e;
} parser;

static void *arena_alloc(parser *p, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    arena_block *b = p->arena;
    if (!b || b->used + n > b->cap) {
        size_t cap = n > 65536 ? n : 65536;
        arena_block *nb = gp_xmalloc(sizeof *nb + cap);
        nb->next = b;
        nb->used = 0;
        nb->cap = cap;
        p->arena = b = nb;
    }
    void *r = b->data + b->used;
    b->used += n;
    memset(r, 0, n);
    return r;
}

static int fail_at(parser *p, const char *expected)
{
    int line = 1, col = 1;
    for (size_t i = 0; i < p->pos && i < p->len; i++) {
        if (p->s[i] == '\n') {
            line++;
            col = 1;
        } else {
            col++;
        }
    }
    if (p->pos >= p->len)
        return gp_fail(p->e, "%s: invalid JSON at line %d column %d (byte %zu): %s, found end of input", p->what, line,
                       col, p->pos, expected);
    unsigned char c = (unsigned char)p->s[p->pos];
    if (c >= 32 && c < 127)
        return gp_fail(p->e, "%s: invalid JSON at line %d column %d (byte %zu): %s, found '%c'", p->what, line, col,
                       p->pos, expected, c);
    return gp_fail(p->e, "%s: invalid JSON at line %d column %d (byte %zu): %s, found byte 0x%02x", p->what, line, col,
                   p->pos, expected, c);
}

static void skip_ws(parser *p)
{
    while (p->pos < p->len) {
        char c = p->s[p->pos];
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r')
            p->pos++;
        else
            break;
    }
}

static int parse_value(parser *p, json_value *v, int depth);

static int hex4(parser *p, unsigned *out)
{
    if (p->pos + 4 > p->len)
        return fail_at(p, "expected 4 hex digits after \\u");
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p->s[p->pos++];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (unsigned)(c - 'A' + 10);
        else {
            p->pos--;
            return fail_at(p, "expected a hex digit in \\u escape");
        }
    }
    *out = v;
    return 0;
}

static size_t put_utf8(char *dst, unsigned cp)
{
    if (cp < 0x80) {
        dst[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        dst[0] = (char)(0xC0 | (cp >> 6));
        dst[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        dst[0] = (char)(0xE0 | (cp >> 12));
        dst[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        dst[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    dst[0] = (char)(0xF0 | (cp >> 18));
    dst[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    dst[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    dst[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Parses a string starting at the opening quote. The unescaped text is never longer than the
 * escaped one, so one allocation of the raw length suffices. */
static int parse_string(parser *p, char **out, size_t *out_len)
{
    p->pos++; /* opening quote */
    size_t start = p->pos;
    while (p->pos < p->len && p->s[p->pos] != '"') {
        if (p->s[p->pos] == '\\')
            p->pos++;
        p->pos++;
    }
    if (p->pos >= p->len)
        return fail_at(p, "unterminated string");
    size_t raw_len = p->pos - start;
    char *dst = arena_alloc(p, raw_len + 1);
    size_t n = 0;
    p->pos = start;
    while (p->s[p->pos] != '"') {
        unsigned char c = (unsigned char)p->s[p->pos];
        if (c < 0x20)
            return fail_at(p, "control character inside a string (escape it)");
        if (c != '\\') {
            dst[n++] = (char)c;
            p->pos++;
            continue;
        }
        p->pos++;
        char esc = p->s[p->pos++];
        switch (esc) {
        case '"': dst[n++] = '"'; break;
        case '\\': dst[n++] = '\\'; break;
        case '/': dst[n++] = '/'; break;
        case 'b': dst[n++] = '\b'; break;
        case 'f': dst[n++] = '\f'; break;
        case 'n': dst[n++] = '\n'; break;
        case 'r': dst[n++] = '\r'; break;
        case 't': dst[n++] = '\t'; break;
        case 'u': {
            unsigned cp;
            if (hex4(p, &cp) != 0)
                return -1;
            if (cp >= 0xD800 && cp < 0xDC00) {
                unsigned lo;
                if (p->pos + 2 > p->len || p->s[p->pos] != '\\' || p->s[p->pos + 1] != 'u')
                    return fail_at(p, "expected a low surrogate after a high surrogate");
                p->pos += 2;
                if (hex4(p, &lo) != 0)
                    return -1;
                if (lo < 0xDC00 || lo > 0xDFFF)
                    return fail_at(p, "invalid low surrogate");
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else if (cp >= 0xDC00 && cp < 0xE000) {
                return fail_at(p, "unpaired low surrogate");
            }
            n += put_utf8(dst + n, cp);
            break;
        }
        default:
            p->pos--;
            return fail_at(p, "invalid escape sequence");
        }
    }
    p->pos++; /* closing quote */
    dst[n] = '\0';
    *out = dst;
    *out_len = n;
    return 0;
}

static int parse_number(parser *p, json_value *v)
{
    size_t start = p->pos;
    if (p->s[p->pos] == '-')
        p->pos++;
    if (p->pos >= p->len || !(p->s[p->pos] >= '0' && p->s[p->pos] <= '9'))
        return fail_at(p, "expected a digit");
    if (p->s[p->pos] == '0')
        p->pos++;
    else
        while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9')
            p->pos++;
    if (p->pos < p->len && p->s[p->pos] == '.') {
        p->pos++;
        if (p->pos >= p->len || !(p->s[p->pos] >= '0' && p->s[p->pos] <= '9'))
            return fail_at(p, "expected a digit after the decimal point");
        while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9')
            p->pos++;
    }
    if (p->pos < p->len && (p->s[p->pos] == 'e' || p->s[p->pos] == 'E')) {
        p->pos++;
        if (p->pos < p->len && (p->s[p->pos] == '+' || p->s[p->pos] == '-'))
            p->pos++;
        if (p->pos >= p->len || !(p->s[p->pos] >= '0' && p->s[p->pos] <= '9'))
            return fail_at(p, "expected a digit in the exponent");
        while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9')
            p->pos++;
    }
    size_t n = p->pos - start;
    char *text = arena_alloc(p, n + 1);
    memcpy(text, p->s + start, n);
    text[n] = '\0';
    v->type = JSON_NUMBER;
    v->string = text;
    v->string_len = n;
    v->number = strtod(text, NULL);
    return 0;
}

static int parse_literal(parser *p, const char *word)
{
    size_t n = strlen(word);
    if (p->pos + n > p->len || memcmp(p->s + p->pos, word, n) != 0)
        return fail_at(p, "expected a value");
    p->pos += n;
    return 0;
}

/* Elements are collected in a growable temporary array, then copied into the arena. */
static int parse_container(parser *p, json_value *v, int depth, int is_object)
{
    p->pos++; /* [ or { */
    int cap = 8, n = 0;
    json_value *tmp = gp_xmalloc((size_t)cap * sizeof *tmp);
    char **keys = is_object ? gp_xmalloc((size_t)cap * sizeof *keys) : NULL;
    int rc = 0;
    skip_ws(p);
    char close = is_object ? '}' : ']';
    if (p->pos < p->len && p->s[p->pos] == close) {
        p->pos++;
    } else {
        for (;;) {
            if (n == cap) {
                cap *= 2;
                tmp = gp_xrealloc(tmp, (size_t)cap * sizeof *tmp);
                if (keys)
                    keys = gp_xrealloc(keys, (size_t)cap * sizeof *keys);
            }
            skip_ws(p);
            if (is_object) {
                if (p->pos >= p->len || p->s[p->pos] != '"') {
                    rc = fail_at(p, "expected a member name in quotes");
                    break;
                }
                size_t kl;
                if ((rc = parse_string(p, &keys[n], &kl)) != 0)
                    break;
                skip_ws(p);
                if (p->pos >= p->len || p->s[p->pos] != ':') {
                    rc = fail_at(p, "expected ':' after a member name");
                    break;
                }
                p->pos++;
            }
            memset(&tmp[n], 0, sizeof tmp[n]);
            if ((rc = parse_value(p, &tmp[n], depth + 1)) != 0)
                break;
            n++;
            skip_ws(p);
            if (p->pos < p->len && p->s[p->pos] == ',') {
                p->pos++;
                continue;
            }
            if (p->pos < p->len && p->s[p->pos] == close) {
                p->pos++;
                break;
            }
            rc = fail_at(p, is_object ? "expected ',' or '}'" : "expected ',' or ']'");
            break;
        }
    }
    if (rc == 0) {
        v->type = is_object ? JSON_OBJECT : JSON_ARRAY;
        v->n = n;
        v->items = arena_alloc(p, (size_t)(n ? n : 1) * sizeof *v->items);
        memcpy(v->items, tmp, (size_t)n * sizeof *tmp);
        if (is_object) {
            v->keys = arena_alloc(p, (size_t)(n ? n : 1) * sizeof *v->keys);
            memcpy(v->keys, keys, (size_t)n * sizeof *keys);
        }
    }
    free(tmp);
    free(keys);
    return rc;
}

static int parse_value(parser *p, json_value *v, int depth)
{
    if (depth > JSON_MAX_DEPTH)
        return fail_at(p, "nesting deeper than 256 levels");
    skip_ws(p);
    if (p->pos >= p->len)
        return fail_at(p, "expected a value");
    char c = p->s[p->pos];
    switch (c) {
    case '{':
        return parse_container(p, v, depth, 1);
    case '[':
        return parse_container(p, v, depth, 0);
    case '"':
        v->type = JSON_STRING;
        return parse_string(p, &v->string, &v->string_len);
    case 't':
        v->type = JSON_BOOL;
        v->boolean = 1;
        return parse_literal(p, "true");
    case 'f':
        v->type = JSON_BOOL;
        v->boolean = 0;
        return parse_literal(p, "false");
    case 'n':
        v->type = JSON_NULL;
        return parse_literal(p, "null");
    default:
        if (c == '-' || (c >= '0' && c <= '9'))
            return parse_number(p, v);
        return fail_at(p, "expected a value");
    }
}

int json_parse(json_doc *doc, const char *text, size_t len, const char *what, gp_err *e)
{
    parser p = {text, len, 0, what ? what : "JSON", NULL, e};
    memset(doc, 0, sizeof *doc);
    json_value *root = arena_alloc(&p, sizeof *root);
    int rc = parse_value(&p, root, 0);
    if (rc == 0) {
        skip_ws(&p);
        if (p.pos != p.len)
            rc = fail_at(&p, "expected end of input after the value");
    }
    doc->arena = p.arena;
    if (rc != 0) {
        json_free(doc);
        return -1;
    }
    doc->root = root;
    return 0;
}

void json_free(json_doc *doc)
{
    arena_block *b = doc->arena;
    while (b) {
        arena_block *next = b->next;
        free(b);
        b = next;
    }
    doc->arena = NULL;
    doc->root = NULL;
}

const json_value *json_get(const json_value *obj, const char *key)
{
    if (!obj || obj->type != JSON_OBJECT)
        return NULL;
    for (int i = 0; i < obj->n; i++)
        if (strcmp(obj->keys[i], key) == 0)
            return &obj->items[i];
    return NULL;
}

int json_int(const json_value *v, int64_t *out)
{
    if (!v || v->type != JSON_NUMBER)
        return -1;
    if (gp_parse_i64(v->string, out) == 0)
        return 0;
    double d = v->number;
    if (d == floor(d) && fabs(d) < 9.0e18) {
        *out = (int64_t)d;
        return 0;
    }
    return -1;
}
