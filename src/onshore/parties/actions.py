"""What a party does from its own machine, with its kit: a member registers a dataset (consent
signed here), streams its Parquet files to a site node and withdraws; a site asks for a copy or
reads at itself. The party's signing key never leaves its kit: a site receives frames, a signed
request and the coordinator's decision."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.flight as fl
import pyarrow.parquet as pq

from onshore.errors import IntegrityError, NotFoundError, OnshoreError, PolicyDenied, ValidationError
from onshore.i18n import N_, Message
from onshore.names import check_name
from onshore.parties.client import CoordinatorClient
from onshore.parties.kit import Kit, trust_root
from onshore.parties.signed import sign_request
from onshore.parties.site import DENIED, flight_client, push
from onshore.residency.policy import load_policy

BATCH_ROWS = 65536


def _batches(files: Sequence[Path], schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    for f in files:
        pf = pq.ParquetFile(f)
        if not pf.schema_arrow.equals(schema):
            raise ValidationError(f"{f}: its columns differ from {files[0]}'s; every file of a dataset "
                                  "has the same schema")
        yield from pf.iter_batches(batch_size=BATCH_ROWS)


def _site_call(kit: Kit, site: str) -> fl.FlightClient:
    info = kit.sites.get(site)
    if info is None:
        raise NotFoundError(Message(N_("unknown site {site!r}; the consortium's sites are {sites}"),
                                    {"site": site, "sites": ", ".join(kit.sites)}))
    return flight_client(kit, info.flight)


def flight_error(e: Exception, site: str) -> OnshoreError:
    """A Flight failure as an OnshoreError naming the site and what it said (a PolicyDenied when
    the node relayed a policy decision's refusal)."""
    text = str(e).split("Detail:")[0].strip()
    if DENIED in text:
        try:
            tail = text.split(DENIED, 1)[1]
            d = json.loads(tail[:tail.rfind("}") + 1])  # gRPC may append to the message
            return PolicyDenied(d["message"], list(d["rules"]))
        except (ValueError, KeyError, TypeError):
            pass
    if isinstance(e, fl.FlightUnavailableError):
        return OnshoreError(f"site {site} could not be reached ({text}); is 'onshore site serve' running there?")
    return OnshoreError(f"site {site}: {text}")


def ingest(kit: Kit, dataset: str, files: Sequence[Path], site: str, policy_file: Path | None = None,
           purpose: str | None = None, embodiment: str | None = None) -> dict[str, Any]:
    """Register ``dataset`` (with ``policy_file``, signed here) unless already registered, then
    stream ``files`` to ``site``, naming their ``embodiment`` (recorded by the site as given; the
    deployment keeps no embodiment registry yet). Refuses a policy the coordinator denies
    (PolicyDenied, exit 3) and anything a site refuses, naming the reason; nothing is stored then."""
    files = [Path(f) for f in files]
    if not files:
        raise ValidationError("give at least one Parquet file to ingest")
    for f in files:
        if not f.is_file():
            raise NotFoundError(Message(N_("{path}: no such file"), {"path": f}))
    try:
        schema = pq.ParquetFile(files[0]).schema_arrow
    except (OSError, pa.ArrowInvalid) as e:
        raise ValidationError(f"{files[0]}: not a Parquet file ({e})") from None
    coord = CoordinatorClient(kit)
    if embodiment is not None:
        check_name(embodiment, "embodiment")
    if policy_file is not None:
        policy, _ = load_policy(policy_file)
        coord.consent(dataset, policy)
    extra = {"embodiment": embodiment} if embodiment else {}
    request, decision = coord.decide("ingest", dataset, site, purpose, **extra)
    try:
        return push(_site_call(kit, site), {"request": request, "decision": decision}, _batches(files, schema), schema)
    except fl.FlightError as e:
        raise flight_error(e, site) from None


def withdraw(kit: Kit, dataset: str, sites: Sequence[str]) -> dict[str, Any]:
    """Shred ``dataset`` at each of ``sites`` (each asked with its own decision), then record the
    withdrawal at the coordinator, after which every decision about the dataset denies."""
    coord = CoordinatorClient(kit)
    shredded = []
    for site in sites:
        request, decision = coord.decide("withdraw", dataset, site)
        try:
            res = list(_site_call(kit, site).do_action(
                fl.Action("shred", json.dumps({"request": request, "decision": decision}).encode())))
        except fl.FlightError as e:
            raise flight_error(e, site) from None
        shredded.append(json.loads(res[0].body.to_pybytes()))
    index = coord.withdraw(dataset)
    return {"dataset": dataset, "shredded": shredded, "entry": index}


def copy(kit: Kit, dataset: str, source: str) -> dict[str, Any]:
    """As the destination site (``kit``): have this site's node pull ``dataset`` from ``source``.
    The node asks for the copy decision itself (with a fresh X25519 key in its signed request),
    and the source pushes the shards' encrypted bytes and the dataset key sealed to that key."""
    pull = sign_request(kit.party, "pull", {"dataset": dataset, "source": source}, kit.keystore().identity())
    try:
        res = list(_site_call(kit, kit.name).do_action(fl.Action("pull", json.dumps(pull).encode())))
    except fl.FlightError as e:
        raise flight_error(e, f"{kit.name} (pulling from {source})") from None
    return json.loads(res[0].body.to_pybytes())


def attest(kit: Kit, dataset: str) -> dict[str, Any]:
    """As a site (``kit``) holding ``dataset``: the residency bundle of ``dataset``, exactly as the
    embedded default makes it (attest/bundle.py) and ``onshore verify`` checks it offline: the
    claim is built from the chain the coordinator sends (checked here: signatures, inclusion,
    links), signed with this site's key, handed to the coordinator for auditors, and recorded
    with a data.attest entry. Refuses a dataset whose shards this site's node does not hold."""
    from onshore.attest.bundle import (
        BUNDLE_MEDIA_TYPE,
        PREDICATE_TYPE,
        build_claim,
        history_from_entries,
        shard_subject_name,
    )
    from onshore.attest.statement import Subject, build_statement, sign_statement
    from onshore.encoding import b64decode_canonical
    from onshore.ledger.entries import parse_leaf
    from onshore.ledger.log import StoredEntry

    coord = CoordinatorClient(kit)
    ev = coord.evidence(dataset)
    leaves = [(e["index"], b64decode_canonical(e["leaf"], f"entry {e['index']}")) for e in ev["entries"]]
    chain = [StoredEntry(i, parse_leaf(leaf), leaf) for i, leaf in leaves]
    claim = build_claim(history_from_entries(dataset, chain), kit.name, kit.sites[kit.name].jurisdiction)
    held = set(health(kit, kit.name).get("shards", {}).get(dataset, []))
    here = {s.sha256 for s in claim.shards for p in s.placements if p.site == kit.name}
    shredded_here = claim.withdrawal is not None and kit.name in {s.site for s in claim.withdrawal.shredded}
    # a site attests what it holds, or, after the withdrawal, that it held and shredded it
    if not here or here != (here if shredded_here and not held else held):
        raise ValidationError(f"site {kit.name} holds {len(held)} shard(s) of {dataset} and the ledger places "
                              f"{len(here)} here; a site attests only what it holds or held and shredded "
                              "(see 'onshore doctor --kit')")
    statement = build_statement([Subject(shard_subject_name(dataset, s.sha256), s.sha256) for s in claim.shards],
                                PREDICATE_TYPE, claim.to_json())
    bundle = {"mediaType": BUNDLE_MEDIA_TYPE,
              "dsseEnvelope": sign_statement(statement, kit.keystore().identity(), kit.party),
              "checkpoint": ev["checkpoint"], "subjectHead": ev["subjectHead"], "entries": ev["entries"]}
    from onshore.attest.verify import verify_bundle

    report = verify_bundle(bundle, trust_root(kit))
    if not report.ok:  # never hand out a claim the coordinator's evidence does not support
        raise IntegrityError(f"the bundle for {dataset} does not verify: " + "; ".join(
            f"{c.name}: {c.message}" for c in report.checks if c.status == "fail"))
    coord.append("data.attest", {"dataset": dataset, "site": kit.name, "predicate_type": PREDICATE_TYPE,
                                 "statement_sha256": hashlib.sha256(statement.to_bytes()).hexdigest(),
                                 "entries": len(bundle["entries"])})
    coord.store_bundle(dataset, bundle)
    return bundle


def health(kit: Kit, site: str) -> dict[str, Any]:
    """What ``site``'s node says about itself (liveness, datasets and shards held)."""
    try:
        res = list(_site_call(kit, site).do_action(fl.Action("health", b"")))
    except fl.FlightError as e:
        raise flight_error(e, site) from None
    return json.loads(res[0].body.to_pybytes())


def read(kit: Kit, dataset: str, out: Path) -> int:
    """As a site (``kit``): read ``dataset`` at this very site into ``out`` (Parquet); returns frames."""
    coord = CoordinatorClient(kit)
    request, decision = coord.decide("read", dataset, kit.name)
    try:
        reader = _site_call(kit, kit.name).do_get(fl.Ticket(json.dumps({"request": request, "decision": decision})))
        frames = 0
        with pq.ParquetWriter(out, reader.schema) as w:
            for chunk in reader:
                w.write_batch(chunk.data)
                frames += chunk.data.num_rows
        return frames
    except fl.FlightError as e:
        raise flight_error(e, kit.name) from None
