"""The ``flowtrail`` command line, built on the stores' readers.

``flowtrail demo`` runs a built-in workflow; ``runs`` lists runs; ``show [RUN_ID]``
prints one run as a tree; ``search TEXT`` finds records; ``stats`` aggregates spans;
``tail`` follows a run; ``report`` writes an HTML timeline; ``spool`` lists the records
waiting in the spool per destination and ``replay [DESTINATION]`` re-sends them
(`flowtrail.replay`). Every reading command takes
``--store URL`` (``sqlite:///path.db``, ``file://dir``, or a path); the default is
``FLOWTRAIL_STORE``, else the configured store, else ``<log_dir>/flowtrail.db``. A run id
may be given by any unique prefix (`flowtrail.runids`); time filters take the forms of
`flowtrail.timeparse`. Output is rich on a terminal and plain text when piped.

Exit codes: 0 when the command did its work (an empty result included); 1 when the store
has nothing to show for it (no runs yet, no failed run, no spans) or reading failed
midway; 2 when what it was given cannot be used (an unknown option value, a time filter
that is not a time, a run id that names no run or several, a store that does not exist
or is not a flowtrail store).
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import click
import msgspec
from rich.console import Console
from rich.table import Table

from flowtrail.config import ConfigError, mask_text
from flowtrail.records import RunSummary

_LEVEL_STYLE = {
    "debug": "dim",
    "info": "",
    "warning": "yellow",
    "error": "bold red",
    "exception": "bold red",
}


#: How each run status is coloured on a terminal.
_STATUS_STYLE = {"ok": "green", "error": "red", "interrupted": "magenta", "running": "cyan"}


def _console() -> Console:
    return Console(highlight=False, soft_wrap=True)


_STORE_HELP = (
    "Store URL or path: sqlite:///file.db, file://dir, a .db file, a directory holding "
    "flowtrail.db, a file store's directory, or elasticsearch+http(s)://[user:password@]"
    "host:9200/index (default: $FLOWTRAIL_STORE, else the configured store, else "
    "<log_dir>/flowtrail.db)."
)


class _BadInput(click.ClickException):
    """One ``Error: ...`` line and exit code 2: the command was given something unusable."""

    exit_code = 2


class _Main(click.Group):
    """Turns the readers' errors into one-line messages naming the store, never a
    traceback (see the exit codes in the module docstring)."""

    def invoke(self, ctx: click.Context) -> Any:
        from flowtrail.runids import RunIdError
        from flowtrail.stores import StoreError

        try:
            return super().invoke(ctx)
        except (StoreError, RunIdError) as exc:
            raise _BadInput(str(exc)) from None
        except sqlite3.Error as exc:
            store = ctx.meta.get("flowtrail.store", "the store")
            raise click.ClickException(f"cannot read {store}: {exc}") from None
        except OSError as exc:
            if isinstance(exc, BrokenPipeError):
                raise
            raise click.ClickException(str(exc)) from None  # it names its file


def _store(url: str | None, *, check: bool = True) -> Any:
    """The store to read (``check``: it must exist and be a flowtrail store)."""
    from flowtrail.stores import describe_store, open_store

    try:
        store = open_store(url, check=check)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.meta["flowtrail.store"] = describe_store(store)
    return store


def _where() -> str:
    """The store the command reads, for its messages: ``SQLite store /path/to.db``."""
    ctx = click.get_current_context(silent=True)
    return ctx.meta.get("flowtrail.store", "this store") if ctx is not None else "this store"


def _run_id(store: Any, text: str) -> str:
    """The run ``text`` names in ``store`` (the id or a unique prefix of it)."""
    from flowtrail.runids import resolve_run_id

    try:
        return resolve_run_id(store, text, where=_where())
    except ValueError as exc:  # a run id no store could hold ('../x')
        raise click.UsageError(str(exc)) from None


def _time_option(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """``--since``/``--until`` read by the one time parser, or exit 2 naming the option."""
    if value is None:
        return None
    from flowtrail.timeparse import TimeFilterError, configured_tz, parse_time_filter

    try:
        return parse_time_filter(value, tz=configured_tz())
    except (TimeFilterError, ConfigError) as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


def _time_options(what: str) -> Any:
    """The ``--since``/``--until`` options of a reading command."""
    from flowtrail.timeparse import ACCEPTED_TIMES

    def decorate(command: Any) -> Any:
        for name, edge in (("--until", "at or before"), ("--since", "at or after")):
            command = click.option(
                name,
                default=None,
                callback=_time_option,
                help=f"Only {what} {edge} this time: {ACCEPTED_TIMES}. A date or a time "
                "without zone is in log_tz (UTC unless configured).",
            )(command)
        return command

    return decorate


def _short_time(text: str | None) -> str:
    if not text:
        return "-"
    return text[:19].replace("T", " ")


def _duration(summary: RunSummary) -> str:
    from flowtrail.formats.tree import duration_text

    seconds = summary.duration_s
    return "-" if seconds is None else duration_text(seconds * 1000)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="flowtrail")
def main() -> None:
    """flowtrail: trace workflow runs and read them back."""


@main.command()
@click.option(
    "--store",
    "store_url",
    default=None,
    help="Where to write (default: $FLOWTRAIL_STORE, else the configured handlers, else "
    "console + ./logs/flowtrail.db).",
)
@click.option("--quiet", is_flag=True, help="Do not echo records to the console.")
def demo(store_url: str | None, quiet: bool) -> None:
    """Run a small example workflow twice: once with a failure that is retried (the run
    ends ok), once with a stage that fails for good (the run ends in error)."""
    import os

    from flowtrail.demo import demo_store, run_demo
    from flowtrail.handlers import ConsoleHandler
    from flowtrail.stores import STORE_VARIABLE, describe_store

    # Where the reading commands look by default, so `flowtrail show --failed` finds it.
    store_url = store_url or os.environ.get(STORE_VARIABLE) or None
    handlers = None
    if store_url or quiet:
        store = _store(store_url, check=False)
        handlers = [store] if quiet else [ConsoleHandler(), store]
    try:
        run_id = run_demo(handlers=handlers)
        failed_id = run_demo(handlers=handlers, fail=True)
        written = demo_store(handlers)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    if written is None:
        click.echo(f"\nDemo runs {run_id} (ok) and {failed_id} (error) went to the console only.")
        return
    where = f" --store {_store_argument(written, store_url)}"
    hints = [
        (f"flowtrail runs{where}", "list runs and their status"),
        (f"flowtrail show {run_id}{where}", "the ok run: jobs and stages, a retried stage"),
        (f"flowtrail show --failed{where}", f"the failed run ({failed_id}) and where it failed"),
        (f"flowtrail search --level error{where}", "every error, the retried attempt's too"),
        (f"flowtrail stats --workflow demo-etl{where}", "durations, errors, success rate"),
        (f"flowtrail report {failed_id} -o run.html{where}", "an HTML timeline to open"),
    ]
    width = max(len(command) for command, _ in hints)
    click.echo("")
    click.echo(f"Demo run {run_id} finished (ok: a stage failed once and passed when retried).")
    click.echo(f"Demo run {failed_id} finished (error: its load stage failed for good).")
    click.echo(f"Their records are in {describe_store(written)}. Look at them:")
    for command, what in hints:
        click.echo(f"  {command:<{width}}   # {what}")


def _store_argument(store: Any, url: str | None) -> str:
    """What to pass as ``--store`` to read ``store`` (written from ``url``): a local path,
    relative when under the working directory; a URL without its password (the reading
    commands take it from the environment, as the URL's help says)."""
    import os
    import shlex
    from urllib.parse import urlsplit, urlunsplit

    path = getattr(store.config, "path", None)
    if path is not None:
        path = os.path.abspath(path)
        return shlex.quote(os.path.relpath(path) if path.startswith(os.getcwd() + os.sep) else path)
    text = url or ""
    parts = urlsplit(text)
    if parts.password is not None:
        host = parts.netloc.rpartition("@")[2]
        text = urlunsplit(parts._replace(netloc=f"{parts.username}@{host}"))
    return shlex.quote(text)


@main.command()
@click.option("--store", "store_url", default=None, help=_STORE_HELP)
@click.option("--workflow", default=None, help="Only runs of this workflow.")
@click.option(
    "--status",
    type=click.Choice(["ok", "error", "interrupted", "running", "retried"]),
    default=None,
    help="Only runs with this status (retried: ok runs in which a failed attempt was "
    "retried). The rule is in the README.",
)
@click.option("--limit", default=50, show_default=True, help="At most this many runs.")
@_time_options("runs that started")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def runs(
    store_url: str | None,
    workflow: str | None,
    status: str | None,
    limit: int,
    since: datetime | None,
    until: datetime | None,
    as_json: bool,
) -> None:
    """List runs, newest first."""
    filtered = bool(status or since or until)
    summaries = _store(store_url).runs(workflow=workflow, limit=None if filtered else limit)
    if since or until:
        from flowtrail.handlers.query import time_in_range

        summaries = [s for s in summaries if time_in_range(s.start, since, until)]
    if status == "retried":
        summaries = [s for s in summaries if s.status == "ok" and s.retried]
    elif status:
        summaries = [s for s in summaries if s.status == status]
    summaries = summaries[:limit]
    if as_json:
        click.echo(
            msgspec.json.encode(
                [
                    {**msgspec.structs.asdict(s), "status": s.status, "duration_s": s.duration_s}
                    for s in summaries
                ]
            ).decode()
        )
        return
    console = _console()
    if not summaries:
        click.echo(f"No runs found in {_where()}.")
        return
    if console.is_terminal:
        rows = []
        for s in summaries:
            style = _STATUS_STYLE.get(s.status, "")
            rows.append(
                (
                    s.run_id,
                    s.workflow_name or "-",
                    _short_time(s.start),
                    _duration(s),
                    f"[{style}]{s.status_text}[/]" if style else s.status_text,
                    str(s.records),
                    str(s.errors),
                    str(s.span_errors),
                )
            )
        headers = ("run id", "workflow", "start (UTC)", "took", "status", "recs", "errs")
        table = _fitting_table(
            (*headers, "failed spans"), rows, wrap={1: (8, 4), 2: (10, 10)}, width=console.width
        )
        console.print(table)
        return
    # "errors" counts error records; "failed_spans" spans that ended in error, such as an
    # attempt that was retried (the status says how the run itself ended; --json has
    # "retried", the failed attempts that a successful retry followed).
    click.echo("run_id\tworkflow\tstart\tduration\tstatus\trecords\terrors\tfailed_spans")
    for s in summaries:
        click.echo(
            f"{s.run_id}\t{s.workflow_name or '-'}\t{s.start or '-'}\t{_duration(s)}\t"
            f"{s.status}\t{s.records}\t{s.errors}\t{s.span_errors}"
        )


def _fitting_table(
    headers: tuple[str, ...],
    rows: Sequence[tuple[str, ...]],
    wrap: dict[int, tuple[int, int]],
    width: int,
) -> Table:
    """A table of at most ``width`` columns (when it can be) whose first column, the run
    id a person copies into `show`, is never cut or wrapped. The other columns give way:
    those in ``wrap`` (index: two narrowest widths) wrap their values to the first width,
    then headers wrap at spaces, then those columns wrap to the second width, then
    headers fold down to the width of their values."""
    from rich.text import Text

    values = [max(Text.from_markup(row[i]).cell_len for row in rows) for i in range(len(headers))]
    words = [max(len(word) for word in header.split()) for header in headers]
    widths = [max(value, len(header)) for value, header in zip(values, headers, strict=True)]
    room = width - len(headers)  # one space after each column
    stages = (
        lambda i: min(values[i], wrap[i][0]) if i in wrap else None,
        lambda i: max(values[i], words[i]),
        lambda i: min(values[i], wrap[i][1]) if i in wrap else None,
        lambda i: min(values[i], wrap[i][1]) if i in wrap else max(values[i], 1),
    )
    for floor_of in stages:
        floors = {i: floor_of(i) for i in range(1, len(headers))}  # never the run id
        while sum(widths) > room:
            # One character at a time from the widest column that can give one.
            able = [i for i, floor in floors.items() if floor is not None and widths[i] > floor]
            if not able:
                break
            widths[max(able, key=lambda i: widths[i])] -= 1
    table = Table(box=None, padding=(0, 1, 0, 0), pad_edge=False, header_style="bold underline")
    for index, header in enumerate(headers):
        if index == 0:
            table.add_column(header, no_wrap=True, min_width=widths[0])
        else:
            table.add_column(header, overflow="fold", width=widths[index])
    for row in rows:
        table.add_row(*row)
    return table


def _load_run(store: Any, run_id: str, children: bool) -> Any:
    try:
        data = store.find_trace_with_id(run_id, include_children=children, text=False)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    except LookupError:  # TraceNotFound
        data = None
    if data is None or (not data.meta and not data.spans and not data.open_spans):
        raise click.ClickException(f"no records of run {run_id!r} in {_where()}")
    return data


def _newest_run(store: Any, failed: bool) -> str:
    """The newest top-level run of ``store`` (that failed, with ``failed``)."""
    summaries = [s for s in store.runs() if not s.parent_run_id]
    if failed:
        summaries = [s for s in summaries if s.status == "error"]
    if not summaries:
        raise click.ClickException(
            f"no failed runs in {_where()}" if failed else f"no runs yet in {_where()}"
        )
    return summaries[0].run_id


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


@main.command()
@click.argument("run_id", required=False)
@click.option("--store", "store_url", default=None, help=_STORE_HELP)
@click.option("--failed", is_flag=True, help="Without RUN_ID: the newest run that failed.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["human", "json", "text"]),
    default="human",
    show_default=True,
    help="human: the span tree with logs; json: spans, logs and metrics; text: records.",
)
@click.option(
    "--children/--no-children", default=True, show_default=True, help="Include child runs."
)
@click.option(
    "--summary", "summary_only", is_flag=True, help="Only the summary (status, first failure...)."
)
@click.option("--level", default=None, help="Only records at or above this level.")
@click.option("--span", "span_name", default=None, help="Only spans named NAME (or KIND.NAME).")
@click.option(
    "--errors", is_flag=True, help="Only failed spans with their logs, and error records."
)
@click.option("--depth", type=click.IntRange(min=0), default=None, help="Spans N levels deep.")
@click.option("--limit", type=click.IntRange(min=0), default=None, help="At most N records.")
@click.option("--pager/--no-pager", default=True, help="Page a long output on a terminal.")
def show(
    run_id: str | None,
    store_url: str | None,
    failed: bool,
    fmt: str,
    children: bool,
    summary_only: bool,
    level: str | None,
    span_name: str | None,
    errors: bool,
    depth: int | None,
    limit: int | None,
    pager: bool,
) -> None:
    """Print one run (default: the newest; --failed: the newest that failed): its tree of
    spans with their logs, then a summary with the first failure. Runs of any size are
    read as they are printed."""
    from flowtrail.formats.document import run_json_chunks
    from flowtrail.formats.stream import (
        RECORD_TEXT_FIELDS,
        RECORD_TREE_FIELDS,
        SUMMARY_FIELDS,
        TREE_FIELDS,
        Selection,
        ShowFilter,
        record_lines,
        summary_lines,
        tree_lines,
    )
    from flowtrail.handlers.query import check_level
    from flowtrail.paging import write_lines
    from flowtrail.status import run_status, split_open

    try:
        check_level(level)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--level") from None
    options = ShowFilter(level=level, span=span_name, errors=errors, depth=depth, limit=limit)
    store = _store(store_url)
    run_id = _newest_run(store, failed) if run_id is None else _run_id(store, run_id)
    status = Console(stderr=True)
    with status.status("reading the run…") if status.is_terminal else _nothing():
        try:
            # The tree and the summary need a few fields, and the events of failed spans
            # only (where they failed); the JSON document holds every span's all.
            spans = store.run_spans(
                run_id,
                include_children=children,
                all_events=fmt == "json",
                fields=None if fmt == "json" else SUMMARY_FIELDS if summary_only else TREE_FIELDS,
            )
            spans, open_spans = split_open(spans)
            counts = store.record_counts(run_id, include_children=children)
            # The run's status needs its error records only (`flowtrail.status`).
            state = run_status(
                store.iter_records(run_id, include_children=children, level="error"),
                spans,
                open_spans,
            )
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    if not spans and not open_spans and not counts.records:
        raise click.ClickException(f"no records of run {run_id!r} in {_where()}")
    console = _console()
    selection = Selection(spans, options)

    def records(fields: Any = None) -> Any:
        # Only the levels asked for are read (--errors needs every level of failed spans).
        return store.iter_records(
            run_id, include_children=children, level=None if errors else level, fields=fields
        )

    if fmt == "json":
        shown = (s for s in spans if selection.span_shown(s))
        chosen: Iterable[Any] = (
            r for r in records() if selection.record_shown(r, selection.owner(r))
        )
        if options.limit is not None:
            from itertools import islice

            chosen = islice(chosen, options.limit)
        _write_chunks(
            run_json_chunks(list(shown), chosen, run_id=run_id, first=counts.first, state=state)
        )
        return
    if summary_only:
        lines: Any = summary_lines(spans, counts, state=state)
    elif fmt == "human" and (spans or open_spans):
        lines = tree_lines(
            spans,
            records(RECORD_TREE_FIELDS),
            run_id=run_id,
            counts=counts,
            options=options,
            state=state,
        )
    else:
        workflow = counts.first.workflow_name if counts.first else None
        workflow = workflow or next((s.workflow_name for s in spans if s.workflow_name), None)
        lines = record_lines(
            records(RECORD_TEXT_FIELDS),
            selection,
            run_id=run_id,
            counts=counts,
            workflow=workflow,
            state=state,
        )
    write_lines(lines, terminal=console.is_terminal, pager=pager, style=_styled_line)


def _write_chunks(chunks: Any) -> None:
    from flowtrail.paging import write_text

    write_text(chunks)


def _styled_line(line: str) -> str:
    """A line of ``show`` on a terminal: failures red, warnings yellow, span starts bold."""
    for mark, (color, bold, dim) in _LINE_STYLES:
        if mark in line:
            return click.style(line, fg=color, bold=bold, dim=dim)
    return line


_LINE_STYLES = (
    ("✗", ("red", True, False)),
    ("[EXCEPTION]", ("red", True, False)),
    (" EXCEPTION ", ("red", True, False)),
    ("[ERROR]", ("red", False, False)),
    (" ERROR ", ("red", False, False)),
    ("! ", ("red", False, False)),
    ("[WARNING]", ("yellow", False, False)),
    (" WARNING ", ("yellow", False, False)),
    ("[DEBUG]", (None, False, True)),
    ("✓", ("green", False, False)),
    ("→", (None, True, False)),
)


@main.command()
@click.argument("run_id")
@click.option("-o", "--output", "output", default=None, help="HTML file (default: RUN_ID.html).")
@click.option("--store", "store_url", default=None, help=_STORE_HELP)
@click.option(
    "--children/--no-children", default=True, show_default=True, help="Include child runs."
)
def report(run_id: str, output: str | None, store_url: str | None, children: bool) -> None:
    """Write a self-contained HTML timeline of one run."""
    from pathlib import Path

    from flowtrail.formats.html import render_html
    from flowtrail.records import TraceData
    from flowtrail.status import run_status, split_open

    console = Console(stderr=True)
    store = _store(store_url)
    run_id = _run_id(store, run_id)
    with console.status("reading the run…") if console.is_terminal else _nothing():
        # Spans in memory, records streamed: the page keeps only the ones it embeds.
        try:
            spans, open_spans = split_open(
                store.run_spans(run_id, include_children=children, all_events=True)
            )
            counts = store.record_counts(run_id, include_children=children)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        if not spans and not open_spans and not counts.records:
            raise click.ClickException(f"no records of run {run_id!r} in {_where()}")
        state = run_status(
            store.iter_records(run_id, include_children=children, level="error"),
            spans,
            open_spans,
        )
        data = TraceData(spans=spans, open_spans=open_spans)
        records = store.iter_records(run_id, include_children=children)
        page = render_html(data, run_id=run_id, records=records, state=state)
    target = Path(output or f"{run_id}.html")
    target.write_text(page, encoding="utf-8")
    click.echo(f"Wrote {target} ({len(spans)} spans, {counts.records} records).")


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: object) -> None:
        return None


