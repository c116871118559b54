"""`/v1/rank` served by Scorers other than the vLLM engine: a classic ranker and an in-process HF model.

No engine process here: the gateway app runs in-process (FastAPI's TestClient) on a small world.
"""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from recbrew.scoring import load_requests
from recbrew.serve.app import create_app
from recbrew.serve.protocol import RankRequest
from recbrew.serve.ranker import RankService

TASKS = ["feed_like", "jobs_apply", "jobs_apply_listwise", "jobs_next_title"]


@pytest.fixture(scope="module")
def root(tmp_path_factory, small_setup):
    return small_setup(tmp_path_factory.mktemp("serve-scorers"), TASKS, max_train=40, max_test=6)


@pytest.fixture(scope="module")
def lirank(root, quick_lirank):
    return quick_lirank(root / "ex", root / "lirank")


def _client(root, scorer) -> TestClient:
    service = RankService(tokenizer=root / "tiny", corpus_dir=root / "world", scorer=scorer)
    return TestClient(create_app(service))


def _body(row: dict) -> dict:
    return {"task": row["task"], "member": row["member_id"], "candidates": row["candidate_ids"], "at": row["timestamp"]}


def test_a_classic_ranker_is_served_and_scores_as_in_eval(root, lirank):
    """The served row's structured view is the examples' own: LiRank gives the same scores served as in eval."""
    rows = [r for r in load_requests(root / "ex", "test") if r["kind"] != "generative"]
    assert {r["kind"] for r in rows} == {"binary", "listwise"}
    with _client(root, lirank) as client:
        assert client.get("/health").json() == {"status": "ok"}
        assert client.get("/v1/models").json()["data"][0]["id"] == lirank.name
        for row in rows:
            resp = client.post("/v1/rank", json=_body(row))
            assert resp.status_code == 200, resp.text
            served = {r["candidate"]: r["score"] for r in resp.json()["results"]}
            got = np.array([served[c] for c in row["candidate_ids"]])
            np.testing.assert_allclose(got, lirank.score([row])[0], atol=1e-5)
        # Inline items have no structured view for a classic ranker: a clear 4xx, and the server keeps serving.
        bad = client.post("/v1/rank", json={**_body(rows[0]), "candidates": [{"item_type": "post", "title": "x"}]})
        assert bad.status_code == 400 and "structured" in bad.json()["error"]["message"]
        gen = next(r for r in load_requests(root / "ex", "test") if r["kind"] == "generative")
        refused = client.post("/v1/rank", json={"task": gen["task"], "member": gen["member_id"], "candidates": []})
        assert refused.status_code == 400 and "ranks only" in refused.json()["error"]["message"]
        assert client.post("/v1/rank", json=_body(rows[0])).status_code == 200


def test_an_in_process_language_model_is_served_and_generates(root):
    from recbrew.models.loading import load_model
    from recbrew.scoring.hf import HFScorer

    model, tok = load_model(str(root / "tiny"), device="cpu")
    scorer = HFScorer(model, tok, mode="multi", name="tiny")
    service = RankService(tokenizer=root / "tiny", corpus_dir=root / "world", scorer=scorer)
    row = next(r for r in load_requests(root / "ex", "test") if r["kind"] == "binary")
    task, prompt = service.prompt(RankRequest(**_body(row)))
    expected = scorer.score([{"task": task.name, "kind": "binary", "prefix": prompt.prefix,
                              "segments": prompt.segments}])[0]
    gen = next(r for r in load_requests(root / "ex", "test") if r["kind"] == "generative")
    with TestClient(create_app(service)) as client:
        data = client.post("/v1/rank", json=_body(row)).json()
        served = {r["candidate"]: r for r in data["results"]}
        np.testing.assert_allclose([served[c]["score"] for c in row["candidate_ids"]], expected, atol=1e-6)
        first = served[row["candidate_ids"][0]]
        assert np.exp(list(first["logprobs"].values())).sum() == pytest.approx(1.0, abs=1e-5)
        text = client.post("/v1/rank", json={"task": gen["task"], "member": gen["member_id"], "candidates": [],
                                             "at": gen["timestamp"]}).json()
        assert isinstance(text["text"], str)
        # The completion routes need the engine: not there when an in-process Scorer serves.
        assert client.post("/v1/completions", json={"prompt": "x"}).status_code == 404


def test_recbrew_serve_runs_a_classic_ranker_without_an_engine(root, lirank):
    import httpx

    from recbrew.serve.launch import start_serve, stop_serve

    row = next(r for r in load_requests(root / "ex", "test") if r["kind"] == "binary")
    proc, url = start_serve(root / "lirank", "--corpus", str(root / "world"), timeout=120)
    try:
        resp = httpx.post(f"{url}/v1/rank", json=_body(row), timeout=60)
        assert resp.status_code == 200, resp.text
        served = {r["candidate"]: r["score"] for r in resp.json()["results"]}
        np.testing.assert_allclose([served[c] for c in row["candidate_ids"]], lirank.score([row])[0], atol=1e-5)
        assert httpx.post(f"{url}/v1/rank", json={**_body(row), "task": "nope"}, timeout=60).status_code == 404
    finally:
        assert stop_serve(proc) == []
