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
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import uuid
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.flight as fl
from sqlalchemy import Column, Integer, MetaData, String, Table, Text, delete, insert, select

from onshore.catalog.db import open_engine
from onshore.errors import OnshoreError
from onshore.names import check_name
from onshore.parties.client import CoordinatorClient
from onshore.parties.kit import Kit
from onshore.parties.signed import NonceBook, RequestRefused, check_decision, check_signed
from onshore.residency.policy import UsagePolicy
from onshore.store.shards import ShardWriter, iter_shard_batches, publish, staging_dir

site_metadata = MetaData()
site_datasets = Table("site_datasets", site_metadata, Column("name", String(64), primary_key=True),
                      Column("owner", String(64), nullable=False), Column("consent", Text, nullable=False))
site_shards = Table("site_shards", site_metadata, Column("dataset", String(64), nullable=False),
                    Column("sha256", String(64), primary_key=True), Column("path", Text, nullable=False),
                    Column("salt", String(64), nullable=False), Column("frames", Integer, nullable=False),
                    Column("bytes", Integer, nullable=False))

SHARD_FRAMES = 1 << 20


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
    def do_put(self, context: Any, descriptor: fl.FlightDescriptor, reader: Any, writer: Any) -> None:
        try:
            cmd = json.loads(descriptor.command)
            action = cmd.get("request", {}).get("body", {}).get("action") if isinstance(cmd, dict) else None
            if action not in ("ingest", "copy"):
                raise RequestRefused("DoPut takes an ingest or a copy")
            req, _, owner = self.authorize(cmd, action, "member" if action == "ingest" else "site")
            dataset = req["body"]["dataset"]
            answer = self._store(cmd, dataset, owner, action, reader)
        except (OnshoreError, ValueError, KeyError, TypeError) as e:
            raise fl.FlightServerError(f"refused: {e}") from None
        writer.write(pa.py_buffer(json.dumps(answer).encode()))

    def _store(self, cmd: dict[str, Any], dataset: str, owner: str, action: str, reader: Any) -> dict[str, Any]:
        if self._row(dataset) is not None:
            raise RequestRefused(f"{dataset} is stored at {self.kit.name} already")
        if self.keys.has_dataset_key(dataset):  # left by a crashed attempt: nothing was published with it
            self.keys.destroy_dataset_key(dataset)
        key = self.keys.create_dataset_key(dataset)
        stage = staging_dir(self.root) / uuid.uuid4().hex
        out = ShardWriter(stage, dataset, key, reader.schema, max_frames=SHARD_FRAMES)
        h, frames, final = hashlib.sha256(), 0, None
        try:
            while True:
                try:
                    chunk = reader.read_chunk()
                except StopIteration:
                    break
                if chunk.data is not None and chunk.data.num_rows:
                    batch_digest_update(h, chunk.data)
                    frames += chunk.data.num_rows
                    out.write(pa.Table.from_batches([chunk.data]))
                if chunk.app_metadata is not None:
                    final = json.loads(chunk.app_metadata.to_pybytes())
            shards = out.close()
            if not isinstance(final, dict) or final.get("sha256") != h.hexdigest() or final.get("frames") != frames:
                raise RequestRefused(f"the stream of {dataset} does not match its digest "
                                     f"(sent {final}, received sha256 {h.hexdigest()} over {frames} frames): "
                                     "nothing was stored")
            entry = {"dataset": dataset, "site": self.kit.name, "frames": frames, "stream_sha256": h.hexdigest(),
                     "shards": [{"sha256": s.sha256, "frames": s.frames, "bytes": s.bytes} for s in shards],
                     "by": cmd["request"]["party"]}
            index = self.coordinator.append("data.ingest" if action == "ingest" else "data.copy", entry)
            with self.engine.begin() as c:
                for s in shards:
                    publish(stage, self.root, s.path)
                    c.execute(insert(site_shards).values(dataset=dataset, sha256=s.sha256, path=s.path, salt=s.salt,
                                                         frames=s.frames, bytes=s.bytes))
                c.execute(insert(site_datasets).values(name=dataset, owner=owner,
                                                       consent=json.dumps(cmd["decision"]["body"]["consent"])))
        except BaseException:
            out.abort()
            self.keys.destroy_dataset_key(dataset)
            raise
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        return {"dataset": dataset, "site": self.kit.name, "frames": frames, "shards": len(shards), "entry": index}

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
        try:
            cmd = json.loads(ticket.ticket)
            req, _, _ = self.authorize(cmd, "read", "site")
            if req["party"] != f"site:{self.kit.name}":
                raise RequestRefused(f"a read at {self.kit.name} is this site's own, not {req['party']}'s")
            schema, batches = self._batches(req["body"]["dataset"])
        except (OnshoreError, ValueError, KeyError, TypeError) as e:
            raise fl.FlightServerError(f"refused: {e}") from None
        return fl.GeneratorStream(schema, batches)

    def list_actions(self, context: Any) -> list[tuple[str, str]]:
        return [("health", "liveness and datasets held"), ("copy", "push a dataset to the requesting site"),
                ("shred", "the owner's withdrawal: destroy the data key and shards")]

    def do_action(self, context: Any, action: fl.Action) -> Iterator[bytes]:
        try:
            if action.type == "health":
                with self.engine.connect() as c:
                    names = [r.name for r in c.execute(select(site_datasets)).all()]
                return iter([json.dumps({"ok": True, "site": self.kit.name, "datasets": names}).encode()])
            cmd = json.loads(action.body.to_pybytes())
            if action.type == "copy":
                return iter([json.dumps(self._copy(cmd)).encode()])
            if action.type == "shred":
                return iter([json.dumps(self._shred(cmd)).encode()])
            raise RequestRefused(f"unknown action {action.type!r}")
        except (OnshoreError, ValueError, KeyError, TypeError) as e:
            raise fl.FlightServerError(f"refused: {e}") from None

    def _copy(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """The source's part of a copy: the destination's request and decision are checked here
        too (bound to the destination, the destination's jurisdiction allowed by the owner's
        policy), then pushed to the destination, which checks them again."""
        req = check_signed(cmd.get("request"), self.kit.public_key, "decide")
        dst_name = req["body"].get("site")
        dst = self.kit.sites.get(dst_name)
        if dst is None or req["party"] != f"site:{dst_name}" or req["body"].get("action") != "copy":
            raise RequestRefused("a copy is asked by the destination site for itself")
        dataset = req["body"].get("dataset")
        d = check_decision(cmd.get("decision"), self.kit.public_key("coordinator"), site=dst_name,  # type: ignore[arg-type]
                           action="copy", dataset=dataset, principal=req["party"], nonce=req["nonce"])
        consent = check_signed(d["consent"], self.kit.public_key, "consent.grant", fresh=False)
        policy = UsagePolicy.from_json(consent["body"].get("policy"), f"consent for {dataset}")
        if dst.jurisdiction not in policy.jurisdictions or (policy.sites and dst_name not in policy.sites):
            raise RequestRefused(f"{dataset} may not go to {dst_name} ({dst.jurisdiction}): refused by the source")
        schema, batches = self._batches(dataset)
        return push(flight_client(self.kit, dst.flight), cmd, batches, schema)

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


def serve(kit: Kit) -> None:
    """Run the site node until stopped."""
    node = SiteNode(kit)
    node.serve()
