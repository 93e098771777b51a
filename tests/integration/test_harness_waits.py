"""The harness's waits on fake checks (no Kafka): ``settled`` fails a count that changes after matching,
where ``eventually`` returned at the first match."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import pytest

from tests.integration.harness import Kafka, eventually, settled, totals_are

EVERY = 0.001  # re-check at once: these checks are plain values


class Counts:
    """A count that reads ``values`` in turn, then keeps its last one; ``calls``: how often it was read."""

    def __init__(self, *values: int) -> None:
        self._values: Iterator[int] = iter(values)
        self.value = values[0]
        self.calls = 0

    def read(self) -> int:
        self.calls += 1
        self.value = next(self._values, self.value)
        return self.value

    def equals(self, want: int) -> Any:
        async def check() -> bool:
            got = self.read()
            assert got == want, f"{got} != {want}"
            return True

        return check


async def test_a_count_that_matches_and_stays_settles() -> None:
    counts = Counts(38, 39, 40)
    assert await settled(counts.equals(40), settle=0.05, checks=3, every=EVERY)
    assert counts.calls >= 3 + 3  # reached on the third read, then re-checked at least three times


async def test_a_count_that_goes_past_its_value_after_matching_fails() -> None:
    # 40 events, then a late double count: the old wait returned at the first 40.
    assert await eventually(Counts(39, 40, 40, 41).equals(40), every=EVERY)
    with pytest.raises(AssertionError, match=r"matched, then changed .*41 != 40"):
        await settled(Counts(39, 40, 40, 41).equals(40), settle=5.0, every=EVERY)


async def test_settling_goes_on_past_the_minimum_number_of_checks() -> None:
    counts = Counts(*[40] * 30, 41)  # the change comes on the 31st read, long after three re-checks
    with pytest.raises(AssertionError, match="41 != 40"):
        await settled(counts.equals(40), settle=30.0, checks=3, every=EVERY)
    assert counts.calls == 31


async def test_a_falsy_result_after_matching_fails_too() -> None:
    results = iter([True, True, False])

    async def check() -> bool:
        return next(results, True)

    with pytest.raises(AssertionError, match="matched, then changed"):
        await settled(check, settle=5.0, every=EVERY)


async def test_a_count_that_never_matches_fails_with_its_last_assertion() -> None:
    with pytest.raises(AssertionError, match="39 != 40"):
        await settled(Counts(39).equals(40), within=0.05, every=0.001)


class FakeTotals:
    """Stands in for ``harness.Kafka``: the pipeline's cumulative totals, one reading per call."""

    def __init__(self, *readings: dict[str, dict[str, int]]) -> None:
        self._readings = iter(readings)
        self._last = readings[0]

    async def totals(self) -> dict[str, dict[str, int]]:
        self._last = next(self._readings, self._last)
        return self._last


async def test_totals_are_with_a_late_double_count_fails_to_settle() -> None:
    right = {"e1": {"events": 40, "duplicates": 10}}
    late = {"e1": {"events": 41, "duplicates": 10}}  # one event counted twice, after the totals matched
    io = cast(Kafka, FakeTotals({"e1": {"events": 20, "duplicates": 0}}, right, right, late))
    with pytest.raises(AssertionError, match=r"matched, then changed .*e1: \{'events': 41\} != \{'events': 40\}"):
        await settled(totals_are(io, {"e1": {"events": 40}}), settle=5.0, every=EVERY)
    steady = cast(Kafka, FakeTotals({"e1": {"events": 20, "duplicates": 0}}, right))
    assert await settled(totals_are(steady, {"e1": {"events": 40, "duplicates": 10}}), settle=0.05, every=EVERY)
