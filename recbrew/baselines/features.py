"""Features of the classic rankers, read from the structured view of the examples.

What a structured row holds (see ``recbrew/examples/build.py``): ids, the member's categorical
profile, each candidate's categoricals, and the member's last actions as (item, action, surface,
time) sequences, most recent last. This module turns rows into padded integer arrays:

- member and item ids -> indices into id tables (0 = unknown); the tables are QR-compressed in
  ``embedding.py``, :func:`qr_split` is the index arithmetic;
- categoricals -> stable hashes into a small table per field (0 = missing / padding);
- history -> right-aligned sequences of item, item categoricals (from the attributes the item
  showed as a training candidate), action, surface and a log-scale age bucket;
- item store (optional, on by default): the static attributes of every item of the Corpus the
  examples were built from (type, function, industry, seniority, location, company, format,
  remote, first genre, decade; school for member items) and its creation time, hashed once at
  fit time. The structured view only carries the categoricals a task's prompt shows, which for
  jobs leaves out function and seniority; a production ranker reads them from its item feature
  store, and so do these. Item metadata holds no labels;
- member-candidate match indicators (same function, industry, seniority, location, company,
  school), the classic hand-made crosses of a people/jobs ranker.

:class:`FeatureSpace` holds what is fitted on the training rows (tasks, id ranges, item
attributes) and is saved with every model as plain lists, so ``torch.load(weights_only=True)``
reads it back.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from recbrew.data.corpus import Corpus
from recbrew.errors import UserError
from recbrew.examples.build import ITEM_FEATURES, MEMBER_FEATURES
from recbrew.examples.folder import Examples
from recbrew.verbalize.stats import STATS_DIM

MEMBER_FIELDS = tuple(f"member_{f}" for f in MEMBER_FEATURES)
ITEM_FIELDS = tuple(f"cand_{f}" for f in ITEM_FEATURES)
#: Hash buckets of the small vocabularies (surface, action).
SMALL_BUCKETS = 64
#: Slot embedding rows: slot 1..MAX_SLOTS, 0 = padding.
MAX_SLOTS = 32
#: Item-store fields (hashed) and the buckets of a candidate's age: floor(log2(1 + days)) + 1.
STORE_FIELDS = ("item_type", "function", "industry", "seniority", "location", "company", "format", "remote",
                "genre", "decade", "school")
ITEM_AGE_BUCKETS = 16
#: Member-candidate agreement indicators: the member's value equals the candidate's (same function,
#: industry, ...). Hashed with one salt per domain on both sides so that equal strings compare equal.
MATCH_FIELDS = ("function", "industry", "seniority", "location", "company", "school")
#: Structured-view candidate fields that carry a match domain.
_CAND_DOMAIN = {"cand_topic": "function", "cand_industry": "industry", "cand_location": "location",
                "cand_company": "company"}
#: Dense request features: log of the history steps in the window, candidates in the request.
DENSE = 2


@dataclass
class FeatureConfig:
    """How rows become integer features."""

    #: Hash buckets per categorical field (profile and item fields).
    cat_buckets: int = 512
    #: Quotient-remainder compression of the id tables (False: one row per id).
    qr: bool = True
    #: Remainder table size; None picks ceil(sqrt(ids)), which minimizes the rows kept.
    qr_remainder: int | None = None
    #: History steps fed to the sequence modules (most recent kept).
    history_len: int = 20
    #: Only steps younger than this many days (None: any age). Members accumulate history over the
    #: log, so test requests carry longer histories than most training requests; a window keeps the
    #: two alike.
    history_days: float | None = 7.0
    #: Age buckets of a history step: floor(log2(1 + minutes)), capped.
    age_buckets: int = 24
    #: Static item attributes from the examples' Corpus (see the module docstring).
    item_store: bool = True


def stable_hash(values: Sequence, salt: str, buckets: int) -> np.ndarray:
    """1 + crc32(salt=value) mod (buckets - 1) per value; None and '' map to 0 (missing)."""
    cache: dict = {}
    out = np.zeros(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        if v is None or v == "":
            continue
        h = cache.get(v)
        if h is None:
            h = cache[v] = 1 + zlib.crc32(f"{salt}={v}".encode()) % (buckets - 1)
        out[i] = h
    return out


def qr_split(index: torch.Tensor, remainder: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Quotient and remainder of an id index: the pair is unique per id, each half shared by many."""
    return torch.div(index, remainder, rounding_mode="floor"), index % remainder


