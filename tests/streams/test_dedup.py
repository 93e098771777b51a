"""Telling replays (same record again) from duplicates (same id, another record), with a bounded memory."""

from __future__ import annotations

from streams.dedup import DedupVerdict, SeenBatch, SeenIds, batch_key, partition_of_key


def test_verdicts() -> None:
    seen = SeenIds()
    assert seen.verdict("a", offset=5, applied_offset=-1) is DedupVerdict.NEW
    assert seen.remember("a", 5)
    assert not seen.remember("a", 9)  # first offset wins
    assert seen.verdict("a", offset=9, applied_offset=5) is DedupVerdict.DUPLICATE
    assert seen.verdict("a", offset=5, applied_offset=5) is DedupVerdict.REPLAY
    assert seen.verdict("b", offset=3, applied_offset=5) is DedupVerdict.REPLAY


def test_id_remembered_but_count_lost_is_counted_again() -> None:
    """After a crash the id batch may have been persisted while the window record was not."""
    seen = SeenIds()
    seen.remember("a", 5)
    assert seen.verdict("a", offset=5, applied_offset=2) is DedupVerdict.NEW
    assert seen.verdict("a", offset=8, applied_offset=5) is DedupVerdict.DUPLICATE


def test_expiry_by_horizon_and_by_size() -> None:
    seen = SeenIds(horizon_s=10, max_ids=3)
    for i, t in enumerate((0.0, 5.0)):
        batch = SeenBatch(batch_key(0, i * 2), t, [(f"id{i}a", i * 2), (f"id{i}b", i * 2 + 1)])
        for event_id, offset in batch.ids:
            seen.remember(event_id, offset)
        seen.batches.append(batch)
    assert seen.expire(now=6.0) == ["0:0"]  # 4 ids > max 3: the oldest batch goes early
    assert seen.evicted_early == 2 and set(seen.ids) == {"id1a", "id1b"}
    assert seen.expire(now=16.0) == ["0:2"]
    assert seen.ids == {}


def test_batches_round_trip_and_rebuild() -> None:
    batches = [SeenBatch("3:10", 100.0, [("x", 10), ("y", 11)]), SeenBatch("3:0", 50.0, [("x", 0)])]
    back = [SeenBatch.from_json(b.key, b.to_json()) for b in batches]
    assert back == batches
    seen = SeenIds.from_batches(back, horizon_s=1000, max_ids=100, now=120.0)
    assert seen.ids == {"x": 0, "y": 11}  # the earliest sighting is the original
    assert partition_of_key("3:10") == 3
    assert SeenIds.from_batches(back, horizon_s=30, max_ids=100, now=120.0).ids == {"x": 10, "y": 11}


def test_many_events_of_one_record_share_its_offset() -> None:
    """A batch record: every id first seen at that offset is the original, whether or not its count was lost."""
    seen = SeenIds()
    assert seen.remember("a", 7) and seen.remember("b", 7)
    assert seen.verdict("b", offset=7, applied_offset=6) is DedupVerdict.NEW
    assert seen.verdict("a", offset=7, applied_offset=7) is DedupVerdict.REPLAY
    assert seen.verdict("b", offset=9, applied_offset=7) is DedupVerdict.DUPLICATE
