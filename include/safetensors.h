/* safetensors: read and write the safetensors format (the `safetensors` Python package's
 * format: 8-byte little-endian header length, a JSON header, then the raw tensor bytes).
 *
 * Contract
 * - st_open maps the file read-only and validates it completely before returning: the header
 *   length fits the file, the header is a JSON object, each tensor has a known dtype, a shape of
 *   non-negative integers, data_offsets inside the data area whose size equals the shape times
 *   the dtype size, and no two tensors overlap. Errors name the file and the tensor.
 * - Tensor data pointers point into the mapping: valid until st_close.
 * - st_write writes tensors in the order given, with an optional string-to-string
 *   __metadata__, each tensor's data 8-byte aligned, atomically (temporary file + rename).
 */
#ifndef GPSDREC_SAFETENSORS_H
#define GPSDREC_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "json.h"
#include "util.h"

#define ST_MAX_DIMS 8

typedef enum { ST_BOOL, ST_U8, ST_I8, ST_I16, ST_U16, ST_F16, ST_BF16, ST_I32, ST_U32, ST_F32, ST_I64, ST_U64, ST_F64 } st_dtype;

typedef struct {
    const char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    int64_t numel;
    const void *data;
    size_t nbytes;
} st_tensor;

typedef struct {
    char *path;
    void *map;
    size_t map_len;
    json_doc doc;
    int n;
    st_tensor *tensors;
    const json_value *metadata; /* object of strings, or NULL */
} st_file;

int st_open(st_file *f, const char *path, gp_err *e);
void st_close(st_file *f);
const st_tensor *st_find(const st_file *f, const char *name);
/* Metadata value for key, or NULL. */
const char *st_meta(const st_file *f, const char *key);
const char *st_dtype_name(st_dtype d);
size_t st_dtype_size(st_dtype d);

typedef struct {
    const char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data;
} st_out_tensor;

/* meta: NULL-terminated list of alternating keys and values (or NULL for none). */
int st_write(const char *path, const st_out_tensor *tensors, int n, const char *const *meta, gp_err *e);

#endif
