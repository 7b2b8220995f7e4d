"""`onshore doctor`: check catalog, ledger, checkpoints and files against each other; repair what a crash left.

What is checked (each finding says what to do):

- the ledger: every signature, the Merkle root, and the newest stored checkpoint (truncation);
- every stored checkpoint: the log's signature, and its root against the ledger's tree;
- attempts whose process is gone (see onshore.workspace.attempts);
- catalog against ledger: every dataset has exactly one live consent.grant and data.ingest; the
  shards the catalog places at each site are exactly those the ledger's ingest and copies place
  there; a dataset is withdrawn in the catalog exactly when the ledger records it; key wraps
  exist exactly at the sites holding an active dataset; no live ingest or copy in the ledger is
  missing from the catalog;
- signed rules (``check_signed_rules``): every catalog row a decision uses agrees with the signed
  entry it comes from: a dataset's owner and policy with its consent.grant, a model's base and
  lineage rows with its model.release, members' and sites' keys (and sites' jurisdictions and
  roles) with member.add / site.add, embodiments with embodiment.add, and no serving token digest
  in the catalog that no token.issue entry issued;
- every shard file is present and hashes to its digest;
- orphans: shard files no catalog row names, staging folders of no running attempt;
- training (:func:`_training_findings`): every model folder at every site is a released model
  held there (its sealed files hash to the ``model.release`` digests), a run still running (its
  lock is held), or a killed run's leftovers: an unfinished run (``run.json``), with each sealed
  checkpoint checked against its ``job.checkpoint`` entry and its datasets against withdrawals,
  or an orphan folder;
- model keys (:func:`_model_key_findings`): every wrap in ``model_key_wraps`` cites the
  ``model.release`` or ``model.copy`` entry that placed the model at that site and has its custody
  key; every custody key of a model belongs to a wrap or a run;
- recordings (:func:`_spool_findings`): a recording spool whose server is gone (sealed episodes
  whose key died with it, or plaintext from an older version).

``repair`` closes attempts whose process is gone, closes ingests and copies that the ledger
records and the catalog never committed (a ``data.abandoned`` entry), and removes orphan files
and staging folders; it abandons a killed training run (a signed ``job.abandoned`` entry naming
its unfinished jobs, then its folder and custody key are removed: rerun the training command
before ``--repair`` to resume it instead), removes orphan model folders, stray model keys and dead
recording spools; it leaves alone what only a person can decide (a missing or altered shard or
model file, a damaged ledger, a wrap the ledger does not back), and appends what it did to
``reports/doctor.log``.
"""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import inspect, select

from onshore.catalog import schema as T
from onshore.catalog.db import settled_read, write_transaction
from onshore.errors import IntegrityError, OnshoreError
from onshore.files import sha256_file
from onshore.keys.keystore import RESOURCE_FOLDERS
from onshore.ledger.entries import now_iso
from onshore.names import is_model_id
from onshore.store import shards as S
from onshore.workspace import attempts, custody, governance, keyservice, runs
from onshore.workspace import models as wsm
from onshore.workspace.paths import RECORDING_SPOOL, SPOOL_LOCK
from onshore.workspace.registry import get_embodiment
from onshore.workspace.workspace import LOG_ACTOR, Workspace

#: The catalog settings row where the dashboard's token digest was kept before it was a ledger entry.
DASHBOARD_SETTING = "dashboard_token_sha256"

LOG_FILE = "doctor.log"
_PLACING = ("consent.grant", "data.ingest", "data.copy", "consent.withdraw", "key.shred", attempts.ABANDONED)


@dataclass(frozen=True)
class Finding:
    """One thing that is wrong: which check found it, about what, and what to do."""

    check: str
    subject: str
    problem: str
    fix: str
    repairable: bool
    repaired: str | None = None


@dataclass
class DoctorReport:
    findings: list[Finding] = field(default_factory=list)
    in_progress: list[str] = field(default_factory=list)  # attempts whose process still runs

    @property
    def ok(self) -> bool:
        """True when nothing is left to do (every finding, if any, was repaired)."""
        return all(f.repaired for f in self.findings)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "findings": [asdict(f) for f in self.findings], "in_progress": self.in_progress}


