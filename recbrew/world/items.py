"""Content items (posts, jobs, ads, courses, groups, events, newsletters) and their text."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from recbrew.world import text, vocab
from recbrew.world.config import DAY, WORLD_START
from recbrew.world.entities import (
    _CITIES,
    _FUNCTION_WEIGHTS,
    _FUNCTIONS,
    _HASHTAGS,
    _INDUSTRIES,
    _LOCATION_WEIGHTS,
    _LOCATIONS,
    _SENIORITIES,
    _SENIORITY_WEIGHTS,
    _SKILLS,
    _TITLES,
    N_FUNCTIONS,
    N_INDUSTRIES,
    N_SKILLS_PER_FUNCTION,
    Companies,
    ItemStore,
    Members,
    _skill_ids,
    item_table,
)


def _split_patterns(patterns) -> tuple[pa.Array, pa.Array]:
    heads, tails = zip(*(p.split("{}") for p in patterns), strict=False)
    return text.vocab(heads), text.vocab(tails)


_COURSE = _split_patterns(vocab.COURSE_PATTERNS)
_NEWSLETTER = _split_patterns(vocab.NEWSLETTER_PATTERNS)
_AD = _split_patterns(vocab.AD_PATTERNS)


class ItemFactory:
    """Creates a day's new items of each kind: hidden attributes into the store, rows for the table."""

    def __init__(self, store: ItemStore, members: Members, companies: Companies):
        self.store = store
        self.members = members
        self.companies = companies

    def create(self, kind: str, rng: np.random.Generator, n: int, days: np.ndarray, authors: np.ndarray) -> pa.Table:
        """``n`` new items of ``kind`` created on ``days``; ``authors`` are candidate member ids (posts)."""
        return getattr(self, f"_{kind}")(rng, n, days, authors)

    # Pieces shared by the kinds -------------------------------------------------------------------
    def _skills(self, rng, function, k):
        ids = _skill_ids(rng, function, k)
        return ids, text.lists(text.pick(_SKILLS, ids), k)

    @staticmethod
    def _created_at(rng, days):
        return WORLD_START + days.astype(np.int64) * DAY + rng.integers(0, DAY, size=len(days))

    def _by_authors(self, rng, n, authors):
        act = self.members.activity[authors].astype(np.float64) ** 1.5
        author = authors[rng.choice(len(authors), size=n, p=act / act.sum())]
        # Authors write mostly about their own function, sometimes about their secondary interest.
        own = rng.random(n) < 0.7
        function = np.where(own, self.members.function[author], self.members.secondary[author])
        return author, function, self.members.industry[author]

    # Kinds ----------------------------------------------------------------------------------------
    def _post(self, rng, n, days, authors):
        author, function, industry = self._by_authors(rng, n, authors)
        k = np.full(n, 2)
        skill_ids, skills = self._skills(rng, function, k)
        s1, s2 = text.pick(_SKILLS, skill_ids[0::2]), text.pick(_SKILLS, skill_ids[1::2])
        tags = text.pick(_HASHTAGS, skill_ids)
        opener = text.pick(text.vocab(vocab.POST_OPENERS), rng.integers(0, len(vocab.POST_OPENERS), size=n))
        closer = text.pick(text.vocab(vocab.POST_CLOSERS), rng.integers(0, len(vocab.POST_CLOSERS), size=n))
        ind = text.pick(_INDUSTRIES, industry)
        ids = self.store.add(
            "post", function=function, industry=industry, location=self.members.location[author],
            seniority=self.members.seniority[author], remote=np.zeros(n, bool),
            quality=rng.normal(0.0, 0.6, size=n) + 0.2 * np.log(self.members.activity[author]),
            created_day=days, author=author, company=self.members.company[author],
        )
        return item_table(
            ids, "post",
            title=text.concat(opener, " ", s1),
            text=text.concat(opener, " ", s1, " and ", s2, " in ", ind, ". ", closer, " ",
                             tags.take(pa.array(np.arange(0, 2 * n, 2))), " ", tags.take(pa.array(np.arange(1, 2 * n, 2)))),
            author_id=author, topic=text.pick(_FUNCTIONS, function), function=text.pick(_FUNCTIONS, function),
            industry=ind, skills=skills, hashtags=text.lists(tags, k),
            format=text.pick(text.vocab(vocab.POST_FORMATS), rng.integers(0, len(vocab.POST_FORMATS), size=n)),
            created_at=self._created_at(rng, days),
        )

    def _job(self, rng, n, days, authors):
        company = self.companies.sample(rng, n)
        industry = self.companies.industry[company]
        function = rng.choice(N_FUNCTIONS, size=n, p=_FUNCTION_WEIGHTS)
        seniority = rng.choice(len(vocab.SENIORITIES), size=n, p=_SENIORITY_WEIGHTS)
        location = np.where(rng.random(n) < 0.7, self.companies.location[company],
                            rng.choice(len(vocab.LOCATIONS), size=n, p=_LOCATION_WEIGHTS))
        remote = rng.random(n) < 0.25
        k = rng.integers(3, 6, size=n)
        skill_ids, skills = self._skills(rng, function, k)
        first = np.cumsum(k) - k
        title = text.pick(_TITLES, function * len(vocab.SENIORITY_PREFIX) + seniority)
        cname = text.pick(self.companies.name, company)
        loc = text.pick(_LOCATIONS, location)
        ids = self.store.add(
            "job", function=function, industry=industry, location=location, seniority=seniority, remote=remote,
            quality=rng.normal(0.0, 0.5, size=n) + 0.15 * np.log(self.companies.size[company]),
            created_day=days, author=np.full(n, -1), company=company,
        )
        return item_table(
            ids, "job",
            title=title,
            text=text.concat(
                cname, " is hiring a ", title, " in ", loc, ". You will work with ",
                text.pick(_SKILLS, skill_ids[first]), ", ", text.pick(_SKILLS, skill_ids[first + 1]), " and ",
                text.pick(_SKILLS, skill_ids[first + 2]), ".",
                text.choose(remote.astype(np.int64), [text.vocab([""] * n), text.vocab([" Remote friendly."] * n)]),
            ),
            company_id=company, company=cname, topic=text.pick(_FUNCTIONS, function),
            function=text.pick(_FUNCTIONS, function), industry=text.pick(_INDUSTRIES, industry), location=loc,
            remote=remote, seniority=text.pick(_SENIORITIES, seniority), skills=skills,
            created_at=self._created_at(rng, days),
        )

    def _topical(self, rng, n, kind, days, company=None, author=None, function=None, industry=None):
        """Shared attributes of the catalogue-like kinds (ads, courses, groups, events, newsletters)."""
        function = rng.choice(N_FUNCTIONS, size=n, p=_FUNCTION_WEIGHTS) if function is None else function
        industry = rng.integers(0, N_INDUSTRIES, size=n) if industry is None else industry
        location = rng.choice(len(vocab.LOCATIONS), size=n, p=_LOCATION_WEIGHTS)
        skill = function * N_SKILLS_PER_FUNCTION + rng.integers(0, N_SKILLS_PER_FUNCTION, size=n)
        ids = self.store.add(
            kind, function=function, industry=industry, location=location, seniority=np.zeros(n, np.int8),
            remote=np.zeros(n, bool), quality=rng.normal(0.0, 0.5, size=n), created_day=days,
            author=np.full(n, -1) if author is None else author,
            company=np.full(n, -1) if company is None else company,
        )
        return ids, function, industry, location, skill

    def _ad(self, rng, n, days, authors):
        company = self.companies.sample(rng, n)
        ids, function, industry, _, skill = self._topical(rng, n, "ad", days, company=company,
                                                          industry=self.companies.industry[company])
        pat = rng.integers(0, len(vocab.AD_PATTERNS), size=n)
        cname = text.pick(self.companies.name, company)
        title = text.concat(text.pick(_AD[0], pat), text.pick(_SKILLS, skill), text.pick(_AD[1], pat))
        return item_table(
            ids, "ad", title=title, text=text.concat("Sponsored by ", cname, ". ", title, "."),
            company_id=company, company=cname, topic=text.pick(_FUNCTIONS, function),
            function=text.pick(_FUNCTIONS, function), industry=text.pick(_INDUSTRIES, industry),
            skills=text.lists(text.pick(_SKILLS, skill), np.ones(n, np.int64)), created_at=self._created_at(rng, days),
        )

    def _course(self, rng, n, days, authors):
        ids, function, industry, _, skill = self._topical(rng, n, "course", days)
        pat = rng.integers(0, len(vocab.COURSE_PATTERNS), size=n)
        s = text.pick(_SKILLS, skill)
        return item_table(
            ids, "course", title=text.concat(text.pick(_COURSE[0], pat), s, text.pick(_COURSE[1], pat)),
            text=text.concat("A hands-on course on ", s, " for ", text.pick(_FUNCTIONS, function), " professionals."),
            topic=text.pick(_FUNCTIONS, function), function=text.pick(_FUNCTIONS, function),
            industry=text.pick(_INDUSTRIES, industry), skills=text.lists(s, np.ones(n, np.int64)),
            created_at=self._created_at(rng, days),
        )

    def _group(self, rng, n, days, authors):
        ids, function, industry, location, skill = self._topical(rng, n, "group", days)
        f, ind = text.pick(_FUNCTIONS, function), text.pick(_INDUSTRIES, industry)
        title = text.choose(rng.integers(0, 2, size=n), [
            text.concat(ind, " ", f, " Network"),
            text.concat(f, " Professionals in ", text.pick(_CITIES, location)),
        ])
        return item_table(
            ids, "group", title=title,
            text=text.concat("A community for ", f, " people in ", ind, " to discuss ", text.pick(_SKILLS, skill), "."),
            topic=f, function=f, industry=ind, location=text.pick(_LOCATIONS, location),
            created_at=self._created_at(rng, days),
        )

    def _event(self, rng, n, days, authors):
        ids, function, industry, location, skill = self._topical(rng, n, "event", days)
        f, loc = text.pick(_FUNCTIONS, function), text.pick(_LOCATIONS, location)
        kind = text.pick(text.vocab(vocab.EVENT_KINDS), rng.integers(0, len(vocab.EVENT_KINDS), size=n))
        return item_table(
            ids, "event", title=text.concat(f, " ", kind, " ", text.pick(_CITIES, location)),
            text=text.concat("Join ", f, " leaders from ", text.pick(_INDUSTRIES, industry), " in ", loc,
                             " to talk about ", text.pick(_SKILLS, skill), "."),
            topic=f, function=f, industry=text.pick(_INDUSTRIES, industry), location=loc,
            created_at=self._created_at(rng, days),
        )

    def _newsletter(self, rng, n, days, authors):
        author, function, industry = self._by_authors(rng, n, authors)
        ids, function, industry, _, skill = self._topical(rng, n, "newsletter", days, author=author,
                                                          function=function, industry=industry)
        pat = rng.integers(0, len(vocab.NEWSLETTER_PATTERNS), size=n)
        f = text.pick(_FUNCTIONS, function)
        return item_table(
            ids, "newsletter", title=text.concat(text.pick(_NEWSLETTER[0], pat), f, text.pick(_NEWSLETTER[1], pat)),
            text=text.concat("Notes on ", text.pick(_SKILLS, skill), " and the ", text.pick(_INDUSTRIES, industry),
                             " industry, every week."),
            author_id=author, topic=f, function=f, industry=text.pick(_INDUSTRIES, industry),
            created_at=self._created_at(rng, days),
        )
