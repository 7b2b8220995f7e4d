"""The policy server: a model next to its machine, over WebSocket with msgpack frames.

One asyncio event loop takes connections; inference (the model's ``act``) runs on a few worker
threads, off the loop, so a slow request never stalls other clients' I/O, and the acts that wait
at the same time, from different sessions, run as one forward pass (:mod:`onshore.serve.batching`;
``ServerLimits.batch``). Each connection is one
session at a time (``reset`` starts an episode for an embodiment and task; ``act`` answers one
state with one command), with its own model history. The safety envelope belongs to the
*machine*, named by the token's client and the embodiment: it outlives sessions, so a latched
e-stop stays latched across ``reset`` and reconnects until ``reset_estop`` (recorded with who
did it), and the first command of a new session is rate limited from the last one applied.

Refused at the opening handshake, and logged: a request without a token, an unknown token, a
token revoked or issued for another site (HTTP 401; a peer that keeps sending bad tokens gets
its refusals slowed down), more connections than the server or one client may hold (HTTP 503),
and anything once serving was refused (HTTP 403). A watch task looks every ``poll_s`` seconds:
it refreshes the token table (an open session whose token was revoked gets ``unauthorized`` and
close code 1008) and calls ``recheck`` (the service's re-decision of ``serve`` when the ledger
changed); a refusal there ends every session with a ``refused`` error naming the rule and
refuses every later request. ``GET /healthz`` answers without a token.

A malformed message (see :mod:`onshore.serve.wire`, and: a state of the wrong width or with
NaN/Inf, an unknown embodiment, ``act`` before ``reset``) gets an ``error`` reply and changes
nothing; ``act`` faster than the embodiment's control rate gets ``rate_limited`` (nothing is
queued); a client over its message budget (a flood) gets one ``rate_limited`` reply per second
and the rest of its messages are dropped unanswered. None of these stop the server or touch
other sessions. The protocol is documented message by message in ``docs/serving.md``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import numpy as np
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from onshore.serve import envelope as E
from onshore.serve import openpi, wire
from onshore.serve.batching import Batcher
from onshore.serve.loading import ServedModel
from onshore.serve.metrics import CONTENT_TYPE, ServerMetrics
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
    max_connections_per_client: int = 8  # so one token holder cannot lock the others out
    infer_threads: int = 2
    #: acts of different sessions run as one forward pass (:mod:`onshore.serve.batching`); False:
    #: one forward pass per request
    batch: bool = True
    batch_wait_s: float = 0.001  # the longest a gathered act waits for other active sessions' acts
    max_batch: int = 32
    max_task_chars: int = 512
    act_hz: float | None = None  # acts per second per session; None: the embodiment's control rate
    act_burst: float = 2.0  # acts a session may send at once above that (network jitter)
    bad_tokens_free: int = 3  # refusals of one peer answered at once; later ones are slowed
    bad_token_delay_max: float = 5.0  # seconds, the longest a refusal is held back
    poll_s: float = 0.25  # how often the watch task refreshes tokens and rechecks the decision


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
    act_tokens: float = 0.0
    act_refilled: float = field(default_factory=time.monotonic)
    auth: str | None = None
    ws: Any = None
    task: str | None = None  # the episode's task text (the openpi protocol starts one per prompt)
    served: Any = None  # the model version this session acts with, fixed when it connects (ServedModel)


@dataclass
class Stats:
    connections: int = 0
    refused: int = 0
    errors: int = 0
    actions: int = 0
    dropped: int = 0
    rate_limited: int = 0
    interventions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(E.KINDS, 0))
    refusals: list[dict[str, Any]] = field(default_factory=list)
    #: refusals by reason (at most 256 distinct reasons; the rest count as "(other)")
    refusal_counts: dict[str, int] = field(default_factory=dict)


#: Re-decides serving when the rules may have changed: a refusal (naming the rule), else None.
Recheck = Callable[[], "str | None"]
#: Records a safety event (an e-stop latched or reset) with who did it; may block (a ledger write).
EventSink = Callable[[dict[str, Any]], None]
#: Polled with the recheck: a newer model version for sessions that connect from now on (an alias
#: moved, loaded and decided), else None. May block (ledger reads, a model load).
Follow = Callable[[], "ServedModel | None"]


class PolicyServer:
    """Serves ``served`` to clients holding a live token of ``tokens.site``, while ``recheck``
    (when given) does not refuse. With ``follow``, a newer version it returns is served to the
    sessions that connect after it (``served`` is always the newest); a session keeps the version
    it connected with until it disconnects, so following never drops or changes a session."""

    def __init__(self, served: ServedModel, tokens: TokenTable, limits: ServerLimits | None = None,
                 recorder: Recorder | None = None, recheck: Recheck | None = None,
                 on_event: EventSink | None = None, latched: dict[tuple[str, str], str] | None = None,
                 openpi_embodiment: str | None = None, metrics_extra: tuple[Any, ...] = (),
                 follow: Follow | None = None) -> None:
        self.served, self.tokens = served, tokens
        self.follow = follow
        #: Set: speak openpi's protocol (:mod:`onshore.serve.openpi`), every session acting for this
        #: embodiment; None: Onshore's own protocol (:mod:`onshore.serve.wire`).
        self.openpi = openpi_embodiment
        #: (client, embodiment) -> reason: e-stops latched before this server started (a previous
        #: server of the site recorded them and no ``reset_estop`` since): a restart never clears one
        self.latched = dict(latched or {})
        self.limits = limits or ServerLimits()
        self.recorder = recorder
        self.recheck, self.on_event = recheck, on_event
        self.stats = Stats()
        #: Why serving was refused while running (None while serving); set once, never cleared.
        self.refusal: str | None = None
        self.refused = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=self.limits.infer_threads, thread_name_prefix="onshore-build")
        #: acts, batched across sessions, on ``infer_threads`` threads off the loop
        self.batcher = Batcher(_act_batch, self._acting, self.limits.infer_threads, self.limits.batch_wait_s,
                               self.limits.max_batch if self.limits.batch else 1)
        self._sessions: set[Session] = set()
        self._machines: dict[tuple[str, str], E.Envelope] = {}
        self._bad_peers: dict[str, tuple[int, float]] = {}
        self._held = 0  # refusals of bad tokens being held back right now
        # e-stop records reach the ledger in the order the latch changed (one writer, first come
        # first served): a reset recorded after a later latch would clear it across a restart
        self._events = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onshore-events")
        self._server: Any = None
        self._refresher: asyncio.Task[None] | None = None
        #: what ``GET /metrics`` exports (:mod:`onshore.serve.metrics`); ``metrics_extra`` adds collectors
        self.metrics = ServerMetrics(self, tuple(metrics_extra))

    def session_count(self) -> int:
        return len(self._sessions)

    def _acting(self) -> int:
        """Sessions that may send an act now (reset, not ended): how many acts a batch may wait for."""
        return sum(s.policy is not None for s in list(self._sessions))

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0: any free port); returns the port."""
        self._server = await serve(self._handle, host, port, process_request=self._process_request,
                                   max_size=wire.HARD_FRAME, max_queue=16, compression=None,
                                   ping_interval=20, ping_timeout=20, server_header="onshore")
        self._refresher = asyncio.create_task(self._watch())
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
        self.batcher.close()
        self._events.shutdown(wait=True)

    async def _watch(self) -> None:
        """Every ``poll_s``: refresh the token table (at least every half second) and cut sessions
        whose token no longer passes; recheck the serve decision and refuse everything on a deny."""
        refreshed = time.monotonic()
        while self.refusal is None:
            await asyncio.sleep(self.limits.poll_s)
            if self.recheck is not None:
                # a busy ledger must not stop serving: on a failure the last decision stands
                refusal = await _off_loop(self.recheck, "re-checking the serve decision failed; checking again shortly")
                if refusal:
                    await self.refuse_all(refusal)
                    return
            if self.follow is not None:
                # likewise: on a failure the current version stays
                newer = await _off_loop(self.follow, "following the model's alias failed; checking again shortly")
                if newer is not None:
                    log.info("serving %s to new sessions (was %s); %d session(s) keep theirs", newer.name,
                             self.served.name, len(self._sessions))
                    self.served = newer
            if self.tokens.stale() or time.monotonic() - refreshed >= 0.5:
                try:
                    await asyncio.to_thread(self.tokens.refresh)
                    refreshed = time.monotonic()
                except Exception:  # a busy catalog must not stop serving; the old table stays in force
                    log.exception("token table refresh failed; keeping the previous table")
                    continue
                for s in list(self._sessions):
                    if s.ws is not None and not self.tokens.check(s.auth).ok:
                        await self._cut(s, "unauthorized", "token revoked", "token revoked during the session")

    async def _cut(self, s: Session, code: str, message: str, why: str) -> None:
        """End one session: an ``error`` with ``code``, then close code 1008."""
        self._refuse(s.peer, s.client, why)
        try:
            await s.ws.send(self._error_frame(code, message))
            await s.ws.close(1008, message[:120])
        except Exception:  # a connection already going away: it ends either way, and the watch goes on
            pass

    async def refuse_all(self, reason: str) -> None:
        """Stop serving: every open session gets a ``refused`` error naming ``reason`` and is
        closed; every later connection and message is refused. Irreversible for this server."""
        self.refusal = reason
        log.error("serving refused: %s; ending %d session(s)", reason, len(self._sessions))
        await asyncio.gather(*(self._cut(s, "refused", reason, f"serving refused: {reason}")
                               for s in list(self._sessions) if s.ws is not None))
        self.refused.set()

    # -- HTTP: health and authentication -------------------------------------------------------------

    def _refuse(self, peer: str, client: str | None, reason: str) -> None:
        self.stats.refused += 1
        key = reason if len(self.stats.refusal_counts) < 256 or reason in self.stats.refusal_counts else "(other)"
        self.stats.refusal_counts[key] = self.stats.refusal_counts.get(key, 0) + 1
        entry = {"peer": peer, "client": client, "reason": reason, "time": time.time()}
        if len(self.stats.refusals) < 1000:
            self.stats.refusals.append(entry)
        log.warning("refused %s%s: %s", peer, f" (client {client})" if client else "", reason)

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        peer = _peer(connection)
        if request.path == "/healthz":
            body = json.dumps({"status": "refused" if self.refusal else "ok", "refusal": self.refusal,
                               "model": self.served.name, "digest": self.served.digest,
                               "site": self.served.site, "sessions": len(self._sessions),
                               "embodiments": sorted(self.served.embodiments)})
            response = connection.respond(HTTPStatus.OK, body + "\n")
            response.headers["Content-Type"] = "application/json"
            return response
        if request.path == "/metrics":  # aggregate counts, no token needed (as /healthz)
            text = await asyncio.to_thread(self.metrics.text)  # ledger collectors read the database
            response = connection.respond(HTTPStatus.OK, text.decode())
            response.headers["Content-Type"] = CONTENT_TYPE
            return response
        if self.refusal is not None:
            self._refuse(peer, None, f"serving refused: {self.refusal}")
            return connection.respond(HTTPStatus.FORBIDDEN, f"refused: {self.refusal}\n")
        auth = request.headers.get("Authorization")
        if self.openpi is not None:
            auth = openpi.auth_header(auth)
        verdict = self.tokens.check(auth)
        if not verdict.ok:
            delay = self._bad_token_delay(peer)
            # a refusal held back keeps its connection open: at most max_connections at once, so that
            # a spray of bad tokens cannot pile up held connections (file descriptors) without end
            if delay > 0 and self._held < self.limits.max_connections:
                self._held += 1
                try:
                    await asyncio.sleep(delay)
                finally:
                    self._held -= 1
            self._refuse(peer, verdict.client, verdict.reason)
            return connection.respond(HTTPStatus.UNAUTHORIZED, f"refused: {verdict.reason}\n")
        if len(self._sessions) >= self.limits.max_connections:
            self._refuse(peer, verdict.client, "too many connections")
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "refused: too many connections\n")
        if sum(s.client == verdict.client for s in self._sessions) >= self.limits.max_connections_per_client:
            why = f"client {verdict.client} holds {self.limits.max_connections_per_client} connections already"
            self._refuse(peer, verdict.client, why)
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, f"refused: {why}\n")
        connection.onshore_client = verdict.client  # type: ignore[attr-defined]
        connection.onshore_auth = auth  # type: ignore[attr-defined]
        return None

    def _bad_token_delay(self, peer: str) -> float:
        """How long to hold back a refusal for a peer host that sent bad tokens before: nothing for
        the first few, then doubling from 0.1 s up to ``bad_token_delay_max``; forgotten after a
        minute without one. Holding back a refusal costs the event loop nothing, but keeps its
        connection open: beyond ``max_connections`` held at once, refusals are answered at once."""
        host = peer.rsplit(":", 1)[0]
        now = time.monotonic()
        n, last = self._bad_peers.get(host, (0, now))
        n = 1 if now - last > 60.0 else n + 1
        if len(self._bad_peers) > 10000:  # bounded: a spray of peers must not grow memory without end
            self._bad_peers.clear()
        self._bad_peers[host] = (n, now)
        over = n - self.limits.bad_tokens_free
        return 0.0 if over <= 0 else min(0.1 * 2 ** (over - 1), self.limits.bad_token_delay_max)

    # -- WebSocket -------------------------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        session = Session(getattr(ws, "onshore_client", "?"), _peer(ws), tokens=float(self.limits.burst),
                          act_tokens=float(self.limits.act_burst), auth=getattr(ws, "onshore_auth", None), ws=ws,
                          served=self.served)
        self._sessions.add(session)
        self.stats.connections += 1
        log.info("client %s connected from %s", session.client, session.peer)
        try:
            if self.openpi is not None:  # openpi clients wait for the server's metadata first
                await ws.send(openpi.encode(self._openpi_metadata(session)))
            async for frame in ws:
                if self.refusal is not None:
                    await self._cut(session, "refused", self.refusal, f"serving refused: {self.refusal}")
                    break
                if not self.tokens.check(session.auth).ok:
                    await self._cut(session, "unauthorized", "token revoked", "token revoked during the session")
                    break
                if not self._admit(session):
                    if self._rate_limited_reply_due(session):
                        await ws.send(self._error_frame(
                            "rate_limited", f"over {self.limits.messages_per_s:g} messages/s; messages are being "
                                            "dropped unanswered"))
                    continue
                if self.openpi is not None:
                    await ws.send(await self._answer_openpi(session, frame))
                    continue
                reply = await self._answer(session, frame)
                await ws.send(wire.pack(reply))
        except ConnectionClosed:
            pass
        finally:
            self._end_episode(session)
            self._sessions.discard(session)
            log.info("client %s from %s disconnected", session.client, session.peer)

    def _admit_act(self, s: Session, hz: float) -> bool:
        """Token bucket per session at the control rate: True to serve this act."""
        now = time.monotonic()
        s.act_tokens = min(self.limits.act_burst, s.act_tokens + (now - s.act_refilled) * hz)
        s.act_refilled = now
        if s.act_tokens >= 1.0:
            s.act_tokens -= 1.0
            return True
        return False

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

    def _error_frame(self, code: str, message: str) -> bytes | str:
        """An error in this server's protocol: an ``error`` message, or openpi's text frame."""
        if self.openpi is not None:
            return openpi.error_text(code, message)
        return wire.pack(wire.error(code, message))

    def _openpi_metadata(self, s: Session) -> dict[str, Any]:
        emb = s.served.embodiments[self.openpi or ""]
        return {"server": "onshore", "model": s.served.name, "digest": s.served.digest,
                "site": s.served.site, "embodiment": emb.name, "state_dim": emb.state_dim,
                "action_dim": emb.action_dim, "control_hz": emb.control_hz, "action_horizon": 1,
                "state_keys": list(openpi.STATE_KEYS), "prompt_key": openpi.PROMPT_KEY}

    async def _answer_openpi(self, s: Session, frame: Any) -> bytes | str:
        """One openpi observation: a new prompt starts an episode (``reset``), then one ``act``."""
        try:
            state, prompt = openpi.observation(openpi.decode(frame, self.limits.max_frame))
            if s.policy is None or (prompt is not None and prompt != s.task):
                if prompt is None:
                    raise wire.WireError("no_session", f"the first observation needs {openpi.PROMPT_KEY!r}: the "
                                                       "task text the model acts on")
                await self._on_reset(s, {"type": "reset", "embodiment": self.openpi, "task": prompt})
                s.task = prompt
            reply = await self._on_act(s, {"type": "act", "state": wire.encode_array(state)})
            action = wire.decode_array(reply["action"], "action")
            return openpi.encode({"actions": action.reshape(1, -1), "onshore": {
                "interventions": reply["interventions"], "alarm": reply["alarm"], "estopped": reply["estopped"],
                "infer_ms": reply["infer_ms"]}})
        except wire.WireError as e:
            self.stats.errors += 1
            return openpi.error_text(e.code, str(e))
        except Exception:  # a bug must cost one request, never the server
            self.stats.errors += 1
            log.exception("internal error answering client %s", s.client)
            return openpi.error_text("internal", "internal error; the request was not served")

    def _rate_limited_reply_due(self, s: Session) -> bool:
        now = time.monotonic()
        if now - s.last_limited_reply >= 1.0:
            s.last_limited_reply = now
            return True
        return False

    async def _on_info(self, s: Session, msg: dict[str, Any]) -> dict[str, Any]:
        served = s.served
        return {"type": "info", "model": served.name, "digest": served.digest, "site": served.site,
                "files": served.files,
                "embodiments": {n: {"state_dim": e.state_dim, "action_dim": e.action_dim, "control_hz": e.control_hz}
                                for n, e in served.embodiments.items()}}

    async def _on_reset(self, s: Session, msg: dict[str, Any]) -> dict[str, Any]:
        emb_name = wire.field(msg, "embodiment", str)
        task = wire.field(msg, "task", str)
        if len(task) > self.limits.max_task_chars:
            raise wire.WireError("bad_message", f"reset: task text over {self.limits.max_task_chars} characters")
        served = s.served
        emb = served.embodiments.get(emb_name)
        if emb is None:
            raise wire.WireError("unknown_embodiment", f"model {served.name} does not act for embodiment "
                                                       f"{emb_name!r}; it knows {', '.join(served.embodiments)}")
        initial = msg.get("initial_action")
        init = None if initial is None else wire.decode_array(initial, "initial_action").reshape(-1)
        if init is not None and (init.shape != (emb.action_dim,) or not np.isfinite(init).all()):
            raise wire.WireError("bad_message", f"reset: initial_action must be {emb.action_dim} finite numbers")

        def build() -> Any:
            from onshore.model.policy import ModelPolicy

            p = ModelPolicy(served.loaded, emb_name)
            p.reset(task)
            return p

        policy = await asyncio.get_running_loop().run_in_executor(self._pool, build)
        self._end_episode(s)
        s.policy, s.embodiment = policy, emb_name
        # the machine's envelope outlives the session: its e-stop latch and last command stay
        env = self._machines.get((s.client, emb_name))
        if env is None:
            env = self._machines[(s.client, emb_name)] = E.Envelope(E.Limits.from_embodiment(emb), initial=init)
            if (s.client, emb_name) in self.latched:
                env.estop(self.latched.pop((s.client, emb_name)), by="ledger")
        else:
            env.restart(init)
        s.envelope = env
        if self.recorder is not None:
            s.episode = self.recorder.begin(emb_name, task, time.monotonic())
        return {"type": "ready", "model": served.name, "digest": served.digest, "embodiment": emb_name,
                "state_dim": emb.state_dim, "action_dim": emb.action_dim, "control_hz": emb.control_hz,
                "spec": emb.to_dict()}

    async def _on_act(self, s: Session, msg: dict[str, Any]) -> dict[str, Any]:
        if s.policy is None or s.envelope is None:
            raise wire.WireError("no_session", "act before reset: send reset with an embodiment and task first")
        emb = s.served.embodiments[s.embodiment or ""]
        state = wire.decode_array(wire.field(msg, "state", dict), "state").reshape(-1)
        if state.shape != (emb.state_dim,):
            raise wire.WireError("bad_state", f"state has {state.size} values; {emb.name} has {emb.state_dim} "
                                              "state channels")
        if not np.isfinite(state).all():
            bad = [emb.state[i].name for i in np.flatnonzero(~np.isfinite(state))[:5]]
            raise wire.WireError("bad_state", f"state is not finite (NaN/Inf) in channel(s) {', '.join(bad)}")
        misses = wire.field(msg, "deadline_misses", int, required=False) or 0
        bridge = wire.field(msg, "bridge_interventions", int, required=False) or 0
        # only well-formed acts count against the control rate (malformed ones cost no inference)
        if not self._admit_act(s, self.limits.act_hz or emb.control_hz):
            self.stats.rate_limited += 1
            raise wire.WireError("rate_limited", f"act faster than {self.limits.act_hz or emb.control_hz:g} per second "
                                                 f"(the control rate of {emb.name}); this request was not served")
        policy, env = s.policy, s.envelope
        started = time.perf_counter()
        raw, infer_ms, _size = await self.batcher.act(policy, state)
        # on the loop, never in the pool: sessions of one machine share its envelope
        command = env.command(raw, time.monotonic())
        self.metrics.act_seconds.observe(time.perf_counter() - started)
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
        reason = (wire.field(msg, "reason", str, required=False) or "e-stop")[:200]
        s.envelope.estop(reason, by=s.client)
        log.warning("client %s: e-stop latched on %s (%s)", s.client, s.embodiment, reason)
        await self._event(s, "estop", s.client, reason)
        return {"type": "estopped", "reason": s.envelope.estop_reason}

    async def _on_reset_estop(self, s: Session, msg: dict[str, Any]) -> dict[str, Any]:
        if s.envelope is None:
            raise wire.WireError("no_session", "reset_estop before reset")
        person = wire.field(msg, "by", str, required=False)
        by = f"{person[:100]} (client {s.client})" if person else f"client {s.client}"
        reason = s.envelope.estop_reason
        if s.envelope.reset_estop(by):
            log.warning("client %s: e-stop on %s reset by %s", s.client, s.embodiment, by)
            await self._event(s, "estop_reset", by, reason)
        return {"type": "estop_cleared", "by": by}

    async def _event(self, s: Session, event: str, by: str, reason: str) -> None:
        if self.on_event is None:
            return
        body = {"event": event, "client": s.client, "embodiment": s.embodiment, "by": by, "reason": reason,
                "model": s.served.name, "digest": s.served.digest}
        try:
            # submitted at once, on the loop, right after the latch changed: the ledger order is the latch's
            await asyncio.get_running_loop().run_in_executor(self._events, self.on_event, body)
        except Exception:  # the latch itself holds whatever happens to its record
            log.exception("could not record %s of client %s", event, s.client)

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


def _act_batch(policies: Any, states: Any) -> list[Any]:
    from onshore.model.policy import act_batch  # torch is imported by the model, never by this module

    return act_batch(policies, states)


def _peer(connection: ServerConnection) -> str:
    addr = connection.remote_address
    return f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) and len(addr) >= 2 else str(addr)


async def _off_loop(fn: Callable[[], Any], failed: str) -> Any:
    """``fn()`` on a worker thread; None, logged as ``failed``, when it raises (the poll tries again)."""
    try:
        return await asyncio.to_thread(fn)
    except Exception:
        log.exception(failed)
        return None
