"""Fine-tuning: answer-only loss, multi-item packing equal to unpacked training, the kernel path equal to the
torch path, request selection, DPO batches, export, exact resume after SIGKILL."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from random_llama import small_llama

from recbrew.errors import ConfigError, UserError
from recbrew.kernels.dispatch import INTERPRETED, kernel_backend
from recbrew.train.config import load_config
from recbrew.train.data import Item, UnitCollator, make_unit, select_requests, thin_negatives
from recbrew.train.trainer import AnswerPreferenceCollator, answer_logits, answer_loss

VOCAB = 97


@pytest.fixture(scope="module")
def tiny_llama():
    return small_llama(VOCAB)


def _requests(seed=0, n=3):
    """Random tokenized requests: a prefix, 1-5 candidate segments of odd lengths, answers of 1-2 tokens."""
    rng = np.random.default_rng(seed)
    out = []
    for r in range(n):
        prefix = rng.integers(3, VOCAB, size=int(rng.integers(9, 30))).tolist()
        items = [Item(rng.integers(3, VOCAB, size=int(rng.integers(1, 8))).tolist(),
                      rng.integers(3, VOCAB, size=int(rng.integers(1, 3))).tolist(), f"task{r % 2}")
                 for _ in range(int(rng.integers(1, 6)))]
        out.append((prefix, items))
    return out


def _loss_and_grads(model, units, multi_item: bool):
    model.zero_grad()
    batch = UnitCollator(pad_id=0, multi_item=multi_item)(units)
    loss = answer_loss(model, batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_make_unit_places_answers_after_each_segment():
    unit = make_unit([1, 2, 3], [Item([4, 5], [9], "t"), Item([6], [7, 8], "t")])
    assert unit["input_ids"] == [1, 2, 3, 4, 5, 6, 7]
    assert unit["segment_lens"] == [2, 2]
    # Segment 1 predicts 9 from its last token; segment 2 predicts 7 from token 6, then 8 from token 7.
    assert unit["answer_positions"] == [4, 5, 6]
    assert unit["answer_ids"] == [9, 7, 8]
    batch = UnitCollator(0, multi_item=True)([unit])
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 3, 4]
    assert batch["multi_item"] == ([3], [[2, 2]])


def test_packed_training_equals_unpacked(tiny_llama):
    reqs = _requests()
    packed = [make_unit(p, items[i:i + 3]) for p, items in reqs for i in range(0, len(items), 3)]
    single = [make_unit(p, [it]) for p, items in reqs for it in items]
    assert sum(len(u["input_ids"]) for u in packed) < sum(len(u["input_ids"]) for u in single)
    with kernel_backend("torch"):
        loss_p, grads_p = _loss_and_grads(tiny_llama, packed, multi_item=True)
    loss_s, grads_s = _loss_and_grads(tiny_llama, single, multi_item=False)
    assert torch.allclose(loss_p, loss_s, atol=1e-5), (loss_p, loss_s)
    assert grads_p.keys() == grads_s.keys()
    for name in grads_s:
        assert torch.allclose(grads_p[name], grads_s[name], atol=1e-5, rtol=1e-4), name


@pytest.mark.skipif(not INTERPRETED, reason="the Triton interpreter is set up for CPU test runs")
def test_packed_training_kernel_path_equals_torch_path(tiny_llama):
    units = [make_unit(p, items) for p, items in _requests(seed=1, n=2)]
    with kernel_backend("torch"):
        loss_t, grads_t = _loss_and_grads(tiny_llama, units, multi_item=True)
    with kernel_backend("triton"):
        loss_k, grads_k = _loss_and_grads(tiny_llama, units, multi_item=True)
    assert torch.allclose(loss_k, loss_t, atol=1e-5)
    for name in grads_t:
        assert torch.allclose(grads_k[name], grads_t[name], atol=1e-4, rtol=1e-3), name


def test_choices_loss_is_the_cross_entropy_over_the_answer_words(tiny_llama):
    from recbrew.train.data import request_items

    binary = request_items({"kind": "binary", "task": "b", "labels": [1, 0]}, [1, 2], [[5, 6], [7]], [11, 12], None)
    assert [(i.answers, i.choices) for i in binary] == [([11], [11, 12]), ([12], [11, 12])]
    listwise = request_items({"kind": "listwise", "task": "l", "labels": [0, 0, 1]}, [1], [[5, 6]], [20, 21, 22, 23],
                             None)
    assert [(i.answers, i.choices) for i in listwise] == [([22], [20, 21, 22])]
    # scoring: options: one segment per option, each answered [positive, negative] like a binary candidate.
    options = request_items({"kind": "listwise", "task": "o", "labels": [0, 1, 0]}, [1], [[5], [6], [7]], [11, 12],
                            None)
    assert [(i.segment, i.answers, i.choices) for i in options] == [([5], [12], [11, 12]), ([6], [11], [11, 12]),
                                                                   ([7], [12], [11, 12])]
    generative = request_items({"kind": "generative", "task": "g"}, [1], [[5]], [], [30, 31, 2])
    units = [make_unit([3, 4, 8], binary), make_unit([9, 3], listwise), make_unit([4], generative)]
    assert units[2]["answer_choices"] == [[], [], []]
    batch = UnitCollator(pad_id=0, multi_item=True)(units)
    assert batch["answer_choices"].tolist() == [[11, 12, -1], [11, 12, -1], [20, 21, 22], [-1, -1, -1],
                                                [-1, -1, -1], [-1, -1, -1]]
    with torch.no_grad():
        logits = answer_logits(tiny_llama, batch)
        loss = answer_loss(tiny_llama, batch, over="choices")
        assert torch.allclose(answer_loss(tiny_llama, batch), F.cross_entropy(logits, batch["answer_ids"]))
    expected = torch.stack([F.cross_entropy(logits[0, [11, 12]], torch.tensor(0)),
                            F.cross_entropy(logits[1, [11, 12]], torch.tensor(1)),
                            F.cross_entropy(logits[2, [20, 21, 22]], torch.tensor(2)),
                            *F.cross_entropy(logits[3:], batch["answer_ids"][3:], reduction="none")]).mean()
    assert torch.allclose(loss, expected, atol=1e-6)
    with pytest.raises(ConfigError, match="answer_loss"):
        load_config("tiny", ["answer_loss=words"])


def test_lm_head_runs_on_answer_positions_only(tiny_llama):
    units = [make_unit(p, items) for p, items in _requests(seed=2, n=2)]
    batch = UnitCollator(0, multi_item=True)(units)
    seen = []
    hook = tiny_llama.lm_head.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    try:
        with torch.no_grad(), kernel_backend("torch"):
            logits = answer_logits(tiny_llama, batch)
    finally:
        hook.remove()
    width = batch["input_ids"].shape[1]
    keep = len(torch.unique(batch["answer_cols"]))
    assert seen == [(len(units), keep, VOCAB)] and keep < width
    assert logits.shape == (len(batch["answer_ids"]), VOCAB)
    # The same logits as the full-vocabulary forward read at those positions.
    with torch.no_grad(), kernel_backend("torch"):
        full = tiny_llama(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                          attention_mask=batch["attention_mask"], multi_item=batch["multi_item"]).logits
    assert torch.allclose(logits, full[batch["answer_rows"], batch["answer_cols"]], atol=1e-5)


def _rows():
    rows = []
    for i in range(40):
        task = ["a", "b", "c"][i % 3]
        rows.append({"task": task, "split_tag": "T2" if task == "c" else "T1", "kind": "binary",
                     "request_id": f"{task}/{i}", "labels": [i % 2]})
    return rows


def test_select_requests_keeps_t2_out_and_weights_tasks():
    train, val = select_requests(_rows(), None, {}, None, 4, seed=0)
    assert {r["task"] for r in train} == {"a", "b"} and len(val) == 4
    assert not {r["request_id"] for r in train} & {r["request_id"] for r in val}
    weighted, _ = select_requests(_rows(), None, {"a": 2.0, "b": 0.5}, None, 0, seed=0)
    counts = {t: sum(r["task"] == t for r in weighted) for t in "ab"}
    assert counts == {"a": 28, "b": 6}  # 13 "b" requests, half of them rounded
    again, _ = select_requests(_rows(), None, {"a": 2.0, "b": 0.5}, None, 0, seed=0)
    assert [r["request_id"] for r in again] == [r["request_id"] for r in weighted]
    with pytest.raises(UserError, match="T2"):
        select_requests(_rows(), ["a", "c"], {}, None, 0, seed=0)
    with pytest.raises(UserError, match="not in the examples"):
        select_requests(_rows(), ["zzz"], {}, None, 0, seed=0)


def test_lora_layers_adapts_only_the_top_layers(tiny_llama):
    import copy

    from peft import get_peft_model

    from recbrew.train.run import lora_config

    model = get_peft_model(copy.deepcopy(tiny_llama), lora_config(load_config("tiny", ["lora_layers=1"]), tiny_llama))
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(".layers.1." in n for n in trained)
    with pytest.raises(ConfigError, match="LoRA only"):
        load_config("tiny", ["lora_layers=1", "lora=false"])


def _three_layer_lora(lora_layers: int):
    from peft import get_peft_model

    from recbrew.train.run import lora_config

    base = small_llama(VOCAB, 3, seed=1)
    model = get_peft_model(base, lora_config(load_config("tiny", [f"lora_layers={lora_layers}"]), base))
    for n, p in model.named_parameters():  # LoRA B starts at zero: give it weight so the adapted layers matter
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.02)
    return model


@pytest.mark.parametrize("multi_item", [False, True])
def test_frozen_layer_cache_gives_the_same_loss_and_gradients(multi_item):
    from recbrew.train.frozen_cache import FrozenLayerCache, decoder_layers

    model = _three_layer_lora(lora_layers=1)
    units = [{**make_unit(p, items if multi_item else items[:1]), "index": i}
             for i, (p, items) in enumerate(_requests(seed=3, n=4))]
    collate = UnitCollator(pad_id=0, multi_item=multi_item)
    batch = collate(units)
    assert batch["unit_index"].tolist() == [0, 1, 2, 3]
    ref_loss, ref_grads = _loss_and_grads(model, units, multi_item)

    cache = FrozenLayerCache(decoder_layers(model), first_adapted=2).install()
    lengths = batch["attention_mask"].sum(1).tolist()
    for order in ([0, 1, 2, 3], [2, 0, 3, 1]):  # the first pass fills the cache, the second (reshuffled) reads it
        with cache.batch([units[i]["index"] for i in order], [lengths[i] for i in order]):
            loss, grads = _loss_and_grads(model, [units[i] for i in order], multi_item)
        assert torch.allclose(loss, ref_loss, atol=1e-6)
        assert grads.keys() == ref_grads.keys() and all(".layers.2." in n for n in grads)
        for name, g in grads.items():
            assert torch.allclose(g, ref_grads[name], atol=1e-6), name
    assert (cache.misses, cache.hits, len(cache.store)) == (4, 4, 4)
    assert [t.shape[0] for t in (cache.store[i] for i in range(4))] == lengths

    # Without unit keys (validation scoring) and after uninstall the frozen layers run as usual.
    assert torch.allclose(_loss_and_grads(model, units, multi_item)[0], ref_loss, atol=1e-6)
    cache.uninstall()
    assert all("forward" not in layer.__dict__ for layer in decoder_layers(model))
    assert torch.allclose(_loss_and_grads(model, units, multi_item)[0], ref_loss, atol=1e-6)


def test_frozen_layer_cache_refuses_trainable_layers_below():
    from recbrew.train.frozen_cache import FrozenLayerCache, decoder_layers

    model = _three_layer_lora(lora_layers=2)
    with pytest.raises(ConfigError, match=r"layers \[1\] below the adapted ones"):
        FrozenLayerCache(decoder_layers(model), first_adapted=2).install()
    with pytest.raises(ConfigError, match="1..2"):
        FrozenLayerCache(decoder_layers(model), first_adapted=0)
    for overrides, message in ((["cache_frozen=true"], "needs lora_layers"),
                               (["cache_frozen=true", "lora_layers=1", "objective=dpo"], "sft only"),
                               (["cache_frozen=true", "lora_layers=1", "deepspeed=zero2"], "deepspeed")):
        with pytest.raises(ConfigError, match=message):
            load_config("tiny", overrides)


def test_select_requests_by_kind():
    rows = _rows() + [{"task": "l", "split_tag": "T1", "kind": "listwise", "request_id": f"l/{i}", "labels": [0, 1]}
                      for i in range(6)]
    train, _ = select_requests(rows, None, {}, None, 0, seed=0, kinds=["binary"])
    assert {r["task"] for r in train} == {"a", "b"}
    train, _ = select_requests(rows, None, {}, None, 0, seed=0, kinds=["listwise"])
    assert {r["task"] for r in train} == {"l"}
    with pytest.raises(UserError, match=r"l \(listwise\) are not of the kinds trained"):
        select_requests(rows, ["a", "l"], {}, None, 0, seed=0, kinds=["binary"])
    with pytest.raises(UserError, match="no tasks of kind generative"):
        select_requests(rows, None, {}, None, 0, seed=0, kinds=["generative"])


def test_thin_negatives_keeps_positives_and_hits_the_ratio():
    rows = [{"task": "a", "kind": "binary", "labels": [1] + [0] * 9, "segments": [f"s{j}" for j in range(10)]}
            for _ in range(200)]
    rows.append({"task": "l", "kind": "listwise", "labels": [0, 1, 0, 0], "segments": ["x"]})
    thin = thin_negatives(rows, 2.0, seed=0)
    binary = [r for r in thin if r["kind"] == "binary"]
    assert sum(sum(r["labels"]) for r in binary) == 200  # every positive kept
    negatives = sum(len(r["labels"]) - sum(r["labels"]) for r in binary)
    assert 340 < negatives < 460  # about 2 per positive
    assert all(len(r["labels"]) == len(r["segments"]) and r["segments"][0] == "s0" for r in binary)
    assert thin[-1] is rows[-1] and rows[0]["labels"] == [1] + [0] * 9  # listwise untouched, input unchanged
    assert [r["labels"] for r in thin_negatives(rows, 2.0, seed=0)] == [r["labels"] for r in thin]


def test_config_overrides_and_errors(tmp_path):
    cfg = load_config("tiny", ["max_steps=7", "target_modules=q_proj,v_proj", "task_weights={a: 2}", "bf16=false"])
    assert cfg.max_steps == 7 and cfg.target_modules == ["q_proj", "v_proj"] and cfg.task_weights == {"a": 2}
    with pytest.raises(ConfigError, match="unknown field"):
        load_config("tiny", ["nope=1"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config("tiny", ["max_steps"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


class _Folder:
    """The slice of `Examples` that `validation_requests` reads."""

    def __init__(self, validation=None):
        self.root, self.validation = "EX", validation

    def has_split(self, split):
        return split == "validation" and self.validation is not None

    def requests(self, split, tasks=None):
        return [r for r in self.validation if tasks is None or r["task"] in tasks]


def test_validation_requests_come_from_the_split_and_never_silently_from_training():
    from recbrew.train.run import validation_requests

    said = []
    rows = _rows()
    trained = [r["request_id"] for r in select_requests(rows, None, {}, None, 0, seed=0)[0]]
    val_split = [{**r, "request_id": f"v{i}"} for i, r in enumerate(_rows())]
    # A validation split: every training request stays in training; the split's trained tasks are scored.
    train, val, source = validation_requests(_Folder(val_split), load_config(None), rows, True, said.append, True)
    assert [r["request_id"] for r in train] == trained and source == "validation split"
    assert {r["task"] for r in val} == {"a", "b"} and len(val) == 27 and "27 requests" in said[-1]
    train, val, _ = validation_requests(_Folder(val_split), load_config(None, ["eval_requests=5"]), rows, True,
                                        said.append, True)
    assert len(val) == 5 and [r["request_id"] for r in train] == trained
    # No split and no eval_requests: no validation, and the log says how to get one.
    train, val, source = validation_requests(_Folder(), load_config(None), rows, True, said.append, True)
    assert val == [] and source == "none" and "--val-days or --val-fraction" in said[-1]
    assert [r["request_id"] for r in train] == trained
    # No split, eval_requests=N: N requests leave training, and the log says so.
    train, val, source = validation_requests(_Folder(), load_config(None, ["eval_requests=4"]), rows, True,
                                             said.append, True)
    assert len(val) == 4 and len(train) == len(trained) - 4 and source == "held out of train"
    assert "holding 4 binary training requests out of training" in said[-1]


def test_validation_keeps_the_best_step_and_resumes_with_it(tmp_path):
    """The step with the best validation macro AUC is kept (the one at start never), restored and resumed."""
    from types import SimpleNamespace

    from recbrew.train.trainer import ValidationCallback

    requests = [{"task": "t", "labels": [1, 1, 0, 0]}]
    # Scores whose AUC against labels [1, 1, 0, 0] is 0.5, 1.0, 0.75 and (before training) 1.0.
    scores = {2: [0.9, 0.2, 0.5, 0.3], 4: [0.9, 0.8, 0.1, 0.2], 6: [0.9, 0.4, 0.5, 0.1], 0: [0.9, 0.8, 0.1, 0.2]}
    model = torch.nn.Linear(3, 1)
    model.bias.requires_grad_(False)

    def factory(m):
        return SimpleNamespace(score=lambda reqs: [np.array(scores[int(m.weight[0, 0].item())])])

    def at(step):
        with torch.no_grad():
            model.weight.fill_(step)
        return SimpleNamespace(global_step=step, max_steps=6, is_world_process_zero=True)

    log = []
    cb = ValidationCallback(factory, requests, every=2, log=log.append, at_start=True, keep_best=True,
                            best_dir=tmp_path / "best")
    cb.on_train_begin(None, at(0), None, model=model)
    for step in (2, 4):
        cb.on_step_end(None, at(step), None, model=model)
    cb.on_train_end(None, at(6), None, model=model)
    assert [(h["step"], h["val_macro_auc"]) for h in cb.history] == [(0, 1.0), (2, 0.5), (4, 1.0), (6, 0.75)]
    assert cb.best["step"] == 4 and cb.best["val_macro_auc"] == 1.0
    assert set(cb.best["state"]) == {"weight"}  # trainable weights only
    cb.restore_best(model)
    assert torch.equal(model.weight, torch.full((1, 3), 4.0))
    # A run resumed from checkpoint-4 still knows steps 0-4 and their best; from checkpoint-2 it does not.
    again = ValidationCallback(factory, requests, 2, log.append, keep_best=True, best_dir=tmp_path / "best")
    again.resume(4)
    assert [h["step"] for h in again.history] == [0, 2, 4] and again.best["step"] == 4
    assert torch.equal(again.best["state"]["weight"], torch.full((1, 3), 4.0))
    early = ValidationCallback(factory, requests, 2, log.append, keep_best=True, best_dir=tmp_path / "best")
    early.resume(2)
    assert [h["step"] for h in early.history] == [0, 2] and early.best is None


def test_preference_batches_compare_the_answer_word_only():
    collate = AnswerPreferenceCollator(pad_token_id=0)
    batch = collate([{"prompt_ids": [1, 2, 3], "chosen_ids": [4, 5, 9, 2], "rejected_ids": [6, 9, 2]},
                     {"prompt_ids": [1, 2], "chosen_ids": [7, 9, 2], "rejected_ids": [8, 8, 8, 9, 2]}])
    mask, ids = batch["completion_mask"], batch["input_ids"]
    assert mask.sum(1).tolist() == [1, 1, 1, 1]
    assert ids[mask.bool()].tolist() == [9, 9, 9, 9]


# End to end on a generated world -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def workspace(tmp_path_factory, small_setup):
    return small_setup(tmp_path_factory.mktemp("train"), ["feed_like", "jobs_apply", "events_register"],
                       max_train=40, max_test=20, world=(300, 14, 4))


def _cli(*args, **kw):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "recbrew.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def _train_args(ws, out, steps=8):
    return ["train", "--config", "tiny", f"model={ws / 'tiny'}", f"examples={ws / 'ex'}", f"out={out}",
            f"max_steps={steps}", "save_steps=2", "save_total_limit=null", "eval_requests=8", "eval_steps=0",
            "logging_steps=1", "batch_size=4", "--json"]


def _final(out):
    from safetensors.torch import load_file

    log = json.loads((out / "train_log.json").read_text())
    return log["final_loss"], load_file(str(out / "final" / "adapter_model.safetensors"))


def _train_ok(args) -> str:
    """Run ``recbrew train`` to the end; its output."""
    proc = _cli(*args)
    output = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, output
    return output


def _assert_same_result(a, b, exact: bool = False) -> None:
    """Runs ``a`` and ``b`` ended with the same final loss and adapter weights (``exact``: to the bit)."""
    (loss_a, weights_a), (loss_b, weights_b) = _final(a), _final(b)
    assert loss_a == loss_b if exact else abs(loss_a - loss_b) < 1e-4
    for name, w in weights_a.items():
        assert torch.equal(w, weights_b[name]) if exact else torch.allclose(w, weights_b[name], atol=1e-5), name


@pytest.mark.slow
def test_sigkill_and_resume_reaches_the_same_result(workspace):
    whole = workspace / "whole"
    output = _train_ok(_train_args(workspace, whole))
    summary = json.loads(output.strip().splitlines()[-1])
    assert summary["steps"] == 8 and summary["val_macro_auc"] is not None
    meta = json.loads((whole / "final" / "recbrew_train.json").read_text())
    assert set(meta["task_versions"]) == {"feed_like", "jobs_apply"}  # the T2 task never enters training
    assert meta["config"]["max_steps"] == 8

    killed = workspace / "killed"
    proc = _cli(*_train_args(workspace, killed))
    deadline = time.time() + 600
    while not (killed / "checkpoint-4" / "trainer_state.json").is_file():
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "final").exists()
    assert "resuming from" in _train_ok(_train_args(workspace, killed))
    _assert_same_result(whole, killed)


@pytest.mark.slow
def test_resume_from_the_last_checkpoint_trains_no_further_step(workspace):
    """Killed after checkpoint-8 (the whole budget) but before final/: the resumed run writes final/ from it."""
    whole = workspace / "whole"
    if not (whole / "final").is_dir():
        _train_ok(_train_args(workspace, whole))
    late = workspace / "killed-late"
    shutil.copytree(whole, late, ignore=shutil.ignore_patterns("final", "train_log.json"))
    assert f"resuming from {late / 'checkpoint-8'}" in _train_ok(_train_args(workspace, late))
    log = json.loads((late / "train_log.json").read_text())
    assert log["steps"] == 8 and max(h.get("step", 0) for h in log["log_history"]) == 8
    _assert_same_result(whole, late, exact=True)


@pytest.mark.slow
def test_cache_frozen_training_reaches_the_same_result(workspace):
    """Two epochs with the frozen-layer cache: same loss and adapter as without it; epoch 2 reads the cache."""
    from recbrew.train.frozen_cache import decoder_layers
    from recbrew.train.run import _load

    layers = len(decoder_layers(_load(load_config("tiny", [f"model={workspace / 'tiny'}"]), False, True,
                                      workspace / "frozen-probe")[1]))
    for cached in (False, True):
        out = workspace / f"frozen-{cached}"
        args = _train_args(workspace, out, steps=-1) + [
            "epochs=2", "max_examples=12", "lora_layers=1", f"cache_frozen={str(cached).lower()}",
            "bf16=false"]  # exact equality: the frozen layers in fp32 (bf16 has its own tolerance test)
        output = _train_ok(args)
        meta = json.loads((out / "final" / "recbrew_train.json").read_text())
        if cached:
            assert f"caching the activations entering layer {layers - 1} of {layers}" in output
            units = meta["frozen_cache"]["units"]
            assert units > 0 and meta["frozen_cache"]["misses"] == units == meta["frozen_cache"]["hits"]
        else:
            assert "frozen_cache" not in meta
    _assert_same_result(workspace / "frozen-False", workspace / "frozen-True")


@pytest.mark.slow
def test_export_merged_model_scores_like_the_adapter(workspace, capsys):
    from recbrew.models.loading import load_model
    from recbrew.scoring import load_requests
    from recbrew.scoring.hf import HFScorer
    from recbrew.train.export import export

    run = workspace / "whole"
    if not (run / "final").is_dir():
        pytest.skip("needs the run of test_sigkill_and_resume_reaches_the_same_result")
    merged = export(run, workspace / "merged")
    assert capsys.readouterr().out == ""  # library logs go to stderr: stdout is the caller's
    assert (merged / "config.json").is_file() and not (merged / "adapter_config.json").exists()
    meta = json.loads((merged / "recbrew_train.json").read_text())
    assert meta["exported"]["merged"] and meta["data_seed"] is not None
    with pytest.raises(UserError, match="exists"):
        export(run, merged)
    rows = load_requests(workspace / "ex", "test", ["feed_like"])[:6]
    a = HFScorer(*load_model(str(run / "final")), mode="prefix").score(rows)
    b = HFScorer(*load_model(str(merged)), mode="prefix").score(rows)
    for x, y in zip(a, b, strict=True):
        assert np.allclose(x, y, atol=1e-5)
    # The untrained base scores differently: the adapter was really applied.
    c = HFScorer(*load_model(str(workspace / "tiny")), mode="prefix").score(rows)
    assert max(float(np.abs(x - y).max()) for x, y in zip(a, c, strict=True)) > 1e-4


_VLLM_LORA_SCRIPT = """
import json, sys

