"""What a request costs, estimated before it runs and corrected when it ends.

Reserve-then-correct: a request is charged at admission from estimates (so parallel and
streaming requests cannot overshoot a limit), then the charge is corrected with the usage the
backend reports.
"""

from __future__ import annotations

import math
from typing import Protocol


class PromptEstimator(Protocol):
    """Turns a prompt's size into tokens; a tokenizer-backed estimator can replace the default."""

    def estimate(self, prompt_bytes: int) -> int: ...

    def observe(self, prompt_bytes: int, prompt_tokens: int) -> None: ...


class BytesPerTokenEstimator:
    """Estimates prompt tokens from UTF-8 bytes, recalibrated from the usage backends report.

    An exponentially weighted mean keeps it cheap and lets it follow a change of language mix.
    """

    __slots__ = ("alpha", "bytes_per_token", "ceiling", "floor")

    def __init__(
        self, bytes_per_token: float = 4.0, alpha: float = 0.05, floor: float = 1.0, ceiling: float = 16.0
    ) -> None:
        if not 0 < alpha <= 1:
            raise ValueError("alpha must lie in (0, 1]")
        self.bytes_per_token = bytes_per_token
        self.alpha = alpha
        self.floor = floor
        self.ceiling = ceiling

    def estimate(self, prompt_bytes: int) -> int:
        return max(1, math.ceil(prompt_bytes / self.bytes_per_token))

    def observe(self, prompt_bytes: int, prompt_tokens: int) -> None:
        if prompt_tokens <= 0 or prompt_bytes <= 0:
            return
        sample = min(self.ceiling, max(self.floor, prompt_bytes / prompt_tokens))
        self.bytes_per_token += self.alpha * (sample - self.bytes_per_token)


class OutputEstimator:
    """Running mean of an entitlement's output lengths, used to charge throughput up front."""

    __slots__ = ("alpha", "mean")

    def __init__(self, prior_tokens: float = 256.0, alpha: float = 0.1) -> None:
        self.mean = prior_tokens
        self.alpha = alpha

    def estimate(self, max_tokens: int) -> int:
        return max(1, min(max_tokens, math.ceil(self.mean)))

    def observe(self, output_tokens: int) -> None:
        self.mean += self.alpha * (output_tokens - self.mean)


class RequestCost:
    """A reservation on each dimension; KV holds prompt + max_tokens since output can reach it."""

    __slots__ = ("concurrency", "expected_output", "kv", "max_tokens", "prompt_tokens", "throughput")

    def __init__(
        self, prompt_tokens: int, max_tokens: int, expected_output: int, w_in: float, w_out: float
    ) -> None:
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.expected_output = expected_output
        self.throughput = w_in * prompt_tokens + w_out * expected_output
        self.kv = float(prompt_tokens + max_tokens)
        self.concurrency = 1.0

    def __repr__(self) -> str:
        return (
            f"RequestCost(prompt={self.prompt_tokens}, max_tokens={self.max_tokens}, "
            f"expected_output={self.expected_output}, throughput={self.throughput:g}, kv={self.kv:g})"
        )
