"""The eval report in three forms: JSON (everything), Markdown (the tables) and self-contained HTML
(tables plus figures embedded as base64 PNG, inline CSS, no external URL).

The HTML ends with a one-line script that marks ``<body data-rendered="1">`` once it has run, so a
headless browser's DOM dump proves the page loaded and ran without error.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from recbrew.data.io import atomic_write_text
from recbrew.eval.compare import SLICES, TAGS, fmt_delta, verdict
from recbrew.eval.plots import reliability_figure, slice_figure
from recbrew.reports import CSS, fmt, html_table, img, md_table

WIN = "★"
RENDERED_MARK = 'data-rendered="1"'
SLICE_TITLES = {"split_tag": "T1 (in-domain) vs T2 (out-of-domain) tasks",
                "cold_start": "Cold start: member's interactions before the request",
                "days_from_cutoff": "Days after the training cutoff",
                "history_length": "History length (interactions shown)"}


def fmt_ci(ci) -> str:
    return "" if not ci else f" [{ci[0]:.3f}, {ci[1]:.3f}]"


def unit_text(results: dict) -> str:
    """What the bootstrap resampled, e.g. 'members within each task' or 'members within each task
    (requests in feed_like, where no member has two requests)'."""
    units = {t: e.get("unit") for t, e in results["tasks"].items() if e.get("unit")}
    names = {"member": "members", "request": "requests", "record": "records (single candidates)"}
    if not units:
        return "requests within each task"
    main = max(names, key=lambda u: (sum(v == u for v in units.values()), u == "member"))
    other = sorted(t for t, u in units.items() if u != main)
    text = f"{names[main]} within each task"
    if other:
        minor = "request" if main == "member" else "member"
        why = {"request": ", where no member has two requests", "member": ", where members have several requests"}
        text += (f" ({names[minor]} in {', '.join(other)}"
                 f"{why[minor] if results['config'].get('unit') == 'auto' else ''})")
    return text


def bootstrap_note(results: dict) -> str:
    """One sentence on the intervals: level, resamples, unit, seed."""
    cfg = results["config"]
    if not cfg["bootstrap"]:
        return "No bootstrap intervals (bootstrap = 0)."
    return (f"Brackets hold {cfg['level'] * 100:g}% percentile bootstrap intervals from {cfg['bootstrap']} "
            f"resamples (seed {cfg['seed']}, the same for every model) of {unit_text(results)}.")


def task_note(entry: dict) -> str:
    return "; ".join(entry.get("notes") or [])


def winners(entry: dict, oracle: str | None) -> set[str]:
    """Models with the best headline value of a task (AUC, or exact match for generative), oracle excluded, and
    only if it beats the trivial baseline (AUC 0.5; the most frequent answer's exact match): no star for a task
    every model fails."""
    key = "exact" if entry["kind"] == "generative" else "auc"
    floor = (entry.get("trivial") or {}).get("exact") if key == "exact" else 0.5
    values = {n: m[key] for n, m in entry["models"].items()
              if m and m.get(key) is not None and n != oracle and m[key] > (floor or 0.0)}
    if not values:
        return set()
    best = max(values.values())
    return {n for n, v in values.items() if v == best}


def task_cell(entry: dict, name: str, with_ci: bool = True) -> str:
    m = entry["models"].get(name)
    if m is None:
        return "n/a"
    if entry["kind"] == "generative":
        return f"EM {fmt(m['exact'], 3)} / F1 {fmt(m['f1'], 3)}"
    return fmt(m["auc"]) + (fmt_ci(m["ci"].get("auc")) if with_ci else "")


def task_rows(results: dict) -> list[tuple[str, dict]]:
    """Tasks ordered T1 first, then by name."""
    return sorted(results["tasks"].items(), key=lambda kv: (kv[1]["split_tag"], kv[0]))


SUMMARY_COLUMNS = [("auc_T1", "macro AUC T1"), ("tasks_T1", "T1 tasks"), ("auc_T2", "macro AUC T2"),
                   ("tasks_T2", "T2 tasks"), ("oracle_gap_T1", "gap to oracle T1"),
                   ("oracle_gap_T2", "gap to oracle T2"), ("gauc_T1", "group AUC T1"), ("ndcg_T1", "NDCG@k T1"),
                   ("mrr_T1", "MRR T1"), ("ece_binary", "ECE (binary)"), ("exact", "generative EM"),
                   ("f1", "generative F1")]
