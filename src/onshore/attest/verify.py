"""Offline verification of a residency bundle: a trust root in, a list of named checks out.

``verify_bundle`` needs the bundle and a :class:`~onshore.attest.trust.TrustRoot` only: no
workspace, no network. It never raises for a bad bundle; every problem is a failed check with a
message, and the report is ``ok`` only when every check passed. The checks, in order:

``bundle format``
    JSON (UTF-8, no duplicate keys), the media type, exactly the expected fields and types,
    canonical base64, entries in strictly ascending index order. Nothing else runs if this fails.
``envelope signature``
    The DSSE signature verifies under the trust root's key of the site the claim names as its
    attester (keyid ``site:NAME``), over payload type ``application/vnd.in-toto+json``.
``statement``
    The payload is an in-toto Statement v1 with our predicate type and a well-formed claim.
``checkpoint signature``
    The checkpoint is signed by the trust root's log key and names the trust root's origin.
``witness cosignatures``
    At least ``min_witnesses`` distinct trust-root witnesses cosigned it, and no trusted
    cosignature fails (a failing one means the checkpoint or cosignature was altered).
``entry signatures``
    Every cited ledger entry is canonical and signed by its actor's key from the trust root.
``inclusion proofs``
    Every cited entry is in the tree the checkpoint commits to, at its stated index.
``claim matches ledger``
    Nothing in the claim contradicts the entries: subjects are exactly the ingested shards; owner,
    policy, sites, jurisdictions, digests, decision links agree with the entries; every claimed
    item cites an entry of the right kind, signed by the right actor, that the bundle carries,
    and the bundle carries no entry the claim does not cite.
``jurisdictions``
    Every place in the claim (attester, ingest site, shard sites, copy sources and targets, key
    release sites, export sites, sites of allow decisions) is a trust-root site whose jurisdiction
    (per the trust root) is one the policy allows, and equals the jurisdiction the claim states.
``decisions``
    Every decision that authorised a claimed action is an allow, recorded before the action, for
    this dataset, action, site and principal, inside the policy's expiry and purposes, and not
    after the withdrawal. A decision is signed by its principal (the embedded default), or by
    the log key carrying the principal's signed request (a deployment's coordinator). Policy
    hashes: a decision carries the SHA-256 of the whole Cedar policy *set* in force; copies and
    key releases record the same set hash, and must match their decision's. The dataset's own
    usage-policy hash (consent.grant, data.ingest) is a different hash; it is checked in ``claim
    matches ledger`` against the consent entry and recomputed from the policy text. The ingest
    decision's set hash cannot be compared with either (it is the set with the new dataset
    added), so it is only reported.
``completeness``
    The bundle carries the dataset's whole chain (``onshore.ledger.subjects``): the log-signed head
    note names the newest entry about the dataset in the checkpoint's tree (same size and root),
    and following links back from it reaches the dataset's first entry through entries the bundle
    carries, and nothing else about the dataset is carried. Every entry of the chain that the claim
    should list (all but attestations, abandoned attempts and the outcomes they voided) is cited.
    A bundle that drops an entry, or a claim that leaves one out, fails here.
``update``
    Only with an update (``onshore attest update``, ``attest/update.py``): its checkpoint is signed
    by the log and cosigned by ``min_witnesses`` trust-root witnesses, extends the bundle's
    checkpoint (consistency proof), and its entries (signed, included in the newer tree) chain from
    its head note down to the bundle's head. Fails, naming the ledger index, when one of them is a
    withdrawal of the dataset (no abandoned attempt voids a withdrawal).
``freshness``
    With ``max_age``: the newest checkpoint the verifier holds (the update's, else the bundle's)
    was cosigned by a trust-root witness no longer ago than that.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from onshore.attest import verify_model as VM
from onshore.attest.bundle import (
    ABANDONED,
    BUNDLE_FIELDS,
    BUNDLE_MEDIA_TYPE,
    DATASET_KINDS,
    ENTRY_FIELDS,
    PREDICATE_TYPE,
    VOIDABLE_KINDS,
    ResidencyClaim,
    claim_from_json,
    dataset_subject,
    shard_subject_name,
)
from onshore.attest.dsse import verify_envelope
from onshore.attest.model_claim import MODEL_PREDICATE_TYPE
from onshore.attest.statement import PAYLOAD_TYPE, Statement, parse_statement
from onshore.attest.trust import TrustRoot
from onshore.attest.update import UPDATE_FIELDS, UPDATE_MEDIA_TYPE
from onshore.encoding import b64decode_canonical
from onshore.errors import OnshoreError
from onshore.keys.keystore import public_key_from_b64
from onshore.ledger import checkpoint as ckpt
from onshore.ledger import merkle, notes
from onshore.ledger.entries import Entry, parse_leaf, verify_entry
from onshore.ledger.requests import request_shape_ok, request_signature_ok
from onshore.ledger.subjects import SubjectHead, open_head, subjects_of, walk_back
from onshore.residency.policy import UsagePolicy, cedar_hash, dataset_cedar

PASS, FAIL, NOT_RUN = "pass", "fail", "not run"

CHECK_NAMES = (
    "bundle format", "envelope signature", "statement", "checkpoint signature", "witness cosignatures",
    "entry signatures", "inclusion proofs", "claim matches ledger", "jurisdictions", "decisions", "completeness",
    "update", "freshness",
)
"""Every check a dataset bundle's report holds, in the order they are reported."""

MODEL_CHECK_NAMES = (*CHECK_NAMES[:CHECK_NAMES.index("decisions") + 1], "withdrawals", "freshness")
"""Every check a model bundle's report holds (``attest/verify_model.py``)."""

_MAX_LISTED = 5
T = TypeVar("T")


class VerificationFailed(OnshoreError):
    """A bundle did not verify; the message names the failed checks (the CLI exits 1)."""


@dataclass(frozen=True)
class Check:
    """One named check: ``status`` is "pass", "fail" or "not run" (an earlier check it needs failed)."""

    name: str
    status: str
    message: str

    @property
    def passed(self) -> bool:
        return self.status == PASS

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "message": self.message}


@dataclass(frozen=True)
class VerificationReport:
    """The result of :func:`verify_bundle`. ``ok`` only when every check passed."""

    checks: tuple[Check, ...]
    dataset: str | None = None
    attester: str | None = None
    checkpoint_size: int | None = None
    witnesses: tuple[str, ...] = ()
    model: str | None = None
    model_status: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def failed(self) -> list[str]:
        """Names of the checks that failed (not those that could not run)."""
        return [c.name for c in self.checks if c.status == FAIL]

    def check(self, name: str) -> Check:
        """The check called ``name``; KeyError if the report has none."""
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "dataset": self.dataset, "model": self.model, "model_status": self.model_status,
                "attester": self.attester,
                "checkpoint_size": self.checkpoint_size, "witnesses": list(self.witnesses),
                "failed": self.failed, "checks": [c.to_json() for c in self.checks]}


