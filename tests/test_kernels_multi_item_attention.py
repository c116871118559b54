"""Multi-item attention: the Triton kernels (interpreter on CPU, compiled on GPU) against the torch path.

Forward output and the gradients of q, k and v are compared over layouts with odd sizes, no prefix,
one segment, many one-token segments packed in a tile, grouped-query heads and per-sequence layouts.
"""

from __future__ import annotations

import pytest
import torch

from recbrew.kernels import multi_item_attention as mia
from recbrew.kernels.dispatch import INTERPRETED, kernel_backend, use_triton
from recbrew.kernels.multi_item_attention import (
    dense_mask,
    layout_mask,
    layout_tables,
    multi_item_attention,
    multi_item_attention_reference,
    multi_item_attention_torch,
    normalize_layouts,
)

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
needs_triton = pytest.mark.skipif(not (CUDA or INTERPRETED), reason="needs CUDA or TRITON_INTERPRET=1")
TOLERANCE = {torch.float32: dict(atol=3e-5, rtol=3e-5), torch.bfloat16: dict(atol=3e-2, rtol=3e-2)}


def _inputs(batch, heads, kv_heads, total, dim, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def make(h):
        return torch.randn(batch, h, total, dim, generator=gen).to(DEVICE, dtype).requires_grad_()

    return make(heads), make(kv_heads), make(kv_heads)


def _forward_and_grads(fn, q, k, v, seed=1):
    out = fn(q, k, v)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.device, out.dtype)
    return (out, *torch.autograd.grad(out, (q, k, v), grad))


@needs_triton
@pytest.mark.parametrize("batch, prefix, segments, heads, kv_heads, dim, block_m, block_n", [
    (2, 37, [5, 11, 1], 4, 2, 64, 16, 16),   # the odd shape of the spec, GQA 4:2
    (1, 37, [5, 11, 1], 4, 2, 64, 32, 16),   # query and key tiles of different sizes
    (1, 0, [3, 7], 2, 2, 32, 16, 16),        # no prefix
    (1, 29, [40], 2, 1, 64, 16, 32),         # one segment longer than a tile, one key/value head
    (1, 5, [1] * 9 + [20], 2, 2, 24, 16, 16),  # one-token segments packed in a tile, head dim 24
])
def test_triton_matches_torch_path(batch, prefix, segments, heads, kv_heads, dim, block_m, block_n):
    total = prefix + sum(segments)
    q, k, v = _inputs(batch, heads, kv_heads, total, dim)
    expected = _forward_and_grads(lambda *x: multi_item_attention_torch(*x, prefix, segments), q, k, v)
    with kernel_backend("triton"):
        got = _forward_and_grads(
            lambda *x: multi_item_attention(*x, prefix, segments, block_m=block_m, block_n=block_n), q, k, v)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, expected, strict=True):
        torch.testing.assert_close(a, b, **TOLERANCE[torch.float32], msg=name)
    with torch.no_grad():
        torch.testing.assert_close(got[0], multi_item_attention_reference(q, k, v, prefix, segments),
                                   **TOLERANCE[torch.float32])


@needs_triton
def test_per_sequence_layouts_with_padding():
    prefixes, segments = [11, 0, 20], [[3, 6], [9, 1, 4], [2]]
    total = 24  # every row ends early (at 20, 14 and 22): the rest is padding
    q, k, v = _inputs(3, 2, 1, total, 32)
    with kernel_backend("torch"):
        expected = _forward_and_grads(lambda *x: multi_item_attention(*x, prefixes, segments), q, k, v)
    with kernel_backend("triton"):
        got = _forward_and_grads(lambda *x: multi_item_attention(*x, prefixes, segments), q, k, v)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, **TOLERANCE[torch.float32])
    # Padding gives zero output and receives no gradient; each row equals its own unpadded call.
    out, dq, dk, dv = got
    for b, end in enumerate((20, 14, 22)):
        for t in (out, dq, dk, dv):
            assert t[b, :, end:].abs().max() == 0
        with torch.no_grad():
            alone = multi_item_attention_reference(q[b:b + 1, :, :end], k[b:b + 1, :, :end], v[b:b + 1, :, :end],
                                                   prefixes[b], segments[b])
        torch.testing.assert_close(out[b:b + 1, :, :end], alone, **TOLERANCE[torch.float32])


