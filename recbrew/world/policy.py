"""The slate-policy hook of the world: who chooses and orders what a visit shows.

By default the world shows each visit the items it drew for it (``Simulator.run_day`` without a
policy). With a :class:`SlatePolicy`, each visit draws ``pool_factor`` times its slate size as a
candidate pool (the same sources: social proof, targeting, quality-weighted random), and the
policy returns which candidates fill the slate and in which order; the world then draws the
outcomes from its hidden probabilities, position effects included.

The world knows nothing of rankers: :class:`RandomPolicy` (the floor) and :class:`OraclePolicy`
(the true probabilities, the ceiling) live here; rankers' policies live in ``recbrew.simulate``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from recbrew.world.config import SurfaceSpec


@dataclass
class SlateRequest:
    """The candidate pools of one surface's visits on one day, flattened: one entry per candidate."""

    day: int
    surface: SurfaceSpec
    #: Member, item and visit index of each candidate; visits ascend (a visit's pool is contiguous).
    who: np.ndarray
    item: np.ndarray
    visit: np.ndarray
    #: Slate size of every visit (indexed by visit); a pool smaller than its slate shows what it has.
    sizes: np.ndarray
    #: True probability of any action per candidate in the first slot (the oracle's view; others must not call it).
    true_probability: Callable[[], np.ndarray]

    def __len__(self) -> int:
        return len(self.who)


class SlatePolicy(Protocol):
    """Chooses and orders the slate of every visit from its candidate pool."""

    name: str
    #: Candidates drawn per slot of the slate.
    pool_factor: int

    def choose(self, request: SlateRequest) -> np.ndarray:
        """Indices into the request's candidates: visit by visit (ascending), in slot order within a visit."""
        ...


def top_per_visit(visit: np.ndarray, scores: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The ``sizes[v]`` best-scored candidates of each visit ``v``, best first, visits ascending.

    Ties keep pool order, so the result is a pure function of the scores.
    """
    if len(visit) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((np.arange(len(visit)), -np.asarray(scores, dtype=np.float64), visit))
    v = visit[order]
    starts = np.flatnonzero(np.r_[True, v[1:] != v[:-1]])
    rank = np.arange(len(v)) - np.repeat(starts, np.diff(np.r_[starts, len(v)]))
    return order[rank < sizes[v]]


def check_pick(pick, request: SlateRequest) -> np.ndarray:
    """A policy's answer as int64 indices; a broken answer (out of range, repeats, too many, visits out of
    order) is a bug in the policy and raises ValueError."""
    pick = np.asarray(pick, dtype=np.int64).reshape(-1)
    n = len(request)
    if len(pick) == 0:
        return pick
    if pick.min() < 0 or pick.max() >= n:
        raise ValueError(f"policy picked candidate indices outside [0, {n})")
    if len(np.unique(pick)) != len(pick):
        raise ValueError("policy picked a candidate twice")
    v = request.visit[pick]
    if (np.diff(v) < 0).any():
        raise ValueError("policy must return the slates visit by visit, in ascending visit order")
    shown = np.bincount(v, minlength=len(request.sizes))
    if (shown > request.sizes).any():
        raise ValueError("policy filled a slate beyond its size")
    return pick


@dataclass
class RandomPolicy:
    """A uniformly random slate from each pool: the floor."""

    seed: int = 0
    name: str = "random"
    pool_factor: int = 3

    def start_day(self, day: int) -> None:
        self.rng = np.random.default_rng([self.seed, day])

    def choose(self, request: SlateRequest) -> np.ndarray:
        if not hasattr(self, "rng"):
            self.start_day(request.day)
        return top_per_visit(request.visit, self.rng.random(len(request)), request.sizes)


@dataclass
class OraclePolicy:
    """The candidates with the highest true probability of any action, best first: the ceiling."""

    name: str = "oracle"
    pool_factor: int = 3

    def choose(self, request: SlateRequest) -> np.ndarray:
        if len(request) == 0:
            return np.zeros(0, dtype=np.int64)
        return top_per_visit(request.visit, request.true_probability(), request.sizes)
