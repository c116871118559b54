"""Slate policies of the closed loop: what scores the pool, and how the slate is picked from the scores.

| policy | scores | picks |
|---|---|---|
| ``random`` | none | a uniformly random slate (the floor) |
| ``oracle`` | the world's true probability | the best ones (the ceiling) |
| ``popularity`` | the item's smoothed action rate in this run's logs | the best ones |
| ``greedy`` | the ranker's probability (any Scorer) | the best ones |
| ``epsilon`` | the ranker's probability | a random slate with probability epsilon per visit, else greedy |
| ``thompson`` | the ranker's logit + the posterior mean of the Bayesian last layer (item offsets) + the draw's deviation from that mean, kept only upward by default (optimistic) | the best ones |

Every policy is a world :class:`~recbrew.world.policy.SlatePolicy`; it remembers what it showed (and the
scores it showed them with) for the loop's metrics and updates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from recbrew.simulate.ranker import LoopRanker
from recbrew.simulate.rows import RowBuilder
from recbrew.world.policy import SlateRequest, top_per_visit

POLICIES = ("random", "popularity", "greedy", "epsilon", "thompson", "oracle")
#: The world's own slates (the warm-up's logging policy): every drawn candidate, in the order drawn.
LOGGING = "logging"
#: Policies that rank with the loop's trained ranker.
RANKER_POLICIES = ("greedy", "epsilon", "thompson")


@dataclass
class Shown:
    """What one surface's visits showed: per impression member, item, visit and the policy's mean score."""

    surface: str
    who: np.ndarray
    item: np.ndarray
    visit: np.ndarray
    score: np.ndarray
    #: Final representation and task index of the ranker (Thompson's posterior update), or None.
    h: np.ndarray | None = None
    task: np.ndarray | None = None
    #: The network's own probability (Thompson's score adds the posterior's item offsets), or None.
    net: np.ndarray | None = None


@dataclass
class Popularity:
    """Each item's action rate in the run's own logs, shrunk to the global rate by ``prior`` impressions."""

    prior: float = 10.0
    impressions: np.ndarray = field(default_factory=lambda: np.zeros(0))
    actions: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def add(self, item: np.ndarray, acted: np.ndarray) -> None:
        size = int(item.max()) + 1 if len(item) else 0
        if size > len(self.impressions):
            pad = size - len(self.impressions)
            self.impressions = np.r_[self.impressions, np.zeros(pad)]
            self.actions = np.r_[self.actions, np.zeros(pad)]
        np.add.at(self.impressions, item, 1.0)
        np.add.at(self.actions, item, acted.astype(np.float64))

    def rate(self, item: np.ndarray) -> np.ndarray:
        base = self.actions.sum() / max(self.impressions.sum(), 1.0)
        imp, act = np.zeros(len(item)), np.zeros(len(item))
        known = item < len(self.impressions)
        imp[known], act[known] = self.impressions[item[known]], self.actions[item[known]]
        return (act + self.prior * base) / (imp + self.prior)


@dataclass
class LoopPolicy:
    """One of :data:`POLICIES`, with what it needs to score (ranker, rows, popularity) and what it showed today."""

    name: str
    pool_factor: int = 3
    seed: int = 0
    epsilon: float = 0.1
    #: Thompson: keep only the upward part of each draw's deviation from the posterior mean (optimistic sampling).
    optimistic: bool = True
    ranker: LoopRanker | None = None
    rows: RowBuilder | None = None
    popularity: Popularity | None = None
    #: Any Scorer (``score(requests) -> probabilities``) ranks instead of the loop's ranker (greedy only).
    scorer: object | None = None
    shown: list[Shown] = field(default_factory=list)

    def __post_init__(self):
        if self.name not in (*POLICIES, LOGGING):
            raise ValueError(f"unknown policy {self.name!r}")
        self.start_day(0)

    def start_day(self, day: int) -> None:
        """A fresh, seeded random stream per day (so a resumed run draws what an uninterrupted one drew)."""
        self.day = day
        self.rng = np.random.default_rng([self.seed, (*POLICIES, LOGGING).index(self.name), day])
        self.shown = []
        #: Distinct content items (not people) in today's candidate pools: the catalog the policy could show.
        self.pooled: set[int] = set()

    def choose(self, request: SlateRequest) -> np.ndarray:
        n = len(request)
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        if request.surface.item_type != "member":
            self.pooled.update(np.unique(request.item).tolist())
        h = task = net = None
        if self.name == LOGGING:
            mean = key = -np.arange(n, dtype=np.float64)
        elif self.name == "random":
            mean = key = self.rng.random(n)
        elif self.name == "oracle":
            mean = key = request.true_probability()
        elif self.name == "popularity":
            mean = key = self.popularity.rate(request.item)
        else:
            cols = self.rows.columns(request.surface.name, request.day, request.who, request.item, request.visit)
            if self.scorer is not None:
                mean = key = scorer_scores(self.scorer, cols)
            else:
                pool = np.bincount(request.visit, minlength=len(request.sizes))
                visits = np.unique(request.visit)
                slate = np.minimum(pool[visits], request.sizes[visits])
                scored = self.ranker.score(cols, representation=self.name == "thompson", slate=slate)
                mean, key, h, task, net = scored.prob, scored.prob, scored.h, scored.task, scored.prob
                if self.name == "thompson" and self.ranker.bayes is not None:
                    # The posterior mean (the network with each item's mean offset) and a draw around it.
                    bayes = self.ranker.bayes
                    mean = bayes.mean_probability(scored.prob, request.item, scored.task)
                    p = np.clip(scored.prob, 1e-6, 1 - 1e-6)
                    offset = bayes.offset_mean(request.item, scored.task)
                    draw = self._thompson_offsets(scored, request)
                    if self.optimistic:
                        draw = optimistic_draw(offset, draw)
                    key = np.log(p / (1 - p)) + draw
            if self.name == "epsilon":
                key = epsilon_keys(key, request.visit, self.epsilon, self.rng)
        pick = top_per_visit(request.visit, key, request.sizes)
        self.shown.append(Shown(request.surface.name, request.who[pick], request.item[pick], request.visit[pick],
                                np.asarray(mean)[pick], None if h is None else h[pick],
                                None if task is None else task[pick], None if net is None else net[pick]))
        return pick

    def _thompson_offsets(self, scored, request: SlateRequest) -> np.ndarray:
        bayes = self.ranker.bayes
        if bayes is None:
            return np.zeros(len(request))
        # One task per surface: one posterior, one draw per visit.
        _, group = np.unique(request.visit, return_inverse=True)
        return bayes.sample_offsets(scored.h, int(scored.task[0]), group, int(group.max()) + 1, self.rng,
                                    item=request.item)


def optimistic_draw(mean: np.ndarray, draw: np.ndarray) -> np.ndarray:
    """Optimistic Bayesian sampling (May et al., 2012): a posterior draw where it lies above the posterior mean,
    else the mean.

    A draw below the mean only hides a candidate, and a candidate not shown teaches nothing, so that half of the
    posterior's spread costs positives and buys no information. The upward half is kept: a candidate gains
    sd / sqrt(2 pi) on average, a lot for a new item (its offset's prior spread) and almost nothing for one
    the logs have seen often, so the policy explores where the posterior is wide.
    """
    return np.maximum(draw, mean)


def epsilon_keys(key: np.ndarray, visit: np.ndarray, epsilon: float, rng: np.random.Generator) -> np.ndarray:
    """Ranking keys where each visit, with probability ``epsilon``, is ranked at random instead of by score.

    Slates are picked within a visit only, so a visit's keys are either all scores or all random;
    epsilon 0 returns the scores unchanged, 1 a random slate everywhere.
    """
    key = np.asarray(key, dtype=np.float64)
    if not len(key):
        return key
    _, group = np.unique(visit, return_inverse=True)
    explore = rng.random(int(group.max()) + 1) < epsilon
    return np.where(explore[group], rng.random(len(key)), key)


def scorer_scores(scorer, cols: dict) -> np.ndarray:
    """Any Scorer on the requests of ``cols``: one probability per candidate, flattened in candidate order."""
    if not cols:
        return np.zeros(0)
    n = len(cols["task"])
    requests: Sequence[dict] = [{k: v[i] for k, v in cols.items()} | {"request_id": f"sim/{i}"} for i in range(n)]
    out = scorer.score(requests)
    return np.concatenate([np.asarray(p, dtype=np.float64) for p in out]) if out else np.zeros(0)
