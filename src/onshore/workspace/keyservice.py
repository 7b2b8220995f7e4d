"""A site's key service: the only way a dataset's data key is wrapped for, or released at, a site.

Release is tied to an allow decision already made by the policy decision point and recorded in
the ledger; the release itself is recorded too, signed by the site, citing that decision.
"""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import delete, insert, select, update

from onshore.catalog import schema as T
from onshore.errors import OnshoreError, PolicyDenied
from onshore.keys.envelope import unwrap_key, wrap_key
from onshore.ledger.entries import now_iso
from onshore.residency.pdp import Decision
from onshore.workspace.workspace import Workspace


def _context(dataset: str, site: str) -> bytes:
    return f"onshore-dataset-key:v1:{dataset}:{site}".encode()


def wrap_for_site(ws: Workspace, conn: Any, dataset: str, site: str, data_key: bytes) -> None:
    """Store ``data_key`` wrapped under ``site``'s KEK, inside the caller's catalog transaction.

    Callers only do this after an allow decision for placing the dataset at ``site``.
    """
    wrapped = wrap_key(ws.keystore(f"site:{site}").kek(), data_key, _context(dataset, site))
    conn.execute(insert(T.key_wraps).values(dataset=dataset, site=site, wrapped=wrapped, created_at=now_iso()))


def release(ws: Workspace, dataset: str, site: str, decision: Decision, decision_index: int) -> bytes:
    """Unwrap the dataset key at ``site`` for the allowed ``decision``; records a key.release entry.

    Refuses a deny decision, a decision about another dataset, and a site that holds no wrap
    (the policy never allowed the data there, or the dataset was withdrawn).
    """
    if not decision.allowed or decision.request.dataset != dataset:
        raise PolicyDenied(f"key release for {dataset!r} at {site!r} needs an allow decision for that dataset",
                           list(decision.rules))
    with ws.catalog.connect() as conn:
        row = conn.execute(select(T.key_wraps.c.wrapped).where(
            T.key_wraps.c.dataset == dataset, T.key_wraps.c.site == site)).first()
    if row is None:
        raise OnshoreError(
            f"site {site!r} holds no key for dataset {dataset!r}: it was never placed there "
            "(copy it there first, if its policy allows) or its keys were destroyed on withdrawal"
        )
    key = unwrap_key(ws.keystore(f"site:{site}").kek(), bytes(row[0]), _context(dataset, site))
    ws.record("key.release", f"site:{site}", {
        "dataset": dataset, "site": site, "action": decision.request.action,
        "purpose": decision.request.purpose, "decision_index": decision_index,
        "policy_hash": decision.policy_hash,
    })
    return key


def shred(ws: Workspace, conn: Any, dataset: str) -> list[str]:
    """Destroy every wrap of the dataset key (inside the caller's transaction); returns the sites.

    The wrapped bytes are overwritten before the rows are deleted so that the old value is not
    left in the database page in place.
    """
    sites = [r[0] for r in conn.execute(select(T.key_wraps.c.site).where(T.key_wraps.c.dataset == dataset))]
    for site in sites:
        conn.execute(update(T.key_wraps).where(T.key_wraps.c.dataset == dataset, T.key_wraps.c.site == site)
                     .values(wrapped=os.urandom(60)))
    conn.execute(delete(T.key_wraps).where(T.key_wraps.c.dataset == dataset))
    return sites
