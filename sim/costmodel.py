"""Step-time and KV-capacity model of one vLLM replica.

The emulator never sleeps per token: it asks this model how long one scheduler step takes for a
given batch composition. The numbers come from a GPU measurement (``shared/calibration/``, shipped
in ``sim/calibration/``), so other models and GPUs are a calibration file away
(:meth:`ReplicaCostModel.from_calibration`).

Step time (milliseconds), for a step with ``B`` decode sequences holding ``K`` cached tokens in
total and ``T`` prompt tokens of prefill chunks::

    decode part  = a + b * B + k * K          (only when B > 0)
    prefill part = p * T
    step         = max(a, decode part + prefill part)      (0 for an empty step)

The base ``a`` is a floor for any non-empty step: a prefill-only step of a few tokens still pays
the fixed launch cost of one forward pass.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

#: vLLM's default ``gpu_memory_utilization``.
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9
#: Memory set aside for activations / CUDA graphs when sizing the KV cache from a calibration file.
DEFAULT_ACTIVATION_BYTES = 4_000_000_000


@dataclass(frozen=True, slots=True)
class ReplicaCostModel:
    """Cost and limits of one replica; frozen so a model can be shared by many engines safely.

    Defaults are the published least-squares fit for Llama-3.1-8B's shape on one H200 and vLLM's
    default scheduler limits.
    """

    decode_base_ms: float = 5.43
    decode_per_seq_ms: float = 0.0155
    decode_per_cached_token_ms: float = 2.64e-5
    prefill_per_token_ms: float = 0.0276
    kv_capacity_tokens: int = 850_000
    block_size: int = 16
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    # vLLM's --scheduling-policy: "fcfs" (default) or "priority" (waiting queue ordered by the
    # request's priority, lower first, then arrival).
    scheduling_policy: str = "fcfs"
    name: str = "h200-llama3-8b"

    def __post_init__(self) -> None:
        if self.block_size <= 0:
            raise ValueError("block_size must be positive")
        if self.kv_capacity_tokens < self.block_size:
            raise ValueError("kv_capacity_tokens must hold at least one block")
        if self.max_num_seqs <= 0:
            raise ValueError("max_num_seqs must be positive")
        if self.scheduling_policy not in ("fcfs", "priority"):
            raise ValueError("scheduling_policy must be 'fcfs' or 'priority'")
        # vLLM refuses this configuration too: every running sequence must be able to decode in
        # every step, which is what lets the engine advance decodes lazily.
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError("max_num_batched_tokens must be >= max_num_seqs")
        if min(self.decode_base_ms, self.decode_per_seq_ms, self.decode_per_cached_token_ms,
               self.prefill_per_token_ms) < 0:
            raise ValueError("cost coefficients must be non-negative")

    @property
    def total_blocks(self) -> int:
        """Number of KV blocks: ``kv_capacity_tokens // block_size``."""
        return self.kv_capacity_tokens // self.block_size

    def blocks_for(self, tokens: int) -> int:
        """Blocks a sequence of ``tokens`` cached tokens holds (``ceil(tokens / block_size)``)."""
        return -(-tokens // self.block_size)

    def step_ms(self, num_decode: int, cached_tokens: int, prefill_tokens: int) -> float:
        """Duration of one step in milliseconds (see the module docstring for the formula)."""
        if num_decode <= 0 and prefill_tokens <= 0:
            return 0.0
        ms = self.prefill_per_token_ms * prefill_tokens
        if num_decode > 0:
            ms += (self.decode_base_ms + self.decode_per_seq_ms * num_decode
                   + self.decode_per_cached_token_ms * cached_tokens)
        return ms if ms > self.decode_base_ms else self.decode_base_ms

    def step_seconds(self, num_decode: int, cached_tokens: int, prefill_tokens: int) -> float:
        """Duration of one step in seconds."""
        return self.step_ms(num_decode, cached_tokens, prefill_tokens) / 1000.0

    def decode_tokens_per_s(self, batch: int, context: int) -> float:
        """Steady decode throughput of ``batch`` sequences each holding ``context`` tokens."""
        return batch * 1000.0 / self.step_ms(batch, batch * context, 0)

    def with_(self, **changes: Any) -> ReplicaCostModel:
        """A copy with some fields changed (e.g. a tiny ``kv_capacity_tokens`` for tests)."""
        return replace(self, **changes)

    @classmethod
    def from_calibration(
        cls,
        path: str | Path,
        *,
        gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION,
        activation_bytes: int = DEFAULT_ACTIVATION_BYTES,
        block_size: int = 16,
        max_num_seqs: int = 256,
        max_num_batched_tokens: int = 8192,
        name: str | None = None,
    ) -> ReplicaCostModel:
        """Fit a model to a calibration file shaped like ``h200-llama3-8b-shape.json``.

        Decode: least squares of ``step_ms ~ a + b*B + k*(B*context)`` over ``decode[]``.
        Prefill: least squares of ``ms ~ c + p*tokens`` over ``prefill[]``; only the slope ``p`` is
        kept, because within a mixed step the fixed cost is already paid by the decode part and a
        prefill-only step is floored at ``a``; the slope is the marginal cost of a chunk (on the
        H200 file this reproduces the published 0.0276 ms/token, whereas a fit through the origin
        would give 0.0273).
        KV capacity: ``(util * gpu_total_bytes - weight_bytes - activation_bytes) /
        kv_bytes_per_token``.
        """
        p = Path(path)
        data = json.loads(p.read_text())
        dec = data["decode"]
        a_mat = np.array([[1.0, r["batch"], r["batch"] * r["context"]] for r in dec], dtype=float)
        y = np.array([r["step_ms"] for r in dec], dtype=float)
        (a, b, k), *_ = np.linalg.lstsq(a_mat, y, rcond=None)
        pre = data["prefill"]
        p_mat = np.array([[1.0, r["tokens"]] for r in pre], dtype=float)
        py = np.array([r["ms"] for r in pre], dtype=float)
        (_, pslope), *_ = np.linalg.lstsq(p_mat, py, rcond=None)
        kv_bytes = (gpu_memory_utilization * data["gpu_total_bytes"] - data["weight_bytes"]
                    - activation_bytes)
        kv_tokens = math.floor(kv_bytes / data["kv_bytes_per_token"])
        if kv_tokens < block_size:
            raise ValueError(f"{p}: no memory left for the KV cache")
        return cls(
            decode_base_ms=max(float(a), 0.0),
            decode_per_seq_ms=max(float(b), 0.0),
            decode_per_cached_token_ms=max(float(k), 0.0),
            prefill_per_token_ms=max(float(pslope), 0.0),
            kv_capacity_tokens=kv_tokens,
            block_size=block_size,
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            name=name or p.stem,
        )
