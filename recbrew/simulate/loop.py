"""`recbrew simulate`: serve slates to the synthetic world day by day, learn from the logs, repeat.

    warm-up: the world runs ``warmup_days`` with its own slates (the logging policy); the ranker trains on them
    then, for every policy, from that same state, for ``days`` days:
        each visit draws pool_factor x its slate size as candidates -> the policy picks and orders the slate
        -> the world draws the outcomes from its hidden probabilities (position effects included)
        -> the logs append to the run's log -> the ranker (and Thompson's posterior) update

Every policy sees the same members visiting the same surfaces with the same slate sizes (each surface
draws from its own seeded stream), so daily differences come from what the policies showed. Expected
positives (the sum of the true probabilities of what was shown) measure each day without the noise of
the draws; regret is the oracle policy's expected positives minus the policy's.

State is saved per policy after every day (``state/NAME.pkl``, written aside then renamed); a re-run
with the same settings continues from the last finished day and gives the same result.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recbrew import assets
from recbrew.data.io import atomic_path, atomic_write_text
from recbrew.data.schema import NO_ACTION, TRUE_PROB_PREFIX
from recbrew.errors import ConfigError, UserError
from recbrew.metrics import auc as roc_auc
from recbrew.simulate.policy import LOGGING, POLICIES, RANKER_POLICIES, LoopPolicy, Popularity, Shown
from recbrew.simulate.ranker import LoopRanker
from recbrew.simulate.rows import RowBuilder, concat_columns, sample_requests
from recbrew.world.config import WorldConfig
from recbrew.world.entities import ITEM_KIND_CODES
from recbrew.world.generate import OpenWorld, open_world

CONFIG_FILE = "simulation-config.json"
STATE_DIR = "state"
LOG_DIR = "logs"
TRAINING = ("incremental", "full")


@dataclass
class SimulationConfig:
    """One closed-loop simulation: the world, the policies, the ranker and how it learns."""

    #: The world (the same members, graph and items as `recbrew world generate --members M --seed S`).
    members: int = 2000
    world_seed: int = 0
    #: Days served by the policies, after ``warmup_days`` of the world's own slates.
    days: int = 14
    warmup_days: int = 7
    #: Seed of the policies' draws and of training.
    seed: int = 0
    policies: tuple[str, ...] = POLICIES
    #: The ranker: lirank (carries the Bayesian last layer), ligr or dcnv2; ``overrides`` as section.field=value.
    ranker: str = "lirank"
    overrides: tuple[str, ...] = ()
    #: ``incremental`` (yesterday's model + one pass over the day) or ``full`` (a fresh model on all logs).
    training: str = "incremental"
    #: Learning rate of the incremental pass and its L2 pull toward yesterday's weights (0: none).
    update_lr: float = 1e-3
    anchor: float = 0.0
    #: Incremental: give every item (and member) created since the last fit its own id row before the day's pass.
    grow_ids: bool = True
    #: Incremental: passes over the new logs, and how many days before the new one they include (0: the day only).
    update_epochs: int = 1
    replay_days: int = 0
    #: Incremental: a random sample of this share of every earlier day's requests (warm-up days included) is
    #: trained on with the new day, so one day's pass does not pull the model away from what the other days
    #: taught it (0: none).
    replay_fraction: float = 0.5
    #: Passes of a full training (the warm-up model and ``full`` retraining).
    full_epochs: int = 3
    #: Also retrain from scratch every day beside the greedy policy's incremental model (same logs, not
    #: serving) to compare update time and AUC.
    compare_full: bool = False
    epsilon: float = 0.1
    #: Candidates drawn per slate slot.
    pool_factor: int = 3
    #: Thompson sampling: scale of the posterior draws (the exploration strength; 1 is the posterior as it is,
    #: the default 2 explores new items clearly more than greedy at no loss of positives on the default world),
    #: prior precision, daily forgetting of the precision.
    explore_scale: float = 2.0
    prior: float = 1.0
    posterior_decay: float = 1.0
    #: Thompson sampling: optimistic (a draw below the posterior mean counts as the mean) or plain draws.
    optimistic: bool = True
    #: An item counts as new on the days up to this many after its creation (it is shown from the day after).
    new_item_days: int = 2

    def validate(self) -> None:
        if self.members < 50:
            raise ConfigError(f"--members must be at least 50 (got {self.members})")
        if self.days < 1 or self.warmup_days < 1:
            raise ConfigError(f"--days and --warmup-days must be at least 1 (got {self.days}, {self.warmup_days})")
        unknown = [p for p in self.policies if p not in POLICIES]
        if unknown or not self.policies:
            raise ConfigError(f"unknown policy {', '.join(unknown) or '(none)'} (choose from {', '.join(POLICIES)})")
        if len(set(self.policies)) != len(self.policies):
            raise ConfigError("--policies lists a policy twice")
        if self.training not in TRAINING:
            raise ConfigError(f"--training must be one of {', '.join(TRAINING)} (got {self.training!r})")
        if not 0.0 <= self.epsilon <= 1.0:
            raise ConfigError(f"--epsilon must be in [0, 1] (got {self.epsilon})")
        if self.pool_factor < 1:
            raise ConfigError(f"--pool-factor must be at least 1 (got {self.pool_factor})")
        if not 0.0 <= self.replay_fraction <= 1.0:
            raise ConfigError(f"--replay-fraction must be in [0, 1] (got {self.replay_fraction})")
        if self.update_epochs < 1 or self.replay_days < 0:
            raise ConfigError(f"--update-epochs must be at least 1 and --replay-days at least 0 "
                              f"(got {self.update_epochs}, {self.replay_days})")
        if self.full_epochs < 1:
            raise ConfigError(f"--full-epochs must be at least 1 (got {self.full_epochs})")
        if min(self.update_lr, self.explore_scale, self.prior) <= 0 or self.anchor < 0:
            raise ConfigError("--update-lr, --explore-scale and --prior must be positive, --anchor non-negative")
        if not 0.0 < self.posterior_decay <= 1.0:
            raise ConfigError(f"--posterior-decay must be in (0, 1] (got {self.posterior_decay})")
        if self.compare_full and "greedy" not in self.policies:
            raise ConfigError("--compare-full runs beside the greedy policy; add greedy to --policies")

    def world(self) -> WorldConfig:
        return WorldConfig(members=self.members, days=max(30, self.warmup_days + self.days), seed=self.world_seed)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


@dataclass
class Run:
    """One policy's world and learner, as saved after each day."""

    name: str
    #: Days finished so far (0: just after the warm-up).
    done: int
    world: OpenWorld
    rows: RowBuilder
    popularity: Popularity
    ranker: dict | None = None
    #: Greedy with --compare-full: the model retrained from scratch every day (not serving).
    shadow: dict | None = None
    #: Training columns of every day (only when a full retraining needs them).
    logs: list[dict] | None = None
    metrics: list[dict] = field(default_factory=list)


