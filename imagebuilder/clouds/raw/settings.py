"""The settings of `clouds.raw` in the matrix: the qemu build's, and how the raw disk is compressed."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from imagebuilder.clouds.qemu.settings import LOCAL_VARIANTS, QemuSettings


class RawSettings(QemuSettings):
    # The compressed form beside the raw disk, as Metal3's image URLs name it (`<name>.raw.gz` or
    # `.raw.xz`; image-builder's raw target writes gz). It is in the build key: the files differ.
    compression: Literal["gz", "xz"] = "gz"
    # gzip's and xz's own default; 1 compresses a disk's gigabyte of data five times faster into a
    # tenth more bytes. In the build key too.
    compression_level: int = Field(6, ge=1, le=9)

    VARIANTS = LOCAL_VARIANTS
