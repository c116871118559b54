"""Offline evaluation of every Scorer on the same requests, importable as ``recbrew.eval``.

    from recbrew.eval import run_eval
    result = run_eval("runs/quickstart/examples", {"pop": "popularity", "lm": "runs/train/final"}, "runs/eval")
    print(result.table())          # macro AUC on T1 / T2 tasks with 95% intervals, the gap to the oracle
    d = result.paired("lm", result.reference)   # Δ macro AUC vs the best baseline, paired bootstrap
    print(d["text"])               # ΔT1 +0.0120 [-0.0040, +0.0270], ΔT2 …
    result.paths["html"]           # report.html (also report.md, report.json)
"""

from recbrew.eval.compare import CompareConfig, paired_delta
from recbrew.eval.run import EvalResult, run_eval

__all__ = ["CompareConfig", "EvalResult", "paired_delta", "run_eval"]
