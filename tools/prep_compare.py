#!/usr/bin/env python3
"""Compares two gpsdrec datasets record by record, ignoring CTR negatives (random draws):
every pretraining record and every positive must be the same (user rank, item, category, split
and history tokens), and the counts of negatives per split must agree. Used by the prep benchmark to
check `gpsdrec prep --format taobao` against the official script's files converted with
`gpsdrec prep --format gpsd`.  usage: prep_compare.py A.gpsd B.gpsd"""
import sys

import numpy as np

REC = np.dtype([("offset", "<u8"), ("hist_len", "<u4"), ("user", "<u4"), ("item", "<u4"), ("cate", "<u4"),
                ("label", "u1"), ("split", "u1"), ("r0", "<u2"), ("r1", "<u4")])


def load(path):
    raw = np.fromfile(path, dtype=np.uint8)
    h = raw[:512].view("<u8")
    # magic(8) version+header_size(8) file_size, n_items, n_cates, n_users, n_tokens, n_records,
    # split_count[4], max_history, seed, sections[4] x (offset, size, checksum)
    n_tokens, n_records = int(h[6]), int(h[7])
    sec = h[14:26].reshape(4, 3)
    tok_item = raw[sec[1, 0]:sec[1, 0] + 4 * n_tokens].view("<u4")
    tok_cate = raw[sec[2, 0]:sec[2, 0] + 4 * n_tokens].view("<u4")
    rec = raw[sec[3, 0]:sec[3, 0] + REC.itemsize * n_records].view(REC)
    return tok_item, tok_cate, rec


def keyed(tok_item, tok_cate, rec):
    # users renumbered by rank among those with records: a producer may count dropped users
    rank = {u: i for i, u in enumerate(sorted(set(int(u) for u in rec["user"])))}
    out, negatives = {}, {}
    for r in rec:
        if r["label"] == 0:
            negatives[int(r["split"])] = negatives.get(int(r["split"]), 0) + 1
            continue
        o, n = int(r["offset"]), int(r["hist_len"])
        key = (int(r["split"]), rank[int(r["user"])], int(r["label"]))
        out[key] = (int(r["item"]), int(r["cate"]), tok_item[o:o + n].tobytes(), tok_cate[o:o + n].tobytes())
    return out, negatives


def main():
    a, na = keyed(*load(sys.argv[1]))
    b, nb = keyed(*load(sys.argv[2]))
    diff = [k for k in set(a) | set(b) if a.get(k) != b.get(k)]
    print(f"positives+pretraining records: {len(a)} vs {len(b)}, differing: {len(diff)}")
    print(f"negatives per split: {dict(sorted(na.items()))} vs {dict(sorted(nb.items()))}")
    for k in sorted(diff)[:5]:
        print("  differs:", k, a.get(k, "missing")[:2] if a.get(k) else "missing", b.get(k, "missing")[:2] if b.get(k) else "missing")
    sys.exit(1 if diff or na != nb else 0)


if __name__ == "__main__":
    main()
