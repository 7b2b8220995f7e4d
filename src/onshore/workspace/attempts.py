"""Attempts: how ingest, copy and withdraw survive a crash at any point (docs/residency.md, "Crashes").

An attempt is one run of a multi-step command. It opens with its allow decision: the decision
entry and a ``ledger_attempts`` row commit in one ledger transaction, so no decision that starts
work exists without its row. The process holds an exclusive lock on ``locks/attempt-ID.lock``
in the workspace while it runs (the OS drops it when the process dies, however it dies), stages
files in ``SITE/.staging/ID/`` (its own folder, never shared by name), then, in its turn under the
catalog write lock, publishes the files, writes the catalog rows, appends its outcome entries
(marking the row ``ledgered`` in the same ledger transaction) and commits the catalog. Only then
is the row removed.

A row whose process is gone is closed by the next ingest, copy or withdraw, or by `onshore
doctor --repair` (:func:`recover`), unless it cannot be a row this code wrote (:func:`foreign`):
if the catalog holds the outcome the row is simply removed; a withdrawal whose entries are in
the ledger is rolled forward (its wraps are destroyed); any other attempt is closed by a signed
``data.abandoned`` entry citing the decision and any outcome entries, and its staged and
published files are removed. An attempt that fails in its own process (refused input, a lost
same-name race, an I/O error) closes itself the same way, giving the reason.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from sqlalchemy import delete, insert, select, update

from onshore.catalog import schema as T
from onshore.catalog.db import write_transaction
from onshore.errors import OnshoreError
from onshore.faults import crash_point
from onshore.ledger.entries import now_iso
from onshore.ledger.log import AppendHook, ledger_attempts
from onshore.residency.pdp import Decision, Request
from onshore.residency.policy import UsagePolicy
from onshore.store import shards as S
from onshore.workspace import custody, keyservice
from onshore.workspace.workspace import LOG_ACTOR, Workspace

LOCKS_DIR = "locks"
ABANDONED = "data.abandoned"


@dataclass
class Attempt:
    """One run of ingest, copy or withdraw, from its allow decision to its outcome."""

    id: str
    op: str
    dataset: str
    site: str | None
    actor: str
    decision_index: int = -1
    outcome: list[int] = field(default_factory=list)
    published: list[Path] = field(default_factory=list)  # files moved out of staging, not yet committed
    lock: IO[str] | None = field(default=None, repr=False)
    stage: Path | None = None

    def staging(self, site_root: str | Path) -> Path:
        """This attempt's own staging folder at a site (removed when the attempt ends)."""
        self.stage = S.staging_dir(Path(site_root)) / self.id
        return self.stage


class _AlreadyClosed(Exception):
    """Raised inside a ledger transaction to roll back an entry for a row someone else closed."""


def _lock_path(ws: Workspace, attempt_id: str) -> Path:
    return ws.root / LOCKS_DIR / f"attempt-{attempt_id}.lock"


def is_locked(path: Path) -> bool:
    """True while some process holds an exclusive ``flock`` on the file ``path`` (False if none exists)."""
    try:
        f = open(path, "a")  # noqa: SIM115 - closed below
    except (FileNotFoundError, NotADirectoryError):
        return False
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def is_alive(ws: Workspace, attempt_id: str) -> bool:
    """True while the process running the attempt holds its lock file."""
    return is_locked(_lock_path(ws, attempt_id))


class Busy(OnshoreError):
    """Another process holds the workspace lock this command needs (a run of the same model, a copy
    of the same model to the same site); nothing was written."""


def lock_path(ws: Workspace, key: str) -> Path:
    """The workspace lock file named ``key`` (a checked name: ``train-MODEL``, ``copy-MODEL-SITE``)."""
    return ws.root / LOCKS_DIR / f"{key}.lock"


def is_held(ws: Workspace, key: str) -> bool:
    """True while some process holds the workspace lock ``key`` (see :func:`exclusive`)."""
    return is_locked(lock_path(ws, key))


