"""Evidence that one model beats another: macro-AUC intervals, paired bootstrap differences on identical
resamples, bootstrap units, flagged tasks, rank metrics over multi-candidate requests only, and when the
oracle joins. Hand-built requests, seeded, no world."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recbrew import metrics as M
from recbrew.errors import UserError
from recbrew.eval.compare import CompareConfig, bootstrap_aucs, compare, paired_delta, task_samples
from recbrew.eval.report import render_html, render_markdown
from recbrew.eval.run import EvalResult, has_true_probs, run_eval
from recbrew.eval.table import RequestTable

META = {"examples": "ex", "requests": 0, "models": [], "versions": {}, "task_versions": {}}


def request(i, task, labels, tag="T1", member=None, kind="binary", probs=None):
    n = len(labels)
    return {"request_id": f"{task}/{i}", "task": task, "kind": kind, "split_tag": tag,
            "member_id": i if member is None else member, "candidate_ids": list(range(100 * i, 100 * i + n)),
            "labels": labels, "true_probs": [0.5] * n if probs is None else probs, "target": None}


def world(n: int, seed: int = 0, sizes: int = 3, members_per: int = 1) -> RequestTable:
    """Requests of two T1 tasks and one T2 task, ``n`` each, ``members_per`` requests per member."""
    rng = np.random.default_rng(seed)
    rows = []
    for j, (task, tag) in enumerate((("a", "T1"), ("b", "T1"), ("c", "T2"))):
        for i in range(n):
            idx = j * n + i
            rows.append(request(idx, task, (rng.random(sizes) < 0.3).astype(int).tolist(), tag=tag,
                                member=idx // members_per))
    return RequestTable.from_requests(rows)


def models(table: RequestTable, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = table.labels
    return {"signal": y + rng.normal(0, 1.0, len(y)), "random": rng.random(len(y)),
            "weak": y + rng.normal(0, 3.0, len(y))}


def no_gens(scores):
    return dict.fromkeys(scores)


def test_paired_delta_of_a_model_with_itself_is_exactly_zero():
    table = world(150)
    boot = bootstrap_aucs(table, models(table), CompareConfig(bootstrap=100))
    d = paired_delta(boot, "signal", "signal")
    assert d["delta_T1"] == 0.0 and d["ci_T1"] == [0.0, 0.0]
    assert d["delta_T2"] == 0.0 and d["ci_T2"] == [0.0, 0.0]
    assert d["n_T1_tasks"] == 2 and d["n_T2_tasks"] == 1
    assert d["text"] == "ΔT1 +0.0000 [+0.0000, +0.0000], ΔT2 +0.0000 [+0.0000, +0.0000]"


def test_scores_with_signal_beat_random_with_an_interval_excluding_zero():
    table = world(200)
    scores = models(table)
    res = compare(table, scores, no_gens(scores), CompareConfig(bootstrap=200))
    d = paired_delta(bootstrap_aucs(table, scores, CompareConfig(bootstrap=200)), "signal", "random")
    assert d["ci_T1"][0] > 0 and d["ci_T2"][0] > 0
    assert d["ci_T1"][0] <= d["delta_T1"] <= d["ci_T1"][1]
    # The point estimate is the difference of the two macro AUCs (both models scored every task).
    s = res["summary"]
    assert d["delta_T1"] == pytest.approx(s["signal"]["auc_T1"] - s["random"]["auc_T1"], abs=2e-6)
    # The other way round: the same interval, mirrored.
    back = paired_delta(bootstrap_aucs(table, scores, CompareConfig(bootstrap=200)), "random", "signal")
    assert back["delta_T1"] == -d["delta_T1"] and back["ci_T1"] == pytest.approx([-d["ci_T1"][1], -d["ci_T1"][0]])


def test_interval_half_width_shrinks_as_requests_grow():
    widths, paired_widths = [], []
    for n in (60, 240, 960):
        table = world(n, seed=3)
        scores = models(table, seed=4)
        res = compare(table, scores, no_gens(scores), CompareConfig(bootstrap=300))
        lo, hi = res["summary"]["signal"]["auc_T1_ci"]
        assert lo <= res["summary"]["signal"]["auc_T1"] <= hi
        widths.append(hi - lo)
        ci = res["paired"]["rows"]["weak"]["ci_T1"]
        paired_widths.append(ci[1] - ci[0])
    assert widths[0] > widths[1] > widths[2] and paired_widths[0] > paired_widths[1] > paired_widths[2]
    # 16 times the requests: about a quarter of the width (1 / sqrt(16)).
    assert 0.12 < widths[2] / widths[0] < 0.45


def test_macro_interval_and_paired_interval_come_from_the_same_resamples():
    table = world(120, members_per=3)
    scores = models(table)
    cfg = CompareConfig(bootstrap=80, seed=5)
    boot = bootstrap_aucs(table, scores, cfg)
    samples = task_samples(table, cfg)
    reps = {}
    for name in ("signal", "weak"):
        per_task = []
        for t in ("a", "b"):
            smp = samples[t]
            per_task.append(M.auc(table.labels[smp.cand], scores[name][smp.cand], smp.counts[:, smp.unit_of_cand]))
        np.testing.assert_array_equal(boot.replicates[name]["a"], per_task[0])
        reps[name] = np.mean(per_task, axis=0)
        assert boot.macro_interval(name, "T1") == pytest.approx(M.interval(reps[name]), abs=1e-6)
    assert paired_delta(boot, "signal", "weak")["ci_T1"] == pytest.approx(
        M.interval(reps["signal"] - reps["weak"]), abs=1e-6)
    res = compare(table, scores, no_gens(scores), cfg)
    assert res["summary"]["signal"]["auc_T1_ci"] == boot.macro_interval("signal", "T1")
    assert res["tasks"]["a"]["models"]["weak"]["ci"]["auc"] == pytest.approx(
        M.interval(boot.replicates["weak"]["a"]), abs=1e-12)


def test_bootstrap_unit_is_member_where_members_repeat_and_configurable():
    rows = [request(i, "rep", [1, 0], member=i // 4) for i in range(40)]
    rows += [request(100 + i, "single", [1, 0]) for i in range(40)]
    rows += [request(200 + i, "unknown", [1, 0], member=-1) for i in range(40)]  # no member id: each on its own
    table = RequestTable.from_requests(rows)
    auto = task_samples(table, CompareConfig(bootstrap=20))
    assert {t: s.unit for t, s in auto.items()} == {"rep": "member", "single": "request", "unknown": "request"}
    rep = auto["rep"]
    assert rep.counts.shape == (20, 10)
    # Every candidate of a member's four requests is drawn together.
    member_of = table.member[table.request[rep.cand]]
    assert all(len(set(rep.unit_of_cand[member_of == m])) == 1 for m in range(10))
    forced = task_samples(table, CompareConfig(bootstrap=20, unit="request"))
    assert {s.unit for s in forced.values()} == {"request"} and forced["rep"].counts.shape == (20, 40)
    assert task_samples(table, CompareConfig(bootstrap=20, unit="member"))["unknown"].counts.shape == (20, 40)
    scores = {"m": np.tile([0.9, 0.1], 120)}
    res = compare(table, scores, no_gens(scores), CompareConfig(bootstrap=20))
    assert res["tasks"]["rep"]["unit"] == "member" and res["config"]["unit"] == "auto"
    md = render_markdown(res, META)
    assert "resamples (seed 0, the same for every model) of requests within each task (members in rep, where " \
           "members have several requests)" in md
    with pytest.raises(UserError, match="unknown bootstrap unit 'session'"):
        task_samples(table, CompareConfig(unit="session"))


def test_tasks_below_min_positives_are_flagged_and_still_counted():
    rng = np.random.default_rng(0)
    rows = [request(i, "many", (rng.random(4) < 0.4).astype(int).tolist()) for i in range(60)]
    rows += [request(100 + i, "few", [int(i < 5), 0, 0]) for i in range(30)]  # 5 positives
    rows += [request(200 + i, "none", [0, 0]) for i in range(10)]  # no positive: AUC n/a
    table = RequestTable.from_requests(rows)
    scores = {"m": rng.random(len(table.labels))}
    res = compare(table, scores, no_gens(scores), CompareConfig(bootstrap=30))
    few, many, none = res["tasks"]["few"], res["tasks"]["many"], res["tasks"]["none"]
    assert (few["requests"], few["candidates"], few["positives"]) == (30, 90, 5)
    assert few["flagged"] and few["notes"] == ["too few positives (5 < 20)"]
    assert not many["flagged"] and many["notes"] == [] and many["positives"] >= 20
    assert few["models"]["m"]["auc"] is not None and none["models"]["m"]["auc"] is None
    assert none["notes"] == ["too few positives (0 < 20)"]
    summary = res["summary"]["m"]
    # The macro AUC averages both tasks with an AUC, one of them flagged.
    assert summary["n_tasks"]["auc_T1"] == 2 and summary["flagged_T1"] == 1
    assert summary["auc_T1"] == pytest.approx((few["models"]["m"]["auc"] + many["models"]["m"]["auc"]) / 2, abs=1e-6)
    md = render_markdown(res, META)
    # The only model is starred where it beats chance (AUC 0.5), shown plain where it does not.
    bold = "**" if few["models"]["m"]["auc"] > 0.5 else ""
    assert f"| few | T1 | binary | {bold}0." in md and "| 30 | 90 | 5 | too few positives (5 < 20) |" in md
    assert "| none | T1 | binary | n/a | 10 | 20 | 0 | too few positives (0 < 20) |" in md
    assert "| 2 (1 flagged) |" in md
    html = render_html(res, META)
    assert html.count("<tr class='flagged'>") == 2 and "too few positives (5 &lt; 20)" in html
    assert not compare(table, scores, no_gens(scores), CompareConfig(bootstrap=0, min_positives=5))["tasks"]["few"][
        "flagged"]


def test_rank_metrics_count_only_requests_with_two_candidates():
    rng = np.random.default_rng(1)
    rows = [request(i, "single", [int(rng.random() < 0.5)], member=i // 3) for i in range(60)]
    rows += [request(100 + i, "mixed", [1, 0, 0] if i % 2 else [1], member=100 + i) for i in range(40)]
    rows += [request(200 + i, "lists", [0, 1, 0], kind="listwise") for i in range(20)]
    table = RequestTable.from_requests(rows)
    scores = {"m": rng.random(len(table.labels))}
    res = compare(table, scores, no_gens(scores), CompareConfig(bootstrap=30, min_positives=0))
    single = res["tasks"]["single"]
    m = single["models"]["m"]
    assert m["auc"] is not None and m["log_loss"] is not None
    assert m["ndcg"] is None and m["mrr"] is None and m["recall"] is None and m["gauc"] is None
    assert single["ranked_requests"] == 0 and single["notes"] == ["single-candidate requests"]
    assert m["ci"]["ndcg"] is None and m["ci"]["auc"] is not None
    # Mixed task: the rank metrics equal those of its 3-candidate requests alone (the singletons would add 1.0s).
    mixed = res["tasks"]["mixed"]["models"]["m"]
    sel = np.isin(table.request, [i for i in range(len(table)) if table.task[i] == "mixed"]) & \
        (np.diff(table.offsets)[table.request] >= 2)
    ref = M.rank_metrics(table.labels[sel], scores["m"][sel], table.request[sel], 3)
    assert mixed["mrr"] == pytest.approx(np.mean(ref["rr"]), abs=1e-6)
    assert mixed["ndcg"] == pytest.approx(np.mean(ref["ndcg"]), abs=1e-6)
    assert res["tasks"]["mixed"]["ranked_requests"] == 20
    assert res["tasks"]["lists"]["models"]["m"]["acc1"] is not None
    # The summary's rank macros skip the single-candidate task and say over how many tasks they average.
    assert res["summary"]["m"]["n_tasks"]["ndcg_T1"] == 2 and res["summary"]["m"]["n_tasks"]["auc_T1"] == 3
    assert "| single-candidate requests |" in render_markdown(res, META)


def test_has_true_probs_needs_a_finite_probability_for_every_candidate():
    ok = [request(0, "a", [1, 0]), request(1, "g", [], kind="generative", probs=[])]
    assert has_true_probs(ok)
    assert not has_true_probs([request(0, "a", [1, 0], probs=[None, None])])
    assert not has_true_probs([request(0, "a", [1, 0], probs=[0.2, None])])
    assert not has_true_probs([request(0, "a", [1, 0], probs=[0.2, float("nan")])])
    assert not has_true_probs([request(0, "a", [1, 0], probs=[0.2])])
    assert not has_true_probs([{**request(0, "a", [1, 0]), "true_probs": None}])


class Fixed:
    """A Scorer answering from a fixed flat array, in request order."""

    def __init__(self, name, per_request):
        self.name, self.per_request = name, per_request

    def score(self, requests):
        return [self.per_request[r["request_id"]] for r in requests]


@pytest.fixture
def fake_examples(tmp_path, monkeypatch):
    """An examples folder whose test requests are ``rows``: run_eval without building a world."""
    from recbrew.examples.folder import Examples

    def make(rows):
        monkeypatch.setattr(Examples, "requests", lambda self, split="test", tasks=None: rows)
        (tmp_path / "ex").mkdir(exist_ok=True)
        (tmp_path / "ex" / "manifest.json").write_text(json.dumps({"config": {"seed": 0}, "tasks": {}}))
        return tmp_path / "ex"

    return make


def scorers(rows, seed=0):
    rng = np.random.default_rng(seed)
    sig = {r["request_id"]: np.asarray(r["labels"]) + rng.normal(0, 1, len(r["labels"])) for r in rows}
    rnd = {r["request_id"]: rng.random(len(r["labels"])) for r in rows}
    return {"lm": Fixed("lm", sig), "pop": Fixed("pop", rnd)}


def test_run_eval_adds_the_oracle_only_when_every_request_carries_true_probabilities(fake_examples, tmp_path):
    rng = np.random.default_rng(2)
    rows = [request(i, "a", (rng.random(3) < 0.4).astype(int).tolist(), probs=[0.3, 0.2, 0.5]) for i in range(40)]
    res = run_eval(fake_examples(rows), scorers(rows), tmp_path / "out", bootstrap=20, progress=False)
    assert res.results["models"][0] == "oracle"
    rows[7] = {**rows[7], "true_probs": [None, None, None]}
    res = run_eval(fake_examples(rows), scorers(rows), tmp_path / "out2", bootstrap=20, progress=False)
    assert "oracle" not in res.results["models"] and res.results["oracle"] is None


def test_eval_result_paired_and_table_against_the_reference(fake_examples, tmp_path):
    rng = np.random.default_rng(3)
    rows = [request(i, "a", (rng.random(4) < 0.4).astype(int).tolist(), member=i // 2) for i in range(150)]
    rows += [request(200 + i, "b", (rng.random(4) < 0.4).astype(int).tolist(), tag="T2") for i in range(150)]
    models_ = scorers(rows)
    res = run_eval(fake_examples(rows), models_, tmp_path / "out", bootstrap=100, progress=False,
                   include_oracle=False, reference="pop")
    d = res.paired("lm", "pop")
    assert set(d) >= {"delta_T1", "ci_T1", "delta_T2", "ci_T2", "n_T1_tasks", "n_T2_tasks", "text"}
    assert d["ci_T1"][0] > 0 and d["n_T1_tasks"] == 1
    assert res.results["paired"]["reference"] == "pop" == res.reference
    assert res.results["paired"]["rows"]["lm"] == d
    assert res.paired("pop", "pop")["ci_T1"] == [0.0, 0.0]
    summary = res.results["summary"]["lm"]
    assert res.macro_auc["lm"]["T1_ci"] == summary["auc_T1_ci"] and summary["auc_T1_ci"][0] < summary["auc_T1"]
    text = res.table()
    assert "95% CI" in text and f"[{summary['auc_T1_ci'][0]:.3f}, {summary['auc_T1_ci'][1]:.3f}]" in text
    assert "paired vs pop (chosen reference): Δ macro AUC" in text and f"ΔT1 {d['delta_T1']:+.4f} [{d['ci_T1'][0]:+.4f}" in text
    with pytest.raises(UserError, match="no model 'nope'"):
        res.paired("nope", "pop")
    doc = json.loads(res.paths["json"].read_text())
    assert doc["paired"]["rows"]["lm"]["delta_T1"] == d["delta_T1"]
    # From report.json alone: the pairs its paired section holds, and a clear error for others.
    assert paired_delta(doc, "lm", "pop") == d
    assert EvalResult(res.paths, doc, res.meta, res.macro_auc).paired("lm", "pop") == d
    with pytest.raises(UserError, match="holds no paired comparison of 'pop' with 'lm'"):
        paired_delta(doc, "pop", "lm")
    md = res.paths["md"].read_text()
    assert "## Paired comparison with pop" in md and "| lm better |" in md
    assert "Paired comparison with pop" in res.paths["html"].read_text()
    with pytest.raises(UserError, match="reference model 'llm' is not among the models"):
        run_eval(fake_examples(rows), models_, tmp_path / "out3", bootstrap=10, progress=False, reference="llm")


def test_default_reference_is_the_best_baseline_by_t1_macro_auc():
    table = world(100)
    scores = models(table)
    res = compare(table, scores, no_gens(scores), CompareConfig(bootstrap=20), baselines=["random", "weak"])
    assert res["paired"]["reference"] == "weak" and res["paired"]["rule"] == "best baseline by T1 macro AUC"
    assert sorted(res["paired"]["rows"]) == ["random", "signal"]
    anyone = compare(table, scores, no_gens(scores), CompareConfig(bootstrap=20))
    assert anyone["paired"]["reference"] == "signal"


def test_the_cold_start_slice_carries_intervals_and_paired_differences():
    """Each cold-start bucket: every model's macro AUC with its interval, and each model's paired difference to
    the reference on the bucket's own resamples (exactly 0 for the reference's twin); other slices stay bare."""
    rng = np.random.default_rng(3)
    rows = [{**request(i, "a", (rng.random(4) < 0.4).astype(int).tolist(), member=i // 2),
             "member_interactions": int(i % 3) * 40} for i in range(300)]
    table = RequestTable.from_requests(rows)
    scores = {**models(table), "twin": None}
    scores["twin"] = scores["signal"].copy()
    cfg = CompareConfig(bootstrap=200)
    res = compare(table, scores, no_gens(scores), cfg, reference="signal", boot=bootstrap_aucs(table, scores, cfg))
    buckets = [b for b in res["slices"]["cold_start"]["buckets"] if b["requests"]]
    assert [b["bucket"] for b in buckets] == ["<= 5", "(10, 100]"]
    for b in buckets:
        sel = np.asarray(table.member_interactions <= 5) if b["bucket"] == "<= 5" else table.member_interactions > 5
        for name in scores:
            lo, hi = b["interval"][name]
            assert lo <= b["macro_auc"][name] <= hi
        assert "signal" not in b["paired"] and b["paired"]["twin"] == {"delta": 0.0, "ci": [0.0, 0.0]}
        d = b["paired"]["random"]
        cand = table.candidate_mask(sel)
        want = M.auc(table.labels[cand], scores["random"][cand]) - M.auc(table.labels[cand], scores["signal"][cand])
        assert d["delta"] == pytest.approx(want, abs=1e-6) and d["ci"][1] < 0 < b["macro_auc"]["signal"]
    assert all("interval" not in b for b in res["slices"]["history_length"]["buckets"])
    md = render_markdown(res, META)
    assert "Δ = model minus signal in each bucket" in md and "| +0.0000 [+0.0000, +0.0000] |" in md
    assert "Δ = model minus signal in each bucket" in render_html(res, META)
