"""The policy server: a model next to its machine, over WebSocket with msgpack frames.

One asyncio event loop takes connections; inference (the model's ``act`` and the envelope) runs
on a small thread pool, off the loop, so a slow request never stalls other clients' I/O. Each
connection is one session at a time (``reset`` starts an episode for an embodiment and task;
``act`` answers one state with one command), with its own model history and safety envelope.

Refused at the opening handshake with HTTP 401, and logged: a request without a token, an
unknown token, a token revoked or issued for another site. A token revoked while its connection
is open is refused at its next message (the token table refreshes about once a second) and the
connection is closed (code 1008). ``GET /healthz`` answers without a token.

A malformed message (see :mod:`onshore.serve.wire`, and: a state of the wrong width or with
NaN/Inf, an unknown embodiment, ``act`` before ``reset``) gets an ``error`` reply and changes
nothing; a client over its message budget (a flood) gets one ``rate_limited`` reply per second
and the rest of its messages are dropped unanswered. None of these stop the server or touch
other sessions. The protocol is documented message by message in ``docs/serving.md``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import numpy as np
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from onshore.serve import envelope as E
from onshore.serve import wire
from onshore.serve.loading import ServedModel
from onshore.serve.record import Recorder
from onshore.serve.tokens import TokenTable

log = logging.getLogger("onshore.serve")


@dataclass(frozen=True)
class ServerLimits:
    """Bounds that protect the server and its other clients from one client."""

    max_frame: int = wire.MAX_FRAME
    messages_per_s: float = 1000.0  # sustained, per connection
    burst: int = 200  # messages a connection may send at once above that
    max_connections: int = 64
    infer_threads: int = 2
    max_task_chars: int = 512


@dataclass(eq=False)  # identity: sessions live in a set
class Session:
    """One connection's state: who, which embodiment, model history, envelope, episode."""

    client: str
    peer: str
    policy: Any = None
    embodiment: str | None = None
    envelope: E.Envelope | None = None
    episode: Any = None
    tokens: float = 0.0
    refilled: float = field(default_factory=time.monotonic)
    last_limited_reply: float = 0.0
    dropped: int = 0


@dataclass
class Stats:
    connections: int = 0
    refused: int = 0
    errors: int = 0
    actions: int = 0
    dropped: int = 0
    interventions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(E.KINDS, 0))
    refusals: list[dict[str, Any]] = field(default_factory=list)


