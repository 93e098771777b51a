"""The capacity model: pure Python, no I/O, the clock passed in.

The admitter, the Faust agents, the scaler and the simulator all run this same code, in real or
simulated time.
"""

from capacity.admission import Decision, Verdict, decide
from capacity.allocator import AllocatorPolicy, TickInput, TickResult, allocate
from capacity.bucket import TokenBucket
from capacity.cost import BytesPerTokenEstimator, OutputEstimator, PromptEstimator, RequestCost
from capacity.live import EntitlementLive, PoolLive, Reservation
from capacity.scaling import DemandForecaster, ScalingDecision, ScalingRule, replicas_for
from capacity.split import hold_raises, share_for, split_by_demand
from capacity.tick import tick
from capacity.waterfill import waterfill

__all__ = [
    "AllocatorPolicy", "BytesPerTokenEstimator", "Decision", "DemandForecaster", "EntitlementLive",
    "OutputEstimator", "PoolLive", "PromptEstimator", "RequestCost", "Reservation", "ScalingDecision",
    "ScalingRule", "TickInput", "TickResult", "TokenBucket", "Verdict", "allocate", "decide",
    "hold_raises", "replicas_for", "share_for", "split_by_demand", "tick", "waterfill",
]
