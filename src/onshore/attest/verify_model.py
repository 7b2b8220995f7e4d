"""Offline verification of a *model* residency bundle (``attest/model_claim.py``).

Called by :func:`onshore.attest.verify.verify_bundle` when the statement's predicate type is the
model one; the bundle format, signatures, checkpoint, witnesses, inclusion proofs and freshness are
the dataset checks, unchanged. The model checks:

``claim matches ledger``
    Subjects are the released files (plaintext and sealed digests of the ``model.release``
    entry); every level (the model, then the bases it was fine-tuned from) agrees with its
    release, job start and end entries; every dataset's consent entry, its Cedar text (recompiled
    from the policy in the bundle) and that text's hash; every key release, decision, copy,
    evaluation, withdrawal and taint agrees with the entry it cites, signed by the right actor;
    the bundle carries exactly the cited entries.
``jurisdictions``
    Every site involved is a trust-root site whose jurisdiction (per the trust root) the policies
    allow: a level's training site and reads against that level's lineage, the model's placements,
    copies and evaluations against the whole lineage; and every training read (key release)
    happened at its level's training site.
``decisions``
    Every cited decision is an allow, by the site that acts, for the resource, action and site it
    authorised, before the action, inside each relevant dataset's purposes and expiry.
``withdrawals``
    No withdrawal of a lineage dataset is cited, or, for each one cited, the taint entries are
    there and the claimed status is what the derived-model clauses imply (the message says it).
    The verifier sees only cited entries: that nothing else was withdrawn up to the checkpoint is
    the training site's signed claim (docs/threat-model.md).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

import rfc8785

from onshore.attest.model_claim import MODEL_FIELDS, model_subject_names
from onshore.attest.statement import Statement
from onshore.attest.trust import TrustRoot
from onshore.ledger.entries import Entry
from onshore.residency.modelpolicy import LineageDataset, model_status
from onshore.residency.policy import UsagePolicy, cedar_hash, dataset_cedar


def _problems_entries(parsed: dict[int, Entry], carried: set[int]) -> Any:
    from onshore.attest.verify import _Entries  # the same lookups as the dataset checks

    return _Entries(parsed, carried)


def check_shape(claim: Any) -> str | None:
    """A problem with the predicate's top-level shape, or None."""
    if not isinstance(claim, dict):
        return "predicate must be an object"
    if set(claim) != set(MODEL_FIELDS):
        missing, extra = sorted(set(MODEL_FIELDS) - set(claim)), sorted(set(claim) - set(MODEL_FIELDS))
        return f"predicate: missing {missing}, unexpected {extra}"
    if not claim["levels"] or not claim["datasets"]:
        return "predicate: a model claim names at least one level and one dataset"
    return None


def _cited(claim: dict[str, Any]) -> set[int]:
    out: set[int] = set()
    for lv in claim["levels"]:
        out |= {lv["releaseIndex"], lv["job"]["endIndex"], *lv["job"]["startIndices"]}
        out |= {i for d in lv["datasets"] for i in (d["decisionIndex"], d["releaseIndex"])}
        if lv["baseRelease"]:
            out |= {lv["baseRelease"]["index"], lv["baseRelease"]["decisionIndex"]}
    out |= {d["consentIndex"] for d in claim["datasets"]}
    out |= {p["index"] for p in claim["placements"]} | {p["decisionIndex"] for p in claim["placements"]
                                                        if p["decisionIndex"] is not None}
    out |= {d["index"] for d in claim["decisions"]} | {r["index"] for r in claim["keyReleases"]}
    out |= {r["decisionIndex"] for r in claim["keyReleases"]} | {e["index"] for e in claim["evaluations"]}
    out |= {w["index"] for w in claim["withdrawals"]} | {t for w in claim["withdrawals"] for t in w["taintIndices"]}
    return out


