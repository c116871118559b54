"""The social graph: connections with homophily plus preferential attachment, and follows."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from recbrew.data.schema import EDGES
from recbrew.world.config import DAY, WORLD_START, WorldConfig
from recbrew.world.entities import Companies, Members

EDGE_SCHEMA = EDGES.arrow_schema(["src", "dst", "kind", "timestamp"])
#: Share of connection proposals by how the partner is found.
_MODES = {"company": 0.25, "function": 0.2, "school": 0.1, "industry": 0.1, "location": 0.12, "attachment": 0.23}


def same_group(rng: np.random.Generator, key: np.ndarray, who: np.ndarray) -> np.ndarray:
    """For each member in ``who``, a uniformly random member with the same ``key``."""
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    start = np.searchsorted(sorted_key, key[who])
    end = np.searchsorted(sorted_key, key[who], side="right")
    return order[start + np.floor(rng.random(len(who)) * (end - start)).astype(np.int64)]


def edge_table(src, dst, kind: str, timestamp) -> pa.Table:
    return pa.table(
        {"src": np.asarray(src, np.int64), "dst": np.asarray(dst, np.int64),
         "kind": pa.array([kind] * len(src), pa.string()), "timestamp": np.asarray(timestamp, np.int64)},
        schema=EDGE_SCHEMA,
    )


def _formed_at(rng, members: Members, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """When an edge between members a and b formed: after both joined, before day 0 if both were there."""
    later = np.maximum(members.joined_at[a], members.joined_at[b])
    # Edges of members already there spread between the later join and day 0; a newcomer's
    # connections form within hours of joining (contact import).
    span = np.where(later < WORLD_START, WORLD_START - later, 6 * 3600)
    return later + np.floor(rng.random(len(a)) * span).astype(np.int64)


@dataclass
class SocialGraph:
    src: np.ndarray
    dst: np.ndarray
    timestamp: np.ndarray
    #: Members' pull as creators: who gets followed and attached to.
    influence: np.ndarray
    adjacency: sp.csr_matrix

    @classmethod
    def generate(cls, rng: np.random.Generator, config: WorldConfig, members: Members) -> SocialGraph:
        n = len(members)
        influence = (rng.pareto(1.1, size=n) + 1.0) * members.activity
        proposals = rng.poisson(config.mean_degree / 2.0 * np.sqrt(members.activity))
        who = np.repeat(np.arange(n), proposals)
        mode = rng.choice(len(_MODES), size=len(who), p=np.array(list(_MODES.values())))
        partner = np.empty_like(who)
        keys = {"company": members.company, "function": members.function, "school": members.school, "industry": members.industry,
                "location": members.location}
        for code, name in enumerate(_MODES):
            sel = mode == code
            if name == "attachment":
                # Chung-Lu style: partners drawn in proportion to influence gives the heavy-tailed degrees
                # that preferential attachment grows.
                partner[sel] = rng.choice(n, size=int(sel.sum()), p=influence / influence.sum())
            else:
                partner[sel] = same_group(rng, keys[name], who[sel])
        a, b = np.minimum(who, partner), np.maximum(who, partner)
        keep = a != b
        pair = np.unique(a[keep].astype(np.int64) * n + b[keep])
        a, b = pair // n, pair % n
        ts = _formed_at(rng, members, a, b)
        adjacency = sp.csr_matrix(
            (np.ones(2 * len(a), dtype=np.int32), (np.concatenate([a, b]), np.concatenate([b, a]))), shape=(n, n)
        )
        adjacency.sort_indices()
        return cls(a, b, ts, influence, adjacency)

    def connections(self) -> pa.Table:
        return edge_table(self.src, self.dst, "connection", self.timestamp)

    def follows(self, rng: np.random.Generator, members: Members, companies: Companies) -> list[pa.Table]:
        """Members follow their company, a few others in their industry, and creators."""
        n = len(members)
        extra = rng.poisson(1.5, size=n)
        who = np.repeat(np.arange(n), extra)
        other = companies.sample(rng, len(who), industry=members.industry[who])
        src = np.concatenate([np.arange(n), who])
        pair = np.unique(src.astype(np.int64) * len(companies) + np.concatenate([members.company, other]))
        src, dst = pair // len(companies), pair % len(companies)
        company_ts = np.maximum(members.joined_at[src], WORLD_START - 30 * DAY)
        # Creators: half chosen in the member's own function, half by overall pull.
        k = rng.poisson(3.0, size=n)
        fwho = np.repeat(np.arange(n), k)
        by_function = same_group(rng, members.function, fwho)
        by_pull = rng.choice(n, size=len(fwho), p=self.influence / self.influence.sum())
        creator = np.where(rng.random(len(fwho)) < 0.5, by_function, by_pull)
        keep = creator != fwho
        pair = np.unique(fwho[keep].astype(np.int64) * n + creator[keep])
        fsrc, fdst = pair // n, pair % n
        return [
            edge_table(src, dst, "follows_company", company_ts),
            edge_table(fsrc, fdst, "follows_member", _formed_at(rng, members, fsrc, fdst)),
        ]
