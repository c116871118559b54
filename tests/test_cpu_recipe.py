"""The CPU fine-tuning levers: the first N layers, bf16 frozen layers and bf16 scoring, precision detection."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from random_llama import small_llama

from recbrew.errors import ConfigError, UserError
from recbrew.models import precision
from recbrew.models.depth import truncate
from recbrew.train.data import Item, UnitCollator, make_unit
from recbrew.train.frozen_cache import FrozenLayerCache, decoder_layers
from recbrew.train.trainer import answer_loss

VOCAB = 97


def _llama(layers: int = 4):
    return small_llama(VOCAB, layers).eval()


def _units(seed: int = 0, n: int = 3) -> list[dict]:
    rng = np.random.default_rng(seed)
    units = []
    for _ in range(n):
        prefix = rng.integers(3, VOCAB, size=int(rng.integers(9, 30))).tolist()
        items = [Item(rng.integers(3, VOCAB, size=int(rng.integers(2, 9))).tolist(), [int(rng.integers(3, VOCAB))],
                      "t", [5, 6]) for _ in range(int(rng.integers(2, 6)))]
        units.append(make_unit(prefix, items))
    return units


@pytest.mark.parametrize("keep", [1, 3])
def test_first_n_layers_equal_the_full_models_hidden_state_at_layer_n(keep):
    full = _llama(4)
    ids = torch.randint(3, VOCAB, (2, 13))
    with torch.no_grad():
        states = full(ids, output_hidden_states=True).hidden_states
        expected = full.lm_head(full.model.norm(states[keep]))
        short = truncate(_llama(4), keep)
        got = short(ids).logits
    assert short.config.num_hidden_layers == keep and len(decoder_layers(short)) == keep
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_truncate_refuses_out_of_range_depth():
    with pytest.raises(ConfigError, match="has 4 decoder layers"):
        truncate(_llama(4), 5)
    with pytest.raises(ConfigError, match="out of range"):
        truncate(_llama(4), 0)


def test_truncated_copy_is_a_plain_folder_that_loads_unchanged(tmp_path, shared_world):
    from recbrew.models.depth import truncated_copy
    from recbrew.models.loading import load_model
    from recbrew.models.tiny import build_tiny

    build_tiny(shared_world(60, 3, 1), tmp_path / "small", "small", seed=0)  # 4 layers
    folder = truncated_copy(tmp_path / "small", 2, tmp_path / "base-L2")
    model, _ = load_model(str(folder))
    assert model.config.num_hidden_layers == 2 and len(decoder_layers(model)) == 2
    in_memory, _ = load_model(str(tmp_path / "small"), layers=2)
    ids = torch.randint(3, 50, (1, 11))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, in_memory(ids).logits)
    # Written once: a second call with the same request re-uses the folder.
    stamp = (folder / "config.json").stat().st_mtime_ns
    assert truncated_copy(tmp_path / "small", 2, tmp_path / "base-L2") == folder
    assert (folder / "config.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("multi_item", [False, True])
def test_bf16_frozen_layers_stay_within_tolerance_of_fp32_and_restore_the_weights(multi_item):
    """bf16 in the frozen layers only: loss within 2e-2 of fp32, gradients of the adapted layer within 5 %."""
    units = _units(1)
    if not multi_item:
        units = [make_unit(u["input_ids"][:u["prefix_len"]], [Item(u["input_ids"][u["prefix_len"]:][:3], [7], "t",
                                                                     [5, 6])]) for u in units]
    out = {}
    for dtype in (None, torch.bfloat16):
        model = _llama(4).train()
        for p in model.parameters():
            p.requires_grad_(False)
        top = decoder_layers(model)[3]
        for p in top.parameters():
            p.requires_grad_(True)
        cache = FrozenLayerCache(decoder_layers(model), 3, dtype=dtype).install()
        batch = UnitCollator(0, multi_item)([{**u, "index": i} for i, u in enumerate(units)])
        index = batch.pop("unit_index")
        with cache.batch(index.tolist(), batch["attention_mask"].sum(1).tolist()):
            loss = answer_loss(model, batch, "choices")
        loss.backward()
        out[dtype] = (float(loss.detach()), torch.cat([p.grad.flatten() for p in top.parameters()]))
        if dtype is not None:
            assert all(v.dtype == torch.bfloat16 for v in cache.store.values())
            assert cache.summary()["dtype"] == "bfloat16"
        cache.uninstall()
        assert all(p.dtype == torch.float32 for p in model.parameters())
    (loss32, grad32), (loss16, grad16) = out[None], out[torch.bfloat16]
    assert abs(loss32 - loss16) < 2e-2
    assert float((grad32 - grad16).norm() / grad32.norm()) < 0.05


def test_bf16_scoring_is_within_tolerance_of_fp32():
    """HFScorer in bf16 vs fp32 on the same requests: probabilities within 0.02, the same candidate order mostly."""
    from recbrew.scoring.hf import Encoded, HFScorer

    rng = np.random.default_rng(0)
    encoded = [Encoded(rng.integers(3, VOCAB, size=40).tolist(),
                       [rng.integers(3, VOCAB, size=int(k)).tolist() for k in rng.integers(3, 12, size=8)],
                       [5, 6], False) for _ in range(4)]
    probs = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = _llama(4).to(dtype)
        probs[dtype] = np.concatenate(HFScorer(model, None, mode="multi").score_encoded(encoded))
    assert np.abs(probs[torch.float32] - probs[torch.bfloat16]).max() < 0.02


def test_bf16_scores_are_not_rounded_to_bf16_logits():
    """A bf16 model's answer logits are the fp32 product of its hidden states and head rows: no bf16 rounding
    of the logits, so candidates with different hidden states never tie by rounding."""
    from recbrew.scoring.hf import Encoded, HFScorer

    rng = np.random.default_rng(1)
    encoded = [Encoded(rng.integers(3, VOCAB, size=30).tolist(),
                       [rng.integers(3, VOCAB, size=int(k)).tolist() for k in rng.integers(3, 9, size=16)],
                       [5, 6], False) for _ in range(4)]
    model = _llama(2).to(torch.bfloat16)
    scorer = HFScorer(model, None, mode="multi")
    probs = np.concatenate(scorer.score_encoded(encoded))
    assert np.unique(probs).size == probs.size == 64
    hidden = torch.randn(5, model.config.hidden_size).to(torch.bfloat16)
    with torch.no_grad():
        expected = hidden.float() @ scorer.head.weight[[5, 6]].float().T
        np.testing.assert_array_equal(scorer._answer_logits(hidden, [5, 6]), expected.numpy())


def test_precision_is_detected_from_the_cpu_flags(monkeypatch):
    precision.cpu_has_bf16.cache_clear()
    assert precision.fast_dtype("cpu", wanted=False) == torch.float32
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    assert precision.fast_dtype("cpu") == torch.bfloat16
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    assert precision.fast_dtype("cpu") == torch.float32
    assert precision.describe(torch.bfloat16) == "bf16" and precision.describe(torch.float32) == "fp32"


def test_recbrew_bf16_0_makes_the_automatic_choice_fp32(monkeypatch):
    from recbrew.train.config import load_config
    from recbrew.train.run import frozen_dtype

    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr("recbrew.train.run.cpu_has_bf16", lambda: True)
    cfg = load_config("smollm2-cpu")
    assert cfg.bf16 is None and frozen_dtype(cfg, cuda=False) == torch.bfloat16
    monkeypatch.setenv("RECBREW_BF16", "0")
    assert precision.fast_dtype("cpu") == torch.float32 and frozen_dtype(cfg, cuda=False) is None
    # An explicit choice still wins.
    assert precision.fast_dtype("cpu", wanted=True) == torch.bfloat16
    assert frozen_dtype(load_config("smollm2-cpu", ["bf16=true"]), cuda=False) == torch.bfloat16
    monkeypatch.setenv("RECBREW_BF16", "1")
    assert precision.fast_dtype("cpu") == torch.bfloat16
    monkeypatch.setenv("RECBREW_BF16", "fp32")
    with pytest.raises(UserError, match="RECBREW_BF16='fp32': set 0"):
        precision.fast_dtype("cpu")


def test_train_config_takes_layers_and_refuses_nonsense():
    from recbrew.train.config import load_config

    assert load_config("smollm2-cpu").layers == 6
    assert load_config("tiny", ["layers=2"]).layers == 2
    with pytest.raises(ConfigError, match="layers"):
        load_config("tiny", ["layers=0"])


@pytest.mark.parametrize("multi_item", [False, True])
def test_answer_only_top_layer_gives_the_full_layers_loss_and_gradients(multi_item):
    from recbrew.models.answer_layer import AnswerOnlyTopLayer

    units = _units(2, n=4)
    if not multi_item:
        units = [make_unit(u["input_ids"][:u["prefix_len"]], [Item(u["input_ids"][u["prefix_len"]:][:4], [7, 9], "t")])
                 for u in units]
    batch = UnitCollator(0, multi_item)(units)
    results = []
    for answer_only in (False, True):
        model = _llama(3).train()
        top = AnswerOnlyTopLayer(decoder_layers(model)[-1]).install() if answer_only else None
        model.zero_grad()
        if top is None:
            loss = answer_loss(model, batch, "vocab")
        else:
            with top.positions(batch["answer_rows"], batch["answer_cols"]):
                loss = answer_loss(model, batch, "vocab")
            assert top.calls == 1
            top.uninstall()
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_a, loss_b, atol=1e-5, rtol=1e-5)
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_answer_only_top_layer_is_inactive_outside_its_scope():
    from recbrew.models.answer_layer import AnswerOnlyTopLayer

    model = _llama(2)
    ids = torch.randint(3, VOCAB, (2, 9))
    with torch.no_grad():
        before = model(ids).logits
        top = AnswerOnlyTopLayer(decoder_layers(model)[-1]).install()
        during = model(ids).logits
        top.uninstall()
    torch.testing.assert_close(before, during)
    assert top.calls == 0


def test_bench_levers_reports_every_lever_against_fp32_in_one_run(tmp_path, shared_world):
    from recbrew.bench.train import bench_levers
    from recbrew.models.tiny import build_tiny

    build_tiny(shared_world(60, 3, 1), tmp_path / "small", "small", seed=0)  # 4 layers
    out = bench_levers(str(tmp_path / "small"), prefix=20, segment=6, k=3, requests=2, layers=2, rounds=3)
    levers = out["levers"]
    assert list(levers) == ["fp32", "bf16_frozen", "first_layers", "packed_slates", "answer_only_top", "frozen_cache"]
    assert levers["fp32"]["ratio_vs_fp32"] == 1.0
    for row in levers.values():
        assert row["candidates_per_s"] > 0 and row["ratio_vs_fp32"] == pytest.approx(
            row["candidates_per_s"] / levers["fp32"]["candidates_per_s"])
    # Packing encodes each slate's prefix once: fewer tokens for the same 6 labelled candidates.
    assert levers["packed_slates"]["tokens"] == 2 * (20 + 3 * 6) < levers["first_layers"]["tokens"] == 6 * (20 + 6)


def test_bench_levers_times_real_training_slates(tmp_path, shared_world):
    """`bench train --levers --examples DIR`: the same levers on real training requests, tokenized as training
    tokenizes them; packing holds the same labelled candidates in fewer tokens."""
    from recbrew.bench.train import bench_levers
    from recbrew.examples.build import BuildConfig, build_examples
    from recbrew.models.tiny import build_tiny

    world = shared_world(150, 8, 5)
    build_examples(world, tmp_path / "ex", BuildConfig(tasks=["feed_like"], test_days=3, gap_days=1, max_train=6,
                                                       max_test=2, tokenizer="none"), progress=False)
    build_tiny(world, tmp_path / "tiny", "tiny", seed=0)
    out = bench_levers(str(tmp_path / "tiny"), k=4, requests=2, layers=2, rounds=3, examples=str(tmp_path / "ex"))
    assert out["examples"] == str(tmp_path / "ex") and "prefix_tokens" not in out
    levers = out["levers"]
    assert levers["fp32"]["ratio_vs_fp32"] == 1.0 and all(row["candidates_per_s"] > 0 for row in levers.values())
    assert levers["packed_slates"]["tokens"] < levers["first_layers"]["tokens"]
    build_examples(world, tmp_path / "gen", BuildConfig(tasks=["jobs_next_title"], test_days=3, gap_days=1,
                                                        max_train=2, max_test=1, tokenizer="none"), progress=False)
    with pytest.raises(UserError, match="no binary T1 training requests"):
        bench_levers(str(tmp_path / "tiny"), requests=1, layers=2, rounds=3, examples=str(tmp_path / "gen"))


def test_bench_slates_times_real_requests_and_modes_agree(tmp_path, shared_world):
    from recbrew.bench.slates import bench_slates
    from recbrew.examples.build import BuildConfig, build_examples
    from recbrew.models.tiny import build_tiny

    world = shared_world(150, 8, 5)
    build_examples(world, tmp_path / "ex", BuildConfig(tasks=["feed_like", "jobs_apply_listwise"],
                                                                test_days=3, gap_days=1, max_train=3, max_test=6,
                                                                tokenizer="none"), progress=False)
    build_tiny(world, tmp_path / "tiny", "tiny", seed=0)
    out = bench_slates(str(tmp_path / "tiny"), str(tmp_path / "ex"), requests=8, rounds=3)
    naive, multi = out["modes"]["naive"], out["modes"]["multi"]
    assert out["requests"] == 8 and out["candidates"] > 8
    # Multi-item runs each slate's prefix once; the probabilities agree within the dtype's tolerance.
    assert multi["tokens_processed"] < naive["tokens_processed"]
    assert multi["token_ratio_vs_naive"] == round(naive["tokens_processed"] / multi["tokens_processed"], 2)
    assert multi["max_abs_diff_vs_first_mode"] < (2e-2 if out["dtype"] == "bf16" else 1e-4)


def test_bench_slates_times_vllm_beside_the_multi_item_path(tmp_path, shared_world):
    """`bench score --slates N --modes multi,vllm --json`: a vllm row on the same slates, its engine start apart,
    scores close to the multi-item path's, and stdout one JSON document (vLLM's logs go to stderr)."""
    import subprocess
    import sys

    from recbrew.examples.build import BuildConfig, build_examples
    from recbrew.models.tiny import build_tiny

    world = shared_world(150, 8, 5)
    build_examples(world, tmp_path / "ex", BuildConfig(tasks=["feed_like", "jobs_apply_listwise"], test_days=3,
                                                       gap_days=1, max_train=3, max_test=6, tokenizer="none"),
                   progress=False)
    build_tiny(world, tmp_path / "tiny", "tiny", seed=0)
    done = subprocess.run([sys.executable, "-m", "recbrew.cli", "bench", "score", "--model", str(tmp_path / "tiny"),
                           "--examples", str(tmp_path / "ex"), "--slates", "6", "--modes", "multi,vllm", "--json"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    vllm = out["modes"]["vllm"]
    assert vllm["seconds"] > 0 and vllm["engine_start_seconds"] > 0 and "speedup_vs_multi" in vllm
    assert vllm["max_abs_diff_vs_first_mode"] < (0.1 if out["dtype"] == "bf16" else 1e-3)


@pytest.mark.parametrize("docs", [1, 3])
def test_answer_layer_keys_follow_the_multi_item_layout(docs):
    """Every query of a (packed) layout sees exactly what the dense multi-item mask allows, prefix queries included."""
    import torch

    from recbrew.kernels.multi_item_attention import dense_mask
    from recbrew.models.answer_layer import allowed_keys

    prefix, segs = 5, [3, 4, 2]
    width = prefix + sum(segs)
    one = dense_mask(prefix, segs).reshape(width, width).bool()
    expected = torch.block_diag(*[one] * docs)
    layout = (prefix, segs) if docs == 1 else ([[prefix] * docs], [[segs] * docs])
    cols = torch.arange(width * docs)
    assert torch.equal(allowed_keys(torch.zeros_like(cols), cols, width * docs, layout), expected)