def qr_rows(num_ids: int, remainder: int) -> int:
    """Rows kept by a QR table pair for ``num_ids`` ids."""
    return math.ceil(num_ids / remainder) + remainder


def default_remainder(num_ids: int) -> int:
    return max(2, math.ceil(math.sqrt(num_ids)))


#: Times are held within ±2**53 s (285 million years): differences of two then fit in int64.
_TIME_LIMIT = 2**53


def as_times(values: Sequence) -> np.ndarray:
    """Epoch seconds as int64, clipped to ±2**53 s so that no value (1e30 included) overflows the arithmetic."""
    try:
        out = np.asarray(values, dtype=np.int64)
    except OverflowError:  # a Python number beyond int64
        out = np.asarray([min(max(v, -_TIME_LIMIT), _TIME_LIMIT) for v in values], dtype=np.int64)
    return np.clip(out, -_TIME_LIMIT, _TIME_LIMIT)


def right_align(seqs: Sequence[Sequence], length: int, dtype=np.int64) -> np.ndarray:
    """[n, length] array with each sequence's last ``length`` values at the right, 0-padded on the left."""
    out = np.zeros((len(seqs), length), dtype=dtype)
    lengths = np.fromiter((min(len(s), length) for s in seqs), dtype=np.int64, count=len(seqs))
    if lengths.sum() == 0:
        return out
    flat = np.concatenate([np.asarray(s[len(s) - n:], dtype=dtype) for s, n in zip(seqs, lengths, strict=True)
                           if n])
    rows = np.repeat(np.arange(len(seqs)), lengths)
    cols = length - np.repeat(lengths, lengths) + (np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths,
                                                                                        lengths))
    out[rows, cols] = flat
    return out


def left_align(seqs: Sequence[Sequence], length: int, dtype=np.int64) -> np.ndarray:
    """[n, length] array with each sequence's first ``length`` values at the left, 0-padded."""
    out = np.zeros((len(seqs), length), dtype=dtype)
    for i, s in enumerate(seqs):
        n = min(len(s), length)
        if n:
            out[i, :n] = np.asarray(s[:n], dtype=dtype)
    return out


def columns(rows: Sequence[dict]) -> dict[str, list]:
    """Rows (dicts) -> columns (lists); a columns dict passes through."""
    if isinstance(rows, dict):
        return rows
    if not rows:
        return {}
    return {k: [r.get(k) for r in rows] for k in rows[0]}


