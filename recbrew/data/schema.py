"""The Corpus schema: the four tables every later stage reads.

Each table has a few required columns and a set of optional, typed ones. Extra columns a user
brings are kept as they are. Timestamps are integer seconds since the Unix epoch (UTC).
Interaction rows may carry ``p_<action>`` float columns: the true probability of each action the
impression could have led to (known for the synthetic world, absent for real logs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

STR = pa.string()
I64 = pa.int64()
I32 = pa.int32()
F32 = pa.float32()
BOOL = pa.bool_()
STR_LIST = pa.list_(pa.string())

#: The action written for an impression that led to no action.
NO_ACTION = "none"
#: Prefix of the per-action true-probability columns of the interactions table.
TRUE_PROB_PREFIX = "p_"

#: Item kinds of the synthetic world; user data may add its own (e.g. ``movie``).
ITEM_TYPES = ("job", "post", "ad", "course", "group", "event", "newsletter", "member", "company")


def is_text_type(typ: pa.DataType) -> bool:
    """Whether an Arrow type holds text (string, large string or string view)."""
    return pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_string_view(typ)


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    required: bool = False
    doc: str = ""


@dataclass(frozen=True)
class TableSchema:
    name: str
    columns: tuple[Column, ...]
    #: Column-name prefixes whose columns all share one type (e.g. ``p_*`` -> float32).
    prefixed: dict[str, pa.DataType] = field(default_factory=dict)

    @property
    def required(self) -> tuple[Column, ...]:
        return tuple(c for c in self.columns if c.required)

    def column(self, name: str) -> Column | None:
        for c in self.columns:
            if c.name == name:
                return c
        return None

    def type_of(self, name: str) -> pa.DataType | None:
        """Declared type of a column, including prefixed families; None for free extra columns."""
        col = self.column(name)
        if col is not None:
            return col.type
        for prefix, typ in self.prefixed.items():
            if name.startswith(prefix):
                return typ
        return None

    def arrow_schema(self, names: list[str]) -> pa.Schema:
        """Arrow schema for the given columns, in the given order, with declared types."""
        return pa.schema([pa.field(n, self.type_of(n) or STR) for n in names])


MEMBERS = TableSchema(
    "members",
    (
        Column("member_id", I64, True, "unique member id"),
        Column("name", STR),
        Column("headline", STR),
        Column("title", STR, doc="current job title"),
        Column("company_id", I64, doc="item_id of the current company"),
        Column("company", STR),
        Column("industry", STR),
        Column("function", STR),
        Column("seniority", STR),
        Column("location", STR),
        Column("skills", STR_LIST),
        Column("school", STR),
        Column("degree", STR),
        Column("years_experience", I32),
        Column("open_to_work", BOOL),
        Column("joined_at", I64, doc="epoch seconds"),
        Column("age", I32),
        Column("gender", STR),
        Column("occupation", STR),
    ),
)

ITEMS = TableSchema(
    "items",
    (
        Column("item_id", I64, True, "unique item id"),
        Column("item_type", STR, True, "job, post, ad, course, group, event, newsletter, member, company, ..."),
        Column("title", STR, True, "short display text"),
        Column("text", STR, doc="body text (post text, job description, ...)"),
        Column("ref_id", I64, doc="member_id for item_type=member"),
        Column("author_id", I64, doc="member_id of a post's author"),
        Column("company_id", I64),
        Column("company", STR),
        Column("topic", STR),
        Column("function", STR),
        Column("industry", STR),
        Column("location", STR),
        Column("remote", BOOL),
        Column("seniority", STR),
        Column("skills", STR_LIST),
        Column("hashtags", STR_LIST),
        Column("format", STR),
        Column("genres", STR_LIST),
        Column("year", I32),
        Column("created_at", I64, doc="epoch seconds"),
    ),
)

INTERACTIONS = TableSchema(
    "interactions",
    (
        Column("member_id", I64, True),
        Column("item_id", I64, True),
        Column("action", STR, True, f"the action taken, or '{NO_ACTION}' for an impression without one"),
        Column("timestamp", I64, True, "epoch seconds"),
        Column("impression_id", I64),
        Column("surface", STR),
        Column("position", I32, doc="0-based slot on the surface"),
        Column("rating", F32),
    ),
    prefixed={TRUE_PROB_PREFIX: F32},
)

EDGES = TableSchema(
    "edges",
    (
        Column("src", I64, True, "member_id"),
        Column("dst", I64, True, "member_id (connection) or item_id (follow)"),
        Column("kind", STR, True, "connection, follows_company, follows_member, ..."),
        Column("timestamp", I64, True, "epoch seconds"),
    ),
)

TABLES: dict[str, TableSchema] = {t.name: t for t in (MEMBERS, ITEMS, INTERACTIONS, EDGES)}
