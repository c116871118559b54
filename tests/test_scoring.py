"""LLM scoring: the three execution modes agree; multi-item attention equals its dense reference."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from random_llama import small_llama

from recbrew.errors import UserError
from recbrew.kernels.multi_item_attention import multi_item_attention_reference, multi_item_attention_torch
from recbrew.scoring import Scorer, load_requests
from recbrew.scoring.hf import MODES, HFScorer

TASKS = ["feed_like", "jobs_apply_listwise", "pymk_connect"]


@pytest.fixture(scope="module")
def built(tmp_path_factory, small_setup):
    """A small world, its examples (``ex``) and a recbrew-tiny model (``tiny``) under one folder."""
    return small_setup(tmp_path_factory.mktemp("scoring"), TASKS, max_train=5, max_test=12)


@pytest.fixture(scope="module")
def setup(built):
    from recbrew.models.loading import load_model

    root = built
    model, tok = load_model(str(root / "tiny"))
    rows = load_requests(root / "ex", "test")
    return model, tok, rows


@pytest.mark.parametrize("prefix, segments, heads, kv_heads, dim", [
    (37, [5, 11, 1], 4, 2, 64), (0, [3, 7], 2, 2, 32), (16, [1], 2, 1, 64), (23, [9] * 20, 4, 4, 32),
])
def test_multi_item_attention_equals_dense_reference(prefix, segments, heads, kv_heads, dim):
    torch.manual_seed(0)
    total = prefix + sum(segments)
    q = torch.randn(2, heads, total, dim)
    k, v = torch.randn(2, kv_heads, total, dim), torch.randn(2, kv_heads, total, dim)
    fast = multi_item_attention_torch(q, k, v, prefix, segments, segments_per_chunk=3)
    torch.testing.assert_close(fast, multi_item_attention_reference(q, k, v, prefix, segments), atol=1e-5, rtol=1e-5)


def test_modes_agree_on_recbrew_tiny(setup):
    model, tok, rows = setup
    # Slates rarely hold one candidate: add a one-candidate request so that edge is covered too.
    binary = next(r for r in rows if r["kind"] == "binary")
    rows = [*rows, {**binary, "candidate_ids": binary["candidate_ids"][:1], "segments": binary["segments"][:1],
                    "labels": binary["labels"][:1]}]
    counts = {len(r["candidate_ids"]) for r in rows}
    assert 1 in counts and max(counts) > 2 and {r["kind"] for r in rows} == {"binary", "listwise"}
    results = {mode: HFScorer(model, tok, mode=mode, batch_size=4).score(rows) for mode in MODES}
    chunked = HFScorer(model, tok, mode="multi", max_pass_tokens=max(len(tok(r["prefix"])["input_ids"])
                                                                       for r in rows) + 40).score(rows)
    for mode in ("prefix", "multi"):
        for a, b in zip(results["naive"], results[mode], strict=True):
            np.testing.assert_allclose(a, b, atol=1e-4)
    for a, b in zip(results["naive"], chunked, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
    for row, probs in zip(rows, results["multi"], strict=True):
        assert probs.shape == (len(row["candidate_ids"]),)
        assert ((probs > 0) & (probs < 1)).all()
        if row["kind"] == "listwise":
            assert probs.sum() == pytest.approx(1.0, abs=1e-5)


@pytest.fixture(scope="module")
def random_llama():
    """A small random Llama and a few encoded requests of uneven prefixes and slates (one listwise)."""
    from recbrew.scoring.hf import Encoded

    rng = np.random.default_rng(0)
    encoded = []
    for i, (p, k) in enumerate(zip(rng.integers(3, 30, 7), rng.integers(1, 6, 7), strict=True)):
        segments = [rng.integers(0, 131, n).tolist() for n in rng.integers(1, 9, 1 if i == 2 else k)]
        encoded.append(Encoded(rng.integers(0, 131, p).tolist(), segments, [5, 9], i == 2))
    return small_llama(131, multi_item=False).eval(), encoded


@pytest.mark.parametrize("top", ["answer-only", "full"])
@pytest.mark.parametrize("limit", [None, 60, 30])
def test_multi_mode_packs_requests_and_equals_one_at_a_time(random_llama, limit, top):
    """Many requests per pass (a document each, or several when one overflows): the scores of one at a time,
    with the top layer run at the answer positions only (the CPU default) or in full."""
    model, encoded = random_llama
    scorer = HFScorer(model, None, mode="multi", max_pass_tokens=limit, answer_only_top=top == "answer-only")
    assert (scorer.top is not None) == (top == "answer-only")
    packs = scorer._packs(encoded)
    sizes = [[len(encoded[i].prefix) + sum(len(encoded[i].segments[j]) for j in g) for i, g in p] for p in packs]
    assert all(len(s) == 1 or sum(s) <= scorer.max_pass_tokens for s in sizes)
    if limit is None:
        assert len(packs) == 1 and len(packs[0]) == len(encoded)  # every request in one pass
    if limit == 60:
        assert max(len(p) for p in packs) > 1
    if limit == 30:  # a request split into documents that repeat its prefix
        assert len({i for p in packs for i, _ in p}) < sum(len(p) for p in packs)
    batched = scorer.score_encoded(encoded)
    assert scorer.tokens_processed == sum(map(sum, sizes))
    naive = HFScorer(model, None, mode="naive").score_encoded(encoded)
    for enc, got, expected in zip(encoded, batched, naive, strict=True):
        np.testing.assert_allclose(got, scorer.score_encoded([enc])[0], atol=1e-4)
        np.testing.assert_allclose(got, expected, atol=1e-4)
    if scorer.top is not None:
        assert scorer.top.calls >= len(packs) and "forward" not in vars(model.get_decoder().layers[-1])


def test_multi_mode_builds_no_attention_mask(setup, monkeypatch):
    """The layout replaces the mask: Hugging Face's mask function never runs for a multi-item pass."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    from recbrew.kernels.hf_attention import ATTN_NAME

    model, tok, rows = setup
    multi = HFScorer(model, tok, mode="multi")  # switches the model to the multi-item attention
    sizes = []
    build = ALL_MASK_ATTENTION_FUNCTIONS[ATTN_NAME]
    monkeypatch.setitem(ALL_MASK_ATTENTION_FUNCTIONS._global_mapping, ATTN_NAME,
                        lambda **kw: sizes.append((kw["q_length"], kw["kv_length"])) or build(**kw))
    row = next(r for r in rows if len(r["candidate_ids"]) > 2)
    got = multi.score([row])[0]
    assert sizes == []
    # The same model without a layout (padded batches of the naive mode) still gets its masks.
    np.testing.assert_allclose(HFScorer(model, tok, mode="naive", batch_size=2).score([row])[0], got, atol=1e-4)
    assert sizes


