"""Models in the catalog and the ledger: release, lineage, where a model sits, and every use of it.

A model's lineage is: the model -> the datasets it was trained on (with the exact shard digests
read) -> their owners (members) -> the site it was trained at; a fine-tuned model adds its base
model's lineage. A model is derived data (``residency/modelpolicy.py``): its effective policy is
the intersection of its lineage's policies, compiled to Cedar like a dataset's, and every use of it
(evaluation, fine-tuning, serving, copy, export) is a decision about the *model* that names the
dataset rule that refused. Its files are sealed at rest (``model/io.py``) with a data key per
artifact that the key service of a site releases only after that decision
(``keyservice.release_model``); a site that may not hold the model never gets a wrap.

Withdrawal of a lineage dataset reaches the model: ``taint_entries`` are recorded with the
withdrawal, and the dataset's derived-model clause decides what may still run (``model_status``).

A model here is one *version*, named by its model id (``NAME`` for version 1, ``NAME@V`` after;
``versions.py``): every function takes an id. What people type (``NAME``, ``NAME@V``,
``NAME@ALIAS``) is turned into an id once, where a command starts, by ``versions.resolve``.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert, select

from onshore.catalog import schema as T
from onshore.catalog.db import write_transaction
from onshore.errors import IntegrityError, NotFoundError, OnshoreError, ValidationError
from onshore.files import check_output_file
from onshore.i18n import N_, Message
from onshore.ledger.entries import now_iso
from onshore.model import io
from onshore.names import check_model_id
from onshore.residency.modelpolicy import EffectivePolicy, LineageDataset, ModelStatus, effective_policy, model_status
from onshore.residency.pdp import Decision, model_request
from onshore.workspace import attempts, exportfolder, governance, keyservice, modelcard, versions
from onshore.workspace.paths import check_plaintext_destination
from onshore.workspace.registry import get_site
from onshore.workspace.workspace import Workspace

if TYPE_CHECKING:
    from onshore.model.policy import LoadedModel

#: The stem of a released model's files (``model.safetensors`` and ``model.json``, sealed).
STEM = "model"
#: How a model derives from a dataset (``derived_from``'s ``via``, also signed into ``model.taint``
#: entries, so the words themselves never change; the dashboard shows them translated).
VIA_TRAINED = N_("trained on it")
VIA_FINE_TUNED = N_("fine-tuned from {base}")


def artifact_context(name: str) -> str:
    """The context a released model's files are sealed under (``io.write_artifact``)."""
    return f"model:{check_model_id(name)}"


@dataclass
class ModelRelease:
    """What a finished training job registers. ``name`` is the version's model id."""

    name: str
    site: str
    purpose: str
    size: str
    config: dict[str, Any]
    folder: str  # relative to the site root
    files: dict[str, str]
    parameters: int
    steps: int
    world_size: int
    metrics: dict[str, Any]
    datasets: list[dict[str, Any]]  # name, owner, embodiment, weight, shards, decision_index
    base: str | None = None
    job: dict[str, Any] = field(default_factory=dict)
    sealed: dict[str, str] = field(default_factory=dict)  # sealed file name -> sha256 on disk


def check_unreleased(ws: Workspace, model: str) -> None:
    """Refuse a model id that the catalog or the ledger already holds (a version is released once)."""
    check_model_id(model)
    with ws.catalog.connect() as conn:
        taken = conn.execute(select(T.models.c.name).where(T.models.c.name == model)).first()
    if taken or model in ws.ledger_governance().latest_release:
        name, version = versions.split_id(model)
        raise ValidationError(f"model {name!r} version {version} was released while this run started; run the "
                              "command again to train the next version")


