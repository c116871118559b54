"""A Bayesian last layer on a ranker's final representation (neural-linear bandit), as LiRank explores.

The network's task head is the posterior mean of the last layer; its uncertainty is a Laplace
approximation of logistic regression on the final representation h, one per task:

    precision A_t = prior * I + sum over impressions of task t of p (1 - p) h h^T

where p is the predicted probability. Thompson sampling draws a weight change
delta ~ N(0, scale^2 A_t^-1) per request and scores each candidate with logit + <h, delta>: an item whose
representation lies where the logs have little data gets a wide draw and so gets shown now and
then. The posterior is updated once a day from the day's impressions; ``decay`` < 1 forgets old
days, since the representation itself moves as the network trains.

The representation alone does not know how much the logs have seen *this* item: a new item whose
attributes are common looks familiar. So the layer's input also carries the item itself (a one-hot
item indicator, i.e. a per-item logit offset b_i with prior N(0, tau^2)), whose Laplace posterior is
diagonal: b_i ~ N(m_i, 1 / q_i) with q_i = 1 / tau^2 + sum over the item's impressions of p (1 - p). An item
never shown draws with the full prior spread, one shown a thousand times hardly at all. The mean m_i
follows the online Laplace update of Chapelle & Li (2011): one Newton step a day,
m_i += sum(y - p_i) / q_i, with p_i the probability with the current m_i, so what the network has
learned about the item since (its own id row) is not counted twice: it shows up as smaller residuals.
tau^2, the variance of what an item adds beyond what the network predicts, is estimated from the
data (method of moments on each day's residuals of the network, scored before it learned from them).
"""

from __future__ import annotations

import numpy as np

#: tau^2 until the first day's residuals have been seen, and its floor.
ITEM_VARIANCE_START = 0.25
ITEM_VARIANCE_FLOOR = 1e-3


