"""Multi-item attention dispatch: which implementation runs where, and every implementation (Triton in the
interpreter, FlexAttention eager, dense-mask SDPA, the torch path) on packed documents against the reference."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from recbrew.kernels import multi_item_attention as mia
from recbrew.kernels.dispatch import (
    INTERPRETED,
    SDPA_MAX_TOKENS,
    attention_backend,
    choose_attention,
    kernel_backend,
)
from recbrew.kernels.multi_item_attention import (
    flex_available,
    flex_block_mask,
    layout_mask,
    layout_tables,
    multi_item_attention,
    multi_item_attention_reference,
    normalize_layouts,
)

# Three sequences of packed documents (requests), the last two ending in padding.
PREFIXES = [[11, 3], [0], [20, 0, 5]]
SEGMENTS = [[[3, 6], [2, 2]], [[9, 1, 4]], [[2], [4], [1, 1]]]
TOTAL = 40
CPU, CUDA = SimpleNamespace(is_cuda=False), SimpleNamespace(is_cuda=True)


def _inputs(seed=0, heads=4, kv_heads=2, dim=16):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(3, heads, TOTAL, dim, generator=gen), torch.randn(3, kv_heads, TOTAL, dim, generator=gen),
            torch.randn(3, kv_heads, TOTAL, dim, generator=gen))


def _reference(q, k, v):
    """Each document alone through the dense reference, zeros on padding."""
    out = torch.zeros_like(q)
    for b, (prefixes, segments) in enumerate(zip(PREFIXES, SEGMENTS, strict=True)):
        off = 0
        for p, segs in zip(prefixes, segments, strict=True):
            n = p + sum(segs)
            w = slice(off, off + n)
            out[b:b + 1, :, w] = multi_item_attention_reference(q[b:b + 1, :, w], k[b:b + 1, :, w], v[b:b + 1, :, w],
                                                                p, segs)
            off += n
    return out


def test_auto_dispatch_follows_the_table(monkeypatch):
    monkeypatch.delenv("RECBREW_ATTENTION", raising=False)
    monkeypatch.delenv("RECBREW_KERNELS", raising=False)
    assert choose_attention(CPU, tokens=10_000, flex_ok=True) == "torch"
    assert choose_attention(CUDA, tokens=SDPA_MAX_TOKENS, flex_ok=True) == "sdpa"
    assert choose_attention(CUDA, tokens=SDPA_MAX_TOKENS + 1, flex_ok=True) == "flex"
    # Without FlexAttention: Triton where it compiles (not under the CPU interpreter).
    assert choose_attention(CUDA, tokens=9000, flex_ok=False) == ("torch" if INTERPRETED else "triton")
    with kernel_backend("torch"):
        assert choose_attention(CUDA, tokens=9000, flex_ok=True) == "torch"


def test_overrides_and_their_errors(monkeypatch):
    monkeypatch.setenv("RECBREW_ATTENTION", "sdpa")
    assert choose_attention(CPU, tokens=10, flex_ok=False) == "sdpa"
    with attention_backend("torch"):  # the context manager wins over the environment
        assert choose_attention(CUDA, tokens=10_000, flex_ok=True) == "torch"
    with attention_backend("flex"), pytest.raises(RuntimeError, match="FlexAttention is not available"):
        choose_attention(CPU, tokens=10, flex_ok=False)
    monkeypatch.setenv("RECBREW_ATTENTION", "fastest")
    with pytest.raises(ValueError, match="RECBREW_ATTENTION"):
        choose_attention(CPU, tokens=10, flex_ok=True)
    with pytest.raises(ValueError, match="unknown attention backend"):
        with attention_backend("cuda"):
            pass
    monkeypatch.setenv("RECBREW_ATTENTION", "auto")
    if INTERPRETED:
        with kernel_backend("triton"):  # tests force the interpreted kernels through the old switch
            assert choose_attention(CPU, tokens=10, flex_ok=True) == "triton"


def test_auto_runs_the_torch_path_on_cpu(monkeypatch):
    monkeypatch.delenv("RECBREW_ATTENTION", raising=False)
    for name in ("_flex_path", "_sdpa_path"):
        monkeypatch.setattr(mia, name, lambda *a, name=name: pytest.fail(f"{name} ran on CPU under auto"))
    monkeypatch.setattr(mia.MultiItemAttentionFunction, "apply", lambda *a: pytest.fail("Triton ran"))
    q, k, v = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(multi_item_attention(q, k, v, PREFIXES, SEGMENTS), _reference(q, k, v),
                                   atol=3e-5, rtol=3e-5)


@pytest.mark.parametrize("backend", ["torch", "sdpa", "flex", "triton"])
def test_packed_documents_equal_each_document_alone(backend):
    """Several requests packed per sequence, with padding: forward on every backend, gradients where they exist."""
    if backend == "flex" and not flex_available(torch.device("cpu")):
        pytest.skip("no FlexAttention in this torch")
    if backend == "triton" and not INTERPRETED:
        pytest.skip("needs TRITON_INTERPRET=1")
    q, k, v = (t.requires_grad_() for t in _inputs())
    with torch.no_grad():
        expected = _reference(q, k, v)
    with attention_backend(backend), torch.no_grad():
        got = multi_item_attention(q.detach(), k.detach(), v.detach(), PREFIXES, SEGMENTS)
    torch.testing.assert_close(got, expected, atol=3e-5, rtol=3e-5)
    if backend == "flex":  # FlexAttention has no backward on CPU
        return
    grad = torch.randn(q.shape, generator=torch.Generator().manual_seed(1))
    with attention_backend(backend):
        got = torch.autograd.grad(multi_item_attention(q, k, v, PREFIXES, SEGMENTS), (q, k, v), grad)
    want = torch.autograd.grad(_reference(q, k, v), (q, k, v), grad)
    for name, a, b in zip(("dq", "dk", "dv"), got, want, strict=True):
        torch.testing.assert_close(a, b, atol=3e-5, rtol=3e-5, msg=name)


def test_flex_block_mask_marks_exactly_the_visible_blocks(monkeypatch):
    """Built a chunk of rows at a time at 8-token blocks: partial and full blocks match the dense mask."""
    if not flex_available(torch.device("cpu")):
        pytest.skip("no FlexAttention in this torch")
    monkeypatch.setattr(mia, "FLEX_BLOCK", 8)
    flex_block_mask.cache_clear()
    layouts = normalize_layouts(PREFIXES, SEGMENTS, 3, TOTAL)
    block_mask = flex_block_mask(layouts, TOTAL, torch.device("cpu"))
    flex_block_mask.cache_clear()
    tables = layout_tables(layouts, TOTAL, 8, 8, torch.device("cpu"))
    pad = tables.doc < 0
    # Padding rows see the padding up to themselves (finite outputs, zeroed afterwards).
    dense = (layout_mask(tables) & ~pad[:, :, None]) | (pad[:, :, None] & pad[:, None, :]
                                                         & torch.ones(TOTAL, TOTAL, dtype=torch.bool).tril())
    blocks = dense.view(3, 5, 8, 5, 8)
    any_visible, all_visible = blocks.any(4).any(2), blocks.all(4).all(2)
    assert torch.equal(block_mask.to_dense()[:, 0].bool(), any_visible)
    full = torch.zeros_like(all_visible)
    for b in range(3):
        for qb in range(5):
            n = int(block_mask.full_kv_num_blocks[b, 0, qb])
            full[b, qb, block_mask.full_kv_indices[b, 0, qb, :n].long()] = True
    assert torch.equal(full, all_visible)
