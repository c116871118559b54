"""The rating model behind ``stats.collab`` (`recbrew.verbalize.collab`): a deterministic fit that learns, the
data it may read (no held-out target, nothing after a time split's cutoff), cross-fitted training prompts, and
the saved model that serving reads."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pytest
from sklearn.metrics import roc_auc_score

from recbrew.errors import ConfigError, IntegrityError
from recbrew.examples.requests import Requests
from recbrew.verbalize import collab
from recbrew.verbalize.collab import FOLDS, CollabModel, CollabSet, fit, fit_for_build, training_pairs


def _low_rank(seed: int = 0, members: int = 150, items: int = 120, n: int = 6000):
    """Pairs whose outcome follows a rank-2 taste: P(positive) = sigmoid(3 u.v)."""
    rng = np.random.default_rng(seed)
    u, v = rng.standard_normal((members, 2)), rng.standard_normal((items, 2))
    m, i = rng.integers(0, members, n), rng.integers(0, items, n)
    keys = rng.permutation(np.unique(m * items + i, return_index=True)[1])  # each pair once, in random order
    m, i = m[keys], i[keys]
    y = rng.random(len(m)) < 1 / (1 + np.exp(-3 * (u[m] * v[i]).sum(1)))
    return m + 1, i + 1, y


def test_the_fit_learns_a_low_rank_taste_and_is_the_same_every_run():
    m, i, y = _low_rank()
    cut = int(0.8 * len(m))
    a, b = fit(m[:cut], i[:cut], y[:cut]), fit(m[:cut], i[:cut], y[:cut])
    for name in ("member_factors", "item_factors", "member_bias", "item_bias"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.bias == b.bias
    held = [a.logit(x, z) for x, z in zip(m[cut:], i[cut:], strict=True)]
    assert roc_auc_score(y[cut:], held) > 0.75
    # A member or item the fit never saw adds nothing beyond the biases that are known.
    assert a.probability(10**9, 10**9) == pytest.approx(1 / (1 + np.exp(-a.bias)))
    assert a.logit(10**9, int(i[0])) == pytest.approx(a.bias + float(a.item_bias[np.searchsorted(a.item_ids, i[0])]))


def test_a_saved_model_loads_the_same_and_a_damaged_one_says_so(tmp_path):
    m, i, y = _low_rank(n=800)
    model = fit(m, i, y)
    model.save(tmp_path / "collab" / "t.npz")
    back = CollabModel.load(tmp_path / "collab" / "t.npz")
    assert all(back.probability(x, z) == model.probability(x, z) for x, z in zip(m[:50], i[:50], strict=True))
    (tmp_path / "bad.npz").write_bytes(b"not a model")
    with pytest.raises(IntegrityError, match=r"bad.npz: not a collaborative model .*recbrew data build"):
        CollabModel.load(tmp_path / "bad.npz")
    with pytest.raises(IntegrityError, match=r"collab/other.npz: missing \(task other declares stats.collab\)"):
        collab.load_models(tmp_path, {"other": _Task()})


@dataclass
class _Corpus:
    interactions: pa.Table


class _Stats:
    collab = True


class _Label:
    positive = ("like",)
    negatives = ("dislike",)


class _Task:
    name = "other"
    stats = _Stats()
    label = _Label()


def _corpus() -> _Corpus:
    rows = [(1, 10, "like", 100), (1, 11, "dislike", 200), (2, 10, "dislike", 150), (2, 12, "like", 300),
            (3, 11, "like", 120), (3, 12, "view", 130), (4, 10, "like", 400), (4, 13, "like", 50)]
    m, i, a, t = zip(*rows, strict=True)
    return _Corpus(pa.table({"member_id": list(m), "item_id": list(i), "action": list(a), "timestamp": list(t)}))


def test_the_fit_reads_no_held_out_target_and_nothing_after_the_cutoff():
    corpus = _corpus()
    m, i, y = training_pairs(corpus, ("like",), ("dislike",), set(), None)
    assert list(zip(m, i, y, strict=True)) == [(1, 10, True), (1, 11, False), (2, 10, False), (2, 12, True),
                                               (3, 11, True), (4, 10, True), (4, 13, True)]  # the view is no label
    m, i, _ = training_pairs(corpus, ("like",), ("dislike",), {(1, 11), (4, 13), (9, 10), (1, 99)}, 300)
    assert list(zip(m, i, strict=True)) == [(1, 10), (2, 10), (3, 11)]
    # Ids of any size (imported logs may hold 64-bit ids).
    big = _Corpus(corpus.interactions.set_column(0, "member_id", pa.array([x + 2**40 for x in
                                                                           corpus.interactions["member_id"].to_pylist()])))
    m, i, _ = training_pairs(big, ("like",), ("dislike",), {(1 + 2**40, 11), (4 + 2**40, 13)}, 300)
    assert list(zip(m - 2**40, i, strict=True)) == [(1, 10), (2, 10), (3, 11)]


def test_training_prompts_read_a_model_fitted_without_their_own_targets(monkeypatch):
    """Request k of the training split reads fold k % FOLDS, fitted without that fold's targets (and without any
    held-out one); validation and test requests read the full model, fitted without the held-out targets only."""
    seen = []

    def recording_fit(member, item, positive, seed=0):
        seen.append(set(zip(member.tolist(), item.tolist(), strict=True)))
        return fit(member, item, positive, seed)

    monkeypatch.setattr(collab, "fit", recording_fit)
    #            k: 0        1        2        3        4        5         6
    members = np.array([1, 2, 3, 4, 1, 2, 4])
    cands = np.array([10, 10, 11, 13, 11, 12, 10])
    split = np.array(["train", "train", "train", "train", "train", "test", "validation"])
    n = len(members)
    req = Requests(members, np.zeros(n, np.int64), split, np.arange(n + 1), cands, np.zeros(n, np.int64),
                   np.full(n, np.nan))
    models = fit_for_build(_corpus(), _Task(), req, None, seed=0)
    everything = {(1, 10), (1, 11), (2, 10), (2, 12), (3, 11), (4, 10), (4, 13)}
    held = {(2, 12), (4, 10)}
    assert seen[0] == everything - held
    for k in range(FOLDS):
        fold = {(int(members[r]), int(cands[r])) for r in range(5) if r % FOLDS == k}
        assert seen[1 + k] == everything - held - fold
    assert isinstance(models, CollabSet) and len(models.folds) == FOLDS
    assert models.for_request("train", 7) is models.folds[2] and models.for_request("test", 7) is models.full


def test_a_ray_build_of_a_collab_task_is_refused_before_any_work(tmp_path):
    from recbrew import assets
    from recbrew.examples.build import BuildConfig, build_examples

    with pytest.raises(ConfigError, match="movies_like declare stats.collab, whose rating model a Ray build does not"):
        build_examples(tmp_path / "no-corpus", tmp_path / "ex", BuildConfig(tasks=["movies_like"]),
                       tasks_dir=assets.path("configs") / "movielens" / "tasks", engine="ray", progress=False)
    assert not (tmp_path / "ex").exists()
