"""The ClickHouse the history lives in: embedded chDB, or a server by URL, behind one small interface.

Why two clients: a chDB connection that ran a query under ``readonly`` stays read-only for the rest
of its life (measured, chDB 26.9), and the sink must keep writing. So the store holds a writer (the
sink, migrations) and a reader whose session settings end with ``readonly = 1`` (ClickHouse refuses
to change a setting after that one, so the limits before it hold for every query it runs).

chDB allows one process per data directory; a second process gets "Cannot lock file". ``open_store``
turns that into a short message that names the directory and the way out (query through the owner's
HTTP endpoint). chDB has no async client: callers run store calls in a worker thread.

Every insert sets ``insert_deduplication_token`` and
``deduplicate_blocks_in_dependent_materialized_views``, so a block retried with its token adds nothing
to the raw table or to any rollup (each table sets ``non_replicated_deduplication_window``).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from streams.history.settings import StoreSettings

log = logging.getLogger("tokenpools.history.store")
DRAIN_TRIES = 5


class StoreError(Exception):
    """The store could not be opened or a statement failed; the message is safe to show a user."""


def insert_settings(token: str) -> dict[str, Any]:
    return {
        "insert_deduplicate": 1,
        "insert_deduplication_token": token,
        "deduplicate_blocks_in_dependent_materialized_views": 1,
    }


@dataclass(frozen=True, slots=True)
class QueryResult:
    columns: list[str]
    types: list[str]
    rows: list[tuple[Any, ...]]


class HistoryStore:
    """A writer and a read-only reader on one ClickHouse (see the module doc)."""

    def __init__(self, writer: Client, reader: Client, *, embedded: bool, where: str) -> None:
        self.writer = writer
        self.reader = reader
        self.embedded = embedded
        self.where = where  # for messages: the chDB directory or the server's host:port/database
        # chDB runs one statement at a time per engine; a lock keeps threads from interleaving on a client.
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()

    def command(self, sql: str, parameters: Mapping[str, Any] | None = None) -> Any:
        with self._write_lock:
            return self.writer.command(sql, parameters=dict(parameters or {}))

    def insert(self, table: str, columns: Mapping[str, Sequence[Any]], token: str) -> int:
        """Insert one block (column-oriented) under a deduplication token; the rows given."""
        names = list(columns)
        if not names:
            return 0
        n = len(columns[names[0]])
        if n == 0:
            return 0
        with self._write_lock:
            self.writer.insert(table, [list(columns[c]) for c in names], column_names=names,
                               column_oriented=True, settings=insert_settings(token))
        return n

    def scalar(self, sql: str, parameters: Mapping[str, Any] | None = None) -> Any:
        rows = self.query_write_side(sql, parameters).rows
        return rows[0][0] if rows else None

    def query_write_side(self, sql: str, parameters: Mapping[str, Any] | None = None) -> QueryResult:
        """A query on the writer (the sink's own bookkeeping reads; never user SQL)."""
        with self._write_lock:
            result = self.writer.query(sql, parameters=dict(parameters or {}))
        return _result(result)

    def query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> QueryResult:
        """A query under ``readonly = 1`` with the store's limits: what users' SQL goes through.

        After a failed query the reader is drained before the lock is released (``_drain``), so the next
        caller, perhaps another tenant, never receives the failed query's rows.
        """
        with self._read_lock:
            try:
                result = self.reader.query(sql, parameters=dict(parameters or {}))
            except Exception:
                self._drain()
                raise
        return _result(result)

    def _drain(self) -> bool:
        """Read a random marker until it comes back; False if it never did (the caller holds the read lock).

        Measured (chDB 26.9 through clickhouse-connect 1.12): after a query fails mid-result (a result over
        ``max_result_rows``), the next query on the same connection sometimes gets the failed query's rows
        instead of its own (7 times in 60), or garbage ("unrecognized data found in stream").
        """
        for _ in range(DRAIN_TRIES):
            marker = uuid.uuid4().hex
            try:
                rows = self.reader.query("SELECT {marker:String} AS marker", parameters={"marker": marker}).result_rows
            except Exception:
                continue
            if rows == [(marker,)]:
                return True
        log.error("the history store's reader still returned stale results after %d reads", DRAIN_TRIES)
        return False

    def close(self) -> None:
        for client in (self.reader, self.writer):
            try:
                client.close()
            except Exception:  # closing is best effort; the process is usually ending
                log.debug("closing a ClickHouse client failed", exc_info=True)


def _result(result: Any) -> QueryResult:
    # clickhouse-connect types result_rows as Sequence[Sequence]; it is a list of tuples.
    rows = cast("list[tuple[Any, ...]]", result.result_rows)
    return QueryResult(list(result.column_names), [t.name for t in result.column_types], rows)


def reader_settings(settings: StoreSettings) -> dict[str, Any]:
    """Limits first, ``readonly`` last: once it is set, ClickHouse refuses to change any other setting."""
    return {
        "max_execution_time": settings.query_timeout_s,
        "max_result_rows": settings.max_result_rows,
        "result_overflow_mode": "throw",
        "readonly": 1,
    }


def open_store(settings: StoreSettings) -> HistoryStore:
    """Connect (chDB: open the directory; server: check it answers), or raise ``StoreError``."""
    try:
        if settings.embedded:
            path = settings.chdb_path()
            path.mkdir(parents=True, exist_ok=True)
            where = str(path)
            writer = clickhouse_connect.get_client(interface="chdb", path=where)
            if settings.database:  # one directory, several databases: how tests share one chDB engine
                writer.command(f"CREATE DATABASE IF NOT EXISTS {settings.database}")
                writer.database = settings.database
                where = f"{where} (database {settings.database})"
            reader = clickhouse_connect.get_client(interface="chdb", path=str(path), database=settings.database,
                                                   settings=reader_settings(settings))
        else:
            kwargs = settings.server_kwargs()
            where = f"{kwargs['host']}:{kwargs['port']}/{kwargs.get('database', 'default')}"
            if settings.database:  # a database of our own (tests, several installations on one server)
                bare = {k: v for k, v in kwargs.items() if k != "database"}
                admin = clickhouse_connect.get_client(**bare)
                admin.command(f"CREATE DATABASE IF NOT EXISTS {settings.database}")
                admin.close()
            writer = clickhouse_connect.get_client(**kwargs)
            reader = clickhouse_connect.get_client(**kwargs, settings=reader_settings(settings))
    except ClickHouseError as exc:
        text = str(exc)
        if settings.embedded and ("Cannot lock file" in text or "Unable to open the chdb engine" in text):
            raise StoreError(
                f"cannot open the history store {settings.chdb_path()}: is it open in another process? "
                "(chDB allows one per directory) "
                "Stop it, or query it through that process's HTTP endpoint (`tokenpools history query --endpoint`)"
            ) from None
        raise StoreError(f"cannot open the history store: {text.splitlines()[0][:300]}") from None
    except OSError as exc:
        raise StoreError(f"cannot open the history store: {exc}") from None
    return HistoryStore(writer, reader, embedded=settings.embedded, where=where)
