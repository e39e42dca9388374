/* cpu/ops in float: the backend's precision. */
#include "cpu/ops.h"

#define REAL float
#define OPS_FN(name) name
#include "cpu/ops_impl.h"
