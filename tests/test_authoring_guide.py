"""docs/authoring-tasks.md, followed to the letter: its task file, its commands and its template must work."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import typing
from collections import Counter
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from recbrew.tasks import load_catalog, parse_task
from recbrew.tasks.spec import TaskSpec

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "authoring-tasks.md"
RECBREW = Path(sys.executable).parent / "recbrew"
TASK_FILE = "my_tasks/jobs/jobs_remote_apply.yaml"
TEMPLATE_FILE = "my_prompts/pointwise.terse.j2"
WALKTHROUGH = "## Walkthrough"
TEMPLATES = "## Writing your own template"
#: Fenced blocks: ```lang [info]\n body ```
_FENCE = re.compile(r"^```(\w*)[ \t]*([^\n]*)\n(.*?)^```[ \t]*$", re.S | re.M)


def _guide() -> str:
    return GUIDE.read_text(encoding="utf-8")


def _section(heading: str) -> str:
    """The guide's text from ``heading`` to the next level-2 heading."""
    text = _guide()
    start = text.find("\n" + heading)
    assert start >= 0, f"{GUIDE.name} has no section starting with {heading!r}"
    end = text.find("\n## ", start + 1)
    return text[start: end if end >= 0 else len(text)]


def _blocks(section: str) -> list[tuple[str, str, str]]:
    """(language, info string, body) of every fenced block, in document order."""
    return [(m.group(1), m.group(2).strip(), m.group(3)) for m in _FENCE.finditer(section)]


def _titled(section: str, lang: str, path: str) -> str:
    found = [body for lg, info, body in _blocks(section) if lg == lang and info == f"title={path}"]
    assert len(found) == 1, f"expected one ```{lang} title={path} block, found {len(found)}"
    return found[0]


def _commands(body: str) -> list[str]:
    """Shell lines of a bash block: comments and blanks dropped, backslash continuations joined."""
    out, pending = [], ""
    for raw in body.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        out.append(pending + line)
        pending = ""
    assert not pending, f"unfinished continuation line: {pending!r}"
    return out


def _run(line: str, cwd: Path, **placeholders: Path) -> tuple[list[str], subprocess.CompletedProcess]:
    """Run one command line of the guide (placeholders such as WORLD_DIR replaced); it must exit 0."""
    for name, value in placeholders.items():
        line = line.replace(name, str(value))
    argv = shlex.split(line)
    assert argv[0] in ("recbrew", "mkdir"), f"the guide's commands may only run recbrew and mkdir: {line}"
    if argv[0] == "recbrew":
        argv[0] = str(RECBREW)
    out = subprocess.run(argv, capture_output=True, text=True, cwd=cwd)
    assert out.returncode == 0, f"`{line}` exited {out.returncode}:\n{out.stderr}\n{out.stdout}"
    return argv, out


@pytest.fixture(scope="module")
def world(shared_world) -> Path:
    return shared_world(200, 10, 0)


def test_walkthrough_task_file_is_valid():
    spec = parse_task(_titled(_section(WALKTHROUGH), "yaml", TASK_FILE), TASK_FILE)
    assert spec.name == Path(TASK_FILE).stem and spec.surface == Path(TASK_FILE).parent.name
    assert spec.split.value == "T1" and spec.kind.value == "binary"


def test_annotated_example_is_the_shipped_file():
    """The annotated task at the top of the guide matches the shipped file it claims to be."""
    section = _section("## Anatomy of a task file")
    yamls = [body for lang, _, body in _blocks(section) if lang == "yaml"]
    assert yamls, "the anatomy section has no yaml block"
    shown = yaml.safe_load(yamls[0])
    shipped = yaml.safe_load((ROOT / "tasks" / shown["surface"] / f"{shown['name']}.yaml").read_text())
    assert shown == shipped


