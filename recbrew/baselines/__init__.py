"""Classic rankers trained and scored on the same examples as the LLM: LiRank, LiGR, DCNv2,
popularity and the oracle, each behind the Scorer protocol.

    from recbrew.baselines import load_scorer
    scorer = load_scorer("runs/baselines/lirank")        # a folder written by `recbrew baselines train`
    probs = scorer.score(load_requests(examples, "test"))
"""

from recbrew.baselines.oracle import Oracle
from recbrew.baselines.popularity import Popularity, PopularityConfig
from recbrew.baselines.scorer import ModelScorer, load_model, load_scorer

__all__ = ["ModelScorer", "Oracle", "Popularity", "PopularityConfig", "load_model", "load_scorer"]
