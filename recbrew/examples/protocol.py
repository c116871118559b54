"""Offline protocols: which requests are train, validation or test, and what history comes before a request.

Three split rules, each over one task's requests (vectorized over numpy arrays):

- ``time``: by days. ``global`` scope: the last ``test_days`` of the log are test (or the last
  ``test_fraction`` of its time range), after a ``gap_days`` gap; ``member`` scope: the same, counted back
  from each member's own last interaction. Validation: the last ``val_days`` before the cutoff, or a
  ``val_fraction`` of the training requests.
- ``order``: by the record order of the interactions file. ``global``: the last ``test_fraction`` of
  the task's requests are test; ``member``: the last ``test_fraction`` of each member's requests.
- ``leave-last`` (per member): each member's last request is test, the one before it validation.

``val_fraction`` picks a seeded fraction of the training requests (global scope) or of the members
(member scope: their last training request becomes validation, as leave-last does for everyone). With
``val_in_order`` it takes the latest share instead: the last ``val_fraction`` of the training requests
(global), or of each member's training requests (member scope), by the rule's order.

Before any split, the rule may narrow which labelled records become requests (`recbrew.examples.requests`
applies it): ``min_position`` keeps targets with at least that many earlier actions of their member (the
history still shows those earlier actions), ``last_records`` keeps the last K records of what remains.

"Before a request" is by time (strictly earlier timestamp) for ``time`` and by record order
(an earlier row of the interactions table) for ``order`` and ``leave-last``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recbrew.errors import ConfigError

DAY = 86_400
SPLIT_RULES = ("time", "order", "leave-last")
SCOPES = ("global", "member")


def parse_history(value: str | None) -> int | None:
    """``all`` (or None) -> None; ``last:N`` -> N."""
    if value is None or value == "all":
        return None
    head, _, n = str(value).partition(":")
    if head != "last" or not n.strip().isdigit() or not 1 <= int(n) <= 500:
        raise ConfigError(f"--history {value!r}: write 'all' or 'last:N' with N from 1 to 500 (e.g. last:20)")
    return int(n)


def _round(x: np.ndarray | float) -> np.ndarray:
    """Half up (numpy rounds half to even)."""
    return np.floor(np.asarray(x, dtype=np.float64) + 0.5).astype(np.int64)


def _rank_within(member: np.ndarray, key: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(rank of each row among its member's rows ordered by ``key``, its member's row count)."""
    order = np.lexsort((*reversed(key), member))
    m = member[order]
    starts = np.flatnonzero(np.r_[True, m[1:] != m[:-1]])
    counts = np.diff(np.r_[starts, len(m)])
    rank = np.empty(len(m), np.int64)
    rank[order] = np.arange(len(m)) - np.repeat(starts, counts)
    size = np.empty(len(m), np.int64)
    size[order] = np.repeat(counts, counts)
    return rank, size


