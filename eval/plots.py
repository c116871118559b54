"""Figures for the reports, rendered with matplotlib (Agg) into base64 PNG strings for self-contained HTML."""

from __future__ import annotations

import numpy as np

from recbrew.reports import pyplot, to_base64


def reliability_figure(summary: dict[str, dict]) -> str | None:
    """One reliability diagram per model (binary tasks pooled): observed rate vs mean predicted probability."""
    models = [m for m, row in summary.items() if any(c for c in row["reliability"]["count"] if c)]
    if not models:
        return None
    plt = pyplot()
    cols = min(4, len(models))
    rows = -(-len(models) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, models, strict=False):
        rel = summary[name]["reliability"]
        count = np.array([c or 0 for c in rel["count"]], dtype=float)
        ok = count > 0
        mp = np.array([np.nan if v is None else v for v in rel["mean_prob"]], dtype=float)
        rate = np.array([np.nan if v is None else v for v in rel["rate"]], dtype=float)
        ax.plot([0, 1], [0, 1], color="#999", lw=1, ls="--")
        ax.scatter(mp[ok], rate[ok], s=10 + 90 * count[ok] / count.max(), color="#1f77b4", zorder=3)
        ax.plot(mp[ok], rate[ok], color="#1f77b4", lw=1)
        ece = summary[name].get("ece_binary")
        ax.set_title(f"{name}  ECE {ece:.3f}" if ece is not None else name, fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("mean predicted probability", fontsize=8)
        ax.set_ylabel("observed rate", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(models):]:
        ax.axis("off")
    fig.tight_layout()
    return to_base64(fig)


def slice_figure(title: str, buckets: list[dict], models: list[str]) -> str | None:
    """Grouped bars: macro AUC of each model per bucket of one slice."""
    if not buckets or not models:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.2 + 1.3 * len(buckets), 2.8))
    width = 0.8 / len(models)
    x = np.arange(len(buckets))
    for j, name in enumerate(models):
        values = [b["macro_auc"].get(name) for b in buckets]
        ax.bar(x + j * width - 0.4 + width / 2, [np.nan if v is None else v for v in values], width, label=name)
    ax.set_xticks(x, [f"{b['bucket']}\n({b['requests']})" for b in buckets], fontsize=7)
    ax.set_ylim(0.4, 1.0)
    ax.axhline(0.5, color="#999", lw=0.8, ls="--")
    ax.set_ylabel("macro AUC", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    return to_base64(fig)


def trend_figure(title: str, xlabel: str, series: dict[str, list[tuple[float, float]]],
                 fits: dict[str, dict | None], log_x: bool = True) -> str:
    """Metric vs size per series, with the fitted log-linear trend as a dashed line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 3.2))
    for name, points in series.items():
        pts = sorted((x, y) for x, y in points if y is not None)
        if not pts:
            continue
        xs, ys = zip(*pts, strict=True)
        line = ax.plot(xs, ys, marker="o", label=name)[0]
        fit = fits.get(name)
        if fit:
            grid = np.geomspace(min(xs), max(xs), 50) if log_x else np.linspace(min(xs), max(xs), 50)
            ax.plot(grid, fit["intercept"] + fit["slope"] * np.log10(grid), ls="--", color=line.get_color(), lw=1)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel("macro AUC", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    return to_base64(fig)
