"""Deterministic byte-level and structure-aware mutations (no dependency on a fuzzer library).

Why our own mutator: it runs everywhere CI runs (atheris is optional), is
reproducible from one integer seed, and knows the three container formats well
enough to get past their outer checks: RecordIO payloads are re-framed with correct
lengths so mutations reach the protobuf decoder, and gzip streams are mutated
*inside* and recompressed so the tar/zip/NDArray parsers underneath see them.
"""
from __future__ import annotations

import gzip
import random
import struct
import zlib

MAX_INPUT = 1 << 20

INTERESTING_8 = [0x00, 0x01, 0x06, 0x0A, 0x12, 0x1A, 0x7F, 0x80, 0xFF]
INTERESTING_32 = [0, 1, 2, 3, 4, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x1FFFFFFF,
                  0x20000000, 0x3FFFFFFF, 0x60000000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xCED7230A,
                  0xF993FAC8, 0xF993FAC9, 0xF993FACA]
INTERESTING_64 = [0, 1, 0x112, 0xFFFFFFFF, 1 << 32, 1 << 40, (1 << 63) - 1, 1 << 63, (1 << 64) - 1]
TOKENS = [
    struct.pack("<I", 0xCED7230A),  # RecordIO magic
    b"\x0a\x06values\x12",  # map entry prefix
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # longest varint
    b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80",  # over-long varint
    struct.pack("<Q", 0x112),  # NDArray list magic
    struct.pack("<I", 0xF993FAC9),
    struct.pack("<iq", 1, -1),  # shape with a negative dim
    struct.pack("<i", -1),
    b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06", b"\x1f\x8b\x08", b"ustar\x0000", b"../", b"/etc/passwd",
    b'{"nodes": [', b"arg:", b"aux:",
]


def _pos(rng: random.Random, n: int) -> int:
    return rng.randrange(n) if n else 0


def mutate_bytes(data: bytes, rng: random.Random, pool: list[bytes]) -> bytes:
    """Apply 1-8 random byte-level edits (flips, interesting values, tokens, splices, cuts)."""
    b = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4, 8))):
        op = rng.randrange(12)
        n = len(b)
        if op == 0 and n:  # flip a bit
            i = _pos(rng, n)
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and n:  # interesting byte
            b[_pos(rng, n)] = rng.choice(INTERESTING_8)
        elif op == 2 and n >= 4:  # interesting u32 (aligned half of the time)
            i = _pos(rng, n - 3)
            if rng.random() < 0.5:
                i &= ~3
            b[i:i + 4] = struct.pack("<I", rng.choice(INTERESTING_32))
        elif op == 3 and n >= 8:  # interesting u64
            i = _pos(rng, n - 7)
            b[i:i + 8] = struct.pack("<Q", rng.choice(INTERESTING_64))
        elif op == 4:  # insert a token
            i = _pos(rng, n + 1)
            b[i:i] = rng.choice(TOKENS)
        elif op == 5 and n:  # delete a range
            i = _pos(rng, n)
            del b[i:i + rng.choice((1, 2, 4, 8, rng.randrange(1, n + 1)))]
        elif op == 6 and n:  # duplicate a range
            i = _pos(rng, n)
            j = min(n, i + rng.randrange(1, 64))
            k = _pos(rng, n + 1)
            b[k:k] = b[i:j]
        elif op == 7:  # random bytes
            i = _pos(rng, n + 1)
            b[i:i] = rng.randbytes(rng.randrange(1, 16))
        elif op == 8 and n:  # truncate
            del b[_pos(rng, n):]
        elif op == 9 and pool:  # splice with another input
            other = rng.choice(pool)
            i = _pos(rng, n + 1)
            j = _pos(rng, len(other) + 1)
            b = b[:i] + other[j:]
        elif op == 10 and n:  # add/subtract a small number to a byte
            i = _pos(rng, n)
            b[i] = (b[i] + rng.randrange(-16, 17)) & 0xFF
        elif op == 11 and n >= 2:  # overwrite a run with one value
            i = _pos(rng, n)
            j = min(n, i + rng.randrange(1, 32))
            b[i:j] = bytes([rng.choice(INTERESTING_8)]) * (j - i)
    return bytes(b[:MAX_INPUT])


def mutate_recordio_payload(data: bytes, rng: random.Random, pool: list[bytes]) -> bytes | None:
    """Mutate one record's protobuf payload and re-frame, so the message decoder gets the bytes."""
    frames = _split_frames(data)
    if not frames:
        return None
    k = rng.randrange(len(frames))
    frames[k] = mutate_bytes(frames[k], rng, [])
    from localfm.io.recordio import frame_payload

    split = rng.random() < 0.1
    return b"".join(frame_payload(p, split=split) for p in frames)[:MAX_INPUT]


def _split_frames(data: bytes) -> list[bytes]:
    """Lenient framing for the mutator only: payloads of well-formed single-part frames."""
    out: list[bytes] = []
    pos = 0
    while pos + 8 <= len(data):
        magic, word = struct.unpack_from("<II", data, pos)
        length = word & ((1 << 29) - 1)
        if magic != 0xCED7230A or pos + 8 + length > len(data):
            break
        out.append(data[pos + 8:pos + 8 + length])
        pos += 8 + ((length + 3) & ~3)
        if len(out) >= 64:
            break
    return out


def mutate_inside_gzip(data: bytes, rng: random.Random, pool: list[bytes]) -> bytes | None:
    """Decompress (capped), mutate the inner bytes, recompress: reaches tar/zip/NDArray parsing."""
    if data[:2] != b"\x1f\x8b":
        return None
    try:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        inner = d.decompress(data, MAX_INPUT)
    except zlib.error:
        return None
    return gzip.compress(mutate_bytes(inner, rng, pool), compresslevel=1, mtime=0)
