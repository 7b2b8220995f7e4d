"""Where site storage may be, and where plaintext may be written.

A site's storage folder holds only that site's encrypted shards: it may not overlap another site's
folder (a "JP" site storing inside a "US" site's storage), the workspace's own files (keys, catalog,
ledger), or contain the workspace. Plaintext (``dataset read --out``, ``dataset export``) is never
written into any site's folder or the workspace's internals, where it would sit next to resident
data as if it were resident. Paths are compared after resolving symbolic links.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from onshore.catalog import schema as T
from onshore.errors import ValidationError
from onshore.workspace.workspace import Workspace

#: Folders of the workspace that belong to Onshore itself (keys, per-site and per-member folders).
INTERNAL = ("keys", "sites", "members")
#: Under a site's folder: where a recording server spools its sealed episodes (one folder per run,
#: holding the lock file the live server keeps locked).
RECORDING_SPOOL = Path("runs") / ".spool"
SPOOL_LOCK = ".lock"


def _overlap(a: Path, b: Path) -> bool:
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def _site_roots(ws: Workspace) -> dict[str, Path]:
    with ws.catalog.connect() as conn:
        rows = conn.execute(select(T.sites.c.name, T.sites.c.root)).all()
    return {name: Path(root).resolve() for name, root in rows}


def default_site_root(ws: Workspace, name: str) -> Path:
    return ws.root / "sites" / name / "data"


def check_site_root(ws: Workspace, name: str, root: Path | None) -> Path:
    """The resolved storage folder for new site ``name`` (default: inside the workspace).

    Refuses a folder that overlaps another site's folder, that contains the workspace, or that
    lies inside the workspace anywhere but the site's own default place.
    """
    default = default_site_root(ws, name).resolve()
    path = Path(root).expanduser().resolve() if root is not None else default
    for other, other_root in _site_roots(ws).items():
        if _overlap(path, other_root):
            raise ValidationError(f"--root {root or path}: overlaps the storage folder of site {other!r} "
                                  f"({other_root}); every site needs a folder of its own")
    if path != default:
        if ws.root.is_relative_to(path):
            raise ValidationError(f"--root {root}: contains the workspace {ws.root}; choose a folder of its own")
        if path.is_relative_to(ws.root):
            raise ValidationError(f"--root {root}: inside the workspace {ws.root}, among its keys, catalog and "
                                  "ledger; leave --root out to use the site's own folder, or choose one outside")
    return path


def check_plaintext_destination(ws: Workspace, out: Path, what: str) -> Path:
    """Refuse ``out`` (a file or folder about to receive plaintext) inside a site's folder or the
    workspace's internals; returns it resolved."""
    path = Path(out).expanduser().resolve()
    for site, root in _site_roots(ws).items():
        if path.is_relative_to(root) or root.is_relative_to(path):
            raise ValidationError(f"{what} {out}: inside the storage folder of site {site!r} ({root}); plaintext "
                                  "is never written where resident data sits, choose a folder elsewhere")
    for sub in INTERNAL:
        internal = ws.root / sub
        if path.is_relative_to(internal):
            raise ValidationError(f"{what} {out}: inside the workspace's own folder {internal}; choose a folder "
                                  "elsewhere")
    return path
