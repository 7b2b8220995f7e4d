"""The policy decision point: Cedar decides every data-plane action.

Policies and entities are parsed once into cedarpy handles when the PDP is built; the workspace
builds a new PDP whenever sites, datasets or rules change. Decisions are memoised per request on
top of that: a Cedar decision is a pure function of (policy set, entities, request), and the PDP
object is immutable, so a cached answer is exactly the answer Cedar would give again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from onshore.errors import OnshoreError
from onshore.i18n import N_, Message
from onshore.names import check_name, check_resource_name, parse_principal
from onshore.residency.policy import ACTIONS, day_number
from onshore.residency.schema import validate_policy_set

DEFAULT_DENY = "default-deny (no permit policy matched)"


def _cedar() -> Any:
    """cedarpy, imported on first decision: listing sites or entries needs no policy engine."""
    import cedarpy

    return cedarpy


@dataclass(frozen=True)
class Request:
    """Who (``principal``: "site:NAME" or "member:NAME") does ``action`` to ``dataset`` at ``site``.

    ``resource`` says what ``dataset`` names: a dataset (the default) or a model (``"model"``,
    made with :func:`model_request`); a model request's JSON says ``"model"`` instead of
    ``"dataset"``, so no reader of dataset decisions mistakes one for the other.
    """

    principal: str
    action: str
    dataset: str
    site: str | None = None
    purpose: str | None = None
    today: dt.date = field(default_factory=lambda: dt.datetime.now(dt.UTC).date())
    resource: str = "dataset"

    @property
    def hash_key(self) -> str:
        """The key of this resource's own Cedar hash in the decision point (models: ``model:NAME``)."""
        return self.dataset if self.resource == "dataset" else f"model:{self.dataset}"

    def to_json(self) -> dict[str, Any]:
        return {
            "principal": self.principal,
            "action": self.action,
            self.resource: self.dataset,
            "site": self.site,
            "purpose": self.purpose,
            "today": self.today.isoformat(),
        }


def model_request(principal: str, action: str, model: str, site: str | None = None,
                  purpose: str | None = None) -> Request:
    """A request about model ``model`` (decided by the model's Cedar, compiled from its lineage)."""
    return Request(principal, action, model, site, purpose, resource="model")


@dataclass(frozen=True)
class Decision:
    request: Request
    allowed: bool
    rules: tuple[str, ...]  # @id of each deciding policy (forbids on deny, permits on allow)
    policy_hash: str        # SHA-256 of the whole Cedar policy set in force
    site_jurisdiction: str | None = None
    # SHA-256 of the dataset's (or model's) own Cedar policies in that set (policy.cedar_hash), or None
    dataset_policy_hash: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "request": self.request.to_json(),
            "decision": "allow" if self.allowed else "deny",
            "rules": list(self.rules),
            "policy_hash": self.policy_hash,
            "dataset_policy_hash": self.dataset_policy_hash,
            "site_jurisdiction": self.site_jurisdiction,
        }


@dataclass(frozen=True)
class SiteFacts:
    name: str
    jurisdiction: str
    roles: tuple[str, ...]


_RESOURCE_TYPES = {"dataset": "Onshore::Dataset", "model": "Onshore::Model"}


def _uid(principal: str) -> dict[str, str]:
    kind, name = parse_principal(principal)
    return {"type": {"site": "Onshore::Site", "member": "Onshore::Member"}[kind], "id": name}


def check_request(request: Request) -> None:
    """Refuse a request whose principal, dataset, site or purpose is not a valid name.

    Every request is checked before Cedar sees it, so that no id reaching the policy engine or the
    ledger can carry a path, a quote or a control character.
    """
    parse_principal(request.principal)
    if request.resource not in _RESOURCE_TYPES:
        raise OnshoreError(Message(N_("unknown resource kind {resource!r}; use dataset or model"),
                                  {"resource": request.resource}))
    check_resource_name(request.dataset, request.resource)
    if request.site is not None:
        check_name(request.site, "site")
    if request.purpose is not None:
        check_name(request.purpose, "purpose")


class PolicyDecisionPoint:
    """Decides requests against one fixed policy set and site registry."""

    def __init__(self, policy_text: str, sites: list[SiteFacts], cache_size: int = 65536,
                 dataset_hashes: dict[str, str] | None = None) -> None:
        """``dataset_hashes``: each dataset's own Cedar hash, recorded with decisions about it.

        Refuses (OnshoreError, a compiler bug) policy text that does not parse or does not
        validate against the shipped Cedar schema.
        """
        self.policy_text = policy_text
        self.policy_hash = hashlib.sha256(policy_text.encode()).hexdigest()
        self._dataset_hashes = dict(dataset_hashes or {})
        try:
            self._policies = _cedar().PolicySet.from_str(policy_text)
        except ValueError as e:  # only reachable through a bug in the compiler
            raise OnshoreError(f"internal error: compiled Cedar policies do not parse: {e}") from None
        validate_policy_set(policy_text)
        self._sites = {s.name: s for s in sites}
        entities = [
            {"uid": {"type": "Onshore::Site", "id": s.name},
             "attrs": {"jurisdiction": s.jurisdiction, "roles": list(s.roles)}, "parents": []}
            for s in sites
        ]
        self._entities = _cedar().Entities.from_json_str(json.dumps(entities))
        self._cache: dict[Request, Decision] = {}
        self._cache_size = cache_size

    def decide(self, request: Request) -> Decision:
        """Allow or deny, with the deciding policy ids. Never records anything."""
        hit = self._cache.get(request)
        if hit is not None:
            return hit
        if request.action not in ACTIONS:
            raise OnshoreError(Message(N_("unknown action {action!r}; use one of {actions}"),
                                      {"action": request.action, "actions": ", ".join(ACTIONS)}))
        check_request(request)
        context: dict[str, Any] = {"today": day_number(request.today)}
        site = None
        if request.site is not None:
            site = self._sites.get(request.site)
            if site is None:
                raise OnshoreError(Message(N_("unknown site {site!r}; see 'onshore site list'"),
                                           {"site": request.site}))
            context["site"] = {"__entity": {"type": "Onshore::Site", "id": site.name}}
        if request.purpose:
            context["purpose"] = request.purpose
        result = _cedar().is_authorized(
            {
                "principal": _uid(request.principal),
                "action": {"type": "Onshore::Action", "id": request.action},
                "resource": {"type": _RESOURCE_TYPES[request.resource], "id": request.dataset},
                "context": context,
            },
            self._policies,
            self._entities,
        )
        if result.diagnostics.errors:
            raise OnshoreError(f"Cedar could not evaluate {request}: {result.diagnostics.errors}")
        by_id = result.diagnostics.id_annotations_by_reason
        rules = tuple(sorted(by_id.get(r, r) for r in result.diagnostics.reasons))
        if not result.allowed and not rules:
            rules = (DEFAULT_DENY,)
        decision = Decision(request, result.allowed, rules, self.policy_hash,
                            site.jurisdiction if site else None, self._dataset_hashes.get(request.hash_key))
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[request] = decision
        return decision
