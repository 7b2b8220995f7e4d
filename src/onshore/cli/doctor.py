"""`onshore doctor`: check catalog, ledger, checkpoints and files against each other; repair crash leftovers."""

from __future__ import annotations

from pathlib import Path

import typer

from onshore.cli.context import open_workspace
from onshore.cli.output import console, esc, print_json


def doctor_command(
    repair: bool = typer.Option(False, "--repair", help="Close abandoned attempts and remove orphan files "
                                "(logged to reports/doctor.log and, for attempts, the ledger)."),
    json_: bool = typer.Option(False, "--json", help="Print JSON only, for scripts."),
    kit: Path | None = typer.Option(None, "--kit", metavar="DIR",
                                    help="Instead of a workspace: check every node this party's startup kit "
                                         "names (coordinator, site nodes) that it can reach."),
) -> None:
    """Check the workspace; exit 1 while anything is left to do (each finding says what)."""
    if kit is not None:
        _doctor_kit(kit, json_)
        return
    from onshore.workspace import doctor  # imported here: `onshore --help` must not load the catalog

    with open_workspace() as ws:
        report = doctor.run(ws, repair)
    if json_:
        print_json(report.to_json())
    else:
        for f in report.findings:
            mark = ("[green]repaired[/]" if f.repaired else
                    "[yellow]repairable[/]" if f.repairable else "[red]problem[/]")
            console.print(f"{mark} {esc(f'[{f.check}] {f.subject}: {f.problem}')}", highlight=False)
            console.print(f"    {esc(f.repaired if f.repaired else 'to do: ' + f.fix)}", highlight=False)
        for what in report.in_progress:
            console.print(f"[dim]in progress: {esc(what)}[/]", highlight=False)
        if report.ok:
            console.print("[green]doctor: nothing to do[/]" if not report.findings else
                          f"[green]doctor: repaired {len(report.findings)} finding(s)[/]")
    if not report.ok:
        raise typer.Exit(1)


def _doctor_kit(kit: Path, json_: bool) -> None:
    from onshore.parties.kit import load_kit
    from onshore.parties.nodes import check_nodes

    checks = check_nodes(load_kit(kit))
    if json_:
        print_json([{"node": c.node, "endpoint": c.endpoint, "ok": c.ok, "detail": c.detail} for c in checks])
    else:
        for c in checks:
            mark = "[green]ok[/]" if c.ok else "[red]problem[/]"
            console.print(f"{mark} {esc(c.node)} {esc(c.endpoint)}: {esc(c.detail)}", highlight=False)
    if not all(c.ok for c in checks):
        raise typer.Exit(1)
