#!/usr/bin/env python3
"""Compare two gpsdrec model.safetensors files tensor by tensor.

Prints the worst relative L2 difference (||a - b|| / ||a||) and the worst max-abs difference
relative to the tensor's largest magnitude, and exits 1 when the relative L2 difference of any
tensor exceeds --rtol (--exact: any bit differs)."""
import argparse, json, struct, sys
import numpy as np


def load(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        head = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, t in head.items():
        if name == "__metadata__":
            continue
        assert t["dtype"] == "F32", (path, name, t["dtype"])
        a, b = t["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype=np.float32).reshape(t["shape"])
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--rtol", type=float, default=0.05)
    p.add_argument("--exact", action="store_true")
    p.add_argument("--label", default="")
    p.add_argument("--print-worst", action="store_true", help="print only the worst relative L2 difference")
    args = p.parse_args()
    A, B = load(args.a), load(args.b)
    if set(A) != set(B):
        print(f"{args.label}: tensor names differ: {sorted(set(A) ^ set(B))}")
        return 1
    worst_l2, worst_l2_name, worst_max, identical = 0.0, "", 0.0, True
    for name in sorted(A):
        a, b = A[name].astype(np.float64), B[name].astype(np.float64)
        if a.shape != b.shape:
            print(f"{args.label}: {name} shapes {a.shape} vs {b.shape}")
            return 1
        identical &= bool(np.array_equal(A[name], B[name]))
        l2 = np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-30)
        mx = np.abs(a - b).max() / max(np.abs(a).max(), 1e-30)
        if l2 > worst_l2:
            worst_l2, worst_l2_name = l2, name
        worst_max = max(worst_max, mx)
    if args.print_worst:
        print(f"{worst_l2:.6g}")
        return 0
    ok = identical if args.exact else worst_l2 <= args.rtol
    print(f"{args.label}: worst relative L2 difference {worst_l2:.3g} ({worst_l2_name}), worst max-abs/max "
          f"{worst_max:.3g}, bit-identical {identical} -> {'ok' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