#: Macro averages whose cell also says over how many tasks they average.
COUNTED = ("gauc_T1", "ndcg_T1", "mrr_T1", "gauc_T2", "ndcg_T2", "mrr_T2")
DETAIL_COLUMNS = [("auc", "AUC"), ("gauc", "group AUC"), ("ndcg", "NDCG@k"), ("recall", "Recall@k"), ("mrr", "MRR"),
                  ("acc1", "Acc@1"), ("log_loss", "log loss"), ("ece", "ECE"), ("oracle_gap", "gap to oracle")]


def summary_cell(row: dict, key: str) -> str:
    if key in ("tasks_T1", "tasks_T2"):
        tag = key[-2:]
        n = row.get("n_tasks", {}).get(f"auc_{tag}", 0)
        flagged = row.get(f"flagged_{tag}", 0)
        return f"{n}" + (f" ({flagged} flagged)" if flagged else "")
    if key in ("auc_T1", "auc_T2"):
        return fmt(row.get(key)) + fmt_ci(row.get(f"{key}_ci"))
    if key in COUNTED and row.get(key) is not None:
        return f"{fmt(row[key])} ({row['n_tasks'][key]})"
    return fmt(row.get(key))


def summary_rows(results: dict) -> list[list[str]]:
    return [[name] + [summary_cell(results["summary"][name], key) for key, _ in SUMMARY_COLUMNS]
            for name in results["models"]]


def summary_note(results: dict, min_positives: int) -> str:
    return (f"Macro averages weigh every task alike; T1/T2 tasks: how many tasks the macro AUC averages, flagged: "
            f"of them, tasks with fewer than {min_positives} positives. Rank metrics (group AUC, NDCG, MRR) count "
            "only requests with at least two candidates; their task count is in parentheses.")


def paired_rows(results: dict) -> list[list[str]]:
    paired = results.get("paired") or {}
    out = []
    for name, d in paired.get("rows", {}).items():
        out.append([name] + [c for tag in TAGS for c in (fmt_delta(d[f"delta_{tag}"], d[f"ci_{tag}"]),
                                                          str(d[f"n_{tag}_tasks"]), verdict(d, tag))])
    return out


PAIRED_HEADER = ["model", "Δ macro AUC T1", "T1 tasks", "T1 verdict", "Δ macro AUC T2", "T2 tasks", "T2 verdict"]


def paired_note(results: dict) -> str:
    paired = results["paired"]
    cfg = results["config"]
    head = f"Δ = model minus {paired['reference']} ({paired['rule']}), macro AUC over the tasks both scored; "
    if not cfg["bootstrap"]:
        return head + "no intervals (bootstrap = 0), so no verdicts."
    return head + (f"{cfg['level'] * 100:g}% interval of the paired bootstrap: both models on the same "
                   f"{cfg['bootstrap']} resamples of {unit_text(results)}. A verdict names a winner only when the "
                   "interval excludes 0.")


def task_count_cells(entry: dict) -> list[str]:
    """requests, candidates, positives (candidates and positives n/a for generative tasks)."""
    return [str(entry["requests"]), str(entry.get("candidates", "n/a")), str(entry.get("positives", "n/a"))]


def slice_rows(results: dict, dim: str) -> list[list[str]]:
    def cell(b: dict, n: str) -> str:
        ci = (b.get("interval") or {}).get(n)
        return fmt(b["macro_auc"].get(n)) + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")

    return [[b["bucket"], str(b["requests"])] + [cell(b, n) for n in results["models"]]
            for b in results["slices"][dim]["buckets"]]