# ---------------------------------------------------------------------------------------- one day


def _outcomes(table: pa.Table, surfaces: list[str], n_items: int, n_members: int) -> tuple[np.ndarray, np.ndarray,
                                                                                              np.ndarray]:
    """(sorted keys, acted, true probability of any action) of a day's impressions, keyed by surface/member/item."""
    code = {s: i for i, s in enumerate(surfaces)}
    surface = np.array([code[s] for s in table["surface"].to_pylist()], dtype=np.int64)
    key = (surface * n_members + table["member_id"].to_numpy()) * n_items + table["item_id"].to_numpy()
    acted = table["action"].to_numpy(zero_copy_only=False) != NO_ACTION
    p_any = np.zeros(len(table))
    for name in table.column_names:
        if name.startswith(TRUE_PROB_PREFIX):
            p_any += pc.fill_null(table[name], 0.0).to_numpy().astype(np.float64)
    order = np.argsort(key)
    return key[order], acted[order], p_any[order]


def _cat(parts: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype)


def _auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """The day's AUC (None with one class only)."""
    value = roc_auc(labels, scores)
    return None if np.isnan(value) else value


def _score_shown(ranker: LoopRanker, rows: RowBuilder, shown: list[Shown], day: int) -> np.ndarray:
    cols = concat_columns([rows.columns(s.surface, day, s.who, s.item, s.visit) for s in shown])
    return ranker.score(cols).prob if cols else np.zeros(0)


