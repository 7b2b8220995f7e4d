"""`onshore witness serve`: a witness over HTTP, the ``add-checkpoint`` call of c2sp.org/tlog-witness.

One route, ``POST /add-checkpoint``. The body is read with a size cap and a time cap before any
parsing; the witness's checks and state (onshore.ledger.witness) decide; each refusal becomes the
status the protocol names. Every input is treated as hostile: nothing but a successful cosignature
changes the witness's folder.

| outcome | status |
|---|---|
| cosigned | 200, the cosignature line (``text/plain``) |
| malformed body, old size above the checkpoint's | 400 |
| checkpoint not signed by the log key the witness trusts | 403 |
| a log the witness does not follow | 404 |
| old size is not the witness's latest: its size as ``text/x.tlog.size`` | 409 |
| same size, another root hash (a fork) | 409, plain text |
| body too large | 413 |
| consistency proof does not verify | 422 |
| body not received in time | 408 |
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from onshore.ledger.witness import (
    InconsistentProof,
    OldSizeConflict,
    RootConflict,
    UnknownLog,
    UntrustedSignature,
    Witness,
)
from onshore.ledger.witness_wire import (
    ADD_CHECKPOINT_PATH,
    MAX_BODY_BYTES,
    SIZE_CONTENT_TYPE,
    MalformedRequest,
    decode_request,
    encode_size,
)

log = logging.getLogger("onshore.witness")

BODY_TIMEOUT_S = 10.0
"""A client that has not sent its whole body within this time is cut off (408): a slow sender
must not hold one of the server's few connection slots."""

MAX_CONNECTIONS = 64
"""Concurrent connections uvicorn admits; beyond, it answers 503 rather than queueing without bound."""

_STATUS: list[tuple[type[Exception], int]] = [
    (MalformedRequest, 400), (UntrustedSignature, 403), (UnknownLog, 404), (RootConflict, 409),
    (InconsistentProof, 422),
]


class _BodyRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _text(status: int, message: str) -> Response:
    return PlainTextResponse(message.rstrip("\n") + "\n", status_code=status,
                             headers={"X-Content-Type-Options": "nosniff"})


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
        raise _BodyRefused(413, f"request body larger than {MAX_BODY_BYTES} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise _BodyRefused(413, f"request body larger than {MAX_BODY_BYTES} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise _BodyRefused(408, f"request body not received within {BODY_TIMEOUT_S:.0f} s") from None
    return b"".join(chunks)


def create_app(folder: str | os.PathLike[str]) -> Starlette:
    """The witness of ``folder`` as an ASGI app. Opens the folder now, so a missing or unreadable
    witness fails at start rather than on the first request."""
    witness = Witness.open(folder)

    async def add_checkpoint(request: Request) -> Response:
        peer = request.client.host if request.client else "?"
        try:
            body = await _read_body(request)
        except _BodyRefused as e:
            log.warning("refused %s: %s", peer, e)
            return _text(e.status, str(e))
        except ClientDisconnect:
            return _text(400, "client disconnected")
        try:
            parsed = decode_request(body)
            # the witness fsyncs and waits on the folder's lock: keep that off the event loop
            line = await run_in_threadpool(witness.add_checkpoint, parsed)
        except OldSizeConflict as e:
            log.info("409 to %s: %s", peer, e)
            # exactly this type, without the charset Starlette would append to a text/ media type
            return Response(encode_size(e.size), status_code=409,
                            headers={"Content-Type": SIZE_CONTENT_TYPE, "X-Content-Type-Options": "nosniff"})
        except tuple(cls for cls, _ in _STATUS) as e:
            status = next(code for cls, code in _STATUS if isinstance(e, cls))
            # tlog-witness: a signed but inconsistent checkpoint may be evidence of a misbehaving
            # log, so refusals are logged with what was refused
            log.warning("%d to %s: %s", status, peer, e)
            return _text(status, str(e))
        cp = parsed.checkpoint
        log.info("cosigned %s at size %d for %s", cp.origin, cp.size, peer)
        return PlainTextResponse(line, headers={"X-Content-Type-Options": "nosniff"})

    app = Starlette(routes=[Route(ADD_CHECKPOINT_PATH, add_checkpoint, methods=["POST"])])
    app.state.witness = witness
    return app


def run(folder: Path, host: str, port: int, tls: dict[str, Any]) -> None:
    """Serve the witness until SIGINT or SIGTERM. ``tls`` comes from :func:`onshore.tls.server_tls`
    (empty: plain HTTP)."""
    import uvicorn

    uvicorn.run(create_app(folder), host=host, port=port, log_level="warning", access_log=False,
                limit_concurrency=MAX_CONNECTIONS, timeout_keep_alive=5, h11_max_incomplete_event_size=16 * 1024,
                http="h11", proxy_headers=False, server_header=False, timeout_graceful_shutdown=5, **tls)
