"""AWS: AMIs built with amazon-ebs, copied to regions, shared, named as Cluster API's capa."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from imagebuilder.clouds.aws.settings import AwsSettings
from imagebuilder.clouds.registry import Cloud, Plugin, RenderContext
from imagebuilder.osinfo import DEFAULT_ARCH

if TYPE_CHECKING:
    from imagebuilder.baseimages import Resolver
    from imagebuilder.planner import Cell


ARM64_INSTANCE_TYPE = "instance_type_arm64"  # settings.py: the build instance of arm64 cells


def instance_type(settings: dict[str, Any], arch: str) -> str:
    """The build instance type of a cell of this arch (an arm64 AMI boots on Graviton only)."""
    return str(settings[ARM64_INSTANCE_TYPE] if arch == "arm64" else settings["instance_type"])


class Aws(Cloud):
    name = "aws"
    settings = AwsSettings
    order = 1
    builder = "amazon-ebs"
    image_builder_names = ("ami",)
    plugin = Plugin("amazon", "github.com/hashicorp/amazon", ">= 1.3.0")
    store_path = "imagebuilder.clouds.aws.store:AwsImageStore"
    sdk_extra = "aws"
    estimate_s = 900.0
    root_device_name = "/dev/sda1"

    def build_settings(self, settings: dict[str, Any], arch: str = DEFAULT_ARCH) -> dict[str, Any]:
        # The build region shapes the image (its base AMI); the regions copied to do not. The
        # instance type is the one of the cell's arch (so an amd64 cell's key is what it was).
        shaping = super().build_settings(settings, arch)
        shaping.pop(ARM64_INSTANCE_TYPE, None)
        return {**shaping, "instance_type": instance_type(settings, arch), "build_region": settings["regions"][0]}

    def copies_per_image(self, settings: dict[str, Any]) -> int:
        return max(1, len(settings.get("regions", [])))

    def image_name(self, os_id: str, kubernetes_version: str, arch: str) -> str:
        # image-builder's capa-ami-<build name>: its arm64 build names end in -arm64.
        return f"capa-ami-{os_id}{'' if arch == DEFAULT_ARCH else f'-{arch}'}-v{kubernetes_version}-{{timestamp}}"

    def packer_variables(self, cell: Cell, context: RenderContext) -> dict[str, Any]:
        settings = cell.settings
        return {
            "aws_region": settings["regions"][0],
            "aws_instance_type": instance_type(settings, cell.arch),
            "aws_subnet_id": settings["subnet_id"] or "",
            "aws_volume_size_gb": settings["volume_size_gb"],
            "aws_root_device_name": self.root_device_name,
            "aws_source_ami_name": cell.base_image["name_filter"],
            "aws_source_ami_owner": cell.base_image["owner"],
            **({"aws_source_ami": context.resolved["ami"]} if context.resolved else {}),
        }

    def artifact_ids(self, builder_type: str, artifact_id: str) -> dict[str, str]:
        """amazon-ebs gives 'us-east-1:ami-1,eu-west-1:ami-2'; another builder (a test's null) one id."""
        if builder_type != self.builder:
            return super().artifact_ids(builder_type, artifact_id)
        pairs = (part.split(":", 1) for part in artifact_id.split(",") if part)
        return {region: image_id for region, image_id in pairs}

    def gather_inventory(self, store: Any, min_orphan_age: timedelta, deadline: Any) -> Any:
        """Every region's images, instances, launch templates and orphan snapshots in batched calls."""
        from imagebuilder.clouds.aws import usage

        return usage.gather(store, min_orphan_age, deadline)

    def resolve_base(self, resolver: Resolver, cell: Cell) -> dict[str, Any]:
        """DescribeImages (owner + name filter, available): the newest CreationDate's AMI id."""
        region = cell.settings["regions"][0]  # the build region; copies are made from its image
        reference = {"owner": cell.base_image["owner"], "name_filter": cell.base_image["name_filter"]}

        def ask() -> dict[str, Any]:
            images = resolver.store(cell, region).call(
                "ec2", region, "describe_images", reference["name_filter"], Owners=[reference["owner"]],
                Filters=[{"Name": "name", "Values": [reference["name_filter"]]},
                         {"Name": "state", "Values": ["available"]}]).get("Images", [])
            if not images:
                return {}
            newest = max(images, key=lambda image: (image.get("CreationDate", ""), image["ImageId"]))
            return {"ami": newest["ImageId"], "name": newest.get("Name", "")}

        found = resolver.lookup(self.name, region, reference, ask)
        if not found:
            raise resolver.unresolvable(cell, f"no available AMI of owner {reference['owner']} matches in {region}",
                                        "check the name filter in imagebuilder/osinfo.py and the region")
        return found


CLOUD = Aws()
