"""vLLM's block hashes as uint64 keys, for the KV-event decoder and the precise index alike.

vLLM publishes a block hash as an int (64-bit; older versions' Python hash() may be negative) or as
bytes (sha256-based hashing): ints wrap to uint64, bytes give their last 8 bytes, big-endian.
"""
from __future__ import annotations

U64 = (1 << 64) - 1


def block_hash_key(h) -> int:
    """Raises ValueError for empty bytes, TypeError for anything but an int or bytes."""
    if type(h) is int:
        return h & U64
    if isinstance(h, (bytes, bytearray, memoryview)):
        if not len(h):
            raise ValueError("empty bytes block hash")
        return int.from_bytes(bytes(h[-8:]), "big")
    if isinstance(h, int) and not isinstance(h, bool):   # IntEnum and other int subclasses
        return int(h) & U64
    raise TypeError(f"block hash must be an int or bytes, got {type(h).__name__}")