@dataclass
class FeatureSpace:
    """What is fitted on the training rows; everything else about a row is hashed on the fly."""

    config: FeatureConfig
    #: Trained tasks; task index i + 1 (0 = a task the model never trained on).
    tasks: list[str] = field(default_factory=list)
    task_surface: dict[str, str] = field(default_factory=dict)
    #: Row kind per task name ('binary' | 'listwise'), from the examples' manifest.
    kinds: dict[str, str] = field(default_factory=dict)
    #: Id ranges: ids in [0, n) get index id + 1, others the unknown index 0.
    member_ids: int = 1
    item_ids: int = 1
    #: Hashed categoricals of items seen as training candidates, sorted by item id.
    attr_ids: list[int] = field(default_factory=list)
    attr_cats: list[list[int]] = field(default_factory=list)
    #: Item store: hashed static attributes and creation time (-1: unknown) of every item, sorted by id.
    store_ids: list[int] = field(default_factory=list)
    store_cats: list[list[int]] = field(default_factory=list)
    store_created: list[int] = field(default_factory=list)
    #: Remainder table sizes fixed by an id range that grew after fitting ('member' / 'item'; see
    #: ``recbrew/simulate/ranker.py``): the id -> (quotient, remainder) mapping of the trained rows must not move.
    remainders: dict[str, int] = field(default_factory=dict)
    #: As-of-time statistics per candidate (`recbrew.verbalize.stats`): their width, 0 when the training rows
    #: carry none (the models then have no inputs for them).
    stats: int = 0

    # ------------------------------------------------------------------ fitting

    @classmethod
    def fit(cls, rows: Sequence[dict] | dict, config: FeatureConfig, kinds: dict[str, str] | None = None,
            corpus: str | Path | None = None) -> FeatureSpace:
        """Tasks, id ranges and item attributes of the training rows (+ the item store of ``corpus``)."""
        cols = columns(rows)
        if not cols or not cols.get("task"):
            raise UserError("no training rows: the examples hold no T1 train requests with candidates")
        tasks = sorted(set(cols["task"]))
        surfaces = {t: s for t, s in zip(cols["task"], cols["surface"], strict=True)}
        cand = np.concatenate([np.asarray(c, dtype=np.int64) for c in cols["candidate_ids"]])
        hist = [np.asarray(h, dtype=np.int64) for h in cols["hist_item_ids"] if len(h)]
        items = np.concatenate([cand, *hist]) if hist else cand
        space = cls(config, tasks, surfaces, dict(kinds or {}),
                    member_ids=int(max(cols["member_id"])) + 1, item_ids=int(items.max()) + 1 if len(items) else 1)
        cats = np.stack([stable_hash([v for vs in cols[f] for v in vs], f, config.cat_buckets) for f in ITEM_FIELDS], 1)
        if any(any(any(v) for v in cands) for cands in cols.get("cand_stats") or []):
            space.stats = STATS_DIM
        ids, first = np.unique(cand, return_index=True)
        space.attr_ids, space.attr_cats = ids.tolist(), cats[first].tolist()
        if config.item_store:
            if corpus is None:
                raise UserError("features.item_store needs the Corpus the examples were built from "
                                "(named in their manifest.json); set features.item_store=false to go without")
            space.store_ids, space.store_cats, space.store_created = item_store(corpus, config.cat_buckets)
        return space

    @property
    def num_tasks(self) -> int:
        return len(self.tasks) + 1

    @property
    def remainder(self) -> dict[str, int]:
        """Remainder table size of the member and item id tables."""
        r = self.config.qr_remainder
        return {"member": self.remainders.get("member") or r or default_remainder(self.member_ids + 1),
                "item": self.remainders.get("item") or r or default_remainder(self.item_ids + 1)}

    def compression(self) -> dict:
        """Id table rows with and without QR compression, and their ratio."""
        out = {}
        for name, n in (("member", self.member_ids + 1), ("item", self.item_ids + 1)):
            kept = qr_rows(n, self.remainder[name]) if self.config.qr else n
            out[name] = {"ids": n, "rows": kept, "ratio": round(n / kept, 2)}
        total_ids = sum(v["ids"] for v in out.values())
        total_rows = sum(v["rows"] for v in out.values())
        out["total"] = {"ids": total_ids, "rows": total_rows, "ratio": round(total_ids / total_rows, 2)}
        return out

    # ------------------------------------------------------------------ encoding

    def encode(self, rows: Sequence[dict] | dict) -> dict[str, np.ndarray]:
        """Rows -> padded arrays: request-level [B, ...] and candidate-level [B, K, ...]."""
        cfg = self.config
        cols = columns(rows)
        n = len(cols["task"])
        task_index = {t: i + 1 for i, t in enumerate(self.tasks)}
        L = cfg.history_len
        cand_lists = cols["candidate_ids"]
        K = max([len(c) for c in cand_lists] + [1])

        member = np.asarray(cols["member_id"], dtype=np.int64)
        out = {
            "task": np.array([task_index.get(t, 0) for t in cols["task"]], dtype=np.int64),
            "surface": stable_hash(cols["surface"], "surface", SMALL_BUCKETS),
            "listwise": np.array([self.kind_of(t, cols.get("kind", [None] * n)[i]) == "listwise"
                                  for i, t in enumerate(cols["task"])], dtype=bool),
            "member": np.where((member >= 0) & (member < self.member_ids), member + 1, 0),
            "member_cats": np.stack([stable_hash(cols[f], f, cfg.cat_buckets) for f in MEMBER_FIELDS], 1),
        }
        # History, right-aligned (most recent last).
        ts = as_times(cols["timestamp"])
        h_ts = np.clip(right_align(cols["hist_timestamps"], L), -_TIME_LIMIT, _TIME_LIMIT)
        mask = right_align([[1] * len(h) for h in cols["hist_item_ids"]], L).astype(bool)
        if cfg.history_days is not None:
            mask &= (ts[:, None] - h_ts) < cfg.history_days * 86_400
        out["hist_mask"] = mask
        h_item = right_align(cols["hist_item_ids"], L)
        out["hist_item"] = self._item_index(h_item) * mask
        out["hist_cats"] = self._attrs(h_item) * mask[..., None]
        out["hist_store"] = self._store(h_item)[0] * mask[..., None]
        out["hist_action"] = right_align([stable_hash(a, "action", SMALL_BUCKETS) for a in cols["hist_actions"]], L) * mask
        out["hist_surface"] = right_align([stable_hash(s, "surface", SMALL_BUCKETS) for s in cols["hist_surfaces"]],
                                          L) * mask
        minutes = np.maximum(ts[:, None] - h_ts, 0) / 60.0
        age = 1 + np.minimum(np.floor(np.log2(1 + minutes)), cfg.age_buckets - 1).astype(np.int64)
        out["hist_age"] = np.where(mask, age, 0)
        # Dense: recent activity (steps in the window) and the request's size. The all-time action count
        # is left out on purpose: it grows with the log, so test requests would sit outside its training range.
        n_cands = np.array([len(c) for c in cand_lists], dtype=np.float32)
        out["dense"] = np.stack([np.log1p(mask.sum(1)) / 3, n_cands / 16], 1).astype(np.float32)

        # Candidates, left-aligned in slot order.
        c_item = left_align(cand_lists, K)
        out["cand_mask"] = left_align([[1] * len(c) for c in cand_lists], K).astype(bool)
        out["cand_item"] = self._item_index(c_item) * out["cand_mask"]
        out["cand_cats"] = np.stack([left_align(
            [stable_hash(v, f, cfg.cat_buckets) for v in cols[f]], K) for f in ITEM_FIELDS], -1)
        store, created = self._store(c_item)
        out["cand_store"] = store * out["cand_mask"][..., None]
        out["cand_match"] = self._matches(cols, store, K) * out["cand_mask"][..., None]
        if self.stats:
            stats = np.zeros((n, K, self.stats), np.float32)
            for i, rows in enumerate(cols.get("cand_stats") or [[]] * n):
                if rows:
                    stats[i, :len(rows)] = np.asarray(rows, np.float32)[:, :self.stats]
            out["cand_match"] = np.concatenate([out["cand_match"], stats], -1)
        days = np.maximum(ts[:, None] - created, 0) / 86_400.0
        age = 1 + np.minimum(np.floor(np.log2(1 + days)), ITEM_AGE_BUCKETS - 2).astype(np.int64)
        out["cand_age"] = np.where(out["cand_mask"] & (created >= 0), age, 0)
        out["cand_slot"] = np.where(out["cand_mask"], np.minimum(np.arange(K) + 1, MAX_SLOTS - 1), 0)
        out["labels"] = left_align(cols["labels"], K, dtype=np.float32)
        return out

    def kind_of(self, task: str, kind: str | None = None) -> str:
        return kind or self.kinds.get(task) or "binary"

    def _item_index(self, ids: np.ndarray) -> np.ndarray:
        return np.where((ids >= 0) & (ids < self.item_ids), ids + 1, 0)

    def _attrs(self, ids: np.ndarray) -> np.ndarray:
        """Hashed categoricals of items seen as training candidates; 0 for the others."""
        known = np.asarray(self.attr_ids, dtype=np.int64)
        table = np.asarray(self.attr_cats, dtype=np.int64).reshape(-1, len(ITEM_FIELDS))
        if len(known) == 0:
            return np.zeros((*ids.shape, len(ITEM_FIELDS)), dtype=np.int64)
        pos = np.clip(np.searchsorted(known, ids), 0, len(known) - 1)
        found = known[pos] == ids
        return np.where(found[..., None], table[pos], 0)

    def _matches(self, cols: dict, store: np.ndarray, k: int) -> np.ndarray:
        """[B, K, MATCH_FIELDS] float: 1 where the member's value equals the candidate's."""
        buckets = self.config.cat_buckets
        out = np.zeros((*store.shape[:2], len(MATCH_FIELDS)), dtype=np.float32)
        row_fields = {d: f for f, d in _CAND_DOMAIN.items()}
        for m, domain in enumerate(MATCH_FIELDS):
            member = stable_hash(cols[f"member_{domain}"], domain, buckets)[:, None]
            hit = (store[..., STORE_FIELDS.index(domain)] == member) & (member > 0)
            if domain in row_fields:
                cand = left_align([stable_hash(v, domain, buckets) for v in cols[row_fields[domain]]], k)
                hit |= (cand == member) & (member > 0)
            out[..., m] = hit
        return out

    def _store(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Item-store categoricals [..., STORE_FIELDS] and creation times [...] (0 and -1 when unknown)."""
        if not self.store_ids:
            return np.zeros((*ids.shape, len(STORE_FIELDS)), dtype=np.int64), np.full(ids.shape, -1, dtype=np.int64)
        known = np.asarray(self.store_ids, dtype=np.int64)
        pos = np.clip(np.searchsorted(known, ids), 0, len(known) - 1)
        found = known[pos] == ids
        cats = np.asarray(self.store_cats, dtype=np.int64)[pos]
        created = np.asarray(self.store_created, dtype=np.int64)[pos]
        return np.where(found[..., None], cats, 0), np.where(found, created, -1)

    # ------------------------------------------------------------------ saving

    def to_dict(self) -> dict:
        return {"config": vars(self.config).copy(), "tasks": self.tasks, "task_surface": self.task_surface,
                "kinds": self.kinds, "member_ids": self.member_ids, "item_ids": self.item_ids,
                "attr_ids": self.attr_ids, "attr_cats": self.attr_cats, "store_ids": self.store_ids,
                "store_cats": self.store_cats, "store_created": self.store_created, "remainders": self.remainders,
                "stats": self.stats}

    @classmethod
    def from_dict(cls, d: dict) -> FeatureSpace:
        return cls(FeatureConfig(**d["config"]), list(d["tasks"]), dict(d["task_surface"]), dict(d["kinds"]),
                   int(d["member_ids"]), int(d["item_ids"]), list(d["attr_ids"]), [list(c) for c in d["attr_cats"]],
                   list(d["store_ids"]), [list(c) for c in d["store_cats"]], list(d["store_created"]),
                   dict(d.get("remainders", {})), int(d.get("stats", 0)))


def item_store(corpus_dir: str | Path, buckets: int) -> tuple[list[int], list[list[int]], list[int]]:
    """Hashed static attributes and creation times of every item of a Corpus, sorted by item id."""
    corpus = Corpus.load(corpus_dir, tables=["items", "members"])
    return item_store_tables(corpus.items, corpus.members, buckets)


def item_store_tables(items, members, buckets: int) -> tuple[list[int], list[list[int]], list[int]]:
    """:func:`item_store` from the items and members tables in memory (e.g. a world being simulated)."""
    import pyarrow.compute as pc

    items = items.sort_by("item_id")
    n = items.num_rows

    def col(name: str) -> list:
        return items[name].to_pylist() if name in items.column_names else [None] * n

    values = {f: col(f) for f in ("item_type", "function", "industry", "seniority", "location", "company", "format")}
    values["remote"] = [None if v is None else str(v) for v in col("remote")]
    values["genre"] = [g[0] if g else None for g in col("genres")]
    values["decade"] = [None if y is None else str(y // 10 * 10) for y in col("year")]
    # Member items (people-you-may-know candidates): the school of the member they stand for.
    school = (dict(zip(members["member_id"].to_pylist(), members["school"].to_pylist(), strict=True))
              if "school" in members.column_names else {})
    values["school"] = [school.get(r) if r is not None else None for r in col("ref_id")]
    cats = np.stack([stable_hash(values[f], f, buckets) for f in STORE_FIELDS], 1)
    created = pc.fill_null(items["created_at"], -1).to_numpy() if "created_at" in items.column_names else np.full(n, -1)
    return items["item_id"].to_pylist(), cats.tolist(), [int(c) for c in created]


def batch_tensors(enc: dict[str, np.ndarray], rows: np.ndarray | slice) -> dict[str, torch.Tensor]:
    """Rows of an encoded split as tensors, candidate columns trimmed to the batch's widest request."""
    k = max(int(enc["cand_mask"][rows].sum(1).max()), 1)
    out = {}
    for name, value in enc.items():
        v = value[rows]
        if name.startswith("cand_") or name == "labels":
            v = v[:, :k]
        out[name] = torch.from_numpy(np.ascontiguousarray(v))
    return out


# ---------------------------------------------------------------------- loading rows

STRUCTURED_COLUMNS = ("request_id", "task", "split_tag", "surface", "member_id", "timestamp", "candidate_ids",
                      "labels", "true_probs", "member_interactions", "hist_item_ids", "hist_actions",
                      "hist_surfaces", "hist_timestamps", *MEMBER_FIELDS, *ITEM_FIELDS, "cand_stats")


def examples_folder(examples) -> Examples:
    """``examples`` opened (a path), or itself (an already opened `Examples`)."""
    return examples if isinstance(examples, Examples) else Examples.open(examples)


def load_rows(examples: str | Path | Examples, split: str, split_tag: str | None = None,
              tasks: Sequence[str] | None = None) -> list[dict]:
    """Rankable rows (binary and listwise, with candidates) of the structured view, with their kind.

    Reads only the structured view (no prompts), so training loads fast; ``split_tag='T1'`` keeps
    the tasks baselines may train on.
    """
    return examples_folder(examples).structured_rows(split, STRUCTURED_COLUMNS, split_tag, tasks)
