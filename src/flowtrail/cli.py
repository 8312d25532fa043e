"""The ``flowtrail`` command line, built on the stores' readers.

``flowtrail demo`` runs a built-in workflow; ``runs`` lists runs; ``show [RUN_ID]``
prints one run as a tree; ``search TEXT`` finds records; ``stats`` aggregates spans;
``tail`` follows a run; ``report`` writes an HTML timeline. Every reading command takes
``--store URL`` (``sqlite:///path.db``, ``file://dir``, or a path); the default is the
configured store, else ``./logs/flowtrail.db``. Output is rich on a terminal and plain
text when piped.
"""

from __future__ import annotations

import sys
from typing import Any

import click
import msgspec
from rich.console import Console
from rich.table import Table

from flowtrail.config import ConfigError
from flowtrail.records import RunSummary

_LEVEL_STYLE = {
    "debug": "dim",
    "info": "",
    "warning": "yellow",
    "error": "bold red",
    "exception": "bold red",
}


def _console() -> Console:
    return Console(highlight=False, soft_wrap=True)


def _store(url: str | None) -> Any:
    from flowtrail.stores import open_store

    try:
        return open_store(url)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


def _short_time(text: str | None) -> str:
    if not text:
        return "-"
    return text[:19].replace("T", " ")


def _duration(summary: RunSummary) -> str:
    from flowtrail.formats.tree import duration_text

    seconds = summary.duration_s
    return "-" if seconds is None else duration_text(seconds * 1000)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="flowtrail")
def main() -> None:
    """flowtrail: trace workflow runs and read them back."""


@main.command()
@click.option(
    "--store",
    "store_url",
    default=None,
    help="Where to write (default: console + ./logs/flowtrail.db).",
)
@click.option("--quiet", is_flag=True, help="Do not echo records to the console.")
def demo(store_url: str | None, quiet: bool) -> None:
    """Run a small example workflow (jobs, stages, a failure that is retried)."""
    from flowtrail.demo import run_demo
    from flowtrail.handlers import ConsoleHandler

    handlers = None
    if store_url or quiet:
        store = _store(store_url)
        handlers = [store] if quiet else [ConsoleHandler(), store]
    try:
        run_id = run_demo(handlers=handlers)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    where = f" --store {store_url}" if store_url else ""
    stored = store_url or "./logs/flowtrail.db (SQLite)"
    hints = [
        (f"flowtrail runs{where}", "list runs"),
        (f"flowtrail show {run_id}{where}", "the tree of jobs and stages, with their logs"),
        (f"flowtrail stats --workflow demo-etl{where}", "durations, errors, success rate"),
        (f"flowtrail report {run_id} -o run.html{where}", "an HTML timeline to open"),
        (f"flowtrail search retrying{where}", "find records by text"),
    ]
    width = max(len(command) for command, _ in hints)
    click.echo("")
    click.echo(f"Demo run {run_id} finished; its records are in {stored}. Look at it:")
    for command, what in hints:
        click.echo(f"  {command:<{width}}   # {what}")


@main.command()
@click.option("--store", "store_url", default=None, help="Store URL or path.")
@click.option("--workflow", default=None, help="Only runs of this workflow.")
@click.option(
    "--status",
    type=click.Choice(["ok", "error"]),
    default=None,
    help="Only runs that failed or not.",
)
@click.option("--limit", default=50, show_default=True, help="At most this many runs.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def runs(
    store_url: str | None, workflow: str | None, status: str | None, limit: int, as_json: bool
) -> None:
    """List runs, newest first."""
    summaries = _store(store_url).runs(workflow=workflow, limit=None if status else limit)
    if status:
        summaries = [s for s in summaries if s.status == status][:limit]
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
        click.echo("No runs found.")
        return
    if console.is_terminal:
        table = Table(
            "run id",
            "workflow",
            "start (UTC)",
            "duration",
            "status",
            "records",
            "errors",
            "failed spans",
        )
        for s in summaries:
            style = "red" if s.status == "error" else "green"
            table.add_row(
                s.run_id,
                s.workflow_name or "-",
                _short_time(s.start),
                _duration(s),
                f"[{style}]{s.status}[/]",
                str(s.records),
                str(s.errors),
                str(s.span_errors),
            )
        console.print(table)
        return
    # "errors" counts error records; "failed_spans" spans that ended in error, such as an
    # attempt that was retried (the status says how the run itself ended).
    click.echo("run_id\tworkflow\tstart\tduration\tstatus\trecords\terrors\tfailed_spans")
    for s in summaries:
        click.echo(
            f"{s.run_id}\t{s.workflow_name or '-'}\t{s.start or '-'}\t{_duration(s)}\t"
            f"{s.status}\t{s.records}\t{s.errors}\t{s.span_errors}"
        )


