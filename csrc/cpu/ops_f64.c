/* cpu/ops in double: the `_f64` versions the gradient checks run against finite differences. */
#include "cpu/ops.h"

#define REAL double
#define OPS_FN(name) name##_f64
#include "cpu/ops_impl.h"
