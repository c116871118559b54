"""The test requests as columns: one entry per request, one per candidate, built once per eval run."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class RequestTable:
    """Per-request columns (``task`` … ``days_from_cutoff``) and flat per-candidate columns.

    Candidates of request i are ``offsets[i]:offsets[i + 1]`` of the flat arrays; ``request`` maps
    each candidate back to its request.
    """

    request_ids: np.ndarray
    task: np.ndarray
    kind: np.ndarray
    split_tag: np.ndarray
    member: np.ndarray
    member_interactions: np.ndarray
    history_length: np.ndarray
    days_from_cutoff: np.ndarray
    target: list[str | None]
    offsets: np.ndarray
    labels: np.ndarray
    request: np.ndarray
    item: np.ndarray
    topic: np.ndarray
    company: np.ndarray

    @classmethod
    def from_requests(cls, rows: Sequence[dict]) -> RequestTable:
        sizes = np.array([len(r.get("candidate_ids") or []) for r in rows], dtype=np.int64)
        offsets = np.r_[0, np.cumsum(sizes)].astype(np.int64)

        def flat(field: str, dtype=object) -> np.ndarray:
            values = [v for r in rows for v in (r.get(field) or [None] * len(r.get("candidate_ids") or []))]
            return np.array(values, dtype=dtype) if values else np.zeros(0, dtype=dtype)

        def col(field: str, default, dtype) -> np.ndarray:
            return np.array([default if r.get(field) is None else r[field] for r in rows], dtype=dtype)

        return cls(
            request_ids=col("request_id", "", object), task=col("task", "", object), kind=col("kind", "binary", object),
            split_tag=col("split_tag", "T1", object), member=col("member_id", -1, np.int64),
            member_interactions=col("member_interactions", 0, np.int64),
            history_length=col("history_length", 0, np.int64),
            days_from_cutoff=col("days_from_cutoff", np.nan, np.float64),
            target=[r.get("target") for r in rows], offsets=offsets,
            labels=flat("labels", np.float64), request=np.repeat(np.arange(len(rows)), sizes),
            item=flat("candidate_ids", np.int64),
            topic=np.array([str(t) if t is not None else "" for t in flat("cand_topic")], dtype=object),
            company=np.array([str(c) if c is not None else "" for c in flat("cand_company")], dtype=object),
        )

    def __len__(self) -> int:
        return len(self.task)

    @property
    def rankable(self) -> np.ndarray:
        """Requests a Scorer answers: binary or listwise, with candidates."""
        return (self.kind != "generative") & (np.diff(self.offsets) > 0)

    @property
    def generative(self) -> np.ndarray:
        return self.kind == "generative"

    def tasks(self) -> list[str]:
        return sorted(set(self.task.tolist()))

    def candidate_mask(self, request_mask: np.ndarray) -> np.ndarray:
        """Candidates whose request is selected."""
        return request_mask[self.request]

    def flatten(self, per_request: Sequence[np.ndarray]) -> np.ndarray:
        """One score array per request -> the flat candidate order (NaN where a request has none)."""
        out = np.full(len(self.labels), np.nan)
        for i, p in enumerate(per_request):
            if p is not None and len(p):
                out[self.offsets[i]:self.offsets[i + 1]] = p
        return out
