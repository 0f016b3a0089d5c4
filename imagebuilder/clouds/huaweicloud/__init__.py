"""Huawei Cloud: ECS system images built with the huaweicloud plugin's huaweicloud-ecs builder
(image-builder's `huaweicloud-*` targets). Packer 1.6.6 lacks this builder: `validate` parses the
HCL and `build` needs a Packer >= 1.7 that installs the plugin (registry.Cloud.packer_builtin).

imagebuilder does not manage these images yet (no Huawei Cloud API stand-in here to test a store
against): the image stays in the region of the settings, tagged with the image metadata, and
`images`/`prune` skip this cloud.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imagebuilder.clouds.huaweicloud.settings import HuaweicloudSettings
from imagebuilder.clouds.registry import Cloud, Plugin, RenderContext, cluster_api_image_name

if TYPE_CHECKING:
    from imagebuilder.planner import Cell


class Huaweicloud(Cloud):
    name = "huaweicloud"
    guest_platform = "openstack"
    settings = HuaweicloudSettings
    order = 43
    builder = "huaweicloud-ecs"
    packer_builtin = False
    image_builder_names = ("huaweicloud",)
    plugin = Plugin("huaweicloud", "github.com/huaweicloud/huaweicloud", ">= 1.2.1")
    store_path = None
    image_location = "the Huawei Cloud region of clouds.huaweicloud, as a private system image"
    ssh_user = "root"  # Huawei Cloud's public images log in as root (image-builder's ssh_username)
    estimate_s = 900.0

    def image_name(self, os_id: str, kubernetes_version: str, arch: str) -> str:
        return cluster_api_image_name(os_id, kubernetes_version, arch)

    def packer_variables(self, cell: Cell, context: RenderContext) -> dict[str, Any]:
        settings = cell.settings
        return {
            "huaweicloud_region": settings["region"],
            "huaweicloud_availability_zone": settings["availability_zone"],
            "huaweicloud_flavor": settings["flavor"],
            "huaweicloud_vpc_id": settings["vpc_id"],
            "huaweicloud_subnet_id": settings["subnet_id"],
            "huaweicloud_volume_size_gb": settings["volume_size_gb"],
            "huaweicloud_volume_type": settings["volume_type"],
            "huaweicloud_eip_type": settings["eip_type"],
            "huaweicloud_eip_bandwidth_size": settings["eip_bandwidth_size"],
            "huaweicloud_source_image_name": cell.base_image["image_filter_name"],
        }


CLOUD = Huaweicloud()
