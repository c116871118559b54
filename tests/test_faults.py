"""Fault injection: damaged or edited examples folders and corpora, and out-of-range imports, run through the
commands that read them. Each fault ends the command with exit code 2 and one line `error: ...` that names the
file and the fix: never a traceback, never a result."""

from __future__ import annotations

import json
import shutil
import traceback
from pathlib import Path

import pytest

from recbrew.cli import main

TASKS = ["feed_like", "jobs_apply"]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """One small world, a recbrew-tiny model on it, its examples and a small imported CSV corpus; every case
    damages a copy."""
    from recbrew.examples.build import BuildConfig, build_examples
    from recbrew.models.tiny import build_tiny
    from recbrew.world import WorldConfig, generate_world

    root = tmp_path_factory.mktemp("faults")
    generate_world(WorldConfig(members=60, days=6, seed=1), root / "world", progress=False)
    build_tiny(root / "world", root / "tiny", "tiny", seed=0)
    build_examples(root / "world", root / "ex", BuildConfig(tasks=TASKS, test_days=2, gap_days=1, max_train=20,
                                                            max_test=10, tokenizer="none"), progress=False)
    src = _user_tables(root / "src")
    code, _, err = _cli("data", "import", "--out", root / "imported", "--format", "csv",
                        *(arg for name, path in src.items() for arg in (f"--{name}", path)))
    assert code == 0, err
    return root