def _load_run(store: Any, run_id: str, children: bool) -> Any:
    try:
        data = store.find_trace_with_id(run_id, include_children=children, text=False)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if not data.meta and not data.spans:
        raise click.ClickException(f"no records of run {run_id!r} in this store")
    return data


def _newest_run(store: Any, failed: bool) -> str:
    """The newest top-level run of ``store`` (that failed, with ``failed``)."""
    summaries = [s for s in store.runs() if not s.parent_run_id]
    if failed:
        summaries = [s for s in summaries if s.status == "error"]
    if not summaries:
        raise click.ClickException("no failed runs in this store" if failed else "no runs yet")
    return summaries[0].run_id


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


@main.command()
@click.argument("run_id", required=False)
@click.option("--store", "store_url", default=None, help="Store URL or path.")
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

    try:
        check_level(level)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--level") from None
    options = ShowFilter(level=level, span=span_name, errors=errors, depth=depth, limit=limit)
    store = _store(store_url)
    if run_id is None:
        run_id = _newest_run(store, failed)
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
            counts = store.record_counts(run_id, include_children=children)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    if not spans and not counts.records:
        raise click.ClickException(f"no records of run {run_id!r} in this store")
    console = _console()
    selection = Selection(spans, options)

    def records(fields: Any = None) -> Any:
        # Only the levels asked for are read (--errors needs every level of failed spans).
        return store.iter_records(
            run_id, include_children=children, level=None if errors else level, fields=fields
        )

    if fmt == "json":
        shown = (s for s in spans if selection.span_shown(s))
        chosen = (r for r in records() if selection.record_shown(r, selection.owner(r)))
        if options.limit is not None:
            from itertools import islice

            chosen = islice(chosen, options.limit)
        _write_chunks(run_json_chunks(list(shown), chosen, run_id=run_id, first=counts.first))
        return
    if summary_only:
        lines: Any = summary_lines(spans, counts)
    elif fmt == "human" and spans:
        lines = tree_lines(
            spans, records(RECORD_TREE_FIELDS), run_id=run_id, counts=counts, options=options
        )
    else:
        workflow = counts.first.workflow_name if counts.first else None
        workflow = workflow or next((s.workflow_name for s in spans if s.workflow_name), None)
        lines = record_lines(
            records(RECORD_TEXT_FIELDS), selection, run_id=run_id, counts=counts, workflow=workflow
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
@click.option("--store", "store_url", default=None, help="Store URL or path.")
@click.option(
    "--children/--no-children", default=True, show_default=True, help="Include child runs."
)
def report(run_id: str, output: str | None, store_url: str | None, children: bool) -> None:
    """Write a self-contained HTML timeline of one run."""
    from pathlib import Path

    from flowtrail.formats.html import render_html

    console = Console(stderr=True)
    with console.status("reading the run…") if console.is_terminal else _nothing():
        data = _load_run(_store(store_url), run_id, children)
        page = render_html(data, run_id=run_id)
    target = Path(output or f"{run_id}.html")
    target.write_text(page, encoding="utf-8")
    click.echo(f"Wrote {target} ({len(data.spans)} spans, {len(data.meta)} records).")


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: object) -> None:
        return None