import recbrew.models.precision as precision

precision.cpu_has_bf16 = lambda: False  # fp32, as the HF reference
from recbrew.scoring import load_requests
from recbrew.scoring.registry import load_scorer

if __name__ == "__main__":
    run, examples = sys.argv[1:3]
    rows = load_requests(examples, "test", ["feed_like"])[:6]
    scorer = load_scorer(run, examples=examples, lm_engine="vllm")
    merged = scorer.merged.name
    print("RESULT " + json.dumps({"scores": [p.tolist() for p in scorer.score(rows)], "merged": merged}))
"""


@pytest.mark.slow
def test_vllm_engine_scores_a_lora_run_merged_like_the_adapter(workspace, tmp_path):
    """`--llm-engine vllm` on a LoRA run: merged into a temporary folder for the engine, scored like the adapter."""
    from recbrew.models.loading import load_model
    from recbrew.scoring import load_requests
    from recbrew.scoring.hf import HFScorer

    run = workspace / "whole"
    if not (run / "final").is_dir():
        pytest.skip("needs the run of test_sigkill_and_resume_reaches_the_same_result")
    script = tmp_path / "vllm_lora.py"
    script.write_text(_VLLM_LORA_SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(run / "final"), str(workspace / "ex")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(next(ln for ln in done.stdout.splitlines() if ln.startswith("RESULT "))[7:])
    rows = load_requests(workspace / "ex", "test", ["feed_like"])[:6]
    want = HFScorer(*load_model(str(run / "final")), mode="multi").score(rows)
    for x, y in zip(got["scores"], want, strict=True):
        np.testing.assert_allclose(x, y, atol=1e-3)
    assert not os.path.exists(got["merged"])  # the merged copy went with the scorer


@pytest.mark.slow
def test_deepspeed_zero3_trains_like_zero2(workspace):
    """`recbrew train --deepspeed` on 2 gloo ranks: ZeRO-3 (weights partitioned, loaded through zero.Init)
    reaches the same adapter as ZeRO-2 (weights replicated) on the same data."""
    from safetensors.torch import load_file

    weights = {}
    for stage in ("zero2", "zero3"):
        out = workspace / f"ds-{stage}"
        args = [a for a in _train_args(workspace, out, steps=3) if not a.startswith(("eval_requests", "save_steps"))]
        proc = _cli(*args, "eval_requests=0", "save_steps=100", "--deepspeed", stage, "--nproc", "2")
        output = proc.communicate(timeout=900)[0]
        assert proc.returncode == 0, output[-3000:]
        weights[stage] = load_file(str(out / "final" / "adapter_model.safetensors"))
        assert json.loads((out / "final" / "recbrew_train.json").read_text())["steps"] == 3
    assert weights["zero2"].keys() == weights["zero3"].keys()
    init = load_file(str(workspace / "whole" / "final" / "adapter_model.safetensors")) \
        if (workspace / "whole" / "final").is_dir() else None
    for name, w in weights["zero2"].items():
        assert torch.allclose(w, weights["zero3"][name], atol=1e-5, rtol=1e-4), name
    if init is not None:  # trained for 8 steps on one rank: a different result, so the comparison has teeth
        assert any(not torch.allclose(w, init[n], atol=1e-5) for n, w in weights["zero2"].items())


def _my_task(folder, words):
    """feed_like copied into the user's own folder as my_feed_like, with other answer words."""
    from recbrew import assets

    (folder / "feed").mkdir(parents=True, exist_ok=True)
    text = (assets.path("tasks") / "feed" / "feed_like.yaml").read_text()
    assert 'words: ["yes", "no"]' in text
    text = text.replace("name: feed_like", "name: my_feed_like").replace(
        'words: ["yes", "no"]', f"words: {json.dumps(words)}")
    (folder / "feed" / "my_feed_like.yaml").write_text(text)
    return folder


