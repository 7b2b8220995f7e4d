"""The log operator's side of c2sp.org/tlog-witness: send the ledger's newest checkpoint to a
witness over HTTP and keep its cosignature where ``onshore ledger checkpoint --add-cosigned`` keeps
one, so bundles made afterwards carry it and verify offline exactly as with the offline flow.
"""

from __future__ import annotations

import http.client
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from onshore.errors import IntegrityError, OnshoreError, PolicyDenied, ValidationError
from onshore.ledger import checkpoint as ckpt
from onshore.ledger import notes
from onshore.ledger.witness_wire import (
    ADD_CHECKPOINT_PATH,
    MAX_BODY_BYTES,
    SIZE_CONTENT_TYPE,
    MalformedRequest,
    decode_size,
    encode_request,
)
from onshore.workspace.registry import list_witnesses
from onshore.workspace.workspace import Workspace

WAIT_S = 15.0
"""How long a witness that cannot be reached is retried before giving up (seconds)."""
RETRY_PAUSE_S = 0.5
MAX_ROUNDS = 4
"""add-checkpoint calls per submission: a first guess, the witness's answer with its size, and a
couple more if other writers move the ledger or the witness meanwhile."""


class WitnessUnreachable(OnshoreError):
    """The witness did not answer within the wait bound."""


@dataclass(frozen=True)
class Cosigned:
    """What a submission stored: the checkpoint's size, the size the witness held before, and the
    registered witnesses (workspace names) whose cosignatures verified and were kept."""

    url: str
    size: int
    previous_size: int
    witnesses: tuple[str, ...]


@dataclass(frozen=True)
class _Answer:
    status: int
    content_type: str
    body: bytes


def _post(url: str, body: bytes, context: ssl.SSLContext | None, timeout_s: float) -> _Answer:
    parts = urlsplit(url)
    path = parts.path.rstrip("/") + ADD_CHECKPOINT_PATH
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(parts.hostname or "", parts.port, timeout=timeout_s, context=context)
    else:
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout_s)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "text/plain; charset=utf-8"})
        resp = conn.getresponse()
        # a witness is another party: its answer is input too, read with the same cap
        data = resp.read(MAX_BODY_BYTES + 1)
        return _Answer(resp.status, resp.getheader("Content-Type", ""), data)
    finally:
        conn.close()


def _post_waiting(url: str, body: bytes, context: ssl.SSLContext | None, wait_s: float,
                  on_wait: Callable[[str], None] | None) -> _Answer:
    deadline = time.monotonic() + wait_s
    told = False
    while True:
        try:
            return _post(url, body, context, timeout_s=max(1.0, wait_s))
        except ssl.SSLError as e:
            raise ValidationError(f"{url}: the TLS handshake failed ({e.reason or e}); check --ca, --tls-cert and "
                                  "--tls-key against the witness's certificates") from None
        except (ConnectionError, TimeoutError, OSError, http.client.HTTPException) as e:
            if time.monotonic() >= deadline:
                # under TLS 1.3 a server that refuses the client's certificate may just close the connection
                hint = (" and, for https, that it accepts this client's certificate (--tls-cert, --tls-key)"
                        if url.startswith("https:") and isinstance(e, ConnectionError | http.client.HTTPException)
                        else "")
                raise WitnessUnreachable(f"the witness at {url} did not answer within {wait_s:.0f} s ({e}); check "
                                         f"that 'onshore witness serve' runs there, the URL and port{hint}") from None
            if on_wait is not None and not told:
                on_wait(f"waiting for the witness at {url} ({e}); retrying for up to {wait_s:.0f} s")
                told = True
            time.sleep(RETRY_PAUSE_S)


def _refusal(url: str, answer: _Answer) -> OnshoreError:
    said = answer.body[:500].decode("utf-8", "replace").strip() or f"status {answer.status}"
    if answer.status in (403, 404):
        return ValidationError(f"the witness at {url} does not take this log's checkpoints ({answer.status}: {said}); "
                               "its operator runs 'onshore witness trust-log --log-key VKEY' with this log's key "
                               "(from 'onshore trust export')")
    if answer.status in (409, 422):
        return PolicyDenied(f"the witness at {url} refused to cosign ({answer.status}: {said}); it holds a checkpoint "
                            "this ledger does not extend: a fork or rollback, see docs/witness.md")
    return ValidationError(f"the witness at {url} answered {answer.status}: {said}")


