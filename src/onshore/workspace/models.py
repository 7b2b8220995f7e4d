"""Models in the catalog and the ledger: release, lineage, listing, and where a model may be used.

A model's lineage is: the model -> the datasets it was trained on (with the exact shard digests
read) -> their owners (members) -> the site it was trained at; a fine-tuned model adds its base
model's lineage. Using a model at a site (evaluation now, serving later) is decided like a read
of derived data: every dataset of the lineage must allow ``read`` at that site for the purpose
its data was granted for in that training (the model's purpose, or its ancestor's). Issue-level
note: encryption of model files and a model policy compiled to Cedar come later; this module is
where they plug in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select

from onshore.catalog import schema as T
from onshore.catalog.db import write_transaction
from onshore.errors import NotFoundError, PolicyDenied, ValidationError
from onshore.ledger.entries import now_iso
from onshore.names import check_name
from onshore.residency.pdp import Request
from onshore.workspace.registry import get_site
from onshore.workspace.workspace import Workspace


@dataclass
class ModelRelease:
    """What a finished training job registers."""

    name: str
    site: str
    purpose: str
    size: str
    config: dict[str, Any]
    folder: str  # relative to the site root
    files: dict[str, str]
    parameters: int
    steps: int
    world_size: int
    metrics: dict[str, Any]
    datasets: list[dict[str, Any]]  # name, owner, embodiment, weight, shards, decision_index
    base: str | None = None
    job: dict[str, Any] = field(default_factory=dict)


def ensure_tables(ws: Workspace) -> None:
    """Create the model tables in a catalog made before they existed (idempotent)."""
    if not getattr(ws, "_model_tables", False):
        T.metadata.create_all(ws.catalog, tables=[T.models, T.model_datasets])
        ws._model_tables = True  # type: ignore[attr-defined]


def check_new_name(ws: Workspace, name: str) -> None:
    """Refuse a bad model name or one already taken."""
    check_name(name, "model")
    ensure_tables(ws)
    with ws.catalog.connect() as conn:
        if conn.execute(select(T.models.c.name).where(T.models.c.name == name)).first():
            raise ValidationError(f"model {name!r} already exists; choose a new --name (see 'onshore model list')")


def release(ws: Workspace, r: ModelRelease) -> int:
    """Record a finished model: catalog rows and a ``model.release`` ledger entry signed by the site."""
    ensure_tables(ws)
    with write_transaction(ws.catalog, "the catalog") as conn:
        # checked again in the write turn: two runs with the same --name race to here
        if conn.execute(select(T.models.c.name).where(T.models.c.name == r.name)).first():
            raise ValidationError(f"model {r.name!r} already exists; choose a new --name (see 'onshore model list')")
        idx = ws.record("model.release", f"site:{r.site}", {
            "model": r.name, "site": r.site, "jurisdiction": get_site(ws, r.site).jurisdiction,
            "purpose": r.purpose, "base": r.base, "size": r.size, "files": r.files, "steps": r.steps,
            "world_size": r.world_size, "parameters": r.parameters, "job": r.job,
            "datasets": [{k: d[k] for k in ("name", "owner", "shards", "decision_index")} for d in r.datasets]})
        conn.execute(insert(T.models).values(
            name=r.name, site=r.site, purpose=r.purpose, base=r.base, size=r.size, config=json.dumps(r.config),
            folder=r.folder, files=json.dumps(r.files), parameters=r.parameters, steps=r.steps,
            world_size=r.world_size, metrics=json.dumps(r.metrics), created_at=now_iso(), ledger_index=idx))
        conn.execute(insert(T.model_datasets), [
            {"model": r.name, "dataset": d["name"], "owner": d["owner"], "embodiment": d["embodiment"],
             "weight": str(d["weight"]), "shards": json.dumps(d["shards"]), "decision_index": d["decision_index"]}
            for d in r.datasets])
    return idx


def get_model(ws: Workspace, name: str) -> dict[str, Any]:
    """The catalog row of model ``name`` (JSON fields decoded), or NotFoundError."""
    ensure_tables(ws)
    with ws.catalog.connect() as conn:
        row = conn.execute(select(T.models).where(T.models.c.name == name)).mappings().first()
    if row is None:
        raise NotFoundError(f"no model named {name!r}; see 'onshore model list'")
    out = dict(row)
    for k in ("config", "files", "metrics"):
        out[k] = json.loads(out[k])
    return out


def model_folder(ws: Workspace, row: dict[str, Any]) -> Path:
    return Path(get_site(ws, row["site"]).root) / row["folder"]


def _datasets_of(ws: Workspace, name: str) -> list[dict[str, Any]]:
    with ws.catalog.connect() as conn:
        rows = conn.execute(select(T.model_datasets).where(T.model_datasets.c.model == name)
                            .order_by(T.model_datasets.c.dataset)).mappings().all()
    return [{**dict(r), "shards": json.loads(r["shards"])} for r in rows]


def lineage(ws: Workspace, name: str) -> list[dict[str, Any]]:
    """The model and its ancestors, newest first: name, site, purpose and datasets of each."""
    out, seen = [], set()
    current: str | None = name
    while current is not None and current not in seen:
        seen.add(current)
        row = get_model(ws, current)
        site = get_site(ws, row["site"])
        out.append({"model": current, "site": row["site"], "jurisdiction": site.jurisdiction,
                    "purpose": row["purpose"], "created_at": row["created_at"],
                    "datasets": _datasets_of(ws, current)})
        current = row["base"]
    return out


def derived_from(ws: Workspace, dataset: str) -> list[dict[str, Any]]:
    """Every model trained on ``dataset``, directly or through the models it was fine-tuned from."""
    ensure_tables(ws)
    with ws.catalog.connect() as conn:
        direct = [r[0] for r in conn.execute(select(T.model_datasets.c.model)
                                             .where(T.model_datasets.c.dataset == dataset))]
        bases = {n: b for n, b in conn.execute(select(T.models.c.name, T.models.c.base))}
        sites = {n: s for n, s in conn.execute(select(T.models.c.name, T.models.c.site))}
    found: dict[str, str] = {m: "trained on it" for m in direct}
    changed = True
    while changed:
        changed = False
        for model, base in bases.items():
            if base in found and model not in found:
                found[model] = f"fine-tuned from {base}"
                changed = True
    return [{"model": m, "site": sites[m], "via": how} for m, how in sorted(found.items())]


def authorize_use(ws: Workspace, name: str, site: str) -> dict[str, Any]:
    """Decide whether model ``name`` may be loaded at ``site``; returns its row, or raises PolicyDenied.

    Every dataset in its lineage is decided as ``read`` at ``site`` for the purpose it was trained
    for (each decision recorded); any refusal names the dataset and rule. An allowed use is
    recorded as ``model.use`` signed by the site, citing the decisions.
    """
    row = get_model(ws, name)
    get_site(ws, site)
    decisions, refused, rules = [], [], set()
    for level in lineage(ws, name):
        for d in level["datasets"]:
            decision, idx = ws.decide(Request(f"site:{site}", "read", d["dataset"], site, level["purpose"]))
            decisions.append(idx)
            if not decision.allowed:
                refused.append(f"dataset {d['dataset']!r} (via model {level['model']}): rule(s) "
                               f"{', '.join(decision.rules)} (ledger entry {idx})")
                rules.update(decision.rules)
    if refused:
        raise PolicyDenied(f"refused: model {name!r} may not be used at site {site!r}: " + "; ".join(refused),
                           sorted(rules))
    ws.record("model.use", f"site:{site}", {"model": name, "site": site, "files": row["files"],
                                            "decision_indices": decisions})
    return row


def list_models(ws: Workspace) -> list[dict[str, Any]]:
    ensure_tables(ws)
    with ws.catalog.connect() as conn:
        rows = conn.execute(select(T.models.c.name, T.models.c.site, T.models.c.purpose, T.models.c.base,
                                   T.models.c.size, T.models.c.parameters, T.models.c.steps,
                                   T.models.c.world_size, T.models.c.created_at)
                            .order_by(T.models.c.name)).mappings().all()
        used = conn.execute(select(T.model_datasets.c.model, T.model_datasets.c.dataset)).all()
    by_model: dict[str, list[str]] = {}
    for m, d in used:
        by_model.setdefault(m, []).append(d)
    return [{**dict(r), "datasets": sorted(by_model.get(r["name"], []))} for r in rows]


def show_model(ws: Workspace, name: str) -> dict[str, Any]:
    """Everything about a model: size, metrics, where its files sit, and its lineage."""
    row = get_model(ws, name)
    folder = model_folder(ws, row)
    site = get_site(ws, row["site"])
    members = sorted({d["owner"] for level in lineage(ws, name) for d in level["datasets"]})
    return {
        "name": name, "site": row["site"], "jurisdiction": site.jurisdiction, "purpose": row["purpose"],
        "base": row["base"], "size": row["size"], "parameters": row["parameters"], "steps": row["steps"],
        "world_size": row["world_size"], "created_at": row["created_at"], "metrics": row["metrics"],
        "config": row["config"], "files": {n: {"sha256": h, "path": str(folder / n)} for n, h in row["files"].items()},
        "ledger_index": row["ledger_index"], "members": members, "lineage": lineage(ws, name),
    }


def policy_factory(ws: Workspace, name: str, site: str, embodiment: str):  # type: ignore[no-untyped-def]
    """A picklable factory of the model acting for ``embodiment``, after ``authorize_use`` at ``site``.

    Refuses (before any decision) a model that was never trained on that embodiment.
    """
    from onshore.model.policy import ModelPolicyFactory  # torch only when a model is used

    known = {d["embodiment"] for level in lineage(ws, name) for d in level["datasets"]}
    if embodiment not in known:
        raise ValidationError(f"model {name!r} knows embodiment(s) {', '.join(sorted(known))}, not {embodiment!r}; "
                              "fine-tune it on data of that machine first ('onshore finetune')")
    row = authorize_use(ws, name, site)
    return ModelPolicyFactory(str(model_folder(ws, row)), tuple(sorted(row["files"].items())), embodiment,
                              label=f"model:{name}")