def _field_names(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted names of the leaf fields of a model and its nested models (list items as ``name[].field``)."""
    names = []
    for name, info in model.model_fields.items():
        dotted, ann = prefix + name, info.annotation
        nested = [s for s in typing.get_args(ann) or (ann,) if isinstance(s, type) and issubclass(s, BaseModel)]
        for sub in nested:
            names += _field_names(sub, dotted + ("[]." if typing.get_origin(ann) is list else "."))
        if not nested:
            names.append(dotted)
    return names


def test_guide_documents_every_task_field():
    text = _section("## Anatomy of a task file")
    missing = [f for f in _field_names(TaskSpec) if f"`{f}`" not in text]
    assert not missing, f"fields missing from the guide's field table: {missing}"


def test_walkthrough_commands_run(tmp_path, world):
    """Every block of the walkthrough, in order: the task file is written, each command is run."""
    examples = tmp_path / "examples"
    spec = None
    seen = Counter()
    for lang, info, body in _blocks(_section(WALKTHROUGH)):
        if lang == "yaml" and info.startswith("title="):
            path = tmp_path / info.removeprefix("title=")
            assert path.parent.is_dir(), f"the guide writes {path.name} before creating its folder"
            path.write_text(body, encoding="utf-8")
            spec = parse_task(body, str(path))
            continue
        if lang != "bash":
            continue
        for line in _commands(body):
            argv, out = _run(line, tmp_path, WORLD_DIR=world, EXAMPLES_DIR=examples)
            words = argv[1:3]
            if words == ["tasks", "validate"]:
                seen["validate"] += 1
            elif words == ["tasks", "list"]:
                assert "--json" in argv
                listed = json.loads(out.stdout)
                assert spec.name in [t["name"] for t in listed["tasks"]], out.stdout
                seen["list"] += 1
            elif words == ["tasks", "render"]:
                assert spec.question in out.stdout and "Answer:" in out.stdout, out.stdout
                seen["render"] += 1
            elif words == ["data", "build"]:
                manifest = json.loads((examples / "manifest.json").read_text())
                counts = manifest["tasks"][spec.name]
                assert counts["train"] > 0 and counts["version"] == spec.version, counts
                seen["build"] += 1
            elif argv[0] == "mkdir":
                seen["mkdir"] += 1
    assert spec is not None, "the walkthrough has no task file block"
    assert set(seen) == {"mkdir", "validate", "list", "render", "build"}, seen


def test_guide_template_renders(tmp_path, world):
    """The guide's template renders the walkthrough task: shared prefix, one segment per candidate."""
    from recbrew.data.corpus import Corpus
    from recbrew.verbalize.context import CorpusView
    from recbrew.verbalize.render import Renderer

    template = tmp_path / TEMPLATE_FILE
    template.parent.mkdir(parents=True)
    template.write_text(_titled(_section(TEMPLATES), "jinja", TEMPLATE_FILE), encoding="utf-8")
    spec = parse_task(_titled(_section(WALKTHROUGH), "yaml", TASK_FILE), TASK_FILE)
    style = template.name.split(".")[1]
    renderer = Renderer(spec, prompts_dir=template.parent, style=style)

    view = CorpusView(Corpus.load(world))
    t = int(view.h_ts.max()) + 1
    member = int(view.h_member[-1])
    jobs = [int(i) for i in view.item_ids if view.item_type(int(i)) == "job"][:3]
    prompt = renderer.render(view.member(member), [view.candidate(member, j, t, spec) for j in jobs],
                             view.history(member, t, spec), network=view.network(member, t))
    assert len(prompt.segments) == len(jobs)
    assert spec.instruction in prompt.prefix
    for i in range(len(jobs)):
        text = prompt.text(i)
        assert spec.question in text and text.endswith("Answer:")
    assert len(set(prompt.segments)) == len(jobs)

    # The guide's command renders the walkthrough task with the template.
    task_file = tmp_path / TASK_FILE
    task_file.parent.mkdir(parents=True)
    task_file.write_text(_titled(_section(WALKTHROUGH), "yaml", TASK_FILE), encoding="utf-8")
    commands = [line for lang, _, body in _blocks(_section(TEMPLATES)) if lang == "bash" for line in _commands(body)]
    assert commands, "the template section shows no command"
    for line in commands:
        argv, out = _run(line, tmp_path, WORLD_DIR=world)
        if argv[1:3] == ["tasks", "render"]:
            assert f"--style {style}" in line and "Candidate: " in out.stdout and spec.question in out.stdout


def test_shipped_catalog_breadth():
    catalog = load_catalog()
    surfaces = {t.surface for t in catalog.values()}
    t2 = [n for n, t in catalog.items() if t.split.value == "T2"]
    assert len(catalog) >= 30, len(catalog)
    assert len(surfaces) >= 8, surfaces
    assert len(t2) >= 4, t2
    kinds = Counter(t.kind.value for t in catalog.values())
    assert kinds["binary"] and kinds["listwise"] and kinds["generative"], kinds
