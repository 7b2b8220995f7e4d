"""A simulated machine behind a real OPC UA server: what the bridge is tested and demonstrated on.

The plant is one of Onshore's simulators (a Meta-World task on the Sawyer arm, or the Tennessee
Eastman process through tep-studio) exposed by an ``asyncua`` server the way a plant engineer
expects to browse one: an ApplicationUri of ``urn:HOST:onshore:sim-plant``, and under
``Objects/plant`` (every BrowseName in the plant's own namespace ``urn:onshore:sim-plant``, never
namespace 0) a ``state`` folder with one Double ``AnalogItemType`` node per state channel, named
by the embodiment's channel (``ns=N;s=plant/state/reactor_pressure``), an ``action`` folder
with one writable such node per action channel, each with its ``EngineeringUnits``
(EUInformation, UNECE code where known) and ``EURange`` (the channel's limits) properties; an
``estop`` Boolean (the operator's button), ``estop_reset``, an ``alarm`` Boolean (the bridge
raises it) and a ``frame`` counter. Like a PLC's scan cycle, it republishes its state every
``scan_s`` seconds with a fresh source timestamp. The plant
steps its simulator by one control period whenever a client writes the action nodes (one Write
request that names any of them), then publishes the new state: a closed loop whose clock is the
bridge's. Its actuators start where the machine's own controller (the simulator's scripted
expert) would put them, as a real machine's would be when a model takes over.

Security (``security``): ``none`` (loopback only), or ``sign`` / ``sign-encrypt``, the weakest
Basic256Sha256 mode the server offers (``sign`` offers both): its application certificate is
made in ``pki`` on first use (see :mod:`onshore.serve.opcua`). With security on, ``users``
(username -> password) may write; an anonymous session may browse and read but its writes to
the action, e-stop, reset and alarm nodes are refused (``BadUserAccessDenied``) and step
nothing. The simulated plant accepts any client's application certificate (a real PLC keeps a
trust list of them): who may act is decided by the user.

:meth:`SimPlant.write_map` writes the bridge's MAP.toml for it, naming nodes by namespace URI
(``nsu=urn:onshore:sim-plant;s=...``). ``estop_at`` presses the e-stop
button at that frame (for the demo and tests); ``fault`` (``nan``, ``bad`` or ``stale``) from
frame ``fault_at`` on makes it publish NaN, a Bad status code, or stop updating its readings
(their timestamps go stale), as a failing sensor or a hung PLC would.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w

from onshore.errors import OnshoreError, ValidationError
from onshore.serve import opcua
from onshore.sim import registry
from onshore.sim.rollout import EpisodeSpec

NAMESPACE = "urn:onshore:sim-plant"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class SimPlant:
    env: str
    task: str
    seed: int = 0
    estop_at: int | None = None
    fault: str | None = None  # "nan", "bad" or "stale", from frame ``fault_at``
    fault_at: int = 0
    scan_s: float = 0.1
    frames: int = 0
    actions: list[np.ndarray] = field(default_factory=list)  # every action written, in order
    states: list[np.ndarray] = field(default_factory=list)  # every state published, the initial one first
    terminated: bool = False
    security: str = "none"  # none (loopback only), sign or sign-encrypt: the weakest mode offered
    pki: Path | None = None  # the folder of the server's application certificate (with security)
    users: dict[str, str] | None = None  # username -> password: who may write (with security)

    def __post_init__(self) -> None:
        if self.fault not in (None, "nan", "bad", "stale"):
            raise OnshoreError(f"unknown plant fault {self.fault!r}; use nan, bad or stale")
        if self.security not in opcua.MODES:
            raise ValidationError(f"--security {self.security!r}: use one of {', '.join(opcua.MODES)}")
        if self.security != "none" and self.pki is None:
            raise ValidationError(f"--security {self.security} needs --pki DIR: the folder of the plant's OPC UA "
                                  "certificate (made there on first use)")
        self.sim = registry.make_env(self.env)
        self.emb = self.sim.embodiment()
        tasks = registry.resolve_tasks(self.env, [self.task])
        spec = EpisodeSpec(self.env, tasks[0], 0, 0, self.seed)
        seconds = self.sim.default_seconds  # an episode's length; the plant then holds its last state
        self.max_frames = int(seconds / self.sim.dt + 1e-9)
        self.state, _ = self.sim.reset(spec, seconds)
        expert = self.sim.expert(1.0 / self.emb.control_hz)
        expert.reset(self.sim.task_text(tasks[0]))
        first = np.asarray(expert.act(np.asarray(self.state, dtype=np.float32)), dtype=np.float64)
        lo = np.array([c.low for c in self.emb.action])
        hi = np.array([c.high for c in self.emb.action])
        self.initial_action = np.clip(first, lo, hi)
        self.task_text = self.sim.task_text(tasks[0])
        self.states.append(np.asarray(self.state, dtype=np.float64))
        self._server: Any = None
        self._ns = 0
        self._state_nodes: list[Any] = []
        self._action_nodes: list[Any] = []
        self._action_ids: set[Any] = set()
        self._estop: Any = None
        self._alarm: Any = None
        self._frame: Any = None
        self._scan: asyncio.Task[None] | None = None
        self._alarm_value = False
        self.certificate: opcua.AppCertificate | None = None  # the server's, with security on
        self.endpoint = ""

    async def start(self, host: str = "127.0.0.1", port: int | None = None) -> str:
        """Start the OPC UA server; returns its endpoint ``opc.tcp://HOST:PORT/onshore/plant``.
        Refused: ``security`` none on a host that is not loopback."""
        from asyncua import Server, ua
        from asyncua.common.callback import CallbackType

        for name in ("asyncua", "asyncua.server", "asyncua.client"):
            logging.getLogger(name).setLevel(logging.ERROR)  # it warns about running without certificates
        port = port or free_port(host)
        self.endpoint = f"opc.tcp://{host}:{port}/onshore/plant"
        opcua.check_security(self.endpoint, self.security)
        server = Server(user_manager=_Users(self.users or {}, anonymous_acts=self.security == "none"))
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name(f"Onshore simulated plant ({self.env})")
        uri = opcua.application_uri("sim-plant")
        await server.set_application_uri(uri)
        server.product_uri = "urn:onshore:sim-plant"
        if self.security == "none":
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        else:
            assert self.pki is not None
            cert = opcua.application_certificate(self.pki, "sim-plant", uri, [host])
            self.certificate = cert
            await server.load_certificate(str(cert.cert))
            await server.load_private_key(str(cert.key))
            server.set_security_policy(
                [ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt]
                + ([ua.SecurityPolicyType.Basic256Sha256_Sign] if self.security == "sign" else []),
                permission_ruleset=_look_only_for_anonymous())  # anonymous sessions may look, never act
        ns = self._ns = await server.register_namespace(NAMESPACE)
        obj = await server.nodes.objects.add_object(ua.NodeId("plant", ns), ua.QualifiedName("plant", ns))
        state = await obj.add_folder(ua.NodeId("plant/state", ns), ua.QualifiedName("state", ns))
        action = await obj.add_folder(ua.NodeId("plant/action", ns), ua.QualifiedName("action", ns))
        for ch, v in zip(self.emb.state, np.asarray(self.state, dtype=np.float64), strict=True):
            self._state_nodes.append(await _analog(state, ns, "state", ch, float(v)))
        for ch, v in zip(self.emb.action, self.initial_action, strict=True):
            node = await _analog(action, ns, "action", ch, float(v))
            await node.set_writable()
            self._action_nodes.append(node)
            self._action_ids.add(node.nodeid)

        async def flag(name: str, value: Any, vt: Any, writable: bool = True) -> Any:
            node = await obj.add_variable(ua.NodeId(f"plant/{name}", ns), ua.QualifiedName(name, ns), value, vt)
            if writable:
                await node.set_writable()
            return node

        self._estop = await flag("estop", False, ua.VariantType.Boolean)
        await flag("estop_reset", False, ua.VariantType.Boolean)
        self._alarm = await flag("alarm", False, ua.VariantType.Boolean)
        self._frame = await flag("frame", 0, ua.VariantType.Int64, writable=False)
        server.subscribe_server_callback(CallbackType.PostWrite, self._on_write)
        await server.start()
        self._server = server
        self._scan = asyncio.create_task(self._scan_cycle())
        return self.endpoint

    @property
    def alarm(self) -> bool:
        """Whether the bridge has raised the alarm node (read in the plant's own loop)."""
        return self._alarm_value

    async def _scan_cycle(self) -> None:
        while True:
            await asyncio.sleep(self.scan_s)
            await self._publish()
            self._alarm_value = bool(await self._alarm.read_value())

    def _faulted(self) -> str | None:
        return self.fault if self.fault is not None and self.frames >= self.fault_at else None

    async def _publish(self) -> None:
        """Write the current state to the state nodes, as the fault (if any) distorts it."""
        from asyncua import ua

        fault = self._faulted()
        if fault == "stale":
            return  # a hung PLC: the readings and their timestamps stop moving
        now = dt.datetime.now(dt.UTC)
        for i, (node, v) in enumerate(zip(self._state_nodes, np.asarray(self.state, dtype=np.float64), strict=True)):
            value = math.nan if fault == "nan" and i == 0 else float(v)
            bad = fault == "bad" and i == 0
            status = ua.StatusCode(ua.StatusCodes.BadSensorFailure if bad else ua.StatusCodes.Good)
            await node.write_value(ua.DataValue(ua.Variant(value, ua.VariantType.Double), StatusCode=status,
                                                SourceTimestamp=now, ServerTimestamp=now))

    async def stop(self) -> None:
        if self._scan is not None:
            self._scan.cancel()
            self._scan = None
        if self._server is not None:
            await self._server.stop()
            self._server = None

    async def _on_write(self, event: Any, dispatcher: Any) -> None:
        from asyncua import ua

        results = event.response_params or []
        written = {wv.NodeId for wv, ok in zip(event.request_params.NodesToWrite, results, strict=False)
                   if ok.is_good()}  # a refused write (an anonymous session) steps nothing
        if not written & self._action_ids or self.terminated:
            return
        action = np.array([await n.read_value() for n in self._action_nodes], dtype=np.float64)
        step = self.sim.step(action)
        self.actions.append(action)
        self.frames += 1
        self.state = step.state
        self.states.append(np.asarray(step.state, dtype=np.float64))
        self.terminated = bool(step.terminated) or self.frames >= self.max_frames
        await self._publish()
        await self._frame.write_value(ua.Variant(self.frames, ua.VariantType.Int64))
        if self.estop_at is not None and self.frames == self.estop_at:
            await self._estop.write_value(ua.Variant(True, ua.VariantType.Boolean))

    def node_id(self, name: str, nsu: bool = True) -> str:
        """The node id of ``name`` (``estop``, ``frame``, ``state/CHANNEL``...): by namespace URI, or
        with ``nsu=False`` by this server's namespace index (after ``start``)."""
        return f"{f'nsu={NAMESPACE}' if nsu else f'ns={self._ns}'};s=plant/{name}"

    def map_dict(self, nsu: bool = True) -> dict[str, Any]:
        """The bridge's map of this plant: nodes by channel name, by namespace URI (``nsu=False``:
        by namespace index, which needs ``start`` first)."""
        def node(name: str) -> str:
            return self.node_id(name, nsu)

        return {"embodiment": self.emb.name, "task": self.task_text,
                "nodes": {"state": [node(f"state/{c.name}") for c in self.emb.state],
                          "action": [node(f"action/{c.name}") for c in self.emb.action],
                          "estop": node("estop"), "estop_reset": node("estop_reset"), "alarm": node("alarm")},
                "envelope": {"watchdog_periods": 3, "safe_action": [float(x) for x in self.initial_action]}}

    def write_map(self, path: Path) -> Path:
        """The bridge's MAP.toml for this plant (nodes by namespace URI)."""
        Path(path).write_text(tomli_w.dumps(self.map_dict()))
        return Path(path)


async def _analog(parent: Any, ns: int, role: str, ch: Any, value: float) -> Any:
    """A Double ``AnalogItemType`` variable named by channel, with EngineeringUnits and EURange."""
    from asyncua import ua

    node = await parent.add_variable(ua.NodeId(f"plant/{role}/{ch.name}", ns), ua.QualifiedName(ch.name, ns), value,
                                     ua.VariantType.Double)
    await node.delete_reference(ua.NodeId(ua.ObjectIds.BaseDataVariableType), ua.ObjectIds.HasTypeDefinition,
                                bidirectional=False)
    await node.add_reference(ua.NodeId(ua.ObjectIds.AnalogItemType), ua.ObjectIds.HasTypeDefinition,
                             bidirectional=False)
    await node.add_property(ua.NodeId(f"plant/{role}/{ch.name}/EURange", ns), ua.QualifiedName("EURange", 0),
                            ua.Range(Low=ch.low, High=ch.high), datatype=ua.NodeId(ua.ObjectIds.Range))
    await node.add_property(ua.NodeId(f"plant/{role}/{ch.name}/EngineeringUnits", ns),
                            ua.QualifiedName("EngineeringUnits", 0), opcua.eu_information(ch.unit),
                            datatype=ua.NodeId(ua.ObjectIds.EUInformation))
    return node


class _Users:
    """The plant's user manager: a listed user with the right password, or an anonymous session
    (which may act only when ``anonymous_acts``: no security, on loopback); anyone else is refused
    (``BadUserAccessDenied``)."""

    def __init__(self, users: dict[str, str], anonymous_acts: bool) -> None:
        self.users = dict(users)
        self.anonymous_acts = anonymous_acts

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> Any:
        import hmac

        from asyncua.crypto.permission_rules import User, UserRole

        if username is None:
            return User(role=UserRole.User if self.anonymous_acts else UserRole.Anonymous)
        want = self.users.get(username)
        given = password.decode() if isinstance(password, bytes) else (password or "")
        if want is not None and hmac.compare_digest(want.encode(), given.encode()):
            return User(role=UserRole.User, name=username)
        return None


def _look_only_for_anonymous() -> Any:
    """asyncua's role rules, except that an anonymous session may browse, read and subscribe but
    not write or call (asyncua's own rules let it do nothing at all once security is on)."""
    from asyncua import ua
    from asyncua.crypto.permission_rules import USER_TYPES, SimpleRoleRuleset, UserRole

    rules = SimpleRoleRuleset()
    acting = {ua.NodeId(ua.ObjectIds.WriteRequest_Encoding_DefaultBinary),
              ua.NodeId(ua.ObjectIds.CallRequest_Encoding_DefaultBinary)}
    rules._permission_dict[UserRole.Anonymous] = {ua.NodeId(t) for t in USER_TYPES} - acting
    return rules


class PlantThread:
    """A :class:`SimPlant` served from its own thread and event loop (tests, demo)."""

    def __init__(self, plant: SimPlant, host: str = "127.0.0.1") -> None:
        self.plant = plant
        self.loop = asyncio.new_event_loop()
        box: dict[str, Any] = {}
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            try:
                box["endpoint"] = self.loop.run_until_complete(plant.start(host))
            except BaseException as e:
                box["error"] = e
                ready.set()
                return
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name="onshore-sim-plant", daemon=True)
        self.thread.start()
        ready.wait(60)
        if "endpoint" not in box:
            raise OnshoreError(f"the simulated plant's OPC UA server did not start: {box.get('error')}")
        self.endpoint: str = box["endpoint"]

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.plant.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)

    def __enter__(self) -> PlantThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
