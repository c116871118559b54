"""The rerank routes (`/v1/rerank`, `/v2/rerank`, `/rerank`): Cohere / Jina / vLLM clients call a recbrew task.

A rerank request is a `/v1/rank` request in another shape: the query becomes the member (its text as the inline
member's headline, or a Corpus member named by ``member``), the documents the candidates (text as inline items of
the task's candidate type, or Corpus item ids), and the answer lists each document's index and P(positive), best
first, as those clients read it.
"""

from __future__ import annotations

import uuid

import numpy as np

from recbrew.data.ids import ITEM, IdMap
from recbrew.serve.protocol import RankError, RankRequest, RerankRequest, RerankResponse, RerankResult
from recbrew.tasks.spec import Kind, TaskSpec


def rerank_task(catalog: dict[str, TaskSpec], name: str | None) -> TaskSpec:
    """The task a rerank request ranks with: ``name``, else the only binary task served."""
    binary = sorted(t.name for t in catalog.values() if t.kind == Kind.binary)
    if name is None:
        if len(binary) == 1:
            return catalog[binary[0]]
        raise RankError(400, "name the task: add \"task\" (one of the binary tasks of /v1/tasks: "
                             f"{', '.join(binary[:8]) or '-'}{', ...' if len(binary) > 8 else ''}) to the request")
    task = catalog.get(name)
    if task is None:
        raise RankError(404, f"unknown task {name!r}; GET /v1/tasks lists the served tasks")
    if task.kind != Kind.binary:
        raise RankError(400, f"task {name!r} is {task.kind.value}: rerank scores each document on its own, so it "
                             "takes a binary task")
    return task


def rank_request(req: RerankRequest, task: TaskSpec, ids: IdMap) -> RankRequest:
    """The `/v1/rank` request a rerank request stands for. Rerank clients send documents as strings only: with
    ``documents_are_ids`` each is read as an item id of the served Corpus (``ids``: its id spaces)."""
    candidates = []
    for i, doc in enumerate(req.documents):
        if isinstance(doc, str):
            if not req.documents_are_ids:
                candidates.append(_item(task, doc))
            else:
                candidates.append(ids.from_text(ITEM, doc))
        elif doc.id is not None and doc.text is None:
            candidates.append(doc.id)
        elif doc.text is not None and doc.id is None:
            candidates.append(_item(task, doc.text))
        else:
            raise RankError(400, f"documents.{i}: give either text or id")
    if req.member is not None:
        member = req.member
    elif req.query.strip():
        member = {"profile": {"headline": req.query}}
    else:
        raise RankError(400, "query is empty: send the text to rank the documents for, or a Corpus member id as "
                             "\"member\"")
    return RankRequest(task=task.name, member=member, candidates=candidates, at=req.at)


def _item(task: TaskSpec, text: str) -> dict:
    return {"item_type": task.candidate_type or "item", "title": text}


async def rerank(service, req: RerankRequest) -> RerankResponse:
    """Rank ``req``'s documents with ``service`` (a `RankService`); the best ``top_n`` first."""
    task = rerank_task(service.catalog, req.task)
    _, prompt, probs = await service.scored(rank_request(req, task, service.ids))
    order = np.argsort(-probs, kind="stable")[: req.top_n]
    results = []
    for j in order:
        doc = req.documents[int(j)]
        shown = None
        if req.return_documents:
            shown = {"text": doc} if isinstance(doc, str) else doc.model_dump(exclude_none=True)
        results.append(RerankResult(index=int(j), relevance_score=float(probs[j]), document=shown))
    tokens = int((prompt.prefix_tokens or 0) + sum(prompt.segment_tokens or []))
    return RerankResponse(id=f"rerank-{uuid.uuid4().hex[:16]}", model=service.served_model, results=results,
                          usage={"total_tokens": tokens, "prompt_tokens": tokens},
                          meta={"api_version": {"version": "2"}, "billed_units": {"search_units": 1},
                                "task": task.name, "task_version": task.version})
