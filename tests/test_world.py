"""The synthetic world: determinism, invariants, learnable signal and the card's numbers."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from recbrew.data.schema import NO_ACTION, TABLES
from recbrew.errors import UserError
from recbrew.world import CARD_FILE, SURFACES, WorldConfig, generate_world
from recbrew.world.card import StreamingAUC

FILES = ("members.parquet", "items.parquet", "interactions.parquet", "edges.parquet")


def _digest(directory) -> dict[str, str]:
    return {f: hashlib.sha256((directory / f).read_bytes()).hexdigest() for f in FILES}


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world") / "w"
    card = generate_world(WorldConfig(members=400, days=8, seed=3), out, progress=False)
    return out, card


@pytest.fixture(scope="module")
def default_world(tmp_path_factory):
    """The default settings (2,000 members, 30 days): the ones the signal requirements speak of."""
    out = tmp_path_factory.mktemp("world") / "default"
    return out, generate_world(WorldConfig(), out, progress=False)


def test_same_seed_same_bytes_other_seed_other_data(small_world, tmp_path):
    out, _ = small_world
    again = tmp_path / "again"
    generate_world(WorldConfig(members=400, days=8, seed=3), again, progress=False)
    assert _digest(again) == _digest(out)
    other = tmp_path / "other"
    generate_world(WorldConfig(members=400, days=8, seed=4), other, progress=False)
    differing = [f for f, h in _digest(other).items() if h != _digest(out)[f]]
    assert differing == list(FILES)


def test_tables_follow_the_corpus_schema(small_world):
    out, card = small_world
    for name in ("members", "items", "interactions", "edges"):
        table = pq.read_table(out / f"{name}.parquet")
        schema = TABLES[name]
        for col in schema.required:
            assert col.name in table.column_names, (name, col.name)
            assert table.schema.field(col.name).type == col.type
            assert table[col.name].null_count == 0
        for field in table.schema:
            declared = schema.type_of(field.name)
            assert declared is None or declared == field.type, (name, field.name)
    assert card["sizes"]["interactions"] == pq.read_metadata(out / "interactions.parquet").num_rows


def test_impressions_are_consistent(small_world):
    out, card = small_world
    members = pq.read_table(out / "members.parquet").to_pandas()
    items = pq.read_table(out / "items.parquet").to_pandas().set_index("item_id")
    inter = pq.read_table(out / "interactions.parquet").to_pandas()
    assert items.index.is_unique and members.member_id.is_unique
    assert inter.impression_id.tolist() == list(range(len(inter)))
    assert inter.timestamp.is_monotonic_increasing
    # Nobody acts before joining, and no item is shown before it exists.
    joined = members.set_index("member_id").joined_at.reindex(inter.member_id).to_numpy()
    assert (inter.timestamp.to_numpy() >= joined).all()
    assert (inter.timestamp.to_numpy() >= items.created_at.reindex(inter.item_id).to_numpy()).all()
    for spec in SURFACES:
        rows = inter[inter.surface == spec.name]
        assert len(rows) > 0, spec.name
        assert set(items.item_type.reindex(rows.item_id)) == {spec.item_type}
        names = [a for a, _ in spec.actions]
        assert set(rows.action) <= {*names, NO_ACTION}
        probs = rows[[f"p_{a}" for a in names]].to_numpy()
        assert np.isfinite(probs).all() and (probs > 0).all() and (probs.sum(axis=1) < 1).all()
        others = [c for c in inter.columns if c.startswith("p_") and c[2:] not in names]
        assert rows[others].isna().all().all()
        # Positions count 0, 1, 2, ... within each member's session of the day.
        day = rows.timestamp // 86_400
        first = rows.groupby([rows.member_id, day]).position.min()
        assert (first == 0).all()


def test_graph_is_simple_and_timely(small_world):
    out, _ = small_world
    edges = pq.read_table(out / "edges.parquet").to_pandas()
    members = pq.read_table(out / "members.parquet").to_pandas().set_index("member_id")
    conn = edges[edges.kind == "connection"]
    assert (conn.src != conn.dst).all()
    pairs = np.sort(conn[["src", "dst"]].to_numpy(), axis=1)
    assert len(np.unique(pairs, axis=0)) == len(pairs)
    later_join = np.maximum(members.joined_at.reindex(conn.src).to_numpy(), members.joined_at.reindex(conn.dst).to_numpy())
    assert (conn.timestamp.to_numpy() >= later_join).all()
    assert {"connection", "follows_company", "follows_member"} <= set(edges.kind)
    degree = np.bincount(pairs.ravel(), minlength=len(members))
    # Preferential attachment gives a heavy tail: the top 1% hold far more than 1% of the ends.
    top = np.sort(degree)[-max(1, len(degree) // 100):].sum() / degree.sum()
    assert top > 0.03


def test_cold_start_members_and_items_exist(small_world):
    out, card = small_world
    members = pq.read_table(out / "members.parquet").to_pandas()
    inter = pq.read_table(out / "interactions.parquet", columns=["member_id", "item_id", "timestamp"]).to_pandas()
    items = pq.read_table(out / "items.parquet", columns=["item_id", "created_at"]).to_pandas()
    start = card["start"]
    newcomers = members[members.joined_at >= start].member_id
    assert card["sizes"]["new_members"] == len(newcomers) > 0
    assert inter.member_id.isin(newcomers).any()
    fresh = items[items.created_at >= start].item_id
    assert inter.item_id.isin(fresh).any()


def test_text_carries_the_signal(small_world):
    out, _ = small_world
    members = pq.read_table(out / "members.parquet").to_pandas()
    row = members.iloc[0]
    assert row["name"] and row["headline"] and row["title"] and len(row["skills"]) >= 3
    items = pq.read_table(out / "items.parquet").to_pandas()
    for kind in ("job", "post", "ad", "course", "group", "event", "newsletter", "member", "company"):
        assert (items.item_type == kind).any(), kind
        assert items[items.item_type == kind].title.str.len().min() > 3
    posts = items[items.item_type == "post"]
    # A post's hashtags name the skills of its topic, and its text shows them.
    assert all(tag in text for tags, text in zip(posts.hashtags, posts.text, strict=False) for tag in tags)


def test_card_auc_matches_sklearn(small_world):
    out, card = small_world
    inter = pq.read_table(out / "interactions.parquet").to_pandas()
    for spec in SURFACES:
        rows = inter[inter.surface == spec.name]
        a = spec.main_action
        label = rows.action == a
        if label.nunique() < 2:
            continue
        exact = roc_auc_score(label, rows[f"p_{a}"])
        assert card["actions"][spec.name][a]["oracle_auc"] == pytest.approx(exact, abs=2e-3)
        assert card["actions"][spec.name][a]["count"] == int(label.sum())


def test_signal_is_learnable_and_personal(default_world):
    _, card = default_world
    for spec in SURFACES:
        stats = card["actions"][spec.name][spec.main_action]
        assert stats["main"]
        assert 0.75 <= stats["oracle_auc"] <= 0.97, (spec.name, stats)
        assert stats["popularity_auc"] <= stats["oracle_auc"] - 0.08, (spec.name, stats)


def test_social_proof_carries_signal_on_the_feed(default_world, tmp_path):
    _, with_social = default_world
    without = generate_world(WorldConfig().with_behaviour(social=0.0), tmp_path / "w", progress=False)
    before = with_social["actions"]["feed"]["like"]["oracle_auc"]
    after = without["actions"]["feed"]["like"]["oracle_auc"]
    assert before - after >= 0.005, (before, after)


def test_streaming_auc_equals_sklearn_with_ties():
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=5000), 1)  # many exact ties
    labels = rng.random(5000) < 1 / (1 + np.exp(-scores))
    acc = StreamingAUC()
    acc.add(scores[:2000], labels[:2000])
    acc.add(scores[2000:], labels[2000:])
    assert acc.auc() == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
    empty = StreamingAUC()
    empty.add(scores, np.zeros(5000, bool))
    assert empty.auc() is None


def test_existing_output_is_kept_without_force(small_world, tmp_path):
    out = tmp_path / "w"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="--force"):
        generate_world(WorldConfig(members=100, days=2), out, progress=False)
    assert (out / "keep.txt").read_text() == "mine"


def test_interrupted_generation_leaves_nothing_half_written(tmp_path, monkeypatch):
    from recbrew.world.behavior import Simulator

    out = tmp_path / "w"
    generate_world(WorldConfig(members=100, days=2), out, progress=False)
    before = _digest(out)
    original = Simulator.run_day

    def interrupt(self, day, rng):
        if day == 1:
            raise KeyboardInterrupt
        return original(self, day, rng)

    monkeypatch.setattr(Simulator, "run_day", interrupt)
    with pytest.raises(KeyboardInterrupt):
        generate_world(WorldConfig(members=100, days=3, seed=9), out, force=True, progress=False)
    assert _digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]


def test_card_is_valid_json_with_rates(small_world):
    out, card = small_world
    on_disk = json.loads((out / CARD_FILE).read_text())
    assert on_disk == json.loads(json.dumps(card))
    feed = on_disk["actions"]["feed"]["like"]
    inter = pq.read_table(out / "interactions.parquet", columns=["surface", "action"])
    on_feed = pc.equal(inter["surface"], "feed")
    likes = pc.sum(pc.and_(on_feed, pc.equal(inter["action"], "like"))).as_py()
    assert feed["rate"] == pytest.approx(likes / pc.sum(on_feed).as_py(), abs=1e-6)


def test_visits_show_whole_slates_in_their_configured_sizes(small_world):
    out, _ = small_world
    inter = pq.read_table(out / "interactions.parquet",
                          columns=["member_id", "surface", "timestamp", "position"]).to_pandas()
    # Slots of one visit follow its start by 7 s each: (member, surface, start) names the visit.
    inter["visit"] = inter.timestamp - 7 * inter.position
    for spec in SURFACES:
        rows = inter[inter.surface == spec.name]
        visits = rows.groupby(["member_id", "visit"]).position
        lo, hi = spec.slate
        sizes = visits.size()
        # Duplicates of an item within a visit are shown once, so a slate may be shorter, never longer.
        assert sizes.max() <= hi, spec.name
        assert (visits.max() == sizes - 1).all() and (visits.min() == 0).all(), spec.name
        if spec.name in ("feed", "jobs"):
            assert sizes.median() >= lo, (spec.name, sizes.median())


def test_members_build_a_history_in_the_default_world(default_world):
    out, card = default_world
    inter = pq.read_table(out / "interactions.parquet", columns=["member_id", "action", "timestamp"]).to_pandas()
    test_start = card["end"] - 8 * 86_400  # the quickstart's 7 test days after a 1-day gap
    tested = inter[inter.timestamp >= test_start].member_id.unique()
    earlier = inter[(inter.timestamp < test_start) & (inter.action != NO_ACTION)]
    positives = earlier.groupby("member_id").size().reindex(tested, fill_value=0)
    assert positives.median() >= 10, positives.median()
