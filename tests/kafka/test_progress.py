"""The reader's bookkeeping without Kafka: positions, caught-up, contact, backoff, topic metadata."""

from __future__ import annotations

from tokenpools.kafka.progress import Backoff, Contact, Partition, Progress, partitions_in

A0, A1, B0 = Partition("a", 0), Partition("a", 1), Partition("b", 0)


def test_resume_starts_new_partitions_at_the_beginning_and_known_ones_where_they_were() -> None:
    progress = Progress(positions={A1: 7})
    assert progress.resume([A0, A1, B0]) == ([A0, B0], {A1: 7})
    progress.read(A0, 3)
    progress.read(A0, 2)  # never goes back
    assert progress.position(A0) == 3 and progress.position(B0) == 0
    assert progress.resume([A0, A1]) == ([], {A0: 3, A1: 7})


def test_caught_up_at_the_end_offsets_seen_at_start_and_only_once() -> None:
    progress = Progress()
    assert not progress.reached()  # no target yet: not connected
    progress.aim({A0: 2, B0: 0})
    assert not progress.reached() and progress.lagging() == [A0]
    progress.read(A0, 1)
    assert not progress.reached()
    progress.read(A0, 2)
    assert progress.reached() and progress.lagging() == []
    progress.settle()
    progress.aim({A0: 10})  # a reconnect after catching up aims at nothing
    assert progress.caught_up and progress.target is None and progress.reached()


def test_an_empty_target_is_reached_at_once_and_extend_reads_further() -> None:
    progress = Progress()
    progress.aim({A0: 0})
    assert progress.reached()
    progress.extend({A0: 2, B0: 1})  # what the config sync seeded: read it back first
    assert progress.lagging() == [A0, B0]
    progress.read(A0, 2)
    progress.read(B0, 1)
    assert progress.reached()
    fresh = Progress()
    fresh.extend({A0: 1})
    assert fresh.target == {A0: 1}


def test_contact_counts_reconnects_only_after_contact_was_made_and_lost() -> None:
    contact = Contact(timeout=5.0)
    assert contact.polled(None, 100.0) is None and not contact.connected  # no fetch response yet
    assert contact.polled(99.0, 100.0) is None and contact.connected and contact.reconnects == 0
    assert contact.last_contact == 99.0
    assert contact.polled(99.0, 110.0) == "lost" and not contact.connected
    assert contact.polled(109.0, 110.0) == "reconnected" and contact.reconnects == 1
    assert contact.lost() == "lost" and contact.lost() is None
    assert contact.polled(111.0, 111.5) == "reconnected" and contact.reconnects == 2
    assert contact.polled(50.0, 111.5) == "lost" and contact.last_contact == 111.0  # a stale poll; never goes back


def test_backoff_doubles_up_to_the_cap_and_resets() -> None:
    backoff = Backoff(initial=0.5, cap=3.0)
    assert [backoff.next() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.next() == 0.5


def test_partitions_in_leaves_out_missing_failed_and_empty_topics() -> None:
    described = [
        {"error_code": 0, "topic": "a", "partitions": [{"partition": 1}, {"partition": 0}]},
        {"error_code": 3, "topic": "b", "partitions": []},  # unknown topic or partition
        {"error_code": 0, "topic": "c", "partitions": []},  # being created
        {"error_code": 0, "topic": "other", "partitions": [{"partition": 0}]},
    ]
    assert partitions_in(described, ["a", "b", "c", "d"]) == {"a": [0, 1]}
