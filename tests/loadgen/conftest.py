"""A tiny platform for load generator tests: one pool, a guaranteed and a spot entitlement, a
few-seconds workload, and servers on 127.0.0.1 only (emulated replicas, the admitter)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn

MODEL = "tiny"
KEYS = {"gold": "tp-test-gold-0123456789", "spot": "tp-test-spot-0123456789"}


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def write_config(folder: Path, *, seconds: float = 2.0, gold_rate: float = 15.0, spot_rate: float = 25.0) -> Path:
    """Pool ``tiny`` (model ``tiny``), entitlements gold (guaranteed) and spot (a tiny burst, so most
    of its requests get 429 through an enforcing admitter), workload ``w``: gold streams, spot not."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "platform.yaml").write_text(f"""\
apiVersion: tokenpools.dev/v1alpha1
kind: TokenPool
metadata: {{name: {MODEL}}}
spec:
  model: {MODEL}
  contextLength: 4096
  perReplica: {{throughput: 100000, kv: 1000000, concurrency: 256}}
  replicas: {{min: 2, max: 2, initial: 2}}
  queue: {{maxWaitSeconds: 1.0, spotMaxWaitSeconds: 0.0}}
---
apiVersion: tokenpools.dev/v1alpha1
kind: Entitlement
metadata: {{name: gold}}
spec:
  pool: {MODEL}
  tenant: gold
  tier: guaranteed
  guarantee: {{throughput: 20000, kv: 200000, concurrency: 100}}
  burst: {{throughput: 20000, kv: 200000, concurrency: 100}}
  apiKeys: [{{sha256: {sha(KEYS['gold'])}}}]
---
apiVersion: tokenpools.dev/v1alpha1
kind: Entitlement
metadata: {{name: spot}}
spec:
  pool: {MODEL}
  tenant: spot
  tier: spot
  burst: {{throughput: 60, kv: 2000, concurrency: 1}}
  burstWindowSeconds: 1
  apiKeys: [{{sha256: {sha(KEYS['spot'])}}}]
---
apiVersion: tokenpools.dev/v1alpha1
kind: Workload
metadata: {{name: w}}
spec:
  pool: {MODEL}
  durationSeconds: {seconds}
  seed: 7
  tenants:
    - entitlement: gold
      arrivals: {{process: poisson, rate: {gold_rate}}}
      prompt: {{meanTokens: 40, sigma: 0.5, minTokens: 8, maxTokens: 200}}
      output: {{meanTokens: 6, sigma: 0.5, minTokens: 1, maxTokens: 20}}
      maxTokens: 16
      stream: true
    - entitlement: spot
      arrivals: {{process: poisson, rate: {spot_rate}}}
      prompt: {{meanTokens: 40, sigma: 0.5, minTokens: 8, maxTokens: 200}}
      output: {{meanTokens: 6, sigma: 0.5, minTokens: 1, maxTokens: 20}}
      maxTokens: 16
      stream: false
""")
    return folder


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    return write_config(tmp_path / "config")


@dataclass
class Served:
    url: str
    server: uvicorn.Server
    task: asyncio.Task[None]

    async def stop(self) -> None:
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self.task, 10)


async def serve(app: Any) -> Served:
    """Serve an ASGI app with its lifespan on a pre-bound 127.0.0.1 socket in this event loop."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False,
                                           timeout_graceful_shutdown=1))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    async with asyncio.timeout(10):
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
    host, port = sock.getsockname()[:2]
    return Served(f"http://{host}:{port}", server, task)


@pytest.fixture
async def emulator() -> AsyncIterator[Any]:
    """Two emulated replicas of model ``tiny`` at speedup 50 (milliseconds per request)."""
    from sim.server import EmulatorServer

    async with EmulatorServer(2, model=MODEL, speedup=50) as em:
        yield em
