"""A site's key custody: moving it into a PKCS#11 token, what the ledger records, what doctor checks.

``migrate`` moves a site from the file store to a token (``keys/pkcs11store.py``): it generates the
site's and every dataset's and model's key-encryption key in the token, re-wraps every data key the
catalog holds for the site (and the checkpoint key of each unfinished training run) in the token,
writes ``custody.toml``, records a signed ``site.custody`` entry, and only then destroys the key
files. A migration refused or failed before the catalog commits destroys the token keys it made,
so it can be run again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from onshore.catalog import schema as T
from onshore.catalog.db import write_transaction
from onshore.errors import OnshoreError, ValidationError
from onshore.keys.keystore import KEK_FILE, RESOURCE_FOLDERS, KeyStore
from onshore.keys.pkcs11store import CUSTODY_FILE, CustodyConfig, Pkcs11KeyStore
from onshore.names import check_name
from onshore.workspace import runs
from onshore.workspace.workspace import LOG_ACTOR, Workspace

_CONTEXTS = {
    "dataset": lambda name, site: f"onshore-dataset-key:v1:{name}:{site}".encode(),
    "model": lambda name, site: f"onshore-model-key:v1:{name}:{site}".encode(),
}


def _checkpoint_context(model: str, site: str) -> bytes:
    return f"onshore-checkpoint-key:v1:{model}:{site}".encode()


def custody_facts(ws: Workspace, site: str, kind: str, name: str) -> dict[str, Any]:
    """What a ``key.shred`` entry records about the key it destroys: the token serial and object label
    (and handle) at a PKCS#11 site; ``{"custody": "file"}`` otherwise."""
    store = ws.keystore(f"site:{site}")
    if not isinstance(store, Pkcs11KeyStore):
        return {"custody": "file"}
    obj = store.handle(kind, name)
    return {"custody": "pkcs11", "token_serial": store.serial(), "token_label": store.config.token_label,
            "object_label": store.label(kind, name), "object_handle": None if obj is None else int(obj.handle)}


def migrate(ws: Workspace, site: str, config: CustodyConfig) -> dict[str, Any]:
    """Move ``site``'s key custody from files into the PKCS#11 token ``config`` names.

    Refuses (OnshoreError, nothing changed): an unknown site, a site already in a token, a token
    that cannot be opened (missing module, wrong PIN), a token that already holds a key of this
    site, and a wrap that does not open with the site's file keys.
    """
    check_name(site, "site")
    ws.row("site", site)
    keys_dir = ws.keys_dir(f"site:{site}")
    if (keys_dir / CUSTODY_FILE).exists():
        raise ValidationError(f"{keys_dir / CUSTODY_FILE} exists: site {site!r} already has its custody configured")
    old = KeyStore(keys_dir)
    new = Pkcs11KeyStore(keys_dir, config)
    new.session  # noqa: B018 -- opens and logs in now: a bad module or PIN refuses before anything moves
    made: list[tuple[str, str]] = []
    moved: dict[str, list[str]] = {"dataset": [], "model": []}
    try:
        new.ensure_site_kek()
        with write_transaction(ws.catalog, "the catalog") as conn:
            tables = {"dataset": (T.key_wraps, T.key_wraps.c.dataset, T.key_wraps.c.site),
                      "model": (T.model_key_wraps, T.model_key_wraps.c.model, T.model_key_wraps.c.site)}
            for kind, (table, col, site_col) in tables.items():
                names = {key.stem for key in (keys_dir / RESOURCE_FOLDERS[kind]).glob("*.key")}
                rows = conn.execute(select(col, table.c.wrapped).where(site_col == site)).all()
                for name in sorted(names):
                    if new.has_key(kind, name):
                        raise ValidationError(f"token {config.token_label!r} already holds a key for {kind} "
                                              f"{name!r}; give each site its own token")
                    new.create_key(kind, name)
                    made.append((kind, name))
                for name, wrapped in rows:
                    if name not in names:
                        continue  # a wrap whose key is gone: doctor reports it; nothing to re-wrap
                    ctx = _CONTEXTS[kind](name, site)
                    data_key = old.unwrap(kind, name, bytes(wrapped), ctx)
                    conn.execute(update(table).where(col == name, site_col == site).values(
                        wrapped=new.wrap(kind, name, data_key, ctx)))
                    moved[kind].append(name)
            checkpoints = _rewrap_checkpoints(ws, site, old, new, {n for k, n in made if k == "model"})
            config.write(keys_dir / CUSTODY_FILE)
            ws.record("site.custody", LOG_ACTOR, {
                "site": site, "custody": "pkcs11", "token_label": config.token_label, "token_serial": new.serial(),
                "datasets": moved["dataset"], "models": moved["model"], "checkpoints": checkpoints})
    except BaseException:
        for kind, name in made:
            new.destroy_key(kind, name)
        (keys_dir / CUSTODY_FILE).unlink(missing_ok=True)
        raise
    for kind, name in made:  # the token holds them now: crypto-shred the file copies
        old.destroy_key(kind, name)
    kek = keys_dir / KEK_FILE
    if kek.exists():
        kek.write_bytes(b"\0" * kek.stat().st_size)
        kek.unlink()
    ws._keystores.pop(f"site:{site}", None)
    return {"site": site, "token_label": config.token_label, "token_serial": new.serial(),
            "datasets": moved["dataset"], "models": moved["model"], "checkpoints": checkpoints}


