"""`onshore ledger`: list and verify the transparency ledger."""

from __future__ import annotations

import typer

from onshore.cli.context import open_workspace
from onshore.cli.output import console, print_json, table

ledger_app = typer.Typer(help="The transparency ledger.", no_args_is_help=True)

JSON = typer.Option(False, "--json", help="Print JSON only, for scripts.")


@ledger_app.command("log")
def log(json_: bool = JSON, start: int = typer.Option(0, "--from", help="First entry index."),
        limit: int | None = typer.Option(None, "--limit", help="At most this many entries."),
        kind: list[str] = typer.Option([], "--kind", help="Only entries of this kind (repeatable).")) -> None:
    """List ledger entries."""
    with open_workspace() as ws:
        end = None if limit is None else start + limit
        entries = list(ws.ledger.entries(start, end, kind or None))
    if json_:
        print_json([{"index": e.index, **e.entry.to_json()} for e in entries])
        return

    def summary(body: dict) -> str:  # type: ignore[type-arg]
        if "decision" in body:
            r = body["request"]
            return (f"{body['decision']} {r['action']} {r['dataset']}"
                    f"{' @' + r['site'] if r['site'] else ''}: {', '.join(body['rules'])}")
        return ", ".join(f"{k}={v}" for k, v in body.items() if not isinstance(v, list | dict))[:100]

    table("Ledger", ["#", "time", "kind", "actor", "summary"],
          [(e.index, e.entry.time[:19], e.entry.kind, e.entry.actor, summary(e.entry.body)) for e in entries])


@ledger_app.command("verify")
def verify(json_: bool = JSON) -> None:
    """Recompute every signature and the Merkle root; exit 1 on any mismatch."""
    with open_workspace() as ws:
        report = ws.verify_ledger()
    if json_:
        print_json({"ok": True, "size": report.size, "root": report.root.hex(),
                    "signatures_checked": report.signatures_checked})
        return
    console.print(f"[green]ledger verified[/]: {report.size} entries, {report.signatures_checked} signatures, "
                  f"root {report.root.hex()}")
