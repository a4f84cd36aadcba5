"""A minimal keep-alive HTTP/1.1 GET client on a raw asyncio protocol, driven by callbacks.

Scraping 64 endpoints every 50 ms is ~1,300 requests/s on the same event loop as the request path.
A coroutine, a future, a timeout and a sleep per scrape cost more CPU than the scrape itself; here a
scrape is one write and one read callback, and the scraper's single timer does the rest.
"""
from __future__ import annotations

import asyncio
from typing import Callable

MAX_RESPONSE_BYTES = 16 << 20


class HTTPError(Exception):
    pass


def parse_response(buf: bytearray, eof: bool) -> tuple[int, bytes, bool] | None:
    """(status, body, keep_alive) once `buf` holds a whole response (which is then removed from it),
    else None. Raises HTTPError on a malformed or oversized response."""
    if len(buf) > MAX_RESPONSE_BYTES:
        raise HTTPError("response too large")
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        if eof:
            raise HTTPError("connection closed before the response headers")
        return None
    head = bytes(buf[:head_end]).split(b"\r\n")
    parts = head[0].split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise HTTPError(f"not an HTTP response: {head[0][:60]!r}")
    status = int(parts[1])
    length, chunked, keep_alive = -1, False, True
    for line in head[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            try:
                length = int(value.strip())
            except ValueError:
                raise HTTPError("bad content-length") from None
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
        elif name == b"connection" and value.strip().lower() == b"close":
            keep_alive = False
    start = head_end + 4
    if chunked:
        body = bytearray()
        pos = start
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            try:
                size = int(bytes(buf[pos:eol]).split(b";")[0].strip(), 16)
            except ValueError:
                raise HTTPError("bad chunk size") from None
            if size == 0:
                end = buf.find(b"\r\n\r\n", eol)  # trailers, if any, end with an empty line
                if end < 0:
                    break
                del buf[:end + 4]
                return status, bytes(body), keep_alive
            if len(buf) < eol + 2 + size + 2:
                break
            body += buf[eol + 2:eol + 2 + size]
            pos = eol + 2 + size + 2
        if eof:
            raise HTTPError("connection closed inside a chunked body")
        return None
    if length >= 0:
        if len(buf) < start + length:
            if eof:
                raise HTTPError("connection closed inside the body")
            return None
        body = bytes(buf[start:start + length])
        del buf[:start + length]
        return status, body, keep_alive
    if eof:  # no length: the body runs to the end of the connection
        body = bytes(buf[start:])
        buf.clear()
        return status, body, False
    return None


class GetConnection(asyncio.Protocol):
    """One connection; `get()` sends a request, `on_done(status, body)` or `on_error(exc)` follows."""

    def __init__(self, on_done: Callable[[int, bytes], None], on_error: Callable[[Exception], None]) -> None:
        self.on_done = on_done
        self.on_error = on_error
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.busy = False
        self.usable = True

    def connection_made(self, transport) -> None:
        self.transport = transport

    def get(self, request: bytes) -> None:
        self.buf.clear()
        self.busy = True
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.busy:
            self._complete(False)

    def connection_lost(self, exc) -> None:
        self.usable = False
        if self.busy:
            self._complete(True)

    def _complete(self, eof: bool) -> None:
        try:
            result = parse_response(self.buf, eof)
        except HTTPError as e:
            self.busy = False
            self.close()
            self.on_error(e)
            return
        if result is None:
            return
        self.busy = False
        status, body, keep_alive = result
        if not keep_alive:
            self.close()
        self.on_done(status, body)

    def close(self) -> None:
        self.usable = False
        if self.transport is not None:
            self.transport.close()
