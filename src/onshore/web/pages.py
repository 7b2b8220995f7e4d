"""What each dashboard page shows, as JSON-ready dicts built from the library calls the CLI uses.

Every function here only reads: no decryption (shards and model files are never opened), no
telemetry values (only counts, sizes and digests), no ledger appends. The dicts carry the same
fields the CLI's ``--json`` prints for the same thing (``dataset show``, ``model show``,
``ledger log``, ``ledger verify``, ``verify``), plus what the page adds around them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pycountry
from sqlalchemy import LargeBinary, Text, cast, func, literal, select

from onshore.catalog import schema as T
from onshore.encoding import b64encode
from onshore.errors import NotFoundError
from onshore.ledger import checkpoint as ckpt
from onshore.ledger.entries import parse_leaf
from onshore.ledger.log import StoredEntry, ledger_entries, ledger_subject_index
from onshore.ledger.subjects import subjects_of
from onshore.names import is_model_id
from onshore.residency.policy import cedar_hash, workspace_cedar
from onshore.workspace import datasets, models, registry
from onshore.workspace.workspace import Workspace

#: Entries about a dataset or model read (newest first, through the ledger's subject index) for its
#: page; older ones are on the ledger page, filtered by dataset. Keeps a page bounded for a dataset
#: with millions of decisions.
HISTORY_SCAN = 20_000


def country(code: str) -> str:
    """``JP`` -> ``Japan`` (the code itself when pycountry does not know it)."""
    c = pycountry.countries.get(alpha_2=code)
    return str(getattr(c, "common_name", None) or c.name) if c else code


def _request(body: dict[str, Any]) -> dict[str, Any]:
    r = body.get("request")
    return r if isinstance(r, dict) else {}


def entry_json(e: StoredEntry) -> dict[str, Any]:
    """One entry as `onshore ledger log --json` prints it."""
    return {"index": e.index, **e.entry.to_json()}


def entry_site(body: dict[str, Any]) -> str | None:
    return body.get("site") or _request(body).get("site")


def is_about(e: StoredEntry, subject: str) -> bool:
    """True when ``e`` is about ``subject`` (``dataset:NAME``, ``model:NAME``) as the ledger's subject
    index and links count it (onshore.ledger.subjects): what a page or filter by dataset lists."""
    return subject in subjects_of(e.entry.kind, e.entry.body)


def mentioning(key: str, value: str) -> bytes | None:
    """A LIKE pattern for entries whose canonical JSON holds ``"key":"value"`` (RFC 8785 has no
    spaces), or None when ``value`` is not a plain name (then only the exact check in Python runs).
    A prefilter: callers still check the parsed entry, so a match elsewhere in the body is harmless."""
    if not is_model_id(value):  # a name, or a model version's NAME@V
        return None
    return f'%"{key}":"{value}"%'.encode()


def entries_newest_first(ws: Workspace, kinds: tuple[str, ...] | None = None, actor: str | None = None,
                         before: int | None = None, like: tuple[bytes | None, ...] = (),
                         subject: str | None = None) -> Iterator[StoredEntry]:
    """Ledger entries from the newest back, parsed lazily. Kind, actor and ``like`` patterns (see
    ``mentioning``; all must match) are applied in SQL, so that a page parses only candidates.

    With ``subject`` (``dataset:NAME``, ``model:NAME``), only the entries about it, found through the
    ledger's subject index (filled in the append transaction): the query walks that index newest
    first and reads only those leaves, so its cost follows the subject's entries, not the ledger's.
    """
    if subject is not None:
        about = ledger_subject_index
        q = select(ledger_entries.c.idx, ledger_entries.c.leaf).select_from(
            about.join(ledger_entries, ledger_entries.c.idx == about.c.idx)).where(about.c.subject == subject)
        if before is not None:
            q = q.where(about.c.idx < before)
        order = about.c.idx.desc()
    else:
        q = select(ledger_entries.c.idx, ledger_entries.c.leaf)
        if before is not None:
            q = q.where(ledger_entries.c.idx < before)
        order = ledger_entries.c.idx.desc()
    sqlite = ws.ledger.engine.dialect.name == "sqlite"
    for pattern in like:
        if pattern is None:
            continue
        # SQLite's LIKE never matches a BLOB as is; PostgreSQL has LIKE for bytea
        q = q.where(cast(ledger_entries.c.leaf, Text).like(pattern.decode()) if sqlite
                    else ledger_entries.c.leaf.like(literal(pattern, LargeBinary)))
    if kinds:
        q = q.where(ledger_entries.c.kind.in_(list(kinds)))
    if actor:
        q = q.where(ledger_entries.c.actor == actor)
    with ws.ledger.engine.connect() as conn:
        result = conn.execution_options(stream_results=True).execute(q.order_by(order))
        for idx, leaf in result:
            leaf = bytes(leaf)
            yield StoredEntry(int(idx), parse_leaf(leaf), leaf)


def _decision_row(e: StoredEntry) -> dict[str, Any]:
    b, r = e.entry.body, _request(e.entry.body)
    return {"index": e.index, "time": e.entry.time, "actor": e.entry.actor, "decision": b.get("decision"),
            "action": r.get("action"), "dataset": r.get("dataset"), "model": r.get("model"),
            "site": r.get("site"), "purpose": r.get("purpose"), "rules": b.get("rules", []),
            "site_jurisdiction": b.get("site_jurisdiction")}


# -- overview -------------------------------------------------------------------------------------

def overview(ws: Workspace, now: dt.datetime | None = None) -> dict[str, Any]:
    """Sites grouped by jurisdiction with what sits there, the workspace-wide rules, and the
    refusals of the last 24 hours (newest first)."""
    now = now or dt.datetime.now(dt.UTC)
    withdrawn = set(ws.ledger_governance().withdrawn)
    with ws.catalog.connect() as conn:
        # per site: datasets, frames and bytes still stored; a withdrawn dataset's shards are
        # noise (its keys are shredded) and are listed apart, not counted as stored
        per_site: dict[str, dict[str, int]] = {}
        for site, name, frames, size in conn.execute(
                select(T.shards.c.site, T.shards.c.dataset, func.sum(T.shards.c.frames), func.sum(T.shards.c.bytes))
                .group_by(T.shards.c.site, T.shards.c.dataset)):
            st = per_site.setdefault(site, {"datasets": 0, "frames": 0, "bytes": 0})
            if name not in withdrawn:
                st["datasets"] += 1
                st["frames"] += int(frames or 0)
                st["bytes"] += int(size or 0)
        names: dict[str, list[str]] = {}
        gone: dict[str, list[str]] = {}
        for d, s in conn.execute(select(T.shards.c.dataset, T.shards.c.site).distinct()
                                 .order_by(T.shards.c.dataset)):
            (gone if d in withdrawn else names).setdefault(s, []).append(d)
    model_rows = models.list_models(ws)
    at: dict[str, list[dict[str, Any]]] = {}
    for m in model_rows:
        for s in m["sites"]:
            at.setdefault(s, []).append({"name": m["name"], "status": m["status"]})
    groups: dict[str, list[dict[str, Any]]] = {}
    for site in registry.list_sites(ws):
        stats = per_site.get(site.name, {"datasets": 0, "frames": 0, "bytes": 0})
        groups.setdefault(site.jurisdiction, []).append({
            "name": site.name, "jurisdiction": site.jurisdiction, "roles": list(site.roles),
            "operator": site.operator, **stats, "dataset_names": names.get(site.name, []),
            "withdrawn_names": gone.get(site.name, []), "models": at.get(site.name, [])})
    rule = ws.jurisdiction
    rules = workspace_cedar(rule)
    cutoff = (now - dt.timedelta(days=1)).isoformat(timespec="microseconds").replace("+00:00", "Z")
    refusals = []
    for e in entries_newest_first(ws, ("decision",), like=(b'%"decision":"deny"%',)):
        if e.entry.time < cutoff:
            break
        if e.entry.body.get("decision") == "deny":
            refusals.append(_decision_row(e))
    return {
        "workspace": ws.config.name, "jurisdiction_rule": rule, "workspace_cedar": rules,
        "workspace_sha256": cedar_hash(rules),
        "jurisdictions": [{"code": code, "country": country(code), "allowed_by_rule": rule in (None, code),
                           "sites": sites} for code, sites in sorted(groups.items())],
        "datasets": dataset_count(ws) - len(withdrawn), "withdrawn_datasets": sorted(withdrawn),
        "models": [{"name": m["name"], "site": m["site"], "status": m["status"]} for m in model_rows],
        "ledger_size": ws.ledger.size(), "refusals_last_day": refusals,
    }


def dataset_count(ws: Workspace) -> int:
    with ws.catalog.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(T.datasets)).scalar() or 0)


# -- dataset --------------------------------------------------------------------------------------

_DATA_KINDS = {"data.copy": "copies", "data.export": "exports", "key.release": "key_releases",
               "consent.withdraw": "withdrawals", "key.shred": "shredding", "data.attest": "attestations",
               "data.ingest": "ingests"}


def dataset(ws: Workspace, name: str) -> dict[str, Any]:
    """`onshore dataset show --json` plus its Cedar, every decision about it (newest first), key
    releases, copies, exports, withdrawal and shredding, attestations, and derived models with status."""
    out = datasets.show(ws, name)
    # withdrawn as the signed ledger says (a catalog row could be edited), with the entry's index
    out["withdrawal_index"] = ws.ledger_governance().withdrawn.get(name)
    if out["withdrawal_index"] is not None:
        out["status"] = "withdrawn"
    cedar, digest = ws.dataset_policy(name)
    history: dict[str, list[dict[str, Any]]] = {v: [] for v in _DATA_KINDS.values()}
    decisions: list[dict[str, Any]] = []
    for n, e in enumerate(entries_newest_first(ws, ("decision", *_DATA_KINDS), subject=f"dataset:{name}")):
        if n >= HISTORY_SCAN:
            break
        if not is_about(e, f"dataset:{name}"):  # an edited index row shows nothing ('ledger verify' names it)
            continue
        if e.entry.kind == "decision":
            decisions.append(_decision_row(e))
        else:
            history[_DATA_KINDS[e.entry.kind]].append({**entry_json(e)["body"], "index": e.index,
                                                       "time": e.entry.time, "actor": e.entry.actor})
    statuses = {m["name"]: m["status"] for m in models.list_models(ws)}
    derived = [{**d, "status": statuses.get(d.get("model", ""), "?")} for d in datasets.derived_models(ws, name)]
    return {**out, "cedar": cedar, "cedar_sha256": digest, "decisions": decisions, **history,
            "derived_models": derived, "history_scanned": HISTORY_SCAN}


# -- model ----------------------------------------------------------------------------------------

def model(ws: Workspace, name: str) -> dict[str, Any]:
    """`onshore model show --json` plus the models fine-tuned from it, its evaluations (the figures
    each ``model.eval`` entry records) and its serving runs: ``serving`` lists the runs whose
    ``model.serve`` start has no stop entry yet, ``serve_runs`` every run (newest first) with its
    stop, if any. A stopped server is never shown as serving."""
    info = models.show_model(ws, name)
    children = [{"name": m["name"], "site": m["site"], "status": m["status"]}
                for m in models.list_models(ws) if m["base"] == name]
    evals, starts, stops = [], [], {}
    for n, e in enumerate(entries_newest_first(ws, ("model.eval", "model.serve"), subject=f"model:{name}")):
        if n >= HISTORY_SCAN:
            break
        if not is_about(e, f"model:{name}"):  # an edited index row shows nothing ('ledger verify' names it)
            continue
        row = {**e.entry.body, "index": e.index, "time": e.entry.time}
        if e.entry.kind == "model.eval":
            evals.append(row)
        elif row.get("event") == "stop":
            stops[row.get("start_index")] = row
        else:
            starts.append(row)
    runs = [{"site": r.get("site"), "host": r.get("host"), "port": r.get("port"), "start_index": r["index"],
             "started": r["time"], "stop_index": stops[r["index"]]["index"] if r["index"] in stops else None,
             "stopped": stops[r["index"]]["time"] if r["index"] in stops else None} for r in starts]
    return {**info, "fine_tuned": children, "evaluations": evals,
            "serving": [r for r in runs if r["stop_index"] is None], "serve_runs": runs,
            "reports": model_reports(ws, name)}


def current_status(ws: Workspace, report: dict[str, Any], log_origin: str, log_vkey: str) -> dict[str, Any]:
    """What this workspace knows now about the dataset or model a verified bundle names, to show
    beside what the bundle proves (a bundle proves the past; a withdrawal since is not in it).
    ``known`` is False when the trust root is another workspace's log, or the name is not here."""
    kind, name = ("model", report.get("model")) if report.get("model") else ("dataset", report.get("dataset"))
    out: dict[str, Any] = {"kind": kind, "name": name, "known": False, "status": None, "reasons": []}
    if not name or log_origin != ws.origin or log_vkey != ws.log_vkey:
        return out
    try:
        if kind == "model":
            st = models.status(ws, name).to_json()
            out.update(known=True, status=st["label"], reasons=st["reasons"])
        else:
            ws.row("dataset", name)
            index = ws.ledger_governance().withdrawn.get(name)
            out.update(known=True, status="withdrawn" if index is not None else "active",
                       reasons=[f"consent withdrawn, ledger entry {index}"] if index is not None else [])
    except NotFoundError:
        pass
    return out


