"""Cheap HTTP/1.1 clients for load: a keep-alive connection on asyncio streams, and a one-off
blocking request for readiness checks and set-up."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket

# What a request meets when the server process dies or restarts under it.
CONNECTION_ERRORS = (OSError, asyncio.IncompleteReadError)


def build_request(
    port: int, method: str, path: str, headers: dict | None = None, body: bytes | dict | None = None
) -> bytes:
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: keep-alive"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


def _parse_head(head: bytes) -> tuple[int, int | None, bool, bool]:
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length, close, chunked = None, False, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"connection":
            close = value.strip().lower() == b"close"
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
    return status, length, close, chunked


class AsyncConn:
    """One keep-alive HTTP/1.1 connection on asyncio streams: far cheaper per request than httpx."""

    def __init__(self, port: int):
        self.port = port
        self.reader = self.writer = None

    async def _open(self):
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port, limit=1 << 20)
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def request(self, raw: bytes, *, reconnect: bool = True) -> tuple[int, bytes]:
        """Send ``raw`` and read the answer. A connection seen closed before sending is opened again,
        as HTTP client libraries do. With ``reconnect``, one that breaks on the request is opened
        again and the request sent once more; without it, the broken request is the caller's to see."""
        if self.reader is not None and self.reader.at_eof():
            self.close()
        reused = self.writer is not None
        if not reused:
            await self._open()
        try:
            self.writer.write(raw)
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (ConnectionError, asyncio.IncompleteReadError):
            self.close()
            if not (reconnect and reused):
                raise
            await self._open()
            self.writer.write(raw)
            head = await self.reader.readuntil(b"\r\n\r\n")
        try:
            return await self._read_body(head)
        except BaseException:
            self.close()
            raise

    async def _read_body(self, head: bytes) -> tuple[int, bytes]:
        status, length, close, chunked = _parse_head(head)
        if chunked:
            body = b""
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                body += chunk[:-2]
        elif length is not None:
            body = await self.reader.readexactly(length) if length else b""
        elif status in (204, 304) or 100 <= status < 200:
            body = b""
        else:
            body = await self.reader.read()
            close = True
        if close:
            self.close()
        return status, body

    def close(self):
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def http_request_sync(port: int, method: str, path: str, headers=None, body=None, timeout: float = 30):
    """A one-off blocking request (readiness checks and set-up)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        payload = json.dumps(body).encode() if isinstance(body, dict) else body
        hdrs = dict(headers or {})
        if payload is not None:
            hdrs.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=payload, headers=hdrs)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()
