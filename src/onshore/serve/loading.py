"""Loading a model for serving at a site: decided, digest-checked, ready to act.

``load_served_model`` is the one door through which the server gets a model. It is the seam
where the effective model policy of the "models inherit their data's residency" issue plugs in
(a function that decides, checks digests and decrypts); until then it:

1. asks the decision point for ``serve`` at the site for every dataset of the model's lineage,
   for the purpose its data was used for in that training (each decision recorded in the
   ledger); any refusal raises ``PolicyDenied`` naming the dataset and rule (exit 3) — a
   withdrawn dataset refuses with its ``withdrawn`` rule;
2. reads the model's ``model.release`` ledger entry, refuses a catalog whose file digests differ
   from it, and loads the files only if their SHA-256 equal what the ledger recorded.

The model's digest is the SHA-256 of its weights file (``model.safetensors``); ledger entries
of serving carry it and every file's digest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from onshore.errors import IntegrityError, PolicyDenied
from onshore.residency.pdp import Request
from onshore.telemetry.embodiment import Embodiment
from onshore.workspace import models
from onshore.workspace.registry import get_embodiment, get_site
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
    decisions: list[int] = field(default_factory=list)
    release_index: int | None = None


def released_files(ws: Workspace, row: dict[str, Any]) -> dict[str, str]:
    """The file digests the ledger's ``model.release`` entry recorded for this model."""
    entry = ws.ledger.get(int(row["ledger_index"])).entry
    if entry.kind != "model.release" or entry.body.get("model") != row["name"]:
        raise IntegrityError(f"model {row['name']!r}: ledger entry {row['ledger_index']} is not its release; "
                             "the catalog and the ledger disagree (run 'onshore doctor')")
    files = dict(entry.body.get("files") or {})
    if files != row["files"]:
        raise IntegrityError(f"model {row['name']!r}: the catalog's file digests differ from those its release "
                             f"(ledger entry {row['ledger_index']}) recorded; refusing to serve it")
    return files


def load_served_model(ws: Workspace, name: str, site: str) -> ServedModel:
    """Decide, check and load model ``name`` for serving at ``site`` (see the module docstring).

    Refused: an unknown model or site (``NotFoundError``), any lineage dataset whose policy does
    not allow ``serve`` at ``site`` (``PolicyDenied``, before any file is read), files whose
    digests differ from the ledger's (``IntegrityError``).
    """
    from onshore.model.policy import load  # torch only when a model is served

    row = models.get_model(ws, name)
    get_site(ws, site)
    decisions, refused, rules = [], [], set()
    embodiment_names: set[str] = set()
    for level in models.lineage(ws, name):
        for d in level["datasets"]:
            embodiment_names.add(d["embodiment"])
            decision, idx = ws.decide(Request(f"site:{site}", "serve", d["dataset"], site, level["purpose"]))
            decisions.append(idx)
            if not decision.allowed:
                refused.append(f"dataset {d['dataset']!r} (via model {level['model']}): rule(s) "
                               f"{', '.join(decision.rules)} (ledger entry {idx})")
                rules.update(decision.rules)
    if refused:
        raise PolicyDenied(f"refused: model {name!r} may not be served at site {site!r}: " + "; ".join(refused),
                           sorted(rules))
    files = released_files(ws, row)
    loaded = load(models.model_folder(ws, row), files)
    embodiments = {e: get_embodiment(ws, e) for e in sorted(embodiment_names) if e in loaded.model.specs}
    return ServedModel(name, site, files[WEIGHTS], files, loaded, embodiments, decisions, int(row["ledger_index"]))
