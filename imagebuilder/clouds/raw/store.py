"""The raw disks in the local catalogue, apart from the qcow2s (records with "output": "raw")."""

from __future__ import annotations

from imagebuilder.clouds.local import LocalCatalogue
from imagebuilder.clouds.raw.settings import RawSettings


class RawCatalogue(LocalCatalogue):
    cloud = "raw"

    def __init__(self, settings: RawSettings | None = None) -> None:
        super().__init__()
