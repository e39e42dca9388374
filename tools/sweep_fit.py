#!/usr/bin/env python3
"""Power-law fits of a scaling sweep, in pure Python (standard library only, so CI can run it).

The paper's scaling laws (GPSD, KDD'25, Figure 5) in N = dense parameters of the transformer blocks:
    AUC(N)  = a - b * N^(-c)        (rises towards the bound a)
    loss(N) = a + b * N^(-c)        (falls towards the bound a)
Each is fitted by least squares per strategy: a grid over c (for each c the model is linear in a
and b, solved exactly) gives a start that cannot land in a poor local minimum, then
Levenberg-Marquardt refines (a, b, c) together. Standard errors come from the Jacobian at the
optimum (cov = s^2 (J'J)^-1 with s^2 = SSE / (n - 3)); R^2 = 1 - SSE / SST.

usage:
  tools/sweep_fit.py SWEEP_DIR_OR_TABLE.json [--json OUT.json] [--markdown OUT.md]
      fit test AUC and test logloss of every strategy in a tools/sweep.py table (sweep.json) and
      print the constants with their standard errors and R^2 beside the paper's
  tools/sweep_fit.py --self-test
      fit points generated from known constants (exact, noisy, and 200 noisy repetitions for the
      coverage of the standard errors); exits 1 naming the check that failed
"""
import json
import math
import os
import random
import sys

# The paper's fitted constants (Figure 5, industrial data), as ../shared/DESIGN.md lists them.
PAPER = {
    "auc": {"a": 0.7097, "b": 0.7553, "c": 0.2364},
    "logloss": {"a": 0.3695, "b": 0.1420, "c": 0.1915},
}
# Sign of the b term: AUC = a - b N^-c, loss = a + b N^-c.
SIGN = {"auc": -1.0, "logloss": 1.0}
FORMULA = {"auc": "AUC = a - b*N^-c", "logloss": "logloss = a + b*N^-c"}
# The table column each metric is fitted to.
COLUMN = {"auc": "test_auc", "logloss": "test_logloss"}

C_MIN, C_MAX = 1e-4, 10.0  # c stays inside this range during the refinement
C_GRID = (0.005, 3.0)  # the starting grid, and the range of exponents a power law plausibly has


def predict(sign, a, b, c, n):
    return a + sign * b * n ** (-c)


def _sse(xs, ys, sign, a, b, c):
    return sum((y - predict(sign, a, b, c, x)) ** 2 for x, y in zip(xs, ys))


def _linear_ab(xs, ys, sign, c):
    """Least-squares a and b for a fixed c (y = a + sign*b*g with g = N^-c): closed form."""
    g = [sign * x ** (-c) for x in xs]
    n = len(xs)
    mg = sum(g) / n
    my = sum(ys) / n
    sgg = sum((gi - mg) ** 2 for gi in g)
    if sgg <= 0:
        return None
    b = sum((gi - mg) * (yi - my) for gi, yi in zip(g, ys)) / sgg
    a = my - b * mg
    return a, b


def _solve(m, v):
    """Solve the small dense system m x = v by Gaussian elimination with partial pivoting;
    None when singular."""
    k = len(v)
    aug = [list(m[i]) + [v[i]] for i in range(k)]
    for col in range(k):
        piv = max(range(col, k), key=lambda r: abs(aug[r][col]))
        if abs(aug[piv][col]) < 1e-300:
            return None
        aug[col], aug[piv] = aug[piv], aug[col]
        for r in range(k):
            if r != col:
                f = aug[r][col] / aug[col][col]
                for j in range(col, k + 1):
                    aug[r][j] -= f * aug[col][j]
    return [aug[i][k] / aug[i][i] for i in range(k)]


def _inverse(m):
    k = len(m)
    cols = []
    for i in range(k):
        e = [1.0 if j == i else 0.0 for j in range(k)]
        x = _solve(m, e)
        if x is None:
            return None
        cols.append(x)
    return [[cols[j][i] for j in range(k)] for i in range(k)]


def _jacobian(xs, sign, a, b, c):
    """Rows of d f / d(a, b, c) for f = a + sign*b*N^-c."""
    rows = []
    for x in xs:
        g = x ** (-c)
        rows.append((1.0, sign * g, -sign * b * g * math.log(x)))
    return rows


def _normal(rows, res):
    jtj = [[sum(r[i] * r[j] for r in rows) for j in range(3)] for i in range(3)]
    jtr = [sum(r[i] * e for r, e in zip(rows, res)) for i in range(3)]
    return jtj, jtr