def model_reports(ws: Workspace, name: str) -> list[dict[str, Any]]:
    """The evaluation reports (``onshore eval --reports``) of this model in the workspace's reports
    folder: their figures per task, and the PNG beside each (served by the dashboard as a file)."""
    import json

    out = []
    folder = ws.reports_dir
    for path in sorted(folder.glob("eval-*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # not ours to judge here; `onshore eval` rewrites it
        if data.get("policy") not in (f"model:{name}", name):
            continue
        png = path.with_suffix(".png")
        out.append({"file": path.name, "png": png.name if png.is_file() else None, "env": data.get("env"),
                    "seed": data.get("seed"), "created_utc": data.get("created_utc"),
                    "tasks": [{k: t.get(k) for k in ("task", "success_rate", "mean_return", "episodes", "ci95")}
                              for t in data.get("tasks", [])]})
    return out


# -- ledger ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LogFilter:
    """The ledger page's filters; empty fields match everything. Times are ISO 8601 prefixes.

    ``dataset`` matches the entries about that dataset as the ledger's subject index counts them
    (``body.dataset``; a decision's ``body.request.dataset``), ``site`` those naming the site
    (``body.site`` or ``body.request.site``)."""

    kind: str = ""
    actor: str = ""
    dataset: str = ""
    site: str = ""
    since: str = ""
    until: str = ""

    def matches(self, e: StoredEntry) -> bool:
        b = e.entry.body
        if self.dataset and not is_about(e, f"dataset:{self.dataset}"):
            return False
        if self.site and entry_site(b) != self.site:
            return False
        if self.since and e.entry.time < self.since:
            return False
        return not (self.until and e.entry.time[:len(self.until)] > self.until)

    def to_json(self) -> dict[str, str]:
        return {k: v for k, v in self.__dict__.items() if v}


def ledger_log(ws: Workspace, f: LogFilter, before: int | None, per_page: int = 50) -> dict[str, Any]:
    """One page of entries, newest first, matching ``f``; ``next_before`` pages further back."""
    rows: list[dict[str, Any]] = []
    next_before = None
    like = (mentioning("site", f.site) if f.site else None,)
    for e in entries_newest_first(ws, (f.kind,) if f.kind else None, f.actor or None, before, like,
                                  subject=f"dataset:{f.dataset}" if f.dataset else None):
        if f.since and e.entry.time < f.since:
            break  # entries are appended in time order: nothing older can match
        if not f.matches(e):
            continue
        if len(rows) == per_page:
            next_before = rows[-1]["index"]
            break
        rows.append(entry_json(e))
    return {"filter": f.to_json(), "before": before, "entries": rows, "next_before": next_before}


def ledger_state(ws: Workspace, now: dt.datetime | None = None) -> dict[str, Any]:
    """Size, root, the newest checkpoint and its age, and each witness with its last cosignature."""
    now = now or dt.datetime.now(dt.UTC)
    size = ws.ledger.size()
    out: dict[str, Any] = {"origin": ws.origin, "size": size, "root": b64encode(ws.ledger.root(size)),
                           "checkpoint": None, "witnesses": []}
    sizes = ws.ledger.checkpoint_sizes()
    witnesses = registry.list_witnesses(ws)
    last: dict[str, dict[str, Any]] = {}
    for n, s in enumerate(reversed(sizes)):
        note = ws.ledger.checkpoint_note(s)
        if note is None:
            continue
        if n == 0:
            out["checkpoint"] = {"size": s, "note": note, "entries_since": size - s,
                                 "last_witnessed_age_seconds": None}
        for c in ckpt.verified_cosignatures(note, [w["vkey"] for w in witnesses]):
            if c.name not in last:
                when = dt.datetime.fromtimestamp(c.timestamp, dt.UTC)
                last[c.name] = {"size": s, "time": when.isoformat(), "age_seconds": int((now - when).total_seconds())}
        if len(last) == len(witnesses) or n >= 50:
            break
    if out["checkpoint"] is not None and last:
        newest = min(v["age_seconds"] for v in last.values())
        out["checkpoint"]["last_witnessed_age_seconds"] = newest
    for w in witnesses:
        key_name = w["vkey"].split("+", 1)[0]
        out["witnesses"].append({"name": w["name"], "vkey": w["vkey"], "last_cosigned": last.get(key_name)})
    return out
