"""A member's history before a request, by time or by record order, optionally the last N only.

`HistoryIndex` keeps every interaction with an action sorted by (member, key), where the key is
the timestamp (then the record) for time protocols and the record (row of the interactions table)
for order protocols, so "everything before the request" is one binary search per member, and the
member's position at many moments (`HistoryIndex.count_before`) one sort.
"""

from __future__ import annotations

import numpy as np

from recbrew.data.corpus import Corpus
from recbrew.data.schema import NO_ACTION
from recbrew.tasks.spec import TaskSpec
from recbrew.verbalize.context import CorpusView, select_history
from recbrew.verbalize.render import HistoryEntry


class HistoryIndex:
    """Interactions with an action, sorted by (member, time, record) or (member, record)."""

    def __init__(self, corpus: Corpus, by_order: bool):
        inter = corpus.interactions
        action = inter["action"].to_numpy(zero_copy_only=False).astype(str)
        rows = np.flatnonzero(action != NO_ACTION)
        member = inter["member_id"].to_numpy()[rows]
        ts = inter["timestamp"].to_numpy()[rows]
        key = rows if by_order else ts
        order = np.lexsort((rows, key, member))
        self.by_order = by_order
        self.member, self.key, self.ts = member[order], key[order], ts[order]
        self.item = inter["item_id"].to_numpy()[rows][order]
        self.action = action[rows][order]
        surface = (inter["surface"].to_numpy(zero_copy_only=False).astype(str) if "surface" in inter.column_names
                   else np.full(len(action), "", dtype=str))
        self.surface = surface[rows][order]

    def before(self, member: int, t: int, pos: int) -> tuple[int, int]:
        """Index range of the member's interactions before the request (at time ``t``, record ``pos``)."""
        lo = int(np.searchsorted(self.member, member, side="left"))
        hi = int(np.searchsorted(self.member, member, side="right"))
        bound = pos if self.by_order else t
        return lo, lo + int(np.searchsorted(self.key[lo:hi], bound, side="left"))

    def count_before(self, member: np.ndarray, t: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """Per query (member, time ``t``, record ``pos``): how many of the member's actions come before it, what
        `before` spans (vectorized: the position of a target in its member's sequence, counted from 0)."""
        member, bound = np.asarray(member), np.asarray(pos if self.by_order else t)
        n = len(self.member)
        m, k = np.concatenate([self.member, member]), np.concatenate([self.key, bound])
        is_action = np.r_[np.ones(n, bool), np.zeros(len(member), bool)]
        # By member, then key; at an equal key the query sorts first: "before" is strict.
        order = np.lexsort((is_action, k, m))
        act = is_action[order].astype(np.int64)
        before = np.cumsum(act) - act
        ms = m[order]
        starts = np.flatnonzero(np.r_[True, ms[1:] != ms[:-1]])
        first = np.repeat(starts, np.diff(np.r_[starts, len(ms)]))
        out = np.empty(len(member), np.int64)
        query = act == 0
        out[order[query] - n] = (before - before[first])[query]
        return out

    def entries(self, view: CorpusView, lo: int, hi: int, t: int, task: TaskSpec, limit: int) -> list[HistoryEntry]:
        """The interactions in [lo, hi) that the task's history groups select, newest first, at most ``limit``."""
        return select_history(view, self.action, self.surface, self.ts, self.item, lo, hi, t, task, limit)