def fit_power_law(ns, ys, metric):
    """Fit metric ('auc' or 'logloss') values ys at parameter counts ns. Returns a dict with a, b,
    c, their standard errors (None without degrees of freedom), r2, sse, n, converged and a note;
    raises ValueError for unusable input."""
    if metric not in SIGN:
        raise ValueError("unknown metric %r (auc or logloss)" % metric)
    if len(ns) != len(ys):
        raise ValueError("%d parameter counts but %d values" % (len(ns), len(ys)))
    for n, y in zip(ns, ys):
        if not (isinstance(n, (int, float)) and n > 1 and math.isfinite(n)):
            raise ValueError("parameter count %r is not a finite number above 1" % (n,))
        if not (isinstance(y, (int, float)) and math.isfinite(y)):
            raise ValueError("value %r at N=%s is not a finite number" % (y, n))
    if len(set(ns)) < 3:
        raise ValueError("%d distinct sizes: a three-constant power law needs at least 3" % len(set(ns)))
    sign = SIGN[metric]
    xs = [float(n) for n in ns]
    ys = [float(y) for y in ys]

    # Start: the best c on a log grid, with a and b exact for each c.
    best = None
    steps = 400
    for i in range(steps + 1):
        c = math.exp(math.log(C_GRID[0]) + (math.log(C_GRID[1]) - math.log(C_GRID[0])) * i / steps)
        ab = _linear_ab(xs, ys, sign, c)
        if ab is None:
            continue
        s = _sse(xs, ys, sign, ab[0], ab[1], c)
        if best is None or s < best[0]:
            best = (s, ab[0], ab[1], c)
    if best is None:
        raise ValueError("the sizes do not separate (all N^-c equal)")
    sse, a, b, c = best

    # Levenberg-Marquardt with Marquardt's diagonal scaling.
    lam = 1e-3
    converged = False
    iterations = 0
    for iterations in range(1, 501):
        rows = _jacobian(xs, sign, a, b, c)
        res = [y - predict(sign, a, b, c, x) for x, y in zip(xs, ys)]
        jtj, jtr = _normal(rows, res)
        improved = False
        while lam < 1e16:
            m = [[jtj[i][j] + (lam * jtj[i][i] if i == j else 0.0) for j in range(3)] for i in range(3)]
            d = _solve(m, jtr)
            if d is None:
                lam *= 10
                continue
            na, nb, nc = a + d[0], b + d[1], min(max(c + d[2], C_MIN), C_MAX)
            ns_ = _sse(xs, ys, sign, na, nb, nc)
            if ns_ <= sse:
                rel = (sse - ns_) / max(sse, 1e-300)
                small_step = abs(nc - c) <= 1e-10 * max(1.0, abs(c))
                a, b, c, sse = na, nb, nc, ns_
                lam = max(lam / 10, 1e-12)
                improved = True
                if rel < 1e-14 or small_step:
                    converged = True
                break
            lam *= 10
        if not improved:
            converged = True  # no step lowers the SSE: a (local) minimum at machine precision
        if converged:
            break

    n = len(xs)
    my = sum(ys) / n
    sst = sum((y - my) ** 2 for y in ys)
    out = {"metric": metric, "formula": FORMULA[metric], "a": a, "b": b, "c": c, "n": n,
           "sse": sse, "r2": (1.0 - sse / sst) if sst > 0 else None, "converged": converged,
           "iterations": iterations, "se_a": None, "se_b": None, "se_c": None, "note": ""}
    if not (C_GRID[0] <= c <= C_GRID[1]):
        out["note"] = "c outside [%g, %g]: the points do not follow a power law" % C_GRID
    dof = n - 3
    if dof <= 0:
        out["note"] = (out["note"] + "; " if out["note"] else "") + "as many points as constants: no standard errors"
        return out
    cov = _inverse(_normal(_jacobian(xs, sign, a, b, c), [0.0] * n)[0])
    if cov is None:
        out["note"] = (out["note"] + "; " if out["note"] else "") + "singular Jacobian: no standard errors"
        return out
    s2 = sse / dof
    for i, k in enumerate("abc"):
        out["se_" + k] = math.sqrt(max(cov[i][i] * s2, 0.0))
    return out


# ---- fitting a sweep table ----

