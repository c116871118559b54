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


def test_quickstart_reuses_the_world(tmp_path):
    first = run("quickstart", "--out", str(tmp_path / "q"), "--members", "150", "--days", "12", "--max-train", "10", "--max-test", "5")
    assert first.returncode == 0, first.stderr
    assert "generating" in first.stdout and "world card:" in first.stdout and "rendering the task catalog" in first.stdout
    stamp = (tmp_path / "q" / "world" / "interactions.parquet").stat().st_mtime_ns
    second = run("quickstart", "--out", str(tmp_path / "q"), "--members", "150", "--days", "12", "--max-train", "10", "--max-test", "5")
    assert second.stdout.count("re-using") == 2
    assert (tmp_path / "q" / "world" / "interactions.parquet").stat().st_mtime_ns == stamp