# --- bundle format -------------------------------------------------------------------------------


class _FormatError(Exception):
    pass


@dataclass(frozen=True)
class _BundleEntry:
    index: int
    leaf: bytes
    proof: tuple[bytes, ...]


@dataclass(frozen=True)
class _Bundle:
    envelope: dict[str, Any]
    note: str
    entries: tuple[_BundleEntry, ...]
    head_note: str | None  # None in bundles made before chain links


@dataclass(frozen=True)
class _Update:
    subject: str
    since_size: int
    note: str
    consistency: tuple[bytes, ...]
    head_note: str
    entries: tuple[_BundleEntry, ...]


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads keeps the last of two equal keys; a verifier and a human reader could then see
    # different bundles in the same bytes.
    d: dict[str, Any] = {}
    for k, v in pairs:
        if k in d:
            raise _FormatError(f"duplicate key {k!r}")
        d[k] = v
    return d


def _no_constants(name: str) -> Any:
    raise _FormatError(f"{name} is not JSON")


def _strict_b64(text: Any, what: str) -> bytes:
    try:
        return b64decode_canonical(text, what)
    except ValueError as e:
        raise _FormatError(str(e)) from None


def _exact(d: Any, keys: frozenset[str], where: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise _FormatError(f"{where} must be a JSON object")
    if set(d) != keys:
        missing, extra = sorted(keys - set(d)), sorted(set(d) - keys)
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"unexpected {', '.join(extra)}"] if extra else [])
        raise _FormatError(f"{where}: " + "; ".join(parts))
    return d


def _load_json(data: Mapping[str, Any] | bytes | str, what: str) -> Any:
    if not isinstance(data, bytes | bytearray | str):
        return data
    try:
        text = data.decode("utf-8") if isinstance(data, bytes | bytearray) else data
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except UnicodeDecodeError:
        raise _FormatError(f"{what} is not UTF-8") from None
    except ValueError as e:
        raise _FormatError(f"{what} is not JSON: {e}") from None


def _parse_bundle(bundle: Mapping[str, Any] | bytes | str) -> _Bundle:
    doc = _load_json(bundle, "bundle")
    # bundles made before chain links have no subjectHead; they fail "completeness", not the format
    doc = _exact(doc, BUNDLE_FIELDS if isinstance(doc, dict) and "subjectHead" in doc
                 else BUNDLE_FIELDS - {"subjectHead"}, "bundle")
    if doc["mediaType"] != BUNDLE_MEDIA_TYPE:
        raise _FormatError(f"mediaType is {doc['mediaType']!r}, expected {BUNDLE_MEDIA_TYPE!r}")
    env = doc["dsseEnvelope"]
    if not isinstance(env, dict):
        raise _FormatError("dsseEnvelope must be a JSON object")
    if not isinstance(doc["checkpoint"], str) or not doc["checkpoint"]:
        raise _FormatError("checkpoint must be a non-empty string (a C2SP checkpoint note)")
    head = doc.get("subjectHead")
    if head is not None and (not isinstance(head, str) or not head):
        raise _FormatError("subjectHead must be a non-empty string (a signed note)")
    raw_entries = doc["entries"]
    if not isinstance(raw_entries, list) or not raw_entries:
        raise _FormatError("entries must be a non-empty list")
    return _Bundle(env, doc["checkpoint"], _parse_entries(raw_entries, "entries"), head)


def _parse_update(update: Mapping[str, Any] | bytes | str) -> _Update:
    doc = _exact(_load_json(update, "update"), UPDATE_FIELDS, "update")
    if doc["mediaType"] != UPDATE_MEDIA_TYPE:
        raise _FormatError(f"update mediaType is {doc['mediaType']!r}, expected {UPDATE_MEDIA_TYPE!r}")
    for key in ("subject", "checkpoint", "subjectHead"):
        if not isinstance(doc[key], str) or not doc[key]:
            raise _FormatError(f"update {key} must be a non-empty string")
    n = doc["sinceSize"]
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise _FormatError("update sinceSize must be a positive integer")
    if not isinstance(doc["consistencyProof"], list) or not isinstance(doc["entries"], list):
        raise _FormatError("update consistencyProof and entries must be lists")
    proof = tuple(_strict_b64(h, f"update consistencyProof[{j}]") for j, h in enumerate(doc["consistencyProof"]))
    return _Update(doc["subject"], n, doc["checkpoint"], proof, doc["subjectHead"],
                   _parse_entries(doc["entries"], "update entries"))


def _parse_entries(raw_entries: list[Any], where: str) -> tuple[_BundleEntry, ...]:
    entries: list[_BundleEntry] = []
    for i, e in enumerate(raw_entries):
        e = _exact(e, ENTRY_FIELDS, f"{where}[{i}]")
        idx = e["index"]
        if not isinstance(idx, int) or isinstance(idx, bool) or idx < 0:
            raise _FormatError(f"{where}[{i}].index must be a non-negative integer")
        if entries and idx <= entries[-1].index:
            raise _FormatError(f"{where} must be in strictly ascending index order ({where}[{i}] is {idx} after "
                               f"{entries[-1].index})")
        proof = e["inclusionProof"]
        if not isinstance(proof, list):
            raise _FormatError(f"{where}[{i}].inclusionProof must be a list")
        hashes = tuple(_strict_b64(h, f"{where}[{i}].inclusionProof[{j}]") for j, h in enumerate(proof))
        if any(len(h) != merkle.HASH_SIZE for h in hashes):
            raise _FormatError(f"{where}[{i}].inclusionProof holds a hash that is not {merkle.HASH_SIZE} bytes")
        entries.append(_BundleEntry(idx, _strict_b64(e["leaf"], f"{where}[{i}].leaf"), hashes))
    return tuple(entries)


# --- the individual checks -----------------------------------------------------------------------


def _summary(problems: list[str]) -> str:
    head = "; ".join(problems[:_MAX_LISTED])
    more = len(problems) - _MAX_LISTED
    return head + (f" (and {more} more)" if more > 0 else "")


def _result(name: str, problems: list[str], ok_message: str) -> Check:
    return Check(name, FAIL, _summary(problems)) if problems else Check(name, PASS, ok_message)


def _unverified_statement(envelope: dict[str, Any]) -> tuple[Statement | None, str]:
    """The statement in the payload, read *without* checking the signature (that is another check)."""
    try:
        payload = _strict_b64(envelope.get("payload"), "dsseEnvelope.payload")
        return parse_statement(payload), ""
    except (_FormatError, OnshoreError) as e:
        return None, str(e)