def check_claim(claim: dict[str, Any], statement: Statement, parsed: dict[int, Entry], carried: set[int]
                ) -> list[str]:
    """Problems found comparing the claim with the entries it cites (empty: they agree)."""
    ents = _problems_entries(parsed, carried)
    p: list[str] = ents.problems
    name, levels = claim["model"], claim["levels"]
    top = levels[0]
    if top["model"] != name:
        p.append(f"levels[0] is model {top['model']!r}, not the attested {name!r}")
    if claim["attester"]["site"] != top["site"]:
        p.append(f"the attester {claim['attester']['site']!r} is not the training site {top['site']!r}")
    want = set()
    for plain, digest in top["files"].items():
        plain_name, sealed = model_subject_names(name, plain)
        want |= {(plain_name, digest), (sealed, (top["sealed"] or {}).get(f"{plain}.sealed"))}
    if {(s.name, s.sha256) for s in statement.subjects} != want:
        p.append("subjects are not the released model's files and digests")
    lineage_names: list[str] = []
    for i, lv in enumerate(levels):
        what, site = f"level {lv['model']}", f"site:{lv['site']}"
        if i + 1 < len(levels) and lv["base"] != levels[i + 1]["model"]:
            p.append(f"{what}: base {lv['base']!r} is not the next level {levels[i + 1]['model']!r}")
        if i + 1 == len(levels) and lv["base"] is not None:
            p.append(f"{what}: base {lv['base']!r} has no level in the claim")
        body = ents.body(lv["releaseIndex"], "model.release", site, f"{what} release")
        if body is not None:
            for key, claimed in (("model", lv["model"]), ("site", lv["site"]), ("jurisdiction", lv["jurisdiction"]),
                                 ("purpose", lv["purpose"]), ("base", lv["base"]), ("files", lv["files"]),
                                 ("sealed", lv["sealed"]), ("steps", lv["job"]["steps"]),
                                 ("world_size", lv["job"]["worldSize"])):
                ents.same(what, lv["releaseIndex"], key, claimed, body.get(key))
            job = body.get("job") if isinstance(body.get("job"), dict) else {}
            ents.same(what, lv["releaseIndex"], "job.id", lv["job"]["id"], job.get("id"))
            ents.same(what, lv["releaseIndex"], "job.code_version", lv["job"]["codeVersion"], job.get("code_version"))
            recorded = [(d.get("name"), d.get("owner"), d.get("shards"), d.get("decision_index"))
                        for d in body.get("datasets") or []]
            claimed_ds = [(d["dataset"], d["owner"], d["shards"], d["decisionIndex"]) for d in lv["datasets"]]
            if recorded != claimed_ds:
                p.append(f"{what}: the datasets differ from those its release entry {lv['releaseIndex']} records")
        starts = lv["job"]["startIndices"]
        for s in starts:
            b = ents.body(s, "job.start", site, f"{what} job start")
            if b is not None:
                ents.same(f"{what} job start", s, "model", lv["model"], b.get("model"))
        if starts and (b := ents.body(starts[-1], "job.start", site, f"{what} job start")) is not None:
            for key, claimed in (("job", lv["job"]["id"]), ("config", lv["job"]["config"]),
                                 ("train", lv["job"]["train"]), ("purpose", lv["purpose"])):
                ents.same(f"{what} job start", starts[-1], key, claimed, b.get(key))
        elif not starts:
            p.append(f"{what}: no job start cited")
        b = ents.body(lv["job"]["endIndex"], "job.end", site, f"{what} job end")
        if b is not None:
            for key, claimed in (("job", lv["job"]["id"]), ("model", lv["model"]), ("files", lv["files"]),
                                 ("metrics", lv["job"]["metrics"])):
                ents.same(f"{what} job end", lv["job"]["endIndex"], key, claimed, b.get(key))
        for d in lv["datasets"]:
            if d["dataset"] not in lineage_names:
                lineage_names.append(d["dataset"])
            b = ents.body(d["releaseIndex"], "key.release", None, f"{what} read of {d['dataset']}")
            if b is not None:
                for key, claimed in (("dataset", d["dataset"]), ("action", "train"), ("purpose", lv["purpose"]),
                                     ("decision_index", d["decisionIndex"])):
                    ents.same(f"{what} read of {d['dataset']}", d["releaseIndex"], key, claimed, b.get(key))
        if lv["baseRelease"]:
            b = ents.body(lv["baseRelease"]["index"], "key.release", site, f"{what} base release")
            if b is not None:
                for key, claimed in (("model", lv["base"]), ("site", lv["site"]), ("action", "train"),
                                     ("decision_index", lv["baseRelease"]["decisionIndex"])):
                    ents.same(f"{what} base release", lv["baseRelease"]["index"], key, claimed, b.get(key))
        elif lv["base"] is not None:
            p.append(f"{what}: fine-tuned from {lv['base']!r} without a cited release of it")
    if sorted(d["dataset"] for d in claim["datasets"]) != sorted(lineage_names):
        p.append("datasets: the claim's datasets are not the lineage's")
    for d in claim["datasets"]:
        what = f"dataset {d['dataset']}"
        b = ents.body(d["consentIndex"], "consent.grant", f"member:{d['owner']}", f"{what} consent")
        if b is not None:
            for key, claimed in (("dataset", d["dataset"]), ("owner", d["owner"]), ("policy", d["policy"]),
                                 ("policy_hash", d["policyHash"]), ("cedar_hash", d["cedarHash"])):
                ents.same(f"{what} consent", d["consentIndex"], key, claimed, b.get(key))
        try:
            policy = UsagePolicy.from_json(d["policy"], f"{what} policy")
            if d["cedar"] != dataset_cedar(d["dataset"], d["owner"], policy, withdrawn=False):
                p.append(f"{what}: the Cedar text is not what its policy compiles to")
        except Exception as e:  # noqa: BLE001 - a policy that does not compile makes the claim wrong
            p.append(f"{what}: the policy does not compile to Cedar ({e})")
        if cedar_hash(d["cedar"]) != d["cedarHash"]:
            p.append(f"{what}: cedarHash is not the SHA-256 of its Cedar text")
        if hashlib.sha256(rfc8785.dumps(d["policy"])).hexdigest() != d["policyHash"]:
            p.append(f"{what}: policyHash is not the SHA-256 of its policy's canonical JSON")
    first = claim["placements"][0] if claim["placements"] else None
    if first is None or first["index"] != top["releaseIndex"] or first["site"] != top["site"]:
        p.append("placements: the first placement is not the model's release at its training site")
    for pl in claim["placements"][1:]:
        b = ents.body(pl["index"], "model.copy", f"site:{pl['site']}", f"copy {pl['index']}")
        if b is not None:
            for key, claimed in (("model", name), ("to", pl["site"]), ("jurisdiction", pl["jurisdiction"]),
                                 ("decision_index", pl["decisionIndex"])):
                ents.same(f"copy {pl['index']}", pl["index"], key, claimed, b.get(key))
    for r in claim["keyReleases"]:
        b = ents.body(r["index"], "key.release", f"site:{r['site']}", f"key release {r['index']}")
        if b is not None:
            for key, claimed in ((r["resource"], r["name"]), ("site", r["site"]), ("action", r["action"]),
                                 ("purpose", r["purpose"]), ("decision_index", r["decisionIndex"])):
                ents.same(f"key release {r['index']}", r["index"], key, claimed, b.get(key))
    for d in claim["decisions"]:
        b = ents.body(d["index"], "decision", d["principal"], f"decision {d['index']}")
        if b is not None:
            req = b.get("request") if isinstance(b.get("request"), dict) else {}
            for key, claimed, recorded in (
                    ("resource", d["name"], req.get(d["resource"])), ("action", d["action"], req.get("action")),
                    ("site", d["site"], req.get("site")), ("purpose", d["purpose"], req.get("purpose")),
                    ("today", d["today"], req.get("today")), ("decision", d["decision"], b.get("decision")),
                    ("rules", d["rules"], b.get("rules")), ("policy_hash", d["policySetHash"], b.get("policy_hash")),
                    ("site_jurisdiction", d["siteJurisdiction"], b.get("site_jurisdiction"))):
                ents.same(f"decision {d['index']}", d["index"], key, claimed, recorded)
    for e in claim["evaluations"]:
        b = ents.body(e["index"], "model.eval", f"site:{e['site']}", f"evaluation {e['index']}")
        if b is not None:
            for key, claimed in (("model", name), ("env", e["env"]), ("seed", e["seed"]), ("tasks", e["tasks"])):
                ents.same(f"evaluation {e['index']}", e["index"], key, claimed, b.get(key))
    owners = {d["dataset"]: d["owner"] for d in claim["datasets"]}
    for w in claim["withdrawals"]:
        b = ents.body(w["index"], "consent.withdraw", f"member:{owners.get(w['dataset'])}", f"withdrawal {w['index']}")
        if b is not None:
            ents.same(f"withdrawal {w['index']}", w["index"], "dataset", w["dataset"], b.get("dataset"))
        for t in w["taintIndices"]:
            b = ents.body(t, "model.taint", None, f"taint {t}")
            if b is not None:
                for key, claimed in (("model", name), ("dataset", w["dataset"]), ("clause", w["clause"])):
                    ents.same(f"taint {t}", t, key, claimed, b.get(key))
    extra = sorted(carried - _cited(claim))
    if extra:
        p.append(f"the bundle carries entries {extra[:5]} that the claim does not cite")
    return p


