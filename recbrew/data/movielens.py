"""MovieLens-100K as a Corpus, read from the copy the ``recbole`` package ships.

recbole is installed with ``--no-deps`` (its own dependencies pull in a training stack recbrew
does not need), so it is located with importlib and never imported.

Users become members, movies become items (``item_type='movie'``) and each rating becomes an
interaction on the ``movies`` surface: ``like`` for a rating of 4 or 5, ``dislike`` otherwise.
The interactions keep the rating file's record order (row i is line i + 2 of ``ml-100k.inter``).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from recbrew.data.corpus import Corpus
from recbrew.data.io import conform, empty_table
from recbrew.data.schema import F32, I32, I64, STR, STR_LIST
from recbrew.errors import UserError

#: Ratings at or above this are likes.
LIKE_THRESHOLD = 4
SURFACE = "movies"
FILES = ("ml-100k.user", "ml-100k.item", "ml-100k.inter")

_GENDERS = {"M": "male", "F": "female"}
# Occupation words that do not read as a job title after "34-year-old".
_OCCUPATION_PHRASES = {
    "none": "person with no occupation",
    "other": "person with another occupation",
    "entertainment": "entertainment worker",
    "healthcare": "healthcare worker",
    "marketing": "marketing professional",
}


def movielens_dir() -> Path:
    """The ``ml-100k`` folder inside the installed recbole package; UserError if it is not there."""
    spec = importlib.util.find_spec("recbole")  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "MovieLens-100K is read from the 'recbole' package, which is not installed; "
            "run `make setup` (or `pip install --no-deps recbole`)"
        )
    candidates = [Path(loc) / "dataset_example" / "ml-100k" for loc in spec.submodule_search_locations]
    for folder in candidates:
        if all((folder / name).is_file() for name in FILES):
            return folder
    raise UserError(
        f"{candidates[0]}: MovieLens-100K files missing from the installed recbole package; "
        "reinstall it with `pip install --force-reinstall --no-deps recbole`"
    )


def load_movielens(directory: str | os.PathLike | None = None) -> Corpus:
    """Build the MovieLens-100K Corpus from recbole's atomic files (or those in ``directory``)."""
    folder = movielens_dir() if directory is None else Path(directory)
    members = conform("members", _members(read_atomic(folder / "ml-100k.user")), "ml-100k.user")
    items = conform("items", _items(read_atomic(folder / "ml-100k.item")), "ml-100k.item")
    interactions = conform(
        "interactions", _interactions(read_atomic(folder / "ml-100k.inter")), "ml-100k.inter"
    )
    meta = {
        "source": "movielens-100k",
        "origin": f"recbole {_recbole_version()} dataset_example/ml-100k",
        "credit": "MovieLens 100K, GroupLens Research, University of Minnesota (grouplens.org)",
        "like_threshold": LIKE_THRESHOLD,
        "surface": SURFACE,
    }
    return Corpus(members, items, interactions, empty_table("edges"), meta=meta)


def read_atomic(path: Path) -> pa.Table:
    """Read a RecBole atomic file (tab-separated; header fields ``name:type``) with every column as text."""
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    with open(path, encoding="utf-8") as f:
        names = [field.split(":", 1)[0] for field in f.readline().rstrip("\r\n").split("\t")]
    return pcsv.read_csv(
        path,
        read_options=pcsv.ReadOptions(skip_rows=1, column_names=names),
        # Titles hold bare quotes; atomic files never quote.
        parse_options=pcsv.ParseOptions(delimiter="\t", quote_char=False),
        convert_options=pcsv.ConvertOptions(column_types=dict.fromkeys(names, STR)),
    )


def _members(users: pa.Table) -> pa.Table:
    user_id = users.column("user_id").cast(I64)
    age = users.column("age").cast(I32)
    occupation = users.column("occupation")
    headline = pc.binary_join_element_wise(
        age.cast(STR), "-year-old ", _replace(occupation, _OCCUPATION_PHRASES), ""
    )
    return pa.table(
        {
            "member_id": user_id,
            "name": pc.binary_join_element_wise("Member ", user_id.cast(STR), ""),
            "headline": headline,
            "age": age,
            "gender": _replace(users.column("gender"), _GENDERS),
            "occupation": occupation,
            "zip_code": users.column("zip_code"),
        }
    )


def _items(movies: pa.Table) -> pa.Table:
    raw_title = movies.column("movie_title")
    # A few titles still carry "(1995)" and a broken release_year (e.g. 'V'): take the year from there.
    title_year = pc.struct_field(pc.extract_regex(raw_title, r"\((?P<year>\d{4})\)$"), "year")
    release = movies.column("release_year")
    year = pc.if_else(pc.match_substring_regex(release, r"^\d{4}$"), release, title_year).cast(I32)
    title = pc.replace_substring_regex(raw_title, r"\s*\(\d{4}\)$", "")

    # Genre names hold no spaces; 'unknown' is the file's marker for "no genre".
    classes = movies.column("class")
    no_genre = pc.equal(classes, "unknown")
    genres = pc.if_else(no_genre, pa.scalar([], type=STR_LIST), pc.split_pattern(classes, " "))
    genre_text = pc.if_else(no_genre, "unknown", pc.binary_join(genres, ", "))
    n = movies.num_rows
    return pa.table(
        {
            "item_id": movies.column("item_id").cast(I64),
            "item_type": pa.repeat("movie", n),
            "title": title,
            "text": pc.binary_join_element_wise("Genres: ", genre_text, ".", ""),
            "genres": genres,
            "year": year,
        }
    )


def _interactions(ratings: pa.Table) -> pa.Table:
    rating = ratings.column("rating").cast(F32)
    # The header declares timestamps as float; going through float64 accepts "881250949.0" too.
    timestamp = ratings.column("timestamp").cast(pa.float64()).cast(I64)
    tbl = pa.table(
        {
            "member_id": ratings.column("user_id").cast(I64),
            "item_id": ratings.column("item_id").cast(I64),
            "action": pc.if_else(pc.greater_equal(rating, LIKE_THRESHOLD), "like", "dislike"),
            "timestamp": timestamp,
            "surface": pa.repeat(SURFACE, ratings.num_rows),
            "rating": rating,
        }
    )
    # The file's record order is kept: record-order protocols (`recbrew data build --split order`) read it.
    return tbl


def _replace(values: pa.ChunkedArray, mapping: dict[str, str]) -> pa.ChunkedArray:
    """Map the values found in ``mapping``; keep the others."""
    index = pc.index_in(values, value_set=pa.array(list(mapping), STR))
    replaced = pc.take(pa.array(list(mapping.values()), STR), index)
    return pc.coalesce(replaced, values)


def _recbole_version() -> str:
    try:
        return importlib.metadata.version("recbole")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
