"""Which TPE dimension d to use: GMM ARI on the reproduction's C4 data, swept over d.

    python benchmarks/hcc_tpe_dimension.py [--full]

Quick: C4's quick data (planted sizes 60/40/25/15/10, N=150, p_flip=0.2), seeds 0-9.
--full: the full mode's data (sizes 600/400/250/150/100, N=1500), seeds 0-4.
Prints mean ± std ARI of a full-covariance GMM (K known, as in C4) on the TPE of the HCC tree
(``--tree-distance``, default the paper's level), for each d, beside the HCC cut at K. The docs' recommended d comes from this table.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

from cvpr24.hcc import TreePreservingEmbedding, cut_level, hcc_linkage, make_signed_partition
from cvpr24.hcc.reproduce import ari, gmm_labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--tree-distance", default="level", choices=["level", "depth", "height"])
    args = ap.parse_args()
    if args.full:
        sizes, seeds, dims = (600, 400, 250, 150, 100), range(5), (5, 10, 20, 50, 100, 200)
    else:
        sizes, seeds, dims = (60, 40, 25, 15, 10), range(10), (2, 5, 10, 20, 50, 100, 149)
    k = len(sizes)
    rows = {d: [] for d in dims}
    cut = []
    t0 = time.perf_counter()
    for s in seeds:
        D, y = make_signed_partition(sizes, 0.2, seed=s)
        cut.append(ari(y, cut_level(hcc_linkage(D), k)))
        for d in dims:
            Y = TreePreservingEmbedding(n_components=d, tree_distance=args.tree_distance).fit_transform(D)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # GMM convergence notes at large d
                rows[d].append(ari(y, gmm_labels(Y, k, s)))
    print(f"N={sum(sizes)}, K={k}, p_flip=0.2, seeds {list(seeds)} ({time.perf_counter() - t0:.0f} s)")
    print(f"HCC cut at K: {np.mean(cut):.3f} ± {np.std(cut):.3f}")
    print(f"| d | ARI of GMM on {args.tree_distance}-TPE (mean ± std) | per seed |")
    print("| --- | --- | --- |")
    for d in dims:
        v = np.array(rows[d])
        print(f"| {d} | {v.mean():.3f} ± {v.std():.3f} | {' '.join(f'{x:.2f}' for x in v)} |")


if __name__ == "__main__":
    main()
