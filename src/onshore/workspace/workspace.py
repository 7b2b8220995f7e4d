"""The Workspace object: configuration, catalog, ledger, key stores and the policy decision point."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import Engine, insert, select

from onshore.catalog import migrate
from onshore.catalog import schema as T
from onshore.catalog.db import open_engine, settled_read, write_transaction
from onshore.catalog.schema import metadata as catalog_metadata
from onshore.errors import IntegrityError, NotFoundError, PolicyDenied, ValidationError
from onshore.i18n import N_, Message
from onshore.keys.keystore import IDENTITY_FILE, KeyStore, public_key_b64, public_key_from_b64
from onshore.keys.pkcs11store import open_keystore
from onshore.ledger import checkpoint as ckpt
from onshore.ledger import merkle, notes, subjects
from onshore.ledger.entries import Draft, now_iso
from onshore.ledger.log import LEDGER_SCHEMA, AppendHook, Ledger, ledger_metadata
from onshore.names import check_principal, check_text, is_name, parse_principal
from onshore.residency.jurisdictions import check_jurisdiction
from onshore.residency.modelpolicy import LineageDataset, model_cedar
from onshore.residency.pdp import Decision, PolicyDecisionPoint, Request, SiteFacts
from onshore.residency.policy import UsagePolicy, cedar_hash, dataset_cedar, workspace_cedar
from onshore.workspace import governance
from onshore.workspace.config import CONFIG_FILE, WorkspaceConfig

ENV_VAR = "ONSHORE_WORKSPACE"
LOG_ACTOR = "log"
#: How often, at most, a long-running process looks at the ledger for appends by other processes.
FRESHNESS_S = 0.5
#: Entry kinds that never change a rule, a lineage, a token or a status: appends of only these do
#: not make a process drop what it derived from the ledger.
RULE_NEUTRAL_KINDS = frozenset({"decision", "key.release", "data.attest", "model.attest", "model.eval",
                                "job.checkpoint", "data.export", "model.export", "model.annotate"})


def find_workspace(option: Path | None = None) -> Path:
    """The workspace folder: ``option``, else $ONSHORE_WORKSPACE, else the current directory."""
    if option is not None:
        return Path(option)
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else Path.cwd()


def catalog_url(root: Path, config: WorkspaceConfig) -> str:
    """The catalog's database URL: the config's, else the SQLite file ``catalog.db`` in ``root``."""
    return config.catalog_url or f"sqlite:///{Path(root).resolve() / 'catalog.db'}"


def ledger_url(root: Path, config: WorkspaceConfig) -> str:
    """The ledger's database URL: the config's, else the SQLite file ``ledger.db`` in ``root``."""
    return config.ledger_url or f"sqlite:///{Path(root).resolve() / 'ledger.db'}"


class Workspace:
    """An open workspace. Create with ``Workspace.init`` or open with ``Workspace.open``."""

    def __init__(self, root: Path, config: WorkspaceConfig, catalog: Engine, ledger: Ledger,
                 init: dict[str, Any] | None = None) -> None:
        self.root = Path(root).resolve()
        self.config = config
        self._init = init
        self.catalog = catalog
        self.ledger = ledger
        self._pdp: PolicyDecisionPoint | None = None
        self._governance = governance.GovernanceReader(ledger)
        self._keystores: dict[str, KeyStore] = {}
        self._signers: dict[str, Ed25519PrivateKey] = {}
        self._seen_size = -1  # the ledger size this process's derived state (decision point, ...) reflects
        self._seen_at = 0.0

    # -- lifecycle -------------------------------------------------------------------------------

    @classmethod
    def init(cls, root: Path, name: str, jurisdiction: str | None = None,
             catalog_url: str | None = None, ledger_url: str | None = None) -> Workspace:
        """Create a workspace in ``root``: config, catalog, ledger and the log key.

        Refuses a path that is a file, a folder that already holds a workspace, a bad
        jurisdiction code, and a catalog database that already belongs to another workspace. A
        refused or failed init removes the folder if it made it.
        """
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise ValidationError(Message(N_("{root} is a file; give a new or empty folder for the workspace"),
                                          {"root": root}))
        if (root / CONFIG_FILE).exists():
            raise ValidationError(Message(N_("{config} exists: {root} is already a workspace"),
                                          {"config": root / CONFIG_FILE, "root": root}))
        check_text(name, "workspace name (--name)", allow_empty=False)
        if jurisdiction is not None:
            check_jurisdiction(jurisdiction, "--jurisdiction")
        config = WorkspaceConfig(name, jurisdiction, catalog_url or "", ledger_url or "")
        created = not root.exists()
        root.mkdir(parents=True, exist_ok=True)
        try:
            return cls._init_in(root, config)
        except BaseException:
            if created:
                shutil.rmtree(root, ignore_errors=True)
            raise

    @classmethod
    def _init_in(cls, root: Path, config: WorkspaceConfig) -> Workspace:
        name, jurisdiction = config.name, config.jurisdiction
        catalog = open_engine(catalog_url(root, config), catalog_metadata, create=True)
        with catalog.connect() as conn:
            if conn.execute(select(T.settings.c.value).where(T.settings.c.key == "name")).first():
                raise ValidationError(
                    f"catalog {config.catalog_url} already belongs to a workspace; use an empty database"
                )
        ledger = Ledger(open_engine(ledger_url(root, config), ledger_metadata, create=True))
        if ledger.size():
            raise ValidationError(f"ledger {config.ledger_url} is not empty; use an empty database")
        migrate.stamp_head(catalog, migrate.CATALOG)  # made by this code's tables: at the newest revision
        migrate.stamp_head(ledger.engine, LEDGER_SCHEMA)
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
            "workspace_rules_hash": hashlib.sha256(workspace_cedar(jurisdiction).encode()).hexdigest(),
        })
        return ws

    @classmethod
    def open(cls, root: Path) -> Workspace:
        """Open a workspace; refuses an ``onshore.toml`` whose name or rule differs from the ledger.

        Refuses (SchemaError) a catalog or ledger not at this code's schema revision: older ones
        name ``onshore upgrade`` (onshore.workspace.upgrade), newer ones say to upgrade Onshore.
        The file only points at the databases; the workspace's name and its workspace-wide rule are
        those of the signed ``workspace.init`` entry, and a file saying otherwise (an edited or
        deleted ``jurisdiction``) is refused with the difference named. So is a catalog whose log
        key is not the one that entry registered.
        """
        root = Path(root)
        config = WorkspaceConfig.read(root)
        catalog = open_engine(catalog_url(root, config), catalog_metadata)
        ledger = Ledger(open_engine(ledger_url(root, config), ledger_metadata))
        try:
            migrate.check(catalog, migrate.CATALOG)
            migrate.check(ledger.engine, LEDGER_SCHEMA)
            init = governance.init_entry(ledger)
            governance.check_config(config.name, config.jurisdiction, init, str(root / CONFIG_FILE))
            with catalog.connect() as conn:
                row = conn.execute(select(T.settings.c.value).where(T.settings.c.key == "log_public_key")).first()
            if row is None or row[0] != init.get("log_public_key"):
                raise IntegrityError("the catalog's log key is not the one the ledger's workspace.init entry "
                                     "registered: the catalog and ledger belong to different workspaces")
        except BaseException:
            catalog.dispose()
            ledger.close()
            raise
        return cls(root, config, catalog, ledger, init)

    def close(self) -> None:
        self.catalog.dispose()
        self.ledger.close()

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    # -- keys ------------------------------------------------------------------------------------

    def keys_dir(self, actor: str) -> Path:
        """The key custody folder of ``actor``; refuses anything but a valid principal or the log."""
        kind, name = parse_principal(actor, allow_log=True)
        if kind == LOG_ACTOR:
            return self.root / "keys" / "log"
        return self.root / ("sites" if kind == "site" else "members") / name / "keys"

    def keystore(self, actor: str) -> KeyStore:
        ks = self._keystores.get(actor)
        if ks is None:
            ks = self._keystores[actor] = open_keystore(self.keys_dir(actor))
        return ks

    def signer(self, actor: str) -> Ed25519PrivateKey:
        """The signing key of ``actor``, only if it is the key the ledger registered for that actor.

        Every ledger entry is signed here, so this is where "the signer of an entry is the key of
        the actor it names" is kept: an unregistered actor, or a key file that is not the
        registered key (a swapped or planted file), is refused before anything is signed, and
        ``ledger verify`` can never be made to fail through an input.
        """
        key = self._signers.get(actor)
        if key is not None:
            return key
        check_principal(actor, allow_log=True)
        registered = self.public_key(actor)
        if registered is None:
            raise ValidationError(Message(N_("{actor} is not registered in this workspace; see 'onshore site list' "
                                             "and 'onshore member list'"), {"actor": actor}))
        if actor != LOG_ACTOR:
            # the catalog's key column is only a copy: the key the log registered is in the ledger
            gov = self.ledger_governance()
            kind, name = parse_principal(actor)
            site = gov.sites.get(name) if kind == "site" else None
            signed = site.public_key if site is not None else gov.members.get(name) if kind == "member" else None
            if signed != public_key_b64(registered):
                raise IntegrityError(f"catalog row {kind}s/{name}: its public key is not the one the ledger's "
                                     f"{kind}.add entry registered for {actor}; restore the catalog from a backup")
        key = self.keystore(actor).identity()
        if public_key_b64(key.public_key()) != public_key_b64(registered):
            raise IntegrityError(
                f"{self.keys_dir(actor) / IDENTITY_FILE}: this key is not the public key registered for {actor}; "
                "restore the site's or member's own key file")
        self._signers[actor] = key
        return key

    def public_key(self, actor: str) -> Ed25519PublicKey | None:
        """The registered public key of ``actor`` (from the catalog, not from key files)."""
        with self.catalog.connect() as conn:
            if actor == LOG_ACTOR:
                row = conn.execute(select(T.settings.c.value).where(T.settings.c.key == "log_public_key")).first()
            else:
                kind, _, name = actor.partition(":")
                table = {"site": T.sites, "member": T.members}.get(kind)
                if table is None or not is_name(name):
                    return None
                row = conn.execute(select(table.c.public_key).where(table.c.name == name)).first()
        return public_key_from_b64(row[0]) if row else None

    # -- ledger ----------------------------------------------------------------------------------

    def record(self, kind: str, actor: str, body: dict[str, Any], then: AppendHook | None = None) -> int:
        """Sign ``body`` as ``actor`` and append it to the ledger; returns the entry index.

        ``then`` runs inside the append's transaction (see Ledger.append). An entry about a dataset
        is signed there, linked to the previous entry about it (onshore.ledger.subjects).
        """
        return self.record_many([(kind, actor, body)], then)[0]

    def record_many(self, items: list[tuple[str, str, dict[str, Any]]], then: AppendHook | None = None
                    ) -> list[int]:
        indices = self.ledger.append([Draft(k, a, b, self.signer(a)) for k, a, b in items], then)
        if indices and indices[0] == self._seen_size:
            # nobody else appended in between: our own appends do not make what we derived stale (a
            # rule change of ours is followed by an explicit ``invalidate``)
            self._seen_size = indices[-1] + 1
        return indices

    def refresh(self, force: bool = False) -> bool:
        """Notice what other processes appended to the ledger; True when a rule may have changed.

        Looks at most every ``FRESHNESS_S`` seconds unless ``force`` (every decision forces it). When
        entries other than rule-neutral ones (``RULE_NEUTRAL_KINDS``) were appended since the last
        look, the cached decision point is dropped and True is returned, so that a server, bridge or
        dashboard re-checks what it serves or shows.
        """
        now = time.monotonic()
        if not force and now - self._seen_at < FRESHNESS_S:
            return False
        self._seen_at = now
        if self._seen_size < 0:
            self._seen_size = self.ledger.size()
            return False
        size, kinds = self.ledger.kinds_since(self._seen_size)
        self._seen_size = size
        if kinds - RULE_NEUTRAL_KINDS:
            self.invalidate()
            return True
        return False

    def open_checkpoint(self, note: str) -> ckpt.Checkpoint:
        """Check the log's signature on a checkpoint note of this workspace and parse it."""
        return ckpt.verify_checkpoint(note, self.log_vkey, self.origin)

    def verify_ledger(self, progress: Callable[[int, int], None] | None = None):  # type: ignore[no-untyped-def]
        """Recompute every signature and the tree root, and check the newest stored checkpoint
        against the recomputed tree (see Ledger.verify); ``progress(done, total)`` as it goes."""
        return self.ledger.verify(self.public_key, self.open_checkpoint, progress)

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

    def subject_head_note(self, subject: str, size: int) -> str:
        """The log-signed head note for ``subject`` in the tree of ``size`` (onshore.ledger.subjects).

        Refuses (NotFoundError) a subject with no entry in that tree.
        """
        head = self.ledger.subject_head(subject, size)
        if head is None:
            raise NotFoundError(f"the ledger's first {size} entries hold none about {subject}")
        return subjects.sign_head(subjects.SubjectHead(self.origin, subject, size, self.ledger.root(size), head.index,
                                                       merkle.leaf_hash(head.leaf)), self.origin,
                                  self.signer(LOG_ACTOR))

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

    @property
    def jurisdiction(self) -> str | None:
        """The workspace-wide jurisdiction rule, as the signed ``workspace.init`` entry states it."""
        if self._init is None:
            self._init = governance.init_entry(self.ledger)
        return self._init.get("jurisdiction")

    def ledger_governance(self) -> governance.Governance:
        """Sites, members and withdrawals as the signed ledger records them, as of now: each call
        reads what was appended since the last (``governance.GovernanceReader``)."""
        return self._governance.read()

    def _governance_after(self, gov: governance.Governance | None, behind: Callable[[governance.Governance], bool]
                          ) -> governance.Governance:
        """``gov``, or the ledger read again when ``behind(gov)``: the catalog rows just read hold
        something ``gov`` does not.

        Every command appends its signed entry before it commits the catalog rows it is about, so
        the ledger read after a catalog read holds the entry of every row read. A ``gov`` read
        before the catalog may not (another process committed in between), and that is a race,
        not a catalog that disagrees with the ledger.
        """
        return self.ledger_governance() if gov is None or behind(gov) else gov

    def site_facts(self, gov: governance.Governance | None = None) -> list[SiteFacts]:
        """Each site's jurisdiction and roles, from the ledger; refuses a catalog that disagrees."""
        with self.catalog.connect() as conn:
            rows = self._site_rows(conn)
        gov = gov or self.ledger_governance()
        try:
            governance.check_catalog_sites(gov, rows)
        except IntegrityError:
            # A site added or changed appends its site.add entry, then commits the row (and ``gov``
            # may have been read before this catalog read): read both again once no writer is in
            # progress; only what still disagrees is the catalog's.
            with settled_read(self.catalog, "the catalog") as conn:
                rows = self._site_rows(conn)
            gov = self.ledger_governance()
            governance.check_catalog_sites(gov, rows)
        return [SiteFacts(s.name, s.jurisdiction, s.roles) for s in (gov.sites[r[0]] for r in rows)]

    @staticmethod
    def _site_rows(conn: Any) -> list[tuple[str, str, str, str]]:
        return [tuple(r) for r in conn.execute(select(T.sites.c.name, T.sites.c.jurisdiction, T.sites.c.roles,
                                                      T.sites.c.public_key))]  # type: ignore[misc]

    def model_lineages(self, gov: governance.Governance | None = None) -> dict[str, list[LineageDataset]]:
        """Every catalog model's lineage datasets, with the policies their owners signed and their
        withdrawals: all from the ledger (``governance.signed_lineage``), never from catalog lineage rows.

        IntegrityError when a model row cites an entry that is not its ``model.release``.
        """
        with self.catalog.connect() as conn:
            indices = {n: int(i) for n, i in conn.execute(select(T.models.c.name, T.models.c.ledger_index))}
        gov = self._governance_after(gov, lambda g: any(i not in g.releases for i in indices.values()))
        out: dict[str, list[LineageDataset]] = {}
        for model, index in indices.items():
            names = governance.signed_lineage(gov, model, index, indices)
            missing = [d for d in names if d not in gov.grants]
            if missing:
                raise IntegrityError(f"model {model!r}: its signed lineage names dataset(s) {missing} with no live "
                                     "consent.grant in the ledger; run 'onshore ledger verify'")
            out[model] = [LineageDataset(d, gov.grants[d].owner, gov.grants[d].policy, gov.withdrawn.get(d))
                          for d in names]
        return out

    def _dataset_texts(self, gov: governance.Governance) -> dict[str, str]:
        """Each catalog dataset's Cedar text, compiled from the policy its owner signed; every row is
        checked against its grant first (``governance.check_catalog_dataset``)."""
        texts: dict[str, str] = {}
        with self.catalog.connect() as conn:
            rows = conn.execute(select(T.datasets.c.name, T.datasets.c.owner, T.datasets.c.policy,
                                       T.datasets.c.status).order_by(T.datasets.c.name)).all()
        gov = self._governance_after(gov, lambda g: any(r[0] not in g.grants for r in rows))
        for name, owner, text, status in rows:
            grant = governance.check_catalog_dataset(gov, name, owner, text)
            # the status column can only narrow: a withdrawal is the ledger's, whatever the row says
            texts[name] = dataset_cedar(name, grant.owner, grant.policy,
                                        withdrawn=status == "withdrawn" or name in gov.withdrawn)
        return texts

    def _policy_parts(self, extra: tuple[str, str, UsagePolicy] | None, gov: governance.Governance
                      ) -> tuple[str, dict[str, str], bool]:
        """The workspace rules' Cedar text; each dataset's (by name) and model's (by ``model:NAME``)
        own Cedar text; and whether the catalog read had caught up with the ledger read after it
        (every live grant has its dataset row and every release its model row)."""
        texts = self._dataset_texts(gov)
        datasets = set(texts)
        if extra is not None:
            texts[extra[0]] = dataset_cedar(extra[0], extra[1], extra[2], withdrawn=False)
        lineages = self.model_lineages(gov)
        for model, lineage in sorted(lineages.items()):
            if lineage:
                texts[f"model:{model}"] = model_cedar(model, lineage)
        after = self.ledger_governance()
        caught_up = set(after.grants) <= datasets and set(after.latest_release) <= set(lineages)
        return workspace_cedar(self.jurisdiction), texts, caught_up

    def policy_text(self, extra: tuple[str, str, UsagePolicy] | None = None,
                    gov: governance.Governance | None = None) -> str:
        """The whole Cedar policy set in force: workspace rules, then every dataset's policies.

        The workspace rule comes from the ledger's ``workspace.init``, and a dataset is withdrawn
        when the ledger says so, whatever the catalog's status column says.
        """
        rules, texts, _ = self._policy_parts(extra, gov or self.ledger_governance())
        return "\n".join([rules, *texts.values()])

    def dataset_policy(self, name: str) -> tuple[str, str]:
        """The Cedar text of dataset ``name``'s own policies as in force now, and its hash."""
        row = self.row("dataset", name)
        gov = self.ledger_governance()
        # the same text _dataset_texts compiles for it, without compiling every other dataset
        grant = governance.check_catalog_dataset(gov, name, row["owner"], row["policy"])
        text = dataset_cedar(name, grant.owner, grant.policy, withdrawn=row["status"] == "withdrawn"
                             or name in gov.withdrawn)
        return text, cedar_hash(text)

    def model_policy(self, name: str) -> tuple[str, str]:
        """The Cedar text of model ``name``'s own policies as in force now (compiled from its lineage),
        and its hash; NotFoundError for a model the catalog does not hold."""
        text = self._policy_parts(None, self.ledger_governance())[1].get(f"model:{name}")
        if text is None:
            raise NotFoundError(Message(N_("no {kind} named {name!r}; see 'onshore {kind} list'"),
                                        {"kind": "model", "name": name}))
        return text, cedar_hash(text)

    def pdp(self, extra: tuple[str, str, UsagePolicy] | None = None) -> PolicyDecisionPoint:
        """The decision point for the policies in force (``extra``: a dataset about to be ingested).

        Parsed once and kept until the registry or a dataset changes (``invalidate``), here or in
        another process (``refresh``, forced on every call).
        """
        self.refresh(force=True)
        if extra is not None or self._pdp is None:
            gov = self.ledger_governance()
            rules, texts, caught_up = self._policy_parts(extra, gov)
            pdp = PolicyDecisionPoint("\n".join([rules, *texts.values()]), self.site_facts(gov),
                                      dataset_hashes={n: cedar_hash(t) for n, t in texts.items()})
            # An ingest or release in another process appends its entries, then commits its
            # catalog row: a decision point built in between lacks the row's policy, and no later
            # entry would make refresh() drop it. So it serves this decision and is built again.
            if extra is not None or not caught_up:
                return pdp
            self._pdp = pdp
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

    def decide_many(self, requests: Sequence[Request]) -> list[tuple[Decision, int]]:
        """``decide`` each request and record every decision in one ledger transaction.

        For a caller with many questions at once (a job about to read several datasets, a
        gateway draining its queue, ``onshore policy check-many``): the decisions are signed each
        by its principal and group-committed, so the batch costs one transaction, not one per
        decision. Returns (decision, ledger index) in request order, once all are committed. All
        or none are recorded: a request that cannot be decided (bad name, unknown site or
        action) refuses the whole batch before anything is signed.
        """
        pdp = self.pdp()
        decisions = [pdp.decide(r) for r in requests]
        indices = self.record_many([("decision", d.request.principal, d.to_json()) for d in decisions])
        return list(zip(decisions, indices, strict=True))

    def authorize(self, request: Request, extra: tuple[str, str, UsagePolicy] | None = None,
                  on_allow: AppendHook | None = None) -> tuple[Decision, int]:
        """``decide``, then raise PolicyDenied (exit 3) naming the deciding rules on a deny."""
        decision, index = self.decide(request, extra, on_allow)
        if not decision.allowed:
            # a template with named fields (onshore.i18n): the CLI shows it in the reader's language;
            # action, names, rule ids and the ledger index are filled in as they are
            where = Message(N_(" at site {site} ({jurisdiction})"),
                            {"site": request.site, "jurisdiction": decision.site_jurisdiction}) if request.site else ""
            purpose = Message(N_(" for purpose {purpose!r}"), {"purpose": request.purpose}) if request.purpose else ""
            raise PolicyDenied(Message(
                N_("refused: {action} of {resource} {dataset!r} by {principal}{where}{purpose}; "
                   "deciding rule(s): {rules} (ledger entry {index})"),
                {"action": request.action, "resource": request.resource, "dataset": request.dataset,
                 "principal": request.principal, "where": where, "purpose": purpose,
                 "rules": ", ".join(decision.rules), "index": index}), list(decision.rules))
        return decision, index

    # -- catalog lookups -------------------------------------------------------------------------

    def row(self, table_name: str, name: str) -> dict[str, Any]:
        """One catalog row by name, or NotFoundError saying how to list what exists."""
        table = {"site": T.sites, "member": T.members, "embodiment": T.embodiments, "dataset": T.datasets}[
            table_name]
        with self.catalog.connect() as conn:
            row = conn.execute(select(table).where(table.c.name == name)).mappings().first()
        if row is None:
            raise NotFoundError(Message(N_("no {kind} named {name!r}; see 'onshore {kind} list'"),
                                        {"kind": table_name, "name": name}))
        return dict(row)
