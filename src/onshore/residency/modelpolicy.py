"""A model's policy: what the datasets of its lineage allow, together, compiled to Cedar.

A model is derived data. Every dataset it was trained on (directly, or through the model it was
fine-tuned from) keeps its say over it:

- the **effective policy** is the intersection of the lineage's jurisdictions, sites and
  purposes, the earliest expiry, and the strictest derived-model clause (``stop-serving`` over
  ``retrain-by:`` (the earliest date) over ``keep``); ``onshore model show`` prints it;
- the **Cedar** of a model repeats each lineage dataset's clauses against the model, each with
  its own ``@id("model/MODEL/dataset/DATASET/CLAUSE")``: together they decide exactly the
  intersection, and a refusal names the dataset rule that refused;
- a lineage dataset whose consent was **withdrawn** adds its derived-model clause: ``keep`` adds
  nothing (the model is ``tainted``, still usable), ``stop-serving`` forbids ``serve`` and
  ``export``, ``retrain-by:DATE`` forbids every action after DATE.

Pure functions over the lineage; the workspace reads the lineage from the catalog and withdrawals
from the signed ledger.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from onshore.residency.policy import ACTIONS, UsagePolicy, action_list, day_number, usage_clauses

#: Actions on a model: every data-plane action but ingest and withdraw (a model is released by training).
MODEL_ACTIONS = tuple(a for a in ACTIONS if a not in ("ingest", "withdraw"))
STOP_SERVING_ACTIONS = ("serve", "export")

OK, TAINTED, MUST_RETRAIN, BLOCKED = "ok", "tainted", "must-retrain-by", "blocked"


@dataclass(frozen=True)
class LineageDataset:
    """A dataset in a model's lineage, with its policy and its withdrawal (ledger index) if any."""

    name: str
    owner: str
    policy: UsagePolicy
    withdrawn_index: int | None = None

    @property
    def withdrawn(self) -> bool:
        return self.withdrawn_index is not None


@dataclass(frozen=True)
class EffectivePolicy:
    """The intersection of a lineage's policies. ``sites`` None: any site in the jurisdictions."""

    jurisdictions: tuple[str, ...]
    sites: tuple[str, ...] | None
    purposes: tuple[str, ...]
    expires: dt.date
    derived_models: str
    datasets: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"jurisdictions": list(self.jurisdictions), "sites": None if self.sites is None else list(self.sites),
                "purposes": list(self.purposes), "expires": self.expires.isoformat(),
                "derived_models": self.derived_models, "datasets": list(self.datasets)}


def _strictness(clause: str) -> tuple[int, int]:
    # higher is stricter; among retrain-by dates the earliest is strictest
    if clause == "stop-serving":
        return (2, 0)
    if clause.startswith("retrain-by:"):
        return (1, -day_number(dt.date.fromisoformat(clause.split(":", 1)[1])))
    return (0, 0)


def strictest_clause(clauses: list[str]) -> str:
    """The strictest derived-model clause: stop-serving > retrain-by (earliest) > keep."""
    return max(clauses, key=_strictness) if clauses else "keep"


def effective_policy(lineage: list[LineageDataset]) -> EffectivePolicy:
    """The intersection of the lineage's policies (see the module docstring). Needs one dataset."""
    if not lineage:
        raise ValueError("a model's lineage names at least one dataset")
    jur = [j for j in lineage[0].policy.jurisdictions if all(j in d.policy.jurisdictions for d in lineage)]
    purposes = [p for p in lineage[0].policy.purposes if all(p in d.policy.purposes for d in lineage)]
    site_lists = [set(d.policy.sites) for d in lineage if d.policy.sites]
    sites = tuple(sorted(set.intersection(*site_lists))) if site_lists else None
    return EffectivePolicy(tuple(sorted(jur)), sites, tuple(sorted(purposes)),
                           min(d.policy.expires for d in lineage),
                           strictest_clause([d.policy.derived_models for d in lineage]),
                           tuple(sorted(d.name for d in lineage)))