def run_day(run: Run, day: int, cfg: SimulationConfig, policy: LoopPolicy) -> tuple[dict, pa.Table]:
    """Serve one day with ``policy``, update the run (logs, ranker, posterior) and return the day's metrics."""
    world = run.world
    policy.start_day(day)
    if policy.ranker is not None:
        # Yesterday's new items are in the feature store by the time today's slates are ranked.
        LoopRanker.refresh(policy.ranker.space, run.rows.items_table(), run.rows.members)
    day_rng = world.day_rng(day)
    t0 = time.perf_counter()
    log = world.sim.run_day(day, day_rng, policy)
    serve_s = time.perf_counter() - t0
    new_tables = world.create_items(day_rng, day)
    out = _outcomes_of_shown(world, log.interactions, policy.shown)
    metrics = _day_metrics(world, day, cfg, policy, out, serve_s)
    # Training requests: what was shown, with its outcomes, featurized as of the start of the day.
    starts = np.cumsum([0] + out.sizes)
    train = concat_columns([run.rows.columns(s.surface, day, s.who, s.item, s.visit, out.label[a:b])
                            for s, a, b in zip(policy.shown, starts[:-1], starts[1:], strict=True)])
    if run.shadow is not None:
        shadow = LoopRanker.from_state(run.shadow)
        LoopRanker.refresh(shadow.space, run.rows.items_table(), run.rows.members)
        metrics["full_auc"] = _auc(out.label, _score_shown(shadow, run.rows, policy.shown, day))
    run.rows.add_history(log.interactions)
    run.rows.add_items(new_tables)
    run.popularity.add(out.item, out.label)
    if run.logs is not None:
        run.logs.append(train)
    seed = cfg.seed * 1000 + day
    if run.ranker is not None:
        metrics.update(_update_ranker(run, cfg, policy, out, train, seed))
    if run.shadow is not None:
        shadow, seconds = LoopRanker.train_full(policy.ranker.cfg, concat_columns(run.logs), run.rows.items_table(),
                                                run.rows.members, cfg.full_epochs, seed)
        run.shadow = shadow.state()
        metrics["full_seconds"] = round(seconds, 3)
    run.metrics.append(metrics)
    run.done += 1
    return metrics, log.interactions


@dataclass
class _DayOutcomes:
    """The day's impressions in the order they were shown: whether each got a positive action, its true
    probability of one, the policy's score and the item; ``sizes`` is the length of each slate."""

    label: np.ndarray
    prob: np.ndarray
    score: np.ndarray
    item: np.ndarray
    sizes: list[int]


def _outcomes_of_shown(world, interactions: pa.Table, shown: list[Shown]) -> _DayOutcomes:
    surfaces = [s.name for s in world.config.surfaces]
    keys, acted, p_any = _outcomes(interactions, surfaces, len(world.store), len(world.members))
    labels, probs, scores, items = [], [], [], []
    for s in shown:
        k = (surfaces.index(s.surface) * len(world.members) + s.who) * len(world.store) + s.item
        at = np.searchsorted(keys, k)
        labels.append(acted[at])
        probs.append(p_any[at])
        scores.append(s.score)
        items.append(s.item)
    return _DayOutcomes(_cat(labels, bool), _cat(probs, float), _cat(scores, float), _cat(items, np.int64),
                        [len(x) for x in labels])


def _day_metrics(world, day: int, cfg: SimulationConfig, policy: LoopPolicy, out: _DayOutcomes,
                 serve_s: float) -> dict:
    item, label = out.item, out.label
    content = world.store.kind[item] != ITEM_KIND_CODES["member"] if len(item) else np.zeros(0, bool)
    new = content & (world.store.created_day[item] >= day - cfg.new_item_days) if len(item) else content
    shown_content = set(item[content].tolist())
    return {
        "day": day, "visits": int(sum(len(np.unique(s.visit)) for s in policy.shown)),
        "impressions": int(len(item)),
        "positives": int(label.sum()), "expected_positives": round(float(out.prob.sum()), 3),
        "auc": None if policy.name in (LOGGING, "random") else _auc(label, out.score),
        "coverage": round(len(shown_content) / max(len(policy.pooled), 1), 4),
        "new_item_share": round(float(new.sum() / max(content.sum(), 1)), 4),
        "new_items_shown": int(len(set(item[new].tolist()))),
        "serve_seconds": round(serve_s, 2),
    }


