"""Helpers for tests that must get below HTTP clients and models: raw chunked uploads, and a deep
finiteness check of whatever a decoder or loader accepted."""

from __future__ import annotations

import asyncio
import math
import re
from typing import Any

from pydantic import BaseModel

_LENGTH = re.compile(rb"content-length: (\d+)")


async def send_chunked(host: str, port: int, head: str, total: int) -> tuple[bytes, int]:
    """Send ``head`` (request line and headers, without the blank line) and then ``total`` bytes as
    256 KiB chunks generated lazily, stopping as soon as the server answers. Returns (the answer's
    head and body, bytes sent): a server with a running body cap answers long before ``total``.
    """
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"{head}Transfer-Encoding: chunked\r\n\r\n".encode())
    answer = asyncio.ensure_future(reader.readuntil(b"\r\n\r\n"))
    piece = b"x" * (256 * 1024)
    frame = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    sent = 0
    try:
        while sent < total and not answer.done():
            writer.write(frame)
            sent += len(piece)
            await writer.drain()
        if not answer.done():
            writer.write(b"0\r\n\r\n")
        async with asyncio.timeout(60):
            head_bytes = await answer
        found = _LENGTH.search(head_bytes.lower())
        length = int(found.group(1)) if found else 0
        body = await asyncio.wait_for(reader.readexactly(length), 10)
    except ConnectionError:  # a reset after the answer was read is fine; before it, answer.result() raises
        head_bytes = await answer
        body = b""
    finally:
        answer.cancel()
        writer.close()
    return head_bytes + body, sent


def all_finite(value: Any) -> bool:
    """True if no float anywhere inside ``value`` (models, mappings, sequences) is NaN or infinite."""
    if isinstance(value, BaseModel):
        return all_finite(value.model_dump())
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(all_finite(v) for v in value.values())
    if isinstance(value, list | tuple | set | frozenset):
        return all(all_finite(v) for v in value)
    return True
