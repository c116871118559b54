"""What a prompt says about a member at a moment: profile, network, history and social proof.

`CorpusView` indexes a Corpus once (sorted numpy arrays, CSR-style offsets) so each lookup is a
binary search. Only interactions strictly before the moment are ever visible: that is the
leakage rule every prompt obeys.

Values come out neutralized the same way for every task (free text in «guillemets»), so the
caches below hold for all tasks; a task that shows some fields plain (`quote:`) has them turned
plain by its Renderer, which sees every value whoever built it.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pyarrow as pa

from recbrew.data.corpus import Corpus
from recbrew.data.schema import ITEMS, MEMBERS, NO_ACTION
from recbrew.errors import ConfigError
from recbrew.tasks.spec import TaskSpec
from recbrew.verbalize.neutralize import neutralize
from recbrew.verbalize.render import HistoryEntry
from recbrew.verbalize.stats import AsOfStats, FacetSpec, compare_word, estimate, likelihood_word, share

DAY = 86_400
_MEMBER_FIELDS = [c.name for c in MEMBERS.columns if c.name not in ("member_id", "company_id", "joined_at")]
_ITEM_FIELDS = [c.name for c in ITEMS.columns if c.name not in ("item_id", "ref_id", "author_id", "company_id",
                                                                  "created_at")]
#: Item fields always shown, whatever the task's candidate_fields say.
_ALWAYS = ("item_type", "title", "name", "headline")
#: Facets on which a candidate can match the member: (member field, item field, word in the prompt).
MATCH_FACETS = (("function", "function", "field"), ("industry", "industry", "industry"),
                ("seniority", "seniority", "seniority"), ("location", "location", "location"))
#: Recent actions over which a candidate's field and industry are counted.
RECENT_ACTIONS = 50


def _codes(values: list | None, vocab: dict[str, int]) -> np.ndarray | None:
    """Integer codes of categorical ``values`` in a shared vocabulary (-1 where missing)."""
    if values is None:
        return None
    return np.array([vocab.setdefault(v, len(vocab)) if isinstance(v, str) and v else -1 for v in values], np.int64)


def age_text(seconds: int) -> str:
    days = int(seconds // DAY)
    if days < 1:
        return "today"
    if days < 14:
        return f"{days}d ago"
    if days < 60:
        return f"{days // 7}w ago"
    return f"{days // 30}mo ago"


def _column(table: pa.Table, name: str) -> list | None:
    return table[name].to_pylist() if name in table.column_names else None


class CorpusView:
    """Fast, leakage-safe lookups over one Corpus."""

    def __init__(self, corpus: Corpus):
        self.corpus = corpus
        members, items = corpus.members, corpus.items
        self.member_ids = members["member_id"].to_numpy()
        self._member_row = {int(m): i for i, m in enumerate(self.member_ids)}
        self._member_cols = {f: _column(members, f) for f in _MEMBER_FIELDS if f in members.column_names}
        self.item_ids = items["item_id"].to_numpy()
        self._item_row = {int(i): r for r, i in enumerate(self.item_ids)}
        self._item_cols = {f: _column(items, f) for f in _ITEM_FIELDS if f in items.column_names}
        self._author = _column(items, "author_id")
        self._ref = _column(items, "ref_id")
        self._created = items["created_at"].to_numpy() if "created_at" in items.column_names else None
        self._names = self._member_cols.get("name")
        # Facet codes (one vocabulary per facet, shared by members and items) for the match facts.
        self._m_facet, self._i_facet = {}, {}
        for m_field, i_field, _ in MATCH_FACETS:
            vocab: dict[str, int] = {}
            m_codes = _codes(_column(members, m_field), vocab)
            i_codes = _codes(_column(items, i_field), vocab)
            if m_codes is not None and i_codes is not None:
                self._m_facet[m_field], self._i_facet[i_field] = m_codes, i_codes

        # Interactions with an action, sorted by (member, time): history and engagement lookups.
        inter = corpus.interactions
        action = inter["action"].to_numpy(zero_copy_only=False).astype(str)
        acted = action != NO_ACTION
        member = inter["member_id"].to_numpy()[acted]
        ts = inter["timestamp"].to_numpy()[acted]
        order = np.lexsort((ts, member))
        self.h_member, self.h_ts = member[order], ts[order]
        self.h_item = inter["item_id"].to_numpy()[acted][order]
        self.h_action = action[acted][order]
        surface = (inter["surface"].to_numpy(zero_copy_only=False).astype(str) if "surface" in inter.column_names
                   else np.full(len(action), "", dtype=str))
        self.h_surface = surface[acted][order]
        # Field and industry codes of each action's item (-1 unknown): the candidate's share of recent actions.
        by_id = np.argsort(self.item_ids, kind="stable")
        at = np.minimum(np.searchsorted(self.item_ids[by_id], self.h_item), max(len(by_id) - 1, 0))
        rows = (np.where(self.item_ids[by_id][at] == self.h_item, by_id[at], -1) if len(by_id)
                else np.full(len(self.h_item), -1, np.int64))
        self.h_facet = {f: np.where(rows >= 0, codes[np.maximum(rows, 0)], -1)
                        for f, codes in self._i_facet.items() if f in ("function", "industry")}
        # Engagements sorted by (item, time): who engaged with an item before a moment.
        by_item = np.lexsort((self.h_ts, self.h_item))
        self.e_item, self.e_ts, self.e_member = self.h_item[by_item], self.h_ts[by_item], self.h_member[by_item]

        # Connections (both directions), sorted by (member, neighbour), with the time they formed.
        edges = corpus.edges
        kind = edges["kind"].to_numpy(zero_copy_only=False).astype(str) if len(edges) else np.array([], str)
        conn = kind == "connection"
        src, dst = edges["src"].to_numpy()[conn], edges["dst"].to_numpy()[conn]
        ets = edges["timestamp"].to_numpy()[conn]
        a, b, t = np.concatenate([src, dst]), np.concatenate([dst, src]), np.concatenate([ets, ets])
        order = np.lexsort((b, a))
        self.c_src, self.c_dst, self.c_ts = a[order], b[order], t[order]
        follow = np.isin(kind, ["follows_company", "follows_member"])
        self.f_src = edges["src"].to_numpy()[follow]
        self.f_dst = edges["dst"].to_numpy()[follow]
        self.f_kind = kind[follow]
        self.f_ts = edges["timestamp"].to_numpy()[follow]
        order = np.lexsort((self.f_ts, self.f_src))
        self.f_src, self.f_dst, self.f_kind, self.f_ts = (x[order] for x in (self.f_src, self.f_dst, self.f_kind, self.f_ts))
        self._stats: dict[tuple, AsOfStats] = {}
        #: Each task's rating model (`recbrew.verbalize.collab`) where its spec declares ``stats.collab``.
        self.collab: dict = {}
        self._recent: dict[tuple, dict] = {}

    # Entities -------------------------------------------------------------------------------------
    def has_member(self, member_id: int) -> bool:
        return int(member_id) in self._member_row

    def member_name(self, member_id: int | None) -> str | None:
        if member_id is None or self._names is None:
            return None
        row = self._member_row.get(int(member_id))
        return None if row is None else self._names[row]

    @lru_cache(maxsize=65_536)  # noqa: B019 - one view per build; members repeat across requests
    def member(self, member_id: int, hide_skill: str | None = None) -> dict:
        """The neutralized profile; every known field present (None where the corpus lacks it)."""
        row = self._member_row[int(member_id)]
        out = {f: None for f in _MEMBER_FIELDS}
        for f, col in self._member_cols.items():
            value = col[row]
            if f == "skills" and hide_skill is not None and value:
                value = [s for s in value if s != hide_skill]
            out[f] = neutralize(f, value)
        return out

    @lru_cache(maxsize=262_144)  # noqa: B019
    def item(self, item_id: int, fields: tuple[str, ...] | None = None) -> dict:
        """The neutralized item; fields outside ``fields`` (plus the always-shown ones) are None."""
        row = self._item_row[int(item_id)]
        out = {f: None for f in _ITEM_FIELDS}
        out["author"] = None
        for f, col in self._item_cols.items():
            if fields is None or f in fields or f in _ALWAYS:
                out[f] = neutralize(f, col[row])
        if self._ref is not None and self._ref[row] is not None and out["item_type"] == "member":
            ref = self._ref[row]
            if self.has_member(ref):
                profile = self.member(ref)
                out.update(name=profile["name"], headline=profile["headline"])
        if (fields is None or "author" in fields) and self._author is not None and self._author[row] is not None:
            out["author"] = neutralize("name", self.member_name(self._author[row]) or "")
        return out

    def item_type(self, item_id: int) -> str | None:
        row = self._item_row.get(int(item_id))
        col = self._item_cols.get("item_type")
        return None if row is None or col is None else col[row]

    def item_title(self, item_id: int) -> str | None:
        row = self._item_row.get(int(item_id))
        return None if row is None else self._item_cols["title"][row]

    def ref_member(self, item_id: int) -> int | None:
        row = self._item_row.get(int(item_id))
        return None if row is None or self._ref is None else self._ref[row]

    # Time-bounded views ---------------------------------------------------------------------------
    def _range(self, keys: np.ndarray, times: np.ndarray, key: int, t: int) -> tuple[int, int]:
        """Index range of rows with ``keys == key`` and ``times < t`` in arrays sorted by (key, time)."""
        lo = np.searchsorted(keys, key, side="left")
        hi = np.searchsorted(keys, key, side="right")
        return int(lo), int(lo + np.searchsorted(times[lo:hi], t, side="left"))

    def actions_range(self, member_id: int, t: int) -> tuple[int, int]:
        """Index range into the ``h_*`` arrays of the member's actions before ``t`` (oldest first)."""
        return self._range(self.h_member, self.h_ts, member_id, t)

    def actions_before(self, member_id: int, t: int) -> int:
        lo, hi = self.actions_range(member_id, t)
        return hi - lo

    def history(self, member_id: int, t: int, task: TaskSpec, limit: int | None = None) -> list[HistoryEntry]:
        """The member's interactions before ``t`` that the task's history groups select, newest first."""
        lo, hi = self._range(self.h_member, self.h_ts, member_id, t)
        return select_history(self, self.h_action, self.h_surface, self.h_ts, self.h_item, lo, hi, t, task,
                              limit or 4 * task.history.max_items)

    def connections(self, member_id: int, t: int) -> np.ndarray:
        lo = np.searchsorted(self.c_src, member_id, side="left")
        hi = np.searchsorted(self.c_src, member_id, side="right")
        return self.c_dst[lo:hi][self.c_ts[lo:hi] < t]

    def network(self, member_id: int, t: int, top: int = 3) -> dict:
        lo = np.searchsorted(self.f_src, member_id, side="left")
        hi = np.searchsorted(self.f_src, member_id, side="right")
        ok = self.f_ts[lo:hi] < t
        dst, kind = self.f_dst[lo:hi][ok], self.f_kind[lo:hi][ok]
        companies = [neutralize("company", self.item_title(d) or "") for d in dst[kind == "follows_company"][:top]]
        creators = [neutralize("name", self.member_name(d) or "") for d in dst[kind == "follows_member"][:top]]
        return {"connections": int(len(self.connections(member_id, t))), "companies": companies, "creators": creators,
                "actions": self.actions_before(member_id, t)}

    def social(self, member_id: int, item_id: int, t: int, task: TaskSpec, friends: np.ndarray | None = None) -> dict:
        """Social context of one candidate: connections who engaged with it, or mutual connections."""
        spec = task.social
        friends = self.connections(member_id, t) if friends is None else friends
        out = {"engaged_count": 0, "engaged_names": [], "mutual_count": None, "mutual_names": [],
               "shared_company": False, "shared_school": False}
        other = self.ref_member(item_id)
        if other is not None and self.has_member(other):
            if spec.mutual_connections:
                mutual = np.intersect1d(friends, self.connections(other, t))
                out["mutual_count"] = int(len(mutual))
                out["mutual_names"] = [neutralize("name", self.member_name(m) or "") for m in mutual[: spec.max_names]]
            if spec.shared_company_school:
                me, them = self.member(member_id), self.member(other)
                out["shared_company"] = bool(me["company"]) and me["company"] == them["company"]
                out["shared_school"] = bool(me["school"]) and me["school"] == them["school"]
        elif spec.engaged_connections:
            lo, hi = self._range(self.e_item, self.e_ts, item_id, t)
            engaged = np.intersect1d(np.unique(self.e_member[lo:hi]), friends)
            out["engaged_count"] = int(len(engaged))
            out["engaged_names"] = [neutralize("name", self.member_name(m) or "") for m in engaged[: spec.max_names]]
        return out

    def engagements(self, item_id: int, t: int) -> int:
        """How many actions members took on the item before ``t`` (its visible popularity)."""
        lo, hi = self._range(self.e_item, self.e_ts, item_id, t)
        return hi - lo

    def item_age(self, item_id: int, t: int) -> str | None:
        row = self._item_row.get(int(item_id))
        if row is None or self._created is None or self._created[row] is None:
            return None
        return age_text(max(int(t) - int(self._created[row]), 0))

    def candidate(self, member_id: int, item_id: int, t: int, task: TaskSpec, friends=None, collab=None) -> dict:
        """The item as the member sees it at ``t``: its fields, age, engagement so far and social context.
        ``collab``: the rating model a build's training request reads (default: the task's in ``self.collab``)."""
        out = dict(self.item(int(item_id), tuple(task.candidate_fields)))
        if out.get("item_type") != "member":
            out["age"] = self.item_age(item_id, t)
            out["engagements"] = self.engagements(int(item_id), t)
        out["social"] = self.social(member_id, int(item_id), t, task, friends)
        out["match"] = self.match(member_id, int(item_id), t)
        out["stats"] = self.candidate_stats(member_id, int(item_id), t, task, collab)
        return out

    # As-of-time statistics (`recbrew.verbalize.stats`) ----------------------------------------------
    def stats(self, task: TaskSpec) -> AsOfStats | None:
        """The task's statistics over this Corpus (built once per label, facets and look-back)."""
        spec = task.stats
        if not spec.any:
            return None
        facets = tuple(FacetSpec(f.field, f.word, f.bucket) for f in spec.facets)
        key = (tuple(task.label.positive), tuple(task.label.negatives), facets, spec.recent)
        if key not in self._stats:
            self._stats[key] = AsOfStats(self.corpus, *key)
        return self._stats[key]

    def member_stats(self, member_id: int, t: int, task: TaskSpec) -> dict | None:
        """The member's labelled interactions before ``t``: ``{n, positive, share}`` (share in %), or None."""
        stats = self.stats(task)
        if stats is None or not task.stats.member:
            return None
        n, positive = stats.member(int(member_id), int(t))
        return {"n": n, "positive": positive, "share": share(positive, n), **_stat_words(task)}

    def candidate_stats(self, member_id: int, item_id: int, t: int, task: TaskSpec, collab=None) -> dict | None:
        """The candidate's labelled interactions before ``t`` (``n``, ``positive``, ``share`` in %) and, per
        declared facet, how many of the member's recent positive / negative actions share its value; with
        ``stats.collab``, the rating model's probability (``collab``, else the task's model in ``self.collab``;
        a ConfigError when there is none)."""
        stats = self.stats(task)
        if stats is None:
            return None
        spec = task.stats
        out: dict = {"n": None, "positive": None, "share": None, "vs_all": None, "vs_member": None, "facets": [],
                     "taste_n": None, "taste_share": None, "estimate": None, "estimate_word": None,
                     "collab": None, "collab_word": None, **_stat_words(task)}
        item, member = stats.item(int(item_id), int(t)), stats.member(int(member_id), int(t))
        overall = stats.overall(int(t))
        if spec.candidate:
            n, positive = item
            out.update(n=n, positive=positive, share=share(positive, n), vs_all=compare_word(n, positive, *overall))
            if spec.member:
                out["vs_member"] = compare_word(n, positive, *member)
        taste = None
        if spec.taste or spec.estimate:
            raters, weight, positive_weight = stats.taste(int(member_id), int(item_id), int(t))
            taste = (weight, positive_weight)
            if spec.taste:
                out.update(taste_n=raters,
                           taste_share=None if weight == 0 else int(round(100 * positive_weight / weight)))
        if spec.estimate:
            p = estimate(item, member, overall, taste, spec.shrink)
            out.update(estimate=None if p is None else int(round(100 * p)), estimate_word=likelihood_word(p))
        if spec.collab:
            model = collab if collab is not None else self.collab.get(task.name)
            if model is None:
                raise ConfigError(f"task {task.name} declares stats.collab: its rating model is fitted by `recbrew data "
                                  "build` and read from the examples folder (e.g. `recbrew serve --examples DIR`)")
            p = model.probability(member_id, item_id)
            out.update(collab=int(round(100 * p)), collab_word=likelihood_word(p))
        if stats.facets:
            key = (int(member_id), int(t), id(stats))
            recent = self._recent.get(key)
            if recent is None:
                if len(self._recent) > 4096:
                    self._recent.clear()
                recent = self._recent[key] = stats.recent_items(int(member_id), int(t))
            out["facets"] = stats.facet_counts(recent, int(item_id))
        return out

    def match(self, member_id: int, item_id: int, t: int) -> dict:
        """How the candidate relates to the member: the facets both share (``same``: words such as
        "field", "industry") and how many of the member's last RECENT_ACTIONS actions before ``t`` were on
        items of the candidate's field and industry (``recent``: their count, None without a field)."""
        m_row, i_row = self._member_row.get(int(member_id)), self._item_row.get(int(item_id))
        out = {"same": [], "recent": None, "field_actions": None, "industry_actions": None}
        if m_row is None or i_row is None:
            return out
        for m_field, i_field, word in MATCH_FACETS:
            if m_field in self._m_facet and i_field in self._i_facet:
                mine, theirs = self._m_facet[m_field][m_row], self._i_facet[i_field][i_row]
                if mine >= 0 and mine == theirs:
                    out["same"].append(word)
        if "function" in self.h_facet and self._i_facet["function"][i_row] >= 0:
            lo, hi = self.actions_range(member_id, t)
            lo = max(lo, hi - RECENT_ACTIONS)
            out["recent"] = hi - lo
            out["field_actions"] = int((self.h_facet["function"][lo:hi] == self._i_facet["function"][i_row]).sum())
            if "industry" in self.h_facet and self._i_facet["industry"][i_row] >= 0:
                out["industry_actions"] = int(
                    (self.h_facet["industry"][lo:hi] == self._i_facet["industry"][i_row]).sum())
        return out


