"""Who may look: the dashboard's access token (needed only when it binds beyond loopback).

``onshore dashboard token`` issues a random token, prints it once, and keeps only its SHA-256 in
the catalog's settings; issuing again replaces it (the old one stops working). A request then
proves it with ``Authorization: Bearer TOKEN``, or once with ``?token=TOKEN`` (which sets an
HttpOnly cookie so that plain links keep working without JavaScript).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets

from sqlalchemy import delete, insert, select

from onshore.catalog import schema as T
from onshore.catalog.db import write_transaction
from onshore.errors import ValidationError
from onshore.workspace.workspace import Workspace

SETTING = "dashboard_token_sha256"
COOKIE = "onshore_dashboard_token"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(ws: Workspace) -> str:
    """A new token (returned once, never stored in clear); the previous one is revoked."""
    token = secrets.token_urlsafe(32)
    with write_transaction(ws.catalog, "the catalog") as conn:
        conn.execute(delete(T.settings).where(T.settings.c.key == SETTING))
        conn.execute(insert(T.settings).values(key=SETTING, value=_digest(token)))
    return token


def token_digest(ws: Workspace) -> str | None:
    """The stored digest of the current token, or None when none was issued."""
    with ws.catalog.connect() as conn:
        return conn.execute(select(T.settings.c.value).where(T.settings.c.key == SETTING)).scalar()


def token_matches(digest: str, presented: str | None) -> bool:
    """Constant-time comparison of a presented token with the stored digest."""
    return presented is not None and hmac.compare_digest(digest, _digest(presented))


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and ``localhost`` only; anything else (0.0.0.0, a LAN address) is not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def required_digest(ws: Workspace, host: str) -> str | None:
    """None on loopback; elsewhere the token digest, refusing to bind when no token was issued."""
    if is_loopback(host):
        return None
    digest = token_digest(ws)
    if digest is None:
        raise ValidationError(f"--host {host} is not loopback: anyone who reaches it would see the workspace. "
                              "Issue a token first with 'onshore dashboard token' (or bind to 127.0.0.1)")
    return digest
