"""Datasets: ingest, copy, read, list, show and withdraw, each decided by the policy decision point.

Every function here asks the PDP first (the decision goes to the ledger, allow or deny) and only
then touches data. A refusal raises PolicyDenied and changes nothing but the ledger's record of it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sqlalchemy import insert, select, update

from onshore.catalog import schema as T
from onshore.catalog.db import settled_read, write_transaction
from onshore.errors import IntegrityError, NotFoundError, OnshoreError, PolicyDenied, ValidationError
from onshore.faults import crash_point
from onshore.files import check_output_file, sha256_file
from onshore.i18n import N_, Message
from onshore.keys.envelope import new_data_key
from onshore.ledger.entries import now_iso
from onshore.names import check_name
from onshore.residency.pdp import Request
from onshore.residency.policy import UsagePolicy, cedar_hash, dataset_cedar, load_policy, parse_policy
from onshore.store import shards as S
from onshore.telemetry import frames as F
from onshore.telemetry.inputs import open_inputs
from onshore.telemetry.lerobot import write_lerobot_v3
from onshore.telemetry.provenance import read_provenances, with_provenance
from onshore.workspace import attempts, custody, datasetcard, keyservice
from onshore.workspace.datasetinfo import list_datasets, shards_at, show  # noqa: F401 - offered here too
from onshore.workspace.lineage import check_redistribution
from onshore.workspace.models import derived_from, taint_entries
from onshore.workspace.paths import check_plaintext_destination
from onshore.workspace.registry import get_embodiment, get_site
from onshore.workspace.workspace import Workspace

#: Frames per shard: large enough for efficient Parquet, small enough to copy and verify in pieces.
SHARD_FRAMES = 1_000_000

Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass(frozen=True)
class IngestResult:
    dataset: str
    site: str
    shards: list[S.ShardInfo]
    episodes: int
    frames: int
    ledger_indices: list[int]
    out_of_limits: int = 0  # state values outside their limits, kept under allow_out_of_limits


def _check_policy_sites(ws: Workspace, policy: UsagePolicy, source: str) -> None:
    for s in policy.sites:
        try:
            site = get_site(ws, s)
        except NotFoundError:
            raise ValidationError(Message(N_("{source}: field 'sites' names unknown site {site!r}"),
                                          {"source": source, "site": s})) from None
        if site.jurisdiction not in policy.jurisdictions:
            raise ValidationError(Message(
                N_("{source}: field 'sites' names {site!r} in {jurisdiction}, outside the policy's "
                   "jurisdictions {jurisdictions}"),
                {"source": source, "site": s, "jurisdiction": site.jurisdiction,
                 "jurisdictions": list(policy.jurisdictions)})
            )


def ingest(ws: Workspace, name: str, member: str, site: str, policy_path: Path, embodiment: str,
           inputs: Sequence[Path], progress: Progress | None = None,
           allow_out_of_limits: bool = False, provenance: dict[str, Any] | None = None) -> IngestResult:
    """Ingest telemetry into ``site`` as dataset ``name`` owned by ``member``. All or nothing.

    A state value outside its channel's limits is refused unless ``allow_out_of_limits``; then
    the number of such values is recorded in the ``data.ingest`` entry (``state_out_of_limits``).
    An action outside its limits is always refused. ``provenance`` (e.g. the model whose served
    run made the data) is recorded in the ``data.ingest`` entry as it is.

    Order (docs/residency.md, "Crashes"): check names and registry; decide ``ingest`` (the allow
    decision opens an attempt); check the inputs' provenance blocks; validate, fingerprint and
    encrypt the inputs batch by batch (``onshore.telemetry.inputs``: memory does not grow with
    the inputs) into shards in the attempt's own staging folder; check the fingerprints
    (redistribution, ``onshore.workspace.lineage``); then, in the catalog's write turn, refuse a
    name taken meanwhile, publish the shards, write the catalog rows and append consent.grant and
    data.ingest, and commit. Of two same-name ingests exactly one wins; the other is refused with
    ValidationError and touches nothing of the winner's. A refusal or crash at any step leaves no
    shard and no catalog row visible, and the attempt is closed in the ledger
    (``data.abandoned``) with its reason.
    """
    check_name(name, "dataset")
    ws.row("member", member)
    site_info = get_site(ws, site)
    emb = get_embodiment(ws, embodiment)
    attempts.recover(ws)
    if _dataset_exists(ws, name):
        raise ValidationError(Message(N_("dataset {name!r} already exists; ingest under a new name"), {"name": name}))
    granted = ws.ledger_governance().grants.get(name)
    if granted is not None and _finishing(ws, name):
        raise ValidationError(Message(N_("dataset {name!r} already exists; ingest under a new name"), {"name": name}))
    if granted is not None:  # the catalog lost the row; the name stays the first dataset's
        raise IntegrityError(f"dataset {name!r} already exists in the ledger (consent.grant, ledger entry "
                             f"{granted.index}) but the catalog has no row datasets/{name}; a dataset name is never "
                             "reused: ingest under a new name, and restore the catalog (see 'onshore doctor')")
    policy, policy_text = load_policy(policy_path)
    _check_policy_sites(ws, policy, str(policy_path))
    if not inputs:
        raise ValidationError("no input files given: name Parquet files or a LeRobot v3.0 folder")

    decision, attempt = attempts.start(ws, "ingest", Request(f"member:{member}", "ingest", name, site), name, site,
                                       (name, member, policy))
    root = Path(site_info.root)
    stage = attempt.staging(root)
    data_key = new_data_key()
    writer: S.ShardWriter | None = None
    try:
        with attempts.guard(ws, attempt):
            # Provenance blocks are read from the inputs' metadata now; fingerprints, which need
            # every frame, are checked once the stream has been read, before anything is published.
            check_redistribution(ws, member, [],
                                 [(str(p), b) for p in inputs for b in read_provenances(Path(p))])
            stream = open_inputs([Path(p) for p in inputs], emb, allow_out_of_limits)
            total = stream.total_frames
            # Validate and encrypt batch by batch into the attempt's staging folder: memory stays
            # flat whatever the size of the inputs; a refusal midway leaves only staged files,
            # which the guard removes with the folder.
            writer = S.ShardWriter(stage, name, data_key, stream.schema, SHARD_FRAMES)
            # Validation (Python and numpy, this thread) overlaps the writing of the batch before
            # it (compression and encryption in Arrow, which releases the GIL, on a second thread):
            # at most one batch is being written while the next is checked, so memory stays flat.
            # Leaving the pool waits for that write, so a refusal never aborts a writer in use.
            from concurrent.futures import Future, ThreadPoolExecutor

            with ThreadPoolExecutor(1, thread_name_prefix="ingest-write") as pool:
                pending: Future[None] | None = None
                for batch in stream.batches():
                    if pending is not None:
                        pending.result()  # a failed write stops the ingest here
                    pending = pool.submit(writer.write, batch)
                    if progress:
                        progress("validate + encrypt", stream.frames, max(total, stream.frames))
                if pending is not None:
                    pending.result()
            written = writer.close()
            episodes, frames, out_of_limits = len(stream.episodes), stream.frames, stream.out_of_limits
            fingerprints = stream.fingerprints.result()
            check_redistribution(ws, member, fingerprints, [])
            crash_point("ingest.staged")
            shard_json = [{"sha256": s.sha256, "salt": s.salt, "bytes": s.bytes, "frames": s.frames}
                          for s in written]
            with write_transaction(ws.catalog, "the catalog") as conn:
                if _dataset_exists(ws, name, conn):  # another ingest of this name won the race
                    raise ValidationError(f"dataset {name!r} already exists (another ingest of that name "
                                          "finished first); ingest under a new name")
                attempts.publish(attempt, stage, root, [s.path for s in written])
                crash_point("ingest.published")
                now = now_iso()
                conn.execute(insert(T.datasets).values(
                    name=name, owner=member, embodiment=emb.name, policy=policy_text, policy_hash=policy.hash,
                    status="active", episodes=episodes, frames=frames, created_at=now))
                conn.execute(insert(T.shards), [
                    {"dataset": name, "site": site, "sha256": s.sha256, "path": s.path, "salt": s.salt,
                     "bytes": s.bytes, "frames": s.frames, "created_at": now} for s in written])
                keyservice.wrap_for_site(ws, conn, name, site, data_key)
                attempt.outcome = ws.record_many([
                    ("consent.grant", f"member:{member}", {
                        "dataset": name, "owner": member, "policy": policy.to_json(), "policy_hash": policy.hash,
                        "cedar_hash": cedar_hash(dataset_cedar(name, member, policy, withdrawn=False))}),
                    ("data.ingest", f"site:{site}", {
                        "dataset": name, "owner": member, "site": site, "jurisdiction": site_info.jurisdiction,
                        "embodiment": emb.name, "policy_hash": policy.hash, "decision_index": attempt.decision_index,
                        "episodes": episodes, "frames": frames, "shards": shard_json,
                        "fingerprints": fingerprints,
                        **({"state_out_of_limits": out_of_limits} if allow_out_of_limits else {}),
                        **({"provenance": provenance} if provenance else {})}),
                ], attempts.ledgered(attempt))
                crash_point("ingest.ledgered")
    except BaseException:
        if writer is not None:
            writer.abort()  # its open file and staged shards (the guard also removes the folder)
        raise
    finally:
        del data_key
    crash_point("ingest.committed")
    attempts.finish(ws, attempt)
    ws.invalidate()
    return IngestResult(name, site, written, episodes, frames, [attempt.decision_index, *attempt.outcome],
                        out_of_limits)


def _finishing(ws: Workspace, name: str) -> bool:
    """Whether another ingest of ``name`` was between its ledger append and its catalog commit:
    looking again once it has committed (``settled_read``) tells a same-name race that is
    finishing (a refusal) from a catalog that lost the row."""
    with settled_read(ws.catalog, "the catalog") as conn:
        return _dataset_exists(ws, name, conn)


def _dataset_exists(ws: Workspace, name: str, conn: Any = None) -> bool:
    q = select(T.datasets.c.name).where(T.datasets.c.name == name)
    if conn is not None:
        return conn.execute(q).first() is not None
    with ws.catalog.connect() as c:
        return c.execute(q).first() is not None


def copy(ws: Workspace, name: str, to_site: str, from_site: str | None = None,
         progress: Progress | None = None) -> dict[str, Any]:
    """Copy a dataset's shards to ``to_site`` and wrap its key for that site.

    Decided as ``copy`` by the target site at the target site: a target outside the policy is
    refused (exit 3) before any byte moves, and the refusal is in the ledger. The shards are
    staged in the attempt's own folder at the target and published in the catalog's write turn,
    where a copy to the same site that finished first, or a withdrawal, refuses this one.
    ``progress`` gets ``("copy", bytes copied, bytes in all)``.
    """
    ws.row("dataset", name)
    target = get_site(ws, to_site)
    attempts.recover(ws)
    held = shards_at(ws, name)
    sources = sorted({s["site"] for s in held})
    if to_site in sources:
        raise ValidationError(Message(N_("dataset {name!r} is already at site {site!r}"),
                                      {"name": name, "site": to_site}))
    attempt = attempts.prepare(ws, "copy", name, to_site, f"site:{to_site}")
    with attempts.guard(ws, attempt):
        if from_site is None:
            if not sources:
                raise OnshoreError(f"dataset {name!r} has no shards to copy")
            from_site = sources[0]
        elif from_site not in sources:
            raise ValidationError(Message(N_("dataset {name!r} has no shards at site {site!r}; it sits at {sources}"),
                                      {"name": name, "site": from_site, "sources": sources}))
        source = get_site(ws, from_site)
        # the source site's key service decides (copy by the target, to the target) and records it;
        # its allow decision opens the attempt
        rel = keyservice.release(ws, name, from_site, "copy", copy_to=to_site, on_allow=attempts.opener(attempt))
        decision, data_key = rel.decision, rel.key
        crash_point("copy.released")
        rows = [s for s in held if s["site"] == from_site]
        stage = attempt.staging(target.root)
        total, before = sum(s["bytes"] for s in rows), 0
        for s in rows:
            S.copy_shard(Path(source.root), Path(target.root), s["path"], s["sha256"], stage,
                         (lambda n, b=before: progress("copy", b + n, total)) if progress else None)
            before += s["bytes"]
        crash_point("copy.staged")
        with write_transaction(ws.catalog, "the catalog") as conn:
            status = conn.execute(select(T.datasets.c.status).where(T.datasets.c.name == name)).scalar()
            if status != "active":
                raise PolicyDenied(Message(N_("dataset {name!r} was withdrawn while it was being copied; nothing was "
                                              "placed at {site!r}"), {"name": name, "site": to_site}),
                                   [f"dataset/{name}/withdrawn"])
            if conn.execute(select(T.shards.c.id).where(T.shards.c.dataset == name,
                                                        T.shards.c.site == to_site)).first():
                raise ValidationError(f"dataset {name!r} is already at site {to_site!r} (another copy finished first)")
            attempts.publish(attempt, stage, target.root, [s["path"] for s in rows])
            crash_point("copy.published")
            now = now_iso()
            conn.execute(insert(T.shards), [
                {**{k: s[k] for k in ("dataset", "sha256", "path", "salt", "bytes", "frames")},
                 "site": to_site, "created_at": now} for s in rows])
            keyservice.wrap_for_site(ws, conn, name, to_site, data_key)
            attempt.outcome = [ws.record("data.copy", f"site:{to_site}", {
                "dataset": name, "from": from_site, "to": to_site, "jurisdiction": target.jurisdiction,
                "decision_index": attempt.decision_index, "policy_hash": decision.policy_hash,
                "shards": [s["sha256"] for s in rows]}, attempts.ledgered(attempt))]
            crash_point("copy.ledgered")
    crash_point("copy.committed")
    attempts.finish(ws, attempt)
    return {"dataset": name, "from": from_site, "to": to_site, "shards": len(rows), "ledger_index": attempt.outcome[0]}


def _open_for_read(ws: Workspace, name: str, site: str, purpose: str | None, action: str = "read"
                   ) -> tuple[list[dict[str, Any]], Path, bytes, int]:
    """Decide ``action`` at ``site``, release the key there; returns shards, root, key, decision index."""
    ws.row("dataset", name)
    attempts.recover(ws)  # a withdrawal a crash left in the ledger only must take effect before any read
    site_info = get_site(ws, site)
    rel = keyservice.release(ws, name, site, action, purpose)  # decides, records, unwraps
    rows = shards_at(ws, name, site)
    if not rows:
        raise OnshoreError(Message(N_("dataset {name!r} has no shards at site {site!r}; "
                                      "see 'onshore dataset show {name}'"), {"name": name, "site": site}))
    return rows, Path(site_info.root), rel.key, rel.decision_index


@dataclass
class ResidentDataset:
    """A dataset opened at a site for one decided action and purpose, read shard by shard.

    Made by :func:`open_resident` after the decision and the key release; holds the data key in
    memory for as long as the reader lives.
    """

    name: str
    owner: str
    embodiment: str
    site: str
    root: Path
    shards: list[dict[str, Any]]  # catalog rows at the site, in catalog order
    decision_index: int
    key: bytes = field(repr=False)

    @property
    def shard_digests(self) -> list[str]:
        return [s["sha256"] for s in self.shards]

    @property
    def frames(self) -> int:
        return int(sum(s["frames"] for s in self.shards))

    def read_shard(self, i: int) -> pa.Table:
        """Decrypt and return shard ``i`` whole (authenticated page by page, see ``store.shards``)."""
        s = self.shards[i]
        return S.read_shard(self.root, s["path"], s["sha256"], s["salt"], self.name, self.key)

    def iter_shard(self, i: int) -> Iterator[pa.RecordBatch]:
        """Decrypt shard ``i`` batch by batch (a row group at a time), for bounded memory."""
        s = self.shards[i]
        return S.iter_shard_batches(self.root, s["path"], s["sha256"], s["salt"], self.name, self.key)


def open_resident(ws: Workspace, names: Sequence[str], site: str, purpose: str | None, action: str
                  ) -> list[ResidentDataset]:
    """Open several datasets at ``site`` for ``action`` and ``purpose``: all decided before any is read.

    Every dataset is decided first (each decision recorded); if any is refused, PolicyDenied
    (exit 3) names each refused dataset and its rules, and no key is released and no byte read.
    Then every dataset must have shards at ``site``; only then are the keys released by the
    site's key service, which decides each once more for itself (each release recorded with the
    purpose and citing its own decision).
    """
    if not names:
        raise ValidationError("no datasets named")
    if len(set(names)) != len(names):
        raise ValidationError(f"a dataset is named twice in {', '.join(names)}")
    rows = [ws.row("dataset", n) for n in names]
    site_info = get_site(ws, site)
    # one ledger transaction for all of a job's decisions (group commit)
    decided = [(n, d, i) for n, (d, i) in zip(names, ws.decide_many(
        [Request(f"site:{site}", action, n, site, purpose) for n in names]), strict=True)]
    refused = [(n, d, i) for n, d, i in decided if not d.allowed]
    if refused:
        where = f"at site {site} ({site_info.jurisdiction})" + (f" for purpose {purpose!r}" if purpose else "")
        detail = "; ".join(f"dataset {n!r}: rule(s) {', '.join(d.rules)} (ledger entry {i})" for n, d, i in refused)
        raise PolicyDenied(f"refused: {action} {where}: {detail}",
                           sorted({r for _, d, _ in refused for r in d.rules}))
    held = {n: shards_at(ws, n, site) for n in names}
    missing = [n for n in names if not held[n]]
    if missing:
        raise OnshoreError(f"dataset(s) {', '.join(missing)} have no shards at site {site!r}; copy them there "
                           "first if their policies allow (see 'onshore dataset show NAME')")
    out = []
    for row, n in zip(rows, names, strict=True):
        rel = keyservice.release(ws, n, site, action, purpose)  # the key service decides again, for itself
        out.append(ResidentDataset(n, row["owner"], row["embodiment"], site, Path(site_info.root), held[n],
                                   rel.decision_index, rel.key))
    return out


def iter_batches(ws: Workspace, name: str, site: str, purpose: str | None = None, action: str = "read"
                 ) -> Iterator[pa.RecordBatch]:
    """Stream the dataset's frames at ``site`` (decided and key-released once, up front)."""
    rows, root, key, _ = _open_for_read(ws, name, site, purpose, action)

    def gen() -> Iterator[pa.RecordBatch]:
        for s in rows:
            yield from S.iter_shard_batches(root, s["path"], s["sha256"], s["salt"], name, key)
    return gen()


