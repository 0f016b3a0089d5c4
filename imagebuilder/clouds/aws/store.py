"""AWS: publish amazon-ebs AMIs to every region of a cell, tagged, shared as configured.

After Packer's amazon-ebs build the AMI exists in the build region. `publish`:

1. checks the regions and waits for the AMI (a waiter);
2. tags it and its snapshots with the metadata (register_image's own TagSpecifications
   are not relied on: tags are applied with create_tags, which every emulator honours);
3. copies it to each other region, unless a copy with the same build key (or the same
   name, which AWS keeps unique per region) exists there already: re-running never
   duplicates an image;
4. waits for every copy, tags it and its snapshots;
5. sets launch permissions exactly as configured: private unless `ami_users` or
   `ami_groups: [all]` say otherwise (image-builder defaults to public; we do not);
6. optionally points an SSM parameter `<prefix>/<os>/<minor>/<arch>` at the newest AMI;
   stores the build's SBOM and provenance in S3 when `sbom_bucket` is set (the SBOM's
   sha256 is in the tags: `imagebuilder-sbom-sha256`);
7. last, once every step above succeeded, tags every copy `imagebuilder-published=true`.

`reconcile` runs the same steps from the copies that exist (no artifact needed): a region
or an account added to the matrix reaches the image, a publish cut short is completed. Each
step looks before it writes, so a second run changes nothing; each change is noted.

Credentials come from boto3's own chain (environment, profiles, instance roles), and the
endpoint from AWS_ENDPOINT_URL when set. Throttling and 5xx answers are retried with
exponential backoff and jitter; other failures become one-line CloudErrors.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, WaiterError
from botocore.parsers import ResponseParserError

from imagebuilder.artifact import Artifact
from imagebuilder.clouds import CloudError, ImageFilter, ImageRecord, ImageStore, sort_newest_first, utcnow
from imagebuilder.clouds.aws.settings import AwsSettings
from imagebuilder.config import SDK_BACKOFF_S, SDK_CONNECT_TIMEOUT_S, SDK_MAX_ATTEMPTS, SDK_READ_TIMEOUT_S
from imagebuilder.metadata import PUBLISHED_TAG, ImageMetadata, tag_key
from imagebuilder.retry import retrying
from imagebuilder.textline import one_line
from imagebuilder.timeparse import EPOCH, parse_time

log = logging.getLogger(__name__)
T = TypeVar("T")

BUILD_KEY_TAG = tag_key("build_key")
RETRYABLE_CODES = frozenset({
    "RequestLimitExceeded", "Throttling", "ThrottlingException", "TooManyRequestsException",
    "RequestThrottled", "ServiceUnavailable", "Unavailable", "InternalError", "InternalFailure", "RequestTimeout",
})
RETRYABLE_STATUS = frozenset({500, 502, 503, 504})
DENIED_CODES = frozenset({"UnauthorizedOperation", "AccessDenied", "AccessDeniedException", "AuthFailure",
                          "OperationNotPermitted"})
VANISHED_CODES = frozenset({"InvalidAMIID.NotFound", "InvalidAMIID.Unavailable", "InvalidSnapshot.NotFound"})
LIVE_INSTANCE_STATES = ["pending", "running", "shutting-down", "stopping", "stopped"]
PUBLIC_GROUP = "all"
# Without MaxResults these calls answer with everything at once; with it, in pages (NextToken).
PAGE_SIZES = {"describe_images": 1000, "describe_instances": 1000}


class AwsImageStore(ImageStore):
    cloud = "aws"
    title = "AWS"
    region_setting = "regions"
    attestation_setting = "sbom_bucket"
    attestation_scheme = "s3"

    def __init__(self, settings: AwsSettings, session: boto3.session.Session | None = None, *,
                 waiter_delay: int = 15, waiter_max_attempts: int = 240, max_attempts: int = SDK_MAX_ATTEMPTS,
                 backoff: float = SDK_BACKOFF_S, sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings = settings
        self.session = session or boto3.session.Session()
        self.waiter_delay = waiter_delay
        self.waiter_max_attempts = waiter_max_attempts
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.sleep = sleep
        self._clients: dict[tuple[str, str], Any] = {}

    # -- clients and calls -------------------------------------------------------------

    def client(self, service: str, region: str) -> Any:
        """One client per (service, region), reused; botocore's own retries cover the transport.

        Every client has connect and read timeouts: an endpoint that accepts and never answers
        costs a few attempts of SDK_READ_TIMEOUT_S, not forever."""
        key = (service, region)
        if key not in self._clients:
            config = Config(retries={"mode": "standard", "max_attempts": 3}, user_agent_extra="imagebuilder",
                            connect_timeout=SDK_CONNECT_TIMEOUT_S, read_timeout=SDK_READ_TIMEOUT_S)
            try:
                self._clients[key] = self.session.client(service, region_name=region, config=config)
            except ValueError as exc:  # botocore: "Invalid endpoint: ..." (AWS_ENDPOINT_URL, a profile's endpoint_url)
                raise CloudError(f"aws {region}: {service}: {one_line(str(exc))} "
                                 "| fix: set AWS_ENDPOINT_URL to an http(s) URL such as https://ec2.example:443, "
                                 "or unset it") from None
        return self._clients[key]

    def call(self, service: str, region: str, operation: str, subject: str = "", **params: Any) -> Any:
        """client.<operation>(**params), retried on throttling; failures as one-line CloudErrors."""
        method = getattr(self.client(service, region), operation)
        return self._retrying(lambda: method(**params), region, operation, subject)

    def paginate(self, service: str, region: str, operation: str, result_key: str, subject: str = "",
                 **params: Any) -> list[Any]:
        """Every item of a paginated listing; throttled part-way, the whole listing is retried."""
        paginator = self.client(service, region).get_paginator(operation)
        if operation in PAGE_SIZES:
            params = {**params, "PaginationConfig": {"PageSize": PAGE_SIZES[operation]}}

        def run() -> list[Any]:
            return [item for page in paginator.paginate(**params) for item in page.get(result_key, [])]

        return self._retrying(run, region, operation, subject)

    def _retrying(self, run: Callable[[], T], region: str, operation: str, subject: str) -> T:
        def retrying_in(exc: Exception, delay: float) -> None:
            if isinstance(exc, ClientError):
                log.info("aws %s: %s throttled (%s), retrying in %.1fs", region, operation, _code(exc), delay)
            else:
                log.info("aws %s: %s answered something unparseable, retrying in %.1fs", region, operation, delay)

        try:
            return retrying(run, attempts=self.max_attempts, first_delay=self.backoff, retryable=_retryable,
                            sleep=self.sleep, on_retry=retrying_in)
        except ClientError as exc:
            raise aws_error(exc, region, operation, subject) from None
        except ResponseParserError as exc:
            first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
            raise CloudError(f"aws {region}: {operation}" + (f" {subject}" if subject else "")
                             + f": the endpoint answered something that is not an AWS response, "
                             f"{self.max_attempts} times ({first[:160]}) "
                             "| fix: check AWS_ENDPOINT_URL, proxies (HTTPS_PROXY) and the network") from None
        except WaiterError:
            raise
        except NoCredentialsError:
            raise CloudError(f"aws {region}: {operation}: no AWS credentials found "
                             "| fix: export AWS_PROFILE (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), "
                             "or run where an instance role applies") from None
        except BotoCoreError as exc:
            raise CloudError(f"aws {region}: {operation} failed: {one_line(str(exc))} "
                             "| fix: check the network, AWS_ENDPOINT_URL and the credentials") from None

    def lock_key(self) -> str:
        """The AWS account (sts GetCallerIdentity) at this endpoint."""
        region = self.settings.regions[0]
        endpoint = self.client("sts", region).meta.endpoint_url
        try:
            account = self.call("sts", region, "get_caller_identity")["Account"]
        except (CloudError, KeyError, TypeError):  # unreachable, or not an STS answer: the listing says why
            account = "unknown-account"
        return f"aws:{account}@{endpoint}"

    def check_access(self) -> None:
        """sts GetCallerIdentity in the build region, at the configured endpoint, with short timeouts."""
        region = self.settings.regions[0]
        config = Config(connect_timeout=5, read_timeout=10, retries={"mode": "standard", "total_max_attempts": 2},
                        user_agent_extra="imagebuilder")
        sts = self.session.client("sts", region_name=region, config=config)
        self._retrying(sts.get_caller_identity, region, "get_caller_identity", "")

    # -- publish ---------------------------------------------------------------------------

    def publish(self, artifact: Artifact) -> dict[str, str]:
        if artifact.cloud != "aws":
            raise CloudError(f"{artifact.cell_id}: a {artifact.cloud} artifact cannot be published to AWS")
        regions = self.check_regions(self.settings.regions)
        source_region, source_id = source_of(artifact)
        self.check_regions([source_region])
        tags = image_tags(artifact)
        source = self.wait_available(source_region, source_id)
        ids = {source_region: source_id}
        records = {source_region: source}
        for region, image_id in artifact.ids.items():  # regions Packer copied to itself (ami_regions)
            if region not in ids:
                ids[region] = image_id
                records[region] = self.wait_available(region, image_id)
        for record in records.values():  # tagged first: should a copy fail, the next run finds the build by key
            self._ensure_tags(record, tags)
        for region in regions:
            if region not in ids:
                copied = self._copy_once(source, region, artifact)
                if copied:
                    ids[region] = copied
        done: list[ImageRecord] = []
        for region, image_id in ids.items():
            record = records.get(region) or self.wait_available(region, image_id)
            if region not in records:
                self._ensure_tags(record, tags)
            self.share(record, self.settings.ami_users, PUBLIC_GROUP in self.settings.ami_groups,
                       groups=[g for g in self.settings.ami_groups if g != PUBLIC_GROUP])
            done.append(record)
        if self.settings.ssm_parameter_prefix:
            for region, image_id in ids.items():
                self.update_parameter(region, image_id, artifact.metadata)
        self.store_attestations(artifact, source_region)
        self.mark_published(done)
        return ids

    def _put_object(self, key: str, data: bytes) -> None:
        bucket = str(self.settings.sbom_bucket)
        self.call("s3", self.settings.regions[0], "put_object", f"s3://{bucket}/{key}", Bucket=bucket, Key=key,
                  Body=data, ContentType="application/json")

    def _get_object(self, key: str) -> bytes | None:
        bucket = str(self.settings.sbom_bucket)
        try:
            answer = self.call("s3", self.settings.regions[0], "get_object", f"s3://{bucket}/{key}", Bucket=bucket,
                               Key=key)
        except CloudError as error:
            if "NoSuchKey" in str(error) or "Not Found" in str(error) or "404" in str(error):
                return None
            raise
        return bytes(answer["Body"].read())

    def _reconcile(self, records: list[ImageRecord]) -> None:
        """publish again from the copies that exist: the copy in the first configured region is the source."""
        order = {region: index for index, region in enumerate(self.settings.regions)}
        ranked = sorted(records, key=lambda r: (r.state != "available", order.get(r.region, len(order)), r.region))
        source = ranked[0]
        assert source.metadata is not None
        ids = {source.region: source.image_id, **{r.region: r.image_id for r in ranked[1:]}}
        self.publish(Artifact(cell_id=source.metadata.cell, cloud="aws", build_key=source.metadata.build_key,
                              image_name=source.tags.get("Name") or source.name, metadata=source.metadata, ids=ids))

    def _ensure_tags(self, record: ImageRecord, tags: dict[str, str]) -> None:
        """Our tags on the AMI and on each of its snapshots; only a resource missing one is tagged."""
        resources = {record.image_id: record.tags}
        snapshots = record.extra.get("snapshots", [])
        if snapshots:
            answer = self.call("ec2", record.region, "describe_snapshots", record.image_id, SnapshotIds=snapshots)
            resources.update({s["SnapshotId"]: {t["Key"]: t.get("Value", "") for t in s.get("Tags") or []}
                              for s in answer.get("Snapshots", [])})
        for resource, have in resources.items():
            missing = {key: value for key, value in tags.items() if have.get(key) != value}
            if missing and self.change(record.region, resource, "tagged " + ", ".join(sorted(missing))):
                self.call("ec2", record.region, "create_tags", resource, Resources=[resource],
                          Tags=[{"Key": key, "Value": value} for key, value in missing.items()])

    def _copy_once(self, source: ImageRecord, region: str, artifact: Artifact) -> str | None:
        """The id of this build's copy in the region: an existing one, or a new copy (None on a dry run)."""
        existing = self.existing_copy(region, artifact.build_key, source.name)
        if existing:
            log.info("aws %s: %s already has a copy of %s", region, existing, source.image_id)
            return existing
        if self.dry_run:
            self.change(region, source.name, f"copy from {source.region} {source.image_id}")
            return None
        log.info("aws %s: copying %s from %s", region, source.image_id, source.region)
        try:
            answer = self.call("ec2", region, "copy_image", source.image_id, SourceRegion=source.region,
                               SourceImageId=source.image_id, Name=source.name,
                               Description=f"imagebuilder {artifact.cell_id} {artifact.build_key[:12]}")
        except CloudError as error:
            if "InvalidAMIName.Duplicate" not in str(error):
                raise
            found = self.existing_copy(region, artifact.build_key, source.name)
            if not found:
                raise
            return found
        self.change(region, str(answer["ImageId"]), f"copied from {source.region} {source.image_id}")
        return str(answer["ImageId"])

    def existing_copy(self, region: str, build_key: str, name: str) -> str | None:
        """A copy in this region found by build key tag, else by name (a copy not yet tagged)."""
        for filters in ([{"Name": f"tag:{BUILD_KEY_TAG}", "Values": [build_key]}],
                        [{"Name": "name", "Values": [name]}]):
            images = self.paginate("ec2", region, "describe_images", "Images", Owners=["self"],
                                   IncludeDeprecated=True, Filters=filters)
            images = [image for image in images if image.get("State") not in ("deregistered", "failed")]
            if images:
                return str(sorted(images, key=lambda i: i.get("CreationDate", ""))[0]["ImageId"])
        return None

    def check_regions(self, regions: Iterable[str]) -> list[str]:
        known: set[str] = set()
        for partition in self.session.get_available_partitions():
            known.update(self.session.get_available_regions("ec2", partition_name=partition))
        unknown = [region for region in regions if region not in known]
        if unknown:
            raise CloudError(f"clouds.aws.regions: unknown region '{unknown[0]}' "
                             f"| fix: use an AWS region name such as us-east-1 or eu-west-1")
        return list(dict.fromkeys(regions))

    def wait_available(self, region: str, image_id: str) -> ImageRecord:
        """Wait (with EC2's ImageAvailable waiter) until the AMI is available; explain why not."""
        current = self.describe(region, image_id)  # gone or broken already: say so without waiting
        if current.state == "available":
            return current
        if current.state in ("deregistered", "failed"):
            return self._raise_waiter_error(region, image_id, current)
        waiter = self.client("ec2", region).get_waiter("image_available")
        try:
            self._retrying(lambda: waiter.wait(ImageIds=[image_id], WaiterConfig={
                "Delay": self.waiter_delay, "MaxAttempts": self.waiter_max_attempts}), region, "wait", image_id)
        except WaiterError as exc:
            raise self._waiter_error(exc, region, image_id) from None
        return self.describe(region, image_id)

    def _raise_waiter_error(self, region: str, image_id: str, current: ImageRecord) -> ImageRecord:
        answer = {"Images": [{"ImageId": image_id, "State": current.state,
                              "StateReason": {"Message": current.extra.get("state_reason", "")}}]}
        raise self._waiter_error(WaiterError("ImageAvailable", "not available", answer), region, image_id)

    def _waiter_error(self, exc: WaiterError, region: str, image_id: str) -> CloudError:
        response = exc.last_response or {}
        code = response.get("Error", {}).get("Code", "")
        images = response.get("Images") or []
        if code in VANISHED_CODES or (not code and not images) or images[0].get("State") == "deregistered":
            return CloudError(f"aws {region}: image {image_id} vanished while it was being copied or built "
                              "| fix: run publish again; it copies anew and never duplicates")
        if code:
            return aws_error(ClientError(response, "DescribeImages"), region, "describe_images", image_id)
        state = images[0].get("State", "?")
        reason = images[0].get("StateReason", {}).get("Message", "")
        if state == "failed":
            return CloudError(f"aws {region}: image {image_id} failed: {one_line(reason) or 'no reason given'} "
                              "| fix: deregister it and run publish again")
        return CloudError(f"aws {region}: image {image_id} still '{state}' after "
                          f"{self.waiter_delay * self.waiter_max_attempts}s | fix: run publish again later")

    def describe(self, region: str, image_id: str) -> ImageRecord:
        images = self.call("ec2", region, "describe_images", image_id, ImageIds=[image_id],
                           IncludeDeprecated=True)["Images"]
        if not images:
            raise CloudError(f"aws {region}: image {image_id} does not exist (or vanished) "
                             "| fix: check the id and region; run the build again if it was deleted")
        return record_of(region, images[0])

    # -- the interface ---------------------------------------------------------------------

    def list_images(self, filters: ImageFilter | None = None) -> list[ImageRecord]:
        filters = filters or ImageFilter()
        regions = self.check_regions([filters.region] if filters.region else self.settings.regions)
        aws_filters = [{"Name": f"tag:{tag_key(name)}", "Values": [value]} for name, value in (
            ("os", filters.os), ("kubernetes_minor", filters.kubernetes_minor), ("arch", filters.arch),
            ("build_key", filters.build_key)) if value is not None]
        if not filters.include_foreign:
            aws_filters.append({"Name": "tag-key", "Values": [BUILD_KEY_TAG]})
        records: list[ImageRecord] = []
        for region in regions:
            params: dict[str, Any] = {"Owners": ["self"], "IncludeDeprecated": True}
            if aws_filters:
                params["Filters"] = aws_filters
            images = self.paginate("ec2", region, "describe_images", "Images", **params)
            records.extend(r for r in (record_of(region, image) for image in images) if filters.matches(r))
        return sort_newest_first(records)

    def tag(self, image: ImageRecord, tags: dict[str, str]) -> None:
        resources = [image.image_id, *image.extra.get("snapshots", [])]
        self.call("ec2", image.region, "create_tags", image.image_id, Resources=resources,
                  Tags=[{"Key": key, "Value": value} for key, value in tags.items()])

    def copy_to_regions(self, image: ImageRecord, regions: Sequence[str]) -> dict[str, str]:
        if image.metadata is None:
            raise CloudError(f"aws {image.region}: {image.image_id} has no imagebuilder metadata to copy")
        artifact = Artifact(cell_id=image.metadata.cell, cloud="aws", build_key=image.metadata.build_key,
                            image_name=image.name, metadata=image.metadata, ids={image.region: image.image_id})
        ids: dict[str, str] = {}
        for region in self.check_regions(regions):
            ids[region] = image.image_id if region == image.region else self._copy_once(image, region, artifact)
        tags = {key: value for key, value in image.tags.items() if key != PUBLISHED_TAG}
        for region, image_id in ids.items():
            if region != image.region:
                self.tag(self.wait_available(region, image_id), tags)
        return ids

    def share(self, image: ImageRecord, principals: Sequence[str] = (), public: bool = False,
              groups: Sequence[str] = ()) -> None:
        """Launch permissions exactly as given (others removed); snapshots readable by the same accounts."""
        current = self.call("ec2", image.region, "describe_image_attribute", image.image_id,
                            ImageId=image.image_id, Attribute="launchPermission").get("LaunchPermissions", [])
        want = [{"UserId": user} for user in principals] + [{"Group": g} for g in groups]
        if public:
            want.append({"Group": PUBLIC_GROUP})
        have = [{k: v for k, v in p.items() if k in ("UserId", "Group")} for p in current]
        add = [p for p in want if p not in have]
        remove = [p for p in have if p not in want]
        if (add or remove) and self.change(image.region, image.image_id, "launch permissions " + _permission_diff(
                add, remove)):
            self.call("ec2", image.region, "modify_image_attribute", image.image_id, ImageId=image.image_id,
                      LaunchPermission={key: value for key, value in (("Add", add), ("Remove", remove)) if value})
        for snapshot in image.extra.get("snapshots", []):
            self._share_snapshot(image.region, snapshot, list(principals))

    def _share_snapshot(self, region: str, snapshot: str, users: list[str]) -> None:
        current = self.call("ec2", region, "describe_snapshot_attribute", snapshot, SnapshotId=snapshot,
                            Attribute="createVolumePermission").get("CreateVolumePermissions", [])
        have = {p["UserId"] for p in current if "UserId" in p}
        for operation, ids in (("add", sorted(set(users) - have)), ("remove", sorted(have - set(users)))):
            if ids and self.change(region, snapshot, f"create volume permission {operation} {', '.join(ids)}"):
                self.call("ec2", region, "modify_snapshot_attribute", snapshot, SnapshotId=snapshot,
                          Attribute="createVolumePermission", OperationType=operation, UserIds=ids)

    def deprecate(self, image: ImageRecord, when: datetime, end_of_life: datetime | None = None) -> None:
        """EnableImageDeprecation; AWS refuses past times, so a past `when` means one minute from now."""
        when = max(when if when.tzinfo else when.replace(tzinfo=timezone.utc), utcnow() + timedelta(minutes=1))
        if when.second or when.microsecond:  # AWS counts whole minutes
            when = when.replace(second=0, microsecond=0) + timedelta(minutes=1)
        self.call("ec2", image.region, "enable_image_deprecation", image.image_id, ImageId=image.image_id,
                  DeprecateAt=when)

    def delete(self, image: ImageRecord) -> list[str]:
        """Deregister the AMI, then delete its snapshots (DeregisterImage leaves them behind)."""
        current = self.describe(image.region, image.image_id)
        self.call("ec2", image.region, "deregister_image", image.image_id, ImageId=image.image_id)
        deleted = [image.image_id]
        for snapshot in current.extra.get("snapshots", []):
            try:
                self.call("ec2", image.region, "delete_snapshot", snapshot, SnapshotId=snapshot)
                deleted.append(snapshot)
            except CloudError as error:
                if "InvalidSnapshot.InUse" not in str(error) and "InvalidSnapshot.NotFound" not in str(error):
                    raise
                log.warning("aws %s: kept snapshot %s: %s", image.region, snapshot, error)
        return deleted

    def shared_with(self, image: ImageRecord) -> list[str]:
        """Who else may launch the image: its launch permissions ('account 1111...', 'group all',
        'organization arn:...'); raises CloudError when they cannot be read."""
        permissions = self.call("ec2", image.region, "describe_image_attribute", image.image_id,
                                ImageId=image.image_id, Attribute="launchPermission").get("LaunchPermissions", [])
        names = {"UserId": "account", "Group": "group", "OrganizationArn": "organization",
                 "OrganizationalUnitArn": "organizational unit"}
        return [f"{names[key]} {value}" for permission in permissions for key, value in permission.items()
                if key in names]

    def in_use(self, image: ImageRecord) -> list[str] | None:
        """Instances (not terminated), launch template versions, launch configurations and their ASGs."""
        region, image_id = image.region, image.image_id
        try:
            users = [f"instance {i['InstanceId']}" for r in self.paginate(
                "ec2", region, "describe_instances", "Reservations", image_id,
                Filters=[{"Name": "image-id", "Values": [image_id]},
                         {"Name": "instance-state-name", "Values": LIVE_INSTANCE_STATES}]) for i in r["Instances"]]
            templates = set()
            for template in self.paginate("ec2", region, "describe_launch_templates", "LaunchTemplates", image_id):
                versions = self.paginate("ec2", region, "describe_launch_template_versions",
                                         "LaunchTemplateVersions", image_id,
                                         LaunchTemplateId=template["LaunchTemplateId"])
                for version in versions:
                    if version.get("LaunchTemplateData", {}).get("ImageId") == image_id:
                        templates.add(template["LaunchTemplateId"])
                        users.append(f"launch template {template['LaunchTemplateId']} "
                                     f"version {version['VersionNumber']}")
            configurations = {c["LaunchConfigurationName"] for c in self.paginate(
                "autoscaling", region, "describe_launch_configurations", "LaunchConfigurations", image_id)
                if c.get("ImageId") == image_id}
            users += [f"launch configuration {name}" for name in sorted(configurations)]
            for group in self.paginate("autoscaling", region, "describe_auto_scaling_groups", "AutoScalingGroups",
                                       image_id):
                template = (group.get("LaunchTemplate") or {}).get("LaunchTemplateId") or (
                    group.get("MixedInstancesPolicy", {}).get("LaunchTemplate", {})
                    .get("LaunchTemplateSpecification", {}).get("LaunchTemplateId"))
                if group.get("LaunchConfigurationName") in configurations or template in templates:
                    users.append(f"auto scaling group {group['AutoScalingGroupName']}")
        except CloudError as error:
            log.warning("aws %s: cannot tell whether %s is in use: %s", region, image_id, error)
            return None
        return users

    # -- SSM -------------------------------------------------------------------------------

    def update_parameter(self, region: str, image_id: str, metadata: ImageMetadata) -> str:
        """Point <prefix>/<os>/<minor>/<arch> at image_id unless it already names a newer image."""
        name = parameter_name(self.settings.ssm_parameter_prefix or "", metadata)
        try:
            current = self.call("ssm", region, "get_parameter", name, Name=name)["Parameter"]["Value"]
        except CloudError as error:
            if "ParameterNotFound" not in str(error):
                raise
            current = ""
        if current == image_id:
            return name
        if current and self._newer(region, current, image_id):
            log.info("aws %s: %s keeps %s, newer than %s", region, name, current, image_id)
            return name
        if not self.change(region, f"ssm {name}", image_id + (f" (was {current})" if current else "")):
            return name
        self.call("ssm", region, "put_parameter", name, Name=name, Value=image_id, Type="String",
                  DataType="aws:ec2:image", Overwrite=True,
                  Description=f"newest imagebuilder image for {metadata.os} Kubernetes {metadata.kubernetes_minor}")
        return name

    def _newer(self, region: str, current: str, candidate: str) -> bool:
        try:
            have = self.describe(region, current)
        except CloudError:
            return False  # the parameter names a vanished image: replace it
        return have.build_time > self.describe(region, candidate).build_time


