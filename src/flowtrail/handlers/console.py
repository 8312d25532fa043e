"""The console handler: one text line per record, written on the caller's thread, errors
to stderr and the rest to stdout."""

from __future__ import annotations

import builtins
import sys
from typing import Any, ClassVar

import msgspec

from flowtrail.config import Settings
from flowtrail.formats.line import compile_line_format
from flowtrail.handlers.base import BaseHandler, HandlerConfig
from flowtrail.logrecords import writing
from flowtrail.records import ERROR_LEVELS, Metadata


class ConsoleConfig(HandlerConfig, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Options of `ConsoleHandler`."""

    #: Line format; defaults to the ``log_format`` setting.
    format: str | None = None
    #: strftime format of ``{datetime}``; defaults to ``log_datetime_format``.
    datetime_format: str | None = None
    #: Emoji before ``[PREFIX]:`` messages; defaults to ``log_add_emoji``.
    add_emoji: bool | None = None
    #: Send error records to stderr (else everything goes to stdout).
    split_stderr: bool = True


class ConsoleHandler(BaseHandler):
    """Print each record as a line: stdout, and stderr for errors."""

    type: ClassVar[str] = "console"
    Config: ClassVar[builtins.type[HandlerConfig]] = ConsoleConfig
    synchronous: ClassVar[bool] = True
    accepted: ClassVar[dict[str, str]] = {"format": "a str.format string over record fields"}

    config: ConsoleConfig

    @classmethod
    def accepts_type(cls, name: str) -> bool:
        return name in ("stdout", "terminal")

    def resolve(self, settings: Settings) -> Any:
        config = self.config
        return msgspec.structs.replace(
            config,
            format=config.format if config.format is not None else settings.log_format,
            datetime_format=config.datetime_format or settings.log_datetime_format,
            add_emoji=config.add_emoji if config.add_emoji is not None else settings.log_add_emoji,
        )

    def span_started(self, span: Any) -> None:
        self._print(f"→ {span.kind} {span.name}", sys.stdout)

    def write(self, record: Any) -> None:
        if record.__class__ is not Metadata:
            mark = "✗" if record.status == "error" else "✓"
            text = f"← {record.kind} {record.name} ({record.duration_ms:.1f}ms) {mark}"
            if record.status_message:
                text += f" {record.status_message}"
            self._print(text, sys.stderr if record.status == "error" else sys.stdout)
            return
        config = self.config
        line = compile_line_format(
            config.format or "{message}",
            config.datetime_format or "%Y-%m-%d %H:%M:%S",
            bool(config.add_emoji),
        )(record)
        stream = sys.stderr if (record.error_flag and config.split_stderr) else sys.stdout
        if record.stack_trace and record.level in ERROR_LEVELS:
            # As stdlib's ``logger.exception``: the line, then the traceback (which ends
            # with the exception's type and message).
            line = f"{line}\n{record.stack_trace.rstrip()}"
        self._print(line, stream)

    def _print(self, line: str, stream: Any) -> None:
        if not self.config.split_stderr:
            stream = sys.stdout
        # A stdout redirected into `logging` (Airflow, Celery) brings the line back to
        # flowtrail's stdlib bridge: the guard makes the bridge drop that echo.
        outer = writing.active
        writing.active = True
        try:
            stream.write(line + "\n")
        except (OSError, ValueError):
            pass  # a closed or broken terminal must not break the workflow
        finally:
            writing.active = outer
