"""Vectorized string building: every text column is assembled from word lists with Arrow kernels."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def vocab(words) -> pa.Array:
    return pa.array(list(words), type=pa.string())


def pick(words: pa.Array, idx: np.ndarray) -> pa.Array:
    """``words[idx]`` as an Arrow string array."""
    return words.take(pa.array(np.asarray(idx, dtype=np.int64)))


def concat(*parts) -> pa.Array:
    """Element-wise concatenation of string arrays and plain strings."""
    return pc.binary_join_element_wise(*parts, "")


def choose(selector: np.ndarray, options: list[pa.Array]) -> pa.Array:
    """Row i takes ``options[selector[i]][i]``."""
    out = options[0]
    for k in range(1, len(options)):
        out = pc.if_else(pa.array(selector == k), options[k], out)
    return out


def lists(values: pa.Array, lengths: np.ndarray) -> pa.ListArray:
    """Group a flat array into consecutive lists of the given lengths."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def sample_without_replacement(rng: np.random.Generator, rows: int, pool: int, k: np.ndarray) -> np.ndarray:
    """For each row, ``k[row]`` distinct indices in ``[0, pool)``, flattened row by row."""
    order = np.argsort(rng.random((rows, pool), dtype=np.float32), axis=1)
    mask = np.arange(pool)[None, :] < np.asarray(k)[:, None]
    return order[mask]


def hashtag(words) -> list[str]:
    """'Machine Learning' -> '#MachineLearning' (word lists only, not a hot path)."""
    return ["#" + "".join(ch for ch in w.title() if ch.isalnum()) for w in words]
