"""What the catalog says about datasets: the list, one dataset's record, the shards placed at sites.

Bookkeeping only, no frame is read: nothing of Arrow or NumPy is imported here, so that
``onshore dataset list`` and ``dataset show`` start in a fraction of a second (issue 22).
``onshore.workspace.datasets`` (ingest, copy, read, withdraw) uses these and offers them under
the same names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select

from onshore.catalog import schema as T
from onshore.residency.policy import parse_policy
from onshore.workspace.registry import get_site
from onshore.workspace.workspace import Workspace


def shards_at(ws: Workspace, name: str, site: str | None = None) -> list[dict[str, Any]]:
    """The catalog rows of ``name``'s shards (at ``site`` when given), in the order they were placed."""
    q = select(T.shards).where(T.shards.c.dataset == name)
    if site is not None:
        q = q.where(T.shards.c.site == site)
    with ws.catalog.connect() as conn:
        return [dict(r) for r in conn.execute(q.order_by(T.shards.c.id)).mappings()]


def list_datasets(ws: Workspace) -> list[dict[str, Any]]:
    """Every dataset (name, owner, embodiment, status, size, policy hash) with the sites holding shards of it."""
    with ws.catalog.connect() as conn:
        rows = conn.execute(select(T.datasets.c.name, T.datasets.c.owner, T.datasets.c.embodiment,
                                   T.datasets.c.status, T.datasets.c.episodes, T.datasets.c.frames,
                                   T.datasets.c.policy_hash, T.datasets.c.created_at)
                            .order_by(T.datasets.c.name)).mappings().all()
        placed = conn.execute(select(T.shards.c.dataset, T.shards.c.site).distinct()).all()
    sites: dict[str, list[str]] = {}
    for d, s in placed:
        sites.setdefault(d, []).append(s)
    return [{**dict(r), "sites": sorted(sites.get(r["name"], []))} for r in rows]


def show(ws: Workspace, name: str) -> dict[str, Any]:
    """Everything about a dataset: owner, policy, and where every shard sits.

    Refused (NotFoundError): an unknown dataset."""
    row = ws.row("dataset", name)
    policy = parse_policy(row["policy"], f"dataset {name} policy")
    with ws.catalog.connect() as conn:
        wraps = [r[0] for r in conn.execute(select(T.key_wraps.c.site).where(T.key_wraps.c.dataset == name))]
    shards = []
    for s in shards_at(ws, name):
        site = get_site(ws, s["site"])
        shards.append({"sha256": s["sha256"], "site": s["site"], "jurisdiction": site.jurisdiction,
                       "path": str(Path(site.root) / s["path"]), "bytes": s["bytes"], "frames": s["frames"]})
    return {
        "name": name, "owner": row["owner"], "embodiment": row["embodiment"], "status": row["status"],
        "episodes": row["episodes"], "frames": row["frames"], "created_at": row["created_at"],
        "withdrawn_at": row["withdrawn_at"], "policy": policy.to_json(), "policy_hash": row["policy_hash"],
        "key_held_at": sorted(wraps), "shards": shards,
    }
