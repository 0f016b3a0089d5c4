"""The MAAS root tarballs in the local catalogue, apart from the qcow2s (records with "output": "maas")."""

from __future__ import annotations

from imagebuilder.clouds.local import LocalCatalogue
from imagebuilder.clouds.maas.settings import MaasSettings


class MaasCatalogue(LocalCatalogue):
    cloud = "maas"

    def __init__(self, settings: MaasSettings | None = None) -> None:
        super().__init__()
