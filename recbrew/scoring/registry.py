"""From a model spec to a Scorer, in one place: eval, `recbrew serve`, `models score`, `baselines score`, the
injection bench and the Ray actors all call `load_scorer`.

A spec is one of the families in `FAMILIES`, tried in order:

| family | spec | Scorer |
|---|---|---|
| ``oracle`` | ``oracle`` | the synthetic world's true probabilities |
| ``popularity`` | ``popularity`` (no such folder) | popularity fitted on the examples' T1 training requests |
| ``baseline`` | a folder written by `recbrew baselines train` | LiRank, LiGR, DCNv2 or a saved popularity |
| ``lm`` | ``smollm2``, a recbrew-tiny, HF or LoRA folder | `HFScorer` (multi-item), answer words from the catalog; `VLLMScorer` with ``lm_engine="vllm"`` |

A new model family (a cross-encoder, a GBDT) is one `register(Family(...))`: a name, a test that recognizes
its specs, a loader, and a fingerprint that changes when the model does (eval's score cache is keyed by it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from recbrew.errors import UserError
from recbrew.examples.folder import Examples
from recbrew.models.loading import resolve


@dataclass
class ScorerOptions:
    """What loaders may need; each reads its own fields and leaves the rest."""

    #: The examples folder: popularity is fitted on its T1 training requests; language models read the answer
    #: words of the task specs recorded there unless ``catalog`` is given.
    examples: str | Path | None = None
    catalog: dict | None = None
    name: str | None = None
    device: str | None = None
    #: Language models: ``auto`` (bf16 where the hardware has bf16 arithmetic), ``bf16`` or ``fp32``; the first
    #: ``layers`` decoder layers; the scoring ``mode`` (`recbrew.scoring.hf.MODES`).
    dtype: str = "auto"
    layers: int | None = None
    mode: str = "multi"
    #: Language models: ``hf`` (`HFScorer`, the multi-item path) or ``vllm`` (`VLLMScorer`: vLLM's offline
    #: engine with prefix caching; the same scores within 1e-3).
    lm_engine: str = "hf"
    #: Classic rankers: score with b-bit embedding tables.
    quantize_bits: int | None = None

    def task_catalog(self) -> dict:
        if self.catalog is not None:
            return self.catalog
        if self.examples is None:
            raise UserError("a language model needs the task specs: give the examples folder or a catalog")

        return Examples.open(self.examples).catalog()


@dataclass(frozen=True)
class Family:
    """One kind of model: ``matches(spec)`` recognizes its specs, ``load(spec, options)`` builds the Scorer,
    ``fingerprint(spec)`` names the model's current state (None: never cached)."""

    name: str
    matches: Callable[[str], bool]
    load: Callable[[str, ScorerOptions], object]
    fingerprint: Callable[[str], str | None] = field(default=lambda spec: None)


def folder_fingerprint(path: str | Path) -> str:
    """Hash of every file's relative path, size and modification time under ``path`` (or of the one file)."""
    path = Path(path)
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(path) if p != path else p.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _oracle(spec: str, options: ScorerOptions):
    from recbrew.baselines.oracle import Oracle  # lazy: loads torch

    return Oracle()


def _popularity(spec: str, options: ScorerOptions):
    if options.examples is None:
        raise UserError("popularity is fitted on an examples folder's training requests: give the examples")
    from recbrew.baselines.features import load_rows  # lazy: loads torch
    from recbrew.baselines.popularity import Popularity  # lazy: loads torch

    return Popularity.fit(load_rows(options.examples, "train", split_tag="T1"))


def _is_baseline(spec: str) -> bool:
    from recbrew.baselines.scorer import MODEL_FILE, POPULARITY_FILE  # lazy: loads torch

    path = Path(spec)
    return path.is_dir() and any((path / f).is_file() for f in (MODEL_FILE, POPULARITY_FILE))


def _baseline(spec: str, options: ScorerOptions):
    from recbrew.baselines.scorer import load_scorer as load_baseline  # lazy: loads torch

    return load_baseline(spec, options.quantize_bits)


#: The engines a language model can score through (`ScorerOptions.lm_engine`).
LM_ENGINES = ("hf", "vllm")


def _lm(spec: str, options: ScorerOptions):
    if options.lm_engine not in LM_ENGINES:
        raise UserError(f"language-model engine {options.lm_engine!r}: choose {' or '.join(LM_ENGINES)}")
    if options.lm_engine == "vllm":
        from recbrew.serve.vllm_scorer import load_vllm_scorer  # lazy: loads vllm

        return load_vllm_scorer(spec, catalog=options.task_catalog(), name=options.name, dtype=options.dtype,
                                layers=options.layers, device=options.device)
    from recbrew.scoring.hf import load_hf_scorer  # lazy: loads torch

    return load_hf_scorer(spec, catalog=options.task_catalog(), mode=options.mode, name=options.name,
                          device=options.device, dtype=options.dtype, layers=options.layers)


def _lm_fingerprint(spec: str) -> str:
    return folder_fingerprint(resolve(spec))  # a UserError with the accepted forms when nothing is there


def _is_lm(spec: str) -> bool:
    return True  # the last family: `resolve` says what a language-model spec may be


FAMILIES: list[Family] = [
    Family("oracle", lambda spec: spec == "oracle", _oracle, lambda spec: "oracle"),
    Family("popularity", lambda spec: spec == "popularity" and not Path(spec).exists(), _popularity,
           lambda spec: "popularity-fit"),
    Family("baseline", _is_baseline, _baseline, folder_fingerprint),
    Family("lm", _is_lm, _lm, _lm_fingerprint),
]


def register(family: Family) -> None:
    """Add a model family, tried before the shipped ones (a family of the same name is replaced)."""
    FAMILIES[:] = [family] + [f for f in FAMILIES if f.name != family.name]


def family_of(spec: str | Path) -> Family:
    spec = str(spec)
    return next(f for f in FAMILIES if f.matches(spec))


def load_scorer(spec: str | Path, options: ScorerOptions | None = None, **fields) -> object:
    """The Scorer of ``spec`` (see the module docstring); ``options`` or its fields as keywords."""
    options = options or ScorerOptions(**fields)
    return family_of(spec).load(str(spec), options)
