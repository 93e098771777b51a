"""`tokenpools admitter`: options into settings, config errors, and a real process serving a request."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from tests.admitter.conftest import sha
from tokenpools.cli import app

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"
DEMO_KEY = "tp-demo-acme"  # listed in deploy/examples/entitlements.yaml


def test_options_become_settings(monkeypatch) -> None:
    seen = {}

    def fake_run(asgi, **kw):
        seen["state"] = asgi.state.admitter
        seen["kw"] = kw

    monkeypatch.setattr("uvicorn.run", fake_run)
    admin = sha("admin-secret")
    result = CliRunner().invoke(app, [
        "admitter", "--config", str(EXAMPLES / "pool.yaml"), "--config", str(EXAMPLES / "entitlements.yaml"),
        "--port", "9123", "--backend", "llama-3-8b=http://127.0.0.1:1,http://127.0.0.1:2",
        "--passthrough", "--admin-key-sha256", admin, "--admitter-id", "edge-1"])
    assert result.exit_code == 0, result.output
    settings = seen["state"].settings
    assert settings.port == 9123 and settings.host == "127.0.0.1" and settings.passthrough
    assert settings.backends == {"llama-3-8b": ["http://127.0.0.1:1", "http://127.0.0.1:2"]}
    assert settings.admin_key_sha256 == admin and settings.admitter_id == "edge-1"
    assert seen["kw"]["port"] == 9123


def test_slow_client_options_reach_the_server(monkeypatch) -> None:
    """The read timeouts and the cap become settings, and uvicorn serves with the guarded protocol."""
    from tokenpools.infra.slow_clients import GuardedH11Protocol

    seen = {}
    monkeypatch.setattr("uvicorn.run", lambda asgi, **kw: seen.update(state=asgi.state.admitter, kw=kw))
    result = CliRunner().invoke(app, [
        "admitter", "--config", str(EXAMPLES), "--header-timeout", "1.5", "--body-idle-timeout", "2.5",
        "--body-timeout", "7", "--max-unauthenticated-connections", "33"])
    assert result.exit_code == 0, result.output
    settings = seen["state"].settings
    assert (settings.header_timeout_seconds, settings.body_idle_timeout_seconds, settings.body_timeout_seconds,
            settings.max_unauthenticated_connections) == (1.5, 2.5, 7.0, 33)
    protocol = seen["kw"]["http"]
    assert issubclass(protocol, GuardedH11Protocol)
    guard = protocol.guard
    assert (guard.head_timeout, guard.body_idle_timeout, guard.body_timeout, guard.max_unadmitted) == \
        (1.5, 2.5, 7.0, 33)


def test_default_slow_client_limits() -> None:
    from admitter.settings import AdmitterSettings

    s = AdmitterSettings()
    assert (s.header_timeout_seconds, s.body_idle_timeout_seconds, s.body_timeout_seconds,
            s.max_unauthenticated_connections) == (10.0, 10.0, 60.0, 1024)


def test_admin_key_from_the_environment(monkeypatch) -> None:
    seen = {}
    monkeypatch.setattr("uvicorn.run", lambda asgi, **kw: seen.update(state=asgi.state.admitter))
    monkeypatch.setenv("TOKENPOOLS_ADMIN_KEY_SHA256", sha("x"))
    result = CliRunner().invoke(app, ["admitter", "--config", str(EXAMPLES / "pool.yaml"),
                                      "--config", str(EXAMPLES / "entitlements.yaml")])
    assert result.exit_code == 0, result.output
    assert seen["state"].settings.admin_key_sha256 == sha("x")


@pytest.mark.parametrize(("args", "needle"), [
    (["--backend", "nopool=http://127.0.0.1:1"], "unknown pool"),
    (["--backend", "llama-3-8b"], "POOL=URL"),
    (["--backend", "llama-3-8b=ftp://x"], "http(s) URL"),
    (["--admin-key-sha256", "not-hex"], "admin_key_sha256"),
])
def test_bad_options_exit_2_with_one_line_each(monkeypatch, args, needle) -> None:
    monkeypatch.setattr("uvicorn.run", lambda *a, **k: pytest.fail("must not start"))
    result = CliRunner().invoke(app, ["admitter", "--config", str(EXAMPLES), *args])
    assert result.exit_code == 2
    assert needle in result.output


def test_bad_config_exits_2(tmp_path) -> None:
    (tmp_path / "bad.yaml").write_text("apiVersion: nope\n")
    result = CliRunner().invoke(app, ["admitter", "--config", str(tmp_path)])
    assert result.exit_code == 2 and "apiVersion" in result.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_a_real_admitter_process_serves_the_example_config(replicas) -> None:
    r = await replicas()
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tokenpools.cli", "admitter", "--config", str(EXAMPLES / "pool.yaml"),
        "--config", str(EXAMPLES / "entitlements.yaml"), "--port", str(port), "--backend", f"llama-3-8b={r.url}",
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as c:
            for _ in range(300):
                try:
                    if (await c.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
            resp = await c.post("/v1/chat/completions", headers={"Authorization": f"Bearer {DEMO_KEY}"},
                                json={"model": "llama-3-8b", "messages": [{"role": "user", "content": "hi"}],
                                      "max_tokens": 8})
            assert resp.status_code == 200, resp.text
            assert (await c.get("/admin/pools")).status_code == 401  # no admin key configured
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            async with asyncio.timeout(10):
                out, _ = await proc.communicate()
        except TimeoutError:
            proc.kill()
            out, _ = await proc.communicate()
    assert DEMO_KEY.encode() not in out
    assert len(r.received) == 1


def test_the_environment_fills_what_the_command_line_leaves_out(monkeypatch) -> None:
    seen = {}
    monkeypatch.setattr("uvicorn.run", lambda asgi, **kw: seen.update(state=asgi.state.admitter, kw=kw))
    monkeypatch.setenv("TOKENPOOLS_PORT", "9124")
    monkeypatch.setenv("TOKENPOOLS_MAX_QUEUE", "7")
    monkeypatch.setenv("TOKENPOOLS_CONFIG_PATHS", f'["{EXAMPLES}"]')
    monkeypatch.setenv("TOKENPOOLS_LOG_LEVEL", "info")
    result = CliRunner().invoke(app, ["admitter"])
    assert result.exit_code == 0, result.output
    settings = seen["state"].settings
    assert (settings.port, settings.max_queue, settings.config_paths) == (9124, 7, [EXAMPLES])
    assert seen["kw"]["log_level"] == "info"
    result = CliRunner().invoke(app, ["admitter", "--port", "9125"])  # an option wins over the environment
    assert result.exit_code == 0, result.output
    assert seen["state"].settings.port == 9125


def test_kafka_from_the_environment(monkeypatch, tmp_path) -> None:
    """``KAFKA_BOOTSTRAP_SERVERS`` (as documented) joins the control plane, like --kafka."""
    monkeypatch.setattr("uvicorn.run", lambda *a, **k: None)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    result = CliRunner().invoke(app, ["admitter", "--config", str(EXAMPLES), "--spool-dir", str(tmp_path),
                                      "--topic-prefix", "t."])
    assert result.exit_code == 0, result.output
    assert "kafka 127.0.0.1:1, topic prefix 't.'" in result.output and "t.tokenpools.config" in result.output


@pytest.mark.parametrize(("args", "env", "needle"), [
    (["--config", str(EXAMPLES), "--discover"], {}, "error: --discover needs --kafka"),
    ([], {}, "error: --config is required without --kafka"),
    (["--config", str(EXAMPLES)], {"TOKENPOOLS_READ_TIMEOUT": "nan"}, "error: read_timeout: Input should be a finite"),
    (["--config", str(EXAMPLES)], {"TOKENPOOLS_PORT": "x" * 10_000}, "error: port: Input should be a valid integer"),
    (["--config", str(EXAMPLES), "--kafka", "nohost"], {}, "error: kafka.bootstrap: Kafka bootstrap server"),
    (["--config", str(EXAMPLES), "--kafka", "h:1", "--topic-prefix", "a b"], {}, "error: kafka.prefix: String"),
])
def test_bad_settings_exit_2_with_one_bounded_line_each(monkeypatch, args, env, needle) -> None:
    monkeypatch.setattr("uvicorn.run", lambda *a, **k: pytest.fail("must not start"))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(app, ["admitter", *args])
    assert result.exit_code == 2
    assert needle in result.output
    assert len(result.output.strip().splitlines()) == 1 and len(result.output) < 300
