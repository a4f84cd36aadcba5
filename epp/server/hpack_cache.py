"""HPACK decoding with a cache of header blocks that leave the dynamic table as it was.

Envoy's gRPC client sends the same HEADERS block for every ext_proc stream once its first stream has
filled the dynamic table: `:path` (and a few others) go as Huffman-coded literals without indexing, so
the bytes repeat exactly. The `hpack` library decodes them afresh each time in pure Python (~25 us per
stream on this VM, a sixth of the transport's work per request). A block that neither adds to nor resizes
the dynamic table decodes to the same headers whenever the table is the same, so it is cached by its
bytes; any block that changes the table empties the cache. The decoder's own state is never bypassed
for a block that could change it, so HPACK stays in step with the peer.
"""
from __future__ import annotations

from hpack import Decoder

MAX_CACHED = 32          # distinct repeating blocks per connection (Envoy sends one or two)
MAX_CACHED_BLOCK = 1024  # bytes: larger blocks are not worth keeping


def list_size(headers: list) -> int:
    """The header list's size as HTTP/2 counts it (RFC 9113 §6.5.2): name + value + 32 per field."""
    size = 32 * len(headers)
    for k, v in headers:
        size += len(k) + len(v)
    return size


class CachingDecoder:
    """decode(block) -> (Decoder.decode(block, raw=True), its list size), with the cache; the returned
    list must not be modified."""

    __slots__ = ("decoder", "cache")

    def __init__(self, max_header_list_size: int) -> None:
        self.decoder = Decoder()
        self.decoder.max_header_list_size = max_header_list_size
        self.cache: dict[bytes, tuple[list, int]] = {}

    @property
    def max_header_list_size(self) -> int:
        return self.decoder.max_header_list_size

    @property
    def header_table(self):
        return self.decoder.header_table

    def decode(self, block: bytes | bytearray) -> tuple[list, int]:
        if block.__class__ is not bytes:     # a block gathered from CONTINUATION frames
            block = bytes(block)
        hit = self.cache.get(block)
        if hit is not None:
            return hit
        table = self.decoder.header_table
        entries = table.dynamic_entries
        n, size, first = len(entries), table.maxsize, entries[0] if entries else None
        headers = self.decoder.decode(block, raw=True)
        out = (headers, list_size(headers))
        # an insertion puts a new tuple object first (compared by identity: an equal entry inserted
        # again is still a change); a size update changes maxsize or evicts (len)
        if len(entries) != n or table.maxsize != size or (entries[0] if entries else None) is not first:
            self.cache.clear()
        elif len(block) <= MAX_CACHED_BLOCK and len(self.cache) < MAX_CACHED:
            self.cache[block] = out
        return out