def test_answer_probability_equals_full_logits_softmax(setup):
    model, tok, rows = setup
    row = next(r for r in rows if r["kind"] == "binary")
    scorer = HFScorer(model, tok, mode="naive")
    yes, no = scorer.label_ids(row["task"])
    ids = tok(row["prefix"])["input_ids"] + tok(row["segments"][0])["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1]
    expected = torch.softmax(logits[[yes, no]], -1)[0].item()
    assert scorer.score([row])[0][0] == pytest.approx(expected, abs=1e-5)
    assert isinstance(scorer, Scorer)


def test_listwise_options_are_the_softmax_of_their_log_odds(setup):
    from recbrew.scoring.answers import normalize

    logits = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    odds = np.array([2.0, -1.0, 0.0])
    np.testing.assert_allclose(normalize(logits, listwise=True), np.exp(odds) / np.exp(odds).sum(), rtol=1e-6)
    np.testing.assert_allclose(normalize([[0.0, 1.0, 3.0]], listwise=True),
                               np.exp([0.0, 1.0, 3.0]) / np.exp([0.0, 1.0, 3.0]).sum(), rtol=1e-6)
    model, tok, rows = setup
    row = next(r for r in rows if r["kind"] == "listwise")
    assert len(row["segments"]) == len(row["labels"]) > 1  # the shipped listwise tasks score by options
    multi = HFScorer(model, tok, mode="multi").score([row])[0]
    assert multi.shape == (len(row["labels"]),) and multi.sum() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(HFScorer(model, tok, mode="naive").score([row])[0], multi, atol=1e-4)


def test_generation_stops_at_the_end_of_its_answer_line(setup):
    from recbrew.scoring.hf import _LineDone, first_line

    words = {1: "  ", 2: "\n", 3: "Data", 4: " Engineer", 5: "\nmore"}
    done = _LineDone(1, lambda ids, skip_special_tokens=True: "".join(words[i] for i in ids))
    states = [bool(done(torch.tensor([[9, *gen]]), None)[0]) for gen in ([1], [1, 2], [1, 2, 3], [1, 2, 3, 4],
                                                                          [1, 2, 3, 4, 5])]
    assert states == [False, False, False, False, True]  # leading blank lines are not the end of the answer
    model, tok, rows = setup
    scorer = HFScorer(model, tok, mode="multi")
    prompts = [{"prefix": r["prefix"], "segments": r["segments"][:1], "kind": "generative"} for r in rows[:4]]
    for row, got in zip(prompts, scorer.generate(prompts, max_new_tokens=12), strict=True):
        ids = torch.tensor([tok(row["prefix"] + row["segments"][0], add_special_tokens=False)["input_ids"]])
        full = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12,
                              pad_token_id=model.config.eos_token_id)
        decode = tok.backend.decode if hasattr(tok, "backend") else tok.decode
        assert got == first_line(decode(full[0, ids.shape[1]:].tolist(), skip_special_tokens=True))


