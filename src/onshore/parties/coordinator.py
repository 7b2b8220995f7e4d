"""The coordinator: the consortium's control plane (catalog of datasets, ledger, decision point).

It holds the log key (which signs checkpoints, decision entries and decisions) and a database
(SQLite in its kit, or PostgreSQL by URL); it holds no data key and no site's or member's signing
key. Every state-changing call is a signed request (onshore.parties.signed): the coordinator
verifies it against the party's registered key, refuses a replayed nonce, and appends the
entries the party signed on its own machine (checked against the same key) to the ledger.

HTTP + JSON over mutual TLS (uvicorn with the consortium CA as client CA): a client without a
consortium certificate fails the handshake. Routes::

    GET  /v1/health                   liveness, ledger size
    GET  /v1/heads?subject=S          the newest entry about S (what a party links a new entry to)
    POST /v1/consent                  member: register a dataset with its policy (consent.grant)
    POST /v1/embodiments              member: register a machine type (embodiment.add)
    POST /v1/decide                   any party: a signed decision bound to site/action/dataset/nonce
    POST /v1/entries                  site or member: append an entry it signed
    POST /v1/withdraw                 member: withdraw consent (consent.withdraw)
    GET  /v1/checkpoint               a checkpoint of the ledger signed by the log key
    GET  /v1/ledger?start=N           entries (leaves) for auditors
    GET  /v1/evidence?dataset=D       checkpoint, head note, chain and proofs for a site's attestation
    POST /v1/bundles                  site: hand in a residency bundle it signed
    GET  /v1/bundles?dataset=D        the newest bundle for D, for auditors (verified offline)
    GET  /metrics                     Prometheus text: ledger size, checkpoint age, decisions by
                                      outcome and rule, request latency by route (docs/monitoring.md)

``/metrics`` is behind the same mutual TLS as every route: a scraper presents a consortium
certificate (aggregate counts only, but they still say how busy each dataset's parties are).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Boolean, Column, Integer, MetaData, String, Table, Text, insert, select, update
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from onshore.catalog.db import open_engine
from onshore.errors import IntegrityError, OnshoreError
from onshore.ledger import checkpoint as ckpt
from onshore.ledger import merkle, notes
from onshore.ledger.entries import Draft, verify_entry
from onshore.ledger.log import Ledger, ledger_metadata
from onshore.ledger.subjects import link_to
from onshore.names import check_name
from onshore.parties.kit import Kit
from onshore.parties.signed import (
    NonceBook,
    PresignedKey,
    RequestRefused,
    StaleLinks,
    check_signed,
    consent_body,
    entry_from_json,
    sign_request,
)
from onshore.residency.pdp import PolicyDecisionPoint, SiteFacts
from onshore.residency.pdp import Request as PdpRequest
from onshore.residency.policy import UsagePolicy, cedar_hash, dataset_cedar, workspace_cedar

party_metadata = MetaData()
datasets = Table("party_datasets", party_metadata, Column("name", String(64), primary_key=True),
                 Column("owner", String(64), nullable=False), Column("consent", Text, nullable=False),
                 Column("withdrawn", Boolean, nullable=False, default=False))

bundles = Table("party_bundles", party_metadata, Column("id", Integer, primary_key=True, autoincrement=True),
                Column("dataset", String(64), nullable=False), Column("site", String(64), nullable=False),
                Column("bundle", Text, nullable=False))
embodiments = Table("party_embodiments", party_metadata, Column("name", String(64), primary_key=True),
                    Column("spec", Text, nullable=False), Column("sha256", String(64), nullable=False))
MAX_BUNDLE_BYTES = 32 << 20
MAX_BODY_BYTES = MAX_BUNDLE_BYTES + (1 << 20)

#: which entry kinds each kind of party may sign and append
ENTRY_KINDS = {"site": ("data.ingest", "data.copy", "data.read", "key.release", "key.shred", "data.abandoned",
                        "data.attest"),
               "member": ("consent.grant", "consent.withdraw")}


@dataclass(frozen=True)
class _Registry:
    """What decisions read: the decision point over every dataset's policy, and each dataset's
    owner, signed consent and withdrawn flag, from one read of the registry."""

    pdp: PolicyDecisionPoint
    datasets: dict[str, dict[str, Any]]


class Coordinator:
    """The coordinator's state and rules, independent of HTTP (the routes call these methods)."""

    def __init__(self, kit: Kit, db_url: str | None = None) -> None:
        self.kit = kit
        state = kit.folder / "state"
        state.mkdir(exist_ok=True, mode=0o700)
        url = db_url or f"sqlite:///{state / 'coordinator.db'}"
        self.engine = open_engine(url, ledger_metadata, create=True)
        party_metadata.create_all(self.engine)
        self.ledger = Ledger(self.engine)
        self.nonces = NonceBook(self.engine)
        self.log_key = kit.keystore().identity()
        self.origin = f"onshore/{kit.consortium}"
        self._lock = threading.Lock()
        self._registry_cache: _Registry | None = None  # rebuilt after consent or withdrawal
        self._registry_lock = threading.Lock()
        self._generation = 0  # bumped by every change to the registry

    # --- helpers
    def _checked(self, req: Any, op: str) -> dict[str, Any]:
        req = check_signed(req, self.kit.public_key, op)
        self.nonces.use(req)
        return req

    def _dataset(self, name: str) -> dict[str, Any] | None:
        with self.engine.connect() as c:
            row = c.execute(select(datasets).where(datasets.c.name == name)).first()
        return None if row is None else {"owner": row.owner, "consent": json.loads(row.consent),
                                         "withdrawn": bool(row.withdrawn)}

    def _registry(self) -> _Registry:
        """The decision point and the registered datasets, read together and kept until a consent
        or withdrawal changes them (``_invalidate``): a decision reads no database row. A
        registry built while a change was being made is used for that one call, never kept."""
        reg = self._registry_cache
        if reg is None:
            generation = self._generation
            reg = self._build_registry()
            with self._registry_lock:
                if generation == self._generation:
                    self._registry_cache = reg
        return reg

    def _invalidate(self) -> None:
        with self._registry_lock:
            self._generation += 1
            self._registry_cache = None

    def _build_registry(self) -> _Registry:
        parts, hashes, found = [workspace_cedar(self.kit.jurisdiction)], {}, {}
        with self.engine.connect() as c:
            rows = c.execute(select(datasets)).all()
        for r in rows:
            # the registry row is checked against the owner's signature: an edited row is an integrity error
            try:
                consent = check_signed(json.loads(r.consent), self.kit.public_key, "consent.grant", fresh=False)
            except (RequestRefused, ValueError) as e:
                raise IntegrityError(f"the registry's consent for dataset {r.name} does not verify ({e})") from None
            if consent["party"] != f"member:{r.owner}" or consent["body"].get("dataset") != r.name:
                raise IntegrityError(f"the registry's row for dataset {r.name} disagrees with its signed consent")
            policy = UsagePolicy.from_json(consent["body"]["policy"], f"dataset {r.name}")
            text = dataset_cedar(r.name, r.owner, policy, bool(r.withdrawn))
            parts.append(text)
            hashes[r.name] = cedar_hash(text)
            found[r.name] = {"owner": r.owner, "consent": consent, "withdrawn": bool(r.withdrawn)}
        sites = [SiteFacts(s.name, s.jurisdiction, s.roles) for s in self.kit.sites.values()]
        return _Registry(PolicyDecisionPoint("".join(parts), sites, dataset_hashes=hashes), found)

    def _append_presigned(self, party: str, entry_json: Any, kinds: tuple[str, ...]) -> int:
        entry = entry_from_json(entry_json)
        if entry.actor != party:
            raise RequestRefused(f"{party} may append only entries it signs as itself, not as {entry.actor}")
        if entry.kind not in kinds:
            raise RequestRefused(f"{party} may not append a {entry.kind} entry (only {', '.join(kinds)})")
        key = self.kit.public_key(party)
        assert key is not None
        verify_entry(entry, key)
        draft = Draft(entry.kind, entry.actor, entry.body, PresignedKey(entry), entry.time)  # type: ignore[arg-type]
        return self.ledger.append([draft])[0]

    # --- operations
    def head(self, subject: str) -> dict[str, Any] | None:
        h = self.ledger.subject_head(subject)
        return None if h is None else link_to(h.index, merkle.leaf_hash(h.leaf))

    def consent(self, req: Any) -> dict[str, Any]:
        """A member registers dataset ``body.dataset`` with ``body.policy``; its signed consent.grant
        entry goes to the ledger. Refuses a non-member, a taken name or a policy that does not parse."""
        req = self._checked(req, "consent.grant")
        if not req["party"].startswith("member:"):
            raise RequestRefused("only a member registers a dataset")
        b = req["body"]
        name, owner = check_name(b.get("dataset"), "dataset"), req["party"].split(":", 1)[1]  # type: ignore[arg-type]
        policy = UsagePolicy.from_json(b.get("policy"), "consent policy")
        e = b.get("entry") or {}
        if e.get("kind") != "consent.grant" or e.get("body") != consent_body(name, owner, policy):
            raise RequestRefused("the consent.grant entry must be the request's dataset, owner, policy and the "
                                 "policy's hashes (onshore.parties.signed.consent_body)")
        with self._lock:
            if self._dataset(name) is not None:
                raise RequestRefused(f"dataset {name!r} is registered already; choose another name")
            index = self._append_presigned(req["party"], e, ENTRY_KINDS["member"])
            with self.engine.begin() as c:
                c.execute(insert(datasets).values(name=name, owner=owner, consent=json.dumps(req), withdrawn=False))
            self._invalidate()
        return {"index": index}

    def add_embodiment(self, req: Any) -> dict[str, Any]:
        """A member registers a machine type (``body.embodiment``: Embodiment.to_dict) so that sites
        validate telemetry against it. Immutable, as in the embedded default: the same name with
        the same channels and rate is a no-op, with others refused. Recorded as the embedded
        default's log-signed ``embodiment.add`` entry."""
        from onshore.telemetry.embodiment import Embodiment

        req = self._checked(req, "embodiment.add")
        if not req["party"].startswith("member:"):
            raise RequestRefused("only a member registers an embodiment")
        emb = Embodiment.from_dict(req["body"].get("embodiment"), source="the embodiment in the request")
        digest = emb.digest()
        with self._lock:
            with self.engine.connect() as c:
                row = c.execute(select(embodiments.c.sha256).where(embodiments.c.name == emb.name)).first()
            if row is not None:
                if row.sha256 != digest:
                    raise RequestRefused(f"embodiment {emb.name!r} is registered already with other channels or "
                                         "control rate; embodiments are immutable: register it under a new name")
                return {"embodiment": emb.name, "sha256": digest, "index": None}
            index = self.ledger.append([Draft("embodiment.add", "log", {
                "embodiment": emb.name, "sha256": digest, "state_dim": emb.state_dim, "action_dim": emb.action_dim,
                "control_hz": str(emb.control_hz)}, self.log_key)])[0]
            with self.engine.begin() as c:
                c.execute(insert(embodiments).values(name=emb.name, spec=json.dumps(emb.to_dict()), sha256=digest))
        return {"embodiment": emb.name, "sha256": digest, "index": index}

    def _embodiment(self, name: Any) -> dict[str, Any]:
        with self.engine.connect() as c:
            row = c.execute(select(embodiments).where(embodiments.c.name == name)).first() \
                if isinstance(name, str) else None
        if row is None:
            raise RequestRefused(f"embodiment {name!r} is not registered; its member registers it first "
                                 "('onshore party embodiment FILE.toml')")
        return {"name": row.name, "spec": json.loads(row.spec), "sha256": row.sha256}

    def decide(self, req: Any) -> dict[str, Any]:
        """Decide ``body`` (action, dataset, site, purpose) for the signing party; record the decision
        entry; return a decision signed by the coordinator, bound to the request's nonce, with the
        owner's signed consent so a site can check the policy itself."""
        # signature and expiry here; the nonce is recorded in the decision's own append below
        req = check_signed(req, self.kit.public_key, "decide")
        b = req["body"]
        reg = self._registry()
        ds = reg.datasets.get(b.get("dataset", "")) if isinstance(b.get("dataset"), str) else None
        if ds is None:
            raise RequestRefused(f"unknown dataset {b.get('dataset')!r}; the owner registers it first")
        emb = self._embodiment(b["embodiment"]) if b.get("action") == "ingest" and b.get("embodiment") is not None \
            else None  # checked before anything is recorded
        try:
            decision = reg.pdp.decide(PdpRequest(req["party"], b.get("action", ""), b["dataset"], b.get("site"),
                                                 b.get("purpose")))
        except (OnshoreError, KeyError) as e:
            raise RequestRefused(f"cannot decide: {e}") from None
        # the log key signs the decision; the request it answers rides along, so an auditor sees
        # offline that the principal asked (attest/verify.py checks its signature). The request's
        # nonce is recorded in the same transaction: a replay is refused and records nothing, and
        # concurrent decisions from every client share one transaction (the ledger's group commit)
        index = self.ledger.append([Draft("decision", "log", {**decision.to_json(), "signed_request": req},
                                          self.log_key)], lambda conn, _: self.nonces.use_in(conn, req))[0]
        body = {"principal": req["party"], "site": b.get("site"), "action": b["action"], "dataset": b["dataset"],
                "purpose": b.get("purpose"), "request_nonce": req["nonce"],
                "decision": "allow" if decision.allowed else "deny", "rules": list(decision.rules),
                "policy_hash": decision.policy_hash, "decision_index": index,
                "dataset_policy_hash": decision.dataset_policy_hash, "consent": ds["consent"]}
        if emb is not None:  # the site validates every frame against the registered machine type
            body["embodiment"] = emb
        return sign_request("coordinator", "decision", body, self.log_key)

    def entries(self, req: Any) -> dict[str, Any]:
        req = self._checked(req, "entry")
        kind = req["party"].split(":", 1)[0]
        e = req["body"].get("entry")
        if isinstance(e, dict) and e.get("kind") == "data.abandoned":
            self._check_abandon(req["party"], e.get("body"))
        index = self._append_presigned(req["party"], e, ENTRY_KINDS.get(kind, ()))
        return {"index": index}

    def _check_abandon(self, party: str, body: Any) -> None:
        """A site closes only its own data.ingest or data.copy entries of the named dataset: an
        abandonment voids what it closes for every verifier, so nobody closes another's facts."""
        closes = body.get("closes") if isinstance(body, dict) else None
        if not isinstance(closes, list) or not closes:
            raise RequestRefused("a data.abandoned entry closes a non-empty list of ledger indices")
        for i in closes:
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.ledger.size():
                raise RequestRefused(f"data.abandoned closes {i!r}, which is not an entry of this ledger")
            e = self.ledger.get(i).entry
            if e.kind not in ("data.ingest", "data.copy") or e.actor != party \
                    or e.body.get("dataset") != body.get("dataset"):
                raise RequestRefused(f"{party} may close only its own data.ingest or data.copy entries of "
                                     f"{body.get('dataset')!r}; entry {i} is a {e.kind} by {e.actor}")

    def withdraw(self, req: Any) -> dict[str, Any]:
        """The owner withdraws consent: its consent.withdraw entry is appended and every later
        decision about the dataset denies (dataset/NAME/withdrawn)."""
        req = self._checked(req, "consent.withdraw")
        name = req["body"].get("dataset")
        ds = self._dataset(name or "")
        if ds is None or f"member:{ds['owner']}" != req["party"]:
            raise RequestRefused(f"{req['party']} does not own a dataset {name!r}; only its owner withdraws it")
        e = req["body"].get("entry") or {}
        eb = e.get("body") or {}
        if e.get("kind") != "consent.withdraw" or set(eb) != {"dataset", "decision_index"} or eb["dataset"] != name:
            raise RequestRefused("the consent.withdraw entry must be {dataset, decision_index} for the request's "
                                 "dataset")
        self._check_withdraw_decision(eb["decision_index"], req["party"], name)
        with self._lock:
            index = self._append_presigned(req["party"], e, ENTRY_KINDS["member"])
            with self.engine.begin() as c:
                c.execute(update(datasets).where(datasets.c.name == name).values(withdrawn=True))
            self._invalidate()
        return {"index": index}

    def _check_withdraw_decision(self, index: Any, party: str, dataset: str) -> None:
        """A withdrawal cites this log's allowing decision on (party, withdraw, dataset, no site)."""
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < self.ledger.size():
            raise RequestRefused("the withdrawal's decision_index is not an entry of this ledger")
        e = self.ledger.get(index).entry
        r = e.body.get("request") if isinstance(e.body.get("request"), dict) else {}
        if (e.kind != "decision" or e.actor != "log" or e.body.get("decision") != "allow"
                or (r.get("principal"), r.get("action"), r.get("dataset"), r.get("site"))
                != (party, "withdraw", dataset, None)):
            raise RequestRefused(f"entry {index} is not an allowing withdraw decision for {party} on {dataset}")

    def evidence(self, dataset: str) -> dict[str, Any]:
        """What a site needs to attest ``dataset`` (attest/bundle.py's bundle less the signed
        statement): a checkpoint covering the dataset's newest entry (the newest stored, witness-
        cosigned one when it does), the log-signed head note of its chain in that tree, and every
        entry of the chain with its inclusion proof."""
        from onshore.attest.bundle import bundle_entries, dataset_subject
        from onshore.ledger import subjects

        subject = dataset_subject(check_name(dataset, "dataset"))
        head = self.ledger.subject_head(subject)
        if head is None:
            raise RequestRefused(f"the ledger holds nothing about dataset {dataset!r}")
        note = self.ledger.checkpoint_note()
        if note is None or ckpt.parse(notes.split_note(note)[0]).size <= head.index:
            note = self.checkpoint()  # a fresh one, cosigned by nobody yet
        size = ckpt.parse(notes.split_note(note)[0]).size
        head = self.ledger.subject_head(subject, size)
        assert head is not None
        chain = {e.index: e.leaf for e in self.ledger.subject_entries(subject, 0, size)}
        head_note = subjects.sign_head(subjects.SubjectHead(self.origin, subject, size, self.ledger.root(size),
                                                            head.index, merkle.leaf_hash(head.leaf)),
                                       self.origin, self.log_key)
        return {"checkpoint": note, "subjectHead": head_note,
                "entries": bundle_entries(self.ledger, chain, size)}

    def store_bundle(self, req: Any) -> dict[str, Any]:
        """A site hands in a bundle it signed, for auditors to fetch (GET /v1/bundles). The
        coordinator keeps it as given: auditors verify it offline, the coordinator vouches for nothing."""
        req = self._checked(req, "bundle")
        if not req["party"].startswith("site:"):
            raise RequestRefused("only a site attests")
        b = req["body"]
        name = check_name(b.get("dataset"), "dataset")  # type: ignore[arg-type]
        text = json.dumps(b.get("bundle"))
        if len(text) > MAX_BUNDLE_BYTES:
            raise RequestRefused(f"a bundle is at most {MAX_BUNDLE_BYTES} bytes")
        with self.engine.begin() as c:
            c.execute(insert(bundles).values(dataset=name, site=req["party"].split(":", 1)[1], bundle=text))
        return {"dataset": name}

    def bundle(self, dataset: str) -> Any:
        with self.engine.connect() as c:
            row = c.execute(select(bundles.c.bundle).where(bundles.c.dataset == dataset)
                            .order_by(bundles.c.id.desc())).first()
        return None if row is None else json.loads(row.bundle)

    def checkpoint(self) -> str:
        """The newest cosigned checkpoint if it is current, else a fresh one signed by the log key."""
        size = self.ledger.size()
        stored = self.ledger.checkpoint_note(size)
        if stored is not None:
            return stored
        return ckpt.sign_checkpoint(ckpt.Checkpoint(self.origin, size, self.ledger.root(size)), self.origin,
                                    self.log_key)

    def cosign(self, req: Any) -> dict[str, Any]:
        """Checkpoint the ledger and have every witness of the kit cosign it (C2SP tlog-witness,
        over mutual TLS); the cosigned note is kept and served by ``checkpoint``. A witness that
        does not answer or refuses is reported, not fatal."""
        self._checked(req, "cosign")
        with self._lock:
            size = self.ledger.size()
            note = ckpt.sign_checkpoint(ckpt.Checkpoint(self.origin, size, self.ledger.root(size)), self.origin,
                                        self.log_key)
            done, failed = [], {}
            for name, w in self.kit.witnesses.items():
                try:
                    note = cosign_at(w["url"], name, w["vkey"], note, size, self.ledger, self.kit)
                    done.append(name)
                except OnshoreError as e:
                    failed[name] = str(e)
            if done:
                self.ledger.store_checkpoint(size, note)
        return {"size": size, "cosigned_by": done, "failed": failed}

    def leaves(self, start: int) -> list[str]:
        return [e.leaf.decode() for e in self.ledger.entries(start)]