@main.command()
@click.option("--store", "store_url", default=None, help=_STORE_HELP)
@click.option("--workflow", default=None, help="Across all runs of this workflow.")
@click.option("--run", "run_id", default=None, help="One run (its id or a unique prefix).")
@_time_options("spans that started")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def stats(
    store_url: str | None,
    workflow: str | None,
    run_id: str | None,
    since: datetime | None,
    until: datetime | None,
    as_json: bool,
) -> None:
    """Span statistics: count, min, p50, p95, max, mean, errors, success rate."""
    from flowtrail.formats.tree import duration_text
    from flowtrail.metrics import metrics_dict

    store = _store(store_url)
    if run_id is not None:
        run_id = _run_id(store, run_id)
    if run_id is None and workflow is None:
        latest = store.runs(limit=1)
        if not latest:
            raise click.ClickException(f"no runs in {_where()}")
        workflow = latest[0].workflow_name
        if workflow is None:
            run_id = latest[0].run_id
    found_metrics = store.span_metrics(
        run_id=run_id, workflow=workflow if run_id is None else None, since=since, until=until
    )
    if found_metrics is None:
        scope = f"run {run_id}" if run_id else f"workflow {workflow!r}"
        if run_id:  # a run still running (or cut short) may have no finished span yet
            found = [s for s in store.runs() if s.run_id == run_id]
            scope += f" (status {found[0].status_text})" if found else ""
        raise click.ClickException(f"no spans of {scope} found in {_where()}")
    metrics, in_scope = found_metrics
    # The runs' statuses, by the one rule (`flowtrail.status`).
    statuses: dict[str, int] = {}
    run_status_text = None
    for summary in store.runs(workflow=workflow if run_id is None else None):
        if summary.run_id in in_scope:
            statuses[summary.status] = statuses.get(summary.status, 0) + 1
            if summary.run_id == run_id:
                run_status_text = summary.status_text
    if as_json:
        document = metrics_dict(metrics)
        document["run_statuses"] = statuses
        if run_id is not None:
            document["status"] = next(iter(statuses), None)
        _write(msgspec.json.encode(document).decode() + "\n")
        return
    runs_text = f"{metrics.runs} run" + ("" if metrics.runs == 1 else "s")
    scope = f"run {run_id}" if run_id else f"workflow {workflow} ({runs_text})"
    click.echo(
        f"Statistics of {scope}: {metrics.span_count} spans, {metrics.error_count} errors, "
        f"success rate {metrics.success_rate:.0%}"
        + (f", peak memory {metrics.peak_memory_mb:.1f} MB" if metrics.peak_memory_mb else "")
    )
    if run_id:
        click.echo(f"Run status: {run_status_text or '-'}")
    else:
        counts = ", ".join(f"{statuses[name]} {name}" for name in _STATUS_STYLE if name in statuses)
        click.echo(f"Run statuses: {counts}")
    if metrics.run_durations is not None:
        r = metrics.run_durations
        click.echo(
            f"Run duration: min {duration_text(r.min_ms)}, p50 {duration_text(r.p50_ms)}, "
            f"p95 {duration_text(r.p95_ms)}, max {duration_text(r.max_ms)}"
        )
    headers = ("span", "count", "errors", "success", "min", "p50", "p95", "max", "mean", "peak MB")
    rows = [
        (
            f"{s.kind}.{s.name}",
            str(s.count),
            str(s.errors),
            f"{s.success_rate:.0%}",
            duration_text(s.min_ms),
            duration_text(s.p50_ms),
            duration_text(s.p95_ms),
            duration_text(s.max_ms),
            duration_text(s.mean_ms),
            f"{s.peak_memory_mb:.1f}" if s.peak_memory_mb is not None else "-",
        )
        for s in metrics.by_name
    ]
    console = _console()
    if console.is_terminal:
        table = Table(*headers)
        for row in rows:
            table.add_row(*row[:4], row[4].replace("T", " ")[:19], *row[5:])
        console.print(table)
    else:
        click.echo("\t".join(headers))
        for row in rows:
            click.echo("\t".join(row))


