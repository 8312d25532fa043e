"""Writing a long output: in large pieces when piped, through a pager on a terminal.

On a terminal, lines go through a pager (``$PAGER``, else ``less``, by
`click.echo_via_pager`) once there are more of them than the screen has rows; a shorter
output is printed as it is. Piped output never goes through a pager. The lines are
produced as they are written (a pager reads them as a person scrolls), so an output of
any length is written in bounded memory.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Iterable, Iterator
from itertools import chain, islice

import click

#: Lines written to a pipe per write.
CHUNK = 4096


def write_lines(
    lines: Iterable[str],
    *,
    terminal: bool,
    pager: bool = True,
    style: Callable[[str], str] | None = None,
) -> None:
    """Write ``lines`` (without newlines) to stdout; on a terminal, ``style`` them and
    page them when ``pager`` is set and they are longer than the screen."""
    if not terminal:
        _write_plain(iter(lines))
        return
    styled: Iterator[str] = (style(line) if style else line for line in lines)
    if pager:
        rows = shutil.get_terminal_size().lines
        first = list(islice(styled, rows))
        if len(first) >= rows:
            click.echo_via_pager(f"{line}\n" for line in chain(first, styled))
            return
        styled = iter(first)
    for line in styled:
        click.echo(line, color=True)


def write_text(pieces: Iterable[str]) -> None:
    """Write ``pieces`` of text to stdout as they come, then a newline."""
    _write_plain(iter(pieces), lines=False)


def _write_plain(pieces: Iterator[str], lines: bool = True) -> None:
    out = sys.stdout
    try:
        if lines:
            while chunk := list(islice(pieces, CHUNK)):
                out.write("\n".join(chunk) + "\n")
        else:
            for piece in pieces:
                out.write(piece)
            out.write("\n")
        out.flush()
    except BrokenPipeError:
        # The reader stopped (``| head``): stop quietly, without a second error at exit.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
        sys.exit(0)
