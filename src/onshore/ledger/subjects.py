"""Subject chains: every ledger entry about a subject links to the previous entry about it.

A **subject** is what entries are about: ``dataset:NAME`` for every entry whose body names a
dataset (``body.dataset``; decisions: ``body.request.dataset``), ``model:NAME`` for those naming a
model (``body.model``). An entry about subjects carries a signed top-level field::

    "links": {"dataset:arms": {"index": 12, "leaf_hash": "<hex SHA-256 leaf hash of entry 12>"}}

naming, per subject, the previous entry about it, or ``null`` for the first entry about it. The
ledger computes links inside its append transaction (``Ledger.append`` signs drafts there), so
two writers can never both claim the same predecessor, and ``ledger verify`` rechecks every link
from the leaves. Entries written before links existed have no ``links`` field: they are pre-link
history, accepted as long as no linked entry about the same subject comes before them.

A chain alone shows that nothing was left out *between* its ends. The newest end is vouched for
by a **head note**: a C2SP signed note, signed by the log key, saying which entry was the newest
about a subject in the tree of a given size and root::

    onshore-subject-head/v1
    <log origin>
    <subject>
    <tree size>
    <root hash, base64>
    <index of the newest entry about the subject>
    <its leaf hash, base64>

The first line keeps a head note from ever being read as a checkpoint (whose first line is the
origin) and the reverse. A bundle carries the head note for its checkpoint; an update carries one
for the newer checkpoint. A log that signs a head omitting an entry is caught as soon as any later
entry about the subject is shown: its chain runs through the omitted one.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from onshore.encoding import b64decode_canonical
from onshore.ledger.entries import Entry
from onshore.ledger.notes import NoteError, open_note, sign_note

HEAD_NOTE_TAG = "onshore-subject-head/v1"
#: body fields that name a subject, and the subject's prefix
SUBJECT_FIELDS = (("dataset", "dataset"), ("model", "model"))
_DECIMAL = re.compile(r"(0|[1-9][0-9]*)")


def subjects_of(kind: str, body: Mapping[str, Any]) -> tuple[str, ...]:
    """The subjects an entry of ``kind`` with ``body`` is about, sorted (empty for most governance)."""
    found = set()
    where: list[Mapping[str, Any]] = [body]
    if kind == "decision" and isinstance(body.get("request"), dict):
        where = [body["request"]]
    for part in where:
        for key, prefix in SUBJECT_FIELDS:
            value = part.get(key)
            if isinstance(value, str) and value:
                found.add(f"{prefix}:{value}")
    return tuple(sorted(found))


def link_to(index: int, leaf_hash: bytes) -> dict[str, Any]:
    """The link value naming entry ``index`` whose leaf hash is ``leaf_hash``."""
    return {"index": index, "leaf_hash": leaf_hash.hex()}


class LinkError(ValueError):
    """A link value that is not ``null`` or ``{"index": int >= 0, "leaf_hash": 64 hex}``."""


def parse_link(value: Any) -> tuple[int, bytes] | None:
    """(index, leaf hash) of a link, None for a first entry; LinkError for anything else."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"index", "leaf_hash"}:
        raise LinkError("a link must be null or an object with index and leaf_hash")
    idx, h = value["index"], value["leaf_hash"]
    if not isinstance(idx, int) or isinstance(idx, bool) or idx < 0:
        raise LinkError("a link's index must be a non-negative integer")
    if not isinstance(h, str) or not re.fullmatch(r"[0-9a-f]{64}", h):
        raise LinkError("a link's leaf_hash must be 64 lowercase hex digits")
    return idx, bytes.fromhex(h)


@dataclass
class ChainChecker:
    """Checks links entry by entry, in ledger order, over a whole log (``ledger verify``).

    ``feed`` returns a problem or None. Rules: an entry's ``links`` name exactly its subjects;
    each link names the previous entry about that subject (index and leaf hash), or is null when
    there is none; an entry without links is accepted only before any linked entry about its
    subjects (pre-link history).
    """

    last: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    linked: set[str] = field(default_factory=set)

    def feed(self, index: int, entry: Entry, leaf_hash: bytes) -> str | None:
        subjects = subjects_of(entry.kind, entry.body)
        problem = None
        if entry.links is None:
            late = [s for s in subjects if s in self.linked]
            if late:
                problem = (f"entry {index} ({entry.kind}) is about {late[0]} but carries no link, after linked "
                           "entries about it: the chain is broken")
        elif set(entry.links) != set(subjects):
            problem = (f"entry {index} ({entry.kind}) links subjects {sorted(entry.links)}, but is about "
                       f"{list(subjects)}")
        else:
            for s in subjects:
                try:
                    link = parse_link(entry.links[s])
                except LinkError as e:
                    problem = f"entry {index}: {s}: {e}"
                    break
                want = self.last.get(s)
                if link != want:
                    said = "no previous entry" if link is None else f"entry {link[0]}"
                    real = "none" if want is None else f"entry {want[0]}"
                    if link is not None and want is not None and link[0] == want[0]:
                        said += " with another leaf hash"
                    problem = (f"entry {index} ({entry.kind}) links {s} to {said}, but the previous entry about "
                               f"it is {real}: the chain is broken")
                    break
                self.linked.add(s)
        for s in subjects:
            self.last[s] = (index, leaf_hash)
        return problem


