"""The Corpus layer: schema, validated table I/O, and the corpora recbrew can build or import."""

from recbrew.data.corpus import Corpus
from recbrew.data.io import conform, empty_table, read_table, write_table
from recbrew.data.movielens import load_movielens

__all__ = ["Corpus", "conform", "empty_table", "load_movielens", "read_table", "write_table"]