def _check_ledger(ws: Workspace, out: DoctorReport) -> bool:
    try:
        ws.verify_ledger()
    except OnshoreError as e:
        out.findings.append(Finding("ledger", "ledger", str(e), "restore the ledger database from a backup; "
                                    "nothing written since can be trusted until then", False))
        return False
    size = ws.ledger.size()
    for cp_size in ws.ledger.checkpoint_sizes():
        note = ws.ledger.checkpoint_note(cp_size) or ""
        try:
            cp = ws.open_checkpoint(note)
            ok = cp.size == cp_size and cp.size <= size and ws.ledger.root(cp.size) == cp.root_hash
        except OnshoreError:
            ok = False
        if not ok:
            out.findings.append(Finding("checkpoints", f"checkpoint {cp_size}",
                                        "does not verify or does not match the ledger's tree",
                                        "restore the ledger database from a backup", False))
    return True


def _attempt_findings(ws: Workspace, out: DoctorReport, repair: bool) -> set[str]:
    """Report (and close) attempts whose process is gone; returns the datasets other checks skip
    (those with a running attempt, and without ``repair`` those with a dead one)."""
    busy, foreign = set(), set()
    for row in attempts.open_attempts(ws):
        what = f"{row['op']} of {row['dataset']!r} (attempt {row['id'][:8]}, decision {row['decision_index']})"
        if row["alive"]:
            out.in_progress.append(what)
        if row["alive"] or not repair:  # a dead one's leftovers are its finding, not separate ones
            busy.add(row["dataset"])
        problem = None if row["alive"] else attempts.foreign(ws, row)
        if problem is not None:
            foreign.add(row["id"])
            out.findings.append(Finding("attempts", f"{row['op']} of {row['dataset']!r} (attempt {row['id'][:8]})",
                                        f"{problem}; it is left open, nothing is closed for it",
                                        "investigate who wrote it, then delete that row of the ledger database's "
                                        "ledger_attempts table", False))
    if repair:
        done = attempts.recover(ws)
        for action in done:
            out.findings.append(Finding("attempts", action.split(":")[0], "its process stopped before finishing",
                                        "onshore doctor --repair", True, action))
    else:
        for row in attempts.open_attempts(ws):
            if not row["alive"] and row["id"] not in foreign:
                out.findings.append(Finding(
                    "attempts", f"{row['op']} of {row['dataset']!r} (attempt {row['id'][:8]})",
                    f"its process stopped in state {row['state']!r} before finishing",
                    "run 'onshore doctor --repair' (or any ingest, copy or withdraw) to close it", True))
    return busy


def _ledger_view(ws: Workspace) -> dict[str, dict[str, Any]]:
    """Per dataset, the live (not abandoned) placing entries of the ledger."""
    entries = list(ws.ledger.entries(kinds=_PLACING))
    voided = {int(i) for e in entries if e.entry.kind == attempts.ABANDONED for i in e.entry.body.get("closes", [])}
    view: dict[str, dict[str, Any]] = defaultdict(lambda: {"grant": [], "ingest": [], "copies": [], "withdraw": []})
    key = {"consent.grant": "grant", "data.ingest": "ingest", "data.copy": "copies", "consent.withdraw": "withdraw"}
    for e in entries:
        k = key.get(e.entry.kind)
        if k is not None and (e.index not in voided or k == "withdraw"):  # a withdrawal is never undone
            view[e.entry.body["dataset"]][k].append(e)
    return view


