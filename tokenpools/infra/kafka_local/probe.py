"""Readiness: a Kafka client gets cluster metadata, not merely an open port."""

from __future__ import annotations

import asyncio
import contextlib
import threading


def probe(bootstrap_servers: str, timeout: float = 5.0) -> bool:
    """Runs in its own thread and loop, so it also works when called from async code."""
    result: list[bool] = [False]

    def run() -> None:
        result[0] = asyncio.run(_probe(bootstrap_servers, seconds=timeout))

    thread = threading.Thread(target=run, name="kafka-local-probe", daemon=True)
    thread.start()
    thread.join(timeout + 5)
    return result[0]


async def _probe(bootstrap_servers: str, *, seconds: float) -> bool:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers,
        client_id="tokenpools-kafka-local-probe",
        request_timeout_ms=max(1000, int(seconds * 1000)),
    )
    try:
        async with asyncio.timeout(seconds):
            await admin.start()
            cluster = await admin.describe_cluster()
    except Exception:
        return False
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
    return bool(cluster.get("brokers")) and cluster.get("controller_id", -1) not in (-1, None)
