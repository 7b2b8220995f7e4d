"""A simulated machine behind a real OPC UA server: what the bridge is tested and demonstrated on.

The plant is one of Onshore's simulators (a Meta-World task on the Sawyer arm, or the Tennessee
Eastman process through tep-studio) exposed by an ``asyncua`` server: one Double node per state
channel (``ns=N;s=state/I``), one writable Double node per action channel (``action/I``), an
``estop`` Boolean (the operator's button), ``estop_reset``, an ``alarm`` Boolean (the bridge
raises it) and a ``frame`` counter. Like a PLC's scan cycle, it republishes its state every
``scan_s`` seconds with a fresh source timestamp. The plant
steps its simulator by one control period whenever a client writes the action nodes (one Write
request that names any of them), then publishes the new state: a closed loop whose clock is the
bridge's. Its actuators start where the machine's own controller (the simulator's scripted
expert) would put them, as a real machine's would be when a model takes over.

:meth:`SimPlant.write_map` writes the bridge's MAP.toml for it. ``estop_at`` presses the e-stop
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

from onshore.errors import OnshoreError
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

    def __post_init__(self) -> None:
        if self.fault not in (None, "nan", "bad", "stale"):
            raise OnshoreError(f"unknown plant fault {self.fault!r}; use nan, bad or stale")
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
        self.endpoint = ""

    async def start(self, host: str = "127.0.0.1", port: int | None = None) -> str:
        """Start the OPC UA server; returns its endpoint ``opc.tcp://HOST:PORT/onshore/plant``."""
        from asyncua import Server, ua
        from asyncua.common.callback import CallbackType

        for name in ("asyncua", "asyncua.server", "asyncua.client"):
            logging.getLogger(name).setLevel(logging.ERROR)  # it warns about running without certificates
        port = port or free_port(host)
        server = Server()
        await server.init()
        self.endpoint = f"opc.tcp://{host}:{port}/onshore/plant"
        server.set_endpoint(self.endpoint)
        server.set_server_name(f"Onshore simulated plant ({self.env})")
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        ns = self._ns = await server.register_namespace(NAMESPACE)
        obj = await server.nodes.objects.add_object(ns, "plant")
        for i, v in enumerate(np.asarray(self.state, dtype=np.float64)):
            self._state_nodes.append(await obj.add_variable(ua.NodeId(f"state/{i}", ns), f"state/{i}", float(v),
                                                            ua.VariantType.Double))
        for i, v in enumerate(self.initial_action):
            node = await obj.add_variable(ua.NodeId(f"action/{i}", ns), f"action/{i}", float(v),
                                          ua.VariantType.Double)
            await node.set_writable()
            self._action_nodes.append(node)
            self._action_ids.add(node.nodeid)
        self._estop = await obj.add_variable(ua.NodeId("estop", ns), "estop", False, ua.VariantType.Boolean)
        await self._estop.set_writable()
        reset = await obj.add_variable(ua.NodeId("estop_reset", ns), "estop_reset", False, ua.VariantType.Boolean)
        await reset.set_writable()
        self._alarm = await obj.add_variable(ua.NodeId("alarm", ns), "alarm", False, ua.VariantType.Boolean)
        await self._alarm.set_writable()
        self._frame = await obj.add_variable(ua.NodeId("frame", ns), "frame", 0, ua.VariantType.Int64)
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

        written = {wv.NodeId for wv in event.request_params.NodesToWrite}
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

    def map_dict(self) -> dict[str, Any]:
        node = f"ns={self._ns};s="
        return {"embodiment": self.emb.name, "task": self.task_text,
                "nodes": {"state": [f"{node}state/{i}" for i in range(self.emb.state_dim)],
                          "action": [f"{node}action/{i}" for i in range(self.emb.action_dim)],
                          "estop": f"{node}estop", "estop_reset": f"{node}estop_reset", "alarm": f"{node}alarm"},
                "envelope": {"watchdog_periods": 3, "safe_action": [float(x) for x in self.initial_action]}}

    def write_map(self, path: Path) -> Path:
        """The bridge's MAP.toml for this plant (after ``start``: node ids need the namespace)."""
        Path(path).write_text(tomli_w.dumps(self.map_dict()))
        return Path(path)


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
