"""`recbrew bench train`: what the answer-only LM head and multi-item packing buy in training.

1. LM head: one LoRA training step with the loss read through the answer-positions-only head vs the usual
   full [batch x tokens x vocab] logits (labels masked to the answer token): examples/s and the step's peak
   memory above the loaded model (RSS on CPU, `max_memory_allocated` on CUDA), without and with activation
   checkpointing. Each variant runs in its own process so the peaks do not mask each other.
2. Packing: K labelled candidates of one member packed into one sequence (history encoded once) vs one
   candidate per sequence: labelled examples/s.
3. On CUDA only: one step with liger-kernel patches (RMSNorm, RoPE, SwiGLU) vs without: time, memory, loss.
4. The CPU recipe's levers, stacked one at a time (`bench_levers`): fp32 full depth one candidate per
   sequence -> bf16 frozen layers -> the first N layers -> whole slates packed -> the top layer at the
   answer positions only -> the frozen-layer cache (an epoch after the first): labelled candidates/s of a LoRA-on-the-top-layer training step, each as
   a ratio to the first, measured in one run (median of 3 timed rounds after a same-shape warm-up).

Steady state throughout: a warm-up step at the very shapes timed, then the median of >= 3 timed steps
(rounds); the first step (compilation of kernels for new shapes included) is reported apart. bf16 on CUDA.
``model`` may be `random-smollm2` (SmolLM2-135M's shape, random weights: no download needed).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import numpy as np
import torch
import torch.nn.functional as F

from recbrew.errors import UserError
from recbrew.models.loading import RANDOM_SMOLLM2, causal_lm, resolve_dtype
from recbrew.train.config import TrainConfig
from recbrew.train.data import Item, UnitCollator, make_unit
from recbrew.train.run import lora_config
from recbrew.train.trainer import answer_loss


def _model(name: str, attn: str | None = None, device: str = "cpu"):
    from peft import get_peft_model

    from recbrew.kernels.hf_attention import register  # lazy: loads triton

    model = causal_lm(name, resolve_dtype(None, device), attn or register(), device)
    lora = lora_config(TrainConfig(model=name, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]), model)
    return get_peft_model(model, lora).train()  # training mode: activation checkpointing acts only there


def _units(vocab: int, prefix: int, segment: int, k: int, requests: int, pack: bool, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    units = []
    for _ in range(requests):
        p = rng.integers(100, vocab, size=prefix).tolist()
        items = [Item(rng.integers(100, vocab, size=segment).tolist(), [int(rng.integers(100, vocab))], "bench")
                 for _ in range(k)]
        units.extend([make_unit(p, items)] if pack else [make_unit(p, [it]) for it in items])
    return units


def _full_logits_loss(model, batch: dict) -> torch.Tensor:
    """The usual causal-LM loss: full logits at every position, labels masked to the answer tokens."""
    # Already shifted: position t holds the token predicted from position t.
    labels = torch.full_like(batch["input_ids"], -100)
    labels[batch["answer_rows"], batch["answer_cols"]] = batch["answer_ids"]
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch["position_ids"], use_cache=False).logits
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)


def _step(model, opt, batch, head: str):
    loss = answer_loss(model, batch) if head == "answer" else _full_logits_loss(model, batch)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


class _PeakRSS:
    """Peak resident memory of this process while the block runs (sampled every 2 ms)."""

    def __enter__(self):
        import psutil

        self.proc = psutil.Process()
        self.start = self.peak = self.proc.memory_info().rss
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.002)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def head_worker(model_name: str, head: str, batch: int, tokens: int, steps: int, checkpointing: bool) -> dict:
    """One variant of the LM-head comparison (run in its own process)."""
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = _model(model_name, attn="sdpa", device=device)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    vocab = model.config.vocab_size
    # One answer per sequence at its end: a 512-token prompt whose last token predicts the label word.
    units = _units(vocab, tokens - 8, 8, 1, batch, pack=False)
    coll = UnitCollator(0, multi_item=False)(units)
    coll = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in coll.items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    start = time.perf_counter()
    _step(model, opt, coll, head)  # warm-up at the same shape: compilation, optimizer state, allocator
    sync()
    first = time.perf_counter() - start
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times, losses = [], []
    with _PeakRSS() as rss:
        for _ in range(max(3, steps)):
            start = time.perf_counter()
            losses.append(_step(model, opt, coll, head))
            sync()
            times.append(time.perf_counter() - start)
    seconds = float(np.median(times))
    peak = (torch.cuda.max_memory_allocated() - base) if device == "cuda" else (rss.peak - rss.start)
    return {"head": head, "examples_per_s": batch / seconds, "step_seconds": seconds, "first_step_seconds": first,
            "timed_steps": len(times), "step_peak_mib": peak / 2**20,
            "memory": "cuda max_memory_allocated" if device == "cuda" else "RSS", "loss": losses[0],
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "vocab": vocab, "tokens": tokens, "batch": batch, "gradient_checkpointing": checkpointing}


def _in_subprocess(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-m", "recbrew.bench.train", *args], capture_output=True, text=True,
                         check=False)
    if out.returncode:
        raise RuntimeError(f"bench worker failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_packing(model_name: str, prefix: int, segment: int, k: int, requests: int, rounds: int) -> dict:
    """Labelled examples/s: K candidates packed per sequence vs one candidate per sequence (same model, same run)."""
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = _model(model_name, device=device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    vocab = model.config.vocab_size
    layouts = {"packed": (_units(vocab, prefix, segment, k, requests, pack=True), True),
               "single": (_units(vocab, prefix, segment, k, requests, pack=False), False)}
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    # Batches of equal labelled examples: one packed sequence = K single ones.
    batches = {name: [_to(UnitCollator(0, multi)(units[i:i + (1 if multi else k)]), device)
                      for i in range(0, len(units), 1 if multi else k)] for name, (units, multi) in layouts.items()}
    results = {name: {"first_round_seconds": 0.0, "round_seconds": [], "examples": 0, "tokens": 0} for name in layouts}
    for name, todo in batches.items():  # warm-up at the very shapes timed
        start = time.perf_counter()
        for batch in todo:
            _step(model, opt, batch, "answer")
        sync()
        results[name]["first_round_seconds"] = time.perf_counter() - start
        results[name]["examples"] = sum(len(b["answer_ids"]) for b in todo)
        results[name]["tokens"] = sum(int(b["attention_mask"].sum()) for b in todo)
    for _ in range(max(3, rounds)):  # alternate, so drifting machine load hits both
        for name, todo in batches.items():
            start = time.perf_counter()
            for batch in todo:
                _step(model, opt, batch, "answer")
            sync()
            results[name]["round_seconds"].append(time.perf_counter() - start)
    for row in results.values():
        row["seconds"] = float(np.median(row["round_seconds"]))
        row["examples_per_s"] = row["examples"] / row["seconds"]
    return {"model": model_name, "prefix_tokens": prefix, "segment_tokens": segment, "k": k, **results,
            "ratio_examples_per_s": results["packed"]["examples_per_s"] / results["single"]["examples_per_s"],
            "ratio_tokens": results["single"]["tokens"] / results["packed"]["tokens"]}


def _to(batch: dict, device: str) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def bench_liger(model_name: str, batch: int, tokens: int, steps: int) -> dict:
    """CUDA only: a training step with liger-kernel patches vs without (time, max memory, loss)."""
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
    except ImportError as exc:
        return {"skipped": f"liger-kernel not importable: {exc}"}

    out = {}
    for patched in (False, True):
        torch.manual_seed(0)
        model = _model(model_name, attn="sdpa", device="cuda")
        if patched:
            _apply_liger_kernel_to_instance(model=model.get_base_model(), rms_norm=True, rope=True, swiglu=True,
                                            cross_entropy=False, fused_linear_cross_entropy=False)
        units = _units(model.config.vocab_size, tokens - 8, 8, 1, batch, pack=False)
        coll = _to(UnitCollator(0, False)(units), "cuda")
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.0)
        first = _step(model, opt, coll, "answer")
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(max(3, steps)):
            start = time.perf_counter()
            _step(model, opt, coll, "answer")
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        out["liger" if patched else "torch"] = {"seconds_per_step": float(np.median(times)),
                                                "max_memory_mib": torch.cuda.max_memory_allocated() / 2**20,
                                                "loss": first}
        del model, opt
        torch.cuda.empty_cache()
    return {**out, "ratio_speed": out["torch"]["seconds_per_step"] / out["liger"]["seconds_per_step"],
            "ratio_memory": out["torch"]["max_memory_mib"] / out["liger"]["max_memory_mib"],
            "loss_diff": abs(out["torch"]["loss"] - out["liger"]["loss"])}


def _lever_model(name: str, layers: int | None, bf16: bool):
    from peft import get_peft_model

    from recbrew.kernels.hf_attention import register  # lazy: loads triton
    from recbrew.models.depth import truncate  # lazy: loads torch
    from recbrew.train.frozen_cache import FrozenLayerCache, decoder_layers  # lazy: loads torch

    torch.manual_seed(0)
    model = causal_lm(name, torch.float32, register(), "cpu")
    if layers:
        truncate(model, min(layers, model.config.num_hidden_layers))
    model = get_peft_model(model, lora_config(TrainConfig(model=name, lora_layers=1), model)).train()
    stack = decoder_layers(model)
    cache = FrozenLayerCache(stack, len(stack) - 1, dtype=torch.bfloat16 if bf16 else None).install()
    return model, cache


def _lever_step(model, opt, cache, top, batch: dict) -> float:
    """One training step; with ``cache`` the frozen layers read (or fill) the frozen-layer cache, with ``top``
    the top layer runs at the answer positions only."""
    from contextlib import ExitStack

    index = batch.pop("unit_index")
    with ExitStack() as scope:
        if cache is not None:
            scope.enter_context(cache.batch(index.tolist(), batch["attention_mask"].sum(1).tolist()))
        if top is not None:
            scope.enter_context(top.positions(batch["answer_rows"], batch["answer_cols"]))
        return _step(model, opt, batch, "answer")


def _real_units(examples: str, model_name: str, requests: int, k: int, pack: bool, seed: int = 0) -> list[dict]:
    """Training units of ``requests`` binary T1 training requests of an examples folder (a seeded draw of whole
    slates), tokenized for ``model_name`` as `recbrew train` tokenizes them: packed K per sequence or one candidate
    per sequence."""
    from recbrew.examples.folder import Examples  # lazy: loads datasets
    from recbrew.models.tokenizers import load_tokenizer  # lazy: loads transformers
    from recbrew.scoring.answers import AnswerWords  # lazy: loads transformers
    from recbrew.train.data import build_units  # lazy: loads torch

    folder = Examples.open(examples)
    rows = [r for r in folder.requests("train") if r["kind"] == "binary" and r["split_tag"] == "T1"]
    if not rows:
        raise UserError(f"{examples}: no binary T1 training requests to time")
    rng = np.random.default_rng(seed)
    rows = [rows[i] for i in sorted(rng.choice(len(rows), size=min(requests, len(rows)), replace=False))]
    tok = load_tokenizer("smollm2" if model_name == RANDOM_SMOLLM2 else model_name)
    return build_units(rows, tok, AnswerWords(tok, folder.catalog()), getattr(tok, "eos_token_id", None), pack=pack,
                       candidates_per_sequence=k)


def bench_levers(model_name: str = "smollm2", prefix: int = 170, segment: int = 55, k: int = 16, requests: int = 2,
                 layers: int = 6, rounds: int = 3, examples: str | None = None) -> dict:
    """Labelled candidates/s of a training step as the CPU levers stack up (see the module docstring): on random
    slates of ``prefix`` + ``k`` x ``segment`` tokens, or on ``requests`` real training slates of ``examples``."""
    from recbrew.models.answer_layer import AnswerOnlyTopLayer  # lazy: loads transformers
    from recbrew.train.frozen_cache import decoder_layers  # lazy: loads torch

    # (name, layers kept, bf16 frozen layers, packed slates, answer-only top layer, frozen cache)
    steps = [("fp32", None, False, False, False, False), ("bf16_frozen", None, True, False, False, False),
             ("first_layers", layers, True, False, False, False), ("packed_slates", layers, True, True, False, False),
             ("answer_only_top", layers, True, True, True, False), ("frozen_cache", layers, True, True, True, True)]
    out: dict = {"model": model_name, "slates_per_round": requests, "layers": layers, "rounds": rounds}
    if examples:
        out |= {"examples": str(examples), "candidates_per_sequence": k}
    else:
        out |= {"prefix_tokens": prefix, "segment_tokens": segment, "candidates_per_slate": k}
    out["levers"] = {}
    # Real slates are read and tokenized once per layout (packed or not), not once per lever.
    real = {pack: _real_units(examples, model_name, requests, k, pack) for pack in (False, True)} if examples else None
    for name, depth, bf16, pack, answer_only, cached in steps:
        model, cache = _lever_model(model_name, depth, bf16)
        top = AnswerOnlyTopLayer(decoder_layers(model)[-1]).install() if answer_only else None
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        if real is not None:
            units = real[pack]
        else:
            units = _units(model.config.vocab_size, prefix, segment, k, requests, pack=pack)
        units = [{**u, "index": i} for i, u in enumerate(units)]
        batches = _lever_batches(units, pack, k)

        for batch in batches:  # warm-up at the same shapes (and, for the cache lever, fills it)
            _lever_step(model, opt, cache if cached else None, top, dict(batch))
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            for batch in batches:
                _lever_step(model, opt, cache if cached else None, top, dict(batch))
            times.append(time.perf_counter() - start)
        seconds = float(np.median(times))
        candidates = len(units) if not pack else sum(len(u["segment_lens"]) for u in units)
        out["levers"][name] = {"seconds": seconds, "candidates_per_s": candidates / seconds,
                               "tokens": sum(len(u["input_ids"]) for u in units)}
        cache.uninstall()
        if top is not None:
            top.uninstall()
        del model, opt
    base = out["levers"]["fp32"]["candidates_per_s"]
    for row in out["levers"].values():
        row["ratio_vs_fp32"] = row["candidates_per_s"] / base
    return out


def _lever_batches(units: list[dict], pack: bool, k: int) -> list[dict]:
    """Packed: one unit (up to K candidates of a slate) per batch; unpacked: K one-candidate units per batch, so a
    batch holds as many labelled candidates either way."""
    per_batch = 1 if pack else k
    return [UnitCollator(0, pack)(units[i:i + per_batch]) for i in range(0, len(units), per_batch)]


def bench_train(model: str = "smollm2", tokens: int = 512, batch: int = 2, head_steps: int = 3, k: int = 8,
                prefix: int = 448, segment: int = 32, requests: int = 2, rounds: int = 3) -> dict:
    """Both comparisons (and Liger on CUDA), with ratios against the baselines measured in the same run."""
    result = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "timing": "median of >= 3 timed steps (rounds) after a warm-up at the same shapes; first step apart"}
    # With activation checkpointing the stored activations shrink to one tensor per layer, and the logits are
    # what remains of a step's peak; without it they share the peak with every layer's activations.
    for key, ckpt in (("lm_head", False), ("lm_head_checkpointed", True)):
        common = [model, str(batch), str(tokens), str(head_steps), str(int(ckpt))]
        full = _in_subprocess(["head", "full", *common])
        answer = _in_subprocess(["head", "answer", *common])
        result[key] = {"full_logits": full, "answer_positions": answer,
                       "ratio_examples_per_s": answer["examples_per_s"] / full["examples_per_s"],
                       "peak_memory_reduction": 1 - answer["step_peak_mib"] / full["step_peak_mib"]}
    result["packing"] = bench_packing(model, prefix, segment, k, requests, rounds)
    if torch.cuda.is_available():
        result["liger"] = bench_liger(model, batch, tokens, head_steps)
    return result


if __name__ == "__main__":
    if sys.argv[1] == "head":
        _, _, head, name, b, t, s, ckpt = sys.argv
        print(json.dumps(head_worker(name, head, int(b), int(t), int(s), bool(int(ckpt)))))
