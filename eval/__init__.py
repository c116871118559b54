"""Offline evaluation of every Scorer on the same requests, importable as ``recbrew.eval``.

    from recbrew.eval import run_eval
    result = run_eval("runs/quickstart/examples", {"pop": "popularity", "lm": "runs/train/final"}, "runs/eval")
    print(result.table())          # macro AUC on T1 / T2 tasks and the gap to the oracle
    result.paths["html"]           # report.html (also report.md, report.json)
"""

from recbrew.eval.run import EvalResult, run_eval

__all__ = ["EvalResult", "run_eval"]
