"""Collaborative estimate: a small matrix factorization of the task's labels, fitted on the training side of an
examples folder, whose probability the prompt shows as one line (``stats.collab``).

The as-of-time statistics (`recbrew.verbalize.stats`) count only what happened before a request. A classic
ranker learns more than that: its member and item embeddings are fitted on every training request, so on a
split that is not in time (leave-last) they also know how other members rated the item later. This module gives
the LLM that same kind of signal as text: the prediction of a logistic matrix factorization (a global bias,
member and item biases, 16 factors each) of the task's positive and negative actions. (BinLLM and CoLLM put such
a model's embeddings into the prompt instead; a prediction is one line that a small model reads as it reads the
estimate, and it passes through every scorer and vLLM unchanged.)

What it is fitted on (:func:`training_pairs`): every labelled interaction of the task except the targets of
validation and test requests, and, for a split in time over the whole log, except everything from the first
held-out moment on. Test and validation prompts read the model fitted on all of that (saved in the examples
folder as ``collab/TASK.npz``, which `recbrew serve --examples` and `bench injection` load, so a served prompt
equals the built one). A training prompt reads a model fitted without its own request's targets
(:data:`FOLDS`-fold cross-fitting over the training requests): were its own label inside, the prompt would state
the answer and the fine-tune would learn to trust the line more than it deserves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recbrew.errors import IntegrityError, UserError

#: Training requests are split into this many folds; a fold's prompts read the model fitted without its targets.
FOLDS = 5
#: Factors per member and item; full-batch Adam steps, learning rate and L2 weight of the fit.
DIM, STEPS, LR, L2 = 16, 300, 0.05, 0.05
#: Where an examples folder keeps the full model of each task that declares ``stats.collab``.
COLLAB_DIR = "collab"


@dataclass(frozen=True)
class CollabModel:
    """Fitted factors; ``probability(member, item)`` for any pair (a member or item the fit never saw adds
    nothing beyond the biases it has)."""

    member_ids: np.ndarray  # sorted
    item_ids: np.ndarray  # sorted
    member_bias: np.ndarray
    item_bias: np.ndarray
    member_factors: np.ndarray
    item_factors: np.ndarray
    bias: float

    @staticmethod
    def _row(ids: np.ndarray, key: int) -> int | None:
        i = int(np.searchsorted(ids, key))
        return i if i < len(ids) and ids[i] == key else None

    def logit(self, member: int, item: int) -> float:
        z = float(self.bias)
        m, i = self._row(self.member_ids, int(member)), self._row(self.item_ids, int(item))
        if m is not None:
            z += float(self.member_bias[m])
        if i is not None:
            z += float(self.item_bias[i])
        if m is not None and i is not None:
            z += float(np.dot(self.member_factors[m].astype(np.float64), self.item_factors[i].astype(np.float64)))
        return z

    def probability(self, member: int, item: int) -> float:
        return float(1.0 / (1.0 + np.exp(-self.logit(member, item))))

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            np.savez(f, member_ids=self.member_ids, item_ids=self.item_ids, member_bias=self.member_bias,
                     item_bias=self.item_bias, member_factors=self.member_factors, item_factors=self.item_factors,
                     bias=np.float32(self.bias))

    @classmethod
    def load(cls, path: str | Path) -> CollabModel:
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(z["member_ids"], z["item_ids"], z["member_bias"], z["item_bias"], z["member_factors"],
                           z["item_factors"], float(z["bias"]))
        except (OSError, ValueError, KeyError) as exc:
            raise IntegrityError(f"{path}: not a collaborative model ({exc}); build the examples again with "
                                 "`recbrew data build`") from None


def fit(member: np.ndarray, item: np.ndarray, positive: np.ndarray, seed: int = 0) -> CollabModel:
    """Logistic matrix factorization of (member, item) -> positive: full-batch Adam on the mean log loss plus L2,
    gradients summed per member and item by sparse products (in a fixed order: the same fit on every run)."""
    from scipy import sparse

    f32 = np.float32
    order = np.lexsort((item, member))  # rows by member: the gathers below read memory in order
    member, item, positive = member[order], item[order], positive[order]
    m_ids, mi = np.unique(member, return_inverse=True)
    i_ids, ii = np.unique(item, return_inverse=True)
    n = len(mi)
    rows = np.arange(n)
    to_m = sparse.csr_matrix((np.ones(n, f32), (mi, rows)), shape=(len(m_ids), n))
    to_i = sparse.csr_matrix((np.ones(n, f32), (ii, rows)), shape=(len(i_ids), n))
    rng = np.random.default_rng(seed)
    params = [(0.01 * rng.standard_normal((len(m_ids), DIM))).astype(f32),
              (0.01 * rng.standard_normal((len(i_ids), DIM))).astype(f32),
              np.zeros(len(m_ids), f32), np.zeros(len(i_ids), f32), np.zeros(1, f32)]
    moments = [(np.zeros_like(x), np.zeros_like(x)) for x in params]
    y = positive.astype(f32)
    for step in range(1, STEPS + 1):
        p, q, bm, bi, b = params
        pm, qi = p[mi], q[ii]
        z = b[0] + bm[mi] + bi[ii] + np.einsum("nd,nd->n", pm, qi)
        dz = ((1 / (1 + np.exp(-z)) - y) / n).astype(f32)
        w, wb = f32(2 * L2 / n), f32(0.2 * L2 / n)
        grads = [to_m @ (dz[:, None] * qi + w * pm), to_i @ (dz[:, None] * pm + w * qi),
                 to_m @ (dz + wb * bm[mi]), to_i @ (dz + wb * bi[ii]), np.array([dz.sum()], f32)]
        for x, g, (m1, m2) in zip(params, grads, moments, strict=True):  # Adam, torch's defaults
            m1 *= f32(0.9)
            m1 += f32(0.1) * g
            m2 *= f32(0.999)
            m2 += f32(0.001) * g * g
            x -= f32(LR) * (m1 / f32(1 - 0.9 ** step)) / (np.sqrt(m2 / f32(1 - 0.999 ** step)) + f32(1e-8))
    p, q, bm, bi, b = params
    return CollabModel(m_ids, i_ids, bm, bi, p, q, float(b[0]))


def training_pairs(corpus, positive, negatives, held_out: set[tuple[int, int]], before: int | None):
    """(member, item, positive) of every labelled interaction the fit may read: not a held-out (member, item)
    pair and, with ``before``, strictly before that moment."""
    inter = corpus.interactions
    action = inter["action"].to_numpy(zero_copy_only=False).astype(str)
    keep = np.isin(action, list(positive) + list(negatives))
    member, item = inter["member_id"].to_numpy(), inter["item_id"].to_numpy()
    if before is not None:
        keep &= inter["timestamp"].to_numpy() < before
    if held_out:  # pairs as dense codes: any id range fits in int64
        m_ids, m_code = np.unique(member, return_inverse=True)
        i_ids, i_code = np.unique(item, return_inverse=True)
        pairs = np.array(sorted(held_out), dtype=np.int64).reshape(-1, 2)
        hm, hi = np.searchsorted(m_ids, pairs[:, 0]), np.searchsorted(i_ids, pairs[:, 1])
        hm, hi = np.minimum(hm, len(m_ids) - 1), np.minimum(hi, len(i_ids) - 1)
        known = (m_ids[hm] == pairs[:, 0]) & (i_ids[hi] == pairs[:, 1])
        width = np.int64(len(i_ids))
        keep &= ~np.isin(m_code.astype(np.int64) * width + i_code, hm[known] * width + hi[known])
    return member[keep], item[keep], np.isin(action[keep], list(positive))


@dataclass
class CollabSet:
    """One task's models in a build: ``full`` for validation and test prompts (and serving), ``folds[k]`` for the
    training requests whose index falls in fold k."""

    full: CollabModel
    folds: list[CollabModel]

    def for_request(self, split: str, index: int) -> CollabModel:
        return self.folds[index % FOLDS] if split == "train" else self.full


def fit_for_build(corpus, task, req, before: int | None, seed: int, echo=None) -> CollabSet:
    """The full model and the FOLDS cross-fitted ones for one task's requests ``req`` (see the module docstring)."""
    split = np.asarray(req.split).astype(str)
    pairs: list[set[tuple[int, int]]] = [set() for _ in range(FOLDS)]
    held: set[tuple[int, int]] = set()
    for k in range(len(req)):
        cands = req.candidates[req.offsets[k]:req.offsets[k + 1]]
        target = held if split[k] != "train" else pairs[k % FOLDS]
        target.update((int(req.member_id[k]), int(c)) for c in cands)
    label = (tuple(task.label.positive), tuple(task.label.negatives))
    member, item, pos = training_pairs(corpus, *label, held, before)
    if echo:
        echo(f"collab: fitting {task.name}'s rating model on {len(member):,} interactions "
             f"(and {FOLDS} cross-fitted ones for the training prompts)")
    full = fit(member, item, pos, seed)
    folds = []
    for k in range(FOLDS):
        m, i, y = training_pairs(corpus, *label, held | pairs[k], before)
        folds.append(fit(m, i, y, seed))
    return CollabSet(full, folds)


def model_path(root: str | Path, task: str) -> Path:
    return Path(root) / COLLAB_DIR / f"{task}.npz"


def load_models(root: str | Path, catalog) -> dict[str, CollabModel]:
    """The full model of every task in ``catalog`` that declares ``stats.collab``, from the examples folder
    ``root`` (an IntegrityError naming the file when one is missing)."""
    out = {}
    for name, task in catalog.items():
        if task.stats.collab:
            path = model_path(root, name)
            if not path.is_file():
                raise IntegrityError(f"{path}: missing (task {name} declares stats.collab); build the examples "
                                     "again with `recbrew data build`")
            out[name] = CollabModel.load(path)
    return out


def require_models(catalog, models) -> None:
    """UserError naming the tasks of ``catalog`` that declare ``stats.collab`` but have no model in ``models``."""
    missing = sorted(n for n, t in catalog.items() if t.stats.collab and n not in models)
    if missing:
        raise UserError(f"task(s) {', '.join(missing)} declare stats.collab: serve them with --examples DIR (the "
                        "folder `recbrew data build` fitted their rating model into)")
