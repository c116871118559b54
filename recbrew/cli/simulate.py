"""`recbrew simulate`: the closed loop on the synthetic world — policies serve slates day by day, the ranker
learns from the logs, and every policy is measured against the world's ground truth."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer


def simulate(
    out: Annotated[Path, typer.Option("--out", help="Folder for the state, the logs and report.html/.md/.json.")],
    members: Annotated[int, typer.Option(help="Members of the world (the same world as `world generate`).")] = 2000,
    world_seed: Annotated[int, typer.Option("--world-seed", help="Seed of the world.")] = 0,
    days: Annotated[int, typer.Option(help="Days served by the policies.")] = 14,
    warmup_days: Annotated[int, typer.Option("--warmup-days", help="Days of the world's own slates before them; "
                                             "the ranker's first model trains on these.")] = 7,
    policies: Annotated[str, typer.Option(help="Comma-separated: random, popularity, greedy, epsilon, thompson, "
                                          "oracle.")] = "random,popularity,greedy,epsilon,thompson,oracle",
    ranker: Annotated[str, typer.Option(help="lirank (carries the Bayesian last layer), ligr or dcnv2.")] = "lirank",
    training: Annotated[str, typer.Option(help="incremental (warm start + one pass over the day) or full "
                                          "(a fresh model on all logs every day).")] = "incremental",
    anchor: Annotated[float, typer.Option(help="Incremental: L2 pull toward yesterday's weights (0: none).")] = 0.0,
    update_lr: Annotated[float, typer.Option("--update-lr", help="Incremental: learning rate of the daily pass.")] = 1e-3,
    grow_ids: Annotated[bool, typer.Option("--grow-ids/--no-grow-ids", help="Incremental: give items (and members) "
                                           "created since the last fit their own id rows before each day's pass.")] = True,
    update_epochs: Annotated[int, typer.Option("--update-epochs", help="Incremental: passes over the new logs.")] = 1,
    replay_days: Annotated[int, typer.Option("--replay-days", help="Incremental: also train on this many days "
                                             "before the new one (0: the new day only).")] = 0,
    replay_fraction: Annotated[float, typer.Option("--replay-fraction", help="Incremental: also train on this share "
                                                   "of every earlier day's requests, sampled anew each day "
                                                   "(0: none).")] = 0.5,
    full_epochs: Annotated[int, typer.Option("--full-epochs", help="Passes of a full training.")] = 3,
    compare_full: Annotated[bool, typer.Option("--compare-full", help="Also retrain from scratch every day beside "
                                               "greedy's incremental model: update time and AUC side by side.")] = False,
    epsilon: Annotated[float, typer.Option(help="Epsilon-greedy: share of visits shown a random slate.")] = 0.1,
    pool_factor: Annotated[int, typer.Option("--pool-factor", help="Candidates drawn per slate slot.")] = 3,
    explore_scale: Annotated[float, typer.Option("--explore-scale", help="Thompson: scale of the posterior draws, "
                                                 "the exploration strength (1: the posterior as it is).")] = 2.0,
    optimistic: Annotated[bool, typer.Option("--optimistic/--no-optimistic", help="Thompson: a draw below the "
                                             "posterior mean counts as the mean, so wide posteriors (new items) "
                                             "are explored upward only.")] = True,
    prior: Annotated[float, typer.Option(help="Thompson: prior precision of the last layer.")] = 1.0,
    posterior_decay: Annotated[float, typer.Option("--posterior-decay", help="Thompson: daily forgetting of the "
                                                   "posterior precision (1: none).")] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed of the policies' draws and of training.")] = 0,
    overrides: Annotated[list[str] | None, typer.Argument(help="Ranker overrides section.field=value, e.g. "
                                                          "train.batch_size=128.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Start over in a non-empty --out.")] = False,
) -> None:
    """Serve slates to the world day by day, train incrementally, explore/exploit; measured against ground truth.

    A re-run with the same settings and --out continues from the last finished day.
    """
    from recbrew.simulate import SimulationConfig  # lazy: loads torch
    from recbrew.simulate import simulate as run  # lazy: loads torch

    names = tuple(p.strip() for p in policies.split(",") if p.strip())
    cfg = SimulationConfig(members=members, world_seed=world_seed, days=days, warmup_days=warmup_days, seed=seed,
                           policies=names, ranker=ranker, overrides=tuple(overrides or ()), training=training,
                           update_lr=update_lr, anchor=anchor, grow_ids=grow_ids, update_epochs=update_epochs,
                           replay_days=replay_days, replay_fraction=replay_fraction, full_epochs=full_epochs,
                           compare_full=compare_full,
                           epsilon=epsilon, pool_factor=pool_factor, explore_scale=explore_scale, prior=prior,
                           posterior_decay=posterior_decay, optimistic=optimistic)
    start = time.perf_counter()
    results = run(cfg, out, force=force, say=typer.echo)
    typer.echo(f"{'policy':<11} {'positives':>9} {'regret':>8} {'AUC':>7} {'coverage':>8} {'new items':>9}")
    for name, p in results["policies"].items():
        regret = "n/a" if p["regret"] is None else f"{p['regret']:.1f}"
        auc = "n/a" if p["mean_auc"] is None else f"{p['mean_auc']:.4f}"
        typer.echo(f"{name:<11} {p['positives']:>9,} {regret:>8} {auc:>7} {p['coverage']:>8.3f} "
                   f"{p['new_item_share']:>9.3f}")
    if "incremental_vs_full" in results:
        c = results["incremental_vs_full"]
        typer.echo(f"incremental vs full: update {c['mean_incremental_seconds']:.2f} s vs {c['mean_full_seconds']:.2f} s "
                   f"a day (max ratio {c['max_time_ratio']:.3f}), AUC gap max {c['max_abs_auc_gap']:.4f}")
    typer.echo(f"wrote {results['paths']['html']} in {time.perf_counter() - start:.0f} s")