@main.command()
@click.argument("run_id", required=False)
@click.option("--store", "store_url", default=None, help=_STORE_HELP)
@click.option("--interval", default=0.5, show_default=True, help="Seconds between polls.")
@click.option(
    "--idle-exit",
    default=None,
    type=float,
    help="Stop after this many seconds without new records.",
)
def tail(
    run_id: str | None, store_url: str | None, interval: float, idle_exit: float | None
) -> None:
    """Follow a run (default: the newest) while it is written: each record and each span
    end once, in the order written. Stops when the run has ended (its spans all ended and
    nothing new came for a few seconds, or a signal stopped it); a run without spans is
    followed until --idle-exit or Ctrl-C."""
    import time

    from flowtrail.formats.tail import RunFollower

    store = _store(store_url)
    if run_id is None:
        latest = store.runs(limit=1)
        if not latest:
            raise click.ClickException(f"no runs in {_where()} yet")
        run_id = latest[0].run_id
    else:
        run_id = _run_id(store, run_id)
    click.echo(f"Following run {run_id} (Ctrl-C to stop)")
    follower = RunFollower(run_id)
    last_new = time.monotonic()
    try:
        while True:
            data = store.find_trace_with_id(
                run_id, force_raise=False, include_children=False, text=False
            )
            lines = follower.new_lines(data)
            for line in lines:
                click.echo(line)
            if lines:
                last_new = time.monotonic()
            ended = follower.ended(data)
            if ended is not None:
                click.echo(f"Run {run_id} ended: {ended}")
                return
            if idle_exit is not None and time.monotonic() - last_new > idle_exit:
                return
            time.sleep(interval)
    except KeyboardInterrupt:
        return


