"""Kernel benchmarks: time and peak memory against the torch baselines, measured in the same run.

- Multi-item attention (prefix + K candidates of 32 tokens) vs SDPA with the equivalent dense boolean
  mask and vs FlexAttention with the same mask as a block mask; forward, and forward + backward.
- The answer head vs gather + linear + log_softmax in torch, verbalizer-only and full-vocabulary.

On a GPU: the full grid (prefix 2k/8k x K 50/500), bf16, Triton kernels. On CPU the same comparison
runs at shapes scaled down to fit a minute or two, through the torch path, in fp32; the JSON says so.
``bench_kernels()`` returns the JSON-ready dict that ``recbrew bench kernels --json`` prints.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from recbrew.kernels.answer_head import answer_head
from recbrew.kernels.dispatch import use_triton
from recbrew.kernels.multi_item_attention import (
    dense_mask,
    expand_kv,
    layout_tables,
    multi_item_attention,
    normalize_layouts,
)

SEGMENT_TOKENS = 32
GPU_GRID = dict(prefixes=(2048, 8192), candidates=(50, 500), heads=16, kv_heads=4, head_dim=128,
                dtype=torch.bfloat16, repeats=5, flex_budget_s=150,
                answer=dict(positions=4000, hidden=2048, vocab=128256, labels=2))
CPU_GRID = dict(prefixes=(256, 1024), candidates=(8, 32), heads=4, kv_heads=2, head_dim=64,
                dtype=torch.float32, repeats=2, flex_budget_s=60,
                answer=dict(positions=256, hidden=256, vocab=32000, labels=2))


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _measure(fn: Callable[[], object], device: str, repeats: int) -> dict:
    """Median milliseconds over ``repeats`` calls after one warm-up call, and peak extra memory (CUDA)."""
    try:
        fn()
        _sync(device)
        if device == "cuda":
            torch.cuda.empty_cache()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            _sync(device)
            times.append((time.perf_counter() - start) * 1e3)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return {"ms": None, "peak_mb": None, "error": "out of memory"}
    except Exception as exc:  # a baseline missing on this stack must not sink the whole report
        return {"ms": None, "peak_mb": None, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"}
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if device == "cuda" else None
    return {"ms": round(sorted(times)[len(times) // 2], 3), "peak_mb": None if peak is None else round(peak, 1)}


def _flex():
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError:
        return None
    return create_block_mask, torch.compile(flex_attention, dynamic=False)


def _attention_case(prefix: int, k: int, grid: dict, device: str, flex, deadline: float) -> list[dict]:
    segments = [SEGMENT_TOKENS] * k
    total = prefix + sum(segments)
    h, hkv, d, dtype = grid["heads"], grid["kv_heads"], grid["head_dim"], grid["dtype"]
    gen = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(1, h, total, d, device=device, dtype=dtype, generator=gen)
    kk = torch.randn(1, hkv, total, d, device=device, dtype=dtype, generator=gen)
    v = torch.randn(1, hkv, total, d, device=device, dtype=dtype, generator=gen)
    grad = torch.randn_like(q)
    mask = dense_mask(prefix, segments, device=device)
    seg = torch.full((total,), -1, device=device)
    seg[prefix:] = torch.arange(total - prefix, device=device) // SEGMENT_TOKENS

    def ours(a, b, c):
        return multi_item_attention(a, b, c, prefix, segments)

    def sdpa(a, b, c):
        # Heads expanded as Hugging Face's SDPA path does: a masked GQA call may otherwise drop to the math kernel.
        groups = a.shape[1] // b.shape[1]
        return F.scaled_dot_product_attention(a, expand_kv(b, groups), expand_kv(c, groups), attn_mask=mask)

    methods = {"multi_item": ours, "sdpa_dense_mask": sdpa}
    if flex is not None and time.perf_counter() > deadline:
        methods["flex_attention"] = TimeoutError("skipped: FlexAttention compiles per shape and the time budget "
                                                 "for it is spent")
    elif flex is not None:
        create_block_mask, flex_attention = flex

        def visible(b, hh, qi, ki):
            return (ki <= qi) & ((seg[ki] == -1) | (seg[ki] == seg[qi]))

        try:
            block_mask = create_block_mask(visible, None, None, total, total, device=device)

            def flex_fn(a, b, c):
                return flex_attention(a, b, c, block_mask=block_mask, enable_gqa=True)

            methods["flex_attention"] = flex_fn
        except Exception as exc:
            methods["flex_attention"] = exc

    rows = []
    for backward in (False, True):
        row = {"prefix": prefix, "candidates": k, "tokens": total, "pass": "forward_backward" if backward else "forward"}
        for name, fn in methods.items():
            if isinstance(fn, Exception):
                row[name] = {"ms": None, "peak_mb": None, "error": f"{type(fn).__name__}: {str(fn)[:160]}"}
                continue
            if name == "flex_attention" and backward and device == "cpu":
                row[name] = {"ms": None, "peak_mb": None, "skipped": "FlexAttention has no backward on CPU"}
                continue
            if backward:
                inputs = [t.detach().requires_grad_() for t in (q, kk, v)]

                def call(fn=fn, inputs=inputs):
                    fn(*inputs).backward(grad)
            else:
                def call(fn=fn):
                    with torch.no_grad():
                        fn(q, kk, v)
            row[name] = _measure(call, device, grid["repeats"])
        base = row["sdpa_dense_mask"]["ms"]
        for name in methods:
            ms = row[name]["ms"]
            if name != "sdpa_dense_mask" and ms and base:
                row[name]["speedup_vs_sdpa_dense_mask"] = round(base / ms, 2)
        row["dense_mask_mb"] = round(total * total / 2**20, 1)
        tables = layout_tables(normalize_layouts(prefix, segments, 1, total), total, 64, 64, torch.device(device))
        row["layout_tables_kb"] = round(sum(t.numel() * 4 for t in (tables.seg, tables.q_tiles, tables.k_tiles))
                                        / 2**10, 1)
        rows.append(row)
    return rows


def _answer_head_cases(cfg: dict, dtype, device: str, repeats: int) -> list[dict]:
    m, hd, vocab, c = cfg["positions"], cfg["hidden"], cfg["vocab"], cfg["labels"]
    gen = torch.Generator(device=device).manual_seed(0)
    # Answer positions: the last token of every 32-token candidate in a packed batch.
    hidden = torch.randn(m * SEGMENT_TOKENS, hd, device=device, dtype=dtype, generator=gen)
    weight = 0.02 * torch.randn(vocab, hd, device=device, dtype=dtype, generator=gen)
    positions = torch.arange(SEGMENT_TOKENS - 1, m * SEGMENT_TOKENS, SEGMENT_TOKENS, device=device)
    labels = torch.arange(c, device=device) * 7 + 11

    def torch_head(h, w, full):
        logits = (h[positions] @ w.T).float()
        return logits.log_softmax(-1)[:, labels] if full else logits[:, labels].log_softmax(-1)

    def ours(h, w, full):
        out = answer_head(h, positions, w, labels, full_vocab=full)
        return out.full_logprobs if full else out.logprobs

    rows = []
    for full in (False, True):
        for backward in (False, True):
            row = {"positions": m, "hidden": hd, "vocab": vocab, "labels": c,
                   "mode": "full_vocab" if full else "verbalizer",
                   "pass": "forward_backward" if backward else "forward"}
            for name, fn in (("answer_head", ours), ("torch_full_logits", torch_head)):
                if backward:
                    h, w = hidden.detach().requires_grad_(), weight.detach().requires_grad_()

                    def call(fn=fn, h=h, w=w, full=full):
                        fn(h, w, full).sum().backward()
                else:
                    def call(fn=fn, full=full):
                        with torch.no_grad():
                            fn(hidden, weight, full)
                row[name] = _measure(call, device, repeats)
            base, ms = row["torch_full_logits"]["ms"], row["answer_head"]["ms"]
            if base and ms:
                row["answer_head"]["speedup_vs_torch"] = round(base / ms, 2)
            rows.append(row)
    return rows


def bench_kernels(device: str | None = None) -> dict:
    """Benchmark both kernels on the GPU if there is one (full grid), else on CPU at reduced shapes."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    grid = GPU_GRID if device == "cuda" else CPU_GRID
    probe = torch.empty(1, device=device)
    report = {
        "device": device,
        "card": torch.cuda.get_device_name() if device == "cuda" else None,
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "path": "triton" if use_triton(probe) else "torch",
        "dtype": str(grid["dtype"]).removeprefix("torch."),
        "attention_config": {"heads": grid["heads"], "kv_heads": grid["kv_heads"], "head_dim": grid["head_dim"],
                             "batch": 1, "segment_tokens": SEGMENT_TOKENS},
    }
    try:
        import triton

        report["triton"] = triton.__version__
    except ImportError:
        report["triton"] = None
    if device != "cuda":
        report["note"] = ("CPU run: the torch path (no Triton) at shapes scaled down from prefix 2k/8k x 50/500 "
                          "candidates to fit a CPU; GPU figures need a GPU. Peak memory is measured on CUDA only.")
    start = time.perf_counter()
    flex = _flex()
    report["baselines"] = {
        "sdpa_dense_mask": "F.scaled_dot_product_attention with the equivalent [L, L] boolean mask",
        "flex_attention": "torch.compile(flex_attention) with the layout as a block mask",
        "torch_full_logits": "gather the answer rows, full LM-head linear, log_softmax (over the verbalizer "
                             "tokens, or over the vocabulary for full_vocab)",
    }
    deadline = start + grid["flex_budget_s"]
    report["attention"] = [row for prefix in grid["prefixes"] for k in grid["candidates"]
                           for row in _attention_case(prefix, k, grid, device, flex, deadline)]
    report["answer_head"] = _answer_head_cases(grid["answer"], grid["dtype"], device, grid["repeats"])
    report["seconds"] = round(time.perf_counter() - start, 1)
    return report


if __name__ == "__main__":
    import json

    print(json.dumps(bench_kernels(), indent=2))
