"""Key-value state with a changelog: a thin adapter over a Faust table, and an in-memory twin for tests.

Why not ``table[key] = value``: Faust then queues the changelog write in its producer buffer
(``send_soon``), whose flush before an offset commit gives up after 0.1 s per message; under load an
offset could be committed ahead of the state it depends on. Here every write is handed to the Kafka
producer (``await topic.send``) *before* the batch of events that caused it is acknowledged, and
Faust flushes the producer before each at-least-once commit, so a committed offset never runs ahead
of the state it produced. Writing with an explicit partition also lets stage 2 persist per-pool state
from a timer, where Faust's ``table[key]`` (which takes the partition from the current event) cannot.

Values are kept decoded in memory; after a recovery Faust fills the store with the changelog's raw
bytes, which are decoded on first access.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any, Generic, Protocol, TypeVar

log = logging.getLogger(__name__)

V = TypeVar("V")


class Encodable(Protocol):
    def to_json(self) -> bytes: ...


class KeyValueStore(Protocol[V]):
    def get(self, key: str) -> V | None: ...

    async def put(self, key: str, value: V, partition: int) -> None: ...

    def forget(self, key: str) -> None: ...

    def items(self) -> Iterator[tuple[str, V]]: ...


class FaustTableStore(Generic[V]):
    """A Faust table (memory store, raw bytes keys and values) seen as ``KeyValueStore``."""

    def __init__(self, table: Any, decode: Callable[[str, bytes], V]) -> None:
        self.table = table
        self.decode = decode

    @property
    def _data(self) -> dict[Any, Any]:
        return self.table.data.data  # faust.stores.memory.Store keeps a plain dict

    def get(self, key: str) -> V | None:
        kb = key.encode()
        value = self._data.get(kb)
        if value is None or not isinstance(value, bytes | str):
            return value
        try:
            decoded = self.decode(key, value if isinstance(value, bytes) else value.encode())
        except Exception as exc:  # a corrupt changelog record: start that key afresh, loudly
            log.error("dropping undecodable %s record %r: %r", self.table.name, key, exc)
            self._data.pop(kb, None)
            return None
        self._data[kb] = decoded
        return decoded

    async def put(self, key: str, value: V, partition: int) -> None:
        kb = key.encode()
        self._data[kb] = value
        self.table.data._key_partition[kb] = partition  # lets Faust drop it when the partition moves away
        app = self.table.app
        # Straight to the transport producer: Faust's Channel.send adds ~0.5 ms of bookkeeping per record.
        producer = app.consumer.transactions if app.in_transaction else app.producer
        await producer.send(self.table.changelog_topic.get_topic_name(), kb, _encode(value), partition, None, None)

    def forget(self, key: str) -> None:
        kb = key.encode()
        self._data.pop(kb, None)
        self.table.data._key_partition.pop(kb, None)

    def items(self) -> Iterator[tuple[str, V]]:
        for kb in list(self._data):
            key = kb.decode() if isinstance(kb, bytes) else str(kb)
            value = self.get(key)
            if value is not None:
                yield key, value


class MemoryStore(Generic[V]):
    """The same interface over a dict, recording every write (unit tests, benchmarks of pure code)."""

    def __init__(self) -> None:
        self.data: dict[str, V] = {}
        self.partitions: dict[str, int] = {}
        self.writes: list[tuple[str, int, bytes]] = []

    def get(self, key: str) -> V | None:
        return self.data.get(key)

    async def put(self, key: str, value: V, partition: int) -> None:
        self.data[key] = value
        self.partitions[key] = partition
        self.writes.append((key, partition, _encode(value)))

    def forget(self, key: str) -> None:
        self.data.pop(key, None)
        self.partitions.pop(key, None)

    def items(self) -> Iterator[tuple[str, V]]:
        yield from list(self.data.items())


def _encode(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    to_json = getattr(value, "to_json", None)
    if to_json is not None:
        return to_json()
    return value.model_dump_json().encode()  # pydantic records
