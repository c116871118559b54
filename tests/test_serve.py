"""A real vLLM server behind recbrew's gateway on 127.0.0.1: ranking, OpenAI routes, errors, load, shutdown."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from recbrew.scoring import load_requests
from recbrew.serve.engine import free_port
from recbrew.serve.launch import start_serve, stop_serve
from recbrew.serve.protocol import RankRequest

# Every test here talks to a real vLLM server, which takes 30-150 s to start on CPU.
pytestmark = pytest.mark.slow

RECBREW = Path(sys.executable).parent / "recbrew"
KEY = "test-key"
TASKS = ["feed_like", "jobs_apply_listwise", "pymk_connect"]


def _start(model: Path | str, world: Path, *extra: str):
    return start_serve(model, "--corpus", str(world), "--api-key", KEY, *extra)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, small_setup):
    root = small_setup(tmp_path_factory.mktemp("serve"), TASKS, max_train=5, max_test=10, world=(300, 14, 5),
                       tiny_seed=1)
    proc, url = _start(root / "tiny", root / "world", "--max-candidates", "8", "--max-model-len", "1024")
    yield {"root": root, "url": url, "proc": proc, "rows": load_requests(root / "ex", "test")}
    if proc.poll() is None:
        stop_serve(proc)


def _post(stack, body, key=KEY):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{stack['url']}/v1/rank", headers=headers, json=body, timeout=300)


def _hf_scores(model_dir: Path, world: Path, body: dict) -> np.ndarray:
    """The HF scorer on the prompt the server renders for ``body``."""
    from recbrew.models.loading import load_model
    from recbrew.scoring.hf import HFScorer
    from recbrew.serve.ranker import RankService

    svc = RankService(engine_url="", engine_key="", served_model="", tokenizer=model_dir, corpus_dir=world)
    task, prompt = svc.prompt(RankRequest(**body))
    model, tok = load_model(str(model_dir), device="cpu")
    row = {"prefix": prompt.prefix, "segments": prompt.segments, "task": task.name, "kind": task.kind.value}
    return HFScorer(model, tok, mode="multi").score([row])[0]


def _check_against_hf(stack, model_dir, rows):
    for row in rows:
        body = {"task": row["task"], "member": row["member_id"], "candidates": row["candidate_ids"],
                "at": row["timestamp"]}
        resp = _post(stack, body)
        assert resp.status_code == 200, resp.text
        data = resp.json()
        served = {r["candidate"]: r["score"] for r in data["results"]}
        expected = _hf_scores(model_dir, stack["root"] / "world", body)
        got = np.array([served[c] for c in row["candidate_ids"]])
        np.testing.assert_allclose(got, expected, atol=1e-3)
        ranked = [r["candidate"] for r in data["results"]]
        want = [row["candidate_ids"][j] for j in np.argsort(-expected, kind="stable")]
        gaps = np.diff(np.sort(expected))
        if len(gaps) == 0 or gaps.min() > 2e-3:  # order is only defined where scores are apart
            assert ranked == want


def _first(row: dict, k: int) -> dict:
    """The request with its slate's first ``k`` candidates (feed slates hold 10-30; the server takes 8 at most)."""
    return {**row, "candidate_ids": row["candidate_ids"][:k]}


def test_rank_equals_hf_scorer_on_recbrew_tiny(stack):
    rows = stack["rows"]
    feed = [r for r in rows if r["task"] == "feed_like" and len(r["candidate_ids"]) > 1]
    picked = [_first(feed[0], 1), _first(feed[1], 5), _first(feed[2], 8),
              next(r for r in rows if r["task"] == "jobs_apply_listwise"),
              _first(next(r for r in rows if r["task"] == "pymk_connect"), 8)]
    _check_against_hf(stack, stack["root"] / "tiny", picked)


def test_openai_client_against_the_same_server(stack):
    from openai import OpenAI

    client = OpenAI(base_url=f"{stack['url']}/v1", api_key=KEY)
    model = client.models.list().data[0].id
    completion = client.completions.create(model=model, prompt="Answer:", max_tokens=2, temperature=0)
    assert completion.choices[0].finish_reason in ("length", "stop") and completion.usage.completion_tokens >= 1
    chat = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hello"}], max_tokens=2)
    assert chat.choices[0].message.role == "assistant"
    stream = client.completions.create(model=model, prompt="Answer:", max_tokens=3, stream=True)
    assert len([c for c in stream]) >= 1


