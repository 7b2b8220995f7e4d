"""Training runs in a site's folder and what the signed ledger records of them.

A run of model NAME at a site writes ``SITE/models/NAME/``: ``run.json`` (the request, while the
run is unfinished), ``checkpoints/key.wrap`` (the job key, wrapped in the site's custody) and
``checkpoints/step-N/`` (sealed, each with its ``digests.json``). The process running it holds
the workspace lock ``locks/train.NAME.lock`` from its first check to its end (:func:`lock_key`),
so a second run of the same name is refused and ``onshore doctor`` can tell a running run from
one that died. A checkpoint counts only if a ``job.checkpoint`` entry records it (model, step and
file digests); that entry, not a plaintext file, says which datasets it was made from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from onshore.errors import IntegrityError
from onshore.names import check_model_id
from onshore.workspace.workspace import Workspace

RUN_FILE = "run.json"
CHECKPOINTS = "checkpoints"
KEY_FILE = "key.wrap"  # the job key, wrapped under the model's key in the site's custody


def lock_key(name: str) -> str:
    """The workspace lock a training run of model ``name`` holds from its first check to its end."""
    return f"train.{check_model_id(name)}"


def sealed_checkpoints(folder: Path) -> list[Path]:
    """The run's complete checkpoints (those with their ``digests.json``), newest first."""
    return sorted((p for p in (Path(folder) / CHECKPOINTS).glob("step-*") if (p / "digests.json").is_file()),
                  reverse=True)


def ledger_checkpoint(ws: Workspace, name: str, path: Path) -> tuple[int, dict[str, Any], list[dict[str, Any]]]:
    """The signed ``job.checkpoint`` entry of the checkpoint at ``path`` and the datasets it was made from.

    Matched by model, step and file digests; the datasets (names, shard digests) come from that
    entry or, for an entry written before it carried them, from its job's ``job.start``. Refuses
    (IntegrityError) a checkpoint the ledger does not record: its files cannot be trusted.
    """
    try:
        step = int(path.name.split("-", 1)[1])
        on_disk = json.loads((path / "digests.json").read_text())
    except (OSError, ValueError, IndexError):
        step, on_disk = -1, None
    found = [e for e in ws.ledger.entries(kinds=("job.checkpoint",))
             if e.entry.body.get("model") == name and e.entry.body.get("step") == step
             and e.entry.body.get("files") == on_disk]
    if not found:
        raise IntegrityError(f"{path}: no job.checkpoint entry in the ledger records this checkpoint of model "
                             f"{name!r}; remove the run's folder (or run 'onshore doctor --repair') and train again")
    entry = found[-1]
    datasets = entry.entry.body.get("datasets")
    if datasets is None:
        job = entry.entry.body.get("job")
        starts = [e for e in ws.ledger.entries(kinds=("job.start",)) if e.entry.body.get("job") == job]
        datasets = starts[-1].entry.body.get("datasets", []) if starts else []
    return entry.index, entry.entry.body, list(datasets)


def unfinished_jobs(ws: Workspace, name: str) -> list[str]:
    """The ids of the model's ``job.start`` entries that no ``job.end`` or ``job.abandoned`` closes."""
    started, closed = [], set()
    for e in ws.ledger.entries(kinds=("job.start", "job.end", "job.abandoned")):
        b = e.entry.body
        if e.entry.kind == "job.start" and b.get("model") == name:
            started.append(b.get("job"))
        elif e.entry.kind == "job.end":
            closed.add(b.get("job"))
        elif e.entry.kind == "job.abandoned" and b.get("model") == name:
            closed.update(b.get("jobs", []))
    return [j for j in started if j not in closed]