def _policies(claim: dict[str, Any]) -> dict[str, UsagePolicy]:
    return {d["dataset"]: UsagePolicy.from_json(d["policy"], f"dataset {d['dataset']} policy")
            for d in claim["datasets"]}


def _level_lineages(claim: dict[str, Any]) -> list[list[str]]:
    """For each level, the datasets of its own lineage (its datasets and its bases')."""
    out: list[list[str]] = []
    acc: list[str] = []
    for lv in reversed(claim["levels"]):
        acc = acc + [d["dataset"] for d in lv["datasets"] if d["dataset"] not in acc]
        out.insert(0, list(acc))
    return out


def check_jurisdictions(claim: dict[str, Any], trust: TrustRoot) -> list[str]:
    """Problems with where things happened (see the module docstring)."""
    policies = _policies(claim)
    problems: list[str] = []

    def place(site: str, stated: str | None, what: str, datasets: list[str]) -> None:
        ts = trust.site(site)
        if ts is None:
            problems.append(f"site {site!r} ({what}) is not in the trust root")
            return
        if stated is not None and stated != ts.jurisdiction:
            problems.append(f"site {site} ({what}): the claim says {stated}, the trust root says {ts.jurisdiction}")
        for d in datasets:
            pol = policies[d]
            if ts.jurisdiction not in pol.jurisdictions:
                problems.append(f"site {site} ({what}) is in {ts.jurisdiction}, outside dataset {d}'s "
                                f"jurisdictions {', '.join(pol.jurisdictions)}")
            if pol.sites and site not in pol.sites:
                problems.append(f"site {site} ({what}) is not among dataset {d}'s sites {', '.join(pol.sites)}")

    everything = list(policies)
    place(claim["attester"]["site"], claim["attester"]["jurisdiction"], "attester", everything)
    releases = {r["index"]: r for r in claim["keyReleases"]}
    for lv, lineage in zip(claim["levels"], _level_lineages(claim), strict=True):
        place(lv["site"], lv["jurisdiction"], f"training of {lv['model']}", lineage)
        for d in lv["datasets"]:
            r = releases.get(d["releaseIndex"])
            if r is None or r["site"] != lv["site"]:
                problems.append(f"the training read of {d['dataset']} for {lv['model']} (entry {d['releaseIndex']}) "
                                f"is not a key release at the training site {lv['site']}")
    for pl in claim["placements"]:
        place(pl["site"], pl["jurisdiction"], f"model held (entry {pl['index']})", everything)
    for e in claim["evaluations"]:
        place(e["site"], None, f"evaluation {e['index']}", everything)
    return problems