@pytest.fixture(scope="module")
def custom(workspace):
    """Examples of a task from the user's own folder (answer words A/B, single tokens of recbrew-tiny), with a
    validation split; plus a folder that defines the same task differently."""
    from recbrew.examples.build import BuildConfig, build_examples

    build_examples(workspace / "world", workspace / "ex-custom",
                   BuildConfig(tasks=["my_feed_like"], test_days=4, gap_days=1, val_days=2, max_train=40, max_val=16,
                               max_test=20, tokenizer="none"),
                   tasks_dir=_my_task(workspace / "my_tasks", ["A", "B"]), progress=False)
    _my_task(workspace / "other_tasks", ["yes", "no"])
    return workspace


@pytest.mark.slow
def test_a_task_from_my_own_folder_trains_scores_and_evaluates_without_tasks_dir(custom):
    from safetensors.torch import load_file

    from recbrew.scoring import load_requests

    ex, out = custom / "ex-custom", custom / "custom-run"
    val_rows = load_requests(ex, "validation")
    assert val_rows and all(r["task"] == "my_feed_like" for r in val_rows)
    n_train = len(load_requests(ex, "train"))
    proc = _cli("train", "--config", "tiny", f"model={custom / 'tiny'}", f"examples={ex}", f"out={out}",
                "max_steps=6", "eval_steps=2", "save_steps=100", "logging_steps=1", "batch_size=4", "--json")
    output = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, output
    assert f"validation AUC on {len(val_rows)} requests of the examples' validation split" in output
    summary = json.loads(output.strip().splitlines()[-1])
    meta = json.loads((out / "final" / "recbrew_train.json").read_text())
    assert meta["task_specs"]["my_feed_like"]["spec"]["answer"]["words"] == ["A", "B"]
    # The validation split is scored; no training request was taken for it.
    assert (meta["val_source"], meta["val_requests"], meta["train_requests"]) == \
        ("validation split", len(val_rows), n_train)
    history = {h["step"]: h["val_macro_auc"] for h in meta["val"]}
    assert sorted(history) == [2, 4, 6]
    best = min(history, key=lambda step: (-history[step], step))
    assert meta["final_step"] == summary["final_step"] == best and meta["selected_by"] == "val_macro_auc"
    assert summary["val_macro_auc"] == pytest.approx(history[best]) and summary["steps"] == 6
    # final/ holds the best step's adapter.
    kept = load_file(str(out / "best-val" / "trainable.safetensors"))
    final = load_file(str(out / "final" / "adapter_model.safetensors"))
    assert {k.replace(".default", "") for k in kept} == set(final)
    for name, w in kept.items():
        assert torch.equal(w, final[name.replace(".default", "")]), name

    # Scored and evaluated with no --tasks-dir: the examples carry the task's spec.
    proc = _cli("models", "score", "--examples", str(ex), "--model", str(out / "final"), "--json")
    scored = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, scored
    result = json.loads(scored[scored.index("{"):])["tasks"]["my_feed_like"]
    assert result["requests"] == len(load_requests(ex, "test")) and result["auc"] is not None
    proc = _cli("baselines", "train", "lirank", "--examples", str(ex), "--out", str(custom / "custom-lirank"),
                "train.epochs=1")
    assert proc.communicate(timeout=600)[0] is not None and proc.returncode == 0
    lirank = json.loads((custom / "custom-lirank" / "train.json").read_text())
    assert (lirank["val_source"], lirank["val_requests"]) == ("validation split", len(val_rows))
    proc = _cli("eval", "--models", f"popularity,lirank={custom / 'custom-lirank'},llm={out / 'final'}",
                "--examples", str(ex), "--out", str(custom / "custom-eval"), "--bootstrap", "0", "--no-progress")
    report = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, report
    models = json.loads((custom / "custom-eval" / "report.json").read_text())["tasks"]["my_feed_like"]["models"]
    assert {"oracle", "popularity", "lirank", "llm"} <= set(models) and models["llm"]["auc"] is not None

    # A catalog that defines the task differently: one line naming the task and what differs, exit code 2.
    for args in (["eval", "--models", "popularity", "--examples", str(ex), "--out", str(custom / "conflict"),
                  "--tasks-dir", str(custom / "other_tasks")],
                 ["train", "--config", "tiny", f"model={custom / 'tiny'}", f"examples={ex}",
                  f"out={custom / 'conflict-run'}", f"tasks_dir={custom / 'other_tasks'}"]):
        proc = _cli(*args)
        said = proc.communicate(timeout=600)[0].strip().splitlines()
        assert proc.returncode == 2, said
        assert said[-1].startswith("error: task 'my_feed_like': --tasks-dir ") and \
            'answer.words: ["yes", "no"] there, ["A", "B"] recorded' in said[-1], said


