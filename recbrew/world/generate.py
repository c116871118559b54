"""`recbrew world generate`: build the synthetic network and stream it to Parquet, day by day."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from recbrew.data.io import staged_directory
from recbrew.errors import UserError
from recbrew.world.behavior import Simulator, interaction_schema
from recbrew.world.card import ActionStats
from recbrew.world.config import DAY, ITEM_KINDS, WORLD_START, WorldConfig
from recbrew.world.entities import ITEM_SCHEMA, Companies, ItemStore, Members, item_table
from recbrew.world.graph import EDGE_SCHEMA, SocialGraph, edge_table
from recbrew.world.items import ItemFactory

PARQUET_OPTIONS = {"compression": "zstd", "use_dictionary": True, "write_statistics": True}
CARD_FILE = "world_card.json"


def _rng(config: WorldConfig, *stream: int) -> np.random.Generator:
    """One independent, reproducible random stream per stage (and per day)."""
    return np.random.default_rng([config.seed, *stream])


def validate(config: WorldConfig) -> None:
    if config.members < 50:
        raise UserError(f"--members must be at least 50 (got {config.members})")
    if config.days < 1:
        raise UserError(f"--days must be at least 1 (got {config.days})")
    if config.seed < 0:
        raise UserError(f"--seed must be non-negative (got {config.seed})")


def generate_world(config: WorldConfig, out: str | Path, *, force: bool = False, progress: bool = True) -> dict:
    """Generate the world into ``out`` (written aside, then moved in place) and return its card."""
    validate(config)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise UserError(f"{out} already exists and is not empty; pass --force to replace it")
    with staged_directory(out) as staging:
        card = _generate(config, staging, progress)
    return card


class _Sink:
    """A Parquet file written in row groups as data arrives.

    A row group is written once ``chunk_rows`` rows or ``max_bytes`` bytes are buffered, whichever
    comes first, so memory stays bounded however many days are simulated (item rows carry text and
    reach the byte limit long before the row limit).
    """

    def __init__(self, path: Path, schema: pa.Schema, chunk_rows: int, max_bytes: int = 16 << 20):
        self.writer = pq.ParquetWriter(path, schema, **PARQUET_OPTIONS)
        self.chunk_rows, self.max_bytes = chunk_rows, max_bytes
        self.buffer: list[pa.Table] = []
        self.buffered = 0
        self.buffered_bytes = 0
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        if len(table) == 0:
            return
        self.buffer.append(table)
        self.buffered += len(table)
        self.buffered_bytes += table.nbytes
        if self.buffered >= self.chunk_rows or self.buffered_bytes >= self.max_bytes:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            self.writer.write_table(pa.concat_tables(self.buffer), row_group_size=self.chunk_rows)
            self.rows += self.buffered
            self.buffer, self.buffered, self.buffered_bytes = [], 0, 0

    def close(self) -> int:
        self.flush()
        self.writer.close()
        return self.rows


def _member_cards(members_table: pa.Table, store: ItemStore) -> pa.Table:
    """Members as items, so people-you-may-know impressions point at an item like every other surface."""
    ids = members_table["member_id"].to_numpy()
    return item_table(
        store.member_item(ids), "member",
        title=members_table["name"], text=members_table["headline"], ref_id=ids,
        company_id=members_table["company_id"], company=members_table["company"],
        function=members_table["function"], industry=members_table["industry"],
        location=members_table["location"], seniority=members_table["seniority"],
        skills=members_table["skills"], created_at=members_table["joined_at"],
    )


def _new_items(config: WorldConfig, kind: str, rng: np.random.Generator, initial: bool) -> tuple[int, np.ndarray]:
    """How many items of ``kind`` to create, and their creation days (initial stock or one day's arrivals)."""
    spec = ITEM_KINDS[kind]
    daily = max(spec.min_per_day, spec.per_member_day * config.members)
    if not initial:
        n = int(rng.poisson(daily))
        return n, np.zeros(n, dtype=np.int32)
    if spec.lifetime:
        n = int(rng.poisson(daily * spec.lifetime))
        return n, -rng.integers(1, spec.lifetime + 1, size=n).astype(np.int32)
    n = max(spec.catalogue_min, int(spec.catalogue_per_member * config.members))
    return n, -rng.integers(1, 366, size=n).astype(np.int32)


@dataclass
class OpenWorld:
    """A world being run: entities, graph, item store and the day simulator, before anything is written.

    ``recbrew world generate`` streams it to Parquet; ``recbrew simulate`` runs the same world with a slate
    policy. Each stage draws from its own seeded stream, so both see the same members, graph and items.
    """

    config: WorldConfig
    companies: Companies
    members: Members
    members_table: pa.Table
    graph: SocialGraph
    store: ItemStore
    factory: ItemFactory
    sim: Simulator
    item_counts: dict

    def create_items(self, rng: np.random.Generator, day: int | None) -> list[pa.Table]:
        """The initial stock (``day=None``) or one day's new items, added to the pools; their tables."""
        # Authors joined before the items' creation day (the initial stock reaches back a year).
        authors = np.flatnonzero(self.members.joined_day < (day if day is not None else -366))
        tables = []
        for kind in ITEM_KINDS:
            n, days = _new_items(self.config, kind, rng, initial=day is None)
            if n == 0:
                continue
            table = self.factory.create(kind, rng, n, days + (day or 0), authors)
            tables.append(table)
            self.sim.add_to_pool(kind, table["item_id"].to_numpy())
            self.item_counts[kind] = self.item_counts.get(kind, 0) + n
        return tables

    def day_rng(self, day: int) -> np.random.Generator:
        return _rng(self.config, 6, day)


def open_world(config: WorldConfig) -> tuple[OpenWorld, list[pa.Table], list[pa.Table]]:
    """The world at day 0: its state, the initial edge tables and the initial item tables (in write order)."""
    rng = _rng(config, 0)
    companies = Companies.generate(rng, config.companies)
    members = Members.generate(rng, config, companies)
    members_table = members.table(_rng(config, 1), companies)
    graph = SocialGraph.generate(_rng(config, 2), config, members)
    edges = [graph.connections(), *graph.follows(_rng(config, 3), members, companies)]
    store = ItemStore(companies, members, _rng(config, 4))
    factory = ItemFactory(store, members, companies)
    items = [companies.table(), _member_cards(members_table, store)]
    sim = Simulator(config, members, store, graph)
    world = OpenWorld(config, companies, members, members_table, graph, store, factory, sim,
                      {"company": len(companies), "member": len(members)})
    items += world.create_items(_rng(config, 5), None)
    return world, edges, items


def _generate(config: WorldConfig, out: Path, progress: bool) -> dict:
    world, initial_edges, initial_items = open_world(config)
    members, graph, sim, companies = world.members, world.graph, world.sim, world.companies
    pq.write_table(world.members_table, out / "members.parquet", **PARQUET_OPTIONS)
    edges = _Sink(out / "edges.parquet", EDGE_SCHEMA, config.chunk_rows)
    for table in initial_edges:
        edges.write(table)
    items = _Sink(out / "items.parquet", ITEM_SCHEMA, config.chunk_rows)
    for table in initial_items:
        items.write(table)
    item_counts = world.item_counts
    interactions = _Sink(out / "interactions.parquet", interaction_schema(config.surfaces), config.chunk_rows)
    stats = ActionStats()
    new_connections = 0
    for day in tqdm(range(config.days), desc="simulating days", unit="day", disable=not progress):
        day_rng = world.day_rng(day)
        log = sim.run_day(day, day_rng)
        interactions.write(log.interactions)
        src, dst, ts = log.connections
        edges.write(edge_table(src, dst, "connection", ts))
        new_connections += len(src)
        for surface, action, oracle, popularity, label in log.scored:
            stats.add(surface, action, oracle, popularity, label)
        surfaces = log.interactions["surface"].value_counts()
        for entry in surfaces.to_pylist():
            stats.count_impressions(entry["values"], entry["counts"])
        # Items created today are shown from tomorrow on.
        for table in world.create_items(day_rng, day):
            items.write(table)

    n_interactions = interactions.close()
    n_items = items.close()
    n_edges = edges.close()
    card = {
        "seed": config.seed,
        "members": config.members,
        "days": config.days,
        "start": WORLD_START,
        "end": WORLD_START + config.days * DAY,
        "sizes": {
            "members": len(members),
            "new_members": int((members.joined_day >= 0).sum()),
            "companies": len(companies),
            "items": n_items,
            "items_by_type": item_counts,
            "interactions": n_interactions,
            "edges": n_edges,
            "connections": len(graph.src) + new_connections,
            "connections_made_in_window": new_connections,
        },
        "surfaces": {
            s.name: {"item_type": s.item_type, "actions": [a for a, _ in s.actions], "main_action": s.main_action,
                     "impressions": stats.impressions.get(s.name, 0)}
            for s in config.surfaces
        },
        "actions": stats.summary({s.name: s.main_action for s in config.surfaces}),
        "behaviour": {k: getattr(config.behaviour, k) for k in config.behaviour.__dataclass_fields__},
        "notes": {
            "oracle_auc": "AUC of the true action probability logged with each impression",
            "popularity_auc": "AUC of the item's smoothed action rate over earlier days",
        },
    }
    (out / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
    return card
