"""Row-wise "middle-max" post-training quantization of embedding tables (LiRank).

Per row with extremes min and max, for b bits:

    scale = (max - min) / (2^b - 1)
    mid   = (max * 2^(b-1) + min * (2^(b-1) - 1)) / (2^b - 1)
    q     = round((x - mid) / scale)          in [-2^(b-1), 2^(b-1) - 1]
    x^    = q * scale + mid                   |x - x^| <= scale / 2

max maps to 2^(b-1) - 1 and min to -2^(b-1), so the signed integer range is used in full. A row
stores b-bit codes plus its scale and mid (two fp32 numbers).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class QuantizedRows:
    codes: torch.Tensor  # int8 (b <= 8) [rows, dim]
    scale: torch.Tensor  # fp32 [rows, 1]
    mid: torch.Tensor  # fp32 [rows, 1]
    bits: int

    def dequantize(self) -> torch.Tensor:
        return self.codes.float() * self.scale + self.mid

    def nbytes(self) -> int:
        """Bytes of the codes (b bits each, packed) plus the fp32 scale and mid of every row."""
        rows, dim = self.codes.shape
        return rows * (-(-dim * self.bits // 8) + 8)


def quantize_rows(x: torch.Tensor, bits: int = 8) -> QuantizedRows:
    """Middle-max quantization of each row of a 2-D float tensor."""
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be in 2..8, got {bits}")
    x = x.detach().float()
    levels = 2**bits - 1
    half = 2 ** (bits - 1)
    hi = x.max(1, keepdim=True).values
    lo = x.min(1, keepdim=True).values
    scale = (hi - lo) / levels
    mid = (hi * half + lo * (half - 1)) / levels
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round((x - mid) / safe).clamp(-half, half - 1)
    codes = torch.where(scale > 0, codes, torch.zeros_like(codes))  # constant row: mid == the value
    return QuantizedRows(codes.to(torch.int8), scale, mid, bits)


def embedding_tables(model: nn.Module) -> dict[str, nn.Embedding]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Embedding)}


def quantize_embeddings(model: nn.Module, bits: int = 8) -> dict:
    """Replace every embedding table's weights by their quantize->dequantize round trip, in place.

    Returns the tables' fp32 and quantized sizes in bytes and their ratio.
    """
    fp32 = quantized = 0
    with torch.no_grad():
        for table in embedding_tables(model).values():
            q = quantize_rows(table.weight, bits)
            table.weight.copy_(q.dequantize())
            fp32 += table.weight.numel() * 4
            quantized += q.nbytes()
    return {"bits": bits, "fp32_bytes": fp32, "quantized_bytes": quantized,
            "size_ratio": round(quantized / fp32, 4) if fp32 else None}