def release(ws: Workspace, r: ModelRelease, data_key: bytes) -> int:
    """Record a finished model: catalog rows, a ``model.release`` ledger entry signed by the site,
    and its data key wrapped for the training site (the only site that holds it so far).

    ``r.name`` is the version's model id; the entry also names the model's name and version."""
    check_model_id(r.name)
    with write_transaction(ws.catalog, "the catalog") as conn:
        # checked again in the write turn: two runs with the same --name race to here
        if conn.execute(select(T.models.c.name).where(T.models.c.name == r.name)).first():
            raise ValidationError(f"model {r.name!r} already exists; choose a new --name (see 'onshore model list')")
        name, version = versions.split_id(r.name)
        idx = ws.record("model.release", f"site:{r.site}", {
            "model": r.name, "name": name, "version": version, "site": r.site,
            "jurisdiction": get_site(ws, r.site).jurisdiction,
            "purpose": r.purpose, "base": r.base, "size": r.size, "files": r.files, "sealed": r.sealed,
            "steps": r.steps, "world_size": r.world_size, "parameters": r.parameters, "job": r.job,
            "datasets": [{k: d[k] for k in ("name", "owner", "shards", "decision_index")} for d in r.datasets]})
        conn.execute(insert(T.models).values(
            name=r.name, site=r.site, purpose=r.purpose, base=r.base, size=r.size, config=json.dumps(r.config),
            folder=r.folder, files=json.dumps(r.files), parameters=r.parameters, steps=r.steps,
            world_size=r.world_size, metrics=json.dumps(r.metrics), created_at=now_iso(), ledger_index=idx))
        conn.execute(insert(T.model_datasets), [
            {"model": r.name, "dataset": d["name"], "owner": d["owner"], "embodiment": d["embodiment"],
             "weight": str(d["weight"]), "shards": json.dumps(d["shards"]), "decision_index": d["decision_index"]}
            for d in r.datasets])
        keyservice.wrap_model_for_site(ws, conn, r.name, r.site, data_key, idx, keep_custody_key=True)
    ws.invalidate()  # the model's Cedar joins the policy set
    return idx


def get_model(ws: Workspace, name: str) -> dict[str, Any]:
    """The catalog row of model ``name`` (JSON fields decoded), or NotFoundError."""
    with ws.catalog.connect() as conn:
        row = conn.execute(select(T.models).where(T.models.c.name == name)).mappings().first()
    if row is None:
        raise NotFoundError(Message(N_("no {kind} named {name!r}; see 'onshore {kind} list'"),
                                    {"kind": "model", "name": name}))
    out = dict(row)
    for k in ("config", "files", "metrics"):
        out[k] = json.loads(out[k])
    return out


def model_folder(ws: Workspace, row: dict[str, Any], site: str | None = None) -> Path:
    """Where the model's sealed files are at ``site`` (default: the training site)."""
    return Path(get_site(ws, site or row["site"]).root) / row["folder"]


def release_entry(ws: Workspace, name: str) -> dict[str, Any]:
    """The body of the model's ``model.release`` entry in the signed ledger: the digests that count.

    Refuses (IntegrityError) a catalog whose ledger index for the model is not that entry.
    """
    row = get_model(ws, name)
    entry = ws.ledger.get(int(row["ledger_index"]))
    if entry.entry.kind != "model.release" or entry.entry.body.get("model") != name:
        raise IntegrityError(f"the catalog says ledger entry {row['ledger_index']} released model {name!r}, but it "
                             f"is a {entry.entry.kind}; run 'onshore ledger verify' and investigate")
    return entry.entry.body


def sites_of(ws: Workspace, name: str) -> list[dict[str, Any]]:
    """Every site that holds the model (its files and a wrap of its key): site, jurisdiction, ledger index."""
    with ws.catalog.connect() as conn:
        rows = conn.execute(select(T.model_key_wraps.c.site, T.model_key_wraps.c.ledger_index)
                            .where(T.model_key_wraps.c.model == name).order_by(T.model_key_wraps.c.ledger_index)).all()
    return [{"site": s, "jurisdiction": get_site(ws, s).jurisdiction, "ledger_index": i} for s, i in rows]


def _datasets_of(ws: Workspace, name: str) -> dict[str, dict[str, Any]]:
    # the catalog's lineage rows hold what the release entry does not (embodiment, weight); they
    # never decide which datasets a model derives from
    with ws.catalog.connect() as conn:
        rows = conn.execute(select(T.model_datasets).where(T.model_datasets.c.model == name)).mappings().all()
    return {r["dataset"]: dict(r) for r in rows}


