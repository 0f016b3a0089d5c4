"""The OVAs in the local catalogue, apart from the qcow2s (records with "output": "ova")."""

from __future__ import annotations

from imagebuilder.clouds.local import LocalCatalogue
from imagebuilder.clouds.ova.settings import OvaSettings


class OvaCatalogue(LocalCatalogue):
    cloud = "ova"

    def __init__(self, settings: OvaSettings | None = None) -> None:
        super().__init__()
