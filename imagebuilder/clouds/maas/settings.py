"""The settings of `clouds.maas` in the matrix: the qemu build's (the tarball has no settings of its own)."""

from __future__ import annotations

from imagebuilder.clouds.qemu.settings import LOCAL_VARIANTS, QemuSettings


class MaasSettings(QemuSettings):
    VARIANTS = LOCAL_VARIANTS  # no immutable: a root tarball has no partitions
