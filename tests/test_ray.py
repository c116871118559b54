"""``--engine ray``: `data build` writes the same folder, `models score` and `eval` give the same scores, on a
local Ray started by the command, on one this process joined, and on a cluster started with `ray start`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from recbrew.serve.engine import free_port

RECBREW = Path(sys.executable).with_name("recbrew")
RAY = Path(sys.executable).with_name("ray")
TASKS = "feed_like,jobs_apply,jobs_apply_listwise,jobs_next_title"
#: Ray on one machine, all of it on 127.0.0.1 (Ray otherwise reaches a cluster through the machine's own address).
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, shared_world, shared_tiny, cli_code):
    """(root, world, tiny model), with the examples of a single-process build in ``root/local``."""
    world = shared_world(300, 14, 2)
    root = tmp_path_factory.mktemp("ray")
    assert cli_code(*_build_args(world, root / "local")) == 0
    return root, world, shared_tiny(world, "tiny", 0)


def _build_args(world, out) -> list[str]:
    return ["data", "build", "--corpus", world, "--out", out, "--tasks", TASKS, "--max-train", "60",
            "--max-test", "30", "--val-fraction", "0.2", "--inject-share", "0.3", "--tokenizer", "none",
            "--no-progress"]


def _contents(folder: Path) -> dict:
    """Every data file's checksum and the manifest without its timing (and its own checksum)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    files = manifest.pop("checksums")["files"]
    manifest.pop("seconds")
    return {"files": files, "manifest": manifest}


def test_build_on_ray_writes_the_same_folder(setup, cli_code):
    root, world, _ = setup
    assert cli_code(*_build_args(world, root / "ray"), "--engine", "ray", "--workers", "3") == 0
    local, ray = _contents(root / "local"), _contents(root / "ray")
    assert local["manifest"]["tasks"]["feed_like"]["injected"] > 0  # the per-request draws were exercised
    assert set(local["manifest"]["rows"]) == {"train", "validation", "test"}
    # Every data file byte for byte, whichever worker rendered which member.
    assert ray == local
    assert not __import__("ray").is_initialized()  # the command's own local Ray stopped with it