def _cli(*args) -> tuple[int, str, str]:
    """Run `recbrew ARGS` in this process as a user would: (exit code, stdout, stderr). An exception that escapes
    the command comes back as exit code 1 and its traceback on stderr, the way Python would print it."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except Exception:
            err.write(traceback.format_exc())
            code = 1
    return code, out.getvalue(), err.getvalue()


def _refused(result: tuple[int, str, str], names: str, fix: str) -> str:
    """The one error line of a refused command, checked: exit code 2, no traceback, it names ``names``."""
    code, out, err = result
    assert "Traceback" not in out + err, err
    assert code == 2, f"exit {code} (a result from a damaged folder?)\n{out[-2000:]}\n{err[-2000:]}"
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0] == lines[-1], err
    assert names in errors[0] and fix in errors[0], errors[0]
    return errors[0]


# --------------------------------------------------------------------------- faults


def _arrow(root: Path, view: str, split: str) -> Path:
    return next((root / view / split).glob("data-*.arrow"))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _overwrite_64(path: Path) -> None:
    """64 bytes in the middle of the file, each flipped (so every one of them changes)."""
    data = bytearray(path.read_bytes())
    at = len(data) // 2
    data[at:at + 64] = bytes(b ^ 0xFF for b in data[at:at + 64])
    path.write_bytes(bytes(data))


def _edit_json(path: Path, edit) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc, indent=2))


def _swap_answer_words(m):
    answer = m["task_specs"]["feed_like"]["spec"]["answer"]
    answer["words"] = answer["words"][::-1]


def _grow_recorded_size(m):
    entry = next(iter(m["checksums"]["files"].values()))
    entry["size"] += 1


#: name -> (damage done to a copy of the examples folder, the file the error line must name)
EXAMPLE_FAULTS = {
    "truncated text arrow": (lambda ex: _truncate(_arrow(ex, "text", "test")), "text/test/data-"),
    "truncated structured arrow": (lambda ex: _truncate(_arrow(ex, "structured", "train")), "structured/train/data-"),
    "deleted arrow": (lambda ex: _arrow(ex, "structured", "test").unlink(), "structured/test/data-"),
    "deleted state.json": (lambda ex: (ex / "text" / "train" / "state.json").unlink(), "text/train/state.json"),
    "deleted text/": (lambda ex: shutil.rmtree(ex / "text"), "text/"),
    "64 bytes overwritten in arrow": (lambda ex: _overwrite_64(_arrow(ex, "text", "train")), "text/train/data-"),
    "manifest answer words edited": (lambda ex: _edit_json(ex / "manifest.json", _swap_answer_words), "manifest.json"),
    "manifest task kind edited": (lambda ex: _edit_json(
        ex / "manifest.json", lambda m: m["tasks"]["feed_like"].update(kind="listwise")), "manifest.json"),
    "manifest spec sha256 removed": (lambda ex: _edit_json(
        ex / "manifest.json", lambda m: m["task_specs"]["feed_like"].pop("sha256")), "manifest.json"),
    "manifest own sha256 removed": (lambda ex: _edit_json(
        ex / "manifest.json", lambda m: m["checksums"].pop("sha256")), "manifest.json"),
    "manifest checksums removed": (lambda ex: _edit_json(
        ex / "manifest.json", lambda m: m.pop("checksums")), "manifest.json"),
    "manifest recorded size edited": (lambda ex: _edit_json(ex / "manifest.json", _grow_recorded_size),
                                      "manifest.json"),
    "manifest truncated": (lambda ex: _truncate(ex / "manifest.json"), "manifest.json"),
    "manifest deleted": (lambda ex: (ex / "manifest.json").unlink(), "manifest.json"),
}

#: command -> its arguments, given the root of the fixture, the damaged examples folder and a fresh output path.
EXAMPLE_READERS = {
    "models score": lambda root, ex, out: ["models", "score", "--examples", ex, "--model", root / "tiny",
                                           "--limit", "2"],
    "eval": lambda root, ex, out: ["eval", "--models", "oracle", "--examples", ex, "--out", out, "--bootstrap", "0",
                                   "--no-progress"],
    "train": lambda root, ex, out: ["train", "--config", "tiny", f"model={root / 'tiny'}", f"examples={ex}",
                                    f"out={out}", "max_steps=1", "--quiet"],
    "baselines train": lambda root, ex, out: ["baselines", "train", "popularity", "--examples", ex, "--out", out,
                                              "--no-progress"],
}


@pytest.mark.parametrize("reader", [r for r in EXAMPLE_READERS if r != "train"])
def test_intact_examples_are_read(made, tmp_path, reader):
    """The control: the undamaged folder gives a result (training on it: the hold-out test below)."""
    code, out, err = _cli(*EXAMPLE_READERS[reader](made, made / "ex", tmp_path / "out"))
    assert code == 0, err[-3000:]


@pytest.mark.parametrize("reader", list(EXAMPLE_READERS))
@pytest.mark.parametrize("fault", list(EXAMPLE_FAULTS))
def test_damaged_examples_are_refused_in_one_line(made, tmp_path, fault, reader):
    _damaged_copy_is_refused(made / "ex", tmp_path / "ex", EXAMPLE_FAULTS[fault],
                             lambda ex: EXAMPLE_READERS[reader](made, ex, tmp_path / "out"), "recbrew data build",
                             tmp_path / "out")


def _damaged_copy_is_refused(source: Path, copy: Path, fault, argv, fix: str, out: Path) -> None:
    """Damage a copy of ``source`` with ``fault`` (damage, the file names the error may name); the command
    ``argv(copy)`` gives one line naming the copy and ``fix``, and writes nothing to ``out``."""
    shutil.copytree(source, copy)
    damage, names = fault
    damage(copy)
    line = _refused(_cli(*argv(copy)), names, fix)
    assert str(copy) in line
    assert not out.exists()  # nothing written from a damaged folder


def test_size_only_verification_still_catches_truncation_and_manifest_edits(made, tmp_path, monkeypatch):
    """RECBREW_VERIFY=size skips the hash pass (very large folders) but not the sizes or the manifest's own hash."""
    monkeypatch.setenv("RECBREW_VERIFY", "size")
    for fault in ("truncated text arrow", "manifest answer words edited", "manifest own sha256 removed"):
        ex = tmp_path / fault.replace(" ", "-")
        shutil.copytree(made / "ex", ex)
        damage, names = EXAMPLE_FAULTS[fault]
        damage(ex)
        _refused(_cli(*EXAMPLE_READERS["eval"](made, ex, tmp_path / "out")), names, "recbrew data build")
    monkeypatch.setenv("RECBREW_VERIFY", "sometimes")
    _refused(_cli(*EXAMPLE_READERS["eval"](made, made / "ex", tmp_path / "out")), "RECBREW_VERIFY=sometimes",
             "size")