@main.command()
@click.argument("text", required=False)
@click.option("--store", "store_url", default=None, help=_STORE_HELP)
@click.option("--run", "run_id", default=None, help="Only this run (its id or a unique prefix).")
@click.option("--workflow", default=None, help="Only this workflow.")
@click.option(
    "--level", default=None, help="Minimum level (debug, info, warning, error, exception)."
)
@click.option("--user", default=None, help="Only records of this user_id.")
@click.option(
    "--tag", "tags", multiple=True, help="Only records with this tag (repeat: with all of them)."
)
@_time_options("records written")
@click.option("--limit", default=200, show_default=True)
def search(
    text: str | None,
    store_url: str | None,
    run_id: str | None,
    workflow: str | None,
    level: str | None,
    user: str | None,
    tags: tuple[str, ...],
    since: datetime | None,
    until: datetime | None,
    limit: int,
) -> None:
    """Find records by text and filters, oldest first."""
    store = _store(store_url)
    if run_id is not None:
        run_id = _run_id(store, run_id)
    try:
        found = store.search(
            text,
            run_id=run_id,
            workflow=workflow,
            level=level,
            since=since,
            until=until,
            limit=limit,
            user=user,
            tags=list(tags) or None,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if not found:
        click.echo(f"No records found in {_where()}.")
        return
    console = _console()
    for r in found:
        if not console.is_terminal:
            click.echo(f"{r.run_id}\t{r.datetime}\t{r.level}\t{r.message}")
        else:
            console.print(
                f"[bold]{r.run_id}[/] {_short_time(r.datetime)} {r.level.upper():<9} ", end=""
            )
            console.print(r.message, markup=False, style=_LEVEL_STYLE.get(r.level) or None)


_SPOOL_HELP = "The spool folder (default: the configured log_dir's spool folder)."


def _spool_root(spool_dir: str | None) -> Path:
    from flowtrail.config import resolve_settings

    if spool_dir is not None:
        return Path(spool_dir)
    try:
        return Path(resolve_settings().log_dir) / "spool"
    except ConfigError as exc:
        raise _BadInput(str(exc)) from None


def _epoch_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds")


def _size(count: int) -> str:
    """A byte count for people: ``512 B``, ``3.4 KiB`` ..."""
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{count} B"


@main.command()
@click.option("--spool-dir", default=None, help=_SPOOL_HELP)
def spool(spool_dir: str | None) -> None:
    """List what waits in the spool, per destination: records, bytes, the oldest file,
    and the dead letters (.failed files, never replayed without replay --dead-letters)."""
    from flowtrail.replay import waiting

    root = _spool_root(spool_dir)
    found = waiting(root)
    if not found:
        click.echo(f"nothing waits in {root}")
        return
    console = _console()
    headers = (
        "destination",
        "type",
        "records",
        "bytes",
        "oldest (UTC)",
        "failed",
        "failed recs",
        "last error",
    )
    rows = [
        (
            s.folder.name,
            s.type,
            str(s.records),
            str(s.bytes),
            _epoch_text(s.oldest),
            str(s.failed_files),
            str(s.failed_records),
            _one_line(mask_text(s.last_error or "-")),
        )
        for s in found
    ]
    if console.is_terminal:
        # The type starts the folder name; the time takes two lines: room for the name.
        table = Table(title=f"Waiting in {root}")
        table.add_column("destination", overflow="fold")
        for header in ("records", "bytes", "oldest (UTC)", "failed", "failed\nrecords"):
            table.add_column(header, justify="right", no_wrap=header != "oldest (UTC)")
        table.add_column("last error", overflow="fold", ratio=1)
        for name, _, records, size, oldest, failed, failed_records, error in rows:
            when = oldest.replace("T", " ")[:19].replace(" ", "\n")
            table.add_row(
                name, records, _size(int(size)), when, failed, failed_records, error[:300]
            )
        console.print(table)
        return
    click.echo("\t".join(h.replace(" (UTC)", "").replace(" ", "_") for h in headers))
    for row in rows:
        click.echo("\t".join(row))


def _one_line(text: str) -> str:
    """``text`` on one line (a tab-separated row must not be split)."""
    return " ".join(text.split())


@main.command()
@click.argument("destination", required=False)
@click.option("--spool-dir", default=None, help=_SPOOL_HELP)
@click.option(
    "--dead-letters",
    is_flag=True,
    help="First move the .failed files back so they are tried again (after the "
    "configuration was fixed).",
)
def replay(destination: str | None, spool_dir: str | None, dead_letters: bool) -> None:
    """Re-send what waits in the spool (every destination, or the folder DESTINATION
    names: its name or a unique start of it). Exit code 1 if records still wait."""
    from rich.progress import Progress

    from flowtrail.config import resolve_settings
    from flowtrail.replay import folders, handler_for, replay_folder, revive_dead_letters, summarize

    root = _spool_root(spool_dir)
    chosen = folders(root)
    if destination is not None:
        exact = [f for f in chosen if f.name == destination]
        chosen = exact or [f for f in chosen if f.name.startswith(destination)]
        if len(chosen) != 1:
            names = ", ".join(f.name for f in chosen) or "none"
            raise _BadInput(f"{destination!r} names {len(chosen)} spool folders in {root}: {names}")
    if dead_letters:
        for folder in chosen:
            revive_dead_letters(folder)
    todo = [(f, summarize(f).records) for f in chosen]
    todo = [(f, n) for f, n in todo if n]
    if not todo:
        aside = sum(summarize(f).failed_records for f in chosen)
        hint = f" ({aside} records set aside: replay --dead-letters)" if aside else ""
        click.echo(f"nothing waits in {root}{hint}")
        return
    from flowtrail.trace import default_handlers

    try:
        settings = resolve_settings()
    except ConfigError as exc:
        raise _BadInput(str(exc)) from None
    configured = settings.trace_handlers
    if configured is None:
        configured = tuple(default_handlers(settings))
    sent = still = aside = 0
    problems: list[str] = []
    console = _console()
    with Progress(console=console, disable=not console.is_terminal, transient=True) as bar:
        for folder, count in todo:
            task = bar.add_task(folder.name, total=count)
            try:
                handler = handler_for(folder, settings, configured)
            except ConfigError as exc:
                still += count
                problems.append(f"{folder.name}: {exc}")
                continue
            result = replay_folder(folder, handler, partial(bar.advance, task))
            sent, still, aside = (
                sent + result.sent,
                still + result.waiting,
                aside + result.set_aside,
            )
            if result.last_error:
                problems.append(f"{folder.name}: {mask_text(result.last_error)}")
    for problem in problems:
        click.echo(problem, err=True)
    click.echo(f"{sent} records re-sent, {still} still waiting, {aside} set aside")
    if still:
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