@pytest.mark.parametrize("prefix, segments, block_m, block_n", [
    (37, [5, 11, 1], 16, 16), (0, [3, 7, 30], 16, 32), (64, [16] * 8, 16, 16), (5, [1] * 40, 32, 16),
    ([9, 0, 20], [[4, 6], [3], [1, 17]], 16, 16),  # three packed documents
])
def test_tiles_visit_exactly_the_visible_blocks(prefix, segments, block_m, block_n):
    """Every key block a query tile visits holds a visible pair, and together they cover the mask."""
    packed = not isinstance(prefix, int)
    total = sum(prefix) + sum(map(sum, segments)) if packed else prefix + sum(segments)
    layouts = normalize_layouts([prefix] if packed else prefix, [segments] if packed else segments, 1, total)
    tables = layout_tables(layouts, total, block_m, block_n, torch.device("cpu"))
    mask = layout_mask(tables)[0]
    if not packed:
        assert torch.equal(mask, dense_mask(prefix, segments))
    covered = torch.zeros_like(mask)
    for q0, q1, pre_start, pre_end, kv_start in tables.q_tiles[0].tolist():
        assert tables.doc[0, q0] == tables.doc[0, q1 - 1], "a query tile spans two documents"
        blocks = [(s, min(s + block_n, pre_end)) for s in range(pre_start, pre_end, block_n)]
        blocks += [(s, min(s + block_n, q1)) for s in range(kv_start, q1, block_n)]
        for k0, k1 in blocks:
            tile = mask[q0:q1, k0:k1]
            assert tile.any(), f"query rows {q0}:{q1} visit a fully masked key block {k0}:{k1}"
            covered[q0:q1, k0:k1] |= tile
    assert torch.equal(covered, mask)
    covered.zero_()
    for k0, k1, q_end in tables.k_tiles[0].tolist():
        for s in range(k0, q_end, block_m):
            tile = mask[s:min(s + block_m, q_end), k0:k1]
            assert tile.any(), f"key rows {k0}:{k1} visit a fully masked query block at {s}"
            covered[s:min(s + block_m, q_end), k0:k1] |= tile
    assert torch.equal(covered, mask)
    if not packed:
        seg = tables.seg[0]
        assert seg[:prefix].eq(-1).all() and seg[prefix:].ge(0).all()


