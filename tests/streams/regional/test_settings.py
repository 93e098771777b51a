"""``RegionalSettings``: the region is required and a name; the Kafka block and the environment as elsewhere."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from streams.regional.settings import RegionalSettings


def test_the_region_is_required_and_must_be_a_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOKENPOOLS_REGIONAL_REGION", raising=False)
    with pytest.raises(ValidationError, match="region"):
        RegionalSettings()
    with pytest.raises(ValidationError, match="not a valid name"):
        RegionalSettings(region="EU_West")


def test_environment_and_kafka_block(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENPOOLS_REGIONAL_REGION", "eu-west")
    monkeypatch.setenv("TOKENPOOLS_REGIONAL_METRICS_PORT", "9400")
    monkeypatch.setenv("TOKENPOOLS_KAFKA_PREFIX", "p.")
    s = RegionalSettings(bootstrap_servers="k:9092")
    assert s.region == "eu-west" and s.metrics_port == 9400 and s.metrics_host == "127.0.0.1"
    assert s.kafka.bootstrap == "k:9092" and s.topics.region_summaries == "p.tokenpools.region-summaries"
    assert s.topics.mirrored_region_summaries("us-east") == "us-east.p.tokenpools.region-summaries"
    assert RegionalSettings(region="b", topic_prefix="q.").kafka.prefix == "q."


def test_bounds_are_checked() -> None:
    with pytest.raises(ValidationError):
        RegionalSettings(region="a", min_tick_s=0)
    with pytest.raises(ValidationError):
        RegionalSettings(region="a", topic_poll_s=float("nan"))
    with pytest.raises(ValidationError):
        RegionalSettings(region="a", unknown=1)
