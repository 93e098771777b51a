"""The replica cost model and its calibration fit."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from sim.costmodel import ReplicaCostModel
from sim.kvcache import BlockPool, blocks_for

# The GPU measurement, shipped with the project (sim/calibration/README.md): the test fails if it is missing.
CALIBRATION = Path(__file__).resolve().parents[2] / "sim" / "calibration" / "h200-llama3-8b-shape.json"


def test_defaults_are_published_fit() -> None:
    c = ReplicaCostModel()
    assert (c.decode_base_ms, c.decode_per_seq_ms, c.decode_per_cached_token_ms,
            c.prefill_per_token_ms) == (5.43, 0.0155, 2.64e-5, 0.0276)
    assert c.kv_capacity_tokens == 850_000 and c.total_blocks == 850_000 // 16
    assert (c.max_num_seqs, c.max_num_batched_tokens, c.block_size) == (256, 8192, 16)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.max_num_seqs = 3  # type: ignore[misc]
    assert c.with_(max_num_seqs=8).max_num_seqs == 8
    # README: ~20-24k tokens/s with hundreds of short sequences, ~3k with 64 x 8k context
    assert 19_000 < c.decode_tokens_per_s(256, 512) < 24_000
    assert 2_800 < c.decode_tokens_per_s(64, 8192) < 3_300


def test_validation() -> None:
    with pytest.raises(ValueError):
        ReplicaCostModel(max_num_batched_tokens=100, max_num_seqs=256)
    with pytest.raises(ValueError):
        ReplicaCostModel(kv_capacity_tokens=8)
    with pytest.raises(ValueError):
        ReplicaCostModel(prefill_per_token_ms=-1)


def _write(tmp_path: Path, a: float, b: float, k: float, p: float) -> Path:
    data = {
        "kv_bytes_per_token": 1000,
        "weight_bytes": 10_000_000,
        "gpu_total_bytes": 100_000_000,
        "decode": [{"batch": bb, "context": ctx, "step_ms": a + b * bb + k * bb * ctx}
                   for bb in (1, 8, 64) for ctx in (128, 1024)],
        "prefill": [{"tokens": n, "ms": 0.5 + p * n} for n in (128, 512, 2048)],
    }
    path = tmp_path / "gpu-x.json"
    path.write_text(json.dumps(data))
    return path


def test_from_calibration_recovers_exact_coefficients(tmp_path: Path) -> None:
    path = _write(tmp_path, 3.0, 0.02, 1e-5, 0.05)
    c = ReplicaCostModel.from_calibration(path, activation_bytes=5_000_000, max_num_seqs=64)
    assert c.decode_base_ms == pytest.approx(3.0)
    assert c.decode_per_seq_ms == pytest.approx(0.02)
    assert c.decode_per_cached_token_ms == pytest.approx(1e-5)
    assert c.prefill_per_token_ms == pytest.approx(0.05)  # slope; the 0.5 ms intercept is dropped
    # (0.9 * 100e6 - 10e6 - 5e6) / 1000
    assert c.kv_capacity_tokens == 75_000
    assert c.max_num_seqs == 64 and c.name == "gpu-x"


def test_from_h200_calibration() -> None:
    c = ReplicaCostModel.from_calibration(CALIBRATION)
    assert c.decode_base_ms == pytest.approx(5.43, rel=0.01)
    assert c.decode_per_seq_ms == pytest.approx(0.0155, rel=0.01)
    assert c.decode_per_cached_token_ms == pytest.approx(2.64e-5, rel=0.01)
    assert c.prefill_per_token_ms == pytest.approx(0.0276, rel=0.01)
    # (0.9 * 150.1 GB - 15.0 GB - 4 GB) / 128 KiB
    assert 880_000 < c.kv_capacity_tokens < 890_000
    tighter = ReplicaCostModel.from_calibration(CALIBRATION, activation_bytes=8_600_000_000)
    assert tighter.kv_capacity_tokens == pytest.approx(850_000, rel=0.01)


def test_block_pool() -> None:
    assert [blocks_for(n, 16) for n in (0, 1, 16, 17, 32, 33)] == [0, 1, 1, 2, 2, 3]
    pool = BlockPool(4)
    assert pool.blocks_for(17) == 2
    assert pool.allocate(3) and not pool.allocate(2) and pool.used == 3
    assert pool.free == 1 and pool.usage == 0.75 and pool.can_allocate(1)
    pool.release(3)
    assert pool.used == 0
    with pytest.raises(ValueError):
        pool.release(1)
