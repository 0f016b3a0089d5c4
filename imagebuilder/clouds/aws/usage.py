"""AWS inventory for retention: every image, what uses it, and orphan snapshots, per region.

``AwsImageStore.in_use`` answers for one image and lists every launch template each time;
over thousands of images that is thousands of calls. Here the references are gathered
once per region and every image is answered from that set:

- describe_images (Owners=self, IncludeDeprecated): our images, and every snapshot any
  image of the account still references;
- describe_instances (every state but terminated): instance -> image;
- describe_launch_templates, then describe_launch_template_versions per template (any
  version counts; ``resolve:ssm:`` image ids are resolved with get_parameters);
- describe_launch_configurations and describe_auto_scaling_groups (a group is named as a
  user of the images of its configuration or template);
- describe_snapshots (Owners=self, with our build-key tag): snapshots of ours that no
  image references any more are orphans. The snapshot ids the image listing already holds are
  handed to this listing's parser, which skips each referenced snapshot at its id: the sweep
  reads only the few unreferenced ones in full, not every snapshot a second time.

A few requests per region plus one per launch template. When any reference listing fails
(a denied permission, say), no image of that region can be called unused: all of them
are kept, with the reason.

The two big listings (images and snapshots, thousands of items) are read from the XML by
ElementTree directly: botocore's generic shape-walking parser costs ~0.3 ms per image,
more than everything else together. Signing, endpoints, retries and errors stay
botocore's: a ``before-parse`` handler, registered only around these calls, hands botocore
a body with just the request id and the next token, and the items it parsed itself (the
fields ``record_of`` reads) as the response's list.
"""

from __future__ import annotations

import gc
import logging
import xml.etree.ElementTree as ElementTree
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any
from xml.sax.saxutils import escape

from imagebuilder.clouds import CloudError
from imagebuilder.clouds.aws.store import (
    BUILD_KEY_TAG,
    LIVE_INSTANCE_STATES,
    AwsImageStore,
    record_of,
)
from imagebuilder.retention import NO_DEADLINE, Deadline, Inventory, Orphan, is_candidate

log = logging.getLogger(__name__)

SSM_PREFIX = "resolve:ssm:"


def gather(store: AwsImageStore, min_orphan_age: timedelta = timedelta(0),
           deadline: Deadline = NO_DEADLINE) -> Inventory:
    inventory = Inventory(cloud="aws", store=store, sweep=lambda orphan: delete_snapshot(store, orphan))
    for region in dict.fromkeys(store.settings.regions):
        if deadline.passed:
            inventory.errors.append(f"aws {region}: {deadline.reason()}")
            continue
        try:
            store.check_regions([region])
        except CloudError as error:  # one mistyped region does not hold the others back
            inventory.errors.append(str(error))
            continue
        try:
            _gather_region(store, region, inventory, min_orphan_age)
        except Exception as error:  # noqa: BLE001 - an SDK's surprise: this region's one line, the others go on
            inventory.errors.append(f"aws {region}: {type(error).__name__}: {' '.join(str(error).split())}"[:400])
    return inventory


def _gather_region(store: AwsImageStore, region: str, inventory: Inventory, min_orphan_age: timedelta) -> None:
    try:
        with fast_listing(store, region, "DescribeImages", "imagesSet", "Images", _image_of):
            images = store.paginate("ec2", region, "describe_images", "Images", Owners=["self"],
                                    IncludeDeprecated=True)
    except CloudError as error:
        inventory.errors.append(str(error))
        return
    records = [record_of(region, image) for image in images]
    ours = [record for record in records if is_candidate(record)]
    inventory.records.extend(ours)
    inventory.foreign_count += len(records) - len(ours)
    try:
        users = images_in_use(store, region)
    except CloudError as error:
        for record in ours:
            inventory.in_use[record.image_id] = None
            inventory.unknown_reasons[record.image_id] = str(error)
    else:
        for record in ours:
            inventory.in_use[record.image_id] = users.get(record.image_id, [])
    referenced = {snapshot for record in records for snapshot in record.extra.get("snapshots", [])}
    try:
        inventory.orphans.extend(orphan_snapshots(store, region, referenced, min_orphan_age))
    except CloudError as error:
        inventory.errors.append(str(error))


