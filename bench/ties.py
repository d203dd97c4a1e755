"""Late picks by the knn estimator's exact method: ties by closeness to the target (what
``select`` does) against ties by row index (the rule before, reproduced by a constant
tie-break), and the same pool reversed.

Three Gaussian mixtures (6 components in 8-D, 1,500 pool rows, the target 120 rows of
component 0); each selection runs to the pool's count of component-0 rows plus 60 picks, past
the point where every pick that lowers the KL is taken. Prints one JSON line per mixture: the
component-0 rows picked under each rule and whether the reversed pool gave the same picks.

    python bench/ties.py [--out F]
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def mixture(seed: int):
    import numpy as np
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, 8)) * 3
    comp = rng.integers(0, 6, 1500)
    pool = (centres[comp] + rng.normal(size=(1500, 8))).astype(np.float32)
    target = (centres[0] + rng.normal(size=(120, 8))).astype(np.float32)
    return pool, comp, target


def main() -> None:
    from bench._common import emit
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out")
    args = p.parse_args()
    import numpy as np

    from gio_core import _engines, select
    for seed in range(3):
        pool, comp, target = mixture(seed)
        in_domain = int((comp == 0).sum())
        picks = in_domain + 60
        closeness = select(target, pool, stop_criterion="none", max_iter=picks)
        reversed_ = select(target, pool[::-1], stop_criterion="none", max_iter=picks)
        same = bool((len(pool) - 1 - reversed_.indices == closeness.indices).all())
        rule = _engines.KnnEngine.closeness
        _engines.KnnEngine.closeness = lambda self: np.zeros(self.pool_rows, np.float32)
        try:
            by_index = select(target, pool, stop_criterion="none", max_iter=picks)
        finally:
            _engines.KnnEngine.closeness = rule
        row = {"seed": seed, "in_domain": in_domain, "picks": picks,
               "in_domain_picked_closeness": int((comp[closeness.indices] == 0).sum()),
               "in_domain_picked_by_index": int((comp[by_index.indices] == 0).sum()),
               "reversed_pool_same_picks": same}
        emit(row, args.out)


if __name__ == "__main__":
    main()
