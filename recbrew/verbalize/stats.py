"""As-of-time statistics of members and items, for any Corpus: what a prompt (and a classic ranker) may know
about the past at the moment of a request.

A task declares them in its YAML (``stats:``, see `recbrew.tasks.spec.Stats`):

- **candidate**: how many labelled interactions the item had before the moment, and the positive share of them;
- **member**: the same for the member;
- **facets**: per declared item field (genres, decade, industry, ...), how many of the member's last N positive
  and last N negative actions were on items sharing a value with the candidate;
- **taste** (collaborative): the members whose earlier actions agree with the member's last N positive and N
  negative ones (each weighted by how many agree), and the weighted positive share of those who acted on the
  candidate before the moment;
- **estimate**: one probability from all of the above, without trained parameters (a shrunk baseline predictor:
  the candidate's share shrunk toward the log's, shifted by the member's own share and by the taste share).

The task's ``collab`` part is not counted here: it is a fitted rating model (`recbrew.verbalize.collab`).

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

#: The dense vector a classic ranker reads per candidate: log counts, shares, taste share and estimate, and the
#: facet shares.
DENSE_BASE = ("log_item_n", "item_share", "log_member_n", "member_share", "taste_share", "estimate")
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
        self._i_member, self._i_pos = member[o], pos[o]
        # By (item, time) for positive and negative actions apart: who agreed with an action before a moment.
        self._agree = {}
        for name, mask in (("pos", pos[o]), ("neg", ~pos[o])):
            self._agree[name] = (self._i_key[mask], self._i_ts[mask], member[o][mask])
        # By (member, time): the member's counts, and their positive / negative rows for the facets.
        o = np.lexsort((ts, member))
        self._m_key, self._m_ts = member[o], ts[o]
        self._m_cum = np.r_[0, np.cumsum(pos[o])]
        m_item, m_pos = item[o], pos[o]
        self._side = {}
        for name, mask in (("pos", m_pos), ("neg", ~m_pos)):
            self._side[name] = (self._m_key[mask], self._m_ts[mask], m_item[mask])
        self._neighbours: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
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

    def neighbours(self, member_id: int, t: int) -> tuple[np.ndarray, np.ndarray]:
        """(member ids sorted, weights): every other member with an action before ``t`` that agrees with one of the
        member's last ``recent`` positive or negative actions before ``t`` (same item, same outcome); the weight
        counts the agreeing actions."""
        key = (int(member_id), int(t))
        hit = self._neighbours.get(key)
        if hit is not None:
            return hit
        found = []
        for name, (keys, times, items) in self._side.items():
            lo, hi = self._before(keys, times, member_id, t)
            a_key, a_ts, a_member = self._agree[name]
            for item in items[max(lo, hi - self.recent):hi]:
                i_lo, i_hi = self._before(a_key, a_ts, int(item), t)
                found.append(a_member[i_lo:i_hi])
        ids, weights = np.unique(np.concatenate(found) if found else np.array([], np.int64), return_counts=True)
        keep = ids != member_id
        hit = ids[keep], weights[keep].astype(np.float64)
        if len(self._neighbours) > 4096:
            self._neighbours.clear()
        self._neighbours[key] = hit
        return hit

    def taste(self, member_id: int, item_id: int, t: int) -> tuple[int, float, float]:
        """(neighbours who acted on the item before ``t``, their summed weight, the weight of the positive ones)."""
        ids, weights = self.neighbours(member_id, t)
        lo, hi = self._before(self._i_key, self._i_ts, item_id, t)
        raters, pos = self._i_member[lo:hi], self._i_pos[lo:hi]
        if not len(ids) or not len(raters):
            return 0, 0.0, 0.0
        at = np.minimum(np.searchsorted(ids, raters), len(ids) - 1)
        w = np.where(ids[at] == raters, weights[at], 0.0)
        return int((w > 0).sum()), float(w.sum()), float(w[pos].sum())

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


def _logit(p: float) -> float:
    p = min(max(p, 1e-3), 1 - 1e-3)
    return float(np.log(p / (1 - p)))


def estimate(item: tuple[int, int], member: tuple[int, int] | None, overall: tuple[int, int],
             taste: tuple[float, float] | None, shrink: float) -> float | None:
    """The probability of a positive action from as-of-time counts alone, with no trained parameter: the item's
    positive share shrunk toward the log's by ``shrink`` pseudo-interactions, plus the member's shrunk share's
    offset from the log's (logits), plus the offset of the taste share (the neighbours' weighted share, shrunk
    toward the item's) from the item's. ``item``, ``member``, ``overall``: (interactions, positives); ``taste``:
    (weight, positive weight). None before the log has any positive interaction."""
    n, positives = overall
    if n == 0 or positives in (0, n):
        return None
    g = positives / n
    p_item = (item[1] + shrink * g) / (item[0] + shrink)
    logit = _logit(p_item)
    if member is not None:
        logit += _logit((member[1] + shrink * g) / (member[0] + shrink)) - _logit(g)
    if taste is not None and taste[0] > 0:
        logit += _logit((taste[1] + shrink * p_item) / (taste[0] + shrink)) - _logit(p_item)
    return float(1 / (1 + np.exp(-logit)))


#: The estimate in words, at or above each bound in whole percent (from the top), so the word always agrees with
#: the percentage the prompt shows. Fourteen steps, about 6 points apart where most estimates fall: a small model
#: reads the word better than the digits. On the MovieLens time split a 3-epoch fine-tune ranked at 0.691 AUC
#: with a seven-word scale, 0.679 with the percentage alone and 0.697 with this one (docs/baselines.md).
LIKELIHOOD = ((90, "almost certain"), (84, "very likely"), (78, "quite likely"), (72, "likely"), (66, "fairly likely"),
              (60, "somewhat likely"), (55, "slightly likely"), (50, "just above even"), (45, "just below even"),
              (40, "slightly unlikely"), (34, "somewhat unlikely"), (27, "fairly unlikely"), (18, "unlikely"),
              (0, "very unlikely"))


def likelihood_word(p: float | None) -> str | None:
    """The LIKELIHOOD word of probability ``p``, read at its whole percent (None for None)."""
    if p is None:
        return None
    percent = int(round(100 * p))
    return next(word for bound, word in LIKELIHOOD if percent >= bound)


def dense_vector(member: dict | None, candidate: dict | None) -> list[float]:
    """The STATS_DIM floats a classic ranker reads for one candidate (zeros for what is not declared)."""
    out = [0.0] * STATS_DIM
    if candidate:
        if candidate["n"] is not None:
            out[0] = float(np.log1p(candidate["n"]) / 5)
            out[1] = (candidate["positive"] / candidate["n"]) if candidate["n"] else 0.5
        if candidate.get("taste_share") is not None:
            out[4] = candidate["taste_share"] / 100
        elif candidate.get("taste_n") is not None:
            out[4] = 0.5
        if candidate.get("estimate") is not None:
            out[5] = candidate["estimate"] / 100
    if member:
        out[2] = float(np.log1p(member["n"]) / 5)
        out[3] = (member["positive"] / member["n"]) if member["n"] else 0.5
    for i, f in enumerate((candidate or {}).get("facets") or []):
        j = len(DENSE_BASE) + 2 * min(i, DENSE_FACETS - 1)
        if f["liked"] is not None:
            out[j] += f["liked"] / max(f["of_liked"], 1)
            out[j + 1] += f["disliked"] / max(f["of_disliked"], 1)
    return out
