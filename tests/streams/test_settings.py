"""PipelineSettings: the former dataclass's fields, defaults and checks, read from TOKENPOOLS_STREAMS_*."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from streams.settings import PipelineSettings
from streams.windows import WindowSpec
from tests.kafka.test_settings import clear_settings_env


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_settings_env(monkeypatch)


def test_the_defaults_are_those_of_the_dataclass() -> None:
    s = PipelineSettings()
    assert (s.bootstrap_servers, s.topic_prefix, s.app_id, s.partitions, s.replication, s.web_port) == \
        ("127.0.0.1:9092", "", "tokenpools-streams", 6, 1, 6066)
    assert (s.metrics_port, s.processing_guarantee, s.windows) == (None, "at_least_once", WindowSpec())
    assert (s.summary_interval_s, s.change_check_s, s.change_threshold, s.min_tick_gap_s) == (1.0, 0.1, 0.1, 0.25)
    assert (s.scheduler_interval_s, s.fetch_max_wait_s, s.dedup_horizon_s, s.dedup_max_ids) == \
        (0.1, 0.1, 600.0, 1_000_000)
    assert (s.stale_after_s, s.max_dt_s, s.stale_after, s.max_dt) == (None, None, 60.0, 60.0)
    assert (s.batch_max, s.batch_within_s, s.commit_interval_s, s.session_timeout_s) == (1000, 0.05, 1.0, 10.0)
    assert (s.log_level, s.data_dir) == ("info", None)


def test_the_flat_kafka_names_still_work() -> None:
    s = PipelineSettings(bootstrap_servers="h:1", topic_prefix="t.")
    assert (s.kafka.bootstrap, s.kafka.prefix, s.full_app_id, s.topics.config) == \
        ("h:1", "t.", "t.tokenpools-streams", "t.tokenpools.config")


def test_fields_and_the_kafka_block_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k:1")
    monkeypatch.setenv("TOKENPOOLS_KAFKA_PREFIX", "p.")
    monkeypatch.setenv("TOKENPOOLS_STREAMS_PARTITIONS", "3")
    monkeypatch.setenv("TOKENPOOLS_STREAMS_WINDOWS", '{"hop_size_s": 30}')
    s = PipelineSettings(windows={"tumbling_s": 5})  # given and environment merge, given first
    assert (s.bootstrap_servers, s.topic_prefix, s.partitions) == ("k:1", "p.", 3)
    assert (s.windows.tumbling_s, s.windows.hop_size_s) == (5.0, 30.0)


@pytest.mark.parametrize(("values", "message"), [
    ({"processing_guarantee": "maybe_once"}, "processing_guarantee must be one of"),
    ({"partitions": 0}, "greater than or equal to 1"),
    ({"summary_interval_s": 0}, "greater than 0"),
    ({"change_check_s": -1}, "greater than or equal to 0"),
    ({"min_tick_gap_s": -1}, "greater than or equal to 0"),
    ({"change_threshold": -0.1}, "greater than or equal to 0"),
    ({"windows": {"hop_size_s": 5}}, "at least as long as its step"),
    ({"windows": {"tumbling_s": float("nan")}}, "finite number"),
    ({"windows": {"grace_s": 1e9}}, "grace_s must be at most"),
    ({"commit_interval_s": float("inf")}, "finite number"),
    ({"session_timeout_s": 1e9}, "less than or equal to"),
    ({"app_id": "a b"}, "pattern"),
])
def test_checks(values: dict, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        PipelineSettings(**values)
    assert message in str(info.value)


def test_frozen() -> None:
    with pytest.raises(ValidationError):
        PipelineSettings().partitions = 2  # type: ignore[misc]
