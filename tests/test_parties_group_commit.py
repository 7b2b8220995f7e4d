"""Group commit at the coordinator (issue 22): concurrent decisions from many clients share ledger
transactions, each caller gets its own signed decision entry back, a replay in a group fails only
its own caller, and a batch that does not commit tells no caller "allow".

The coordinator runs as its own process for the client-process test and in this process (the same
class the server wraps, on a real SQLite database) where a test must break its database.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import event, text

from onshore.ledger.entries import sign_entry
from onshore.parties.audit import load_trust_root, verify_ledger
from onshore.parties.client import CoordinatorClient
from onshore.parties.coordinator import Coordinator
from onshore.parties.local import LocalConsortium
from onshore.parties.signed import RequestRefused, check_decision, consent_body, sign_request
from onshore.residency.policy import parse_policy

POLICY = ('jurisdictions = ["JP"]\nsites = []\npurposes = ["fine-tuning"]\nexpires = 2031-03-31\n'
          'derived_models = "keep"\n')
ROBOTICS = "member:kansai-robotics"

# A client process: n decisions as site sakai, each printed as (its request's nonce, the decision).
CLIENT = """
import json, sys
from pathlib import Path
from onshore.parties.client import CoordinatorClient
from onshore.parties.kit import load_kit
client = CoordinatorClient(load_kit(Path(sys.argv[1])), quiet=True)
out = []
for _ in range(int(sys.argv[2])):
    request, decision = client.decide("read", "gc", "sakai", "fine-tuning")
    out.append([request["nonce"], decision])
