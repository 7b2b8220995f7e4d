"""Back a workspace up to a folder, and restore one from it: catalog, ledger, key custody, shards.

A backup folder holds ``backup.json`` (the manifest: what was backed up, the schema revisions, the
ledger's size and root, every file's SHA-256), the workspace's files under ``workspace/`` (its
``onshore.toml``, the log key, every site's and member's key custody, every site's storage inside
the workspace: shards, sealed models, runs), the storage of sites kept outside the workspace under
``site-roots/NAME/``, and the databases: ``catalog.db`` and ``ledger.db`` copied with SQLite's
online backup API, or ``catalog.sql`` and ``ledger.sql`` written by ``pg_dump`` for PostgreSQL.

Consistency while other commands run: the backup holds the catalog's and then the ledger's write
turn (the order every writer takes them) from the first database page to the last file, so no
command commits anything while it copies; commands that want to write wait for it (up to
``$ONSHORE_LOCK_TIMEOUT``). What a command had done between two commits when the backup began
(staged files, an open attempt) is in the backup as a crash at that moment would leave it, and
``onshore doctor --repair`` finishes or closes it after a restore, as after a crash.

Key custody: the backup holds every site's key-encryption keys as they were. A dataset withdrawn
after the backup was taken is readable again from a restored backup: see docs/custody.md
("Backups and withdrawal") for how backups expire and are re-shredded. A site whose custody is a
PKCS#11 token (``custody.toml``) has only that pointer in the backup; its keys stay in the token and
are backed up with the token's own tools.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import URL, Engine, inspect, make_url, select, update

from onshore.catalog import migrate
from onshore.catalog import schema as T
from onshore.catalog.db import open_engine, write_transaction
from onshore.catalog.schema import metadata as catalog_metadata
from onshore.errors import IntegrityError, OnshoreError, ValidationError
from onshore.files import sha256_file
from onshore.keys.keystore import DATASET_KEYS, KeyStore
from onshore.keys.pkcs11store import CUSTODY_FILE
from onshore.ledger.entries import now_iso
from onshore.ledger.log import LEDGER_SCHEMA, Ledger, ledger_metadata
from onshore.names import is_name
from onshore.workspace.config import WorkspaceConfig
from onshore.workspace.workspace import Workspace, catalog_url, ledger_url

R = TypeVar("R")

MANIFEST = "backup.json"
FORMAT = "onshore-backup/1"
WORKSPACE_DIR = "workspace"
SITE_ROOTS_DIR = "site-roots"
#: Where ``onshore upgrade`` puts its backups by default; never copied into a backup itself.
BACKUPS_DIR = "backups"
#: Lock files: they mean something only to processes running now.
_SKIP_DIRS = {"locks", BACKUPS_DIR}
_SQLITE_FILES = {"catalog.db", "ledger.db"}


@dataclass
class BackupReport:
    """What :func:`backup` wrote: where, how many files and bytes, the ledger's size and root, how each
    database was copied, and the sites whose custody is a PKCS#11 token (keys not in the backup)."""

    out: Path
    files: int
    bytes: int
    ledger_size: int
    ledger_root: str
    databases: str  # "sqlite" | "postgresql"
    token_custody: list[str] = field(default_factory=list)


@dataclass
class RestoreReport:
    """What :func:`restore` made: the workspace folder, the files restored, the ledger's size and
    each site's storage folder in it."""

    root: Path
    files: int
    ledger_size: int
    site_roots: dict[str, str]
    token_custody: list[str]
    withdrawn_since: dict[str, str]  # dataset -> owner: withdrawn after the backup, keys re-shredded in it


def _walk(folder: Path, skip_top: set[str]) -> Iterator[Path]:
    """Every regular file under ``folder`` (sorted), leaving out ``skip_top`` names at its top level,
    lock files, and SQLite's live files."""
    if not folder.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        if here == folder:
            dirnames[:] = [d for d in dirnames if d not in skip_top]
        dirnames.sort()
        for name in sorted(filenames):
            path = here / name
            if here == folder and (name in _SQLITE_FILES or name.endswith(("-wal", "-shm", "-journal"))):
                continue
            if name.endswith("-writer.lock") or not path.is_file() or path.is_symlink():
                continue
            yield path