def _check_envelope(envelope: dict[str, Any], trust: TrustRoot, attester: str | None) -> Check:
    name = "envelope signature"
    if attester is None:
        # Without a readable claim we do not know who should have signed; any trusted site will do
        # for reporting, and the statement check fails anyway.
        keys = {f"site:{s.name}": public_key_from_b64(s.public_key) for s in trust.sites}
    else:
        site = trust.site(attester)
        if site is None:
            return Check(name, FAIL, f"the claim is made by site {attester!r}, which is not in the trust root")
        keys = {f"site:{attester}": public_key_from_b64(site.public_key)}
    try:
        verify_envelope(envelope, keys, payload_type=PAYLOAD_TYPE)
    except OnshoreError as e:
        who = f"site:{attester}" if attester else "any trust-root site"
        return Check(name, FAIL, f"not a valid signature by {who}: {e}")
    return Check(name, PASS, f"DSSE signature by site:{attester} verifies" if attester else
                 "DSSE signature by a trust-root site verifies")


def _check_statement(statement: Statement | None, error: str) -> tuple[Check, ResidencyClaim | None]:
    name = "statement"
    if statement is None:
        return Check(name, FAIL, error), None
    if statement.predicate_type != PREDICATE_TYPE:
        return Check(name, FAIL, f"predicateType is {statement.predicate_type!r}, expected {PREDICATE_TYPE!r}"), None
    try:
        claim = claim_from_json(statement.predicate)
    except OnshoreError as e:
        return Check(name, FAIL, str(e)), None
    return Check(name, PASS, f"in-toto Statement v1 about dataset {claim.dataset!r}, "
                             f"{len(statement.subjects)} shard subject(s)"), claim


def _check_checkpoint(note: str, trust: TrustRoot) -> tuple[Check, ckpt.Checkpoint | None]:
    name = "checkpoint signature"
    try:
        cp = ckpt.verify_checkpoint(note, trust.log_vkey, trust.log_origin)
    except OnshoreError as e:
        return Check(name, FAIL, f"{e}"), None
    return Check(name, PASS, f"signed by log {trust.log_origin}, tree size {cp.size}"), cp


def _unverified_checkpoint(note: str) -> ckpt.Checkpoint | None:
    try:
        return ckpt.parse(notes.split_note(note)[0])
    except OnshoreError:
        return None


def _check_witnesses(note: str, trust: TrustRoot, k: int) -> tuple[Check, tuple[str, ...]]:
    name = "witness cosignatures"
    try:
        verified = ckpt.verify_cosignatures(note, [w.vkey for w in trust.witnesses])
        # Names in notes are the witnesses' key names; show the trust root's names for them.
        by_key = {notes.parse_verifier_key(w.vkey, notes.SIG_COSIGNATURE_V1).name: w.name for w in trust.witnesses}
    except OnshoreError as e:
        return Check(name, FAIL, str(e)), ()
    names = tuple(by_key.get(n, n) for n in verified)
    if len(names) < k:
        return Check(name, FAIL, f"{len(names)} trust-root witness cosignature(s) verify "
                                 f"({', '.join(names) or 'none'}), {k} required"), names
    return Check(name, PASS, f"{len(names)} verified ({', '.join(names) or 'none'}), {k} required"), names


def _check_entry_signatures(bundle: _Bundle, trust: TrustRoot) -> tuple[Check, dict[int, Entry]]:
    problems: list[str] = []
    parsed: dict[int, Entry] = {}
    keys: dict[str, Ed25519PublicKey | None] = {}
    for e in bundle.entries:
        try:
            entry = parse_leaf(e.leaf)
        except OnshoreError as err:
            problems.append(f"entry {e.index}: {err}")
            continue
        parsed[e.index] = entry
        if entry.actor not in keys:
            try:
                keys[entry.actor] = trust.key_for(entry.actor)
            except OnshoreError:
                keys[entry.actor] = None
        key = keys[entry.actor]
        if key is None:
            problems.append(f"entry {e.index}: actor {entry.actor!r} has no key in the trust root")
            continue
        try:
            verify_entry(entry, key)
        except OnshoreError as err:
            problems.append(f"entry {e.index}: {err}")
    return _result("entry signatures", problems, f"{len(bundle.entries)} entries signed by their actors"), parsed


def _check_inclusion(bundle: _Bundle, cp: ckpt.Checkpoint | None) -> Check:
    name = "inclusion proofs"
    if cp is None:
        return Check(name, NOT_RUN, "the checkpoint could not be read")
    problems = []
    for e in bundle.entries:
        try:
            merkle.verify_inclusion(e.index, cp.size, merkle.leaf_hash(e.leaf), e.proof, cp.root_hash)
        except OnshoreError as err:
            problems.append(f"entry {e.index}: {err}")
    return _result(name, problems, f"{len(bundle.entries)} entries included in the tree of size {cp.size}")


# --- claim against entries -----------------------------------------------------------------------


@dataclass
class _Entries:
    """Entries by index, with a problem list that records each lookup that fails."""

    parsed: dict[int, Entry]
    carried: set[int]
    problems: list[str] = field(default_factory=list)

    def body(self, index: int, kind: str, actor: str | None, what: str) -> dict[str, Any] | None:
        e = self.parsed.get(index)
        if e is None:
            self.problems.append(f"{what} cites ledger entry {index}, which the bundle does not carry"
                                 if index not in self.carried else
                                 f"{what} cites ledger entry {index}, which cannot be read")
            return None
        if e.kind != kind:
            self.problems.append(f"{what} cites entry {index} as {kind}, but it is a {e.kind} entry")
            return None
        if actor is not None and e.actor != actor:
            self.problems.append(f"{what}: entry {index} is signed by {e.actor}, expected {actor}")
            return None
        return e.body

    def same(self, what: str, index: int, name: str, claimed: Any, recorded: Any) -> None:
        if claimed != recorded:
            self.problems.append(f"{what}: the claim says {name} {claimed!r}, entry {index} records {recorded!r}")


def _check_cedar(claim: ResidencyClaim, parsed: dict[int, Entry], p: list[str]) -> None:
    """The claim's Cedar text is what its policy compiles to, its hash is that text's, and every
    decision about the dataset was made with that Cedar in force (or, after the withdrawal, with
    the same Cedar plus the withdrawal's forbid)."""
    try:
        policy = UsagePolicy.from_json(claim.policy, "predicate.policy")
    except OnshoreError as e:
        p.append(f"the claimed policy does not compile to Cedar: {e}")
        return
    if claim.cedar != dataset_cedar(claim.dataset, claim.owner, policy, withdrawn=False):
        p.append("cedar: the claimed Cedar text is not what the claimed policy compiles to")
    if cedar_hash(claim.cedar) != claim.cedar_hash:
        p.append("cedarHash is not the SHA-256 of the claimed Cedar text")
    withdrawn_hash = cedar_hash(dataset_cedar(claim.dataset, claim.owner, policy, withdrawn=True))
    withdrawn_from = claim.withdrawal.decision_index if claim.withdrawal else None
    for d in claim.decisions:
        e = parsed.get(d.index)
        if e is None or e.kind != "decision":
            continue  # reported by the decision checks
        recorded = e.body.get("dataset_policy_hash")
        if recorded == claim.cedar_hash:
            continue
        if recorded == withdrawn_hash and withdrawn_from is not None and d.index > withdrawn_from:
            continue
        p.append(f"decision {d.index} was made under dataset Cedar {str(recorded)[:12]}…, not the claimed "
                 f"{claim.cedar_hash[:12]}…")