def read(ws: Workspace, name: str, site: str, purpose: str | None = None, action: str = "read") -> pa.Table:
    """The whole dataset as one Arrow table, read at ``site`` (which must be allowed and hold it)."""
    rows, root, key, decision_idx = _open_for_read(ws, name, site, purpose, action)
    return with_provenance(_read_all(rows, root, name, key), _provenance(ws, name, site, action, decision_idx))


def _provenance(ws: Workspace, name: str, site: str, action: str, decision_index: int) -> dict[str, Any]:
    """The block that plaintext leaving a site carries (telemetry/provenance.py)."""
    row = ws.row("dataset", name)
    return {"dataset": name, "owner": row["owner"], "workspace": ws.origin, "site": site, "action": action,
            "decision_index": decision_index, "policy_hash": row["policy_hash"],
            "cedar_hash": cedar_hash(dataset_cedar(name, row["owner"], parse_policy(row["policy"]), withdrawn=False))}


def read_to_file(ws: Workspace, name: str, site: str, out: Path, purpose: str | None = None,
                 force: bool = False, progress: Progress | None = None) -> int:
    """Decrypt the dataset at ``site`` into the plain Parquet file ``out``; returns the frames.

    ``out`` is checked before anything is decided or any key released (refused: a folder, a
    missing parent folder, an existing file unless ``force``, a place inside a site's folder or
    the workspace's internals). Frames stream through batch by
    batch, into a temporary file beside ``out`` that replaces it only when complete.
    ``progress`` gets ``("decrypt", frames written, frames in all)``.
    """
    out = check_output_file(out, force)
    check_plaintext_destination(ws, out, "--out")
    total = int(ws.row("dataset", name)["frames"])
    batches = iter_batches(ws, name, site, purpose)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}.tmp")
    done = 0
    writer: pq.ParquetWriter | None = None
    try:
        for batch in batches:
            if writer is None:
                writer = pq.ParquetWriter(tmp, batch.schema)
            writer.write_batch(batch)
            done += batch.num_rows
            if progress:
                progress("decrypt", done, total)
        if writer is None:
            raise OnshoreError(f"dataset {name!r} has no frames at site {site!r}")
        writer.close()
        writer = None
        os.replace(tmp, out)
    finally:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
    return done


