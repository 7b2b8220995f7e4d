"""Clients of the policy server: ``Client`` (blocking) and ``AsyncClient`` (asyncio, for the bridge).

``Client`` also satisfies the ``Policy`` protocol: built for one embodiment, ``reset(task)`` and
``act(state)`` are what evaluation calls, so ``onshore eval --policy ws://HOST:PORT`` evaluates
a served model in closed loop; :class:`ClientFactory` is the picklable factory evaluation hands
to its worker processes. After each ``act``, ``last`` holds the server's full reply
(interventions, counts, alarm, inference time). Errors the server answers raise ``ServeError``
with its ``code``. No torch here: clients run next to the machine.

Nothing here waits without end: opening the connection, every request (the first included) and
closing are bounded by ``timeout`` seconds (``ServeError`` with code ``timeout`` naming the
server), and a ``Client`` left unclosed does not hold up the interpreter at exit (it is aborted,
not closed with a handshake, when it is garbage collected). ``ServeError`` pickles, so an
evaluation worker's failure reaches the parent process.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from onshore.errors import OnshoreError, ValidationError
from onshore.serve import wire

TOKEN_ENV = "ONSHORE_SERVE_TOKEN"


class ServeError(OnshoreError):
    """The policy server refused or could not answer a request; ``code`` says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # picklable: crosses evaluation's worker processes
        return type(self), (self.code, str(self))


def _headers(token: str | None) -> dict[str, str]:
    token = token if token is not None else os.environ.get(TOKEN_ENV)
    return {"Authorization": f"Bearer {token}"} if token else {}


def _check_url(url: str) -> str:
    if not url.startswith(("ws://", "wss://")):
        raise ValidationError(f"server URL {url!r} must start with ws:// or wss://")
    return url


def _refused(url: str, e: Exception, timeout: float) -> ServeError:
    from websockets.exceptions import InvalidStatus

    if isinstance(e, TimeoutError):
        return ServeError("timeout", f"the policy server at {url} did not answer the opening handshake within "
                                     f"{timeout:g} s; is it a policy server, and is it running?")
    if isinstance(e, InvalidStatus):
        status = e.response.status_code
        body = e.response.body.decode(errors="replace").strip() if e.response.body else ""
        code = {401: "unauthorized", 503: "busy"}.get(status, "refused")
        hint = "; issue a token with 'onshore serve token --site S --client NAME'" if status == 401 else ""
        return ServeError(code, f"{url}: HTTP {status} {body}{hint}")
    return ServeError("unreachable", f"cannot reach the policy server at {url}: {e}")


def _stale(raw: Any, id_: int) -> bool:
    """A reply to an earlier request that the caller stopped waiting for (cancelled)."""
    try:
        msg = wire.unpack(raw, wire.SERVER_TYPES)
    except wire.WireError:
        return False
    old = msg.get("id")
    return isinstance(old, int) and old < id_


def _last_word(raw: Any) -> ServeError | None:
    """The ``error`` a server sent before it closed (``refused``, ``unauthorized``...), if ``raw`` is one."""
    try:
        _reply(raw, -1)
    except ServeError as said:
        return None if said.code == "protocol" else said
    return None


def _lost(url: str, e: Exception) -> ServeError:
    from websockets.exceptions import ConnectionClosed

    if isinstance(e, ConnectionClosed) and e.rcvd is not None and e.rcvd.reason:
        return ServeError("closed", f"{url}: the server closed the connection ({e.rcvd.code}: {e.rcvd.reason})")
    return ServeError("closed", f"{url}: connection lost ({e or type(e).__name__})")


def _reply(raw: Any, id_: int) -> dict[str, Any]:
    msg = wire.unpack(raw, wire.SERVER_TYPES) if not isinstance(raw, str) else {}
    if msg.get("type") == "error":
        raise ServeError(str(msg.get("code")), str(msg.get("message")))
    if msg.get("id") != id_:
        raise ServeError("protocol", f"reply to request {msg.get('id')} where {id_} was expected")
    return msg


