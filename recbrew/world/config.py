"""Settings of the synthetic network: sizes, surfaces, and the hidden behaviour model."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

#: 2026-01-01 00:00:00 UTC: day 0 of every generated world.
WORLD_START = 1_767_225_600
DAY = 86_400


@dataclass(frozen=True)
class SurfaceSpec:
    """One place members see items, the item type it shows and the actions it logs."""

    name: str
    item_type: str
    #: Actions with their base logits; the first is the surface's main action.
    actions: tuple[tuple[str, float], ...]
    #: Expected visits per member per day at activity 1; each visit shows one slate.
    rate: float
    #: Smallest and largest slate (items shown at once in one visit); sizes are uniform in between.
    slate: tuple[int, int] = (3, 10)
    #: Share of impressions drawn from what the member's connections engaged with.
    social_share: float = 0.2
    #: Share drawn from items matching the member's visible interests (a targeting system).
    interest_share: float = 0.4

    @property
    def main_action(self) -> str:
        return self.actions[0][0]


SURFACES: tuple[SurfaceSpec, ...] = (
    SurfaceSpec("feed", "post", (("like", -2.6), ("comment", -4.4), ("share", -5.0)), 0.25, (10, 30), 0.35, 0.2),
    SurfaceSpec("jobs", "job", (("apply", -2.6), ("save", -3.2)), 0.09, (10, 20), 0.15, 0.45),
    SurfaceSpec("pymk", "member", (("connect", -2.8),), 0.06, (5, 15), 0.0, 0.5),
    SurfaceSpec("notifications", "post", (("click", -2.6),), 0.15, (3, 10), 0.6, 0.2),
    SurfaceSpec("ads", "ad", (("click", -3.1),), 0.12, (2, 6), 0.1, 0.4),
    SurfaceSpec("learning", "course", (("enroll", -2.7),), 0.04, (3, 10), 0.15, 0.4),
    SurfaceSpec("groups", "group", (("join", -2.5),), 0.03, (3, 10), 0.25, 0.35),
    SurfaceSpec("events", "event", (("register", -2.7),), 0.03, (3, 10), 0.25, 0.35),
    SurfaceSpec("newsletters", "newsletter", (("subscribe", -2.7),), 0.025, (3, 10), 0.2, 0.4),
)


@dataclass(frozen=True)
class ItemKindSpec:
    """How many items of one kind exist and arrive, and how long they stay shown."""

    #: New items per member per day, and the floor for tiny worlds.
    per_member_day: float
    min_per_day: float
    #: Days an item stays in the pool; 0 means forever (catalogue items).
    lifetime: int
    #: Catalogue size at day 0 for lifetime-0 kinds (per member, floor).
    catalogue_per_member: float = 0.0
    catalogue_min: int = 0


ITEM_KINDS: dict[str, ItemKindSpec] = {
    "post": ItemKindSpec(0.02, 12, 7),
    "job": ItemKindSpec(0.004, 3, 30),
    "ad": ItemKindSpec(0.0006, 1, 14),
    "event": ItemKindSpec(0.0005, 1, 21),
    "course": ItemKindSpec(0.0002, 0.3, 0, 0.01, 24),
    "group": ItemKindSpec(0.0001, 0.2, 0, 0.005, 16),
    "newsletter": ItemKindSpec(0.0001, 0.2, 0, 0.004, 12),
}


@dataclass(frozen=True)
class BehaviourModel:
    """Weights of the hidden action model: logit = base + Σ weight · feature."""

    interest: float = 2.0
    social: float = 1.5
    #: Typical log1p(social proof): the social term is centred on it so that turning social proof off
    #: (``social=0``) keeps the base rates and removes only the signal.
    social_center: float = 0.3
    quality: float = 1.0
    recency: float = 0.8
    activity: float = 0.4
    #: Position bias per log1p(slot): slates reach 30 slots, so 0.12 spans about the same logit range (0.4) as
    #: 0.35 did over the 2-3 slots of single-item visits.
    position: float = 0.12
    #: Noise of the latent interests that the profile does not show.
    interest_noise: float = 0.35
    #: How far interests move over 30 days (in units of the own-function interest).
    drift: float = 0.6
    #: Days of engagement that count as social proof.
    social_window: int = 5


@dataclass(frozen=True)
class WorldConfig:
    """Everything `recbrew world generate` needs; the same config and seed give the same bytes."""

    members: int = 2000
    days: int = 30
    seed: int = 0
    #: Share of members who join during the window (cold-start members).
    new_member_share: float = 0.15
    members_per_company: int = 40
    mean_degree: float = 24.0
    behaviour: BehaviourModel = field(default_factory=BehaviourModel)
    surfaces: tuple[SurfaceSpec, ...] = SURFACES
    #: Impression rows handed to the Parquet writer at once.
    chunk_rows: int = 250_000

    def with_behaviour(self, **changes) -> WorldConfig:
        return replace(self, behaviour=replace(self.behaviour, **changes))

    @property
    def companies(self) -> int:
        return max(12, self.members // self.members_per_company)
