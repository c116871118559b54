"""Render a task's prompt: shared prefix + candidate segments, fitted to a token budget.

The instruction, the candidate(s) and the question are never cut; history entries are dropped
(by the task's truncation strategy) until the longest prefix + candidate prompt fits. Values arrive
neutralized (free text in «guillemets»); the fields a task shows plain are turned plain here, the
one place that knows the task, whoever built the values (examples, the server, `tasks render`).
"""

from __future__ import annotations

import io
import pickle
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import jinja2

from recbrew.tasks.spec import Kind, TaskSpec
from recbrew.verbalize.environment import TemplateError, make_environment, template_error
from recbrew.verbalize.neutralize import show_plain
from recbrew.verbalize.tokens import TokenCounter

_BLANK_RUN = re.compile(r"\n{3,}")
_WORD = re.compile(r"[a-z0-9]+")
#: Tokens of the history section header and its spacing, in the budget estimate.
_SECTION_COST = 8
#: History lines rendered and counted at a time while picking the entries that fit.
_LINES_AT_ONCE = 8
#: Memoized renders kept before the memo starts over (bounds memory on long builds).
_MAX_MEMO = 1 << 12
_STOP = frozenset("a an and at by for from in of on the to with our we you your is are this that what".split())


@dataclass
class HistoryEntry:
    """One past interaction shown in a history group."""

    group: int  # index into task.history.groups
    timestamp: int
    item: dict  # neutralized item fields
    age: str | None = None


@dataclass
class RenderedPrompt:
    prefix: str
    #: One segment per candidate for pointwise tasks (binary, listwise scored by options); a single segment for
    #: listwise scored by letters and generative tasks.
    segments: list[str]
    prefix_tokens: int | None = None
    segment_tokens: list[int] | None = None
    history_kept: int = 0
    history_cut: int = 0
    cut_by_group: dict[str, int] = field(default_factory=dict)
    #: True when even without history the prompt exceeds the budget (nothing essential is cut).
    over_budget: bool = False

    def text(self, i: int = 0) -> str:
        return self.prefix + self.segments[i]

    @property
    def max_tokens(self) -> int | None:
        if self.prefix_tokens is None or not self.segment_tokens:
            return None
        return self.prefix_tokens + max(self.segment_tokens)


def _words(item: dict) -> frozenset[str]:
    text = " ".join(str(item.get(k) or "") for k in ("title", "topic", "name", "headline", "company"))
    text += " " + " ".join(item.get("skills") or []) + " " + " ".join(item.get("genres") or [])
    return _words_in(text)


@lru_cache(maxsize=1 << 14)
def _words_in(text: str) -> frozenset[str]:
    # Cached: the same items come back in many members' histories and candidate sets.
    return frozenset(w for w in _WORD.findall(text.lower()) if w not in _STOP)


class _Opaque(Exception):
    """A template value whose content cannot serve as a cache key."""


class _PlainPickler(pickle.Pickler):
    """Pickles plain data only: str, numbers, bool, None, lists, tuples, dicts (exact types)."""

    def __init__(self, file):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        # Fast mode drops the memo, so equal data pickles to equal bytes however its objects are shared.
        self.fast = True

    def reducer_override(self, obj):
        # Called for everything but exact plain types: anything else could render from state the
        # pickle does not show.
        raise _Opaque


def _content_key(values: tuple) -> bytes | None:
    """Bytes equal exactly when the plain data in ``values`` is equal, types included; None if not plain.

    Types matter because templates print ``1``, ``1.0`` and ``True`` differently; pickle keeps them apart.
    """
    buffer = io.BytesIO()
    try:
        _PlainPickler(buffer).dump(values)
    except (_Opaque, ValueError, RecursionError):
        return None
    return buffer.getvalue()


