"""Slices, diversity, generative scoring and report anatomy on hand-built requests with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from recbrew.eval.compare import CompareConfig, bucket_labels, buckets, compare, diversity, macro_auc_by_task
from recbrew.eval.generation import exact_match, normalize, token_f1
from recbrew.eval.report import render_html, render_markdown
from recbrew.eval.table import RequestTable
from recbrew.scoring.hf import first_line


def request(i, task, labels, topics=None, companies=None, kind="binary", tag="T1", member=None, inter=0, days=1.5,
            hist=0, target=None):
    n = len(labels)
    return {"request_id": f"{task}/{i}", "task": task, "kind": kind, "split_tag": tag,
            "member_id": i if member is None else member, "candidate_ids": list(range(100 * i, 100 * i + n)),
            "labels": labels, "true_probs": [0.5] * n, "member_interactions": inter, "history_length": hist,
            "days_from_cutoff": days, "target": target, "cand_topic": topics or ["t"] * n,
            "cand_company": companies or [None] * n}


def test_buckets_follow_the_edges_inclusively():
    assert bucket_labels((5, 10, 100)) == ["<= 5", "(5, 10]", "(10, 100]", "> 100"]
    np.testing.assert_array_equal(buckets([0, 5, 6, 10, 11, 100, 101], (5, 10, 100)), [0, 0, 1, 1, 2, 2, 3])


def test_diversity_counts_same_topic_pairs_and_coverage_of_the_top_k():
    rows = [request(1, "a", [1, 0, 0, 0], topics=["x", "x", "y", "z"], companies=["A", "A", "B", None]),
            request(2, "a", [0, 1, 0, 0], topics=["x", "y", "y", "y"], companies=["C", None, None, None]),
            request(3, "a", [1, 0], topics=["x", "y"])]  # not more than k candidates: left out
    table = RequestTable.from_requests(rows)
    # Request 1 top-2: candidates 0, 1 (x, x) -> 1 same pair; request 2 top-2: candidates 2, 3 (y, y) -> 1.
    scores = np.array([0.9, 0.8, 0.1, 0.0, 0.0, 0.1, 0.9, 0.8, 0.5, 0.5])
    d = diversity(table, scores, k=2)
    assert d["requests"] == 2
    assert d["topic_diversity"] == pytest.approx(1 - 2 / 2)
    assert d["item_coverage"] == pytest.approx(4 / 8)
    assert d["company_coverage"] == pytest.approx(1 / 3)  # A of {A, B, C}
    # Mixed topics in request 1's top-2 (x, y), same topics in request 2's: one same pair of two lists.
    scores[[1, 2]] = [0.1, 0.8]
    assert diversity(table, scores, k=2)["topic_diversity"] == pytest.approx(0.5)


def test_slice_macro_auc_equals_per_task_sklearn_mean():
    rng = np.random.default_rng(0)
    rows = [request(i, task, (rng.random(3) < 0.4).astype(int).tolist(), inter=int(rng.integers(0, 30)))
            for i, task in enumerate(["a", "b"] * 30)]
    table = RequestTable.from_requests(rows)
    scores = rng.random(len(table.labels))
    sel = table.member_interactions <= 10
    expected = []
    for task in ("a", "b"):
        cand = sel[table.request] & (table.task[table.request] == task)
        expected.append(roc_auc_score(table.labels[cand], scores[cand]))
    assert macro_auc_by_task(table, scores, sel) == pytest.approx(np.mean(expected), abs=1e-6)


def test_generative_matching_normalizes_and_scores_token_overlap():
    assert normalize("  Senior  Data-Engineer. ") == "senior data engineer"
    assert exact_match("senior data engineer", "Senior Data Engineer.") == 1.0
    assert token_f1("data engineer", "senior data engineer") == pytest.approx(2 * 1 * (2 / 3) / (1 + 2 / 3))
    assert token_f1("", "x") == 0.0 and token_f1("", "") == 1.0 and token_f1("a b", "c") == 0.0
    assert first_line(" Product Manager\nAnswer: yes") == "Product Manager"


def test_compare_marks_generative_na_and_renders_winners():
    rows = [request(i, "bin", [1, 0, 0], member=i % 4) for i in range(8)]
    targets = ["Data Engineer", "Data Engineer", "Nurse", "Product Manager"]
    rows += [request(8 + i, "gen", [], kind="generative", target=t, tag="T2") for i, t in enumerate(targets)]
    table = RequestTable.from_requests(rows)
    good = np.tile([0.9, 0.2, 0.1], 8)
    bad = np.tile([0.1, 0.5, 0.9], 8)
    res = compare(table, {"good": good, "bad": bad},
                  {"good": {8: "data engineer", 9: "x", 10: "nurse", 11: "product manager"}, "bad": None},
                  CompareConfig(bootstrap=30))
    assert res["tasks"]["bin"]["models"]["good"]["auc"] == 1.0
    assert res["tasks"]["bin"]["models"]["bad"]["auc"] == 0.0
    assert res["tasks"]["bin"]["models"]["good"]["mrr"] == 1.0
    assert res["tasks"]["gen"]["models"]["good"] == {"exact": 0.75, "f1": 0.75}
    assert res["tasks"]["gen"]["models"]["bad"] is None
    assert res["tasks"]["gen"]["trivial"] == {"answer": "data engineer", "exact": 0.5, "f1": 0.5}
    assert res["summary"]["good"]["exact"] == 0.75 and res["summary"]["bad"]["exact"] is None
    meta = {"examples": "ex", "requests": len(table), "models": [], "versions": {}, "task_versions": {}}
    md = render_markdown(res, meta)
    assert "| bin | T1 | binary | **1.0000 [1.000, 1.000]** ★ | 0.0000 [0.000, 0.000] |" in md
    assert "| gen | T2 | generative | **EM 0.750 / F1 0.750** ★ | n/a |" in md
    assert "most frequent answer ('data engineer'): EM 0.500 / F1 0.500" in md
    # No star for a model no better than always giving the most frequent answer, nor for an AUC at or below 0.5.
    res = compare(table, {"good": bad, "bad": bad}, {"good": {8: "data engineer", 9: "data engineer"}, "bad": None},
                  CompareConfig(bootstrap=30))
    md = render_markdown(res, meta)
    assert "★" not in md.split("\n", 3)[3]
    html = render_html(res, meta)
    assert html.rstrip().endswith("</html>") and 'setAttribute("data-rendered","1")' in html


def test_fusion_is_the_mean_logit():
    from recbrew.eval.run import fuse_logits

    p = np.array([0.1, 0.5, 0.8, np.nan])
    q = np.array([0.9, 0.5, 0.2, 0.3])
    np.testing.assert_allclose(fuse_logits([p, p])[:3], p[:3])
    np.testing.assert_allclose(fuse_logits([p, q])[:3], [0.5, 0.5, 0.5])
    logit = np.log(0.8 / 0.2) / 2 + np.log(0.6 / 0.4) / 2
    assert fuse_logits([np.array([0.8]), np.array([0.6])])[0] == pytest.approx(1 / (1 + np.exp(-logit)))
    assert np.isnan(fuse_logits([p, q])[3])