def check_decisions(claim: dict[str, Any]) -> list[str]:
    """Problems with the cited decisions: each an allow, for what it authorised, in time and purpose."""
    policies = _policies(claim)
    problems: list[str] = []
    decisions = {d["index"]: d for d in claim["decisions"]}
    lineages = _level_lineages(claim)
    everything = list(policies)
    # (what, decision index, action index, resource, name, action, site, datasets whose rules apply)
    needs: list[tuple[str, int, int, str, str, str, str, list[str]]] = []
    for i, lv in enumerate(claim["levels"]):
        for d in lv["datasets"]:
            needs.append((f"training read of {d['dataset']} for {lv['model']}", d["decisionIndex"], d["releaseIndex"],
                          "dataset", d["dataset"], "train", lv["site"], [d["dataset"]]))
        if lv["baseRelease"] and i + 1 < len(lineages):
            # the base model is decided by its own Cedar: the clauses of the base's lineage
            needs.append((f"base {lv['base']} for {lv['model']}", lv["baseRelease"]["decisionIndex"],
                          lv["baseRelease"]["index"], "model", lv["base"], "train", lv["site"], lineages[i + 1]))
    for pl in claim["placements"][1:]:
        needs.append((f"copy to {pl['site']}", pl["decisionIndex"], pl["index"], "model", claim["model"], "copy",
                      pl["site"], everything))
    for what, idx, item, resource, name, action, site, datasets in needs:
        d = decisions.get(idx)
        if d is None:
            problems.append(f"{what}: decision {idx} is not among the claim's decisions")
            continue
        if d["decision"] != "allow":
            problems.append(f"{what}: decision {idx} was {d['decision']!r} ({', '.join(d['rules'])})")
        for key, want in (("resource", resource), ("name", name), ("action", action), ("site", site),
                          ("principal", f"site:{site}")):
            if d[key] != want:
                problems.append(f"{what}: decision {idx} is about {key} {d[key]!r}, not {want!r}")
        if idx >= item:
            problems.append(f"{what}: decision {idx} is not earlier than the action it allowed ({item})")
        try:
            today = dt.date.fromisoformat(d["today"])
        except (TypeError, ValueError):
            problems.append(f"{what}: decision {idx} has no date")
            continue
        for ds in datasets:
            pol = policies[ds]
            if today > pol.expires:
                problems.append(f"{what}: decision {idx} on {today} is after dataset {ds}'s expiry {pol.expires}")
            if d["purpose"] is not None and d["purpose"] not in pol.purposes:
                problems.append(f"{what}: purpose {d['purpose']!r} is not among dataset {ds}'s purposes")
        if action == "train" and not d["purpose"]:
            problems.append(f"{what}: train without a purpose")
    refused = [d["index"] for d in claim["decisions"] if d["decision"] != "allow"]
    if refused:
        problems.append(f"the claim cites refusals {refused[:5]} as its authority")
    return problems


