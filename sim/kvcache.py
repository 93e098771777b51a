"""Paged KV cache accounting (vLLM's block pool, by count).

vLLM stores KV in fixed-size blocks (16 tokens by default); a sequence with ``L`` cached tokens
holds ``ceil(L / block_size)`` blocks and the pool has ``kv_capacity_tokens // block_size`` of
them. The emulator has no prefix caching, so the identity of a block never matters and a counter
is an exact model: which physical block a sequence gets cannot change any decision the scheduler
makes. Keeping it a counter is what lets a step cost O(1) instead of O(blocks).
"""

from __future__ import annotations


def blocks_for(tokens: int, block_size: int) -> int:
    """``ceil(tokens / block_size)`` without floats."""
    return -(-tokens // block_size)


class BlockPool:
    """Counts free and used KV blocks of one replica.

    The engine reads and writes ``used`` directly in its hot loop; the methods are for clarity
    elsewhere and check the invariants.
    """

    __slots__ = ("block_size", "total", "used")

    def __init__(self, total_blocks: int, block_size: int = 16) -> None:
        if total_blocks <= 0 or block_size <= 0:
            raise ValueError("total_blocks and block_size must be positive")
        self.block_size = block_size
        self.total = total_blocks
        self.used = 0

    @property
    def free(self) -> int:
        """Blocks not held by any sequence."""
        return self.total - self.used

    @property
    def usage(self) -> float:
        """Fraction of blocks in use (vLLM's ``kv_cache_usage_perc`` / 100)."""
        return self.used / self.total

    def blocks_for(self, tokens: int) -> int:
        """Blocks needed to hold ``tokens`` cached tokens."""
        return -(-tokens // self.block_size)

    def can_allocate(self, n: int) -> bool:
        """Whether ``n`` more blocks are free."""
        return self.used + n <= self.total

    def allocate(self, n: int) -> bool:
        """Take ``n`` blocks if they are all free (all or nothing, like vLLM's ``allocate_slots``)."""
        if self.used + n > self.total:
            return False
        self.used += n
        return True

    def release(self, n: int) -> None:
        """Give back ``n`` blocks."""
        if n > self.used:
            raise ValueError(f"releasing {n} blocks but only {self.used} are used")
        self.used -= n