def _check_claim(claim: ResidencyClaim, statement: Statement, parsed: dict[int, Entry], carried: set[int]) -> Check:
    ents = _Entries(parsed, carried)
    p = ents.problems
    ds, owner = claim.dataset, f"member:{claim.owner}"

    body = ents.body(claim.consent_index, "consent.grant", owner, "consent")
    if body is not None:
        for key, claimed in (("dataset", ds), ("owner", claim.owner), ("policy", claim.policy),
                             ("policy_hash", claim.policy_hash), ("cedar_hash", claim.cedar_hash)):
            ents.same("consent", claim.consent_index, key, claimed, body.get(key))
    _check_cedar(claim, parsed, p)
    try:
        recomputed = hashlib.sha256(rfc8785.dumps(claim.policy)).hexdigest()
    except Exception:  # noqa: BLE001 - any value rfc8785 refuses makes the claim wrong, not the verifier
        recomputed = None
    if recomputed != claim.policy_hash:
        p.append("policyHash is not the SHA-256 of the claimed policy's canonical JSON")

    ing = claim.ingest
    body = ents.body(ing.index, "data.ingest", f"site:{ing.site}", "ingest")
    ingested: list[Any] = []
    if body is not None:
        for key, claimed in (("dataset", ds), ("owner", claim.owner), ("site", ing.site),
                             ("jurisdiction", ing.jurisdiction), ("embodiment", claim.embodiment),
                             ("policy_hash", claim.policy_hash), ("decision_index", ing.decision_index)):
            ents.same("ingest", ing.index, key, claimed, body.get(key))
        ingested = body.get("shards") if isinstance(body.get("shards"), list) else []
        recorded = [(s.get("sha256"), s.get("frames"), s.get("bytes")) for s in ingested if isinstance(s, dict)]
        claimed_shards = [(s.sha256, s.frames, s.bytes) for s in claim.shards]
        if recorded != claimed_shards:
            p.append(f"shards: the claim lists {len(claimed_shards)} shard(s) that differ from the {len(recorded)} "
                     f"recorded by ingest entry {ing.index}")
    shas = {s.sha256 for s in claim.shards}

    # Subjects: exactly one per claimed shard, named and digested as the shard.
    subjects = [(s.name, s.sha256) for s in statement.subjects]
    expected = [(shard_subject_name(ds, s.sha256), s.sha256) for s in claim.shards]
    if sorted(subjects) != sorted(expected):
        bad = sorted(set(subjects) - set(expected))[:2]
        p.append("subjects do not match the ingested shards" + (f" (e.g. {bad[0][0]} sha256 {bad[0][1][:12]}…)"
                                                                 if bad else " (a shard is missing or repeated)"))

    copies_by_index = {}
    for c in claim.copies:
        what = f"copy {c.index}"
        body = ents.body(c.index, "data.copy", f"site:{c.to_site}", what)
        copies_by_index[c.index] = c
        if body is None:
            continue
        for key, claimed in (("dataset", ds), ("from", c.from_site), ("to", c.to_site),
                             ("jurisdiction", c.jurisdiction), ("decision_index", c.decision_index),
                             ("policy_hash", c.policy_set_hash), ("shards", list(c.shards))):
            ents.same(what, c.index, key, claimed, body.get(key))
        if not set(c.shards) <= shas:
            p.append(f"{what} moves shards that were never ingested")

    # Where each shard sits: the ingest site, plus every copy that carried it.
    for s in claim.shards:
        want = {(ing.site, ing.jurisdiction, ing.index)} | {
            (c.to_site, c.jurisdiction, c.index) for c in claim.copies if s.sha256 in c.shards}
        have = [(pl.site, pl.jurisdiction, pl.index) for pl in s.placements]
        if sorted(have) != sorted(want):
            p.append(f"shard {s.sha256[:12]}…: claimed placements {sorted(have)} differ from the ingest and copies "
                     f"{sorted(want)}")

    for r in claim.releases:
        what = f"key release {r.index}"
        body = ents.body(r.index, "key.release", f"site:{r.site}", what)
        if body is not None:
            for key, claimed in (("dataset", ds), ("site", r.site), ("action", r.action), ("purpose", r.purpose),
                                 ("decision_index", r.decision_index), ("policy_hash", r.policy_set_hash)):
                ents.same(what, r.index, key, claimed, body.get(key))

    releases = {r.index: r for r in claim.releases}
    used_releases: set[int] = set()
    for e in claim.exports:
        what = f"export {e.index}"
        body = ents.body(e.index, "data.export", f"site:{e.site}", what)
        if body is not None:
            for key, claimed in (("dataset", ds), ("site", e.site), ("jurisdiction", e.jurisdiction),
                                 ("purpose", e.purpose), ("format", e.format), ("decision_index", e.decision_index)):
                ents.same(what, e.index, key, claimed, body.get(key))
        rel = releases.get(e.release_index)
        if rel is None:
            p.append(f"{what} cites key release {e.release_index}, which the claim does not list")
        elif (rel.action != "export" or rel.site != e.site or rel.purpose != e.purpose
              or rel.index >= e.index or rel.decision_index != e.decision_index):
            p.append(f"{what} cites key release {rel.index}, which is not an earlier export release at {e.site} "
                     f"for the same purpose and decision")
        if e.release_index in used_releases:
            p.append(f"{what} shares key release {e.release_index} with another export")
        used_releases.add(e.release_index)

    for d in claim.decisions:
        what = f"decision {d.index}"
        body = ents.body(d.index, "decision", None, what)
        if body is None:
            continue
        if parsed[d.index].actor not in (d.principal, "log"):
            p.append(f"{what}: entry {d.index} is signed by {parsed[d.index].actor}, expected {d.principal} "
                     "(or the log, for a deployment's decision point)")
            continue
        req = body.get("request") if isinstance(body.get("request"), dict) else {}
        for key, claimed, recorded in (
                ("dataset", ds, req.get("dataset")), ("principal", d.principal, req.get("principal")),
                ("action", d.action, req.get("action")), ("site", d.site, req.get("site")),
                ("purpose", d.purpose, req.get("purpose")),
                ("decision", "allow" if d.allowed else "deny", body.get("decision")),
                ("rules", list(d.rules), body.get("rules")),
                ("policy_hash", d.policy_set_hash, body.get("policy_hash")),
                ("site_jurisdiction", d.site_jurisdiction, body.get("site_jurisdiction"))):
            ents.same(what, d.index, key, claimed, recorded)

    decided = {d.index for d in claim.decisions}
    refs = [("ingest", ing.decision_index)] + [(f"copy {c.index}", c.decision_index) for c in claim.copies]
    refs += [(f"key release {r.index}", r.decision_index) for r in claim.releases]
    refs += [(f"export {e.index}", e.decision_index) for e in claim.exports]
    if claim.withdrawal:
        w = claim.withdrawal
        refs.append(("withdrawal", w.decision_index))
        body = ents.body(w.index, "consent.withdraw", owner, "withdrawal")
        if body is not None:
            ents.same("withdrawal", w.index, "dataset", ds, body.get("dataset"))
            ents.same("withdrawal", w.index, "decision_index", w.decision_index, body.get("decision_index"))
        for s in w.shredded:
            body = ents.body(s.index, "key.shred", f"site:{s.site}", f"key shred {s.index}")
            if body is not None:
                ents.same(f"key shred {s.index}", s.index, "dataset", ds, body.get("dataset"))
                ents.same(f"key shred {s.index}", s.index, "site", s.site, body.get("site"))
    for what, idx in refs:
        if idx not in decided:
            p.append(f"{what} cites decision {idx}, which the claim does not list")

    holders = {pl.site for s in claim.shards for pl in s.placements}
    if claim.attester_site not in holders:
        p.append(f"the attesting site {claim.attester_site!r} holds none of the shards")

    own = claim.own_indices()
    repeated = sorted({i for i in own if own.count(i) > 1}) if len(set(own)) != len(own) else []
    if repeated:
        p.append(f"ledger entries {repeated[:5]} are claimed as more than one item")
    cited = claim.cited_indices()
    # the rest of the dataset's chain is carried too (checked by "completeness"), nothing else
    subject = dataset_subject(ds)
    extra = sorted(i for i in carried - cited
                   if i not in parsed or subject not in subjects_of(parsed[i].kind, parsed[i].body))
    if extra:
        p.append(f"the bundle carries entries {extra[:5]} that the claim does not cite and that are not about "
                 f"dataset {ds!r}")
    return _result("claim matches ledger", p, f"{len(cited)} cited entries agree with the claim")