def check_withdrawals(claim: dict[str, Any], checkpoint_size: int | None) -> tuple[list[str], str]:
    """Problems with the withdrawals, and the message saying what they imply (or that none is cited)."""
    policies = _policies(claim)
    owners = {d["dataset"]: d["owner"] for d in claim["datasets"]}
    withdrawn = {w["dataset"]: w["index"] for w in claim["withdrawals"]}
    problems = [f"withdrawal of {w['dataset']!r}, which is not in the lineage"
                for w in claim["withdrawals"] if w["dataset"] not in policies]
    release = claim["levels"][0]["releaseIndex"]
    for w in claim["withdrawals"]:
        if w["dataset"] in policies and w["clause"] != policies[w["dataset"]].derived_models:
            problems.append(f"withdrawal of {w['dataset']}: clause {w['clause']!r} is not its policy's")
        if w["index"] > release and not w["taintIndices"]:
            problems.append(f"withdrawal {w['index']} of {w['dataset']} after the release has no taint entry")
    lineage = [LineageDataset(d, owners[d], pol, withdrawn.get(d)) for d, pol in policies.items()]
    try:
        when = dt.date.fromisoformat(str(claim["attestedAt"])[:10])
    except ValueError:
        return problems + ["attestedAt is not a date"], ""
    status = model_status(lineage, when)
    if status.to_json() != claim["status"]:
        problems.append(f"the claimed status {claim['status'].get('label')!r} is not what the clauses imply "
                        f"({status.label()!r})")
    upto = f"up to checkpoint size {checkpoint_size}" if checkpoint_size is not None else "in the bundle"
    if not withdrawn:
        message = (f"no withdrawal of its {len(policies)} lineage dataset(s) is cited {upto} (the training site's "
                   f"signed claim); status {status.label()}")
    else:
        message = f"status {status.label()} on {when}: " + "; ".join(status.reasons)
    return problems, message
