"""The settings of `clouds.maas` in the matrix: the qemu build's (the tarball has no settings of its own)."""

from __future__ import annotations

from imagebuilder.clouds.qemu.settings import QemuSettings


class MaasSettings(QemuSettings):
    pass