def _read_all(rows: list[dict[str, Any]], root: Path, name: str, key: bytes) -> pa.Table:
    # Shards are decrypted concurrently (pyarrow releases the GIL): one shard's read leaves cores
    # idle at its tail, which the next one fills. The whole table is built in memory either way.
    def one(s: dict[str, Any]) -> pa.Table:
        return S.read_shard(root, s["path"], s["sha256"], s["salt"], name, key)

    if len(rows) < 2:
        return pa.concat_tables([one(s) for s in rows])
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(len(rows), os.cpu_count() or 1)) as pool:
        return pa.concat_tables(list(pool.map(one, rows)))


def renumber_episodes(table: pa.Table) -> pa.Table:
    """Episodes numbered 0..N-1 and frames 0..len-1 in order, as LeRobot v3.0 requires.

    A table already numbered so comes back unchanged (so export then re-ingest is lossless);
    otherwise indices are reassigned in sorted order and timestamps are kept.
    """
    table = table.sort_by([(F.EPISODE, "ascending"), (F.FRAME, "ascending")])
    ep = table.column(F.EPISODE).to_numpy()
    starts = np.concatenate(([0], np.flatnonzero(np.diff(ep)) + 1))
    lengths = np.diff(np.append(starts, len(ep)))
    new_ep = np.repeat(np.arange(len(starts)), lengths)
    new_fr = np.arange(len(ep)) - np.repeat(starts, lengths)
    if (new_ep == ep).all() and (new_fr == table.column(F.FRAME).to_numpy()).all():
        return table
    table = table.set_column(table.column_names.index(F.EPISODE), F.EPISODE, pa.array(new_ep, pa.int64()))
    return table.set_column(table.column_names.index(F.FRAME), F.FRAME, pa.array(new_fr, pa.int64()))


