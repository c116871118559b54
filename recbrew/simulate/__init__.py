"""Closed-loop simulation: policies serve slates to the synthetic world, rankers learn from the logs.

    from recbrew.simulate import SimulationConfig, simulate
    results = simulate(SimulationConfig(members=300, days=3, warmup_days=2), "runs/sim")
"""

from recbrew.simulate.loop import SimulationConfig, simulate
from recbrew.simulate.policy import POLICIES

__all__ = ["POLICIES", "SimulationConfig", "simulate"]
