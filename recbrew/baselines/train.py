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

    split_val = None
    folder = examples_folder(examples) if examples is not None else None
    if rows is None:
        rows = load_rows(folder, "train", split_tag="T1")
        if folder.has_split("validation"):
            # The examples' own validation split (`data build --val-days/--val-fraction`) replaces the time holdout.
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
    enc = space.encode(train_rows)
    val_enc = space.encode(val_rows) if val_rows else None
    model = build_model(cfg, space)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)

    log = {"model": cfg.model_name, "config": cfg.to_dict(), "config_file": cfg.source, "train_requests": len(train_rows),
           "val_requests": len(val_rows), "val_source": "validation split" if split_val is not None else
           f"latest {tc.val_fraction:g} of train", "train_candidates": int(enc["cand_mask"].sum()),
           "parameters": sum(p.numel() for p in model.parameters()), "compression": space.compression(),
           "epochs": []}
    n = len(train_rows)
    steps = -(-n // tc.batch_size)
    # Cosine decay from lr to min_lr_ratio * lr over the whole run: late epochs move the weights
    # less, so the epoch picked on validation is less a matter of luck.
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: tc.min_lr_ratio + (1 - tc.min_lr_ratio) * 0.5 * (
        1 + math.cos(math.pi * min(i / max(tc.epochs * steps, 1), 1.0))))
    best = {"auc": -1.0, "epoch": -1, "state": None}
    start_epoch = 0
    ckpt_path = out / CHECKPOINT if out is not None else None
    if resume and ckpt_path is not None and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if _resumable(ckpt["config"]) != _resumable(cfg.to_dict()):
            raise UserError(f"{ckpt_path}: was written with another config (only train.epochs and train.patience "
                            "may change on --resume); drop --resume or use the same config")
        model.load_state_dict(ckpt["state_dict"])
        opt.load_state_dict(ckpt["optimizer"])
        schedule.load_state_dict(ckpt["schedule"])
        best = {"auc": ckpt["best_auc"], "epoch": ckpt["best_epoch"], "state": ckpt["best_state"]}
        log["epochs"] = ckpt["epochs"]
        start_epoch = ckpt["epoch"] + 1
        rng = np.random.default_rng([tc.seed, start_epoch])
        torch.manual_seed(tc.seed + start_epoch)

    began = time.perf_counter()
    for epoch in range(start_epoch, tc.epochs):
        model.train()
        order = rng.permutation(n)
        total, count, t0 = 0.0, 0, time.perf_counter()
        bar = tqdm(range(steps), desc=f"{cfg.model_name} epoch {epoch + 1}/{tc.epochs}", unit="step",
                   disable=not progress, leave=False)
        for step in bar:
            b = batch_tensors(enc, np.sort(order[step * tc.batch_size:(step + 1) * tc.batch_size]))
            mask = b["cand_mask"]
            loss = F.binary_cross_entropy_with_logits(model(b)[mask], b["labels"][mask])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            total += loss.item() * int(mask.sum())
            count += int(mask.sum())
            if step % 20 == 0:
                bar.set_postfix(loss=f"{total / max(count, 1):.4f}")
        seconds = time.perf_counter() - t0
        auc = validation_auc(model, space, val_rows, val_enc) if val_rows else None
        log["epochs"].append({"epoch": epoch + 1, "loss": round(total / max(count, 1), 5), "val_auc": auc,
                              "seconds": round(seconds, 2), "candidates_per_s": round(count / seconds, 1)})
        score = auc if auc is not None else epoch  # no validation: keep the last epoch
        if score > best["auc"]:
            best = {"auc": score, "epoch": epoch + 1,
                    "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
        if progress:
            tqdm.write(f"{cfg.model_name} epoch {epoch + 1}: loss {log['epochs'][-1]['loss']:.4f}  "
                       f"val macro AUC {auc if auc is None else round(auc, 4)}  {seconds:.1f} s")
        if ckpt_path is not None:
            atomic_save({"config": cfg.to_dict(), "epoch": epoch, "state_dict": model.state_dict(),
                         "optimizer": opt.state_dict(), "schedule": schedule.state_dict(), "best_auc": best["auc"], "best_epoch": best["epoch"],
                         "best_state": best["state"], "epochs": log["epochs"]}, ckpt_path)
        if best["epoch"] <= epoch + 1 - tc.patience:
            break
    model.load_state_dict(best["state"])
    model.eval()
    log.update(best_epoch=best["epoch"], best_val_auc=best["auc"] if val_rows else None,
               seconds=round(time.perf_counter() - began, 2))
    if out is not None:
        atomic_save(model_payload(cfg, space, model, {"train_log": json.dumps(log)}), out / MODEL_FILE)
        atomic_write_text(out / LOG_FILE, json.dumps(log, indent=2) + "\n")
    return model, space, log