def cosign_at(url: str, name: str, vkey: str, note: str, size: int, ledger: Ledger, kit: Kit) -> str:
    """``note`` with the cosignature of the witness at ``url`` added (after checking it verifies
    under ``vkey``); starts from old size 0 and answers the witness's 409 with a consistency proof."""
    import http.client
    from urllib.parse import urlsplit

    from onshore.ledger import notes
    from onshore.ledger.witness_wire import ADD_CHECKPOINT_PATH, decode_size, encode_request
    from onshore.tls import client_tls

    parts = urlsplit(url)
    ctx = client_tls(kit.ca, kit.cert, kit.key)
    old = 0
    for _ in range(3):
        proof = ledger.consistency_proof(old, size) if 0 < old < size else []
        conn = http.client.HTTPSConnection(parts.hostname or "", parts.port, timeout=10, context=ctx)
        try:
            conn.request("POST", ADD_CHECKPOINT_PATH, body=encode_request(old, proof, note))
            resp = conn.getresponse()
            status, body = resp.status, resp.read(1 << 16)
        except (OSError, http.client.HTTPException) as e:
            raise OnshoreError(f"witness {name} at {url} did not answer ({e}); is 'onshore witness serve' running?"
                               ) from None
        finally:
            conn.close()
        if status == 409:
            old = decode_size(body)
            continue
        if status != 200:
            raise OnshoreError(f"witness {name} refused ({status}: {body[:200].decode('utf-8', 'replace')})")
        text = notes.split_note(note)[0]
        sigs = [notes.parse_signature_line(line) for line in body.decode().rstrip("\n").split("\n")]
        good = notes.verified_lines(text, sigs, [ckpt.CosignatureVerifier.from_vkey(vkey)],
                                    lambda s: f"the cosignature by {s.name} does not verify")
        if not good:
            raise OnshoreError(f"witness {name} answered without a cosignature under its registered key")
        return notes.add_signatures(note, good)
    raise OnshoreError(f"witness {name} kept moving; try again")


