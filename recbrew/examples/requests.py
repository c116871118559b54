"""From logged impressions to ranking requests: one row per (member, task, moment, candidates, labels).

Selection and grouping are vectorized over the interactions table; nothing here renders text.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc

from recbrew.data.corpus import Corpus
from recbrew.data.schema import TRUE_PROB_PREFIX
from recbrew.errors import ConfigError
from recbrew.tasks.spec import Kind, TaskSpec

DAY = 86_400


@dataclass(frozen=True)
class SplitPlan:
    """Temporal split: train before the cutoff; test from cutoff + gap to the end of the log."""

    cutoff: int
    gap_seconds: int
    end: int

    @classmethod
    def from_days(cls, start: int, end: int, test_days: float, gap_days: float) -> SplitPlan:
        if test_days <= 0 or gap_days < 0:
            raise ConfigError("--test-days must be > 0 and --gap-days >= 0")
        cutoff = int(end - (test_days + gap_days) * DAY)
        if cutoff <= start:
            raise ConfigError(
                f"the log spans {(end - start) / DAY:.1f} days: too short for {test_days:g} test days "
                f"after a {gap_days:g}-day gap; lower --test-days or --gap-days"
            )
        return cls(cutoff, int(gap_days * DAY), end)

    @property
    def test_start(self) -> int:
        return self.cutoff + self.gap_seconds

    def split_of(self, t: np.ndarray) -> np.ndarray:
        """'train', 'test', or '' (inside the gap: dropped)."""
        return np.where(t < self.cutoff, "train", np.where(t >= self.test_start, "test", ""))


@dataclass
class Requests:
    """Columnar requests of one task: ``offsets`` delimit each request's candidates."""

    member_id: np.ndarray
    timestamp: np.ndarray
    split: np.ndarray
    offsets: np.ndarray
    candidates: np.ndarray
    labels: np.ndarray
    true_probs: np.ndarray  # NaN where unknown
    target: list[str | None] | None = None
    hide_skill: list[str | None] | None = None

    def __len__(self) -> int:
        return len(self.member_id)

    def take(self, rows: np.ndarray) -> Requests:
        starts, lengths = self.offsets[rows], self.offsets[rows + 1] - self.offsets[rows]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        idx = np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths) + np.repeat(starts, lengths)
        def pick(values):
            return None if values is None else [values[i] for i in rows]

        return Requests(self.member_id[rows], self.timestamp[rows], self.split[rows], offsets,
                        self.candidates[idx], self.labels[idx], self.true_probs[idx],
                        pick(self.target), pick(self.hide_skill))


def task_rng(seed: int, task: TaskSpec) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(task.name.encode())])


def _item_types(corpus: Corpus, item_ids: np.ndarray) -> np.ndarray:
    ids = corpus.items["item_id"].to_numpy()
    types = corpus.items["item_type"].to_numpy(zero_copy_only=False).astype(str)
    order = np.argsort(ids)
    pos = np.clip(np.searchsorted(ids, item_ids, sorter=order), 0, len(ids) - 1)
    found = ids[order[pos]] == item_ids
    return np.where(found, types[order[pos]], "")


def _impressions(corpus: Corpus, task: TaskSpec) -> dict[str, np.ndarray]:
    """The task's labelled impressions: its surface and candidate type, positive or negative action."""
    inter = corpus.interactions
    action = inter["action"].to_numpy(zero_copy_only=False).astype(str)
    keep = np.isin(action, task.label.positive + task.label.negatives)
    if "surface" in inter.column_names:
        keep &= inter["surface"].to_numpy(zero_copy_only=False).astype(str) == task.surface
    rows = np.flatnonzero(keep)
    item = inter["item_id"].to_numpy()[rows]
    typed = _item_types(corpus, item) == task.candidate_type
    rows, item = rows[typed], item[typed]
    # True probability of a positive (synthetic world): the sum over the positive actions.
    cols = [TRUE_PROB_PREFIX + a for a in task.label.positive if TRUE_PROB_PREFIX + a in inter.column_names]
    probs = np.full(len(rows), np.nan) if not cols else sum(
        pc.fill_null(inter[c], np.nan).to_numpy().astype(np.float64)[rows] for c in cols)
    return {
        "member": inter["member_id"].to_numpy()[rows],
        "item": item,
        "ts": inter["timestamp"].to_numpy()[rows],
        "label": np.isin(action[rows], task.label.positive).astype(np.int8),
        "prob": probs,
    }