class PolicyServer:
    """Serves ``served`` to clients holding a live token of ``tokens.site``."""

    def __init__(self, served: ServedModel, tokens: TokenTable, limits: ServerLimits | None = None,
                 recorder: Recorder | None = None) -> None:
        self.served, self.tokens = served, tokens
        self.limits = limits or ServerLimits()
        self.recorder = recorder
        self.stats = Stats()
        self._pool = ThreadPoolExecutor(max_workers=self.limits.infer_threads, thread_name_prefix="onshore-infer")
        self._sessions: set[Session] = set()
        self._server: Any = None
        self._refresher: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0: any free port); returns the port."""
        self._server = await serve(self._handle, host, port, process_request=self._process_request,
                                   max_size=wire.HARD_FRAME, max_queue=16, compression=None,
                                   ping_interval=20, ping_timeout=20, server_header="onshore")
        self._refresher = asyncio.create_task(self._refresh_tokens())
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop accepting, close every connection, finish every open episode."""
        if self._refresher is not None:
            self._refresher.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for s in list(self._sessions):
            self._end_episode(s)
        self._pool.shutdown(wait=True)

    async def _refresh_tokens(self) -> None:
        while True:
            await asyncio.sleep(self.tokens.refresh_s)
            try:
                await asyncio.to_thread(self.tokens.refresh)
            except Exception:  # a busy catalog must not stop serving; the old table stays in force
                log.exception("token table refresh failed; keeping the previous table")

    # -- HTTP: health and authentication -------------------------------------------------------------

    def _refuse(self, peer: str, client: str | None, reason: str) -> None:
        self.stats.refused += 1
        entry = {"peer": peer, "client": client, "reason": reason, "time": time.time()}
        if len(self.stats.refusals) < 1000:
            self.stats.refusals.append(entry)
        log.warning("refused %s%s: %s", peer, f" (client {client})" if client else "", reason)

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        peer = _peer(connection)
        if request.path == "/healthz":
            body = json.dumps({"status": "ok", "model": self.served.name, "digest": self.served.digest,
                               "site": self.served.site, "sessions": len(self._sessions),
                               "embodiments": sorted(self.served.embodiments)})
            response = connection.respond(HTTPStatus.OK, body + "\n")
            response.headers["Content-Type"] = "application/json"
            return response
        verdict = self.tokens.check(request.headers.get("Authorization"))
        if not verdict.ok:
            self._refuse(peer, verdict.client, verdict.reason)
            return connection.respond(HTTPStatus.UNAUTHORIZED, f"refused: {verdict.reason}\n")
        if len(self._sessions) >= self.limits.max_connections:
            self._refuse(peer, verdict.client, "too many connections")
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "refused: too many connections\n")
        connection.onshore_client = verdict.client  # type: ignore[attr-defined]
        connection.onshore_auth = request.headers.get("Authorization")  # type: ignore[attr-defined]
        return None

    # -- WebSocket -------------------------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        session = Session(getattr(ws, "onshore_client", "?"), _peer(ws), tokens=float(self.limits.burst))
        self._sessions.add(session)
        self.stats.connections += 1
        log.info("client %s connected from %s", session.client, session.peer)
        try:
            async for frame in ws:
                if not self.tokens.check(getattr(ws, "onshore_auth", None)).ok:
                    self._refuse(session.peer, session.client, "token revoked during the session")
                    await ws.send(wire.pack(wire.error("unauthorized", "token revoked")))
                    await ws.close(1008, "token revoked")
                    break
                if not self._admit(session):
                    if self._rate_limited_reply_due(session):
                        await ws.send(wire.pack(wire.error(
                            "rate_limited", f"over {self.limits.messages_per_s:g} messages/s; messages are being "
                                            "dropped unanswered")))
                    continue
                reply = await self._answer(session, frame)
                await ws.send(wire.pack(reply))
        except ConnectionClosed:
            pass
        finally:
            self._end_episode(session)
            self._sessions.discard(session)
            log.info("client %s from %s disconnected", session.client, session.peer)

    def _admit(self, s: Session) -> bool:
        """Token bucket per connection: True to answer this message."""
        now = time.monotonic()
        s.tokens = min(float(self.limits.burst), s.tokens + (now - s.refilled) * self.limits.messages_per_s)
        s.refilled = now
        if s.tokens >= 1.0:
            s.tokens -= 1.0
            return True
        s.dropped += 1
        self.stats.dropped += 1
        return False

    async def _answer(self, s: Session, frame: Any) -> dict[str, Any]:
        id_ = None
        try:
            if not isinstance(frame, str) and len(frame) > self.limits.max_frame:
                raise wire.WireError("too_large", f"frame of {len(frame)} bytes is over the limit of "
                                                  f"{self.limits.max_frame}")
            msg = wire.unpack(frame, wire.CLIENT_TYPES)
            id_ = msg.get("id")
            if id_ is not None:
                wire.field(msg, "id", int)
            handler = getattr(self, f"_on_{msg['type']}")
            reply = await handler(s, msg)
            reply["id"] = id_
            return reply
        except wire.WireError as e:
            self.stats.errors += 1
            return wire.error(e.code, str(e), id_)
        except Exception:  # a bug must cost one request, never the server
            self.stats.errors += 1
            log.exception("internal error answering client %s", s.client)
            return wire.error("internal", "internal error; the request was not served", id_)

    def _rate_limited_reply_due(self, s: Session) -> bool:
        now = time.monotonic()
        if now - s.last_limited_reply >= 1.0:
            s.last_limited_reply = now
            return True
        return False

    async def _on_info(self, s: Session, msg: dict[str, Any]) -> dict[str, Any]:
        return {"type": "info", "model": self.served.name, "digest": self.served.digest, "site": self.served.site,
                "files": self.served.files,
                "embodiments": {n: {"state_dim": e.state_dim, "action_dim": e.action_dim, "control_hz": e.control_hz}
                                for n, e in self.served.embodiments.items()}}

    async def _on_reset(self, s: Session, msg: dict[str, Any]) -> dict[str, Any]:
        emb_name = wire.field(msg, "embodiment", str)
        task = wire.field(msg, "task", str)
        if len(task) > self.limits.max_task_chars:
            raise wire.WireError("bad_message", f"reset: task text over {self.limits.max_task_chars} characters")
        emb = self.served.embodiments.get(emb_name)
        if emb is None:
            raise wire.WireError("unknown_embodiment", f"model {self.served.name} does not act for embodiment "
                                                       f"{emb_name!r}; it knows {', '.join(self.served.embodiments)}")
        initial = msg.get("initial_action")
        init = None if initial is None else wire.decode_array(initial, "initial_action").reshape(-1)
        if init is not None and (init.shape != (emb.action_dim,) or not np.isfinite(init).all()):
            raise wire.WireError("bad_message", f"reset: initial_action must be {emb.action_dim} finite numbers")

        def build() -> Any:
            from onshore.model.policy import ModelPolicy

            p = ModelPolicy(self.served.loaded, emb_name)
            p.reset(task)
            return p

        policy = await asyncio.get_running_loop().run_in_executor(self._pool, build)
        self._end_episode(s)
        s.policy, s.embodiment = policy, emb_name
        s.envelope = E.Envelope(E.Limits.from_embodiment(emb), initial=init)
        if self.recorder is not None:
            s.episode = self.recorder.begin(emb_name, task, time.monotonic())
        return {"type": "ready", "model": self.served.name, "digest": self.served.digest, "embodiment": emb_name,
                "state_dim": emb.state_dim, "action_dim": emb.action_dim, "control_hz": emb.control_hz,
                "spec": emb.to_dict()}

    async def _on_act(self, s: Session, msg: dict[str, Any]) -> dict[str, Any]:
        if s.policy is None or s.envelope is None:
            raise wire.WireError("no_session", "act before reset: send reset with an embodiment and task first")
        state = wire.decode_array(wire.field(msg, "state", dict), "state").reshape(-1)
        emb = self.served.embodiments[s.embodiment or ""]
        if state.shape != (emb.state_dim,):
            raise wire.WireError("bad_state", f"state has {state.size} values; {emb.name} has {emb.state_dim} "
                                              "state channels")
        if not np.isfinite(state).all():
            bad = [emb.state[i].name for i in np.flatnonzero(~np.isfinite(state))[:5]]
            raise wire.WireError("bad_state", f"state is not finite (NaN/Inf) in channel(s) {', '.join(bad)}")
        misses = wire.field(msg, "deadline_misses", int, required=False) or 0
        bridge = wire.field(msg, "bridge_interventions", int, required=False) or 0
        policy, env = s.policy, s.envelope

        def step() -> tuple[E.Command, float]:
            t0 = time.perf_counter()
            raw = policy.act(state)
            return env.command(raw, time.monotonic()), (time.perf_counter() - t0) * 1e3

        command, infer_ms = await asyncio.get_running_loop().run_in_executor(self._pool, step)
        self.stats.actions += 1
        for k in command.interventions:
            self.stats.interventions[k] += 1
        if s.episode is not None and self.recorder is not None:
            self.recorder.frame(s.episode, time.monotonic(), state, command.action, E.bits(command.interventions),
                                misses, bridge)
        return {"type": "action", "action": wire.encode_array(command.action),
                "interventions": list(command.interventions), "counts": dict(env.counts), "alarm": command.alarm,
                "estopped": env.estopped, "infer_ms": round(infer_ms, 3)}

    async def _on_estop(self, s: Session, msg: dict[str, Any]) -> dict[str, Any]:
        if s.envelope is None:
            raise wire.WireError("no_session", "estop before reset")
        reason = wire.field(msg, "reason", str, required=False) or "e-stop"
        s.envelope.estop(reason[:200])
        log.warning("client %s: e-stop latched (%s)", s.client, reason[:200])
        return {"type": "estopped", "reason": reason[:200]}

    async def _on_reset_estop(self, s: Session, msg: dict[str, Any]) -> dict[str, Any]:
        if s.envelope is None:
            raise wire.WireError("no_session", "reset_estop before reset")
        s.envelope.reset_estop()
        log.warning("client %s: e-stop reset", s.client)
        return {"type": "estop_cleared"}

    async def _on_end(self, s: Session, msg: dict[str, Any]) -> dict[str, Any]:
        counts = dict(s.envelope.counts) if s.envelope else {}
        self._end_episode(s)
        s.policy = s.envelope = None
        s.embodiment = None
        return {"type": "ended", "counts": counts}

    def _end_episode(self, s: Session) -> None:
        ep, s.episode = s.episode, None
        if ep is not None and self.recorder is not None:
            try:
                self.recorder.finish(ep)
            except Exception:
                log.exception("could not spool an episode of client %s", s.client)


def _peer(connection: ServerConnection) -> str:
    addr = connection.remote_address
    return f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) and len(addr) >= 2 else str(addr)
