"""The consortium registry: sites, members and embodiments. Every change is signed into the ledger."""

from __future__ import annotations

import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, insert, select, update

from onshore.catalog import schema as T
from onshore.catalog.db import write_transaction
from onshore.errors import IntegrityError, ValidationError
from onshore.i18n import N_, Message
from onshore.keys.keystore import KeyStore, public_key_b64
from onshore.ledger.checkpoint import CosignatureVerifier
from onshore.ledger.entries import now_iso
from onshore.names import check_name, check_text
from onshore.residency.jurisdictions import check_jurisdiction
from onshore.telemetry.embodiment import Embodiment
from onshore.workspace.paths import check_site_root
from onshore.workspace.workspace import LOG_ACTOR, Workspace

ROLES = ("storage", "compute", "serve")


@dataclass(frozen=True)
class Site:
    name: str
    jurisdiction: str
    roles: tuple[str, ...]
    operator: str
    root: str
    public_key: str


def parse_roles(text: str) -> tuple[str, ...]:
    roles = tuple(sorted({r.strip() for r in text.split(",") if r.strip()}))
    bad = [r for r in roles if r not in ROLES]
    if not roles or bad:
        raise ValidationError(Message(N_("--roles {text!r}: use a comma-separated subset of {roles}"),
                                      {"text": text, "roles": ", ".join(ROLES)}))
    return roles


def _exists(ws: Workspace, table, name: str) -> bool:  # type: ignore[no-untyped-def]
    with ws.catalog.connect() as conn:
        return conn.execute(select(table.c.name).where(table.c.name == name)).first() is not None


def add_site(ws: Workspace, name: str, jurisdiction: str, roles: tuple[str, ...] | str,
             operator: str = "", root: Path | None = None) -> Site:
    """Register a site with its own key store (identity key and KEK, mode 0600).

    Refuses a bad name, operator text or jurisdiction, unknown roles, a name already taken, and a
    storage folder that overlaps another site's or the workspace's internals (``paths``).
    """
    check_name(name, "site")
    check_jurisdiction(jurisdiction, "--jurisdiction")
    check_text(operator, "--operator")
    roles = parse_roles(roles) if isinstance(roles, str) else parse_roles(",".join(roles))
    if _exists(ws, T.sites, name):
        raise ValidationError(Message(N_("{kind} {name!r} already exists; see 'onshore {kind} list'"),
                                      {"kind": "site", "name": name}))
    site_root = check_site_root(ws, name, root)
    keys_dir = ws.keys_dir(f"site:{name}")
    if keys_dir.exists():
        raise ValidationError(f"{keys_dir} exists but no site {name!r} is registered; move it away first")
    keys = KeyStore.create(keys_dir, with_kek=True)
    try:
        site_root.mkdir(parents=True, exist_ok=True)
        site = Site(name, jurisdiction, roles, operator, str(site_root), public_key_b64(keys.public_key()))
        with write_transaction(ws.catalog, "the catalog") as conn:
            conn.execute(insert(T.sites).values(
                name=name, jurisdiction=jurisdiction, roles=",".join(roles), operator=operator,
                root=site.root, public_key=site.public_key, created_at=now_iso()))
            ws.record("site.add", LOG_ACTOR, {
                "site": name, "jurisdiction": jurisdiction, "roles": list(roles), "operator": operator,
                "public_key": site.public_key})
    except BaseException:
        # undo what this call made: the keys, and the default storage folder while it is empty
        shutil.rmtree(keys_dir.parent if root is None and not any(site_root.glob("*")) else keys_dir,
                      ignore_errors=True)
        raise
    ws.invalidate()
    return site


