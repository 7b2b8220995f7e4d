"""Output for people (Rich tables on stdout, messages on stderr) and for scripts (--json)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()
err = Console(stderr=True, soft_wrap=True)


def print_json(data: Any) -> None:
    """JSON only, on stdout, nothing else: scripts parse it."""
    print(json.dumps(data, indent=2, sort_keys=False, default=str))


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*("" if v is None else str(v) for v in r))
    console.print(t)