def _action(msg: dict[str, Any]) -> np.ndarray:
    return wire.decode_array(msg["action"], "action").reshape(-1)


class Client:
    """A blocking client. ``embodiment`` given here lets ``reset(task)`` stand alone (Policy)."""

    def __init__(self, url: str, token: str | None = None, embodiment: str | None = None,
                 timeout: float = 10.0, label: str | None = None) -> None:
        from websockets.sync.client import connect

        self.url = _check_url(url)
        self.embodiment = embodiment
        self.timeout = timeout
        self.label = label or url
        self.last: dict[str, Any] = {}
        self.ready: dict[str, Any] = {}
        self._ids = itertools.count(1)
        try:
            self._ws = connect(url, additional_headers=_headers(token), open_timeout=timeout,
                               close_timeout=min(timeout, 2.0), max_size=wire.HARD_FRAME, compression=None,
                               legacy=True)  # a plain connection, not a context manager
        except Exception as e:
            raise _refused(url, e, timeout) from None

    def request(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Send one message and return the server's reply within ``timeout`` seconds
        (``ServeError``: on an ``error`` reply, with its code; ``timeout``; ``closed``)."""
        id_ = next(self._ids)
        deadline = time.monotonic() + self.timeout  # for the whole exchange, stale replies included
        try:
            self._ws.send(wire.pack({**msg, "id": id_}))
            raw = self._ws.recv(timeout=self.timeout)
            while _stale(raw, id_):  # a late reply to a request that timed out before
                left = deadline - time.monotonic()
                if left <= 0:  # a server that only ever sends old replies is not answering
                    raise TimeoutError
                raw = self._ws.recv(timeout=left)
        except TimeoutError:
            raise ServeError("timeout", f"{self.url}: no reply to {msg.get('type')} within {self.timeout:g} s; "
                                        "the policy server is not answering") from None
        except OnshoreError:
            raise
        except Exception as e:
            raise self._why_closed(e) from None
        return _reply(raw, id_)

    def _why_closed(self, e: Exception) -> ServeError:
        """The server's last word when it cut the connection (an ``error`` it sent before closing,
        e.g. ``refused`` or ``unauthorized``), else ``closed``."""
        try:
            said = _last_word(self._ws.recv(timeout=0))
        except Exception:  # nothing left to read: the close itself is all there is
            said = None
        return said or _lost(self.url, e)

    def info(self) -> dict[str, Any]:
        return self.request({"type": "info"})

    def reset(self, embodiment_or_task: str, task: str | None = None,
              initial_action: np.ndarray | None = None) -> dict[str, Any]:
        """``reset(embodiment, task)``, or ``reset(task)`` for the embodiment given at construction."""
        if task is None:
            if self.embodiment is None:
                raise ValidationError("reset(task) needs a Client made with embodiment=...; else call "
                                      "reset(embodiment, task)")
            embodiment, task = self.embodiment, embodiment_or_task
        else:
            embodiment = embodiment_or_task
        msg: dict[str, Any] = {"type": "reset", "embodiment": embodiment, "task": task}
        if initial_action is not None:
            msg["initial_action"] = wire.encode_array(initial_action)
        self.ready = self.request(msg)
        self.embodiment = embodiment
        return self.ready

    def act(self, state: np.ndarray, **report: int) -> np.ndarray:
        """The served command for ``state`` (float32). ``report``: ``deadline_misses`` and
        ``bridge_interventions`` counters, recorded with the frame. Called faster than the
        embodiment's control rate, it waits (up to ``timeout``) instead of failing ``rate_limited``."""
        msg = {"type": "act", "state": wire.encode_array(np.asarray(state).reshape(-1)), **report}
        period = 1.0 / float(self.ready.get("control_hz") or 1000.0)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                self.last = self.request(msg)
                return _action(self.last)
            except ServeError as e:
                # the server serves acts at the embodiment's control rate: a caller looping faster (an
                # evaluation rollout) is paced here, never queued there
                if e.code != "rate_limited" or time.monotonic() + period > deadline:
                    raise
                time.sleep(period)

    def estop(self, reason: str = "e-stop") -> dict[str, Any]:
        return self.request({"type": "estop", "reason": reason})

    def reset_estop(self, by: str | None = None) -> dict[str, Any]:
        """Clear the machine's latched e-stop; ``by`` names the person (recorded with the client)."""
        return self.request({"type": "reset_estop", **({"by": by} if by else {})})

    def end(self) -> dict[str, Any]:
        return self.request({"type": "end"})

    def close(self) -> None:
        """Close with the WebSocket handshake, waiting at most ``min(timeout, 2)`` seconds."""
        try:
            self._ws.close()
        except Exception:  # closing a broken connection has nothing left to report
            pass

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # never a handshake here: at interpreter exit the connection's thread is already gone, and
        # waiting for it would hold the interpreter forever. Dropping the socket is enough; the
        # server ends the session when the TCP connection closes.
        ws = getattr(self, "_ws", None)
        sock = getattr(ws, "socket", None)
        if sock is not None:
            try:
                sock.close()
            except Exception:  # nothing to report from a finalizer
                pass


