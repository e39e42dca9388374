/* prep_pyjson: a scanner for one-line JSON objects and Python dict literals (the 2014 Amazon
 * metadata is Python repr text: single quotes, True/False/None; the official scripts eval() each
 * line). It only finds value spans; strings are decoded on demand. Nesting is limited so hostile
 * input cannot exhaust the stack. */
#include "prep_internal.h"

#define LIT_MAX_DEPTH 64

static void skip_ws(prep_lit *l)
{
    while (l->p < l->end && (*l->p == ' ' || *l->p == '\t' || *l->p == '\r' || *l->p == '\n'))
        l->p++;
}

static int fail(prep_lit *l, const char *what)
{
    if (!l->err) {
        l->err = what;
        l->err_at = l->p;
    }
    return -1;
}

static int scan_value(prep_lit *l, prep_lit_value *v);

static int scan_string(prep_lit *l, prep_lit_value *v)
{
    char q = *l->p++;
    v->type = PREP_LIT_STRING;
    v->quote = q;
    v->begin = l->p;
    while (l->p < l->end) {
        char c = *l->p;
        if (c == '\\') {
            if (l->p + 1 >= l->end)
                break;
            l->p += 2;
            continue;
        }
        if (c == q) {
            v->end = l->p++;
            return 0;
        }
        l->p++;
    }
    return fail(l, "unterminated string");
}

static int scan_container(prep_lit *l, prep_lit_value *v, char open)
{
    char close = open == '{' ? '}' : open == '[' ? ']' : ')';
    if (++l->depth > LIT_MAX_DEPTH)
        return fail(l, "nesting deeper than 64");
    v->type = open == '{' ? PREP_LIT_DICT : PREP_LIT_LIST;
    v->begin = l->p;
    l->p++;
    for (;;) {
        skip_ws(l);
        if (l->p >= l->end)
            return fail(l, "unterminated object or list");
        if (*l->p == close) {
            l->p++;
            break;
        }
        prep_lit_value x;
        if (scan_value(l, &x) != 0)
            return -1;
        if (open == '{') {
            if (x.type != PREP_LIT_STRING && x.type != PREP_LIT_NUMBER)
                return fail(l, "object key is not a string");
            skip_ws(l);
            if (l->p >= l->end || *l->p != ':')
                return fail(l, "expected ':' after a key");
            l->p++;
            skip_ws(l);
            if (scan_value(l, &x) != 0)
                return -1;
        }
        skip_ws(l);
        if (l->p < l->end && *l->p == ',') {
            l->p++;
            continue;
        }
        if (l->p < l->end && *l->p == close) {
            l->p++;
            break;
        }
        return fail(l, open == '{' ? "expected ',' or '}'" : "expected ',' or ']'");
    }
    v->end = l->p;
    l->depth--;
    return 0;
}

static int word(prep_lit *l, const char *w)
{
    size_t n = strlen(w);
    if ((size_t)(l->end - l->p) >= n && memcmp(l->p, w, n) == 0) {
        const char *after = l->p + n;
        if (after < l->end && ((*after >= 'a' && *after <= 'z') || (*after >= 'A' && *after <= 'Z') ||
                               (*after >= '0' && *after <= '9') || *after == '_'))
            return 0;
        l->p += n;
        return 1;
    }
    return 0;
}

static int scan_value(prep_lit *l, prep_lit_value *v)
{
    skip_ws(l);
    if (l->p >= l->end)
        return fail(l, "unexpected end of line");
    char c = *l->p;
    if (c == '"' || c == '\'')
        return scan_string(l, v);
    if ((c == 'u' || c == 'U') && l->p + 1 < l->end && (l->p[1] == '"' || l->p[1] == '\'')) {
        l->p++;
        return scan_string(l, v);
    }
    if (c == '{' || c == '[' || c == '(')
        return scan_container(l, v, c);
    if (c == '-' || c == '+' || (c >= '0' && c <= '9') || c == '.') {
        v->type = PREP_LIT_NUMBER;
        v->begin = l->p;
        if (c == '-' || c == '+')
            l->p++;
        int digits = 0;
        while (l->p < l->end && ((*l->p >= '0' && *l->p <= '9') || *l->p == '.' || *l->p == 'e' || *l->p == 'E' ||
                                 ((*l->p == '-' || *l->p == '+') && (l->p[-1] == 'e' || l->p[-1] == 'E')))) {
            digits += *l->p >= '0' && *l->p <= '9';
            l->p++;
        }
        if (!digits)
            return fail(l, "bad number");
        v->end = l->p;
        return 0;
    }
    static const char *const words[] = {"true", "false", "null", "True", "False", "None", "NaN", "Infinity"};
    v->begin = l->p;
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
        if (word(l, words[i])) {
            v->type = PREP_LIT_CONST;
            v->end = l->p;
            return 0;
        }
    return fail(l, "unexpected character");
}