class BayesianLastLayer:
    """Per-task Gaussian posterior precision of the last layer's weights around the trained head, and of a
    per-item offset."""

    def __init__(self, dim: int, tasks: int, prior: float = 1.0, scale: float = 1.0, decay: float = 1.0):
        self.dim, self.prior, self.scale, self.decay = dim, prior, scale, decay
        self.precision = np.repeat(np.eye(dim)[None] * prior, tasks, axis=0)
        #: Sum of p (1 - p) over each (task, item)'s impressions (the data part of b_i's precision).
        self.item_weight = np.zeros((tasks, 0))
        #: Posterior mean m_i of each (task, item)'s offset.
        self.item_mean = np.zeros((tasks, 0))
        #: Method-of-moments sums over (task, item) groups of out-of-sample residuals: sum(r^2 - W), sum(W^2).
        self.moments = np.zeros(2)
        self._chol: dict[int, np.ndarray] = {}

    @property
    def item_variance_prior(self) -> float:
        """tau^2: the prior variance of an item's offset (estimated once residuals are in)."""
        if self.moments[1] <= 0:
            return ITEM_VARIANCE_START
        return max(self.moments[0] / self.moments[1], ITEM_VARIANCE_FLOOR)

    def update(self, h: np.ndarray, task: np.ndarray, p: np.ndarray, item: np.ndarray | None = None,
               label: np.ndarray | None = None) -> None:
        """Fold one day of impressions in: representations ``h`` [n, dim], task index and predicted probability;
        with ``item`` the per-item precision too, with ``label`` (and ``p`` scored before training on them)
        the estimate of tau^2."""
        prior = np.eye(self.dim) * self.prior
        self.precision = prior + self.decay * (self.precision - prior)
        w = np.clip(p * (1.0 - p), 1e-6, None)
        for t in np.unique(task):
            sel = task == t
            hs = h[sel].astype(np.float64)
            self.precision[t] += (hs * w[sel, None]).T @ hs
        if item is not None:
            self.item_weight *= self.decay
            size = int(item.max()) + 1 if len(item) else 0
            if size > self.item_weight.shape[1]:
                pad = ((0, 0), (0, size - self.item_weight.shape[1]))
                self.item_weight, self.item_mean = np.pad(self.item_weight, pad), np.pad(self.item_mean, pad)
            if label is not None and len(item):
                # Newton step of the offsets' posterior mean from the day's residuals (before q grows by them).
                full = self.mean_probability(p, item, task)
                wf = np.clip(full * (1.0 - full), 1e-6, None)
                q = np.zeros_like(self.item_weight)
                np.add.at(q, (task, item), wf)
                r = np.zeros_like(self.item_weight)
                np.add.at(r, (task, item), label.astype(np.float64) - full)
                self.item_mean += r / (1.0 / self.item_variance_prior + self.item_weight + q)
            np.add.at(self.item_weight, (task, item), w)
            if label is not None and len(item):
                # r_g = sum(y - p) over a (task, item) group has E[r^2] = W + W^2 tau^2 (W = sum p(1-p)).
                _, g = np.unique(task * size + item, return_inverse=True)
                r = np.bincount(g, label.astype(np.float64) - p)
                wg = np.bincount(g, w)
                self.moments = self.decay * self.moments + [float((r * r - wg).sum()), float((wg * wg).sum())]
        self._chol = {}

    def _factor(self, t: int) -> np.ndarray:
        """L with L L^T = A_t^-1 (from the Cholesky factor of A_t: A_t = C C^T, A_t^-1 = C^-T C^-1)."""
        if t not in self._chol:
            c = np.linalg.cholesky(self.precision[t])
            self._chol[t] = np.linalg.inv(c).T
        return self._chol[t]

    def variance(self, h: np.ndarray, task: int) -> np.ndarray:
        """Posterior variance of the logit, h^T A^-1 h, per row of ``h`` (before ``scale``)."""
        z = h.astype(np.float64) @ self._factor(task)
        return (z * z).sum(1)

    def offset_mean(self, item: np.ndarray, task: np.ndarray | int) -> np.ndarray:
        """Posterior mean m_i of each item's offset (0 for an item never shown)."""
        task = np.broadcast_to(task, item.shape)
        out = np.zeros(len(item))
        known = item < self.item_mean.shape[1]
        out[known] = self.item_mean[task[known], item[known]]
        return out

    def mean_probability(self, p: np.ndarray, item: np.ndarray, task: np.ndarray | int) -> np.ndarray:
        """The network's probability ``p`` with each item's mean offset added to its logit."""
        p = np.clip(p, 1e-6, 1 - 1e-6)
        return 1.0 / (1.0 + np.exp(-(np.log(p / (1 - p)) + self.offset_mean(item, task))))

    def item_variance(self, item: np.ndarray, task: int) -> np.ndarray:
        """Posterior variance of each item's offset, 1 / (1 / tau^2 + W_i) (before ``scale``)."""
        seen = self.item_weight[task]
        weight = np.zeros(len(item))
        known = item < len(seen)
        weight[known] = seen[item[known]]
        return 1.0 / (1.0 / self.item_variance_prior + weight)

    def sample_offsets(self, h: np.ndarray, task: int, group: np.ndarray, groups: int,
                       rng: np.random.Generator, item: np.ndarray | None = None) -> np.ndarray:
        """<h, delta_g> (+ b_i) for each row, with one draw delta_g ~ N(0, scale^2 A^-1) per group (request) and,
        with ``item``, one b_i ~ N(m_i, scale^2 item_variance) per row."""
        delta = rng.standard_normal((groups, self.dim)) @ self._factor(task).T * self.scale
        out = (h.astype(np.float64) * delta[group]).sum(1)
        if item is not None:
            out += self.offset_mean(item, task) + rng.standard_normal(len(item)) * np.sqrt(
                self.item_variance(item, task)) * self.scale
        return out

    def state(self) -> dict:
        return {"dim": self.dim, "prior": self.prior, "scale": self.scale, "decay": self.decay,
                "precision": self.precision, "item_weight": self.item_weight, "item_mean": self.item_mean,
                "moments": self.moments}

    @classmethod
    def from_state(cls, state: dict) -> BayesianLastLayer:
        layer = cls(state["dim"], len(state["precision"]), state["prior"], state["scale"], state["decay"])
        layer.precision = np.array(state["precision"])
        layer.item_weight = np.array(state.get("item_weight", layer.item_weight))
        layer.item_mean = np.array(state.get("item_mean", np.zeros_like(layer.item_weight)))
        layer.moments = np.array(state.get("moments", layer.moments))
        return layer
