"""The GPU defaults (run by `make gpu-check`; skipped without CUDA): bf16 loading, every attention backend on
packed documents in bf16, and batched multi-item scoring in bf16 against one request at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recbrew.kernels.dispatch import attention_backend, choose_attention
from recbrew.kernels.multi_item_attention import flex_available, multi_item_attention

pytestmark = pytest.mark.gpu

PREFIXES = [[700, 40], [1500]]
SEGMENTS = [[[32] * 20, [9, 17]], [[31] * 60]]
TOTAL = 3400


def _packed(dtype, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    return tuple(torch.randn(2, h, TOTAL, 64, device="cuda", dtype=dtype, generator=gen).requires_grad_()
                 for h in (8, 2, 2))


@pytest.mark.parametrize("backend", ["flex", "triton", "sdpa"])
def test_backends_in_bf16_are_as_close_to_fp32_as_the_torch_path(backend):
    """Forward and gradients of each backend on packed documents within 2x the bf16 torch path's error."""
    if backend == "flex" and not flex_available(torch.device("cuda")):
        pytest.skip("no FlexAttention")
    q, k, v = _packed(torch.bfloat16)
    grad = torch.randn(q.shape, device="cuda", generator=torch.Generator(device="cuda").manual_seed(1))

    def run(name, *x):
        with attention_backend(name):
            out = multi_item_attention(*x, PREFIXES, SEGMENTS)
        return (out, *torch.autograd.grad(out, x, grad.to(out.dtype)))

    got, base = run(backend, q, k, v), run("torch", q, k, v)
    exact = run("torch", *(t.detach().float().requires_grad_() for t in (q, k, v)))
    for name, a, b, ref in zip(("out", "dq", "dk", "dv"), got, base, exact, strict=True):
        err, floor = (a.float() - ref).abs().max().item(), (b.float() - ref).abs().max().item()
        assert err <= 2 * floor + 1e-3, f"{backend} {name}: bf16 error {err} vs torch path {floor}"


def test_auto_picks_flex_or_triton_past_sdpa_size():
    q, k, v = _packed(torch.bfloat16)
    assert choose_attention(q, k, v, tokens=TOTAL, flex_ok=flex_available(q.device)) in ("flex", "triton")


def test_load_model_defaults_to_bf16_on_cuda():
    from recbrew.models.loading import load_model

    model, tok = load_model("random-smollm2", layers=1)
    assert model.dtype == torch.bfloat16 and model.device.type == "cuda" and tok is None
    assert load_model("random-smollm2", layers=1, dtype="fp32")[0].dtype == torch.float32


def test_batched_multi_scoring_in_bf16_equals_one_at_a_time():
    """Several requests per pass on the GPU default path (bf16, auto attention) vs each request alone."""
    from recbrew.bench.score import _requests
    from recbrew.models.loading import load_model
    from recbrew.scoring.hf import HFScorer

    model, _ = load_model("random-smollm2", layers=4)
    encoded = _requests(None, None, 600, 12, 6, 24, model.config.vocab_size)
    scorer = HFScorer(model, None, mode="multi", max_pass_tokens=4096)
    assert max(len(p) for p in scorer._packs(encoded)) > 1
    batched = scorer.score_encoded(encoded)
    for enc, got in zip(encoded, batched, strict=True):
        np.testing.assert_allclose(got, scorer.score_encoded([enc])[0], atol=2e-2)
