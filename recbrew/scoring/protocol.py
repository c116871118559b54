"""`Scorer`: requests in, one probability per candidate out.

A request is one row of the examples built by `recbrew data build`, with the text view
(``prefix``, ``segments``) and the structured view (ids, categoricals, history sequences) merged
on ``request_id``. Scorers read what they need and ignore the rest, so eval and serving hand every
model the same requests.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from recbrew.examples.folder import Examples


@runtime_checkable
class Scorer(Protocol):
    """Anything that ranks: ``score(requests)[i][j]`` is P(positive) of candidate j of request i.

    For listwise requests the k probabilities are over the request's slots (they sum to 1);
    for binary requests each candidate's probability stands alone. A scorer that reads the structured
    view says so with ``views = ("structured",)`` (absent: it reads the text view), so a server knows
    which requests it can score.
    """

    name: str

    def score(self, requests: Sequence[dict]) -> list[np.ndarray]: ...


@runtime_checkable
class Generator(Protocol):
    """A model that also writes: ``generate(requests)[i]`` is its greedy answer to generative request i (the
    continuation of ``prefix + segments[0]`` up to the first line break). Language-model scorers are Generators;
    eval and serving ask for text only from those."""

    def generate(self, requests: Sequence[dict], max_new_tokens: int = 16) -> list[str]: ...


@runtime_checkable
class AsyncScorer(Protocol):
    """A Scorer that can also score without holding an event loop (the vLLM engine behind the gateway): the server
    awaits ``ascore``; it runs any other Scorer's ``score`` in a worker thread."""

    async def ascore(self, requests: Sequence[dict]) -> list[np.ndarray]: ...


@runtime_checkable
class AsyncGenerator(Protocol):
    """A Generator whose answers the server can await (``agenerate``), like `AsyncScorer`."""

    async def agenerate(self, requests: Sequence[dict], max_new_tokens: int | None = None) -> list[str]: ...


@runtime_checkable
class SharedClient(Protocol):
    """A scorer that talks HTTP through the client its server hands it (``client``, set for the app's life)."""

    client: object


def views(scorer) -> tuple[str, ...]:
    """The views of a request ``scorer`` reads: its ``views``, else the text view."""
    return tuple(getattr(scorer, "views", ("text",)))


def load_requests(examples_dir: str | Path, split: str = "test", tasks: Sequence[str] | None = None) -> list[dict]:
    """Rows of ``split`` (train, validation or test) with the text and structured views merged, optionally for
    some tasks only."""
    return Examples.open(examples_dir).requests(split, tasks)
