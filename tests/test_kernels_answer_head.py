"""Answer head: verbalizer log-softmax and chunked full-vocabulary log-probabilities against full logits.

Both backends (the torch path and the Triton kernels, interpreted on CPU) are compared with the
reference that builds the whole [positions x vocab] logits, forward and the gradients of the hidden
states and the LM head weight, at odd vocabulary and hidden sizes and chunks smaller than a block.
"""

from __future__ import annotations

import pytest
import torch

from recbrew.kernels.answer_head import answer_head, answer_head_reference
from recbrew.kernels.dispatch import INTERPRETED, kernel_backend

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
BACKENDS = ["torch", pytest.param("triton", marks=pytest.mark.skipif(not (CUDA or INTERPRETED),
                                                                      reason="needs CUDA or TRITON_INTERPRET=1"))]
TOLERANCE = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.bfloat16: dict(atol=5e-2, rtol=5e-2)}


def _inputs(shape, vocab, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*shape, generator=gen).to(DEVICE, dtype).requires_grad_()
    weight = (0.3 * torch.randn(vocab, shape[-1], generator=gen)).to(DEVICE, dtype).requires_grad_()
    return hidden, weight


def _loss(out, seed=1):
    gen = torch.Generator().manual_seed(seed)
    loss = (out.logprobs * torch.randn(out.logprobs.shape, generator=gen).to(out.logprobs.device)).sum()
    if out.full_logprobs is not None:
        loss = loss + (out.full_logprobs * torch.randn(out.full_logprobs.shape, generator=gen).to(DEVICE)).sum()
    return loss


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape, vocab, positions, labels, chunk, full", [
    ((23, 48), 997, [3, 7, 22, 0, 11, 12, 5], [5, 900, 17], 200, True),   # odd vocab, 5 chunks
    ((2, 9, 33), 131, [0, 8, 9, 17, 4], [130, 0], 16, True),              # [B, L, H] states, chunk < block
    ((40, 64), 1000, list(range(0, 40, 3)), [9805 % 1000, 787], 4096, True),  # one chunk
    ((19, 40), 301, [18, 2, 2], [1, 2, 3, 4, 5], 64, False),             # repeated position, k choices
])
def test_answer_head_matches_full_logits(backend, shape, vocab, positions, labels, chunk, full):
    hidden, weight = _inputs(shape, vocab)
    ref = answer_head_reference(hidden, torch.tensor(positions, device=DEVICE), weight,
                                torch.tensor(labels, device=DEVICE), full_vocab=full)
    ref_grads = torch.autograd.grad(_loss(ref), (hidden, weight))
    with kernel_backend(backend):
        out = answer_head(hidden, positions, weight, labels, full_vocab=full, vocab_chunk=chunk)
        grads = torch.autograd.grad(_loss(out), (hidden, weight))
    torch.testing.assert_close(out.logprobs, ref.logprobs, **TOLERANCE[torch.float32])
    if full:
        torch.testing.assert_close(out.full_logprobs, ref.full_logprobs, **TOLERANCE[torch.float32])
    else:
        assert out.full_logprobs is None
    for name, a, b in zip(("hidden", "weight"), grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, **TOLERANCE[torch.float32], msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_frozen_head_and_saved_tensors(backend):
    """A frozen LM head gets no gradient, and the graph keeps no [positions x vocab] tensor."""
    hidden, weight = _inputs((30, 32), 509)
    weight.requires_grad_(False)
    positions = torch.arange(1, 30, 2)
    with kernel_backend(backend):
        out = answer_head(hidden, positions, weight, [3, 4], full_vocab=True, vocab_chunk=100)
        saved = out.logprobs.grad_fn.saved_tensors
        assert not any(t.dim() == 2 and t.shape[1] == 509 for t in saved)
        (grad,) = torch.autograd.grad(_loss(out), (hidden,))
    ref = answer_head_reference(hidden, positions, weight, torch.tensor([3, 4]), full_vocab=True)
    torch.testing.assert_close(grad, torch.autograd.grad(_loss(ref), (hidden,))[0], **TOLERANCE[torch.float32])
    assert grad[0].abs().max() == 0 and grad[1].abs().max() > 0  # only answer rows get a gradient


def test_probabilities_are_normalized_and_errors_are_clear():
    hidden, weight = _inputs((6, 16), 50)
    out = answer_head(hidden, [0, 5], weight, list(range(50)), full_vocab=True, vocab_chunk=7)
    # With every token a label, the verbalizer and full-vocabulary distributions coincide and sum to 1.
    torch.testing.assert_close(out.logprobs, out.full_logprobs, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.logprobs.exp().sum(-1), torch.ones(2), atol=1e-6, rtol=0)
    with pytest.raises(IndexError, match="answer positions"):
        answer_head(hidden, [6], weight, [1, 2])
    with pytest.raises(IndexError, match="verbalizer token ids"):
        answer_head(hidden, [1], weight, [1, 50])


@pytest.mark.gpu
def test_bf16_compiled_kernels_match_fp32():
    """bf16 Triton is as close to fp32 full logits as the bf16 torch path is (up to 2x, plus a floor)."""
    hidden, weight = _inputs((4, 512, 576), 49152, torch.bfloat16)
    positions, labels = torch.arange(31, 2048, 32, device=DEVICE), [9805, 787]

    def run(h, w, backend):
        with kernel_backend(backend):
            out = answer_head(h, positions, w, labels, full_vocab=True)
            return (out.logprobs, out.full_logprobs, *torch.autograd.grad(_loss(out), (h, w)))

    got, torch_bf16 = run(hidden, weight, "triton"), run(hidden, weight, "torch")
    h32, w32 = (t.detach().float().requires_grad_() for t in (hidden, weight))
    ref = answer_head_reference(h32, positions, w32, torch.tensor(labels, device=DEVICE), True)
    exact = (ref.logprobs, ref.full_logprobs, *torch.autograd.grad(_loss(ref), (h32, w32)))
    for name, a, b, r in zip(("logprobs", "full_logprobs", "d_hidden", "d_weight"), got, torch_bf16, exact,
                             strict=True):
        err, base = (a.float() - r).abs().max().item(), (b.float() - r).abs().max().item()
        assert err <= 2 * base + 1e-3, f"{name}: triton bf16 error {err} vs torch bf16 error {base}"
