"""Past one process with Ray: `recbrew data build --engine ray` and `recbrew models score|eval --engine ray`.

- **Building.** The requests are planned on the driver (cheap: splits and sampling); rendering them (the
  statistics, the history, the template) is the work. The members are partitioned over ``workers`` Ray tasks;
  each task renders its members' requests of every task against the corpus, which travels once through Ray's
  object store. The driver puts the rows back in request order, so the folder equals a local build's.
- **Scoring.** Ray Data streams the requests through ``map_batches`` with one Scorer per Ray actor (each actor
  loads the model once and scores batches as they come); the driver puts the scores back in request order.
  Requests travel pickled, so no field changes type on the way. Actors take ``worker_cpus`` CPUs each, or one GPU
  each on a cluster with GPUs.

``address`` connects to a running cluster (``ray start --head`` on one machine, ``ray start --address`` on the
others); without it a local Ray starts for the command and stops after it. Model folders, the tokenizer and a
custom ``--prompts-dir`` are read by the workers by path: on a cluster they sit on storage every node mounts at
the same path. docs/scale.md has the recipes.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from recbrew.errors import UserError

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
        _quiet_data(ray)
        yield ray
    finally:
        ray.shutdown()


def _quiet_data(ray) -> None:
    """Ray Data without its own progress bars and per-run log lines: the command shows one bar of its own."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    # Ray Data logs a failed worker's traceback; the command reports it in one line (`_raise_clear`).
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)


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
        self.line = str(e) if self.user else f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"

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
    """One Scorer per Ray actor: ``load(*args, **kwargs)`` once, then scores (or, for generative rows, answers) batches."""

    #: Set by `_actor_class`: how to build the Scorer.
    load: Callable
    args: tuple = ()
    kwargs: dict = {}
    max_new_tokens: int = 16

    def __init__(self):
        import ray

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
        if cpus:
            import torch

            torch.set_num_threads(max(1, int(cpus)))
        self.failed: _Failed | None = None
        try:
            self.scorer = type(self).load(*self.args, **self.kwargs)
        except Exception as e:  # noqa: BLE001 - answered with every batch, raised on the driver as one line
            self.failed = _Failed(e)

    def __call__(self, batch: dict) -> dict:
        generate = np.asarray(batch["generate"], dtype=bool)
        try:
            if self.failed is not None:
                raise UserError(self.failed.line)
            return self._answer(batch, generate)
        except Exception as e:  # noqa: BLE001 - an answer that says what went wrong
            failed = self.failed or _Failed(e)
            return {"i": np.asarray(batch["i"], dtype=np.int64), "generate": generate,
                    "scores": np.array([b""] * len(generate), dtype=object),
                    "text": np.array([""] * len(generate), dtype=object),
                    "error": np.array([pickle.dumps(failed)] * len(generate), dtype=object)}

    def _answer(self, batch: dict, generate: np.ndarray) -> dict:
        rows = [pickle.loads(b) for b in batch["row"]]
        scores: list[bytes] = [b""] * len(rows)
        texts = [""] * len(rows)
        rank = [k for k in range(len(rows)) if not generate[k]]
        if rank:
            for k, p in zip(rank, self.scorer.score([rows[k] for k in rank]), strict=True):
                scores[k] = pickle.dumps(np.asarray(p, dtype=np.float64))
        gen = [k for k in range(len(rows)) if generate[k]]
        if gen and hasattr(self.scorer, "generate"):
            for k, t in zip(gen, self.scorer.generate([rows[k] for k in gen], self.max_new_tokens), strict=True):
                texts[k] = str(t)
        return {"i": np.asarray(batch["i"], dtype=np.int64), "generate": generate,
                "scores": np.array(scores, dtype=object), "text": np.array(texts, dtype=object),
                "error": np.array([b""] * len(rows), dtype=object)}


def _actor_class(load: Callable, args: tuple, kwargs: dict, max_new_tokens: int) -> type:
    """A `_ScoreActor` that knows its Scorer: the class carries what the constructor would take, as Ray Data
    keeps constructor arguments in the object store (and warns about restarting actors from there)."""
    return type("ScoreActor", (_ScoreActor,), {"load": staticmethod(load), "args": tuple(args), "kwargs": dict(kwargs),
                                               "max_new_tokens": max_new_tokens})


def score_on_ray(load: Callable, args: tuple, requests: Sequence[dict], rank: Sequence[int],
                 generate: Sequence[int] = (), *, load_kwargs: dict | None = None, address: str | None = None, workers: int | None = None,
                 worker_cpus: int | None = None, batch_size: int = 16, max_new_tokens: int = 16,
                 desc: str = "score", progress: bool = True) -> tuple[dict[int, np.ndarray], dict[int, str]]:
    """Scores of ``requests[i]`` for i in ``rank`` and answers for i in ``generate``, from Scorers built by
    ``load(*args, **load_kwargs)`` (a module-level function: actors import it) on Ray actors.

    Actors: ``workers`` of them (default: as many as fit), each with ``worker_cpus`` CPUs (default: all of one
    machine's share, at most 4), or one GPU each where the cluster has GPUs."""
    if workers is not None and workers < 1:
        raise UserError(f"--workers {workers}: at least 1")
    if worker_cpus is not None and worker_cpus < 1:
        raise UserError(f"--worker-cpus {worker_cpus}: at least 1")
    items = ([{"i": int(i), "generate": False, "row": pickle.dumps(requests[i])} for i in rank]
             + [{"i": int(i), "generate": True, "row": pickle.dumps(requests[i])} for i in generate])
    if not items:
        return {}, {}
    with session(address) as ray:
        gpus = cluster_gpus(ray)
        if gpus:
            resources, fit = {"num_gpus": 1, "num_cpus": worker_cpus or 1}, gpus
        else:
            cpus = worker_cpus or min(4, cluster_cpus(ray))
            resources, fit = {"num_cpus": cpus}, max(1, cluster_cpus(ray) // cpus)
        n = min(workers or fit, max(1, len(items) // batch_size + 1))
        ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // batch_size + 1, 64 * n)))
        actor = _actor_class(load, args, load_kwargs or {}, max_new_tokens)
        scored = ds.map_batches(actor, batch_size=batch_size, batch_format="numpy", concurrency=n, **resources)
        scores: dict[int, np.ndarray] = {}
        texts: dict[int, str] = {}
        bar = tqdm(total=len(items), desc=f"{desc} on {n} Ray actor{'s' * (n > 1)}", unit="req",
                   disable=not progress, leave=False)
        try:
            for batch in scored.iter_batches(batch_size=None, batch_format="numpy"):
                failed = next((pickle.loads(e) for e in batch["error"] if len(e)), None)
                if failed is not None:
                    failed.raise_(desc)
                for i, s, t, g in zip(batch["i"], batch["scores"], batch["text"], batch["generate"], strict=True):
                    if g:
                        texts[int(i)] = str(t)
                    else:
                        scores[int(i)] = pickle.loads(s)
                bar.update(len(batch["i"]))
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - one clear line for whatever Ray raised (an actor lost, ...)
            _raise_clear(e, desc)
        finally:
            bar.close()
    missing = len(items) - len(scores) - len(texts)
    if missing:
        raise UserError(f"{desc}: {missing} requests came back without an answer from the Ray actors")
    return scores, texts

