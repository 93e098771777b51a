"""What every replica of an emulator server shares: :class:`EmulatorConfig`, and its cost model from CLI options."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from sim.costmodel import ReplicaCostModel

OutputTokensMode = Literal["auto", "lognormal", "max-tokens"]
OUTPUT_TOKENS_MODES: tuple[str, ...] = get_args(OutputTokensMode)
#: vLLM's default context length for Llama-3-8B.
DEFAULT_MAX_MODEL_LEN = 8192
#: Request body limit. vLLM has none (100 MB took the emulator from 82 to 409 MB); 4 MiB is far above any
#: prompt that fits a context and above the admitter's 1 MiB, which forwards bodies slightly rewritten,
#: so clients behind an admitter meet the admitter's limit, not this one.
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class EmulatorConfig:
    """Everything a replica needs besides its address; shared by all replicas of a server.

    ``max_model_len`` defaults to 8192 or the KV cache, whichever is smaller (vLLM refuses to
    start when one sequence cannot fit, and so does this). ``seed`` makes output lengths and
    ``fail_rate`` draws reproducible per replica.
    """

    model: str = "llama-3-8b"
    cost_model: ReplicaCostModel = field(default_factory=ReplicaCostModel)
    speedup: float = 1.0
    max_model_len: int | None = None
    default_max_tokens: int = 256
    output_tokens_mode: OutputTokensMode = "auto"
    mean_output_tokens: float = 200.0
    output_tokens_sigma: float = 1.0
    seed: int = 0
    fail_rate: float = 0.0
    fail_status: int = 500
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model must be a non-empty name")
        if not self.speedup > 0:
            raise ValueError("speedup must be positive")
        if self.default_max_tokens < 1:
            raise ValueError("default_max_tokens must be >= 1")
        if self.output_tokens_mode not in OUTPUT_TOKENS_MODES:
            raise ValueError(f"output_tokens_mode must be one of {', '.join(OUTPUT_TOKENS_MODES)}")
        if not self.mean_output_tokens >= 1 or self.output_tokens_sigma < 0:
            raise ValueError("mean_output_tokens must be >= 1 and output_tokens_sigma >= 0")
        if not 0.0 <= self.fail_rate <= 1.0:
            raise ValueError("fail_rate must be within [0, 1]")
        if self.seed < 0:
            raise ValueError("seed must be >= 0")
        if not 400 <= self.fail_status <= 599:
            raise ValueError("fail_status must be an HTTP error status (400-599)")
        if self.max_body_bytes < 1:
            raise ValueError("max_body_bytes must be >= 1")
        kv = self.cost_model.total_blocks * self.cost_model.block_size
        if self.max_model_len is not None and not 2 <= self.max_model_len <= kv:
            raise ValueError(f"max_model_len must be within [2, {kv}] (the KV cache of one replica)")

    @property
    def context_length(self) -> int:
        """Prompt + output tokens one sequence may hold."""
        if self.max_model_len is not None:
            return self.max_model_len
        return min(DEFAULT_MAX_MODEL_LEN, self.cost_model.total_blocks * self.cost_model.block_size)


def build_cost_model(path: str | Path | None = None, *, kv_tokens: int | None = None,
                     max_num_seqs: int | None = None, max_num_batched_tokens: int | None = None,
                     scheduling_policy: str | None = None) -> ReplicaCostModel:
    """A replica's cost model from the CLI's options.

    ``path`` is either a GPU calibration file (``decode``/``prefill`` grids, fitted with
    :meth:`ReplicaCostModel.from_calibration`) or a JSON object of :class:`ReplicaCostModel`
    fields; without it, the published H200 fit. ``max_num_batched_tokens`` rises to
    ``max_num_seqs`` when only the latter is given, since the engine needs room for one decode
    per sequence.
    """
    if path is None:
        cost = ReplicaCostModel()
    else:
        p = Path(path)
        data = json.loads(p.read_text())
        if isinstance(data, dict) and "decode" in data and "prefill" in data:
            cost = ReplicaCostModel.from_calibration(p)
        elif isinstance(data, dict):
            cost = ReplicaCostModel(**data)
        else:
            raise ValueError(f"{p}: expected a calibration file or a JSON object of cost-model fields")
    changes: dict[str, Any] = {}
    if kv_tokens is not None:
        changes["kv_capacity_tokens"] = kv_tokens
    if max_num_seqs is not None:
        changes["max_num_seqs"] = max_num_seqs
        if max_num_batched_tokens is None and cost.max_num_batched_tokens < max_num_seqs:
            changes["max_num_batched_tokens"] = max_num_seqs
    if max_num_batched_tokens is not None:
        changes["max_num_batched_tokens"] = max_num_batched_tokens
    if scheduling_policy is not None:
        changes["scheduling_policy"] = scheduling_policy
    return cost.with_(**changes) if changes else cost