def set_site_jurisdiction(ws: Workspace, name: str, jurisdiction: str) -> Site:
    """Change a site's jurisdiction; refused once any shard has been placed there."""
    check_jurisdiction(jurisdiction, "--jurisdiction")
    row = ws.row("site", name)
    with write_transaction(ws.catalog, "the catalog") as conn:
        placed = conn.execute(select(func.count()).select_from(T.shards).where(T.shards.c.site == name)).scalar_one()
        if placed:
            raise ValidationError(Message(
                N_("site {name!r} holds {placed} shard(s): its jurisdiction cannot change once data is placed there"),
                {"name": name, "placed": placed}))
        conn.execute(update(T.sites).where(T.sites.c.name == name).values(jurisdiction=jurisdiction))
        ws.record("site.add", LOG_ACTOR, {
            "site": name, "jurisdiction": jurisdiction, "roles": row["roles"].split(","),
            "operator": row["operator"], "public_key": row["public_key"], "previous_jurisdiction": row["jurisdiction"]})
    ws.invalidate()
    return get_site(ws, name)


def set_site_roles(ws: Workspace, name: str, roles: tuple[str, ...] | str) -> Site:
    """Change a site's roles (``storage``, ``compute``, ``serve``), signed into the ledger as a
    ``site.add`` entry like a jurisdiction change (``previous_roles`` says what they were).

    Running processes notice it (``Workspace.refresh``): a server at a site that loses ``serve``
    stops serving. Refused: unknown roles, an empty set, an unknown site, the roles it has already.
    """
    roles = parse_roles(roles) if isinstance(roles, str) else parse_roles(",".join(roles))
    row = ws.row("site", name)
    previous = tuple(sorted(row["roles"].split(",")))
    if roles == previous:
        raise ValidationError(f"site {name!r} already has roles {','.join(roles)}")
    with write_transaction(ws.catalog, "the catalog") as conn:
        conn.execute(update(T.sites).where(T.sites.c.name == name).values(roles=",".join(roles)))
        ws.record("site.add", LOG_ACTOR, {
            "site": name, "jurisdiction": row["jurisdiction"], "roles": list(roles), "operator": row["operator"],
            "public_key": row["public_key"], "previous_roles": list(previous)})
    ws.invalidate()
    return get_site(ws, name)


def get_site(ws: Workspace, name: str) -> Site:
    r = ws.row("site", name)
    return Site(r["name"], r["jurisdiction"], tuple(r["roles"].split(",")), r["operator"], r["root"], r["public_key"])


def list_sites(ws: Workspace) -> list[Site]:
    with ws.catalog.connect() as conn:
        rows = conn.execute(select(T.sites).order_by(T.sites.c.name)).mappings().all()
    return [Site(r["name"], r["jurisdiction"], tuple(r["roles"].split(",")), r["operator"], r["root"],
                 r["public_key"]) for r in rows]


def add_member(ws: Workspace, name: str) -> dict[str, str]:
    """Register a member (a data-owning company) with its own Ed25519 key."""
    check_name(name, "member")
    if _exists(ws, T.members, name):
        raise ValidationError(Message(N_("{kind} {name!r} already exists; see 'onshore {kind} list'"),
                                      {"kind": "member", "name": name}))
    keys_dir = ws.keys_dir(f"member:{name}")
    if keys_dir.exists():
        raise ValidationError(f"{keys_dir} exists but no member {name!r} is registered; move it away first")
    keys = KeyStore.create(keys_dir, with_kek=False)
    pk = public_key_b64(keys.public_key())
    try:
        with write_transaction(ws.catalog, "the catalog") as conn:
            conn.execute(insert(T.members).values(name=name, public_key=pk, created_at=now_iso()))
            ws.record("member.add", LOG_ACTOR, {"member": name, "public_key": pk})
    except BaseException:
        shutil.rmtree(keys_dir.parent, ignore_errors=True)
        raise
    return {"name": name, "public_key": pk}


def list_members(ws: Workspace) -> list[dict[str, str]]:
    with ws.catalog.connect() as conn:
        rows = conn.execute(select(T.members.c.name, T.members.c.public_key, T.members.c.created_at)
                            .order_by(T.members.c.name)).mappings().all()
    return [dict(r) for r in rows]


