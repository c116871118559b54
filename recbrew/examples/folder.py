"""An examples folder written by `recbrew data build`, read in one place.

Every later stage (train, eval, `models score`, the baselines, serve) opens the folder through
:class:`Examples`: its manifest, its splits, its requests, and the task specs it was built with.
The specs are recorded *by content* in ``manifest.json`` (``task_specs``: the full TaskSpec as
JSON, its version and a SHA-256 of it), so a task authored in the user's own folder needs no
``--tasks-dir`` after the build. `docs/examples-format.md` describes the layout.

The manifest also records the size and SHA-256 of every file of the folder and of itself (``checksums``,
written by `recbrew data build`, or by :func:`seal` for a folder written by hand). The folder is checked
against them before its requests or its recorded task specs are used: a truncated, deleted, damaged or
edited file stops the reader with one line naming the file (``RECBREW_VERIFY=size`` checks sizes only).
A manifest without specs (an older recbrew) reads its tasks from the catalog (the shipped one, or
``--tasks-dir``), but without checksums its requests are refused until the folder is built again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from recbrew.data.ids import IdMap
from recbrew.data.io import EXAMPLES_MANIFEST, read_table, seal_data_folder, verify_manifest
from recbrew.errors import ConfigError, UserError
from recbrew.tasks import load_catalog
from recbrew.tasks.spec import TaskSpec

MANIFEST = EXAMPLES_MANIFEST
#: How every integrity message ends.
REBUILD = "run `recbrew data build` again"
#: 2: task specs recorded, the ``splits`` list (a ``validation`` split possible).
FORMAT = 2
SPLITS = ("train", "validation", "test")
#: The user's ids (see `recbrew.data.ids`), copied from a Corpus that mapped some.
IDS_FILE = "ids.parquet"


def spec_json(spec: TaskSpec) -> dict:
    """The spec as plain JSON (defaults filled in, enums as their values)."""
    return spec.model_dump(mode="json")


def spec_hash(data: Mapping) -> str:
    """SHA-256 of a spec's canonical JSON (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def spec_record(spec: TaskSpec) -> dict:
    """What the manifest keeps of one task: ``{"version", "sha256", "spec"}``."""
    data = spec_json(spec)
    return {"version": spec.version, "sha256": spec_hash(data), "spec": data}


def seal(path: str | Path) -> None:
    """Record the checksums of an examples folder written by hand (its ``manifest.json`` then lists every other
    file of the folder); `recbrew data build` does this itself."""
    root = Path(path)
    if not (root / MANIFEST).is_file():
        raise UserError(f"{root}: not an examples folder (no {MANIFEST})")
    seal_data_folder(root)


