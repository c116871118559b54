"""Request and response models of `/v1/rank` and of the rerank routes, declared once."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    StrictBool,
    StrictInt,
    StrictStr,
    Tag,
)
from pydantic_core import PydanticCustomError

from recbrew.errors import UserError


class RankError(UserError):
    """A request the server cannot answer; ``status`` is the HTTP code to answer with (4xx: the client's
    fault, 502: the engine's)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


# Request values are strict: JSON `true` is not the id 1, `1e30` or `"5"` is not a time, and every number
# has a range that the Corpus lookups and the classic rankers' int64 arrays can hold.
ID_RULE = "an id is an integer from 0 to 2**63 - 1, or text of 1 to 512 characters"


def _id(value: Any) -> int | str:
    if isinstance(value, bool) or not isinstance(value, int | str) \
            or not (0 <= value < 2**63 if isinstance(value, int) else 1 <= len(value) <= 512):
        raise PydanticCustomError("id", ID_RULE)
    return value


def _optional_id(value: Any) -> int | str | None:
    return None if value is None else _id(value)


#: A member or item id of the served Corpus: an integer, or text where the Corpus was imported with text ids
#: (a UUID, a hashed id, a title). `"5"` is the text id "5", not the integer 5.
Id = Annotated[int | str, PlainValidator(_id)]
OptionalId = Annotated[int | str | None, PlainValidator(_optional_id)]
#: Epoch seconds (0 is 1970-01-01, a time like any other; 2**40 s is 36,812 years later).
Time = Annotated[StrictInt, Field(ge=0, lt=2**40)]
#: A count shown in a prompt.
Count = Annotated[StrictInt, Field(ge=0, lt=2**31)]
_SCALARS = (str, int, float, bool)


def _field_value(value: Any) -> Any:
    if value is None or isinstance(value, _SCALARS):
        return value
    if isinstance(value, list) and all(v is None or isinstance(v, _SCALARS) for v in value):
        return value
    raise ValueError("a field's value is text, a number, true/false, null, or a list of those")


#: The value of one member or item field: text, a number, a flag, or a list of those (skills); never an object.
FieldValue = Annotated[Any, PlainValidator(_field_value)]
#: An inline member's profile or an inline item: field name -> value (unknown fields are ignored).
Fields = dict[str, FieldValue]
#: Names of the two forms of a member or candidate, as error locations show them (see `tagged`).
ID, INLINE = "id", "inline"


def _form(value: Any) -> str:
    return INLINE if isinstance(value, dict) else ID


def tagged(inline: Any) -> Any:
    """An id of the Corpus, or an inline object (`inline`): one form is checked, chosen by the JSON value's type,
    so a bad value gets one error about the form it was meant as."""
    return Annotated[Annotated[Id, Tag(ID)] | Annotated[inline, Tag(INLINE)], Discriminator(_form)]


class InlineEvent(_Model):
    """One past interaction of an inline member: an item (id in the Corpus, or inline) and the action."""

    item_id: OptionalId = None
    item: Fields | None = None
    action: StrictStr
    surface: StrictStr | None = None
    timestamp: Time = Field(description="epoch seconds; must be before the request's `at`")


class InlineNetwork(_Model):
    """What the prompt's network section says about an inline member; names are neutralized like any field."""

    connections: Count | None = None
    actions: Count | None = Field(None, description="how many actions the member took before the request")
    companies: list[StrictStr] = Field(default_factory=list, max_length=20, description="companies followed")
    creators: list[StrictStr] = Field(default_factory=list, max_length=20, description="members followed")


class InlineMember(_Model):
    profile: Fields = Field(description="member fields: name, headline, title, company, skills, ...")
    history: list[InlineEvent] = Field(default_factory=list)
    network: InlineNetwork | None = None


MemberRef = tagged(InlineMember)
CandidateRef = tagged(Fields)


class RankRequest(_Model):
    task: StrictStr
    version: StrictInt | None = Field(None, description="fail unless the served task has this version")
    style: StrictStr | None = Field(None, description="prompt style (default: the task's)")
    member: MemberRef = Field(description="member_id in the served Corpus (your id: int or text), or an inline member")
    candidates: list[CandidateRef] = Field(description="item ids in the Corpus (your ids), or inline items")
    at: Time | None = Field(None, description="moment of the request (epoch seconds); default: end of the Corpus")
    max_tokens: Annotated[StrictInt, Field(ge=16, le=2**20)] | None = Field(
        None, description="prompt token budget (default: the task's)")


class RankedCandidate(_Model):
    candidate: int | str = Field(description="the item id as the request gave it; an inline item's position")
    index: int = Field(description="the candidate's position in the request's candidates")
    score: float = Field(description="P(positive answer), normalized over the task's answer words")
    logprobs: dict[str, float] = Field(description="log-probability of each answer word, normalized over the "
                                                   "task's answer words (listwise: P(chosen) under this candidate's "
                                                   "letter, or under 'choice' for a task with scoring: options)")
    rank: int


class RankResponse(_Model):
    id: str
    object: str = "rank"
    model: str
    task: str
    task_version: int
    kind: str
    results: list[RankedCandidate] = Field(default_factory=list, description="binary: candidates by score")
    choice: int | str | None = Field(None, description="listwise: the chosen candidate")
    text: str | None = Field(None, description="generative: the answer")
    prompt_tokens: int
    history_kept: int
    history_cut: int


class RerankDocument(_Model):
    """A document as an object: its ``text`` (Cohere v1, Jina), or the ``id`` of an item in the served Corpus."""

    model_config = ConfigDict(extra="allow")  # clients send other fields of their documents along: not read
    text: Annotated[StrictStr, Field(min_length=1, max_length=20_000)] | None = None
    id: Id | None = None


#: A rerank document: text (or, with ``documents_are_ids``, an item id as text), or an object (`RerankDocument`);
#: one form is checked, chosen by the JSON value's type.
Document = Annotated[Annotated[Annotated[StrictStr, Field(min_length=1, max_length=20_000)], Tag(ID)]
                     | Annotated[RerankDocument, Tag(INLINE)], Discriminator(_form)]


class RerankRequest(_Model):
    """`/v1/rerank`, `/v2/rerank`, `/rerank`: the Cohere / Jina / vLLM rerank shape, plus recbrew's fields.

    ``query`` is rendered as the member's headline in the task's template, and each text document as a candidate
    of the task's candidate type with that title. With ``member`` (an id of the served Corpus) the member and their
    history come from the Corpus instead and ``query`` is not read; with ``documents_are_ids`` each document string
    is an item id of the Corpus (what a classic ranker needs)."""

    model: StrictStr | None = None
    query: Annotated[StrictStr, Field(max_length=20_000)]
    documents: Annotated[list[Document], Field(min_length=1)]
    top_n: Annotated[StrictInt, Field(ge=1)] | None = None
    return_documents: StrictBool = False
    # Accepted from Cohere clients, not used: recbrew ranks whole prompts.
    max_tokens_per_doc: Annotated[StrictInt, Field(ge=1)] | None = None
    max_chunks_per_doc: Annotated[StrictInt, Field(ge=1)] | None = None
    rank_fields: list[StrictStr] | None = None
    priority: StrictInt | None = None
    # recbrew's own fields.
    task: StrictStr | None = Field(None, description="a binary task of /v1/tasks (default: the only one served)")
    member: Id | None = Field(None, description="a member id of the served Corpus instead of a query text")
    at: Time | None = Field(None, description="moment of the request (epoch seconds); default: end of the Corpus")
    documents_are_ids: StrictBool = Field(False, description="each document string is an item id of the Corpus")


class RerankResult(_Model):
    index: int
    relevance_score: float = Field(description="P(positive answer), normalized over the task's answer words")
    document: dict | None = None


class RerankResponse(_Model):
    id: str
    model: str
    results: list[RerankResult]
    usage: dict[str, int]
    meta: dict


class ErrorBody(_Model):
    message: str
    type: str
    code: int


class ErrorResponse(_Model):
    error: ErrorBody