def test_a_folder_written_by_hand_is_read_once_sealed(made, tmp_path):
    """A manifest rewritten by hand (here: the same content) is refused until `seal` records its checksums."""
    from recbrew.examples.folder import seal

    ex = tmp_path / "ex"
    shutil.copytree(made / "ex", ex)
    _edit_json(ex / "manifest.json", lambda m: m.pop("checksums"))
    _refused(_cli(*EXAMPLE_READERS["eval"](made, ex, tmp_path / "refused")), "records no checksums",
             "recbrew data build")
    seal(ex)
    code, _, err = _cli(*EXAMPLE_READERS["eval"](made, ex, tmp_path / "out"))
    assert code == 0, err[-3000:]


# --------------------------------------------------------------------------- corpora

#: name -> (damage done to a copy of the world, the file the error line must name)
CORPUS_FAULTS = {
    "truncated interactions": (lambda w: _truncate(w / "interactions.parquet"), "interactions.parquet"),
    "deleted items": (lambda w: (w / "items.parquet").unlink(), "items.parquet"),
    "64 bytes overwritten in members": (lambda w: _overwrite_64(w / "members.parquet"), "members.parquet"),
    "64 bytes overwritten in interactions": (lambda w: _overwrite_64(w / "interactions.parquet"),
                                             "interactions.parquet"),
    "world card edited": (lambda w: _edit_json(w / "world_card.json", lambda c: c.update(seed=99)),
                          "world_card.json"),
    "corpus.json deleted": (lambda w: (w / "corpus.json").unlink(), "corpus.json"),
    "corpus.json checksums removed": (lambda w: _edit_json(w / "corpus.json", lambda m: m.pop("checksums")),
                                      "corpus.json"),
    "corpus.json own sha256 removed": (lambda w: _edit_json(
        w / "corpus.json", lambda m: m["checksums"].pop("sha256")), "corpus.json"),
    "corpus.json recorded size edited": (lambda w: _edit_json(w / "corpus.json", _grow_recorded_size),
                                         "corpus.json"),
    "corpus.json truncated": (lambda w: _truncate(w / "corpus.json"), "corpus.json"),
}

CORPUS_READERS = {
    "data build": lambda w, out: ["data", "build", "--corpus", w, "--out", out, "--tasks", "feed_like",
                                  "--tokenizer", "none", "--test-days", "2", "--no-progress"],
    "data show": lambda w, out: ["data", "show", w],
}


@pytest.mark.parametrize("reader", list(CORPUS_READERS))
@pytest.mark.parametrize("fault", list(CORPUS_FAULTS))
def test_damaged_corpus_is_refused_in_one_line(made, tmp_path, fault, reader):
    _damaged_copy_is_refused(made / "world", tmp_path / "world", CORPUS_FAULTS[fault],
                             lambda world: CORPUS_READERS[reader](world, tmp_path / "out"), "recbrew world generate",
                             tmp_path / "out")


def test_corpus_edited_by_hand_is_refused_and_names_its_origin(made, tmp_path):
    """A CSV corpus from `data import`, one action word changed by hand: refused, the fix is to import again."""
    corpus = tmp_path / "imported"
    shutil.copytree(made / "imported", corpus)
    path = corpus / "interactions.csv"
    text = path.read_text()
    assert "like" in text
    path.write_text(text.replace("like", "love", 1))
    _refused(_cli("data", "show", corpus), "interactions.csv", "recbrew data import")
    code, out, err = _cli("data", "show", made / "imported")
    assert code == 0 and "interactions 5" in out, err


# --------------------------------------------------------------------------- data import


def _user_tables(src: Path, members: str | None = None, items: str | None = None, interactions=None,
                 edges: str | None = None) -> dict[str, Path]:
    """Small user tables (JSONL members and items, CSV interactions and edges); an argument replaces one file's
    text (``interactions`` may be an Arrow table instead, written as Parquet)."""
    src.mkdir(parents=True, exist_ok=True)
    log = None
    if not isinstance(interactions, (str, type(None))):  # an Arrow table, written as Parquet (it holds a NaN, say)
        log, interactions = interactions, None
    texts = {
        "members.jsonl": members or '{"member_id": 1, "headline": "data"}\n{"member_id": 2, "skills": ["go"]}\n',
        "items.jsonl": items or ('{"item_id": 10, "item_type": "job", "title": "Engineer"}\n'
                                 '{"item_id": 11, "item_type": "post", "title": "Hello"}\n'),
        "interactions.csv": interactions or ("member_id,item_id,action,timestamp,rating,p_like\n"
                                             "1,10,apply,1704164645,4.0,0.25\n2,11,like,1704164646,,0.5\n"
                                             "1,11,none,1704164647,,0.1\n2,10,none,1704164648,2.5,0\n"
                                             "1,10,like,1704164649,,1\n"),
        "edges.csv": edges or "src,dst,kind,timestamp\n1,2,connection,0\n2,10,follows_company,1704164000\n",
    }
    paths = {}
    for name, text in texts.items():
        (src / name).write_text(text, encoding="utf-8")
        paths[name.split(".")[0]] = src / name
    if log is not None:
        from recbrew.data import write_table

        paths["interactions"].unlink()
        paths["interactions"] = src / "interactions.parquet"
        write_table(log, paths["interactions"])
    return paths


