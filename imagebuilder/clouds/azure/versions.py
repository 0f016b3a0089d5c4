"""The one Azure Compute Gallery version scheme: ``<k8s major>.<k8s minor>.<build minute>``.

Azure reads a gallery image version as Major.Minor.Patch, each part a 32-bit signed
integer (at most 2147483647), and `latest` is the highest. A 14-digit build timestamp
(20261203064828) does not fit in one part, so the patch is the number of whole minutes from
EPOCH (2020-01-01T00:00Z) to the build time, UTC:

- it fits int32 until the year 6103 (2147483647 minutes after 2020);
- it grows with the build time, so newer builds sort higher and `latest` is the newest;
- builds a minute or more apart get different versions (one definition holds one (os, minor,
  arch), whose builds run one after another).

The build time is Packer's ``local.timestamp`` (``YYYYMMDDhhmmss``, UTC), which the image
metadata also records. The Packer template computes the patch from it with
``hcl_patch_expression`` and the store from the metadata with ``gallery_version``: the same
arithmetic, once in HCL and once in Python, both here and checked against each other.
"""

from __future__ import annotations

from datetime import datetime, timezone

EPOCH = datetime(2020, 1, 1, tzinfo=timezone.utc)
INT32_MAX = 2147483647
PATCH_PLACEHOLDER = "{build_minute}"  # as the planner shows a version before the build
_MONTH_STARTS = (0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334)  # days before each month, no leap day


def version_prefix(minor: str) -> str:
    """`1.35.` for the Kubernetes minor `1.35`: the Major.Minor part of every version of it."""
    major, minor_number = minor.split(".")[:2]
    return f"{int(major)}.{int(minor_number)}."


def build_minute(built_at: datetime) -> int:
    """Whole minutes from EPOCH to `built_at` (a naive time is UTC)."""
    if built_at.tzinfo is None:
        built_at = built_at.replace(tzinfo=timezone.utc)
    minutes = int((built_at - EPOCH).total_seconds() // 60)
    if not 0 <= minutes <= INT32_MAX:
        raise ValueError(f"build time {built_at.isoformat()} is outside {EPOCH.year}..6103, "
                         "which an Azure version part can hold")
    return minutes


def gallery_version(minor: str, built_at: datetime) -> str:
    """The gallery image version of a build of `minor` made at `built_at`."""
    return f"{version_prefix(minor)}{build_minute(built_at)}"


def version_pattern(minor: str) -> str:
    """The version as the plan shows it, before the build time is known: `1.35.{build_minute}`."""
    return version_prefix(minor) + PATCH_PLACEHOLDER


def is_valid(version: str) -> bool:
    """Three parts, each a decimal integer from 0 to INT32_MAX, as Azure accepts."""
    parts = version.split(".")
    return len(parts) == 3 and all(part.isdigit() and int(part) <= INT32_MAX for part in parts)


def hcl_patch_expression(timestamp: str) -> str:
    """An HCL expression for `build_minute` of the `YYYYMMDDhhmmss` string that `timestamp` evaluates to.

    Packer has no date difference function, so the days since EPOCH are counted from the
    calendar: 365 a year, a leap day for every leap year from EPOCH's year on, the days
    before the month (one more after February in a leap year), and the day of the month.
    Functions used exist in Packer 1.6 and later (parseint, substr, floor).
    """
    def part(start: int, length: int) -> str:
        return f"parseint(substr({timestamp}, {start}, {length}), 10)"

    year, month, day, hour, minute = part(0, 4), part(4, 2), part(6, 2), part(8, 2), part(10, 2)
    first = EPOCH.year

    def leap_days_before(y: str) -> str:  # leap years in [1, y)
        return f"(floor(({y} - 1) / 4) - floor(({y} - 1) / 100) + floor(({y} - 1) / 400))"

    before_epoch = (first - 1) // 4 - (first - 1) // 100 + (first - 1) // 400
    since_epoch = f"{leap_days_before(year)} - {before_epoch}"
    leap = f"(({year} % 4 == 0 && {year} % 100 != 0) || {year} % 400 == 0)"
    months = ", ".join(str(days) for days in _MONTH_STARTS)
    day_of_year = f"([{months}][{month} - 1] + ({month} > 2 && {leap} ? 1 : 0) + {day} - 1)"
    days = f"(365 * ({year} - {first}) + {since_epoch} + {day_of_year})"
    return f"{days} * 1440 + {hour} * 60 + {minute}"
