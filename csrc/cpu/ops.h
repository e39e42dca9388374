/* cpu/ops: the fp32 reference ops of the GPSD model, forward and backward, in plain C.
 *
 * These are the definitions the CUDA kernels are checked against, so they favour being
 * obviously right over being fast, while staying fast enough to train the embedded default in a
 * few minutes: OpenMP over rows, loops the compiler can vectorise, sums accumulated in double
 * where a long reduction would otherwise lose precision.
 *
 * Conventions
 * - Row-major tensors; "rows" is the product of the leading dimensions; element offsets are
 *   computed in int64_t.
 * - Parameter gradients always accumulate (+=) so micro-batches can add up. Activation
 *   gradients are overwritten unless the op takes `accumulate` and it is non-zero.
 * - Deterministic: the same inputs give bit-identical outputs whatever the thread count (each
 *   output element is reduced by one thread in a fixed order).
 * - Each op exists in two precisions from one source (cpu/ops_impl.h): `cpu_x` with float and
 *   `cpu_x_f64` with double. The double versions let the gradient tests compare against finite
 *   differences with tight tolerances.
 */
#ifndef GPSDREC_CPU_OPS_H
#define GPSDREC_CPU_OPS_H

#include <stdint.h>

#define REAL float
#define OPS_FN(name) name
#include "cpu/ops_decl.h"
#undef REAL
#undef OPS_FN

#define REAL double
#define OPS_FN(name) name##_f64
#include "cpu/ops_decl.h"
#undef REAL
#undef OPS_FN

#endif
