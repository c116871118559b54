"""The ablation table of the classic rankers, every row measured on the same test requests.

| comparison | what changes |
|---|---|
| cross layers | LiRank with DCNv2 low-rank cross layers vs Residual DCN |
| dense gating | LiRank without vs with h * sigmoid(W h) on the MLP |
| isotonic calibration | LiRank without vs with the calibration layer: ECE (and AUC) |
| embeddings | the full LiRank scored with fp32 vs 8-bit middle-max embedding tables: AUC delta, size ratio |
| vocabulary | LiRank with one row per id vs QR-compressed id tables: AUC, rows, compression ratio |
| LiGR set-wise attention | LiGR without vs with attention among the candidates of a request |

Each variant starts from the shipped config (``configs/baselines/{lirank,ligr}.yaml``) plus the
caller's overrides, is trained once per seed and saved under ``OUT/models/``; a variant whose saved
config matches is loaded instead of retrained, so an interrupted run picks up where it stopped.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from recbrew import config
from recbrew.baselines.config import run_config
from recbrew.baselines.features import load_rows
from recbrew.baselines.metrics import evaluate
from recbrew.baselines.quantize import quantize_embeddings
from recbrew.baselines.scorer import MODEL_FILE, ModelScorer, load_model
from recbrew.baselines.train import train_model
from recbrew.data.io import atomic_write_text

#: variant -> (model, overrides on top of its shipped config).
VARIANTS = {
    "lirank": ("lirank", []),
    "lirank_dcnv2_cross": ("lirank", ["model.rdcn=false"]),
    "lirank_no_gating": ("lirank", ["model.dense_gating=false"]),
    "lirank_no_calibration": ("lirank", ["model.calibration=false"]),
    "lirank_full_vocabulary": ("lirank", ["features.qr=false"]),
    "ligr": ("ligr", ["model.setwise=false"]),
    "ligr_setwise": ("ligr", ["model.setwise=true"]),
}


def _train_or_load(variant: str, seed: int, examples: Path, out: Path, overrides: list[str], rows: list[dict],
                   progress: bool):
    model_name, own = VARIANTS[variant]
    cfg = run_config(model_name, config.shipped_or_none("baselines", model_name), [*overrides, *own, f"train.seed={seed}"])
    folder = out / "models" / f"{variant}-seed{seed}"
    if (folder / MODEL_FILE).is_file():
        model, space, payload = load_model(folder)
        if payload["config"] == cfg.to_dict():
            return model, space
    model, space, _ = train_model(cfg, examples, folder, rows=rows, progress=progress)
    return model, space


def _mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return round(float(np.mean(values)), 4) if values else None


def _std(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return round(float(np.std(values)), 4) if len(values) > 1 else None


def run_ablation(examples: str | Path, out: str | Path, overrides: list[str] | None = None, seeds: int = 1,
                 progress: bool = True, variants: list[str] | None = None) -> dict:
    """Train the variants, score them on the test split, write ``ablation.md`` and ``ablation.json``."""
    torch.set_num_threads(1)
    examples, out = Path(examples), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train_rows = load_rows(examples, "train", split_tag="T1")
    test_rows = load_rows(examples, "test")
    names = variants or list(VARIANTS)
    runs: dict[str, list[dict]] = {v: [] for v in names}
    bar = tqdm(total=len(names) * seeds, desc="ablation", unit="model", disable=not progress)
    for seed in range(seeds):
        for variant in names:
            model, space = _train_or_load(variant, seed, examples, out, overrides or [], train_rows, progress)
            result = evaluate(ModelScorer(variant, model, space), test_rows)
            run = {"seed": seed, "macro_auc": result["macro_auc"], "ece": result["ece_t1_binary"],
                   "compression": space.compression(),
                   "embedding_parameters": sum(p.numel() for p in model.embeddings.parameters())}
            if variant == "lirank":
                quantized = copy.deepcopy(model)
                sizes = quantize_embeddings(quantized.embeddings, bits=8)
                q = evaluate(ModelScorer(variant + "-int8", quantized, space), test_rows)
                run["int8"] = {"macro_auc": q["macro_auc"], "ece": q["ece_t1_binary"], **sizes}
            runs[variant].append(run)
            bar.update(1)
    bar.close()
    table = summarize(runs)
    result = {"examples": str(examples), "seeds": seeds, "overrides": overrides or [], "rows": table, "runs": runs}
    result["markdown"] = render_markdown(table, seeds)
    for name, text in (("ablation.json", json.dumps({k: v for k, v in result.items() if k != "markdown"}, indent=2)),
                       ("ablation.md", result["markdown"])):
        atomic_write_text(out / name, text + "\n")
    return result


def _macros(runs: list[dict], tag: str = "T1", key: str | None = None) -> list[float | None]:
    return [(r[key] if key else r)["macro_auc"][tag] for r in runs]


def summarize(runs: dict[str, list[dict]]) -> list[dict]:
    """One row per comparison: the two sides' macro AUCs (T1, T2), their delta, and what else it measures."""
    rows = []

    def pair(comparison: str, a: str, b: str, label_a: str, label_b: str, **extra):
        if a not in runs or b not in runs:
            return
        row = {"comparison": comparison, "a": label_a, "b": label_b}
        for tag in ("T1", "T2"):
            row[f"auc_a_{tag}"], row[f"auc_b_{tag}"] = _mean(_macros(runs[a], tag)), _mean(_macros(runs[b], tag))
        row["auc_b_T1_std"] = _std(_macros(runs[b], "T1"))
        deltas = [y - x for x, y in zip(_macros(runs[a]), _macros(runs[b]), strict=True) if x is not None and y is not None]
        row["delta_T1"] = _mean(deltas)
        row.update(extra)
        rows.append(row)

    pair("cross layers", "lirank_dcnv2_cross", "lirank", "DCNv2 cross", "Residual DCN")
    pair("dense gating", "lirank_no_gating", "lirank", "off", "on")
    if "lirank_no_calibration" in runs and "lirank" in runs:
        pair("isotonic calibration", "lirank_no_calibration", "lirank", "off", "on",
             ece_a=_mean([r["ece"] for r in runs["lirank_no_calibration"]]),
             ece_b=_mean([r["ece"] for r in runs["lirank"]]))
    if "lirank" in runs:
        base = runs["lirank"]
        deltas = [r["int8"]["macro_auc"]["T1"] - r["macro_auc"]["T1"] for r in base]
        rows.append({"comparison": "embedding tables", "a": "fp32", "b": "int8 middle-max",
                     "auc_a_T1": _mean(_macros(base)), "auc_b_T1": _mean(_macros(base, key="int8")),
                     "auc_a_T2": _mean(_macros(base, "T2")), "auc_b_T2": _mean(_macros(base, "T2", key="int8")),
                     "delta_T1": round(float(np.mean(deltas)), 5), "max_abs_delta_T1": round(float(np.max(np.abs(deltas))), 5),
                     "size_ratio": base[0]["int8"]["size_ratio"], "fp32_bytes": base[0]["int8"]["fp32_bytes"],
                     "quantized_bytes": base[0]["int8"]["quantized_bytes"]})
    if "lirank_full_vocabulary" in runs and "lirank" in runs:
        comp = runs["lirank"][0]["compression"]["total"]
        pair("id vocabulary", "lirank_full_vocabulary", "lirank", "full", "QR",
             id_rows_a=comp["ids"], id_rows_b=comp["rows"], compression_ratio=comp["ratio"],
             embedding_parameters_a=runs["lirank_full_vocabulary"][0]["embedding_parameters"],
             embedding_parameters_b=runs["lirank"][0]["embedding_parameters"])
    pair("LiGR set-wise attention", "ligr", "ligr_setwise", "off", "on")
    return rows


