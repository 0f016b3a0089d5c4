"""Times as the clouds' SDKs hand them over (ISO 8601 text with or without 'Z', datetimes with or
without a zone), as aware UTC datetimes: a naive time from a cloud is UTC."""

from __future__ import annotations

from datetime import datetime, timezone

EPOCH = datetime.fromtimestamp(0, timezone.utc)  # stands for a creation time a record lacks


def as_utc(moment: datetime) -> datetime:
    """moment, with UTC as its zone if it has none (an aware moment is returned as it is)."""
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def parse_time(value: object) -> datetime | None:
    """An ISO 8601 time or a datetime as an aware datetime; None for an empty or missing value.

    Raises ValueError for text that is not an ISO 8601 time."""
    if not value:
        return None
    if isinstance(value, datetime):
        return as_utc(value)
    return as_utc(datetime.fromisoformat(str(value).replace("Z", "+00:00")))
