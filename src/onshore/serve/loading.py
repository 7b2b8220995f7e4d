"""Loading a model for serving at a site: decided, digest-checked, decrypted, ready to act.

``load_served_model`` is the one door through which the server gets a model. It goes through
:func:`onshore.workspace.models.load_model_for` with action ``serve``: the model's own Cedar
policy (compiled from its lineage: the intersection of its datasets' jurisdictions, sites and
purposes, the strictest derived-model clause) is decided at the site, the site's key service
releases the model key (both recorded), and every file is checked against the digests of the
model's ``model.release`` ledger entry before a byte is used. A refusal raises ``PolicyDenied``
(exit 3) naming the lineage dataset's rule — a model tainted by a withdrawal under
``stop-serving`` refuses naming the withdrawn dataset; a site that does not hold the model
(``onshore model copy``) refuses with a message that says so.

``load_served_export`` is the door for an export folder (``onshore serve --from DIR``): the
same decision, after the folder's files are checked against its manifest and the ledger.

The model's digest is the SHA-256 of its weights (``model.safetensors`` as released, in
plaintext); the ledger entries of serving carry it and every file's digest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onshore.telemetry.embodiment import Embodiment
from onshore.workspace import models
from onshore.workspace.registry import get_embodiment
from onshore.workspace.workspace import Workspace

WEIGHTS = "model.safetensors"


@dataclass
class ServedModel:
    """A model loaded for serving: the network (``loaded``: onshore.model.policy.LoadedModel),
    the embodiments it acts for (with their specs from the catalog), and what proves what it is."""

    name: str
    site: str
    digest: str
    files: dict[str, str]
    loaded: Any
    embodiments: dict[str, Embodiment]
    purpose: str = ""
    release_index: int | None = None
    export: str | None = None  # the export folder it was loaded from (``onshore serve --from``), else None


def load_served_model(ws: Workspace, name: str, site: str, purpose: str | None = None) -> ServedModel:
    """Decide, check and load model ``name`` for serving at ``site`` for ``purpose`` (default:
    the purpose it was trained for). Refused: see the module docstring."""
    row = models.get_model(ws, name)
    purpose = purpose or row["purpose"]
    loaded = models.load_model_for(ws, name, site, "serve", purpose)
    files = dict(models.release_entry(ws, name)["files"])
    names = {d["embodiment"] for level in models.lineage(ws, name) for d in level["datasets"]}
    embodiments = {e: get_embodiment(ws, e) for e in sorted(names) if e in loaded.model.specs}
    return ServedModel(name, site, files[WEIGHTS], files, loaded, embodiments, purpose, int(row["ledger_index"]))


def load_served_export(ws: Workspace, folder: Path, site: str, purpose: str | None = None) -> ServedModel:
    """Load the model of an export folder for serving at ``site`` (``onshore serve --from``): the
    folder is checked against its manifest and the signed ledger (``models.verify_export``), then
    ``serve`` is decided on the model exactly as for a model served by name (``models.decide_use``;
    an export has no key to release), and only then are the checked bytes loaded."""
    loaded, verified = models.load_export_for(ws, folder, site, "serve", purpose)
    row = models.get_model(ws, verified.model)
    names = {d["embodiment"] for level in models.lineage(ws, verified.model) for d in level["datasets"]}
    embodiments = {e: get_embodiment(ws, e) for e in sorted(names) if e in loaded.model.specs}
    return ServedModel(verified.model, site, verified.files[WEIGHTS], dict(verified.files), loaded, embodiments,
                       purpose or row["purpose"], int(row["ledger_index"]), str(Path(folder).resolve()))
