/* gradcheck: compare an analytic gradient with central finite differences, for tests.
 *
 * Header-only (the test runner only compiles tests/test_*.c). The function under test is a
 * scalar loss of a double array x, evaluated by a callback that reads x through its context;
 * for an op with tensor outputs the usual loss is a random projection sum(out * weights), whose
 * gradient is the op's backward with d_out = weights.
 *
 * gc_check perturbs up to max_checks coordinates (all of them when n <= max_checks, otherwise an
 * evenly spread subset that always includes the first and last), restores x exactly, and records
 * one test failure per coordinate whose error exceeds rtol, where
 *   error = max(0, |numeric - analytic| - noise) / max(|analytic|, |numeric|, 1e-3 * max_i |analytic_i|, 1e-12),
 * i.e. relative, with a floor tied to the tensor's scale so that exact zeros compare sensibly,
 * after allowing for the rounding noise of the difference quotient itself,
 *   noise = 64 * DBL_EPSILON * max(|loss(x + h)|, |loss(x - h)|) / h,
 * which only matters for gradients many orders of magnitude below loss / h.
 * It returns the largest error seen.
 */
#ifndef GPSDREC_TESTS_GRADCHECK_H
#define GPSDREC_TESTS_GRADCHECK_H

#include <float.h>
#include <math.h>
#include <stdint.h>

#include "test.h"

typedef double (*gc_loss_fn)(void *ctx);

/* sum_i out[i] * weights[i], the random projection of an op's outputs. */
static inline double gc_project(const double *out, const double *weights, int64_t n)
{
    double s = 0;
    for (int64_t i = 0; i < n; i++)
        s += out[i] * weights[i];
    return s;
}

static inline double gc_check(const char *what, double *x, int64_t n, const double *analytic, gc_loss_fn loss,
                              void *ctx, double h, double rtol, int64_t max_checks)
{
    if (n <= 0)
        return 0;
    double scale = 0;
    for (int64_t i = 0; i < n; i++)
        scale = fmax(scale, fabs(analytic[i]));
    int64_t checks = n <= max_checks ? n : max_checks;
    double worst = 0;
    int reported = 0;
    for (int64_t c = 0; c < checks; c++) {
        int64_t i = checks == n ? c : (checks == 1 ? 0 : c * (n - 1) / (checks - 1));
        double saved = x[i];
        x[i] = saved + h;
        double up = loss(ctx);
        x[i] = saved - h;
        double down = loss(ctx);
        x[i] = saved;
        double numeric = (up - down) / (2 * h);
        double den = fmax(fmax(fabs(analytic[i]), fabs(numeric)), fmax(1e-3 * scale, 1e-12));
        double noise = 64 * DBL_EPSILON * fmax(fabs(up), fabs(down)) / h;
        double err = fmax(0.0, fabs(numeric - analytic[i]) - noise) / den;
        if (err > worst)
            worst = err;
        if (!(err <= rtol) && reported++ < 5)
            test_failure(__FILE__, __LINE__, "gradcheck %s[%lld]: analytic %.12g numeric %.12g (rel err %.3g > %.3g)",
                         what, (long long)i, analytic[i], numeric, err, rtol);
    }
    return worst;
}

#endif