def _permission_diff(add: list[dict[str, str]], remove: list[dict[str, str]]) -> str:
    """'+user 111122223333, -group all' for the log of changes."""
    def name(permission: dict[str, str]) -> str:
        return f"user {permission['UserId']}" if "UserId" in permission else f"group {permission['Group']}"

    return ", ".join([f"+{name(p)}" for p in add] + [f"-{name(p)}" for p in remove])


def parameter_name(prefix: str, metadata: ImageMetadata) -> str:
    base = "/" + prefix.strip("/")
    return f"{base}/{metadata.os}/{metadata.kubernetes_minor}/{metadata.arch}"


def image_tags(artifact: Artifact) -> dict[str, str]:
    tags = artifact.metadata.to_tags()
    if artifact.image_name:
        tags["Name"] = artifact.image_name
    return tags


def source_of(artifact: Artifact) -> tuple[str, str]:
    """The build region and AMI id from amazon-ebs's artifact id ('region:ami-...')."""
    for region, image_id in artifact.ids.items():
        if image_id.startswith("ami-") and region != "default":
            return region, image_id
    raise CloudError(f"{artifact.cell_id}: the artifact names no AMI (ids: {artifact.ids or 'none'}) "
                     "| fix: publish the manifest of an amazon-ebs build")


def record_of(region: str, image: dict[str, Any]) -> ImageRecord:
    tags = {t["Key"]: t.get("Value", "") for t in image.get("Tags") or []}
    snapshots = [m["Ebs"]["SnapshotId"] for m in image.get("BlockDeviceMappings") or []
                 if m.get("Ebs", {}).get("SnapshotId")]
    return ImageRecord(
        cloud="aws",
        region=region,
        image_id=image["ImageId"],
        name=image.get("Name", ""),
        created_at=parse_time(image.get("CreationDate")) or EPOCH,
        metadata=ImageMetadata.from_tags(tags),
        state=str(image.get("State", "")).lower(),
        deprecated_at=parse_time(image.get("DeprecationTime")),
        public=bool(image.get("Public")),
        tags=tags,
        extra={"snapshots": snapshots, "owner": image.get("OwnerId", ""),
               "state_reason": (image.get("StateReason") or {}).get("Message", "")},
    )


