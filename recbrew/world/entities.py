"""Companies, members and items of the synthetic network: hidden attributes and their text."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from recbrew.data.schema import ITEMS, MEMBERS
from recbrew.world import text, vocab
from recbrew.world.config import DAY, ITEM_KINDS, WORLD_START, WorldConfig

N_FUNCTIONS = len(vocab.FUNCTIONS)
N_INDUSTRIES = len(vocab.INDUSTRIES)
N_SKILLS_PER_FUNCTION = len(vocab.SKILLS[0])
#: Interest space: one dimension per function, then one per industry.
INTEREST_DIMS = N_FUNCTIONS + N_INDUSTRIES
ITEM_KIND_CODES = {name: i for i, name in enumerate(("company", "member", *ITEM_KINDS))}

_FUNCTIONS = text.vocab(vocab.FUNCTIONS)
_INDUSTRIES = text.vocab(vocab.INDUSTRIES)
_LOCATIONS = text.vocab(vocab.LOCATIONS)
_SENIORITIES = text.vocab(vocab.SENIORITIES)
_SKILLS = text.vocab([s for group in vocab.SKILLS for s in group])
_HASHTAGS = text.vocab(text.hashtag([s for group in vocab.SKILLS for s in group]))
# Title per (function, seniority): "Senior Data Scientist", and "Director of Data Science" at the top.
_TITLES = text.vocab([
    f"Director of {f}" if p == "Director of " else p + r
    for f, r in zip(vocab.FUNCTIONS, vocab.ROLES, strict=True) for p in vocab.SENIORITY_PREFIX
])
_CITIES = text.vocab([loc.split(",")[0] for loc in vocab.LOCATIONS])

# Functions draw hires unevenly: engineering, sales and operations are the big ones.
_FUNCTION_WEIGHTS = np.array([16, 8, 6, 5, 8, 10, 7, 5, 9, 7, 4, 5], dtype=np.float64)
_FUNCTION_WEIGHTS /= _FUNCTION_WEIGHTS.sum()
_SENIORITY_WEIGHTS = np.array([0.05, 0.2, 0.33, 0.25, 0.12, 0.05])
_LOCATION_WEIGHTS = 1.0 / np.arange(1, len(vocab.LOCATIONS) + 1) ** 0.6
_LOCATION_WEIGHTS /= _LOCATION_WEIGHTS.sum()
_YEARS_RANGE = np.array([[0, 1], [1, 3], [3, 7], [6, 12], [9, 16], [12, 25]])


def _related_matrix() -> np.ndarray:
    rel = np.zeros((N_FUNCTIONS, N_FUNCTIONS), dtype=np.float32)
    for a, b in vocab.RELATED_FUNCTIONS:
        rel[a, b] = rel[b, a] = 1.0
    return rel


RELATED = _related_matrix()


def _skill_ids(rng: np.random.Generator, functions: np.ndarray, k: np.ndarray) -> np.ndarray:
    """``k[i]`` distinct skill ids of function ``functions[i]``, flattened row by row."""
    local = text.sample_without_replacement(rng, len(functions), N_SKILLS_PER_FUNCTION, k)
    return np.repeat(functions, k) * N_SKILLS_PER_FUNCTION + local


@dataclass
class Companies:
    industry: np.ndarray
    location: np.ndarray
    size: np.ndarray
    name: pa.Array

    def __len__(self) -> int:
        return len(self.industry)

    @classmethod
    def generate(cls, rng: np.random.Generator, n: int) -> Companies:
        industry = rng.permutation(np.arange(n) % N_INDUSTRIES)
        location = rng.choice(len(vocab.LOCATIONS), size=n, p=_LOCATION_WEIGHTS)
        size = rng.pareto(1.2, size=n) + 1.0
        # Stem x industry word gives 180 names per industry; a numeral keeps larger worlds unique.
        stems = np.arange(n) % len(vocab.COMPANY_STEMS)
        words = rng.integers(0, 5, size=n)
        words_flat = text.vocab([w for group in vocab.INDUSTRY_WORDS for w in group])
        name = text.concat(
            text.pick(text.vocab(vocab.COMPANY_STEMS), rng.permutation(stems)),
            " ",
            text.pick(words_flat, industry * 5 + words),
        )
        clash = np.arange(n) // (len(vocab.COMPANY_STEMS) * 5)
        suffix = text.pick(text.vocab(["", " II", " III", " IV", " V", " VI", " VII", " VIII"]), np.minimum(clash, 7))
        return cls(industry, location, size, text.concat(name, suffix))

    def sample(self, rng: np.random.Generator, n: int, industry: np.ndarray | None = None) -> np.ndarray:
        """Companies weighted by size; within ``industry[i]`` when given."""
        if industry is None:
            p = self.size / self.size.sum()
            return rng.choice(len(self), size=n, p=p)
        order = np.lexsort((-self.size, self.industry))
        starts = np.searchsorted(self.industry[order], np.arange(N_INDUSTRIES))
        ends = np.searchsorted(self.industry[order], np.arange(N_INDUSTRIES), side="right")
        span = ends[industry] - starts[industry]
        # u**2 favours the larger companies at the start of each industry block.
        offset = np.floor(rng.random(n) ** 2 * span).astype(np.int64)
        return order[starts[industry] + offset]

    def table(self) -> pa.Table:
        ids = np.arange(len(self), dtype=np.int64)
        return item_table(
            ids,
            "company",
            title=self.name,
            text=text.concat(
                self.name, " is a ", text.pick(_INDUSTRIES, self.industry), " company based in ",
                text.pick(_LOCATIONS, self.location), ".",
            ),
            company_id=ids,
            company=self.name,
            industry=text.pick(_INDUSTRIES, self.industry),
            location=text.pick(_LOCATIONS, self.location),
            created_at=np.full(len(self), WORLD_START - 3650 * DAY, dtype=np.int64),
        )


@dataclass
class Members:
    """Visible profile attributes plus the hidden state that drives behaviour."""

    function: np.ndarray
    secondary: np.ndarray
    industry: np.ndarray
    seniority: np.ndarray
    location: np.ndarray
    school: np.ndarray
    company: np.ndarray
    activity: np.ndarray
    open_to_work: np.ndarray
    joined_day: np.ndarray
    #: Epoch seconds of joining; a member is active from the day after.
    joined_at: np.ndarray
    #: Latent interests at day 0 (functions then industries) and their drift per 30 days.
    interest: np.ndarray
    drift: np.ndarray

    def __len__(self) -> int:
        return len(self.function)

    @classmethod
    def generate(cls, rng: np.random.Generator, config: WorldConfig, companies: Companies) -> Members:
        n = config.members
        function = rng.choice(N_FUNCTIONS, size=n, p=_FUNCTION_WEIGHTS)
        # The secondary interest is mostly a related function: it shows up in skills and behaviour.
        related_pick = rng.random((n, N_FUNCTIONS)) * (RELATED[function] + 0.15)
        related_pick[np.arange(n), function] = -1.0
        secondary = related_pick.argmax(axis=1)
        company = companies.sample(rng, n, industry=rng.integers(0, N_INDUSTRIES, size=n))
        industry = companies.industry[company]
        location = np.where(
            rng.random(n) < 0.6, companies.location[company], rng.choice(len(vocab.LOCATIONS), size=n, p=_LOCATION_WEIGHTS)
        )
        school = rng.integers(0, len(vocab.SCHOOLS), size=n)
        seniority = rng.choice(len(vocab.SENIORITIES), size=n, p=_SENIORITY_WEIGHTS)
        activity = rng.lognormal(0.0, 0.8, size=n)
        activity = (activity / activity.mean()).astype(np.float32)
        open_to_work = rng.random(n) < 0.15
        joined_day = np.where(
            rng.random(n) < config.new_member_share,
            rng.integers(0, max(config.days, 1), size=n),
            -rng.integers(1, 3650, size=n),
        ).astype(np.int32)
        joined_at = WORLD_START + joined_day.astype(np.int64) * DAY + rng.integers(0, DAY, size=n)

        b = config.behaviour
        interest = np.zeros((n, INTEREST_DIMS), dtype=np.float32)
        interest[:, :N_FUNCTIONS] = 0.3 * RELATED[function]
        interest[np.arange(n), function] = 1.0
        interest[np.arange(n), secondary] = 0.6
        interest[np.arange(n), N_FUNCTIONS + industry] = 1.0
        interest += rng.normal(0.0, b.interest_noise, size=interest.shape).astype(np.float32)
        drift = rng.normal(0.0, b.drift, size=(n, N_FUNCTIONS)).astype(np.float32)
        return cls(function, secondary, industry, seniority, location, school, company, activity,
                   open_to_work, joined_day, joined_at, interest, drift)

    def interest_on(self, day: int, members: np.ndarray, functions: np.ndarray, industries: np.ndarray) -> np.ndarray:
        """Latent interest of each member in an item's function and industry on ``day``."""
        base = self.interest[members, functions] + 0.6 * self.interest[members, N_FUNCTIONS + industries]
        return base + (day / 30.0) * self.drift[members, functions]

    def table(self, rng: np.random.Generator, companies: Companies) -> pa.Table:
        n = len(self)
        ids = np.arange(n, dtype=np.int64)
        title = text.pick(_TITLES, self.function * len(vocab.SENIORITY_PREFIX) + self.seniority)
        company = text.pick(companies.name, self.company)
        own = rng.integers(2, 6, size=n)
        second = rng.integers(1, 3, size=n)
        skill_ids = np.concatenate([
            _skill_ids(rng, self.function, own).reshape(-1),
            _skill_ids(rng, self.secondary, second),
        ])
        # Interleave so each member's own skills are followed by their secondary ones.
        order = np.argsort(np.concatenate([np.repeat(ids, own), np.repeat(ids, second)]), kind="stable")
        skills = text.lists(text.pick(_SKILLS, skill_ids[order]), own + second)
        starts = np.cumsum(own + second) - (own + second)
        first_skill = text.pick(_SKILLS, skill_ids[order][starts])
        second_skill = text.pick(_SKILLS, skill_ids[order][starts + own])
        headline = text.choose(rng.integers(0, 3, size=n), [
            text.concat(title, " at ", company),
            text.concat(title, " | ", first_skill, " · ", second_skill),
            text.concat(title, " | Helping teams with ", first_skill),
        ])
        years = _YEARS_RANGE[self.seniority]
        years = (years[:, 0] + np.floor(rng.random(n) * (years[:, 1] - years[:, 0] + 1))).astype(np.int32)
        return pa.table(
            {
                "member_id": ids,
                "name": text.concat(
                    text.pick(text.vocab(vocab.FIRST_NAMES), rng.integers(0, len(vocab.FIRST_NAMES), size=n)),
                    " ",
                    text.pick(text.vocab(vocab.LAST_NAMES), rng.integers(0, len(vocab.LAST_NAMES), size=n)),
                ),
                "headline": headline,
                "title": title,
                "company_id": self.company.astype(np.int64),
                "company": company,
                "industry": text.pick(_INDUSTRIES, self.industry),
                "function": text.pick(_FUNCTIONS, self.function),
                "seniority": text.pick(_SENIORITIES, self.seniority),
                "location": text.pick(_LOCATIONS, self.location),
                "skills": skills,
                "school": text.pick(text.vocab(vocab.SCHOOLS), self.school),
                "degree": text.pick(text.vocab(vocab.DEGREES), rng.integers(0, len(vocab.DEGREES), size=n)),
                "years_experience": years,
                "open_to_work": self.open_to_work,
                "joined_at": self.joined_at,
            },
            schema=MEMBERS.arrow_schema(
                ["member_id", "name", "headline", "title", "company_id", "company", "industry", "function",
                 "seniority", "location", "skills", "school", "degree", "years_experience", "open_to_work", "joined_at"]
            ),
        )