def _copy(src: Path, dst: Path) -> tuple[str, int]:
    """Copy ``src`` to ``dst`` (mode kept), hashing what was written; returns (sha256, bytes)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(dst.parent, src.parent.stat().st_mode & 0o777)  # a custody folder stays 0700
    h = hashlib.sha256()
    n = 0
    with open(src, "rb") as fi, open(dst, "xb") as fo:
        while chunk := fi.read(1 << 20):
            h.update(chunk)
            fo.write(chunk)
            n += len(chunk)
        fo.flush()
        os.fsync(fo.fileno())
    os.chmod(dst, src.stat().st_mode & 0o777)
    return h.hexdigest(), n


def _sqlite_path(engine: Engine) -> Path:
    return Path(str(engine.url.database))


def _sqlite_copy(engine: Engine, dst: Path) -> None:
    """Copy an SQLite database with the online backup API (a consistent snapshot, WAL included)."""
    src = sqlite3.connect(_sqlite_path(engine))
    out = sqlite3.connect(dst)
    try:
        src.backup(out)
        out.execute("PRAGMA journal_mode=DELETE")  # the copy is one file
    finally:
        out.close()
        src.close()


def _pg_tool(name: str, doing: str) -> str:
    tool = shutil.which(name)
    if tool is None:
        raise OnshoreError(f"cannot {doing}: the PostgreSQL client program {name!r} is not on PATH; install the "
                           "PostgreSQL client tools (e.g. apt install postgresql-client) matching the server's version")
    return tool


def _run_pg(tool: str, args: list[str], url: str, doing: str) -> None:
    """Run a PostgreSQL client program on the database ``url``; its password, if any, goes in
    $PGPASSWORD rather than on the command line, where other users of the machine could read it."""
    parsed = make_url(url)
    env = {**os.environ}
    if parsed.password is not None:
        env["PGPASSWORD"] = str(parsed.password)
    target = URL.create("postgresql", parsed.username, None, parsed.host, parsed.port, parsed.database,
                        parsed.query).render_as_string(hide_password=False)
    proc = subprocess.run([tool, *args, target], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise OnshoreError(f"cannot {doing}: {Path(tool).name} failed: {proc.stderr.strip()[-800:]}")


def open_databases(root: Path) -> tuple[WorkspaceConfig, Engine, Engine]:
    """The workspace's config and engines on its catalog and ledger, at whatever schema revision
    (no check: for backup and upgrade); the caller disposes of both engines."""
    config = WorkspaceConfig.read(root)
    catalog = open_engine(catalog_url(root, config), catalog_metadata)
    try:
        ledger = open_engine(ledger_url(root, config), ledger_metadata)
    except BaseException:
        catalog.dispose()
        raise
    return config, catalog, ledger


def _check_out(out: Path, root: Path) -> Path:
    out = Path(out).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValidationError(f"{out}: exists and is not an empty folder; give a new folder for the backup")
    if out.is_relative_to(root) and not out.is_relative_to(root / BACKUPS_DIR):
        raise ValidationError(f"{out}: inside the workspace {root}; put the backup elsewhere (or under "
                              f"{root / BACKUPS_DIR})")
    return out


def backup(root: Path, out: Path) -> BackupReport:
    """Back the workspace in ``root`` up to the new folder ``out`` (see the module docstring).

    Works on a workspace at any schema revision (``onshore upgrade`` backs up before migrating).
    Refuses: ``out`` that exists and is not empty, or lies inside the workspace (but for its
    ``backups/`` folder); PostgreSQL databases when ``pg_dump`` is not installed (before anything is
    written). A backup that fails removes what it wrote.
    """
    root = Path(root).resolve()
    config, catalog, ledger_engine = open_databases(root)
    try:
        out = _check_out(out, root)
        with catalog.connect() as conn:
            for name, site_root in conn.execute(select(T.sites.c.name, T.sites.c.root)):
                if out.is_relative_to(Path(site_root).resolve()):
                    raise ValidationError(f"{out}: inside the storage folder of site {name!r}; put the backup "
                                          "elsewhere")
        postgres = catalog.dialect.name == "postgresql" or ledger_engine.dialect.name == "postgresql"
        pg_dump = _pg_tool("pg_dump", "back up a PostgreSQL catalog or ledger") if postgres else ""
        return _in_empty_folder(out, 0o700,  # it holds every site's and member's keys
                                lambda: _backup(root, out, config, catalog, ledger_engine, pg_dump))
    finally:
        catalog.dispose()
        ledger_engine.dispose()


def _backup(root: Path, out: Path, config: WorkspaceConfig, catalog: Engine, ledger_engine: Engine,
            pg_dump: str) -> BackupReport:
    files: dict[str, str] = {}
    total = 0
    databases: dict[str, str] = {}
    same_db = catalog.dialect.name == "postgresql" and str(catalog.url) == str(ledger_engine.url)
    with ExitStack() as turns:
        # the order every writer takes them: catalog first, then ledger (a catalog writer appends)
        cconn = turns.enter_context(write_transaction(catalog, "the catalog"))
        turns.enter_context(write_transaction(ledger_engine, "the ledger"))
        revisions = {"catalog": migrate.stored_revision(cconn, migrate.CATALOG)}
        with ledger_engine.connect() as lconn:
            revisions["ledger"] = migrate.stored_revision(lconn, LEDGER_SCHEMA)
        ledger = Ledger(ledger_engine)
        size = ledger.size()
        root_hash = ledger.root(size).hex()
        sites = {name: Path(r) for name, r in cconn.execute(select(T.sites.c.name, T.sites.c.root))}
        for what, engine in (("catalog", catalog), ("ledger", ledger_engine)):
            if engine.dialect.name == "sqlite":
                name = f"{what}.db"
                _sqlite_copy(engine, out / name)
            else:
                name = f"{what}.sql"
                if what == "ledger" and same_db:
                    databases[what] = databases["catalog"]
                    continue
                _run_pg(pg_dump, ["--no-owner", "--no-privileges", "-f", str(out / name)],
                        engine.url.render_as_string(hide_password=False), f"back up the {what}")
            databases[what] = name
            files[name] = sha256_file(out / name)
            total += (out / name).stat().st_size
        site_roots: dict[str, str] = {}
        for path in _walk(root, _SKIP_DIRS):
            rel = f"{WORKSPACE_DIR}/{path.relative_to(root).as_posix()}"
            files[rel], n = _copy(path, out / rel)
            total += n
        for name, site_root in sorted(sites.items()):
            site_roots[name] = str(site_root)
            resolved = site_root.resolve()
            if resolved.is_relative_to(root):
                continue  # copied with the workspace
            for path in _walk(resolved, set()):
                rel = f"{SITE_ROOTS_DIR}/{name}/{path.relative_to(resolved).as_posix()}"
                files[rel], n = _copy(path, out / rel)
                total += n
    token = sorted(n for n in sites if (root / "sites" / n / "keys" / CUSTODY_FILE).exists())
    manifest = {
        "format": FORMAT, "made_at": now_iso(), "workspace": config.name, "root": str(root),
        "databases": databases, "backend": "postgresql" if pg_dump else "sqlite",
        "revisions": revisions, "ledger_size": size, "ledger_root": root_hash,
        "site_roots": site_roots, "token_custody": token, "files": files,
    }
    _write_manifest(out, manifest)
    return BackupReport(out, len(files), total, size, root_hash, manifest["backend"], token)


# ---- re-shredding: withdrawals reach the backups -----------------------------------------------

@dataclass
class Reshredded:
    """What :func:`reshred` destroyed in one backup: per dataset, the key files (paths in the backup)."""

    backup: Path
    datasets: dict[str, list[str]]


def _write_manifest(folder: Path, data: dict[str, Any]) -> None:
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, folder / MANIFEST)


def reshred(backup_dir: Path, ws: Workspace) -> Reshredded:
    """Destroy, in the backup ``backup_dir`` of workspace ``ws``, the custody keys of every dataset that
    ``ws``'s ledger records as withdrawn (crypto-shredding, as the withdrawal did in the live custody).

    A backup holds the keys as they were when it was taken: without this a dataset withdrawn since
    opens again from it. Run it over every retained backup after each withdrawal. The manifest
    forgets the destroyed files and records the withdrawal (``shredded``), so that a restore
    says which withdrawals to record again. Refuses a folder that is not a backup of ``ws`` (its
    ledger is not a prefix of ``ws``'s: root at its size differs). Sites whose custody is a token
    are out of reach here (their keys were never in the backup).
    """
    backup_dir = Path(backup_dir).expanduser().resolve()
    data = _read_manifest(backup_dir)
    size = int(data["ledger_size"])
    if size > ws.ledger.size() or ws.ledger.root(size).hex() != data["ledger_root"]:
        raise ValidationError(f"{backup_dir}: not a backup of this workspace (its ledger of {size} entries is not "
                              f"the first {size} of {ws.root}'s); re-shred it against the workspace it came from")
    gov = ws.ledger_governance()
    done: dict[str, list[str]] = {}
    shredded = data.setdefault("shredded", {})
    if not isinstance(shredded, dict):
        raise ValidationError(f"{backup_dir / MANIFEST}: field 'shredded' must be an object; the backup is damaged")
    for dataset, index in sorted(gov.withdrawn.items()):
        if index < size:
            continue  # withdrawn before the backup: its keys were already gone
        suffix = f"/keys/{DATASET_KEYS}/{dataset}.key"
        for rel in sorted(r for r in data["files"] if r.startswith(f"{WORKSPACE_DIR}/sites/") and r.endswith(suffix)):
            keys = backup_dir / rel[: -len(suffix)] / "keys"
            KeyStore(keys).destroy_dataset_key(dataset)
            del data["files"][rel]
            done.setdefault(dataset, []).append(rel)
        if dataset in done:  # it was in the backup (a dataset ingested after it has nothing there)
            grant = gov.grants.get(dataset)
            shredded[dataset] = {"withdraw_index": index, "owner": grant.owner if grant else None,
                                 "shredded_at": now_iso(), "files": done.get(dataset, [])}
    _write_manifest(backup_dir, data)
    return Reshredded(backup_dir, done)


# ---- restore -----------------------------------------------------------------------------------

def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValidationError(f"{folder}: not an Onshore backup (no {MANIFEST}); give the folder 'onshore backup' "
                              "wrote") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValidationError(f"{path}: not valid JSON ({e}); the backup is damaged") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValidationError(f"{path}: field 'format' is not {FORMAT!r}; this Onshore cannot restore it")
    want = {"files": dict, "databases": dict, "site_roots": dict, "root": str, "backend": str, "ledger_size": int,
            "ledger_root": str, "token_custody": list}
    for key, kind in want.items():
        if not isinstance(data.get(key), kind):
            raise ValidationError(f"{path}: field {key!r} is missing or not a {kind.__name__}; the backup is damaged")
    if data["backend"] not in ("sqlite", "postgresql"):
        raise ValidationError(f"{path}: field 'backend' must be sqlite or postgresql")
    for rel, digest in data["files"].items():
        parts = Path(rel).parts if isinstance(rel, str) and isinstance(digest, str) else ()
        if (not parts or Path(rel).is_absolute() or ".." in parts
                or not (parts[0] in (WORKSPACE_DIR, SITE_ROOTS_DIR) or rel in data["databases"].values())):
            raise ValidationError(f"{path}: file entry {rel!r} is not a path inside the backup; the backup is damaged")
    for name, was in data["site_roots"].items():
        if not is_name(name) or not isinstance(was, str) or ".." in Path(was).parts:
            raise ValidationError(f"{path}: site_roots entry {name!r} is not a site name and folder; the backup "
                                  "is damaged")
    for rel in data["files"]:
        parts = Path(rel).parts
        if parts[0] == SITE_ROOTS_DIR and (len(parts) < 3 or parts[1] not in data["site_roots"]):
            raise ValidationError(f"{path}: file entry {rel!r} is not under a site's folder; the backup is damaged")
    for what in ("catalog", "ledger"):
        if not isinstance(data["databases"].get(what), str) or not data["databases"][what].endswith((".db", ".sql")):
            raise ValidationError(f"{path}: field 'databases' names no {what} file (.db or .sql); the backup is "
                                  "damaged")
        if data["databases"].get(what) not in data["files"]:
            raise ValidationError(f"{path}: field 'databases' names no {what} file listed in 'files'")
    return data


def _verify_files(folder: Path, files: dict[str, str]) -> None:
    for rel, digest in sorted(files.items()):
        path = folder / rel
        if not path.is_file():
            raise IntegrityError(f"{path}: listed in {MANIFEST} but missing; the backup is incomplete")
        if sha256_file(path) != digest:
            raise IntegrityError(f"{path}: its SHA-256 is not the one {MANIFEST} records; the backup is damaged")


def _empty(engine: Engine) -> bool:
    with engine.connect() as conn:
        return not inspect(conn).get_table_names()


def restore(backup_dir: Path, root: Path, catalog: str | None = None, ledger: str | None = None) -> RestoreReport:
    """Make the workspace ``root`` (a new or empty folder) from the backup in ``backup_dir``.

    A PostgreSQL dump is loaded (``psql``) into ``catalog`` or ``ledger`` (default: the URL the
    backed-up workspace used), which must be an empty database; a SQLite copy becomes ``catalog.db``
    or ``ledger.db`` in ``root``. Site storage folders that were inside the backed-up workspace are
    restored at the same place in ``root``; those that were outside it are restored to the site's
    default folder in ``root`` (``sites/NAME/data``), and the catalog is pointed there.

    Refuses before writing anything: a folder that is not a backup, a manifest or file that does not
    match (damaged or altered: every file's SHA-256 is checked first), a ``root`` that holds anything,
    a database URL given for a SQLite copy, non-empty target databases, a PostgreSQL dump without
    ``psql``. A restore that fails removes what it made. Run ``onshore doctor`` after it.
    """
    backup_dir = Path(backup_dir).expanduser().resolve()
    data = _read_manifest(backup_dir)
    root = Path(root).expanduser().resolve()
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ValidationError(f"{root}: exists and is not an empty folder; restore into a new folder")
    if root.is_relative_to(backup_dir):
        raise ValidationError(f"{root}: inside the backup {backup_dir}; restore into a folder of its own")
    _verify_files(backup_dir, data["files"])
    config = WorkspaceConfig.read(backup_dir / WORKSPACE_DIR)
    names = data["databases"]
    given = {"catalog": catalog, "ledger": ledger}
    for what in ("catalog", "ledger"):
        if names[what].endswith(".db") and given[what]:
            raise ValidationError(f"--{what}: this backup's {what} is a SQLite file; it is restored into the "
                                  "workspace folder")
    urls = {what: "" if names[what].endswith(".db") else (given[what] or getattr(config, f"{what}_url"))
            for what in ("catalog", "ledger")}
    for what, url in urls.items():
        if names[what].endswith(".sql") and not url:
            raise ValidationError(f"--{what}: this backup's {what} is a PostgreSQL dump; give an empty database for it")
    if names["catalog"] == names["ledger"] and urls["catalog"] != urls["ledger"]:
        raise ValidationError("--ledger: the backup holds catalog and ledger in one database; give the same database "
                              "as --catalog (or leave both out)")
    psql = _pg_tool("psql", "restore a PostgreSQL catalog or ledger") if any(urls.values()) else ""
    for url in sorted({u for u in urls.values() if u}):
        engine = open_engine(url, catalog_metadata)
        try:
            if not _empty(engine):
                raise ValidationError(f"database {make_url(url).render_as_string(hide_password=True)}: not empty; "
                                      "restore into an empty database")
        finally:
            engine.dispose()
    return _in_empty_folder(root, None, lambda: _restore(backup_dir, root, data, config, urls, psql))


def _in_empty_folder(folder: Path, mode: int | None, work: Callable[[], R]) -> R:
    """Run ``work``, which fills ``folder`` (made here if missing, checked empty by the caller);
    if it fails, nothing it made is left: the folder goes if it was made here, else its contents."""
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    if mode is not None:
        folder.chmod(mode)
    try:
        return work()
    except BaseException:
        if created:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            for child in folder.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        raise


def _restore(backup_dir: Path, root: Path, data: dict[str, Any], config: WorkspaceConfig, urls: dict[str, str],
             psql: str) -> RestoreReport:
    names = data["databases"]
    for what, url in urls.items():
        if not url:
            shutil.copyfile(backup_dir / names[what], root / f"{what}.db")
        elif not (what == "ledger" and names["ledger"] == names["catalog"]):  # one dump of both: loaded once
            _run_pg(psql, ["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(backup_dir / names[what])], url,
                    f"restore the {what} into {make_url(url).render_as_string(hide_password=True)}")
    count = 0
    old_root = Path(data["root"])
    for rel in sorted(data["files"]):
        parts = Path(rel).parts
        if parts[0] == WORKSPACE_DIR:
            dst = root.joinpath(*parts[1:])
        elif parts[0] == SITE_ROOTS_DIR:
            dst = root / "sites" / parts[1] / "data" / Path(*parts[2:])
        else:
            continue
        _copy(backup_dir / rel, dst)
        count += 1
    WorkspaceConfig(config.name, config.jurisdiction, urls["catalog"], urls["ledger"]).write(root)
    site_roots: dict[str, str] = {}
    catalog_engine = open_engine(catalog_url(root, WorkspaceConfig.read(root)), catalog_metadata)
    try:
        with write_transaction(catalog_engine, "the catalog") as conn:
            for name, was in data["site_roots"].items():
                was_path = Path(was)
                new = root / was_path.relative_to(old_root) if was_path.is_relative_to(old_root) else \
                    root / "sites" / name / "data"
                new.mkdir(parents=True, exist_ok=True)
                conn.execute(update(T.sites).where(T.sites.c.name == name).values(root=str(new)))
                site_roots[name] = str(new)
    finally:
        catalog_engine.dispose()
    withdrawn = {d: str(v.get("owner")) for d, v in (data.get("shredded") or {}).items() if isinstance(v, dict)}
    return RestoreReport(root, count, int(data["ledger_size"]), site_roots, list(data["token_custody"]), withdrawn)