def spec_diff(recorded: Mapping, other: Mapping, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """Dotted field paths whose values differ (lists compare whole), with (recorded, other) values."""
    out = []
    for key in sorted(set(recorded) | set(other)):
        a, b = recorded.get(key), other.get(key)
        path = f"{prefix}{key}"
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out.extend(spec_diff(a, b, path + "."))
        elif a != b:
            out.append((path, a, b))
    return out


def _short(value: Any, width: int = 48) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= width else text[: width - 3] + "..."


def check_same_specs(recorded: Mapping[str, TaskSpec], catalog: Mapping[str, TaskSpec], where: str,
                     source: str) -> None:
    """ConfigError naming the first task that ``catalog`` (from ``source``) defines differently from ``recorded``."""
    for name in sorted(recorded):
        if name not in catalog:
            continue
        a, b = spec_json(recorded[name]), spec_json(catalog[name])
        diff = spec_diff(a, b)
        if diff:
            shown = "; ".join(f"{path}: {_short(y)} there, {_short(x)} recorded" for path, x, y in diff[:3])
            more = f" (+{len(diff) - 3} more)" if len(diff) > 3 else ""
            raise ConfigError(
                f"task {name!r}: {source} defines it differently from the spec {where} was built with "
                f"({shown}{more}); rebuild the examples with that catalog, or drop --tasks-dir to use the recorded spec")


@dataclass
class Examples:
    """One examples folder: ``manifest.json``, ``text/`` and ``structured/`` (see the module docstring)."""

    root: Path
    manifest: dict
    _specs: dict | None = field(default=None, repr=False)
    _verified: bool = field(default=False, repr=False)

    @classmethod
    def open(cls, path: str | Path) -> Examples:
        root = Path(path)
        file = root / MANIFEST
        if not file.is_file():
            raise UserError(f"{root}: not an examples folder (no {MANIFEST}); build one with `recbrew data build`")
        try:
            manifest = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UserError(f"{file}: not readable JSON ({exc}); {REBUILD}") from None
        if not isinstance(manifest, dict):
            raise UserError(f"{file}: a manifest is a JSON object; {REBUILD}")
        return cls(root, manifest)

    def verify(self) -> None:
        """IntegrityError unless every file is as the manifest records it (and the manifest as it was written).

        Called before the folder's requests or task specs are used; checked once per :class:`Examples`.
        """
        if not self._verified:
            verify_manifest(self.manifest, self.root, self.root / MANIFEST, REBUILD)
            self._verified = True

    # Splits and requests --------------------------------------------------------------------------
    @property
    def splits(self) -> list[str]:
        """The splits written (``train``, ``test``, and ``validation`` when the build made one)."""
        listed = self.manifest.get("splits")
        if listed:
            return list(listed)
        info = self.root / "text" / "dataset_dict.json"
        if info.is_file():
            return list(json.loads(info.read_text()).get("splits", ["train", "test"]))
        return ["train", "test"]

    def has_split(self, split: str) -> bool:
        return split in self.splits

    def require_split(self, split: str) -> None:
        if split in self.splits:
            return
        hint = ("; build the examples with --val-days or --val-fraction (or --split leave-last)"
                if split == "validation" else "")
        raise UserError(f"{self.root}: no {split!r} split (it has {', '.join(self.splits)}){hint}")

    def requests(self, split: str = "test", tasks: Sequence[str] | None = None) -> list[dict]:
        """Rows of ``split`` with the text and structured views merged, optionally for some tasks only."""
        import datasets

        self.require_split(split)
        self.verify()
        text = datasets.load_from_disk(str(self.root / "text"))[split]
        structured = datasets.load_from_disk(str(self.root / "structured"))[split]
        wanted = set(tasks) if tasks else None
        rows = []
        for t, s in zip(text, structured, strict=True):
            if t["request_id"] != s["request_id"]:
                raise UserError(f"{self.root}: text and structured views are out of step; rebuild the examples")
            if wanted is None or t["task"] in wanted:
                rows.append({**s, **t})
        return rows

    def structured_rows(self, split: str, columns: Sequence[str], split_tag: str | None = None,
                        tasks: Sequence[str] | None = None) -> list[dict]:
        """Rankable rows (binary and listwise, with candidates) of the structured view only, with their kind:
        ``columns`` of ``split``, optionally of one split tag (``T1``) and some tasks."""
        import datasets

        self.require_split(split)
        path = self.root / "structured"
        if not path.is_dir():
            raise UserError(f"{self.root}: no structured/ view; rebuild the examples with `recbrew data build`")
        self.verify()
        ds = datasets.load_from_disk(str(path))[split]
        missing = [c for c in columns if c not in ds.column_names]
        if missing:
            raise UserError(f"{path}: missing column(s) {', '.join(missing)}; rebuild the examples with "
                            "`recbrew data build`")
        kinds, wanted = self.kinds(), set(tasks) if tasks else None
        cols = ds.select_columns(list(columns))[:]
        rows = []
        for i, task in enumerate(cols["task"]):
            kind = kinds.get(task, "binary")
            if kind == "generative" or not cols["candidate_ids"][i]:
                continue
            if (split_tag and cols["split_tag"][i] != split_tag) or (wanted is not None and task not in wanted):
                continue
            rows.append({**{c: cols[c][i] for c in columns}, "kind": kind})
        return rows

    # Tasks --------------------------------------------------------------------------------------------
    @property
    def task_names(self) -> list[str]:
        return sorted(self.manifest.get("tasks", {}))

    def kinds(self) -> dict[str, str]:
        """Task name -> kind (binary, listwise, generative)."""
        return {name: t["kind"] for name, t in self.manifest.get("tasks", {}).items()}

    @property
    def records_specs(self) -> bool:
        return "task_specs" in self.manifest

    def recorded_specs(self) -> dict[str, TaskSpec] | None:
        """The specs the folder was built with, checked against their hashes; None for older folders."""
        if self._specs is None and self.records_specs:
            self.verify()
            specs = {}
            for name, rec in self.manifest["task_specs"].items():
                where = f"{self.root / MANIFEST}: task_specs.{name}"
                if not isinstance(rec, dict) or not isinstance(rec.get("spec"), dict):
                    raise UserError(f"{where}: needs a 'spec' object (the task's fields)")
                try:
                    spec = TaskSpec.model_validate(rec["spec"])
                except ValidationError as exc:
                    err = exc.errors()[0]
                    raise UserError(f"{where}.spec.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}") from None
                if spec.name != name:
                    raise UserError(f"{where}: the spec is named {spec.name!r}")
                digest = rec.get("sha256")
                if digest is None:
                    raise UserError(f"{where}: no sha256 of the spec, so it cannot be trusted; {REBUILD}")
                if digest != spec_hash(rec["spec"]):
                    raise UserError(f"{where}: sha256 does not match the spec (edited by hand?); {REBUILD}")
                if rec.get("version") is not None and rec["version"] != spec.version:
                    raise UserError(f"{where}: version {rec['version']} but the spec says {spec.version}")
                specs[name] = spec
            self._specs = specs
        return None if self._specs is None else dict(self._specs)

    def catalog(self, tasks_dir: str | Path | None = None) -> dict[str, TaskSpec]:
        """Task specs to read this folder with: the recorded ones (plus any other task of ``tasks_dir``).

        A ``tasks_dir`` defining a recorded task differently is a ConfigError naming the task and the fields.
        Folders without recorded specs use ``tasks_dir`` or the shipped catalog, as before.
        """
        recorded = self.recorded_specs()
        if recorded is None:
            return load_catalog(tasks_dir)
        if tasks_dir is None:
            return recorded
        other = load_catalog(tasks_dir)
        check_same_specs(recorded, other, str(self.root), f"--tasks-dir {tasks_dir}")
        return {**other, **recorded}

    def spec(self, name: str, tasks_dir: str | Path | None = None) -> TaskSpec:
        catalog = self.catalog(tasks_dir)
        if name not in catalog:
            raise UserError(f"{self.root}: task {name!r} is not among the tasks it was built with "
                            f"({', '.join(self.task_names) or '-'})")
        return catalog[name]

    # Build settings -------------------------------------------------------------------------------
    @property
    def config(self) -> dict:
        return dict(self.manifest.get("config", {}))

    @property
    def corpus(self) -> Path | None:
        corpus = self.manifest.get("corpus")
        return Path(corpus) if corpus else None

    @property
    def ids(self) -> IdMap:
        """The user's ids of the Corpus the examples were built from (empty when its ids were integers)."""
        path = self.root / IDS_FILE
        if not path.is_file():
            return IdMap({})
        self.verify()
        return IdMap.from_table(read_table(path), str(path))

    def corpus_dir(self, why: str) -> Path:
        """The Corpus folder the examples were built from; UserError (saying ``why`` it is needed) when gone."""
        corpus = self.corpus
        if corpus is None or not corpus.is_dir():
            raise UserError(f"{self.root}: the Corpus it was built from ({corpus}) is not there; {why}")
        return corpus