def _release_indices(ws: Workspace) -> dict[str, int]:
    """The ``model.release`` entry the catalog cites for each model it holds."""
    with ws.catalog.connect() as conn:
        return {n: int(i) for n, i in conn.execute(select(T.models.c.name, T.models.c.ledger_index))}


def lineage(ws: Workspace, name: str) -> list[dict[str, Any]]:
    """The model and its ancestors, newest first: name, site, purpose and datasets of each.

    Read from the signed ``model.release`` entries (datasets, base), so a deleted catalog lineage
    row or base model row changes nothing; IntegrityError for a model whose release is not in the ledger.
    """
    get_model(ws, name)
    gov = ws.ledger_governance()
    indices = _release_indices(ws)
    with ws.catalog.connect() as conn:
        embodiment = dict(conn.execute(select(T.datasets.c.name, T.datasets.c.embodiment)).all())
        created = dict(conn.execute(select(T.models.c.name, T.models.c.created_at)).all())
    out, seen = [], set()
    current: str | None = name
    while current is not None and current not in seen:
        seen.add(current)
        rel = governance.model_release(gov, current, indices.get(current))
        body = ws.ledger.get(rel.index).entry.body
        rows = _datasets_of(ws, current)
        site = gov.sites.get(rel.site)
        out.append({"model": current, "site": rel.site, "jurisdiction": site.jurisdiction if site else None,
                    "purpose": body.get("purpose"), "created_at": created.get(current),
                    "datasets": [{"model": current, "dataset": d["name"], "owner": d["owner"],
                                  "embodiment": rows.get(d["name"], {}).get("embodiment") or embodiment.get(d["name"]),
                                  "weight": rows.get(d["name"], {}).get("weight"), "shards": d["shards"],
                                  "decision_index": d["decision_index"]}
                                 for d in sorted(body.get("datasets") or (), key=lambda x: x["name"])]})
        current = rel.base
    return out


def derived_from(ws: Workspace, dataset: str) -> list[dict[str, Any]]:
    """Every catalog model trained on ``dataset``, directly or through the models it was fine-tuned
    from (its signed lineage: ``Workspace.model_lineages``)."""
    indices = _release_indices(ws)
    gov = ws.ledger_governance()
    found: dict[str, str] = {}
    for model, index in indices.items():
        rel = governance.model_release(gov, model, index)
        if dataset in rel.datasets:
            found[model] = VIA_TRAINED
        elif dataset in governance.signed_lineage(gov, model, index, indices):
            found[model] = VIA_FINE_TUNED.format(base=rel.base)
    sites = {m: governance.model_release(gov, m, indices[m]).site for m in found}
    return [{"model": m, "site": sites[m], "via": how} for m, how in sorted(found.items())]


def lineage_datasets(ws: Workspace, name: str) -> list[LineageDataset]:
    """The model's lineage datasets with their policies and withdrawals (read from the ledger)."""
    get_model(ws, name)
    return ws.model_lineages().get(name, [])


def effective(ws: Workspace, name: str) -> EffectivePolicy:
    """The model's effective policy: the intersection of its lineage's policies."""
    return effective_policy(lineage_datasets(ws, name))


def status(ws: Workspace, name: str, today: dt.date | None = None) -> ModelStatus:
    """ok, tainted, must-retrain-by DATE or blocked, with the reasons (see ``modelpolicy.model_status``)."""
    return model_status(lineage_datasets(ws, name), today or dt.datetime.now(dt.UTC).date())


def decide(ws: Workspace, name: str, action: str, site: str, purpose: str | None = None) -> tuple[Decision, int]:
    """Decide ``action`` on model ``name`` at ``site`` for ``purpose``, recorded; nothing else happens."""
    get_model(ws, name)
    get_site(ws, site)
    return ws.decide(model_request(f"site:{site}", action, name, site, purpose))