def _catalog_findings(ws: Workspace, out: DoctorReport, busy: set[str], repair: bool) -> None:
    view = _ledger_view(ws)
    with ws.catalog.connect() as conn:
        datasets = {r["name"]: dict(r) for r in conn.execute(select(T.datasets)).mappings()}
        placed: dict[tuple[str, str], set[str]] = defaultdict(set)
        for d, site, sha in conn.execute(select(T.shards.c.dataset, T.shards.c.site, T.shards.c.sha256)):
            placed[(d, site)].add(sha)
        wraps = {(d, s) for d, s in conn.execute(select(T.key_wraps.c.dataset, T.key_wraps.c.site))}
    for name in sorted(set(datasets) | set(view)):
        if name in busy:
            continue
        v, row = view[name], datasets.get(name)
        if row is None:
            stale = v["grant"] + v["ingest"] + v["copies"]
            if stale and not _stale_outcome(ws, out, name, stale, repair):
                busy.add(name)  # its row was lost: its files are kept for the catalog's restore
            continue
        for kind in ("grant", "ingest"):
            if len(v[kind]) != 1:
                out.findings.append(Finding("catalog-ledger", f"dataset {name!r}",
                                            f"the ledger holds {len(v[kind])} live {kind} entries (expected 1)",
                                            "restore the catalog or ledger from a backup; investigate", False))
        if len(v["ingest"]) != 1:
            continue
        ing = v["ingest"][0].entry.body
        expect: dict[tuple[str, str], set[str]] = defaultdict(set)
        expect[(name, ing["site"])] |= {s["sha256"] for s in ing["shards"]}
        for c in v["copies"]:
            expect[(name, c.entry.body["to"])] |= set(c.entry.body["shards"])
        have = {k: s for k, s in placed.items() if k[0] == name}
        for k in sorted(set(expect) | set(have)):
            if expect.get(k, set()) != have.get(k, set()):
                out.findings.append(Finding(
                    "catalog-ledger", f"dataset {name!r} at {k[1]!r}",
                    f"the catalog places {len(have.get(k, ()))} shard(s) there, the ledger {len(expect.get(k, ()))}",
                    "restore the catalog from a backup taken after the ledger's entries", False))
        withdrawn = row["status"] == "withdrawn"
        if withdrawn != bool(v["withdraw"]):
            out.findings.append(Finding(
                "catalog-ledger", f"dataset {name!r}",
                f"the catalog says {row['status']!r} but the ledger {'does not record' if withdrawn else 'records'} "
                "a withdrawal", "run 'onshore dataset withdraw' again as its owner" if not withdrawn else
                "restore the ledger from a backup", False))
        want = set() if withdrawn else {k[1] for k in have}
        got = {s for d, s in wraps if d == name}
        if want != got:
            out.findings.append(Finding(
                "catalog-ledger", f"dataset {name!r}",
                f"its key is wrapped at {sorted(got)} but it should be at {sorted(want)}",
                "withdraw the dataset again to destroy stray wraps, or copy it again to restore a site", False))


def check_signed_rules(ws: Workspace) -> list[Finding]:
    """Every catalog row that feeds a decision, checked against the signed entry it comes from.

    Decisions already use the signed values (or refuse the row); this names every disagreement at
    once, with the row and the entry, so that a person can restore the catalog. Changes nothing.
    A command in progress elsewhere may be between its entry and its rows, so what is found is
    looked at again once no writer is in progress (``settled_read``), as decisions do.
    """
    found = _signed_rule_findings(ws, ws.catalog.connect)
    if found:
        found = _signed_rule_findings(ws, lambda: settled_read(ws.catalog, "the catalog"))
    return found


