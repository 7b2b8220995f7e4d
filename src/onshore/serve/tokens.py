"""Per-client tokens for a site's policy server: issue, revoke, list, and the server's check.

A token is ``onshore_`` + 43 URL-safe characters (256 random bits). Issue and revocation are
ledger entries signed by the site (``token.issue``: site, client, the token's SHA-256;
``token.revoke``: site, client, the digests revoked), never the token itself, so a copied ledger or
catalog cannot be used to command a machine, and every token that could is on the record. A
server at site S accepts a token only if a ``token.issue`` entry of S issued its digest and no
``token.revoke`` entry revoked it; a digest written straight into the catalog's ``serve_tokens``
table (a table older versions used) is never read, and ``onshore doctor`` reports it.
:class:`TokenTable` is the server's in-memory copy; refreshing it asks the ledger for the kinds
of entries appended since the last look (one indexed query) and rereads tokens only when a token
entry was appended, so a revocation also cuts connections that are already open.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

from onshore.errors import NotFoundError
from onshore.names import check_name
from onshore.workspace.governance import TOKEN_ISSUE, TOKEN_KINDS, TOKEN_REVOKE, ledger_tokens
from onshore.workspace.registry import get_site
from onshore.workspace.workspace import Workspace

PREFIX = "onshore_"


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue(ws: Workspace, site: str, client: str) -> str:
    """A new token for ``client`` at ``site``; returned once, recorded only as its digest (``token.issue``).

    Refused: an unknown site, a bad client name. A client may hold several tokens (rotation).
    """
    get_site(ws, site)
    check_name(client, "client")
    token = PREFIX + secrets.token_urlsafe(32)
    ws.record(TOKEN_ISSUE, f"site:{site}", {"site": site, "client": client, "token_sha256": _hash(token)})
    return token


def revoke(ws: Workspace, site: str, client: str) -> int:
    """Revoke every live token of ``client`` at ``site`` (one ``token.revoke`` entry); returns how many.

    Refuses a client with none.
    """
    get_site(ws, site)
    live = sorted(t.sha256 for t in ledger_tokens(ws.ledger).values()
                  if t.site == site and t.client == client and t.live)
    if not live:
        raise NotFoundError(f"client {client!r} holds no live token at site {site!r}; see 'onshore serve tokens'")
    ws.record(TOKEN_REVOKE, f"site:{site}", {"site": site, "client": client, "token_sha256s": live})
    return len(live)


def list_tokens(ws: Workspace, site: str | None = None) -> list[dict[str, Any]]:
    """Issued tokens (client, site, when, revoked when, ledger entries): never the tokens themselves."""
    rows = [t for t in ledger_tokens(ws.ledger).values() if site is None or t.site == site]
    return [{"site": t.site, "client": t.client, "created_at": t.created_at, "revoked_at": t.revoked_at,
             "ledger_index": t.index, "revoked_index": t.revoked_index}
            for t in sorted(rows, key=lambda t: (t.site, t.client, t.index))]


@dataclass(frozen=True)
class Verdict:
    client: str | None  # who, when known
    ok: bool
    reason: str  # why refused: "no token", "unknown token", "revoked", "other site"


class TokenTable:
    """The server's view of the tokens of its site: a digest -> (site, client, live) map built from
    the ledger's token entries. ``refresh`` is cheap when nothing changed (the kinds of the entries
    appended since its last look; tokens are reread only after a token entry); ``stale`` says when
    ``refresh_s`` has passed since the last look. ``check`` never touches the database."""

    def __init__(self, ws: Workspace, site: str, refresh_s: float = 0.5) -> None:
        self.ws, self.site, self.refresh_s = ws, site, refresh_s
        self._lock = threading.Lock()
        self._table: dict[str, tuple[str, str, bool]] = {}
        self._loaded_at = 0.0
        self._seen = -1  # the ledger size the table reflects
        self.refresh()

    def refresh(self) -> None:
        if self._seen >= 0:
            size, kinds = self.ws.ledger.kinds_since(self._seen)
            if not kinds & set(TOKEN_KINDS):
                with self._lock:
                    self._seen, self._loaded_at = size, time.monotonic()
                return
        size = self.ws.ledger.size()
        table = {t.sha256: (t.site, t.client, t.live) for t in ledger_tokens(self.ws.ledger).values()}
        with self._lock:
            self._table, self._loaded_at, self._seen = table, time.monotonic(), size

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