class Renderer:
    """Renders one task's prompts with its template; counts tokens when given a tokenizer."""

    def __init__(self, task: TaskSpec, *, env: jinja2.Environment | None = None, prompts_dir=None,
                 tokenizer=None, style: str | None = None):
        self.task = task if style is None else task.with_style(style)
        self.env = env or make_environment(prompts_dir)
        self.tokenizer = tokenizer
        name = self.task.template_file
        try:
            self.template = self.env.get_template(name)
            self.entry_macro = self.env.get_template("macros/history.j2").module.entry
        except jinja2.TemplateError as exc:
            raise template_error(exc, name) from None
        for block in ("prefix", "candidate"):
            if block not in self.template.blocks:
                raise TemplateError(f"{self.template.filename}: template must define a '{{% block {block} %}}'")
        self._headers: list[int] | None = None
        self._counter: TokenCounter | None = None
        #: Rendered candidate segments and history lines by content: items recur across members.
        self._memo: dict = {}
        #: Free-text fields the task shows without guillemets (empty: values are shown as they come).
        self.plain_fields = self.task.plain_fields
        self.task_vars = {"name": self.task.name, "instruction": self.task.instruction,
                          "question": self.task.question, "words": list(self.task.answer.words), "k": self.task.k}

    # Jinja ----------------------------------------------------------------------------------------
    def _block(self, block: str, variables: dict) -> str:
        try:
            ctx = self.template.new_context({"task": self.task_vars, **variables})
            text = "".join(self.template.blocks[block](ctx))
            return _BLANK_RUN.sub("\n\n", text) if "\n\n\n" in text else text
        except Exception:
            # Let Jinja rewrite the traceback so its frames carry template lines, then report one line.
            try:
                self.env.handle_exception()
            except Exception as exc:
                raise template_error(exc, self.template.filename or self.task.template_file) from None
            raise

    def _groups(self, entries: Sequence[HistoryEntry], had: Collection[int] = ()) -> list[dict]:
        """The template's history groups. A group without entries is left out, unless it has an ``empty``
        phrase and is not in ``had`` (groups that had entries before the budget cut them all)."""
        recent_first = self.task.history.order == "recent_first"
        plain = self.plain_fields
        out = []
        for g, spec in enumerate(self.task.history.groups):
            items = sorted((e for e in entries if e.group == g), key=lambda e: e.timestamp, reverse=recent_first)
            if items:
                out.append({"phrase": spec.phrase, "empty": None,
                            "items": [{"age": e.age, "item": show_plain(e.item, plain)} for e in items]})
            elif spec.empty is not None and g not in had:
                out.append({"phrase": spec.phrase, "empty": spec.empty, "items": []})
        return out

    def prefix(self, member: dict, network: dict | None, entries: Sequence[HistoryEntry],
               had: Collection[int] = ()) -> str:
        """The shared prefix showing ``entries``; ``had``: groups that had entries before any cut."""
        plain = self.plain_fields
        if plain:
            member = show_plain(member, plain)
            network = None if network is None else show_plain(network, plain)
        return self._block("prefix", {"member": member, "network": network, "history": self._groups(entries, had)})

    def _memoized(self, kind: str, render, *values):
        """``render(*values)``, remembered by the values' content (rendering is a pure function of them)."""
        key = _content_key((kind, *values))
        if key is None:
            return render(*values)
        memo = self._memo
        out = memo.get(key)
        if out is None:
            if len(memo) >= _MAX_MEMO:
                self._memo = memo = {}
            out = memo[key] = render(*values)
        return out

    def _candidate_block(self, variables: dict) -> str:
        plain = self.plain_fields
        if plain and "candidate" in variables:
            variables = {"candidate": show_plain(variables["candidate"], plain)}
        elif plain and "candidates" in variables:
            variables = {"candidates": [show_plain(c, plain) for c in variables["candidates"]]}
        return self._block("candidate", variables)

    def segments(self, candidates: Sequence[dict]) -> list[str]:
        if self.task.segment_per_candidate:
            return [self._memoized("candidate", self._candidate_block, {"candidate": c}) for c in candidates]
        if self.task.kind == Kind.listwise:
            return [self._memoized("candidate", self._candidate_block, {"candidates": list(candidates)})]
        return [self._memoized("candidate", self._candidate_block, {})]

    def _entry_line(self, age: str | None, item: dict) -> str:
        return str(self.entry_macro({"age": age, "item": show_plain(item, self.plain_fields)})) + "\n"

    # Tokens ---------------------------------------------------------------------------------------
    def _tokens(self) -> TokenCounter:
        if self._counter is None or self._counter.tokenizer is not self.tokenizer:
            self._counter = TokenCounter(self.tokenizer)
        return self._counter

    def count(self, texts: list[str]) -> list[int]:
        """Token count of each text (exact; repeated lines are tokenized once per renderer)."""
        return self._tokens().count(texts)

    def _header_tokens(self) -> list[int]:
        """Tokens of each history group's header as the shipped macro writes it (cached per renderer).

        Only groups the member has entries in gain a header when their first entry is kept; an
        ``empty`` phrase line is shown only for groups without entries, so it is part of the base prefix.
        """
        if self._headers is None:
            self._headers = self.count([f"Member has {g.phrase}:\n" for g in self.task.history.groups])
        return self._headers

    def _has_empty_line(self, had: Collection[int]) -> bool:
        """Whether the prefix shows an ``empty`` phrase (and so the history section) with no entry kept."""
        return any(g.empty is not None and i not in had for i, g in enumerate(self.task.history.groups))

    def _priority(self, entries: list[HistoryEntry], candidates: Sequence[dict]) -> list[HistoryEntry]:
        """History entries, most worth keeping first, by the task's truncation strategy."""
        recent = sorted(entries, key=lambda e: -e.timestamp)
        strategy = self.task.history.truncation
        if strategy == "relevant" and candidates:
            # Relevance to the member's whole candidate set, so the prefix stays shared by all of them.
            target = set().union(*(_words(c) for c in candidates))
            return sorted(recent, key=lambda e: -len(_words(e.item) & target))  # stable: ties stay recent-first
        if strategy == "stratified":
            by_group: dict[int, list[HistoryEntry]] = {}
            for e in recent:
                by_group.setdefault(e.group, []).append(e)
            order, depth = [], 0
            while len(order) < len(recent):
                for g in sorted(by_group):
                    if depth < len(by_group[g]):
                        order.append(by_group[g][depth])
                depth += 1
            return order
        return recent

    def render(self, member: dict, candidates: Sequence[dict], history: Sequence[HistoryEntry] = (),
               network: dict | None = None, max_tokens: int | None = None) -> RenderedPrompt:
        """Prefix + segments; with a tokenizer, history is cut to fit ``max_tokens`` (default: the task's)."""
        ranked = self._priority(list(history), candidates)[: self.task.history.max_items]
        dropped_early = len(history) - len(ranked)
        segments = self.segments(candidates)
        # Groups the member has entries in: cut to nothing, they are left out, never called empty.
        had = {e.group for e in history}
        if self.tokenizer is None:
            prefix = self.prefix(member, network, ranked, had)
            return RenderedPrompt(prefix, segments, history_kept=len(ranked), history_cut=dropped_early,
                                  cut_by_group=self._cut_by_group(history, ranked))
        budget = max_tokens or self.task.history.max_tokens
        tokens = self._tokens()
        seg_tokens = tokens.count(segments)
        limit = budget - max(seg_tokens)  # the most tokens the prefix may have
        # Fast path: the whole ranked history fits (one render, one count).
        prefix = self.prefix(member, network, ranked, had)
        prefix_tokens = tokens.count_within(prefix, limit)
        if prefix_tokens <= limit:
            return RenderedPrompt(prefix, segments, prefix_tokens=prefix_tokens, segment_tokens=seg_tokens,
                                  history_kept=len(ranked), history_cut=dropped_early,
                                  cut_by_group=self._cut_by_group(history, ranked))
        # Otherwise estimate each entry's cost from its own line (plus its group's header once), pick
        # entries in priority order, and verify with an exact count. Lines are rendered and counted a
        # few at a time: the entries after the first that does not fit are never looked at.
        # The base prefix holds the empty-phrase lines of the groups the member has no entries in (and
        # then the history section's header too): they stay whatever is kept.
        base = tokens.count([self.prefix(member, network, [], had)])[0]
        room = limit - base
        over = room < 0
        header = self._header_tokens()
        section = 0 if self._has_empty_line(had) else _SECTION_COST
        kept, used, seen, costs = [], section, set(), []
        for i, entry in enumerate(ranked):
            if i == len(costs):
                costs += tokens.count([self._memoized("entry", self._entry_line, e.age, e.item)
                                       for e in ranked[i:i + _LINES_AT_ONCE]])
            extra = costs[i] + (0 if entry.group in seen else header[entry.group])
            if used + extra > room:
                break
            kept.append(entry)
            seen.add(entry.group)
            used += extra
        while True:
            prefix = self.prefix(member, network, kept, had)
            if not kept:
                prefix_tokens = tokens.count([prefix])[0]
                break
            prefix_tokens = tokens.count_within(prefix, limit)
            if prefix_tokens <= limit:
                break
            kept = kept[:-1]
        return RenderedPrompt(
            prefix, segments, prefix_tokens=prefix_tokens, segment_tokens=seg_tokens, history_kept=len(kept),
            history_cut=len(history) - len(kept), cut_by_group=self._cut_by_group(history, kept), over_budget=over,
        )

    def _cut_by_group(self, history: Sequence[HistoryEntry], kept: Sequence[HistoryEntry]) -> dict[str, int]:
        cut: dict[str, int] = {}
        kept_ids = {id(e) for e in kept}
        for e in history:
            if id(e) not in kept_ids:
                phrase = self.task.history.groups[e.group].phrase
                cut[phrase] = cut.get(phrase, 0) + 1
        return cut