@contextmanager
def exclusive(ws: Workspace, key: str, busy: str) -> Iterator[None]:
    """Hold the workspace lock ``key`` for the block, or refuse at once (:class:`Busy`, message ``busy``).

    The OS drops the lock when the process dies, however it dies, so a killed holder never
    blocks the next run. The file stays (unlinking it would let two processes lock two inodes).
    """
    path = lock_path(ws, key)
    path.parent.mkdir(exist_ok=True)
    f = open(path, "a")  # noqa: SIM115 - held for the block
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Busy(busy) from None
        yield
    finally:
        f.close()


def _release(ws: Workspace, attempt: Attempt) -> None:
    if attempt.stage is not None:
        shutil.rmtree(attempt.stage, ignore_errors=True)
    if attempt.lock is not None:
        _lock_path(ws, attempt.id).unlink(missing_ok=True)
        attempt.lock.close()
        attempt.lock = None


def prepare(ws: Workspace, op: str, dataset: str, site: str | None, actor: str) -> Attempt:
    """A new attempt holding its lock file; it opens (gets its row) with its allow decision (:func:`opener`)."""
    attempt = Attempt(uuid.uuid4().hex, op, dataset, site, actor)
    path = _lock_path(ws, attempt.id)
    path.parent.mkdir(exist_ok=True)
    attempt.lock = open(path, "w")  # noqa: SIM115 - held for the attempt's life
    fcntl.flock(attempt.lock, fcntl.LOCK_EX)
    return attempt


def opener(attempt: Attempt) -> AppendHook:
    """The append hook, for the allow decision's transaction, that writes the attempt's row."""
    def open_row(conn: Any, indices: list[int]) -> None:
        conn.execute(insert(ledger_attempts).values(
            id=attempt.id, op=attempt.op, dataset=attempt.dataset, site=attempt.site, actor=attempt.actor,
            decision_index=indices[0], state="open", outcome="[]", started_at=now_iso()))
        attempt.decision_index = indices[0]
    return open_row


def start(ws: Workspace, op: str, request: Request, dataset: str, site: str | None,
          extra: tuple[str, str, UsagePolicy] | None = None) -> tuple[Decision, Attempt]:
    """Decide ``request`` and, when allowed, open an attempt in the decision's own transaction.

    Raises PolicyDenied on a deny (the decision is recorded, no attempt is opened).
    """
    attempt = prepare(ws, op, dataset, site, request.principal)
    try:
        decision, _ = ws.authorize(request, extra, opener(attempt))
    except BaseException:
        _release(ws, attempt)
        raise
    crash_point(f"{op}.decided")
    return decision, attempt


def ledgered(attempt: Attempt) -> AppendHook:
    """The append hook that marks the attempt's row ``ledgered`` with its outcome entries."""
    def mark(conn: Any, indices: list[int]) -> None:
        conn.execute(update(ledger_attempts).where(ledger_attempts.c.id == attempt.id).values(
            state="ledgered", outcome=json.dumps(indices)))
    return mark


def publish(attempt: Attempt, stage: Path, site_root: str | Path, rels: list[str]) -> None:
    """Move the attempt's staged shards to their places (call only in the catalog's write turn)."""
    for rel in rels:
        attempt.published.append(S.publish(stage, Path(site_root), rel))


def finish(ws: Workspace, attempt: Attempt) -> None:
    """The outcome is committed in catalog and ledger: remove the row, the staging folder and the lock."""
    with write_transaction(ws.ledger.engine, "the ledger") as conn:
        conn.execute(delete(ledger_attempts).where(ledger_attempts.c.id == attempt.id))
    _release(ws, attempt)


def _abandon_entry(ws: Workspace, row: dict[str, Any], closes: list[int], reason: str) -> int | None:
    """Append the signed ``data.abandoned`` entry and remove the row, atomically; None if already closed."""
    def claim(conn: Any, _indices: list[int]) -> None:
        if conn.execute(delete(ledger_attempts).where(ledger_attempts.c.id == row["id"])).rowcount != 1:
            raise _AlreadyClosed
    try:
        return ws.record(ABANDONED, LOG_ACTOR, {
            "attempt": row["id"], "op": row["op"], "dataset": row["dataset"], "site": row["site"],
            "actor": row["actor"], "decision_index": row["decision_index"], "closes": closes, "reason": reason,
        }, claim)
    except _AlreadyClosed:
        return None