@dataclass
class OpenedModel:
    """A model whose data key a site's key service released for one decided action."""

    name: str
    site: str
    folder: Path
    files: dict[str, str]   # plaintext digests, from the ledger's model.release
    sealed: dict[str, str]  # sealed-file digests, from the same entry
    decision_index: int
    release_index: int
    key: bytes = field(repr=False)

    @property
    def context(self) -> str:
        return artifact_context(self.name)

    def plaintexts(self) -> dict[str, bytes]:
        """The decrypted files, after every digest check against the ledger (IntegrityError otherwise)."""
        return io.read_plaintexts(self.folder, STEM, self.key, self.context, self.files, self.sealed)


def _usable(ws: Workspace, name: str, site: str, action: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The model's catalog row and signed release body, once the site exists and the version is not
    archived for ``action``: what every use checks before it asks the decision point."""
    row = get_model(ws, name)
    get_site(ws, site)
    versions.check_usable(ws, name, action)
    return row, release_entry(ws, name)


def decide_use(ws: Workspace, name: str, site: str, action: str, purpose: str | None = None
               ) -> tuple[dict[str, Any], int]:
    """The checks and the decision of :func:`open_model` without a key release: for an exported,
    plaintext copy of the model (``workspace/exported.py``), which has no key to release. Refuses
    exactly what ``open_model`` refuses before its key release; returns the model's signed
    ``model.release`` body and the decision's ledger index."""
    _, body = _usable(ws, name, site, action)
    _, index = keyservice.decide_model(ws, name, site, action, purpose)
    return body, index


def open_model(ws: Workspace, name: str, site: str, action: str, purpose: str | None = None) -> OpenedModel:
    """Decide ``action`` on the model at ``site`` and release its key there (both recorded).

    Refuses (PolicyDenied, exit 3) what the model's Cedar denies, naming the lineage dataset's
    rule; (OnshoreError) a site that does not hold the model; (ValidationError) serving or
    fine-tuning (``train``) an archived version, before anything is decided. Files are not read here.
    """
    row, body = _usable(ws, name, site, action)
    rel = keyservice.release_model(ws, name, site, action, purpose)
    return OpenedModel(name, site, model_folder(ws, row, site), dict(body["files"]), dict(body.get("sealed") or {}),
                       rel.decision_index, rel.index, rel.key)


def load_model_for(ws: Workspace, name: str, site: str, action: str = "read", purpose: str | None = None
                   ) -> LoadedModel:
    """The model ready to act at ``site`` for ``action`` ("read" for evaluation, "train" for
    fine-tuning, "serve" for serving), after the decision and the key release (both recorded).

    Every file is checked against the digests the ledger's ``model.release`` recorded (sealed and
    plaintext): an altered file on disk is refused (IntegrityError) before any byte is used.
    Refused with PolicyDenied (exit 3): whatever the model's Cedar denies, e.g. serving a model
    whose lineage dataset was withdrawn under ``stop-serving``, naming that dataset's rule.
    """
    from onshore.model.policy import build  # torch only when a model is used

    opened = open_model(ws, name, site, action, purpose)
    tensors, meta = io.read_artifact(opened.folder, STEM, opened.key, opened.context, opened.files, opened.sealed)
    return build(tensors, meta)


def copy_model(ws: Workspace, name: str, to_site: str, from_site: str | None = None) -> dict[str, Any]:
    """Copy the model's sealed files to ``to_site`` and wrap its key for that site.

    Decided as ``copy`` of the model by the target at the target: a site outside the lineage's
    intersection is refused (exit 3) naming the dataset rule, before any byte moves or any wrap is
    made. The sealed files move as they are (same data key) and are checked against the ledger's
    digests; the copy is recorded as ``model.copy`` signed by the target.

    One copy of a model to a site at a time: a second process copying the same model to the same
    site is refused at once (``attempts.Busy``) before it decides or writes anything, and one that
    starts after the first finished is refused as already there, so the winner's files and key
    are never touched by a loser.
    """
    row = get_model(ws, name)
    target = get_site(ws, to_site)
    with attempts.exclusive(ws, f"copy.{name}.{to_site}",
                            f"another process is copying model {name!r} to site {to_site!r} right now; wait for "
                            f"it to finish, then see 'onshore model show {name}'"):
        held = [s["site"] for s in sites_of(ws, name)]  # read under the lock: a finished rival counts
        if to_site in held:
            raise ValidationError(f"model {name!r} is already at site {to_site!r}")
        source = from_site or (row["site"] if row["site"] in held else (held[0] if held else None))
        if source is None or source not in held:
            raise ValidationError(f"model {name!r} is not at site {from_site!r}; it sits at "
                                  f"{', '.join(held) or 'no site'}")
        body = release_entry(ws, name)
        rel = keyservice.release_model(ws, name, source, "copy", copy_to=to_site)
        dst = model_folder(ws, row, to_site)
        written = io.copy_sealed(model_folder(ws, row, source), dst, STEM, dict(body.get("sealed") or {}))
        try:
            # the catalog's write turn (not a deferred transaction): on SQLite two writers would
            # otherwise both read first and one fail with "database is locked" after its entry
            with write_transaction(ws.catalog, "the catalog") as conn:
                idx = ws.record("model.copy", f"site:{to_site}", {
                    "model": name, "from": source, "to": to_site, "jurisdiction": target.jurisdiction,
                    "decision_index": rel.decision_index, "release_index": rel.index,
                    "policy_hash": rel.decision.policy_hash, "sealed": body.get("sealed")})
                keyservice.wrap_model_for_site(ws, conn, name, to_site, rel.key, idx)
        except BaseException:
            for p in written:
                p.unlink(missing_ok=True)
            raise
    return {"model": name, "from": source, "to": to_site, "files": len(written), "ledger_index": idx}


def card_facts(ws: Workspace, name: str, tasks: list[str] | None = None) -> modelcard.CardFacts:
    """What the model's card says (``modelcard.CardFacts``): ``show_model``, the frames of the shards
    its release read per dataset, its ``model.eval`` entries, and ``tasks`` when the caller has them."""
    info = show_model(ws, name)
    frames: dict[str, int] = {}
    with ws.catalog.connect() as conn:
        for d in info["lineage"][0]["datasets"]:
            rows = conn.execute(select(T.shards.c.sha256, T.shards.c.frames).where(
                T.shards.c.dataset == d["dataset"])).all()
            read = set(d["shards"])
            frames[d["dataset"]] = sum(dict((h, int(n)) for h, n in rows if h in read).values())
    evals = [{**e.entry.body, "index": e.index} for e in ws.ledger.entries(kinds=("model.eval",))
             if e.entry.body.get("model") == name]
    return modelcard.CardFacts(info, frames, evals, list(tasks or ()))


def model_card(ws: Workspace, name: str, tasks: list[str] | None = None) -> str:
    """The model version's card (``README.md``, Hugging Face layout): see ``modelcard``."""
    return modelcard.render(card_facts(ws, name, tasks))


def export_model(ws: Workspace, name: str, site: str, out: Path, purpose: str | None = None,
                 force: bool = False) -> dict[str, Any]:
    """Write the model as plain ``model.safetensors`` + ``model.json`` into the folder ``out``, with
    its card (``README.md``, ``model_card``: what it was trained on, where, its policy in plain
    words, its evaluations, how to load it).

    Plaintext leaving the store: decided as ``export`` of the model at ``site`` (refused, exit 3,
    for a purpose or place a lineage dataset refuses, or a model under ``stop-serving``). ``out``
    is checked first: never inside a site's folder or the workspace's internals, and a folder
    holding files only with ``force``. The export, with the files' SHA-256 (and the card's, as
    ``card``), is recorded as ``model.export`` signed by the site.
    """
    get_model(ws, name)
    out = Path(out)
    check_plaintext_destination(ws, out, "--out")
    if out.exists() and not out.is_dir():
        raise ValidationError(f"--out {out}: is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ValidationError(f"--out {out}: is not empty; choose a new folder or pass --force to overwrite")
    if not out.parent.is_dir():
        raise ValidationError(f"--out {out}: folder {out.parent} does not exist; create it first")
    for plain in (*exportfolder.FILES, exportfolder.MANIFEST):
        if (out / plain).exists():
            check_output_file(out / plain, force, "--out")
    opened = open_model(ws, name, site, "export", purpose)
    plaintexts = opened.plaintexts()
    meta = json.loads(plaintexts[f"{STEM}.json"])
    card = model_card(ws, name, [str(t) for t in meta.get("tasks") or ()]).encode()
    (out / exportfolder.MANIFEST).unlink(missing_ok=True)  # a folder without one is an unfinished export
    digests = io.write_plain(out, plaintexts)
    card_digest = io.write_plain(out, {modelcard.FILE: card})[modelcard.FILE]
    idx = ws.record("model.export", f"site:{site}", {
        "model": name, "site": site, "jurisdiction": get_site(ws, site).jurisdiction, "purpose": purpose,
        "decision_index": opened.decision_index, "release_index": opened.release_index, "files": digests,
        "card": card_digest})
    manifest = exportfolder.Manifest(name, int(get_model(ws, name)["ledger_index"]), idx, site, purpose,
                                     {**digests, modelcard.FILE: card_digest})
    exportfolder.write_manifest(out, manifest)
    return {"model": name, "site": site, "out": str(out), "files": digests, "card": card_digest,
            "manifest": exportfolder.MANIFEST, "ledger_index": idx}


@dataclass
class VerifiedExport:
    """An export folder whose every file matched its manifest and the signed ledger: the model
    version it holds, the plaintext digests of its weights and JSON (those of the ``model.release``
    entry), and the bytes that were checked (``plaintexts``), which are the bytes to use."""

    folder: Path
    model: str
    files: dict[str, str]
    manifest: exportfolder.Manifest
    plaintexts: dict[str, bytes] = field(repr=False)


def verify_export(ws: Workspace, folder: Path) -> VerifiedExport:
    """Check an export folder against the workspace's signed ledger; nothing is decided or recorded.

    After the layout and manifest checks of ``exportfolder.read_manifest``, refuses
    (IntegrityError): a manifest whose release index is not the ledger's ``model.release`` of its
    model, or whose weights' and JSON's SHA-256 differ from that entry's; one whose export index is
    not a ``model.export`` entry of the model recording those files and the card's SHA-256; and
    any file whose bytes differ from the manifest (a tampered file). (NotFoundError) a model this
    workspace never released (an export from another workspace is loaded in that one).
    """
    folder = Path(folder)
    m = exportfolder.read_manifest(folder)
    try:
        row = get_model(ws, m.model)
    except NotFoundError:
        raise NotFoundError(f"{folder}: its manifest names model {m.model!r}, which this workspace never released; "
                            "nothing was loaded. Load an export in the workspace it was exported from") from None
    body = release_entry(ws, m.model)
    weights = {n: m.files[n] for n in io.file_names(STEM)}
    if int(row["ledger_index"]) != m.release_index:
        raise IntegrityError(f"{folder}: its manifest cites ledger entry {m.release_index} as the release of "
                             f"{m.model!r}, but the ledger released it in entry {row['ledger_index']}; nothing was "
                             "loaded")
    if dict(body["files"]) != weights:
        raise IntegrityError(f"{folder}: the SHA-256 its manifest lists for {', '.join(weights)} differ from the "
                             f"model.release ledger entry {m.release_index} of {m.model!r}; nothing was loaded")
    try:
        export = ws.ledger.get(m.export_index).entry
    except OnshoreError:
        export = None
    if export is None or export.kind != "model.export" or export.body.get("model") != m.model \
            or export.body.get("files") != weights or export.body.get("card") != m.files[modelcard.FILE]:
        raise IntegrityError(f"{folder}: its manifest cites ledger entry {m.export_index}, which is not the "
                             f"model.export of these files of {m.model!r}; nothing was loaded")
    plaintexts = io.read_plain(folder, m.files)  # the bytes used from here on are the bytes checked
    return VerifiedExport(folder, m.model, weights, m, plaintexts)


def open_export(ws: Workspace, folder: Path, site: str, action: str, purpose: str | None = None
                ) -> tuple[VerifiedExport, int]:
    """Verify an export folder (``verify_export``) and decide ``action`` on its model at ``site``
    as a use of the model by name is decided (``decide_use``: archived versions, the model's Cedar,
    the ledger's withdrawals); returns it with the decision's ledger index. A refused folder
    records nothing; a refused decision is recorded, as every decision is."""
    verified = verify_export(ws, folder)
    row = get_model(ws, verified.model)
    _, index = decide_use(ws, verified.model, site, action, purpose or row["purpose"])
    return verified, index


def load_export_for(ws: Workspace, folder: Path, site: str, action: str = "read", purpose: str | None = None
                    ) -> tuple[LoadedModel, VerifiedExport]:
    """The model of an export folder ready to act at ``site`` for ``action``, after ``open_export``."""
    from safetensors.torch import load as load_bytes

    from onshore.model.policy import build  # torch only when a model is used

    verified, _ = open_export(ws, folder, site, action, purpose)
    weights, doc = io.file_names(STEM)
    loaded = build(load_bytes(verified.plaintexts[weights]), json.loads(verified.plaintexts[doc]))
    return loaded, verified


def record_eval(ws: Workspace, name: str, site: str, env: str, seed: int, tasks: dict[str, Any],
                export: str | None = None) -> int:
    """Record an evaluation's results (``model.eval`` signed by the site) for the model's attestation.

    ``tasks``: {task: {"success_rate", "episodes", ...}} as ``onshore eval --json`` prints them;
    ``export``: the export folder evaluated, when it was one (named in the entry).
    """
    get_model(ws, name)
    get_site(ws, site)
    body: dict[str, Any] = {"model": name, "site": site, "env": env, "seed": seed, "tasks": tasks}
    if export is not None:
        body["export"] = str(Path(export).resolve())
    return ws.record("model.eval", f"site:{site}", body)


def taint_entries(ws: Workspace, dataset: str, member: str, clause: str) -> list[tuple[str, str, dict[str, Any]]]:
    """The ``model.taint`` entries a withdrawal of ``dataset`` records, one per derived model.

    Signed by the withdrawing member (it is their consent that changed); each names the model,
    how it derives from the dataset, and the clause that now governs it.
    """
    return [("model.taint", f"member:{member}", {"model": m["model"], "dataset": dataset, "via": m["via"],
                                                  "clause": clause, "site": m["site"]})
            for m in derived_from(ws, dataset)]


def taints(ws: Workspace, name: str) -> list[dict[str, Any]]:
    """The model's ``model.taint`` entries in the ledger: dataset, clause, how, and the entry index."""
    return [{**e.entry.body, "index": e.index} for e in ws.ledger.entries(kinds=("model.taint",))
            if e.entry.body.get("model") == name]


def list_models(ws: Workspace) -> list[dict[str, Any]]:
    """Every model version: its id (``name``), model name and version, training site, purpose, size,
    datasets, the sites holding it, its status, its aliases and whether it is archived."""
    with ws.catalog.connect() as conn:
        rows = conn.execute(select(T.models.c.name, T.models.c.site, T.models.c.purpose, T.models.c.base,
                                   T.models.c.size, T.models.c.parameters, T.models.c.steps,
                                   T.models.c.world_size, T.models.c.created_at)
                            .order_by(T.models.c.name)).mappings().all()
        held = conn.execute(select(T.model_key_wraps.c.model, T.model_key_wraps.c.site)).all()
    indices = _release_indices(ws)
    gov = ws.ledger_governance()  # after the catalog: see Workspace._governance_after
    by_model = {m: list(governance.model_release(gov, m, i).datasets) for m, i in indices.items()}
    sites: dict[str, list[str]] = {}
    for m, s in held:
        sites.setdefault(m, []).append(s)
    lineages = ws.model_lineages(gov)
    today = dt.datetime.now(dt.UTC).date()
    reg = versions.read_registry(ws)
    out = []
    for r in rows:
        m = r["name"]
        info = reg.to_json(m)
        out.append({**dict(r), "model_name": info["model_name"], "version": info["version"],
                    "aliases": info["aliases"], "archived": info["archived"], "tags": info["tags"],
                    "datasets": sorted(by_model.get(m, [])), "sites": sorted(sites.get(m, [])),
                    "status": model_status(lineages[m], today).label() if lineages.get(m) else "blocked"})
    return sorted(out, key=lambda x: (x["model_name"], x["version"]))


def show_model(ws: Workspace, name: str) -> dict[str, Any]:
    """Everything about a model version: size, metrics, where its files sit, its lineage, effective
    policy, status and taints; its model name, version, the name's versions, its aliases, tags,
    description and whether it is archived (``versions.Registry.to_json``)."""
    row = get_model(ws, name)
    site = get_site(ws, row["site"])
    folder = model_folder(ws, row)
    members = sorted({d["owner"] for level in lineage(ws, name) for d in level["datasets"]})
    body = release_entry(ws, name)
    cedar, chash = ws.model_policy(name)
    return {
        "name": name, "site": row["site"], "jurisdiction": site.jurisdiction, "purpose": row["purpose"],
        "base": row["base"], "size": row["size"], "parameters": row["parameters"], "steps": row["steps"],
        "world_size": row["world_size"], "created_at": row["created_at"], "metrics": row["metrics"],
        "config": row["config"],
        "files": {n: {"sha256": h, "sealed": f"{n}{io.SEALED_SUFFIX}",
                      "sealed_sha256": (body.get("sealed") or {}).get(f"{n}{io.SEALED_SUFFIX}"),
                      "path": str(folder / f"{n}{io.SEALED_SUFFIX}")} for n, h in row["files"].items()},
        "sites": sites_of(ws, name), "ledger_index": row["ledger_index"], "members": members,
        "lineage": lineage(ws, name), "effective_policy": effective(ws, name).to_json(),
        "status": status(ws, name).to_json(), "taints": taints(ws, name),
        "cedar": cedar, "cedar_hash": chash, **versions.read_registry(ws).to_json(name),
    }


def policy_factory(ws: Workspace, name: str, site: str, embodiment: str, purpose: str | None = None,
                   ensemble: bool | None = None):  # type: ignore[no-untyped-def]
    """A picklable factory of the model acting for ``embodiment`` at ``site`` (evaluation workers),
    with temporal ensembling on or off as ``ensemble`` says (None: as the model's config says).

    Decided as ``read`` of the model at ``site`` for ``purpose`` (default: the purpose it was
    trained for) and its key released there, both recorded; the factory carries the released
    key and the ledger's digests, and every worker checks them when it opens the files. Refuses
    (before any decision) a model that was never trained on that embodiment.
    """
    from onshore.model.policy import ModelPolicyFactory  # torch only when a model is used

    _check_embodiment(ws, name, embodiment)
    row = get_model(ws, name)
    opened = open_model(ws, name, site, "read", purpose or row["purpose"])
    return ModelPolicyFactory(str(opened.folder), tuple(sorted(opened.files.items())), embodiment,
                              label=f"model:{name}", ensemble=ensemble, key=opened.key, context=opened.context,
                              sealed=tuple(sorted(opened.sealed.items())))


def _check_embodiment(ws: Workspace, name: str, embodiment: str) -> None:
    known = {d["embodiment"] for level in lineage(ws, name) for d in level["datasets"]}
    if embodiment not in known:
        raise ValidationError(f"model {name!r} knows embodiment(s) {', '.join(sorted(known))}, not {embodiment!r}; "
                              "fine-tune it on data of that machine first ('onshore finetune')")


def export_policy_factory(ws: Workspace, folder: Path, site: str, embodiment: str, purpose: str | None = None,
                          ensemble: bool | None = None):  # type: ignore[no-untyped-def]
    """:func:`policy_factory` for an export folder: verified (``verify_export``), checked for the
    embodiment, then decided as ``read`` of its model at ``site`` (``decide_use``, recorded).
    Workers read the folder's plain files themselves and check them against the ledger's digests
    again, so a file swapped after this check is refused there. Returns (factory, model id)."""
    from onshore.model.policy import ModelPolicyFactory  # torch only when a model is used

    verified = verify_export(ws, folder)
    _check_embodiment(ws, verified.model, embodiment)
    decide_use(ws, verified.model, site, "read", purpose or get_model(ws, verified.model)["purpose"])
    factory = ModelPolicyFactory(str(Path(folder).resolve()), tuple(sorted(verified.files.items())), embodiment,
                                 label=f"model:{verified.model}", ensemble=ensemble, plaintext=True)
    return factory, verified.model
