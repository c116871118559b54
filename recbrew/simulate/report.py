"""The simulation report: per-policy totals, per-day curves (regret, positives, AUC, new items) and, with
--compare-full, incremental against full retraining; as JSON, Markdown and self-contained HTML, written
with the eval report's helpers."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from recbrew.data.io import atomic_write_text
from recbrew.reports import CSS, fmt, html_table, img, md_table, pyplot, to_base64

SUMMARY_HEADER = ["policy", "positives", "expected positives", "regret", "mean AUC", "coverage",
                  "new-item share", "new items shown", "update s/day"]


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def summarize(cfg, metrics: dict[str, list[dict]], warmup: dict) -> dict:
    """Per-day metrics with cumulative positives and regret (against the oracle policy, when it ran), and totals."""
    oracle = metrics.get("oracle")
    oracle_expected = {m["day"]: m["expected_positives"] for m in oracle} if oracle else {}
    policies = {}
    for name, days in metrics.items():
        cum_pos = cum_exp = cum_regret = 0.0
        rows = []
        for m in days:
            cum_pos += m["positives"]
            cum_exp += m["expected_positives"]
            regret = (oracle_expected[m["day"]] - m["expected_positives"]) if m["day"] in oracle_expected else None
            if regret is not None:
                cum_regret += regret
            rows.append({**m, "cumulative_positives": int(cum_pos), "cumulative_expected": round(cum_exp, 3),
                         "regret": None if regret is None else round(regret, 3),
                         "cumulative_regret": None if regret is None else round(cum_regret, 3)})
        content = [m["impressions"] for m in days]
        policies[name] = {
            "days": rows,
            "positives": int(cum_pos), "expected_positives": round(cum_exp, 2),
            "regret": round(cum_regret, 2) if oracle_expected else None,
            "mean_auc": _mean(m["auc"] for m in days),
            "coverage": _mean(m["coverage"] for m in days),
            "new_item_share": (float(np.average([m["new_item_share"] for m in days], weights=content))
                               if days and sum(content) else None),
            "new_items_shown": int(sum(m["new_items_shown"] for m in days)),
            "update_seconds": _mean(m.get("update_seconds") for m in days),
        }
    out = {"config": cfg.to_dict(), "warmup": warmup, "policies": policies}
    greedy = metrics.get("greedy") or []
    if greedy and "full_seconds" in greedy[0]:
        pairs = [(m["auc"], m["full_auc"]) for m in greedy if m["auc"] is not None and m["full_auc"] is not None]
        ratios = [m["update_seconds"] / m["full_seconds"] for m in greedy if m["full_seconds"]]
        out["incremental_vs_full"] = {
            "days": [{"day": m["day"], "incremental_seconds": m["update_seconds"], "full_seconds": m["full_seconds"],
                      "incremental_auc": m["auc"], "full_auc": m["full_auc"]} for m in greedy],
            "mean_incremental_seconds": _mean(m["update_seconds"] for m in greedy),
            "mean_full_seconds": _mean(m["full_seconds"] for m in greedy),
            "max_time_ratio": max(ratios) if ratios else None,
            "mean_time_ratio": _mean(ratios),
            "max_abs_auc_gap": max(abs(a - b) for a, b in pairs) if pairs else None,
            "mean_auc_gap": _mean(a - b for a, b in pairs),
        }
    return out


def summary_rows(results: dict) -> list[list[str]]:
    rows = []
    for name, p in results["policies"].items():
        rows.append([name, f"{p['positives']:,}", f"{p['expected_positives']:,.1f}",
                     "n/a" if p["regret"] is None else f"{p['regret']:,.1f}", fmt(p["mean_auc"]),
                     fmt(p["coverage"], 3), fmt(p["new_item_share"], 3), f"{p['new_items_shown']:,}",
                     fmt(p["update_seconds"], 2)])
    return rows


def daily_rows(results: dict, key: str, digits: int = 0) -> tuple[list[str], list[list[str]]]:
    names = list(results["policies"])
    days = sorted({m["day"] for p in results["policies"].values() for m in p["days"]})
    header = ["day", *names]
    rows = []
    for d in days:
        row = [str(d)]
        for n in names:
            m = next((m for m in results["policies"][n]["days"] if m["day"] == d), None)
            v = None if m is None else m.get(key)
            row.append("n/a" if v is None else (f"{v:,.{digits}f}" if isinstance(v, float) else f"{v:,}"))
        rows.append(row)
    return header, rows


def comparison_rows(results: dict) -> list[list[str]]:
    return [[str(d["day"]), fmt(d["incremental_seconds"], 2), fmt(d["full_seconds"], 2),
             fmt(d["incremental_seconds"] / d["full_seconds"] if d["full_seconds"] else None, 3),
             fmt(d["incremental_auc"]), fmt(d["full_auc"]),
             fmt(None if d["incremental_auc"] is None or d["full_auc"] is None
                 else d["incremental_auc"] - d["full_auc"])]
            for d in results["incremental_vs_full"]["days"]]


COMPARISON_HEADER = ["day", "incremental s", "full s", "ratio", "incremental AUC", "full AUC", "AUC gap"]


def comparison_note(results: dict) -> str:
    c = results["incremental_vs_full"]
    return (f"Greedy policy's logs. Incremental update: yesterday's model, one pass over the day; full: a fresh "
            f"model on all logs ({results['config']['full_epochs']} passes). Both AUCs on the same impressions the "
            f"next day. Time ratio mean {fmt(c['mean_time_ratio'], 3)}, max {fmt(c['max_time_ratio'], 3)}; AUC gap "
            f"mean {fmt(c['mean_auc_gap'])}, max |gap| {fmt(c['max_abs_auc_gap'])}.")


def _figure(results: dict, key: str, ylabel: str, title: str, extra: dict | None = None) -> str | None:
    series = {n: [(m["day"], m.get(key)) for m in p["days"] if m.get(key) is not None]
              for n, p in results["policies"].items()}
    series.update(extra or {})
    series = {n: s for n, s in series.items() if s}
    if not series:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 3.4))
    for name, points in series.items():
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker="o", ms=3, label=name)
    ax.set_xlabel("day", fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    return to_base64(fig)


def figures(results: dict) -> dict[str, str | None]:
    full = {}
    if "incremental_vs_full" in results:
        full = {"greedy (full retraining)": [(d["day"], d["full_auc"]) for d in results["incremental_vs_full"]["days"]
                                              if d["full_auc"] is not None]}
    return {
        "regret": _figure(results, "cumulative_regret", "cumulative regret (expected positives)",
                          "Regret against the oracle policy"),
        "positives": _figure(results, "cumulative_positives", "cumulative positive actions", "Positive actions"),
        "auc": _figure(results, "auc", "AUC on the day's impressions", "Ranker AUC (served scores)", full),
        "new_items": _figure(results, "new_item_share", "share of content impressions", "Exposure of new items"),
    }


def render_markdown(results: dict) -> str:
    cfg = results["config"]
    out = ["# recbrew simulate", "",
           f"{cfg['days']} days served by {len(results['policies'])} policies after {cfg['warmup_days']} warm-up "
           f"days; world: {cfg['members']} members, seed {cfg['world_seed']}; ranker {cfg['ranker']} "
           f"({cfg['training']} training); pool {cfg['pool_factor']}x the slate.", "",
           "## Policies", "", md_table(SUMMARY_HEADER, summary_rows(results)), "",
           "Regret: the oracle policy's expected positives (sum of true probabilities of what it showed) minus "
           "the policy's, summed over the days. New items: created at most "
           f"{cfg['new_item_days']} days before they are shown.", ""]
    if "incremental_vs_full" in results:
        out += ["## Incremental vs full retraining", "", comparison_note(results), "",
                md_table(COMPARISON_HEADER, comparison_rows(results)), ""]
    for key, title in (("cumulative_regret", "Cumulative regret"), ("positives", "Positive actions per day"),
                       ("auc", "AUC per day"), ("new_item_share", "New-item share per day")):
        header, rows = daily_rows(results, key, 3 if key != "positives" else 0)
        out += [f"## {title}", "", md_table(header, rows), ""]
    return "\n".join(out)


def render_html(results: dict) -> str:
    esc = html.escape
    figs = figures(results)
    md_intro = render_markdown(results).split("\n")[2]
    out = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>recbrew simulate</title>"
           f"<style>{CSS}</style></head><body>", "<h1>recbrew simulate</h1>", f"<p class='note'>{esc(md_intro)}</p>",
           "<h2>Policies</h2>", html_table(SUMMARY_HEADER, [[esc(c) for c in r] for r in summary_rows(results)]),
           img(figs["regret"], "regret"), img(figs["positives"], "positives"), img(figs["new_items"], "new items")]
    if "incremental_vs_full" in results:
        out += ["<h2>Incremental vs full retraining</h2>", f"<p class='note'>{esc(comparison_note(results))}</p>",
                html_table(COMPARISON_HEADER, comparison_rows(results))]
    out += ["<h2>AUC per day</h2>", img(figs["auc"], "auc")]
    header, rows = daily_rows(results, "positives")
    out += ["<h2>Positive actions per day</h2>", html_table(header, [[esc(c) for c in r] for r in rows])]
    out.append('<script>document.body.setAttribute("data-rendered","1");</script></body></html>')
    return "\n".join(out)


def write_report(out_dir: str | Path, results: dict) -> dict[str, Path]:
    """report.json, report.md and report.html under ``out_dir``, each written aside then renamed."""
    out_dir = Path(out_dir)
    return {"json": atomic_write_text(out_dir / "report.json", json.dumps(results, indent=1, default=str)),
            "md": atomic_write_text(out_dir / "report.md", render_markdown(results)),
            "html": atomic_write_text(out_dir / "report.html", render_html(results))}
