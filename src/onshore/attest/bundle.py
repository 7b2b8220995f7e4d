"""Residency attestations for datasets: the claim, built from the ledger, signed and bundled.

A dataset's residency claim is an in-toto Statement v1 (``attest/statement.py``) in a DSSE
envelope (``attest/dsse.py``), signed by the key of the site that makes the claim (keyid
``site:NAME``). Its subjects are the dataset's shards, ``datasets/NAME/SHA256.parquet`` with their
SHA-256; its predicate (:data:`PREDICATE_TYPE`, the JSON form of :class:`ResidencyClaim`) says who
owns the data, under which policy, where every shard sits, and every copy, key release, export,
decision and withdrawal that concerns it, each by its ledger index.

A **bundle** is what an auditor receives; it needs no workspace and no network to check
(``attest/verify.py``). One JSON object::

    {
      "mediaType": "application/vnd.onshore.residency-bundle.v1+json",
      "dsseEnvelope": {"payload": b64, "payloadType": "application/vnd.in-toto+json",
                       "signatures": [{"keyid": "site:NAME", "sig": b64}]},
      "checkpoint": "<C2SP checkpoint note: log signature, then witness cosignatures>",
      "subjectHead": "<log-signed head note: the newest entry about dataset:NAME in that tree>",
      "entries": [{"index": N, "leaf": b64(leaf bytes), "inclusionProof": [b64(32-byte hash), ...]}, ...]
    }

``entries`` holds every ledger entry about the dataset in the checkpoint's tree (its whole chain:
each links to the previous one, see ``onshore.ledger.subjects``), in ascending index order, each
with its RFC 9162 inclusion proof to the checkpoint's tree size; the claim cites all of them but
the attestations, abandoned attempts and the outcomes those voided. ``subjectHead`` says which
entry is the newest, so a verifier can tell that none was left out. Only the statement is signed
by the site; every other byte of the bundle is either checked against it (entries, by index) or
proves itself (leaf signatures, links, inclusion proofs, the head note's and the checkpoint's log
signatures and cosignatures). Bundles made before chain links lack ``subjectHead`` and fail the
verifier's ``completeness`` check.

The operator should take a checkpoint and collect witness cosignatures *before* attesting
(``onshore ledger checkpoint``, ``onshore witness cosign``, ``onshore ledger checkpoint
--add-cosigned``), as the demo does: the bundle carries the newest stored checkpoint when it covers
every cited entry, and otherwise a fresh checkpoint that no witness has cosigned yet, which a
verifier asking for ``--min-witnesses 1`` or more will refuse.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from onshore.attest.statement import Statement, Subject, build_statement, sign_statement
from onshore.catalog import schema as T
from onshore.encoding import b64encode
from onshore.errors import IntegrityError, NotFoundError, ValidationError
from onshore.ledger import checkpoint as ckpt
from onshore.ledger import notes
from onshore.ledger.entries import now_iso
from onshore.ledger.log import Ledger, StoredEntry
from onshore.residency.policy import UsagePolicy, cedar_hash, dataset_cedar
from onshore.workspace.attempts import ABANDONED

if TYPE_CHECKING:
    from onshore.workspace import Workspace

PREDICATE_TYPE = "https://onshore.dev/attestation/dataset-residency/v1"
"""The predicate type of a dataset residency claim (the JSON form of :class:`ResidencyClaim`)."""

BUNDLE_MEDIA_TYPE = "application/vnd.onshore.residency-bundle.v1+json"
BUNDLE_FIELDS = frozenset({"mediaType", "dsseEnvelope", "checkpoint", "subjectHead", "entries"})
ENTRY_FIELDS = frozenset({"index", "leaf", "inclusionProof"})

#: Ledger kinds that can concern a dataset (decisions name it in ``body.request.dataset``).
DATASET_KINDS = ("consent.grant", "data.ingest", "data.copy", "data.export", "key.release", "decision",
                 "consent.withdraw", "key.shred")
#: Outcome kinds that a ``data.abandoned`` entry can void (its attempt's catalog commit never
#: happened); decisions and key releases it cites stay true facts and stay in the history. A
#: withdrawal (``consent.withdraw``, ``key.shred``) is never voided: Onshore rolls a crashed one
#: forward, so an abandonment that claims to close one is ignored, never a way to undo it.
VOIDABLE_KINDS = frozenset({"consent.grant", "data.ingest", "data.copy"})


class ClaimFormatError(ValidationError):
    """A predicate does not have the shape of a dataset residency claim; the message names the field."""


# --- the claim ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """A shard (or the dataset) sits at ``site`` in ``jurisdiction`` since ledger entry ``index``."""

    site: str
    jurisdiction: str
    index: int

    def to_json(self) -> dict[str, Any]:
        return {"site": self.site, "jurisdiction": self.jurisdiction, "index": self.index}


@dataclass(frozen=True)
class ShardClaim:
    sha256: str
    frames: int
    bytes: int
    placements: tuple[Placement, ...]

    def to_json(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "frames": self.frames, "bytes": self.bytes,
                "placements": [p.to_json() for p in self.placements]}


@dataclass(frozen=True)
class IngestClaim:
    index: int
    site: str
    jurisdiction: str
    decision_index: int

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "site": self.site, "jurisdiction": self.jurisdiction,
                "decisionIndex": self.decision_index}


@dataclass(frozen=True)
class CopyClaim:
    index: int
    from_site: str
    to_site: str
    jurisdiction: str
    decision_index: int
    policy_set_hash: str
    shards: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "from": self.from_site, "to": self.to_site, "jurisdiction": self.jurisdiction,
                "decisionIndex": self.decision_index, "policySetHash": self.policy_set_hash,
                "shards": list(self.shards)}


@dataclass(frozen=True)
class ReleaseClaim:
    """A data key unwrapped at ``site`` for ``action`` (for a copy: at the source site)."""

    index: int
    site: str
    action: str
    purpose: str | None
    decision_index: int
    policy_set_hash: str

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "site": self.site, "action": self.action, "purpose": self.purpose,
                "decisionIndex": self.decision_index, "policySetHash": self.policy_set_hash}


@dataclass(frozen=True)
class ExportClaim:
    """A plaintext export at ``site``. ``release_index`` is the key release that made it possible.

    ``data.export`` entries name their decision; the release is the ``key.release`` that cites the
    same decision, and the verifier checks that link.
    """

    index: int
    site: str
    jurisdiction: str
    purpose: str | None
    format: str
    release_index: int
    decision_index: int

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "site": self.site, "jurisdiction": self.jurisdiction, "purpose": self.purpose,
                "format": self.format, "releaseIndex": self.release_index, "decisionIndex": self.decision_index}


@dataclass(frozen=True)
class DecisionClaim:
    """A policy decision about the dataset, allow or deny. ``policy_set_hash`` is the SHA-256 of the
    whole Cedar policy set in force, not the dataset's usage policy hash."""

    index: int
    principal: str
    action: str
    site: str | None
    site_jurisdiction: str | None
    purpose: str | None
    allowed: bool
    rules: tuple[str, ...]
    policy_set_hash: str

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "principal": self.principal, "action": self.action, "site": self.site,
                "siteJurisdiction": self.site_jurisdiction, "purpose": self.purpose,
                "decision": "allow" if self.allowed else "deny", "rules": list(self.rules),
                "policySetHash": self.policy_set_hash}


