"""The synthetic professional network: entities, social graph and behaviour with ground truth."""

from recbrew.world.config import SURFACES, WorldConfig
from recbrew.world.generate import CARD_FILE, generate_world

__all__ = ["CARD_FILE", "SURFACES", "WorldConfig", "generate_world"]
