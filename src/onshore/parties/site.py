"""A site node: one data centre's own process, alone holding its identity key, its key custody
and its shards, serving an Arrow Flight data plane over mutual TLS.

Every call carries ``{"request", "decision"}``: a request signed by the acting party (op
``decide``, body ``action``, ``dataset``, ``site``) and the coordinator's decision on it. The node
acts only when the decision is signed by the coordinator, allows, and is bound to this site, the
action, the dataset, the requesting party and the request's nonce, which this node has never seen
(its own nonce book: a replay is refused). It then checks the dataset's policy itself, from the
consent its owner signed: a site whose jurisdiction (or name) the policy does not allow refuses,
whatever the decision says.

- ``DoPut`` (ingest by the owner, or a copy arriving from another site): record batches streamed
  into encrypted shards under a fresh data key in this site's custody, never the whole dataset in
  memory. The sender ends the stream with ``{"sha256", "frames"}`` as app metadata: SHA-256 over
  the Arrow IPC bytes of every batch in order. A mismatch, a broken stream or a crash leaves
  nothing: shards wait in a staging folder and are published, and the catalog row committed, only
  after the digest matched and the site's signed entry is in the coordinator's ledger.
- ``DoAction("copy")``: the destination site's request and decision, handed to the source site,
  which re-reads its shards and pushes them to the destination's ``DoPut`` (re-encrypted there
  under the destination's own key; plaintext crosses only the mutual TLS channel between sites).
- ``DoGet``: decrypted frames for this site's own read (principal ``site:THIS``).
- ``DoAction("shred")``: the owner's withdrawal: the data key is destroyed (crypto-shredding),
  the shards deleted, a ``key.shred`` entry signed.
- ``DoAction("health")``: liveness and what is stored.

With ``onshore site serve --metrics-port N`` the node also answers Prometheus scrapes over HTTPS
on its Flight host, behind the same mutual TLS (a consortium certificate): calls by method and
outcome with their latency, frames and bytes ingested, copies sent and received, what it holds
(``SiteMetrics``; docs/monitoring.md).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.flight as fl
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Column, Integer, MetaData, String, Table, Text, delete, func, insert, select

from onshore.catalog.db import open_engine
from onshore.errors import OnshoreError, PolicyDenied
from onshore.faults import crash_point
from onshore.files import sha256_file
from onshore.keys.envelope import open_sealed, seal_key
from onshore.ledger.entries import parse_leaf
from onshore.names import check_name
from onshore.parties.client import CoordinatorClient
from onshore.parties.kit import Kit
from onshore.parties.signed import NonceBook, RequestRefused, check_decision, check_signed
from onshore.residency.policy import UsagePolicy
from onshore.serve.metrics import SiteMetrics
from onshore.store.shards import (
    ShardInfo,
    ShardWriter,
    check_shard,
    iter_shard_batches,
    publish,
    shard_path,
    staging_dir,
)
from onshore.workspace.attempts import ABANDONED  # the embedded default's entry kind, so verifiers agree

site_metadata = MetaData()
site_datasets = Table("site_datasets", site_metadata, Column("name", String(64), primary_key=True),
                      Column("owner", String(64), nullable=False), Column("consent", Text, nullable=False))
site_shards = Table("site_shards", site_metadata, Column("dataset", String(64), nullable=False),
                    Column("sha256", String(64), primary_key=True), Column("path", Text, nullable=False),
                    Column("salt", String(64), nullable=False), Column("frames", Integer, nullable=False),
                    Column("bytes", Integer, nullable=False))

SHARD_FRAMES = 1 << 20
CHUNK_BYTES = 1 << 20
DENIED = "denied by policy: "  # a Flight error carrying a PolicyDenied as JSON
UNREGISTERED = "unregistered"  # the embodiment of an ingest whose member named none
#: a copy's stream: each shard's encrypted bytes, in order, a chunk per row
CIPHERTEXT_SCHEMA = pa.schema([("shard", pa.string()), ("salt", pa.string()), ("frames", pa.int64()),
                               ("chunk", pa.binary())])


def copy_context(dataset: str, destination: str) -> bytes:
    """What a sealed dataset key is bound to: a seal for another dataset or site does not open."""
    return f"onshore-copy|{dataset}|{destination}".encode()


def _ciphertext_batches(root: Path, shards: list[Any]) -> Iterator[pa.RecordBatch]:
    for s in shards:
        with open(root / s.path, "rb") as f:
            while chunk := f.read(CHUNK_BYTES):
                yield pa.RecordBatch.from_pydict({"shard": [s.sha256], "salt": [s.salt], "frames": [s.frames],
                                                  "chunk": [chunk]}, schema=CIPHERTEXT_SCHEMA)


def _read_stream(reader: Any, sink: Any, dataset: str) -> tuple[int, str]:
    """Feed every batch of a DoPut stream to ``sink``; returns (rows, digest) once the sender's
    closing ``{"sha256", "frames"}`` matched what arrived, else refuses (nothing is published)."""
    h, rows, final = hashlib.sha256(), 0, None
    while True:
        try:
            chunk = reader.read_chunk()
        except StopIteration:
            break
        if chunk.data is not None and chunk.data.num_rows:
            batch_digest_update(h, chunk.data)
            rows += chunk.data.num_rows
            sink(chunk.data)
        if chunk.app_metadata is not None:
            final = json.loads(chunk.app_metadata.to_pybytes())
    if not isinstance(final, dict) or final.get("sha256") != h.hexdigest() or final.get("frames") != rows:
        raise RequestRefused(f"the stream of {dataset} does not match its digest (sent {final}, received sha256 "
                             f"{h.hexdigest()} over {rows} rows): nothing was stored")
    return rows, h.hexdigest()


def batch_digest_update(h: Any, batch: pa.RecordBatch) -> None:
    """Feed one batch into the stream digest: its Arrow IPC message bytes."""
    h.update(batch.serialize())


def flight_client(kit: Kit, location: str) -> fl.FlightClient:
    """A Flight client presenting ``kit``'s consortium certificate and trusting only the consortium CA."""
    return fl.FlightClient(location, tls_root_certs=kit.ca.read_bytes(), cert_chain=kit.cert.read_bytes(),
                           private_key=kit.key.read_bytes())


