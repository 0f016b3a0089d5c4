"""The raw output's files: the build's disk as raw, its compressed form, a sha256 file beside each."""

from __future__ import annotations

import gzip
import hashlib
import lzma
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from imagebuilder.atomicfile import replacing, write_atomically
from imagebuilder.clouds.disks import disk_format, run_tool

CHUNK = 4 * 1024**2
GZIP_LEVEL = 6  # gzip's own default
XZ_PRESET = 6  # xz's own default
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


def _compressor(compression: str, sink: _HashingWriter) -> BinaryIO:
    if compression == "gz":
        # mtime 0 and no file name: the same disk gives the same .gz, byte for byte
        return gzip.GzipFile(filename="", mode="wb", fileobj=sink, compresslevel=GZIP_LEVEL, mtime=0)  # type: ignore[arg-type]
    return lzma.LZMAFile(sink, mode="wb", format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=XZ_PRESET)  # type: ignore[arg-type]


def write_sums(path: Path, digest: str) -> Path:
    sums = path.with_name(path.name + SUMS_SUFFIX)
    write_atomically(sums, f"{digest}  {path.name}\n")
    return sums


def raw_outputs(source: Path, compression: str) -> RawFiles:
    """<source stem>.raw (sparse) beside source, <stem>.raw.<compression> and their sha256 files.

    The raw disk is read once: hashed and compressed in the same pass. Each file appears whole
    (written under a temporary name, then renamed)."""
    raw = source.with_suffix(".raw")
    partial_raw = raw.with_name(f".{raw.name}.tmp")
    run_tool(["qemu-img", "convert", "-f", disk_format(source), "-O", "raw", str(source), str(partial_raw)], source)
    partial_raw.replace(raw)
    compressed = raw.with_name(f"{raw.name}.{compression}")
    raw_digest = hashlib.sha256()
    with raw.open("rb") as disk, replacing(compressed, binary=True) as target:
        sink = _HashingWriter(target)
        with _compressor(compression, sink) as stream:
            while chunk := disk.read(CHUNK):
                raw_digest.update(chunk)
                stream.write(chunk)
    sums = (write_sums(raw, raw_digest.hexdigest()), write_sums(compressed, sink.digest.hexdigest()))
    return RawFiles(raw=raw, compressed=compressed, sums=sums)