def test_bad_requests_get_4xx_json_and_serving_continues(stack):
    row = next(r for r in stack["rows"] if r["task"] == "feed_like" and len(r["candidate_ids"]) >= 2)
    good = {"task": "feed_like", "member": row["member_id"], "candidates": row["candidate_ids"][:2]}
    many_skills = {"name": "Probe", "skills": [f"skill{i}" for i in range(600)]}
    cases = [
        ({"task": "no_such_task", "member": row["member_id"], "candidates": [1]}, 404, "unknown task"),
        ({"task": "feed_like", "member": 10**9, "candidates": [1]}, 404, "unknown member"),
        ({"task": "feed_like", "member": row["member_id"], "candidates": []}, 400, "candidates is empty"),
        ({"task": "feed_like", "member": row["member_id"], "candidates": list(range(9))}, 400, "at most 8"),
        ({"task": "feed_like", "member": row["member_id"], "candidates": [10**9]}, 404, "unknown item"),
        ({"task": "feed_like", "member": {"profile": many_skills}, "candidates": [{"item_type": "post", "title": "x"}]},
         400, "longer than the model's context"),
        ({"task": "feed_like", "member": row["member_id"]}, 400, "candidates"),
    ]
    for body, status, message in cases:
        resp = _post(stack, body)
        assert resp.status_code == status, (body, resp.text)
        assert message in resp.json()["error"]["message"]
        assert _post(stack, good).status_code == 200
    malformed = httpx.post(f"{stack['url']}/v1/rank", content=b"{not json", timeout=60,
                           headers={"Authorization": f"Bearer {KEY}", "content-type": "application/json"})
    assert malformed.status_code == 400 and "malformed JSON" in malformed.json()["error"]["message"]
    for key in (None, "wrong"):
        resp = _post(stack, good, key=key)
        assert resp.status_code == 401 and "API key" in resp.json()["error"]["message"]
    resp = _post(stack, good)
    assert resp.status_code == 200 and len(resp.json()["results"]) == 2


def test_inline_member_and_items(stack):
    body = {"task": "feed_like", "at": 2_000_000_000,
            "member": {"profile": {"name": "Ada", "title": "Data Scientist", "skills": ["Python", "Spark"]},
                       "history": [{"item": {"item_type": "post", "title": "Spark tips"}, "action": "like",
                                    "surface": "feed", "timestamp": 1_999_000_000}]},
            "candidates": [{"item_type": "post", "title": "Spark in production"}, {"item_type": "post", "title": "Knitting"}]}
    resp = _post(stack, body)
    assert resp.status_code == 200, resp.text
    data = resp.json()
    assert [r["rank"] for r in data["results"]] == [1, 2] and data["history_kept"] == 1
    late = json.loads(json.dumps(body))
    late["member"]["history"][0]["timestamp"] = 2_100_000_000
    assert _post(stack, late).status_code == 400


def test_load_32_clients_30_seconds(stack):
    from recbrew.serve.load import run_load

    rows = [r for r in stack["rows"] if r["task"] == "feed_like"]

    def body(i):
        r = rows[i % len(rows)]
        return {"task": "feed_like", "member": r["member_id"], "candidates": r["candidate_ids"][:8], "at": r["timestamp"]}

    stats = run_load(f"{stack['url']}/v1/rank", body, clients=32, seconds=30, headers={"Authorization": f"Bearer {KEY}"})
    print("load:", json.dumps(stats))
    assert stats["errors"] == 0 and stats["requests"] > 32


