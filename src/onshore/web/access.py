"""Who may look: the dashboard's access token (needed only when it binds beyond loopback).

``onshore dashboard token`` issues a random token, prints it once, and records only its SHA-256
in a ``dashboard.token`` ledger entry signed by the log; issuing again replaces it (the old one
stops working). The digest is read from the ledger, never from the catalog, so a digest written
into ``catalog.db`` opens nothing and every issue is on the record. A request then proves it
with ``Authorization: Bearer TOKEN``, or once with ``?token=TOKEN`` (which sets an HttpOnly
cookie so that plain links keep working without JavaScript).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from onshore.errors import ValidationError
from onshore.tls import is_loopback
from onshore.workspace.workspace import LOG_ACTOR, Workspace

#: The ledger entry that issues the dashboard's token (the newest one signed by the log counts).
KIND = "dashboard.token"
COOKIE = "onshore_dashboard_token"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(ws: Workspace) -> str:
    """A new token (returned once, never stored in clear), recorded as a ``dashboard.token``
    entry; the previous one is revoked."""
    token = secrets.token_urlsafe(32)
    ws.record(KIND, LOG_ACTOR, {"token_sha256": _digest(token)})
    return token


def token_digest(ws: Workspace) -> str | None:
    """The digest of the current token: the newest ``dashboard.token`` entry signed by the log;
    None when none was issued."""
    digest = None
    for e in ws.ledger.entries(kinds=(KIND,)):
        if e.entry.actor == LOG_ACTOR and isinstance(e.entry.body.get("token_sha256"), str):
            digest = e.entry.body["token_sha256"]
    return digest


def token_matches(digest: str, presented: str | None) -> bool:
    """Constant-time comparison of a presented token with the stored digest."""
    return presented is not None and hmac.compare_digest(digest, _digest(presented))


def required_digest(ws: Workspace, host: str) -> str | None:
    """None on loopback; elsewhere the token digest, refusing to bind when no token was issued."""
    if is_loopback(host):
        return None
    digest = token_digest(ws)
    if digest is None:
        raise ValidationError(f"--host {host} is not loopback: anyone who reaches it would see the workspace. "
                              "Issue a token first with 'onshore dashboard token' (or bind to 127.0.0.1)")
    return digest
