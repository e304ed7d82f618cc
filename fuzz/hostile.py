"""Builders for hostile archives that are huge inside and small on disk (fuzz seeds, regression tests).

A 4 GiB run of zeros deflates to a few MB, but writing it through ``zipfile`` or
``gzip`` means compressing 4 GiB (tens of seconds). Instead one 1 MiB block of zeros
is deflated once, ending on a full flush (byte-aligned, no back-references), and
that block is repeated; the CRC-32 of the whole is computed with zlib's
``crc32_combine`` algorithm, so the files are *valid* archives (every length and
checksum right) built in well under a second.
"""
from __future__ import annotations

import io
import struct
import tarfile
import zlib

BLOCK = 1 << 20
_ZERO_BLOCK = b"\0" * BLOCK


def _gf2_times(mat: list[int], vec: int) -> int:
    out, i = 0, 0
    while vec:
        if vec & 1:
            out ^= mat[i]
        vec >>= 1
        i += 1
    return out


def _gf2_square(mat: list[int]) -> list[int]:
    return [_gf2_times(mat, mat[n]) for n in range(32)]


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC-32 of A||B from crc(A), crc(B) and len(B) (zlib's crc32_combine).

    ``op`` is the GF(2) operator that appends zero bits to a CRC; squaring it doubles
    the run, so len(B) zero bytes are appended in log2(len(B)) steps.
    """
    op = _gf2_square(_gf2_square([0xEDB88320] + [1 << n for n in range(31)]))  # four zero bits
    while len2:
        op = _gf2_square(op)  # one, two, four ... zero bytes
        if len2 & 1:
            crc1 = _gf2_times(op, crc1)
        len2 >>= 1
    return crc1 ^ crc2


def tar_gz(members: list[tuple[str, bytes]]) -> bytes:
    """A gzipped tar of ``(name, bytes)`` members, in memory."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def _zeros_crc(n_blocks: int) -> int:
    """CRC-32 of ``n_blocks`` MiB of zeros, from the power-of-two runs that make it up."""
    run_crc, run_len = zlib.crc32(_ZERO_BLOCK), BLOCK
    out: int | None = None
    while n_blocks:
        if n_blocks & 1:
            out = run_crc if out is None else crc32_combine(out, run_crc, run_len)
        run_crc = crc32_combine(run_crc, run_crc, run_len)
        run_len *= 2
        n_blocks >>= 1
    return 0 if out is None else out


def deflate_with_zeros(prefix: bytes, n_blocks: int, suffix: bytes) -> tuple[bytes, int, int]:
    """Raw deflate of ``prefix + n_blocks MiB of zeros + suffix``: (stream, crc32, length)."""
    def part(data: bytes, mode: int) -> bytes:
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        return c.compress(data) + c.flush(mode)

    block = part(_ZERO_BLOCK, zlib.Z_FULL_FLUSH)
    stream = part(prefix, zlib.Z_FULL_FLUSH) + block * n_blocks + part(suffix, zlib.Z_FINISH)
    crc = zlib.crc32(prefix)
    crc = crc32_combine(crc, _zeros_crc(n_blocks), n_blocks * BLOCK) if n_blocks else crc
    crc = crc32_combine(crc, zlib.crc32(suffix), len(suffix))
    return stream, crc, len(prefix) + n_blocks * BLOCK + len(suffix)


def gzip_with_zeros(prefix: bytes, n_blocks: int, suffix: bytes) -> bytes:
    """A .gz of ``prefix + zeros + suffix`` (RFC 1952)."""
    stream, crc, length = deflate_with_zeros(prefix, n_blocks, suffix)
    return b"\x1f\x8b\x08\x00\0\0\0\0\x02\xff" + stream + struct.pack("<II", crc, length & 0xFFFFFFFF)


def zip_of_zeros(name: str, n_blocks: int) -> bytes:
    """A zip (Zip64 sizes) holding ``name`` = ``n_blocks`` MiB of zeros, deflated."""
    stream, crc, length = deflate_with_zeros(b"", n_blocks, b"")
    raw = name.encode()
    extra = struct.pack("<HHQQ", 1, 16, length, len(stream))
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, 8, 0, 0x21, crc,
                        0xFFFFFFFF, 0xFFFFFFFF, len(raw), len(extra)) + raw + extra
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 8, 0, 0x21, crc,
                          0xFFFFFFFF, 0xFFFFFFFF, len(raw), len(extra), 0, 0, 0, 0o644 << 16, 0) + raw + extra
    offset = len(local) + len(stream)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), offset, 0)
    return local + stream + central + end


def tar_gz_claiming_zeros(name: str, n_blocks: int) -> bytes:
    """A model.tar.gz whose member ``name`` really holds ``n_blocks`` MiB of zeros."""
    ti = tarfile.TarInfo(name)
    ti.size = n_blocks * BLOCK
    ti.mode = 0o644
    header = ti.tobuf(format=tarfile.GNU_FORMAT)
    return gzip_with_zeros(header, n_blocks, b"\0" * 1024)  # the member, then the end-of-archive blocks
