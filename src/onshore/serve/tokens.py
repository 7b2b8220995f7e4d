"""Per-client tokens for a site's policy server: issue, revoke, list, and the server's check.

A token is ``onshore_`` + 43 URL-safe characters (256 random bits). The catalog keeps only its
SHA-256 with the site and client it was issued for, so a copied catalog cannot be used to command
a machine. A server at site S accepts a token only if it was issued for S and is not revoked;
:class:`TokenTable` is the server's in-memory copy, refreshed from the catalog about once a
second, so a revocation also cuts connections that are already open.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select, update

from onshore.catalog import schema as T
from onshore.catalog.db import write_transaction
from onshore.errors import NotFoundError
from onshore.ledger.entries import now_iso
from onshore.names import check_name
from onshore.workspace.registry import get_site
from onshore.workspace.workspace import Workspace

PREFIX = "onshore_"


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def ensure_table(ws: Workspace) -> None:
    """Create the token table in a catalog made before it existed (idempotent)."""
    T.metadata.create_all(ws.catalog, tables=[T.serve_tokens])


def issue(ws: Workspace, site: str, client: str) -> str:
    """A new token for ``client`` at ``site``; returned once, stored only as its hash.

    Refused: an unknown site, a bad client name. A client may hold several tokens (rotation).
    """
    get_site(ws, site)
    check_name(client, "client")
    ensure_table(ws)
    token = PREFIX + secrets.token_urlsafe(32)
    with write_transaction(ws.catalog, "the catalog") as conn:
        conn.execute(insert(T.serve_tokens).values(site=site, client=client, token_sha256=_hash(token),
                                                   created_at=now_iso()))
    return token


def revoke(ws: Workspace, site: str, client: str) -> int:
    """Revoke every live token of ``client`` at ``site``; returns how many. Refuses a client with none."""
    get_site(ws, site)
    ensure_table(ws)
    t = T.serve_tokens
    with write_transaction(ws.catalog, "the catalog") as conn:
        n = conn.execute(update(t).where(t.c.site == site, t.c.client == client, t.c.revoked_at.is_(None))
                         .values(revoked_at=now_iso())).rowcount
    if not n:
        raise NotFoundError(f"client {client!r} holds no live token at site {site!r}; see 'onshore serve tokens'")
    return int(n)


def list_tokens(ws: Workspace, site: str | None = None) -> list[dict[str, Any]]:
    """Issued tokens (client, site, when, revoked when): never the tokens themselves."""
    ensure_table(ws)
    t = T.serve_tokens
    q = select(t.c.site, t.c.client, t.c.created_at, t.c.revoked_at).order_by(t.c.site, t.c.client, t.c.id)
    if site is not None:
        q = q.where(t.c.site == site)
    with ws.catalog.connect() as conn:
        return [dict(r) for r in conn.execute(q).mappings()]


@dataclass(frozen=True)
class Verdict:
    client: str | None  # who, when known
    ok: bool
    reason: str  # why refused: "no token", "unknown token", "revoked", "other site"


class TokenTable:
    """The server's view of the tokens of its site: a hash -> (client, live) map, refreshed from
    the catalog at most every ``refresh_s`` seconds (from a worker thread; ``check`` never
    touches the database)."""

    def __init__(self, ws: Workspace, site: str, refresh_s: float = 1.0) -> None:
        self.ws, self.site, self.refresh_s = ws, site, refresh_s
        self._lock = threading.Lock()
        self._table: dict[str, tuple[str, str, bool]] = {}
        self._loaded_at = 0.0
        ensure_table(ws)
        self.refresh()

    def refresh(self) -> None:
        t = T.serve_tokens
        with self.ws.catalog.connect() as conn:
            rows = conn.execute(select(t.c.token_sha256, t.c.site, t.c.client, t.c.revoked_at)).all()
        table = {h: (site, client, revoked is None) for h, site, client, revoked in rows}
        with self._lock:
            self._table, self._loaded_at = table, time.monotonic()

    def stale(self) -> bool:
        return time.monotonic() - self._loaded_at >= self.refresh_s

    def check(self, header: str | None) -> Verdict:
        """Check an ``Authorization: Bearer TOKEN`` header value."""
        if not header or not header.startswith("Bearer "):
            return Verdict(None, False, "no token")
        token = header[len("Bearer "):].strip()
        with self._lock:
            found = self._table.get(_hash(token))
        if found is None:
            return Verdict(None, False, "unknown token")
        site, client, live = found
        if site != self.site:
            return Verdict(client, False, f"token issued for site {site}")
        if not live:
            return Verdict(client, False, "revoked")
        return Verdict(client, True, "")