def push(client: fl.FlightClient, command: dict[str, Any], batches: Iterator[pa.RecordBatch],
         schema: pa.Schema) -> dict[str, Any]:
    """Stream ``batches`` to a site's DoPut under ``command``, ending with the digest; returns the
    site's answer (what it stored)."""
    writer, reader = client.do_put(fl.FlightDescriptor.for_command(json.dumps(command)), schema)
    h, frames = hashlib.sha256(), 0
    for b in batches:
        batch_digest_update(h, b)
        frames += b.num_rows
        writer.write_batch(b)
    writer.write_metadata(pa.py_buffer(json.dumps({"sha256": h.hexdigest(), "frames": frames}).encode()))
    writer.done_writing()
    answer = reader.read()
    writer.close()
    return json.loads(answer.to_pybytes()) if answer is not None else {}


#: the Flight actions a node answers (a call's metrics label; any other is counted as unknown)
ACTIONS = ("health", "pull", "copy", "shred")


class HeldCollector(Collector):
    """What a site holds, read from its database at scrape time."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        with self.engine.connect() as c:
            datasets = c.execute(select(func.count()).select_from(site_datasets)).scalar_one()
            frames, size = c.execute(select(func.coalesce(func.sum(site_shards.c.frames), 0),
                                            func.coalesce(func.sum(site_shards.c.bytes), 0))).one()
        yield GaugeMetricFamily("onshore_site_datasets", "Datasets stored here.", value=int(datasets))
        yield GaugeMetricFamily("onshore_site_stored_frames", "Frames stored here.", value=int(frames))
        yield GaugeMetricFamily("onshore_site_stored_bytes", "Bytes of encrypted shards stored here.", value=int(size))


class SiteNode(fl.FlightServerBase):
    """The Flight server of one site (see the module docstring for what each call does)."""

    def __init__(self, kit: Kit, location: str | None = None, wait_s: float = 30.0) -> None:
        self.kit = kit
        self.info = kit.sites[kit.name]
        self.root = kit.folder / "data"
        self.root.mkdir(exist_ok=True, mode=0o700)
        shutil.rmtree(staging_dir(self.root), ignore_errors=True)  # what a crash left is never published
        state = kit.folder / "state"
        state.mkdir(exist_ok=True, mode=0o700)
        self.engine = open_engine(f"sqlite:///{state / 'site.db'}", site_metadata, create=True)
        self.nonces = NonceBook(self.engine)
        self.keys = kit.keystore()
        self.coordinator = CoordinatorClient(kit, wait_s=wait_s, quiet=True)
        self._pulls: dict[str, Any] = {}  # request nonce -> X25519 private key of a copy under way
        self._storing: set[str] = set()  # datasets whose DoPut is under way (reconcile leaves them)
        self._lock = threading.Lock()
        self.metrics = SiteMetrics((HeldCollector(self.engine),))
        super().__init__(location or self.info.flight.replace("grpc+tls://", "grpc+tls://"),
                         tls_certificates=[fl.CertKeyPair(kit.cert.read_bytes(), kit.key.read_bytes())],
                         verify_client=True, root_certificates=kit.ca.read_bytes())

    # --- the rules
    def authorize(self, cmd: Any, action: str, principal_kind: str) -> tuple[dict[str, Any], UsagePolicy, str]:
        """Check a call's request and decision (module docstring); returns (request, policy, owner).
        Records the nonce last, so a refused call does not use it up."""
        if not isinstance(cmd, dict):
            raise RequestRefused("a call carries {request, decision}")
        req = check_signed(cmd.get("request"), self.kit.public_key, "decide")
        b = req["body"]
        if b.get("site") != self.kit.name or b.get("action") != action:
            raise RequestRefused(f"the request is for {b.get('action')} at {b.get('site')}, "
                                 f"not {action} at {self.kit.name}")
        if not req["party"].startswith(principal_kind + ":"):
            raise RequestRefused(f"{action} at a site is asked by a {principal_kind}, not {req['party']}")
        dataset = check_name(b.get("dataset"), "dataset")  # type: ignore[arg-type]  # it names files here
        if principal_kind == "site" and req["party"] != f"site:{self.kit.name}":
            raise RequestRefused(f"{action} at {self.kit.name} is this site's own, not {req['party']}'s")
        d = check_decision(cmd.get("decision"), self.kit.public_key("coordinator"), site=self.kit.name,  # type: ignore[arg-type]
                           action=action, dataset=dataset, principal=req["party"], nonce=req["nonce"])
        consent = check_signed(d.get("consent"), self.kit.public_key, "consent.grant", fresh=False)
        if consent["body"].get("dataset") != dataset or not consent["party"].startswith("member:"):
            raise RequestRefused("the decision's consent is not the owner's consent for this dataset")
        policy = UsagePolicy.from_json(consent["body"].get("policy"), f"consent for {dataset}")
        self.check_residency(dataset, policy)
        owner = consent["party"].split(":", 1)[1]
        if action in ("ingest", "withdraw") and req["party"] != f"member:{owner}":
            raise RequestRefused(f"only the owner member:{owner} may {action} {dataset}, not {req['party']}")
        self.nonces.use(req)
        return req, policy, owner

    def check_residency(self, dataset: str, policy: UsagePolicy) -> None:
        """This site's own invariant: it holds a dataset only where the owner's policy allows it."""
        me = self.info
        if me.jurisdiction not in policy.jurisdictions or (policy.sites and me.name not in policy.sites):
            raise RequestRefused(f"site {me.name} ({me.jurisdiction}) refuses {dataset}: its owner's policy allows "
                                 f"only {', '.join(policy.sites or policy.jurisdictions)} (checked by the site "
                                 "itself, whatever the decision says)")
        if self.kit.jurisdiction and me.jurisdiction != self.kit.jurisdiction:
            raise RequestRefused(f"site {me.name} is outside the consortium's jurisdiction {self.kit.jurisdiction}")
        if policy.expires < dt.datetime.now(dt.UTC).date():
            raise RequestRefused(f"the policy of {dataset} expired on {policy.expires}")

    def _row(self, dataset: str) -> Any:
        with self.engine.connect() as c:
            return c.execute(select(site_datasets).where(site_datasets.c.name == dataset)).first()

    # --- Flight
    @contextmanager
    def _timed(self, call: str) -> Iterator[None]:
        """Observe one call's latency under ``call`` and its outcome (ok, refused, denied, error)."""
        started, outcome = time.perf_counter(), "error"
        try:
            yield
            outcome = "ok"
        except fl.FlightServerError as e:
            outcome = "denied" if DENIED in str(e) else "refused"
            raise
        finally:
            self.metrics.call_seconds.labels(call, outcome).observe(time.perf_counter() - started)

    def do_put(self, context: Any, descriptor: fl.FlightDescriptor, reader: Any, writer: Any) -> None:
        with self._timed("DoPut"):
            self._do_put(descriptor, reader, writer)

    def _do_put(self, descriptor: fl.FlightDescriptor, reader: Any, writer: Any) -> None:
        try:
            cmd = json.loads(descriptor.command)
            action = cmd.get("request", {}).get("body", {}).get("action") if isinstance(cmd, dict) else None
            if action not in ("ingest", "copy"):
                raise RequestRefused("DoPut takes an ingest or a copy")
            req, policy, owner = self.authorize(cmd, action, "member" if action == "ingest" else "site")
            dataset = req["body"]["dataset"]
            if self._row(dataset) is not None:
                raise RequestRefused(f"{dataset} is stored at {self.kit.name} already")
            with self._lock:
                if dataset in self._storing:
                    raise RequestRefused(f"{dataset} is being stored at {self.kit.name} right now")
                self._storing.add(dataset)
            try:
                if action == "ingest":
                    answer = self._store(cmd, dataset, owner, policy, reader)
                else:
                    answer = self._receive_copy(cmd, dataset, owner, reader)
            finally:
                self._storing.discard(dataset)
        except (OnshoreError, ValueError, KeyError, TypeError) as e:
            raise fl.FlightServerError(f"refused: {e}") from None
        writer.write(pa.py_buffer(json.dumps(answer).encode()))

    def _fresh_key(self, dataset: str) -> None:
        if self.keys.has_dataset_key(dataset):  # left by a crashed attempt: nothing was published with it
            self.keys.destroy_dataset_key(dataset)

    def _store(self, cmd: dict[str, Any], dataset: str, owner: str, policy: UsagePolicy,
               reader: Any) -> dict[str, Any]:
        self._fresh_key(dataset)
        validator, embodiment = self._validator(cmd, dataset)
        key = self.keys.create_dataset_key(dataset)
        stage = staging_dir(self.root) / uuid.uuid4().hex
        out: ShardWriter | None = None

        def write(b: pa.RecordBatch) -> None:
            nonlocal out
            table = validator.feed(b) if validator is not None else pa.Table.from_batches([b])
            if out is None:  # validated batches have canonical column types: the shards' schema
                out = ShardWriter(stage, dataset, key, table.schema, max_frames=SHARD_FRAMES)
            out.write(table)

        try:
            frames, digest = _read_stream(reader, write, dataset)
            if validator is not None:
                validator.finish()
            if out is None:
                raise RequestRefused(f"the stream of {dataset} held no frames: nothing was stored")
            shards = out.close()
            # the embedded default's data.ingest body (workspace/datasets.py), so bundles verify alike
            entry = {"dataset": dataset, "owner": owner, "site": self.kit.name, "jurisdiction": self.info.jurisdiction,
                     "embodiment": embodiment, "policy_hash": policy.hash,
                     "decision_index": cmd["decision"]["body"]["decision_index"], "frames": frames,
                     "stream_sha256": digest, "by": cmd["request"]["party"],
                     "shards": [{"sha256": s.sha256, "salt": s.salt, "frames": s.frames, "bytes": s.bytes}
                                for s in shards]}
            index = self.coordinator.append("data.ingest", entry)
            crash_point("site.ingest.ledgered")
            self._commit(stage, dataset, owner, cmd, shards)
        except BaseException:
            if out is not None:
                out.abort()
            self.keys.destroy_dataset_key(dataset)
            self._reconcile_after_failure(dataset)
            raise
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        self.metrics.ingested_frames.inc(frames)
        self.metrics.ingested_bytes.inc(sum(s.bytes for s in shards))
        return {"dataset": dataset, "site": self.kit.name, "frames": frames, "shards": len(shards), "entry": index}

    def _validator(self, cmd: dict[str, Any], dataset: str) -> tuple[Any, str]:
        """(a FrameValidator for the registered embodiment the ingest names, its name), or (None,
        ``unregistered``) when the member named none: the machine type comes in the coordinator's
        signed decision, and its digest is checked against it here."""
        from onshore.telemetry.embodiment import Embodiment
        from onshore.telemetry.validate import FrameValidator

        named = cmd["decision"]["body"].get("embodiment")
        if named is None:
            if cmd["request"]["body"].get("embodiment") is not None:
                raise RequestRefused("the ingest names an embodiment but its decision carries none")
            return None, UNREGISTERED
        emb = Embodiment.from_dict(named.get("spec"), source=f"embodiment {named.get('name')!r} of the decision")
        if emb.digest() != named.get("sha256") or emb.name != cmd["request"]["body"].get("embodiment"):
            raise RequestRefused("the decision's embodiment is not the one the ingest names")
        return FrameValidator(emb, f"the stream of {dataset}"), emb.name

    def _receive_copy(self, cmd: dict[str, Any], dataset: str, owner: str, reader: Any) -> dict[str, Any]:
        """The destination's part of a copy that this node asked for (``pull``): the shards arrive
        as their encrypted bytes, unchanged (same SHA-256 as at the source), and the dataset key
        sealed to the X25519 key this node put in its signed request."""
        private = self._pulls.pop(cmd["request"]["nonce"], None)
        if private is None:
            raise RequestRefused("a copy arrives only for a pull this node started")
        self._fresh_key(dataset)
        stage = staging_dir(self.root) / uuid.uuid4().hex
        stage.mkdir(parents=True)
        received: dict[str, dict[str, Any]] = {}
        try:
            def write(b: pa.RecordBatch) -> None:
                for row in b.to_pylist():
                    sha = row["shard"]
                    if not isinstance(sha, str) or len(sha) != 64 or not all(c in "0123456789abcdef" for c in sha):
                        raise RequestRefused("a copied chunk names no shard digest")
                    info = received.setdefault(sha, {"salt": row["salt"], "frames": row["frames"], "bytes": 0})
                    with open(stage / f"{sha}.part", "ab") as f:
                        f.write(row["chunk"])
                    info["bytes"] += len(row["chunk"])

            _, digest = _read_stream(reader, write, dataset)
            frames = sum(i["frames"] for i in received.values())
            for sha in received:
                if sha256_file(stage / f"{sha}.part") != sha:
                    raise RequestRefused(f"copied shard {sha[:12]}... does not hash to its name: nothing was stored")
                os.replace(stage / f"{sha}.part", stage / f"{sha}.parquet")  # staged as publish() expects
            sealed = base64.b64decode(cmd["sealed_key"], validate=True)
            key = open_sealed(private, sealed, copy_context(dataset, self.kit.name))
            self.keys.import_key("dataset", dataset, key)
            shards = [ShardInfo(sha, shard_path(dataset, sha), i["salt"], i["bytes"], i["frames"])
                      for sha, i in received.items()]
            for sh in shards:  # the key opens what arrived: decrypt one batch of each shard
                next(iter_shard_batches(stage, f"{sh.sha256}.parquet", sh.sha256, sh.salt, dataset, key, 1), None)
            d = cmd["decision"]["body"]
            entry = {"dataset": dataset, "from": cmd["source"], "to": self.kit.name,
                     "jurisdiction": self.info.jurisdiction, "decision_index": d["decision_index"],
                     "policy_hash": d["policy_hash"], "shards": [sh.sha256 for sh in shards],
                     "frames": frames, "stream_sha256": digest}
            index = self.coordinator.append("data.copy", entry)
            crash_point("site.copy.ledgered")
            self._commit(stage, dataset, owner, cmd, shards)
        except BaseException:
            self.keys.destroy_dataset_key(dataset)
            self._reconcile_after_failure(dataset)
            raise
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        self.metrics.copies.labels("received").inc()
        self.metrics.copied_bytes.labels("received").inc(sum(s.bytes for s in shards))
        return {"dataset": dataset, "site": self.kit.name, "frames": frames, "shards": len(shards), "entry": index}

    def reconcile(self, only: str | None = None) -> list[int]:
        """Close this site's own data.ingest and data.copy entries that describe nothing it holds.

        The window between a site's entry reaching the coordinator and its shards being published
        here (a crash, a lost answer, a failure after the append) leaves an entry placing shards
        at this site that are not here. For each such entry (its shards not all held, no later
        key.shred by this site, not closed already) this site appends a signed ``data.abandoned``
        entry closing it, as the embedded default's crash journal does: verifiers then leave the
        entry out (attest/bundle.py). Runs at start-up and after a failed store; skips datasets
        being stored right now. Returns the indices closed."""
        leaves = self.coordinator.leaves(0)
        me = f"site:{self.kit.name}"
        closed: set[int] = set()
        shredded: dict[str, int] = {}
        mine: list[tuple[int, Any]] = []
        for i, text in enumerate(leaves):
            e = parse_leaf(text.encode())
            if e.actor != me:
                continue
            if e.kind == ABANDONED:
                closed.update(x for x in e.body.get("closes", []) if isinstance(x, int))
            elif e.kind == "key.shred":
                shredded[e.body.get("dataset")] = i
            elif e.kind in ("data.ingest", "data.copy"):
                mine.append((i, e))
        with self.engine.connect() as c:
            held: dict[str, set[str]] = {}
            for r in c.execute(select(site_shards.c.dataset, site_shards.c.sha256)).all():
                held.setdefault(r.dataset, set()).add(r.sha256)
        done = []
        for i, e in mine:
            ds = e.body.get("dataset")
            if i in closed or (only is not None and ds != only) or ds in self._storing or shredded.get(ds, -1) > i:
                continue
            shas = {s.get("sha256") for s in e.body.get("shards", [])} if e.kind == "data.ingest" \
                else set(e.body.get("shards", []))
            if shas and shas <= held.get(ds, set()):
                continue
            done.append(self.coordinator.append(ABANDONED, {
                "dataset": ds, "site": self.kit.name, "op": e.kind, "closes": [i],
                "reason": "its shards were never published at this site (a crash or failure after the entry)"}))
        return done

    def _reconcile_after_failure(self, dataset: str) -> None:
        self._storing.discard(dataset)
        try:
            self.reconcile(dataset)
        except OnshoreError:  # the coordinator is unreachable: the next start-up reconciles
            pass

    def _commit(self, stage: Path, dataset: str, owner: str, cmd: dict[str, Any], shards: list[ShardInfo]) -> None:
        """Publish staged shards and record them (after the ledger entry: a crash before leaves the
        entry for 'doctor' to reconcile and nothing readable here)."""
        with self.engine.begin() as c:
            for sh in shards:
                publish(stage, self.root, sh.path)
                c.execute(insert(site_shards).values(dataset=dataset, sha256=sh.sha256, path=sh.path, salt=sh.salt,
                                                     frames=sh.frames, bytes=sh.bytes))
            c.execute(insert(site_datasets).values(name=dataset, owner=owner,
                                                   consent=json.dumps(cmd["decision"]["body"]["consent"])))

    def _batches(self, dataset: str) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        with self.engine.connect() as c:
            shards = c.execute(select(site_shards).where(site_shards.c.dataset == dataset)).all()
        if not shards:
            raise RequestRefused(f"{dataset} is not stored at {self.kit.name}")
        key = self.keys.dataset_key(dataset)
        first = next(iter_shard_batches(self.root, shards[0].path, shards[0].sha256, shards[0].salt, dataset, key, 1))

        def gen() -> Iterator[pa.RecordBatch]:
            for s in shards:
                yield from iter_shard_batches(self.root, s.path, s.sha256, s.salt, dataset, key)
        return first.schema, gen()

    def do_get(self, context: Any, ticket: fl.Ticket) -> fl.FlightDataStream:
        with self._timed("DoGet"):
            return self._do_get(ticket)

    def _do_get(self, ticket: fl.Ticket) -> fl.FlightDataStream:
        try:
            cmd = json.loads(ticket.ticket)
            req, _, _ = self.authorize(cmd, "read", "site")
            if req["party"] != f"site:{self.kit.name}":
                raise RequestRefused(f"a read at {self.kit.name} is this site's own, not {req['party']}'s")
            schema, batches = self._batches(req["body"]["dataset"])
            self._release(cmd, "read")
        except (OnshoreError, ValueError, KeyError, TypeError) as e:
            raise fl.FlightServerError(f"refused: {e}") from None
        return fl.GeneratorStream(schema, batches)

    def list_actions(self, context: Any) -> list[tuple[str, str]]:
        return [("health", "liveness and datasets held"), ("pull", "this site's operator: copy a dataset here"),
                ("copy", "push a dataset's encrypted shards and sealed key to the requesting site"),
                ("shred", "the owner's withdrawal: destroy the data key and shards")]

    def do_action(self, context: Any, action: fl.Action) -> Iterator[bytes]:
        with self._timed(f"DoAction:{action.type if action.type in ACTIONS else '(unknown)'}"):
            return self._do_action(action)

    def _do_action(self, action: fl.Action) -> Iterator[bytes]:
        try:
            if action.type == "health":
                with self.engine.connect() as c:
                    names = [r.name for r in c.execute(select(site_datasets)).all()]
                    held = {}
                    for r in c.execute(select(site_shards.c.dataset, site_shards.c.sha256)).all():
                        held.setdefault(r.dataset, []).append(r.sha256)
                return iter([json.dumps({"ok": True, "site": self.kit.name, "datasets": names,
                                         "shards": held}).encode()])
            cmd = json.loads(action.body.to_pybytes())
            if action.type == "pull":
                try:
                    return iter([json.dumps(self._pull(cmd)).encode()])
                except PolicyDenied as e:  # the caller re-raises it as PolicyDenied (actions.copy)
                    raise fl.FlightServerError(DENIED + json.dumps({"message": str(e), "rules": e.rules})) from None
            if action.type == "copy":
                return iter([json.dumps(self._copy(cmd)).encode()])
            if action.type == "shred":
                return iter([json.dumps(self._shred(cmd)).encode()])
            raise RequestRefused(f"unknown action {action.type!r}")
        except (OnshoreError, ValueError, KeyError, TypeError) as e:
            raise fl.FlightServerError(f"refused: {e}") from None

    def _pull(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """This site's own operator asks for a copy here from ``source``: this node makes a fresh
        X25519 key, asks the coordinator for the copy decision with the public half in its signed
        request, and has the source push (``copy``) to this node's DoPut."""
        req = check_signed(cmd, lambda p: self.kit.public_key(p) if p == f"site:{self.kit.name}" else None, "pull")
        self.nonces.use(req)
        dataset = check_name(req["body"].get("dataset"), "dataset")  # type: ignore[arg-type]
        source = req["body"].get("source")
        src = self.kit.sites.get(source) if isinstance(source, str) else None
        if src is None or source == self.kit.name:
            raise RequestRefused(f"no other site {source!r} to copy from; the consortium's sites are "
                                 f"{', '.join(self.kit.sites)}")
        if self._row(dataset) is not None:
            raise RequestRefused(f"{dataset} is stored at {self.kit.name} already")
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        private = X25519PrivateKey.generate()
        recipient = base64.b64encode(private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
        request, decision = self.coordinator.decide("copy", dataset, self.kit.name, recipient=recipient)
        self._pulls[request["nonce"]] = private
        try:
            res = list(flight_client(self.kit, src.flight).do_action(fl.Action("copy", json.dumps(
                {"request": request, "decision": decision, "source": source}).encode())))
        finally:
            self._pulls.pop(request["nonce"], None)
        return json.loads(res[0].body.to_pybytes())

    def _copy(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """The source's part of a copy: the destination's request and decision are checked here
        too (bound to the destination, the destination's jurisdiction allowed by the owner's
        policy); then the shards' encrypted bytes and the dataset key, sealed to the destination's
        key from its signed request, go to the destination's DoPut, which checks everything again;
        then the key release is recorded."""
        req = check_signed(cmd.get("request"), self.kit.public_key, "decide")
        dst_name = req["body"].get("site")
        dst = self.kit.sites.get(dst_name)
        if dst is None or req["party"] != f"site:{dst_name}" or req["body"].get("action") != "copy" \
                or cmd.get("source") != self.kit.name:
            raise RequestRefused("a copy is asked by the destination site for itself, from this site")
        dataset = req["body"].get("dataset")
        d = check_decision(cmd.get("decision"), self.kit.public_key("coordinator"), site=dst_name,  # type: ignore[arg-type]
                           action="copy", dataset=dataset, principal=req["party"], nonce=req["nonce"])
        consent = check_signed(d["consent"], self.kit.public_key, "consent.grant", fresh=False)
        policy = UsagePolicy.from_json(consent["body"].get("policy"), f"consent for {dataset}")
        if dst.jurisdiction not in policy.jurisdictions or (policy.sites and dst_name not in policy.sites):
            raise RequestRefused(f"{dataset} may not go to {dst_name} ({dst.jurisdiction}): refused by the source")
        with self.engine.connect() as c:
            shards = c.execute(select(site_shards).where(site_shards.c.dataset == dataset)).all()
        if not shards:
            raise RequestRefused(f"{dataset} is not stored at {self.kit.name}")
        try:
            recipient = base64.b64decode(req["body"].get("recipient") or "", validate=True)
        except ValueError:
            raise RequestRefused("the copy request carries no X25519 key to seal the dataset key to") from None
        sealed = seal_key(recipient, self.keys.dataset_key(dataset), copy_context(dataset, dst_name))
        for s in shards:
            check_shard(self.root, s.path, s.sha256)
        answer = push(flight_client(self.kit, dst.flight), {**cmd, "sealed_key": base64.b64encode(sealed).decode()},
                      _ciphertext_batches(self.root, shards), CIPHERTEXT_SCHEMA)
        # recorded once the destination holds the copy: a release for a copy that never landed
        # would be a claim no data.copy answers (a crash in between leaves the copy without it)
        self._release(cmd, "copy")
        self.metrics.copies.labels("sent").inc()
        self.metrics.copied_bytes.labels("sent").inc(sum(int(s.bytes) for s in shards))
        return answer

    def _release(self, cmd: dict[str, Any], action: str) -> int:
        """Record that this site unwrapped the dataset key for ``action`` under ``cmd``'s decision
        (the embedded default's key.release body)."""
        d = cmd["decision"]["body"]
        return self.coordinator.append("key.release", {
            "dataset": d["dataset"], "site": self.kit.name, "action": action, "purpose": d.get("purpose"),
            "decision_index": d["decision_index"], "policy_hash": d["policy_hash"]})

    def _shred(self, cmd: dict[str, Any]) -> dict[str, Any]:
        req, _, _ = self.authorize(cmd, "withdraw", "member")
        dataset = req["body"]["dataset"]
        with self.engine.begin() as c:
            shards = c.execute(select(site_shards).where(site_shards.c.dataset == dataset)).all()
            c.execute(delete(site_shards).where(site_shards.c.dataset == dataset))
            c.execute(delete(site_datasets).where(site_datasets.c.name == dataset))
        destroyed = self.keys.destroy_dataset_key(dataset)
        for s in shards:
            (self.root / s.path).unlink(missing_ok=True)
        self.coordinator.append("key.shred", {"dataset": dataset, "site": self.kit.name, "destroyed": destroyed})
        return {"dataset": dataset, "site": self.kit.name, "shredded": destroyed, "shards": len(shards)}


def serve(kit: Kit, metrics_port: int | None = None) -> None:
    """Run the site node until stopped; reconcile its entries with what it holds first (in the
    background, so a coordinator that is still starting does not delay serving). With
    ``metrics_port``, Prometheus scrapes are answered over HTTPS on the Flight host and that port,
    only to a client presenting a consortium certificate (mutual TLS, as every call)."""
    node = SiteNode(kit)
    if metrics_port is not None:
        from prometheus_client import start_http_server

        host = kit.sites[kit.name].flight.rsplit("//", 1)[1].rsplit(":", 1)[0]
        start_http_server(metrics_port, host, node.metrics.registry, certfile=str(kit.cert), keyfile=str(kit.key),
                          client_cafile=str(kit.ca), client_auth_required=True)

    def reconcile() -> None:
        try:
            closed = node.reconcile()
            if closed:
                print(f"site {kit.name}: closed entries {closed} whose shards were never published here", flush=True)
        except OnshoreError as e:
            print(f"site {kit.name}: could not reconcile with the coordinator ({e}); retried at the next start",
                  flush=True)

    threading.Thread(target=reconcile, daemon=True).start()
    node.serve()
