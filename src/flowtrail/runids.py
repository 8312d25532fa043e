"""Run ids as people type them: the whole id, any unique prefix of it, or the short form
``head…tail`` that long ids take in console lines (see `flowtrail.context.cut_id`).

`resolve_run_id` is the one place where the command line (``show``, ``report``,
``stats --run``, ``tail``, ``search --run``) and the readers' Python API turn such text into
the id of one run of a store; when it names no run or several it raises a `RunIdError`
that lists the candidates ("did you mean ...").
"""

from __future__ import annotations

import difflib
from typing import Any, Final

from flowtrail.context import CUT_MARK, check_run_id

#: How many candidates an error lists.
SHOWN: Final = 10
#: Up to this many runs, an unknown id is compared with every run id for suggestions.
NEAR_SCAN: Final = 2000


class RunIdError(LookupError):
    """Text that names no run of the store (`UnknownRunId`) or several (`AmbiguousRunId`).
    ``candidates`` holds the run ids it may have meant."""

    def __init__(self, message: str, text: str, candidates: list[str]) -> None:
        super().__init__(message)
        self.text = text
        self.candidates = candidates


class UnknownRunId(RunIdError):
    """No run id of the store is, or starts with, the text."""


class AmbiguousRunId(RunIdError):
    """Several run ids of the store start with the text."""


def _listing(ids: list[str], more: bool) -> str:
    lines = "".join(f"\n  {run_id}" for run_id in ids[:SHOWN])
    if more or len(ids) > SHOWN:
        lines += "\n  ..."
    return lines


def resolve_run_id(store: Any, text: str, *, where: str | None = None) -> str:
    """The id of the one run of ``store`` (a `StoreReader`) that ``text`` names: the id
    itself, a prefix that only one run id starts with, or a ``head…tail`` short form.
    Raises `UnknownRunId` or `AmbiguousRunId` (both `LookupError`) listing candidates,
    or ``ValueError`` for text that no run id may be (see `check_run_id`); ``where``
    names the store in the message (default: "this store")."""
    check_run_id(text)  # ValueError for text no run id may be ('../x', control characters)
    place = where or "this store"
    head, mark, tail = text.partition(CUT_MARK)
    if not mark:
        if store.run_ids(text, limit=1) == [text]:
            return text  # the whole id (an index seek, whatever the size of the store)
        matches = store.run_ids(text, limit=SHOWN + 1)
    else:
        matches = [run_id for run_id in store.run_ids(head) if run_id.endswith(tail)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        count = f"more than {SHOWN}" if len(matches) > SHOWN else str(len(matches))
        raise AmbiguousRunId(
            f"run id {text!r} is ambiguous: {count} runs in {place} start with it; "
            f"did you mean one of:{_listing(matches, len(matches) > SHOWN)}",
            text,
            matches[:SHOWN],
        )
    close = _near(store, head if mark else text)
    hint = f"; did you mean:{_listing(close, False)}" if close else " (it holds no runs)"
    raise UnknownRunId(f"no run {text!r} in {place}{hint}", text, close)


def _near(store: Any, text: str) -> list[str]:
    """Run ids of ``store`` close to ``text``: by similarity when the store holds few runs,
    else (and when none is similar) those sharing the longest prefix with it."""
    few = store.run_ids(limit=NEAR_SCAN)
    if not few:
        return []
    if len(few) < NEAR_SCAN:
        close = difflib.get_close_matches(text, few, n=5, cutoff=0.6)
        if close:
            return close
    for size in range(len(text) - 1, -1, -1):  # one index seek or folder scan each
        near = store.run_ids(text[:size], limit=5)
        if near:
            return near
    return few[:5]
