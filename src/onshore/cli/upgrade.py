"""`onshore upgrade`, `onshore backup`, `onshore reshred`, `onshore restore`: a workspace's schema and its copies."""

from __future__ import annotations

from pathlib import Path

import typer

from onshore.cli import context
from onshore.cli.output import console, esc


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _print_backup(report) -> None:  # type: ignore[no-untyped-def]
    console.print(f"backup of {report.files} file(s), {_size(report.bytes)}, ledger at {report.ledger_size} "
                  f"entries (root {report.ledger_root[:16]}...), {report.databases} databases, in "
                  f"{esc(report.out)}", highlight=False)
    for site in report.token_custody:
        console.print(f"[yellow]note:[/] site {esc(site)} keeps its keys in a PKCS#11 token: the backup holds only "
                      "its custody.toml; back the token up with its own tools", highlight=False)
    console.print("[dim]it holds every site's key custody: keep it as the most restrictive dataset in it requires, "
                  "and re-shred it on every withdrawal (docs/operations.md)[/]", highlight=False)


def upgrade_command(
    backup_to: Path | None = typer.Option(
        None, "--backup", metavar="DIR",
        help="New folder for the backup taken first (default: backups/before-upgrade-TIME in the workspace)."),
) -> None:
    """Bring the workspace's catalog and ledger to this version's schema, after taking a backup.

    Refused when the workspace was upgraded by a newer Onshore. Example: onshore upgrade
    """
    from onshore.workspace.upgrade import upgrade

    report = upgrade(context.workspace_path(), backup_to)
    if report.backup is not None:
        _print_backup(report.backup)
    for a in report.applied:
        if not a.steps:
            console.print(f"{esc(a.what)}: at {esc(a.after)}, nothing to do", highlight=False)
            continue
        console.print(f"{esc(a.what)}: {esc(a.before or 'no revision (made before revisions)')} -> {esc(a.after)}",
                      highlight=False)
        for rev, doc in a.steps:
            console.print(f"  {esc(rev)}: {esc(doc)}", highlight=False)
    console.print("[green]upgrade: the workspace is at this version's schema[/]" if report.changed else
                  "[green]upgrade: nothing to do[/]")


def backup_command(
    out: Path = typer.Argument(..., metavar="OUT", help="New folder for the backup."),
) -> None:
    """Back the workspace up: catalog, ledger, key custody of every site and member, shards and models.

    Consistent while other commands run (they wait for it to finish writing). Example: onshore backup /mnt/bk/ws-1205
    """
    from onshore.workspace.backup import backup

    _print_backup(backup(context.workspace_path(), out))


def restore_command(
    source: Path = typer.Argument(..., metavar="IN", help="A folder 'onshore backup' wrote."),
    catalog: str | None = typer.Option(None, "--catalog", metavar="URL",
                                       help="Empty PostgreSQL database for the catalog (default: the backed-up one)."),
    ledger: str | None = typer.Option(None, "--ledger", metavar="URL",
                                      help="Empty PostgreSQL database for the ledger (default: the backed-up one)."),
) -> None:
    """Make a workspace (the -w folder, new or empty) from a backup; then run 'onshore doctor'.

    Example: onshore -w restored restore /mnt/bk/ws-1205
    """
    from onshore.workspace.backup import restore

    report = restore(source, context.workspace_path(), catalog, ledger)
    console.print(f"restored {report.files} file(s) and a ledger of {report.ledger_size} entries into "
                  f"{esc(report.root)}", highlight=False)
    for site, folder in sorted(report.site_roots.items()):
        console.print(f"  site {esc(site)}: storage in {esc(folder)}", highlight=False)
    for site in report.token_custody:
        console.print(f"[yellow]note:[/] site {esc(site)} keeps its keys in a PKCS#11 token: restore the token too",
                      highlight=False)
    for dataset, owner in sorted(report.withdrawn_since.items()):
        console.print(f"[yellow]withdrawn since this backup:[/] {esc(dataset)} (its keys were re-shredded in it); "
                      f"record the withdrawal again: onshore dataset withdraw {esc(dataset)} --member {esc(owner)}",
                      highlight=False)
    console.print("next: onshore doctor (and onshore upgrade if it asks for it)")


def reshred_command(
    backups: list[Path] = typer.Argument(..., metavar="BACKUP...", help="Folders 'onshore backup' wrote."),
) -> None:
    """Destroy, in backups of this workspace, the keys of every dataset withdrawn since each was taken.

    Run it over every retained backup after each withdrawal (docs/custody.md, "Backups and withdrawal").
    Example: onshore reshred /mnt/bk/ws-1201 /mnt/bk/ws-1205
    """
    from onshore.workspace.backup import reshred

    with context.open_workspace() as ws:
        for folder in backups:
            done = reshred(folder, ws)
            if not done.datasets:
                console.print(f"{esc(done.backup)}: nothing withdrawn since it was taken", highlight=False)
            for dataset, files in sorted(done.datasets.items()):
                console.print(f"{esc(done.backup)}: destroyed {len(files)} key(s) of {esc(dataset)}", highlight=False)
