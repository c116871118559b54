"""`recbrew simulate`: the world's slate-policy hook, the policies, the Bayesian last layer and the closed loop."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recbrew.baselines.bayes import ITEM_VARIANCE_START, BayesianLastLayer
from recbrew.simulate import SimulationConfig, simulate
from recbrew.simulate.policy import Popularity, epsilon_keys, optimistic_draw
from recbrew.simulate.rows import sample_requests
from recbrew.world.config import SURFACES, WorldConfig
from recbrew.world.generate import open_world
from recbrew.world.policy import OraclePolicy, RandomPolicy, SlateRequest, check_pick, top_per_visit

RECBREW = Path(sys.executable).parent / "recbrew"
#: A small world, one warm-up day, two served days: every policy, and full retraining beside greedy.
CONFIG = dict(members=120, days=2, warmup_days=1, full_epochs=1, compare_full=True)


def _request(visit, sizes, item=None):
    visit = np.asarray(visit, dtype=np.int64)
    item = np.arange(len(visit)) if item is None else np.asarray(item)
    return SlateRequest(0, SURFACES[0], np.zeros(len(visit), np.int64), item, visit, np.asarray(sizes),
                        lambda: np.linspace(0, 1, len(visit)))


# --------------------------------------------------------------------------------------------- slate picking


def test_top_per_visit_best_first_within_each_visit():
    visit = np.array([0, 0, 0, 1, 1, 2])
    scores = np.array([0.1, 0.9, 0.5, 0.3, 0.7, 0.2])
    assert top_per_visit(visit, scores, np.array([2, 1, 3])).tolist() == [1, 2, 4, 5]


def test_slate_larger_than_pool_shows_the_whole_pool_and_ties_keep_pool_order():
    visit = np.array([0, 0, 0])
    assert top_per_visit(visit, np.array([0.5, 0.5, 0.9]), np.array([10])).tolist() == [2, 0, 1]


def test_empty_pool_gives_an_empty_slate():
    empty = _request([], [])
    assert top_per_visit(empty.visit, np.zeros(0), empty.sizes).tolist() == []
    assert OraclePolicy().choose(empty).tolist() == []
    policy = RandomPolicy()
    policy.start_day(0)
    assert policy.choose(empty).tolist() == []


@pytest.mark.parametrize("pick, message", [
    ([0, 7], "outside"), ([1, 1], "twice"), ([3, 0], "visit by visit"), ([0, 1, 2], "beyond its size"),
])
def test_a_broken_policy_answer_is_refused(pick, message):
    with pytest.raises(ValueError, match=message):
        check_pick(pick, _request([0, 0, 0, 1], [2, 1]))


def test_epsilon_zero_is_greedy_and_one_is_random():
    rng = np.random.default_rng(0)
    visit = np.repeat(np.arange(50), 4)
    key = rng.random(200)
    assert np.array_equal(epsilon_keys(key, visit, 0.0, rng), key)
    random = epsilon_keys(key, visit, 1.0, rng)
    assert not np.isin(random, key).any()
    some = epsilon_keys(key, visit, 0.5, np.random.default_rng(1))
    changed = (some != key).reshape(50, 4)
    # A visit is explored as a whole or not at all.
    assert set(changed.all(1) | ~changed.any(1)) == {True} and 0 < changed.all(1).sum() < 50


def test_popularity_rate_shrinks_to_the_global_rate():
    pop = Popularity(prior=10.0)
    pop.add(np.array([0, 0, 1, 1, 1, 1]), np.array([1, 1, 0, 0, 0, 0]))
    rate = pop.rate(np.array([0, 1, 99]))
    base = 2 / 6
    assert np.allclose(rate, [(2 + 10 * base) / 12, (10 * base) / 14, base])


# --------------------------------------------------------------------------------------------- the world's hook


def _serve_day(policy, day=1):
    world, _, _ = open_world(WorldConfig(members=120, days=5, seed=4))
    world.sim.run_day(0, world.day_rng(0))
    seen = []
    inner = policy.choose

    def choose(request):
        pick = inner(request)
        seen.append((request, pick))
        return pick

    policy.choose = choose
    log = world.sim.run_day(day, world.day_rng(day), policy)
    return log, seen


def test_oracle_fills_each_slate_with_the_pool_s_best_in_order():
    log, seen = _serve_day(OraclePolicy(pool_factor=3))
    assert len(log.interactions) > 0
    for request, pick in seen:
        p = request.true_probability()
        for v in np.unique(request.visit):
            pool = np.flatnonzero(request.visit == v)
            shown = pick[request.visit[pick] == v]
            assert len(shown) == min(len(pool), request.sizes[v])
            assert np.array_equal(np.sort(p[shown])[::-1], p[shown])  # best first
            assert p[shown].min() >= np.sort(p[pool])[::-1][len(shown) - 1]  # the best of the pool
    # The logged slots follow the policy's order (position 0 = its first pick).
    positions = log.interactions["position"].to_numpy()
    assert positions.min() == 0


def test_every_policy_sees_the_same_visits():
    log_o, seen_o = _serve_day(OraclePolicy(pool_factor=2))
    log_r, seen_r = _serve_day(RandomPolicy(pool_factor=2))
    assert [r.surface.name for r, _ in seen_o] == [r.surface.name for r, _ in seen_r]
    for (a, _), (b, _) in zip(seen_o, seen_r, strict=True):
        assert np.array_equal(a.sizes, b.sizes)
    p_o = sum(r.true_probability()[p].sum() for r, p in seen_o)
    p_r = sum(r.true_probability()[p].sum() for r, p in seen_r)
    assert p_o > 1.2 * p_r


# --------------------------------------------------------------------------------------------- Bayesian last layer


def test_bayesian_layer_posterior_shrinks_where_data_is_and_draws_match_it():
    dim = 4
    layer = BayesianLastLayer(dim, tasks=2, prior=1.0)
    rng = np.random.default_rng(0)
    h = np.zeros((500, dim))
    h[:, 0] = rng.normal(size=500)  # data along the first axis only
    layer.update(h, np.ones(500, np.int64), np.full(500, 0.5))
    e = np.eye(dim)
    var = layer.variance(e, 1)
    assert var[0] < 0.05 and np.allclose(var[1:], 1.0)  # the prior where no data is
    assert np.allclose(layer.variance(e, 0), 1.0)  # another task keeps its prior
    draws = layer.sample_offsets(np.tile(e[1], (20000, 1)), 1, np.arange(20000), 20000, rng)
    assert abs(draws.var() - 1.0) < 0.05
    restored = BayesianLastLayer.from_state(layer.state())
    assert np.allclose(restored.variance(e, 1), var)


def test_item_offsets_are_uncertain_for_unseen_items_and_tau_is_estimated():
    rng = np.random.default_rng(0)
    layer = BayesianLastLayer(2, tasks=2)
    assert layer.item_variance(np.array([0, 5]), 1).tolist() == [ITEM_VARIANCE_START] * 2  # nothing seen yet
    # 400 items with true offsets b ~ N(0, 0.5^2) around a predicted p = sigmoid(-1), 200 impressions each.
    items, n = 400, 200
    b = rng.normal(0, 0.5, items)
    item = np.repeat(np.arange(items), n)
    p = np.full(len(item), 1 / (1 + np.exp(1.0)))
    label = rng.random(len(item)) < 1 / (1 + np.exp(1.0 - b[item]))
    layer.update(np.zeros((len(item), 2)), np.ones(len(item), np.int64), p, item=item, label=label)
    assert layer.item_variance_prior == pytest.approx(0.25, rel=0.3)
    # The posterior mean of each offset (one Newton step) follows the true offsets, shrunk toward 0.
    m = layer.offset_mean(np.arange(items), 1)
    assert np.corrcoef(m, b)[0, 1] > 0.85 and 0.5 < np.polyfit(b, m, 1)[0] < 1.0
    assert not layer.offset_mean(np.arange(items), 0).any() and layer.offset_mean(np.array([items + 10]), 1)[0] == 0
    var = layer.item_variance(np.array([0, items + 10]), 1)
    w = n * p[0] * (1 - p[0])
    assert var[0] == pytest.approx(1 / (1 / layer.item_variance_prior + w))  # shown 200 times: narrow
    assert var[1] == pytest.approx(layer.item_variance_prior)  # never shown: the prior's spread
    assert layer.item_variance(np.array([0]), 0)[0] == pytest.approx(layer.item_variance_prior)  # per task
    draws = layer.sample_offsets(np.zeros((20000, 2)), 1, np.zeros(20000, np.int64), 1, rng,
                                 item=np.full(20000, items + 10))
    assert draws.var() == pytest.approx(var[1], rel=0.05) and abs(draws.mean()) < 0.02
    draws = layer.sample_offsets(np.zeros((20000, 2)), 1, np.zeros(20000, np.int64), 1, rng, item=np.zeros(20000, int))
    assert draws.mean() == pytest.approx(m[0], abs=0.01) and draws.var() == pytest.approx(var[0], rel=0.05)
    restored = BayesianLastLayer.from_state(layer.state())
    assert np.allclose(restored.item_variance(np.array([0, 3]), 1), layer.item_variance(np.array([0, 3]), 1))


def test_optimistic_draws_never_fall_below_the_posterior_mean_and_explore_where_it_is_wide():
    rng = np.random.default_rng(0)
    layer = BayesianLastLayer(2, tasks=2)
    # Item 0 shown 2,000 times (acting more often than predicted: tau^2 comes out clearly above 0), item 1 never.
    n = 2000
    layer.update(np.zeros((n, 2)), np.ones(n, np.int64), np.full(n, 0.3), item=np.zeros(n, np.int64),
                 label=rng.random(n) < 0.4)
    items = np.repeat([0, 1], 20000)
    mean = layer.offset_mean(items, 1)
    draws = layer.sample_offsets(np.zeros((len(items), 2)), 1, np.zeros(len(items), np.int64), 1, rng, item=items)
    opt = optimistic_draw(mean, draws)
    up = draws > mean
    assert (opt >= mean).all() and np.array_equal(opt[up], draws[up]) and np.array_equal(opt[~up], mean[~up])
    # The mean gain over the posterior mean is sd / sqrt(2 pi): wide for the unseen item, narrow for the seen one.
    sd = np.sqrt(layer.item_variance(np.array([0, 1]), 1))
    gain = np.array([(opt - mean)[items == i].mean() for i in (0, 1)])
    assert gain == pytest.approx(sd / np.sqrt(2 * np.pi), rel=0.03)
    assert gain[1] > 5 * gain[0]


@pytest.mark.parametrize("qr", [True, False])
def test_growing_the_id_tables_keeps_old_rows_and_starts_new_ids_as_unknown(qr):
    import pyarrow as pa
    import torch

    from recbrew.baselines.config import build_model, run_config
    from recbrew.baselines.features import FeatureSpace
    from recbrew.simulate.ranker import LoopRanker

    cfg = run_config("lirank", overrides=[f"features.qr={str(qr).lower()}", "features.item_store=false"])
    space = FeatureSpace(cfg.features, ["a_engage"], {"a_engage": "a"}, member_ids=10, item_ids=97)
    torch.manual_seed(0)
    ranker = LoopRanker(cfg, space, build_model(cfg, space).eval())
    table = ranker.model.embeddings.item_id
    old = torch.arange(98)
    before = table(old).clone()
    remainder = space.remainder["item"]
    added = ranker.grow(pa.table({"item_id": np.arange(131)}), pa.table({"member_id": np.arange(12)}))
    assert added == 131 - 97 and space.item_ids == 131 and space.member_ids == 12
    assert space.remainder["item"] == remainder  # frozen: no trained id moves
    torch.testing.assert_close(table(old), before)
    # With QR the ids up to the end of the last trained quotient row already had rows; the others start as unknown.
    first = -(-98 // remainder) * remainder if qr else 98
    new = table(torch.arange(first, 132))
    if qr:
        r = table.table.remainder_table.weight
        expected = before[0] + r[torch.arange(first, 132) % remainder] - r.mean(0)
    else:
        expected = before[0].expand(132 - first, -1)
    torch.testing.assert_close(new, expected)
    # Initially a new id differs from another only by its remainder row; training separates their quotient rows.
    assert len(set(map(tuple, new.tolist()))) == (min(remainder, 132 - first) if qr else 1)
    # The grown model saves and loads with its new ranges.
    restored = LoopRanker.from_state(ranker.state())
    torch.testing.assert_close(restored.model.embeddings.item_id(torch.arange(132)), table(torch.arange(132)))


# --------------------------------------------------------------------------------------------- the closed loop


def _strip(results: dict) -> dict:
    """Results without wall-clock times (which differ run to run) and paths."""
    out = json.loads(json.dumps(results))
    out.pop("paths", None)
    out["warmup"].pop("warmup_train_seconds", None)
    for p in out["policies"].values():
        p.pop("update_seconds", None)
        for d in p["days"]:
            for k in ("serve_seconds", "update_seconds", "full_seconds"):
                d.pop(k, None)
    if "incremental_vs_full" in out:
        out["incremental_vs_full"] = {"auc": [(d["incremental_auc"], d["full_auc"])
                                              for d in out["incremental_vs_full"]["days"]]}
    return out


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "run"
    return out, simulate(SimulationConfig(**CONFIG), out)


def test_short_simulation_has_a_fixed_result(simulated):
    out, results = simulated
    pol = results["policies"]
    assert list(pol) == ["random", "popularity", "greedy", "epsilon", "thompson", "oracle"]
    # The numpy-only policies are pinned exactly; the ranker's ones are checked for determinism below.
    assert {n: pol[n]["positives"] for n in ("random", "popularity", "oracle")} == FIXED_POSITIVES
    assert pol["oracle"]["regret"] == 0.0
    for name, p in pol.items():
        assert len(p["days"]) == CONFIG["days"]
        assert p["expected_positives"] <= pol["oracle"]["expected_positives"] + 1e-6, name
        assert 0 < p["coverage"] <= 1 and 0 <= p["new_item_share"] <= 1
        days = p["days"]
        assert days[-1]["cumulative_positives"] == sum(d["positives"] for d in days)
    assert pol["random"]["regret"] > pol["popularity"]["regret"] > 0
    # Full retraining and the incremental model start from the same warm-up model: equal AUC on the first day.
    cmp = results["incremental_vs_full"]["days"]
    assert cmp[0]["incremental_auc"] == pytest.approx(cmp[0]["full_auc"], abs=1e-6)
    for name in ("report.html", "report.md", "report.json"):
        assert (out / name).is_file()
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64") == 4 and 'setAttribute("data-rendered","1")' in html
    assert (out / "logs" / "greedy" / "day-002.parquet").is_file()


FIXED_POSITIVES = {"random": 415, "popularity": 503, "oracle": 615}


def test_replay_samples_a_seeded_share_of_every_earlier_day_in_order():
    days = [{"task": [f"t{d}"] * n, "labels": [[d, i] for i in range(n)]} for d, n in enumerate((10, 3, 0, 1))]
    picked = sample_requests(days, 0.3, seed=7)
    assert [len(p["task"]) for p in picked] == [3, 1, 1]  # 30 % of 10, at least one of a non-empty day; none of 0
    for p in picked:
        idx = [row[1] for row in p["labels"]]
        assert idx == sorted(idx) and len(set(idx)) == len(idx)
    assert sample_requests(days, 0.3, seed=7) == picked
    assert sample_requests(days, 1.0, seed=1) == [d for d in days if d["task"]]


def test_resume_after_an_interruption_gives_the_same_result(simulated, tmp_path):
    _, reference = simulated
    out = tmp_path / "run"

    def stop_after_the_first_day(message):
        if message.startswith("day 1/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        simulate(SimulationConfig(**CONFIG), out, say=stop_after_the_first_day)
    assert not (out / "report.json").exists()
    messages = []
    resumed = simulate(SimulationConfig(**CONFIG), out, say=messages.append)
    assert not any(m.startswith("warm-up") or m.startswith("day 1/") for m in messages)  # nothing redone
    assert _strip(resumed) == _strip(reference)


def test_other_settings_in_the_same_folder_are_refused(simulated):
    out, _ = simulated
    proc = subprocess.run([str(RECBREW), "simulate", "--out", str(out), "--members", "150", "--days", "3"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "other settings" in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["--policies", "greedy,foo"], "unknown policy foo"),
    (["--epsilon", "1.5"], "--epsilon must be in [0, 1]"),
    (["--update-epochs", "0"], "--update-epochs must be at least 1"),
    (["--replay-fraction", "1.5"], "--replay-fraction must be in [0, 1]"),
    (["--ranker", "ligr"], "thompson needs a ranker with a Bayesian last layer"),
    (["--policies", "random", "--compare-full"], "add greedy to --policies"),
    (["train.nope=1"], "unknown field(s) nope"),
])
def test_user_errors_print_one_line_and_exit_2(tmp_path, args, message):
    proc = subprocess.run([str(RECBREW), "simulate", "--out", str(tmp_path / "o"), *args], capture_output=True,
                          text=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.strip().count("\n") == 0 and message in proc.stderr
    assert not (tmp_path / "o").exists()