def _signed_rule_findings(ws: Workspace, connect: Callable[[], AbstractContextManager[Any]]) -> list[Finding]:
    found: list[Finding] = []
    restore = "restore the catalog from a backup taken after this entry; decisions refuse the row until then"

    def finding(subject: str, problem: str) -> None:
        found.append(Finding("signed-rules", subject, problem, restore, False))

    with connect() as conn:
        datasets = conn.execute(select(T.datasets.c.name, T.datasets.c.owner, T.datasets.c.policy)).all()
        models = {r["name"]: dict(r) for r in conn.execute(select(T.models.c.name, T.models.c.base,
                                                                   T.models.c.ledger_index)).mappings()}
        lineage_rows: dict[str, set[str]] = defaultdict(set)
        for m, d in conn.execute(select(T.model_datasets.c.model, T.model_datasets.c.dataset)):
            lineage_rows[m].add(d)
        members = conn.execute(select(T.members.c.name, T.members.c.public_key)).all()
        sites = [tuple(r) for r in conn.execute(select(T.sites.c.name, T.sites.c.jurisdiction, T.sites.c.roles,
                                                       T.sites.c.public_key))]
        embodiments = [r[0] for r in conn.execute(select(T.embodiments.c.name))]
        # tokens are ledger entries now; older catalogs may still hold this table, and rows in it
        token_rows = conn.execute(select(T.serve_tokens.c.site, T.serve_tokens.c.client, T.serve_tokens.c.token_sha256)
                                  ).all() if inspect(conn).has_table(T.serve_tokens.name) else []
        # the dashboard's token digest is a dashboard.token entry now (web/access.py); older
        # catalogs kept it in this settings row, which opens nothing any more
        dashboard_row = conn.execute(select(T.settings.c.value).where(T.settings.c.key == DASHBOARD_SETTING)).scalar()
    # read after the catalog: an entry is appended before its row commits, so every row read has
    # its entry in this read (read before, a command finishing in between would look like a finding)
    gov = ws.ledger_governance()
    for name, owner, text in datasets:
        try:
            governance.check_catalog_dataset(gov, name, owner, text)
        except OnshoreError as e:
            finding(f"dataset {name!r}", str(e))
    for name, row in sorted(models.items()):
        try:
            rel = governance.model_release(gov, name, int(row["ledger_index"]))
        except OnshoreError as e:
            finding(f"model {name!r}", str(e))
            continue
        if row["base"] != rel.base:
            finding(f"model {name!r}", f"catalog row models/{name} says base {row['base']!r}, ledger entry "
                                       f"{rel.index} (model.release) says {rel.base!r}")
        if lineage_rows.get(name, set()) != set(rel.datasets):
            finding(f"model {name!r}", f"catalog rows model_datasets/{name} name {sorted(lineage_rows.get(name, ()))}, "
                                       f"ledger entry {rel.index} (model.release) names {list(rel.datasets)}")
    for subject, later in sorted(gov.reused.items()):
        if subject.startswith("model:"):
            finding(f"model {subject[6:]!r}", f"the ledger releases this name more than once (later model.release "
                                              f"entries {later}); its lineage counts every release's datasets")
    for name, key in members:
        if gov.members.get(name) != key:
            finding(f"member {name!r}", f"catalog row members/{name}: its public key is not the one a member.add "
                                        "entry registered")
    try:
        governance.check_catalog_sites(gov, sites)
    except OnshoreError as e:
        finding("sites", str(e))
    for name in embodiments:
        try:
            get_embodiment(ws, name)
        except OnshoreError as e:
            finding(f"embodiment {name!r}", str(e))
    issued = governance.ledger_tokens(ws.ledger)
    for site, client, digest in token_rows:
        if digest not in issued:
            finding(f"token of {client!r} at {site!r}", f"catalog row serve_tokens ({digest[:16]}...) holds a digest "
                                                        "no token.issue entry issued; servers never accept it")
    if dashboard_row is not None:
        finding("dashboard token", f"catalog row settings/{DASHBOARD_SETTING} holds a digest; the dashboard accepts "
                                   "only the token of the newest dashboard.token entry ('onshore dashboard token')")
    return found


def _stale_outcome(ws: Workspace, out: DoctorReport, name: str, stale: list[Any], repair: bool) -> bool:
    """Ingest (or copy) entries for a dataset the catalog never got: a crash between the ledger
    append and the catalog commit, from a version without the attempt journal. False (nothing
    closed) when later entries show the catalog did hold the dataset: its row was deleted, and
    closing its grant would free its name and policy for someone else's (docs/threat-model.md)."""
    closes = [e.index for e in stale]
    later = attempts.relied_on(ws, name, closes[-1])
    if later:  # the catalog held the dataset once: its row was lost or deleted, not never committed
        out.findings.append(Finding(
            "catalog-ledger", f"dataset {name!r}", f"the ledger records entries {closes} for it, and later entries "
            f"{later[:5]} rest on them, but the catalog has no such dataset",
            "restore the catalog from a backup; nothing is closed, the name stays this dataset's", False))
        return False
    f = Finding("catalog-ledger", f"dataset {name!r}",
                f"the ledger records entries {closes} for it but the catalog has no such dataset",
                "run 'onshore doctor --repair' to close them with a data.abandoned entry", True)
    if repair:
        idx = ws.record(attempts.ABANDONED, LOG_ACTOR, {
            "attempt": None, "op": stale[-1].entry.kind, "dataset": name, "site": None, "actor": None,
            "decision_index": stale[-1].entry.body.get("decision_index"), "closes": closes,
            "reason": "the catalog never committed these entries' outcome (found by onshore doctor)"})
        f = Finding(**{**asdict(f), "repaired": f"closed entries {closes} with data.abandoned entry {idx}"})
    out.findings.append(f)
    return True


