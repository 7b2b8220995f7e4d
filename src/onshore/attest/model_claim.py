"""Model residency attestations: where a model was trained, on whose data, under which consent.

The claim is an in-toto Statement v1 (predicate type :data:`MODEL_PREDICATE_TYPE`) in a DSSE
envelope signed by the model's training site, bundled with the checkpoint and the inclusion proof
of every cited ledger entry by :func:`onshore.attest.bundle.make_bundle` (the same bundle format as
a dataset's). Subjects: the model's files, ``models/NAME/model.safetensors`` (and ``.json``) with
the SHA-256 of their plaintext, and ``models/NAME/model.safetensors.sealed`` (and ``.json.sealed``)
with the SHA-256 of the sealed files at rest.

Predicate (JSON, every item citing the ledger entry that records it)::

    {"model", "attester": {"site", "jurisdiction"}, "status": {...},
     "levels": [{"model", "site", "jurisdiction", "purpose", "base", "releaseIndex", "files", "sealed",
                 "job": {"id", "startIndices", "endIndex", "config", "train", "steps", "worldSize",
                         "codeVersion", "metrics"},
                 "datasets": [{"dataset", "owner", "shards", "decisionIndex", "releaseIndex"}],
                 "baseRelease": null | {"index", "decisionIndex"}}, ...],   # the model, then its bases
     "datasets": [{"dataset", "owner", "policy", "policyHash", "consentIndex", "cedar", "cedarHash"}],
     "placements": [{"site", "jurisdiction", "index", "decisionIndex"}],   # release, then copies
     "decisions": [{"index", ...}],                                        # every decision cited
     "keyReleases": [{"index", "resource", "name", "site", "action", "purpose", "decisionIndex"}],
     "evaluations": [{"index", "site", "env", "seed", "tasks"}],
     "withdrawals": [{"dataset", "index", "clause", "taintIndices"}],
     "attestedAt"}

Verification (``attest/verify_model.py``) needs only the bundle and a trust root.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import TYPE_CHECKING, Any

from onshore.attest.bundle import make_bundle
from onshore.attest.statement import Subject, build_statement
from onshore.errors import IntegrityError
from onshore.ledger import checkpoint as ckpt
from onshore.ledger import notes
from onshore.ledger.entries import now_iso
from onshore.ledger.log import StoredEntry
from onshore.residency.modelpolicy import LineageDataset, model_status
from onshore.residency.policy import UsagePolicy, cedar_hash, dataset_cedar

if TYPE_CHECKING:
    from onshore.workspace import Workspace

MODEL_PREDICATE_TYPE = "https://onshore.dev/attestation/model-residency/v1"
MODEL_FIELDS = ("model", "attester", "status", "levels", "datasets", "placements", "decisions", "keyReleases",
                "evaluations", "withdrawals", "attestedAt")
MODEL_KINDS = ("consent.grant", "decision", "key.release", "job.start", "job.end", "model.release", "model.copy",
               "model.eval", "consent.withdraw", "model.taint")


def model_subject_names(model: str, plain: str) -> tuple[str, str]:
    """The subject names of one model file: its plaintext and its sealed form."""
    return f"models/{model}/{plain}", f"models/{model}/{plain}.sealed"


def _decision_json(e: StoredEntry) -> dict[str, Any]:
    b = e.entry.body
    req = b["request"]
    return {"index": e.index, "principal": req["principal"], "resource": "model" if "model" in req else "dataset",
            "name": req.get("model", req.get("dataset")), "action": req["action"], "site": req["site"],
            "siteJurisdiction": b["site_jurisdiction"], "purpose": req["purpose"], "today": req["today"],
            "decision": b["decision"], "rules": b["rules"], "policySetHash": b["policy_hash"],
            "resourcePolicyHash": b.get("dataset_policy_hash")}


def build_model_claim(ws: Workspace, name: str) -> tuple[dict[str, Any], list[Subject], dict[int, StoredEntry]]:
    """The predicate, subjects and cited entries for model ``name``, read from the ledger.

    Refuses (IntegrityError) a ledger that lacks an entry the catalog's lineage implies.
    """
    from onshore.workspace import models as wsm
    from onshore.workspace.registry import get_site

    by_kind: dict[str, list[StoredEntry]] = {k: [] for k in MODEL_KINDS}
    for e in ws.ledger.entries(kinds=MODEL_KINDS):
        by_kind[e.entry.kind].append(e)
    cited: dict[int, StoredEntry] = {}

    def cite(e: StoredEntry) -> int:
        cited[e.index] = e
        return e.index

    def one(kind: str, what: str, pred: Any) -> StoredEntry:
        found = [e for e in by_kind[kind] if pred(e.entry.body)]
        if not found:
            raise IntegrityError(f"model {name!r}: the ledger holds no {kind} entry for {what}")
        return found[-1]

    decisions: dict[int, StoredEntry] = {}
    releases: list[dict[str, Any]] = []
    levels = []
    lineage_names: list[str] = []
    for level in wsm.lineage(ws, name):
        m = level["model"]
        row = wsm.get_model(ws, m)
        rel = ws.ledger.get(int(row["ledger_index"]))
        if rel.entry.kind != "model.release" or rel.entry.body.get("model") != m:
            raise IntegrityError(f"model {m!r}: catalog ledger index {row['ledger_index']} is not its release")
        body = rel.entry.body
        job_id = body["job"]["id"]
        starts = [e for e in by_kind["job.start"] if e.entry.body.get("model") == m and e.index < rel.index]
        end = one("job.end", f"job {job_id}", lambda b, j=job_id: b.get("job") == j)
        last_start = one("job.start", f"job {job_id}", lambda b, j=job_id: b.get("job") == j)
        ds = []
        for d in body["datasets"]:
            dec = ws.ledger.get(int(d["decision_index"]))
            decisions[dec.index] = dec
            kr = one("key.release", f"the training read of {d['name']}",
                     lambda b, d=d: b.get("dataset") == d["name"] and b.get("decision_index") == d["decision_index"])
            releases.append({"index": cite(kr), "resource": "dataset", "name": d["name"], "site": kr.entry.body["site"],
                             "action": kr.entry.body["action"], "purpose": kr.entry.body["purpose"],
                             "decisionIndex": kr.entry.body["decision_index"]})
            ds.append({"dataset": d["name"], "owner": d["owner"], "shards": d["shards"],
                       "decisionIndex": d["decision_index"], "releaseIndex": kr.index})
            if d["name"] not in lineage_names:
                lineage_names.append(d["name"])
        base_release = None
        if body.get("base"):
            base = body["base"]
            before = [e for e in by_kind["key.release"] if e.entry.body.get("model") == base
                      and e.entry.body.get("action") == "train" and e.entry.body.get("site") == body["site"]
                      and e.index < last_start.index]
            if not before:
                raise IntegrityError(f"model {m!r}: no release of base model {base!r} for its training")
            kr = before[-1]
            decisions[kr.entry.body["decision_index"]] = ws.ledger.get(int(kr.entry.body["decision_index"]))
            releases.append({"index": cite(kr), "resource": "model", "name": base, "site": kr.entry.body["site"],
                             "action": "train", "purpose": kr.entry.body["purpose"],
                             "decisionIndex": kr.entry.body["decision_index"]})
            base_release = {"index": kr.index, "decisionIndex": kr.entry.body["decision_index"]}
        jb = last_start.entry.body
        levels.append({
            "model": m, "site": body["site"], "jurisdiction": body["jurisdiction"], "purpose": body["purpose"],
            "base": body.get("base"), "releaseIndex": cite(rel), "files": body["files"], "sealed": body.get("sealed"),
            "job": {"id": job_id, "startIndices": [cite(e) for e in starts], "endIndex": cite(end),
                    "config": jb["config"], "train": jb["train"], "steps": body["steps"],
                    "worldSize": body["world_size"], "codeVersion": body["job"]["code_version"],
                    "metrics": end.entry.body.get("metrics")},
            "datasets": ds, "baseRelease": base_release})

    datasets = []
    withdrawals = []
    lineage: list[LineageDataset] = []
    for d in lineage_names:
        grant = one("consent.grant", f"dataset {d}", lambda b, d=d: b.get("dataset") == d)
        g = grant.entry.body
        policy = UsagePolicy.from_json(g["policy"])
        cedar = dataset_cedar(d, g["owner"], policy, withdrawn=False)
        datasets.append({"dataset": d, "owner": g["owner"], "policy": g["policy"], "policyHash": g["policy_hash"],
                         "consentIndex": cite(grant), "cedar": cedar, "cedarHash": cedar_hash(cedar)})
        wd = [e for e in by_kind["consent.withdraw"] if e.entry.body.get("dataset") == d]
        lineage.append(LineageDataset(d, g["owner"], policy, wd[0].index if wd else None))
        if wd:
            taints = [e for e in by_kind["model.taint"] if e.entry.body.get("dataset") == d
                      and e.entry.body.get("model") == name]
            withdrawals.append({"dataset": d, "index": cite(wd[0]), "clause": policy.derived_models,
                                "taintIndices": [cite(t) for t in taints]})

    placements = [{"site": levels[0]["site"], "jurisdiction": levels[0]["jurisdiction"],
                   "index": levels[0]["releaseIndex"], "decisionIndex": None}]
    for c in by_kind["model.copy"]:
        b = c.entry.body
        if b.get("model") == name:
            decisions[b["decision_index"]] = ws.ledger.get(int(b["decision_index"]))
            kr = ws.ledger.get(int(b["release_index"]))
            releases.append({"index": cite(kr), "resource": "model", "name": name, "site": kr.entry.body["site"],
                             "action": "copy", "purpose": None, "decisionIndex": b["decision_index"]})
            placements.append({"site": b["to"], "jurisdiction": b["jurisdiction"], "index": cite(c),
                               "decisionIndex": b["decision_index"]})
    evaluations = [{"index": cite(e), "site": e.entry.body["site"], "env": e.entry.body["env"],
                    "seed": e.entry.body["seed"], "tasks": e.entry.body["tasks"]}
                   for e in by_kind["model.eval"] if e.entry.body.get("model") == name]
    for e in decisions.values():
        cite(e)
    top = levels[0]
    attested_at = now_iso()
    claim = {
        "model": name, "attester": {"site": top["site"], "jurisdiction": get_site(ws, top["site"]).jurisdiction},
        "status": model_status(lineage, dt.date.fromisoformat(attested_at[:10])).to_json(),
        "levels": levels, "datasets": datasets, "placements": placements,
        "decisions": [_decision_json(e) for _, e in sorted(decisions.items())],
        "keyReleases": sorted(releases, key=lambda r: r["index"]), "evaluations": evaluations,
        "withdrawals": withdrawals, "attestedAt": attested_at,
    }
    subjects = []
    for plain, digest in sorted(top["files"].items()):
        plain_name, sealed_name = model_subject_names(name, plain)
        subjects.append(Subject(plain_name, digest))
        subjects.append(Subject(sealed_name, top["sealed"][f"{plain}.sealed"]))
    return claim, subjects, cited


def attest_model(ws: Workspace, name: str) -> dict[str, Any]:
    """Attest where model ``name`` was trained and on whose data; returns the bundle (JSON-ready).

    Signed by the model's training site; the bundle carries every cited entry with its inclusion
    proof and the newest stored checkpoint that covers them (take and cosign one first, as for a
    dataset bundle). Records a ``model.attest`` entry with the statement's SHA-256.
    """
    from onshore.workspace import models as wsm

    row = wsm.get_model(ws, name)
    claim, subjects, cited = build_model_claim(ws, name)
    statement = build_statement(subjects, MODEL_PREDICATE_TYPE, claim)
    bundle = make_bundle(ws, statement, row["site"], cited.keys(), {i: e.leaf for i, e in cited.items()})
    size = ckpt.parse(notes.split_note(bundle["checkpoint"])[0]).size
    ws.record("model.attest", f"site:{row['site']}", {
        "model": name, "site": row["site"], "predicate_type": MODEL_PREDICATE_TYPE,
        "statement_sha256": hashlib.sha256(statement.to_bytes()).hexdigest(), "checkpoint_size": size,
        "entries": len(bundle["entries"])})
    return bundle
