"""The `recbrew` command line as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import recbrew

RECBREW = Path(sys.executable).parent / "recbrew"


def run(*args, cwd=None):
    return subprocess.run([str(RECBREW), *args], capture_output=True, text=True, cwd=cwd)


def test_version():
    out = run("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"recbrew {recbrew.__version__}"


def test_stage_groups_are_listed():
    out = run("--help")
    for group in ("world", "tasks", "data", "train", "serve", "baselines", "eval", "bench", "quickstart"):
        assert group in out.stdout, group


@pytest.mark.parametrize(
    "args, message",
    [
        (["world", "generate", "--members", "10", "--out", "{tmp}/w"], "--members must be at least 50"),
        (["world", "card", "{tmp}"], "world_card.json not found"),
        (["bench", "world", "--scale", "1"], "--scale must be at least 2"),
        (["world", "generate", "--out", "{tmp}/w", "behaviour.nope=1"], "behaviour: unknown field(s) nope"),
        (["world", "generate", "--out", "{tmp}/w", "--config", "nope"], "world config 'nope': no such file"),
    ],
)
def test_user_errors_print_one_line_and_exit_2(tmp_path, args, message):
    out = run(*[a.format(tmp=tmp_path) for a in args])
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in out.stderr


def test_generate_then_card(tmp_path):
    out = run("world", "generate", "--members", "120", "--days", "3", "--seed", "5", "--out", str(tmp_path / "w"),
              "--no-progress", "--json")
    assert out.returncode == 0, out.stderr
    card = json.loads(out.stdout)
    assert card["seed"] == 5 and card["sizes"]["members"] == 120
    again = run("world", "card", str(tmp_path / "w"), "--json")
    assert json.loads(again.stdout) == card
    table = run("world", "card", str(tmp_path / "w"))
    assert "oracle AUC" in table.stdout and "feed" in table.stdout
    refused = run("world", "generate", "--members", "120", "--out", str(tmp_path / "w"))
    assert refused.returncode == 2 and "--force" in refused.stderr


def test_world_config_file_and_settings(tmp_path):
    """`--config` reads a world YAML (the shipped default is the WorldConfig defaults); key=value sets one field;
    --members/--days/--seed win over both."""
    from recbrew.cli.world import world_config
    from recbrew.world import WorldConfig

    assert world_config("default", None, None, None) == WorldConfig()
    mine = tmp_path / "mine.yaml"
    mine.write_text("members: 120\ndays: 3\nbehaviour: {social: 0.5}\n")
    out = run("world", "generate", "--config", str(mine), "--seed", "5", "--out", str(tmp_path / "w"),
              "--no-progress", "--json", "behaviour.interest=1.5")
    assert out.returncode == 0, out.stderr
    card = json.loads(out.stdout)
    assert card["sizes"]["members"] == 120 and card["days"] == 3 and card["seed"] == 5
    assert card["behaviour"]["social"] == 0.5 and card["behaviour"]["interest"] == 1.5


@pytest.mark.slow
def test_quickstart_runs_end_to_end_and_reuses_finished_steps(tmp_path):
    """The whole job on a small world (recbrew-tiny stands in for SmolLM2 to keep it short)."""
    from recbrew.eval.check_html import check_html
    from recbrew.models.tiny import build_tiny
    from recbrew.world import WorldConfig, generate_world

    generate_world(WorldConfig(members=150, days=12, seed=9), tmp_path / "w", progress=False)
    build_tiny(tmp_path / "w", tmp_path / "tiny", "tiny", seed=0)
    args = ["quickstart", "--out", str(tmp_path / "q"), "--members", "150", "--days", "12", "--max-train", "10",
            "--max-test", "5", "--burn-in-days", "1", f"model={tmp_path / 'tiny'}", "layers=null", "tasks=null", "task_weights={}",
            "max_steps=2", "eval_requests=4", "save_steps=100"]
    first = run(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    for step in ("generating", "rendering the task catalog", "fine-tune: LoRA", "baselines: training lirank",
                 "baselines: training ligr", "baselines: training popularity", "eval: every model", "report:"):
        assert step in first.stdout, step
    report = json.loads((tmp_path / "q" / "eval" / "report.json").read_text())
    assert set(report["models"]) == {"oracle", "tiny-lora", "lirank", "ligr", "popularity"}
    manifest = json.loads((tmp_path / "q" / "examples" / "manifest.json").read_text())
    assert set(report["tasks"]) == {t for t, row in manifest["tasks"].items() if row["test"]}
    assert {row["split_tag"] for row in report["tasks"].values()} == {"T1", "T2"}
    assert report["slices"]["cold_start"]["buckets"]
    assert check_html(tmp_path / "q" / "eval" / "report.html").ok

    stamp = (tmp_path / "q" / "llm" / "final" / "adapter_model.safetensors").stat().st_mtime_ns
    second = run(*args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("re-using") == 6  # world, examples, fine-tune, three baselines
    assert (tmp_path / "q" / "llm" / "final" / "adapter_model.safetensors").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_quickstart_on_movielens_runs_end_to_end(tmp_path):
    """`quickstart --data movielens`: the real-data comparison end to end, with a fusion row and the paired line
    against the best classic model (recbrew-tiny stands in for SmolLM2, a few requests and steps)."""
    pytest.importorskip("recbole")
    from recbrew.data.movielens import load_movielens
    from recbrew.models.tiny import build_tiny

    load_movielens().save(tmp_path / "ml")
    build_tiny(tmp_path / "ml", tmp_path / "tiny", "tiny", seed=0)
    out = tmp_path / "q"
    first = run("quickstart", "--data", "movielens", "--out", str(out), "--max-train", "40", "--max-test", "30",
                "--baseline-epochs", "1", f"model={tmp_path / 'tiny'}", "layers=null", "max_steps=2", "save_steps=100")
    assert first.returncode == 0, first.stderr[-3000:]
    for step in ("corpus: MovieLens-100K", "examples: movies_like (time split)", "fine-tune: LoRA",
                 "baselines: training lirank", "baselines: training ligr", "eval: every model", "tiny-lora vs ",
                 "(paired bootstrap)", "report:"):
        assert step in first.stdout, step
    report = json.loads((out / "eval" / "report.json").read_text())
    assert set(report["models"]) == {"tiny-lora", "lirank", "ligr", "popularity", "tiny-lora+lirank"}
    assert set(report["tasks"]) == {"movies_like"}
    text = (out / "examples" / "manifest.json").read_text()
    assert '"test_days": 30.0' in text
    bad = run("quickstart", "--data", "movielens", "--split", "random", "--out", str(out))
    assert bad.returncode == 2 and "choose time or leave-last" in bad.stderr
