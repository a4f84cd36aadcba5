"""Raw HTTP/1.1 on loopback, the one home of the wire code the stand-in pods, the fake servers of the
tests and the overhead benchmark's load generator share.

- server side: read_request(), response(), chunked_head(), chunk(), LAST_CHUNK;
- client side, non-blocking: Target (a port and its idle keep-alive connections) and Conn (one
  connection, one request at a time), the overhead benchmark's load generator: cheaper per request than
  any client library, so the generator is not the bottleneck it measures;
- client side, blocking: post() and get() (http.client) for tests and the stack's demo.
"""
from __future__ import annotations

import asyncio
import http.client

LAST_CHUNK = b"0\r\n\r\n"


# ------------------------------------------------------------------ server side

async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes, dict[bytes, list[bytes]], bytes]:
    """The next request on a keep-alive connection: (method, path, headers by lower-case name, body),
    a chunked body de-chunked. Raises asyncio.IncompleteReadError when the client closes."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    method, path, _ = lines[0].split(b" ", 2)
    headers: dict[bytes, list[bytes]] = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(b":")
            headers.setdefault(k.strip().lower(), []).append(v.strip())
    body = b""
    if b"chunked" in b"".join(headers.get(b"transfer-encoding", [])).lower():
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(parts)
    elif headers.get(b"content-length"):
        body = await reader.readexactly(int(headers[b"content-length"][0]))
    return method, path, headers, body


def response(status: int, body: bytes, ctype: bytes | None = b"application/json", close: bool = False) -> bytes:
    """A whole response with a content-length (the reason phrase is always OK: no client here reads it)."""
    head = b"HTTP/1.1 %d OK\r\n" % status
    if ctype:
        head += b"content-type: %s\r\n" % ctype
    if close:
        head += b"connection: close\r\n"
    return head + b"content-length: %d\r\n\r\n" % len(body) + body


def chunked_head(ctype: bytes | None = None) -> bytes:
    """The head of a 200 response whose body follows in chunk()s and ends with LAST_CHUNK."""
    return b"HTTP/1.1 200 OK\r\n" + (b"content-type: %s\r\n" % ctype if ctype else b"") + b"transfer-encoding: chunked\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


# ------------------------------------------------------------------ client side, non-blocking

class Target:
    """A port requests go to, and its idle keep-alive connections."""

    def __init__(self, name: str, port: int) -> None:
        self.name = name
        self.port = port
        self.idle: list[Conn] = []
        self.opened = 0


class Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 client connection, one request at a time. A request is (run, index, t0);
    its end calls run.complete(index, t0, status), 599 when the connection is lost first."""

    __slots__ = ("target", "transport", "buf", "req", "closed")

    def __init__(self, target: Target) -> None:
        self.target = target
        self.transport = None
        self.buf = bytearray()
        self.req = None  # (run, index, t0)
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def send(self, run, i: int, t0: float, parts: list[bytes]) -> None:
        self.req = (run, i, t0)
        self.transport.writelines(parts)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.req is not None:
            self._complete()

    def _complete(self) -> None:
        buf = self.buf
        he = buf.find(b"\r\n\r\n")
        if he < 0:
            return
        head = bytes(buf[:he]).lower()
        i = head.find(b"\r\ncontent-length:")
        if i >= 0:
            j = head.find(b"\r\n", i + 2)
            end = he + 4 + int(head[i + 17:j if j >= 0 else len(head)])
            if len(buf) < end:
                return
        elif b"chunked" in head:
            k = buf.find(b"\r\n0\r\n\r\n", he + 2)
            if k < 0:
                return
            end = k + 7
        else:
            return  # body to connection close: completed by connection_lost
        status = int(buf[9:12])
        keep = b"connection: close" not in head
        del buf[:end]
        run, idx, t0 = self.req
        self.req = None
        if keep:
            self.target.idle.append(self)
        else:
            self.close()
        run.complete(idx, t0, status)

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self.req is not None:
            run, idx, t0 = self.req
            self.req = None
            run.complete(idx, t0, 599)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


async def connect(target: Target) -> Conn:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(lambda: Conn(target), "127.0.0.1", target.port)
    target.opened += 1
    return conn


async def prewarm(target: Target, n: int) -> None:
    """At least n open idle connections to target (closed ones dropped)."""
    target.idle = [c for c in target.idle if not c.closed]
    need = n - len(target.idle)
    if need > 0:
        target.idle += await asyncio.gather(*(connect(target) for _ in range(need)))


# ------------------------------------------------------------------ client side, blocking

def post(port: int, path: str, body: bytes, headers: dict | list | None = None, timeout: float = 20):
    """POST a JSON body to 127.0.0.1:port; (status, body, headers by lower-case name). headers may be a
    list of pairs, to send a name twice."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest("POST", path, skip_accept_encoding=True)
        items = headers.items() if isinstance(headers, dict) else (headers or [])
        conn.putheader("content-type", "application/json")
        conn.putheader("content-length", str(len(body)))
        for k, v in items:
            conn.putheader(k, v)
        conn.endheaders(body)
        r = conn.getresponse()
        return r.status, r.read(), {k.lower(): v for k, v in r.getheaders()}
    finally:
        conn.close()


def get(port: int, path: str, timeout: float = 5) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()
