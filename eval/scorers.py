"""Models to compare, by spec or as Scorer objects, and the cache of their scores.

A spec is ``oracle``, ``popularity`` (fitted on the examples' T1 training requests), a folder written
by ``recbrew baselines train``, or anything :func:`recbrew.models.loading.load_model` accepts
(``smollm2``, a recbrew-tiny folder, an HF folder, a LoRA adapter folder). Language models are
scored by :class:`recbrew.scoring.hf.HFScorer` in ``multi`` mode, with the answer words of the task
specs recorded in the examples folder, and also answer generative tasks.

Scores are cached under ``OUT/scores/`` keyed by the model's fingerprint (its files' names, sizes and
modification times), the examples' fingerprint and the scoring options; a changed model folder or
rebuilt examples miss the cache and are scored again.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from recbrew.cluster import score_on_ray
from recbrew.data.io import atomic_path
from recbrew.errors import UserError
from recbrew.eval.table import RequestTable
from recbrew.scoring.protocol import Generator, Scorer
from recbrew.scoring.registry import ScorerOptions, family_of, folder_fingerprint, load_scorer

#: The registry's families that eval knows by kind (another registered family is a plain "scorer").
KINDS = ("oracle", "popularity", "baseline", "lm")

#: Bumped when a change to scoring would make cached scores wrong.
CACHE_VERSION = 2  # 2: a bf16 model's answer logits in fp32 (no bf16 rounding, no ties)


def parse_models(text: str | Sequence[str]) -> dict[str, str]:
    """``"a,name=path,b"`` (or a list of such items) -> {display name: spec}; names default to the spec's basename."""
    items = [t for part in ([text] if isinstance(text, str) else text) for t in part.split(",") if t.strip()]
    out: dict[str, str] = {}
    for item in items:
        name, _, spec = item.strip().partition("=")
        if not spec:
            spec = name
            name = Path(name.rstrip("/")).name or name
        name, spec = name.strip(), spec.strip()
        if not name or not spec:
            raise UserError(f"bad model item {item!r}: write SPEC or NAME=SPEC")
        if name in out:
            raise UserError(f"two models are called {name!r}; name them with NAME=SPEC")
        out[name] = spec
    if not out:
        raise UserError("no models given: pass e.g. --models oracle,popularity,smollm2")
    return out


@dataclass
class Model:
    """One model of the comparison: where it comes from and, once loaded, its Scorer."""

    name: str
    spec: str | None = None
    scorer: Scorer | None = None
    kind: str = "scorer"  # oracle | popularity | baseline | lm (`recbrew.scoring.registry`) | scorer
    fingerprint: str | None = None

    @property
    def can_generate(self) -> bool:
        return isinstance(self.scorer, Generator)

    def load(self, examples: Path, device: str | None = None, catalog=None, lm_engine: str = "hf") -> None:
        """Build the Scorer behind ``spec`` (no-op for objects handed in directly), through
        `recbrew.scoring.registry.load_scorer`.

        Language models read the answer words from ``catalog`` (default: the task specs recorded in ``examples``)
        and score in bf16 where the hardware has bf16 arithmetic (CUDA, AVX-512 BF16 / AMX CPUs), fp32 elsewhere,
        through ``lm_engine`` (``hf`` or ``vllm``).
        """
        if self.scorer is not None:
            return
        self.scorer = load_scorer(self.spec, examples=examples, catalog=catalog, name=self.name, device=device,
                                  lm_engine=lm_engine)

    def release(self) -> None:
        """Drop a loaded language model (the next one needs the memory)."""
        if self.spec is not None:
            self.scorer = None


def describe(name: str, spec_or_scorer) -> Model:
    """A :class:`Model` from a spec string or a Scorer object (objects are not cached: no fingerprint)."""
    if not isinstance(spec_or_scorer, str | Path):
        if not isinstance(spec_or_scorer, Scorer):
            raise UserError(f"model {name!r}: neither a spec string nor a Scorer (a name and a score() method)")
        return Model(name=name, scorer=spec_or_scorer, kind="scorer",
                     fingerprint=getattr(spec_or_scorer, "fingerprint", None))
    spec = str(spec_or_scorer)
    family = family_of(spec)
    kind = family.name if family.name in KINDS else "scorer"
    return Model(name, spec, kind=kind, fingerprint=family.fingerprint(spec))


def examples_fingerprint(examples: str | Path) -> str:
    return folder_fingerprint(examples)


@dataclass
class Scores:
    """One model's answers on a RequestTable: flat candidate scores (NaN where not scored) and generations."""

    scores: np.ndarray
    generations: dict[int, str]
    seconds: float = 0.0
    cached: bool = False


def cache_path(out_dir: Path, model: Model, key_parts: dict) -> Path | None:
    if model.fingerprint is None:
        return None
    key = hashlib.sha256(json.dumps({"model": model.fingerprint, "version": CACHE_VERSION, **key_parts},
                                    sort_keys=True).encode()).hexdigest()[:20]
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", model.name)[:60]
    return out_dir / "scores" / f"{safe}-{key}.npz"