def images_in_use(store: AwsImageStore, region: str) -> dict[str, list[str]]:
    """image id -> what refers to it, for every image referenced in the region; raises CloudError."""
    users: dict[str, list[str]] = defaultdict(list)
    for reservation in store.paginate("ec2", region, "describe_instances", "Reservations", "(in-use check)",
                                      Filters=[{"Name": "instance-state-name", "Values": LIVE_INSTANCE_STATES}],
                                      PaginationConfig={"PageSize": 1000}):
        for instance in reservation.get("Instances", []):
            if instance.get("ImageId"):
                state = instance.get("State", {}).get("Name", "")
                users[instance["ImageId"]].append(f"{instance['InstanceId']} ({state})" if state else
                                                  instance["InstanceId"])
    template_images = _launch_template_images(store, region, users)
    configuration_images: dict[str, str] = {}
    for configuration in store.paginate("autoscaling", region, "describe_launch_configurations",
                                        "LaunchConfigurations", "(in-use check)"):
        if configuration.get("ImageId"):
            configuration_images[configuration["LaunchConfigurationName"]] = configuration["ImageId"]
            users[configuration["ImageId"]].append(f"launch configuration {configuration['LaunchConfigurationName']}")
    for group in store.paginate("autoscaling", region, "describe_auto_scaling_groups", "AutoScalingGroups",
                                "(in-use check)"):
        images: set[str] = set()
        if group.get("LaunchConfigurationName") in configuration_images:
            images.add(configuration_images[group["LaunchConfigurationName"]])
        for template in _group_templates(group):
            images.update(template_images.get(template, ()))
        for image_id in sorted(images):
            users[image_id].append(f"auto scaling group {group['AutoScalingGroupName']}")
    return dict(users)


def _launch_template_images(store: AwsImageStore, region: str, users: dict[str, list[str]]) -> dict[str, set[str]]:
    """Every version of every launch template; template id and name -> images its versions name."""
    by_template: dict[str, set[str]] = defaultdict(set)
    pending_ssm: dict[str, list[tuple[str, str, int]]] = defaultdict(list)
    for template in store.paginate("ec2", region, "describe_launch_templates", "LaunchTemplates", "(in-use check)",
                                   PaginationConfig={"PageSize": 200}):
        template_id, name = template["LaunchTemplateId"], template.get("LaunchTemplateName", "")
        for version in store.paginate("ec2", region, "describe_launch_template_versions", "LaunchTemplateVersions",
                                      template_id, LaunchTemplateId=template_id, PaginationConfig={"PageSize": 200}):
            image_id = version.get("LaunchTemplateData", {}).get("ImageId")
            if not image_id:
                continue
            if image_id.startswith(SSM_PREFIX):
                pending_ssm[image_id[len(SSM_PREFIX):]].append((template_id, name, version["VersionNumber"]))
                continue
            _add_template_user(users, by_template, image_id, template_id, name, version["VersionNumber"])
    for parameter, image_id in _resolve_parameters(store, region, sorted(pending_ssm)).items():
        for template_id, name, number in pending_ssm[parameter]:
            _add_template_user(users, by_template, image_id, template_id, name, number)
    return by_template


def _add_template_user(users: dict[str, list[str]], by_template: dict[str, set[str]], image_id: str,
                       template_id: str, name: str, number: int) -> None:
    users[image_id].append(f"launch template {template_id} version {number}")
    by_template[template_id].add(image_id)
    if name:
        by_template[name].add(image_id)