def model_uid(model: str) -> str:
    return f'Onshore::Model::"{model}"'


def model_cedar(model: str, lineage: list[LineageDataset]) -> str:
    """The Cedar policies of one model. Names are checked, so they need no escaping.

    A permit for sites to act on the model, then every lineage dataset's clauses (in name order)
    and, for a withdrawn one, its derived-model clause.
    """
    res = model_uid(model)
    parts = [f'@id("model/{model}/grant")\npermit (principal is Onshore::Site, action in '
             f"{action_list(MODEL_ACTIONS)}, resource == {res});"]
    for d in sorted(lineage, key=lambda x: x.name):
        rule = f"model/{model}/dataset/{d.name}"
        parts += usage_clauses(rule, res, d.policy)
        if not d.withdrawn:
            continue
        clause = d.policy.derived_models
        if clause == "stop-serving":
            parts.append(f'@id("{rule}/withdrawn-stop-serving")\nforbid (principal, action in '
                         f"{action_list(STOP_SERVING_ACTIONS)}, resource == {res});")
        elif d.policy.retrain_by is not None:
            parts.append(f'@id("{rule}/withdrawn-retrain-by")\nforbid (principal, action, resource == {res})\n'
                         f"  when {{ context.today > {day_number(d.policy.retrain_by)} }};")
    return "\n".join(parts) + "\n"


@dataclass(frozen=True)
class ModelStatus:
    """``status``: ok | tainted | must-retrain-by | blocked; ``until`` the retrain date; ``reasons`` why."""

    status: str
    until: dt.date | None
    reasons: tuple[str, ...]

    def label(self) -> str:
        return f"{self.status} {self.until.isoformat()}" if self.status == MUST_RETRAIN and self.until else self.status

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "label": self.label(),
                "until": self.until.isoformat() if self.until else None, "reasons": list(self.reasons)}


def model_status(lineage: list[LineageDataset], today: dt.date) -> ModelStatus:
    """What the lineage's withdrawals and expiries mean for the model on ``today`` (worst wins).

    ``blocked``: a withdrawn dataset says stop-serving (serve and export refused), a retrain-by
    date has passed, the effective policy has expired, or its jurisdictions do not meet.
    ``must-retrain-by DATE``: a withdrawn dataset says retrain-by a date still ahead (the earliest
    is shown). ``tainted``: withdrawn datasets all say keep. ``ok``: nothing of the above.
    """
    eff = effective_policy(lineage)
    reasons: list[str] = []
    rank, until = 0, None
    for d in sorted(lineage, key=lambda x: x.name):
        if not d.withdrawn:
            continue
        clause, date = d.policy.derived_models, d.policy.retrain_by
        where = f"dataset {d.name!r} of {d.owner} withdrawn (ledger entry {d.withdrawn_index})"
        if clause == "stop-serving":
            rank = max(rank, 3)
            reasons.append(f"{where}: stop-serving (serve and export refused)")
        elif date is not None and today > date:
            rank = max(rank, 3)
            reasons.append(f"{where}: retrain-by {date.isoformat()} has passed (every use refused)")
        elif date is not None:
            rank = max(rank, 2)
            until = date if until is None else min(until, date)
            reasons.append(f"{where}: retrain-by {date.isoformat()} (usable until then)")
        else:
            rank = max(rank, 1)
            reasons.append(f"{where}: keep (recorded, still usable)")
    if today > eff.expires:
        rank = 3
        reasons.append(f"the effective policy expired on {eff.expires.isoformat()}")
    if not eff.jurisdictions or not eff.purposes or eff.sites == ():
        rank = 3
        reasons.append("the lineage's policies share no jurisdiction, site or purpose")
    status = {0: OK, 1: TAINTED, 2: MUST_RETRAIN, 3: BLOCKED}[rank]
    return ModelStatus(status, until if status == MUST_RETRAIN else None, tuple(reasons))