def load_cached(path: Path | None, table: RequestTable) -> Scores | None:
    if path is None or not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if z["request_ids"].tolist() != table.request_ids.tolist():
                return None
            gens = dict(zip(z["gen_index"].tolist(), z["gen_text"].tolist(), strict=True))
            return Scores(z["scores"], gens, float(z["seconds"]), cached=True)
    except (OSError, KeyError, ValueError):
        return None  # unreadable cache: score again


def save_cached(path: Path | None, table: RequestTable, scores: Scores) -> None:
    """Write aside, then rename: an interrupted run never leaves a half-written cache file."""
    if path is None:
        return
    idx = sorted(scores.generations)
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, request_ids=np.array(table.request_ids.tolist(), dtype=str), scores=scores.scores,
                 gen_index=np.array(idx, dtype=np.int64),
                 gen_text=np.array([scores.generations[i] for i in idx], dtype=str), seconds=np.array(scores.seconds))


def run_model(model: Model, requests: Sequence[dict], table: RequestTable, *, examples: Path, chunk: int = 64,
              max_new_tokens: int = 16, progress: bool = True, device: str | None = None, catalog=None,
              ray: RayOptions | None = None, lm_engine: str = "hf") -> Scores:
    """Score every rankable request (in chunks, with a progress bar) and generate answers where the model can.

    ``catalog``: the task specs (answer words) of the requests; default: those recorded in ``examples``.
    ``ray``: language models score on Ray actors (`recbrew.cluster.score_on_ray`); the others here.
    ``lm_engine``: what language models score through here, ``hf`` or ``vllm``.
    """
    if ray is not None and model.kind == "lm":
        return _run_on_ray(model, requests, table, examples=examples, max_new_tokens=max_new_tokens,
                           progress=progress, device=device, catalog=catalog, ray=ray, chunk=chunk)
    model.load(examples, device=device, catalog=catalog, lm_engine=lm_engine)
    start = time.perf_counter()
    rank_idx = np.flatnonzero(table.rankable)
    per_request: list[np.ndarray | None] = [None] * len(table)
    bar = tqdm(total=len(rank_idx), desc=f"score {model.name}", unit="req", disable=not progress, leave=False)
    for s in range(0, len(rank_idx), chunk):
        ids = rank_idx[s:s + chunk]
        probs = model.scorer.score([requests[i] for i in ids])
        for i, p in zip(ids, probs, strict=True):
            per_request[i] = _checked(model, table, i, p)
        bar.update(len(ids))
    bar.close()
    generations: dict[int, str] = {}
    gen_idx = np.flatnonzero(table.generative)
    if len(gen_idx) and model.can_generate:
        rows = [requests[i] for i in gen_idx]
        texts = []
        for s in tqdm(range(0, len(rows), chunk), desc=f"generate {model.name}", disable=not progress, leave=False):
            texts.extend(model.scorer.generate(rows[s:s + chunk], max_new_tokens))
        generations = {int(i): str(t) for i, t in zip(gen_idx, texts, strict=True)}
    return Scores(table.flatten(per_request), generations, time.perf_counter() - start)


def _checked(model: Model, table: RequestTable, i: int, p) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    if len(p) != table.offsets[i + 1] - table.offsets[i]:
        raise UserError(f"model {model.name}: {len(p)} scores for request {table.request_ids[i]} "
                        f"with {table.offsets[i + 1] - table.offsets[i]} candidates")
    return p


@dataclass
class RayOptions:
    """Where and how language models score with ``--engine ray`` (`recbrew.cluster.score_on_ray`)."""

    address: str | None = None
    workers: int | None = None
    worker_cpus: int | None = None


def _run_on_ray(model: Model, requests: Sequence[dict], table: RequestTable, *, examples: Path, max_new_tokens: int,
                progress: bool, device: str | None, catalog, ray: RayOptions, chunk: int) -> Scores:
    """`run_model` for a language model whose Scorers live on Ray actors (each loads the model once), in the
    same batches of ``chunk`` requests."""
    start = time.perf_counter()
    rank_idx = np.flatnonzero(table.rankable)
    gen_idx = np.flatnonzero(table.generative)
    # The task specs are resolved here and travel to the actors: a worker machine may not see the examples folder.
    specs = ScorerOptions(examples=examples, catalog=catalog).task_catalog()
    options = ScorerOptions(catalog=specs, name=model.name, device=device)
    scores, texts = score_on_ray(load_scorer, (model.spec, options), requests, rank_idx, gen_idx, address=ray.address,
                                 workers=ray.workers, worker_cpus=ray.worker_cpus, batch_size=chunk,
                                 max_new_tokens=max_new_tokens, desc=f"score {model.name}", progress=progress)
    per_request: list[np.ndarray | None] = [None] * len(table)
    for i, p in scores.items():
        per_request[i] = _checked(model, table, i, p)
    return Scores(table.flatten(per_request), texts, time.perf_counter() - start)