def _resolve_parameters(store: AwsImageStore, region: str, names: list[str]) -> dict[str, str]:
    """SSM parameter -> image id; a parameter that cannot be read makes the whole check fail."""
    resolved: dict[str, str] = {}
    for start in range(0, len(names), 10):
        batch = names[start:start + 10]
        answer = store.call("ssm", region, "get_parameters", "(in-use check)", Names=batch)
        if answer.get("InvalidParameters"):
            raise CloudError(f"aws {region}: launch templates name SSM parameters that cannot be read "
                             f"({', '.join(answer['InvalidParameters'])}) | fix: allow ssm:GetParameters or fix "
                             "the templates")
        resolved.update({p["Name"]: p["Value"] for p in answer.get("Parameters", [])})
    return resolved


def _group_templates(group: dict[str, Any]) -> set[str]:
    specs = [group.get("LaunchTemplate") or {}]
    policy = group.get("MixedInstancesPolicy", {}).get("LaunchTemplate", {})
    specs.append(policy.get("LaunchTemplateSpecification") or {})
    specs += [o.get("LaunchTemplateSpecification") or {} for o in policy.get("Overrides", [])]
    return {value for spec in specs for value in (spec.get("LaunchTemplateId"), spec.get("LaunchTemplateName"))
            if value}


def orphan_snapshots(store: AwsImageStore, region: str, referenced: set[str],
                     min_age: timedelta = timedelta(0)) -> list[Orphan]:
    """Our snapshots (build-key tag) that no image of the account references, older than min_age.

    ``referenced``: every snapshot id the region's images name (from the image listing)."""
    now = datetime.now(timezone.utc)
    with fast_listing(store, region, "DescribeSnapshots", "snapshotSet", "Snapshots",
                      _unreferenced_snapshot_of(referenced)):
        snapshots = store.paginate("ec2", region, "describe_snapshots", "Snapshots", "(orphan check)",
                                   OwnerIds=["self"], Filters=[{"Name": "tag-key", "Values": [BUILD_KEY_TAG]}])
    orphans = []
    for snapshot in snapshots:
        if snapshot["SnapshotId"] in referenced:
            continue
        started = snapshot.get("StartTime")
        if isinstance(started, datetime) and now - started < min_age:
            continue
        tags = {t["Key"]: t.get("Value", "") for t in snapshot.get("Tags") or []}
        orphans.append(Orphan("aws", region, snapshot["SnapshotId"],
                              f"snapshot of build {tags.get(BUILD_KEY_TAG, '?')[:12]}, no image references it"))
    return orphans


def delete_snapshot(store: AwsImageStore, orphan: Orphan) -> list[str]:
    try:
        store.call("ec2", orphan.region, "delete_snapshot", orphan.resource_id, SnapshotId=orphan.resource_id)
    except CloudError as error:
        if "InvalidSnapshot.NotFound" in str(error):
            return []
        raise
    return [orphan.resource_id]



# -- the fast listing ------------------------------------------------------------------------


@contextmanager
def fast_listing(store: AwsImageStore, region: str, operation: str, set_name: str, result_key: str,
                 item_of: Callable[[ElementTree.Element, str], dict[str, Any] | None]) -> Iterator[None]:
    """While active, `operation` answers of the region's EC2 client are parsed by `item_of`
    (None leaves the item out of the response's list)."""
    events = store.client("ec2", region).meta.events
    event = f"before-parse.ec2.{operation}"
    unique = f"imagebuilder-fast-{operation}"

    def parse(response_dict: dict[str, Any], customized_response_dict: dict[str, Any], **_: Any) -> None:
        if response_dict.get("status_code", 500) >= 300 or not response_dict.get("body"):
            return  # errors go to botocore's own parser
        collecting = gc.isenabled()
        gc.disable()  # a million short-lived elements: the cycle collector would rescan the heap for each batch
        try:
            try:
                root = ElementTree.fromstring(response_dict["body"])
            except ElementTree.ParseError:
                return  # not XML (a proxy's page): botocore's parser raises, the store retries
            ns = root.tag[:root.tag.index("}") + 1] if root.tag.startswith("{") else ""
            found = root.find(f"{ns}{set_name}")
            items = (item_of(item, ns) for item in (found if found is not None else ()))
            customized_response_dict[result_key] = [item for item in items if item is not None]
            token = root.findtext(f"{ns}nextToken")
            request_id = root.findtext(f"{ns}requestId") or ""
            name = root.tag[len(ns):]
            del root, found
        finally:
            if collecting:
                gc.enable()
        xmlns = f' xmlns="{ns[1:-1]}"' if ns else ""
        response_dict["body"] = (f"<{name}{xmlns}><requestId>{escape(request_id)}</requestId>"
                                 + (f"<nextToken>{escape(token)}</nextToken>" if token else "")
                                 + f"</{name}>").encode()

    events.register(event, parse, unique_id=unique)
    try:
        yield
    finally:
        events.unregister(event, unique_id=unique)