def load_rows(path):
    if os.path.isdir(path):
        path = os.path.join(path, "sweep.json")
    with open(path) as f:
        doc = json.load(f)
    return doc["rows"] if isinstance(doc, dict) else doc


def fit_table(rows):
    """Fits per strategy and metric over the finished rows. Returns a list of fit dicts (with
    'strategy'); a strategy with too few sizes gets an 'error' instead of constants."""
    strategies = []
    for r in rows:
        if r.get("strategy") not in strategies:
            strategies.append(r.get("strategy"))
    fits = []
    for strat in strategies:
        for metric in ("auc", "logloss"):
            col = COLUMN[metric]
            pts = [(r["params_N"], r[col]) for r in rows
                   if r.get("strategy") == strat and r.get("status") == "done"
                   and isinstance(r.get(col), (int, float)) and isinstance(r.get("params_N"), (int, float))]
            entry = {"strategy": strat, "metric": metric, "formula": FORMULA[metric],
                     "points": len(pts), "sizes": len(set(p[0] for p in pts))}
            try:
                entry.update(fit_power_law([p[0] for p in pts], [p[1] for p in pts], metric))
            except ValueError as e:
                entry["error"] = str(e)
            fits.append(entry)
    return fits


def _fmt(v, se=None, digits=4):
    if v is None:
        return "-"
    def one(x):
        return "%.*f" % (digits, x) if abs(x) < 1e3 else "%.3g" % x
    s = one(v)
    if se is not None:
        s += " ± " + one(se)
    return s


def markdown(fits):
    lines = ["| strategy | fit | a | b | c | R² | points (sizes) |", "|---|---|---|---|---|---|---|"]
    for f in fits:
        if "error" in f:
            lines.append("| %s | %s | not fitted: %s | | | | %d (%d) |" % (
                f["strategy"], f["formula"], f["error"], f["points"], f["sizes"]))
            continue
        lines.append("| %s | %s | %s | %s | %s | %s | %d (%d)%s |" % (
            f["strategy"], f["formula"], _fmt(f["a"], f["se_a"]), _fmt(f["b"], f["se_b"]),
            _fmt(f["c"], f["se_c"]), _fmt(f["r2"]), f["points"], f["sizes"],
            ("; " + f["note"]) if f.get("note") else ""))
    for metric in ("auc", "logloss"):
        p = PAPER[metric]
        lines.append("| paper (Figure 5) | %s | %.4f | %.4f | %.4f | | industrial data |" % (
            FORMULA[metric], p["a"], p["b"], p["c"]))
    return "\n".join(lines) + "\n"


# ---- self-test ----

# Dense block parameters of the paper's eight sizes (as model_block_params counts them).
PAPER_SIZES = [(1, 32), (4, 32), (4, 64), (4, 128), (4, 256), (8, 512), (12, 768), (24, 1024)]


