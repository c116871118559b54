"""From logged impressions to ranking requests: one row per (member, task, moment, candidates, labels).

A request is a *session* (one member's labelled impressions of one day), or with ``one_target`` a
single labelled impression. Each request keeps its moment (timestamp) and its record (the row of
the interactions table it starts at), which the split rule and the history window read
(`recbrew.examples.protocol`). Selection and grouping are vectorized; nothing here renders text.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc

from recbrew.data.corpus import Corpus
from recbrew.data.schema import TRUE_PROB_PREFIX
from recbrew.errors import ConfigError
from recbrew.examples.history import HistoryIndex
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

    def assign(self, member: np.ndarray, ts: np.ndarray, pos: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The `SplitRule` interface: the split of each request by its time."""
        return self.split_of(ts)


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
    #: The request's record: the row of the interactions table of its first (or only) impression.
    pos: np.ndarray | None = None

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
                        pick(self.target), pick(self.hide_skill), None if self.pos is None else self.pos[rows])

    def with_splits(self, rule, rng: np.random.Generator) -> Requests:
        """Requests labelled by ``rule`` (a `SplitPlan` or `SplitRule`), those it drops left out."""
        split = rule.assign(self.member_id, self.timestamp, self.pos, rng)
        req = Requests(self.member_id, self.timestamp, split, self.offsets, self.candidates, self.labels,
                       self.true_probs, self.target, self.hide_skill, self.pos)
        return req.take(np.flatnonzero(split != ""))


def task_rng(seed: int, task: TaskSpec) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(task.name.encode())])


def _item_types(corpus: Corpus, item_ids: np.ndarray) -> np.ndarray:
    ids = corpus.items["item_id"].to_numpy()
    types = corpus.items["item_type"].to_numpy(zero_copy_only=False).astype(str)
    order = np.argsort(ids)
    pos = np.clip(np.searchsorted(ids, item_ids, sorter=order), 0, len(ids) - 1)
    found = ids[order[pos]] == item_ids
    return np.where(found, types[order[pos]], "")


def _impressions(corpus: Corpus, task: TaskSpec, plan=None) -> dict[str, np.ndarray]:
    """The task's labelled impressions: its surface and candidate type, positive or negative action; those the
    protocol ``plan`` selects (see `_select`), in file order."""
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
    imp = {
        "member": inter["member_id"].to_numpy()[rows],
        "item": item,
        "ts": inter["timestamp"].to_numpy()[rows],
        "label": np.isin(action[rows], task.label.positive).astype(np.int8),
        "prob": probs,
        "row": rows.astype(np.int64),
    }
    return _select(corpus, imp, plan)


def _select(corpus: Corpus, imp: dict[str, np.ndarray], plan) -> dict[str, np.ndarray]:
    """The labelled records that may become requests: with ``plan.min_position`` N only those with at least N
    earlier actions of their member (by record for order rules, by time otherwise: what the history sees), then
    with ``plan.last_records`` K only the last K of them (by record; by time, then record, for time rules)."""
    min_position = getattr(plan, "min_position", 0) or 0
    last = getattr(plan, "last_records", None)
    if (not min_position and last is None) or len(imp["row"]) == 0:
        return imp
    by_order = bool(getattr(plan, "by_order", False))
    rows = np.arange(len(imp["row"]))
    if min_position:
        position = HistoryIndex(corpus, by_order).count_before(imp["member"], imp["ts"], imp["row"])
        rows = rows[position >= min_position]
    if last is not None and len(rows) > last:
        key = (imp["row"][rows],) if by_order else (imp["row"][rows], imp["ts"][rows])
        rows = np.sort(rows[np.lexsort(key)][len(rows) - last:])
    return {k: v[rows] for k, v in imp.items()}