@pytest.fixture(scope="module")
def joined():
    """A local Ray this process joined: the commands use it and leave it running."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def _score_json(capsys, cli_code, *args) -> dict:
    capsys.readouterr()
    assert cli_code("models", "score", *args, "--json") == 0
    return json.loads(capsys.readouterr().out)


def test_models_score_and_eval_on_ray_match_local(setup, cli_code, capsys, joined):
    from recbrew.eval.run import run_eval
    from recbrew.eval.scorers import RayOptions

    root, world, tiny = setup
    ex = root / "local"
    args = ("--examples", ex, "--model", tiny, "--dtype", "fp32")
    local = _score_json(capsys, cli_code, *args)
    ray = _score_json(capsys, cli_code, *args, "--engine", "ray", "--workers", "2", "--worker-cpus", "1")
    assert joined.is_initialized()
    assert [r["request_id"] for r in ray["requests"]] == [r["request_id"] for r in local["requests"]]
    diff = max(abs(a - b) for x, y in zip(local["requests"], ray["requests"], strict=True)
               for a, b in zip(x["scores"], y["scores"], strict=True))
    assert diff <= 2e-6, diff  # the JSON's 6 decimals
    assert ray["tasks"].keys() == local["tasks"].keys()

    models = {"pop": "popularity", "tiny": str(tiny)}
    base = run_eval(ex, models, root / "eval-local", bootstrap=0, progress=False, include_oracle=False)
    on_ray = run_eval(ex, models, root / "eval-ray", bootstrap=0, progress=False, include_oracle=False,
                      engine="ray", ray=RayOptions(workers=2, worker_cpus=1))
    assert {m["name"]: m.get("engine") for m in on_ray.meta["models"]} == {"pop": None, "tiny": "ray"}
    assert "scored in" in on_ray.paths["md"].read_text() and " s on Ray)" in on_ray.paths["md"].read_text()
    a, b = (np.genfromtxt(r.paths["scores"], delimiter=",", names=True, dtype=None, encoding="utf-8")
            for r in (base, on_ray))
    # eval scores in bf16 where the CPU has bf16 arithmetic: an actor's thread count orders its sums otherwise.
    assert np.abs(a["tiny"] - b["tiny"]).max() <= 1e-4 and np.array_equal(a["pop"], b["pop"])
    # Generative requests were answered on the actors too.
    gens = [t for t in base.results["tasks"] if base.results["tasks"][t].get("kind") == "generative"]
    for task in gens:
        assert on_ray.results["tasks"][task] == base.results["tasks"][task]


def test_ray_failures_are_one_line(setup, joined):
    from recbrew.cluster import score_on_ray
    from recbrew.errors import UserError
    from recbrew.examples.folder import Examples
    from recbrew.scoring.hf import load_hf_scorer

    root, _, tiny = setup
    folder = Examples.open(root / "local")
    rows = folder.requests("test")
    with pytest.raises(UserError, match="^model 'nowhere' not found"):  # the user's error, raised on an actor
        score_on_ray(load_hf_scorer, ("nowhere",), rows, range(4), load_kwargs={"catalog": folder.catalog()},
                     progress=False)
    # Any other error: its type and first line, no traceback.
    with pytest.raises(UserError, match="^scoring failed on a Ray worker: TypeError: .*'stride'") as err:
        score_on_ray(load_hf_scorer, (str(tiny),), rows, range(4), load_kwargs={"catalog": folder.catalog(),
                                                                               "stride": 2},
                     desc="scoring", progress=False)
    assert "\n" not in str(err.value)
    # More actors than the cluster can place would wait forever: refused at once.
    with pytest.raises(UserError, match="--workers 3: the Ray cluster has 2 CPUs, room for 2 actors of 1 CPUs"):
        score_on_ray(load_hf_scorer, (str(tiny),), rows, range(4), load_kwargs={"catalog": folder.catalog()},
                     workers=3, worker_cpus=1, progress=False)
    with pytest.raises(UserError, match="--worker-cpus 8: more than the Ray cluster's 2 CPUs"):
        score_on_ray(load_hf_scorer, (str(tiny),), rows, range(4), load_kwargs={"catalog": folder.catalog()},
                     worker_cpus=8, progress=False)


def test_cli_refuses_ray_options_without_the_engine(setup, tmp_path):
    root, world, tiny = setup
    for args, line in (
            (["models", "score", "--examples", root / "local", "--model", tiny, "--workers", "2"],
             "error: --workers: option of --engine ray"),
            (["eval", "--models", "popularity", "--examples", root / "local", "--out", tmp_path / "e",
              "--address", "127.0.0.1:1", "--worker-cpus", "1"],
             "error: --address, --worker-cpus: options of --engine ray"),
            (["data", "build", "--corpus", world, "--out", tmp_path / "b", "--engine", "spark"],
             "error: --engine 'spark': choose local or ray")):
        res = subprocess.run([str(RECBREW), *map(str, args)], capture_output=True, text=True)
        assert res.returncode == 2 and res.stderr.strip().splitlines() == [line], res.stderr
    assert not (tmp_path / "e").exists() and not (tmp_path / "b").exists()


@pytest.mark.slow
def test_address_joins_a_cluster_started_with_ray_start(setup, tmp_path):
    """`ray start --head` on 127.0.0.1, then the commands with --address: the same folder and scores."""
    root, world, tiny = setup
    port = free_port()
    env = {**os.environ, **LOOPBACK}
    head = subprocess.Popen([str(RAY), "start", "--head", "--block", "--port", str(port), "--num-cpus", "2",
                             "--node-ip-address", "127.0.0.1", "--include-dashboard=false",
                             "--disable-usage-stats"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        args = [*_build_args(world, tmp_path / "ex"), "--engine", "ray", "--address", address]
        while True:  # the head takes a few seconds to answer
            res = subprocess.run([str(RECBREW), *map(str, args)], capture_output=True, text=True, env=env)
            if res.returncode == 0 or time.monotonic() > deadline or "no Ray cluster answers" not in res.stderr:
                break
            time.sleep(2)
        assert res.returncode == 0, res.stderr
        assert _contents(tmp_path / "ex") == _contents(root / "local")
        score = [str(RECBREW), "models", "score", "--examples", str(root / "local"), "--model", str(tiny),
                 "--dtype", "fp32", "--tasks", "feed_like", "--json"]
        res = subprocess.run([*score, "--engine", "ray", "--address", address], capture_output=True, text=True,
                             env=env)
        assert res.returncode == 0, res.stderr
        local = subprocess.run(score, capture_output=True, text=True, env=env)
        ray, local = json.loads(res.stdout)["requests"], json.loads(local.stdout)["requests"]
        assert [r["request_id"] for r in ray] == [r["request_id"] for r in local]
        assert max(abs(a - b) for x, y in zip(local, ray, strict=True)
                   for a, b in zip(x["scores"], y["scores"], strict=True)) <= 2e-6
        assert head.poll() is None  # the cluster outlives the commands that joined it
    finally:
        head.terminate()
        head.wait(timeout=60)


def test_bench_ray_times_both_ways_on_the_same_requests(setup, joined):
    from recbrew.bench.ray import bench_ray

    root, _, tiny = setup
    out = bench_ray(str(tiny), str(root / "local"), requests=8, workers=2, batch_size=4, dtype="fp32")
    assert out["requests"] == 8 and out["ray"]["workers"] == 2 and out["ray"]["worker_cpus"] == 1
    for row in ("single_process", "single_process_batched", "ray"):
        assert out[row]["requests_per_s"] > 0
    ratio = out["single_process"]["seconds"] / out["ray"]["seconds"]  # of the printed (rounded) seconds
    assert out["speedup_vs_single_process"] == pytest.approx(ratio, rel=0.05)
    assert out["max_abs_diff"] <= 1e-5  # fp32, one request per call both ways
