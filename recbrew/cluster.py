"""Past one process with Ray: `recbrew data build --engine ray` and `recbrew models score|eval --engine ray`.

- **Building.** The requests are planned on the driver (cheap: splits and sampling); rendering them (the
  statistics, the history, the template) is the work. The members are partitioned over ``workers`` Ray tasks;
  each task renders its members' requests of every task against the corpus, which travels once through Ray's
  object store. The driver puts the rows back in request order, so the folder equals a local build's.
- **Scoring.** One Scorer per Ray actor (`ActorScorers`): each actor loads the model once, and batches of
  requests go to whichever actor is free; the driver puts the answers back in request order. Requests travel as
  the Python rows they are, so no field changes type on the way. Actors take ``worker_cpus`` CPUs each, or one
  GPU each on a cluster with GPUs.

``address`` connects to a running cluster (``ray start --head`` on one machine, ``ray start --address`` on the
others); without it a local Ray starts for the command and stops after it. Model folders, the tokenizer and a
custom ``--prompts-dir`` are read by the workers by path: on a cluster they sit on storage every node mounts at
the same path. docs/scale.md has the recipes.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from recbrew.errors import UserError
from recbrew.scoring.protocol import Generator

ENGINES = ("local", "ray")
#: What `pip install` needs for ``--engine ray``.
INSTALL = "pip install 'recbrew[ray]'"


def check_engine(engine: str) -> None:
    """One line for an unknown engine, before any work."""
    if engine not in ENGINES:
        raise UserError(f"--engine {engine!r}: choose {' or '.join(ENGINES)}")


def _ray():
    try:
        import ray
    except ImportError as e:
        raise UserError(f"--engine ray needs Ray, which is not installed ({e}); {INSTALL}") from None
    return ray


@contextmanager
def session(address: str | None = None) -> Iterator:
    """The ``ray`` module, connected: to ``address`` when given, to the Ray this process already joined, or to a
    local Ray started here (with this machine's CPUs) and stopped on exit."""
    ray = _ray()
    if ray.is_initialized():
        yield ray
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report from offline machines
    # Ray notes at start that a local cluster uses token authentication: a default, not news to the user.
    logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
    if address and "RAY_AUTH_MODE" not in os.environ and (Path.home() / ".ray" / "auth_token").is_file():
        # A cluster started on this machine with `ray start` uses the token Ray keeps there; the driver sends it
        # only when told to. Elsewhere, RAY_AUTH_TOKEN (or RAY_AUTH_MODE) from Ray's own docs applies as usual.
        os.environ["RAY_AUTH_MODE"] = "token"
    try:
        ray.init(address=address or "local", include_dashboard=False if not address else None,
                 configure_logging=False, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        where = f"no Ray cluster answers at --address {address}" if address else "Ray did not start"
        raise UserError(f"{where}: {first}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


#: The last "Name: message" line of a worker's traceback, as Ray passes it on.
_ERROR_LINE = re.compile(r"^(?:[\w.]+\.)?(\w+(?:Error|Exception)): (.+)$")


def _raise_clear(e: BaseException, what: str) -> None:
    """One line for whatever a Ray worker raised: the user's own error as it was (a recbrew UserError, also when
    Ray hands it over as text inside its own exceptions), else the worker's last error line."""
    chain, x = [], e
    while x is not None and len(chain) < 8:
        chain.append(x)
        x = getattr(x, "cause", None) or x.__cause__
    for x in chain:
        if isinstance(x, UserError):
            raise x from None
    lines = [m for x in chain for line in str(x).splitlines() if (m := _ERROR_LINE.match(line.strip()))]
    if lines:
        name, message = lines[-1].groups()
        if name in ("UserError", "ConfigError"):
            raise UserError(message) from None
        raise UserError(f"{what} failed on a Ray worker: {name}: {message}") from None
    raise UserError(f"{what} failed on a Ray worker: {type(e).__name__}: {str(e).strip()[:200]}") from None


def cluster_cpus(ray) -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def cluster_gpus(ray) -> int:
    return int(ray.cluster_resources().get("GPU", 0))


# Building -----------------------------------------------------------------------------------------------------

class _Failed:
    """What a worker raised, carried back as its result: Ray's own error path prints the worker's traceback,
    where the user needs one line."""

    def __init__(self, e: BaseException):
        self.user = isinstance(e, UserError)
        first = next(iter(str(e).strip().splitlines()), "")
        self.line = str(e) if self.user else f"{type(e).__name__}: {first}"

    def raise_(self, what: str):
        raise UserError(self.line if self.user else f"{what} failed on a Ray worker: {self.line}")


def _call(fn: Callable, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - carried back as a result, raised on the driver as one line
        return _Failed(e)


def shard_by_member(plans: Sequence[tuple], shards: int) -> list[list[tuple]]:
    """Split every plan (task, requests, indices) into ``shards`` parts by member, so that one member's requests
    stay on one worker; part s holds the members whose id is s modulo ``shards``."""
    out: list[list[tuple]] = [[] for _ in range(shards)]
    for task, req, index in plans:
        part = np.asarray(req.member_id, dtype=np.int64) % shards
        for s in range(shards):
            rows = np.flatnonzero(part == s)
            out[s].append((task, req.take(rows), np.asarray(index)[rows]))
    return out


def build_on_ray(render: Callable, corpus, rule, cfg, plans: Sequence[tuple], *, prompts_dir=None,
                 address: str | None = None, workers: int | None = None, progress: bool = True) -> list[list]:
    """``render(corpus, rule, cfg, plans, prompts_dir)`` (`recbrew.examples.build.render_shard`) on ``workers``
    Ray tasks (default: the cluster's CPUs), each with a share of the members; returns, per plan, the rendered
    rows of every shard."""
    if workers is not None and workers < 1:
        raise UserError(f"--workers {workers}: at least 1")
    with session(address) as ray:
        n = workers or cluster_cpus(ray)
        shards = [s for s in shard_by_member(plans, n) if any(len(req) for _, req, _ in s)]
        corpus_ref = ray.put(corpus)
        task = ray.remote(num_cpus=1, max_retries=0)(_call)
        futures = {task.remote(render, corpus_ref, rule, cfg, shard, prompts_dir): sum(len(r) for _, r, _ in shard)
                   for shard in shards}
        order = list(futures)
        done: dict = {}
        bar = tqdm(total=sum(futures.values()), desc=f"rendering requests on {len(order)} Ray workers", unit="req",
                   disable=not progress)
        pending = list(order)
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                for ref in ready:
                    done[ref] = ray.get(ref)
                    if isinstance(done[ref], _Failed):
                        done[ref].raise_("rendering")
                    bar.update(futures[ref])
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - one clear line for whatever Ray raised (a worker lost, ...)
            _raise_clear(e, "rendering")
        finally:
            bar.close()
    results = [done[ref] for ref in order]
    return [[row for shard in results for row in shard[j]] for j in range(len(plans))]


# Scoring ------------------------------------------------------------------------------------------------------

class _ScoreActor:
    """One Scorer per Ray actor: ``load(*args, **kwargs)`` once, then answers batches of requests: scores, or
    for generative ones the model's text. Failures come back as answers (`_Failed`), not as Ray errors."""

    def __init__(self, load: Callable, args: tuple, kwargs: dict, max_new_tokens: int = 16):
        import ray

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
        if cpus:
            import torch

            torch.set_num_threads(max(1, int(cpus)))
        self.max_new_tokens = max_new_tokens
        self.failed: _Failed | None = None
        try:
            self.scorer = load(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - answered to every batch, raised on the driver as one line
            self.failed = _Failed(e)

    def ready(self) -> _Failed | None:
        return self.failed

    def answer(self, rows: list[dict], generate: list[bool], per_call: int | None = None):
        if self.failed is not None:
            return self.failed
        try:
            scores: list[np.ndarray | None] = [None] * len(rows)
            texts: list[str | None] = [None] * len(rows)
            rank = [k for k in range(len(rows)) if not generate[k]]
            step = per_call or len(rank) or 1
            for s in range(0, len(rank), step):
                part = rank[s:s + step]
                for k, p in zip(part, self.scorer.score([rows[k] for k in part]), strict=True):
                    scores[k] = np.asarray(p, dtype=np.float64)
            gen = [k for k in range(len(rows)) if generate[k]]
            if gen and isinstance(self.scorer, Generator):
                for k, t in zip(gen, self.scorer.generate([rows[k] for k in gen], self.max_new_tokens), strict=True):
                    texts[k] = str(t)
            return scores, texts
        except Exception as e:  # noqa: BLE001 - an answer that says what went wrong
            return _Failed(e)


class ActorScorers:
    """Ray actors that each hold one Scorer built by ``load(*args, **kwargs)`` (a module-level function: the
    actors import it), kept for as many `answer` calls as the caller makes.

    ``workers`` actors (default: as many as fit), each with ``worker_cpus`` CPUs (default: the machine's CPUs
    shared among the workers when ``workers`` is given, else up to 4 each), or one GPU each where the cluster has
    GPUs. Use inside `session`; `close` (or the ``with`` block) ends the actors."""

    def __init__(self, ray, load: Callable, args: tuple = (), kwargs: dict | None = None, *,
                 workers: int | None = None, worker_cpus: int | None = None, max_new_tokens: int = 16,
                 what: str = "score"):
        if workers is not None and workers < 1:
            raise UserError(f"--workers {workers}: at least 1")
        if worker_cpus is not None and worker_cpus < 1:
            raise UserError(f"--worker-cpus {worker_cpus}: at least 1")
        self.ray, self.what = ray, what
        cpus, gpus = cluster_cpus(ray), cluster_gpus(ray)
        if gpus:
            options, fit = {"num_gpus": 1, "num_cpus": worker_cpus or 1}, gpus
        else:
            each = worker_cpus or (max(1, cpus // workers) if workers else min(4, cpus))
            options, fit = {"num_cpus": each}, cpus // each
        if fit == 0:
            raise UserError(f"--worker-cpus {options['num_cpus']}: more than the Ray cluster's {cpus} CPUs")
        n = workers or fit
        if n > fit:  # actors hold their resources for life: one that cannot be placed would wait forever
            have = f"{gpus} GPUs" if gpus else f"{cpus} CPUs"
            raise UserError(f"--workers {n}: the Ray cluster has {have}, room for {fit} actor{'s' * (fit != 1)} of "
                            f"{'1 GPU' if gpus else str(options['num_cpus']) + ' CPUs'} each; use fewer workers "
                            "or --worker-cpus")
        self.actor_cpus = options["num_cpus"]
        actor = ray.remote(_ScoreActor).options(max_restarts=0, **options)
        self.actors = [actor.remote(load, args, kwargs or {}, max_new_tokens) for _ in range(n)]
        self._get([a.ready.remote() for a in self.actors])  # a model that does not load fails here, once

    def __enter__(self) -> ActorScorers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)
        self.actors = []

    def _get(self, refs):
        try:
            got = self.ray.get(refs)
        except Exception as e:  # noqa: BLE001 - one clear line for whatever Ray raised (an actor lost, ...)
            _raise_clear(e, self.what)
        for g in got if isinstance(refs, list) else [got]:
            if isinstance(g, _Failed):
                g.raise_(self.what)
        return got

    def answer(self, requests: Sequence[dict], rank: Sequence[int], generate: Sequence[int] = (), *,
               batch_size: int = 16, per_call: int | None = None,
               progress=None) -> tuple[dict[int, np.ndarray], dict[int, str]]:
        """Scores of ``requests[i]`` for i in ``rank`` and answers for i in ``generate``, in batches of
        ``batch_size`` handed to whichever actor is free, which scores ``per_call`` requests per Scorer call
        (default: the whole batch; the caller's own grouping gives its own numbers exactly). With ``per_call``
        the batches shrink to about a quarter of an actor's share, so no actor idles while another finishes.
        ``progress``: a bar updated per batch."""
        work = [(int(i), False) for i in rank] + [(int(i), True) for i in generate]
        if per_call:  # the batch only carries requests: smaller ones keep every actor busy to the end
            even = -(-len(work) // (4 * len(self.actors)))
            batch_size = max(per_call, min(batch_size, even) // per_call * per_call)
        batches = [work[s:s + batch_size] for s in range(0, len(work), batch_size)]
        free = list(self.actors)
        running: dict = {}
        scores: dict[int, np.ndarray] = {}
        texts: dict[int, str] = {}
        pending = list(range(len(batches)))
        while pending or running:
            while free and pending:
                b = pending.pop(0)
                actor = free.pop()
                rows = [requests[i] for i, _ in batches[b]]
                running[actor.answer.remote(rows, [g for _, g in batches[b]], per_call)] = (b, actor)
            ready, _ = self.ray.wait(list(running), num_returns=1)
            b, actor = running.pop(ready[0])
            free.append(actor)
            got_scores, got_texts = self._get(ready[0])
            for (i, g), p, t in zip(batches[b], got_scores, got_texts, strict=True):
                if g:
                    texts[i] = "" if t is None else t
                else:
                    scores[i] = p
            if progress is not None:
                progress.update(len(batches[b]))
        return scores, texts


def score_on_ray(load: Callable, args: tuple, requests: Sequence[dict], rank: Sequence[int],
                 generate: Sequence[int] = (), *, load_kwargs: dict | None = None, address: str | None = None,
                 workers: int | None = None, worker_cpus: int | None = None, batch_size: int = 16,
                 per_call: int | None = None, max_new_tokens: int = 16, desc: str = "score",
                 progress: bool = True) -> tuple[dict[int, np.ndarray], dict[int, str]]:
    """`ActorScorers.answer` on a pool made for this call, in a `session` at ``address`` (or a local Ray)."""
    if not len(rank) and not len(generate):
        return {}, {}
    with session(address) as ray, ActorScorers(ray, load, args, load_kwargs, workers=workers,
                                               worker_cpus=worker_cpus, max_new_tokens=max_new_tokens,
                                               what=desc) as pool:
        n = len(pool.actors)
        bar = tqdm(total=len(rank) + len(generate), desc=f"{desc} on {n} Ray actor{'s' * (n > 1)}", unit="req",
                   disable=not progress, leave=False)
        try:
            return pool.answer(requests, rank, generate, batch_size=batch_size, per_call=per_call, progress=bar)
        finally:
            bar.close()