def make_app(coord: Coordinator) -> Starlette:
    """The HTTP routes over ``coord``; every refusal is a JSON ``{"error": ...}`` (409 for stale
    links, 403 for a refused request, 400 for bad input)."""

    def handler(fn: Any) -> Any:
        async def route(request: Request) -> JSONResponse:
            # read at most MAX_BODY_BYTES: a party with a certificate is still hostile input
            body, size = bytearray(), 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    return JSONResponse({"error": f"a request body is at most {MAX_BODY_BYTES} bytes"},
                                        status_code=413)
                body += chunk
            try:
                data = json.loads(body)
            except (ValueError, RecursionError):
                return JSONResponse({"error": "body is not JSON"}, status_code=400)
            try:
                import anyio.to_thread

                return JSONResponse(await anyio.to_thread.run_sync(fn, data))
            except StaleLinks as e:
                return JSONResponse({"error": str(e)}, status_code=409)
            except RequestRefused as e:
                return JSONResponse({"error": str(e)}, status_code=403)
            except OnshoreError as e:
                return JSONResponse({"error": str(e)}, status_code=400)
        return route

    async def health(_: Request) -> JSONResponse:
        return JSONResponse({"ok": True, "party": "coordinator", "ledger_size": coord.ledger.size()})

    async def heads(request: Request) -> JSONResponse:
        return JSONResponse({"link": coord.head(request.query_params.get("subject", ""))})

    async def checkpoint(_: Request) -> JSONResponse:
        return JSONResponse({"note": coord.checkpoint()})

    async def ledger(request: Request) -> JSONResponse:
        try:
            start = max(0, int(request.query_params.get("start", "0")))
        except ValueError:
            return JSONResponse({"error": "start must be an integer"}, status_code=400)
        return JSONResponse({"start": start, "leaves": coord.leaves(start)})

    async def evidence(request: Request) -> JSONResponse:
        try:
            return JSONResponse(coord.evidence(request.query_params.get("dataset", "")))
        except RequestRefused as e:
            return JSONResponse({"error": str(e)}, status_code=404)
        except OnshoreError as e:
            return JSONResponse({"error": str(e)}, status_code=400)

    async def bundle(request: Request) -> JSONResponse:
        found = coord.bundle(request.query_params.get("dataset", ""))
        if found is None:
            return JSONResponse({"error": "no bundle for that dataset; a site holding it attests first"},
                                status_code=404)
        return JSONResponse(found)

    from prometheus_client import CollectorRegistry, generate_latest

    from onshore.serve.metrics import CONTENT_TYPE, RouteTimer, request_histogram
    from onshore.workspace.metrics import LedgerCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(coord.ledger))
    timings = request_histogram("onshore_coordinator", registry)

    async def metrics(_: Request) -> Response:
        import anyio.to_thread

        return Response(await anyio.to_thread.run_sync(generate_latest, registry), media_type=CONTENT_TYPE)

    app = Starlette(routes=[
        Route("/v1/health", health), Route("/v1/heads", heads), Route("/v1/checkpoint", checkpoint),
        Route("/v1/ledger", ledger), Route("/v1/evidence", evidence), Route("/v1/bundles", bundle),
        Route("/v1/bundles", handler(coord.store_bundle), methods=["POST"]),
        Route("/v1/consent", handler(coord.consent), methods=["POST"]),
        Route("/v1/embodiments", handler(coord.add_embodiment), methods=["POST"]),
        Route("/v1/decide", handler(coord.decide), methods=["POST"]),
        Route("/v1/entries", handler(coord.entries), methods=["POST"]),
        Route("/v1/withdraw", handler(coord.withdraw), methods=["POST"]),
        Route("/v1/cosign", handler(coord.cosign), methods=["POST"]),
        Route("/metrics", metrics),
    ])
    app.add_middleware(RouteTimer, routes=app.routes, histogram=timings)
    return app


def serve(kit: Kit, db_url: str | None = None, host: str | None = None, port: int | None = None) -> None:
    """Run the coordinator over mutual TLS until stopped (the kit's endpoint unless overridden)."""
    from urllib.parse import urlsplit

    import uvicorn

    from onshore.tls import server_tls

    parts = urlsplit(kit.coordinator_url)
    coord = Coordinator(kit, db_url)
    uvicorn.run(make_app(coord), host=host or parts.hostname or "127.0.0.1", port=port or parts.port or 8700,
                log_level="warning", **server_tls(kit.cert, kit.key, kit.ca))