def _remove_staging(ws: Workspace, catalog_conn: Any, attempt_id: str, site: str | None) -> None:
    if site is None:
        return
    root = catalog_conn.execute(select(T.sites.c.root).where(T.sites.c.name == site)).scalar()
    if root is not None:
        shutil.rmtree(S.staging_dir(Path(root)) / attempt_id, ignore_errors=True)


def remove_orphans(catalog_conn: Any, dataset: str, site: str) -> list[Path]:
    """Delete shard files under ``SITE/datasets/DATASET/`` that no catalog row names.

    Call only inside the catalog's write turn: no other attempt is then between publishing its
    files and committing their rows.
    """
    root = catalog_conn.execute(select(T.sites.c.root).where(T.sites.c.name == site)).scalar()
    if root is None:
        return []
    known = {r[0] for r in catalog_conn.execute(select(T.shards.c.path).where(
        T.shards.c.dataset == dataset, T.shards.c.site == site))}
    removed = []
    folder = Path(root) / "datasets" / dataset
    for f in sorted(folder.glob("*")) if folder.is_dir() else []:
        if f.relative_to(root).as_posix() not in known:
            f.unlink(missing_ok=True)
            removed.append(f)
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
    return removed


@contextmanager
def guard(ws: Workspace, attempt: Attempt) -> Iterator[None]:
    """Run the attempt's steps; on any failure undo its published files and close it as abandoned.

    The failure is re-raised. If closing fails too (the ledger is unreachable), the row stays
    and the next command or `onshore doctor --repair` closes it.
    """
    try:
        yield
    except BaseException as e:
        for p in attempt.published:  # the catalog transaction that would name them rolled back
            p.unlink(missing_ok=True)
        if attempt.decision_index < 0 or (attempt.op == "withdraw" and attempt.outcome):
            # no allow decision, so nothing to close; or a withdrawal the ledger already records,
            # which recovery rolls forward (its row stays, and this process's lock goes)
            _release(ws, attempt)
            raise
        reason = str(e) if isinstance(e, OnshoreError) else f"{type(e).__name__}: {e}"
        try:
            _abandon_entry(ws, _row_of(attempt), [attempt.decision_index, *attempt.outcome], reason)
        finally:
            _release(ws, attempt)
        raise


def _row_of(a: Attempt) -> dict[str, Any]:
    return {"id": a.id, "op": a.op, "dataset": a.dataset, "site": a.site, "actor": a.actor,
            "decision_index": a.decision_index}


def open_attempts(ws: Workspace) -> list[dict[str, Any]]:
    """Every attempt row, oldest first, each with ``alive`` (its process still runs)."""
    with ws.ledger.engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(select(ledger_attempts).order_by(ledger_attempts.c.started_at))
                .mappings()]
    for r in rows:
        r["outcome"] = json.loads(r["outcome"])
        r["alive"] = is_alive(ws, r["id"])
    return rows


def _catalog_holds_outcome(ws: Workspace, conn: Any, row: dict[str, Any]) -> bool:
    if row["op"] == "withdraw":
        status = conn.execute(select(T.datasets.c.status).where(T.datasets.c.name == row["dataset"])).scalar()
        return status == "withdrawn"
    # the last outcome entry (data.ingest, data.copy) lists the shards the attempt placed
    body = ws.ledger.get(row["outcome"][-1]).entry.body
    placed = {r[0] for r in conn.execute(select(T.shards.c.sha256).where(
        T.shards.c.dataset == row["dataset"], T.shards.c.site == row["site"]))}
    # data.ingest lists shard objects, data.copy their digests
    claimed = {s["sha256"] if isinstance(s, dict) else s for s in body["shards"]}
    return bool(placed) and claimed <= placed