def _file_findings(ws: Workspace, out: DoctorReport, busy: set[str], repair: bool) -> None:
    with ws.catalog.connect() as conn:
        sites = {n: Path(r) for n, r in conn.execute(select(T.sites.c.name, T.sites.c.root))}
        rows = conn.execute(select(T.shards.c.dataset, T.shards.c.site, T.shards.c.path, T.shards.c.sha256)).all()
    for d, site, rel, sha in rows:
        try:
            S.check_shard(sites[site], rel, sha)
        except OnshoreError as e:
            out.findings.append(Finding("files", f"shard {sha[:16]} of {d!r} at {site!r}", str(e),
                                        f"copy the dataset's files back from another site holding shard {sha} "
                                        "or from a backup", False))
    known = {(site, rel) for _, site, rel, _ in rows}
    orphans = [(site, p) for site, root in sites.items()
               for p in sorted((root / "datasets").glob("*/*")) if (site, p.relative_to(root).as_posix()) not in known
               and p.parent.name not in busy]
    journal = {r["id"] for r in attempts.open_attempts(ws)}  # left: running; without repair: also dead ones
    staging = [(site, p) for site, root in sites.items() for p in sorted(S.staging_dir(root).glob("*"))
               if p.name not in journal and not attempts.is_alive(ws, p.name)]
    if repair and (orphans or staging):
        # recheck inside the catalog's write turn: no attempt is then between publishing and committing
        with write_transaction(ws.catalog, "the catalog") as conn:
            removed = {p for d in {(p.parent.name, s) for s, p in orphans}
                       for p in attempts.remove_orphans(conn, d[0], d[1])}
            for _, p in staging:
                if not attempts.is_alive(ws, p.name):
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                    removed.add(p)
    else:
        removed = set()
    for site, p in orphans + staging:
        kind = "staging" if p.parent.name == S.STAGING else "shard file"
        out.findings.append(Finding("orphans", str(p), f"orphan {kind} at site {site!r}: no catalog row or "
                                    "running attempt names it", "run 'onshore doctor --repair' to remove it", True,
                                    "removed" if p in removed else None))


def _site_roots(ws: Workspace) -> dict[str, Path]:
    with ws.catalog.connect() as conn:
        return {n: Path(r) for n, r in conn.execute(select(T.sites.c.name, T.sites.c.root).order_by(T.sites.c.name))}


def _model_wraps(ws: Workspace) -> dict[tuple[str, str], int]:
    """(model, site) -> the ledger index the catalog's wrap cites."""
    with ws.catalog.connect() as conn:
        return {(m, s): int(i) for m, s, i in conn.execute(select(
            T.model_key_wraps.c.model, T.model_key_wraps.c.site, T.model_key_wraps.c.ledger_index))}


def _finding(out: DoctorReport, f: Finding, repair: bool, action: Any) -> None:
    """Add ``f``; with ``repair`` (and ``f`` repairable) run ``action`` (returns what it did, or None
    when it could not act now) and mark ``f`` repaired."""
    if repair and f.repairable:
        done = action()
        if done:
            f = Finding(**{**asdict(f), "repaired": done})
    out.findings.append(f)


def _training_findings(ws: Workspace, out: DoctorReport, repair: bool) -> None:
    """Model folders at every site against the catalog and ledger (see the module docstring)."""
    wraps = _model_wraps(ws)
    with ws.catalog.connect() as conn:
        catalog_models = {r[0] for r in conn.execute(select(T.models.c.name))}
    for site, root in _site_roots(ws).items():
        folders = sorted(p for p in (root / "models").glob("*") if p.is_dir())
        for folder in folders:
            name = folder.name
            if is_model_id(name) and attempts.is_held(ws, runs.lock_key(name)):
                out.in_progress.append(f"training of model {name!r} at site {site!r}")
                continue
            if (name, site) in wraps:
                _released_model_findings(ws, out, site, folder, name, repair)
            elif is_model_id(name) and name not in catalog_models and (folder / runs.RUN_FILE).is_file():
                _unfinished_run(ws, out, site, folder, name, repair)
            else:
                why = ("the catalog places model {!r} at other sites only" if name in catalog_models
                       else "no model of that name is in the catalog and no run is unfinished there")
                _finding(out, Finding("training", str(folder), f"orphan model folder at site {site!r}: "
                                      + why.format(name), "run 'onshore doctor --repair' to remove it", True),
                         repair, lambda folder=folder: _remove_tree(folder))


