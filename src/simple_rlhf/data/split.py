"""Deterministic index splits: held-out eval records and the per-step data split.

DeepSpeed-Chat's ``--data_split 2,4,4`` gives each of the three training steps its own disjoint
share of a dataset. Here, for ``n`` records and weights ``w_1..w_S`` with cumulative sums
``C_s = w_1 + ... + w_s``, a seeded permutation ``p`` of ``0..n-1`` is cut at

    b_s = floor(n * C_s / C_S + 1/2),  b_0 = 0,  b_S = n

and step ``s`` (1-based) gets ``sorted(p[b_{s-1}:b_s])``. The shares are disjoint, cover every
index, and depend only on ``(n, weights, seed)``.

The permutation is a Fisher-Yates shuffle driven by ``random.Random(f"{salt}:{seed}").random()``,
whose output Python guarantees across versions, so the same seed gives the same split everywhere.
Different salts keep the eval hold-out and the step split independent.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence


def permutation(n: int, seed: int, salt: str = "") -> list[int]:
    """A seeded permutation of ``range(n)`` (Fisher-Yates with ``j = floor(u * (i + 1))``)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(f"{salt}:{seed}")
    perm = list(range(n))
    for i in range(n - 1, 0, -1):
        j = int(rng.random() * (i + 1))
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def _check_weights(weights: Sequence[float]) -> list[float]:
    ws = [float(w) for w in weights]
    if not ws:
        raise ValueError("the data split needs at least one weight")
    if any(not math.isfinite(w) or w < 0 for w in ws) or sum(ws) <= 0:
        raise ValueError(f"data split weights must be finite, >= 0 and not all 0, got {weights}")
    return ws


def split_indices(n: int, weights: Sequence[float], seed: int) -> list[list[int]]:
    """Cut ``range(n)`` into ``len(weights)`` disjoint shares proportional to ``weights``.

    Example: ``n=10, weights=(2, 4, 4)`` -> shares of sizes 2, 4, 4 (cuts at 2, 6, 10).
    """
    ws = _check_weights(weights)
    perm = permutation(n, seed, salt="split")
    total, cum, cuts = sum(ws), 0.0, [0]
    for w in ws:
        cum += w
        cuts.append(min(n, math.floor(n * cum / total + 0.5)))
    cuts[-1] = n
    return [sorted(perm[a:b]) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


def holdout_indices(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split ``range(n)`` into (train, eval) index lists, both sorted.

    ``n_eval = floor(n * fraction + 1/2)``, raised to 1 when ``fraction > 0`` and ``n >= 2`` and
    capped at ``n - 1`` so training keeps at least one record.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"eval fraction must be in [0, 1), got {fraction}")
    n_eval = math.floor(n * fraction + 0.5)
    if fraction > 0 and n >= 2:
        n_eval = max(1, n_eval)
    n_eval = max(0, min(n_eval, n - 1))
    perm = permutation(n, seed, salt="eval")
    return sorted(perm[n_eval:]), sorted(perm[:n_eval])
