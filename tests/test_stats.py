"""As-of-time statistics (`recbrew.verbalize.stats`, a task's ``stats:``): exact counts against a brute-force
reference, nothing at or after the moment changes them, the prompt and the classic rankers both get them."""

from __future__ import annotations

import importlib.util

import numpy as np
import pyarrow as pa
import pytest

from recbrew import assets
from recbrew.data import Corpus
from recbrew.tasks import load_catalog
from recbrew.verbalize.context import CorpusView
from recbrew.verbalize.render import Renderer
from recbrew.verbalize.stats import STATS_DIM, dense_vector

pytestmark = pytest.mark.skipif(importlib.util.find_spec("recbole") is None, reason="needs the recbole package")


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    from recbrew.data.movielens import load_movielens

    return load_movielens()


@pytest.fixture(scope="module")
def task():
    return load_catalog(assets.path("configs") / "movielens" / "tasks")["movies_like"]


@pytest.fixture(scope="module")
def view(corpus, task) -> CorpusView:
    """The Corpus's view, with a rating model for `movies_like`'s `stats.collab` (fitted on a slice of the log:
    these tests are about the counts, tests/test_collab.py about the model)."""
    from recbrew.verbalize.collab import fit, training_pairs

    out = CorpusView(corpus)
    member, item, positive = training_pairs(corpus, task.label.positive, task.label.negatives, set(), None)
    out.collab[task.name] = fit(member[:5000], item[:5000], positive[:5000])
    return out


def _rows(corpus: Corpus) -> dict[str, np.ndarray]:
    inter = corpus.interactions
    return {"member": inter["member_id"].to_numpy(), "item": inter["item_id"].to_numpy(),
            "ts": inter["timestamp"].to_numpy(), "action": inter["action"].to_numpy(zero_copy_only=False).astype(str)}


def _decade(year):
    return None if year is None else year // 10 * 10


def test_counts_equal_a_brute_force_reference(corpus, view, task):
    """Item and member counts, liked shares and the genre / decade agreement with the member's last 30 liked and
    disliked movies, recomputed row by row for 40 (member, moment, movie) triples."""
    r = _rows(corpus)
    items = {row["item_id"]: row for row in corpus.items.to_pylist()}
    rng = np.random.default_rng(0)
    checked = facets_seen = 0
    for i in rng.choice(len(r["ts"]), size=40, replace=False):
        member, t = int(r["member"][i]), int(r["ts"][i])
        cand = int(rng.choice(r["item"]))
        before = r["ts"] < t
        on_item = before & (r["item"] == cand)
        got = view.candidate_stats(member, cand, t, task)
        assert got["n"] == on_item.sum() and got["positive"] == (on_item & (r["action"] == "like")).sum()
        mine = before & (r["member"] == member)
        m = view.member_stats(member, t, task)
        assert (m["n"], m["positive"]) == (mine.sum(), (mine & (r["action"] == "like")).sum())
        assert m["share"] == (None if m["n"] == 0 else round(100 * m["positive"] / m["n"]))
        for side, key in (("like", "liked"), ("dislike", "disliked")):
            rows = np.flatnonzero(mine & (r["action"] == side))
            rows = rows[np.lexsort((rows, r["ts"][rows]))][-30:]  # the last 30 by time (ties by record)
            recent = [items[int(x)] for x in r["item"][rows]]
            genre, decade = got["facets"]
            want_genre = sum(bool(set(x["genres"] or []) & set(items[cand]["genres"] or [])) for x in recent)
            want_decade = sum(_decade(x["year"]) == _decade(items[cand]["year"]) for x in recent)
            if items[cand]["genres"]:
                assert genre[key] == want_genre and genre["of_" + key] == len(recent)
            if items[cand]["year"] is not None:
                assert decade[key] == want_decade
                facets_seen += want_decade > 0
        checked += 1
    assert checked == 40 and facets_seen > 0