def _remove_tree(folder: Path) -> str:
    shutil.rmtree(folder, ignore_errors=True)
    return "removed"


def _released_model_findings(ws: Workspace, out: DoctorReport, site: str, folder: Path, name: str,
                             repair: bool) -> None:
    """A released model's files at a site that holds it: its sealed digests, and no run leftovers."""
    try:
        sealed = dict(wsm.release_entry(ws, name).get("sealed") or {})
    except OnshoreError as e:
        out.findings.append(Finding("training", f"model {name!r}", str(e), "restore the catalog from a backup",
                                    False))
        return
    for file, digest in sorted(sealed.items()):
        path = folder / file
        got = sha256_file(path) if path.is_file() else None
        if got != digest:
            out.findings.append(Finding(
                "training", str(path), f"model {name!r} at site {site!r}: " + (
                    "file missing" if got is None else f"SHA-256 {got} differs from the model.release entry's"),
                f"remove the model's folder at {site!r} and copy it again from another site ('onshore model "
                f"copy {name} --to {site}'), or restore it from a backup", False))
    run_file = folder / runs.RUN_FILE
    if run_file.exists():  # the release is committed, so the run is finished; its sealed checkpoints stay
        def clean() -> str:
            run_file.unlink(missing_ok=True)
            return f"removed {run_file.name}"
        _finding(out, Finding("training", str(folder), f"model {name!r} is released but its run's {run_file.name} "
                              "remains (killed after the release)", "run 'onshore doctor --repair' to remove it",
                              True), repair, clean)


def _unfinished_run(ws: Workspace, out: DoctorReport, site: str, folder: Path, name: str, repair: bool) -> None:
    """A killed run: its checkpoints against the ledger and withdrawals; repair abandons it."""
    notes, newest = [], None
    for path in runs.sealed_checkpoints(folder):
        try:
            _, _, recorded = runs.ledger_checkpoint(ws, name, path)
        except IntegrityError:
            notes.append(f"{path.name} is not recorded by any job.checkpoint entry")
            continue
        gone = [d.get("name") for d in recorded if keyservice.withdrawal_index(ws, str(d.get("name"))) is not None]
        if gone:
            notes.append(f"{path.name} was made from withdrawn dataset(s) {', '.join(map(str, gone))} and can "
                         "never be resumed")
        newest = newest or path.name
    jobs = runs.unfinished_jobs(ws, name)
    problem = (f"unfinished training run of model {name!r} at site {site!r} (its process is gone; newest recorded "
               f"checkpoint: {newest or 'none'}; unfinished job(s): {len(jobs)})"
               + (": " + "; ".join(notes) if notes else ""))

    def abandon() -> str | None:
        try:
            with attempts.exclusive(ws, runs.lock_key(name), "a run started meanwhile"):
                idx = None
                if jobs:
                    idx = ws.record("job.abandoned", f"site:{site}", {
                        "model": name, "site": site, "jobs": jobs, "newest_checkpoint": newest,
                        "reason": "the process running it stopped before the model was released (onshore doctor)"})
                shutil.rmtree(folder, ignore_errors=True)
                if (name, site) not in _model_wraps(ws):
                    ws.keystore(f"site:{site}").destroy_key("model", name)
        except attempts.Busy:
            return None
        return (f"abandoned: job.abandoned entry {idx}; " if idx is not None else "") + \
            "removed its folder and its key in the site's custody"
    _finding(out, Finding("training", str(folder), problem,
                          "rerun the same 'onshore train' command to resume it, or 'onshore doctor --repair' to "
                          "abandon it", True), repair, abandon)