def slice_paired(results: dict, dim: str) -> tuple[str, list[str], list[list[str]]] | None:
    """The note, header and rows of a slice's paired differences to the reference (None without them)."""
    buckets = [b for b in results["slices"][dim]["buckets"] if b.get("paired")]
    if not buckets or not results.get("paired"):
        return None
    ref = results["paired"]["reference"]
    names = [n for n in results["models"] if any(n in b["paired"] for b in buckets)]
    rows = [[b["bucket"], str(b["requests"])]
            + [fmt_delta(b["paired"][n]["delta"], b["paired"][n]["ci"]) if n in b["paired"] else "n/a"
               for n in names] for b in buckets]
    level = results["paired"].get("level", 0.95)
    note = (f"Δ = model minus {ref} in each bucket, with the {level * 100:g}% interval of the paired bootstrap "
            "(both models on the same resamples of the bucket's members or requests).")
    return note, ["bucket", "requests"] + [f"Δ {n}" for n in names], rows


def diversity_rows(results: dict) -> list[list[str]]:
    out = []
    for name in results["models"]:
        d = results["diversity"][name]
        out.append([name, str(d["requests"]), fmt(d["topic_diversity"]), fmt(d["item_coverage"]),
                    fmt(d["company_coverage"])])
    return out


RANKINGS_NOTE = ("One test request of each task (the first with a positive and a negative): the member, the items that were positive, and each model's "
                 "top items, in the ids of the imported logs. scores.csv beside this report holds every candidate's "
                 "score per model.")


def ranking_rows(results: dict, k: int, esc) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the example rankings table (one row per request and model)."""
    rows = []
    for r in results["rankings"]:
        positives = ", ".join(str(p) for p in r["positives"]) or "-"
        for j, (name, top) in enumerate(r["top"].items()):
            head = [r["task"], str(r["member"]), f"{r['candidates']}", positives] if j == 0 else ["", "", "", ""]
            rows.append([esc(c) for c in head + [name, ", ".join(str(t) for t in top)]])
    return ["task", "member", "candidates", "positives", "model", f"top {k}"], rows


def meta_rows(meta: dict) -> list[list[str]]:
    rows = [["examples", str(meta.get("examples"))], ["data seed", str(meta.get("data_seed"))],
            ["split cutoff", str(meta.get("cutoff"))], ["requests", str(meta.get("requests"))],
            ["created", str(meta.get("created"))]]
    rows += [[f"model {m['name']}", f"{m['kind']}: {m['spec']} (fingerprint {m['fingerprint']}, "
              f"{'cached' if m.get('cached') else 'scored'} in {m.get('seconds', 0):.1f} s"
              f"{' on Ray' if m.get('engine') == 'ray' else ''})"]
             for m in meta.get("models", [])]
    rows += [["versions", ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items())]]
    rows += [["task versions", ", ".join(f"{k} v{v}" for k, v in sorted(meta.get("task_versions", {}).items()))]]
    return rows


def render_markdown(results: dict, meta: dict) -> str:
    names, oracle, k = results["models"], results["oracle"], results["config"]["k"]
    min_pos = results["config"].get("min_positives", 20)
    parts = ["# recbrew eval report", "",
             f"{len(names)} models on the same {meta.get('requests')} test requests of `{meta.get('examples')}`. "
             f"{WIN} marks the best model of a task (oracle excluded). {bootstrap_note(results)} k = {k}.", "",
             "## Summary", "", md_table(["model"] + [h for _, h in SUMMARY_COLUMNS], summary_rows(results)), "",
             summary_note(results, min_pos), ""]
    if results.get("paired") and results["paired"]["rows"]:
        parts += [f"## Paired comparison with {results['paired']['reference']}", "", paired_note(results), "",
                  md_table(PAIRED_HEADER, paired_rows(results)), ""]
    parts += ["## Models x tasks (AUC; generative: exact match / token F1)", "",
              f"requests, candidates and positives of each task; a task with fewer than {min_pos} positives is "
              "flagged in the note and still counted in the macro averages.", ""]
    rows = []
    for task, entry in task_rows(results):
        win = winners(entry, oracle)
        rows.append([task, entry["split_tag"], entry["kind"]] + [
            (f"**{task_cell(entry, n)}** {WIN}" if n in win else task_cell(entry, n)) for n in names]
            + task_count_cells(entry) + [task_note(entry)])
    parts += [md_table(["task", "tag", "kind"] + names + ["requests", "candidates", "positives", "note"], rows), ""]
    for dim in ("split_tag", *SLICES):
        note = results["slices"][dim].get("note")
        parts += [f"## {SLICE_TITLES[dim]} (macro AUC)", "",
                  f"{note[:1].upper()}{note[1:]}." if note else md_table(["bucket", "requests"] + names,
                                                                           slice_rows(results, dim)), ""]
        paired = None if note else slice_paired(results, dim)
        if paired:
            parts += [paired[0], "", md_table(paired[1], paired[2]), ""]
    if results.get("rankings"):
        parts += [f"## Example rankings (top {k} of each model)", "", RANKINGS_NOTE, "",
                  md_table(*ranking_rows(results, k, str)), ""]
    parts += [f"## Top-{k} diversity (requests with more than {k} candidates)", "",
              md_table(["model", "lists", "topic diversity", "item coverage", "company coverage"],
                        diversity_rows(results)), "",
              "## Run", "", md_table(["", ""], meta_rows(meta)), ""]
    return "\n".join(parts)


def _escaped(rows: list[list[str]]) -> list[list[str]]:
    return [[html.escape(c) for c in r] for r in rows]


def _html_head(results: dict, meta: dict) -> list[str]:
    """The page's head, title, lead paragraph and summary table, and the paired comparison if there is one."""
    esc = html.escape
    names, k = results["models"], results["config"]["k"]
    min_pos = results["config"].get("min_positives", 20)
    out = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>recbrew eval report</title>"
           f"<style>{CSS}</style></head><body>", "<h1>recbrew eval report</h1>",
           f"<p class='note'>{len(names)} models on the same {meta.get('requests')} test requests of "
           f"<code>{esc(str(meta.get('examples')))}</code>. Green cells ({WIN}) are the best model of a task "
           f"(oracle excluded). {esc(bootstrap_note(results))} k = {k}.</p>",
           "<h2>Summary</h2>",
           html_table(["model"] + [h for _, h in SUMMARY_COLUMNS], _escaped(summary_rows(results))),
           f"<p class='note'>{esc(summary_note(results, min_pos))}</p>"]
    if results.get("paired") and results["paired"]["rows"]:
        out += [f"<h2>Paired comparison with {esc(results['paired']['reference'])}</h2>",
                f"<p class='note'>{esc(paired_note(results))}</p>",
                html_table(PAIRED_HEADER, _escaped(paired_rows(results)))]
    return out