def _places(claim: ResidencyClaim) -> list[tuple[str, str | None, str]]:
    """(site, jurisdiction the claim states or None, what) for every place the claim puts data or acts."""
    out: list[tuple[str, str | None, str]] = [
        (claim.attester_site, claim.attester_jurisdiction, "attester"),
        (claim.ingest.site, claim.ingest.jurisdiction, f"ingest {claim.ingest.index}")]
    out += [(pl.site, pl.jurisdiction, f"shard {s.sha256[:12]}…") for s in claim.shards for pl in s.placements]
    for c in claim.copies:
        out += [(c.to_site, c.jurisdiction, f"copy {c.index}"), (c.from_site, None, f"copy {c.index} source")]
    out += [(r.site, None, f"key release {r.index}") for r in claim.releases]
    out += [(e.site, e.jurisdiction, f"export {e.index}") for e in claim.exports]
    out += [(d.site, d.site_jurisdiction, f"allowed {d.action} (decision {d.index})")
            for d in claim.decisions if d.allowed and d.site is not None]
    return out


def _check_jurisdictions(claim: ResidencyClaim, trust: TrustRoot) -> Check:
    allowed, allowed_sites = claim.jurisdictions, claim.allowed_sites
    if not allowed:
        return Check("jurisdictions", FAIL, "the claimed policy allows no jurisdiction")
    problems: list[str] = []
    seen: set[str] = set()

    def add(msg: str) -> None:
        if msg not in seen:
            seen.add(msg)
            problems.append(msg)

    places = _places(claim)
    for site, stated, what in places:
        ts = trust.site(site)
        if ts is None:
            add(f"site {site!r} ({what}) is not in the trust root")
            continue
        if ts.jurisdiction not in allowed:
            add(f"site {site} ({what}) is in {ts.jurisdiction} per the trust root, outside the allowed "
                f"jurisdictions {', '.join(allowed)}")
        if stated is not None and stated != ts.jurisdiction:
            add(f"site {site} ({what}): the claim says {stated}, the trust root says {ts.jurisdiction}")
        if allowed_sites and site not in allowed_sites:
            add(f"site {site} ({what}) is not among the policy's sites {', '.join(allowed_sites)}")
    sites = sorted({s for s, _, _ in places})
    return _result("jurisdictions", problems,
                   f"{len(sites)} site(s) ({', '.join(sites)}) all in {', '.join(allowed)}")


def decision_signer_problem(e: Entry, principal: str, trust: TrustRoot) -> str | None:
    """Why decision entry ``e`` does not stand for ``principal``'s decision, or None.

    The embedded default signs a decision with the principal's own key. A deployment's decision
    point is the coordinator: the log key signs the decision, and the entry carries the signed
    request it answers (``signed_request``, onshore.ledger.requests), which must be the
    principal's, signed by the principal's trust-root key, asking for exactly this decision."""
    if e.actor == principal:
        return None
    if e.actor != "log":
        return f"is signed by {e.actor}, not {principal}"
    req = e.body.get("signed_request")
    if not request_shape_ok(req):
        return "is signed by the log but carries no request signed by the principal"
    key = trust.key_for(principal)
    if req["party"] != principal or req["op"] != "decide" or key is None or not request_signature_ok(req, key):
        return f"is signed by the log, but its request is not {principal}'s signed decide request"
    asked, decided = req["body"], e.body.get("request") if isinstance(e.body.get("request"), dict) else {}
    for key_name in ("action", "dataset", "site", "purpose"):
        if asked.get(key_name) != decided.get(key_name):
            return f"decides {key_name} {decided.get(key_name)!r}, but {principal} asked for {asked.get(key_name)!r}"
    return None


