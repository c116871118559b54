"""Trained rankers as Scorers, and the model folder they are saved in.

A trained model folder holds ``model.pt`` (config, fitted feature space and weights, readable with
``torch.load(weights_only=True)``) and ``train.json`` (the training log). A popularity folder holds
``popularity.json``. :func:`load_scorer` reads either and returns a Scorer.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from recbrew.baselines.config import build_model, run_config
from recbrew.baselines.features import FeatureSpace, batch_tensors
from recbrew.baselines.popularity import FILE as POPULARITY_FILE
from recbrew.baselines.popularity import Popularity
from recbrew.baselines.quantize import quantize_embeddings
from recbrew.data.io import atomic_path
from recbrew.errors import UserError

MODEL_FILE = "model.pt"
FORMAT = 1


def probabilities(logits: np.ndarray, listwise: bool) -> np.ndarray:
    """Binary: sigmoid per candidate; listwise: softmax over the request's slots."""
    logits = logits.astype(np.float64)
    if listwise:
        e = np.exp(logits - logits.max())
        return e / e.sum()
    return 1.0 / (1.0 + np.exp(-logits))


@torch.no_grad()
def predict_logits(model: torch.nn.Module, enc: dict[str, np.ndarray], batch_size: int = 256) -> list[np.ndarray]:
    """Per-request candidate logits of an encoded split."""
    was_training = model.training
    model.eval()
    out = []
    n = len(enc["task"])
    for start in range(0, n, batch_size):
        rows = slice(start, min(start + batch_size, n))
        b = batch_tensors(enc, rows)
        logits = model(b).numpy()
        counts = b["cand_mask"].sum(1).numpy()
        out.extend(logits[i, :c] for i, c in enumerate(counts))
    model.train(was_training)
    return out


class ModelScorer:
    """A trained LiRank / LiGR / DCNv2 behind the Scorer protocol."""

    #: Reads the structured view of a request (ids, categoricals, history), not its prompt.
    views = ("structured",)

    def __init__(self, name: str, model: torch.nn.Module, space: FeatureSpace, batch_size: int = 256):
        self.name, self.model, self.space, self.batch_size = name, model.eval(), space, batch_size

    def score(self, requests: Sequence[dict]) -> list[np.ndarray]:
        out: list[np.ndarray] = [np.zeros(0) for _ in requests]
        rankable = [i for i, r in enumerate(requests)
                    if len(r.get("candidate_ids") or []) and r.get("kind") != "generative"]
        if not rankable:
            return out
        rows = [requests[i] for i in rankable]
        enc = self.space.encode(rows)
        for i, row, logits in zip(rankable, rows, predict_logits(self.model, enc, self.batch_size), strict=True):
            out[i] = probabilities(logits, self.space.kind_of(row["task"], row.get("kind")) == "listwise")
        return out


def atomic_save(obj, path: Path) -> None:
    """torch.save to a temp file beside ``path``, then rename: readers never see half a file."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def model_payload(cfg, space: FeatureSpace, model: torch.nn.Module, extra: dict | None = None) -> dict:
    return {"format": FORMAT, "model": cfg.model_name, "config": cfg.to_dict(), "space": space.to_dict(),
            "state_dict": model.state_dict(), **(extra or {})}


def load_model(path: str | Path) -> tuple[torch.nn.Module, FeatureSpace, dict]:
    """(model in eval mode, feature space, payload) from a model folder or a ``model.pt`` file."""
    path = Path(path)
    file = path / MODEL_FILE if path.is_dir() else path
    if not file.is_file():
        raise UserError(f"{path}: no trained model here ({MODEL_FILE} missing); train one with `recbrew baselines train`")
    payload = torch.load(file, map_location="cpu", weights_only=True)
    if payload.get("format") != FORMAT:
        raise UserError(f"{file}: saved in format {payload.get('format')!r}; this recbrew reads format {FORMAT}")
    c = payload["config"]
    cfg = run_config(payload["model"], base={"model": c["model"], "features": c["features"], "train": c["train"]})
    space = FeatureSpace.from_dict(payload["space"])
    model = build_model(cfg, space)
    model.load_state_dict(payload["state_dict"])
    return model.eval(), space, payload


def load_scorer(path: str | Path, quantize_bits: int | None = None, batch_size: int = 256):
    """The Scorer saved in ``path``: a trained ranker (optionally with b-bit embedding tables) or popularity."""
    path = Path(path)
    if (path / POPULARITY_FILE).is_file():
        return Popularity.load(path)
    model, space, payload = load_model(path)
    if quantize_bits:
        quantize_embeddings(model.embeddings, quantize_bits)
    name = payload["model"] + (f"-int{quantize_bits}" if quantize_bits else "")
    return ModelScorer(name, model, space, batch_size)
