"""The Workspace object: configuration, catalog, ledger, key stores and the policy decision point."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import Engine, insert, select

from onshore.catalog import schema as T
from onshore.catalog.db import open_engine, write_transaction
from onshore.catalog.schema import metadata as catalog_metadata
from onshore.errors import NotFoundError, OnshoreError, PolicyDenied, ValidationError
from onshore.keys.keystore import KeyStore, public_key_b64, public_key_from_b64
from onshore.ledger import checkpoint as ckpt
from onshore.ledger import notes
from onshore.ledger.entries import now_iso, sign_entry
from onshore.ledger.log import AppendHook, Ledger, ledger_metadata
from onshore.residency.jurisdictions import check_jurisdiction
from onshore.residency.pdp import Decision, PolicyDecisionPoint, Request, SiteFacts
from onshore.residency.policy import UsagePolicy, dataset_cedar, parse_policy, workspace_cedar
from onshore.workspace.config import CONFIG_FILE, WorkspaceConfig

ENV_VAR = "ONSHORE_WORKSPACE"
LOG_ACTOR = "log"


def find_workspace(option: Path | None = None) -> Path:
    """The workspace folder: ``option``, else $ONSHORE_WORKSPACE, else the current directory."""
    if option is not None:
        return Path(option)
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else Path.cwd()


class Workspace:
    """An open workspace. Create with ``Workspace.init`` or open with ``Workspace.open``."""

    def __init__(self, root: Path, config: WorkspaceConfig, catalog: Engine, ledger: Ledger) -> None:
        self.root = Path(root).resolve()
        self.config = config
        self.catalog = catalog
        self.ledger = ledger
        self._pdp: PolicyDecisionPoint | None = None
        self._keystores: dict[str, KeyStore] = {}

    # -- lifecycle -------------------------------------------------------------------------------

    @classmethod
    def init(cls, root: Path, name: str, jurisdiction: str | None = None,
             catalog_url: str | None = None, ledger_url: str | None = None) -> Workspace:
        """Create a workspace in ``root``: config, catalog, ledger and the log key.

        Refuses a folder that already holds a workspace, a bad jurisdiction code, and a catalog
        database that already belongs to another workspace.
        """
        root = Path(root)
        if (root / CONFIG_FILE).exists():
            raise ValidationError(f"{root / CONFIG_FILE} exists: {root} is already a workspace")
        if not name or not name.strip():
            raise ValidationError("workspace name must not be empty (--name)")
        if jurisdiction is not None:
            check_jurisdiction(jurisdiction, "--jurisdiction")
        config = WorkspaceConfig(name, jurisdiction, catalog_url or "", ledger_url or "")
        root.mkdir(parents=True, exist_ok=True)
        catalog = open_engine(cls._catalog_url(root, config), catalog_metadata, create=True)
        with catalog.connect() as conn:
            if conn.execute(select(T.settings.c.value).where(T.settings.c.key == "name")).first():
                raise ValidationError(
                    f"catalog {config.catalog_url} already belongs to a workspace; use an empty database"
                )
        ledger = Ledger(open_engine(cls._ledger_url(root, config), ledger_metadata, create=True))
        if ledger.size():
            raise ValidationError(f"ledger {config.ledger_url} is not empty; use an empty database")
        log_keys = KeyStore.create(root / "keys" / "log", with_kek=False)
        config.write(root)
        ws = cls(root, config, catalog, ledger)
        with write_transaction(catalog, "the catalog") as conn:
            conn.execute(insert(T.settings), [
                {"key": "name", "value": name},
                {"key": "log_public_key", "value": public_key_b64(log_keys.public_key())},
                {"key": "created_at", "value": now_iso()},
            ])
        ws.record("workspace.init", LOG_ACTOR, {
            "name": name, "jurisdiction": jurisdiction,
            "log_public_key": public_key_b64(log_keys.public_key()),
            "workspace_rules_hash": ws.pdp().policy_hash,
        })
        return ws

    @classmethod
    def open(cls, root: Path) -> Workspace:
        root = Path(root)
        config = WorkspaceConfig.read(root)
        catalog = open_engine(cls._catalog_url(root, config), catalog_metadata)
        ledger = Ledger(open_engine(cls._ledger_url(root, config), ledger_metadata))
        return cls(root, config, catalog, ledger)

    @staticmethod
    def _catalog_url(root: Path, config: WorkspaceConfig) -> str:
        return config.catalog_url or f"sqlite:///{Path(root).resolve() / 'catalog.db'}"

    @staticmethod
    def _ledger_url(root: Path, config: WorkspaceConfig) -> str:
        return config.ledger_url or f"sqlite:///{Path(root).resolve() / 'ledger.db'}"

    def close(self) -> None:
        self.catalog.dispose()
        self.ledger.engine.dispose()

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    # -- keys ------------------------------------------------------------------------------------

    def keys_dir(self, actor: str) -> Path:
        if actor == LOG_ACTOR:
            return self.root / "keys" / "log"
        kind, _, name = actor.partition(":")
        if kind == "site":
            return self.root / "sites" / name / "keys"
        if kind == "member":
            return self.root / "members" / name / "keys"
        raise OnshoreError(f"unknown actor {actor!r}")

    def keystore(self, actor: str) -> KeyStore:
        ks = self._keystores.get(actor)
        if ks is None:
            ks = self._keystores[actor] = KeyStore(self.keys_dir(actor))
        return ks

    def signer(self, actor: str) -> Ed25519PrivateKey:
        return self.keystore(actor).identity()

    def public_key(self, actor: str) -> Ed25519PublicKey | None:
        """The registered public key of ``actor`` (from the catalog, not from key files)."""
        with self.catalog.connect() as conn:
            if actor == LOG_ACTOR:
                row = conn.execute(select(T.settings.c.value).where(T.settings.c.key == "log_public_key")).first()
            else:
                kind, _, name = actor.partition(":")
                table = {"site": T.sites, "member": T.members}.get(kind)
                if table is None:
                    return None
                row = conn.execute(select(table.c.public_key).where(table.c.name == name)).first()
        return public_key_from_b64(row[0]) if row else None

    # -- ledger ----------------------------------------------------------------------------------

    def record(self, kind: str, actor: str, body: dict[str, Any], then: AppendHook | None = None) -> int:
        """Sign ``body`` as ``actor`` and append it to the ledger; returns the entry index.

        ``then`` runs inside the append's transaction (see Ledger.append).
        """
        return self.ledger.append([sign_entry(kind, actor, body, self.signer(actor))], then)[0]

    def record_many(self, items: list[tuple[str, str, dict[str, Any]]], then: AppendHook | None = None
                    ) -> list[int]:
        return self.ledger.append([sign_entry(k, a, b, self.signer(a)) for k, a, b in items], then)

    def open_checkpoint(self, note: str) -> ckpt.Checkpoint:
        """Check the log's signature on a checkpoint note of this workspace and parse it."""
        return ckpt.verify_checkpoint(note, self.log_vkey, self.origin)

    def verify_ledger(self):  # type: ignore[no-untyped-def]
        """Recompute every signature and the tree root, and check the newest stored checkpoint
        against the recomputed tree (see Ledger.verify)."""
        return self.ledger.verify(self.public_key, self.open_checkpoint)

    # -- checkpoints -------------------------------------------------------------------------------

    @property
    def origin(self) -> str:
        """The log's C2SP origin line (and note key name): ``onshore/<workspace name>``."""
        slug = "".join(c if c.isalnum() or c in "-._" else "-" for c in self.config.name.lower())
        return f"onshore/{slug}"

    @property
    def log_vkey(self) -> str:
        """The log's C2SP verifier key (Ed25519), which witnesses and auditors pin."""
        key = self.public_key(LOG_ACTOR)
        assert key is not None
        return notes.encode_verifier_key(self.origin, key)

    def make_checkpoint(self) -> str:
        """Sign a checkpoint of the ledger as it is now (log key) and keep it; returns the note."""
        size = self.ledger.size()
        note = ckpt.sign_checkpoint(ckpt.Checkpoint(self.origin, size, self.ledger.root(size)), self.origin,
                                    self.signer(LOG_ACTOR))
        if self.ledger.checkpoint_note(size) is None:
            self.ledger.store_checkpoint(size, note)
        return self.ledger.checkpoint_note(size) or note

    def add_cosignatures(self, cosigned_note: str) -> ckpt.Checkpoint:
        """Merge a witness's cosignature lines into the stored checkpoint of the same size.

        Refuses a note the log did not sign, or one whose root differs from the ledger's own
        root at that size (a witness cannot make us adopt a forked head).
        """
        cp = ckpt.verify_checkpoint(cosigned_note, self.log_vkey, self.origin)
        if cp.size > self.ledger.size() or cp.root_hash != self.ledger.root(cp.size):
            raise ValidationError(f"checkpoint of size {cp.size} does not match this ledger's tree")
        stored = self.ledger.checkpoint_note(cp.size) or cosigned_note
        _, have = notes.split_note(stored)
        _, incoming = notes.split_note(cosigned_note)
        seen = {(s.name, s.key_id) for s in have}
        merged = notes.add_signatures(stored, [s for s in incoming if (s.name, s.key_id) not in seen])
        self.ledger.store_checkpoint(cp.size, merged)
        return cp

    # -- policy ----------------------------------------------------------------------------------

    def site_facts(self) -> list[SiteFacts]:
        with self.catalog.connect() as conn:
            rows = conn.execute(select(T.sites.c.name, T.sites.c.jurisdiction, T.sites.c.roles)).all()
        return [SiteFacts(n, j, tuple(r.split(","))) for n, j, r in rows]

    def policy_text(self, extra: tuple[str, str, UsagePolicy] | None = None) -> str:
        """The whole Cedar policy set in force: workspace rules, then every dataset's policies."""
        parts = [workspace_cedar(self.config.jurisdiction)]
        with self.catalog.connect() as conn:
            rows = conn.execute(select(T.datasets.c.name, T.datasets.c.owner, T.datasets.c.policy,
                                       T.datasets.c.status).order_by(T.datasets.c.name)).all()
        for name, owner, text, status in rows:
            parts.append(dataset_cedar(name, owner, parse_policy(text, f"dataset {name} policy"),
                                       withdrawn=status == "withdrawn"))
        if extra is not None:
            parts.append(dataset_cedar(extra[0], extra[1], extra[2], withdrawn=False))
        return "\n".join(parts)

    def pdp(self, extra: tuple[str, str, UsagePolicy] | None = None) -> PolicyDecisionPoint:
        """The decision point for the policies in force (``extra``: a dataset about to be ingested).

        Parsed once and kept until the registry or a dataset changes (``invalidate``).
        """
        if extra is not None:
            return PolicyDecisionPoint(self.policy_text(extra), self.site_facts())
        if self._pdp is None:
            self._pdp = PolicyDecisionPoint(self.policy_text(), self.site_facts())
        return self._pdp

    def invalidate(self) -> None:
        self._pdp = None

    def decide(self, request: Request, extra: tuple[str, str, UsagePolicy] | None = None,
               on_allow: AppendHook | None = None) -> tuple[Decision, int]:
        """Decide and record the decision in the ledger, allow or deny; returns it and its index.

        ``on_allow`` runs inside the decision's ledger transaction when the decision allows (it
        opens an attempt: see onshore.workspace.attempts).
        """
        decision = self.pdp(extra).decide(request)
        index = self.record("decision", request.principal, decision.to_json(),
                            on_allow if decision.allowed else None)
        return decision, index

    def authorize(self, request: Request, extra: tuple[str, str, UsagePolicy] | None = None,
                  on_allow: AppendHook | None = None) -> tuple[Decision, int]:
        """``decide``, then raise PolicyDenied (exit 3) naming the deciding rules on a deny."""
        decision, index = self.decide(request, extra, on_allow)
        if not decision.allowed:
            where = f" at site {request.site} ({decision.site_jurisdiction})" if request.site else ""
            purpose = f" for purpose {request.purpose!r}" if request.purpose else ""
            raise PolicyDenied(
                f"refused: {request.action} of dataset {request.dataset!r} by {request.principal}{where}"
                f"{purpose}; deciding rule(s): {', '.join(decision.rules)} (ledger entry {index})",
                list(decision.rules),
            )
        return decision, index

    # -- catalog lookups -------------------------------------------------------------------------

    def row(self, table_name: str, name: str) -> dict[str, Any]:
        """One catalog row by name, or NotFoundError saying how to list what exists."""
        table = {"site": T.sites, "member": T.members, "embodiment": T.embodiments, "dataset": T.datasets}[
            table_name]
        with self.catalog.connect() as conn:
            row = conn.execute(select(table).where(table.c.name == name)).mappings().first()
        if row is None:
            raise NotFoundError(f"no {table_name} named {name!r}; see 'onshore {table_name} list'")
        return dict(row)
