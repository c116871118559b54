"""As-of-time statistics of members and items, for any Corpus: what a prompt (and a classic ranker) may know
about the past at the moment of a request.

A task declares them in its YAML (``stats:``, see `recbrew.tasks.spec.Stats`):

- **candidate**: how many labelled interactions the item had before the moment, and the positive share of them;
- **member**: the same for the member;
- **facets**: per declared item field (genres, decade, industry, ...), how many of the member's last N positive
  and last N negative actions were on items sharing a value with the candidate.

Positive and negative come from the task's label (``label.positive`` / ``label.negatives``), so a rating log
(like / dislike) and an impression log (apply / none) both work. Every count uses interactions strictly before
the moment: rows at or after it never change a value (the leakage rule every prompt obeys).

Arrays are sorted once (by item and time, by member and time) with cumulative positive counts, so each lookup
is a binary search; facet values are bit sets over one vocabulary per facet, so "shares a value" is a bitwise
AND for scalar and list fields alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recbrew.data.corpus import Corpus

#: The dense vector a classic ranker reads per candidate: log counts, shares, and the facet shares.
DENSE_BASE = ("log_item_n", "item_share", "log_member_n", "member_share")
#: Facets carried in the dense vector (positive and negative share each); more facets are summed into the last.
DENSE_FACETS = 3
STATS_DIM = len(DENSE_BASE) + 2 * DENSE_FACETS


@dataclass(frozen=True)
class FacetSpec:
    """One item field the member's recent actions are compared on."""

    field: str
    word: str
    bucket: int | None = None