def test_bad_mode_and_generative_requests_are_user_errors(setup):
    model, tok, rows = setup
    with pytest.raises(UserError, match="unknown scoring mode"):
        HFScorer(model, tok, mode="fast")
    with pytest.raises(UserError, match="generative tasks are scored by generation"):
        HFScorer(model, tok).score([{**rows[0], "kind": "generative"}])


@pytest.mark.slow
def test_smollm2_converts_offline_and_modes_agree(setup, tmp_path, monkeypatch):
    """From the installed GGUF into a fresh cache, then the three modes on real prompts."""
    monkeypatch.setenv("RECBREW_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from recbrew.models.loading import load_model

    model, tok = load_model("smollm2")
    folder = tmp_path / "cache" / "smollm2-135m" / "model"
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["num_hidden_layers"] == 30
    assert tok(" yes")["input_ids"] == [9805] and tok(" no")["input_ids"] == [787]
    _, _, rows = setup
    rows = sorted((r for r in rows if r["kind"] == "binary"), key=lambda r: len(r["prefix"]))
    # Three members: the shortest history with one candidate, and two with several of uneven length.
    picked = [rows[0], *[r for r in rows if len(r["candidate_ids"]) > 1][:2]]
    results = {mode: HFScorer(model, tok, mode=mode).score(picked) for mode in MODES}
    for mode in ("prefix", "multi"):
        for a, b in zip(results["naive"], results[mode], strict=True):
            np.testing.assert_allclose(a, b, atol=1e-4)


def test_bench_score_counts_tokens_and_ratios(built):
    """Token counts follow the layout of each mode; speed-ups come from the medians measured in the same run."""
    from recbrew.bench.score import bench_score

    result = bench_score(str(built / "tiny"), str(built / "ex"), grid=((60, 3),), requests=2)
    cell = result["grid"][0]
    modes, bound = cell["modes"], cell["bound_tokens"]
    segment_tokens = bound - 2 * cell["prefix_tokens"]
    assert cell["prefix_tokens"] == 60 and cell["candidates"] == 3 and cell["requests"] == 2
    assert result["dtype"] == "fp32" and result["rounds"] >= 3
    assert modes["naive"]["tokens_processed"] == 2 * 3 * 60 + segment_tokens
    assert modes["prefix"]["tokens_processed"] == modes["multi"]["tokens_processed"] == bound
    assert modes["multi"]["passes"] == 1 and modes["multi"]["attention"] == ["torch"]
    assert cell["token_bound_speedup"] == round((2 * 3 * 60 + segment_tokens) / bound, 2)
    for row in modes.values():
        assert row["max_abs_diff_vs_first_mode"] < 1e-4
        assert row["speedup_vs_naive"] == round(modes["naive"]["seconds"] / row["seconds"], 2)
        assert row["first_call_seconds"] > 0


def test_bench_score_on_random_token_ids(random_llama, monkeypatch):
    """Without examples (or a tokenizer) the requests are random ids: exact token counts, modes agree."""
    from recbrew.bench.score import bench_score

    model, _ = random_llama
    monkeypatch.setattr("recbrew.bench.score.load_model", lambda *a, **kw: (model, None))
    result = bench_score("random", None, grid=((20, 4),), requests=3, segment_tokens=5)
    modes = result["grid"][0]["modes"]
    assert result["grid"][0]["bound_tokens"] == 3 * (20 + 4 * 5)
    assert modes["naive"]["tokens_processed"] == 3 * 4 * (20 + 5)
    for row in modes.values():
        assert row["max_abs_diff_vs_first_mode"] < 1e-4
