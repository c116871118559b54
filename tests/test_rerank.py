"""The rerank routes, called by the real `cohere` SDK: a classic ranker behind `recbrew serve` and an in-process
language model, ranked as `/v1/rank` ranks the same member and candidates; bad requests get 4xx JSON."""

from __future__ import annotations

import contextlib
import time

import cohere
import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from recbrew.scoring import load_requests
from recbrew.serve.app import create_app
from recbrew.serve.ranker import RankService

TASKS = ["feed_like", "jobs_apply_listwise"]
KEY = "rerank-key"


@pytest.fixture(scope="module")
def root(tmp_path_factory, small_setup):
    return small_setup(tmp_path_factory.mktemp("rerank"), TASKS, max_train=40, max_test=8)


@pytest.fixture(scope="module")
def lirank(root, quick_lirank):
    return quick_lirank(root / "ex", root / "lirank")


def _rows(root) -> list[dict]:
    return [r for r in load_requests(root / "ex", "test") if r["task"] == "feed_like" and len(r["candidate_ids"]) > 2]


def _ids_extension(row: dict) -> dict:
    return {"task": row["task"], "member": row["member_id"], "at": row["timestamp"], "documents_are_ids": True}


def test_the_cohere_sdk_reranks_as_v1_rank_ranks_on_recbrew_serve(root, lirank):
    from recbrew.serve.launch import start_serve, stop_serve

    rows = _rows(root)[:3]
    proc, url = start_serve(root / "lirank", "--corpus", str(root / "world"), "--api-key", KEY, timeout=120)
    try:
        v2 = cohere.ClientV2(api_key=KEY, base_url=url)
        v1 = cohere.Client(api_key=KEY, base_url=url)
        for row in rows:
            docs = [str(c) for c in row["candidate_ids"]]
            ranked = httpx.post(f"{url}/v1/rank", headers={"Authorization": f"Bearer {KEY}"}, timeout=60, json={
                "task": row["task"], "member": row["member_id"], "candidates": row["candidate_ids"],
                "at": row["timestamp"]}).json()["results"]
            got = v2.rerank(model=lirank.name, query="", documents=docs,
                            request_options={"additional_body_parameters": _ids_extension(row)})
            assert [r.index for r in got.results] == [r["index"] for r in ranked]
            np.testing.assert_allclose([r.relevance_score for r in got.results], [r["score"] for r in ranked],
                                       atol=1e-6)
            np.testing.assert_allclose([r.relevance_score for r in got.results], lirank.score([row])[0][
                [r.index for r in got.results]], atol=1e-5)
            # Cohere's v1 shape: top_n and the documents given back.
            top = v1.rerank(model=lirank.name, query="", documents=docs, top_n=2, return_documents=True,
                            request_options={"additional_body_parameters": _ids_extension(row)})
            assert [r.index for r in top.results] == [r["index"] for r in ranked[:2]]
            assert [r.document.text for r in top.results] == [docs[r["index"]] for r in ranked[:2]]
        # A classic ranker scores Corpus ids: text documents get a clear 400 and the server keeps serving.
        with pytest.raises(cohere.core.api_error.ApiError) as err:
            v2.rerank(model=lirank.name, query="data engineers", documents=["a post about Spark", "a job"],
                      request_options={"additional_body_parameters": {"task": "feed_like"}})
        assert err.value.status_code == 400 and "structured" in err.value.body["error"]["message"]
        assert v2.rerank(model=lirank.name, query="", documents=[str(c) for c in rows[0]["candidate_ids"]],
                         request_options={"additional_body_parameters": _ids_extension(rows[0])}).results
    finally:
        assert stop_serve(proc) == []


