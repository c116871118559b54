"""Train one ranker (LiRank, LiGR or DCNv2) on the T1 training requests of an examples folder.

Recipe: fit the feature space on the training requests; validate on the examples' validation split
when they have one (`recbrew data build --val-days/--val-fraction`), else hold out the latest
``val_fraction`` of the training requests; minimize binary cross-entropy over every candidate (listwise slots count as pointwise
labels) with AdamW and a cosine learning-rate decay; after each epoch measure the validation macro AUC, write ``checkpoint.pt``
(atomically) and keep the best weights; stop after ``patience`` epochs without improvement.
The model folder gets ``model.pt`` (best weights) and ``train.json``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from recbrew.baselines.config import RunConfig, build_model
from recbrew.baselines.features import FeatureSpace, batch_tensors, examples_folder, load_rows
from recbrew.baselines.scorer import MODEL_FILE, atomic_save, model_payload, predict_logits, probabilities
from recbrew.data.io import atomic_write_text
from recbrew.errors import UserError
from recbrew.metrics import macro_auc, per_task_auc

CHECKPOINT = "checkpoint.pt"
LOG_FILE = "train.json"


def split_by_time(rows: list[dict], val_fraction: float) -> tuple[list[dict], list[dict]]:
    """Oldest requests for training, the latest ``val_fraction`` for validation."""
    rows = sorted(rows, key=lambda r: (r["timestamp"], r["request_id"]))
    n_val = int(len(rows) * val_fraction)
    return (rows[: len(rows) - n_val], rows[len(rows) - n_val:]) if n_val else (rows, [])


def validation_auc(model, space: FeatureSpace, rows: list[dict], enc: dict) -> float | None:
    if not rows:
        return None
    logits = predict_logits(model, enc)
    probs = [probabilities(lg, space.kind_of(r["task"], r["kind"]) == "listwise") for r, lg in zip(rows, logits,
                                                                                                  strict=True)]
    return macro_auc(per_task_auc(rows, probs))["T1"]


def _resumable(config: dict) -> dict:
    """The parts of a config a resumed run must share with the checkpoint."""
    return {**config, "train": {k: v for k, v in config["train"].items() if k not in ("epochs", "patience")}}


@dataclass
class _Split:
    """The requests a run trains and validates on, encoded in the feature space fitted on the training ones."""

    train: list[dict]
    val: list[dict]
    val_source: str
    space: FeatureSpace
    enc: dict
    val_enc: dict | None


@dataclass
class _Best:
    auc: float = -1.0
    epoch: int = -1
    state: dict | None = None


@dataclass
class _Loop:
    """What the epochs change: the model, its optimizer and schedule, the shuffling stream and the best epoch."""

    model: torch.nn.Module
    opt: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR
    rng: np.random.Generator
    best: _Best = field(default_factory=_Best)
    start_epoch: int = 0


def train_model(cfg: RunConfig, examples: str | Path, out: str | Path | None = None, *, rows: list[dict] | None = None,
                resume: bool = False, progress: bool = True) -> tuple[torch.nn.Module, FeatureSpace, dict]:
    """Train ``cfg`` on the T1 train requests of ``examples`` (or on ``rows``); save into ``out`` if given.

    Returns the model (best validation epoch), its feature space and the training log.
    """
    tc = cfg.train
    torch.set_num_threads(tc.threads)
    torch.manual_seed(tc.seed)
    rng = np.random.default_rng(tc.seed)
    out = Path(out) if out is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    split = _split(cfg, examples, rows)
    loop = _setup_loop(cfg, split, rng)
    log = _new_log(cfg, split, loop.model)
    ckpt_path = out / CHECKPOINT if out is not None else None
    if resume and ckpt_path is not None and ckpt_path.is_file():
        _resume(cfg, loop, log, ckpt_path)
    began = time.perf_counter()
    for epoch in range(loop.start_epoch, tc.epochs):
        _epoch(cfg, split, loop, log, epoch, progress)
        if ckpt_path is not None:
            _checkpoint(cfg, loop, log, epoch, ckpt_path)
        if loop.best.epoch <= epoch + 1 - tc.patience:
            break
    model = loop.model
    model.load_state_dict(loop.best.state)
    model.eval()
    log.update(best_epoch=loop.best.epoch, best_val_auc=loop.best.auc if split.val else None,
               seconds=round(time.perf_counter() - began, 2))
    if out is not None:
        atomic_save(model_payload(cfg, split.space, model, {"train_log": json.dumps(log)}), out / MODEL_FILE)
        atomic_write_text(out / LOG_FILE, json.dumps(log, indent=2) + "\n")
    return model, split.space, log


def _split(cfg: RunConfig, examples, rows: list[dict] | None) -> _Split:
    """Training and validation requests: the examples' validation split where they have one
    (`data build --val-days/--val-fraction`), else the latest ``val_fraction`` of the training requests."""
    tc = cfg.train
    split_val = None
    folder = examples_folder(examples) if examples is not None else None
    if rows is None:
        rows = load_rows(folder, "train", split_tag="T1")
        if folder.has_split("validation"):
            split_val = load_rows(folder, "validation", split_tag="T1")
    if not rows:
        raise UserError(f"{examples}: no T1 training requests with candidates to train on")
    rows = sorted(rows, key=lambda r: (r["timestamp"], r["request_id"]))
    if tc.max_rows:
        rows = rows[-tc.max_rows:]
    if split_val is not None:
        train_rows, val_rows = rows, split_val
    else:
        train_rows, val_rows = split_by_time(rows, tc.val_fraction)
    kinds = folder.kinds() if folder is not None else {r["task"]: r["kind"] for r in rows}
    corpus = (folder.corpus_dir("the item store reads it (or set features.item_store=false)")
              if cfg.features.item_store and folder is not None else None)
    space = FeatureSpace.fit(train_rows, cfg.features, kinds, corpus)
    source = "validation split" if split_val is not None else f"latest {tc.val_fraction:g} of train"
    return _Split(train_rows, val_rows, source, space, space.encode(train_rows),
                  space.encode(val_rows) if val_rows else None)


def _setup_loop(cfg: RunConfig, split: _Split, rng: np.random.Generator) -> _Loop:
    """The model, AdamW, and a cosine decay from lr to min_lr_ratio * lr over the whole run: late epochs move
    the weights less, so the epoch picked on validation is less a matter of luck."""
    tc = cfg.train
    model = build_model(cfg, split.space)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    total = max(tc.epochs * _steps(cfg, split), 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: tc.min_lr_ratio + (1 - tc.min_lr_ratio) * 0.5 * (
        1 + math.cos(math.pi * min(i / total, 1.0))))
    return _Loop(model, opt, schedule, rng)


def _steps(cfg: RunConfig, split: _Split) -> int:
    return -(-len(split.train) // cfg.train.batch_size)


def _new_log(cfg: RunConfig, split: _Split, model: torch.nn.Module) -> dict:
    return {"model": cfg.model_name, "config": cfg.to_dict(), "config_file": cfg.source,
            "train_requests": len(split.train), "val_requests": len(split.val), "val_source": split.val_source,
            "train_candidates": int(split.enc["cand_mask"].sum()),
            "parameters": sum(p.numel() for p in model.parameters()), "compression": split.space.compression(),
            "epochs": []}


def _resume(cfg: RunConfig, loop: _Loop, log: dict, ckpt_path: Path) -> None:
    """Continue from ``checkpoint.pt``: weights, optimizer, schedule, best epoch, log and the shuffling stream."""
    tc = cfg.train
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    if _resumable(ckpt["config"]) != _resumable(cfg.to_dict()):
        raise UserError(f"{ckpt_path}: was written with another config (only train.epochs and train.patience "
                        "may change on --resume); drop --resume or use the same config")
    loop.model.load_state_dict(ckpt["state_dict"])
    loop.opt.load_state_dict(ckpt["optimizer"])
    loop.schedule.load_state_dict(ckpt["schedule"])
    loop.best = _Best(ckpt["best_auc"], ckpt["best_epoch"], ckpt["best_state"])
    log["epochs"] = ckpt["epochs"]
    loop.start_epoch = ckpt["epoch"] + 1
    loop.rng = np.random.default_rng([tc.seed, loop.start_epoch])
    torch.manual_seed(tc.seed + loop.start_epoch)


def _epoch(cfg: RunConfig, split: _Split, loop: _Loop, log: dict, epoch: int, progress: bool) -> None:
    """One pass over the training requests in a fresh order, then validation; keeps the best weights."""
    tc = cfg.train
    model, steps = loop.model, _steps(cfg, split)
    model.train()
    order = loop.rng.permutation(len(split.train))
    total, count, t0 = 0.0, 0, time.perf_counter()
    bar = tqdm(range(steps), desc=f"{cfg.model_name} epoch {epoch + 1}/{tc.epochs}", unit="step",
               disable=not progress, leave=False)
    for step in bar:
        b = batch_tensors(split.enc, np.sort(order[step * tc.batch_size:(step + 1) * tc.batch_size]))
        mask = b["cand_mask"]
        loss = F.binary_cross_entropy_with_logits(model(b)[mask], b["labels"][mask])
        loop.opt.zero_grad(set_to_none=True)
        loss.backward()
        loop.opt.step()
        loop.schedule.step()
        total += loss.item() * int(mask.sum())
        count += int(mask.sum())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{total / max(count, 1):.4f}")
    seconds = time.perf_counter() - t0
    auc = validation_auc(model, split.space, split.val, split.val_enc) if split.val else None
    log["epochs"].append({"epoch": epoch + 1, "loss": round(total / max(count, 1), 5), "val_auc": auc,
                          "seconds": round(seconds, 2), "candidates_per_s": round(count / seconds, 1)})
    score = auc if auc is not None else epoch  # no validation: keep the last epoch
    if score > loop.best.auc:
        loop.best = _Best(score, epoch + 1, {k: v.detach().clone() for k, v in model.state_dict().items()})
    if progress:
        tqdm.write(f"{cfg.model_name} epoch {epoch + 1}: loss {log['epochs'][-1]['loss']:.4f}  "
                   f"val macro AUC {auc if auc is None else round(auc, 4)}  {seconds:.1f} s")


def _checkpoint(cfg: RunConfig, loop: _Loop, log: dict, epoch: int, ckpt_path: Path) -> None:
    """``checkpoint.pt`` after every epoch, written atomically: what `--resume` continues from."""
    atomic_save({"config": cfg.to_dict(), "epoch": epoch, "state_dict": loop.model.state_dict(),
                 "optimizer": loop.opt.state_dict(), "schedule": loop.schedule.state_dict(),
                 "best_auc": loop.best.auc, "best_epoch": loop.best.epoch, "best_state": loop.best.state,
                 "epochs": log["epochs"]}, ckpt_path)
