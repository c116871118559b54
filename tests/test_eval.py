"""recbrew eval end to end on a tiny seeded world: oracle, popularity and a recbrew-tiny LM on the same
requests; metrics equal a reference, the cache is reused and invalidated, the report opens in Chromium."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from recbrew.baselines.features import load_rows
from recbrew.baselines.metrics import evaluate
from recbrew.baselines.popularity import Popularity
from recbrew.errors import UserError
from recbrew.eval import run_eval
from recbrew.eval.check_html import check_html
from recbrew.eval.scorers import parse_models
from recbrew.eval.table import RequestTable
from recbrew.scoring.protocol import load_requests
from recbrew.tasks.catalog import get_task

torch.set_num_threads(1)
# The module fixture (world, examples, three models scored) takes about half a minute.
pytestmark = pytest.mark.slow
TASKS = ["feed_like", "jobs_apply_listwise", "events_register", "jobs_next_title"]


@pytest.fixture(scope="module")
def world(tmp_path_factory, small_setup):
    return small_setup(tmp_path_factory.mktemp("eval"), TASKS, max_train=60, max_test=10)


@pytest.fixture(scope="module")
def report(world):
    models = {"popularity": "popularity", "lm": str(world / "tiny")}
    return run_eval(world / "ex", models, world / "out", bootstrap=50, progress=False)


def pooled_auc(rows, probs, task):
    y = np.concatenate([r["labels"] for r in rows if r["task"] == task])
    s = np.concatenate([p for r, p in zip(rows, probs, strict=True) if r["task"] == task])
    return roc_auc_score(y, s)


def test_oracle_is_added_and_task_aucs_equal_the_references(report, world):
    res = report.results
    assert res["models"] == ["oracle", "popularity", "lm"] and res["oracle"] == "oracle"
    rows = load_rows(world / "ex", "test")
    reference = evaluate(Popularity.fit(load_rows(world / "ex", "train", split_tag="T1")), rows)
    for task, info in reference["tasks"].items():
        got = res["tasks"][task]["models"]["popularity"]["auc"]
        assert got == pytest.approx(info["auc"], abs=1e-6) if info["auc"] is not None else got is None
    requests = [r for r in load_requests(world / "ex", "test") if r["kind"] != "generative"]
    truth = [np.array(r["true_probs"]) for r in requests]
    assert res["tasks"]["feed_like"]["models"]["oracle"]["auc"] == pytest.approx(
        pooled_auc(requests, truth, "feed_like"), abs=1e-6)


def test_lm_scores_equal_the_hf_scorer_and_generative_tasks_are_na_for_scorers(report, world):
    from recbrew.models.loading import load_model
    from recbrew.scoring.hf import HFScorer

    requests = [r for r in load_requests(world / "ex", "test") if r["kind"] != "generative"]
    # Eval loads language models as dtype="auto" (bf16 on hardware with bf16 arithmetic): the same here.
    model, tok = load_model(str(world / "tiny"), device="cpu", dtype="auto")
    # Eval scores in multi mode; in bf16 the modes differ by rounding (about 2e-3 AUC here), so compare like for like.
    probs = HFScorer(model, tok, mode="multi").score(requests)
    for task in ("feed_like", "jobs_apply_listwise"):
        got = report.results["tasks"][task]["models"]["lm"]
        assert got["auc"] == pytest.approx(pooled_auc(requests, probs, task), abs=1e-4)
        assert got["oracle_gap"] == pytest.approx(report.results["tasks"][task]["models"]["oracle"]["auc"]
                                                  - got["auc"], abs=1e-6)
    gen = report.results["tasks"]["jobs_next_title"]["models"]
    assert gen["popularity"] is None and gen["oracle"] is None
    assert 0.0 <= gen["lm"]["exact"] <= gen["lm"]["f1"] <= 1.0
    assert "acc1" in report.results["tasks"]["jobs_apply_listwise"]["models"]["lm"]


def test_summary_slices_and_report_files(report, world):
    res, summary = report.results, report.results["summary"]
    t1 = [e["models"]["lm"]["auc"] for e in res["tasks"].values()
          if e["split_tag"] == "T1" and e["kind"] != "generative" and e["models"]["lm"]["auc"] is not None]
    assert summary["lm"]["auc_T1"] == pytest.approx(np.mean(t1), abs=1e-6)
    assert report.macro_auc["lm"]["T1"] == summary["lm"]["auc_T1"]
    assert report.macro_auc["lm"]["gap_T1"] == pytest.approx(summary["oracle"]["auc_T1"] - summary["lm"]["auc_T1"],
                                                             abs=1e-6)
    table = RequestTable.from_requests(load_requests(world / "ex", "test"))
    cold = res["slices"]["cold_start"]["buckets"]
    assert [b["bucket"] for b in cold] == ["<= 5", "(5, 10]", "(10, 100]", "> 100"]
    assert sum(b["requests"] for b in cold) == int(table.rankable.sum())
    tags = {b["bucket"]: b["macro_auc"]["lm"] for b in res["slices"]["split_tag"]["buckets"]}
    assert tags["T1"] == pytest.approx(summary["lm"]["auc_T1"], abs=1e-6)
    for ci in (res["tasks"]["feed_like"]["models"]["lm"]["ci"]["auc"],):
        assert ci[0] <= res["tasks"]["feed_like"]["models"]["lm"]["auc"] <= ci[1]
    feed = table.candidate_mask(table.task == "feed_like")
    assert res["tasks"]["feed_like"]["candidates"] == int(feed.sum())
    assert res["tasks"]["feed_like"]["positives"] == int(table.labels[feed].sum())
    lo, hi = summary["lm"]["auc_T1_ci"]
    assert lo <= summary["lm"]["auc_T1"] <= hi and report.macro_auc["lm"]["T1_ci"] == [lo, hi]
    # Popularity is the only baseline: every other model is compared with it on the same resamples.
    assert res["paired"]["reference"] == "popularity" and sorted(res["paired"]["rows"]) == ["lm", "oracle"]
    assert report.paired("lm", "popularity") == res["paired"]["rows"]["lm"]
    assert report.paired("lm", "popularity")["delta_T1"] == pytest.approx(
        summary["lm"]["auc_T1"] - summary["popularity"]["auc_T1"], abs=1e-5)
    doc = json.loads(report.paths["json"].read_text())
    assert doc["meta"]["data_seed"] == 0 and doc["meta"]["task_versions"]["feed_like"] == get_task("feed_like").version
    assert "numpy" in doc["meta"]["versions"]
    md = report.paths["md"].read_text()
    assert "★" in md and "| feed_like | T1 | binary |" in md
    html = report.paths["html"].read_text()
    assert html.count("data:image/png;base64,") >= 5 and "http://" not in html and "https://" not in html
    assert "T1 AUC" in report.table() and "lm" in report.table() and "paired vs popularity" in report.table()
    assert "## Paired comparison with popularity" in md and "Paired comparison with popularity" in html


def test_report_opens_in_headless_chromium(report, tmp_path):
    result = check_html(report.paths["html"])
    assert result.ok, result.errors
    broken = tmp_path / "broken.html"
    broken.write_text("<html><body><script>undefined_name.call();</script></body></html>")
    bad = check_html(broken)
    assert not bad.ok and any("Uncaught" in e for e in bad.errors)
    external = tmp_path / "external.html"
    external.write_text('<html><body><img src="https://example.invalid/x.png"><script>'
                        'document.body.setAttribute("data-rendered","1");</script></body></html>')
    assert any("external reference" in e for e in check_html(external).errors)


def test_cache_is_reused_and_invalidated_when_the_model_changes(report, world):
    scores = world / "out" / "scores"
    files = sorted(p.name for p in scores.iterdir())
    assert len(files) == 3
    again = run_eval(world / "ex", {"popularity": "popularity", "lm": str(world / "tiny")}, world / "out",
                     bootstrap=50, progress=False)
    assert all(m["cached"] for m in again.meta["models"])
    assert again.results["tasks"] == report.results["tasks"]
    weights = next((world / "tiny").glob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    third = run_eval(world / "ex", {"lm": str(world / "tiny")}, world / "out", bootstrap=0, progress=False,
                     include_oracle=False)
    assert third.meta["models"][0]["cached"] is False
    assert len(list(scores.iterdir())) == 4
    assert not [p for p in (world / "out").rglob(".*tmp*")]  # no leftovers of the write-aside-then-rename


def test_a_model_reads_its_prompts_from_its_own_examples_folder(report, world, tmp_path):
    """`--model-examples`: the same test requests with other prompts (here the prose style) — the model is scored on
    those prompts and compared paired with the others; a folder of other requests is refused."""
    from recbrew.examples.build import BuildConfig, build_examples

    build_examples(world / "world", tmp_path / "prose", BuildConfig(tasks=TASKS, test_days=4, gap_days=1, max_train=60,
                                                                    max_test=10, tokenizer="none", style="prose"),
                   progress=False)
    models = {"lm": str(world / "tiny"), "lm_prose": str(world / "tiny")}
    both = run_eval(world / "ex", models, tmp_path / "out", bootstrap=20, progress=False, include_oracle=False,
                    model_examples={"lm_prose": tmp_path / "prose"})
    alone = run_eval(tmp_path / "prose", {"lm": str(world / "tiny")}, tmp_path / "alone", bootstrap=0,
                     progress=False, include_oracle=False)
    assert both.meta["models"][1]["examples"] == str(tmp_path / "prose")
    lm, prose = (both.results["tasks"]["feed_like"]["models"][n]["auc"] for n in ("lm", "lm_prose"))
    assert prose == alone.results["tasks"]["feed_like"]["models"]["lm"]["auc"] and prose != lm
    build_examples(world / "world", tmp_path / "fewer", BuildConfig(tasks=TASKS, test_days=4, gap_days=1,
                                                                    max_train=60, max_test=5, tokenizer="none"),
                   progress=False)
    with pytest.raises(UserError, match="(lacks|has other candidates or labels in) test request"):
        run_eval(world / "ex", models, tmp_path / "bad", progress=False, model_examples={"lm_prose": tmp_path / "fewer"})
    with pytest.raises(UserError, match="not among the models"):
        run_eval(world / "ex", models, tmp_path / "bad", progress=False, model_examples={"other": tmp_path / "prose"})


def test_parse_models_and_errors(world):
    assert parse_models("oracle,pop=popularity, runs/x/lirank/") == {
        "oracle": "oracle", "pop": "popularity", "lirank": "runs/x/lirank/"}
    with pytest.raises(UserError, match="two models are called"):
        parse_models("oracle,oracle")
    with pytest.raises(UserError, match="not found"):
        run_eval(world / "ex", ["nope/model"], world / "bad", progress=False)


def test_cli_eval_runs_on_its_own_options_and_reports_mistakes(world, capsys, cli_code):
    capsys.readouterr()
    code = cli_code("eval", "--models", "oracle,pop=popularity", "--examples", world / "ex", "--out", world / "cli",
                    "--tasks", "feed_like,events_register", "--bootstrap", "20", "--no-progress")
    out = capsys.readouterr().out
    assert code == 0 and "pop" in out and "report.html" in out
    doc = json.loads((world / "cli" / "report.json").read_text())
    assert sorted(doc["tasks"]) == ["events_register", "feed_like"] and doc["models"] == ["oracle", "pop"]
    # Repeated options all count: none is dropped silently (the last one used to win).
    code = cli_code("eval", "--models", "oracle", "--models", "pop=popularity", "--examples", world / "ex",
                    "--out", world / "cli-rep", "--tasks", "feed_like", "--tasks", "events_register", "--bootstrap",
                    "0", "--no-progress", "--fusion", "f1=oracle+pop", "--fusion", "f2=pop+oracle")
    doc = json.loads((world / "cli-rep" / "report.json").read_text())
    assert code == 0 and sorted(doc["tasks"]) == ["events_register", "feed_like"]
    assert doc["models"] == ["oracle", "pop", "f1", "f2"]
    capsys.readouterr()
    assert cli_code("eval", "--models", "oracle", "--examples", world / "ex", "--out", world / "cli2",
                    "--model-examples", "oracle=a", "--model-examples", "oracle=b") == 2
    assert "error: --model-examples names 'oracle' twice (a and b)" in capsys.readouterr().err
    assert cli_code("eval", "--models", "oracle", "--out", world / "cli2") == 2
    assert "error: missing --examples" in capsys.readouterr().err
    assert cli_code("eval", "--models", "nothing-here", "--examples", world / "ex", "--out", world / "cli2") == 2
    assert "error: model 'nothing-here' not found" in capsys.readouterr().err


_ENGINES_SCRIPT = """
import json, sys

