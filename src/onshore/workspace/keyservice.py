"""A site's key service: the only way a dataset's data key is wrapped for, or released at, a site.

The key service decides for itself. A caller names what it wants (dataset, site, action, purpose);
the service refuses any dataset whose withdrawal is in the signed ledger, then asks the policy
decision point itself, records that decision, and only on an allow unwraps and records the release
citing its own decision. No decision object is ever taken from a caller, so a decision made for
another site, dataset or purpose, or one built by hand, cannot release a key.

Key material: the data key is wrapped (AES-256-GCM, bound to dataset and site) under the dataset's
key-encryption key in the site's key custody (``KeyStore.wrap``: a file, or a PKCS#11 token); the catalog keeps only the
wrap. Withdrawal destroys the custody key at every site, so a catalog restored from a backup holds
wraps that no longer open.

Models are handled the same way: each model artifact has its own data key, wrapped under the
model's key-encryption key in the custody of each site that holds the model (``model_key_wraps``
in the catalog), and released only after the decision point allows the action on the *model*
(whose Cedar repeats every lineage dataset's clauses, ``residency/modelpolicy.py``). A site that
may not hold the model is never given a wrap. A training job's checkpoints are sealed with a job
key wrapped under the same custody key, its wrap kept beside them; a resumed run gets that key only
through :func:`release_checkpoint`, which decides and records like any other release.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import delete, insert, select, update

from onshore.catalog import schema as T
from onshore.errors import NotFoundError, OnshoreError, PolicyDenied, ValidationError
from onshore.i18n import N_, Message
from onshore.keys.envelope import new_data_key
from onshore.ledger.entries import now_iso
from onshore.ledger.log import AppendHook
from onshore.names import check_model_id, check_name
from onshore.residency.modelpolicy import STOP_SERVING_ACTIONS
from onshore.residency.pdp import Decision, Request, model_request
from onshore.workspace.workspace import Workspace

#: The rule a refusal names when the ledger records a withdrawal of the dataset.
WITHDRAWN_RULE = "keyservice/withdrawn-in-ledger"


@dataclass(frozen=True)
class Release:
    """A released data key with the decision the key service made for it and the ledger indices."""

    key: bytes
    decision: Decision
    decision_index: int
    index: int  # the key.release entry


def _context(dataset: str, site: str) -> bytes:
    return f"onshore-dataset-key:v1:{dataset}:{site}".encode()


def withdrawal_index(ws: Workspace, dataset: str) -> int | None:
    """The ledger index of the dataset's ``consent.withdraw`` entry, or None.

    Read from the signed ledger, not from the catalog's status column, which a restored backup
    would set back to active.
    """
    for e in ws.ledger.entries(kinds=("consent.withdraw",)):
        if e.entry.body.get("dataset") == dataset:
            return e.index
    return None


def _refuse_withdrawn(ws: Workspace, dataset: str, what: str) -> None:
    idx = withdrawal_index(ws, dataset)
    if idx is not None:
        raise PolicyDenied(Message(
            N_("refused: {action} of dataset {dataset!r}: consent was withdrawn (ledger entry {index}) and its keys "
               "destroyed; the key service never handles it again, whatever the catalog says; "
               "deciding rule(s): {rules}"),
            {"action": what, "dataset": dataset, "index": idx, "rules": WITHDRAWN_RULE}), [WITHDRAWN_RULE])


def _refuse_withdrawn_lineage(ws: Workspace, model: str, action: str) -> None:
    """PolicyDenied when a dataset of the model's signed lineage is withdrawn in the ledger under a
    clause that forbids ``action`` now (``residency.modelpolicy``: stop-serving forbids serve and
    export; a passed retrain-by date forbids every action)."""
    today = dt.datetime.now(dt.UTC).date()
    for d in ws.model_lineages().get(model, []):
        if not d.withdrawn:
            continue
        rule = f"model/{model}/dataset/{d.name}"
        if d.policy.derived_models == "stop-serving" and action in STOP_SERVING_ACTIONS:
            rule += "/withdrawn-stop-serving"
        elif d.policy.retrain_by is not None and today > d.policy.retrain_by:
            rule += "/withdrawn-retrain-by"
        else:
            continue
        raise PolicyDenied(Message(
            N_("refused: {action} of model {model!r}: dataset {dataset!r} of its lineage was withdrawn (ledger entry "
               "{index}) under {clause}; the key service releases no key for it; deciding rule(s): {rules}"),
            {"action": action, "model": model, "dataset": d.name, "index": d.withdrawn_index,
             "clause": d.policy.derived_models, "rules": rule}), [rule])


def wrap_for_site(ws: Workspace, conn: Any, dataset: str, site: str, data_key: bytes) -> None:
    """Store ``data_key`` wrapped for ``site``, inside the caller's catalog transaction.

    Creates the dataset's key-encryption key in the site's custody (a leftover one from a crashed
    attempt, with no wrap in the catalog, is replaced). Callers only do this after an allow
    decision for placing the dataset at ``site``. Refuses a dataset withdrawn in the ledger.
    """
    check_name(dataset, "dataset")
    _refuse_withdrawn(ws, dataset, f"placing a key at site {site!r}")
    store = ws.keystore(f"site:{site}")
    if store.has_dataset_key(dataset):
        held = conn.execute(select(T.key_wraps.c.site).where(
            T.key_wraps.c.dataset == dataset, T.key_wraps.c.site == site)).first()
        if held is not None:
            raise ValidationError(f"site {site!r} already holds a key for dataset {dataset!r}")
        store.destroy_dataset_key(dataset)  # a crashed attempt's key: nothing committed uses it
    store.create_dataset_key(dataset)
    wrapped = store.wrap("dataset", dataset, data_key, _context(dataset, site))
    conn.execute(insert(T.key_wraps).values(dataset=dataset, site=site, wrapped=wrapped, created_at=now_iso()))


def release(ws: Workspace, dataset: str, site: str, action: str, purpose: str | None = None,
            copy_to: str | None = None, on_allow: AppendHook | None = None) -> Release:
    """Unwrap the dataset key at ``site`` for ``action``, after deciding so itself; records both.

    For a copy, ``copy_to`` names the target: the key service of the source ``site`` asks whether
    the target may copy the dataset there (the same question ``copy`` is decided by). Refuses
    (PolicyDenied, exit 3): a dataset with a withdrawal in the ledger, and any request the decision
    point denies; the decision is in the ledger either way. Refuses (OnshoreError) a site that holds
    no wrap or no custody key for the dataset (never placed there, or destroyed on withdrawal).
    ``on_allow`` runs in the allow decision's ledger transaction (a copy opens its attempt there).
    """
    check_name(dataset, "dataset")
    check_name(site, "site")
    if (action == "copy") != (copy_to is not None):
        raise ValidationError("a key release for a copy names its target (copy_to), and only a copy does")
    if copy_to is not None:
        request = Request(f"site:{copy_to}", "copy", dataset, copy_to)
    else:
        request = Request(f"site:{site}", action, dataset, site, purpose)
    decision, decision_index = ws.authorize(request, None, on_allow)
    # The decision point already forbids withdrawn datasets; this second look at the ledger holds
    # even when the catalog (and so the compiled policy set) was restored from an older backup.
    _refuse_withdrawn(ws, dataset, f"{action} at site {site!r}")
    with ws.catalog.connect() as conn:
        row = conn.execute(select(T.key_wraps.c.wrapped).where(
            T.key_wraps.c.dataset == dataset, T.key_wraps.c.site == site)).first()
    missing = (f"dataset {dataset!r} has no shards at site {site!r} (no key there): it was never placed there "
               "(copy it there first, if its policy allows) or its keys were destroyed on withdrawal")
    if row is None:
        raise OnshoreError(missing)
    try:
        key = ws.keystore(f"site:{site}").unwrap("dataset", dataset, bytes(row[0]), _context(dataset, site))
    except NotFoundError as e:
        raise OnshoreError(f"{missing} ({e})") from None
    index = ws.record("key.release", f"site:{site}", {
        "dataset": dataset, "site": site, "action": action, "purpose": purpose,
        "decision_index": decision_index, "policy_hash": decision.policy_hash,
    })
    return Release(key, decision, decision_index, index)


def key_sites(ws: Workspace, conn: Any, dataset: str) -> list[str]:
    """The sites holding a wrap of the dataset key in the catalog or its key in custody (what ``shred`` destroys)."""
    listed = {r[0] for r in conn.execute(select(T.key_wraps.c.site).where(T.key_wraps.c.dataset == dataset))}
    all_sites = [r[0] for r in conn.execute(select(T.sites.c.name).order_by(T.sites.c.name))]
    return sorted(listed | {s for s in all_sites if ws.keystore(f"site:{s}").has_dataset_key(dataset)})


def shred(ws: Workspace, conn: Any, dataset: str) -> list[str]:
    """Destroy the dataset's key at every site (inside the caller's transaction); returns the sites.

    Every registered site's custody is searched, not only the sites the catalog lists, so a
    catalog that lost a row (a restored backup) still leaves no key behind. Catalog wraps are
    overwritten before the rows are deleted, so the old bytes are not left in the page in place.
    """
    listed = {r[0] for r in conn.execute(select(T.key_wraps.c.site).where(T.key_wraps.c.dataset == dataset))}
    all_sites = [r[0] for r in conn.execute(select(T.sites.c.name).order_by(T.sites.c.name))]
    destroyed = {s for s in all_sites if ws.keystore(f"site:{s}").destroy_dataset_key(dataset)}
    for site in listed:
        conn.execute(update(T.key_wraps).where(T.key_wraps.c.dataset == dataset, T.key_wraps.c.site == site)
                     .values(wrapped=os.urandom(60)))
    conn.execute(delete(T.key_wraps).where(T.key_wraps.c.dataset == dataset))
    return sorted(listed | destroyed)


# -- models ------------------------------------------------------------------------------------------

def _model_context(model: str, site: str) -> bytes:
    return f"onshore-model-key:v1:{model}:{site}".encode()


def _checkpoint_context(model: str, site: str) -> bytes:
    return f"onshore-checkpoint-key:v1:{model}:{site}".encode()


def wrap_model_for_site(ws: Workspace, conn: Any, model: str, site: str, data_key: bytes, ledger_index: int,
                        keep_custody_key: bool = False) -> None:
    """Store the model artifact's ``data_key`` wrapped for ``site``, inside the caller's transaction.

    Callers only do this after the model may sit at ``site``: the training site at release (its
    training decisions allowed it; ``keep_custody_key`` reuses the custody key the job created),
    or a copy target after an allow decision on the model. A custody key left at a copy target by
    a crashed attempt (no wrap in the catalog) is replaced. Refuses a site that already holds it.
    """
    check_model_id(model)
    store = ws.keystore(f"site:{site}")
    held = conn.execute(select(T.model_key_wraps.c.site).where(
        T.model_key_wraps.c.model == model, T.model_key_wraps.c.site == site)).first()
    if held is not None:
        raise ValidationError(f"site {site!r} already holds model {model!r}")
    if store.has_key("model", model) and not keep_custody_key:
        store.destroy_key("model", model)
    if not store.has_key("model", model):
        store.create_key("model", model)
    conn.execute(insert(T.model_key_wraps).values(model=model, site=site, wrapped=store.wrap(
        "model", model, data_key, _model_context(model, site)), ledger_index=ledger_index, created_at=now_iso()))


def checkpoint_key(ws: Workspace, model: str, site: str, wrap_file: Path) -> bytes:
    """A fresh data key to seal the checkpoints of a new training job of ``model`` at ``site``.

    Creates a fresh custody key for the model (replacing one a job killed before it wrote its
    first file left behind) and writes the job key's wrap to ``wrap_file``, replacing the wrap of a
    run killed before its first recorded checkpoint. Called by the training run, while it holds
    the model's training lock, after every dataset of the job was decided and released at
    ``site``; a resume opens its key with :func:`release_checkpoint` instead.
    """
    check_model_id(model)
    store = ws.keystore(f"site:{site}")
    if store.has_key("model", model):
        store.destroy_key("model", model)
    key = new_data_key()
    store.create_key("model", model)
    wrap_file.write_bytes(store.wrap("model", model, key, _checkpoint_context(model, site)))
    return key


def release_checkpoint(ws: Workspace, model: str, site: str, purpose: str, datasets: list[str], step: int,
                       wrap_file: Path) -> Release:
    """Unwrap the job key of ``model``'s checkpoint at ``site`` to resume its run; records both.

    A checkpoint is derived data like a model: the key service decides ``train`` at ``site`` for
    ``purpose`` on every dataset the checkpoint was made from (``datasets``, from the signed
    ``job.checkpoint`` entry, never from a plaintext file), records each decision, and only when
    all allow unwraps and records a ``key.release`` naming the model, the step and the decisions.
    A checkpoint is only ever opened to continue training on those datasets, so a withdrawal of
    any of them (under every derived-model clause) refuses it (PolicyDenied, exit 3), and
    ``onshore doctor --repair`` removes it. Refuses (OnshoreError) a missing wrap or custody key.
    """
    check_model_id(model)
    check_name(site, "site")
    if not datasets:
        raise ValidationError(f"checkpoint step {step} of model {model!r} names no dataset")
    decided = ws.decide_many([Request(f"site:{site}", "train", d, site, purpose) for d in datasets])
    refused = [(d, dec, i) for d, (dec, i) in zip(datasets, decided, strict=True) if not dec.allowed]
    if refused:
        raise PolicyDenied(
            f"refused: resuming model {model!r} from its checkpoint at step {step} at site {site!r}: "
            + "; ".join(f"dataset {d!r}: rule(s) {', '.join(dec.rules)} (ledger entry {i})" for d, dec, i in refused),
            sorted({r for _, dec, _ in refused for r in dec.rules}))
    for d in datasets:  # the ledger's withdrawals hold even against a restored catalog
        _refuse_withdrawn(ws, d, f"resuming model {model!r} from a checkpoint at site {site!r}")
    missing = f"no key for the checkpoints of model {model!r} at site {site!r}"
    try:
        key = ws.keystore(f"site:{site}").unwrap("model", model, wrap_file.read_bytes(),
                                                 _checkpoint_context(model, site))
    except (NotFoundError, FileNotFoundError) as e:
        raise OnshoreError(f"{missing} ({e}); remove the run's folder (or run 'onshore doctor --repair') and "
                           "train again") from None
    indices = [i for _, i in decided]
    index = ws.record("key.release", f"site:{site}", {
        "model": model, "checkpoint": step, "site": site, "action": "train", "purpose": purpose,
        "decision_index": indices[0], "decision_indices": indices, "policy_hash": decided[0][0].policy_hash,
    })
    return Release(key, decided[0][0], indices[0], index)


def decide_model(ws: Workspace, model: str, site: str, action: str, purpose: str | None = None,
                 copy_to: str | None = None) -> tuple[Decision, int]:
    """Decide ``action`` on the model at ``site`` (recorded) and look again at the signed ledger's
    withdrawals: what :func:`release_model` does before it unwraps anything, and all that a use of
    an exported (plaintext) copy of the model needs, since no key is released for one.

    Refuses (PolicyDenied, exit 3) whatever the decision point denies, naming the rule, and a
    lineage dataset whose withdrawal's derived-model clause forbids ``action``.
    """
    check_model_id(model)
    check_name(site, "site")
    if (action == "copy") != (copy_to is not None):
        raise ValidationError("a key release for a copy names its target (copy_to), and only a copy does")
    if copy_to is not None:
        request = model_request(f"site:{copy_to}", "copy", model, copy_to)
    else:
        request = model_request(f"site:{site}", action, model, site, purpose)
    decision, decision_index = ws.authorize(request)
    # As for datasets: a second look at the signed ledger, holding even when the decision point
    # this process compiled is older than a withdrawal another process just recorded.
    _refuse_withdrawn_lineage(ws, model, action)
    return decision, decision_index


def release_model(ws: Workspace, model: str, site: str, action: str, purpose: str | None = None,
                  copy_to: str | None = None) -> Release:
    """Unwrap the model's data key at ``site`` for ``action``, after deciding so itself; records both.

    The request is about the model (its Cedar: every lineage dataset's clauses and, for withdrawn
    ones, their derived-model clause). For a copy, ``copy_to`` names the target, and the target's
    copy is what is decided. Refuses (PolicyDenied, exit 3) whatever the decision point denies,
    naming the rule (``model/MODEL/dataset/DATASET/CLAUSE``), and, read again from the signed ledger
    after the decision, a lineage dataset (from the model's signed ``model.release`` entries) whose
    withdrawal's derived-model clause forbids ``action``; (OnshoreError) a site that does not hold the
    model or whose custody key is gone.
    """
    decision, decision_index = decide_model(ws, model, site, action, purpose, copy_to)
    with ws.catalog.connect() as conn:
        row = conn.execute(select(T.model_key_wraps.c.wrapped).where(
            T.model_key_wraps.c.model == model, T.model_key_wraps.c.site == site)).first()
    missing = (f"model {model!r} is not at site {site!r} (no key there); copy it there first if its lineage's "
               "policies allow ('onshore model copy'), see 'onshore model show'")
    if row is None:
        raise OnshoreError(missing)
    try:
        key = ws.keystore(f"site:{site}").unwrap("model", model, bytes(row[0]), _model_context(model, site))
    except NotFoundError as e:
        raise OnshoreError(f"{missing} ({e})") from None
    index = ws.record("key.release", f"site:{site}", {
        "model": model, "site": site, "action": action, "purpose": purpose,
        "decision_index": decision_index, "policy_hash": decision.policy_hash,
    })
    return Release(key, decision, decision_index, index)
