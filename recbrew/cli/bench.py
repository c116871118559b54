"""`recbrew bench ...`: benchmarks that print JSON with ratios against a baseline measured in the same run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from recbrew.bench.ray import bench_ray
from recbrew.bench.render import bench_render
from recbrew.bench.score import bench_score
from recbrew.bench.slates import bench_slates
from recbrew.bench.world import bench_world
from recbrew.errors import UserError
from recbrew.scoring.injection import bench_injection

app = typer.Typer(help="Benchmarks: JSON with ratios against a baseline measured in the same run.",
                  no_args_is_help=True)


@app.command()
def world(
    members: Annotated[int, typer.Option(help="Members at the base size.")] = 20000,
    days: Annotated[int, typer.Option(help="Days at the base size (enough to fill one Parquet row group).")] = 10,
    scale: Annotated[int, typer.Option(help="Factor for the larger runs (days and members each).")] = 10,
    seed: Annotated[int, typer.Option()] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """World generation: member-days/s, impressions/s and peak RSS at two sizes `scale`x apart."""
    if scale < 2:
        raise UserError("--scale must be at least 2")
    result = bench_world(members, days, scale, seed)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    for name, row in result["runs"].items():
        typer.echo(f"{name:>14}: {row['members']:>9,} members x {row['days']:>3} days  {row['seconds']:8.2f} s  "
                   f"{row['impressions_per_s']:>12,.0f} impressions/s  peak RSS {row['peak_rss_mib']:8.1f} MiB")
    typer.echo(json.dumps(result["ratios"]))


@app.command()
def render(
    members: Annotated[int, typer.Option(help="Members of the generated world the prompts come from.")] = 1000,
    days: Annotated[int, typer.Option(help="Days of that world.")] = 14,
    requests: Annotated[int, typer.Option(help="Requests (members x moments) to render.")] = 200,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="Prompt budget.")] = 512,
    task: Annotated[str, typer.Option(help="Task whose prompts are rendered.")] = "feed_like",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """Prompt rendering + tokenization on one core (shared prefix vs. one prompt per candidate), build rows/s."""
    result = bench_render(members, days, requests, max_tokens, task)
    typer.echo(json.dumps(result, indent=None if not as_json else 2))


@app.command()
def baselines(
    examples: Annotated[Path, typer.Option("--examples", help="Examples built by `recbrew data build`.")] = Path("runs/quickstart/examples"),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """Training examples/s and scoring candidates/s on CPU for each classic ranker."""
    from recbrew.bench.baselines import bench_baselines  # lazy: loads torch

    typer.echo(json.dumps(bench_baselines(examples), indent=2 if as_json else None))


@app.command()
def score(
    model: Annotated[str, typer.Option(help="'smollm2', 'random-smollm2' (its shape, random weights) or a model "
                                       "folder.")] = "smollm2",
    examples: Annotated[Path, typer.Option("--examples", help="Where real prompts come from (random token ids "
                                           "when missing).")] = Path("runs/quickstart/examples"),
    grid: Annotated[str, typer.Option(help="PREFIX_TOKENSxCANDIDATES cells.")] = "250x10,250x50,1000x10,1000x50",
    modes: Annotated[str, typer.Option(help="Modes to time (the first is the reference); with --slates also vllm "
                                       "(vLLM's offline engine, as `eval --llm-engine vllm`).")
                     ] = "naive,prefix,multi",
    requests: Annotated[int, typer.Option(min=1, help="Requests per cell, scored together.")] = 4,
    rounds: Annotated[int, typer.Option(min=3, help="Timed rounds after the warm-up (median).")] = 3,
    dtype: Annotated[str | None, typer.Option(help="fp32, bf16 or auto (default: bf16 on CUDA, fp32 on "
                                              "CPU).")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="One small cell (32x3, 2 requests): seconds on a "
                                        "CPU.")] = False,
    slates: Annotated[int | None, typer.Option("--slates", min=1, help="Instead of the grid: N real test requests "
                                               "(whole slates) in eval's precision, steady state.")] = None,
    layers: Annotated[int | None, typer.Option("--layers", min=1, help="Keep the first N decoder layers "
                                               "(--slates).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """Candidates/s and tokens processed per scoring mode, with speed-ups against naive in the same run."""
    if slates:
        chosen = tuple(m.strip() for m in modes.split(",")) if modes != "naive,prefix,multi" else ("naive", "multi")
        typer.echo(json.dumps(bench_slates(model, str(examples), slates, chosen, layers=layers),
                              indent=2 if as_json else None))
        return

    if quick:
        grid, requests = "32x3", 2
    try:
        cells = tuple(tuple(int(x) for x in cell.split("x")) for cell in grid.split(","))
    except ValueError:
        raise UserError(f"--grid {grid!r}: expected cells like 250x10,1000x50") from None
    result = bench_score(model, str(examples), cells, tuple(m.strip() for m in modes.split(",")), requests=requests,
                         rounds=rounds, dtype=dtype)
    typer.echo(json.dumps(result, indent=2 if as_json else None))


@app.command("ray")
def ray_score(
    examples: Annotated[Path, typer.Option("--examples", help="Examples whose test requests are scored.")],
    model: Annotated[str, typer.Option(help="'smollm2' or a model folder.")] = "smollm2",
    requests: Annotated[int, typer.Option(min=1, help="Test requests (a seeded draw of whole slates).")] = 64,
    workers: Annotated[int, typer.Option(min=1, help="Ray actors.")] = 2,
    worker_cpus: Annotated[int | None, typer.Option("--worker-cpus", min=1, help="CPUs per actor (default: the "
                                                    "machine's CPUs shared among the actors).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Requests per actor call.")] = 16,
    rounds: Annotated[int, typer.Option(min=3, help="Timed rounds after the warm-up (median).")] = 3,
    dtype: Annotated[str, typer.Option(help="auto (bf16 where the hardware has it), bf16 or fp32.")] = "auto",
    address: Annotated[str | None, typer.Option("--address", help="A running Ray cluster (default: a local "
                                                "one).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print indented JSON.")] = False,
) -> None:
    """`models score --engine ray` against scoring in one process, on the same requests in the same run:
    requests/s, the ratio, and the largest score difference."""
    result = bench_ray(model, str(examples), requests, workers, worker_cpus, batch_size, rounds, dtype, address)
    typer.echo(json.dumps(result, indent=2 if as_json else None))


@app.command()
def injection(
    examples: Annotated[Path, typer.Option("--examples", help="Examples built by `recbrew data build` (their "
                                           "Corpus must still be there).")] = Path("runs/quickstart/examples"),
    model: Annotated[str, typer.Option(help="'smollm2', a model folder or a LoRA adapter folder (as eval "
                                       "loads it).")] = "runs/quickstart/llm/final",
    task: Annotated[str | None, typer.Option(help="A binary task (default: feed_like, else the first "
                                             "binary task built).")] = None,
    requests: Annotated[int, typer.Option(min=1, help="Test requests, drawn with --seed.")] = 100,
    seed: Annotated[int, typer.Option()] = 0,
    fields: Annotated[str, typer.Option(help="Fields to edit: candidate (one pass per request), member (a pass "
                                        "per edit).")] = "candidate,member",
    prompts_dir: Annotated[Path | None, typer.Option("--prompts-dir", help="Render with these templates instead "
                                                     "(e.g. a copy with a mitigation).")] = None,
    dtype: Annotated[str, typer.Option(help="auto (eval's precision), bf16 or fp32.")] = "auto",
    layers: Annotated[int | None, typer.Option("--layers", min=1, help="Keep the first N decoder layers.")] = None,
    match: Annotated[str, typer.Option("--match", help="What a neutral edit shares with its injected string: "
                                       "tokens (as many, under the model's tokenizer) or chars.")] = "tokens",
    strings: Annotated[str, typer.Option("--strings", help="The injections: bench (its own 16, never trained "
                                         "on), training (those of data build --inject-share) or a text file, one "
                                         "string per line ({yes}/{no}: the answer words, \\n: a line break).")]
    = "bench",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """Prompt injection through Corpus text: |delta P(positive)| for instruction-like vs same-length neutral edits
    of a candidate's title and of the member's headline or title; ratio = median injected / median neutral."""
    result = bench_injection(examples, model, task=task, requests=requests, seed=seed, prompts_dir=prompts_dir,
                             fields=tuple(f.strip() for f in fields.split(",") if f.strip()), dtype=dtype,
                             layers=layers, match=match, strings=strings)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    for name, row in result["fields"].items():
        inj, neu = row["injected"], row["neutral"]
        if not row["requests"]:
            typer.echo(f"{name:9} no request shows this field ({row['not_shown']} without it)")
            continue
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}"
        typer.echo(f"{name:9} {','.join(row['fields'])}: {row['requests']} requests  |dp| median "
                   f"{inj['median_abs_dp']:.4f} injected vs {neu['median_abs_dp']:.4f} neutral (max "
                   f"{inj['max_abs_dp']:.4f} vs {neu['max_abs_dp']:.4f})  rank moves max {inj['max_rank_move']} vs "
                   f"{neu['max_rank_move']}  ratio {ratio}")
    typer.echo(json.dumps({"ratio": result["ratio"], "goal_met": result["goal_met"]}))


@app.command()
def kernels(
    quick: Annotated[bool, typer.Option("--quick", help="Tiny shapes (seconds; a check that it runs).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """Multi-item attention backends vs dense-mask SDPA (and what auto picks), the answer head vs torch."""
    from recbrew.bench.kernels import bench_kernels  # lazy: loads triton

    typer.echo(json.dumps(bench_kernels(quick=quick), indent=2 if as_json else None))


@app.command()
def serve(
    model: Annotated[str, typer.Option(help="'smollm2' or a model folder.")] = "smollm2",
    world: Annotated[Path, typer.Option("--world", help="Corpus the requests come from.")] = Path("runs/quickstart/world"),
    candidates: Annotated[int, typer.Option(help="Candidates per /v1/rank request.")] = 50,
    requests: Annotated[int, typer.Option(help="Requests (members with the longest histories).")] = 3,
    load_clients: Annotated[int, typer.Option("--load-clients", help="Concurrent clients of the load test.")] = 32,
    load_seconds: Annotated[float, typer.Option("--load-seconds", help="Load test length (0: skip).")] = 30.0,
    examples: Annotated[Path | None, typer.Option("--examples", help="Take the requests from this examples folder's "
                                                  "test split (any task; served with its specs) instead of --world.")
                        ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """/v1/rank candidates/s with vLLM prefix caching on vs off, and vs the HF multi-item scorer; the load test
    checks the rankings are the same before and after it."""
    from recbrew.bench.serve import bench_serve  # lazy: loads httpx

    result = bench_serve(model, str(world), candidates, requests, load_clients, load_seconds,
                         None if examples is None else str(examples))
    typer.echo(json.dumps(result, indent=2 if as_json else None))


@app.command()
def train(
    model: Annotated[str, typer.Option(help="Model (a 49k-token vocabulary shows the LM-head effect).")] = "smollm2",
    tokens: Annotated[int, typer.Option(help="Prompt tokens in the LM-head comparison.")] = 512,
    batch: Annotated[int, typer.Option(help="Sequences per step in the LM-head comparison.")] = 2,
    k: Annotated[int, typer.Option("-k", help="Candidates packed per sequence.")] = 8,
    prefix: Annotated[int, typer.Option(help="Shared prefix (history) tokens in the packing comparison.")] = 448,
    segment: Annotated[int, typer.Option(help="Tokens per candidate segment in the packing comparison.")] = 32,
    levers: Annotated[bool, typer.Option("--levers", help="Instead: the CPU recipe's levers stacked one at a time "
                                         "(fp32 -> bf16 -> first N layers -> packed slates -> frozen cache).")] = False,
    layers: Annotated[int, typer.Option(help="Decoder layers kept by the depth lever (--levers).")] = 6,
    examples: Annotated[Path | None, typer.Option("--examples", help="--levers on real slates: binary T1 training "
                                                  "requests of this examples folder instead of random "
                                                  "ones.")] = None,
    requests: Annotated[int, typer.Option(min=1, help="Slates per timed round (--levers).")] = 2,
    steps: Annotated[int, typer.Option(min=3, help="Timed steps (rounds) after the warm-up (median).")] = 3,
    quick: Annotated[bool, typer.Option("--quick", help="Small shapes (64 tokens, K=2): a check that it "
                                        "runs.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """LoRA training: answer-position LM head vs full logits, K-candidate packing vs one per sequence (+ Liger on CUDA)."""
    from recbrew.bench.train import bench_levers, bench_train  # lazy: loads trl

    if levers:
        # Defaults shaped like the quickstart's slates: a ~170-token prefix, ~55-token candidates, 16 per slate.
        result = bench_levers(model, layers=layers, requests=requests, rounds=steps,
                              examples=str(examples) if examples else None, **({"k": k} if k != 8 else {}))
        if as_json:
            typer.echo(json.dumps(result, indent=2))
            return
        for name, row in result["levers"].items():
            typer.echo(f"{name:14} {row['candidates_per_s']:8.1f} labelled candidates/s  x{row['ratio_vs_fp32']:.2f}")
        return
    if quick:
        tokens, batch, k, prefix, segment = 64, 1, 2, 32, 8
    result = bench_train(model, tokens=tokens, batch=batch, k=k, prefix=prefix, segment=segment, head_steps=steps,
                         rounds=steps)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    for key, label in (("lm_head", ""), ("lm_head_checkpointed", ", activation checkpointing")):
        head = result[key]
        typer.echo(f"LM head at answer positions vs full logits ({tokens} tokens x {batch}, vocab "
                   f"{head['full_logits']['vocab']:,}{label}): peak step memory "
                   f"{head['answer_positions']['step_peak_mib']:.0f} vs {head['full_logits']['step_peak_mib']:.0f} MiB "
                   f"({head['peak_memory_reduction']:.0%} lower), examples/s x{head['ratio_examples_per_s']:.2f}")
    pack = result["packing"]
    typer.echo(f"packing K={k} vs one candidate per sequence: labelled examples/s x{pack['ratio_examples_per_s']:.2f} "
               f"({pack['packed']['examples_per_s']:.1f} vs {pack['single']['examples_per_s']:.1f}; "
               f"x{pack['ratio_tokens']:.2f} fewer tokens)")
    if "liger" in result:
        lg = result["liger"]
        typer.echo(f"liger-kernel vs torch step: speed x{lg['ratio_speed']:.2f}, memory x{lg['ratio_memory']:.2f}, "
                   f"loss diff {lg['loss_diff']:.2e}")