@dataclass(frozen=True)
class SplitRule:
    """One protocol's split rule (see the module docstring); ``assign`` labels a task's requests."""

    rule: str = "time"
    scope: str = "global"
    test_days: float = 7.0
    gap_days: float = 1.0
    test_fraction: float | None = None
    val_days: float | None = None
    val_fraction: float | None = None
    #: The log's time range (first timestamp, last + 1).
    start: int = 0
    end: int = 0
    #: Members (sorted) and the end of each one's log (last timestamp + 1), for the member-scoped time rule.
    member_ids: np.ndarray | None = None
    member_end: np.ndarray | None = None
    #: ``val_fraction`` as the latest share of the training requests (by the rule's order), not a seeded draw.
    val_in_order: bool = False
    #: Targets only from their member's N-th action on (counted from 0: N earlier actions); 0 keeps all.
    min_position: int = 0
    #: Only the last K labelled records (after ``min_position``) become requests; None keeps all.
    last_records: int | None = None

    def __post_init__(self):
        if self.rule not in SPLIT_RULES:
            raise ConfigError(f"--split {self.rule!r}: choose {', '.join(SPLIT_RULES)}")
        if self.scope not in SCOPES:
            raise ConfigError(f"--split-scope {self.scope!r}: choose {', '.join(SCOPES)}")
        if self.rule == "leave-last" and self.scope != "member":
            raise ConfigError("--split leave-last is per member: use --split-scope member (or leave it out)")
        if self.val_days is not None and self.val_fraction is not None:
            raise ConfigError("--val-days and --val-fraction are two ways to make a validation split: pick one")
        if self.val_days is not None and (self.rule != "time" or self.val_days <= 0):
            raise ConfigError("--val-days applies to --split time and must be > 0 (use --val-fraction otherwise)")
        if self.val_fraction is not None and not 0 <= self.val_fraction < 1:
            raise ConfigError(f"--val-fraction {self.val_fraction:g}: must be in [0, 1)")
        if self.test_fraction is not None:
            if self.rule == "leave-last":
                raise ConfigError("--test-fraction applies to --split order and time (leave-last holds out one "
                                  "request per member)")
            if self.rule == "time" and self.scope == "member":
                raise ConfigError("--test-fraction with --split time is the last fraction of the whole log's time "
                                  "range: use --split-scope global (per member, use --test-days)")
            if not 0 < self.test_fraction < 1:
                raise ConfigError(f"--test-fraction {self.test_fraction:g}: must be in (0, 1)")
        if self.val_in_order:
            if self.rule == "leave-last":
                raise ConfigError("--val-in-order applies to --split time and order (leave-last's validation is "
                                  "each member's second-to-last request)")
            if not self.val_fraction:
                raise ConfigError("--val-in-order takes the last --val-fraction of the training requests: "
                                  "give --val-fraction too")
        if self.min_position < 0:
            raise ConfigError(f"--min-position {self.min_position}: must be >= 0")
        if self.last_records is not None and self.last_records < 1:
            raise ConfigError(f"--last {self.last_records}: must be >= 1")
        if self.rule == "time":
            if self.test_days <= 0 or self.gap_days < 0:
                raise ConfigError("--test-days must be > 0 and --gap-days >= 0")
            if self.scope == "global":
                first = self.validation_start if self.val_days else self.cutoff
                if first <= self.start:
                    held = (f"the last {self.test_fraction:g} of it as test" if self.test_fraction is not None
                            else f"{self.test_days:g} test days")
                    raise ConfigError(
                        f"the log spans {(self.end - self.start) / DAY:.1f} days: too short for "
                        f"{held} after a {self.gap_days:g}-day gap"
                        f"{f' and {self.val_days:g} validation days' if self.val_days else ''}; "
                        f"lower {'--test-fraction' if self.test_fraction is not None else '--test-days'}, "
                        "--gap-days or --val-days")

    # The global time rule's boundaries -------------------------------------------------------------
    @property
    def cutoff(self) -> int:
        if self.test_fraction is not None and self.rule == "time":
            return self.test_start - int(self.gap_days * DAY)
        return int(self.end - (self.test_days + self.gap_days) * DAY)

    @property
    def test_start(self) -> int:
        if self.test_fraction is not None and self.rule == "time":
            # The last fraction of the log's time range, whatever its length in days.
            return int(self.end - self.test_fraction * (self.end - self.start))
        return self.cutoff + int(self.gap_days * DAY)

    @property
    def validation_start(self) -> int | None:
        return None if self.val_days is None else int(self.cutoff - self.val_days * DAY)

    @property
    def by_order(self) -> bool:
        """Whether "before" means an earlier record (order, leave-last) rather than an earlier time."""
        return self.rule != "time"

    @property
    def makes_validation(self) -> bool:
        if self.rule == "leave-last":
            return self.val_fraction != 0
        return bool(self.val_days) or bool(self.val_fraction)

    @property
    def splits(self) -> list[str]:
        return ["train", "validation", "test"] if self.makes_validation else ["train", "test"]

    def describe(self) -> dict:
        """The boundaries for the manifest (the global time rule's cutoff; nothing fixed for the others)."""
        out: dict = {"rule": self.rule, "scope": self.scope}
        if self.rule == "time" and self.scope == "global":
            out.update(cutoff=self.cutoff, test_start=self.test_start, end=self.end)
            if self.val_days:
                out["validation_start"] = self.validation_start
        if self.val_fraction:
            out["validation"] = "last" if self.val_in_order else "seeded draw"
        if self.min_position:
            out["min_position"] = self.min_position
        if self.last_records is not None:
            out["last_records"] = self.last_records
        return out

    def member_cutoff(self, member: np.ndarray) -> np.ndarray:
        """Per request: the time cutoff (global, or the member's own for the member scope)."""
        if self.scope == "global" or self.rule != "time":
            return np.full(len(member), self.cutoff, dtype=np.int64)
        pos = np.searchsorted(self.member_ids, member)
        end = self.member_end[np.clip(pos, 0, len(self.member_end) - 1)]
        return (end - int((self.test_days + self.gap_days) * DAY)).astype(np.int64)

    def days_from_cutoff(self, member: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Days after the cutoff (time rules); NaN where the split is by order."""
        if self.rule != "time":
            return np.full(len(ts), np.nan)
        return (ts - self.member_cutoff(member)) / DAY

    # Assignment -----------------------------------------------------------------------------------------
    def assign(self, member: np.ndarray, ts: np.ndarray, pos: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """'train', 'validation', 'test' or '' (dropped: inside the gap) per request."""
        n = len(member)
        split = np.full(n, "train", dtype="<U10")
        if n == 0:
            return split
        # "Last" means latest in time (then record) for time rules, latest record otherwise.
        key = (pos,) if self.by_order else (ts, pos)
        if self.rule == "time":
            cutoff = self.member_cutoff(member)
            gap = int(self.gap_days * DAY)
            split[ts >= cutoff] = ""
            split[ts >= cutoff + gap] = "test"
            if self.val_days:
                split[(ts >= cutoff - int(self.val_days * DAY)) & (ts < cutoff)] = "validation"
        elif self.rule == "order" and self.scope == "global":
            order = np.lexsort(tuple(reversed(key)))
            n_test = min(int(_round(n * self.fraction)), n - 1)
            split[order[n - n_test:]] = "test"
        else:
            rank, size = _rank_within(member, key)
            if self.rule == "order":
                n_test = np.minimum(_round(size * self.fraction), size - 1)
                split[rank >= size - n_test] = "test"
            else:  # leave-last: the last request of every member
                split[rank == size - 1] = "test"
        if self.val_fraction and self.val_in_order:
            self._validation_in_order(split, member, key)
        elif self.val_fraction and self.scope == "global":
            train = np.flatnonzero(split == "train")
            picks = rng.choice(train, size=int(_round(len(train) * self.val_fraction)), replace=False)
            split[picks] = "validation"
        elif self.scope == "member" and (self.val_fraction or (self.rule == "leave-last" and self.val_fraction is None)):
            self._member_validation(split, member, key, rng)
        return split

    def _validation_in_order(self, split, member, key) -> None:
        """The last ``val_fraction`` of the training requests (global) or of each member's (member scope, at least
        one left in training), by the rule's order: validation sits between training and test."""
        train = np.flatnonzero(split == "train")
        if len(train) == 0:
            return
        if self.scope == "global":
            order = train[np.lexsort(tuple(k[train] for k in reversed(key)))]
            n_val = min(int(_round(len(train) * self.val_fraction)), len(train) - 1)
            split[order[len(order) - n_val:]] = "validation"
            return
        rank, size = _rank_within(member[train], tuple(k[train] for k in key))
        n_val = np.minimum(_round(size * self.val_fraction), size - 1)
        split[train[rank >= size - n_val]] = "validation"

    @property
    def fraction(self) -> float:
        return 0.2 if self.test_fraction is None else self.test_fraction

    def _member_validation(self, split, member, key, rng) -> None:
        """A fraction of the members (all for leave-last by default) lend their last training request."""
        train = np.flatnonzero(split == "train")
        if len(train) == 0:
            return
        rank, size = _rank_within(member[train], tuple(k[train] for k in key))
        # Members with at least two training requests, so that one stays in training.
        last = train[(rank == size - 1) & (size >= 2)]
        fraction = 1.0 if self.val_fraction is None else self.val_fraction
        if fraction < 1.0:
            last = np.sort(rng.choice(last, size=int(_round(len(last) * fraction)), replace=False))
        split[last] = "validation"
