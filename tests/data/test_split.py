"""Per-step data split and eval hold-out: sizes, disjointness, coverage, determinism."""

from __future__ import annotations

import pytest

from simple_rlhf.data.split import holdout_indices, permutation, split_indices


def test_permutation_is_pinned_across_python_versions():
    """Fisher-Yates driven by Random("salt:seed").random(), whose stream Python guarantees:
    the exact output is pinned so a change of algorithm (and of every split) is caught."""
    assert permutation(6, 0) == [5, 1, 2, 3, 0, 4]
    assert permutation(6, 0, salt="split") == [1, 2, 3, 0, 4, 5]
    assert sorted(permutation(100, 3)) == list(range(100))
    assert permutation(0, 1) == [] and permutation(1, 1) == [0]


@pytest.mark.parametrize(
    "n, weights, sizes",
    [
        (10, (2, 4, 4), [2, 4, 4]),  # cuts floor(10*2/10+.5)=2, floor(6.5)=6, 10
        (7, (1, 1, 1), [2, 3, 2]),  # cuts floor(7/3+.5)=2, floor(14/3+.5)=5, 7
        (5, (10, 0, 0), [5, 0, 0]),  # DeepSpeed-Chat "10,0,0": all to step 1
        (3, (0, 1), [0, 3]),
        (0, (2, 4, 4), [0, 0, 0]),
    ],
)
def test_split_sizes_follow_rounded_cumulative_cuts(n, weights, sizes):
    shares = split_indices(n, weights, seed=1)
    assert [len(x) for x in shares] == sizes


def test_split_is_disjoint_covering_sorted_and_deterministic():
    shares = split_indices(1000, (2, 4, 4), seed=1234)
    flat = [i for share in shares for i in share]
    assert sorted(flat) == list(range(1000))  # disjoint and covering
    assert all(share == sorted(share) for share in shares)
    assert split_indices(1000, (2, 4, 4), seed=1234) == shares
    assert split_indices(1000, (2, 4, 4), seed=1235) != shares
    assert split_indices(10, (2, 4, 4), 1234) == [[3, 8], [0, 1, 5, 7], [2, 4, 6, 9]]


@pytest.mark.parametrize("weights", [(), (0, 0), (1, -1), (float("nan"), 1), (float("inf"),)])
def test_bad_weights_are_rejected(weights):
    with pytest.raises(ValueError, match="weight"):
        split_indices(10, weights, seed=0)


@pytest.mark.parametrize(
    "n, fraction, n_eval",
    [
        (20, 0.1, 2),  # floor(2.0 + .5) = 2
        (10, 0.25, 3),  # floor(2.5 + .5) = 3
        (5, 0.05, 1),  # floor(0.25 + .5) = 0, raised to 1 since fraction > 0 and n >= 2
        (1, 0.5, 0),  # capped at n - 1 = 0: training keeps its only record
        (50, 0.0, 0),
        (0, 0.3, 0),
    ],
)
def test_holdout_sizes(n, fraction, n_eval):
    train, evals = holdout_indices(n, fraction, seed=7)
    assert len(evals) == n_eval
    assert sorted(train + evals) == list(range(n))
    assert set(train).isdisjoint(evals)


def test_holdout_is_deterministic_and_seeded():
    assert holdout_indices(10, 0.2, 1234) == ([0, 1, 3, 4, 5, 6, 8, 9], [2, 7])
    assert holdout_indices(200, 0.1, 1) == holdout_indices(200, 0.1, 1)
    assert holdout_indices(200, 0.1, 1)[1] != holdout_indices(200, 0.1, 2)[1]
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="eval fraction"):
            holdout_indices(10, bad, 0)
