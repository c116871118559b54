"""Answer head: the LM head applied only where a ranking answer is read.

For hidden states [N, H] (any leading shape, flattened), answer positions [M] (row indices into the
flattened states), the LM head weight [V, H] and the verbalizer token ids [C]:

- ``logprobs`` [M, C]: log-softmax over the verbalizer tokens' logits (P(yes) vs P(no), or k choices);
- ``full_logprobs`` [M, C] (``full_vocab=True``): the same tokens' log-probabilities under the whole
  vocabulary, ``logit - logsumexp(all V logits)``, with the log-sum-exp computed in vocabulary chunks.

No [M x V] tensor is ever kept: the Triton forward fuses the gather, the two matmuls and an online
log-sum-exp (each program owns a block of positions and a slice of the vocabulary); the backward
recomputes one [M x vocab_chunk] block of logits at a time (matmuls), turns it into the softmax
gradient in place (a Triton kernel on GPU) and folds it into the gradients of the hidden states and
the weight. The torch path (CPU) follows the same chunking. The LM head is taken as bias-free.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from recbrew.kernels.dispatch import INTERPRETED, backend, interpreter_blocks, tl, triton, use_triton

DEFAULT_VOCAB_CHUNK = 8192
#: On CUDA the torch path widens its vocabulary chunk up to this many [M x chunk] logits (64 MiB in fp32):
#: fewer, larger cuBLAS calls, memory still bounded.
CUDA_CHUNK_ELEMENTS = 2**24


class AnswerHeadOutput(NamedTuple):
    logprobs: torch.Tensor
    """[M, C] float32 log-softmax over the verbalizer tokens."""
    full_logprobs: torch.Tensor | None
    """[M, C] float32 log-probabilities of the verbalizer tokens over the full vocabulary, if asked for."""


# Pure torch --------------------------------------------------------------------------------------
def answer_head_reference(hidden: torch.Tensor, positions: torch.Tensor, weight: torch.Tensor,
                          label_ids: torch.Tensor, full_vocab: bool = False) -> AnswerHeadOutput:
    """The same result through full [M, V] logits (for tests)."""
    h = hidden.reshape(-1, hidden.shape[-1])[positions]
    logits = (h @ weight.T).float()
    label = logits[:, label_ids]
    full = logits.log_softmax(-1)[:, label_ids] if full_vocab else None
    return AnswerHeadOutput(label.log_softmax(-1), full)


def _torch_forward(h, weight, label_ids, full_vocab: bool, chunk: int):
    label_logits = (h @ weight[label_ids].T).float()
    label_lse = label_logits.logsumexp(-1)
    lse = None
    if full_vocab:
        lse = torch.full_like(label_lse, float("-inf"))
        for v0 in range(0, weight.shape[0], chunk):
            lse = torch.logaddexp(lse, (h @ weight[v0:v0 + chunk].T).float().logsumexp(-1))
    return label_logits - label_lse[:, None], label_lse, lse


# Triton kernels ----------------------------------------------------------------------------------
if triton is not None:

    @triton.jit
    def _label_logprobs_kernel(HID, POS, W, LABELS, LOGPROBS, LABEL_LSE, M, C, HD, stride_h, stride_w,
                               BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
                               PRECISION: tl.constexpr):
        # Gather the answer rows, multiply by the verbalizer rows of the LM head, log-softmax over them.
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < M
        pos = tl.load(POS + rows, mask=row_ok, other=0).to(tl.int64)
        cols = tl.arange(0, BLOCK_C)
        col_ok = cols < C
        lab = tl.load(LABELS + cols, mask=col_ok, other=0).to(tl.int64)
        acc = tl.zeros([BLOCK_M, BLOCK_C], tl.float32)
        for k0 in range(0, HD, BLOCK_K):
            kk = k0 + tl.arange(0, BLOCK_K)
            k_ok = kk < HD
            h = tl.load(HID + pos[:, None] * stride_h + kk[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            w = tl.load(W + lab[:, None] * stride_w + kk[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0.0)
            acc += tl.dot(h, tl.trans(w), input_precision=PRECISION)
        acc = tl.where(col_ok[None, :], acc, float("-inf"))
        mx = tl.max(acc, 1)
        lse = mx + tl.log(tl.sum(tl.exp(acc - mx[:, None]), 1))
        tl.store(LOGPROBS + rows[:, None] * C + cols[None, :], acc - lse[:, None],
                 mask=row_ok[:, None] & col_ok[None, :])
        tl.store(LABEL_LSE + rows, lse, mask=row_ok)

    @triton.jit
    def _vocab_lse_kernel(HID, POS, W, PART_LSE, M, V, HD, stride_h, stride_w, VOCAB_PER_SPLIT, NUM_SPLITS,
                          BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
                          PRECISION: tl.constexpr):
        # One block of answer rows x one slice of the vocabulary: logits block by block (never stored),
        # folded into an online log-sum-exp; the slices are combined afterwards.
        split = tl.program_id(1)
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < M
        pos = tl.load(POS + rows, mask=row_ok, other=0).to(tl.int64)
        v_lo = split * VOCAB_PER_SPLIT
        v_hi = tl.minimum(v_lo + VOCAB_PER_SPLIT, V)
        m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        for v0 in range(v_lo, v_hi, BLOCK_V):
            cols = v0 + tl.arange(0, BLOCK_V).to(tl.int64)
            col_ok = cols < v_hi
            acc = tl.zeros([BLOCK_M, BLOCK_V], tl.float32)
            for k0 in range(0, HD, BLOCK_K):
                kk = k0 + tl.arange(0, BLOCK_K)
                k_ok = kk < HD
                h = tl.load(HID + pos[:, None] * stride_h + kk[None, :], mask=row_ok[:, None] & k_ok[None, :],
                            other=0.0)
                w = tl.load(W + cols[:, None] * stride_w + kk[None, :], mask=col_ok[:, None] & k_ok[None, :],
                            other=0.0)
                acc += tl.dot(h, tl.trans(w), input_precision=PRECISION)
            acc = tl.where(col_ok[None, :], acc, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(acc, 1))
            l_i = l_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(acc - m_new[:, None]), 1)
            m_i = m_new
        tl.store(PART_LSE + rows * NUM_SPLITS + split, m_i + tl.log(l_i), mask=row_ok)

    @triton.jit
    def _lse_grad_kernel(LOGITS, LSE, G, N, stride, BLOCK: tl.constexpr):
        # In place: logits[m, v] -> g[m] * softmax(logits)[m, v], the gradient of g * logsumexp.
        row = tl.program_id(0).to(tl.int64)
        lse = tl.load(LSE + row)
        g = tl.load(G + row)
        for v0 in range(0, N, BLOCK):
            cols = v0 + tl.arange(0, BLOCK)
            ok = cols < N
            x = tl.load(LOGITS + row * stride + cols, mask=ok, other=0.0).to(tl.float32)
            tl.store(LOGITS + row * stride + cols, g * tl.exp(x - lse), mask=ok)


def _triton_forward(hidden, positions, weight, label_ids, full_vocab: bool, chunk: int):
    m, hd = positions.shape[0], hidden.shape[1]
    c, v = label_ids.shape[0], weight.shape[0]
    block_m = interpreter_blocks(32, 16)
    block_k = interpreter_blocks(64, 32)
    precision = "ieee" if hidden.dtype == torch.float32 else "tf32"
    dev = hidden.device
    logprobs = torch.empty(m, c, dtype=torch.float32, device=dev)
    label_lse = torch.empty(m, dtype=torch.float32, device=dev)
    m_blocks = triton.cdiv(m, block_m)
    _label_logprobs_kernel[(m_blocks,)](
        hidden, positions, weight, label_ids, logprobs, label_lse, m, c, hd, hidden.stride(0), weight.stride(0),
        BLOCK_M=block_m, BLOCK_C=max(16, triton.next_power_of_2(c)), BLOCK_K=block_k, PRECISION=precision)
    if not full_vocab:
        return logprobs, label_lse, None
    # Each program takes ``chunk`` vocabulary rows (rounded up to whole blocks).
    block_v = max(16, min(interpreter_blocks(128, 32), triton.next_power_of_2(chunk)))
    per_split = triton.cdiv(chunk, block_v) * block_v
    splits = triton.cdiv(v, per_split)
    part = torch.empty(m, splits, dtype=torch.float32, device=dev)
    _vocab_lse_kernel[(m_blocks, splits)](
        hidden, positions, weight, part, m, v, hd, hidden.stride(0), weight.stride(0), per_split, splits,
        BLOCK_M=block_m, BLOCK_V=block_v, BLOCK_K=block_k, PRECISION=precision)
    return logprobs, label_lse, part.logsumexp(-1)


class AnswerHeadFunction(torch.autograd.Function):
    """Answer-head forward and chunked backward; ``triton`` picks the kernels or the torch path."""

    @staticmethod
    def forward(ctx, hidden, positions, weight, label_ids, full_vocab: bool, chunk: int, triton_path: bool):
        if triton_path:
            logprobs, label_lse, lse = _triton_forward(hidden, positions, weight, label_ids, full_vocab, chunk)
        else:
            logprobs, label_lse, lse = _torch_forward(hidden[positions], weight, label_ids, full_vocab, chunk)
        full = logprobs + (label_lse - lse)[:, None] if full_vocab else logprobs.new_empty(0)
        if not full_vocab:
            ctx.mark_non_differentiable(full)
        ctx.save_for_backward(hidden, positions, weight, label_ids, logprobs, lse if full_vocab else label_lse)
        ctx.full_vocab, ctx.chunk, ctx.triton_path = full_vocab, chunk, triton_path
        return logprobs, full

    @staticmethod
    def backward(ctx, g_logprobs, g_full):
        hidden, positions, weight, label_ids, logprobs, lse = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
        h = hidden[positions]
        # d/d(verbalizer logits) of the log-softmax, plus the full-vocabulary term's logit part.
        g_label = torch.zeros_like(logprobs) if g_logprobs is None else g_logprobs.float()
        g_label = g_label - logprobs.exp() * g_label.sum(-1, keepdim=True)
        full = ctx.full_vocab and g_full is not None
        if full:
            g_label = g_label + g_full.float()
        w_label = weight[label_ids]
        dh = g_label @ w_label.float()
        dw = torch.zeros_like(weight) if need_w else None
        if full:
            g_lse = -g_full.float().sum(-1).contiguous()
            for v0 in range(0, weight.shape[0], ctx.chunk):
                w = weight[v0:v0 + ctx.chunk]
                # The Triton forward took its log-sum-exp over fp32-accumulated logits: recompute them the same
                # way (not rounded to bf16), or exp(logit - lse) drifts off the forward's softmax.
                coef = (h.float() @ w.float().T) if ctx.triton_path else (h @ w.T).float()
                if ctx.triton_path:
                    _lse_grad_kernel[(coef.shape[0],)](coef, lse, g_lse, coef.shape[1], coef.stride(0),
                                                       BLOCK=interpreter_blocks(1024, 256))
                else:
                    coef = g_lse[:, None] * torch.exp(coef - lse[:, None])
                coef = coef.to(h.dtype)
                dh += (coef @ w).float()
                if need_w:
                    dw[v0:v0 + ctx.chunk] += (coef.T @ h).to(dw.dtype)
        if need_w:
            dw.index_add_(0, label_ids, (g_label.T @ h.float()).to(weight.dtype))
        dhidden = None
        if need_h:
            dhidden = torch.zeros_like(hidden).index_add_(0, positions, dh.to(hidden.dtype))
        return dhidden, None, dw, None, None, None, None


def answer_head(hidden: torch.Tensor, positions: torch.Tensor, weight: torch.Tensor, label_ids,
                *, full_vocab: bool = False, vocab_chunk: int | None = None) -> AnswerHeadOutput:
    """Verbalizer log-probabilities at ``positions`` (row indices into ``hidden`` flattened to [N, H]).

    ``weight`` is the LM head [V, H]; ``label_ids`` the verbalizer token ids. With ``full_vocab`` also the
    full-vocabulary log-probabilities of those tokens, the log-sum-exp taken ``vocab_chunk`` rows at a time.
    Triton on CUDA, the torch path elsewhere (see :mod:`recbrew.kernels.dispatch`).
    """
    if hidden.dtype != weight.dtype:
        raise TypeError(f"hidden states ({hidden.dtype}) and LM head weight ({weight.dtype}) must share a dtype")
    flat = hidden.reshape(-1, hidden.shape[-1])
    if flat.stride(-1) != 1:
        flat = flat.contiguous()
    if weight.stride(-1) != 1:
        weight = weight.contiguous()
    dev = hidden.device
    positions = torch.as_tensor(positions, dtype=torch.long, device=dev).reshape(-1)
    label_ids = torch.as_tensor(label_ids, dtype=torch.long, device=dev).reshape(-1)
    _check_range(positions, flat.shape[0], "answer positions")
    _check_range(label_ids, weight.shape[0], "verbalizer token ids")
    chunk = int(vocab_chunk or DEFAULT_VOCAB_CHUNK)
    triton_path = use_triton(flat, weight) and len(positions) > 0
    if triton_path and backend() == "auto" and not _fills_gpu(len(positions), weight.shape[0], chunk, full_vocab, dev):
        triton_path = False
    if not triton_path and dev.type == "cuda":
        chunk = max(chunk, CUDA_CHUNK_ELEMENTS // max(1, len(positions)))
    logprobs, full = AnswerHeadFunction.apply(flat, positions, weight, label_ids, full_vocab, chunk, triton_path)
    return AnswerHeadOutput(logprobs, full if full_vocab else None)


def _check_range(index: torch.Tensor, size: int, what: str) -> None:
    """Indices in [0, size): checked on the host for CPU tensors, asynchronously on CUDA (no sync per step)."""
    if not len(index):
        return
    if index.is_cuda:
        torch._assert_async(((index >= 0) & (index < size)).all(), f"{what} must lie in [0, {size})")
    elif not (0 <= int(index.min()) and int(index.max()) < size):
        raise IndexError(f"{what} must lie in [0, {size})")


def _fills_gpu(m: int, vocab: int, chunk: int, full_vocab: bool, device: torch.device) -> bool:
    """Whether the fused Triton forward launches enough programs to keep the GPU busy (two per SM).

    A training step reads a few answer rows: then the Triton grid is a handful of programs walking the
    vocabulary while most SMs idle, and the torch path's cuBLAS matmuls over wide chunks are faster.
    """
    if INTERPRETED or device.type != "cuda":
        return True
    programs = triton.cdiv(m, 32) * (triton.cdiv(vocab, chunk) if full_vocab else 1)
    return programs >= 2 * torch.cuda.get_device_properties(device).multi_processor_count