import recbrew.models.precision as precision

precision.cpu_has_bf16 = lambda: False  # both engines in fp32 (bf16 kernels round differently from one another)
from recbrew.eval import run_eval
from recbrew.scoring.protocol import load_requests
from recbrew.scoring.registry import load_scorer

if __name__ == "__main__":
    examples, model, out = sys.argv[1:4]
    for engine in ("hf", "vllm"):
        result = run_eval(examples, {"lm": model}, f"{out}/{engine}", bootstrap=20, progress=False,
                          include_oracle=False, lm_engine=engine)
        print("RUN " + json.dumps(result.meta["models"]))
    rows = [r for r in load_requests(examples, "test") if r["kind"] == "generative"][:3]
    texts = {e: load_scorer(model, examples=examples, lm_engine=e).generate(rows, 8) for e in ("hf", "vllm")}
    print("GENERATED " + json.dumps(texts))
"""


def test_vllm_engine_gives_the_hf_engines_scores_and_answers(world, tmp_path):
    """`recbrew eval --llm-engine vllm`: the same test requests scored through vLLM's offline engine equal the
    multi-item HF path's within 1e-3 in fp32, generative tasks get the same greedy answers, and the run says
    which engine scored."""
    import subprocess
    import sys

    script = tmp_path / "engines.py"
    script.write_text(_ENGINES_SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(world / "ex"), str(world / "tiny"), str(tmp_path)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = [json.loads(ln[4:]) for ln in done.stdout.splitlines() if ln.startswith("RUN ")]
    assert [r[0].get("engine") for r in runs] == [None, "vllm"]
    scores = {}
    for e in ("hf", "vllm"):
        with open(tmp_path / e / "scores.csv", newline="") as f:
            scores[e] = np.array([float(r["lm"]) for r in csv.DictReader(f)])
    assert len(scores["hf"]) == len(scores["vllm"]) > 0
    np.testing.assert_allclose(scores["vllm"], scores["hf"], atol=1e-3)
    texts = json.loads(next(ln for ln in done.stdout.splitlines() if ln.startswith("GENERATED "))[10:])
    assert texts["vllm"] == texts["hf"] and len(texts["hf"]) == 3


def test_lm_engine_is_checked_before_any_scoring(world, tmp_path):
    with pytest.raises(UserError, match="--llm-engine 'onnx': choose hf or vllm"):
        run_eval(world / "ex", {"p": "popularity"}, tmp_path / "a", lm_engine="onnx", progress=False)
    with pytest.raises(UserError, match="with --engine ray the actors score through hf"):
        run_eval(world / "ex", {"p": "popularity"}, tmp_path / "b", lm_engine="vllm", engine="ray", progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