@main.command()
@click.option("--store", "store_url", default=None, help="Store URL or path.")
@click.option("--workflow", default=None, help="Across all runs of this workflow.")
@click.option("--run", "run_id", default=None, help="One run.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def stats(store_url: str | None, workflow: str | None, run_id: str | None, as_json: bool) -> None:
    """Span statistics: count, min, p50, p95, max, mean, errors, success rate."""
    from flowtrail.formats.tree import duration_text
    from flowtrail.metrics import aggregate, metrics_dict

    store = _store(store_url)
    if run_id is None and workflow is None:
        latest = store.runs(limit=1)
        if not latest:
            raise click.ClickException("no runs in this store")
        workflow = latest[0].workflow_name
        if workflow is None:
            run_id = latest[0].run_id
    spans = store.spans(run_id=run_id, workflow=workflow if run_id is None else None)
    if not spans:
        raise click.ClickException("no spans found")
    metrics = aggregate(spans)
    if as_json:
        _write(msgspec.json.encode(metrics_dict(metrics)).decode() + "\n")
        return
    scope = f"run {run_id}" if run_id else f"workflow {workflow} ({metrics.runs} runs)"
    click.echo(
        f"Statistics of {scope}: {metrics.span_count} spans, {metrics.error_count} errors, "
        f"success rate {metrics.success_rate:.0%}"
        + (f", peak memory {metrics.peak_memory_mb:.1f} MB" if metrics.peak_memory_mb else "")
    )
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
            table.add_row(*row)
        console.print(table)
    else:
        click.echo("\t".join(headers))
        for row in rows:
            click.echo("\t".join(row))


@main.command()
@click.argument("run_id", required=False)
@click.option("--store", "store_url", default=None, help="Store URL or path.")
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
    """Follow a run (default: the newest) while it is written. Ctrl-C stops."""
    import time

    store = _store(store_url)
    if run_id is None:
        latest = store.runs(limit=1)
        if not latest:
            raise click.ClickException("no runs in this store yet")
        run_id = latest[0].run_id
    click.echo(f"Following run {run_id} (Ctrl-C to stop)")
    seen_logs = seen_spans = 0
    last_new = time.monotonic()
    try:
        while True:
            data = store.find_trace_with_id(run_id)
            fresh = data.meta[seen_logs:]
            ended = data.spans[seen_spans:]
            seen_logs, seen_spans = len(data.meta), len(data.spans)
            for r in fresh:
                click.echo(f"{_short_time(r.datetime)} {r.level.upper():<9} {r.message}")
            for s in ended:
                mark = "✗" if s.status == "error" else "✓"
                click.echo(f"← {s.kind}.{s.name} ({s.duration_ms:.1f}ms) {mark}")
            if fresh or ended:
                last_new = time.monotonic()
            elif idle_exit is not None and time.monotonic() - last_new > idle_exit:
                return
            time.sleep(interval)
    except KeyboardInterrupt:
        return


@main.command()
@click.argument("text", required=False)
@click.option("--store", "store_url", default=None, help="Store URL or path.")
@click.option("--run", "run_id", default=None, help="Only this run.")
@click.option("--workflow", default=None, help="Only this workflow.")
@click.option(
    "--level", default=None, help="Minimum level (debug, info, warning, error, exception)."
)
@click.option("--since", default=None, help="ISO time, e.g. 2026-11-21T09:00:00+00:00.")
@click.option("--until", default=None, help="ISO time.")
@click.option("--limit", default=200, show_default=True)
def search(
    text: str | None,
    store_url: str | None,
    run_id: str | None,
    workflow: str | None,
    level: str | None,
    since: str | None,
    until: str | None,
    limit: int,
) -> None:
    """Find records by text and filters."""
    try:
        found = _store(store_url).search(
            text,
            run_id=run_id,
            workflow=workflow,
            level=level,
            since=since,
            until=until,
            limit=limit,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if not found:
        click.echo("No records found.")
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