def _stat_words(task: TaskSpec) -> dict:
    """How the templates name the counted interactions and their outcomes (the task's ``stats`` words), and which
    parts they show (``show``; the numbers of the others stay for the dense features)."""
    spec = task.stats
    return {"noun": spec.noun, "pos": spec.positive_word, "neg": spec.negative_word, "show": spec.shown}


def select_history(view: CorpusView, action: np.ndarray, surface: np.ndarray, ts: np.ndarray, item: np.ndarray,
                   lo: int, hi: int, t: int, task: TaskSpec, limit: int) -> list[HistoryEntry]:
    """Rows [lo, hi) of the interaction arrays that the task's history groups select, newest first, at most
    ``limit``; each row goes to the first group whose action (and surface) it matches.

    The rows are in the protocol's order (time then record, or record), so entries of one second keep the
    file's order: later record first, or, for ``order: oldest_first``, earlier record first (the renderer
    orders entries by time and keeps the order of equal times)."""
    groups = task.history.groups
    if not groups or hi == lo:
        return []
    fields = tuple(task.candidate_fields)
    out: list[HistoryEntry] = []
    for i in range(hi - 1, lo - 1, -1):
        for g, spec in enumerate(groups):
            if spec.action == action[i] and (spec.surface is None or spec.surface == surface[i]):
                when = int(ts[i])
                age = age_text(t - when) if task.history.show_age else None
                out.append(HistoryEntry(g, when, view.item(int(item[i]), fields), age))
                break
        if len(out) >= limit:
            break
    if task.history.order == "oldest_first":
        # Newest second first, and within a second the earlier record first.
        out = sorted(reversed(out), key=lambda e: -e.timestamp)
    return out
