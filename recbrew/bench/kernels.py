"""Kernel benchmarks: time and peak memory against the torch baselines, measured in the same run.

- Multi-item attention (prefix + K candidates of 32 tokens): every implementation the dispatcher can pick
  (recbrew's Triton kernel, FlexAttention with the layout's block mask, SDPA with the dense mask, the torch
  path) and what ``auto`` picks, against SDPA with the equivalent dense boolean mask (the baseline);
  forward, and forward + backward. Each row says which implementation was fastest and how ``auto`` fares.
- The answer head vs gather + linear + log_softmax in torch, verbalizer-only and full-vocabulary.

Steady state: every timing is the median of ``repeats`` (>= 3) calls after two warm-up calls at the same
shape; the first call (compilation included) is reported apart as ``first_call_ms``.
On a GPU: the full grid (prefix 2k/8k x K 50/500), bf16. On CPU the same comparison runs at shapes scaled
down to fit a minute or two, in fp32 (``quick``: seconds, for tests); the JSON says so.
``bench_kernels()`` returns the JSON-ready dict that ``recbrew bench kernels --json`` prints.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from recbrew.kernels.answer_head import answer_head
from recbrew.kernels.dispatch import (
    ATTENTION_TABLE,
    SDPA_MAX_TOKENS,
    attention_backend,
    choose_attention,
    triton,
)
from recbrew.kernels.multi_item_attention import (
    dense_mask,
    expand_kv,
    flex_available,
    layout_tables,
    multi_item_attention,
    normalize_layouts,
)

SEGMENT_TOKENS = 32
WARMUP_CALLS = 2
GPU_GRID = dict(prefixes=(2048, 8192), candidates=(50, 500), heads=16, kv_heads=4, head_dim=128,
                dtype=torch.bfloat16, repeats=3, flex_budget_s=60,
                answer=(dict(positions=4000, hidden=2048, vocab=128256, labels=2),
                        # A SmolLM2 training step of `bench train`: a few answer rows, the whole vocabulary.
                        dict(positions=8, hidden=576, vocab=49152, labels=2)))
CPU_GRID = dict(prefixes=(256, 1024), candidates=(8, 32), heads=4, kv_heads=2, head_dim=64,
                dtype=torch.float32, repeats=3, flex_budget_s=60,
                answer=(dict(positions=256, hidden=256, vocab=32000, labels=2),
                        dict(positions=8, hidden=576, vocab=49152, labels=2)))
QUICK_GRID = dict(prefixes=(64,), candidates=(4,), heads=2, kv_heads=1, head_dim=32,
                  dtype=torch.float32, repeats=3, flex_budget_s=30,
                  answer=(dict(positions=16, hidden=64, vocab=1000, labels=2),))
#: The implementations timed besides the baseline (names of :data:`recbrew.kernels.dispatch.ATTENTION_BACKENDS`).
IMPLEMENTATIONS = ("triton", "flex", "sdpa", "torch")


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _measure(fn: Callable[[], object], device: str, repeats: int) -> dict:
    """Median milliseconds over ``repeats`` calls after warm-up calls at the same shape, the first call's time
    (compilation included) and peak extra memory (CUDA)."""
    try:
        start = time.perf_counter()
        fn()
        _sync(device)
        first = (time.perf_counter() - start) * 1e3
        for _ in range(WARMUP_CALLS - 1):
            fn()
        _sync(device)
        if device == "cuda":
            torch.cuda.empty_cache()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(max(3, repeats)):
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
    return {"ms": round(sorted(times)[len(times) // 2], 3), "first_call_ms": round(first, 1),
            "peak_mb": None if peak is None else round(peak, 1)}


def _skip(name: str, device: str, backward: bool, deadline: float, tokens: int) -> str | None:
    """Why an implementation is not timed here, or None."""
    if name == "sdpa" and device == "cuda" and tokens > 2 * SDPA_MAX_TOKENS:
        return f"auto takes SDPA only up to {SDPA_MAX_TOKENS} tokens; sdpa_dense_mask is the same computation"
    if name == "triton" and not (device == "cuda" and triton is not None):
        return "Triton runs on CUDA only (the CPU interpreter is for tests)"
    if name == "flex":
        if not flex_available(torch.device(device)):
            return "FlexAttention is not available in this torch"
        if backward and device == "cpu":
            return "FlexAttention has no backward on CPU"
        if time.perf_counter() > deadline:
            return "FlexAttention compiles per shape and the time budget for it is spent"
    if name == "torch" and device == "cuda":
        return "the CPU path; not a candidate on CUDA"
    return None


def _attention_case(prefix: int, k: int, grid: dict, device: str, deadline: float) -> list[dict]:
    segments = [SEGMENT_TOKENS] * k
    total = prefix + sum(segments)
    h, hkv, d, dtype = grid["heads"], grid["kv_heads"], grid["head_dim"], grid["dtype"]
    gen = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(1, h, total, d, device=device, dtype=dtype, generator=gen)
    kk = torch.randn(1, hkv, total, d, device=device, dtype=dtype, generator=gen)
    v = torch.randn(1, hkv, total, d, device=device, dtype=dtype, generator=gen)
    grad = torch.randn_like(q)
    mask = dense_mask(prefix, segments, device=device)

    def sdpa_dense(a, b, c):
        # Heads expanded as Hugging Face's SDPA path does: a masked GQA call may otherwise drop to the math kernel.
        groups = a.shape[1] // b.shape[1]
        return F.scaled_dot_product_attention(a, expand_kv(b, groups), expand_kv(c, groups), attn_mask=mask)

    def ours(name):
        def run(a, b, c):
            with attention_backend(name):
                return multi_item_attention(a, b, c, prefix, segments)
        return run

    auto = choose_attention(q, kk, v, tokens=total, flex_ok=flex_available(q.device))
    rows = []
    for backward in (False, True):
        row = {"prefix": prefix, "candidates": k, "tokens": total, "pass": "forward_backward" if backward else "forward",
               "auto_choice": auto}
        for name, fn in (("sdpa_dense_mask", sdpa_dense), *((n, ours(n)) for n in IMPLEMENTATIONS)):
            why = None if name == "sdpa_dense_mask" else _skip(name, device, backward, deadline, total)
            if why:
                row[name] = {"ms": None, "peak_mb": None, "skipped": why}
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
        _attention_ratios(row)
        row["dense_mask_mb"] = round(total * total / 2**20, 1)
        tables = layout_tables(normalize_layouts(prefix, segments, 1, total), total, 64, 64, torch.device(device))
        row["layout_tables_kb"] = round(sum(t.numel() * 4 for t in (tables.seg, tables.doc, tables.q_tiles,
                                                                        tables.k_tiles)) / 2**10, 1)
        rows.append(row)
    return rows


def _attention_ratios(row: dict) -> None:
    """Speed-ups against the dense-mask baseline, the fastest implementation and how ``auto``'s choice fares."""
    base = row["sdpa_dense_mask"]["ms"]
    timed = {n: row[n]["ms"] for n in ("sdpa_dense_mask", *IMPLEMENTATIONS) if row.get(n, {}).get("ms")}
    for name in IMPLEMENTATIONS:
        if name in timed and base:
            row[name]["speedup_vs_sdpa_dense_mask"] = round(base / timed[name], 2)
    if not timed:
        return
    fastest = min(timed, key=timed.get)
    row["fastest"] = fastest
    auto_ms = timed.get(row["auto_choice"])
    if auto_ms:
        row["auto"] = {"ms": auto_ms, "speedup_vs_sdpa_dense_mask": round(base / auto_ms, 2) if base else None,
                       "ratio_vs_fastest": round(timed[fastest] / auto_ms, 2)}
        if "flex" in timed:
            row["auto"]["ratio_vs_flex"] = round(timed["flex"] / auto_ms, 2)


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


