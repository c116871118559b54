"""`EngineScorer`: the running vLLM engine as the Scorer (and Generator) behind `/v1/rank`.

The member's shared prefix is sent first as a prefix-only request, so its KV blocks exist in
vLLM's prefix cache before the candidates (prefix + segment each) are scored in one batch.
Prompts travel as token ids, tokenized exactly as the HF scorer does (prefix and segment apart),
and the answer words are normalized by `recbrew.scoring.answers` like every other scorer's.

Binary requests go to vLLM's own scoring route (``/generative_scoring``: P of the first label token, softmax over
the label tokens, which is the binary P(positive)) where the engine has it; listwise requests, and engines without
it, take `/v1/completions` with ``logprob_token_ids``. ``RECBREW_ENGINE_SCORING=completions`` keeps every request
on the completions route. Both give the same scores (a test compares them).

It is asynchronous (``ascore`` / ``agenerate``) so the gateway's event loop never waits on the
engine; `RankService` runs any other (synchronous) Scorer in a worker thread instead.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence

import httpx
import numpy as np

from recbrew.scoring.answers import AnswerWords, normalize
from recbrew.serve.protocol import RankError

#: Set to ``completions`` to score every request through `/v1/completions` (vLLM's scoring route unused).
SCORING_ENV = "RECBREW_ENGINE_SCORING"


def _engine_error(resp: httpx.Response) -> RankError:
    """A failed engine answer as the gateway's error: 502 for the engine's own failures, 400 for the request's."""
    detail = resp.json().get("error", {}).get("message", resp.text) if resp.headers.get(
        "content-type", "").startswith("application/json") else resp.text
    return RankError(502 if resp.status_code >= 500 else 400, f"vLLM: {detail}")


class EngineScorer:
    def __init__(self, *, engine_url: str, engine_key: str, served_model: str, tokenizer, catalog,
                 prefix_warmup: bool = True, max_new_tokens: int = 24):
        self.engine_url, self.served_model, self.name = engine_url, served_model, served_model
        self.headers = {"Authorization": f"Bearer {engine_key}"}
        self.tokenizer, self.prefix_warmup, self.max_new_tokens = tokenizer, prefix_warmup, max_new_tokens
        self.answers = AnswerWords(tokenizer, catalog)
        #: The gateway's shared HTTP client (set for the app's lifetime).
        self.client: httpx.AsyncClient | None = None
        #: Whether binary requests use vLLM's /generative_scoring: None until the engine has been asked.
        self.native: bool | None = None if os.environ.get(SCORING_ENV, "native") != "completions" else False

    async def _post(self, route: str, body: dict) -> httpx.Response:
        """One engine call; a dropped pooled connection is retried once, other failures become `RankError`."""
        for attempt in range(2):
            try:
                return await self.client.post(f"{self.engine_url}{route}", json=body, headers=self.headers,
                                              timeout=600)
            except httpx.TimeoutException as exc:
                raise RankError(502, f"the vLLM engine did not answer in time: {type(exc).__name__}") from None
            except httpx.HTTPError as exc:
                # A pooled keep-alive connection the engine closed just as it was reused fails with a transport
                # error before the request is read; scoring has no side effects, so one retry is safe.
                if attempt or not isinstance(exc, httpx.TransportError):
                    raise RankError(502, f"the vLLM engine did not answer: {type(exc).__name__}: {exc}") from None
        raise AssertionError("unreachable")

    async def native_scores(self, prefix: list[int], segments: list[list[int]], labels: list[int]) -> np.ndarray | None:
        """P(first label) per segment from ``/generative_scoring``; None when this engine has no such route."""
        if self.native is False:
            return None
        resp = await self._post("/generative_scoring", {
            "model": self.served_model, "query": prefix, "items": segments, "label_token_ids": labels,
            "apply_softmax": True, "item_first": False, "add_special_tokens": False})
        if resp.status_code != 200:
            if self.native is None:  # an engine without the route (older vLLM): completions from now on
                self.native = False
                return None
            raise _engine_error(resp)
        self.native = True
        data = sorted(resp.json()["data"], key=lambda d: d["index"])
        return np.array([d["score"] for d in data], dtype=np.float64)

    async def complete(self, body: dict) -> dict:
        """One `/v1/completions` call; transport failures and engine errors become `RankError`."""
        resp = await self._post("/v1/completions", {"model": self.served_model, **body})
        if resp.status_code != 200:
            raise _engine_error(resp)
        return resp.json()

    def _ids(self, row: dict) -> tuple[list[int], list[list[int]]]:
        ids = self.tokenizer([row["prefix"], *row["segments"]], add_special_tokens=False)["input_ids"]
        return ids[0], ids[1:]

    async def ascore(self, requests: Sequence[dict]) -> list[np.ndarray]:
        """P(positive) per candidate (binary) or the slot distribution (listwise), as `Scorer.score`."""
        out = []
        for row in requests:
            prefix, segments = self._ids(row)
            if self.prefix_warmup and len(segments) > 1:
                await self.complete({"prompt": [prefix], "max_tokens": 1, "temperature": 0})
            labels = self.answers(row["task"])
            if row.get("kind") != "listwise" and len(labels) == 2:
                native = await self.native_scores(prefix, segments, labels)
                if native is not None:
                    out.append(native)
                    continue
            reply = await self.complete({
                "prompt": [prefix + s for s in segments], "max_tokens": 1, "temperature": 0,
                "logprobs": len(labels), "logprob_token_ids": labels, "return_tokens_as_token_ids": True,
            })
            choices = sorted(reply["choices"], key=lambda c: c["index"])
            logprobs = [[c["logprobs"]["top_logprobs"][0][f"token_id:{t}"] for t in labels] for c in choices]
            out.append(normalize(logprobs, row.get("kind") == "listwise"))
        return out

    async def agenerate(self, requests: Sequence[dict], max_new_tokens: int | None = None) -> list[str]:
        """Greedy answers to generative requests, up to the first line break (as `Generator.generate`)."""
        out = []
        for row in requests:
            prefix, segments = self._ids(row)
            reply = await self.complete({"prompt": [prefix + (segments[0] if segments else [])],
                                         "max_tokens": max_new_tokens or self.max_new_tokens, "temperature": 0,
                                         "stop": ["\n"]})
            out.append(reply["choices"][0]["text"].strip())
        return out

    # The synchronous Scorer and Generator, for callers without an event loop (a script, eval). Each call
    # runs its own loop and HTTP client; the gateway uses the asynchronous methods above with its own client.
    def score(self, requests: Sequence[dict]) -> list[np.ndarray]:
        return asyncio.run(self._own_client(self.ascore, requests))

    def generate(self, requests: Sequence[dict], max_new_tokens: int = 16) -> list[str]:
        return asyncio.run(self._own_client(self.agenerate, requests, max_new_tokens))

    async def _own_client(self, method, *args):
        shared = self.client
        async with httpx.AsyncClient() as client:
            self.client = client
            try:
                return await method(*args)
            finally:
                self.client = shared