@dataclass(frozen=True)
class ShredClaim:
    site: str
    index: int

    def to_json(self) -> dict[str, Any]:
        return {"site": self.site, "index": self.index}


@dataclass(frozen=True)
class WithdrawalClaim:
    index: int
    decision_index: int
    shredded: tuple[ShredClaim, ...]

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "decisionIndex": self.decision_index,
                "shredded": [s.to_json() for s in self.shredded]}


@dataclass(frozen=True)
class ResidencyClaim:
    """What a site claims about a dataset, every item citing the ledger entry that records it."""

    dataset: str
    owner: str
    embodiment: str
    attester_site: str
    attester_jurisdiction: str
    policy: dict[str, Any]
    policy_hash: str
    consent_index: int
    ingest: IngestClaim
    shards: tuple[ShardClaim, ...]
    copies: tuple[CopyClaim, ...]
    releases: tuple[ReleaseClaim, ...]
    exports: tuple[ExportClaim, ...]
    decisions: tuple[DecisionClaim, ...]
    withdrawal: WithdrawalClaim | None
    attested_at: str
    # the dataset's own Cedar policies as compiled from ``policy`` (not withdrawn), and their
    # SHA-256: an auditor recompiles the policy and compares, and the consent entry records the hash
    cedar: str = ""
    cedar_hash: str = ""

    @property
    def jurisdictions(self) -> tuple[str, ...]:
        """The jurisdictions the usage policy allows (empty if the policy is malformed)."""
        j = self.policy.get("jurisdictions")
        return tuple(x for x in j if isinstance(x, str)) if isinstance(j, list) else ()

    @property
    def allowed_sites(self) -> tuple[str, ...]:
        s = self.policy.get("sites")
        return tuple(x for x in s if isinstance(x, str)) if isinstance(s, list) else ()

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset, "owner": self.owner, "embodiment": self.embodiment,
            "attester": {"site": self.attester_site, "jurisdiction": self.attester_jurisdiction},
            "policy": self.policy, "policyHash": self.policy_hash,
            "allowedJurisdictions": list(self.jurisdictions), "allowedSites": list(self.allowed_sites),
            "consentIndex": self.consent_index, "ingest": self.ingest.to_json(),
            "shards": [s.to_json() for s in self.shards], "copies": [c.to_json() for c in self.copies],
            "keyReleases": [r.to_json() for r in self.releases], "exports": [e.to_json() for e in self.exports],
            "decisions": [d.to_json() for d in self.decisions],
            "withdrawal": self.withdrawal.to_json() if self.withdrawal else None,
            "attestedAt": self.attested_at, "cedar": self.cedar, "cedarHash": self.cedar_hash,
        }

    def own_indices(self) -> list[int]:
        """The index of every entry that some claim item *is* (not merely refers to), with repeats."""
        out = [self.consent_index, self.ingest.index]
        out += [c.index for c in self.copies] + [r.index for r in self.releases] + [e.index for e in self.exports]
        out += [d.index for d in self.decisions]
        if self.withdrawal:
            out += [self.withdrawal.index, *(s.index for s in self.withdrawal.shredded)]
        return out

    def cited_indices(self) -> set[int]:
        """Every ledger index the claim mentions; a bundle must carry exactly these entries."""
        refs = {self.ingest.decision_index}
        refs |= {p.index for s in self.shards for p in s.placements}
        refs |= {c.decision_index for c in self.copies} | {r.decision_index for r in self.releases}
        refs |= {e.release_index for e in self.exports} | {e.decision_index for e in self.exports}
        if self.withdrawal:
            refs.add(self.withdrawal.decision_index)
        return set(self.own_indices()) | refs


