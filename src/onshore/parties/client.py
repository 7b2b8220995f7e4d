"""A party's client for the coordinator: HTTPS with the party's consortium certificate (mutual TLS),
signed requests, and entries signed on the party's own machine with their links.

A coordinator that cannot be reached is waited for (a message says what for) up to ``wait_s``,
then refused with a clear error; a refusal by the coordinator is raised as it came.
"""

from __future__ import annotations

import http.client
import json
import ssl
import sys
import threading
import time
from typing import Any
from urllib.parse import urlencode, urlsplit

from onshore.errors import OnshoreError, PolicyDenied
from onshore.i18n import N_, Message
from onshore.ledger.entries import sign_entry
from onshore.ledger.subjects import subjects_of
from onshore.parties.kit import Kit
from onshore.parties.signed import RequestRefused, consent_body, sign_request
from onshore.residency.policy import UsagePolicy
from onshore.tls import client_tls


class Unreachable(OnshoreError):
    """A party did not answer within the wait bound."""


class CoordinatorClient:
    """Calls the coordinator as the party of ``kit``."""

    def __init__(self, kit: Kit, wait_s: float = 30.0, quiet: bool = False) -> None:
        self.kit = kit
        self.wait_s = wait_s
        self.quiet = quiet
        self._ctx: ssl.SSLContext | None = client_tls(kit.ca, kit.cert, kit.key)
        self._url = urlsplit(kit.coordinator_url)
        self._key = kit.keystore().identity()
        self._local = threading.local()  # each thread's kept-open connection (a site serves in threads)

    def _exchange(self, method: str, path: str, payload: bytes | None) -> tuple[int, Any]:
        """One request on this thread's kept-open connection (opened here when there is none);
        the connection is dropped on any error and when the server says it closes it."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPSConnection(self._url.hostname or "", self._url.port, timeout=30,
                                               context=self._ctx)
            self._local.conn = conn
        try:
            conn.request(method, path, body=payload, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            raw = resp.read()
            if resp.will_close:
                self._drop()
        except BaseException:
            self._drop()
            raise
        try:
            return resp.status, json.loads(raw or b"null")
        except ValueError:  # a server error page, or not the coordinator at all: say what came back
            said = f"HTTP {resp.status}: {raw[:200].decode('utf-8', 'replace')}"
            if resp.status < 400:
                raise OnshoreError(f"{self.kit.coordinator_url} answered with something other than JSON ({said}); "
                                   "is that address the coordinator's?") from None
            return resp.status, {"error": said}

    def _drop(self) -> None:
        conn, self._local.conn = getattr(self._local, "conn", None), None
        if conn is not None:
            conn.close()

    def close(self) -> None:
        """Close this thread's kept-open connection (others close with their threads)."""
        self._drop()

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        deadline = time.monotonic() + self.wait_s
        told = False
        payload = None if body is None else json.dumps(body).encode()
        while True:
            # A kept-open connection saves a mutual-TLS handshake per call (it cost ten times the
            # decision itself: docs/benchmarks.md). The server may have closed it while it was idle:
            # then the request is sent again at once on a new one. Sending a signed request twice is
            # safe: the coordinator refuses a nonce it has seen, so nothing happens twice.
            reused = getattr(self._local, "conn", None) is not None
            try:
                status, data = self._exchange(method, path, payload)
                break
            except (ConnectionError, TimeoutError, OSError, http.client.HTTPException) as e:
                if reused and not isinstance(e, TimeoutError):
                    continue
                if isinstance(e, ssl.SSLError):
                    raise OnshoreError(f"TLS handshake with the coordinator {self.kit.coordinator_url} failed: {e}; "
                                       "check that this kit's certificate is the consortium's") from None
                if time.monotonic() > deadline:
                    raise Unreachable(f"the coordinator at {self.kit.coordinator_url} did not answer for "
                                      f"{self.wait_s:.0f} s ({e}); is 'onshore coordinator serve' running?") from None
                if not told and not self.quiet:
                    print(f"waiting for the coordinator at {self.kit.coordinator_url} ({e})", file=sys.stderr)
                    told = True
                time.sleep(0.2)
        if status == 409:
            from onshore.parties.signed import StaleLinks
            raise StaleLinks(data.get("error", "stale links"))
        if status >= 400:
            raise RequestRefused(f"the coordinator refused: {data.get('error') if isinstance(data, dict) else data}")
        return data

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/v1/health")

    def signed(self, path: str, op: str, body: dict[str, Any]) -> Any:
        return self._call("POST", path, sign_request(self.kit.party, op, body, self._key))

    def _with_entry(self, path: str, op: str, body: dict[str, Any], kind: str, entry_body: dict[str, Any]) -> Any:
        """Sign an entry linked to its subjects' newest entries, and send it in a signed request;
        signs again (a few times) when another party's append overtook the links."""
        for _ in range(10):
            links = {s: self._call("GET", "/v1/heads?" + urlencode({"subject": s}))["link"]
                     for s in subjects_of(kind, entry_body)}
            entry = sign_entry(kind, self.kit.party, entry_body, self._key, links=links or None)
            try:
                return self.signed(path, op, {**body, "entry": entry.to_json()})
            except RequestRefused as e:
                if type(e).__name__ != "StaleLinks":
                    raise
        raise OnshoreError("the coordinator's ledger kept moving; try again")

    def append(self, kind: str, entry_body: dict[str, Any]) -> int:
        """Append an entry of ``kind`` signed by this party; returns its index."""
        return self._with_entry("/v1/entries", "entry", {}, kind, entry_body)["index"]

    def consent(self, dataset: str, policy: UsagePolicy) -> int:
        """Register ``dataset`` under ``policy`` as this member (its consent.grant entry signed here)."""
        owner = self.kit.party.split(":", 1)[1]
        return self._with_entry("/v1/consent", "consent.grant", {"dataset": dataset, "policy": policy.to_json()},
                                "consent.grant", consent_body(dataset, owner, policy))["index"]

    def add_embodiment(self, emb: Any) -> dict[str, Any]:
        """Register machine type ``emb`` (an Embodiment) as this member; a no-op if registered alike."""
        return self.signed("/v1/embodiments", "embodiment.add", {"embodiment": emb.to_dict()})

    def withdraw(self, dataset: str) -> int:
        """Withdraw consent to ``dataset``: decided first (withdraw, no site), then the owner's
        consent.withdraw entry citing that decision."""
        _, decision = self.decide("withdraw", dataset, None)
        return self._with_entry("/v1/withdraw", "consent.withdraw", {"dataset": dataset}, "consent.withdraw",
                                {"dataset": dataset, "decision_index": decision["body"]["decision_index"]})["index"]

    def decide(self, action: str, dataset: str, site: str | None, purpose: str | None = None,
               **extra: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """A signed request of this party and the coordinator's decision on it, bound to its nonce:
        the pair a site acts on (the site records the nonce too, so the pair works once). ``extra``
        goes into the signed body for the site (an ingest's ``embodiment``). Raises PolicyDenied
        when the decision denies."""
        request = sign_request(self.kit.party, "decide",
                               {"action": action, "dataset": dataset, "site": site, "purpose": purpose, **extra},
                               self._key)
        decision = self._call("POST", "/v1/decide", request)
        if decision["body"]["decision"] != "allow":
            rules = decision["body"].get("rules", [])
            raise PolicyDenied(Message(N_("{action} of {dataset} at {site} refused by {rules}"),
                                       {"action": action, "dataset": dataset, "site": site,
                                        "rules": ", ".join(rules)}), rules)
        return request, decision

    def cosign(self) -> dict[str, Any]:
        """Have the coordinator checkpoint its ledger and collect its witnesses' cosignatures."""
        return self.signed("/v1/cosign", "cosign", {})

    def checkpoint(self) -> str:
        return self._call("GET", "/v1/checkpoint")["note"]

    def evidence(self, dataset: str) -> dict[str, Any]:
        """Checkpoint, head note and the chain of ``dataset`` with proofs (Coordinator.evidence)."""
        return self._call("GET", "/v1/evidence?" + urlencode({"dataset": dataset}))

    def store_bundle(self, dataset: str, bundle: dict[str, Any]) -> None:
        self.signed("/v1/bundles", "bundle", {"dataset": dataset, "bundle": bundle})

    def bundle(self, dataset: str) -> dict[str, Any]:
        """The newest bundle a site handed in for ``dataset`` (verify it offline: attest/verify.py)."""
        return self._call("GET", "/v1/bundles?" + urlencode({"dataset": dataset}))

    def leaves(self, start: int = 0) -> list[str]:
        return self._call("GET", f"/v1/ledger?start={start}")["leaves"]

