"""Laundering checks at ingest: data that came from another member's dataset stays theirs.

Two signals, both read from the signed ledger: the provenance block an export or read-out left in
the files (``telemetry/provenance.py``), and the per-episode content fingerprints every
``data.ingest`` entry records. Data that matches a dataset of another owner is refused, naming
that dataset, unless that owner's policy sets ``redistribution = true``. An altered copy (one
value changed) has other fingerprints and is not caught; docs/threat-model.md says so. Entries of
an ingest attempt that a ``data.abandoned`` entry closes (it crashed after its entries were
appended, docs/residency.md "Crashes") made no dataset, so their fingerprints claim nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from onshore.errors import PolicyDenied
from onshore.workspace.attempts import ABANDONED
from onshore.workspace.workspace import Workspace


@dataclass(frozen=True)
class _Known:
    dataset: str
    owner: str
    redistribution: bool


def _known(ws: Workspace) -> tuple[dict[str, _Known], dict[str, str]]:
    """Datasets by name (owner, redistribution) and fingerprint -> dataset, from the ledger.

    Entries closed by a ``data.abandoned`` entry are left out: that attempt made no dataset.
    """
    found = list(ws.ledger.entries(kinds=("consent.grant", "data.ingest", ABANDONED)))
    # an abandoned entry always follows the entries it closes, so collect them first
    closed = {int(i) for e in found if e.entry.kind == ABANDONED for i in e.entry.body.get("closes", [])}
    datasets: dict[str, _Known] = {}
    prints: dict[str, str] = {}
    for e in found:
        b = e.entry.body
        if e.index in closed or e.entry.kind == ABANDONED:
            continue
        if e.entry.kind == "consent.grant":
            policy = b.get("policy") if isinstance(b.get("policy"), dict) else {}
            datasets[b["dataset"]] = _Known(b["dataset"], b["owner"], policy.get("redistribution") is True)
        else:
            for fp in b.get("fingerprints") or ():
                prints.setdefault(fp, b["dataset"])
    return datasets, prints


def _refuse(other: _Known, member: str, how: str) -> PolicyDenied:
    rule = f"dataset/{other.dataset}/redistribution"
    return PolicyDenied(
        f"refused: ingest by member {member!r} of data that {how} dataset {other.dataset!r} of member "
        f"{other.owner!r}, whose policy does not allow redistribution; deciding rule(s): {rule}", [rule])


def check_redistribution(ws: Workspace, member: str, fingerprints: list[str],
                         provenances: list[tuple[str, dict[str, Any]]]) -> None:
    """Refuse (PolicyDenied, exit 3) data of another owner's dataset that may not be redistributed.

    ``provenances``: (input, provenance block) for each input that carries one. Data from the
    member's own datasets, and from datasets whose owner allows redistribution, passes.
    """
    datasets, prints = _known(ws)
    for source, block in provenances:
        other = datasets.get(block.get("dataset", ""))
        if other is not None and other.owner != member and not other.redistribution:
            raise _refuse(other, member, f"{source} says was exported from")
    for fp in fingerprints:
        name = prints.get(fp)
        other = datasets.get(name) if name else None
        if other is not None and other.owner != member and not other.redistribution:
            raise _refuse(other, member, "has episodes identical to episodes of")