def _sessions(imp: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Group impressions of one member on one day (a session); returns sort order and group starts."""
    day = imp["ts"] // DAY
    order = np.lexsort((imp["ts"], day, imp["member"]))
    m, d = imp["member"][order], day[order]
    starts = np.flatnonzero(np.r_[True, (m[1:] != m[:-1]) | (d[1:] != d[:-1])])
    return order, starts


def _targets(imp: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Every impression its own group (``one_target``), ordered by member, time and record."""
    order = np.lexsort((imp["row"], imp["ts"], imp["member"]))
    return order, np.arange(len(order))


def _session_pos(rows_sorted: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """The first record (lowest row) of each group."""
    if len(starts) == 0:
        return np.zeros(0, np.int64)
    return np.minimum.reduceat(rows_sorted, starts)


def pointwise(corpus: Corpus, task: TaskSpec, plan, one_target: bool = False,
              rng: np.random.Generator | None = None) -> Requests:
    """One request per session (or per labelled impression): its labelled impressions are the candidates."""
    imp = _impressions(corpus, task, plan)
    if len(imp["ts"]) == 0:
        return _empty()
    order, starts = _targets(imp) if one_target else _sessions(imp)
    s = {k: v[order] for k, v in imp.items()}
    t = s["ts"][starts]
    req = Requests(s["member"][starts], t, np.full(len(t), "", dtype="<U10"), np.r_[starts, len(order)], s["item"],
                   s["label"], s["prob"], pos=_session_pos(s["row"], starts))
    return req.with_splits(plan, rng if rng is not None else np.random.default_rng(0))


def listwise(corpus: Corpus, task: TaskSpec, plan, rng: np.random.Generator, one_target: bool = False,
             split_rng: np.random.Generator | None = None) -> Requests:
    """Sessions with a positive: the positive plus k-1 real negative impressions, in random slots.

    With ``one_target`` every positive of a session makes its own request.
    """
    imp = _impressions(corpus, task, plan)
    order, starts = _sessions(imp)
    sorted_ = {k: v[order] for k, v in imp.items()}
    ends = np.r_[starts[1:], len(order)]
    k = task.k
    neg_pool = np.flatnonzero(sorted_["label"] == 0)
    if len(neg_pool) == 0:
        return _empty()
    members, times, cands, labels, probs, rows = [], [], [], [], [], []
    for s, e in zip(starts, ends, strict=True):
        lab = sorted_["label"][s:e]
        pos = np.flatnonzero(lab == 1)
        if len(pos) == 0:
            continue
        for target in (pos if one_target else pos[:1]):
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
            slot = np.concatenate([[s + target], negs])
            slot = slot[rng.permutation(k)]
            at = s + target if one_target else s
            members.append(sorted_["member"][s])
            times.append(sorted_["ts"][at])
            rows.append(sorted_["row"][at] if one_target else sorted_["row"][s:e].min())
            cands.append(sorted_["item"][slot])
            labels.append((slot == s + target).astype(np.int8))
            probs.append(sorted_["prob"][slot])
    if not members:
        return _empty()
    t = np.array(times)
    req = Requests(np.array(members), t, np.full(len(t), "", dtype="<U10"), np.arange(0, k * len(members) + 1, k),
                   np.concatenate(cands), np.concatenate(labels), np.concatenate(probs), pos=np.array(rows, np.int64))
    return req.with_splits(plan, split_rng if split_rng is not None else np.random.default_rng(0))


def generative(corpus: Corpus, task: TaskSpec, plan, rng: np.random.Generator, one_target: bool = False,
               split_rng: np.random.Generator | None = None) -> Requests:
    """next_job_title: each positive action's item title; held_out_skill: one profile skill, hidden."""
    split_rng = split_rng if split_rng is not None else np.random.default_rng(0)
    imp = _impressions(corpus, task, plan)
    if task.generative.target == "next_job_title":
        # The first positive of each session (every positive with one_target): one prompt, one answer.
        rows = np.flatnonzero(imp["label"] == 1)
        rows = rows[np.lexsort((imp["ts"][rows], imp["ts"][rows] // DAY, imp["member"][rows]))]
        if not one_target:
            key = imp["member"][rows] * 100_000 + imp["ts"][rows] // DAY
            rows = rows[np.r_[True, key[1:] != key[:-1]]]
        rows = np.sort(rows)
        titles = corpus.items["title"].to_pylist()
        ids = corpus.items["item_id"].to_numpy()
        where = {int(i): r for r, i in enumerate(ids)}
        target = [titles[where[int(i)]] for i in imp["item"][rows]]
        t = imp["ts"][rows]
        req = Requests(imp["member"][rows], t, np.full(len(t), "", dtype="<U10"), np.zeros(len(rows) + 1, np.int64),
                       np.zeros(0, np.int64), np.zeros(0, np.int8), np.zeros(0), target, None, imp["row"][rows])
        return req.with_splits(plan, split_rng)
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
    pos = _session_pos(imp["row"][order], starts)
    split = plan.assign(m, t, pos, split_rng)
    keep = split != ""
    m, t, split, pos = m[keep], t[keep], split[keep], pos[keep]
    _, first = np.unique(np.char.add(m.astype(str), split.astype(str)), return_index=True)
    first.sort()
    rows = [i for i in first if len(skills.get(int(m[i])) or []) >= 1]
    target = [skills[int(m[i])][int(rng.integers(0, len(skills[int(m[i])])))] for i in rows]
    rows = np.array(rows, dtype=np.int64)
    return Requests(m[rows], t[rows], split[rows], np.zeros(len(rows) + 1, np.int64), np.zeros(0, np.int64),
                    np.zeros(0, np.int8), np.zeros(0), target, list(target), pos[rows])


def _empty() -> Requests:
    z = np.zeros(0, np.int64)
    return Requests(z, z, np.zeros(0, str), np.zeros(1, np.int64), z, np.zeros(0, np.int8), np.zeros(0), None, None, z)


def build_requests(corpus: Corpus, task: TaskSpec, plan, seed: int, one_target: bool = False) -> Requests:
    """A task's requests, split by ``plan`` (a `SplitPlan`, or a `recbrew.examples.protocol.SplitRule`)."""
    rng = task_rng(seed, task)
    # Its own stream, so a validation draw never changes which negatives or targets the builders pick.
    split_rng = task_rng(seed + 2, task)
    if task.kind == Kind.binary:
        return pointwise(corpus, task, plan, one_target, split_rng)
    if task.kind == Kind.listwise:
        return listwise(corpus, task, plan, rng, one_target, split_rng)
    return generative(corpus, task, plan, rng, one_target, split_rng)


def time_range(corpus: Corpus) -> tuple[int, int]:
    ts = corpus.interactions["timestamp"]
    if len(ts) == 0:
        raise ConfigError("the corpus has no interactions")
    return int(pc.min(ts).as_py()), int(pc.max(ts).as_py()) + 1