def block_params(layers, dim, multiple_of=32):
    hidden = int(2 * (4 * dim) / 3)
    ffn = multiple_of * ((hidden + multiple_of - 1) // multiple_of)
    return layers * (4 * dim * dim + 3 * ffn * dim + 2 * dim)


def self_test():
    failures = []

    def check(ok, what):
        if not ok:
            failures.append(what)
        return ok

    ns = [block_params(l, d) for l, d in PAPER_SIZES]
    check(ns[0] == 13376 and abs(ns[-1] - 303.6e6) < 0.1e6, "paper sizes: N = %d ... %d" % (ns[0], ns[-1]))

    # 1. Exact points are recovered exactly, for the paper's constants and for other shapes
    #    (fast and slow decay, a curve that falls with size, a large bound).
    cases = [("auc", PAPER["auc"]), ("logloss", PAPER["logloss"]),
             ("auc", {"a": 0.80, "b": 2.5, "c": 0.45}), ("auc", {"a": 0.60, "b": -0.3, "c": 0.12}),
             ("logloss", {"a": 0.45, "b": 0.9, "c": 0.08}), ("logloss", {"a": 1.2, "b": 40.0, "c": 0.9})]
    for metric, t in cases:
        ys = [predict(SIGN[metric], t["a"], t["b"], t["c"], n) for n in ns]
        f = fit_power_law(ns, ys, metric)
        for k in "abc":
            check(abs(f[k] - t[k]) <= 1e-6 * max(1.0, abs(t[k])),
                  "exact %s %s: %s = %.9g, expected %.9g" % (metric, t, k, f[k], t[k]))
        check(f["r2"] is not None and f["r2"] > 1 - 1e-10, "exact %s %s: R^2 %s" % (metric, t, f["r2"]))

    # 2. Noisy points (3 seeds per size, noise like seed-to-seed spread): the truth lies within 4
    #    standard errors and R^2 is high.
    rng = random.Random(20250604)
    for metric, sigma in (("auc", 0.002), ("logloss", 0.001)):
        t = PAPER[metric]
        xs = [n for n in ns for _ in range(3)]
        ys = [predict(SIGN[metric], t["a"], t["b"], t["c"], n) + rng.gauss(0, sigma) for n in xs]
        f = fit_power_law(xs, ys, metric)
        for k in "abc":
            check(f["se_" + k] is not None and abs(f[k] - t[k]) <= 4 * f["se_" + k],
                  "noisy %s: %s = %.5f ± %s, truth %.5f" % (metric, k, f[k], f["se_" + k], t[k]))
        check(f["r2"] > 0.95, "noisy %s: R^2 %.4f" % (metric, f["r2"]))
        print("noisy %s (sd %g, 24 points): a %.4f ± %.4f, b %.4f ± %.4f, c %.4f ± %.4f, R^2 %.4f "
              "(truth %.4f, %.4f, %.4f)" % (metric, sigma, f["a"], f["se_a"], f["b"], f["se_b"], f["c"],
                                            f["se_c"], f["r2"], t["a"], t["b"], t["c"]))

    # 3. The standard errors mean what they say: over repeated noisy samples the truth falls
    #    within 1.96 SE about 95% of the time (binomial spread over 200 trials: about ±1.5%).
    trials = 200
    hits = {"a": 0, "b": 0, "c": 0}
    t = PAPER["auc"]
    for _ in range(trials):
        xs = [n for n in ns for _ in range(3)]
        ys = [predict(-1.0, t["a"], t["b"], t["c"], n) + rng.gauss(0, 0.002) for n in xs]
        f = fit_power_law(xs, ys, "auc")
        for k in "abc":
            if abs(f[k] - t[k]) <= 1.96 * f["se_" + k]:
                hits[k] += 1
    for k in "abc":
        frac = hits[k] / trials
        check(0.88 <= frac <= 0.99, "coverage of the 95%% interval of %s: %.3f" % (k, frac))
    print("coverage of the 95%% intervals over %d noisy fits: a %.3f, b %.3f, c %.3f" % (
        trials, hits["a"] / trials, hits["b"] / trials, hits["c"] / trials))

    # 4. Unusable input is refused with a reason.
    for bad_ns, bad_ys in (([1e4, 1e5], [0.6, 0.7]), ([1e4, 1e4, 1e4, 1e5], [0.6, 0.61, 0.6, 0.7]),
                           ([1e4, -5, 1e6], [0.6, 0.65, 0.7]), ([1e4, 1e5, 1e6], [0.6, float("nan"), 0.7])):
        try:
            fit_power_law(bad_ns, bad_ys, "auc")
            check(False, "fit of %s %s should have been refused" % (bad_ns, bad_ys))
        except ValueError:
            pass

    if failures:
        for f in failures:
            print("self-test FAILED: " + f)
        return 1
    print("self-test passed")
    return 0


def main(argv):
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    if argv[0] == "--self-test":
        return self_test()
    src, out_json, out_md = argv[0], None, None
    i = 1
    while i < len(argv):
        if argv[i] == "--json" and i + 1 < len(argv):
            out_json = argv[i + 1]
            i += 2
        elif argv[i] == "--markdown" and i + 1 < len(argv):
            out_md = argv[i + 1]
            i += 2
        else:
            print("sweep_fit.py: unknown argument %r (see --help)" % argv[i], file=sys.stderr)
            return 2
    try:
        rows = load_rows(src)
    except (OSError, ValueError, KeyError, TypeError) as e:
        print("sweep_fit.py: cannot read a sweep table from %s: %s" % (src, e), file=sys.stderr)
        return 1
    fits = fit_table(rows)
    md = markdown(fits)
    sys.stdout.write(md)
    if out_json:
        with open(out_json + ".tmp", "w") as f:
            json.dump({"fits": fits, "paper": PAPER}, f, indent=1)
        os.replace(out_json + ".tmp", out_json)
    if out_md:
        with open(out_md + ".tmp", "w") as f:
            f.write(md)
        os.replace(out_md + ".tmp", out_md)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