def _model_key_findings(ws: Workspace, out: DoctorReport, repair: bool) -> None:
    """Model wraps against the ledger entries they cite, and custody keys against wraps and runs."""
    wraps = _model_wraps(ws)
    roots = _site_roots(ws)
    size = ws.ledger.size()
    for (name, site), idx in sorted(wraps.items()):
        body = ws.ledger.get(idx).entry if 0 <= idx < size else None
        ok = body is not None and body.body.get("model") == name and (
            (body.kind == "model.release" and body.body.get("site") == site)
            or (body.kind == "model.copy" and body.body.get("to") == site))
        if not ok:
            out.findings.append(Finding("model-keys", f"model {name!r} at {site!r}",
                                        f"its key wrap cites ledger entry {idx}, which does not place the model "
                                        "there", "restore the catalog from a backup; investigate", False))
        if not ws.keystore(f"site:{site}").has_key("model", name):
            out.findings.append(Finding("model-keys", f"model {name!r} at {site!r}",
                                        "the catalog holds a wrap of its key but the site's custody has no key "
                                        "for it: the model cannot be opened there",
                                        "copy the model there again from another site, or restore the site's "
                                        "key custody from a backup", False))
    for site, root in roots.items():
        store = ws.keystore(f"site:{site}")
        for key in sorted((store.directory / RESOURCE_FOLDERS["model"]).glob("*.key")):
            name = key.stem
            if not is_model_id(name) or (name, site) in wraps or attempts.is_held(ws, runs.lock_key(name)) \
                    or (root / "models" / name / runs.RUN_FILE).is_file():
                continue
            _finding(out, Finding("model-keys", f"model {name!r} at {site!r}",
                                  "a model key in the site's custody that no wrap or unfinished run uses "
                                  "(left by a killed run or copy)", "run 'onshore doctor --repair' to destroy it",
                                  True), repair,
                     lambda store=store, name=name: "destroyed" if store.destroy_key("model", name) else "gone")


def _spool_findings(ws: Workspace, out: DoctorReport, repair: bool) -> None:
    """Recording spools whose server is gone."""
    for site, root in _site_roots(ws).items():
        for spool in sorted(p for p in (root / RECORDING_SPOOL).glob("*") if p.is_dir()):
            if attempts.is_locked(spool / SPOOL_LOCK):
                out.in_progress.append(f"recording {spool.name} at site {site!r}")
                continue
            files = [p for p in spool.rglob("*") if p.is_file() and p.name != SPOOL_LOCK]
            plain = [p for p in files if p.suffix == ".parquet"]
            _finding(out, Finding(
                "recordings", str(spool), f"recording spool of a serving run at site {site!r} that stopped "
                f"without ingesting it: {len(files) - len(plain)} sealed file(s) whose key died with the server"
                + (f", {len(plain)} PLAINTEXT episode file(s)" if plain else ""),
                "run 'onshore doctor --repair' to remove it (the recording is lost)", True),
                repair, lambda spool=spool: _remove_tree(spool))


def run(ws: Workspace, repair: bool = False) -> DoctorReport:
    """Check the workspace (see the module docstring); with ``repair``, fix what a crash left.

    Never changes anything without ``repair``. Refuses nothing: every problem is a finding.
    """
    out = DoctorReport()
    ledger_ok = _check_ledger(ws, out)
    busy = _attempt_findings(ws, out, repair and ledger_ok)
    if ledger_ok:
        _catalog_findings(ws, out, busy, repair)
        try:
            out.findings.extend(check_signed_rules(ws))
        except OnshoreError as e:  # a grant or release the ledger itself holds damaged
            out.findings.append(Finding("signed-rules", "ledger", str(e), "run 'onshore ledger verify'", False))
    _file_findings(ws, out, busy, repair and ledger_ok)
    if ledger_ok:
        _training_findings(ws, out, repair)
        _model_key_findings(ws, out, repair)
        for subject, problem in custody.token_findings(ws):
            out.findings.append(Finding("token-keys", subject, problem, "check the site's PKCS#11 token and "
                                        "custody.toml; investigate (keys are never recreated)", False))
    _spool_findings(ws, out, repair and ledger_ok)
    done = [f for f in out.findings if f.repaired]
    if done:
        ws.reports_dir.mkdir(parents=True, exist_ok=True)
        with open(ws.reports_dir / LOG_FILE, "a") as log:
            for f in done:
                log.write(json.dumps({"time": now_iso(), **asdict(f)}) + "\n")
        ws.invalidate()
    return out
