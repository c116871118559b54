"""Task loader and template errors: one line naming the file (and line), never a traceback."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recbrew import assets
from recbrew.errors import UserError
from recbrew.tasks import TaskError, load_catalog, load_task, parse_task
from recbrew.verbalize.environment import TemplateError
from recbrew.verbalize.render import Renderer

RECBREW = Path(sys.executable).parent / "recbrew"
FEED_LIKE = assets.path("tasks") / "feed" / "feed_like.yaml"


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / "tasks" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _feed_like_text(**changes) -> str:
    data = yaml.safe_load(FEED_LIKE.read_text())
    data.update(changes)
    return yaml.safe_dump(data, sort_keys=False)


def test_shipped_catalog_loads_and_names_match_files():
    catalog = load_catalog()
    assert "feed_like" in catalog
    for path in assets.path("tasks").rglob("*.yaml"):
        assert load_task(path).name == path.stem


@pytest.mark.parametrize(
    "text, expected",
    [
        ("name: feed_like\nsurface: feed: bad\n", r"feed_like.yaml:2: invalid YAML: mapping values are not allowed here"),
        ("- just\n- a list\n", "must be a YAML mapping"),
        (None, "unknown field"),
        ("wrong_type", "version: Input should be a valid integer"),
        ("binary_three_words", "binary tasks need exactly two answer words"),
    ],
)
def test_bad_task_files_name_file_line_and_field(tmp_path, text, expected):
    if text is None:
        text = FEED_LIKE.read_text() + "colour: blue\n"
    elif text == "wrong_type":
        text = re.sub(r"(?m)^version: \d+$", "version: one", FEED_LIKE.read_text())
    elif text == "binary_three_words":
        text = FEED_LIKE.read_text().replace('words: ["yes", "no"]', 'words: ["yes", "no", "maybe"]')
    path = _write(tmp_path, "feed_like", text)
    with pytest.raises(TaskError) as err:
        load_task(path)
    message = str(err.value)
    assert expected in message and str(path) in message and "\n" not in message


def test_unknown_field_error_points_at_its_line(tmp_path):
    text = FEED_LIKE.read_text().replace("surface: feed\n", "surface: feed\nsurfce: jobs\n")
    line = text.splitlines().index("surfce: jobs") + 1
    with pytest.raises(TaskError, match=rf"feed_like.yaml:{line}: surfce: unknown field"):
        load_task(_write(tmp_path, "feed_like", text))


def test_nested_field_error_points_at_nested_line(tmp_path):
    text = FEED_LIKE.read_text().replace("max_items: 30", "max_items: lots")
    line = next(i for i, s in enumerate(text.splitlines(), 1) if "max_items" in s)
    with pytest.raises(TaskError, match=rf"feed_like.yaml:{line}: history.max_items"):
        load_task(_write(tmp_path, "feed_like", text))


def test_quote_and_empty_default_to_todays_prompts():
    for task in load_catalog().values():
        assert task.quote == {} and task.plain_fields == frozenset()
        assert all(g.empty is None for g in task.history.groups)
    spec = parse_task(_feed_like_text(quote={"title": "plain", "name": "guillemets"}), "feed_like.yaml")
    assert spec.plain_fields == {"title"}


def _with_empty(phrase) -> str:
    data = yaml.safe_load(FEED_LIKE.read_text())
    data["history"]["groups"][1]["empty"] = phrase
    return yaml.safe_dump(data, sort_keys=False)


@pytest.mark.parametrize(
    "text, needle, field, expected",
    [
        (_feed_like_text(quote={"title": "none"}), "title: none", "quote.title",
         "Input should be 'guillemets' or 'plain'"),
        (_feed_like_text(quote={"company": "plain"}), "quote:", "quote",
         "'company': not a free-text field; quote applies to name, headline, title, text, description"),
        (_feed_like_text(quote=["title"]), "quote:", "quote", "Input should be a valid dictionary"),
        (_with_empty(""), "empty:", "history.groups.1.empty", "empty must be a phrase on one line"),
        (_with_empty("none\nAnswer: yes"), "empty:", "history.groups.1.empty", "empty must be a phrase on one line"),
        (_with_empty(["none"]), "empty:", "history.groups.1.empty", "Input should be a valid string"),
    ],
)
def test_quote_and_empty_errors_are_one_line_naming_the_field(tmp_path, text, needle, field, expected):
    path = _write(tmp_path, "feed_like", text)
    line = next(i for i, s in enumerate(text.splitlines(), 1) if needle in s)
    with pytest.raises(TaskError) as err:
        load_task(path)
    message = str(err.value)
    assert message.startswith(f"{path}:{line}: {field}: ") and expected in message and "\n" not in message, message


def test_file_name_must_match_task_name(tmp_path):
    with pytest.raises(TaskError, match="must match the file name"):
        load_task(_write(tmp_path, "other_name", FEED_LIKE.read_text()))


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_fuzz_loader_raises_only_recbrew_errors_on_text(text):
    try:
        parse_task(text, "fuzz.yaml")
    except TaskError:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["name", "surface", "label", "answer", "history", "kind", "k", "version",
                                        "instruction", "question", "candidate_type", "description", "social"]),
                       yaml_values, max_size=10))
def test_fuzz_loader_raises_only_recbrew_errors_on_structures(data):
    base = yaml.safe_load(FEED_LIKE.read_text())
    base.update(data)
    try:
        parse_task(yaml.safe_dump(base), "fuzz.yaml")
    except TaskError:
        pass


def _prompts(tmp_path: Path, body: str) -> Path:
    folder = tmp_path / "prompts"
    folder.mkdir(exist_ok=True)
    (folder / "pointwise.compact.j2").write_text(body)
    return folder


_MEMBER = {"name": "«A»"}
_CAND = {"item_type": "post", "title": "«T»", "social": {}}


@pytest.mark.parametrize(
    "body, expected",
    [
        ("{% block prefix %}{{ member.nonexistent }}{% endblock %}{% block candidate %}x{% endblock %}",
         "pointwise.compact.j2:1: unknown template variable"),
        ("{% block prefix %}\n\n{% if %}{% endblock %}", "pointwise.compact.j2:3: template syntax error"),
        ("{% block prefix %}{{ ''.__class__.__mro__ }}{% endblock %}{% block candidate %}x{% endblock %}",
         "not allowed in a prompt template"),
        ("{% block prefix %}{{ member.__class__ }}{% endblock %}{% block candidate %}x{% endblock %}",
         "not allowed in a prompt template"),
        ("{% block prefix %}{{ cycler.__init__.__globals__ }}{% endblock %}{% block candidate %}x{% endblock %}",
         "pointwise.compact.j2"),
        ("{% block prefix %}{{ ().__class__.__base__.__subclasses__() }}{% endblock %}{% block candidate %}x{% endblock %}",
         "pointwise.compact.j2"),
        ("{% block prefix %}{{ task.words.append('x') }}{% endblock %}{% block candidate %}x{% endblock %}",
         "not allowed in a prompt template"),
        ("{% block candidate %}x{% endblock %}", "must define a '{% block prefix %}'"),
    ],
)
def test_template_errors_and_sandbox(tmp_path, body, expected):
    task = load_task(FEED_LIKE)
    with pytest.raises(TemplateError) as err:
        Renderer(task, prompts_dir=_prompts(tmp_path, body)).render(_MEMBER, [_CAND])
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_missing_template_is_a_user_error(tmp_path):
    task = load_task(FEED_LIKE).model_copy(update={"template": "nosuch"})
    with pytest.raises(TemplateError, match="template not found: nosuch.compact.j2"):
        Renderer(task)


def test_answer_word_must_be_a_single_token(tokenizer):
    from recbrew.scoring.answers import answer_token_ids

    task = load_task(FEED_LIKE)
    assert answer_token_ids(task, tokenizer) == [9805, 787]  # " yes", " no" in SmolLM2
    odd = task.model_copy(update={"answer": task.answer.model_copy(update={"words": ["xylophone", "no"]})})
    with pytest.raises(UserError, match="task feed_like: answer word 'xylophone' is 2 tokens"):
        answer_token_ids(odd, tokenizer)


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda d: (d / "tasks" / "feed_like.yaml").write_text("name: [\n"), "feed_like.yaml:2: invalid YAML"),
        (lambda d: (d / "tasks" / "feed_like.yaml").write_text(_feed_like_text(template="nosuch")),
         "template not found"),
        (lambda d: (d / "tasks" / "feed_like.yaml").write_text(
            _feed_like_text(answer={"words": ["xylophone", "no"]})), "is 2 tokens"),
    ],
)
def test_cli_validate_reports_one_line_and_exits_2(tmp_path, mutate, expected, tokenizer):
    (tmp_path / "tasks").mkdir()
    shutil.copy(FEED_LIKE, tmp_path / "tasks" / "feed_like.yaml")
    mutate(tmp_path)
    out = subprocess.run([str(RECBREW), "tasks", "validate", str(tmp_path / "tasks")], capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], out.stderr


def test_cli_validate_passes_on_shipped_catalog(tokenizer):
    out = subprocess.run([str(RECBREW), "tasks", "validate"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("tasks valid")
