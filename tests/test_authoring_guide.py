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
from recbrew.world import WorldConfig, generate_world

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


def _strings(value) -> set[str]:
    """Every string (keys included) inside a JSON value."""
    if isinstance(value, str):
        return {value}
    if isinstance(value, dict):
        return set(value).union(*(_strings(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(_strings(v) for v in value))
    return set()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("guide") / "world"
    generate_world(WorldConfig(members=200, days=10), out, progress=False)
    return out


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
    """Dotted names of a model's fields and its nested models' (list items as ``name[].field``)."""
    names = []
    for name, info in model.model_fields.items():
        dotted = prefix + name
        names.append(dotted)
        ann = info.annotation
        for sub in typing.get_args(ann) or (ann,):
            if isinstance(sub, type) and issubclass(sub, BaseModel):
                names += _field_names(sub, dotted + ("[]." if typing.get_origin(ann) is list else "."))
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
            line = line.replace("WORLD_DIR", str(world)).replace("EXAMPLES_DIR", str(examples))
            argv = shlex.split(line)
            assert argv[0] in ("recbrew", "mkdir"), f"the walkthrough may only run recbrew and mkdir: {line}"
            if argv[0] == "recbrew":
                argv[0] = str(RECBREW)
            out = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path)
            assert out.returncode == 0, f"`{line}` exited {out.returncode}:\n{out.stderr}\n{out.stdout}"
            words = argv[1:3]
            if words == ["tasks", "validate"]:
                seen["validate"] += 1
            elif words == ["tasks", "list"]:
                assert "--json" in argv
                assert spec.name in _strings(json.loads(out.stdout)), out.stdout
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
    """The terse template of the guide renders the walkthrough task with a shared prefix."""
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


def test_shipped_catalog_breadth():
    catalog = load_catalog()
    surfaces = {t.surface for t in catalog.values()}
    t2 = [n for n, t in catalog.items() if t.split.value == "T2"]
    assert len(catalog) >= 30, len(catalog)
    assert len(surfaces) >= 8, surfaces
    assert len(t2) >= 4, t2
    kinds = Counter(t.kind.value for t in catalog.values())
    assert kinds["binary"] and kinds["listwise"] and kinds["generative"], kinds
