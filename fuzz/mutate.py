"""Deterministic byte-level and structure-aware mutations (no dependency on a fuzzer library).

Why our own mutator: it runs everywhere CI runs (atheris is optional), is
reproducible from one integer seed, and knows the three container formats well
enough to get past their outer checks: RecordIO payloads are re-framed with correct
lengths so mutations reach the protobuf decoder, gzip streams are mutated *inside*
and recompressed so the tar/zip/NDArray parsers underneath see them, and archives
in archives (a zip inside a tar.gz, ``params``/``symbol.json`` inside the zip) are
rebuilt around the mutated member with every size and checksum right.
"""
from __future__ import annotations

import gzip
import io
import random
import struct
import tarfile
import zipfile
import zlib

from localfm.io.recordio import MAGIC as RECORDIO_MAGIC

MAX_INPUT = 1 << 20

INTERESTING_8 = [0x00, 0x01, 0x06, 0x0A, 0x12, 0x1A, 0x7F, 0x80, 0xFF]
INTERESTING_32 = [0, 1, 2, 3, 4, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x1FFFFFFF,
                  0x20000000, 0x3FFFFFFF, 0x60000000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, RECORDIO_MAGIC,
                  0xF993FAC8, 0xF993FAC9, 0xF993FACA]
INTERESTING_64 = [0, 1, 0x112, 0xFFFFFFFF, 1 << 32, 1 << 40, (1 << 63) - 1, 1 << 63, (1 << 64) - 1]
TOKENS = [
    struct.pack("<I", RECORDIO_MAGIC),
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
        if magic != RECORDIO_MAGIC or pos + 8 + length > len(data):
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


def _zip_members(data: bytes) -> list[tuple[str, bytes]] | None:
    """The (name, bytes) of a small zip, or None when it is not one (mutator input only)."""
    if data[:2] != b"PK":
        return None
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            # A mutated archive may name a member "" (ZipInfo.is_dir() then raises IndexError).
            infos = [zi for zi in zf.infolist() if zi.filename and not zi.filename.endswith("/")]
            if not infos or sum(zi.file_size for zi in infos) > MAX_INPUT:
                return None
            return [(zi.filename, zf.read(zi)) for zi in infos]
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, ValueError, OSError):
        return None


def _zip(members: list[tuple[str, bytes]], deflate: bool) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED) as zf:
        for name, body in members:
            zf.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), body)
    return buf.getvalue()


def mutate_zip_member(data: bytes, rng: random.Random, pool: list[bytes]) -> bytes | None:
    """Mutate one member of a zip (``params``, ``symbol.json``) and re-zip it with valid CRCs."""
    members = _zip_members(data)
    if not members:
        return None
    k = rng.randrange(len(members))
    name, body = members[k]
    members[k] = (name, mutate_bytes(body, rng, pool))
    return _zip(members, deflate=rng.random() < 0.5)[:MAX_INPUT]


def mutate_in_archive(data: bytes, rng: random.Random, pool: list[bytes]) -> bytes | None:
    """In a (gzipped) tar, mutate a zip member's bytes or a member inside it; re-tar, re-gzip.

    This is the model.tar.gz -> model_algo-1 zip -> params/symbol.json nesting of a
    SageMaker FM artifact: the tar and gzip layers stay valid so the mutation reaches
    the zip, or the zip stays valid so it reaches the NDArray / symbol parsers.
    """
    gz = data[:2] == b"\x1f\x8b"
    try:
        raw = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data, MAX_INPUT) if gz else data
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tf:
            members = [(ti.name, tf.extractfile(ti).read()) for ti in tf if ti.isreg()]  # type: ignore[union-attr]
    except (tarfile.TarError, zlib.error, EOFError, OSError, ValueError):
        return None
    zips = [i for i, (_, body) in enumerate(members) if body[:2] == b"PK"]
    if not zips:
        return None
    k = rng.choice(zips)
    name, body = members[k]
    inner = mutate_zip_member(body, rng, pool) if rng.random() < 0.7 else None
    members[k] = (name, inner if inner is not None else mutate_bytes(body, rng, pool))
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for n, b in members:
            ti = tarfile.TarInfo(n)
            ti.size = len(b)
            tf.addfile(ti, io.BytesIO(b))
    tar = out.getvalue()
    return (gzip.compress(tar, compresslevel=1, mtime=0) if gz else tar)[:MAX_INPUT]
