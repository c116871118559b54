"""The Scorer seam: every model (LLM, baselines, popularity, oracle) scores the same requests."""

from recbrew.scoring.protocol import Scorer, load_requests

__all__ = ["Scorer", "load_requests"]