def _facet_bits(values: list, bucket: int | None) -> np.ndarray:
    """[n, words] uint64 bit sets of each item's values (scalars or lists; numbers grouped by ``bucket``)."""
    def norm(v):
        if v is None or v == "":
            return None
        if bucket:
            return int(v) // bucket * bucket
        return v

    rows = []
    vocab: dict = {}
    for v in values:
        vals = v if isinstance(v, (list, tuple)) else [v]
        codes = []
        for x in vals:
            x = norm(x)
            if x is not None:
                codes.append(vocab.setdefault(x, len(vocab)))
        rows.append(codes)
    words = max(1, (len(vocab) + 63) // 64)
    bits = np.zeros((len(values), words), np.uint64)
    for r, codes in enumerate(rows):
        for c in codes:
            bits[r, c // 64] |= np.uint64(1) << np.uint64(c % 64)
    return bits


class AsOfStats:
    """As-of-time counts over one Corpus for one label (positive and negative actions) and its facets."""

    def __init__(self, corpus: Corpus, positive: tuple[str, ...], negatives: tuple[str, ...],
                 facets: tuple[FacetSpec, ...] = (), recent: int = 30):
        inter = corpus.interactions
        action = inter["action"].to_numpy(zero_copy_only=False).astype(str)
        labelled = np.isin(action, list(positive) + list(negatives))
        member = inter["member_id"].to_numpy()[labelled]
        item = inter["item_id"].to_numpy()[labelled]
        ts = inter["timestamp"].to_numpy()[labelled]
        pos = np.isin(action[labelled], list(positive))
        self.recent = recent
        # By time: the positive share of every labelled interaction so far (what "average" means at a moment).
        o = np.argsort(ts, kind="stable")
        self._g_ts, self._g_cum = ts[o], np.r_[0, np.cumsum(pos[o])]
        # By (item, time): the candidate's counts.
        o = np.lexsort((ts, item))
        self._i_key, self._i_ts = item[o], ts[o]
        self._i_cum = np.r_[0, np.cumsum(pos[o])]
        # By (member, time): the member's counts, and their positive / negative rows for the facets.
        o = np.lexsort((ts, member))
        self._m_key, self._m_ts = member[o], ts[o]
        self._m_cum = np.r_[0, np.cumsum(pos[o])]
        m_item, m_pos = item[o], pos[o]
        self._side = {}
        for name, mask in (("pos", m_pos), ("neg", ~m_pos)):
            self._side[name] = (self._m_key[mask], self._m_ts[mask], m_item[mask])
        # Facet bit sets per item row; item ids -> rows.
        items = corpus.items
        self._item_ids = items["item_id"].to_numpy()
        self._item_order = np.argsort(self._item_ids, kind="stable")
        self.facets = tuple(f for f in facets if f.field in items.column_names)
        self._bits = {f.field: _facet_bits(items[f.field].to_pylist(), f.bucket) for f in self.facets}

    @staticmethod
    def _before(keys: np.ndarray, times: np.ndarray, key: int, t: int) -> tuple[int, int]:
        lo = int(np.searchsorted(keys, key, side="left"))
        hi = int(np.searchsorted(keys, key, side="right"))
        return lo, lo + int(np.searchsorted(times[lo:hi], t, side="left"))

    def _rows(self, item_ids: np.ndarray) -> np.ndarray:
        """Row of each item id in the items table (-1 unknown)."""
        ids = self._item_ids[self._item_order]
        at = np.minimum(np.searchsorted(ids, item_ids), max(len(ids) - 1, 0))
        if not len(ids):
            return np.full(len(item_ids), -1)
        return np.where(ids[at] == item_ids, self._item_order[at], -1)

    def item(self, item_id: int, t: int) -> tuple[int, int]:
        """(labelled interactions, positives) of the item strictly before ``t``."""
        lo, hi = self._before(self._i_key, self._i_ts, item_id, t)
        return hi - lo, int(self._i_cum[hi] - self._i_cum[lo])

    def overall(self, t: int) -> tuple[int, int]:
        """(labelled interactions, positives) of the whole log strictly before ``t``."""
        hi = int(np.searchsorted(self._g_ts, t, side="left"))
        return hi, int(self._g_cum[hi])

    def member(self, member_id: int, t: int) -> tuple[int, int]:
        """(labelled interactions, positives) of the member strictly before ``t``."""
        lo, hi = self._before(self._m_key, self._m_ts, member_id, t)
        return hi - lo, int(self._m_cum[hi] - self._m_cum[lo])

    def recent_items(self, member_id: int, t: int) -> dict[str, np.ndarray]:
        """Item-table rows of the member's last ``recent`` positive and negative actions before ``t`` (items
        the table lacks left out)."""
        out = {}
        for name, (keys, times, items) in self._side.items():
            lo, hi = self._before(keys, times, member_id, t)
            rows = self._rows(items[max(lo, hi - self.recent):hi])
            out[name] = rows[rows >= 0]
        return out

    def facet_counts(self, recent: dict[str, np.ndarray], item_id: int) -> list[dict]:
        """Per facet: how many of the recent positive / negative items (``recent_items``) share a value with the
        candidate."""
        row = self._rows(np.array([item_id]))[0]
        out = []
        for f in self.facets:
            bits = self._bits[f.field]
            entry = {"word": f.word, "liked": None, "disliked": None,
                     "of_liked": len(recent["pos"]), "of_disliked": len(recent["neg"])}
            if row >= 0 and bits[row].any():
                for name, key in (("pos", "liked"), ("neg", "disliked")):
                    entry[key] = int(((bits[recent[name]] & bits[row]) != 0).any(axis=1).sum())
            out.append(entry)
        return out


def share(positives: int, n: int) -> int | None:
    """Positive share in whole percent (None without any interaction)."""
    return None if n == 0 else int(round(100 * positives / n))


#: How a positive share compares with a reference share, as the ratio of the two: words a language model reads
#: without comparing numbers (at or above each bound, from the top).
COMPARISON = ((1.25, "far above"), (1.08, "above"), (0.92, "near"), (0.75, "below"), (0.0, "far below"))


def compare_word(n: int, positives: int, ref_n: int, ref_positives: int) -> str | None:
    """'far above', 'above', 'near', 'below' or 'far below': the share ``positives / n`` against the reference
    share ``ref_positives / ref_n`` (None when either rests on no interaction)."""
    if n == 0 or ref_n == 0 or ref_positives == 0:
        return None
    ratio = (positives / n) / (ref_positives / ref_n)
    return next(word for bound, word in COMPARISON if ratio >= bound)


def dense_vector(member: dict | None, candidate: dict | None) -> list[float]:
    """The STATS_DIM floats a classic ranker reads for one candidate (zeros for what is not declared)."""
    out = [0.0] * STATS_DIM
    if candidate:
        out[0] = float(np.log1p(candidate["n"]) / 5)
        out[1] = (candidate["positive"] / candidate["n"]) if candidate["n"] else 0.5
    if member:
        out[2] = float(np.log1p(member["n"]) / 5)
        out[3] = (member["positive"] / member["n"]) if member["n"] else 0.5
    for i, f in enumerate((candidate or {}).get("facets") or []):
        j = len(DENSE_BASE) + 2 * min(i, DENSE_FACETS - 1)
        if f["liked"] is not None:
            out[j] += f["liked"] / max(f["of_liked"], 1)
            out[j + 1] += f["disliked"] / max(f["of_disliked"], 1)
    return out
