"""Daily behaviour: which items each member is shown on each surface, and what they do.

Every impression gets true action probabilities from a hidden logit model
(interest match + social proof + quality + recency + activity + position + surface-specific terms),
and one outcome is drawn: a single action or none. The true probabilities are logged with it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from recbrew.data.schema import INTERACTIONS, NO_ACTION, TRUE_PROB_PREFIX
from recbrew.world.config import DAY, ITEM_KINDS, WORLD_START, SurfaceSpec, WorldConfig
from recbrew.world.entities import ITEM_KIND_CODES, ItemStore, Members
from recbrew.world.graph import SocialGraph, same_group
from recbrew.world.policy import SlatePolicy, SlateRequest, check_pick

#: Prior weight (in impressions) of the smoothed item rate used as the popularity score.
POPULARITY_PRIOR = 10.0


def action_names(surfaces: tuple[SurfaceSpec, ...]) -> list[str]:
    """Every action of the world, in surface order, without repeats."""
    return list(dict.fromkeys(a for s in surfaces for a, _ in s.actions))


def interaction_schema(surfaces: tuple[SurfaceSpec, ...]) -> pa.Schema:
    names = ["impression_id", "member_id", "item_id", "surface", "action", "timestamp", "position"]
    names += [TRUE_PROB_PREFIX + a for a in action_names(surfaces)]
    return INTERACTIONS.arrow_schema(names)


def _group_positions(keys: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within runs of equal consecutive keys."""
    n = len(keys)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    run = np.diff(np.r_[starts, n])
    return np.arange(n) - np.repeat(starts, run)