def _check_decisions(claim: ResidencyClaim, parsed: dict[int, Entry], trust: TrustRoot) -> Check:
    problems: list[str] = []
    owner = f"member:{claim.owner}"
    copies_by_decision = {c.decision_index: c for c in claim.copies}
    # (what, item index, decision index, action, site, principal, policy set hash to match or None)
    needs: list[tuple[str, int, int, str, str | None, str, str | None]] = [
        ("ingest", claim.ingest.index, claim.ingest.decision_index, "ingest", claim.ingest.site, owner, None)]
    for c in claim.copies:
        needs.append((f"copy {c.index}", c.index, c.decision_index, "copy", c.to_site, f"site:{c.to_site}",
                      c.policy_set_hash))
    for r in claim.releases:
        site, principal = r.site, f"site:{r.site}"
        if r.action == "copy":
            # A copy's key is released at the source under the target's copy decision.
            c = copies_by_decision.get(r.decision_index)
            if c is None or c.from_site != r.site:
                problems.append(f"key release {r.index} for a copy at {r.site} matches no copy from {r.site}")
                continue
            site, principal = c.to_site, f"site:{c.to_site}"
        needs.append((f"key release {r.index}", r.index, r.decision_index, r.action, site, principal,
                      r.policy_set_hash))
    for e in claim.exports:
        needs.append((f"export {e.index}", e.index, e.decision_index, "export", e.site, f"site:{e.site}", None))
    withdrawn_at = None
    if claim.withdrawal:
        withdrawn_at = claim.withdrawal.index
        needs.append(("withdrawal", claim.withdrawal.index, claim.withdrawal.decision_index, "withdraw", None,
                      owner, None))

    expires = _date(claim.policy.get("expires"))
    purposes = claim.policy.get("purposes") if isinstance(claim.policy.get("purposes"), list) else []
    for what, item, idx, action, site, principal, set_hash in needs:
        e = parsed.get(idx)
        if e is None or e.kind != "decision":
            problems.append(f"{what}: decision {idx} is not a decision entry in the bundle")
            continue
        b = e.body
        req = b.get("request") if isinstance(b.get("request"), dict) else {}
        if b.get("decision") != "allow":
            problems.append(f"{what}: decision {idx} was {b.get('decision')!r}, not allow "
                            f"({', '.join(map(str, b.get('rules') or []))})")
        want = {"dataset": claim.dataset, "action": action, "site": site, "principal": principal}
        for key, value in want.items():
            if req.get(key) != value:
                problems.append(f"{what}: decision {idx} is about {key} {req.get(key)!r}, not {value!r}")
        signer_problem = decision_signer_problem(e, principal, trust)
        if signer_problem:
            problems.append(f"{what}: decision {idx} {signer_problem}")
        if idx >= item:
            problems.append(f"{what}: decision {idx} is not earlier than the action it allowed ({item})")
        if set_hash is not None and b.get("policy_hash") != set_hash:
            problems.append(f"{what}: recorded under policy set {str(set_hash)[:12]}…, but decision {idx} was made "
                            f"under {str(b.get('policy_hash'))[:12]}…")
        if action != "withdraw":
            today = _date(req.get("today"))
            if expires is None or today is None or today > expires:
                problems.append(f"{what}: decision {idx} on {req.get('today')} is after the policy's expiry "
                                f"{claim.policy.get('expires')}")
            if withdrawn_at is not None and item > withdrawn_at:
                problems.append(f"{what} comes after the withdrawal (entry {withdrawn_at})")
        purpose = req.get("purpose")
        if purpose is not None and purposes and purpose not in purposes:
            problems.append(f"{what}: purpose {purpose!r} is not among the policy's purposes")
        if action in ("train", "serve") and not purpose:
            problems.append(f"{what}: {action} without a purpose")
    # a deployment's principal signs one request per decision: one request answered twice is a replay
    nonces: dict[str, int] = {}
    for d in claim.decisions:
        e = parsed.get(d.index)
        req = e.body.get("signed_request") if e is not None and e.actor == "log" else None
        if isinstance(req, dict) and isinstance(req.get("nonce"), str):
            if req["nonce"] in nonces:
                problems.append(f"decisions {nonces[req['nonce']]} and {d.index} answer the same signed request "
                                f"(nonce {req['nonce'][:12]}…): a request is decided once")
            nonces.setdefault(req["nonce"], d.index)
    refusals = sum(1 for d in claim.decisions if not d.allowed)
    authorising = len({n[2] for n in needs})
    return _result("decisions", problems, f"{authorising} authorising decision(s) are allows for this dataset, "
                                          f"action and site; {refusals} refusal(s) listed")


def _open_head(note: str, trust: TrustRoot, subject: str, cp: ckpt.Checkpoint, what: str) -> SubjectHead:
    """The head note, checked: signed by the log, about ``subject``, for exactly ``cp``'s tree."""
    head = open_head(note, trust.log_vkey, trust.log_origin)
    if head.subject != subject:
        raise OnshoreError(f"{what} is about {head.subject}, not {subject}")
    if head.size != cp.size or head.root != cp.root_hash:
        raise OnshoreError(f"{what} is for the tree of size {head.size}, not the checkpoint's ({cp.size}) or "
                           "another root")
    return head


def _voided(chain: list[int], entries: Mapping[int, Entry]) -> set[int]:
    closed: set[int] = set()
    for i in chain:
        if entries[i].kind == ABANDONED:
            closes = entries[i].body.get("closes")
            closed.update(c for c in closes if isinstance(c, int)) if isinstance(closes, list) else None
    return closed


def _check_completeness(claim: ResidencyClaim, b: _Bundle, parsed: dict[int, Entry], cp: ckpt.Checkpoint | None,
                        trust: TrustRoot) -> tuple[Check, tuple[int, bytes] | None]:
    name = "completeness"
    if b.head_note is None:
        return Check(name, FAIL, "the bundle has no subjectHead (made before chain links), so omitted entries "
                                 "cannot be ruled out; ask for a new bundle"), None
    if cp is None:
        return Check(name, NOT_RUN, "the checkpoint does not verify"), None
    subject = dataset_subject(claim.dataset)
    try:
        head = _open_head(b.head_note, trust, subject, cp, "subjectHead")
    except OnshoreError as e:
        return Check(name, FAIL, f"subjectHead: {e}"), None
    carried = {e.index: (parsed[e.index], merkle.leaf_hash(e.leaf)) for e in b.entries if e.index in parsed}
    walk = walk_back(subject, (head.index, head.leaf_hash), carried)
    if walk.problems:
        return Check(name, FAIL, walk.problems[0]), None
    chain = set(walk.indices)
    problems = [f"entry {i} ({parsed[i].kind}) is about {subject} but not in its chain from the head (entry "
                f"{head.index})" for i in sorted(carried) if i not in chain
                and subject in subjects_of(parsed[i].kind, parsed[i].body)]
    voided = _voided(sorted(chain), parsed)
    cited = claim.cited_indices()
    for i in sorted(chain):
        kind = parsed[i].kind
        if kind in DATASET_KINDS and not (kind in VOIDABLE_KINDS and i in voided) and i not in cited:
            problems.append(f"entry {i} ({kind}) about the dataset is in the ledger but not in the claim")
    return (_result(name, problems, f"the chain of {len(chain)} entries about {subject} from its first entry to "
                                    f"the log's head (entry {head.index}) is whole and claimed"),
            (head.index, head.leaf_hash))