def _html_task_row(entry: dict, task: str, names: list[str], oracle: str | None) -> tuple[list[str], list[str]]:
    """One task's cells of the models x tasks table (AUC with its interval, the winners starred) and classes."""
    esc = html.escape
    win = winners(entry, oracle)
    cells, cls = [esc(task), entry["split_tag"], entry["kind"]], ["", "", ""]
    for n in names:
        m = entry["models"].get(n)
        text = esc(task_cell(entry, n, with_ci=False))
        if m and entry["kind"] != "generative" and m["ci"].get("auc"):
            text += f" <span class='ci'>{esc(fmt_ci(m['ci']['auc']).strip())}</span>"
        cells.append(text + (f" {WIN}" if n in win else ""))
        cls.append("win" if n in win else "")
    cells += [esc(c) for c in task_count_cells(entry)] + [esc(task_note(entry))]
    cls += ["", "", "", "flag" if entry.get("flagged") else "note"]
    return cells, cls


def _html_tasks(results: dict) -> list[str]:
    """The models x tasks table, flagged tasks shaded."""
    names, oracle = results["models"], results["oracle"]
    min_pos = results["config"].get("min_positives", 20)
    head = ("<h2>Models x tasks</h2><p class='note'>AUC over candidates (listwise: over slots); generative tasks: "
            "exact match / token F1 of greedy generation, n/a for models that cannot generate. Shaded rows are "
            f"tasks with fewer than {min_pos} positives: shown, and counted in the macro averages, but weak "
            "evidence.</p>")
    rows, classes = [], []
    for task, entry in task_rows(results):
        cells, cls = _html_task_row(entry, task, names, oracle)
        rows.append(cells)
        classes.append(cls)
    return [head, html_table(["task", "tag", "kind"] + [html.escape(n) for n in names]
                             + ["requests", "candidates", "positives", "note"], rows, classes,
                             [entry.get("flagged", False) for _, entry in task_rows(results)])]