#: The outcome entries each kind of attempt appends (all about its dataset); an attempt closes
#: nothing else, and a withdrawal's are rolled forward, never closed.
OUTCOME_KINDS = {"ingest": ("consent.grant", "data.ingest"), "copy": ("data.copy",),
                 "withdraw": ("consent.withdraw", "key.shred", "model.taint")}


def _names(body: dict[str, Any], dataset: str) -> bool:
    return body.get("dataset") == dataset or any(
        isinstance(d, dict) and d.get("name") == dataset for d in body.get("datasets") or ())


def relied_on(ws: Workspace, dataset: str, after: int, site: str | None = None) -> list[int]:
    """Entries after index ``after`` that could only exist once the dataset (or, with ``site``,
    its copy at that site) had been committed: closing the entries before them would undo work
    done on that footing. A crash before the commit leaves only refusals and new ingest decisions
    about the name, and the ``data.abandoned`` entries that close attempts.
    """
    found = []
    for e in ws.ledger.entries(after + 1):
        b, kind = e.entry.body, e.entry.kind
        if kind == ABANDONED or not _names(b, dataset):
            continue
        if kind == "decision":
            request = b.get("request") or {}
            if b.get("decision") != "allow" or request.get("action") == "ingest":
                continue
            if site is not None and request.get("site") != site:
                continue
        elif site is not None and site not in (b.get("site"), b.get("from")):
            continue
        found.append(e.index)
    return found


def foreign(ws: Workspace, row: dict[str, Any]) -> str | None:
    """Why the journal row cannot be one this code opened (None when it can be).

    The journal sits beside the log, outside the signed tree, so anyone who can write the ledger
    database can add a row; closing it would have the log sign a ``data.abandoned`` entry voiding
    whatever the row cites. A row must cite its own allow decision (this operation, dataset and
    actor), list outcome entries only once ``ledgered``, each of its operation's kinds, about its
    dataset and after its decision, and (for an ingest or copy) nothing later may rest on them.
    """
    where = f"attempt journal row {row['id']} ({row['op']} of {row['dataset']!r})"
    try:
        first = int(row["decision_index"])
        decision = ws.ledger.get(first).entry
        outcome = [(int(i), ws.ledger.get(int(i)).entry) for i in row["outcome"]]
    except (OnshoreError, TypeError, ValueError):
        return f"{where} cites ledger entries that do not exist"
    request = decision.body.get("request") or {}
    if (decision.kind != "decision" or decision.body.get("decision") != "allow" or decision.actor != row["actor"]
            or request.get("action") != row["op"] or request.get("dataset") != row["dataset"]):
        return f"{where} cites ledger entry {first}, which is not its allow decision"
    if outcome and row["state"] != "ledgered":
        return f"{where} is open but lists outcome entries {[i for i, _ in outcome]}"
    for i, e in outcome:
        if i <= first or e.kind not in OUTCOME_KINDS.get(row["op"], ()) or e.body.get("dataset") != row["dataset"] \
                or e.body.get("decision_index", first) != first:
            return f"{where} lists ledger entry {i} ({e.kind}) as its outcome, which it is not"
    own = {i for i, _ in outcome}
    # a copy's source releases the key under its decision before any outcome is appended
    citing = [e.index for e in ws.ledger.entries(first + 1) if e.index not in own
              and first in (e.entry.body.get("decision_index"), *(e.entry.body.get("decision_indices") or ()))
              and not (row["op"] == "copy" and e.entry.kind == "key.release"
                       and e.entry.body.get("dataset") == row["dataset"])]
    if citing:
        return f"{where}: its decision (ledger entry {first}) is cited by ledger entries {citing[:5]}, not its own"
    if row["op"] in ("ingest", "copy") and outcome:
        later = relied_on(ws, row["dataset"], outcome[-1][0], row["site"] if row["op"] == "copy" else None)
        if later:
            return (f"{where}: later ledger entries {later[:5]} rest on its outcome entries "
                    f"{[i for i, _ in outcome]}, so the catalog held them once")
    return None