def _check_update(update: Mapping[str, Any] | bytes | str | None, claim: ResidencyClaim,
                  cp: ckpt.Checkpoint | None, head: tuple[int, bytes] | None, trust: TrustRoot,
                  min_witnesses: int) -> tuple[Check, str | None]:
    """The ``update`` check; also returns the update's checkpoint note for ``freshness``."""
    name = "update"
    if update is None:
        return Check(name, PASS, "no update given (--update)"), None
    try:
        u = _parse_update(update)
    except _FormatError as e:
        return Check(name, FAIL, f"update format: {e}"), None
    if cp is None or head is None:
        return Check(name, NOT_RUN, "the bundle's checkpoint or chain did not verify"), u.note
    subject = dataset_subject(claim.dataset)
    if u.subject != subject:
        return Check(name, FAIL, f"the update is about {u.subject}, the bundle about {subject}"), u.note
    if u.since_size != cp.size:
        return Check(name, FAIL, f"the update starts at tree size {u.since_size}, the bundle's checkpoint is of "
                                 f"size {cp.size}; make it with --since-size {cp.size}"), u.note
    try:
        new = ckpt.verify_checkpoint(u.note, trust.log_vkey, trust.log_origin)
    except OnshoreError as e:
        return Check(name, FAIL, f"update checkpoint: {e}"), u.note
    w_check, witnesses = _check_witnesses(u.note, trust, min_witnesses)
    if not w_check.passed:
        return Check(name, FAIL, f"update checkpoint: {w_check.message}"), u.note
    try:
        merkle.verify_consistency(cp.size, new.size, cp.root_hash, new.root_hash, list(u.consistency))
        new_head = _open_head(u.head_note, trust, subject, new, "update subjectHead")
    except OnshoreError as e:
        return Check(name, FAIL, f"the newer checkpoint (size {new.size}) does not extend the bundle's: {e}"), u.note
    problems: list[str] = []
    got: dict[int, tuple[Entry, bytes]] = {}
    for e in u.entries:
        try:
            entry = parse_leaf(e.leaf)
            key = trust.key_for(entry.actor)
            if key is None:
                raise OnshoreError(f"actor {entry.actor!r} has no key in the trust root")
            verify_entry(entry, key)
            merkle.verify_inclusion(e.index, new.size, merkle.leaf_hash(e.leaf), e.proof, new.root_hash)
        except OnshoreError as err:
            problems.append(f"update entry {e.index}: {err}")
            continue
        if not cp.size <= e.index < new.size:
            problems.append(f"update entry {e.index} is not between the two tree sizes")
        got[e.index] = (entry, merkle.leaf_hash(e.leaf))
    if problems:
        return _result(name, problems, ""), u.note
    walk = walk_back(subject, (new_head.index, new_head.leaf_hash), got, floor=cp.size)
    if walk.problems:
        return Check(name, FAIL, walk.problems[0]), u.note
    if walk.reached != head:
        return Check(name, FAIL, f"the update's chain does not join the bundle's head (entry {head[0]})"), u.note
    stray = sorted(set(got) - set(walk.indices))
    if stray:
        return Check(name, FAIL, f"update entries {stray[:5]} are not in the chain of {subject}"), u.note
    chain = sorted(walk.indices)
    withdrawn = [i for i in chain if got[i][0].kind == "consent.withdraw"]  # never voided (VOIDABLE_KINDS)
    if withdrawn:
        return Check(name, FAIL, f"dataset {claim.dataset!r} was withdrawn at ledger index {withdrawn[0]}, after the "
                                 f"bundle's checkpoint (size {cp.size}); the claim no longer holds "
                                 f"(checkpoint of size {new.size})"), u.note
    return Check(name, PASS, f"not withdrawn up to the checkpoint of size {new.size} ({len(witnesses)} witness(es)); "
                             f"{len(chain)} newer entries about the dataset"), u.note


def _date(value: Any) -> dt.date | None:
    try:
        return dt.date.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


# --- the whole verification ----------------------------------------------------------------------


def _not_run(names: tuple[str, ...], why: str) -> list[Check]:
    return [Check(n, NOT_RUN, why) for n in names]


def _guard(name: str, fn: Callable[[], T], fallback: Callable[[Check], T]) -> T:
    # A check must report, never raise: an input shape we did not foresee becomes a failure of
    # that check rather than a traceback.
    try:
        return fn()
    except Exception as e:  # noqa: BLE001
        return fallback(Check(name, FAIL, f"could not be checked: {type(e).__name__}: {e}"))


def _alone(c: Check) -> Check:
    return c


def _check_freshness(note: str, trust: TrustRoot, max_age: dt.timedelta | None, now: dt.datetime) -> Check:
    name = "freshness"
    if max_age is None:
        return Check(name, PASS, "no maximum age asked (--max-age)")
    try:
        cosigs = ckpt.verified_cosignatures(note, [w.vkey for w in trust.witnesses])
    except OnshoreError as e:
        return Check(name, FAIL, str(e))
    if not cosigs:
        return Check(name, FAIL, "no trust-root witness cosigned the checkpoint, so nothing vouches for its age")
    newest = dt.datetime.fromtimestamp(max(c.timestamp for c in cosigs), dt.UTC)
    age = now - newest
    if age > max_age:
        return Check(name, FAIL, f"the checkpoint was last witnessed at {newest.isoformat()}, {age} ago, more than "
                                 f"the maximum age {max_age}; ask for a bundle on a newer checkpoint")
    return Check(name, PASS, f"witnessed at {newest.isoformat()}, {age} ago (maximum {max_age})")


