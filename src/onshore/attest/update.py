"""Residency updates: what happened to a dataset between a bundle's checkpoint and a newer one.

A bundle says where a dataset was up to its checkpoint's tree size N. An **update** lets an
auditor who holds that bundle and a trust root see whether the dataset was withdrawn (or anything
else happened to it) up to a newer, witnessed checkpoint of size M, offline. One JSON object::

    {
      "mediaType": "application/vnd.onshore.residency-update.v1+json",
      "subject": "dataset:NAME",
      "sinceSize": N,
      "checkpoint": "<C2SP checkpoint note of size M: log signature, witness cosignatures>",
      "consistencyProof": [b64(32-byte hash), ...],      # RFC 9162 PROOF(N, D[M])
      "subjectHead": "<log-signed head note: the newest entry about the subject in the tree of M>",
      "entries": [{"index": I, "leaf": b64, "inclusionProof": [b64, ...]}, ...]
    }

``entries`` holds every entry about the subject with N <= index < M, ascending, each with its
inclusion proof in the tree of size M; their links chain from the head down to the bundle's own
head. ``onshore verify BUNDLE --update FILE`` checks it (the ``update`` check of
``attest/verify.py``). Nothing in an update is signed by a site: it states only ledger facts,
each proven by the log's signatures, the witnesses' cosignatures and the proofs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from onshore.attest.bundle import dataset_subject
from onshore.encoding import b64encode
from onshore.errors import IntegrityError, ValidationError
from onshore.ledger import checkpoint as ckpt
from onshore.ledger import notes

if TYPE_CHECKING:
    from onshore.workspace import Workspace

UPDATE_MEDIA_TYPE = "application/vnd.onshore.residency-update.v1+json"
UPDATE_FIELDS = frozenset({"mediaType", "subject", "sinceSize", "checkpoint", "consistencyProof", "subjectHead",
                           "entries"})


def make_update(ws: Workspace, dataset: str, since_size: int) -> dict[str, Any]:
    """The update for dataset ``dataset`` from tree size ``since_size`` to the newest stored checkpoint.

    ``since_size`` is the tree size of the bundle being brought up to date (its checkpoint's
    second line). Take a checkpoint and have witnesses cosign it first. Refuses (ValidationError)
    a size outside the ledger or no stored checkpoint at least that large, and (NotFoundError) a
    dataset the ledger has no entry about; (IntegrityError) a stored checkpoint that is not this
    ledger's tree.
    """
    size_now = ws.ledger.size()
    if not 0 < since_size <= size_now:
        raise ValidationError(f"--since-size {since_size}: give the tree size of the bundle's checkpoint, between 1 "
                              f"and the ledger size {size_now}")
    note = ws.ledger.checkpoint_note()
    size = ckpt.parse(notes.split_note(note)[0]).size if note is not None else 0
    if note is None or size < since_size:
        raise ValidationError(f"no stored checkpoint covers tree size {since_size}; run 'onshore ledger checkpoint' "
                              "and have witnesses cosign it first")
    cp = ckpt.parse(notes.split_note(note)[0])
    if cp.root_hash != ws.ledger.root(size):
        raise IntegrityError(f"stored checkpoint of size {size} does not match the ledger's tree")
    subject = dataset_subject(dataset)
    head_note = ws.subject_head_note(subject, size)
    found = ws.ledger.subject_entries(subject, since_size, size)
    proofs = ws.ledger.inclusion_proofs([e.index for e in found], size) if found else []
    return {
        "mediaType": UPDATE_MEDIA_TYPE, "subject": subject, "sinceSize": since_size, "checkpoint": note,
        "consistencyProof": [b64encode(h) for h in ws.ledger.consistency_proof(since_size, size)],
        "subjectHead": head_note,
        "entries": [{"index": e.index, "leaf": b64encode(e.leaf), "inclusionProof": [b64encode(h) for h in p]}
                    for e, p in zip(found, proofs, strict=True)],
    }