def test_serve_takes_the_task_specs_from_the_examples(custom):
    """`recbrew serve --examples`: the recorded specs are served (answer words A/B); a conflicting --tasks-dir
    fails before the engine starts."""
    from recbrew.errors import ConfigError
    from recbrew.examples.folder import Examples
    from recbrew.models.tokenizers import load_tokenizer
    from recbrew.scoring import load_requests
    from recbrew.serve.engine import free_port
    from recbrew.serve.protocol import RankRequest
    from recbrew.serve.ranker import RankService
    from recbrew.serve.server import serve

    ex = custom / "ex-custom"
    folder = Examples.open(ex)
    svc = RankService(engine_url="", engine_key="", served_model="", tokenizer=custom / "tiny",
                      corpus_dir=folder.corpus, catalog=folder.catalog())
    tok = load_tokenizer(str(custom / "tiny"))
    assert svc.scorer.answers("my_feed_like") == [tok(" A")["input_ids"][0], tok(" B")["input_ids"][0]]
    row = load_requests(ex, "test")[0]
    task, prompt = svc.prompt(RankRequest(task="my_feed_like", member=row["member_id"],
                                          candidates=row["candidate_ids"], at=row["timestamp"]))
    assert task.answer.words == ["A", "B"] and len(prompt.segments) == len(row["candidate_ids"])
    assert prompt.segments == row["segments"]  # the build's candidate segments, rendered again
    with pytest.raises(ConfigError, match=r"^task 'my_feed_like': --tasks-dir .*answer\.words"):
        serve(str(custom / "tiny"), examples=ex, tasks_dir=custom / "other_tasks", port=free_port())


