"""Request and response models of `/v1/rank`, declared once."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from recbrew.errors import UserError


class RankError(UserError):
    """A request the server cannot answer; ``status`` is the HTTP code to answer with (4xx: the client's
    fault, 502: the engine's)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InlineEvent(_Model):
    """One past interaction of an inline member: an item (id in the Corpus, or inline) and the action."""

    item_id: int | None = None
    item: dict[str, Any] | None = None
    action: str
    surface: str | None = None
    timestamp: int = Field(description="epoch seconds; must be before the request's `at`")


class InlineMember(_Model):
    profile: dict[str, Any] = Field(description="member fields: name, headline, title, company, skills, ...")
    history: list[InlineEvent] = Field(default_factory=list)
    network: dict[str, Any] | None = None


class RankRequest(_Model):
    task: str
    version: int | None = Field(None, description="fail unless the served task has this version")
    style: str | None = Field(None, description="prompt style (default: the task's)")
    member: int | InlineMember = Field(description="member_id in the served Corpus, or an inline member")
    candidates: list[int | dict[str, Any]] = Field(description="item ids in the Corpus, or inline items")
    at: int | None = Field(None, description="moment of the request (epoch seconds); default: end of the Corpus")
    max_tokens: int | None = Field(None, ge=16, description="prompt token budget (default: the task's)")


class RankedCandidate(_Model):
    candidate: int | str
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


class ErrorBody(_Model):
    message: str
    type: str
    code: int


class ErrorResponse(_Model):
    error: ErrorBody
