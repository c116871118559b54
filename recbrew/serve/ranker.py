"""`/v1/rank`: render a task's prompts and score the candidates through the vLLM engine.

The member's shared prefix is sent first as a prefix-only request, so its KV blocks exist in
vLLM's prefix cache before the candidates (prefix + segment each) are scored in one batch.
Prompts travel as token ids, tokenized exactly as the HF scorer does (prefix and segment apart).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import numpy as np

from recbrew.data.schema import ITEMS, MEMBERS
from recbrew.errors import UserError
from recbrew.serve.protocol import RankedCandidate, RankRequest, RankResponse
from recbrew.tasks import load_catalog
from recbrew.tasks.spec import Kind, TaskSpec
from recbrew.verbalize.environment import make_environment
from recbrew.verbalize.neutralize import neutralize_row
from recbrew.verbalize.render import HistoryEntry, RenderedPrompt, Renderer

_MEMBER_FIELDS = [c.name for c in MEMBERS.columns if c.name != "member_id"]
_ITEM_FIELDS = [c.name for c in ITEMS.columns if c.name != "item_id"] + ["author", "name", "headline"]
_NO_SOCIAL = {"engaged_count": 0, "engaged_names": [], "mutual_count": None, "mutual_names": [],
              "shared_company": False, "shared_school": False}


class RankError(UserError):
    """A bad /v1/rank request; ``status`` is the HTTP code to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class RankService:
    def __init__(self, *, engine_url: str, engine_key: str, served_model: str, model_dir: Path,
                 corpus_dir: Path | None = None, tasks_dir=None, prompts_dir=None, max_candidates: int = 100,
                 max_model_len: int = 4096, prefix_warmup: bool = True, catalog: dict[str, TaskSpec] | None = None,
                 default_style: str | None = None):
        from recbrew.models.tokenizers import answer_token_ids, load_tokenizer

        self.engine_url, self.served_model = engine_url, served_model
        self.headers = {"Authorization": f"Bearer {engine_key}"}
        # The served tasks: given (an examples folder's recorded specs), or a task folder, or the shipped catalog.
        self.catalog = dict(catalog) if catalog is not None else load_catalog(tasks_dir)
        #: The style a request renders in when it names none (e.g. the style its examples were built in).
        self.default_style = default_style
        self.env = make_environment(prompts_dir)
        self.tokenizer = load_tokenizer(str(model_dir))
        self.labels = {name: answer_token_ids(t, self.tokenizer) for name, t in self.catalog.items()
                       if t.kind != Kind.generative}
        self.max_candidates, self.max_model_len, self.prefix_warmup = max_candidates, max_model_len, prefix_warmup
        self.view, self.end = None, None
        if corpus_dir is not None:
            from recbrew.data.corpus import Corpus
            from recbrew.examples.requests import time_range
            from recbrew.verbalize.context import CorpusView

            corpus = Corpus.load(corpus_dir)
            self.view, self.end = CorpusView(corpus), time_range(corpus)[1]
        self._renderers: dict[tuple[str, str | None], Renderer] = {}
        self.client: httpx.AsyncClient | None = None

    # Prompt ---------------------------------------------------------------------------------------
    def _task(self, req: RankRequest) -> TaskSpec:
        task = self.catalog.get(req.task)
        if task is None:
            raise RankError(404, f"unknown task {req.task!r}; GET /v1/tasks lists the served tasks")
        if req.version is not None and req.version != task.version:
            raise RankError(409, f"task {task.name} is version {task.version} here, the request asked for {req.version}")
        return task

    def _renderer(self, task: TaskSpec, style: str | None) -> Renderer:
        key = (task.name, style)
        if key not in self._renderers:
            try:
                self._renderers[key] = Renderer(task, env=self.env, tokenizer=self.tokenizer, style=style)
            except UserError as exc:
                raise RankError(400, str(exc)) from None
        return self._renderers[key]

    def _inline_item(self, item: dict) -> dict:
        out = {f: None for f in _ITEM_FIELDS}
        out.update({k: v for k, v in neutralize_row(item).items() if k in out})
        if not out.get("item_type") or not out.get("title"):
            raise RankError(400, "an inline item needs at least item_type and title")
        return out

    def _corpus_item(self, item_id: int, fields: tuple[str, ...]) -> dict:
        if self.view is None:
            raise RankError(400, "this server has no Corpus: send inline items (start it with --corpus to use ids)")
        try:
            return dict(self.view.item(int(item_id), fields))
        except KeyError:
            raise RankError(404, f"unknown item {item_id}") from None

    def context(self, req: RankRequest, task: TaskSpec) -> tuple[dict, list[dict], list[HistoryEntry], dict | None]:
        fields = tuple(task.candidate_fields)
        if isinstance(req.member, int):
            if self.view is None:
                raise RankError(400, "this server has no Corpus: send an inline member (start it with --corpus)")
            if not self.view.has_member(req.member):
                raise RankError(404, f"unknown member {req.member}")
            t = req.at or self.end
            member, friends = self.view.member(req.member), self.view.connections(req.member, t)
            history, network = self.view.history(req.member, t, task), self.view.network(req.member, t)
        else:
            t = req.at or (self.end or 2**62)
            member = {f: None for f in _MEMBER_FIELDS}
            member.update({k: v for k, v in neutralize_row(req.member.profile).items() if k in member})
            history = self._inline_history(req, task, t, fields)
            network, friends = req.member.network, None
        candidates = []
        for cand in req.candidates:
            if isinstance(cand, dict):
                candidates.append({**self._inline_item(cand), "social": dict(_NO_SOCIAL)})
            elif isinstance(req.member, int):
                self._corpus_item(cand, fields)  # 404 before the social lookup
                candidates.append(self.view.candidate(req.member, int(cand), t, task, friends))
            else:
                candidates.append({**self._corpus_item(cand, fields), "social": dict(_NO_SOCIAL)})
        return member, candidates, history, network

    def _inline_history(self, req, task, t, fields) -> list[HistoryEntry]:
        from recbrew.verbalize.context import age_text

        out = []
        for event in req.member.history:
            if event.timestamp >= t:
                raise RankError(400, f"history event at {event.timestamp} is not before the request time {t}")
            for g, spec in enumerate(task.history.groups):
                if spec.action == event.action and (spec.surface is None or spec.surface == event.surface):
                    item = (self._inline_item(event.item) if event.item is not None
                            else self._corpus_item(event.item_id, fields) if event.item_id is not None else None)
                    if item is None:
                        raise RankError(400, "a history event needs item_id or item")
                    age = age_text(t - event.timestamp) if task.history.show_age else None
                    out.append(HistoryEntry(g, event.timestamp, item, age))
                    break
        return out

    # Engine ---------------------------------------------------------------------------------------
    async def _complete(self, body: dict) -> dict:
        body = {"model": self.served_model, **body}
        for attempt in range(2):
            try:
                resp = await self.client.post(f"{self.engine_url}/v1/completions", json=body, headers=self.headers,
                                              timeout=600)
                break
            except httpx.TimeoutException as exc:
                raise RankError(502, f"the vLLM engine did not answer in time: {type(exc).__name__}") from None
            except httpx.HTTPError as exc:
                # A pooled keep-alive connection the engine closed just as it was reused fails with a transport
                # error before the request is read; scoring has no side effects, so one retry is safe.
                if attempt or not isinstance(exc, httpx.TransportError):
                    raise RankError(502, f"the vLLM engine did not answer: {type(exc).__name__}: {exc}") from None
        if resp.status_code != 200:
            detail = resp.json().get("error", {}).get("message", resp.text) if resp.headers.get(
                "content-type", "").startswith("application/json") else resp.text
            raise RankError(502 if resp.status_code >= 500 else 400, f"vLLM: {detail}")
        return resp.json()

    def prompt(self, req: RankRequest) -> tuple[TaskSpec, RenderedPrompt]:
        """The task and the prompt a request renders to (what `rank` sends to the engine)."""
        task = self._task(req)
        member, candidates, history, network = self.context(req, task)
        prompt = self._renderer(task, req.style or self.default_style).render(
            member, candidates, history, network=network, max_tokens=req.max_tokens)
        return task, prompt

    async def rank(self, req: RankRequest) -> RankResponse:
        task = self._task(req)
        kind = task.kind
        if kind != Kind.generative and not req.candidates:
            raise RankError(400, "candidates is empty: send at least one item id or inline item")
        if len(req.candidates) > self.max_candidates:
            raise RankError(400, f"{len(req.candidates)} candidates: this server takes at most {self.max_candidates} "
                                 "per request (--max-candidates)")
        if kind == Kind.listwise and len(req.candidates) != task.k:
            raise RankError(400, f"task {task.name} is listwise over exactly {task.k} candidates, got {len(req.candidates)}")
        _, prompt = self.prompt(req)
        longest = prompt.max_tokens
        if longest >= self.max_model_len:
            raise RankError(400, f"the prompt is {longest} tokens, longer than the model's context of "
                                 f"{self.max_model_len - 1}; shorten the candidate text or lower max_tokens")
        ids = self.tokenizer([prompt.prefix, *prompt.segments], add_special_tokens=False)["input_ids"]
        prefix_ids, seg_ids = ids[0], ids[1:]
        base = {"id": f"rank-{uuid.uuid4().hex[:16]}", "model": self.served_model, "task": task.name,
                "task_version": task.version, "kind": kind.value, "prompt_tokens": longest,
                "history_kept": prompt.history_kept, "history_cut": prompt.history_cut}
        if kind == Kind.generative:
            out = await self._complete({"prompt": [prefix_ids + seg_ids[0]], "max_tokens": 24, "temperature": 0,
                                        "stop": ["\n"]})
            return RankResponse(**base, text=out["choices"][0]["text"].strip())
        if self.prefix_warmup and len(seg_ids) > 1:
            await self._complete({"prompt": [prefix_ids], "max_tokens": 1, "temperature": 0})
        labels = self.labels[task.name]
        out = await self._complete({
            "prompt": [prefix_ids + s for s in seg_ids], "max_tokens": 1, "temperature": 0,
            "logprobs": len(labels), "logprob_token_ids": labels, "return_tokens_as_token_ids": True,
        })
        choices = sorted(out["choices"], key=lambda c: c["index"])
        logprobs = np.array([[c["logprobs"]["top_logprobs"][0][f"token_id:{t}"] for t in labels] for c in choices])
        names = list(task.answer.words)
        ident = [c if isinstance(c, int) else i for i, c in enumerate(req.candidates)]
        if kind == Kind.listwise:
            slot = np.exp(logprobs[0] - logprobs[0].max())
            slot /= slot.sum()
            order = np.argsort(-slot, kind="stable")
            results = [RankedCandidate(candidate=ident[j], score=float(slot[j]),
                                       logprobs={names[j]: float(logprobs[0][j])}, rank=r + 1)
                       for r, j in enumerate(order)]
            return RankResponse(**base, results=results, choice=ident[int(order[0])])
        # Binary: P(positive word) normalized over the answer words.
        shifted = logprobs - logprobs.max(axis=1, keepdims=True)
        scores = np.exp(shifted[:, 0]) / np.exp(shifted).sum(axis=1)
        order = np.argsort(-scores, kind="stable")
        results = [RankedCandidate(candidate=ident[j], score=float(scores[j]),
                                   logprobs={w: float(lp) for w, lp in zip(names, logprobs[j], strict=True)},
                                   rank=r + 1) for r, j in enumerate(order)]
        return RankResponse(**base, results=results)