def _log(rating: list[float]) -> object:
    import pyarrow as pa

    n = len(rating)
    return pa.table({"member_id": [1] * n, "item_id": [10] * n, "action": ["like"] * n,
                     "timestamp": [1704164645 + i for i in range(n)], "rating": rating})


def _import(tmp_path, **texts) -> tuple[tuple[int, str, str], Path]:
    """`recbrew data import` of the small user tables, ``texts`` replacing some: (the result, the corpus path)."""
    files = _user_tables(tmp_path / "src", **texts)
    out = tmp_path / "corpus"
    args = ["data", "import", "--out", out, *(a for name, p in files.items() for a in (f"--{name}", p))]
    return _cli(*args), out


INTERACTIONS_HEAD = "member_id,item_id,action,timestamp,rating,p_like\n"

#: name -> (one table's text, what the error line says after the file name)
BAD_IMPORTS = {
    "negative timestamp": ({"interactions": INTERACTIONS_HEAD + "1,10,like,1704164645,,\n1,11,like,-5,,\n"},
                           "interactions.csv: column 'timestamp' holds -5 at row 2, outside 1970-01-01..2100-01-01"),
    "timestamp after 2100": ({"interactions": INTERACTIONS_HEAD + "1,10,like,4200000000,,\n"},
                             "column 'timestamp' holds 4200000000 at row 1"),
    "timestamp in milliseconds": ({"interactions": INTERACTIONS_HEAD + "1,10,like,1704164645000,,\n"},
                                  "in milliseconds? divide by 1000"),
    "joined_at before 1970": ({"members": '{"member_id": 1, "joined_at": -86400}\n{"member_id": 2}\n'},
                              "members.jsonl: column 'joined_at' holds -86400 at row 1"),
    "probability above 1": ({"interactions": INTERACTIONS_HEAD + "1,10,like,1704164645,,0.5\n2,11,like,1704164645,,1.5\n"},
                            "column 'p_like' holds 1.5 at row 2; a probability is between 0 and 1"),
    "negative probability": ({"interactions": INTERACTIONS_HEAD + "1,10,like,1704164645,,-0.1\n"},
                             "column 'p_like' holds -0.1"),
    "NaN rating": ({"interactions": _log([4.0, float("nan")])},
                   "interactions.parquet: column 'rating' holds nan at row 2; numbers must be finite"),
    "infinite rating": ({"interactions": INTERACTIONS_HEAD + "1,10,like,1704164645,2,\n1,11,like,1704164646,inf,\n"},
                        "interactions.csv: column 'rating' holds inf at row 2"),
    "NUL in a title": ({"items": '{"item_id": 10, "item_type": "job", "title": "ok"}\n'
                                '{"item_id": 11, "item_type": "job", "title": "bad\\u0000title"}\n'},
                       "items.jsonl: column 'title' holds a NUL character (\\0) at row 2"),
    "NUL in a skills list": ({"members": '{"member_id": 1, "skills": ["a"]}\n{"member_id": 2, "skills": ["b", "c\\u0000"]}\n'},
                             "members.jsonl: column 'skills' holds a NUL character (\\0) at row 2"),
    "duplicate member id": ({"members": '{"member_id": 1}\n{"member_id": 2}\n{"member_id": 2}\n'},
                            "members.jsonl: duplicate member_id 2 at row 3"),
    "edge to an unknown id": ({"edges": "src,dst,kind,timestamp\n1,2,connection,0\n1,777,follows_member,0\n"},
                              "edges: 1 row(s) have a dst missing from members and items, first dst 777"),
    "interaction of an unknown member": ({"interactions": INTERACTIONS_HEAD + "9,10,like,1704164645,,\n"},
                                         "interactions: 1 row(s) have a member_id missing from members"),
}