def _pick_in_rows(rng, matrix: sp.csr_matrix, rows: np.ndarray, weighted: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A random column from each CSR row (uniform, or in proportion to the entries); ``ok`` is False where
    the row is empty."""
    indptr, indices = matrix.indptr, matrix.indices
    length = indptr[rows + 1] - indptr[rows]
    ok = length > 0
    if len(indices) == 0:
        return np.full(len(rows), -1), ok
    if weighted:
        cum = np.concatenate([[0.0], np.cumsum(matrix.data, dtype=np.float64)])
        lo, hi = cum[indptr[rows]], cum[indptr[rows + 1]]
        pos = np.searchsorted(cum, lo + rng.random(len(rows)) * (hi - lo), side="right") - 1
    else:
        pos = indptr[rows] + np.floor(rng.random(len(rows)) * length).astype(np.int64)
    return np.where(ok, indices[np.clip(pos, 0, len(indices) - 1)], -1), ok


@dataclass
class DayLog:
    """What one simulated day produced."""

    interactions: pa.Table
    #: New connections made through people-you-may-know: (src, dst, timestamp).
    connections: tuple[np.ndarray, np.ndarray, np.ndarray]
    #: Per (surface, action): true-probability logits, popularity-score logits and outcomes.
    scored: list[tuple[str, str, np.ndarray, np.ndarray, np.ndarray]]


class Simulator:
    """Runs the world one day at a time, keeping only a bounded window of state."""

    def __init__(self, config: WorldConfig, members: Members, store: ItemStore, graph: SocialGraph):
        self.config = config
        self.b = config.behaviour
        self.members = members
        self.store = store
        self.graph = graph
        self.actions = action_names(config.surfaces)
        self.schema = interaction_schema(config.surfaces)
        self.pools: dict[str, np.ndarray] = {k: np.zeros(0, dtype=np.int64) for k in ITEM_KINDS}
        self.window: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=self.b.social_window)
        # Popularity statistics, per item: impressions and counts of each action (causal: updated after each day).
        self.item_impressions = np.zeros(0, dtype=np.float32)
        self.item_actions = {a: np.zeros(0, dtype=np.float32) for a in self.actions}
        self.action_rate = {(s.name, a): 1.0 / (1.0 + np.exp(-base)) for s in config.surfaces for a, base in s.actions}
        self.next_impression = 0
        #: Connections made during the window (sorted keys low * n + high), kept out of suggestions.
        self.made = np.zeros(0, dtype=np.int64)

    # Pools --------------------------------------------------------------------------------------
    def add_to_pool(self, kind: str, ids: np.ndarray) -> None:
        self.pools[kind] = np.concatenate([self.pools[kind], ids])

    def _expire(self, day: int) -> None:
        for kind, spec in ITEM_KINDS.items():
            if spec.lifetime:
                pool = self.pools[kind]
                self.pools[kind] = pool[self.store.created_day[pool] > day - spec.lifetime]

    def _grow_stats(self) -> None:
        extra = len(self.store) - len(self.item_impressions)
        if extra > 0:
            self.item_impressions = np.concatenate([self.item_impressions, np.zeros(extra, np.float32)])
            for a in self.actions:
                self.item_actions[a] = np.concatenate([self.item_actions[a], np.zeros(extra, np.float32)])

    # Social proof ---------------------------------------------------------------------------------
    def _engaged_by_connections(self, kind: str) -> sp.csr_matrix:
        """members x items: how many of each member's connections engaged with each item recently."""
        n = len(self.members)
        if self.window:
            who = np.concatenate([w[0] for w in self.window])
            what = np.concatenate([w[1] for w in self.window])
            sel = self.store.kind[what] == ITEM_KIND_CODES[kind]
            who, what = who[sel], what[sel]
        else:
            who = what = np.zeros(0, dtype=np.int64)
        engaged = sp.csr_matrix((np.ones(len(who), np.int32), (who, what)), shape=(n, len(self.store)))
        engaged.sum_duplicates()
        engaged.data[:] = 1  # a connection counts once however often they engaged
        proof = (self.graph.adjacency @ engaged).tocsr()
        proof.sort_indices()
        return proof

    @staticmethod
    def _lookup(matrix: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """``matrix[rows[i], cols[i]]`` for a CSR matrix with sorted indices, vectorized."""
        out = np.zeros(len(rows), dtype=np.float32)
        if matrix.nnz == 0 or len(rows) == 0:
            return out
        ncols = np.int64(matrix.shape[1])
        entry_rows = np.repeat(np.arange(matrix.shape[0], dtype=np.int64), np.diff(matrix.indptr))
        keys = entry_rows * ncols + matrix.indices
        want = rows.astype(np.int64) * ncols + cols
        at = np.minimum(np.searchsorted(keys, want), len(keys) - 1)
        hit = keys[at] == want
        out[hit] = matrix.data[at[hit]]
        return out

    # Candidates -----------------------------------------------------------------------------------
    def _interest_pick(self, rng, pool: np.ndarray, who: np.ndarray) -> np.ndarray:
        """Items of the member's own (mostly) or secondary function, as a targeting system would pick."""
        function = np.where(rng.random(len(who)) < 0.6, self.members.function[who], self.members.secondary[who])
        order = np.argsort(self.store.function[pool], kind="stable")
        sorted_f = self.store.function[pool][order]
        start = np.searchsorted(sorted_f, function)
        end = np.searchsorted(sorted_f, function, side="right")
        size = end - start
        pick = start + np.floor(rng.random(len(who)) * size).astype(np.int64)
        random = self._random_pick(rng, pool, len(who))
        return np.where(size > 0, pool[order][np.minimum(pick, len(pool) - 1)], random)

    def _random_pick(self, rng, pool: np.ndarray, n: int) -> np.ndarray:
        weight = np.exp(self.store.quality[pool].astype(np.float64))
        cdf = np.cumsum(weight)
        return pool[np.minimum(np.searchsorted(cdf, rng.random(n) * cdf[-1]), len(pool) - 1)]

    def _candidates(self, rng, surface: SurfaceSpec, who: np.ndarray, proof: sp.csr_matrix | None) -> np.ndarray:
        u = rng.random(len(who))
        social = u < surface.social_share
        interest = (u >= surface.social_share) & (u < surface.social_share + surface.interest_share)
        if surface.item_type == "member":
            return self._people(rng, who, social, interest)
        pool = self.pools[surface.item_type]
        item = self._random_pick(rng, pool, len(who))
        item[interest] = self._interest_pick(rng, pool, who[interest])
        if proof is not None and social.any():
            picked, ok = _pick_in_rows(rng, proof, who[social], weighted=True)
            item[np.flatnonzero(social)[ok]] = picked[ok]
        return item

    def _people(self, rng, who, fof, homophily) -> np.ndarray:
        """People-you-may-know: friends of friends, colleagues and classmates, or anyone."""
        adj = self.graph.adjacency
        joined = np.flatnonzero(self.members.joined_day < self._day)
        other = joined[rng.integers(0, len(joined), size=len(who))]
        friend, ok = _pick_in_rows(rng, adj, who[fof])
        fof_pick, ok2 = _pick_in_rows(rng, adj, np.where(ok, friend, 0))
        sel = np.flatnonzero(fof)[ok & ok2]
        other[sel] = fof_pick[ok & ok2]
        hsel = np.flatnonzero(homophily)
        same_company = rng.random(len(hsel)) < 0.6
        hc, hs = hsel[same_company], hsel[~same_company]
        other[hc] = same_group(rng, self.members.company, who[hc])
        other[hs] = same_group(rng, self.members.school, who[hs])
        # Members who have not joined yet cannot be suggested: map them to self, dropped by the caller.
        other = np.where(self.members.joined_day[other] < self._day, other, who)
        return self.store.member_item(other)

    def _pair_keys(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.minimum(a, b).astype(np.int64) * len(self.members) + np.maximum(a, b)

    def _made(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.isin(self._pair_keys(a, b), self.made)

    def _connect(self, who: np.ndarray, cand: np.ndarray, log: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """New edges from today's connects; a pair that connected both ways today becomes one edge."""
        c = np.flatnonzero(log["acted"])
        _, first = np.unique(self._pair_keys(who[c], cand[c]), return_index=True)
        c = c[np.sort(first)]
        self.made = np.union1d(self.made, self._pair_keys(who[c], cand[c]))
        return who[c], cand[c], log["timestamp"][c]

    # One day --------------------------------------------------------------------------------------
    def run_day(self, day: int, rng: np.random.Generator, policy: SlatePolicy | None = None) -> DayLog:
        """Simulate one day. Without ``policy`` each visit shows the items the world drew for it; with one, each
        visit draws ``policy.pool_factor`` times its slate size as a candidate pool and the policy picks and orders
        the slate (each surface then draws from its own stream, so visits are the same whatever the policy shows)."""
        self._day = day
        self._expire(day)
        self._grow_stats()
        active = np.flatnonzero(self.members.joined_day < day)
        proofs: dict[str, sp.csr_matrix] = {}
        parts, scored, engaged = [], [], []
        new_edges = (np.zeros(0, np.int64),) * 3
        streams = rng.spawn(len(self.config.surfaces)) if policy is not None else [rng] * len(self.config.surfaces)
        for surface, rng in zip(self.config.surfaces, streams, strict=True):
            # Visits, each showing a whole slate: the member sees several items at once, in slots 0, 1, ...
            visits = rng.poisson(surface.rate * self.members.activity[active])
            visitor = np.repeat(active, visits)
            if len(visitor) == 0 or (surface.item_type != "member" and len(self.pools[surface.item_type]) == 0):
                continue
            lo, hi = surface.slate
            sizes = rng.integers(lo, hi + 1, size=len(visitor))
            visit = np.repeat(np.arange(len(visitor)), sizes if policy is None else sizes * policy.pool_factor)
            who = visitor[visit]
            proof = None
            if surface.item_type != "member":
                if surface.item_type not in proofs:
                    proofs[surface.item_type] = self._engaged_by_connections(surface.item_type)
                proof = proofs[surface.item_type]
            item = self._candidates(rng, surface, who, proof)
            # One impression per (member, item) per surface and day; drop self-suggestions in pymk.
            key = who.astype(np.int64) * len(self.store) + item
            _, first = np.unique(key, return_index=True)
            first.sort()
            who, item, visit = who[first], item[first], visit[first]
            if surface.item_type == "member":
                cand = item - self.store.member_base
                already = (self._lookup(self.graph.adjacency, who, cand) > 0) | self._made(who, cand)
                keep = (cand != who) & ~already
                who, item, visit = who[keep], item[keep], visit[keep]
            if policy is not None:
                request = SlateRequest(day, surface, who, item, visit, sizes,
                                       lambda w=who, i=item, p=proof, s=surface: self.engage_probability(day, s, w, i, p))
                pick = check_pick(policy.choose(request), request)
                who, item, visit = who[pick], item[pick], visit[pick]
            # Slots within each visit's slate (after duplicates left). Sources were drawn independently per
            # slot, so slot order carries no source signal; the position effect is the world's own.
            position = _group_positions(visit)
            log = self._outcomes(rng, day, surface, who, item, position, proof, visit)
            parts.append(log["table"])
            scored.extend(log["scored"])
            if surface.item_type == "member":
                new_edges = self._connect(who, item - self.store.member_base, log)
            else:
                c = log["acted"]
                engaged.append((who[c], item[c]))
        self._update_stats(parts)
        if engaged:
            self.window.append((np.concatenate([e[0] for e in engaged]), np.concatenate([e[1] for e in engaged])))
        table = pa.concat_tables(parts) if parts else self.schema.empty_table()
        table = table.take(np.argsort(table["timestamp"].to_numpy(), kind="stable"))
        ids = np.arange(self.next_impression, self.next_impression + len(table), dtype=np.int64)
        self.next_impression += len(table)
        table = table.set_column(0, "impression_id", pa.array(ids))
        return DayLog(table, new_edges, scored)

    def engage_probability(self, day: int, surface: SurfaceSpec, who, item, proof) -> np.ndarray:
        """True probability of any action of the surface for each (member, item), shown in the first slot."""
        logits = self._logits(day, surface, who, item, np.zeros(len(who), np.int64), proof)
        expl = np.exp(logits)
        return expl.sum(axis=1) / (1.0 + expl.sum(axis=1))

    def _outcomes(self, rng, day, surface: SurfaceSpec, who, item, position, proof, visit) -> dict:
        n = len(who)
        logits = self._logits(day, surface, who, item, position, proof)
        expl = np.exp(logits)
        probs = expl / (1.0 + expl.sum(axis=1, keepdims=True))
        cdf = np.cumsum(probs, axis=1)
        outcome = (rng.random(n)[:, None] >= cdf).sum(axis=1)  # == len(actions) means no action
        names = np.array([a for a, _ in surface.actions] + [NO_ACTION], dtype=object)
        # Every impression of one visit shares its start time; slots follow seconds apart.
        first = np.r_[True, visit[1:] != visit[:-1]] if n else np.zeros(0, bool)
        session = rng.integers(0, DAY - 3600, size=int(first.sum()))
        session = np.repeat(session, np.diff(np.r_[np.flatnonzero(first), n]))
        timestamp = WORLD_START + day * DAY + session + 7 * position
        columns = {
            "impression_id": np.zeros(n, np.int64),
            "member_id": who.astype(np.int64),
            "item_id": item.astype(np.int64),
            "surface": pa.array([surface.name] * n, pa.string()),
            "action": pa.array(names[outcome], pa.string()),
            "timestamp": timestamp.astype(np.int64),
            "position": position.astype(np.int32),
        }
        scored = []
        for k, (action, _) in enumerate(surface.actions):
            columns[TRUE_PROB_PREFIX + action] = probs[:, k].astype(np.float32)
            rate = self.action_rate[(surface.name, action)]
            pop = (self.item_actions[action][item] + POPULARITY_PRIOR * rate) / (self.item_impressions[item] + POPULARITY_PRIOR)
            scored.append((surface.name, action, logits[:, k], np.log(pop) - np.log1p(-pop), outcome == k))
        for action in self.actions:
            columns.setdefault(TRUE_PROB_PREFIX + action, pa.nulls(n, pa.float32()))
        table = pa.table(columns, schema=self.schema)
        return {"table": table, "scored": scored, "acted": outcome < len(surface.actions), "timestamp": timestamp}

    def _logits(self, day, surface: SurfaceSpec, who, item, position, proof) -> np.ndarray:
        """[n, actions] true logits of each impression (the hidden model)."""
        m, st, b = self.members, self.store, self.b
        n = len(who)
        interest = m.interest_on(day, who, st.function[item].astype(np.int64), st.industry[item].astype(np.int64))
        lifetime = ITEM_KINDS[surface.item_type].lifetime if surface.item_type in ITEM_KINDS else 0
        age = np.maximum(day - st.created_day[item], 0).astype(np.float32)
        recency = age / lifetime if lifetime else np.minimum(age / 60.0, 1.0)
        if surface.item_type == "member":
            cand = item - st.member_base
            adj = self.graph.adjacency
            social = np.asarray(adj[who].multiply(adj[cand]).sum(axis=1)).ravel().astype(np.float32)
            extra = (1.0 * (m.company[who] == m.company[cand]) + 0.7 * (m.school[who] == m.school[cand])
                     + 0.4 * (m.location[who] == m.location[cand]))
            recency = np.zeros(n, np.float32)
        else:
            social = self._lookup(proof, who, item)
            extra = np.zeros(n, np.float32)
            if surface.item_type == "job":
                extra = (-0.5 * np.abs(m.seniority[who].astype(np.float32) - st.seniority[item])
                         + 0.6 * ((m.location[who] == st.location[item]) | st.remote[item]) + 1.0 * m.open_to_work[who])
            elif surface.item_type == "event":
                extra = 0.8 * (m.location[who] == st.location[item])
        shared = (b.interest * interest + b.social * (np.log1p(social) - b.social_center) + b.quality * st.quality[item]
                  - b.recency * recency + b.activity * np.log(m.activity[who]) - b.position * np.log1p(position)
                  + extra).astype(np.float64)
        return np.stack([base + shared for _, base in surface.actions], axis=1)

    def _update_stats(self, parts: list[pa.Table]) -> None:
        if not parts:
            return
        day = pa.concat_tables(parts)
        item = day["item_id"].to_numpy()
        action = day["action"].to_numpy(zero_copy_only=False)
        np.add.at(self.item_impressions, item, 1.0)
        surface = day["surface"].to_numpy(zero_copy_only=False)
        for a in self.actions:
            hit = action == a
            np.add.at(self.item_actions[a], item[hit], 1.0)
        for s in self.config.surfaces:
            on = surface == s.name
            if on.any():
                for a, _ in s.actions:
                    # Running global rate: the prior of the smoothed item popularity.
                    self.action_rate[(s.name, a)] = 0.8 * self.action_rate[(s.name, a)] + 0.2 * float((action[on] == a).mean())
