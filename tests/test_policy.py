"""Usage policies: parsing, Cedar compilation, and the decision point's guarantees."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onshore.errors import ValidationError
from onshore.residency.pdp import DEFAULT_DENY, PolicyDecisionPoint, Request, SiteFacts
from onshore.residency.policy import (
    SITED_ACTIONS,
    UsagePolicy,
    dataset_cedar,
    parse_policy,
    workspace_cedar,
)

GOOD = 'jurisdictions = ["JP"]\npurposes = ["fine-tuning"]\nexpires = 2031-03-31\n'


@pytest.mark.parametrize("text,field", [
    ('purposes = ["x"]\nexpires = 2031-01-01\n', "'jurisdictions' is required"),
    ('jurisdictions = ["JPN"]\npurposes = ["x"]\nexpires = 2031-01-01\n', "'JPN' is not an ISO 3166-1"),
    ('jurisdictions = ["jp"]\npurposes = ["x"]\nexpires = 2031-01-01\n', "did you mean 'JP'"),
    ('jurisdictions = []\npurposes = ["x"]\nexpires = 2031-01-01\n', "'jurisdictions' must name at least one"),
    ('jurisdictions = ["JP"]\npurposes = ["Ads Ads"]\nexpires = 2031-01-01\n', "'purposes' has a bad entry"),
    ('jurisdictions = ["JP"]\npurposes = ["x"]\nexpires = "soon"\n', "'expires' must be a TOML date"),
    (GOOD + 'derived_models = "delete"\n', "'derived_models' is 'delete'"),
    (GOOD + 'derived_models = "retrain-by:2031-13-01"\n', "'derived_models' is"),
    (GOOD + 'sites = ["../etc"]\n', "'sites' has a bad entry"),
    (GOOD + 'colour = "red"\n', "unknown field(s) ['colour']"),
    ("jurisdictions = [", "not valid TOML"),
])
def test_bad_policies_are_refused_naming_the_field(text: str, field: str) -> None:
    with pytest.raises(ValidationError) as err:
        parse_policy(text, "p.toml")
    assert "p.toml" in str(err.value) and field in str(err.value)


def test_policy_parses_and_hashes_canonically() -> None:
    p = parse_policy(GOOD + 'derived_models = "retrain-by:2030-01-01"\n')
    assert p.retrain_by == dt.date(2030, 1, 1)
    same = parse_policy('expires = 2031-03-31\npurposes = ["fine-tuning"]\njurisdictions = ["JP"]\n'
                        'derived_models = "retrain-by:2030-01-01"\n')
    assert p.hash == same.hash


SITES = [SiteFacts("sakai", "JP", ("compute", "storage")), SiteFacts("tokyo", "JP", ("storage",)),
         SiteFacts("ohio", "US", ("compute", "storage")), SiteFacts("berlin", "DE", ("compute", "serve", "storage"))]


def _pdp(policy: UsagePolicy, rule: str | None = None, withdrawn: bool = False) -> PolicyDecisionPoint:
    return PolicyDecisionPoint(workspace_cedar(rule) + dataset_cedar("d", "owner", policy, withdrawn), SITES)


def test_each_clause_names_itself_when_it_refuses() -> None:
    p = parse_policy(GOOD)
    pdp = _pdp(p)
    today = dt.date(2026, 1, 1)
    assert pdp.decide(Request("site:sakai", "read", "d", "sakai", today=today)).allowed
    cases = {
        Request("site:ohio", "copy", "d", "ohio", today=today): "dataset/d/jurisdictions",
        Request("site:sakai", "train", "d", "sakai", "ads", today=today): "dataset/d/purposes",
        Request("site:sakai", "train", "d", "sakai", today=today): "dataset/d/purpose-required",
        Request("site:sakai", "read", "d", "sakai", today=dt.date(2031, 4, 1)): "dataset/d/expiry",
        Request("site:tokyo", "train", "d", "tokyo", "fine-tuning", today=today): "workspace/role-compute",
        Request("site:sakai", "read", "d", "tokyo", today=today): "workspace/site-acts-for-itself",
    }
    for req, rule in cases.items():
        d = pdp.decide(req)
        assert not d.allowed and rule in d.rules, (req, d.rules)
    # the last day of the policy is still inside it
    assert pdp.decide(Request("site:sakai", "read", "d", "sakai", today=dt.date(2031, 3, 31))).allowed
    # a member that does not own the dataset has no permit at all
    d = pdp.decide(Request("member:other", "withdraw", "d"))
    assert not d.allowed and d.rules == (DEFAULT_DENY,)
    assert pdp.decide(Request("member:owner", "withdraw", "d")).allowed


def test_decisions_are_cached_and_identical() -> None:
    pdp = _pdp(parse_policy(GOOD))
    r = Request("site:sakai", "read", "d", "sakai", today=dt.date(2026, 1, 1))
    assert pdp.decide(r) is pdp.decide(r)
    assert pdp.decide(r) == PolicyDecisionPoint(pdp.policy_text, SITES).decide(r)


CODES = ["JP", "US", "DE"]
policies = st.builds(
    lambda jur, sites, purposes, expires: UsagePolicy(
        tuple(jur), tuple(sites), tuple(purposes), expires, "keep"),
    st.lists(st.sampled_from(CODES), min_size=1, max_size=3, unique=True),
    st.lists(st.sampled_from([s.name for s in SITES]), max_size=3, unique=True),
    st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3, unique=True),
    st.dates(dt.date(2020, 1, 1), dt.date(2035, 1, 1)),
)
requests = st.builds(
    lambda principal, action, site, purpose, today: Request(principal, action, "d", site, purpose, today),
    st.sampled_from(["site:sakai", "site:tokyo", "site:ohio", "site:berlin", "member:owner", "member:other"]),
    st.sampled_from(list(SITED_ACTIONS)),
    st.sampled_from([s.name for s in SITES]),
    st.sampled_from([None, "a", "b", "c", "z"]),
    st.dates(dt.date(2020, 1, 1), dt.date(2035, 1, 1)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy=policies, request=requests, rule=st.sampled_from([None, "JP", "US"]),
       withdrawn=st.booleans())
def test_no_policy_ever_allows_data_outside_its_jurisdictions(policy: UsagePolicy, request: Request,
                                                              rule: str | None, withdrawn: bool) -> None:
    d = _pdp(policy, rule, withdrawn).decide(request)
    if d.allowed:
        site = next(s for s in SITES if s.name == request.site)
        assert site.jurisdiction in policy.jurisdictions
        assert not policy.sites or site.name in policy.sites
        assert rule is None or site.jurisdiction == rule
        assert request.today <= policy.expires
        assert not withdrawn
        assert request.purpose is None or request.purpose in policy.purposes