@pytest.mark.gpu
def test_liger_patched_training_step_matches_unpatched():
    """On CUDA the trainer applies liger-kernel (RMSNorm, RoPE, SwiGLU): same answer loss and gradients."""
    import copy

    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    plain = small_llama(VOCAB, hidden=128, intermediate=256).cuda()
    patched = copy.deepcopy(plain)
    _apply_liger_kernel_to_instance(model=patched, rms_norm=True, rope=True, swiglu=True, cross_entropy=False,
                                    fused_linear_cross_entropy=False)
    units = [make_unit(p, items) for p, items in _requests(seed=5, n=3)]
    batch = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in UnitCollator(0, True)(units).items()}
    out = {}
    for name, model in (("plain", plain), ("liger", patched)):
        loss = answer_loss(model, batch)
        loss.backward()
        out[name] = (loss.detach(), model.model.layers[0].mlp.down_proj.weight.grad.clone())
    assert torch.allclose(out["plain"][0], out["liger"][0], atol=1e-4)
    assert torch.allclose(out["plain"][1], out["liger"][1], atol=1e-3, rtol=1e-2)


def test_vocab_loss_through_the_answer_head_equals_full_logits_cross_entropy(tiny_llama):
    """The fused answer head (chunked log-sum-exp) gives the full-vocabulary loss and its gradients."""
    units = [make_unit(p, items) for p, items in _requests(seed=3)]
    batch = UnitCollator(pad_id=0, multi_item=True)(units)
    params = [p for p in tiny_llama.parameters() if p.requires_grad]
    with kernel_backend("torch"):
        fused = answer_loss(tiny_llama, batch)
        fused_grads = torch.autograd.grad(fused, params)
        full = F.cross_entropy(answer_logits(tiny_llama, batch).float(), batch["answer_ids"])
        full_grads = torch.autograd.grad(full, params)
    torch.testing.assert_close(fused, full, atol=1e-5, rtol=1e-5)
    for a, b in zip(fused_grads, full_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
