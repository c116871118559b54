"""`/v1/rank`: render a task's prompts into a request row and rank its candidates with a Scorer.

The row is what `recbrew data build` writes for one request (the text view, plus the structured view
when the member and candidates come from the served Corpus), so any Scorer that eval compares can be
served: the vLLM engine (`EngineScorer`, the default of `recbrew serve`), an in-process HF model, or a
classic ranker. Synchronous Scorers run in a worker thread; generative tasks need a Generator.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
import numpy as np

from recbrew.data.corpus import Corpus
from recbrew.data.ids import ITEM, MEMBER, IdMap
from recbrew.data.schema import ITEMS, MEMBERS
from recbrew.errors import UserError
from recbrew.examples.build import structured_fields
from recbrew.examples.requests import time_range
from recbrew.models.tokenizers import load_tokenizer
from recbrew.scoring.protocol import AsyncGenerator, AsyncScorer, Generator, SharedClient, views
from recbrew.serve.protocol import (
    InlineMember,
    InlineNetwork,
    RankedCandidate,
    RankError,
    RankRequest,
    RankResponse,
)
from recbrew.tasks import load_catalog
from recbrew.tasks.spec import Kind, TaskSpec
from recbrew.verbalize.collab import require_models
from recbrew.verbalize.context import CorpusView, age_text
from recbrew.verbalize.environment import make_environment
from recbrew.verbalize.neutralize import neutralize, neutralize_row
from recbrew.verbalize.render import HistoryEntry, RenderedPrompt, Renderer

_MEMBER_FIELDS = [c.name for c in MEMBERS.columns if c.name != "member_id"]
_ITEM_FIELDS = [c.name for c in ITEMS.columns if c.name != "item_id"] + ["author", "name", "headline"]
_NO_SOCIAL = {"engaged_count": 0, "engaged_names": [], "mutual_count": None, "mutual_names": [],
              "shared_company": False, "shared_school": False}

#: The moment of a request without ``at`` on a server without a Corpus: after any event an inline history holds.
_NO_END = 2**62


def _inline_network(network: InlineNetwork | None) -> dict | None:
    """An inline member's network section, its names neutralized as `CorpusView.network` does the Corpus's."""
    if network is None or network == InlineNetwork():
        return None  # an empty network shows no section, as before
    return {"connections": network.connections, "actions": network.actions,
            "companies": [neutralize("company", c) for c in network.companies],
            "creators": [neutralize("name", c) for c in network.creators]}


class RankService:
    """Renders `/v1/rank` requests and ranks them with ``scorer``; without one, with the vLLM engine at
    ``engine_url`` (`EngineScorer`). ``tokenizer`` counts the prompt tokens (the engine's, or the one the examples
    were built with): a loaded tokenizer, or the model folder or name (`smollm2`) to load it from. ``collab``: the
    rating models of the tasks that declare ``stats.collab``, by task name."""

    def __init__(self, *, engine_url: str = "", engine_key: str = "", served_model: str = "", tokenizer,
                 corpus_dir: Path | None = None, tasks_dir=None, prompts_dir=None, max_candidates: int = 100,
                 max_model_len: int = 4096, prefix_warmup: bool = True, catalog: dict[str, TaskSpec] | None = None,
                 default_style: str | None = None, scorer=None, collab: dict | None = None):
        from recbrew.serve.engine_scorer import EngineScorer  # lazy: loads httpx

        self.engine_url, self.served_model = engine_url, served_model or getattr(scorer, "name", "")
        self.headers = {"Authorization": f"Bearer {engine_key}"}
        # The served tasks: given (an examples folder's recorded specs), or a task folder, or the shipped catalog.
        self.catalog = dict(catalog) if catalog is not None else load_catalog(tasks_dir)
        #: The style a request renders in when it names none (e.g. the style its examples were built in).
        self.default_style = default_style
        self.env = make_environment(prompts_dir)
        self.tokenizer = load_tokenizer(str(tokenizer)) if isinstance(tokenizer, str | Path) else tokenizer
        self.scorer = scorer if scorer is not None else EngineScorer(
            engine_url=engine_url, engine_key=engine_key, served_model=served_model, tokenizer=self.tokenizer,
            catalog=self.catalog, prefix_warmup=prefix_warmup)
        self.max_candidates, self.max_model_len = max_candidates, max_model_len
        self._client: httpx.AsyncClient | None = None
        self.view, self.end, self.ids = None, None, IdMap({})
        if corpus_dir is not None:
            corpus = Corpus.load(corpus_dir)
            self.view, self.end, self.ids = CorpusView(corpus), time_range(corpus)[1], corpus.ids
            # The rating models of tasks that declare stats.collab (`recbrew.verbalize.collab.load_models`).
            self.view.collab.update(collab or {})
            require_models(self.catalog, self.view.collab)
        self._renderers: dict[tuple[str, str | None], Renderer] = {}

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

    def _corpus_id(self, space: str, value: int | str) -> int:
        """The Corpus id of one of the user's ids (404 when the served Corpus has none such)."""
        found = self.ids.corpus_id(space, value)
        if found is None:
            kind = "" if self.ids.mapped(space) else f" (this Corpus's {space} ids are integers)"
            raise RankError(404, f"unknown {space} {value!r}{kind}")
        return found

    def resolve(self, req: RankRequest) -> RankRequest:
        """The request with the user's member and item ids replaced by the served Corpus's (see data/ids.py)."""
        if self.view is None or not (isinstance(req.member, str) or self.ids
                                     or any(isinstance(c, str) for c in req.candidates)):
            return req
        update = {"candidates": [c if isinstance(c, dict) else self._corpus_id(ITEM, c) for c in req.candidates]}
        if isinstance(req.member, int | str):
            update["member"] = self._corpus_id(MEMBER, req.member)
        elif any(e.item_id is not None for e in req.member.history):
            history = [e if e.item_id is None else e.model_copy(update={"item_id": self._corpus_id(ITEM, e.item_id)})
                       for e in req.member.history]
            update["member"] = req.member.model_copy(update={"history": history})
        return req.model_copy(update=update)

    def _time(self, req: RankRequest) -> int:
        """The request's moment: its ``at`` (0 included), else the end of the served Corpus."""
        if req.at is not None:
            return req.at
        return self.end if self.end is not None else _NO_END

    def context(self, req: RankRequest, task: TaskSpec) -> tuple[dict, list[dict], list[HistoryEntry], dict | None]:
        fields = tuple(task.candidate_fields)
        if not isinstance(req.member, InlineMember):
            if self.view is None:
                raise RankError(400, "this server has no Corpus: send an inline member (start it with --corpus)")
            if not self.view.has_member(req.member):
                raise RankError(404, f"unknown member {req.member}")
            t = self._time(req)
            member, friends = self.view.member(req.member), self.view.connections(req.member, t)
            history = self.view.history(req.member, t, task)
            network = {**self.view.network(req.member, t), "stats": self.view.member_stats(req.member, t, task)}
        else:
            t = self._time(req)
            member = {f: None for f in _MEMBER_FIELDS}
            member.update({k: v for k, v in neutralize_row(req.member.profile).items() if k in member})
            history = self._inline_history(req, task, t, fields)
            network, friends = _inline_network(req.member.network), None
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

    # Scorer -----------------------------------------------------------------------------------------
    @property
    def client(self) -> httpx.AsyncClient | None:
        return self._client

    @client.setter
    def client(self, client: httpx.AsyncClient | None) -> None:
        """The gateway's HTTP client, shared with an engine-backed scorer."""
        self._client = client
        if isinstance(self.scorer, SharedClient):
            self.scorer.client = client

    async def _score(self, row: dict) -> np.ndarray:
        if isinstance(self.scorer, AsyncScorer):
            return (await self.scorer.ascore([row]))[0]
        if "structured" in views(self.scorer) and "candidate_ids" not in row:
            raise RankError(400, f"the served model ({self.served_model}) scores the structured view of a request: "
                                 "send a member id and candidate ids of the served Corpus, not inline ones")
        return (await asyncio.to_thread(self.scorer.score, [row]))[0]

    async def _generate(self, row: dict) -> str:
        if isinstance(self.scorer, AsyncGenerator):
            return (await self.scorer.agenerate([row]))[0]
        if isinstance(self.scorer, Generator):
            return (await asyncio.to_thread(self.scorer.generate, [row]))[0]
        raise RankError(400, f"task is generative and the served model ({self.served_model}) ranks only")

    def prompt(self, req: RankRequest) -> tuple[TaskSpec, RenderedPrompt]:
        """The task and the prompt a request renders to (what `rank` sends to the engine)."""
        return self._prompt(self.resolve(req))

    def _prompt(self, req: RankRequest) -> tuple[TaskSpec, RenderedPrompt]:
        task = self._task(req)
        member, candidates, history, network = self.context(req, task)
        prompt = self._renderer(task, req.style or self.default_style).render(
            member, candidates, history, network=network, max_tokens=req.max_tokens)
        return task, prompt

    async def scored(self, req: RankRequest) -> tuple[TaskSpec, RenderedPrompt, np.ndarray | str]:
        """The task, the rendered prompt and the candidates' P(positive) (a generative task: the answer text)."""
        task = self._task(req)
        kind = task.kind
        if kind != Kind.generative and not req.candidates:
            raise RankError(400, "candidates is empty: send at least one item id or inline item")
        if len(req.candidates) > self.max_candidates:
            raise RankError(400, f"{len(req.candidates)} candidates: this server takes at most {self.max_candidates} "
                                 "per request (--max-candidates)")
        if kind == Kind.listwise and len(req.candidates) != task.k:
            raise RankError(400, f"task {task.name} is listwise over exactly {task.k} candidates, got {len(req.candidates)}")
        req = self.resolve(req)
        _, prompt = self._prompt(req)
        if prompt.max_tokens >= self.max_model_len:
            raise RankError(400, f"the prompt is {prompt.max_tokens} tokens, longer than the model's context of "
                                 f"{self.max_model_len - 1}; shorten the candidate text or lower max_tokens")
        row = self.request_row(req, task, prompt)
        if kind == Kind.generative:
            return task, prompt, await self._generate(row)
        return task, prompt, np.asarray(await self._score(row), dtype=np.float64)

    async def rank(self, req: RankRequest) -> RankResponse:
        ident = [i if isinstance(c, dict) else c for i, c in enumerate(req.candidates)]  # as the user named them
        task, prompt, probs = await self.scored(req)
        kind = task.kind
        base = {"id": f"rank-{uuid.uuid4().hex[:16]}", "model": self.served_model, "task": task.name,
                "task_version": task.version, "kind": kind.value, "prompt_tokens": prompt.max_tokens,
                "history_kept": prompt.history_kept, "history_cut": prompt.history_cut}
        if kind == Kind.generative:
            return RankResponse(**base, text=probs)
        names = list(task.answer.words)
        with np.errstate(divide="ignore"):
            logs = np.log(probs)
        order = np.argsort(-probs, kind="stable")
        if kind == Kind.listwise:
            # Each candidate's log-probability of being the chosen one: under its slot letter, or "choice" when the
            # task answers each option yes / no (scoring: options).
            keys = ["choice"] * len(probs) if task.segment_per_candidate else names
            results = [RankedCandidate(candidate=ident[j], index=int(j), score=float(probs[j]),
                                       logprobs={keys[j]: float(logs[j])}, rank=r + 1) for r, j in enumerate(order)]
            return RankResponse(**base, results=results, choice=ident[int(order[0])])
        # Binary: P(positive word) normalized over the answer words.
        with np.errstate(divide="ignore"):
            rest = np.log1p(-probs)
        results = [RankedCandidate(candidate=ident[j], index=int(j), score=float(probs[j]),
                                   logprobs={names[0]: float(logs[j]), names[1]: float(rest[j])}, rank=r + 1)
                   for r, j in enumerate(order)]
        return RankResponse(**base, results=results)

    def request_row(self, req: RankRequest, task: TaskSpec, prompt: RenderedPrompt) -> dict:
        """The request as a Scorer reads it: the text view, plus the structured view when the member and every
        candidate are ids in the served Corpus (what classic rankers score)."""
        row = {"request_id": "served", "task": task.name, "task_version": task.version, "kind": task.kind.value,
               "split_tag": task.split.value, "surface": task.surface, "prefix": prompt.prefix,
               "segments": prompt.segments, "labels": [], "target": None}
        ids = [c for c in req.candidates if isinstance(c, int)]
        if self.view is not None and isinstance(req.member, int) and len(ids) == len(req.candidates):
            t = self._time(req)
            lo, hi = self.view.actions_range(req.member, t)
            view = self.view
            row.update(structured_fields(view, req.member, t, ids, tuple(task.candidate_fields),
                                         (view.h_item, view.h_action, view.h_surface, view.h_ts), lo, hi, task=task))
        return row