@contextlib.contextmanager
def _served(app):
    """``app`` on a free 127.0.0.1 port in a thread (uvicorn), for clients that bring their own HTTP stack."""
    import threading

    import uvicorn

    from recbrew.serve.engine import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_a_language_model_reranks_query_text_and_document_text(root):
    from recbrew.models.loading import load_model
    from recbrew.scoring.hf import HFScorer

    model, tok = load_model(str(root / "tiny"), device="cpu")
    service = RankService(tokenizer=root / "tiny", corpus_dir=root / "world", scorer=HFScorer(model, tok, name="tiny"))
    query = "Data scientist who reads about machine learning and hiring"
    docs = ["Our team shipped a new ranking model", "Hiring: senior data engineer", "Weekend hiking photos",
            "How we cut inference cost by half"]
    with _served(create_app(service, KEY)) as url, httpx.Client(base_url=url, timeout=120) as client:
        co = cohere.ClientV2(api_key=KEY, base_url=url)
        got = co.rerank(model="tiny", query=query, documents=docs, top_n=3,
                        request_options={"additional_body_parameters": {"task": "feed_like", "at": 10**9}})
        ranked = client.post("/v1/rank", headers={"Authorization": f"Bearer {KEY}"}, json={
            "task": "feed_like", "member": {"profile": {"headline": query}}, "at": 10**9,
            "candidates": [{"item_type": "post", "title": d} for d in docs]}).json()["results"]
        assert [r.index for r in got.results] == [r["index"] for r in ranked[:3]]
        np.testing.assert_allclose([r.relevance_score for r in got.results], [r["score"] for r in ranked[:3]],
                                   atol=1e-6)
        raw = client.post("/rerank", headers={"Authorization": f"Bearer {KEY}"},
                          json={"query": query, "documents": [{"text": d} for d in docs], "task": "feed_like",
                                "at": 10**9, "return_documents": True}).json()
        assert raw["usage"]["total_tokens"] > 0 and raw["meta"]["task"] == "feed_like"
        assert [r["document"]["text"] for r in raw["results"]] == [docs[r["index"]] for r in ranked]


def test_bad_rerank_requests_get_4xx_json_and_the_server_keeps_serving(root, lirank):
    row = _rows(root)[0]
    service = RankService(tokenizer=root / "tiny", corpus_dir=root / "world", scorer=lirank)
    auth = {"Authorization": f"Bearer {KEY}"}
    good = {"query": "", "documents": [str(c) for c in row["candidate_ids"]], **_ids_extension(row)}
    faults = [
        (400, "query: Field required", {k: v for k, v in good.items() if k != "query"}),
        (400, "documents: List should have at least 1 item", {**good, "documents": []}),
        (400, "documents: Input should be a valid list", {**good, "documents": "1,2"}),
        (400, "top_n: Input should be greater than or equal to 1", {**good, "top_n": 0}),
        (400, "top_n: Input should be a valid integer", {**good, "top_n": "3"}),
        (400, "return_documents: Input should be a valid boolean", {**good, "return_documents": "yes"}),
        (400, "Extra inputs are not permitted", {**good, "rerank_everything": True}),
        (404, "unknown task 'nope'", {**good, "task": "nope"}),
        (400, "is listwise: rerank scores each document on its own", {**good, "task": "jobs_apply_listwise"}),
        (404, "unknown member", {**good, "member": 10**12}),
        (404, "unknown item", {**good, "documents": ["999999999"]}),
        (400, "documents.0: give either text or id", {**good, "documents": [{"text": "a", "id": 3}]}),
        (400, "query is empty", {k: v for k, v in good.items() if k != "member"}),
        (400, "name the task", {**good, "task": None}),
        (400, "this server takes at most", {**good, "documents": [str(row["candidate_ids"][0])] * 101}),
        (400, "documents.0: Input should be a valid string", {**good, "documents": [5]}),
    ]
    with TestClient(create_app(service, KEY)) as client:
        for status, words, body in faults:
            resp = client.post("/v1/rerank", headers=auth, json=body)
            assert resp.status_code == status and words in resp.json()["error"]["message"], (body, resp.text)
            assert client.post("/v1/rerank", headers=auth, json=good).status_code == 200
        assert client.post("/v2/rerank", json=good).status_code == 401  # every rerank route wants the key
        assert client.post("/rerank", headers=auth, content=b"{oops", ).status_code == 400
