"""Eval metrics equal scikit-learn or a hand-written reference, ties and single-class groups included."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import ndcg_score, roc_auc_score

from recbrew import metrics as M


def reference_ece(labels, probs, bins: int = 15) -> float:
    """The textbook loop: per equal-width bin, |mean label - mean probability| weighted by the bin's share."""
    labels, probs = np.asarray(labels, dtype=np.float64), np.asarray(probs, dtype=np.float64)
    which = np.minimum((probs * bins).astype(int), bins - 1)
    return float(sum((which == b).mean() * abs(labels[which == b].mean() - probs[which == b].mean())
                     for b in range(bins) if (which == b).any()))


def random_groups(seed: int, n_groups: int = 40, max_size: int = 9, levels: int | None = 4):
    """Groups of random sizes; scores drawn from few levels (so ties are common) unless levels is None."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, max_size + 1, n_groups)
    groups = np.repeat(rng.permutation(n_groups) * 7, sizes)  # codes need not be dense or sorted
    labels = (rng.random(len(groups)) < 0.3).astype(int)
    scores = rng.integers(0, levels, len(groups)) / levels if levels else rng.random(len(groups))
    return labels, scores, groups


@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 5), st.integers(1, 4)), min_size=2, max_size=60))
@settings(max_examples=200, deadline=None)
def test_auc_equals_sklearn_with_ties_and_weights(rows):
    y, s, w = (np.array(c) for c in zip(*rows, strict=True))
    if 0 < y.sum() < len(y):
        assert M.auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert M.auc(y, s, w) == pytest.approx(roc_auc_score(y, s, sample_weight=w), abs=1e-12)
    else:
        assert np.isnan(M.auc(y, s))


def test_auc_with_replicate_weights_equals_one_call_per_replicate():
    y, s, _ = random_groups(1)
    w = np.random.default_rng(2).integers(0, 3, (5, len(y))).astype(float)
    many = M.auc(y, s, w)
    assert many.shape == (5,)
    np.testing.assert_allclose(many, [roc_auc_score(y, s, sample_weight=r) for r in w], atol=1e-12)


@pytest.mark.parametrize("seed, levels", [(0, 3), (1, 5), (2, None)])
def test_per_group_auc_equals_sklearn_per_group_and_skips_single_class(seed, levels):
    y, s, g = random_groups(seed, levels=levels)
    values, sizes, _ = M.per_group_auc(y, s, g)
    expected, weights = [], []
    for i, code in enumerate(np.unique(g)):
        sel = g == code
        assert sizes[i] == sel.sum()
        if 0 < y[sel].sum() < sel.sum():
            assert values[i] == pytest.approx(roc_auc_score(y[sel], s[sel]), abs=1e-12)
            expected.append(values[i])
            weights.append(sel.sum())
        else:
            assert np.isnan(values[i])
    assert M.group_auc(y, s, g) == pytest.approx(np.average(expected, weights=weights), abs=1e-12)


def test_group_auc_of_only_single_class_groups_is_nan():
    assert np.isnan(M.group_auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4], [1, 1, 2, 2]))
    assert np.isnan(M.auc([], []))


@pytest.mark.parametrize("seed, levels, k", [(0, 3, 3), (1, 4, 1), (2, None, 5), (3, 2, 2)])
def test_ndcg_equals_sklearn_tie_averaged(seed, levels, k):
    y, s, g = random_groups(seed, levels=levels)
    out = M.rank_metrics(y, s, g, k)
    for i, code in enumerate(np.unique(g)):
        sel = g == code
        if y[sel].sum() == 0:
            assert np.isnan(out["ndcg"][i]) and not out["has_pos"][i]
        elif sel.sum() == 1:
            assert out["ndcg"][i] == 1.0
        else:
            assert out["ndcg"][i] == pytest.approx(ndcg_score([y[sel]], [s[sel]], k=k), abs=1e-12)


def reference_recall_rr(y: np.ndarray, s: np.ndarray, k: int) -> tuple[float, float]:
    """By hand: walk the tied blocks from the top; a block cut by k contributes its share of positives."""
    hits, taken = 0.0, 0
    for value in sorted(set(s.tolist()), reverse=True):
        block = s == value
        room = max(0, min(k - taken, block.sum()))
        hits += y[block].sum() * room / block.sum()
        taken += block.sum()
    best = s[y == 1].max()
    higher = ((y == 0) & (s > best)).sum()
    tied = ((y == 0) & (s == best)).sum()
    return hits / y.sum(), 1.0 / (1 + higher + tied / 2)


@pytest.mark.parametrize("seed, levels, k", [(0, 3, 3), (1, 4, 1), (5, None, 2)])
def test_recall_and_reciprocal_rank_equal_hand_reference(seed, levels, k):
    y, s, g = random_groups(seed, levels=levels)
    out = M.rank_metrics(y, s, g, k)
    for i, code in enumerate(np.unique(g)):
        sel = g == code
        if y[sel].sum():
            recall, rr = reference_recall_rr(y[sel], s[sel], k)
            assert out["recall"][i] == pytest.approx(recall, abs=1e-12)
            assert out["rr"][i] == pytest.approx(rr, abs=1e-12)


def test_rank_metrics_without_ties_are_the_textbook_values():
    # One request: scores rank the candidates c, a, d, b; positives a and b.
    out = M.rank_metrics([1, 1, 0, 0], [0.8, 0.1, 0.9, 0.5], [0, 0, 0, 0], k=2)
    assert out["recall"][0] == 0.5
    assert out["rr"][0] == 0.5
    assert out["ndcg"][0] == pytest.approx((1 / np.log2(3)) / (1 + 1 / np.log2(3)))


@given(st.lists(st.tuples(st.integers(0, 1), st.floats(0.001, 0.999)), min_size=1, max_size=50))
@settings(max_examples=100, deadline=None)
def test_log_loss_equals_sklearn(rows):
    y, p = (np.array(c) for c in zip(*rows, strict=True))
    assert M.log_loss(y, p) == pytest.approx(sk_log_loss(y, p, labels=[0, 1]), rel=1e-9)


def test_log_loss_is_finite_at_hard_zero_and_one():
    assert np.isfinite(M.log_loss([1, 0], [0.0, 1.0]))


@pytest.mark.parametrize("seed", range(4))
def test_ece_and_reliability_equal_the_looped_reference(seed):
    rng = np.random.default_rng(seed)
    p = rng.random(500) ** 2
    p[:5] = [0.0, 1.0, 1 / 15, 0.5, 14 / 15]  # bin edges
    y = (rng.random(500) < p).astype(int)
    assert M.expected_calibration_error(y, p) == pytest.approx(reference_ece(y, p), abs=1e-12)
    rel = M.reliability(y, p)
    assert rel["count"].sum() == 500
    ok = rel["count"] > 0
    assert np.sum(rel["count"][ok] * np.abs(rel["rate"][ok] - rel["mean_prob"][ok])) / 500 == pytest.approx(
        reference_ece(y, p), abs=1e-12)


def test_bootstrap_is_seeded_and_interval_brackets_the_estimate():
    y, s, g = random_groups(7, n_groups=200, levels=None)
    codes, n_units = M._codes(g)
    a = M.bootstrap_counts(n_units, 300, np.random.default_rng(0))
    b = M.bootstrap_counts(n_units, 300, np.random.default_rng(0))
    np.testing.assert_array_equal(a, b)
    assert (a.sum(axis=1) == n_units).all()
    lo, hi = M.interval(M.auc(y, s, a[:, codes]))
    assert lo < M.auc(y, s) < hi
    values = np.array([1.0, np.nan, 3.0])
    means = M.weighted_means(values, np.ones(3), np.array([[1.0, 5.0, 1.0], [2.0, 0.0, 0.0]]))
    np.testing.assert_allclose(means, [2.0, 1.0])
    assert M.interval(np.full(5, 0.5)) is None
