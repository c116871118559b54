"""Multi-item attention: a shared causal prefix followed by K candidate segments.

Each segment token attends to the whole prefix and to the earlier tokens of its own segment;
segments never see each other. Described by ``(prefix_len, segment_lens)`` instead of a dense
mask, so the work is O(P² + Σ S·(P+S)) instead of O(L²) for L = P + Σ S, and no L x L mask exists.

The file holds, in the Liger shape:

- :func:`multi_item_attention_torch`: the pure-torch implementation (the CPU path), and
  :func:`multi_item_attention_reference`, the same result from a dense mask (tests only);
- the Triton kernels: a flash-style forward (query tiles, online softmax, log-sum-exp kept per row)
  and a backward that recomputes the probabilities (one kernel for dQ over query tiles, one for
  dK/dV over key tiles that also sums the query heads of a grouped-query group). Every tile only
  visits the key (or query) blocks its layout can see, so fully masked tiles are never computed;
- :class:`MultiItemAttentionFunction` (Triton forward/backward) and :func:`multi_item_attention`,
  which dispatches on device (see :mod:`recbrew.kernels.dispatch`).

The Hugging Face wiring (the attention function a model calls) is :mod:`recbrew.kernels.hf_attention`.

Layouts. ``prefix_len`` is an int and ``segment_lens`` a list of ints shared by the whole batch, or
``prefix_len`` is a list with one int per sequence and ``segment_lens`` a list of lists. A layout may
cover fewer tokens than the sequence length; the rest is padding, whose outputs are zero and which
no valid token attends to.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral

import numpy as np
import torch
import torch.nn.functional as F

from recbrew.kernels.dispatch import attention_choice, choose_attention, interpreter_blocks, tl, triton

# Segment ids of the layout table: the prefix and padding; candidate segments are 0, 1, 2, ...
PREFIX, PADDING = -1, -2
_LOG2E = 1.4426950408889634


def expand_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Key/value heads repeated for their query heads (head i serves queries i*groups ... i*groups+groups-1)."""
    if groups == 1:
        return x
    b, h, n, d = x.shape
    return x[:, :, None].expand(b, h, groups, n, d).reshape(b, h * groups, n, d)