def _signed(v: float | None) -> str:
    return "-" if v is None else f"{v:+.4f}"


def render_markdown(rows: list[dict], seeds: int) -> str:
    lines = [f"Macro AUC on the test requests (T1 tasks; T2 in brackets), mean over {seeds} seed(s); "
             "delta = B - A on T1.", "",
             "| comparison | A | B | AUC A | AUC B | delta | other |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        other = []
        if "ece_a" in r:
            other.append(f"ECE {r['ece_a']} -> {r['ece_b']}")
        if "size_ratio" in r:
            other.append(f"size ratio {r['size_ratio']} ({r['quantized_bytes']:,} / {r['fp32_bytes']:,} bytes), "
                         f"max |delta| {r['max_abs_delta_T1']}")
        if "compression_ratio" in r:
            other.append(f"id rows {r['id_rows_a']:,} -> {r['id_rows_b']:,} (x{r['compression_ratio']}), embedding "
                         f"parameters {r['embedding_parameters_a']:,} -> {r['embedding_parameters_b']:,}")
        if r.get("auc_b_T1_std") is not None:
            other.append(f"std(B) {r['auc_b_T1_std']}")
        lines.append(f"| {r['comparison']} | {r['a']} | {r['b']} | {r['auc_a_T1']} ({r['auc_a_T2']}) | "
                     f"{r['auc_b_T1']} ({r['auc_b_T2']}) | {_signed(r['delta_T1'])} | {'; '.join(other)} |")
    return "\n".join(lines)
