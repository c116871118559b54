"""Configs, one way: a name or a path -> a YAML (or JSON) mapping -> ``key=value`` overrides -> a validated
model, with every mistake reported as one line (`ConfigError`).

Training configs (`configs/train/`), baseline configs (`configs/baselines/`), DeepSpeed configs
(`configs/deepspeed/`) and world configs (`configs/world/`) all load through here; each caller
says which shipped folder a bare name refers to and which model validates the result.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from recbrew import assets
from recbrew.errors import ConfigError
from recbrew.overrides import yaml_value


def shipped_dir(kind: str) -> Path:
    """The folder of shipped ``kind`` configs (``train``, ``baselines``, ``deepspeed``, ``world``)."""
    return assets.path("configs") / kind


def shipped_names(kind: str, suffixes: Sequence[str] = (".yaml",)) -> list[str]:
    """Every shipped ``kind`` config by the shortest name `resolve` takes: ``lirank`` for
    ``configs/baselines/lirank.yaml``, ``movielens/lirank`` for ``configs/movielens/baselines/lirank.yaml``."""
    root = assets.path("configs")
    names = []
    for path in root.rglob("*"):
        if not path.is_file() or path.suffix not in suffixes:
            continue
        parts = path.relative_to(root).with_suffix("").parts
        if kind in parts[:-1]:
            at = parts.index(kind)
            names.append("/".join(parts[:at] + parts[at + 1:]))
    return sorted(names, key=lambda n: (n.count("/"), n))


def shipped_or_none(kind: str, name: str) -> Path | None:
    """The shipped ``configs/KIND/NAME.yaml`` when there is one (e.g. a baseline's defaults), else None."""
    path = shipped_dir(kind) / f"{name}.yaml"
    return path if path.is_file() else None


def _shipped(kind: str, name: str, suffixes: Sequence[str]) -> Path | None:
    """The shipped config a name means: ``configs/KIND/NAME``, ``configs/NAME`` when NAME runs through a
    ``KIND`` folder (``movielens/baselines/lirank``), or ``configs/FIRST/KIND/REST`` (``movielens/lirank``)."""
    parts = Path(name).parts
    if not parts or Path(name).is_absolute() or any(p in ("..", ".") for p in parts):
        return None
    root = assets.path("configs")
    stems = [name[: -len(Path(name).suffix)]] if Path(name).suffix in suffixes else [name]
    places = [root / kind / stem for stem in stems]
    for stem in stems:
        head = Path(stem).parts
        if kind in head[:-1]:
            places.append(root / stem)
        if len(head) > 1:
            places.append(root / head[0] / kind / Path(*head[1:]))
    for place in places:
        for suffix in suffixes:
            path = place.with_name(place.name + suffix)
            if path.is_file():
                return path
    return None


def resolve(kind: str, name_or_path: str | Path, suffixes: Sequence[str] = (".yaml",)) -> Path:
    """A config file: ``name_or_path`` itself when it is a file, else a shipped one named by its path under
    ``configs/`` (``lirank``, ``movielens/lirank`` or ``movielens/baselines/lirank``, see `_shipped`)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = _shipped(kind, str(name_or_path), suffixes)
    if shipped is not None:
        return shipped
    raise ConfigError(f"{kind} config {str(name_or_path)!r}: no such file and not a shipped config "
                      f"(shipped: {', '.join(shipped_names(kind, suffixes)) or 'none'})")


def read_mapping(path: Path, what: str = "config") -> dict:
    """The mapping in a YAML or JSON file."""
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}".splitlines()[0]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a {what} is a mapping of fields, got {type(data).__name__}")
    return data


def parse_overrides(items: Sequence[str] | None, example: str = "max_steps=20") -> dict[str, Any]:
    """``key=value`` strings (keys may be dotted) -> {key: value}, values read as YAML."""
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r}: write it as key=value (e.g. {example})")
        out[key] = yaml_value(raw)
    return out


def set_dotted(data: Mapping[str, Any], overrides: Mapping[str, Any], what: str = "override") -> dict:
    """A copy of ``data`` with dotted keys set (``{"train.epochs": 3}`` sets ``data["train"]["epochs"]``)."""
    out = copy.deepcopy(dict(data))
    for key, value in overrides.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{what} {key!r}: {part!r} is not a section")
            node = child
        node[leaf] = value
    return out


def _fields(cls) -> list[str]:
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        return list(cls.model_fields)
    return [f.name for f in dataclasses.fields(cls)]


def _check_unknown(cls, data: Mapping[str, Any], head: str) -> None:
    """Unknown keys of ``data`` for ``cls``, in nested dataclass sections too (pydantic ignores those there)."""
    known = _fields(cls)
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{head}: unknown field(s) {', '.join(unknown)} (known: {', '.join(known)})")
    if not dataclasses.is_dataclass(cls):
        return
    hints = typing.get_type_hints(cls)
    for name, value in data.items():
        if isinstance(value, Mapping) and dataclasses.is_dataclass(hints.get(name)):
            _check_unknown(hints[name], value, f"{head}.{name}" if ": " in head else f"{head}: {name}")


def validate(cls, data: Mapping[str, Any], where: str = "config", section: str | None = None):
    """``cls`` (a pydantic model or a dataclass) from ``data`` (the ``section`` of a config file, if it is one);
    unknown fields and bad values are one line: ``WHERE: SECTION.FIELD: what is wrong``."""
    head = f"{where}: {section}" if section else where
    if not isinstance(data, Mapping):
        raise ConfigError(f"{head}: expected a mapping of {cls.__name__} fields, got {type(data).__name__}")
    _check_unknown(cls, data, head)
    try:
        if isinstance(cls, type) and issubclass(cls, BaseModel):
            return cls(**data)
        return TypeAdapter(cls).validate_python(dict(data))
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join([*([section] if section else []), *(str(p) for p in err["loc"])])
        raise ConfigError(f"{where}{': ' + loc if loc else ''}: {err['msg']}") from None


def load(cls, kind: str, name_or_path: str | Path | None = None, overrides: Sequence[str] | None = None, *,
         example: str = "max_steps=20", dotted: bool = True):
    """``cls`` from a shipped name or a path (or its defaults), with ``key=value`` overrides on top.

    ``dotted=False`` keeps override keys whole (fields whose values are mappings with dotted keys of their own).
    """
    data: dict = {}
    where = "config"
    if name_or_path is not None:
        path = resolve(kind, name_or_path)
        data, where = read_mapping(path, f"{kind} config"), str(path)
    values = parse_overrides(overrides, example)
    data = set_dotted(data, values) if dotted else {**data, **values}
    return validate(cls, data, where)