@dataclass(frozen=True)
class Walk:
    """A chain followed backwards: ``indices`` newest first; ``reached`` is the first link that
    points below the floor (None when the chain ended at the subject's first entry)."""

    indices: tuple[int, ...]
    reached: tuple[int, bytes] | None
    problems: tuple[str, ...]


def walk_back(subject: str, head: tuple[int, bytes], entries: Mapping[int, tuple[Entry, bytes]],
              floor: int = 0) -> Walk:
    """Follow ``subject``'s links from ``head`` (index, leaf hash) through ``entries``.

    ``entries`` maps index to (entry, its leaf hash): what a bundle or update carries. Stops at
    the subject's first entry (a null link), or at a link below ``floor`` (an update covers only
    entries from the older tree size on). Reports each entry the chain needs but ``entries``
    lacks (an omission), a leaf hash that differs from the link naming it, an entry not about
    ``subject``, a pre-link entry (its history cannot be followed), and a link that does not
    point backwards.
    """
    out: list[int] = []
    at: tuple[int, bytes] | None = head
    while at is not None and at[0] >= floor:
        idx, want = at
        got = entries.get(idx)
        if got is None:
            return Walk(tuple(out), None, (f"entry {idx} about {subject} is in its chain but missing: the bundle "
                                           "omits it",))
        entry, lh = got
        if lh != want:
            return Walk(tuple(out), None, (f"entry {idx}'s leaf hash differs from the link that names it",))
        if subject not in subjects_of(entry.kind, entry.body):
            return Walk(tuple(out), None, (f"entry {idx} ({entry.kind}) is in the chain of {subject} but is not "
                                           "about it",))
        out.append(idx)
        if entry.links is None or subject not in entry.links:
            return Walk(tuple(out), None, (f"entry {idx} about {subject} predates chain links, so entries before "
                                           "it cannot be shown complete",))
        try:
            at = parse_link(entry.links[subject])
        except LinkError as e:
            return Walk(tuple(out), None, (f"entry {idx}: {e}",))
        if at is not None and at[0] >= idx:
            return Walk(tuple(out), None, (f"entry {idx} links {subject} forwards to entry {at[0]}",))
    return Walk(tuple(out), at, ())


# --- head notes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SubjectHead:
    """The newest entry about ``subject`` in the log ``origin``'s tree of ``size`` with ``root``."""

    origin: str
    subject: str
    size: int
    root: bytes
    index: int
    leaf_hash: bytes

    def to_text(self) -> str:
        b = base64.b64encode
        return "\n".join([HEAD_NOTE_TAG, self.origin, self.subject, str(self.size), b(self.root).decode(),
                          str(self.index), b(self.leaf_hash).decode()]) + "\n"


def sign_head(head: SubjectHead, key_name: str, key: Ed25519PrivateKey) -> str:
    """The head as a signed note, signed by the log key named ``key_name``."""
    return sign_note(head.to_text(), key_name, key)


def open_head(note: str, log_vkey: str, origin: str) -> SubjectHead:
    """Verify the log's signature on a head note and parse it; NoteError/SignatureError otherwise."""
    text, _ = open_note(note, [log_vkey])
    lines = text.split("\n")
    if len(lines) != 8 or lines[-1] != "" or lines[0] != HEAD_NOTE_TAG:
        raise NoteError(f"not a subject head note (its first line must be {HEAD_NOTE_TAG} and it has 7 lines)")
    _, org, subject, size, root, index, lh = lines[:7]
    if org != origin:
        raise NoteError(f"head note is for log {org!r}, expected {origin!r}")
    if not _DECIMAL.fullmatch(size) or not _DECIMAL.fullmatch(index):
        raise NoteError("head note's tree size and index must be decimal numbers")
    try:
        root_b = b64decode_canonical(root, "head note root hash")
        lh_b = b64decode_canonical(lh, "head note leaf hash")
    except ValueError as e:
        raise NoteError(str(e)) from None
    if len(root_b) != 32 or len(lh_b) != 32:
        raise NoteError("head note hashes must be 32 bytes")
    if int(index) >= int(size):
        raise NoteError("head note's index is outside its tree")
    return SubjectHead(org, subject, int(size), root_b, int(index), lh_b)