def shard_subject_name(dataset: str, sha256: str) -> str:
    """The in-toto subject name of a shard: its path under a site's storage root."""
    return f"datasets/{dataset}/{sha256}.parquet"


# --- reading a claim back (strict: unknown or missing fields are refused) -----------------------


def _fields(d: Any, where: str, required: Iterable[str]) -> dict[str, Any]:
    req = set(required)
    if not isinstance(d, dict):
        raise ClaimFormatError(f"{where} must be an object")
    if set(d) != req:
        missing, extra = sorted(req - set(d)), sorted(set(d) - req)
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"unexpected {', '.join(extra)}"] if extra else [])
        raise ClaimFormatError(f"{where}: " + "; ".join(parts))
    return d


def _str(d: dict[str, Any], key: str, where: str, nullable: bool = False) -> Any:
    v = d[key]
    if v is None and nullable:
        return None
    if not isinstance(v, str) or not v:
        raise ClaimFormatError(f"{where}.{key} must be a non-empty string")
    return v


def _int(d: dict[str, Any], key: str, where: str) -> int:
    v = d[key]
    # bool is an int in Python; JSON true must not pass as ledger index 1
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise ClaimFormatError(f"{where}.{key} must be a non-negative integer")
    return v


def _list(d: dict[str, Any], key: str, where: str) -> list[Any]:
    v = d[key]
    if not isinstance(v, list):
        raise ClaimFormatError(f"{where}.{key} must be a list")
    return v


