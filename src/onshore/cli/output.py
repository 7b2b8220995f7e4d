"""Output for people (Rich on stdout, messages on stderr) and for scripts (--json, or a pipe).

Everything a person or a file supplied (names, paths, error messages) goes through ``esc``
before it is printed with Rich markup, so ``[red]`` in a path prints as typed and ``[/]``
cannot break the printer. Outside a terminal nothing wraps at 80 columns, tables are
tab-separated lines with a header row, and progress bars are not drawn at all.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

# soft_wrap: a long line is one line; a terminal wraps it, a file or a pipe keeps it whole.
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def esc(value: object) -> str:
    """``value`` as text that Rich prints literally (markup characters escaped)."""
    return escape(str(value))


def print_json(data: Any) -> None:
    """JSON only, on stdout, nothing else: scripts parse it."""
    print(json.dumps(data, indent=2, sort_keys=False, default=str))


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A table: boxed in a terminal; tab-separated lines (header first, full values) otherwise."""
    cells = [["" if v is None else str(v) for v in r] for r in rows]
    if not console.is_terminal:
        print("\t".join(columns))
        for r in cells:
            print("\t".join(c.replace("\t", " ").replace("\n", " ") for c in r))
        return
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in cells:
        t.add_row(*(esc(c) for c in r))
    console.print(t)


ProgressFn = Callable[[str, int, int], None]  # (stage, done, total)


class StageProgress:
    """Progress bars on stderr, one per stage (``validate``, ``encrypt``, ``copy``...).

    Use as a context manager; pass ``.update`` as a library function's ``progress`` callback.
    Drawn only on a terminal (and not with ``--json``): in a pipe or a log file it prints
    nothing, not even a blank line. ``unit="bytes"`` shows sizes instead of counts.
    """

    def __init__(self, enabled: bool = True, unit: str = "frames") -> None:
        # imported here: every command imports this module, few draw a bar (start-up time)
        from rich.progress import BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        done = DownloadColumn() if unit == "bytes" else MofNCompleteColumn()
        self._unit = "" if unit == "bytes" else f" ({unit})"
        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), done, TimeElapsedColumn(),
                             console=err, transient=True, disable=not (enabled and err.is_terminal))
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> StageProgress:
        self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.__exit__(*exc)  # type: ignore[arg-type]

    def update(self, stage: str, done: int, total: int) -> None:
        if stage not in self._tasks:
            self._tasks[stage] = self._bar.add_task(esc(stage + self._unit), total=total)
        self._bar.update(self._tasks[stage], completed=done, total=total)
