"""TaskSpec: the YAML definition of one ranking task, validated with pydantic."""

from __future__ import annotations

from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from recbrew.data.schema import ITEMS, NO_ACTION

#: What a candidate can show: the item columns of the Corpus, plus the author's name.
CANDIDATE_FIELDS = frozenset(c.name for c in ITEMS.columns) | {"author", "name", "headline"}
#: Fields holding free text written by members or advertisers: the ones `quote:` sets a mode for.
FREE_TEXT_FIELDS = ("name", "headline", "title", "text", "description")
#: How free text is shown: «in guillemets» (the default) or plain, on one line either way.
QuoteMode = Literal["guillemets", "plain"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Kind(str, Enum):
    binary = "binary"  # one candidate: will the member take the action?
    listwise = "listwise"  # k candidates: which one will the member act on?
    generative = "generative"  # free text answer scored by exact / F1 match


class Split(str, Enum):
    T1 = "T1"  # in-domain: trained on
    T2 = "T2"  # out-of-domain: never trained on, evaluated only


class Label(_Strict):
    """Which logged impressions become examples, and which of them are positive."""

    positive: list[str] = Field(min_length=1, description="actions that make a candidate positive")
    negatives: list[str] = Field(default_factory=lambda: [NO_ACTION],
                                 description="actions whose impressions are negatives ('none' = no action)")

    @model_validator(mode="after")
    def _disjoint(self) -> Label:
        both = set(self.positive) & set(self.negatives)
        if both:
            raise ValueError(f"actions {sorted(both)} are both positive and negative")
        return self


class Answer(_Strict):
    """The verbalizer: label words, each a single token of the model's tokenizer after a space."""

    words: list[str] = Field(min_length=2, description="binary: [positive, negative]; listwise: one per slot "
                                                        "(scoring: letters) or [positive, negative] (scoring: options)")

    @field_validator("words")
    @classmethod
    def _words(cls, words: list[str]) -> list[str]:
        if len(set(words)) != len(words):
            raise ValueError("answer words must be distinct")
        for w in words:
            if not w or w != w.strip():
                raise ValueError(f"answer word {w!r} must be non-empty without surrounding spaces")
        return words


class HistoryGroup(_Strict):
    """One block of past interactions, e.g. 'Member has applied to the following jobs:'."""

    surface: str | None = Field(None, description="only interactions on this surface (any if omitted)")
    action: str = Field(description="the action that puts an item in this group")
    phrase: str = Field(description="how the block is introduced, e.g. 'applied to the following jobs'")
    empty: str | None = Field(None, description="said after the phrase when the member has no such interaction, "
                                                "e.g. 'none'; omitted: the group is left out")

    @field_validator("empty")
    @classmethod
    def _one_line(cls, empty: str | None) -> str | None:
        if empty is not None and (not empty.strip() or "\n" in empty or empty != empty.strip()):
            raise ValueError("empty must be a phrase on one line without surrounding spaces, e.g. 'none' "
                             "(omit it to leave empty groups out)")
        return empty


class History(_Strict):
    groups: list[HistoryGroup] = Field(default_factory=list)
    max_items: int = Field(20, ge=0, le=500, description="items kept across all groups before the token budget")
    order: Literal["recent_first", "oldest_first"] = "recent_first"
    show_age: bool = True
    max_tokens: int = Field(1024, ge=64, description="budget for the whole prompt, measured with the tokenizer")
    truncation: Literal["recent", "relevant", "stratified"] = "recent"


class Social(_Strict):
    engaged_connections: bool = Field(True, description="connections who engaged with the candidate")
    mutual_connections: bool = Field(False, description="mutual connections with a candidate member")
    shared_company_school: bool = Field(False, description="shared company / school with a candidate member")
    max_names: int = Field(3, ge=0, le=20)


#: The parts of `Stats` a prompt can show (`Stats.show`).
StatPart = Literal["facets", "candidate", "member", "taste", "estimate", "collab"]


class StatFacet(_Strict):
    """An item field the member's recent actions are compared on (genres, decade, industry, ...)."""

    field: str = Field(description="item column (a value or a list of values)")
    word: str = Field(pattern=r"^[a-z][a-z ]*$", description="how the prompt names it, e.g. 'genre'")
    bucket: int | None = Field(None, ge=1, description="numeric fields: values grouped by this width (10: year -> decade)")


class Stats(_Strict):
    """As-of-time statistics shown in the prompt and given to the classic rankers (`recbrew.verbalize.stats`).

    Everything is counted over the task's labelled interactions strictly before the request's moment, except the
    ``collab`` rating model, which `recbrew data build` fits on the training side of the split."""

    candidate: bool = Field(False, description="the candidate's interactions so far and their positive share")
    member: bool = Field(False, description="the member's interactions so far and their positive share")
    facets: list[StatFacet] = Field(default_factory=list, description="per facet: how many of the member's last "
                                                                      "`recent` positive and negative actions share "
                                                                      "the candidate's value")
    recent: int = Field(30, ge=1, le=500, description="positive (and negative) actions the facets and the taste "
                                                      "look back on")
    taste: bool = Field(False, description="collaborative: the members whose earlier actions agree with the member's "
                                           "last `recent` positive and negative ones, and their weighted positive "
                                           "share on the candidate so far")
    estimate: bool = Field(False, description="one probability from the candidate's, the member's and the taste "
                                              "shares so far (shrunk, no trained parameter), in % and in words")
    collab: bool = Field(False, description="a rating model's probability for the member and the candidate: a "
                                            "matrix factorization of the task's labels fitted on the training "
                                            "side of the examples (recbrew.verbalize.collab), in % and in words")
    shrink: float = Field(10.0, ge=0, le=1000, description="pseudo-interactions each share of the estimate is "
                                                           "shrunk toward its reference with")
    show: list[StatPart] | None = Field(None, description="the parts the prompt shows (default: every declared one); "
                                                          "the classic rankers' dense features keep them all")
    #: How the prompt names the counted interactions and their outcome ("ratings", "liked", "disliked").
    noun: str = Field("interactions", pattern=r"^[a-z][a-z ]*$")
    positive_word: str = Field("positive", pattern=r"^[a-z][a-z ]*$")
    negative_word: str = Field("negative", pattern=r"^[a-z][a-z ]*$")

    @field_validator("facets")
    @classmethod
    def _known(cls, facets: list[StatFacet]) -> list[StatFacet]:
        unknown = sorted({f.field for f in facets} - {c.name for c in ITEMS.columns})
        if unknown:
            raise ValueError(f"unknown item field(s) {unknown} in stats.facets")
        return facets

    @model_validator(mode="after")
    def _shown_declared(self) -> Stats:
        if self.show is not None:
            missing = [part for part in self.show if part not in self.declared]
            if missing:
                raise ValueError(f"stats.show names {missing}, which stats does not declare (declared: "
                                 f"{self.declared or 'nothing'})")
        return self

    @property
    def any(self) -> bool:
        return bool(self.declared)

    @property
    def declared(self) -> list[str]:
        """The declared parts, in the order the prompt shows them."""
        return [part for part, on in (("facets", bool(self.facets)), ("candidate", self.candidate),
                                      ("member", self.member), ("taste", self.taste), ("estimate", self.estimate),
                                      ("collab", self.collab))
                if on]

    @property
    def shown(self) -> list[str]:
        """The parts the prompt shows: ``show`` where given, else every declared one."""
        return self.declared if self.show is None else [p for p in self.declared if p in self.show]


class Generative(_Strict):
    target: Literal["next_job_title", "held_out_skill"]


class TaskSpec(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    version: int = Field(1, ge=1)
    surface: str
    description: str
    kind: Kind = Kind.binary
    candidate_type: str = Field(description="item_type of the candidates (job, post, member, ...)")
    label: Label
    instruction: str
    question: str
    answer: Answer = Answer(words=["yes", "no"])
    history: History = History()
    social: Social = Social()
    stats: Stats = Stats()
    candidate_fields: list[str] = Field(default_factory=lambda: ["title", "text"])
    template: str = Field("pointwise", description="prompt family: prompts/<template>.<style>.j2")
    style: str = "compact"
    split: Split = Split.T1
    metrics: list[str] = Field(default_factory=lambda: ["auc", "gauc", "ndcg@10", "logloss"])
    #: Listwise: candidates per question (the answer words label the slots).
    k: int | None = Field(None, ge=2, le=26)
    #: Listwise: how the model answers. ``letters``: one prompt lists the k options and the answer is the chosen
    #: slot's letter (``answer.words`` has one word per slot). ``options``: each option is its own segment after
    #: the shared prefix, answered [positive, negative] like a binary candidate in the same multi-item pass, and
    #: the k answers are normalized into the distribution over the slots (softmax of their log-odds).
    scoring: Literal["letters", "options"] | None = Field(
        None, description="listwise only: letters (one prompt, the slot letter) or options (one answer per option)")
    generative: Generative | None = None
    #: Per free-text field, how its values are shown; fields not listed stay in guillemets.
    quote: dict[str, QuoteMode] = Field(default_factory=dict)

    @field_validator("candidate_fields")
    @classmethod
    def _known_fields(cls, fields: list[str]) -> list[str]:
        unknown = sorted(set(fields) - CANDIDATE_FIELDS)
        if unknown:
            raise ValueError(f"unknown candidate field(s) {unknown}; known: {', '.join(sorted(CANDIDATE_FIELDS))}")
        return fields

    @field_validator("quote")
    @classmethod
    def _free_text_only(cls, quote: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(quote) - set(FREE_TEXT_FIELDS))
        if unknown:
            raise ValueError(f"{', '.join(map(repr, unknown))}: not a free-text field; quote applies to "
                             f"{', '.join(FREE_TEXT_FIELDS)}")
        return quote

    @model_validator(mode="after")
    def _kind_consistent(self) -> TaskSpec:
        if self.kind == Kind.binary and len(self.answer.words) != 2:
            raise ValueError("binary tasks need exactly two answer words: [positive, negative]")
        if self.kind == Kind.listwise:
            if self.k is None:
                raise ValueError("listwise tasks need k (candidates per question)")
            if self.segment_per_candidate and len(self.answer.words) != 2:
                raise ValueError("listwise tasks with scoring: options need two answer words: [positive, negative], "
                                 f"got {len(self.answer.words)}")
            if not self.segment_per_candidate and len(self.answer.words) != self.k:
                raise ValueError(f"listwise tasks need one answer word per slot: k={self.k}, got {len(self.answer.words)} "
                                 "(or scoring: options with [positive, negative])")
        elif self.k is not None or self.scoring is not None:
            raise ValueError("k and scoring apply to listwise tasks only")
        if (self.kind == Kind.generative) != (self.generative is not None):
            raise ValueError("generative tasks (and only they) need a 'generative:' section with a target")
        return self

    @property
    def segment_per_candidate(self) -> bool:
        """Whether each candidate is its own answered segment (binary tasks and listwise ``scoring: options``)."""
        return self.kind == Kind.binary or (self.kind == Kind.listwise and self.scoring == "options")

    @property
    def plain_fields(self) -> frozenset[str]:
        """Free-text fields shown without guillemets."""
        return frozenset(f for f, mode in self.quote.items() if mode == "plain")

    @property
    def template_file(self) -> str:
        return f"{self.template}.{self.style}.j2"

    def with_style(self, style: str) -> TaskSpec:
        return self.model_copy(update={"style": style})