def _rewrap_checkpoints(ws: Workspace, site: str, old: KeyStore, new: Pkcs11KeyStore, models: set[str]) -> list[str]:
    """Re-wrap the checkpoint key file of every unfinished run of ``models`` at ``site``; returns the models."""
    with ws.catalog.connect() as conn:
        root = Path(conn.execute(select(T.sites.c.root).where(T.sites.c.name == site)).scalar_one())
    done = []
    for model in sorted(models):
        wrap = root / "models" / model / "checkpoints" / runs.KEY_FILE
        if wrap.is_file():
            ctx = _checkpoint_context(model, site)
            wrap.write_bytes(new.wrap("model", model, old.unwrap("model", model, wrap.read_bytes(), ctx), ctx))
            done.append(model)
    return done


def token_findings(ws: Workspace) -> list[tuple[str, str]]:
    """(subject, problem) for every PKCS#11 site whose token disagrees with the catalog and ledger.

    Every dataset or model whose wrap the catalog holds for the site must have its key in the token;
    every key the ledger records as shredded there (``key.shred``) must be gone from it. A token that
    cannot be opened is itself a finding.
    """
    out: list[tuple[str, str]] = []
    with ws.catalog.connect() as conn:
        sites = [r[0] for r in conn.execute(select(T.sites.c.name).order_by(T.sites.c.name))]
        wraps = {("dataset", d, s) for d, s in conn.execute(select(T.key_wraps.c.dataset, T.key_wraps.c.site))}
        wraps |= {("model", m, s) for m, s in conn.execute(select(T.model_key_wraps.c.model,
                                                                   T.model_key_wraps.c.site))}
    shredded = {(e.entry.body.get("dataset"), e.entry.body.get("site"))
                for e in ws.ledger.entries(kinds=("key.shred",))}
    for site in sites:
        try:
            store = ws.keystore(f"site:{site}")
        except OnshoreError as e:
            out.append((f"site {site!r}", str(e)))
            continue
        if not isinstance(store, Pkcs11KeyStore):
            continue
        try:
            for kind, name, s in sorted(wraps):
                if s == site and not store.has_key(kind, name):
                    out.append((f"{kind} {name!r} at {site!r}", f"the catalog holds its wrap but token "
                                f"{store.config.token_label!r} has no key {store.label(kind, name)!r}"))
            for name, s in sorted(shredded, key=str):
                if s == site and isinstance(name, str) and store.has_key("dataset", name):
                    out.append((f"dataset {name!r} at {site!r}", f"the ledger records its key shredded but token "
                                f"{store.config.token_label!r} still holds {store.label('dataset', name)!r}"))
        except OnshoreError as e:
            out.append((f"site {site!r}", str(e)))
    return out
