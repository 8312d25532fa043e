"""The one parser of time filters (``--since``/``--until`` and the readers' ``since=``/
``until=``): ISO-8601 dates and times, relative times and ``today``/``yesterday``.

- ``2026-11-21T09:00:00+01:00`` or ``...Z``: that instant;
- ``2026-11-21T09:00`` (no zone) and ``2026-11-21`` (its midnight): in the ``tz`` given,
  which the command line takes from the ``log_tz`` setting (UTC unless configured), so a
  time reads as the time stamps of the records read back;
- ``30s``, ``30m``, ``2h``, ``1d``, ``1w``: that long before now;
- ``now``, ``today`` (midnight today), ``yesterday`` (midnight yesterday), in ``tz``.

Anything else raises `TimeFilterError` naming the value and the accepted forms.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any, Final

from flowtrail.records import parse_iso

#: What a time filter accepts, for error and help texts.
ACCEPTED_TIMES: Final = (
    "an ISO-8601 date or time (2026-11-21, 2026-11-21T09:00, 2026-11-21T09:00:00+01:00), "
    "a time ago (30s, 30m, 2h, 1d, 1w), now, today or yesterday"
)
_AGO: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$", re.IGNORECASE)
_UNITS: Final = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
# fromisoformat reads more than ISO-8601 on 3.11 ("2026" alone is not a time here), and
# an ISO time always starts with a four-digit year and a month.
_ISO_START: Final = re.compile(r"^\s*\d{4}-?\d{2}")


class TimeFilterError(ValueError):
    """A time filter that is not one of the accepted forms (`ACCEPTED_TIMES`)."""


def parse_time_filter(
    value: Any, *, tz: tzinfo | None = None, now: datetime | None = None, name: str = ""
) -> datetime:
    """An aware datetime from ``value``: a datetime (naive means ``tz``) or text in one of
    the forms of the module docstring. ``tz`` defaults to UTC; ``now`` to the current
    time. Raises `TimeFilterError` naming the value (as ``name=value`` with ``name``)."""
    zone = tz or timezone.utc
    shown = f"{name}={value!r}" if name else repr(value)
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=zone)
    if not isinstance(value, str):
        raise TimeFilterError(f"{shown} is not a time; use a datetime or {ACCEPTED_TIMES}")
    current = now if now is not None else datetime.now(zone)
    if current.tzinfo is None:
        current = current.replace(tzinfo=zone)
    text = value.strip()
    word = text.lower()
    if word == "now":
        return current
    if word in ("today", "yesterday"):
        midnight = current.astimezone(zone).replace(hour=0, minute=0, second=0, microsecond=0)
        return midnight - timedelta(days=1) if word == "yesterday" else midnight
    ago = _AGO.match(text)
    if ago:
        amount = float(ago.group(1))
        return current - timedelta(**{_UNITS[ago.group(2).lower()]: amount})
    if _ISO_START.match(text):
        try:
            moment = parse_iso(text)
        except ValueError:
            pass
        else:
            return moment if moment.tzinfo is not None else moment.replace(tzinfo=zone)
    raise TimeFilterError(f"{shown} is not a time; use {ACCEPTED_TIMES}")


def configured_tz() -> tzinfo:
    """The zone of naive times and dates: the ``log_tz`` setting (UTC when unset)."""
    from flowtrail.config import resolve_settings
    from flowtrail.context import clock_for

    return clock_for(resolve_settings().log_tz).tz
