"""`recbrew bench kernels --quick`: every backend timed at a tiny shape, ratios from the medians of the same run."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_quick_kernel_bench_reports_backends_and_ratios():
    from recbrew.bench.kernels import IMPLEMENTATIONS, bench_kernels

    report = bench_kernels(device="cpu", quick=True)
    assert report["device"] == "cpu" and "median of" in report["timing"]
    assert len(report["attention"]) == 2  # forward, forward + backward
    for row in report["attention"]:
        base = row["sdpa_dense_mask"]["ms"]
        assert base and row["auto_choice"] == "torch" and row["fastest"] in (*IMPLEMENTATIONS, "sdpa_dense_mask")
        assert row["torch"]["speedup_vs_sdpa_dense_mask"] == round(base / row["torch"]["ms"], 2)
        assert row["auto"]["ms"] == row["torch"]["ms"] and row["torch"]["first_call_ms"] > 0
        assert "skipped" in row["triton"]  # no CUDA: the interpreter is not benchmarked
    assert report["attention"][1]["flex"].get("skipped") == "FlexAttention has no backward on CPU"
    for row in report["answer_head"]:
        assert row["answer_head"]["speedup_vs_torch"] == round(row["torch_full_logits"]["ms"]
                                                               / row["answer_head"]["ms"], 2)
    assert report["summary"]["auto_min_speedup_vs_sdpa_dense_mask"] is not None
