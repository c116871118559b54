"""Offline protocols: which requests are train, validation or test, and what history comes before a request.

Three split rules, each over one task's requests (vectorized over numpy arrays):

- ``time``: by days. ``global`` scope: the last ``test_days`` of the log are test, after a ``gap_days``
  gap; ``member`` scope: the same, counted back from each member's own last interaction.
  Validation: the last ``val_days`` before the cutoff, or a seeded ``val_fraction``.
- ``order``: by the record order of the interactions file. ``global``: the last ``test_fraction`` of
  the task's requests are test; ``member``: the last ``test_fraction`` of each member's requests.
- ``leave-last`` (per member): each member's last request is test, the one before it validation.

``val_fraction`` picks a seeded fraction of the training requests (global scope) or of the members
(member scope: their last training request becomes validation, as leave-last does for everyone).

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
            if self.rule != "order":
                raise ConfigError("--test-fraction applies to --split order (time uses --test-days, leave-last "
                                  "one request per member)")
            if not 0 < self.test_fraction < 1:
                raise ConfigError(f"--test-fraction {self.test_fraction:g}: must be in (0, 1)")
        if self.rule == "time":
            if self.test_days <= 0 or self.gap_days < 0:
                raise ConfigError("--test-days must be > 0 and --gap-days >= 0")
            if self.scope == "global":
                first = self.validation_start if self.val_days else self.cutoff
                if first <= self.start:
                    raise ConfigError(
                        f"the log spans {(self.end - self.start) / DAY:.1f} days: too short for "
                        f"{self.test_days:g} test days after a {self.gap_days:g}-day gap"
                        f"{f' and {self.val_days:g} validation days' if self.val_days else ''}; "
                        "lower --test-days, --gap-days or --val-days")

    # The global time rule's boundaries -------------------------------------------------------------
    @property
    def cutoff(self) -> int:
        return int(self.end - (self.test_days + self.gap_days) * DAY)

    @property
    def test_start(self) -> int:
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
        if self.val_fraction and self.scope == "global":
            train = np.flatnonzero(split == "train")
            picks = rng.choice(train, size=int(_round(len(train) * self.val_fraction)), replace=False)
            split[picks] = "validation"
        elif self.scope == "member" and (self.val_fraction or (self.rule == "leave-last" and self.val_fraction is None)):
            self._member_validation(split, member, key, rng)
        return split

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
