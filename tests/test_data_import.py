"""Validating user tables (conform) and the `recbrew data import` command."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from recbrew.data import Corpus, conform, read_table, write_table
from recbrew.data.schema import F32, I32, I64, STR_LIST
from recbrew.errors import SchemaError, UserError


def invoke(*args: str):
    """Run `recbrew data ARGS`; a UserError comes back in result.exception, as main() would see it."""
    from recbrew.cli.data import app

    return CliRunner().invoke(app, [str(a) for a in args])


def utc(*parts: int) -> int:
    return int(datetime(*parts, tzinfo=timezone.utc).timestamp())


def write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def file_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


# --------------------------------------------------------------------------- conform


def test_missing_required_column_names_file_and_column():
    with pytest.raises(SchemaError) as err:
        conform("members", pa.table({"name": ["a"]}), "members.csv")
    assert str(err.value) == "members.csv: missing required column 'member_id' (members needs: member_id)"

    with pytest.raises(SchemaError) as err:
        conform("interactions", pa.table({"member_id": [1], "item_id": [2]}), "log.jsonl")
    assert str(err.value) == (
        "log.jsonl: missing required columns 'action', 'timestamp' "
        "(interactions needs: member_id, item_id, action, timestamp)"
    )


def test_mistyped_column_names_file_column_types_and_first_bad_value(tmp_path):
    path = write_text(tmp_path / "members.csv", "member_id,name\n1,a\n2,b\nx7,c\n4,d\n")
    with pytest.raises(SchemaError) as err:
        conform("members", read_table(path, "members"), "members.csv")
    assert str(err.value) == (
        "members.csv: column 'member_id' must be int64 but holds string; cannot convert 'x7' at row 3"
    )
    with pytest.raises(SchemaError) as err:
        conform("interactions", _interactions(position=pa.array([0.0, 1.5, 2.0])), "i.parquet")
    assert (
        str(err.value)
        == "i.parquet: column 'position' must be int32 but holds double; cannot convert 1.5 at row 2"
    )
    with pytest.raises(
        SchemaError, match=r"column 'position' must be int32 .* cannot convert 3000000000 at row 3"
    ):
        conform("interactions", _interactions(position=pa.array([0, 1, 3_000_000_000])), "i.parquet")


def _interactions(n: int = 3, **columns) -> pa.Table:
    base = {
        "member_id": pa.array(range(n), I64),
        "item_id": pa.array(range(n), I64),
        "action": ["like"] * n,
        "timestamp": pa.array([1_600_000_000] * n, I64),
    }
    return pa.table({**base, **columns})


def test_safe_casts_order_and_extra_columns():
    tbl = pa.table(
        {
            "zip": ["01234", "99999"],
            "timestamp": pa.array([5, 6], pa.int32()),
            "p_apply": [0.25, 0.5],
            "action": ["like", "none"],
            "item_id": pa.array([7, 8], pa.int16()),
            "position": [1.0, 2.0],
            "member_id": pa.array(["3", "4"]),
            "rating": pa.array([1, 5], pa.int8()),
        }
    )
    out = conform("interactions", tbl, "x")
    assert out.column_names == [
        "member_id",
        "item_id",
        "action",
        "timestamp",
        "position",
        "rating",
        "zip",
        "p_apply",
    ]
    assert out.schema.field("member_id").type == I64
    assert out.schema.field("timestamp").type == I64
    assert out.schema.field("position").type == I32
    assert out.schema.field("rating").type == F32
    assert out.schema.field("p_apply").type == F32  # p_* columns are declared by prefix
    assert out.column("member_id").to_pylist() == [3, 4]
    assert out.column("zip").to_pylist() == ["01234", "99999"]  # extras stay as they are


def test_iso_timestamps_become_epoch_seconds(tmp_path):
    rows = [
        ("2021-03-04T05:06:07Z", utc(2021, 3, 4, 5, 6, 7)),
        ("2021-03-04T06:06:07+01:00", utc(2021, 3, 4, 5, 6, 7)),
        ("2021-03-04 05:06:07", utc(2021, 3, 4, 5, 6, 7)),  # no zone: UTC
        ("2021-03-04T05:06:07.900Z", utc(2021, 3, 4, 5, 6, 7)),  # floored
        ("2021-03-04", utc(2021, 3, 4)),
        ("1969-12-31T23:59:59.5Z", -1),
    ]
    lines = [f'{{"member_id": 1, "item_id": 2, "action": "like", "timestamp": "{s}"}}' for s, _ in rows]
    path = write_text(tmp_path / "i.jsonl", "\n".join(lines) + "\n")
    out = conform("interactions", read_table(path), "i.jsonl")
    assert out.column("timestamp").type == I64
    assert out.column("timestamp").to_pylist() == [want for _, want in rows]

    # A CSV column of one consistent ISO form arrives as an Arrow timestamp.
    path = write_text(
        tmp_path / "i.csv", "member_id,item_id,action,timestamp\n1,2,like,2021-03-04T05:06:07Z\n"
    )
    assert read_table(path).schema.field("timestamp").type == pa.timestamp("s", "UTC")
    assert conform("interactions", read_table(path), "i.csv").column("timestamp").to_pylist() == [
        utc(2021, 3, 4, 5, 6, 7)
    ]


def test_arrow_timestamps_and_dates_become_epoch_seconds():
    stamps = pa.array([1_614_834_367_900, -500], pa.timestamp("ms", "Europe/Paris"))
    out = conform("interactions", _interactions(2, timestamp=stamps), "x")
    assert out.column("timestamp").to_pylist() == [1_614_834_367, -1]
    members = pa.table({"member_id": [1], "joined_at": pa.array([1], pa.date32())})
    assert conform("members", members, "x").column("joined_at").to_pylist() == [86_400]


def test_bad_iso_timestamp_is_reported():
    with pytest.raises(SchemaError) as err:
        conform("interactions", _interactions(2, timestamp=["2021-03-04", "yesterday"]), "i.csv")
    assert str(err.value) == (
        "i.csv: column 'timestamp' must be epoch seconds or an ISO-8601 time; cannot convert 'yesterday' at row 2"
    )


def test_list_columns_from_csv_text(tmp_path):
    path = write_text(
        tmp_path / "members.csv",
        'member_id,skills\n1,python|sql\n2,"[""a"", ""b|c""]"\n3,""\n4,\n5, x | y \n6,[]\n',
    )
    out = conform("members", read_table(path, "members"), "members.csv")
    assert out.schema.field("skills").type == STR_LIST
    assert out.column("skills").to_pylist() == [["python", "sql"], ["a", "b|c"], [], None, ["x", "y"], []]


def test_bad_json_list_is_reported():
    tbl = pa.table({"member_id": [1, 2, 3], "skills": ["a|b", '["ok"]', '["broken",']})
    with pytest.raises(SchemaError) as err:
        conform("members", tbl, "m.csv")
    assert str(err.value) == (
        "m.csv: column 'skills' must be a list of strings (a JSON list or 'a|b'); "
        "cannot parse '[\"broken\",' at row 3"
    )


def test_duplicate_ids_are_rejected():
    items = pa.table({"item_id": [1, 2, 2, 3, 3, 3], "item_type": ["job"] * 6, "title": list("abcdef")})
    with pytest.raises(SchemaError) as err:
        conform("items", items, "items.jsonl")
    assert str(err.value) == (
        "items.jsonl: duplicate item_id 2 at row 3 (item_id must be unique in items; 3 repeated row(s))"
    )
    # Interactions may repeat a member or an item.
    assert conform("interactions", _interactions(2, member_id=[1, 1]), "x").num_rows == 2


def test_nulls_in_required_columns_are_rejected():
    with pytest.raises(SchemaError) as err:
        conform("interactions", _interactions(3, action=["like", None, None]), "i.csv")
    assert str(err.value) == "i.csv: required column 'action' has 2 empty value(s), first at row 2"


def test_repeated_column_name_is_rejected():
    tbl = pa.Table.from_arrays([pa.array([1]), pa.array([2])], names=["member_id", "member_id"])
    with pytest.raises(SchemaError, match="column 'member_id' appears more than once"):
        conform("members", tbl, "m.csv")


def test_unreadable_file_is_a_user_error(tmp_path):
    path = write_text(tmp_path / "m.jsonl", '[{"member_id": 1},\n {"member_id": 2}]\n')
    with pytest.raises(UserError, match=r"m.jsonl: cannot read as jsonl: "):
        read_table(path)


# --------------------------------------------------------------------------- recbrew data import


@pytest.fixture
def user_files(tmp_path) -> dict[str, Path]:
    """A tiny user export: CSV members, JSONL items, CSV interactions with ISO times, Parquet edges."""
    src = tmp_path / "src"
    src.mkdir()
    members = write_text(
        src / "members.csv",
        'member_id,name,skills,open_to_work,team\n1,Ada,python|sql,true,core\n2,Bo,"[""go""]",,infra\n3,Cy,,false,core\n',
    )
    items = write_text(
        src / "items.jsonl",
        '{"item_id": 10, "item_type": "job", "title": "Engineer", "skills": ["python"]}\n'
        '{"item_id": 11, "item_type": "post", "title": "Hello", "text": "hi all"}\n',
    )
    interactions = write_text(
        src / "interactions.csv",
        "member_id,item_id,action,timestamp,surface\n"
        "1,10,apply,2024-01-02T03:04:05Z,jobs\n"
        "2,11,like,2024-01-02T03:04:06Z,feed\n"
        "3,11,none,2024-01-02T03:04:07Z,feed\n",
    )
    edges = src / "edges.parquet"
    write_table(pa.table({"src": [1], "dst": [2], "kind": ["connection"], "timestamp": [0]}), edges)
    return {"members": members, "items": items, "interactions": interactions, "edges": edges}


def import_args(files: dict[str, Path], out: Path, *extra: str) -> list[str]:
    args = ["import", "--out", out, *extra]
    for name, path in files.items():
        args += [f"--{name}", path]
    return args


def test_import_writes_a_conformed_corpus(tmp_path, user_files):
    out = tmp_path / "corpus"
    result = invoke(*import_args(user_files, out))
    assert result.exit_code == 0, result.output
    assert result.output == f"wrote 3 members, 2 items, 3 interactions, 1 edges to {out} (parquet)\n"
    corpus = Corpus.load(out)
    assert corpus.members.column("skills").to_pylist() == [["python", "sql"], ["go"], None]
    assert corpus.members.column("open_to_work").to_pylist() == [True, None, False]
    assert corpus.members.column("team").to_pylist() == ["core", "infra", "core"]
    assert corpus.items.column("text").to_pylist() == [None, "hi all"]
    base = utc(2024, 1, 2, 3, 4, 5)
    assert corpus.interactions.column("timestamp").to_pylist() == [base, base + 1, base + 2]
    assert corpus.edges.num_rows == 1
    assert corpus.meta["source"] == "import"
    assert corpus.meta["files"]["members"] == str(user_files["members"])


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_import_writes_the_requested_format(tmp_path, user_files, fmt):
    out = tmp_path / "corpus"
    result = invoke(*import_args(user_files, out, "--format", fmt))
    assert result.exit_code == 0, result.output
    assert (out / f"members.{fmt}").is_file()
    assert Corpus.load(out).members.column("skills").to_pylist() == [["python", "sql"], ["go"], None]


def test_import_without_edges(tmp_path, user_files):
    files = {k: v for k, v in user_files.items() if k != "edges"}
    result = invoke(*import_args(files, tmp_path / "c"))
    assert result.exit_code == 0, result.output
    assert Corpus.load(tmp_path / "c").edges.num_rows == 0


def test_import_rejects_unknown_ids_and_changes_nothing(tmp_path, user_files):
    out = tmp_path / "corpus"
    assert invoke(*import_args(user_files, out)).exit_code == 0
    before = file_bytes(out)

    text = (
        user_files["interactions"].read_text()
        + "9,10,like,2024-01-03T00:00:00Z,feed\n1,77,like,2024-01-03T00:00:00Z,feed\n"
    )
    write_text(user_files["interactions"], text)
    result = invoke(*import_args(user_files, out, "--force", "--format", "csv"))
    assert isinstance(result.exception, UserError)
    assert (
        str(result.exception)
        == "interactions: 1 row(s) have a member_id missing from members, first member_id 9"
    )
    assert file_bytes(out) == before


def test_import_into_non_empty_directory_needs_force(tmp_path, user_files):
    out = tmp_path / "corpus"
    out.mkdir()
    write_text(out / "members.parquet", "not mine to overwrite")
    result = invoke(*import_args(user_files, out))
    assert isinstance(result.exception, UserError)
    assert str(result.exception) == f"{out}: directory is not empty; pass --force to replace the corpus in it"
    assert file_bytes(out) == {"members.parquet": b"not mine to overwrite"}

    result = invoke(*import_args(user_files, out, "--force"))
    assert result.exit_code == 0, result.output
    assert Corpus.load(out).members.num_rows == 3


def test_import_schema_error_is_one_line_and_changes_nothing(tmp_path, user_files):
    out = tmp_path / "corpus"
    assert invoke(*import_args(user_files, out)).exit_code == 0
    before = file_bytes(out)
    write_text(user_files["members"], "id,name\n1,Ada\n")
    result = invoke(*import_args(user_files, out, "--force"))
    assert isinstance(result.exception, SchemaError)
    message = str(result.exception)
    assert "\n" not in message
    assert (
        message == f"{user_files['members']}: missing required column 'member_id' (members needs: member_id)"
    )
    assert file_bytes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "src"]


def test_import_never_replaces_its_own_input_files(tmp_path, user_files):
    src = user_files["members"].parent
    before = file_bytes(src)
    result = invoke(*import_args(user_files, src, "--force"))
    assert str(result.exception) == (
        f"{src}: holds the input file members.csv; write the corpus to another directory"
    )
    assert file_bytes(src) == before


def test_import_out_must_be_a_directory(tmp_path, user_files):
    out = write_text(tmp_path / "file", "x")
    result = invoke(*import_args(user_files, out, "--force"))
    assert str(result.exception) == f"{out}: exists and is not a directory"
    assert out.read_text() == "x"


def test_show_prints_the_summary(tmp_path, user_files):
    out = tmp_path / "corpus"
    invoke(*import_args(user_files, out))
    result = invoke("show", out)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"corpus      {out}"
    assert "rows        members 3, items 2, interactions 3, edges 1" in lines
    assert "actions     apply 1, like 1, none 1" in lines
    assert "time        2024-01-02T03:04:05Z .. 2024-01-02T03:04:07Z" in lines

    as_json = invoke("show", out, "--json")
    summary = json.loads(as_json.output)
    assert summary == Corpus.load(out).summary()
    assert summary["surfaces"] == {"feed": 2, "jobs": 1}


def _recbrew_script() -> Path | None:
    script = Path(sys.executable).parent / "recbrew"
    if not script.exists():
        return None
    ok = subprocess.run([str(script), "--version"], capture_output=True, timeout=120).returncode == 0
    return script if ok else None


def test_cli_user_error_exits_2_with_one_line(tmp_path, user_files):
    script = _recbrew_script()
    if script is None:
        pytest.skip("the recbrew entry point does not start")
    out = tmp_path / "corpus"
    write_text(user_files["members"], "id,name\n1,Ada\n")
    args = [str(a) for a in import_args(user_files, out)]
    proc = subprocess.run([str(script), "data", *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr == (
        f"error: {user_files['members']}: missing required column 'member_id' (members needs: member_id)\n"
    )
    assert not out.exists()


def test_main_prints_one_line_and_exits_2(tmp_path, user_files, capsys):
    from recbrew.cli import main

    write_text(user_files["interactions"], "member_id,item_id,action,timestamp\n1,10,like,soon\n")
    with pytest.raises(SystemExit) as exit_:
        main(["data", *(str(a) for a in import_args(user_files, tmp_path / "corpus"))])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (
        f"error: {user_files['interactions']}: column 'timestamp' must be epoch seconds or an ISO-8601 time; "
        "cannot convert 'soon' at row 1\n"
    )
    assert not (tmp_path / "corpus").exists()
