"""What a party does from its own machine, with its kit: a member registers a dataset (consent
signed here), streams its Parquet files to a site node and withdraws; a site asks for a copy or
reads at itself. The party's signing key never leaves its kit: a site receives frames, a signed
request and the coordinator's decision."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.flight as fl
import pyarrow.parquet as pq

from onshore.errors import NotFoundError, OnshoreError, ValidationError
from onshore.parties.client import CoordinatorClient
from onshore.parties.kit import Kit
from onshore.parties.site import flight_client, push
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
        raise NotFoundError(f"unknown site {site!r}; the consortium's sites are {', '.join(kit.sites)}")
    return flight_client(kit, info.flight)


def flight_error(e: Exception, site: str) -> OnshoreError:
    """A Flight failure as an OnshoreError naming the site and what it said."""
    text = str(e).split("Detail:")[0].strip()
    if isinstance(e, fl.FlightUnavailableError):
        return OnshoreError(f"site {site} could not be reached ({text}); is 'onshore site serve' running there?")
    return OnshoreError(f"site {site}: {text}")


def ingest(kit: Kit, dataset: str, files: Sequence[Path], site: str, policy_file: Path | None = None,
           purpose: str | None = None) -> dict[str, Any]:
    """Register ``dataset`` (with ``policy_file``, signed here) unless already registered, then
    stream ``files`` to ``site``. Refuses a policy the coordinator denies (PolicyDenied, exit 3)
    and anything a site refuses, naming the reason; nothing is stored then."""
    files = [Path(f) for f in files]
    if not files:
        raise ValidationError("give at least one Parquet file to ingest")
    for f in files:
        if not f.is_file():
            raise NotFoundError(f"{f}: no such file")
    try:
        schema = pq.ParquetFile(files[0]).schema_arrow
    except (OSError, pa.ArrowInvalid) as e:
        raise ValidationError(f"{files[0]}: not a Parquet file ({e})") from None
    coord = CoordinatorClient(kit)
    if policy_file is not None:
        policy, _ = load_policy(policy_file)
        coord.consent(dataset, policy.to_json())
    request, decision = coord.decide("ingest", dataset, site, purpose)
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
    """As the destination site (``kit``): ask for a copy decision for this site and have ``source``
    push the dataset here (re-encrypted under this site's key on arrival)."""
    coord = CoordinatorClient(kit)
    request, decision = coord.decide("copy", dataset, kit.name)
    try:
        res = list(_site_call(kit, source).do_action(
            fl.Action("copy", json.dumps({"request": request, "decision": decision}).encode())))
    except fl.FlightError as e:
        raise flight_error(e, source) from None
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