def _html_details(results: dict) -> list[str]:
    """Every ranked task's metrics, one folded table per model."""
    esc = html.escape
    out = ["<h2>Per-task metrics by model</h2><p class='note'>Rank metrics (group AUC, NDCG, Recall, MRR, "
           "Acc@1) over requests with at least two candidates; n/a where there are none.</p>"]
    for n in results["models"]:
        rows = []
        for task, entry in task_rows(results):
            m = entry["models"].get(n)
            if entry["kind"] == "generative" or m is None:
                continue
            rows.append([esc(task), entry["split_tag"]] + [fmt(m.get(key)) for key, _ in DETAIL_COLUMNS]
                        + [esc(task_note(entry))])
        out.append(f"<details><summary>{esc(n)}</summary>"
                   + html_table(["task", "tag"] + [h for _, h in DETAIL_COLUMNS] + ["note"], rows) + "</details>")
    return out


def _html_slices(results: dict) -> list[str]:
    """The reliability diagrams, then each slice's table, paired differences and figure (or why it has none)."""
    esc = html.escape
    names = results["models"]
    out = ["<h2>Reliability (binary tasks pooled)</h2>",
           img(reliability_figure(results["summary"]), "reliability diagrams")]
    for dim in ("split_tag", *SLICES):
        out.append(f"<h2>{esc(SLICE_TITLES[dim])}</h2>")
        if results["slices"][dim].get("note"):
            out.append(f"<p class='note'>{esc(results['slices'][dim]['note'])}</p>")
            continue
        out.append(html_table(["bucket", "requests"] + [esc(n) for n in names], _escaped(slice_rows(results, dim))))
        paired = slice_paired(results, dim)
        if paired:
            out.append(f"<p class='note'>{esc(paired[0])}</p>")
            out.append(html_table([esc(h) for h in paired[1]], _escaped(paired[2])))
        out.append(img(slice_figure(SLICE_TITLES[dim], results["slices"][dim]["buckets"], names), dim))
    return out


def _html_tail(results: dict, meta: dict) -> list[str]:
    """Example rankings, top-k diversity, the run's details and the script that marks the page rendered."""
    esc = html.escape
    k = results["config"]["k"]
    out = []
    if results.get("rankings"):
        header, rows = ranking_rows(results, k, esc)
        out += [f"<h2>Example rankings</h2><p class='note'>{esc(RANKINGS_NOTE)}</p>", html_table(header, rows)]
    out.append(f"<h2>Top-{k} diversity</h2><p class='note'>Requests with more than {k} candidates; topic "
               "diversity = 1 - share of same-topic pairs in a top-k list; coverage = distinct items (companies) "
               "in the top-k lists / in all candidates.</p>")
    out.append(html_table(["model", "lists", "topic diversity", "item coverage", "company coverage"],
                          _escaped(diversity_rows(results))))
    out.append("<h2>Run</h2>" + html_table(["", ""], [[esc(a), esc(b)] for a, b in meta_rows(meta)]))
    out.append('<script>document.body.setAttribute("data-rendered","1");</script></body></html>')
    return out


def render_html(results: dict, meta: dict) -> str:
    """The self-contained HTML report: tables, figures as base64 PNG, inline CSS."""
    return "\n".join(_html_head(results, meta) + _html_tasks(results) + _html_details(results)
                     + _html_slices(results) + _html_tail(results, meta))


def write_report(out_dir: str | Path, results: dict, meta: dict) -> dict[str, Path]:
    """report.json, report.md and report.html under ``out_dir``, each written aside then renamed."""
    out_dir = Path(out_dir)
    doc = {"meta": meta, **results}
    return {"json": atomic_write_text(out_dir / "report.json", json.dumps(doc, indent=1, default=str)),
            "md": atomic_write_text(out_dir / "report.md", render_markdown(results, meta)),
            "html": atomic_write_text(out_dir / "report.html", render_html(results, meta))}