def test_rows_at_or_after_the_moment_change_nothing(corpus, view, task):
    """Deleting every interaction at or after the moment, or flipping their outcome, leaves every statistic and
    the rendered prompt as they were (the rating model is the same fitted one: `data build` fits it on the
    training side of the split, tests/test_collab.py)."""
    r = _rows(corpus)
    t = int(np.quantile(r["ts"], 0.7))
    inter = corpus.interactions
    late = pa.array(r["ts"] >= t)
    flipped = inter.set_column(inter.column_names.index("action"), "action",
                               pa.array(np.where(r["ts"] >= t, np.where(r["action"] == "like", "dislike", "like"),
                                                 r["action"])))
    views = [CorpusView(corpus),
             CorpusView(Corpus(corpus.members, corpus.items, inter.filter(pa.compute.invert(late)), corpus.edges)),
             CorpusView(Corpus(corpus.members, corpus.items, flipped, corpus.edges))]
    for v in views:
        v.collab.update(view.collab)
    members = np.unique(r["member"][r["ts"] < t])[:25]
    cands = np.unique(r["item"])[:12]
    renderer = Renderer(task)
    prompts = []
    for v in views:
        got = []
        for m in members:
            m = int(m)
            cs = [v.candidate(m, int(c), t, task) for c in cands]
            network = {**v.network(m, t), "stats": v.member_stats(m, t, task)}
            p = renderer.render(v.member(m), cs, v.history(m, t, task), network=network)
            got.append((p.prefix, tuple(p.segments), [c["stats"]["n"] for c in cs]))
        prompts.append(got)
    assert prompts[0] == prompts[1] == prompts[2]
    assert any(sum(n) > 0 for _, _, n in prompts[0])


def _showing_all(task):
    return task.model_copy(update={"stats": task.stats.model_copy(update={"show": None})})