def _sessions(imp: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Group impressions of one member on one day (a session); returns sort order and group starts."""
    day = imp["ts"] // DAY
    order = np.lexsort((imp["ts"], day, imp["member"]))
    m, d = imp["member"][order], day[order]
    starts = np.flatnonzero(np.r_[True, (m[1:] != m[:-1]) | (d[1:] != d[:-1])])
    return order, starts


def pointwise(corpus: Corpus, task: TaskSpec, plan: SplitPlan) -> Requests:
    """One request per session: every labelled impression of that session is a candidate."""
    imp = _impressions(corpus, task)
    if len(imp["ts"]) == 0:
        return _empty()
    order, starts = _sessions(imp)
    s = {k: v[order] for k, v in imp.items()}
    t = s["ts"][starts]
    req = Requests(s["member"][starts], t, plan.split_of(t), np.r_[starts, len(order)], s["item"], s["label"], s["prob"])
    return req.take(np.flatnonzero(req.split != ""))


def listwise(corpus: Corpus, task: TaskSpec, plan: SplitPlan, rng: np.random.Generator) -> Requests:
    """Sessions with a positive: the positive plus k-1 real negative impressions, in random slots."""
    imp = _impressions(corpus, task)
    order, starts = _sessions(imp)
    sorted_ = {k: v[order] for k, v in imp.items()}
    ends = np.r_[starts[1:], len(order)]
    k = task.k
    neg_pool = np.flatnonzero(sorted_["label"] == 0)
    if len(neg_pool) == 0:
        return _empty()
    members, times, cands, labels, probs = [], [], [], [], []
    for s, e in zip(starts, ends, strict=True):
        lab = sorted_["label"][s:e]
        pos = np.flatnonzero(lab == 1)
        if len(pos) == 0:
            continue
        negs = s + np.flatnonzero(lab == 0)
        if len(negs) < k - 1:
            # Fill with other members' real impressions without the action, preferably from the same
            # day; never an item already in this session, never the same item twice.
            need = k - 1 - len(negs)
            fresh = neg_pool[~np.isin(sorted_["item"][neg_pool], sorted_["item"][s:e])]
            day = fresh[sorted_["ts"][fresh] // DAY == sorted_["ts"][s] // DAY]
            pool = day if len(np.unique(sorted_["item"][day])) >= need else fresh
            _, first = np.unique(sorted_["item"][pool], return_index=True)
            if len(first) < need:
                continue
            negs = np.concatenate([negs, rng.choice(pool[first], size=need, replace=False)])
        else:
            negs = rng.choice(negs, size=k - 1, replace=False)
        slot = np.concatenate([[s + pos[0]], negs])
        slot = slot[rng.permutation(k)]
        members.append(sorted_["member"][s])
        times.append(sorted_["ts"][s])
        cands.append(sorted_["item"][slot])
        labels.append((slot == s + pos[0]).astype(np.int8))
        probs.append(sorted_["prob"][slot])
    if not members:
        return _empty()
    t = np.array(times)
    req = Requests(np.array(members), t, plan.split_of(t), np.arange(0, k * len(members) + 1, k),
                   np.concatenate(cands), np.concatenate(labels), np.concatenate(probs))
    return req.take(np.flatnonzero(req.split != ""))


def generative(corpus: Corpus, task: TaskSpec, plan: SplitPlan, rng: np.random.Generator) -> Requests:
    """next_job_title: each positive action's item title; held_out_skill: one profile skill, hidden."""
    imp = _impressions(corpus, task)
    if task.generative.target == "next_job_title":
        # The first positive of each session: one prompt, one answer.
        rows = np.flatnonzero(imp["label"] == 1)
        rows = rows[np.lexsort((imp["ts"][rows], imp["ts"][rows] // DAY, imp["member"][rows]))]
        key = imp["member"][rows] * 100_000 + imp["ts"][rows] // DAY
        rows = np.sort(rows[np.r_[True, key[1:] != key[:-1]]])
        titles = corpus.items["title"].to_pylist()
        ids = corpus.items["item_id"].to_numpy()
        where = {int(i): r for r, i in enumerate(ids)}
        target = [titles[where[int(i)]] for i in imp["item"][rows]]
        t = imp["ts"][rows]
        req = Requests(imp["member"][rows], t, plan.split_of(t), np.zeros(len(rows) + 1, np.int64),
                       np.zeros(0, np.int64), np.zeros(0, np.int8), np.zeros(0), target, None)
        return req.take(np.flatnonzero(req.split != ""))
    # held_out_skill: one example per member and split, at their first session in that split.
    members = corpus.members
    if "skills" not in members.column_names:
        return _empty()
    headlines = (members["headline"].to_pylist() if "headline" in members.column_names else [None] * len(members))
    # Only skills the headline does not name can be held out: the profile must not give the answer.
    skills = {m: [s for s in (sk or []) if not (h and s in h)] for m, sk, h in
              zip(members["member_id"].to_pylist(), members["skills"].to_pylist(), headlines, strict=True)}
    order, starts = _sessions(imp)
    m, t = imp["member"][order][starts], imp["ts"][order][starts]
    split = plan.split_of(t)
    keep = split != ""
    m, t, split = m[keep], t[keep], split[keep]
    _, first = np.unique(np.char.add(m.astype(str), split.astype(str)), return_index=True)
    first.sort()
    rows = [i for i in first if len(skills.get(int(m[i])) or []) >= 1]
    target = [skills[int(m[i])][int(rng.integers(0, len(skills[int(m[i])])))] for i in rows]
    rows = np.array(rows, dtype=np.int64)
    return Requests(m[rows], t[rows], split[rows], np.zeros(len(rows) + 1, np.int64), np.zeros(0, np.int64),
                    np.zeros(0, np.int8), np.zeros(0), target, list(target))


def _empty() -> Requests:
    z = np.zeros(0, np.int64)
    return Requests(z, z, np.zeros(0, str), np.zeros(1, np.int64), z, np.zeros(0, np.int8), np.zeros(0), None, None)


def build_requests(corpus: Corpus, task: TaskSpec, plan: SplitPlan, seed: int) -> Requests:
    rng = task_rng(seed, task)
    if task.kind == Kind.binary:
        return pointwise(corpus, task, plan)
    if task.kind == Kind.listwise:
        return listwise(corpus, task, plan, rng)
    return generative(corpus, task, plan, rng)


def time_range(corpus: Corpus) -> tuple[int, int]:
    ts = corpus.interactions["timestamp"]
    if len(ts) == 0:
        raise ConfigError("the corpus has no interactions")
    return int(pc.min(ts).as_py()), int(pc.max(ts).as_py()) + 1