def export(ws: Workspace, name: str, site: str, out: Path, fmt: str = "lerobot",
           purpose: str | None = None) -> dict[str, Any]:
    """Export a dataset at ``site`` as a LeRobotDataset v3.0 folder (plaintext) at ``out``.

    Decided as ``export`` at ``site`` (which must be allowed and hold the data); the export, with
    the SHA-256 of every file written, is recorded in the ledger, signed by the site.
    """
    if fmt != "lerobot":
        raise ValidationError(f"--format {fmt!r}: only 'lerobot' (LeRobotDataset v3.0) is supported")
    out = Path(out)
    check_plaintext_destination(ws, out, "--out")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValidationError(f"{out}: already exists and is not an empty folder; choose a new folder")
    emb = get_embodiment(ws, ws.row("dataset", name)["embodiment"])
    rows, root, key, decision_idx = _open_for_read(ws, name, site, purpose, "export")
    table = renumber_episodes(_read_all(rows, root, name, key))
    provenance = _provenance(ws, name, site, "export", decision_idx)
    row = ws.row("dataset", name)
    site_info = get_site(ws, site)
    tasks = pc.unique(table.column(F.TASK)).to_pylist() if F.TASK in table.column_names else []

    def card(info: dict[str, Any]) -> str:
        return datasetcard.render(datasetcard.CardFacts(
            dataset=name, owner=row["owner"], embodiment=emb.name, site=site, jurisdiction=site_info.jurisdiction,
            policy=parse_policy(row["policy"]).to_json(), provenance=provenance, features=info["features"],
            fps=info["fps"], episodes=info["total_episodes"], frames=info["total_frames"], tasks=tasks))

    write_lerobot_v3(table, emb, out, provenance=provenance, card=card)
    files = sorted(p for p in out.rglob("*") if p.is_file())
    digests = {str(p.relative_to(out)): sha256_file(p) for p in files}
    idx = ws.record("data.export", f"site:{site}", {
        "dataset": name, "site": site, "jurisdiction": site_info.jurisdiction, "format": "lerobot-v3.0",
        "purpose": purpose, "decision_index": decision_idx, "frames": table.num_rows, "files": digests})
    return {"dataset": name, "site": site, "out": str(out), "frames": table.num_rows, "files": len(files),
            "ledger_index": idx}


