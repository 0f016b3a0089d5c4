"""The raw output's files: the build's disk as raw, its compressed form, a sha256 file beside each."""

from __future__ import annotations

import errno
import gzip
import hashlib
import lzma
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from imagebuilder.atomicfile import replacing, write_atomically
from imagebuilder.clouds.disks import disk_format, run_tool

CHUNK = 4 * 1024**2
ZEROS = bytes(CHUNK)
SUMS_SUFFIX = ".sha256sum"  # `sha256sum` output, the checksum file a Metal3 image URL is paired with


@dataclass(frozen=True)
class RawFiles:
    raw: Path
    compressed: Path
    sums: tuple[Path, ...]  # <raw>.sha256sum, <compressed>.sha256sum

    @property
    def all(self) -> list[Path]:
        return [self.raw, self.compressed, *self.sums]


class _HashingWriter:
    """The file a compressor writes, hashed as it is written (one pass over the data)."""

    def __init__(self, target: BinaryIO) -> None:
        self.target = target
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.target.write(data)

    def flush(self) -> None:
        self.target.flush()


def _compressor(compression: str, sink: _HashingWriter, level: int) -> BinaryIO:
    if compression == "gz":
        # mtime 0 and no file name: the same disk gives the same .gz, byte for byte
        return gzip.GzipFile(filename="", mode="wb", fileobj=sink, compresslevel=level, mtime=0)  # type: ignore[arg-type]
    return lzma.LZMAFile(sink, mode="wb", format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=level)  # type: ignore[arg-type]


def _extents(fd: int, size: int) -> Iterator[tuple[int, int, bool]]:
    """(start, end, holds data) over the whole file: its holes and data from SEEK_HOLE/SEEK_DATA,
    or one data extent where the file system cannot tell."""
    position = 0
    try:
        while position < size:
            try:
                data = os.lseek(fd, position, os.SEEK_DATA)
            except OSError as error:
                if error.errno != errno.ENXIO:  # ENXIO: only a hole is left
                    raise
                data = size
            if data > position:
                yield position, data, False
            if data >= size:
                return
            hole = os.lseek(fd, data, os.SEEK_HOLE)
            yield data, hole, True
            position = hole
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.EOPNOTSUPP) or position:
            raise
        yield 0, size, True


def _chunks(path: Path) -> Iterator[bytes | memoryview]:
    """The file's bytes in chunks; a hole's zeros are not read (a sparse 8 GiB disk holds 1 GiB of data)."""
    with path.open("rb", buffering=0) as disk:
        fd, size = disk.fileno(), os.fstat(disk.fileno()).st_size
        for start, end, has_data in _extents(fd, size):
            if has_data:
                disk.seek(start)
            for offset in range(start, end, CHUNK):
                length = min(CHUNK, end - offset)
                yield disk.read(length) if has_data else memoryview(ZEROS)[:length]


def write_sums(path: Path, digest: str) -> Path:
    sums = path.with_name(path.name + SUMS_SUFFIX)
    write_atomically(sums, f"{digest}  {path.name}\n")
    return sums


def raw_outputs(source: Path, compression: str, level: int) -> RawFiles:
    """<source stem>.raw (sparse) beside source, <stem>.raw.<compression> and their sha256 files.

    The raw disk is read once, its holes not at all: hashed and compressed (at `level`,
    RawSettings.compression_level) in the same pass. Each file appears whole (written under a temporary name, then renamed)."""
    raw = source.with_suffix(".raw")
    partial_raw = raw.with_name(f".{raw.name}.tmp")
    run_tool(["qemu-img", "convert", "-f", disk_format(source), "-O", "raw", str(source), str(partial_raw)], source)
    partial_raw.replace(raw)
    compressed = raw.with_name(f"{raw.name}.{compression}")
    raw_digest = hashlib.sha256()
    with replacing(compressed, binary=True) as target:
        sink = _HashingWriter(target)
        with _compressor(compression, sink, level) as stream:
            for chunk in _chunks(raw):
                raw_digest.update(chunk)
                stream.write(chunk)
    sums = (write_sums(raw, raw_digest.hexdigest()), write_sums(compressed, sink.digest.hexdigest()))
    return RawFiles(raw=raw, compressed=compressed, sums=sums)