class AsyncClient:
    """The asyncio twin of :class:`Client` (same messages), for the OPC UA bridge."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 10.0) -> None:
        self.url = _check_url(url)
        self.token, self.timeout = token, timeout
        self._ids = itertools.count(1)
        self._ws: Any = None
        self.last: dict[str, Any] = {}

    async def connect(self) -> AsyncClient:
        from websockets.asyncio.client import connect

        try:
            self._ws = await connect(self.url, additional_headers=_headers(self.token), open_timeout=self.timeout,
                                     close_timeout=min(self.timeout, 2.0), max_size=wire.HARD_FRAME,
                                     compression=None)
        except Exception as e:
            raise _refused(self.url, e, self.timeout) from None
        return self

    async def request(self, msg: dict[str, Any]) -> dict[str, Any]:
        """As :meth:`Client.request`: the reply within ``timeout`` seconds or ``ServeError``."""
        import asyncio

        id_ = next(self._ids)

        async def exchange() -> Any:
            await self._ws.send(wire.pack({**msg, "id": id_}))
            raw = await self._ws.recv()
            while _stale(raw, id_):
                raw = await self._ws.recv()
            return raw

        try:
            raw = await asyncio.wait_for(exchange(), self.timeout)
        except TimeoutError:
            raise ServeError("timeout", f"{self.url}: no reply to {msg.get('type')} within {self.timeout:g} s; "
                                        "the policy server is not answering") from None
        except OnshoreError:
            raise
        except Exception as e:
            raise await self._why_closed(e) from None
        return _reply(raw, id_)

    async def _why_closed(self, e: Exception) -> ServeError:
        """As :meth:`Client._why_closed`."""
        import asyncio

        try:
            said = _last_word(await asyncio.wait_for(self._ws.recv(), 0.05))
        except Exception:  # nothing left to read: the close itself is all there is
            said = None
        return said or _lost(self.url, e)

    async def reset(self, embodiment: str, task: str, initial_action: np.ndarray | None = None) -> dict[str, Any]:
        msg: dict[str, Any] = {"type": "reset", "embodiment": embodiment, "task": task}
        if initial_action is not None:
            msg["initial_action"] = wire.encode_array(initial_action)
        return await self.request(msg)

    async def act(self, state: np.ndarray, **report: int) -> np.ndarray:
        self.last = await self.request({"type": "act", "state": wire.encode_array(np.asarray(state).reshape(-1)),
                                        **report})
        return _action(self.last)

    async def end(self) -> dict[str, Any]:
        return await self.request({"type": "end"})

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()


@dataclass(frozen=True)
class ClientFactory:
    """Builds a :class:`Client` for one embodiment in an evaluation worker (picklable)."""

    url: str
    token: str | None
    embodiment: str
    label: str = ""

    def __call__(self) -> Client:
        return Client(self.url, self.token, self.embodiment, label=self.label or self.url)
