"""Text lines: compile a ``{field:spec}`` format into one fast function from a record to a
line, used by the console and by ``stdout.txt``/``stderr.txt`` of the file store."""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from flowtrail.records import METADATA_FIELDS, Metadata, parse_iso, render_message

_OPTIONAL = {
    name
    for name, ftype in zip(
        Metadata.__struct_fields__, Metadata.__annotations__.values(), strict=True
    )
    if "None" in str(ftype)
}
_CONVERSIONS = {None, "r", "s", "a"}
# Text that can stand in f-string source as it is (no braces, quotes, backslashes or line
# ends); anything else is passed in as a named constant.
_SAFE_LITERAL = re.compile(r"^[^{}'\"\\\r\n]*$")
_SAFE_SPEC = re.compile(r"^[0-9A-Za-z<>^=+\- ,._%#]*$")


class LineFormatError(ValueError):
    """A line format names an unknown field or uses an unsupported construct."""


class _DatetimeText:
    """Renders the ISO ``datetime`` string of a record with a strftime format. Unless the
    format shows sub-seconds or the zone, one text per second is cached in ``cache``,
    keyed by the first 19 characters of the ISO string."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self.per_second = not any(code in fmt for code in ("%f", "%z", "%Z", "%:z"))
        self.cache: dict[str, str] = {}

    def __call__(self, iso: str) -> str:
        try:
            text = parse_iso(iso).strftime(self.fmt)
        except ValueError:
            text = iso
        if self.per_second:
            if len(self.cache) > 4096:
                self.cache.clear()
            self.cache[iso[:19]] = text
        return text


@lru_cache(maxsize=256)
def compile_line_format(
    fmt: str, datetime_format: str = "%Y-%m-%d %H:%M:%S", add_emoji: bool = False
) -> Callable[[Metadata], str]:
    """Compile ``fmt`` (``str.format`` syntax over `Metadata` field names) into a
    function of one record. ``{datetime}`` uses ``datetime_format`` unless the field has
    its own strftime spec (``{datetime:%H:%M:%S}``). Optional fields that are unset
    render as empty text. Raises `LineFormatError` naming the bad field."""
    try:
        parts = list(string.Formatter().parse(fmt))
    except ValueError as exc:
        raise LineFormatError(f"{fmt!r} is not a valid format: {exc}") from None
    env: dict[str, Any] = {"_msg": render_message}
    pieces: list[str] = []
    for index, (literal, field, spec, conversion) in enumerate(parts):
        if literal and _SAFE_LITERAL.match(literal):
            pieces.append(literal)  # plain text goes into the f-string as it is
        elif literal:
            env[f"_L{index}"] = literal
            pieces.append(f"{{_L{index}}}")
        if field is None:
            continue
        if field not in METADATA_FIELDS:
            raise LineFormatError(
                f"{fmt!r} names the unknown field {{{field}}}; "
                f"fields are: {', '.join(METADATA_FIELDS)}"
            )
        if conversion not in _CONVERSIONS or (spec and "{" in spec):
            raise LineFormatError(f"{fmt!r}: nested or unknown conversion in {{{field}}}")
        if field == "datetime":
            render = env[f"_D{index}"] = _DatetimeText(spec or datetime_format)
            if render.per_second:
                env[f"_DC{index}"] = render.cache
                expr = f"(_DC{index}.get(r.datetime[:19]) or _D{index}(r.datetime))"
            else:
                expr = f"_D{index}(r.datetime)"
            spec = ""
        elif field == "message":
            expr = '(r.message if r.message[:1] != "[" else _msg(r.message, True))'
            if not add_emoji:
                expr = "r.message"
        elif field in _OPTIONAL:
            expr = f'("" if r.{field} is None else r.{field})'
        else:
            expr = f"r.{field}"
        conv = f"!{conversion}" if conversion else ""
        if spec and _SAFE_SPEC.match(spec):
            pieces.append(f"{{{expr}{conv}:{spec}}}")
        elif spec:
            env[f"_S{index}"] = spec
            pieces.append(f"{{{expr}{conv}:{{_S{index}}}}}")
        else:
            pieces.append(f"{{{expr}{conv}}}")
    # Only validated field names and generated identifiers reach the source text.
    source = "def line(r):\n    return f'''" + "".join(pieces) + "'''\n"
    exec(compile(source, "<flowtrail line format>", "exec"), env)
    func: Callable[[Metadata], str] = env["line"]
    try:
        func(Metadata(run_id="x", datetime="2026-01-01T00:00:00.000000+00:00"))
    except (ValueError, TypeError) as exc:
        raise LineFormatError(f"{fmt!r} cannot format a record: {exc}") from None
    return func