print(json.dumps(out))
"""


def test_decisions_from_many_client_processes_each_get_their_own_entry(tmp_path: Path) -> None:
    dep = LocalConsortium.provision(tmp_path / "dep")
    dep.start("coordinator:coordinator")
    try:
        CoordinatorClient(dep.kit(ROBOTICS), quiet=True).consent("gc", parse_policy(POLICY))
        site = dep.kit("site:sakai")
        procs = [subprocess.Popen([sys.executable, "-c", CLIENT, str(site.folder), "15"], stdout=subprocess.PIPE)
                 for _ in range(4)]
        got = [json.loads(p.communicate(timeout=300)[0]) for p in procs]
        assert all(p.returncode == 0 for p in procs)
        pairs = [pair for one in got for pair in one]
        assert len(pairs) == 60
        coordinator_key = site.public_key("coordinator")
        assert coordinator_key is not None
        indices = set()
        auditor = CoordinatorClient(dep.kit("auditor:auditor"), quiet=True)
        leaves = auditor.leaves()
        for nonce, decision in pairs:
            body = check_decision(decision, coordinator_key, site="sakai", action="read", dataset="gc",
                                  principal="site:sakai", nonce=nonce)
            # the entry the decision names is the log's record of exactly this request
            entry = json.loads(leaves[body["decision_index"]])
            assert entry["kind"] == "decision" and entry["actor"] == "log"
            assert entry["body"]["signed_request"]["nonce"] == nonce
            indices.add(body["decision_index"])
        assert len(indices) == 60
        # the whole log verifies offline: signatures, the tree, each dataset's chain of links
        audit = verify_ledger(auditor.checkpoint(), [x.encode() for x in auditor.leaves()],
                              load_trust_root(dep.root / "kits" / "trust-root.json"))
        assert audit.kinds["decision"] == 60
        # a client whose kept-open connection died with the coordinator goes on with the next one
        client = CoordinatorClient(site, quiet=True)
        client.decide("read", "gc", "sakai", "fine-tuning")
        dep.kill("coordinator:coordinator")
        dep.start("coordinator:coordinator")
        _, decision = client.decide("read", "gc", "sakai", "fine-tuning")
        assert decision["body"]["decision_index"] == len(leaves) + 1
    finally:
        dep.stop()


def _coordinator(tmp_path: Path) -> tuple[LocalConsortium, Coordinator]:
    """A coordinator in this process with dataset ``gc`` registered by its owner."""
    dep = LocalConsortium.provision(tmp_path / "dep")
    coord = Coordinator(dep.kit("coordinator:coordinator"))
    member = dep.kit(ROBOTICS)
    key = member.keystore().identity()
    policy = parse_policy(POLICY)
    entry = sign_entry("consent.grant", ROBOTICS, consent_body("gc", "kansai-robotics", policy), key,
                       links={"dataset:gc": coord.head("dataset:gc")})
    coord.consent(sign_request(ROBOTICS, "consent.grant", {"dataset": "gc", "policy": policy.to_json(),
                                                           "entry": entry.to_json()}, key))
    return dep, coord


def _requests(dep: LocalConsortium, n: int) -> list[dict[str, Any]]:
    key = dep.kit("site:sakai").keystore().identity()
    return [sign_request("site:sakai", "decide", {"action": "read", "dataset": "gc", "site": "sakai",
                                                  "purpose": "fine-tuning"}, key) for _ in range(n)]


def _side_by_side(coord: Coordinator, requests: list[dict[str, Any]]) -> list[Any]:
    """Each request decided on its own thread, all released at once; a result or the exception."""
    results: list[Any] = [None] * len(requests)
    start = threading.Barrier(len(requests))

    def one(i: int) -> None:
        start.wait()
        try:
            results[i] = coord.decide(requests[i])
        except Exception as e:  # noqa: BLE001 - handed to the test
            results[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_concurrent_decisions_share_transactions_and_the_nonce_rides_in_them(tmp_path: Path) -> None:
    dep, coord = _coordinator(tmp_path)
    try:
        commits = []
        event.listen(coord.engine, "commit", lambda conn: commits.append(1))
        size = coord.ledger.size()
        results = [r for _ in range(5) for r in _side_by_side(coord, _requests(dep, 16))]
        assert all(isinstance(r, dict) and r["body"]["decision"] == "allow" for r in results), results[:3]
        assert sorted(r["body"]["decision_index"] for r in results) == list(range(size, size + 80))
        # one transaction per group, nonce included: fewer commits than decisions (main: two per decision)
        assert len(commits) < 80
        with coord.engine.connect() as c:
            kept = {r[0] for r in c.execute(text("SELECT nonce FROM party_nonces"))}
        assert {r["body"]["request_nonce"] for r in results} <= kept
    finally:
        coord.ledger.close()


def test_a_replay_in_a_group_fails_only_its_own_caller(tmp_path: Path) -> None:
    dep, coord = _coordinator(tmp_path)
    try:
        used = _requests(dep, 1)[0]
        coord.decide(used)
        size = coord.ledger.size()
        results = _side_by_side(coord, [used, *_requests(dep, 7)])
        assert isinstance(results[0], RequestRefused) and "replayed" in str(results[0])
        assert all(isinstance(r, dict) and r["body"]["decision"] == "allow" for r in results[1:])
        assert coord.ledger.size() == size + 7
        assert sorted(r["body"]["decision_index"] for r in results[1:]) == list(range(size, size + 7))
    finally:
        coord.ledger.close()


def test_a_batch_that_does_not_commit_tells_no_caller_allow(tmp_path: Path) -> None:
    dep, coord = _coordinator(tmp_path)
    try:
        size = coord.ledger.size()
        with coord.engine.begin() as c:  # the nonce table is lost: every decision's transaction fails
            c.execute(text("ALTER TABLE party_nonces RENAME TO party_nonces_gone"))
        results = _side_by_side(coord, _requests(dep, 8))
        assert all(isinstance(r, Exception) for r in results), results
        assert coord.ledger.size() == size  # no decision entry committed, so no caller was answered
        with coord.engine.begin() as c:
            c.execute(text("ALTER TABLE party_nonces_gone RENAME TO party_nonces"))
        # the refused requests recorded nothing, not even their nonces: each may be decided now
        again = _side_by_side(coord, _requests(dep, 2))
        assert [r["body"]["decision_index"] for r in sorted(again, key=lambda r: r["body"]["decision_index"])] == [
            size, size + 1]
    finally:
        coord.ledger.close()