def aws_error(exc: ClientError, region: str, operation: str, subject: str) -> CloudError:
    code = _code(exc)
    message = one_line(exc.response.get("Error", {}).get("Message", ""))[:300]
    what = f"aws {region}: {operation}" + (f" {subject}" if subject else "")
    if code in DENIED_CODES:
        return CloudError(f"{what} was denied ({code}: {message}) "
                          f"| fix: allow {_iam_action(operation)} to the role or user publishing images")
    if code in VANISHED_CODES:
        return CloudError(f"{what}: {subject or 'the image'} does not exist or vanished ({code}) "
                          "| fix: run publish again; it finds or copies the image anew")
    if code in ("OptInRequired", "InvalidClientTokenId") or "not enabled" in message.lower():
        return CloudError(f"{what}: region {region} is not enabled for this account ({code}) "
                          "| fix: enable the region or remove it from clouds.aws.regions")
    if _retryable(exc):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return CloudError(f"{what}: still throttled or unavailable after retries ({code or f'HTTP {status}'}) "
                          "| fix: run it again later; if it persists, check AWS_ENDPOINT_URL and proxies (HTTPS_PROXY)")
    return CloudError(f"{what} failed ({code}: {message})")


def _iam_action(operation: str) -> str:
    service = ("ssm" if operation in ("get_parameter", "put_parameter") else
               "s3" if operation in ("get_object", "put_object") else "ec2")
    return f"{service}:" + "".join(part.capitalize() for part in operation.split("_"))


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _retryable(exc: Exception) -> bool:
    """Throttling and 5xx answers, and an HTML or empty page (proxy, captive portal, 503): passing."""
    if isinstance(exc, ResponseParserError):
        return True
    if not isinstance(exc, ClientError):
        return False
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return _code(exc) in RETRYABLE_CODES or status in RETRYABLE_STATUS