def add_embodiment(ws: Workspace, path: Path) -> Embodiment:
    """Register an embodiment TOML.

    A machine type is its name, control rate and channels; ``extra`` (e.g. one member's sensor
    settings) and ``description`` are not part of it. Re-adding the same machine type is a no-op
    (the first registration is kept); the same name with other channels or rate is refused.
    """
    emb = Embodiment.from_toml(path)
    text = Path(path).read_text()
    digest = emb.digest()
    with write_transaction(ws.catalog, "the catalog") as conn:
        row = conn.execute(select(T.embodiments.c.sha256).where(T.embodiments.c.name == emb.name)).first()
        if row is not None:
            if row[0] == digest:
                return emb
            raise ValidationError(
                f"{path}: embodiment {emb.name!r} is already registered with other channels or control rate; "
                "embodiments are immutable, register the new one under a new name"
            )
        conn.execute(insert(T.embodiments).values(name=emb.name, spec=text, sha256=digest, created_at=now_iso()))
        ws.record("embodiment.add", LOG_ACTOR, {"embodiment": emb.name, "sha256": digest,
                                                "state_dim": emb.state_dim, "action_dim": emb.action_dim,
                                                "control_hz": str(emb.control_hz)})
    return emb


def get_embodiment(ws: Workspace, name: str) -> Embodiment:
    """The registered embodiment ``name``, checked against its signed ``embodiment.add``.

    Its limits and rates are what the safety envelope enforces, so a catalog row whose machine
    type (channels, limits, rate) does not hash to the digest the log signed is refused
    (IntegrityError naming the row and the entry), as is a row no entry registers.
    """
    row = ws.row("embodiment", name)
    emb = Embodiment.from_dict(tomllib.loads(row["spec"]), source=f"embodiment {name}")
    signed = None
    for e in ws.ledger.entries(kinds=("embodiment.add",)):
        if e.entry.actor == LOG_ACTOR and e.entry.body.get("embodiment") == name:
            signed = (e.entry.body.get("sha256"), e.index)
            break
    if signed is None or emb.digest() != signed[0]:
        why = ("no embodiment.add entry registers it" if signed is None else
               f"its machine type does not hash to the digest ledger entry {signed[1]} (embodiment.add) signed")
        raise IntegrityError(f"catalog row embodiments/{name}: {why}; restore the catalog from a backup")
    return emb


def list_embodiments(ws: Workspace) -> list[Embodiment]:
    with ws.catalog.connect() as conn:
        names = [r[0] for r in conn.execute(select(T.embodiments.c.name).order_by(T.embodiments.c.name))]
    return [get_embodiment(ws, n) for n in names]


def add_witness(ws: Workspace, name: str, vkey: str) -> dict[str, str]:
    """Register a witness by its C2SP cosignature verifier key (from `onshore witness init`)."""
    check_name(name, "witness")
    try:
        CosignatureVerifier.from_vkey(vkey)
    except ValidationError as e:
        raise ValidationError(f"witness {name!r}: {e}") from None
    if _exists(ws, T.witnesses, name):
        raise ValidationError(Message(N_("{kind} {name!r} already exists; see 'onshore {kind} list'"),
                                      {"kind": "witness", "name": name}))
    with write_transaction(ws.catalog, "the catalog") as conn:
        conn.execute(insert(T.witnesses).values(name=name, vkey=vkey, created_at=now_iso()))
        ws.record("key.create", LOG_ACTOR, {"witness": name, "vkey": vkey})
    return {"name": name, "vkey": vkey}


def list_witnesses(ws: Workspace) -> list[dict[str, str]]:
    with ws.catalog.connect() as conn:
        rows = conn.execute(select(T.witnesses.c.name, T.witnesses.c.vkey).order_by(T.witnesses.c.name)).mappings()
        return [dict(r) for r in rows]
