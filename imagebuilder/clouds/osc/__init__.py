"""Outscale: OMIs built with the outscale plugin's outscale-bsu builder (image-builder's `osc-*`
targets). Packer 1.6.6 carries no Outscale builder (its `packer validate` lists the builders it
knows, osc-bsu not among them): `validate` parses the HCL and `build` needs a Packer >= 1.7 that
installs the plugin (registry.Cloud.packer_builtin).

imagebuilder does not manage these images yet (no Outscale API stand-in here to test a store
against): the OMI stays in the region of the settings, tagged with the image metadata, and
`images`/`prune` skip this cloud (registry.Cloud.store_path).

Flatcar (no Outscale image of it) is baked as image-builder's build-osc-flatcar makes it: Outscale's
Ubuntu OMI boots with a scratch volume, writes Flatcar's generic image (the release the plan resolved,
checked against its sha512) over its own root disk with the build's Ignition config on the image's OEM
partition, and reboots into Flatcar; Packer reconnects as the same user with the same throw-away key
(installer.place_key) and the shared Flatcar steps follow (imagebuilder/flatcar.py). The node's first
boot reads its Ignition config from the VM's user data.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import yaml

from imagebuilder import installer
from imagebuilder.clouds.osc.settings import OscSettings
from imagebuilder.clouds.registry import Cloud, Plugin, RenderContext, cluster_api_image_name

if TYPE_CHECKING:
    from imagebuilder.baseimages import Resolver
    from imagebuilder.build import Job
    from imagebuilder.planner import Cell

# The owner of Outscale's own OS images (image-builder's source_omi_filter).
OUTSCALE_OWNER = "Outscale"
USER_DATA = "user-data"  # a Flatcar cell's cloud-config for the Ubuntu VM, in installer.HTTP_DIRECTORY


class Osc(Cloud):
    name = "osc"
    settings = OscSettings
    order = 31
    builder = "outscale-bsu"
    packer_builtin = False
    image_builder_names = ("osc",)
    plugin = Plugin("outscale", "github.com/outscale/outscale", ">= 1.2.0")
    store_path = None
    image_location = "the Outscale region of clouds.osc, as an OMI"
    ssh_user = "outscale"  # Outscale's OS images log in as `outscale` (image-builder's ssh_username)
    estimate_s = 900.0

    def image_name(self, os_id: str, kubernetes_version: str, arch: str) -> str:
        return cluster_api_image_name(os_id, kubernetes_version, arch)

    def packer_variables(self, cell: Cell, context: RenderContext) -> dict[str, Any]:
        settings = cell.settings
        return {
            "osc_region": settings["region"],
            "osc_vm_type": settings["vm_type"],
            "osc_volume_size_gb": settings["volume_size_gb"],
            "osc_omi_account_ids": settings["omi_account_ids"],
            "osc_global_permission": settings["global_permission"],
            "osc_source_omi_name": cell.base_image["image_name"],
            "osc_source_omi_owner": OUTSCALE_OWNER,
        }


    def resolve_base(self, resolver: Resolver, cell: Cell) -> dict[str, Any]:
        """Flatcar's generic image: the release `current/` names and its sha512 (imagebuilder/flatcar.py)."""
        if cell.os_info.family != "flatcar":
            return {}
        from imagebuilder import flatcar

        return flatcar.resolve_base(resolver, cell, self.name)

    def template_context(self, cell: Cell) -> dict[str, Any]:
        """A Flatcar cell: the Ubuntu VM overwritten with Flatcar, then the shared Flatcar steps."""
        if cell.os_info.family != "flatcar":
            return {}
        from imagebuilder import flatcar

        resolved = cell.base_image.get("resolved") or {}
        url = resolved.get("url") or cell.base_source.get("url") or cell.base_image["source"]
        install = {"ignition": f"{installer.HTTP_DIRECTORY}/{flatcar.BUILD_IGNITION}",
                   "commands": flatcar.overwrite_commands(url, resolved.get("sha512", ""),
                                                          cell.base_image["root_disk"])}
        name = flatcar.sysext_file_name(cell.kubernetes_version, cell.arch)
        return {"key_file": installer.KEY_FILE, "user_data": f"{installer.HTTP_DIRECTORY}/{USER_DATA}",
                **flatcar.packer_context(cell, flatcar.booted_commands(name, cell.kubernetes_version),
                                         [*flatcar.metadata_ignition_commands(), *flatcar.seal_commands(self.ssh_user)],
                                         install)}

    def prepare(self, job: Job) -> None:
        """A Flatcar cell: a throw-away key, the Ubuntu VM's user data that lets its default user in with
        it, and the Ignition config that lets the same user into the Flatcar written over it."""
        if job.cell.os_info.family != "flatcar":
            return
        from imagebuilder import flatcar

        public = installer.place_key(job.directory)
        seed = job.directory / installer.HTTP_DIRECTORY
        seed.mkdir(parents=True, exist_ok=True)
        (seed / USER_DATA).write_text("#cloud-config\n" + yaml.safe_dump({"ssh_authorized_keys": [public]}))
        ignition = flatcar.build_ignition(self.ssh_user, public)
        (seed / flatcar.BUILD_IGNITION).write_text(json.dumps(ignition, indent=2) + "\n")


CLOUD = Osc()