int prep_lit_members(prep_lit *l, int (*fn)(void *ctx, const char *key, size_t klen, const prep_lit_value *v), void *ctx)
{
    skip_ws(l);
    if (l->p >= l->end || *l->p != '{')
        return fail(l, "expected '{' at the start of the line");
    l->p++;
    l->depth = 1;
    int stopped = 0;
    for (;;) {
        skip_ws(l);
        if (l->p >= l->end)
            return fail(l, "unterminated object (truncated line?)");
        if (*l->p == '}') {
            l->p++;
            break;
        }
        prep_lit_value k, v;
        if (scan_value(l, &k) != 0)
            return -1;
        if (k.type != PREP_LIT_STRING)
            return fail(l, "object key is not a string");
        skip_ws(l);
        if (l->p >= l->end || *l->p != ':')
            return fail(l, "expected ':' after a key");
        l->p++;
        if (scan_value(l, &v) != 0)
            return -1;
        if (!stopped) {
            char key[128];
            long kl = (k.end - k.begin) * 2 + 4 <= (long)sizeof key ? prep_lit_decode(&k, key) : -2;
            if (kl == -1)
                return fail(l, "bad escape in a key");
            if (kl >= 0 && fn(ctx, key, (size_t)kl, &v))
                stopped = 1;
        }
        skip_ws(l);
        if (l->p < l->end && *l->p == ',') {
            l->p++;
            continue;
        }
        if (l->p < l->end && *l->p == '}') {
            l->p++;
            break;
        }
        return fail(l, l->p >= l->end ? "unterminated object (truncated line?)" : "expected ',' or '}'");
    }
    skip_ws(l);
    if (l->p != l->end)
        return fail(l, "text after the closing '}'");
    return 0;
}

int prep_lit_elements(const prep_lit_value *list, int (*fn)(void *ctx, const prep_lit_value *v), void *ctx,
                      const char **err)
{
    prep_lit l = {list->begin + 1, list->end - 1, 1, NULL, NULL};
    for (;;) {
        skip_ws(&l);
        if (l.p >= l.end)
            break;
        prep_lit_value v;
        if (scan_value(&l, &v) != 0) {
            *err = l.err;
            return -1;
        }
        if (fn(ctx, &v))
            return 1;
        skip_ws(&l);
        if (l.p < l.end && *l.p == ',')
            l.p++;
    }
    return 0;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static long hex_n(const char *p, const char *end, int n)
{
    if (end - p < n)
        return -1;
    long v = 0;
    for (int i = 0; i < n; i++) {
        int h = hexval(p[i]);
        if (h < 0)
            return -1;
        v = v * 16 + h;
    }
    return v;
}

static size_t put_utf8(char *o, unsigned long cp)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

long prep_lit_decode(const prep_lit_value *v, char *out)
{
    const char *p = v->begin, *end = v->end;
    size_t o = 0;
    while (p < end) {
        if (*p != '\\') {
            out[o++] = *p++;
            continue;
        }
        if (p + 1 >= end)
            return -1;
        char c = p[1];
        p += 2;
        long cp;
        switch (c) {
        case 'n': out[o++] = '\n'; break;
        case 't': out[o++] = '\t'; break;
        case 'r': out[o++] = '\r'; break;
        case 'b': out[o++] = '\b'; break;
        case 'f': out[o++] = '\f'; break;
        case 'v': out[o++] = '\v'; break;
        case 'a': out[o++] = '\a'; break;
        case '/': case '\\': case '\'': case '"': out[o++] = c; break;
        case '\n': break;
        case 'x':
            if ((cp = hex_n(p, end, 2)) < 0)
                return -1;
            p += 2;
            o += put_utf8(out + o, (unsigned long)cp);
            break;
        case 'u':
        case 'U': {
            int n = c == 'u' ? 4 : 8;
            if ((cp = hex_n(p, end, n)) < 0 || cp > 0x10FFFF)
                return -1;
            p += n;
            if (cp >= 0xD800 && cp < 0xDC00 && end - p >= 6 && p[0] == '\\' && p[1] == 'u') {
                long lo = hex_n(p + 2, end, 4);
                if (lo >= 0xDC00 && lo < 0xE000) {
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    p += 6;
                }
            }
            o += put_utf8(out + o, (unsigned long)cp);
            break;
        }
        default:
            if (c >= '0' && c <= '7') { /* Python octal escape, up to 3 digits */
                cp = c - '0';
                for (int i = 0; i < 2 && p < end && *p >= '0' && *p <= '7'; i++)
                    cp = cp * 8 + (*p++ - '0');
                o += put_utf8(out + o, (unsigned long)cp);
                break;
            }
            out[o++] = '\\'; /* Python keeps unknown escapes as they are */
            out[o++] = c;
        }
    }
    return (long)o;
}