@pytest.mark.parametrize("case", list(BAD_IMPORTS))
def test_import_refuses_values_out_of_range_in_one_line(tmp_path, case):
    texts, says = BAD_IMPORTS[case]
    result, out = _import(tmp_path, **texts)
    _refused(result, says, "")
    assert not out.exists()


def test_import_drops_repeated_rows_and_says_how_many(tmp_path):
    rows = "1,10,apply,1704164645,4.0,0.25\n2,11,like,1704164646,,0.5\n"
    (code, out, err), corpus = _import(tmp_path, interactions=INTERACTIONS_HEAD + rows + rows + rows.split("\n")[0] + "\n")
    assert code == 0, err
    assert f"{tmp_path / 'src' / 'interactions.csv'}: dropped 3 row(s) repeating an earlier row" in out
    from recbrew.data import Corpus

    loaded = Corpus.load(corpus).interactions
    assert loaded.column("timestamp").to_pylist() == [1704164645, 1704164646]  # the first of each, in file order


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_import_reads_a_two_megabyte_row(tmp_path, fmt):
    """A member whose headline is 2 MB (longer than Arrow's 1 MiB read blocks) imports whole."""
    headline = "résumé " * 300_000
    if fmt == "jsonl":
        members = json.dumps({"member_id": 1, "headline": headline}) + "\n" + '{"member_id": 2}\n'
        result, out = _import(tmp_path, members=members)
    else:
        files = _user_tables(tmp_path / "src")
        files["members"].unlink()
        files["members"] = tmp_path / "src" / "members.csv"
        files["members"].write_text(f'member_id,headline\n1,"{headline}"\n2,\n', encoding="utf-8")
        out = tmp_path / "corpus"
        result = _cli("data", "import", "--out", out, *(a for n, p in files.items() for a in (f"--{n}", p)))
    assert result[0] == 0, result[2]
    from recbrew.data import Corpus

    assert Corpus.load(out).members.column("headline").to_pylist()[0] == headline


# --------------------------------------------------------------------------- writers and training


def test_eval_refuses_an_existing_out_without_force(made, tmp_path):
    out = tmp_path / "eval"
    args = EXAMPLE_READERS["eval"](made, made / "ex", out)
    assert _cli(*args)[0] == 0
    stamp = (out / "report.json").stat().st_mtime_ns
    _refused(_cli(*args), str(out), "--force")
    assert (out / "report.json").stat().st_mtime_ns == stamp
    code, _, err = _cli(*args, "--force")
    assert code == 0, err
    assert (out / "report.json").stat().st_mtime_ns != stamp


def test_holdout_is_at_most_a_fifth_of_the_training_requests(capsys):
    from recbrew.train.data import select_requests

    rows = [{"task": "a", "split_tag": "T1", "kind": "binary", "request_id": f"a/{i}", "labels": [i % 2]}
            for i in range(53)]
    train, val = select_requests(rows, None, {}, None, 64, seed=0)
    assert (len(train), len(val)) == (43, 10)
    assert not {r["request_id"] for r in train} & {r["request_id"] for r in val}
    assert "eval_requests=64 is capped at 10" in capsys.readouterr().err
    train, val = select_requests(rows, None, {}, None, 4, seed=0)
    assert (len(train), len(val)) == (49, 4) and capsys.readouterr().err == ""
    train, val = select_requests(rows[:3], None, {}, None, 64, seed=0)  # too few to hold any out
    assert (len(train), len(val)) == (3, 0)


def test_train_holdout_is_capped_so_something_is_left_to_train(made, tmp_path):
    """The tiny config asks for 64 held-out requests; the folder has 31 training requests: 6 are held out, the
    run trains on the rest."""
    code, out, err = _cli(*EXAMPLE_READERS["train"](made, made / "ex", tmp_path / "run")[:-1], "eval_requests=64")
    assert code == 0, (out + err)[-3000:]
    assert "eval_requests=64 is capped at 6" in err
    log = json.loads((tmp_path / "run" / "train_log.json").read_text())
    assert log["val_requests"] == 6