def _children(element: ElementTree.Element, ns: str) -> dict[str, ElementTree.Element]:
    """Child elements by local name, one pass, no ElementPath (which costs more than the parse)."""
    cut = len(ns)
    return {child.tag[cut:]: child for child in element}


def _tags(tag_set: ElementTree.Element | None, ns: str) -> list[dict[str, str]]:
    if tag_set is None:
        return []
    key_tag, value_tag = f"{ns}key", f"{ns}value"
    tags = []
    for item in tag_set:
        key = value = ""
        for part in item:
            if part.tag == key_tag:
                key = part.text or ""
            elif part.tag == value_tag:
                value = part.text or ""
        tags.append({"Key": key, "Value": value})
    return tags


def _text(fields: dict[str, ElementTree.Element], name: str) -> str:
    element = fields.get(name)
    return (element.text or "") if element is not None else ""


def _image_of(item: ElementTree.Element, ns: str) -> dict[str, Any]:
    """The DescribeImages fields record_of reads, as botocore would name them."""
    fields = _children(item, ns)
    mappings = []
    for mapping in fields.get("blockDeviceMapping", ()):
        parts = _children(mapping, ns)
        ebs = parts.get("ebs")
        snapshot = _text(_children(ebs, ns), "snapshotId") if ebs is not None else ""
        if snapshot:
            mappings.append({"DeviceName": _text(parts, "deviceName"), "Ebs": {"SnapshotId": snapshot}})
    image: dict[str, Any] = {
        "ImageId": _text(fields, "imageId"),
        "Name": _text(fields, "name"),
        "CreationDate": _text(fields, "creationDate") or None,
        "State": _text(fields, "imageState"),
        "Public": _text(fields, "isPublic") == "true",
        "OwnerId": _text(fields, "imageOwnerId"),
        "Tags": _tags(fields.get("tagSet"), ns),
        "BlockDeviceMappings": mappings,
    }
    if _text(fields, "deprecationTime"):
        image["DeprecationTime"] = _text(fields, "deprecationTime")
    return image


def _unreferenced_snapshot_of(referenced: set[str]) -> Callable[[ElementTree.Element, str], dict[str, Any] | None]:
    """A snapshot parser that stops at the id of a snapshot an image references (None)."""
    def parse(item: ElementTree.Element, ns: str) -> dict[str, Any] | None:
        id_tag = f"{ns}snapshotId"
        for child in item:
            if child.tag == id_tag:
                if child.text in referenced:
                    return None
                break
        return _snapshot_of(item, ns)

    return parse


def _snapshot_of(item: ElementTree.Element, ns: str) -> dict[str, Any]:
    fields = _children(item, ns)
    started = _text(fields, "startTime")
    return {
        "SnapshotId": _text(fields, "snapshotId"),
        "StartTime": datetime.fromisoformat(started.replace("Z", "+00:00")) if started else None,
        "Tags": _tags(fields.get("tagSet"), ns),
    }
