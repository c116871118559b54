"""`run_eval`: every model on the same test requests -> metrics -> report.html / report.md / report.json."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from recbrew.eval.compare import CompareConfig, compare
from recbrew.eval.report import fmt, write_report
from recbrew.eval.scorers import (
    Model,
    cache_path,
    describe,
    examples_fingerprint,
    load_cached,
    run_model,
    save_cached,
)
from recbrew.eval.table import RequestTable

from recbrew.errors import UserError

PACKAGES = ("recbrew", "numpy", "scikit-learn", "torch", "transformers", "peft", "datasets", "matplotlib")


@dataclass
class EvalResult:
    """Paths of the written reports, the full results and the T1/T2 macro-AUC table per model."""

    paths: dict[str, Path]
    results: dict
    meta: dict
    macro_auc: dict[str, dict[str, float | None]] = field(default_factory=dict)

    def table(self) -> str:
        """The macro-AUC table (T1, T2, gap to the oracle) as aligned text, for printing."""
        width = max([len(n) for n in self.macro_auc] + [5])
        lines = [f"{'model':{width}}  {'T1 AUC':>8}  {'T2 AUC':>8}  {'gap T1':>8}  {'gap T2':>8}"]
        for name, row in self.macro_auc.items():
            lines.append(f"{name:{width}}  {fmt(row['T1']):>8}  {fmt(row['T2']):>8}  "
                         f"{fmt(row.get('gap_T1')):>8}  {fmt(row.get('gap_T2')):>8}")
        return "\n".join(lines)


def versions() -> dict[str, str]:
    out = {}
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def run_eval(examples_dir: str | Path, models: Mapping[str, object] | Sequence[str], out_dir: str | Path, *,
             tasks: Sequence[str] | None = None, k: int = 3, bootstrap: int = 200, seed: int = 0,
             use_cache: bool = True, max_new_tokens: int = 16, progress: bool = True, device: str | None = None,
             include_oracle: bool = True) -> EvalResult:
    """Score ``models`` ({name: spec or Scorer}, or a list of specs) on the test split and write the reports.

    With ``include_oracle`` the oracle joins as a reference when the examples carry true probabilities.
    """
    examples = Path(examples_dir)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    from recbrew.eval.scorers import parse_models

    from recbrew.scoring.protocol import load_requests

    specs = dict(models) if isinstance(models, Mapping) else parse_models(list(models))
    requests = load_requests(examples, "test", tasks)
    if not requests:
        raise UserError(f"{examples}: no test requests" + (f" for tasks {', '.join(tasks)}" if tasks else ""))
    table = RequestTable.from_requests(requests)
    entries: list[Model] = [describe(name, spec) for name, spec in specs.items()]
    has_truth = all(r.get("true_probs") is not None and all(p == p for p in r["true_probs"] or []) for r in requests)
    oracle = next((m.name for m in entries if m.kind == "oracle"), None)
    if include_oracle and oracle is None and has_truth:
        entries.insert(0, describe("oracle", "oracle"))
        oracle = "oracle"

    manifest = json.loads((examples / "manifest.json").read_text())
    key_parts = {"examples": examples_fingerprint(examples), "tasks": sorted(tasks) if tasks else None,
                 "max_new_tokens": max_new_tokens}
    scores, generations, run_info = {}, {}, []
    for m in entries:
        path = cache_path(out, m, key_parts) if use_cache else None
        got = load_cached(path, table)
        if got is None:
            got = run_model(m, requests, table, examples=examples, max_new_tokens=max_new_tokens, progress=progress,
                            device=device)
            save_cached(path, table, got)
            m.release()
        scores[m.name] = got.scores
        generations[m.name] = got.generations if (m.can_generate or got.generations) else None
        run_info.append({"name": m.name, "spec": m.spec or type(m.scorer).__name__, "kind": m.kind,
                         "fingerprint": (m.fingerprint or "-")[:12], "cached": got.cached,
                         "seconds": round(got.seconds, 3)})

    results = compare(table, scores, generations, CompareConfig(k=k, bootstrap=bootstrap, seed=seed), oracle=oracle)
    meta = {"examples": str(examples), "data_seed": manifest.get("config", {}).get("seed"),
            "cutoff": manifest.get("split", {}).get("cutoff"), "requests": len(table),
            "task_versions": {t: manifest["tasks"][t]["version"] for t in table.tasks() if t in manifest.get("tasks", {})},
            "tasks": table.tasks(), "models": run_info, "versions": versions(),
            "created": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    paths = write_report(out, results, meta)
    summary = results["summary"]
    macro = {n: {"T1": summary[n]["auc_T1"], "T2": summary[n]["auc_T2"], "gap_T1": summary[n].get("oracle_gap_T1"),
                 "gap_T2": summary[n].get("oracle_gap_T2")} for n in results["models"]}
    return EvalResult(paths=paths, results=results, meta=meta, macro_auc=macro)
