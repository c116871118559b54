"""Load task YAML files into TaskSpecs; every mistake becomes one line naming file, line and field."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from recbrew import assets
from recbrew.errors import UserError
from recbrew.tasks.spec import TaskSpec


class TaskError(UserError):
    """A task definition is invalid."""


def _line_of(root: yaml.Node | None, loc: tuple) -> int | None:
    """1-based line of the YAML node at a pydantic error location (deepest node found)."""
    node, line = root, (root.start_mark.line + 1 if root is not None else None)
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value == str(key):
                    node, line = v, k.start_mark.line + 1
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _load_yaml(text: str):
    """The C loader when libyaml is there (fast); the Python loader on an error, for its clearer messages."""
    fast = getattr(yaml, "CSafeLoader", None)
    if fast is not None:
        try:
            return yaml.load(text, Loader=fast)
        except yaml.YAMLError:
            pass
    return yaml.safe_load(text)


def parse_task(text: str, source: str) -> TaskSpec:
    """Parse one task definition from YAML text; ``source`` names it in errors."""
    try:
        data = _load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise TaskError(f"{where}: invalid YAML: {problem}") from None
    except (ValueError, TypeError, RecursionError) as exc:  # odd inputs the YAML parser itself chokes on
        raise TaskError(f"{source}: invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise TaskError(f"{source}: a task file must be a YAML mapping (name: ..., surface: ...), "
                        f"found {type(data).__name__}")
    try:
        return TaskSpec.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        field = ".".join(str(p) for p in loc) or "(task)"
        line = _line_of(yaml.compose(text), loc)
        where = f"{source}:{line}" if line else source
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; `recbrew tasks show` lists a task's fields)"
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise TaskError(f"{where}: {field}: {msg}{more}") from None


def load_task(path: str | Path) -> TaskSpec:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TaskError(f"{path}: cannot read task file: {exc}") from None
    task = parse_task(text, str(path))
    if path.stem != task.name:
        raise TaskError(f"{path}: task name {task.name!r} must match the file name ({path.stem}.yaml)")
    return task


def tasks_dir(directory: str | Path | None = None) -> Path:
    """The user's task folder, or the shipped catalog."""
    if directory is None:
        return assets.path("tasks")
    path = Path(directory)
    if not path.is_dir():
        raise TaskError(f"{path}: tasks directory not found")
    return path


def load_catalog(directory: str | Path | None = None) -> dict[str, TaskSpec]:
    """Every ``*.yaml`` task under the folder (sub-folders group tasks by surface), by name."""
    root = tasks_dir(directory)
    tasks: dict[str, TaskSpec] = {}
    where: dict[str, Path] = {}
    for path in sorted(root.rglob("*.yaml")):
        task = load_task(path)
        if task.name in tasks:
            raise TaskError(f"{path}: task {task.name!r} is also defined in {where[task.name]}")
        tasks[task.name], where[task.name] = task, path
    if not tasks:
        raise TaskError(f"{root}: no task files (*.yaml) found")
    return tasks


def get_task(name: str, directory: str | Path | None = None) -> TaskSpec:
    catalog = load_catalog(directory)
    if name not in catalog:
        close = sorted(n for n in catalog if name in n or n in name)[:5]
        hint = f"; did you mean {', '.join(close)}?" if close else "; `recbrew tasks list` shows them all"
        raise TaskError(f"unknown task {name!r}{hint}")
    return catalog[name]
