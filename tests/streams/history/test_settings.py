"""HistorySettings: groups from TOKENPOOLS_HISTORY_<GROUP>__<FIELD>, CLICKHOUSE_URL, and clear errors."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from streams.history.settings import HistorySettings
from tests.kafka.test_settings import clear_settings_env


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_settings_env(monkeypatch)
    monkeypatch.delenv("CLICKHOUSE_URL", raising=False)


def test_defaults_are_embedded_and_local() -> None:
    s = HistorySettings()
    assert s.store.embedded and s.server.host == "127.0.0.1" and s.server.token_value() is None
    assert s.store.retention_days == 90 and s.store.dedup_window == 1000


def test_groups_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENPOOLS_HISTORY_STORE__RETENTION_DAYS", "7")
    monkeypatch.setenv("TOKENPOOLS_HISTORY_SINK__BLOCK_RECORDS", "500")
    monkeypatch.setenv("TOKENPOOLS_HISTORY_SERVER__TOKEN", "s3cret")
    monkeypatch.setenv("TOKENPOOLS_KAFKA_PREFIX", "t.")
    s = HistorySettings()
    assert (s.store.retention_days, s.sink.block_records, s.server.token_value(), s.kafka.prefix) == (
        7, 500, "s3cret", "t.")


def test_clickhouse_url_names_a_server_and_its_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLICKHOUSE_URL", "https://an%40alyst:p%3Ass@ch.example:8443/history")
    s = HistorySettings()
    assert not s.store.embedded
    assert s.store.server_kwargs() == {"interface": "https", "host": "ch.example", "port": 8443,
                                       "username": "an@alyst", "password": "p:ss", "database": "history"}
    assert "p:ss" not in repr(s) and "p%3Ass" not in repr(s)  # the URL is a secret: it holds the password


def test_explicit_store_url_wins_over_clickhouse_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLICKHOUSE_URL", "http://a:8123")
    s = HistorySettings(store={"url": "http://b:9000/db", "user": "u"})
    assert s.store.server_kwargs()["host"] == "b" and s.store.server_kwargs()["username"] == "u"


@pytest.mark.parametrize("env, value, words", [
    ("CLICKHOUSE_URL", "ftp://x", "http(s)://"),
    ("TOKENPOOLS_HISTORY_STORE__RETENTION_DAYS", "0", "greater than or equal to 1"),
    ("TOKENPOOLS_HISTORY_SINK__FLUSH_INTERVAL_S", "nan", "finite"),
    ("TOKENPOOLS_HISTORY_STORE__DATABASE", "x; DROP", "pattern"),
    ("TOKENPOOLS_HISTORY_SERVER__PORT", "70000", "less than or equal to 65535"),
])
def test_bad_values_are_refused_clearly(monkeypatch: pytest.MonkeyPatch, env: str, value: str, words: str) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ValidationError) as err:
        HistorySettings()
    assert words in str(err.value)