def _update_ranker(run: Run, cfg: SimulationConfig, policy: LoopPolicy, out: _DayOutcomes, train,
                   seed: int) -> dict:
    """Retrain (``training: full``) or warm-start the ranker on the day's logs, then the Thompson posterior;
    the metrics this adds to the day."""
    metrics = {}
    tables = (run.rows.items_table(), run.rows.members)
    if cfg.training == "full":
        ranker, seconds = LoopRanker.train_full(policy.ranker.cfg, concat_columns(run.logs), *tables,
                                                cfg.full_epochs, seed)
        ranker.bayes = policy.ranker.bayes
    else:
        ranker = policy.ranker
        started = time.perf_counter()
        if cfg.grow_ids:
            metrics["item_ids_added"] = ranker.grow(*tables)
        # Replay: the day's logs together with the days before it (LiRank's warm start sees more than one day).
        recent = [train] if run.logs is None else run.logs[-(cfg.replay_days + 1):]
        if cfg.replay_fraction and run.logs is not None:
            recent += sample_requests(run.logs[:-(cfg.replay_days + 1)], cfg.replay_fraction, seed)
        ranker.update(concat_columns(recent), cfg.update_lr, cfg.anchor, seed, epochs=cfg.update_epochs)
        seconds = time.perf_counter() - started
    shown = policy.shown
    if ranker.bayes is not None and policy.name == "thompson":
        h = np.concatenate([s.h for s in shown]) if shown else np.zeros((0, ranker.bayes.dim))
        task = np.concatenate([s.task for s in shown]) if shown else np.zeros(0, np.int64)
        # The network's own probability (the policy's score is the posterior mean, offsets included).
        net = np.concatenate([s.net for s in shown]) if shown else np.zeros(0)
        ranker.bayes.update(h, task, np.clip(net, 1e-6, 1 - 1e-6), item=out.item, label=out.label)
    run.ranker = ranker.state()
    policy.ranker = ranker
    metrics["update_seconds"] = round(seconds, 3)
    return metrics


# ---------------------------------------------------------------------------------------- state


def _save(obj, path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)


def _load(path: Path):
    with open(path, "rb") as f:
        return pickle.load(f)


def _write_log(out: Path, name: str, day: int, table: pa.Table) -> None:
    with atomic_path(out / LOG_DIR / name / f"day-{day:03d}.parquet") as tmp:
        pq.write_table(table, tmp, compression="zstd")


def _ranker_config(cfg: SimulationConfig):
    from recbrew.baselines.config import MODELS, run_config  # lazy: loads torch

    if cfg.ranker not in MODELS:
        raise ConfigError(f"unknown ranker {cfg.ranker!r} (one of: {', '.join(MODELS)})")
    if "thompson" in cfg.policies and not hasattr(MODELS[cfg.ranker][1], "represent"):
        raise ConfigError(f"thompson needs a ranker with a Bayesian last layer (lirank), not {cfg.ranker}; "
                          "drop thompson from --policies or use --ranker lirank")
    shipped = assets.path("configs") / "baselines" / f"{cfg.ranker}.yaml"
    return run_config(cfg.ranker, shipped if shipped.is_file() else None, list(cfg.overrides))


def _warmup(cfg: SimulationConfig, out: Path, say: Callable[[str], None]) -> Run:
    """The world's first days with its own slates, and the ranker trained on them."""
    path = out / STATE_DIR / "warmup.pkl"
    if path.is_file():
        return _load(path)
    world, _, items = open_world(cfg.world())
    rows = RowBuilder(world.members_table)
    rows.add_items(items)
    run = Run("warmup", 0, world, rows, Popularity(), logs=[])
    logging = LoopPolicy(LOGGING, pool_factor=1, seed=cfg.seed)
    for day in range(cfg.warmup_days):
        metrics, table = run_day(run, day, cfg, logging)
        _write_log(out, "warmup", day, table)
        say(f"warm-up day {day + 1}/{cfg.warmup_days}: {metrics['impressions']:,} impressions, "
            f"{metrics['positives']:,} positives")
    rcfg = _ranker_config(cfg)
    ranker, seconds = LoopRanker.train_full(rcfg, concat_columns(run.logs), rows.items_table(), rows.members,
                                            cfg.full_epochs, cfg.seed)
    if "thompson" in cfg.policies:
        logs = concat_columns(run.logs)
        ranker.start_posterior(ranker.score(logs, representation=True),
                               np.concatenate([np.asarray(c, np.int64) for c in logs["candidate_ids"]]), cfg.prior,
                               cfg.explore_scale, cfg.posterior_decay)
    run.ranker = ranker.state()
    run.metrics = [{"warmup_train_seconds": round(seconds, 2),
                    "warmup_requests": len(concat_columns(run.logs).get("task", []))}]
    say(f"warm-up model: {cfg.ranker} on {run.metrics[0]['warmup_requests']:,} requests in {seconds:.1f} s")
    _save(run, path)
    return run