# Pure torch --------------------------------------------------------------------------------------
# SDPA's CPU flash kernel, called directly because it also returns the log-sum-exp of every row, which is
# what lets two partial attentions (over the prefix, over the own segment) merge exactly. Internal to
# torch: without it, or off CPU, the chunked path below gives the same result.
_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def multi_item_attention_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prefix_len: int,
                               segment_lens: Sequence[int], scaling: float | None = None,
                               segments_per_chunk: int | None = None, tokens_per_chunk: int | None = None
                               ) -> torch.Tensor:
    """Attention output [B, H, L, D] for q [B, H, L, D] and k, v [B, Hkv, L, D] (grouped-query allowed).

    Without gradients on CPU (scoring): the prefix is one causal flash call, all candidate rows meet the
    prefix keys in a second, every segment meets its own keys in a third (segments padded to a batch), and
    the two candidate parts merge by their log-sum-exp; no mask and no copy of the prefix exists.
    Otherwise, or when ``segments_per_chunk``/``tokens_per_chunk`` are given, candidate rows go in chunks
    of whole consecutive segments (at most ``segments_per_chunk`` segments and about ``tokens_per_chunk``
    tokens); a chunk attends to the prefix keys plus its own keys under a [chunk x (prefix + chunk)] mask.
    """
    b, h, total, d = q.shape
    groups = h // k.shape[1]
    scale = scaling if scaling is not None else d ** -0.5
    dev, p = q.device, prefix_len
    lens = [int(n) for n in segment_lens if n]
    if p + sum(lens) != total:
        raise ValueError(f"prefix {p} + segments {sum(lens)} != sequence length {total}")
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if (_FLASH_CPU is not None and dev.type == "cpu" and not needs_grad
            and segments_per_chunk is None and tokens_per_chunk is None):
        return _merged_attention(q, k, v, p, tuple(lens), scale)

    def attend(qs, ks, vs, **kw):
        if groups > 1:  # the GQA flag of SDPA is missing from older torch builds; expanding is equivalent
            ks, vs = expand_kv(ks, groups), expand_kv(vs, groups)
        return F.scaled_dot_product_attention(qs, ks, vs, scale=scale, **kw)

    parts = [attend(q[:, :, :p], k[:, :, :p], v[:, :, :p], is_causal=True)] if p else []
    # Chunks that keep the masked-out share (chunk x chunk) small next to the prefix share (chunk x prefix).
    budget = tokens_per_chunk or max(256, min(2048, p // 2))
    seg_ids = torch.repeat_interleave(torch.arange(len(lens), device=dev), torch.tensor(lens, dtype=torch.long, device=dev))
    start, first = p, 0
    while first < len(lens):
        last, width = first + 1, lens[first]
        while (last < len(lens) and width + lens[last] <= budget
               and (segments_per_chunk is None or last - first < segments_per_chunk)):
            width += lens[last]
            last += 1
        end = start + width
        ids = seg_ids[start - p:end - p]
        rows = torch.arange(width, device=dev)
        own = (ids[None, :] == ids[:, None]) & (rows[None, :] <= rows[:, None])
        mask = torch.cat([torch.ones(width, p, dtype=torch.bool, device=dev), own], dim=1)
        keys = slice(0, end) if start == p else None
        ks = k[:, :, keys] if keys else torch.cat([k[:, :, :p], k[:, :, start:end]], 2)
        vs = v[:, :, keys] if keys else torch.cat([v[:, :, :p], v[:, :, start:end]], 2)
        parts.append(attend(q[:, :, start:end], ks, vs, attn_mask=mask))
        start, first = end, last
    return torch.cat(parts, dim=2)


@functools.lru_cache(maxsize=8)
def _segment_index(lens: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For segments padded to [K, S]: each candidate row's (segment, offset), and each padded slot's row."""
    counts = torch.tensor(lens)
    starts = torch.cumsum(counts, 0) - counts
    seg = torch.repeat_interleave(torch.arange(len(lens)), counts)
    offset = torch.arange(int(counts.sum())) - starts[seg]
    # Slots past a segment's end repeat its last row: finite values that only later slots of the same
    # padded segment can see (causal), and those slots are never read back.
    slot = starts[:, None] + torch.minimum(torch.arange(max(lens))[None, :], counts[:, None] - 1)
    return seg, offset, slot


def _merged_attention(q, k, v, p: int, lens: tuple[int, ...], scale: float) -> torch.Tensor:
    b, h, total, d = q.shape
    # Written as [B, L, H, D] so the Hugging Face caller's transpose back is free.
    out = torch.empty(b, total, h, d, dtype=q.dtype, device=q.device).transpose(1, 2)
    if p:
        out[:, :, :p] = _FLASH_CPU(q[:, :, :p], k[:, :, :p], v[:, :, :p], is_causal=True, scale=scale)[0]
    if not lens:
        return out
    seg, offset, slot = _segment_index(lens)
    n_seg, width = slot.shape

    def padded(x):  # [B, Hx, p + C, D] -> [B * K, Hx, S, D], a strided view of one gather
        rows = x.transpose(1, 2)[:, p + slot.flatten()]
        return rows.view(b * n_seg, width, x.shape[1], d).transpose(1, 2)

    own, own_lse = _FLASH_CPU(padded(q), padded(k), padded(v), is_causal=True, scale=scale)
    own = own.view(b, n_seg, h, width, d)[:, seg, :, offset].permute(1, 2, 0, 3)
    own_lse = own_lse.view(b, n_seg, h, width)[:, seg, :, offset].permute(1, 2, 0)
    if not p:
        out[:, :, p:] = own
        return out
    pre, pre_lse = _FLASH_CPU(q[:, :, p:], k[:, :, :p], v[:, :, :p], scale=scale)
    # softmax over both key sets = the two partial outputs weighted by their shares of the total mass.
    weight = torch.sigmoid(pre_lse - own_lse).unsqueeze(-1).to(q.dtype)
    torch.lerp(own, pre, weight, out=out[:, :, p:])
    return out


def multi_item_attention_reference(q, k, v, prefix_len: int, segment_lens: Sequence[int], scaling=None):
    """The same result from a dense [L, L] mask (slow; for tests)."""
    total = q.shape[2]
    seg = torch.full((total,), -1)
    pos = prefix_len
    for j, n in enumerate(segment_lens):
        seg[pos:pos + n] = j
        pos += n
    idx = torch.arange(total)
    allowed = (idx[None] <= idx[:, None]) & ((seg[None] == -1) | (seg[None] == seg[:, None]))
    groups = q.shape[1] // k.shape[1]
    return F.scaled_dot_product_attention(q, expand_kv(k, groups), expand_kv(v, groups),
                                          attn_mask=allowed.to(q.device), scale=scaling)


def dense_mask(prefix_len: int, segment_lens: Sequence[int], device=None) -> torch.Tensor:
    """The [L, L] boolean mask (True = may attend) equivalent to a layout; for baselines and tests."""
    total = prefix_len + sum(segment_lens)
    seg = torch.full((total,), PREFIX, device=device)
    seg[prefix_len:] = torch.repeat_interleave(torch.arange(len(segment_lens), device=device),
                                               torch.tensor(list(segment_lens), device=device))
    idx = torch.arange(total, device=device)
    return (idx[None] <= idx[:, None]) & ((seg[None] == PREFIX) | (seg[None] == seg[:, None]))


# Layouts -----------------------------------------------------------------------------------------
#: One document: a prefix length and its candidate segments' lengths.
Document = tuple[int, tuple[int, ...]]
#: One sequence: its documents, laid out one after the other (several requests packed into one pass).
Layout = tuple[Document, ...]


def _document(p, segs) -> Document:
    segs = tuple(int(n) for n in segs)
    if p < 0 or any(n < 0 for n in segs):
        raise ValueError(f"negative length in layout prefix={p} segments={list(segs)}")
    return int(p), tuple(n for n in segs if n)


def _sequence(prefix_len, segment_lens) -> Layout:
    """One sequence's documents: an int prefix with a list of segments, or a list of each (packed)."""
    if isinstance(prefix_len, Integral):
        docs = [_document(prefix_len, segment_lens)]
    else:
        docs = [_document(p, segs) for p, segs in zip(prefix_len, segment_lens, strict=True)]
    return tuple(d for d in docs if d[0] or d[1])


def layout_tokens(layout: Layout) -> int:
    """Tokens a sequence's documents cover (the rest of the sequence is padding)."""
    return sum(p + sum(segs) for p, segs in layout)


def normalize_layouts(prefix_len, segment_lens, batch: int, total: int) -> tuple[Layout, ...]:
    """The documents of every sequence, validated against the sequence length.

    ``prefix_len`` int and ``segment_lens`` list of ints: one document shared by the batch. Otherwise one
    entry per sequence, each either an int with a list of ints (one document) or a list of ints with a
    list of lists (several documents packed one after the other, e.g. several requests in one pass).
    """
    if isinstance(prefix_len, Integral):
        rows = [_sequence(prefix_len, segment_lens)] * batch
    else:
        rows = [_sequence(p, segs) for p, segs in zip(prefix_len, segment_lens, strict=True)]
        if len(rows) != batch:
            raise ValueError(f"{len(rows)} per-sequence layouts for a batch of {batch}")
    for layout in rows:
        if layout_tokens(layout) > total:
            raise ValueError(f"layout {[(p, list(s)) for p, s in layout]} covers {layout_tokens(layout)} tokens "
                             f"> sequence length {total}")
    return tuple(rows)


@dataclass(frozen=True)
class LayoutTables:
    """What the kernels read instead of a mask, O(tokens) in size.

    ``seg`` [B, L] int32: -1 prefix, j for segment j (numbered across the sequence's documents), -2 padding.
    ``doc`` [B, L] int32: the token's document, -1 padding.
    ``q_tiles`` [B, Tq, 5] int32: query rows [start, end), then ``pre_start``, ``pre_end`` and ``kv_start``:
    the tile sees keys [pre_start, pre_end) unmasked (its document's prefix) and keys [kv_start, end) where
    segment ids match and key <= query. A tile never spans two documents.
    ``k_tiles`` [B, Tk, 3] int32: key rows [start, end) and ``q_end``: the queries that can see them lie
    in [start, q_end). Unused (padding) tiles are all zero and do nothing.
    """

    seg: torch.Tensor
    doc: torch.Tensor
    q_tiles: torch.Tensor
    k_tiles: torch.Tensor
    padded: bool = False
    """Whether some token is padding (known without reading the device tensors)."""


def _document_tiles(off: int, p: int, lens: np.ndarray, first_seg: int, seg_row: np.ndarray, block_m: int,
                    block_n: int):
    """Query and key tiles of one document starting at token ``off``; fills its part of ``seg_row``."""
    starts = off + p + np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    end = int(starts[-1])
    seg_row[off:off + p] = PREFIX
    local = np.repeat(np.arange(len(lens)), lens)  # segment index within the document, per candidate token
    seg_row[off + p:end] = first_seg + local
    # Query tiles: the prefix (causal over itself), then the candidate rows, which may pack several short
    # segments into one tile; kv_start is the start of the tile's first segment.
    qs = np.arange(off, off + p, block_m)
    q_prefix = np.stack([qs, np.minimum(qs + block_m, off + p), qs * 0 + off, qs * 0 + off, qs * 0 + off], 1)
    ss = np.arange(off + p, end, block_m)
    q_cand = np.stack([ss, np.minimum(ss + block_m, end), ss * 0 + off, ss * 0 + off + p,
                       starts[local[ss - off - p]]], 1)
    # Key tiles: a prefix key is seen by every later query of its document; a candidate key by the rest of
    # its segment.
    ks = np.arange(off, off + p, block_n)
    k_prefix = np.stack([ks, np.minimum(ks + block_n, off + p), ks * 0 + end], 1)
    cs = np.arange(off + p, end, block_n)
    ce = np.minimum(cs + block_n, end)
    k_cand = np.stack([cs, ce, starts[local[ce - 1 - off - p] + 1]], 1)
    return np.concatenate([q_prefix, q_cand]), np.concatenate([k_prefix, k_cand])


def _layout_arrays(layouts: tuple[Layout, ...], total: int, block_m: int, block_n: int):
    batch = len(layouts)
    seg = np.full((batch, total), PADDING, np.int32)
    doc = np.full((batch, total), -1, np.int32)
    q_rows, k_rows = [], []
    for b, layout in enumerate(layouts):
        off, first_seg, qb, kb = 0, 0, [np.zeros((0, 5), np.int64)], [np.zeros((0, 3), np.int64)]
        for d, (p, segs) in enumerate(layout):
            lens = np.asarray(segs, dtype=np.int64)
            q, k = _document_tiles(off, p, lens, first_seg, seg[b], block_m, block_n)
            qb.append(q)
            kb.append(k)
            n = p + int(lens.sum())
            doc[b, off:off + n] = d
            off, first_seg = off + n, first_seg + len(lens)
        q_rows.append(np.concatenate(qb))
        k_rows.append(np.concatenate(kb))
    q_tiles = np.zeros((batch, max(1, *(len(r) for r in q_rows)), 5), np.int32)
    k_tiles = np.zeros((batch, max(1, *(len(r) for r in k_rows)), 3), np.int32)
    for b in range(batch):
        q_tiles[b, : len(q_rows[b])] = q_rows[b]
        k_tiles[b, : len(k_rows[b])] = k_rows[b]
    return seg, doc, q_tiles, k_tiles


@functools.lru_cache(maxsize=32)
def layout_tables(layouts: tuple[Layout, ...], total: int, block_m: int, block_n: int,
                  device: torch.device) -> LayoutTables:
    """Tile tables for a batch of layouts (cached: every layer of a model call asks for the same ones)."""
    arrays = _layout_arrays(layouts, total, block_m, block_n)
    return LayoutTables(*(torch.from_numpy(a).to(device) for a in arrays), padded=bool((arrays[1] < 0).any()))


def layout_mask(tables: LayoutTables) -> torch.Tensor:
    """The dense [B, L, L] boolean mask (True = may attend) of a batch's layout tables.

    Padding rows see themselves only, so a dense kernel gives them finite values (the callers zero them).
    """
    seg, doc = tables.seg, tables.doc
    idx = torch.arange(seg.shape[1], device=seg.device)
    causal = idx[None, None, :] <= idx[None, :, None]
    same_doc = doc[:, None, :] == doc[:, :, None]
    sees = (seg[:, None, :] == PREFIX) | (seg[:, None, :] == seg[:, :, None])
    pad_self = (doc[:, :, None] < 0) & (idx[None, None, :] == idx[None, :, None])
    return (causal & same_doc & sees & (doc[:, :, None] >= 0)) | pad_self


# Triton kernels ----------------------------------------------------------------------------------
if triton is not None:

    @triton.jit
    def _query_tile(QT, b, tile, NUM_TILES):
        """A query tile's row of the layout table: its rows [q_start, q_end), the prefix keys it sees whole
        [pre_start, pre_end), and where its own keys start (kv_start)."""
        t = QT + (b * NUM_TILES + tile) * 5
        return tl.load(t), tl.load(t + 1), tl.load(t + 2), tl.load(t + 3), tl.load(t + 4)

    @triton.jit
    def _key_block(i, n_pre, pre_start, pre_end, kv_start, q_end, Kb, Vb, seg, seg_q, offs_m, offs_d, D,
                   stride_kl, stride_kd, stride_vl, stride_vd, BLOCK_N: tl.constexpr):
        """Key block ``i`` of a query tile's walk (the forward's and dQ's): blocks of the prefix first, seen
        whole, then the tile's own keys, causal within a segment. Its keys, values and which (row, key) pairs
        may attend."""
        pre = i < n_pre
        start = tl.where(pre, pre_start + i * BLOCK_N, kv_start + (i - n_pre) * BLOCK_N)
        limit = tl.where(pre, pre_end, q_end)
        offs_n = start + tl.arange(0, BLOCK_N).to(tl.int64)
        in_range = offs_n < limit
        kv_mask = in_range[:, None] & (offs_d[None, :] < D)
        k = tl.load(Kb + offs_n[:, None] * stride_kl + offs_d[None, :] * stride_kd, mask=kv_mask, other=0.0)
        v = tl.load(Vb + offs_n[:, None] * stride_vl + offs_d[None, :] * stride_vd, mask=kv_mask, other=0.0)
        seg_k = tl.load(seg + offs_n, mask=in_range, other=-3)
        visible = in_range[None, :] & (pre | ((seg_k[None, :] == seg_q[:, None])
                                              & (offs_n[None, :] <= offs_m[:, None])))
        return k, v, visible

    @triton.jit
    def _mia_fwd_kernel(Q, K, V, Out, LSE, SEG, QT, sm_scale,
                        stride_qb, stride_qh, stride_ql, stride_qd,
                        stride_kb, stride_kh, stride_kl, stride_kd,
                        stride_vb, stride_vh, stride_vl, stride_vd,
                        stride_ob, stride_oh, stride_ol, stride_od,
                        H, GROUPS, L, D, NUM_TILES,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                        PRECISION: tl.constexpr):
        tile = tl.program_id(0)
        bh = tl.program_id(1)
        b = (bh // H).to(tl.int64)
        h = bh % H
        hk = h // GROUPS
        q_start, q_end, pre_start, pre_end, kv_start = _query_tile(QT, b, tile, NUM_TILES)
        qk_scale = tl.cast(sm_scale, tl.float32) * 1.4426950408889634  # softmax in base 2

        # 64-bit offsets: large batches overflow 32-bit element offsets.
        offs_m = q_start + tl.arange(0, BLOCK_M).to(tl.int64)
        offs_d = tl.arange(0, BLOCK_D).to(tl.int64)
        row_ok = offs_m < q_end
        md = row_ok[:, None] & (offs_d[None, :] < D)
        q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_ql + offs_d[None, :] * stride_qd,
                    mask=md, other=0.0)
        seg = SEG + b * L
        seg_q = tl.load(seg + offs_m, mask=row_ok, other=-4)
        Kb = K + b * stride_kb + hk * stride_kh
        Vb = V + b * stride_vb + hk * stride_vh
        # A finite start keeps rows that have seen nothing yet free of inf - inf.
        m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        # Key blocks [pre_start, pre_end) (candidate tiles: their document's whole prefix, unmasked), then
        # [kv_start, q_end) (own segment(s), or the prefix for prefix tiles: causal where segment ids match).
        n_pre = tl.cdiv(pre_end - pre_start, BLOCK_N)
        n_own = tl.cdiv(q_end - kv_start, BLOCK_N)
        for i in range(0, n_pre + n_own):
            k, v, visible = _key_block(i, n_pre, pre_start, pre_end, kv_start, q_end, Kb, Vb, seg, seg_q, offs_m,
                                       offs_d, D, stride_kl, stride_kd, stride_vl, stride_vd, BLOCK_N)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
            s = tl.where(visible, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m_i = m_new
        l_safe = tl.where(l_i > 0, l_i, 1.0)
        out = acc / l_safe[:, None]
        tl.store(Out + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_ol + offs_d[None, :] * stride_od,
                 out, mask=md)
        tl.store(LSE + (b * H + h) * L + offs_m, m_i + tl.log2(l_safe), mask=row_ok)

    @triton.jit
    def _mia_bwd_dq_kernel(Q, K, V, DO, DQ, LSE, DELTA, SEG, QT, sm_scale,
                           stride_qb, stride_qh, stride_ql, stride_qd,
                           stride_kb, stride_kh, stride_kl, stride_kd,
                           stride_vb, stride_vh, stride_vl, stride_vd,
                           stride_ob, stride_oh, stride_ol, stride_od,
                           H, GROUPS, L, D, NUM_TILES,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                           PRECISION: tl.constexpr):
        # The forward's tile walk, recomputing probabilities from the saved log-sum-exp.
        # DO and DQ share the strides passed as stride_o*.
        tile = tl.program_id(0)
        bh = tl.program_id(1)
        b = (bh // H).to(tl.int64)
        h = bh % H
        hk = h // GROUPS
        q_start, q_end, pre_start, pre_end, kv_start = _query_tile(QT, b, tile, NUM_TILES)
        qk_scale = tl.cast(sm_scale, tl.float32) * 1.4426950408889634

        offs_m = q_start + tl.arange(0, BLOCK_M).to(tl.int64)
        offs_d = tl.arange(0, BLOCK_D).to(tl.int64)
        row_ok = offs_m < q_end
        md = row_ok[:, None] & (offs_d[None, :] < D)
        q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_ql + offs_d[None, :] * stride_qd,
                    mask=md, other=0.0)
        do = tl.load(DO + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_ol + offs_d[None, :] * stride_od,
                     mask=md, other=0.0)
        lse = tl.load(LSE + (b * H + h) * L + offs_m, mask=row_ok, other=0.0)
        delta = tl.load(DELTA + (b * H + h) * L + offs_m, mask=row_ok, other=0.0)
        seg = SEG + b * L
        seg_q = tl.load(seg + offs_m, mask=row_ok, other=-4)
        Kb = K + b * stride_kb + hk * stride_kh
        Vb = V + b * stride_vb + hk * stride_vh
        dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        n_pre = tl.cdiv(pre_end - pre_start, BLOCK_N)
        n_own = tl.cdiv(q_end - kv_start, BLOCK_N)
        for i in range(0, n_pre + n_own):
            k, v, visible = _key_block(i, n_pre, pre_start, pre_end, kv_start, q_end, Kb, Vb, seg, seg_q, offs_m,
                                       offs_d, D, stride_kl, stride_kd, stride_vl, stride_vd, BLOCK_N)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
            p = tl.where(visible, tl.exp2(s - lse[:, None]), 0.0)
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
        dq = dq * tl.cast(sm_scale, tl.float32)
        tl.store(DQ + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_ol + offs_d[None, :] * stride_od,
                 dq, mask=md)

    @triton.jit
    def _mia_bwd_dkdv_kernel(Q, K, V, DO, DK, DV, LSE, DELTA, SEG, KT, sm_scale,
                             stride_qb, stride_qh, stride_ql, stride_qd,
                             stride_kb, stride_kh, stride_kl, stride_kd,
                             stride_vb, stride_vh, stride_vl, stride_vd,
                             stride_ob, stride_oh, stride_ol, stride_od,
                             H, HKV, GROUPS, L, D, NUM_TILES,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                             PRECISION: tl.constexpr):
        # DO shares the strides passed as stride_o*; DK and DV are contiguous [B, HKV, L, D].
        tile = tl.program_id(0)
        bh = tl.program_id(1)
        b = (bh // HKV).to(tl.int64)
        hk = bh % HKV
        t = KT + (b * NUM_TILES + tile) * 3
        k_start = tl.load(t)
        k_end = tl.load(t + 1)
        q_end = tl.load(t + 2)
        qk_scale = tl.cast(sm_scale, tl.float32) * 1.4426950408889634

        offs_n = k_start + tl.arange(0, BLOCK_N).to(tl.int64)
        offs_d = tl.arange(0, BLOCK_D).to(tl.int64)
        key_ok = offs_n < k_end
        nd = key_ok[:, None] & (offs_d[None, :] < D)
        k = tl.load(K + b * stride_kb + hk * stride_kh + offs_n[:, None] * stride_kl + offs_d[None, :] * stride_kd,
                    mask=nd, other=0.0)
        v = tl.load(V + b * stride_vb + hk * stride_vh + offs_n[:, None] * stride_vl + offs_d[None, :] * stride_vd,
                    mask=nd, other=0.0)
        seg_k = tl.load(SEG + b * L + offs_n, mask=key_ok, other=-3)
        dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        for g in range(0, GROUPS):
            h = hk * GROUPS + g
            Qb = Q + b * stride_qb + h * stride_qh
            DOb = DO + b * stride_ob + h * stride_oh
            for start in range(k_start, q_end, BLOCK_M):
                offs_m = start + tl.arange(0, BLOCK_M).to(tl.int64)
                row_ok = offs_m < q_end
                md = row_ok[:, None] & (offs_d[None, :] < D)
                q = tl.load(Qb + offs_m[:, None] * stride_ql + offs_d[None, :] * stride_qd, mask=md, other=0.0)
                do = tl.load(DOb + offs_m[:, None] * stride_ol + offs_d[None, :] * stride_od, mask=md, other=0.0)
                lse = tl.load(LSE + (b * H + h) * L + offs_m, mask=row_ok, other=0.0)
                delta = tl.load(DELTA + (b * H + h) * L + offs_m, mask=row_ok, other=0.0)
                seg_q = tl.load(SEG + b * L + offs_m, mask=row_ok, other=-4)
                visible = (row_ok[None, :] & (offs_n[:, None] <= offs_m[None, :])
                           & ((seg_k[:, None] == seg_q[None, :]) | (seg_k[:, None] == -1)))
                s_t = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale
                p_t = tl.where(visible, tl.exp2(s_t - lse[None, :]), 0.0)
                dv += tl.dot(p_t.to(do.dtype), do, input_precision=PRECISION)
                dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)
                ds_t = p_t * (dp_t - delta[None, :])
                dk += tl.dot(ds_t.to(q.dtype), q, input_precision=PRECISION)
        dk = dk * tl.cast(sm_scale, tl.float32)
        out = (b * HKV + hk) * L * D + offs_n[:, None] * D + offs_d[None, :]
        tl.store(DK + out, dk, mask=nd)
        tl.store(DV + out, dv, mask=nd)


def _blocks(d: int, block_m: int | None, block_n: int | None) -> tuple[int, int, int]:
    block_d = max(16, triton.next_power_of_2(d))
    return (block_m or interpreter_blocks(64, 16), block_n or interpreter_blocks(64, 16), block_d)


def _precision(x: torch.Tensor) -> str:
    # fp32 inputs stay exact (the torch path does not use TF32); half types use the tensor cores anyway.
    return "ieee" if x.dtype == torch.float32 else "tf32"


def _triton_forward(q, k, v, tables: LayoutTables, scale: float, block_m: int, block_n: int, block_d: int):
    b, h, total, d = q.shape
    hkv = k.shape[1]
    # Written as [B, L, H, D] so the Hugging Face caller's transpose back is free.
    o = torch.zeros(b, total, h, d, dtype=q.dtype, device=q.device).transpose(1, 2)
    lse = torch.zeros(b, h, total, dtype=torch.float32, device=q.device)
    num_tiles = tables.q_tiles.shape[1]
    _mia_fwd_kernel[(num_tiles, b * h)](
        q, k, v, o, lse, tables.seg, tables.q_tiles, scale,
        *q.stride(), *k.stride(), *v.stride(), *o.stride(),
        h, h // hkv, total, d, num_tiles,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, PRECISION=_precision(q))
    return o, lse


def _triton_backward(do, q, k, v, o, lse, tables: LayoutTables, scale: float, block_m: int, block_n: int,
                     block_d: int):
    b, h, total, d = q.shape
    hkv = k.shape[1]
    if do.stride() != o.stride():  # DO and DQ are read and written with the output's strides
        do = torch.empty_like(o).copy_(do)
    delta = (o.float() * do.float()).sum(-1).contiguous()
    dq = torch.zeros_like(o)
    dk = torch.zeros(b, hkv, total, d, dtype=k.dtype, device=k.device)
    dv = torch.zeros(b, hkv, total, d, dtype=v.dtype, device=v.device)
    precision = _precision(q)
    warps = 8 if block_d >= 128 else 4  # the backward holds more tiles per program than the forward
    num_q = tables.q_tiles.shape[1]
    _mia_bwd_dq_kernel[(num_q, b * h)](
        q, k, v, do, dq, lse, delta, tables.seg, tables.q_tiles, scale,
        *q.stride(), *k.stride(), *v.stride(), *do.stride(),
        h, h // hkv, total, d, num_q,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, PRECISION=precision, num_warps=warps)
    num_k = tables.k_tiles.shape[1]
    _mia_bwd_dkdv_kernel[(num_k, b * hkv)](
        q, k, v, do, dk, dv, lse, delta, tables.seg, tables.k_tiles, scale,
        *q.stride(), *k.stride(), *v.stride(), *do.stride(),
        h, hkv, h // hkv, total, d, num_k,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, PRECISION=precision, num_warps=warps)
    return dq, dk, dv


class MultiItemAttentionFunction(torch.autograd.Function):
    """Triton forward and backward; the layout travels as precomputed :class:`LayoutTables`."""

    @staticmethod
    def forward(ctx, q, k, v, tables: LayoutTables, scale: float, block_m: int, block_n: int):
        block_d = _blocks(q.shape[-1], block_m, block_n)[2]
        o, lse = _triton_forward(q, k, v, tables, scale, block_m, block_n, block_d)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.tables, ctx.scale, ctx.blocks = tables, scale, (block_m, block_n, block_d)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = _triton_backward(do, q, k, v, o, lse, ctx.tables, ctx.scale, *ctx.blocks)
        return dq, dk, dv, None, None, None, None


# Other implementations ---------------------------------------------------------------------------
def _torch_path(q, k, v, layouts: tuple[Layout, ...], scale: float) -> torch.Tensor:
    b, h, total, d = q.shape
    if len(set(layouts)) == 1 and len(layouts[0]) == 1 and layout_tokens(layouts[0]) == total:
        (p, segs), = layouts[0]
        return multi_item_attention_torch(q, k, v, p, segs, scale)
    rows = []
    for i, layout in enumerate(layouts):
        parts, off = [q.new_zeros(1, h, 0, d)], 0
        for p, segs in layout:  # each packed document on its own
            n = p + sum(segs)
            window = slice(off, off + n)
            parts.append(multi_item_attention_torch(q[i:i + 1, :, window], k[i:i + 1, :, window],
                                                    v[i:i + 1, :, window], p, segs, scale))
            off += n
        rows.append(F.pad(torch.cat(parts, 2), (0, 0, 0, total - off)))
    return torch.cat(rows)


def _zero_padding(out: torch.Tensor, tables: LayoutTables) -> torch.Tensor:
    if tables.padded:
        out = out * (tables.doc >= 0)[:, None, :, None].to(out.dtype)
    return out


def _sdpa_path(q, k, v, tables: LayoutTables, scale: float) -> torch.Tensor:
    """SDPA with the dense [L, L] mask (heads expanded, as Hugging Face's SDPA path does): small shapes."""
    groups = q.shape[1] // k.shape[1]
    out = F.scaled_dot_product_attention(q, expand_kv(k, groups), expand_kv(v, groups),
                                         attn_mask=layout_mask(tables)[:, None], scale=scale)
    return _zero_padding(out, tables)


#: FlexAttention's block size; its block mask is built from the layout (see :func:`flex_block_mask`).
FLEX_BLOCK = 128
_flex_failed: list[str] = []  # why compiled FlexAttention failed in this process, if it did


@functools.lru_cache(maxsize=1)
def _flex():
    """(flex_attention eager, compiled) or None when this torch has no FlexAttention."""
    try:
        from torch.nn.attention.flex_attention import flex_attention
    except ImportError:
        return None
    return flex_attention, torch.compile(flex_attention)


def flex_available(device: torch.device) -> bool:
    """Whether FlexAttention can run here (compiled on CUDA; eager elsewhere, for tests)."""
    return _flex() is not None and not (device.type == "cuda" and _flex_failed)


def _visible_rows(seg, doc, q0: int, q1: int) -> torch.Tensor:
    """[B, q1 - q0, L] visibility of the query rows [q0, q1) (padding sees padding, finite and zeroed later)."""
    keys = torch.arange(seg.shape[1], device=seg.device)
    rows = torch.arange(q0, q1, device=seg.device)
    sq, dq = seg[:, q0:q1, None], doc[:, q0:q1, None]
    return ((keys[None, None] <= rows[None, :, None]) & (doc[:, None] == dq)
            & ((seg[:, None] == PREFIX) | (seg[:, None] == sq)))


@functools.lru_cache(maxsize=16)
def flex_block_mask(layouts: tuple[Layout, ...], total: int, device: torch.device):
    """FlexAttention's BlockMask for a batch of layouts, built a chunk of query rows at a time (no [L, L] mask).

    Blocks with every pair visible are "full" (no mask_mod call), blocks with some are "partial".
    """
    from torch.nn.attention.flex_attention import BlockMask

    tables = layout_tables(layouts, total, FLEX_BLOCK, FLEX_BLOCK, device)
    seg, doc = tables.seg, tables.doc
    nb = -(-total // FLEX_BLOCK)
    width = nb * FLEX_BLOCK
    any_parts, all_parts = [], []
    chunk = FLEX_BLOCK * max(1, 2**24 // max(1, width * len(layouts) * FLEX_BLOCK))
    for q0 in range(0, total, chunk):
        q1 = min(total, q0 + chunk)
        vis = _visible_rows(seg, doc, q0, q1)
        rows = -(-(q1 - q0) // FLEX_BLOCK) * FLEX_BLOCK
        # Out-of-range rows and keys count as visible for "full" and invisible for "partial".
        padded = F.pad(vis, (0, width - total, 0, rows - (q1 - q0)), value=True)
        inside = F.pad(vis, (0, width - total, 0, rows - (q1 - q0)), value=False)
        shape = (len(layouts), rows // FLEX_BLOCK, FLEX_BLOCK, nb, FLEX_BLOCK)
        any_parts.append(inside.view(shape).any(4).any(2))
        all_parts.append(padded.view(shape).all(4).all(2))
    full = torch.cat(all_parts, 1)
    partial = torch.cat(any_parts, 1) & ~full

    def indices(blocks):  # [B, Q, K] bool -> counts [B, 1, Q] and indices [B, 1, Q, K], visible ones first
        order = torch.argsort(blocks.to(torch.int8), dim=-1, descending=True, stable=True)
        return blocks.sum(-1, dtype=torch.int32)[:, None], order.to(torch.int32)[:, None]

    def mask_mod(b, h, q_idx, kv_idx):
        return ((kv_idx <= q_idx) & (doc[b, kv_idx] == doc[b, q_idx])
                & ((seg[b, kv_idx] == PREFIX) | (seg[b, kv_idx] == seg[b, q_idx])))

    return BlockMask.from_kv_blocks(*indices(partial), *indices(full), FLEX_BLOCK, mask_mod, (total, total))


def _flex_path(q, k, v, layouts: tuple[Layout, ...], scale: float) -> torch.Tensor:
    eager, compiled = _flex()
    total = q.shape[2]
    mask = flex_block_mask(layouts, total, q.device)
    fn = compiled if q.is_cuda else eager
    out = fn(q, k, v, block_mask=mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1])
    return _zero_padding(out, layout_tables(layouts, total, FLEX_BLOCK, FLEX_BLOCK, q.device))


# Dispatch ----------------------------------------------------------------------------------------
def multi_item_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prefix_len, segment_lens,
                         scaling: float | None = None, *, block_m: int | None = None,
                         block_n: int | None = None) -> torch.Tensor:
    """Multi-item attention [B, H, L, D] for q [B, H, L, D], k, v [B, Hkv, L, D], on the fastest implementation.

    ``prefix_len``/``segment_lens`` describe one layout for the batch, or one per sequence, each possibly
    several packed documents (see :func:`normalize_layouts`). The implementation comes from
    :func:`recbrew.kernels.dispatch.choose_attention`. ``block_m``/``block_n`` override the Triton tile sizes
    (tests use them to cover tiling).
    """
    b, h, total, d = q.shape
    if h % k.shape[1]:
        raise ValueError(f"{h} query heads are not a multiple of {k.shape[1]} key/value heads")
    layouts = normalize_layouts(prefix_len, segment_lens, b, total)
    scale = float(scaling) if scaling is not None else d ** -0.5
    impl = choose_attention(q, k, v, tokens=total, flex_ok=flex_available(q.device))
    if impl == "flex":
        try:
            return _flex_path(q, k, v, layouts, scale)
        except Exception as exc:  # a compile failure on this stack: fall back to Triton for the process
            if not q.is_cuda or attention_choice() == "flex":
                raise
            _flex_failed.append(f"{type(exc).__name__}: {str(exc)[:200]}")
            warnings.warn(f"FlexAttention failed ({_flex_failed[-1]}); multi-item attention uses Triton",
                          stacklevel=2)
            impl = "triton" if triton is not None else "torch"
    if impl == "torch":
        return _torch_path(q, k, v, layouts, scale)
    if impl == "sdpa":
        return _sdpa_path(q, k, v, layout_tables(layouts, total, FLEX_BLOCK, FLEX_BLOCK, q.device), scale)
    block_m, block_n, _ = _blocks(d, block_m, block_n)
    tables = layout_tables(layouts, total, block_m, block_n, q.device)
    return MultiItemAttentionFunction.apply(q, k, v, tables, scale, block_m, block_n)
