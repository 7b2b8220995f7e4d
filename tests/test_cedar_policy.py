"""The Cedar an auditor can see and recompute: `policy show`, the shipped schema, bundles' Cedar."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onshore.attest.bundle import claim_from_json
from onshore.attest.verify import verify_bundle
from onshore.cli.app import main
from onshore.errors import OnshoreError
from onshore.ledger.entries import parse_leaf
from onshore.residency.pdp import PolicyDecisionPoint, SiteFacts
from onshore.residency.policy import UsagePolicy, cedar_hash, dataset_cedar, workspace_cedar
from onshore.residency.schema import schema_text, validation_errors
from onshore.workspace import Workspace
from test_attest import Attested, attested, failing, resign, site_key, statement_of  # noqa: F401

SITES = [SiteFacts("sakai", "JP", ("compute", "storage")), SiteFacts("ohio", "US", ("storage",))]


def test_policy_show_prints_the_cedar_in_force(attested: Attested, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    assert main(["-w", str(attested.root), "policy", "show", "furnace", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert '@id("dataset/furnace/jurisdictions")' in shown["cedar"] and '["JP"]' in shown["cedar"]
    assert shown["sha256"] == hashlib.sha256(shown["cedar"].encode()).hexdigest()
    assert shown["workspace_cedar"] == workspace_cedar(None)
    with Workspace.open(attested.root) as ws:
        consent = next(ws.ledger.entries(kinds=["consent.grant"])).entry.body
        policy = UsagePolicy.from_json(consent["policy"])
    assert shown["cedar"] == dataset_cedar("furnace", "steelco", policy, withdrawn=False)
    assert consent["cedar_hash"] == shown["sha256"]
    assert main(["-w", str(attested.root), "policy", "show", "furnace"]) == 0
    text = capsys.readouterr().out
    assert shown["cedar"] in text and shown["sha256"] in text
    assert main(["-w", str(attested.root), "policy", "show", "nope"]) == 1


def test_schema_is_shipped_and_rejects_what_onshore_never_supplies() -> None:
    assert "entity Site" in schema_text() and "jurisdiction: String" in schema_text()
    bad = workspace_cedar("JP") + ('@id("x")\nforbid (principal, action, resource)\n'
                                   '  when { context.site.country == "JP" };\n')
    assert validation_errors(bad)
    with pytest.raises(OnshoreError, match="do not validate"):
        PolicyDecisionPoint(bad, SITES)
    with pytest.raises(OnshoreError, match="do not validate"):
        PolicyDecisionPoint(workspace_cedar(None) + 'permit (principal is Onshore::Robot, action, resource);\n', SITES)


@settings(max_examples=30, deadline=None)
@given(jur=st.lists(st.sampled_from(["JP", "US", "DE", "SG"]), min_size=1, max_size=3, unique=True),
       sites=st.lists(st.sampled_from(["sakai", "ohio"]), max_size=2, unique=True),
       purposes=st.lists(st.sampled_from(["fine-tuning", "x", "predictive-maintenance"]), min_size=1, unique=True),
       clause=st.sampled_from(["keep", "stop-serving", "retrain-by:2030-01-01"]),
       withdrawn=st.booleans(), rule=st.sampled_from([None, "JP", "US"]))
def test_every_compiled_policy_set_validates(jur: list[str], sites: list[str], purposes: list[str], clause: str,
                                             withdrawn: bool, rule: str | None) -> None:
    policy = UsagePolicy(tuple(jur), tuple(sites), tuple(purposes), dt.date(2031, 1, 1), clause)
    text = workspace_cedar(rule) + dataset_cedar("d-1", "m", policy, withdrawn) + dataset_cedar("e", "n", policy, False)
    assert validation_errors(text) == []
    PolicyDecisionPoint(text, SITES)


def test_bundle_carries_the_datasets_cedar_and_a_hash_an_auditor_recomputes(attested: Attested) -> None:  # noqa: F811
    doc = attested.doc()
    claim = claim_from_json(statement_of(doc)["predicate"])
    policy = UsagePolicy.from_json(claim.policy)
    assert claim.cedar == dataset_cedar(claim.dataset, claim.owner, policy, withdrawn=False)
    assert claim.cedar_hash == hashlib.sha256(claim.cedar.encode()).hexdigest()
    leaves = {e["index"]: parse_leaf(base64.b64decode(e["leaf"])) for e in doc["entries"]}
    assert leaves[claim.consent_index].body["cedar_hash"] == claim.cedar_hash
    decisions = [leaves[d.index] for d in claim.decisions]
    assert decisions and all(d.body["dataset_policy_hash"] == claim.cedar_hash for d in decisions)


def test_bundle_with_other_cedar_fails(attested: Attested) -> None:  # noqa: F811
    key = site_key(attested, "sakai")

    def loosen(st_: dict) -> None:  # type: ignore[type-arg]
        st_["predicate"]["cedar"] = st_["predicate"]["cedar"].replace('["JP"]', '["JP", "US"]')
        st_["predicate"]["cedarHash"] = cedar_hash(st_["predicate"]["cedar"])

    failing(verify_bundle(resign(attested.doc(), key, "site:sakai", loosen), attested.trust),
            "claim matches ledger", "not what the claimed policy compiles to", "cedar_hash")

    def bad_hash(st_: dict) -> None:  # type: ignore[type-arg]
        st_["predicate"]["cedarHash"] = "0" * 64

    failing(verify_bundle(resign(attested.doc(), key, "site:sakai", bad_hash), attested.trust),
            "claim matches ledger", "cedarHash is not the SHA-256")


def test_policy_redistribution_defaults_to_false(tmp_path: Path) -> None:
    from onshore.residency.policy import parse_policy

    base = 'jurisdictions = ["JP"]\npurposes = ["x"]\nexpires = 2031-01-01\n'
    assert parse_policy(base).redistribution is False
    assert parse_policy(base + "redistribution = true\n").redistribution is True
    assert parse_policy(base).to_json()["redistribution"] is False
    with pytest.raises(OnshoreError, match="redistribution"):
        parse_policy(base + 'redistribution = "yes"\n')