def _start(cfg: SimulationConfig, out: Path, name: str, warm: Run) -> Run:
    path = out / STATE_DIR / f"{name}.pkl"
    if path.is_file():
        return _load(path)
    run = pickle.loads(pickle.dumps(warm, protocol=pickle.HIGHEST_PROTOCOL))
    run.name, run.metrics, run.done = name, [], 0
    ranked = name in RANKER_POLICIES
    run.ranker = run.ranker if ranked else None
    if not (ranked and (cfg.training == "full" or cfg.replay_days or cfg.replay_fraction)) and not (name == "greedy" and cfg.compare_full):
        run.logs = None
    if name == "greedy" and cfg.compare_full:
        run.shadow = warm.ranker
    return run


def _policy(cfg: SimulationConfig, run: Run, scorer=None) -> LoopPolicy:
    ranker = LoopRanker.from_state(run.ranker) if run.ranker is not None else None
    if ranker is not None and ranker.bayes is not None:
        # The exploration strength is the policy's setting, not part of the posterior it learned.
        ranker.bayes.scale = cfg.explore_scale
    return LoopPolicy(run.name, cfg.pool_factor, cfg.seed, cfg.epsilon, cfg.optimistic, ranker, run.rows,
                      run.popularity, scorer if run.name == "greedy" else None)


def _check_out(cfg: SimulationConfig, out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    saved = out / CONFIG_FILE
    if saved.is_file():
        if json.loads(saved.read_text()) != cfg.to_dict() and not force:
            raise UserError(f"{out} holds a simulation with other settings ({saved}); pass the same settings to "
                            "resume it, --force to start over, or another --out")
    elif out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"{out} already exists and is not a simulation folder; pass --force or another --out")


def simulate(cfg: SimulationConfig, out: str | Path, *, force: bool = False, scorer=None,
             say: Callable[[str], None] | None = None) -> dict:
    """Run (or resume) the simulation into ``out``; returns the results (config, per-day metrics, summary).

    ``scorer``: any Scorer to rank with in the greedy policy instead of the loop's ranker (it is not updated).
    """
    cfg.validate()
    _ranker_config(cfg)  # a bad ranker name or override fails now, not after the warm-up
    out = Path(out)
    say = say or (lambda _msg: None)
    _check_out(cfg, out, force)
    if force and out.is_dir():
        import shutil

        for sub in (STATE_DIR, LOG_DIR):
            shutil.rmtree(out / sub, ignore_errors=True)
    atomic_write_text(out / CONFIG_FILE, json.dumps(cfg.to_dict(), indent=1) + "\n")

    warm = _warmup(cfg, out, say)
    runs = {name: _start(cfg, out, name, warm) for name in cfg.policies}
    policies = {name: _policy(cfg, run, scorer) for name, run in runs.items()}
    first = cfg.warmup_days
    for i in range(cfg.days):
        day = first + i
        started = time.perf_counter()
        line = []
        for name in cfg.policies:
            run = runs[name]
            if run.done > i:
                continue
            metrics, table = run_day(run, day, cfg, policies[name])
            _write_log(out, name, day, table)
            _save(run, out / STATE_DIR / f"{name}.pkl")
            line.append(f"{name} {metrics['positives']:,}")
        if line:
            say(f"day {i + 1}/{cfg.days}: positives " + ", ".join(line) + f"  ({time.perf_counter() - started:.0f} s)")
    from recbrew.simulate.report import summarize, write_report  # lazy: loads torch

    results = summarize(cfg, {name: run.metrics for name, run in runs.items()}, warm.metrics[0])
    results["paths"] = {k: str(v) for k, v in write_report(out, results).items()}
    return results