def bench_kernels(device: str | None = None, quick: bool = False) -> dict:
    """Benchmark both kernels on the GPU if there is one (full grid), else on CPU at reduced shapes
    (``quick``: tiny shapes, seconds)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    grid = QUICK_GRID if quick else GPU_GRID if device == "cuda" else CPU_GRID
    report = {
        "device": device,
        "card": torch.cuda.get_device_name() if device == "cuda" else None,
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "dtype": str(grid["dtype"]).removeprefix("torch."),
        "timing": f"median of {max(3, grid['repeats'])} calls after {WARMUP_CALLS} warm-up calls at the same shape; "
                  "first_call_ms (compilation included) apart",
        "attention_config": {"heads": grid["heads"], "kv_heads": grid["kv_heads"], "head_dim": grid["head_dim"],
                             "batch": 1, "segment_tokens": SEGMENT_TOKENS},
        "dispatch_table": [list(row) for row in ATTENTION_TABLE],
    }
    try:
        import triton

        report["triton"] = triton.__version__
    except ImportError:
        report["triton"] = None
    if device != "cuda":
        report["note"] = ("CPU run: shapes scaled down from prefix 2k/8k x 50/500 candidates to fit a CPU, fp32; "
                          "GPU figures need a GPU. Peak memory is measured on CUDA only.")
    start = time.perf_counter()
    report["baselines"] = {
        "sdpa_dense_mask": "F.scaled_dot_product_attention with the equivalent [L, L] boolean mask",
        "flex": "torch.compile(flex_attention) (eager on CPU) with the layout's block mask",
        "torch_full_logits": "gather the answer rows, full LM-head linear, log_softmax (over the verbalizer "
                             "tokens, or over the vocabulary for full_vocab)",
    }
    deadline = start + grid["flex_budget_s"]
    report["attention"] = [row for prefix in grid["prefixes"] for k in grid["candidates"]
                           for row in _attention_case(prefix, k, grid, device, deadline)]
    report["answer_head"] = [row for cfg in grid["answer"]
                             for row in _answer_head_cases(cfg, grid["dtype"], device, grid["repeats"])]
    report["summary"] = _summary(report)
    report["seconds"] = round(time.perf_counter() - start, 1)
    return report


def _summary(report: dict) -> dict:
    """The issue's questions in one place: is auto at least as fast as FlexAttention and never slower than
    dense SDPA; is the answer head never slower than full logits."""
    rows = [r for r in report["attention"] if "auto" in r]
    heads = [r["answer_head"].get("speedup_vs_torch") for r in report["answer_head"]]
    return {
        "auto_min_speedup_vs_sdpa_dense_mask": min((r["auto"]["speedup_vs_sdpa_dense_mask"] or 0 for r in rows),
                                                   default=None),
        "auto_min_ratio_vs_flex": min((r["auto"]["ratio_vs_flex"] for r in rows if "ratio_vs_flex" in r["auto"]),
                                      default=None),
        "auto_not_fastest": [f"{r['prefix']}/{r['candidates']} {r['pass']}: {r['auto_choice']} vs {r['fastest']}"
                             for r in rows if r["auto"]["ratio_vs_fastest"] < 0.95],
        "answer_head_min_speedup_vs_torch": min((x for x in heads if x), default=None),
    }


if __name__ == "__main__":
    import json

    print(json.dumps(bench_kernels(), indent=2))
