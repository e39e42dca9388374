/* json: a small, strict JSON parser into an immutable tree (RFC 8259).
 *
 * Contract
 * - json_parse builds the whole document; on a syntax error it fails with the byte offset,
 *   line and column and what was expected. Nesting is limited (depth 256) so hostile input
 *   cannot exhaust the stack. Strings are unescaped to UTF-8 (\uXXXX and surrogate pairs).
 * - Numbers keep their text and a double value; json_int checks that a number is integral.
 * - Objects keep key order; lookup is linear (documents here are small: safetensors headers,
 *   metadata, config-like files).
 */
#ifndef GPSDREC_JSON_H
#define GPSDREC_JSON_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

typedef enum { JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT } json_type;

typedef struct json_value json_value;
struct json_value {
    json_type type;
    int boolean;
    double number;
    char *string;        /* JSON_STRING (NUL-terminated; may contain NULs if the input escaped them) */
    size_t string_len;
    int n;               /* elements of an array / members of an object */
    json_value *items;   /* array elements or object member values */
    char **keys;         /* object member keys */
};

typedef struct {
    json_value *root;
    void *arena; /* all allocations, freed at once */
} json_doc;

int json_parse(json_doc *doc, const char *text, size_t len, const char *what, gp_err *e);
void json_free(json_doc *doc);
const json_value *json_get(const json_value *obj, const char *key);
/* 0 if v is a number holding an integer (within int64), stored into out. */
int json_int(const json_value *v, int64_t *out);

#endif