#: Columns every item table of the world carries, in this order.
ITEM_COLUMNS = [
    "item_id", "item_type", "title", "text", "ref_id", "author_id", "company_id", "company", "topic", "function",
    "industry", "location", "remote", "seniority", "skills", "hashtags", "format", "created_at",
]
ITEM_SCHEMA = ITEMS.arrow_schema(ITEM_COLUMNS)


def item_table(ids: np.ndarray, kind: str, **columns) -> pa.Table:
    """An item table in :data:`ITEM_SCHEMA`; columns not given are null."""
    n = len(ids)
    data = {"item_id": ids.astype(np.int64), "item_type": pa.array([kind] * n, type=pa.string())}
    for name in ITEM_COLUMNS[2:]:
        field = ITEM_SCHEMA.field(name)
        value = columns.pop(name, None)
        data[name] = pa.nulls(n, type=field.type) if value is None else pa.array(value, type=field.type)
    if columns:
        raise TypeError(f"unknown item columns: {sorted(columns)}")
    return pa.table(data, schema=ITEM_SCHEMA)


class ItemStore:
    """Hidden attributes of every item, indexed by item_id (companies, then member cards, then content)."""

    def __init__(self, companies: Companies, members: Members, rng: np.random.Generator):
        n_c, n_m = len(companies), len(members)
        self.member_base = n_c
        size = n_c + n_m
        self.kind = np.empty(size, dtype=np.int8)
        self.kind[:n_c] = ITEM_KIND_CODES["company"]
        self.kind[n_c:] = ITEM_KIND_CODES["member"]
        self.function = np.concatenate([np.zeros(n_c, dtype=np.int64), members.function]).astype(np.int8)
        self.industry = np.concatenate([companies.industry, members.industry]).astype(np.int8)
        self.location = np.concatenate([companies.location, members.location]).astype(np.int16)
        self.seniority = np.concatenate([np.zeros(n_c, dtype=np.int64), members.seniority]).astype(np.int8)
        self.remote = np.zeros(size, dtype=bool)
        self.quality = rng.normal(0.0, 0.3, size=size).astype(np.float32)
        self.created_day = np.concatenate([np.full(n_c, -3650), members.joined_day]).astype(np.int32)
        self.author = np.concatenate([np.full(n_c, -1), np.arange(n_m)]).astype(np.int64)
        self.company = np.concatenate([np.arange(n_c), members.company]).astype(np.int32)

    def __len__(self) -> int:
        return len(self.kind)

    def member_item(self, member_ids: np.ndarray) -> np.ndarray:
        return member_ids + self.member_base

    def add(self, kind: str, *, function, industry, location, seniority, remote, quality, created_day, author,
            company) -> np.ndarray:
        """Append items of one kind; returns their ids."""
        n = len(function)
        start = len(self)
        self.kind = np.concatenate([self.kind, np.full(n, ITEM_KIND_CODES[kind], dtype=np.int8)])
        self.function = np.concatenate([self.function, np.asarray(function, dtype=np.int8)])
        self.industry = np.concatenate([self.industry, np.asarray(industry, dtype=np.int8)])
        self.location = np.concatenate([self.location, np.asarray(location, dtype=np.int16)])
        self.seniority = np.concatenate([self.seniority, np.asarray(seniority, dtype=np.int8)])
        self.remote = np.concatenate([self.remote, np.asarray(remote, dtype=bool)])
        self.quality = np.concatenate([self.quality, np.asarray(quality, dtype=np.float32)])
        self.created_day = np.concatenate([self.created_day, np.asarray(created_day, dtype=np.int32)])
        self.author = np.concatenate([self.author, np.asarray(author, dtype=np.int64)])
        self.company = np.concatenate([self.company, np.asarray(company, dtype=np.int32)])
        return np.arange(start, start + n, dtype=np.int64)
