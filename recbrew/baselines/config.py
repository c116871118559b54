"""Run configuration of a baseline: model, features and training, from YAML plus overrides.

A config file (``configs/baselines/NAME.yaml``) has up to four keys::

    name: lirank            # optional; must match the model being trained
    model: {...}            # fields of LiRankConfig / LiGRConfig / DCNv2Config
    features: {...}         # fields of FeatureConfig
    train: {...}            # fields of FitConfig

Command-line overrides are ``section.field=value`` (``train.epochs=3``, ``model.rdcn=false``);
values are read as YAML. The sections are validated with pydantic at this boundary and become
plain dataclasses inside.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from recbrew import config
from recbrew.baselines.dcn import DCNv2, DCNv2Config
from recbrew.baselines.features import FeatureConfig
from recbrew.baselines.ligr import LiGR, LiGRConfig
from recbrew.baselines.lirank import LiRank, LiRankConfig
from recbrew.errors import ConfigError

#: The trainable rankers: name -> (config dataclass, model class).
MODELS = {"lirank": (LiRankConfig, LiRank), "ligr": (LiGRConfig, LiGR), "dcnv2": (DCNv2Config, DCNv2)}
SECTIONS = ("model", "features", "train")


@dataclass
class FitConfig:
    """How a ranker is trained: T1 train requests, their candidates as pointwise labels, BCE."""

    epochs: int = 10
    #: Requests per step (each brings all its candidates).
    batch_size: int = 64
    lr: float = 2e-3
    #: The learning rate decays along a cosine to this fraction of ``lr`` at the last step.
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.05
    seed: int = 0
    #: The latest fraction of the training requests, held out to pick the best epoch.
    val_fraction: float = 0.1
    #: Stop after this many epochs without a better validation macro AUC.
    patience: int = 4
    #: Torch CPU threads.
    threads: int = 1
    #: Use at most this many training requests (the latest ones); None: all.
    max_rows: int | None = None


@dataclass
class RunConfig:
    model_name: str
    model: LiRankConfig | LiGRConfig | DCNv2Config
    features: FeatureConfig = field(default_factory=FeatureConfig)
    train: FitConfig = field(default_factory=FitConfig)
    #: The YAML file the config was read from (None: defaults and overrides only); recorded, never compared.
    source: str | None = None

    def to_dict(self) -> dict:
        return {"name": self.model_name, "model": dataclasses.asdict(self.model),
                "features": dataclasses.asdict(self.features), "train": dataclasses.asdict(self.train)}


def parse_overrides(overrides: list[str] | None) -> dict[str, dict]:
    """``section.field=value`` strings -> {section: {field: value}}."""
    out: dict[str, dict] = {}
    for key, value in config.parse_overrides(overrides, "train.epochs=3").items():
        section, dot, name = key.partition(".")
        if not dot or section not in SECTIONS or not name or "." in name:
            raise ConfigError(f"override {key!r}: expected section.field=value with section one of "
                              f"{', '.join(SECTIONS)} (e.g. train.epochs=3)")
        out.setdefault(section, {})[name] = value
    return out


def run_config(model_name: str, path: str | Path | None = None, overrides: list[str] | None = None,
               base: dict | None = None) -> RunConfig:
    """Defaults <- ``base`` <- the YAML file (a path, or a shipped name such as ``lirank``) <- overrides, validated.

    Callers that want a model's shipped defaults pass ``config.shipped_or_none("baselines", model_name)``.
    """
    if model_name not in MODELS:
        raise ConfigError(f"unknown model {model_name!r} (one of: {', '.join(MODELS)})")
    where = str(path) if path else "config"
    data: dict = {s: dict(v) for s, v in (base or {}).items() if s in SECTIONS}
    if path is not None:
        path = config.resolve("baselines", path)
        loaded = config.read_mapping(path, "baseline config")
        unknown = sorted(set(loaded) - {"name", *SECTIONS})
        if unknown:
            raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)} (known: name, {', '.join(SECTIONS)})")
        if loaded.get("name", model_name) != model_name:
            raise ConfigError(f"{path}: configures {loaded['name']!r}, not {model_name!r}")
        for s in SECTIONS:
            data.setdefault(s, {}).update(loaded.get(s) or {})
    for s, values in parse_overrides(overrides).items():
        data.setdefault(s, {}).update(values)
    model_cls = MODELS[model_name][0]
    return RunConfig(model_name, config.validate(model_cls, data.get("model", {}), where, "model"),
                     config.validate(FeatureConfig, data.get("features", {}), where, "features"),
                     config.validate(FitConfig, data.get("train", {}), where, "train"),
                     source=str(path) if path is not None else None)


def build_model(cfg: RunConfig, space):
    """A fresh model of ``cfg`` for the fitted feature space."""
    return MODELS[cfg.model_name][1](cfg.model, space)