def test_port_in_use_and_bad_model_are_one_line_errors(stack, tmp_path):
    port = stack["url"].rsplit(":", 1)[1]
    out = subprocess.run([str(RECBREW), "serve", str(stack["root"] / "tiny"), "--port", port], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and "already in use" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    out = subprocess.run([str(RECBREW), "serve", str(tmp_path), "--port", str(free_port())], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and "not found" in out.stderr


def test_the_gateway_port_is_held_from_before_the_engine_starts():
    """`bind_port` listens at once, so no process the engine starts can take the port; a second bind is refused."""
    import socket

    from recbrew.errors import UserError
    from recbrew.serve.engine import bind_port

    sock = bind_port("127.0.0.1", 0)
    try:
        port = sock.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # queued in the backlog until the gateway accepts
        with pytest.raises(UserError, match="already in use"):
            bind_port("127.0.0.1", port)
    finally:
        sock.close()


def test_sigterm_stops_every_child(stack):
    # Runs last in this module: it stops the shared server.
    alive = stop_serve(stack["proc"])
    assert alive == []
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{stack['url']}/health", timeout=2)


def test_rank_equals_hf_scorer_on_smollm2(stack):
    from recbrew.models.loading import resolve

    proc, url = _start("smollm2", stack["root"] / "world", "--max-candidates", "8")
    try:
        rows = stack["rows"]
        picked = [_first(next(r for r in rows if r["task"] == "feed_like" and len(r["candidate_ids"]) > 1), 4),
                  next(r for r in rows if r["task"] == "jobs_apply_listwise")]
        _check_against_hf({**stack, "url": url}, resolve("smollm2"), picked)
    finally:
        assert stop_serve(proc) == []


_VLLM_SCRIPT = """
import json, sys
from recbrew.examples.folder import Examples
from recbrew.scoring import load_requests
from recbrew.serve.vllm_scorer import VLLMScorer

if __name__ == "__main__":
    rows = [r for r in load_requests(sys.argv[2], "test") if r["kind"] != "generative"][:6]
    scorer = VLLMScorer(sys.argv[1], max_model_len=2048, catalog=Examples.open(sys.argv[2]).catalog())
    print("RESULT " + json.dumps([p.tolist() for p in scorer.score(rows)]))
"""


def test_vllm_scorer_equals_hf_scorer(stack, tmp_path):
    from recbrew.models.loading import load_model
    from recbrew.scoring.hf import HFScorer

    script = tmp_path / "score_with_vllm.py"
    script.write_text(_VLLM_SCRIPT)
    out = subprocess.run([sys.executable, str(script), str(stack["root"] / "tiny"), str(stack["root"] / "ex")],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    served = json.loads(next(ln for ln in out.stdout.splitlines() if ln.startswith("RESULT "))[7:])
    rows = [r for r in load_requests(stack["root"] / "ex", "test") if r["kind"] != "generative"][:6]
    model, tok = load_model(str(stack["root"] / "tiny"), device="cpu")
    expected = HFScorer(model, tok, mode="multi").score(rows)
    for got, want in zip(served, expected, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-3)


def test_engine_call_retries_one_dropped_connection_then_answers_502():
    """A keep-alive connection the engine closed as it was reused is retried once; a second failure is a 502."""
    import asyncio

    from recbrew.serve.engine_scorer import EngineScorer
    from recbrew.serve.protocol import RankError

    failures = {"left": 1}
    calls = []

    def engine(request):
        calls.append(json.loads(request.content))
        if failures["left"]:
            failures["left"] -= 1
            raise httpx.ReadError("")
        return httpx.Response(200, json={"choices": []})

    scorer = EngineScorer(engine_url="http://engine", engine_key="k", served_model="ranker", tokenizer=None,
                          catalog={})

    async def complete():
        async with httpx.AsyncClient(transport=httpx.MockTransport(engine)) as client:
            scorer.client = client
            return await scorer.complete({"prompt": [1, 2]})

    assert asyncio.run(complete()) == {"choices": []}
    assert len(calls) == 2 and calls[0] == {"model": "ranker", "prompt": [1, 2]}
    failures["left"] = 2
    with pytest.raises(RankError, match="did not answer: ReadError") as err:
        asyncio.run(complete())
    assert err.value.status == 502


def test_vllms_scoring_route_and_the_completions_route_give_the_same_scores(stack):
    """Binary requests go to vLLM's /generative_scoring where the engine has it; the completions route with
    logprob_token_ids (listwise requests, older engines) gives the same P(positive)."""
    import asyncio

    from recbrew.examples.folder import Examples
    from recbrew.models.tokenizers import load_tokenizer
    from recbrew.serve.engine import VLLMServer
    from recbrew.serve.engine_scorer import EngineScorer

    root = stack["root"]
    rows = [_first(r, 6) for r in stack["rows"] if r["task"] == "feed_like" and len(r["candidate_ids"]) > 1][:4]
    catalog = Examples.open(root / "ex").catalog()
    engine = VLLMServer(root / "tiny", max_model_len=1024).start()
    try:
        async def both():
            async with httpx.AsyncClient() as client:
                scorers = []
                for native in (None, False):
                    scorer = EngineScorer(engine_url=engine.url, engine_key=engine.api_key,
                                          served_model=engine.served_name, tokenizer=load_tokenizer(str(root / "tiny")),
                                          catalog=catalog)
                    scorer.client, scorer.native = client, native
                    scorers.append((scorer, await scorer.ascore(rows)))
                return scorers

        (native, by_native), (plain, by_completions) = asyncio.run(both())
        # The synchronous Scorer (a script's or eval's way in): its own loop and client, the same scores.
        from recbrew.scoring.protocol import AsyncScorer, Scorer

        assert isinstance(native, Scorer) and isinstance(native, AsyncScorer)
        by_sync = native.score(rows)
    finally:
        engine.stop()
    assert native.native is True and plain.native is False  # the route was there, and was used
    for a, b, c in zip(by_native, by_completions, by_sync, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
        np.testing.assert_allclose(a, c, atol=1e-6)


def test_tensor_parallel_and_engine_args_reach_the_vllm_command(tmp_path):
    from recbrew.errors import UserError
    from recbrew.serve.engine import VLLMServer
    from recbrew.serve.server import engine_command_args

    args = engine_command_args(2, ["--pipeline-parallel-size 2", "--gpu-memory-utilization 0.8"])
    assert args == ["--tensor-parallel-size", "2", "--pipeline-parallel-size", "2", "--gpu-memory-utilization", "0.8"]
    assert engine_command_args() == []
    cmd = VLLMServer(tmp_path, extra_args=args).command()
    assert cmd[cmd.index("--tensor-parallel-size") + 1] == "2" and "--pipeline-parallel-size" in cmd
    with pytest.raises(UserError, match="at least 1"):
        engine_command_args(0)