def _strs(d: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    items = _list(d, key, where)
    if not all(isinstance(x, str) for x in items):
        raise ClaimFormatError(f"{where}.{key} must be a list of strings")
    return tuple(items)


def _placement(d: Any, where: str) -> Placement:
    d = _fields(d, where, ("site", "jurisdiction", "index"))
    return Placement(_str(d, "site", where), _str(d, "jurisdiction", where), _int(d, "index", where))


def _decision(d: Any, where: str) -> DecisionClaim:
    d = _fields(d, where, ("index", "principal", "action", "site", "siteJurisdiction", "purpose", "decision",
                           "rules", "policySetHash"))
    if d["decision"] not in ("allow", "deny"):
        raise ClaimFormatError(f"{where}.decision must be 'allow' or 'deny'")
    return DecisionClaim(_int(d, "index", where), _str(d, "principal", where), _str(d, "action", where),
                         _str(d, "site", where, True), _str(d, "siteJurisdiction", where, True),
                         _str(d, "purpose", where, True), d["decision"] == "allow", _strs(d, "rules", where),
                         _str(d, "policySetHash", where))


def claim_from_json(p: Any) -> ResidencyClaim:
    """Parse a predicate into a :class:`ResidencyClaim`; raises ClaimFormatError naming the field.

    Refuses missing and unknown fields (this reader is for v1, which we write), wrong types, and
    negative or boolean ledger indices.
    """
    w = "predicate"
    p = _fields(p, w, ("dataset", "owner", "embodiment", "attester", "policy", "policyHash", "allowedJurisdictions",
                       "allowedSites", "consentIndex", "ingest", "shards", "copies", "keyReleases", "exports",
                       "decisions", "withdrawal", "attestedAt", "cedar", "cedarHash"))
    att = _fields(p["attester"], f"{w}.attester", ("site", "jurisdiction"))
    if not isinstance(p["policy"], dict):
        raise ClaimFormatError(f"{w}.policy must be an object")
    ing = _fields(p["ingest"], f"{w}.ingest", ("index", "site", "jurisdiction", "decisionIndex"))
    shards = []
    for i, s in enumerate(_list(p, "shards", w)):
        where = f"{w}.shards[{i}]"
        s = _fields(s, where, ("sha256", "frames", "bytes", "placements"))
        shards.append(ShardClaim(_str(s, "sha256", where), _int(s, "frames", where), _int(s, "bytes", where),
                                 tuple(_placement(x, f"{where}.placements[{j}]")
                                       for j, x in enumerate(_list(s, "placements", where)))))
    copies = []
    for i, c in enumerate(_list(p, "copies", w)):
        where = f"{w}.copies[{i}]"
        c = _fields(c, where, ("index", "from", "to", "jurisdiction", "decisionIndex", "policySetHash", "shards"))
        copies.append(CopyClaim(_int(c, "index", where), _str(c, "from", where), _str(c, "to", where),
                                _str(c, "jurisdiction", where), _int(c, "decisionIndex", where),
                                _str(c, "policySetHash", where), _strs(c, "shards", where)))
    releases = []
    for i, r in enumerate(_list(p, "keyReleases", w)):
        where = f"{w}.keyReleases[{i}]"
        r = _fields(r, where, ("index", "site", "action", "purpose", "decisionIndex", "policySetHash"))
        releases.append(ReleaseClaim(_int(r, "index", where), _str(r, "site", where), _str(r, "action", where),
                                     _str(r, "purpose", where, True), _int(r, "decisionIndex", where),
                                     _str(r, "policySetHash", where)))
    exports = []
    for i, e in enumerate(_list(p, "exports", w)):
        where = f"{w}.exports[{i}]"
        e = _fields(e, where, ("index", "site", "jurisdiction", "purpose", "format", "releaseIndex", "decisionIndex"))
        exports.append(ExportClaim(_int(e, "index", where), _str(e, "site", where), _str(e, "jurisdiction", where),
                                   _str(e, "purpose", where, True), _str(e, "format", where),
                                   _int(e, "releaseIndex", where), _int(e, "decisionIndex", where)))
    decisions = tuple(_decision(d, f"{w}.decisions[{i}]") for i, d in enumerate(_list(p, "decisions", w)))
    withdrawal = None
    if p["withdrawal"] is not None:
        where = f"{w}.withdrawal"
        wd = _fields(p["withdrawal"], where, ("index", "decisionIndex", "shredded"))
        shreds = []
        for i, s in enumerate(_list(wd, "shredded", where)):
            s = _fields(s, f"{where}.shredded[{i}]", ("site", "index"))
            shreds.append(ShredClaim(_str(s, "site", where), _int(s, "index", where)))
        withdrawal = WithdrawalClaim(_int(wd, "index", where), _int(wd, "decisionIndex", where), tuple(shreds))
    claim = ResidencyClaim(
        dataset=_str(p, "dataset", w), owner=_str(p, "owner", w), embodiment=_str(p, "embodiment", w),
        attester_site=_str(att, "site", f"{w}.attester"),
        attester_jurisdiction=_str(att, "jurisdiction", f"{w}.attester"),
        policy=p["policy"], policy_hash=_str(p, "policyHash", w), consent_index=_int(p, "consentIndex", w),
        ingest=IngestClaim(_int(ing, "index", f"{w}.ingest"), _str(ing, "site", f"{w}.ingest"),
                           _str(ing, "jurisdiction", f"{w}.ingest"), _int(ing, "decisionIndex", f"{w}.ingest")),
        shards=tuple(shards), copies=tuple(copies), releases=tuple(releases), exports=tuple(exports),
        decisions=decisions, withdrawal=withdrawal, attested_at=_str(p, "attestedAt", w),
        cedar=_str(p, "cedar", w), cedar_hash=_str(p, "cedarHash", w),
    )
    # The two lists are derived from the policy; a claim whose copies disagree is self-contradictory.
    if list(_strs(p, "allowedJurisdictions", w)) != list(claim.jurisdictions):
        raise ClaimFormatError(f"{w}.allowedJurisdictions differs from {w}.policy.jurisdictions")
    if list(_strs(p, "allowedSites", w)) != list(claim.allowed_sites):
        raise ClaimFormatError(f"{w}.allowedSites differs from {w}.policy.sites")
    return claim


# --- building a claim from a workspace's ledger --------------------------------------------------


@dataclass(frozen=True)
class DatasetHistory:
    """Every ledger entry that concerns one dataset, by kind, in ledger order."""

    dataset: str
    consent: StoredEntry
    ingest: StoredEntry
    copies: tuple[StoredEntry, ...]
    releases: tuple[StoredEntry, ...]
    exports: tuple[StoredEntry, ...]
    decisions: tuple[StoredEntry, ...]
    withdrawal: StoredEntry | None
    shreds: tuple[StoredEntry, ...]

    def by_index(self) -> dict[int, StoredEntry]:
        all_ = [self.consent, self.ingest, *self.copies, *self.releases, *self.exports, *self.decisions,
                *self.shreds, *([self.withdrawal] if self.withdrawal else [])]
        return {e.index: e for e in all_}


def _dataset_of(e: StoredEntry) -> Any:
    body = e.entry.body
    if e.entry.kind == "decision":
        req = body.get("request")
        return req.get("dataset") if isinstance(req, dict) else None
    return body.get("dataset")


def dataset_subject(name: str) -> str:
    """The ledger subject of dataset ``name`` (its entries' chain, onshore.ledger.subjects)."""
    return f"dataset:{name}"


def collect_history(ws: Workspace, name: str, size: int | None = None) -> DatasetHistory:
    """Read the ledger's first ``size`` entries (default: all) for every entry about dataset ``name``.

    Outcome entries of an attempt that a later ``data.abandoned`` entry closed (a crash before
    the catalog committed, see docs/residency.md) are left out: they describe nothing that
    happened. Refuses (NotFoundError) a dataset the ledger has no ingest for, and
    (IntegrityError) a ledger with two live ingests or grants of the same name.
    """
    return history_from_entries(name, ws.ledger.subject_entries(dataset_subject(name), 0, size))


def history_from_entries(name: str, entries: Iterable[StoredEntry]) -> DatasetHistory:
    """The history of dataset ``name`` from ``entries`` (its subject chain, ascending): what
    :func:`collect_history` does for a workspace, and a site node does with the chain its
    coordinator sends (``onshore.parties``). Same refusals."""
    found: dict[str, list[StoredEntry]] = {k: [] for k in DATASET_KINDS}
    voided: set[int] = set()
    for e in entries:
        if e.entry.kind not in found and e.entry.kind != ABANDONED:
            continue
        if _dataset_of(e) != name:
            continue
        if e.entry.kind == ABANDONED:
            voided.update(int(i) for i in e.entry.body.get("closes", []))
        else:
            found[e.entry.kind].append(e)
    for kind in VOIDABLE_KINDS:
        found[kind] = [e for e in found[kind] if e.index not in voided]
    if not found["data.ingest"]:
        raise NotFoundError(f"the ledger records no ingest of dataset {name!r}; see 'onshore dataset list'")
    for kind in ("data.ingest", "consent.grant", "consent.withdraw"):
        if len(found[kind]) > 1:
            raise IntegrityError(f"the ledger holds {len(found[kind])} {kind} entries for dataset {name!r}")
    if not found["consent.grant"]:
        raise IntegrityError(f"the ledger holds no consent.grant for dataset {name!r}")
    return DatasetHistory(
        name, found["consent.grant"][0], found["data.ingest"][0], tuple(found["data.copy"]),
        tuple(found["key.release"]), tuple(found["data.export"]), tuple(found["decision"]),
        found["consent.withdraw"][0] if found["consent.withdraw"] else None, tuple(found["key.shred"]))


def _export_release(export: StoredEntry, releases: tuple[StoredEntry, ...]) -> StoredEntry:
    # export() decides, releases the key citing that decision, then writes data.export citing it too
    b = export.entry.body
    for r in reversed(releases):
        rb = r.entry.body
        if (r.index < export.index and rb.get("action") == "export" and rb.get("site") == b.get("site")
                and rb.get("decision_index") == b.get("decision_index")):
            return r
    raise IntegrityError(f"ledger entry {export.index} (data.export) has no earlier key release for it")


def build_claim(h: DatasetHistory, attester_site: str, attester_jurisdiction: str) -> ResidencyClaim:
    """The claim that ``h`` supports, made by ``attester_site``. Pure: reads only ``h``."""
    grant, ing = h.consent.entry.body, h.ingest.entry.body
    cedar = dataset_cedar(h.dataset, grant["owner"], UsagePolicy.from_json(grant["policy"]), withdrawn=False)
    placements: dict[str, list[Placement]] = {
        s["sha256"]: [Placement(ing["site"], ing["jurisdiction"], h.ingest.index)] for s in ing["shards"]}
    copies = []
    for c in h.copies:
        b = c.entry.body
        for sha in b["shards"]:
            placements.setdefault(sha, []).append(Placement(b["to"], b["jurisdiction"], c.index))
        copies.append(CopyClaim(c.index, b["from"], b["to"], b["jurisdiction"], b["decision_index"],
                                b["policy_hash"], tuple(b["shards"])))
    releases = tuple(ReleaseClaim(r.index, r.entry.body["site"], r.entry.body["action"], r.entry.body["purpose"],
                                  r.entry.body["decision_index"], r.entry.body["policy_hash"]) for r in h.releases)
    exports = []
    for e in h.exports:
        b, rel = e.entry.body, _export_release(e, h.releases)
        exports.append(ExportClaim(e.index, b["site"], b["jurisdiction"], b["purpose"], b["format"], rel.index,
                                   rel.entry.body["decision_index"]))
    decisions = []
    for d in h.decisions:
        b = d.entry.body
        r = b["request"]
        decisions.append(DecisionClaim(d.index, r["principal"], r["action"], r["site"], b["site_jurisdiction"],
                                       r["purpose"], b["decision"] == "allow", tuple(b["rules"]), b["policy_hash"]))
    withdrawal = None
    if h.withdrawal is not None:
        withdrawal = WithdrawalClaim(h.withdrawal.index, h.withdrawal.entry.body["decision_index"],
                                     tuple(ShredClaim(s.entry.body["site"], s.index) for s in h.shreds))
    return ResidencyClaim(
        dataset=h.dataset, owner=grant["owner"], embodiment=ing["embodiment"], attester_site=attester_site,
        attester_jurisdiction=attester_jurisdiction, policy=grant["policy"], policy_hash=grant["policy_hash"],
        consent_index=h.consent.index,
        ingest=IngestClaim(h.ingest.index, ing["site"], ing["jurisdiction"], ing["decision_index"]),
        shards=tuple(ShardClaim(s["sha256"], s["frames"], s["bytes"], tuple(placements[s["sha256"]]))
                     for s in ing["shards"]),
        copies=tuple(copies), releases=releases, exports=tuple(exports), decisions=tuple(decisions),
        withdrawal=withdrawal, attested_at=now_iso(), cedar=cedar, cedar_hash=cedar_hash(cedar),
    )


def _check_catalog_agrees(ws: Workspace, claim: ResidencyClaim) -> None:
    # The ledger is what the claim cites, the catalog is what the storage layer acts on; attesting
    # while they disagree would sign a claim about data that is (or is not) somewhere else.
    with ws.catalog.connect() as conn:
        rows = conn.execute(select(T.shards.c.sha256, T.shards.c.site).where(T.shards.c.dataset == claim.dataset)).all()
    catalog = {(sha, site) for sha, site in rows}
    ledger = {(s.sha256, p.site) for s in claim.shards for p in s.placements}
    if catalog != ledger:
        raise IntegrityError(
            f"dataset {claim.dataset!r}: the catalog places shards at {sorted(catalog - ledger)[:3]} and the ledger at "
            f"{sorted(ledger - catalog)[:3]} where the other does not; run 'onshore ledger verify' and investigate")


# --- bundling ------------------------------------------------------------------------------------


def checkpoint_covering(ws: Workspace, last_index: int) -> tuple[str, int]:
    """The newest stored checkpoint if it covers ``last_index``, else a fresh (uncosigned) one."""
    note = ws.ledger.checkpoint_note()
    if note is not None:
        text, _ = notes.split_note(note)
        cp = ckpt.parse(text)
        if cp.size > last_index:
            # A stored note whose root is not our tree's would make every proof fail; say so here.
            if cp.root_hash != ws.ledger.root(cp.size):
                raise IntegrityError(f"stored checkpoint of size {cp.size} does not match the ledger's tree")
            return note, cp.size
    note = ws.make_checkpoint()
    return note, ckpt.parse(notes.split_note(note)[0]).size


def make_bundle(ws: Workspace, statement: Statement, signer_site: str, cited: Iterable[int],
                leaves: dict[int, bytes] | None = None, *, subject: str | None = None,
                checkpoint: tuple[str, int] | None = None) -> dict[str, Any]:
    """Sign ``statement`` as ``signer_site`` and bundle it with the ``cited`` entries and their proofs.

    Shared by dataset and model attestations (``attest/model_claim.py``). ``checkpoint`` is
    (note, size) from :func:`checkpoint_covering` (default: the one covering the cited entries).
    With ``subject`` (a dataset bundle), ``cited`` must be entries of that subject's chain in the
    checkpoint's tree; the bundle then carries the whole chain and the log's head note for it
    (``subjectHead``). ``leaves`` may supply entry bytes already read; others are read from the
    ledger. Refuses an empty ``cited``, or, with ``subject``, one outside the subject's chain.
    """
    wanted = set(cited)
    if not wanted:
        raise ValidationError("an attestation must cite at least one ledger entry")
    note, size = checkpoint or checkpoint_covering(ws, max(wanted))
    leaves = dict(leaves or {})
    if subject is not None:
        chain = {e.index: e.leaf for e in ws.ledger.subject_entries(subject, 0, size)}
        if not wanted <= set(chain):
            raise ValidationError(f"an attestation must cite entries about {subject} in the tree of size {size}")
        wanted, leaves = set(chain), {**chain, **leaves}
    envelope = sign_statement(statement, ws.signer(f"site:{signer_site}"), f"site:{signer_site}")
    entries = bundle_entries(ws.ledger, {i: leaves.get(i) for i in wanted}, size)
    bundle = {"mediaType": BUNDLE_MEDIA_TYPE, "dsseEnvelope": envelope, "checkpoint": note}
    if subject is not None:
        bundle["subjectHead"] = ws.subject_head_note(subject, size)
    return {**bundle, "entries": entries}


def bundle_entries(ledger: Ledger, leaves: dict[int, bytes | None], size: int) -> list[dict[str, Any]]:
    """The bundle's ``entries`` for the indices of ``leaves`` (ascending), each with its inclusion
    proof to the tree of ``size``; a leaf given as None is read from ``ledger``."""
    indices = sorted(leaves)
    proofs = ledger.inclusion_proofs(indices, size)  # one batch: cited entries share upper nodes
    return [{"index": i, "leaf": b64encode(leaves[i] or ledger.get(i).leaf),
             "inclusionProof": [b64encode(h) for h in proof]} for i, proof in zip(indices, proofs, strict=True)]


def attest_dataset(ws: Workspace, name: str, site: str | None = None) -> dict[str, Any]:
    """Attest where dataset ``name`` is and has been; returns the bundle (a JSON-ready dict).

    The claim is made and signed by ``site`` (default: the site where the dataset was ingested),
    which must hold the dataset's shards. Everything claimed comes from the ledger; the catalog
    must agree on where the shards are. Afterwards a ``data.attest`` entry, signed by the site,
    records the SHA-256 of the statement (so the ledger shows every attestation ever issued).

    Refuses: an unknown dataset or site (NotFoundError), a site that holds none of the data
    (ValidationError), and a ledger/catalog disagreement or a stored checkpoint that does not
    match the ledger (IntegrityError). Take a checkpoint and get it cosigned first (see the module
    docstring); otherwise the bundle carries a fresh checkpoint without cosignatures.
    """
    from onshore.workspace.registry import get_site

    ws.row("dataset", name)
    # The tree first, then the history as of that tree, so that the claim and the chain the bundle
    # carries describe the same entries even while other commands append.
    head = ws.ledger.subject_head(dataset_subject(name))
    if head is None:
        raise NotFoundError(f"the ledger records no ingest of dataset {name!r}; see 'onshore dataset list'")
    checkpoint = checkpoint_covering(ws, head.index)
    history = collect_history(ws, name, checkpoint[1])
    attester = site or history.ingest.entry.body["site"]
    site_info = get_site(ws, attester)
    claim = build_claim(history, attester, site_info.jurisdiction)
    holders = {p.site for s in claim.shards for p in s.placements}
    if attester not in holders:
        raise ValidationError(f"site {attester!r} holds no shard of dataset {name!r} (it sits at "
                              f"{', '.join(sorted(holders))}); attest as one of those sites")
    _check_catalog_agrees(ws, claim)
    statement = build_statement([Subject(shard_subject_name(name, s.sha256), s.sha256) for s in claim.shards],
                                PREDICATE_TYPE, claim.to_json())
    leaves = {i: e.leaf for i, e in history.by_index().items()}
    bundle = make_bundle(ws, statement, attester, claim.cited_indices(), leaves, subject=dataset_subject(name),
                         checkpoint=checkpoint)
    size = ckpt.parse(notes.split_note(bundle["checkpoint"])[0]).size
    ws.record("data.attest", f"site:{attester}", {
        "dataset": name, "site": attester, "predicate_type": PREDICATE_TYPE,
        "statement_sha256": hashlib.sha256(statement.to_bytes()).hexdigest(),
        "checkpoint_size": size, "entries": len(bundle["entries"])})
    return bundle


def write_bundle(bundle: dict[str, Any], path: Path) -> None:
    """Write ``bundle`` as indented ASCII JSON, atomically (a crash leaves no half-written bundle)."""
    path = Path(path)
    data = (json.dumps(bundle, indent=2) + "\n").encode("ascii")
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent if str(path.parent) else ".")
    try:
        os.fchmod(fd, 0o644)  # a bundle is meant to be handed to auditors; nothing in it is secret
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
