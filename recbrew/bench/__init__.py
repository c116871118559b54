"""Benchmarks and self-tests, kept apart from the functional packages they measure.

`recbrew bench ...` runs the benchmarks (`recbrew/cli/bench.py`); each prints JSON with ratios against a
baseline measured in the same run:

- `world`: world generation, member-days/s and peak RSS at two sizes;
- `render`: prompt rendering + tokenization and example building, on one core;
- `baselines`: the classic rankers' training and scoring speed on CPU;
- `score`: the scoring modes over a (history length x candidates) grid; `slates` the same on real requests
  (`bench score --slates N`);
- `ray`: `models score --engine ray` against one process (`bench ray`);
- `kernels`: the multi-item attention backends and the answer head against torch (`bench kernels`);
- `serve`: `/v1/rank` with vLLM prefix caching on vs off, and vs the HF scorer (`bench serve`);
- `train`: the answer-only LM head, packing, liger-kernel and the CPU recipe's levers (`bench train`);
- `zero_selftest`: the ZeRO-3 hpZ self-test under torchrun (`recbrew train hpz-check`).
"""