def test_the_prompt_says_the_counts(corpus, view, task):
    task = _showing_all(task)
    r = _rows(corpus)
    i = int(np.argsort(r["ts"])[len(r["ts"]) // 2])
    member, t, cand = int(r["member"][i]), int(r["ts"][i]), int(r["item"][i])
    c = view.candidate(member, cand, t, task)
    m = view.member_stats(member, t, task)
    prompt = Renderer(task).render(view.member(member), [c], view.history(member, t, task),
                                   network={**view.network(member, t), "stats": m})
    s = c["stats"]
    assert f"ratings so far: {m['n']}, {m['share']}% liked" in prompt.prefix
    assert f"ratings so far: {s['n']}, {s['share']}% liked" in prompt.segments[0]
    liked = ", ".join(f"{f['liked']} same {f['word']}" for f in s["facets"] if f["liked"] is not None)
    assert f"your last {s['facets'][0]['of_liked']} liked: {liked}" in prompt.segments[0]
    assert f"members with your taste: {s['taste_n']} ratings so far, {s['taste_share']}% liked" in prompt.segments[0]
    assert f"estimate for you: {s['estimate']}%, {s['estimate_word']}" in prompt.segments[0]


def test_the_prompt_shows_the_declared_parts_and_the_dense_features_keep_all(corpus, view, task):
    """The shipped `movies_like` shows the taste, estimate and rating-model lines only (`stats.show`); LiRank's
    dense features are the same numbers as when the prompt shows every part."""
    from recbrew.tasks.spec import Stats

    assert task.stats.shown == ["taste", "estimate", "collab"]
    r = _rows(corpus)
    full = _showing_all(task)
    for i in np.argsort(r["ts"])[len(r["ts"]) // 2::5000]:
        member, t, cand = int(r["member"][i]), int(r["ts"][i]), int(r["item"][i])
        c, c_all = view.candidate(member, cand, t, task), view.candidate(member, cand, t, full)
        m, m_all = view.member_stats(member, t, task), view.member_stats(member, t, full)
        prompt = Renderer(task).render(view.member(member), [c], view.history(member, t, task),
                                       network={**view.network(member, t), "stats": m})
        s = c["stats"]
        lines = prompt.segments[0].splitlines()
        assert f"members with your taste: {s['taste_n']} ratings so far, {s['taste_share']}% liked" in lines
        assert f"estimate for you: {s['estimate']}%, {s['estimate_word']}" in lines
        assert f"ratings model for you: {s['collab']}%, {s['collab_word']}" in lines
        assert not any(line.startswith(("ratings so far", "your last")) for line in lines)
        assert "ratings so far" not in prompt.prefix
        assert dense_vector(m, s) == dense_vector(m_all, c_all["stats"])
    with pytest.raises(ValueError, match=r"stats.show names \['member'\], which stats does not declare"):
        Stats(taste=True, show=["member"])
    assert Stats(candidate=True, taste=True, show=["taste", "candidate"]).shown == ["candidate", "taste"]


def test_taste_equals_a_brute_force_reference(corpus, view, task):
    """The members of the same taste: every other member whose action before the moment agrees (same movie, same
    outcome) with one of the member's last 30 liked or 30 disliked movies, weighted by the agreeing actions; their
    weighted liked share of the candidate counts only their ratings before the moment."""
    r = _rows(corpus)
    rng = np.random.default_rng(1)
    seen = 0
    for i in rng.choice(len(r["ts"]), size=12, replace=False):
        member, t = int(r["member"][i]), int(r["ts"][i])
        before = r["ts"] < t
        weights: dict[int, int] = {}
        for side in ("like", "dislike"):
            mine = np.flatnonzero(before & (r["member"] == member) & (r["action"] == side))
            mine = mine[np.lexsort((mine, r["ts"][mine]))][-30:]
            for item in r["item"][mine]:
                agree = before & (r["item"] == item) & (r["action"] == side) & (r["member"] != member)
                for other in r["member"][agree]:
                    weights[int(other)] = weights.get(int(other), 0) + 1
        for cand in rng.choice(r["item"][before], size=3):
            rated = np.flatnonzero(before & (r["item"] == cand))
            w = np.array([weights.get(int(m), 0) for m in r["member"][rated]], float)
            liked = r["action"][rated] == "like"
            s = view.candidate_stats(member, int(cand), t, task)
            assert s["taste_n"] == int((w > 0).sum())
            assert s["taste_share"] == (None if w.sum() == 0 else int(round(100 * w[liked].sum() / w.sum())))
            seen += w.sum() > 0
    assert seen >= 10


def test_the_estimate_shrinks_each_share_toward_its_reference():
    from recbrew.verbalize.stats import estimate, likelihood_word

    def logit(p):
        return np.log(p / (1 - p))

    # the log: 60 % positive; the item: 8 of 10; the member: 1 of 10; taste: weight 20, 15 positive
    g, k = 0.6, 10
    p_item = (8 + k * g) / (10 + k)
    want = logit(p_item) + logit((1 + k * g) / (10 + k)) - logit(g) + logit((15 + k * p_item) / (20 + k)) - logit(p_item)
    got = estimate((10, 8), (10, 1), (1000, 600), (20.0, 15.0), k)
    assert got == pytest.approx(1 / (1 + np.exp(-want)))
    # nothing known about item or member: the log's share
    assert estimate((0, 0), (0, 0), (1000, 600), (0.0, 0.0), k) == pytest.approx(0.6)
    assert estimate((3, 3), None, (0, 0), None, k) is None
    assert [likelihood_word(p) for p in (0.95, 0.8351, 0.75, 0.62, 0.5, 0.449, 0.3, 0.2, 0.05)] == [
        "almost certain", "very likely", "likely", "somewhat likely", "just above even", "just below even",
        "fairly unlikely", "unlikely", "very unlikely"]
    assert likelihood_word(None) is None and likelihood_word(0.0) == "very unlikely"
    # the word follows the whole percent the prompt shows: 83.5 % reads "84%, very likely"
    assert likelihood_word(0.835) == likelihood_word(0.84) == "very likely"


def test_a_task_without_stats_shows_and_computes_none(view, task):
    plain = task.model_copy(update={"stats": type(task.stats)()})
    assert view.stats(plain) is None and view.candidate_stats(1, 1, 10**10, plain) is None
    assert view.member_stats(1, 10**10, plain) is None


def test_dense_vector_for_the_classic_rankers():
    member = {"n": 9, "positive": 3}
    cand = {"n": 0, "positive": 0, "facets": [{"liked": 2, "of_liked": 4, "disliked": 1, "of_disliked": 2},
                                              {"liked": None, "of_liked": 4, "disliked": None, "of_disliked": 2}]}
    v = dense_vector(member, cand)
    assert len(v) == STATS_DIM
    assert v[:6] == [0.0, 0.5, pytest.approx(np.log1p(9) / 5), pytest.approx(1 / 3), 0.0, 0.0]
    assert v[6:10] == [0.5, 0.5, 0.0, 0.0]
    v = dense_vector(member, {**cand, "taste_n": 3, "taste_share": 80, "estimate": 61})
    assert v[4:6] == [0.8, 0.61]
    assert dense_vector(member, {**cand, "taste_n": 0, "taste_share": None, "estimate": None})[4:6] == [0.5, 0.0]
    assert dense_vector(None, None) == [0.0] * STATS_DIM


@pytest.mark.slow
def test_served_prompts_and_classic_scores_equal_the_examples(tmp_path, corpus, task, quick_lirank):
    """`recbrew serve` computes the statistics at the request's `at` as `data build` did, and reads the rating model
    the build saved: the same prompt text (so the same LLM score), and for a LiRank fitted with the statistics, the
    same score. Without that model a task that declares `stats.collab` is refused when the server starts."""
    from fastapi.testclient import TestClient

    from recbrew.errors import UserError
    from recbrew.examples.build import BuildConfig, build_examples
    from recbrew.scoring import load_requests
    from recbrew.serve.app import create_app
    from recbrew.serve.protocol import RankRequest
    from recbrew.serve.ranker import RankService
    from recbrew.verbalize.collab import load_models

    corpus.save(tmp_path / "corpus")
    catalog = {"movies_like": task}
    build_examples(tmp_path / "corpus", tmp_path / "ex", BuildConfig(test_days=30, gap_days=1, max_train=80,
                                                                    max_test=6, max_tokens=768), catalog=catalog,
                   progress=False)
    lirank = quick_lirank(tmp_path / "ex", tmp_path / "lirank", "features.item_store=false")
    assert lirank.space.stats == STATS_DIM
    with pytest.raises(UserError, match="movies_like declare stats.collab: serve them with --examples DIR"):
        RankService(tokenizer="smollm2", corpus_dir=tmp_path / "corpus", scorer=lirank, catalog=catalog)
    service = RankService(tokenizer="smollm2", corpus_dir=tmp_path / "corpus", scorer=lirank, catalog=catalog,
                          collab=load_models(tmp_path / "ex", catalog))
    rows = load_requests(tmp_path / "ex", "test")
    with TestClient(create_app(service)) as client:
        for row in rows:
            body = {"task": row["task"], "member": row["member_id"], "candidates": row["candidate_ids"],
                    "at": row["timestamp"]}
            _, prompt = service.prompt(RankRequest(**body))
            assert (prompt.prefix, prompt.segments) == (row["prefix"], row["segments"])
            assert "estimate for you: " in prompt.segments[0] and "ratings model for you: " in prompt.segments[0]
            resp = client.post("/v1/rank", json=body)
            assert resp.status_code == 200, resp.text
            served = {r["candidate"]: r["score"] for r in resp.json()["results"]}
            np.testing.assert_allclose([served[c] for c in row["candidate_ids"]], lirank.score([row])[0], atol=1e-5)


def test_comparison_words_put_a_share_against_its_reference():
    from recbrew.verbalize.stats import compare_word

    # 57 % liked overall: 80 % is far above, 64 % above, 57 % near, 48 % below, 30 % far below.
    ref = (1000, 570)
    assert [compare_word(100, p, *ref) for p in (80, 64, 57, 48, 30)] == ["far above", "above", "near", "below",
                                                                           "far below"]
    assert compare_word(0, 0, *ref) is None and compare_word(10, 5, 0, 0) is None


def test_the_candidate_line_compares_with_the_log_and_the_member(corpus, view, task):
    r = _rows(corpus)
    t = int(np.quantile(r["ts"], 0.8))
    before = r["ts"] < t
    overall = (r["action"][before] == "like").mean()
    seen = set()
    for member in np.unique(r["member"][before])[:20]:
        for cand in np.unique(r["item"][before])[:10]:
            s = view.candidate_stats(int(member), int(cand), t, task)
            m = view.member_stats(int(member), t, task)
            if s["n"]:
                ratio = s["positive"] / s["n"] / overall
                want = next(w for b, w in ((1.25, "far above"), (1.08, "above"), (0.92, "near"), (0.75, "below"),
                                           (0, "far below")) if ratio >= b)
                assert s["vs_all"] == want
                seen.add(want)
            if s["n"] and m["positive"]:
                assert s["vs_member"] is not None
    assert len(seen) >= 4