def test_visited_work_at_many_candidates():
    """Prefix 512 + 100 candidates of 32 at 64-token tiles: 36 causal prefix blocks, 9 per candidate tile."""
    prefix, segments, block = 512, [32] * 100, 64
    tables = layout_tables(normalize_layouts(prefix, segments, 1, 3712), 3712, block, block, torch.device("cpu"))
    visited = sum(-(-(pre - p0) // block) + -(-(q1 - kv) // block)
                  for _, q1, p0, pre, kv in tables.q_tiles[0].tolist())
    assert visited == sum(range(1, 9)) + 50 * 9  # a causal dense-mask kernel visits 58 * 59 / 2 = 1711


def test_cpu_runs_the_torch_path_unless_triton_is_forced(monkeypatch):
    q, k, v = (t.detach().cpu() for t in _inputs(1, 2, 2, 12, 16))

    def fail(*args):
        raise AssertionError("the Triton path ran")

    monkeypatch.setattr(mia.MultiItemAttentionFunction, "apply", fail)
    assert not use_triton(q)
    torch.testing.assert_close(multi_item_attention(q, k, v, 4, [5, 3]), multi_item_attention_torch(q, k, v, 4, [5, 3]))
    monkeypatch.setenv("RECBREW_KERNELS", "torch")
    assert not use_triton(q)
    monkeypatch.setenv("RECBREW_KERNELS", "fast")
    with pytest.raises(ValueError, match="RECBREW_KERNELS"):
        use_triton(q)
    with pytest.raises(ValueError, match="unknown kernel backend"):
        with kernel_backend("cuda"):
            pass


def test_layout_errors():
    q, k, v = (t.detach() for t in _inputs(2, 4, 3, 10, 16))
    with pytest.raises(ValueError, match="multiple"):
        multi_item_attention(q, k, v, 4, [6])
    k, v = k[:, :2], v[:, :2]
    with pytest.raises(ValueError, match="> sequence length"):
        multi_item_attention(q, k, v, 4, [4, 3])
    with pytest.raises(ValueError, match="per-sequence layouts"):
        multi_item_attention(q, k, v, [4], [[6]])


@pytest.mark.gpu
@pytest.mark.parametrize("prefix, segments, heads, kv_heads, dim", [
    (37, [5, 11, 1], 4, 2, 64), (1000, [32] * 50, 8, 2, 128), (0, [300, 7], 4, 4, 64),
])
def test_bf16_compiled_kernels_match_fp32_torch(prefix, segments, heads, kv_heads, dim):
    """bf16 Triton is as close to the fp32 result as the bf16 torch path is (up to 2x, plus a floor)."""
    total = prefix + sum(segments)
    q, k, v = _inputs(2, heads, kv_heads, total, dim, torch.bfloat16)
    with kernel_backend("triton"):
        got = _forward_and_grads(lambda *x: multi_item_attention(*x, prefix, segments), q, k, v)
    with kernel_backend("torch"):
        torch_bf16 = _forward_and_grads(lambda *x: multi_item_attention(*x, prefix, segments), q, k, v)
        q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
        exact = _forward_and_grads(lambda *x: multi_item_attention(*x, prefix, segments), q32, k32, v32)
    for name, a, b, ref in zip(("out", "dq", "dk", "dv"), got, torch_bf16, exact, strict=True):
        err, base = (a.float() - ref).abs().max().item(), (b.float() - ref).abs().max().item()
        assert err <= 2 * base + 1e-3, f"{name}: triton bf16 error {err} vs torch bf16 error {base}"


@pytest.mark.parametrize("batch, prefix, segments, heads, kv_heads, dim, scale", [
    (2, 37, [5, 11, 1], 9, 3, 64, None),   # SmolLM2's 3:1 grouping, uneven segments
    (1, 0, [3, 7], 2, 2, 32, None),        # no prefix: the own-segment part alone
    (1, 29, [], 4, 1, 16, None),           # no candidates: the causal prefix alone
    (3, 5, [1] * 9 + [20], 2, 1, 24, 0.3),  # one-token segments padded to 20, explicit scale
])
def test_merged_scoring_path_equals_dense_reference(monkeypatch, batch, prefix, segments, heads, kv_heads, dim,
                                                    scale):
    """Without gradients on CPU the prefix and own-segment parts merge by log-sum-exp: exact, in HF's layout."""
    calls = []
    merged = mia._merged_attention
    monkeypatch.setattr(mia, "_merged_attention", lambda *a: calls.append(a[3:5]) or merged(*a))
    total = prefix + sum(segments)
    gen = torch.Generator().manual_seed(3)
    # Queries as Hugging Face hands them over: [B, L, H, D] memory seen as [B, H, L, D].
    q = torch.randn(batch, total, heads, dim, generator=gen).transpose(1, 2)
    k, v = (torch.randn(batch, kv_heads, total, dim, generator=gen) for _ in range(2))
    with torch.no_grad():
        got = multi_item_attention_torch(q, k, v, prefix, segments, scale)
        chunked = multi_item_attention_torch(q, k, v, prefix, segments, scale, segments_per_chunk=2)
        expected = multi_item_attention_reference(q, k, v, prefix, segments, scaling=scale)
    assert calls == [(prefix, tuple(segments))]
    torch.testing.assert_close(got, expected, **TOLERANCE[torch.float32])
    torch.testing.assert_close(got, chunked, **TOLERANCE[torch.float32])
    assert got.transpose(1, 2).is_contiguous()  # the caller's transpose back to [B, L, H, D] copies nothing


def test_gradients_take_the_chunked_path_and_match_the_reference(monkeypatch):
    """With inputs that need gradients the differentiable path runs; its grads equal the dense reference."""
    monkeypatch.setattr(mia, "_merged_attention", lambda *a: pytest.fail("the no-grad path ran under autograd"))
    prefix, segments = 13, [4, 9, 1]
    q, k, v = (t.cpu() for t in _inputs(2, 6, 2, prefix + sum(segments), 16))
    got = _forward_and_grads(lambda *x: multi_item_attention_torch(*x, prefix, segments), q, k, v)
    expected = _forward_and_grads(lambda *x: multi_item_attention_reference(*x, prefix, segments), q, k, v)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, expected, strict=True):
        torch.testing.assert_close(a, b, **TOLERANCE[torch.float32], msg=name)
    monkeypatch.undo()
    with torch.no_grad():
        torch.testing.assert_close(multi_item_attention_torch(q, k, v, prefix, segments), got[0],
                                   **TOLERANCE[torch.float32])


def test_per_sequence_layouts_on_the_scoring_path():
    """Batched per-sequence layouts without gradients: each row equals its own reference, padding is zero."""
    prefixes, segments, ends = [11, 0, 20], [[3, 6], [9, 1, 4], [2]], (20, 14, 22)
    q, k, v = (t.detach().cpu() for t in _inputs(3, 4, 2, 24, 32))
    with torch.no_grad(), kernel_backend("torch"):
        out = multi_item_attention(q, k, v, prefixes, segments)
    for b, end in enumerate(ends):
        assert out[b, :, end:].abs().max() == 0
        alone = multi_item_attention_reference(q[b:b + 1, :, :end], k[b:b + 1, :, :end], v[b:b + 1, :, :end],
                                               prefixes[b], segments[b])
        torch.testing.assert_close(out[b:b + 1, :, :end], alone, **TOLERANCE[torch.float32])