def verify_bundle(bundle: Mapping[str, Any] | bytes | str, trust: TrustRoot, min_witnesses: int = 0,
                  max_age: dt.timedelta | None = None, now: dt.datetime | None = None,
                  update: Mapping[str, Any] | bytes | str | None = None) -> VerificationReport:
    """Verify a residency bundle against ``trust`` alone, offline; see the module docstring.

    ``bundle`` is the parsed JSON object or its bytes/text. ``min_witnesses`` (K) is how many
    distinct trust-root witnesses must have cosigned the checkpoint. Never raises for a bad
    bundle: a malformed one fails "bundle format" and the other checks are "not run"; when the
    claim cannot be read, the checks that need it are "not run". ``max_age``: the newest trust-root
    witness cosignature of the checkpoint must be at most that old at ``now`` (default: the clock),
    else ``freshness`` fails; a checkpoint no trusted witness cosigned has no age and fails too.
    ``update`` (from ``onshore attest update``) brings the bundle up to a newer checkpoint: see the
    ``update`` check; ``freshness`` then judges the update's checkpoint. Raises ValueError for K < 0.
    """
    if min_witnesses < 0:
        raise ValueError("min_witnesses must not be negative")
    try:
        b = _parse_bundle(bundle)
    except Exception as e:  # noqa: BLE001 - _FormatError, or a shape (e.g. a non-JSON value in a dict) we missed
        why = str(e) if isinstance(e, _FormatError) else f"could not be read: {type(e).__name__}: {e}"
        return VerificationReport((Check("bundle format", FAIL, why),
                                   *_not_run(CHECK_NAMES[1:], "the bundle could not be read")))
    checks = [Check("bundle format", PASS, f"{len(b.entries)} ledger entries, one checkpoint, one envelope")]

    statement, error = _unverified_statement(b.envelope)
    if statement is not None and statement.predicate_type == MODEL_PREDICATE_TYPE:
        if update is not None:
            raise OnshoreError("an update ('onshore attest update') brings a dataset bundle up to date; this is a "
                               "model bundle: attest the model again on a newer checkpoint")
        return _verify_model(b, statement, trust, min_witnesses, max_age, now or dt.datetime.now(dt.UTC))
    stmt_check, claim = _guard("statement", lambda: _check_statement(statement, error), lambda c: (c, None))
    attester = claim.attester_site if claim else None
    checks.append(_guard("envelope signature", lambda: _check_envelope(b.envelope, trust, attester), _alone))
    checks.append(stmt_check)

    log_checks, cp, witnesses, entries = _log_checks(b, trust, min_witnesses)
    checks += log_checks

    head: tuple[int, bytes] | None = None
    newest_note = b.note
    if claim is None or statement is None:
        checks += _not_run(("claim matches ledger", "jurisdictions", "decisions", "completeness", "update"),
                           "the claim could not be read")
    else:
        carried = {e.index for e in b.entries}
        checks.append(_guard("claim matches ledger", lambda: _check_claim(claim, statement, entries, carried),
                             _alone))
        checks.append(_guard("jurisdictions", lambda: _check_jurisdictions(claim, trust), _alone))
        checks.append(_guard("decisions", lambda: _check_decisions(claim, entries, trust), _alone))
        c_check, head = _guard("completeness", lambda: _check_completeness(claim, b, entries, cp, trust),
                               lambda c: (c, None))
        checks.append(c_check)
        u_check, u_note = _guard("update", lambda: _check_update(update, claim, cp, head, trust, min_witnesses),
                                 lambda c: (c, None))
        checks.append(u_check)
        newest_note = u_note or b.note
    when = now or dt.datetime.now(dt.UTC)
    checks.append(_guard("freshness", lambda: _check_freshness(newest_note, trust, max_age, when), _alone))
    shown = cp or _unverified_checkpoint(b.note)
    return VerificationReport(tuple(checks), claim.dataset if claim else None, attester,
                              shown.size if shown else None, witnesses)


def _log_checks(b: _Bundle, trust: TrustRoot, min_witnesses: int) -> tuple[list[Check], Any, Any, Any]:
    """The checks every bundle shares, in report order: checkpoint signature, witness cosignatures,
    entry signatures, inclusion proofs; with the verified checkpoint (or None), the witnesses that
    cosigned and the verified entries by index."""
    cp_check, cp = _guard("checkpoint signature", lambda: _check_checkpoint(b.note, trust), lambda c: (c, None))
    w_check, witnesses = _guard("witness cosignatures", lambda: _check_witnesses(b.note, trust, min_witnesses),
                                lambda c: (c, ()))
    sig_check, entries = _guard("entry signatures", lambda: _check_entry_signatures(b, trust), lambda c: (c, {}))
    # Proofs are checked against the root as written even when its signature failed, so that the
    # report says whether the entries and the (unsigned) checkpoint at least agree.
    inclusion = _guard("inclusion proofs", lambda: _check_inclusion(b, cp or _unverified_checkpoint(b.note)), _alone)
    return [cp_check, w_check, sig_check, inclusion], cp, witnesses, entries


def _verify_model(b: _Bundle, statement: Statement, trust: TrustRoot, min_witnesses: int,
                  max_age: dt.timedelta | None, now: dt.datetime) -> VerificationReport:
    """The model branch of :func:`verify_bundle`: the shared checks, then ``attest/verify_model.py``'s."""
    checks = [Check("bundle format", PASS, f"{len(b.entries)} ledger entries, one checkpoint, one envelope")]
    claim: Any = statement.predicate
    shape = _guard("statement", lambda: VM.check_shape(claim), lambda c: c.message)
    attester = None
    if shape is None:
        attester = claim["attester"]["site"] if isinstance(claim.get("attester"), dict) else None
        if not isinstance(attester, str):
            shape, attester = "predicate.attester.site must be a string", None
    checks.append(_guard("envelope signature", lambda: _check_envelope(b.envelope, trust, attester), _alone))
    checks.append(Check("statement", FAIL, shape) if shape else Check(
        "statement", PASS, f"in-toto Statement v1 about model {claim['model']!r}, {len(statement.subjects)} "
                           "subject(s)"))
    log_checks, cp, witnesses, entries = _log_checks(b, trust, min_witnesses)
    checks += log_checks
    shown = cp or _unverified_checkpoint(b.note)
    status = None
    if shape is not None:
        checks += _not_run(("claim matches ledger", "jurisdictions", "decisions", "withdrawals"),
                           "the claim could not be read")
    else:
        carried = {e.index for e in b.entries}
        n = len(carried)
        checks.append(_guard("claim matches ledger", lambda: _result(
            "claim matches ledger", VM.check_claim(claim, statement, entries, carried),
            f"{n} cited entries agree with the claim"), _alone))
        checks.append(_guard("jurisdictions", lambda: _result(
            "jurisdictions", VM.check_jurisdictions(claim, trust),
            "every training read at its training site; every site in every lineage dataset's jurisdictions"),
            _alone))
        checks.append(_guard("decisions", lambda: _result(
            "decisions", VM.check_decisions(claim), f"{len(claim['decisions'])} cited decision(s), all allows for "
                                                    "what they authorised"), _alone))

        def withdrawals() -> Check:
            problems, message = VM.check_withdrawals(claim, shown.size if shown else None)
            return _result("withdrawals", problems, message)
        checks.append(_guard("withdrawals", withdrawals, _alone))
        status = claim.get("status") if isinstance(claim.get("status"), dict) else None
    checks.append(_guard("freshness", lambda: _check_freshness(b.note, trust, max_age, now), _alone))
    model = claim.get("model") if isinstance(claim, dict) and isinstance(claim.get("model"), str) else None
    return VerificationReport(tuple(checks), None, attester, shown.size if shown else None, witnesses, model, status)
