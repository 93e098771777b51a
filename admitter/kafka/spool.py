"""A durable local spool: what an admitter emitted but Kafka has not acknowledged yet.

Layout of the spool directory:

- ``<segment>.log`` (``00000000000000000000.log``, ...): append-only records, each
  ``<crc32 u32><key length u32><value length u32><key><value>`` (little endian). The writer appends to
  the newest segment and rolls to a new one past ``segment_bytes``.
- ``committed``: ``{"segment": n, "offset": o}``, the position of the first record the broker has
  not acknowledged, written atomically (temporary file, fsync, rename).

``append`` is a plain ``write`` into the page cache and never waits; ``sync`` fsyncs in a worker
thread (callers batch it) and only then makes the records visible to ``read``. So the sender never
sends what a crash could lose, and a new ``Spool`` on the same directory (after a crash or a restart)
replays every record after the committed position, in order. A torn record at the end of the newest
segment (a crash mid-write) is cut off at open. Records before the committed position may be sent
again if the process dies between the broker's ack and the commit: consumers dedup by event id.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import orjson

HEADER = struct.Struct("<III")
SUFFIX = ".log"
COMMITTED = "committed"


@dataclass(frozen=True, order=True)
class Position:
    segment: int
    offset: int


@dataclass(frozen=True)
class SpooledRecord:
    key: bytes
    value: bytes
    end: Position  # the position just after this record (what to commit once it is acked)


def _segment_name(n: int) -> str:
    return f"{n:020d}{SUFFIX}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _valid_end(path: Path, start: int = 0) -> int:
    """Byte offset after the last whole, checksummed record (scanning from ``start``)."""
    with path.open("rb") as f:
        f.seek(start)
        pos = start
        while True:
            header = f.read(HEADER.size)
            if len(header) < HEADER.size:
                return pos
            crc, klen, vlen = HEADER.unpack(header)
            body = f.read(klen + vlen)
            if len(body) < klen + vlen or zlib.crc32(body) != crc:
                return pos
            pos += HEADER.size + klen + vlen


def _count_records(path: Path, start: int, end: int) -> int:
    """Records between two record boundaries (headers only: the bodies were checked at open or append).

    Reads the range in one go (a segment is ``segment_bytes``, 16 MiB by default): a seek and a read
    per record cost about 5 us, which a long outage's backlog would add to the admitter's start.
    """
    with path.open("rb") as f:
        f.seek(start)
        data = f.read(end - start)
    n = pos = 0
    last = len(data) - HEADER.size
    unpack = HEADER.unpack_from
    while pos <= last:
        _, klen, vlen = unpack(data, pos)
        pos += HEADER.size + klen + vlen
        n += 1
    return n


class Spool:
    """One writer, one reader (the sender), both on the event loop; fsync runs in a thread."""

    def __init__(self, directory: str | Path, segment_bytes: int = 16 * 1024 * 1024) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self.appended = 0  # records appended by this instance
        self.synced = 0  # of those, records fsynced (durable, readable by the sender)
        self._sync_lock = asyncio.Lock()
        segments = self._segments()
        self.committed = self._load_committed(segments[0] if segments else 0)
        for n in segments:  # everything before the committed segment was acked
            if n < self.committed.segment:
                (self.dir / _segment_name(n)).unlink()
        segments = [n for n in segments if n >= self.committed.segment] or [self.committed.segment]
        self._write_seg = segments[-1]
        path = self.dir / _segment_name(self._write_seg)
        path.touch(exist_ok=True)
        end = _valid_end(path)
        if end != path.stat().st_size:  # a torn record from a crash mid-write
            with path.open("r+b") as f:
                f.truncate(end)
                os.fsync(f.fileno())
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._write_end = end
        self._durable = Position(self._write_seg, end)
        if self.committed > self._durable:  # offset file ahead of the data (lost tail): nothing to send
            self.committed = self._durable
        self._read = self.committed
        self._dirty = False
        # Unacked records left by an earlier instance: with ``appended`` and the sink's acked count,
        # this gives the backlog in records without counting on the hot path.
        self.replayed = sum(
            _count_records(self.dir / _segment_name(n), self.committed.offset if n == self.committed.segment else 0,
                           end if n == self._write_seg else (self.dir / _segment_name(n)).stat().st_size)
            for n in segments if n >= self.committed.segment)

    # -- writer --------------------------------------------------------------------------------

    def append(self, key: bytes, value: bytes) -> None:
        """Write one record (not yet durable: ``sync`` makes it so and visible to ``read``)."""
        body = key + value
        data = HEADER.pack(zlib.crc32(body), len(key), len(value)) + body
        os.write(self._fd, data)
        self._write_end += len(data)
        self.appended += 1
        self._dirty = True

    @property
    def dirty(self) -> bool:
        return self._dirty

    async def sync(self) -> None:
        """fsync what was appended (in a thread), then roll the segment if it grew past its size."""
        async with self._sync_lock:
            if not self._dirty:
                return
            self._dirty = False
            end, count = self._write_end, self.appended
            await asyncio.to_thread(os.fsync, self._fd)
            self._durable = Position(self._write_seg, end)
            self.synced = count
            if self._write_end >= self.segment_bytes:
                self._roll()

    def sync_now(self) -> None:
        """Blocking fsync (at close)."""
        if self._dirty:
            self._dirty = False
            os.fsync(self._fd)
            self._durable = Position(self._write_seg, self._write_end)
            self.synced = self.appended

    def _roll(self) -> None:
        os.fsync(self._fd)  # bytes appended while the threaded fsync ran
        os.close(self._fd)
        self._write_seg += 1
        path = self.dir / _segment_name(self._write_seg)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        _fsync_dir(self.dir)
        self._write_end = 0
        self._durable = Position(self._write_seg, 0)

    # -- reader --------------------------------------------------------------------------------

    def read(self, max_records: int = 500, max_bytes: int = 1024 * 1024) -> list[SpooledRecord]:
        """The next durable records after the read position (advances it; ``rewind`` goes back)."""
        out: list[SpooledRecord] = []
        size = 0
        while len(out) < max_records and size < max_bytes:
            pos = self._read
            if pos >= self._durable:
                break
            path = self.dir / _segment_name(pos.segment)
            limit = self._durable.offset if pos.segment == self._durable.segment else path.stat().st_size
            if pos.offset >= limit:
                self._read = Position(pos.segment + 1, 0)  # an older segment, fully read
                continue
            with path.open("rb") as f:
                f.seek(pos.offset)
                offset = pos.offset
                while offset < limit and len(out) < max_records and size < max_bytes:
                    crc, klen, vlen = HEADER.unpack(f.read(HEADER.size))
                    body = f.read(klen + vlen)
                    offset += HEADER.size + klen + vlen
                    if zlib.crc32(body) != crc:  # cannot happen below the durable mark; skip defensively
                        continue
                    size += len(body)
                    out.append(SpooledRecord(body[:klen], body[klen:], Position(pos.segment, offset)))
            self._read = Position(pos.segment, offset)
        return out

    def rewind(self) -> None:
        """Read again from the committed position (after a failed send)."""
        self._read = self.committed

    def has_unread(self) -> bool:
        return self._read < self._durable

    def pending(self) -> bool:
        """Whether anything appended is not yet acknowledged."""
        return self.committed < Position(self._write_seg, self._write_end)

    def pending_bytes(self) -> int:
        """Bytes on disk (records with their headers) appended but not yet acknowledged."""
        total = -self.committed.offset
        for n in range(self.committed.segment, self._write_seg + 1):
            if n == self._write_seg:
                total += self._write_end
            else:
                with contextlib.suppress(FileNotFoundError):
                    total += (self.dir / _segment_name(n)).stat().st_size
        return max(0, total)

    def first_pending(self) -> SpooledRecord | None:
        """The oldest record not yet acknowledged (durable or not), read from disk; None if there is none.

        For the backlog-age metric at scrape time: the spool keeps no per-record times in memory.
        """
        pos = self.committed
        while pos.segment <= self._write_seg:
            path = self.dir / _segment_name(pos.segment)
            try:
                limit = self._write_end if pos.segment == self._write_seg else path.stat().st_size
            except FileNotFoundError:
                limit = 0
            if pos.offset < limit:
                with path.open("rb") as f:
                    f.seek(pos.offset)
                    _, klen, vlen = HEADER.unpack(f.read(HEADER.size))
                    body = f.read(klen + vlen)
                end = Position(pos.segment, pos.offset + HEADER.size + klen + vlen)
                return SpooledRecord(body[:klen], body[klen:], end)
            pos = Position(pos.segment + 1, 0)
        return None

    async def commit(self, position: Position) -> None:
        """The broker acked everything before ``position``: persist it and drop finished segments."""
        if position <= self.committed:
            return
        await asyncio.to_thread(self._write_committed, position)
        old = self.committed.segment
        self.committed = position
        for n in range(old, position.segment):
            with contextlib.suppress(FileNotFoundError):
                (self.dir / _segment_name(n)).unlink()

    def _write_committed(self, position: Position) -> None:
        tmp = self.dir / (COMMITTED + ".tmp")
        with tmp.open("wb") as f:
            f.write(orjson.dumps({"segment": position.segment, "offset": position.offset}))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.dir / COMMITTED)

    def _load_committed(self, first_segment: int) -> Position:
        try:
            data = orjson.loads((self.dir / COMMITTED).read_bytes())
            return Position(int(data["segment"]), int(data["offset"]))
        except (FileNotFoundError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return Position(first_segment, 0)

    def _segments(self) -> list[int]:
        found = []
        for p in self.dir.glob("*" + SUFFIX):
            with contextlib.suppress(ValueError):
                found.append(int(p.name[: -len(SUFFIX)]))
        return sorted(found)

    def close(self) -> None:
        self.sync_now()
        os.close(self._fd)
