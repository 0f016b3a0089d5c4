"""Nutanix AHV: disk images built with the nutanix plugin's builder from the OS's cloud image
(image-builder's `nutanix-*` targets). Packer 1.6.6 lacks this builder: `validate` parses the HCL
and `build` needs a Packer >= 1.7 that installs the plugin (registry.Cloud.packer_builtin).

imagebuilder does not manage these images yet (no Prism Central stand-in here to test a store
against): the image stays in Prism Central's image service, and `images`/`prune` skip this cloud.
The build VM's user comes from cloud-init user data with a throw-away key (installer.py) and is
removed at the end of the build.
"""

from __future__ import annotations

import json

from typing import TYPE_CHECKING, Any

import yaml

from imagebuilder import installer, supplied
from imagebuilder.clouds.nutanix.settings import NutanixSettings
from imagebuilder.clouds.registry import Cloud, Plugin, RenderContext, cluster_api_image_name

if TYPE_CHECKING:
    from imagebuilder.baseimages import Resolver
    from imagebuilder.build import Job
    from imagebuilder.planner import Cell

USER_DATA = "user-data"  # in installer.HTTP_DIRECTORY; the template hands it to the VM base64-encoded


class Nutanix(Cloud):
    name = "nutanix"
    settings = NutanixSettings
    order = 40
    builder = "nutanix"
    packer_builtin = False
    image_builder_names = ("nutanix",)
    plugin = Plugin("nutanix", "github.com/nutanix-cloud-native/nutanix", ">= 0.12.0")
    store_path = None
    image_location = "Prism Central's image service (clouds.nutanix.endpoint)"
    ssh_user = installer.BUILD_USER
    estimate_s = 1200.0

    def image_name(self, os_id: str, kubernetes_version: str, arch: str) -> str:
        return cluster_api_image_name(os_id, kubernetes_version, arch)

    def packer_variables(self, cell: Cell, context: RenderContext) -> dict[str, Any]:
        settings = cell.settings
        return {
            "nutanix_endpoint": settings["endpoint"],
            "nutanix_port": settings["port"],
            "nutanix_insecure": settings["insecure"],
            "nutanix_cluster_name": settings["cluster_name"],
            "nutanix_subnet_name": settings["subnet_name"],
            "nutanix_cpus": settings["cpus"],
            "nutanix_memory_mb": settings["memory_mb"],
            "nutanix_disk_size_gb": settings["disk_size_gb"],
            "nutanix_boot_type": settings["boot_type"],
            # the vendor's cloud image (the qemu reference), or the one the user supplies (supplied.py);
            # Flatcar's OpenStack image in the release the plan resolved
            "nutanix_source_image_uri": (supplied.require_http(cell) if supplied.is_supplied(cell.base_image)
                                         else context.resolved.get("url") or cell.base_image["source"]),
        }

    def resolve_base(self, resolver: Resolver, cell: Cell) -> dict[str, Any]:
        """Flatcar's OpenStack image: the release `current/` names and its sha512 (imagebuilder/flatcar.py)."""
        if cell.os_info.family != "flatcar":
            return {}
        from imagebuilder import flatcar

        return flatcar.resolve_base(resolver, cell, self.name)

    def template_context(self, cell: Cell) -> dict[str, Any]:
        context = {"key_file": installer.KEY_FILE, "user_data": f"{installer.HTTP_DIRECTORY}/{USER_DATA}",
                   "provision_last": [installer.remove_build_user()]}
        if cell.os_info.family != "flatcar":
            return context
        from imagebuilder import flatcar  # Flatcar's OpenStack image, booted with the build's Ignition config

        name = flatcar.sysext_file_name(cell.kubernetes_version, cell.arch)
        return {**context, **flatcar.packer_context(cell, flatcar.booted_commands(name, cell.kubernetes_version),
                                                    [*flatcar.seal_commands(), installer.remove_build_user()])}

    def prepare(self, job: Job) -> None:
        """A throw-away key, and the cloud-init user data that lets the build user in with it."""
        public = installer.place_key(job.directory)
        seed = job.directory / installer.HTTP_DIRECTORY
        seed.mkdir(parents=True, exist_ok=True)
        if job.cell.os_info.family == "flatcar":  # Flatcar reads Ignition, not cloud-config, from the config drive
            from imagebuilder import flatcar

            (seed / USER_DATA).write_text(json.dumps(flatcar.build_ignition(installer.BUILD_USER, public), indent=2))
            return
        users = [{"name": installer.BUILD_USER, "shell": "/bin/bash", "sudo": "ALL=(ALL) NOPASSWD:ALL",
                  "lock_passwd": True, "ssh_authorized_keys": [public]}]
        (seed / USER_DATA).write_text("#cloud-config\n" + yaml.safe_dump({"users": users}, sort_keys=False))


CLOUD = Nutanix()