def _roll_withdraw_forward(ws: Workspace, conn: Any, row: dict[str, Any]) -> None:
    # The ledger already says consent was withdrawn: make the catalog say so too, and record the
    # destruction of any wrap the crashed run had not listed (a copy that slipped in before).
    recorded = {ws.ledger.get(i).entry.body.get("site") for i in row["outcome"][1:]}
    facts = {s: custody.custody_facts(ws, s, "dataset", row["dataset"])  # token serial/object before destroying
             for s in keyservice.key_sites(ws, conn, row["dataset"]) if s not in recorded}
    sites = keyservice.shred(ws, conn, row["dataset"])
    conn.execute(update(T.datasets).where(T.datasets.c.name == row["dataset"]).values(
        status="withdrawn", withdrawn_at=now_iso()))
    extra = [s for s in sites if s not in recorded]
    if extra:
        ws.record_many([("key.shred", f"site:{s}", {"dataset": row["dataset"], "site": s, **facts.get(s, {})})
                        for s in extra])


def close(ws: Workspace, catalog_conn: Any, row: dict[str, Any]) -> str:
    """Close one attempt whose process is gone; returns what was done. Inside the catalog's write turn."""
    what = f"{row['op']} of {row['dataset']!r} (attempt {row['id'][:8]}, decision {row['decision_index']})"
    if row["state"] == "ledgered" and _catalog_holds_outcome(ws, catalog_conn, row):
        action = f"completed {what}: its outcome was committed; removed the journal row"
        with write_transaction(ws.ledger.engine, "the ledger") as conn:
            conn.execute(delete(ledger_attempts).where(ledger_attempts.c.id == row["id"]))
    elif row["state"] == "ledgered" and row["op"] == "withdraw":
        _roll_withdraw_forward(ws, catalog_conn, row)
        action = f"rolled forward {what}: the ledger records it, so every wrap of the key was destroyed"
        with write_transaction(ws.ledger.engine, "the ledger") as conn:
            conn.execute(delete(ledger_attempts).where(ledger_attempts.c.id == row["id"]))
    else:
        idx = _abandon_entry(ws, row, [row["decision_index"], *row["outcome"]],
                             "the process running it stopped before its outcome was committed")
        action = (f"abandoned {what}: ledger entry {idx} closes it" if idx is not None
                  else f"{what} was closed meanwhile")
    _remove_staging(ws, catalog_conn, row["id"], row["site"])
    if row["site"] is not None and row["op"] != "withdraw":
        remove_orphans(catalog_conn, row["dataset"], row["site"])
    _lock_path(ws, row["id"]).unlink(missing_ok=True)
    return action


def recover(ws: Workspace) -> list[str]:
    """Close every attempt whose process is gone (see :func:`close`); returns what was done.

    Cheap when nothing crashed (one read of an empty table), so every mutating command calls it
    first: a name a crashed ingest left half-used is free again before it is checked.
    """
    if not any(not r["alive"] for r in open_attempts(ws)):
        return []
    done = []
    with write_transaction(ws.catalog, "the catalog") as conn:
        for row in open_attempts(ws):
            # a row this code did not open is left alone (onshore doctor reports it), never closed
            if not row["alive"] and foreign(ws, row) is None:
                done.append(close(ws, conn, row))
    if done:
        ws.invalidate()
    return done


def abandoned_indices(ws: Workspace) -> set[int]:
    """Every ledger index some ``data.abandoned`` entry closes."""
    closed: set[int] = set()
    for e in ws.ledger.entries(kinds=[ABANDONED]):
        closed.update(int(i) for i in e.entry.body.get("closes", []))
    return closed


__all__ = ["ABANDONED", "OUTCOME_KINDS", "Attempt", "Busy", "abandoned_indices", "close", "exclusive", "finish",
           "foreign", "guard", "is_alive", "is_held", "is_locked", "ledgered", "lock_path", "open_attempts", "opener",
           "prepare", "publish", "recover", "relied_on", "remove_orphans", "start"]