def _verified_lines(url: str, text: str, answer: _Answer,
                    known: dict[tuple[str, bytes], tuple[str, ckpt.CosignatureVerifier]]
                    ) -> tuple[list[notes.NoteSignature], tuple[str, ...]]:
    try:
        body = answer.body.decode("utf-8")
        if len(answer.body) > MAX_BODY_BYTES or not body.endswith("\n"):
            raise notes.NoteError("not a sequence of signature lines")
        lines = body[:-1].split("\n")
        if len(lines) > notes.MAX_SIGNATURES:
            raise notes.NoteError(f"more than {notes.MAX_SIGNATURES} signature lines")
        sigs = [notes.parse_signature_line(line) for line in lines]
    except (UnicodeDecodeError, notes.NoteError) as e:
        raise IntegrityError(f"the witness at {url} answered 200 with something that is not cosignature lines: "
                             f"{e}") from None
    good = notes.verified_lines(
        text, sigs, [v for _, v in known.values()],
        lambda s: f"the cosignature by {s.name} from {url} does not verify over this checkpoint; nothing was stored")
    if not good:
        raise IntegrityError(f"the witness at {url} answered, but none of its lines is a cosignature by a registered "
                             "witness; register it with 'onshore witness add NAME --vkey VKEY' (its key from "
                             "'onshore witness init')")
    names = tuple(dict.fromkeys(known[(s.name, s.key_id)][0] for s in good))
    return good, names


def request_cosignature(ws: Workspace, url: str, *, context: ssl.SSLContext | None = None, wait_s: float = WAIT_S,
                        on_wait: Callable[[str], None] | None = None) -> Cosigned:
    """Checkpoint the ledger now, have the witness at ``url`` (its submission prefix) cosign it, and
    store the cosignature with the checkpoint.

    Starts from old size 0; a witness that already holds a size answers 409 with it, and the call
    is repeated with a consistency proof from that size (tlog-witness, "add-checkpoint"). Only
    cosignatures that verify under a registered witness key are stored. Refused: no registered
    witness (ValidationError), a witness that does not follow this log (ValidationError), one that
    holds a checkpoint this ledger does not extend (PolicyDenied, exit 3), an answer that is not a
    valid cosignature (IntegrityError), a witness unreachable for ``wait_s`` (WitnessUnreachable).
    Nothing is stored unless a cosignature verified.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ValidationError(f"{url}: a witness URL is http(s)://HOST:PORT[/PREFIX]")
    known: dict[tuple[str, bytes], tuple[str, ckpt.CosignatureVerifier]] = {}
    for w in list_witnesses(ws):
        v = ckpt.CosignatureVerifier.from_vkey(w["vkey"])
        known[(v.name, bytes(v.key_id))] = (w["name"], v)
    if not known:
        raise ValidationError("no witness is registered in this workspace, so no cosignature could be checked; "
                              "register it first with 'onshore witness add NAME --vkey VKEY'")
    note = ws.make_checkpoint()
    cp = ckpt.parse(notes.split_note(note)[0])
    old = 0
    for _ in range(MAX_ROUNDS):
        proof = ws.ledger.consistency_proof(old, cp.size) if 0 < old < cp.size else []
        answer = _post_waiting(url, encode_request(old, proof, note), context, wait_s, on_wait)
        if answer.status == 200:
            text = notes.split_note(note)[0]
            good, names = _verified_lines(url, text, answer, known)
            ws.add_cosignatures(notes.add_signatures(note, good))
            return Cosigned(url, cp.size, old, names)
        if answer.status != 409 or not answer.content_type.startswith(SIZE_CONTENT_TYPE):
            raise _refusal(url, answer)
        try:
            latest = decode_size(answer.body)
        except MalformedRequest as e:
            raise IntegrityError(f"the witness at {url} answered 409 without a readable size: {e}") from None
        if latest > cp.size:
            # another writer may have grown the ledger and had it cosigned meanwhile: catch up
            note = ws.make_checkpoint()
            cp = ckpt.parse(notes.split_note(note)[0])
            if latest > cp.size:
                raise PolicyDenied(f"the witness at {url} has cosigned this log at size {latest}, beyond this "
                                   f"ledger's {cp.size} entries: it was shown a history this ledger does not hold "
                                   "(a fork, or this ledger was rolled back); see docs/witness.md")
        old = latest
    raise ValidationError(f"the witness at {url} kept moving ({MAX_ROUNDS} tries); another log operator may be "
                          "submitting at the same time: try again")