def derived_models(ws: Workspace, name: str) -> list[dict[str, Any]]:
    """Models trained on ``name``, directly or by fine-tuning one that was (model, site, via)."""
    return derived_from(ws, name)


def withdraw(ws: Workspace, name: str, member: str) -> dict[str, Any]:
    """Withdraw consent: crypto-shred every wrap of the dataset key and record it.

    Only the owning member may withdraw. Afterwards every read, copy, export or training of the
    dataset is refused by the ``dataset/NAME/withdrawn`` rule, and the shard bytes are noise.
    Returns the sites whose keys were destroyed and the derived models (with the policy's
    derived-model clause); each derived model, directly or through fine-tuning, gets a
    ``model.taint`` entry in the same append, and from then on the clause governs it (the
    models' Cedar is rebuilt from the ledger's withdrawals). In the catalog's write turn the
    entries are appended, then the keys destroyed, then the catalog commits; a crash after the
    append is rolled forward by the next command or `onshore doctor --repair`, never back.
    """
    row = ws.row("dataset", name)
    ws.row("member", member)
    attempts.recover(ws)
    decision, attempt = attempts.start(ws, "withdraw", Request(f"member:{member}", "withdraw", name), name, None)
    with attempts.guard(ws, attempt):
        with write_transaction(ws.catalog, "the catalog") as conn:
            status = conn.execute(select(T.datasets.c.status).where(T.datasets.c.name == name)).scalar()
            if status != "active":
                raise ValidationError(Message(N_("dataset {name!r} was already withdrawn "
                                                 "(by another command meanwhile)"), {"name": name}))
            # the entries first, then the irreversible destruction of custody keys: a crash in
            # between is rolled forward (the ledger already says so), never left half-done
            sites = keyservice.key_sites(ws, conn, name)
            models = derived_models(ws, name)
            clause = parse_policy(row["policy"]).derived_models
            attempt.outcome = ws.record_many(
                [("consent.withdraw", f"member:{member}", {"dataset": name, "decision_index": attempt.decision_index,
                                                           "derived_models": models, "derived_models_clause": clause})]
                + [("key.shred", f"site:{s}", {"dataset": name, "site": s,
                                                **custody.custody_facts(ws, s, "dataset", name)}) for s in sites]
                + taint_entries(ws, name, member, clause),
                attempts.ledgered(attempt))
            crash_point("withdraw.ledgered")
            keyservice.shred(ws, conn, name)
            conn.execute(update(T.datasets).where(T.datasets.c.name == name).values(status="withdrawn",
                                                                                    withdrawn_at=now_iso()))
    crash_point("withdraw.committed")
    attempts.finish(ws, attempt)

    ws.invalidate()
    return {"dataset": name, "shredded_at": sites, "derived_models": models, "derived_models_clause": clause,
            "ledger_indices": attempt.outcome}
