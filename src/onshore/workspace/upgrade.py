"""``onshore upgrade``: back the workspace up, then bring its catalog and ledger to this code's schema.

The schema revisions are Alembic's (onshore.catalog.migrate; scripts in catalog/revisions and
ledger/revisions). Every other command refuses a workspace that is not at the head revision, with a
message naming ``onshore upgrade``; this is the one command that opens it anyway.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from onshore.catalog import migrate
from onshore.ledger.log import LEDGER_SCHEMA
from onshore.workspace import backup as B
from onshore.workspace.workspace import Workspace


@dataclass
class UpgradeReport:
    """What :func:`upgrade` did: the backup it took (None when there was nothing to do) and, per store,
    the revisions before and after and the steps applied."""

    backup: B.BackupReport | None
    applied: list[migrate.Applied]

    @property
    def changed(self) -> bool:
        return any(a.steps for a in self.applied)


def default_backup_folder(root: Path) -> Path:
    """Where an upgrade backs up to unless told: ``ROOT/backups/before-upgrade-UTCSTAMP``."""
    return Path(root).resolve() / B.BACKUPS_DIR / time.strftime("before-upgrade-%Y%m%dT%H%M%SZ", time.gmtime())


def upgrade(root: Path, backup_to: Path | None = None) -> UpgradeReport:
    """Back up the workspace in ``root`` (to ``backup_to``, default :func:`default_backup_folder`),
    then migrate its catalog and then its ledger to the head revisions; a workspace already there is
    left alone (no backup).

    Refuses, before the backup and before changing anything: a catalog or ledger at a revision this
    code does not know (made by a newer Onshore: ``SchemaError`` saying to upgrade Onshore), a
    database that holds no catalog or ledger, and whatever :func:`onshore.workspace.backup.backup`
    refuses. Each store migrates in one transaction while other writers wait; a failure part-way
    leaves each store at a revision it reached whole, and running ``upgrade`` again goes on from there.
    Ends by opening the workspace, as every command will.
    """
    root = Path(root).resolve()
    _, catalog, ledger = B.open_databases(root)
    try:
        lines = ((catalog, migrate.CATALOG), (ledger, LEDGER_SCHEMA))
        before = [migrate.pending(engine, line) for engine, line in lines]
        if all(b == line.head for b, (_, line) in zip(before, lines, strict=True)):
            return UpgradeReport(None, [migrate.Applied(line.what, b, line.head, [])
                                        for b, (_, line) in zip(before, lines, strict=True)])
        report = B.backup(root, backup_to or default_backup_folder(root))
        applied = [migrate.upgrade(engine, line) for engine, line in lines]
    finally:
        catalog.dispose()
        ledger.dispose()
    Workspace.open(root).close()
    return UpgradeReport(report, applied)
