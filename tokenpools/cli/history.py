"""`tokenpools history`: the history in ClickHouse (migrate, sink, query, questions, ask, reconcile).

Where the store is: embedded chDB in ``--data-dir`` (default ``$XDG_STATE_HOME/tokenpools/history/chdb``),
or a ClickHouse server from ``--clickhouse-url`` / ``$CLICKHOUSE_URL`` / ``TOKENPOOLS_HISTORY_STORE__URL``.
``--data-dir`` on the command line means chDB even when ``CLICKHOUSE_URL`` is set; both at once is an error.

chDB lets one process own a directory, so while ``tokenpools history sink`` runs, ``query``, ``questions``
and ``ask`` read through its HTTP endpoint instead: ``--endpoint http://127.0.0.1:8090`` (alias ``--url``)
with ``--token`` or the endpoint's own ``TOKENPOOLS_HISTORY_SERVER__TOKEN`` / ``__TOKEN_FILE``. Either
way a query runs under ClickHouse's ``readonly`` and the same checks (``streams.history.server``).

Exit codes: 0 done; 1 the query or the reconciliation failed; 2 bad options or a store that cannot be
opened or migrated. Heavy imports happen inside the commands so other subcommands start quickly.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from tokenpools.cli.options import EXIT_BAD_OPTIONS, build_settings, given

if TYPE_CHECKING:
    from streams.history.settings import HistorySettings
    from streams.history.store import HistoryStore

EXIT_FAILED = 1

app = typer.Typer(help="History in ClickHouse: migrate the schema, run the sink, query it.", no_args_is_help=True)

# Option (parameter name) -> HistorySettings field; options not given come from TOKENPOOLS_HISTORY_*,
# CLICKHOUSE_URL, TOKENPOOLS_KAFKA_* / KAFKA_BOOTSTRAP_SERVERS, or the defaults.
STORE_FIELDS = {"data_dir": "store.data_dir", "clickhouse_url": "store.url", "database": "store.database"}
MIGRATE_FIELDS = {**STORE_FIELDS, "retention_days": "store.retention_days"}
SINK_FIELDS = {
    **MIGRATE_FIELDS, "bootstrap": "kafka.bootstrap", "topic_prefix": "kafka.prefix", "host": "server.host",
    "port": "server.port", "group_id": "sink.group_id", "log_level": "log_level",
}
FORMATS = ("table", "csv", "json")

DataDir = Annotated[Path | None, typer.Option(
    "--data-dir", help="chDB's directory (embedded store; default $XDG_STATE_HOME/tokenpools/history/chdb).")]
ClickHouseUrl = Annotated[str | None, typer.Option(
    "--clickhouse-url", help="http(s)://user:password@host:port/database of a ClickHouse server "
                             "(default $CLICKHOUSE_URL; without one, embedded chDB).")]
Database = Annotated[str | None, typer.Option("--database", help="Database of the history tables.")]
Format = Annotated[str, typer.Option("--format", "-f", help="table, csv or json.")]
Endpoint = Annotated[str | None, typer.Option(
    "--endpoint", "--url",
    help="A running history process's HTTP endpoint (http://127.0.0.1:8090): query through it, as the store's "
         "directory is locked by that process.")]
Token = Annotated[str | None, typer.Option(
    "--token", help="The endpoint's bearer token (default $TOKENPOOLS_HISTORY_SERVER__TOKEN or the "
                    "file in $TOKENPOOLS_HISTORY_SERVER__TOKEN_FILE).")]


def _fail(message: str, code: int = EXIT_BAD_OPTIONS) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _settings(ctx: typer.Context, fields: dict[str, str]) -> HistorySettings:
    from streams.history.settings import HistorySettings

    values = given(ctx, fields)
    store = values.get("store", {})
    if "data_dir" in store and "url" in store:
        _fail("give --data-dir (embedded chDB) or --clickhouse-url (a ClickHouse server), not both")
    if "data_dir" in store:
        store["url"] = None  # chDB as asked, even if CLICKHOUSE_URL is set
    return build_settings(HistorySettings, values)


def _check_format(fmt: str, allowed: tuple[str, ...] = FORMATS) -> str:
    if fmt.lower() not in allowed:
        _fail(f"--format must be one of {', '.join(allowed)}, got {fmt!r}"[:200])
    return fmt.lower()


def _open(settings: HistorySettings, *, must_exist: bool) -> HistoryStore:
    """The store, or exit 2 with what to do (a locked chDB directory: query through the owner's endpoint)."""
    from streams.history.store import StoreError, open_store

    store_settings = settings.store
    if must_exist and store_settings.embedded and not store_settings.chdb_path().exists():
        _fail(f"no history store in {store_settings.chdb_path()}: run `tokenpools history migrate` or "
              "`tokenpools history sink` first, or give --data-dir or --clickhouse-url")
    try:
        return open_store(store_settings)
    except StoreError as exc:
        message = str(exc)
        if store_settings.embedded and "another process" in message:
            port = settings.server.port
            message += (f"\nhint: while `tokenpools history sink` owns it, add --endpoint http://127.0.0.1:{port} "
                        "(and --token, or TOKENPOOLS_HISTORY_SERVER__TOKEN)")
        _fail(message)


# -- output


def _print(answer: dict[str, Any], fmt: str) -> None:
    """An answer ``{"columns", "types", "rows"}`` (JSON-able values) as a table, CSV or JSON."""
    import orjson

    from streams.history.server import cell_text, csv_text

    if fmt == "json":
        sys.stdout.write(orjson.dumps(answer).decode() + "\n")
    elif fmt == "csv":
        sys.stdout.write(csv_text(answer["columns"], answer["rows"]))
    else:
        from rich.console import Console
        from rich.table import Table

        n = len(answer["rows"])
        table = Table(caption=f"{n} row{'' if n == 1 else 's'}")
        for column in answer["columns"]:
            table.add_column(str(column), overflow="fold")
        for row in answer["rows"]:
            table.add_row(*(cell_text(v) for v in row))
        Console().print(table)


def _print_questions(listing: dict[str, Any], fmt: str) -> None:
    rows = [[q["name"], q["title"], ", ".join(f"{p['name']} {p['type']}" for p in q["params"])]
            for q in listing["questions"]]
    if fmt == "json":
        import orjson

        sys.stdout.write(orjson.dumps(listing).decode() + "\n")
        return
    _print({"columns": ["name", "title", "params"], "types": [], "rows": rows}, fmt)


# -- the endpoint


def endpoint_token(settings: HistorySettings, endpoint: str, token: str | None) -> str:
    """The bearer token for a history endpoint (``--token``, else the endpoint's own settings); exit 2 with
    what to fix when the endpoint is no URL or no token is to be had."""
    if not endpoint.startswith(("http://", "https://")):
        _fail(f"--endpoint must be an http(s):// URL such as http://127.0.0.1:{settings.server.port}")
    if token is None:
        try:
            token = settings.server.token_value()
        except OSError as exc:
            _fail(f"cannot read the token file {settings.server.token_file}: {exc.strerror or exc}")
    if not token:
        _fail("--endpoint needs --token (or TOKENPOOLS_HISTORY_SERVER__TOKEN / TOKENPOOLS_HISTORY_SERVER__TOKEN_FILE)")
    return token


def _remote(settings: HistorySettings, endpoint: str, token: str | None, method: str, path: str,
            body: dict[str, Any] | None = None) -> dict[str, Any]:
    """A request to a history process's endpoint; exit 1 with its message when it refuses."""
    import httpx

    token = endpoint_token(settings, endpoint, token)
    url = endpoint.rstrip("/") + path
    try:
        r = httpx.request(method, url, json=body, headers={"Authorization": f"Bearer {token}"},
                          timeout=settings.store.query_timeout_s + 10)
    except httpx.HTTPError as exc:
        _fail(f"cannot reach the history endpoint {endpoint}: {exc}", EXIT_FAILED)
    try:
        data = r.json()
    except ValueError:
        data = None
    if r.status_code != 200 or not isinstance(data, dict):
        message = data.get("error") if isinstance(data, dict) else None
        _fail(f"{message or r.text[:300] or r.reason_phrase} (HTTP {r.status_code} from {endpoint})", EXIT_FAILED)
    return data


# -- commands


@app.command("migrate")
def migrate_cmd(
    ctx: typer.Context,
    data_dir: DataDir = None,
    clickhouse_url: ClickHouseUrl = None,
    database: Database = None,
    retention_days: int | None = typer.Option(
        None, "--retention-days", min=1, max=36_500, help="Days of raw events and per-minute rollups kept (90)."),
) -> None:
    """Apply the schema's numbered migrations that are not applied yet (idempotent)."""
    from clickhouse_connect.driver.exceptions import ClickHouseError

    from streams.history.migrate import MigrationError, migrate
    from streams.history.server import clickhouse_problem

    settings = _settings(ctx, MIGRATE_FIELDS)
    store = _open(settings, must_exist=False)
    try:
        report = migrate(store, settings.store)
    except MigrationError as exc:
        _fail(str(exc))
    except ClickHouseError as exc:
        _fail(f"migration failed: {clickhouse_problem(exc).message}")
    finally:
        store.close()
    for label in report.applied:
        typer.echo(f"applied {label}")
    typer.echo(f"history store {store.where}: {len(report.applied)} applied, {len(report.already)} already applied")


@app.command("query")
def query_cmd(
    ctx: typer.Context,
    sql: str = typer.Argument(..., help="One SELECT query (run under ClickHouse's readonly)."),
    fmt: Format = "table",
    endpoint: Endpoint = None,
    token: Token = None,
    data_dir: DataDir = None,
    clickhouse_url: ClickHouseUrl = None,
    database: Database = None,
) -> None:
    """Run one read-only SQL query on the history and print the answer."""
    fmt = _check_format(fmt)
    settings = _settings(ctx, STORE_FIELDS)
    if endpoint is not None:
        _print(_remote(settings, endpoint, token, "POST", "/query", {"sql": sql}), fmt)
        return
    from streams.history.server import Problem, adhoc, as_json

    store = _open(settings, must_exist=True)
    try:
        answer = as_json(adhoc(store, sql))
    except Problem as exc:
        _fail(exc.message, EXIT_FAILED)
    finally:
        store.close()
    _print(answer, fmt)


@app.command("questions")
def questions_cmd(
    ctx: typer.Context,
    fmt: Format = "table",
    endpoint: Endpoint = None,
    token: Token = None,
) -> None:
    """List the named questions (what `ask` runs) and their parameters."""
    fmt = _check_format(fmt)
    if endpoint is not None:
        _print_questions(_remote(_settings(ctx, {}), endpoint, token, "GET", "/questions"), fmt)
        return
    from streams.history.catalog import questions
    from streams.history.server import describe

    _print_questions(describe(questions()), fmt)


def _params(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            _fail(f"-p takes KEY=VALUE, got {pair!r}"[:200])
        if key in out:
            _fail(f"parameter {key} given twice"[:200])
        out[key] = value
    return out


@app.command("ask")
def ask_cmd(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The question's name (`tokenpools history questions` lists them)."),
    param: list[str] = typer.Option([], "--param", "-p", help="KEY=VALUE for one of the question's parameters "
                                                               "(times as ISO 8601, e.g. 2024-05-01T00:00:00Z)."),
    fmt: Format = "table",
    endpoint: Endpoint = None,
    token: Token = None,
    data_dir: DataDir = None,
    clickhouse_url: ClickHouseUrl = None,
    database: Database = None,
) -> None:
    """Answer a named question, its parameters bound as ClickHouse query parameters."""
    fmt = _check_format(fmt)
    values = _params(param)
    settings = _settings(ctx, STORE_FIELDS)
    if endpoint is not None:
        from urllib.parse import quote

        answer = _remote(settings, endpoint, token, "POST", f"/questions/{quote(name, safe='')}", {"params": values})
        _print(answer, fmt)
        return
    from streams.history.catalog import questions
    from streams.history.server import Problem, as_json, bind_values, find_question, run_bound

    try:
        question = find_question(questions(), name)
        bound = bind_values(question, values)
    except Problem as exc:
        _fail(exc.message.replace("GET /questions", "`tokenpools history questions`"))
    store = _open(settings, must_exist=True)
    try:
        answer = as_json(run_bound(store, question, bound))
    except Problem as exc:
        _fail(exc.message, EXIT_FAILED)
    finally:
        store.close()
    _print(answer, fmt)


@app.command("sink")
def sink_cmd(
    ctx: typer.Context,
    bootstrap: str | None = typer.Option(
        None, "--bootstrap", "-b",
        help="Kafka bootstrap servers HOST:PORT[,HOST:PORT] (default $TOKENPOOLS_KAFKA_BOOTSTRAP, "
             "$KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:9092; security options from $TOKENPOOLS_KAFKA_*)."),
    topic_prefix: str | None = typer.Option(None, "--topic-prefix", help="Prefix of every topic name."),
    data_dir: DataDir = None,
    clickhouse_url: ClickHouseUrl = None,
    database: Database = None,
    host: str | None = typer.Option(None, "--host", help="Address the query endpoint and /metrics bind (127.0.0.1; "
                                                          "0.0.0.0 in a pod, so admitters and Prometheus reach it)."),
    port: int | None = typer.Option(None, "--port", min=0, max=65535,
                                    help="Port of the query endpoint and /metrics (8090)."),
    group_id: str | None = typer.Option(None, "--group-id", help="The sink's consumer group (tokenpools-history)."),
    from_earliest: bool = typer.Option(
        False, "--from-earliest", help="Re-read every partition from the earliest record Kafka keeps (a check: "
                                       "records before each partition's last planned block are skipped, so "
                                       "nothing is written twice)."),
    retention_days: int | None = typer.Option(
        None, "--retention-days", min=1, max=36_500, help="Days of raw events and per-minute rollups kept (90)."),
    log_level: str | None = typer.Option(None, "--log-level", help="critical, error, warning, info or debug."),
) -> None:
    """Run the history process until Ctrl-C: the exactly-once sink, the query endpoint and /metrics.

    Every setting can also be set in the environment (``TOKENPOOLS_HISTORY_<GROUP>__<SETTING>``, see
    streams/history/settings.py); an option on the command line wins. The endpoint answers /query and
    /questions only with a token (``TOKENPOOLS_HISTORY_SERVER__TOKEN`` or ``__TOKEN_FILE``).
    """
    from streams.history.migrate import MigrationError
    from streams.history.process import run_history
    from streams.history.store import StoreError

    settings = _settings(ctx, SINK_FIELDS)
    try:
        run_history(settings, from_earliest=from_earliest)
    except (StoreError, MigrationError) as exc:
        _fail(str(exc))


@app.command("reconcile")
def reconcile_cmd(
    ctx: typer.Context,
    start: str = typer.Option(..., "--from", help="First instant (ISO 8601, e.g. 2024-05-01T00:00:00Z; "
                                                  "no offset means UTC)."),
    end: str = typer.Option(..., "--to", help="End instant (excluded), ISO 8601."),
    fmt: Annotated[str, typer.Option("--format", "-f", help="table or json.")] = "table",
    data_dir: DataDir = None,
    clickhouse_url: ClickHouseUrl = None,
    database: Database = None,
    endpoint: Endpoint = None,
    token: Token = None,
) -> None:
    """Compare raw counts, rollups and the pipeline's own window totals over a time range (exit 1 on a mismatch).

    With --endpoint the running history process reconciles (it owns the chDB directory).
    """
    from streams.history.server import Problem, jsonable, parse_time

    fmt = _check_format(fmt, ("table", "json"))
    try:
        first, last = parse_time("--from", start), parse_time("--to", end)
    except Problem as exc:
        _fail(exc.message)
    if not first < last:
        _fail(f"--from ({first.isoformat()}) must be before --to ({last.isoformat()})")
    settings = _settings(ctx, STORE_FIELDS)
    if endpoint is not None:
        answer = _remote(settings, endpoint, token, "POST", "/reconcile",
                         {"from": first.isoformat(), "to": last.isoformat()})
        ok, rows = bool(answer.get("ok")), list(answer.get("rows") or [])
    else:
        ok, rows = _reconcile_here(settings, first, last)
    if fmt == "json":
        import orjson

        sys.stdout.write(orjson.dumps({"ok": ok, "rows": jsonable(rows)}).decode() + "\n")
    elif not rows:
        typer.echo("nothing to compare in that range")
    else:
        columns: list[str] = []
        for row in rows:
            columns += [c for c in row if c not in columns]
        _print({"columns": columns, "types": [], "rows": [[jsonable(row.get(c)) for c in columns] for row in rows]},
               "table")
    if rows and fmt != "json":
        typer.echo("reconciled: every total agrees" if ok else "MISMATCH: the totals above disagree")
    if not ok:
        raise typer.Exit(EXIT_FAILED)


def _reconcile_here(settings: HistorySettings, first: Any, last: Any) -> tuple[bool, list[dict[str, Any]]]:
    from clickhouse_connect.driver.exceptions import ClickHouseError

    from streams.history.reconcile import reconcile
    from streams.history.server import clickhouse_problem

    store = _open(settings, must_exist=True)
    try:
        report = reconcile(store, first, last)
    except ClickHouseError as exc:
        _fail(f"reconciliation failed: {clickhouse_problem(exc).message}", EXIT_FAILED)
    finally:
        store.close()
    return report.ok, list(report.rows)
