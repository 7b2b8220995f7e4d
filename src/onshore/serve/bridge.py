"""The OPC UA bridge: a machine's PLC on one side, the policy server on the other, the envelope between.

Every control period the bridge reads the state nodes (and the e-stop button) in one OPC UA Read,
asks the policy server for an action, passes it through its own safety envelope (the same
module as the server's, seeded with the actuators' current positions), and writes the action
nodes in one Write. A period whose answer has not come back by the next tick is a **deadline
miss**: the bridge keeps waiting for that answer (it never queues a second request behind a
late one), and once no state has been answered for ``watchdog_periods`` periods the envelope's
watchdog commands the safe action. The e-stop button latches the bridge's envelope and is passed
on to the server (``estop``), whose latch belongs to the machine and outlives this run: a
restarted bridge finds it latched there and latches too. Only the ``estop_reset`` node clears
it, here and at the server (``reset_estop``). Deadline misses and the bridge's interventions go
to the server with each request, so the run's recording carries them.

Faults never leave the last setpoint in place: when the plant reports a state value that is NaN
or Inf, has a Bad status code, or a source timestamp older than ``max_state_age_s`` (or that
far ahead of this host's clock: clocks that disagree would hide a hung PLC), the bridge does
not ask the model; it commands the safe action (``safe_action`` of the map, or holds the
last command when the map names none), counted as a ``fault`` intervention, and raises its alarm
(the ``alarm`` node, latched until ``estop_reset``). When the policy server refuses (a
withdrawal, a revoked token), goes away or answers what the wire format refuses, the bridge
holds the same way for the rest of the run, alarm raised (still reading the e-stop nodes: the
button still latches), and the report's ``server_lost`` says why; it never exits leaving the
last command on the machine. The limits it enforces are the registered embodiment's (the spec the
server answers ``reset`` with); a map's ``embodiment_file`` may only narrow them. A node of the
wrong data type, or one the server does not have, is refused before the loop starts, naming the
node.

The session with the plant is secured as :mod:`onshore.serve.opcua` says (Basic256Sha256 with
Sign or SignAndEncrypt, the bridge's application certificate, a user; ``none`` on loopback only).

The map (``MAP.toml``) names the embodiment, the task and the nodes, each by ``ns=INDEX;...`` or,
better, by namespace URI (``nsu=URI;...``), which survives a server that renumbers its namespaces::

    embodiment = "furnace-line-3"
    task = "keep zone temperatures"
    [nodes]
    state = ["nsu=urn:acme:line3;s=zone1_temp", ...]  # one per state channel, in the embodiment's order
    action = ["nsu=urn:acme:line3;s=zone1_power", ...] # one per action channel
    estop = "nsu=urn:acme:line3;s=estop"              # optional Boolean: true latches the e-stop
    estop_reset = "nsu=urn:acme:line3;s=estop_reset"  # optional Boolean: true clears a latched e-stop, the alarm
    alarm = "nsu=urn:acme:line3;s=alarm"              # optional Boolean the bridge sets on a fault
    [envelope]
    watchdog_periods = 3                # optional (default 3)
    safe_action = [0.0, 0.0]            # optional (default: hold on a fault; 0 clamped into the limits
                                        # for the watchdog and the e-stop)
    max_state_age_s = 1.0               # optional (default: watchdog_periods periods, at least 1 s)
    embodiment_file = "furnace.toml"    # optional: narrows the registered limits, never widens them

No torch: the bridge runs next to the machine.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onshore.errors import OnshoreError, ValidationError
from onshore.files import read_toml
from onshore.serve import envelope as E
from onshore.serve import opcua
from onshore.serve.client import AsyncClient, ServeError
from onshore.telemetry.embodiment import Embodiment

_MAP_KEYS = {"embodiment", "task", "nodes", "envelope"}
_NODE_KEYS = {"state", "action", "estop", "estop_reset", "alarm"}
_ENVELOPE_KEYS = {"watchdog_periods", "safe_action", "embodiment_file", "max_state_age_s"}


@dataclass(frozen=True)
class BridgeMap:
    embodiment: str
    task: str
    state: tuple[str, ...]
    action: tuple[str, ...]
    estop: str | None = None
    estop_reset: str | None = None
    watchdog_periods: int = 3
    safe_action: tuple[float, ...] | None = None
    embodiment_file: Path | None = None
    alarm: str | None = None
    max_state_age_s: float | None = None
    source: str = "the map"  # where it was read from, for messages

    def node_ids(self) -> dict[str, list[str]]:
        """The map's node ids by role (``state``, ``action``, ``estop``, ``estop_reset``, ``alarm``;
        an optional role the map leaves out has none)."""
        return {"state": list(self.state), "action": list(self.action),
                **{role: [n] if n else [] for role, n in (("estop", self.estop), ("estop_reset", self.estop_reset),
                                                           ("alarm", self.alarm))}}

    @classmethod
    def from_toml(cls, path: Path) -> BridgeMap:
        """Read a map; refuses unknown keys, missing node lists, wrong types (naming the field)."""
        path = Path(path)
        data = read_toml(path, "map")

        def fail(msg: str) -> ValidationError:
            return ValidationError(f"{path}: {msg}")

        for where, got, allowed in (("", data, _MAP_KEYS), ("[nodes] ", data.get("nodes", {}), _NODE_KEYS),
                                    ("[envelope] ", data.get("envelope", {}), _ENVELOPE_KEYS)):
            if not isinstance(got, dict):
                raise fail(f"{where.strip() or 'the map'} must be a table")
            unknown = set(got) - allowed
            if unknown:
                raise fail(f"{where}unknown field(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
        for key in ("embodiment", "task"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise fail(f"field {key!r} is required and must be a string")
        nodes, env = data.get("nodes", {}), data.get("envelope", {})
        lists = {}
        for key in ("state", "action"):
            v = nodes.get(key)
            if not isinstance(v, list) or not v or not all(isinstance(n, str) and n for n in v):
                raise fail(f"[nodes] {key} must be a non-empty list of node ids, e.g. \"ns=2;s=state/0\"")
            lists[key] = tuple(v)
        for key in ("estop", "estop_reset", "alarm"):
            if key in nodes and not isinstance(nodes[key], str):
                raise fail(f"[nodes] {key} must be a node id string")
        for key in _NODE_KEYS:
            for node_id in lists.get(key, [nodes.get(key)]):
                if node_id is not None:
                    opcua.parse_node_id(node_id, f"{path}: [nodes] {key}")
        wd = env.get("watchdog_periods", 3)
        if isinstance(wd, bool) or not isinstance(wd, int) or wd < 1:
            raise fail("[envelope] watchdog_periods must be a whole number >= 1")
        safe = env.get("safe_action")
        if safe is not None and (not isinstance(safe, list) or not all(
                isinstance(x, int | float) and not isinstance(x, bool) for x in safe)):
            raise fail("[envelope] safe_action must be a list of numbers, one per action channel")
        age = env.get("max_state_age_s")
        if age is not None and (isinstance(age, bool) or not isinstance(age, int | float)
                                or not (math.isfinite(age) and age > 0)):
            raise fail("[envelope] max_state_age_s must be a positive number of seconds")
        emb_file = env.get("embodiment_file")
        if emb_file is not None and not isinstance(emb_file, str):
            raise fail("[envelope] embodiment_file must be a path")
        return cls(data["embodiment"], data["task"], lists["state"], lists["action"], nodes.get("estop"),
                   nodes.get("estop_reset"), wd, tuple(float(x) for x in safe) if safe is not None else None,
                   (path.parent / emb_file) if emb_file else None, nodes.get("alarm"),
                   float(age) if age is not None else None, str(path))


@dataclass
class BridgeReport:
    """What a bridge run did. Latencies: from the start of a period to the action written."""

    steps: int = 0
    requests: int = 0  # states sent to the policy server
    written: int = 0
    deadline_misses: int = 0
    io_errors: int = 0
    hz: float = 0.0
    interventions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(E.KINDS, 0))
    server_interventions: dict[str, int] = field(default_factory=dict)
    estops: int = 0
    faults: int = 0  # periods the plant's readings were unusable
    server_lost: str | None = None  # why the policy server stopped answering, if it did
    alarms: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def to_json(self) -> dict[str, Any]:
        return {"steps": self.steps, "requests": self.requests, "written": self.written,
                "deadline_misses": self.deadline_misses,
                "io_errors": self.io_errors, "hz": self.hz, "interventions": self.interventions,
                "server_interventions": self.server_interventions, "estops": self.estops,
                "faults": self.faults, "server_lost": self.server_lost,
                "alarms": self.alarms[:20], "latency_ms": {"p50": self.percentile(50), "p99": self.percentile(99),
                                                           "max": max(self.latencies_ms, default=float("nan"))}}


_NUMERIC = ("Double", "Float", "SByte", "Byte", "Int16", "UInt16", "Int32", "UInt32", "Int64", "UInt64")


async def _check_types(nodes: dict[str, list[Any]], ids: dict[str, list[str]]) -> dict[str, list[Any]]:
    """The variant type of every node, refusing (naming the node) a state node that is not a
    number, an action node that is not Double or Float, a flag node that is not Boolean."""
    allowed = {"state": _NUMERIC, "action": ("Double", "Float"), "flag": ("Boolean",)}
    types: dict[str, list[Any]] = {}
    for role, group in nodes.items():
        types[role] = []
        for node, node_id in zip(group, ids[role], strict=True):
            try:
                vt = await node.read_data_type_as_variant_type()
            except Exception as e:
                raise ValidationError(f"OPC UA node {node_id} ({role}) cannot be read: {str(e) or type(e).__name__}; "
                                      "check the node id in the map") from None
            if vt.name not in allowed[role]:
                raise ValidationError(f"OPC UA node {node_id} ({role}) has data type {vt.name}; a {role} node must "
                                      f"be {' or '.join(allowed[role])}")
            types[role].append(vt)
    return types


def _plant_fault(values: list[Any], names: list[str], max_age: float) -> str | None:
    """Why these state readings (OPC UA DataValues) must not reach the model, or None."""
    now = dt.datetime.now(dt.UTC)
    for dv, name in zip(values, names, strict=True):
        if dv.StatusCode is not None and not dv.StatusCode.is_good():
            return f"plant reports status {dv.StatusCode.name} for {name}"
        v = dv.Value.Value if dv.Value is not None else None
        try:
            ok = v is not None and not isinstance(v, bool) and math.isfinite(float(v))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            return f"plant reports {v!r} for {name}"
        stamp = dv.SourceTimestamp or dv.ServerTimestamp
        if stamp is not None:
            if stamp.tzinfo is None:
                stamp = stamp.replace(tzinfo=dt.UTC)
            age = (now - stamp).total_seconds()
            if age > max_age:
                return f"plant reading of {name} is {age:.1f} s old (over {max_age:g} s)"
            if -age > max_age:  # a clock ahead would hide a hung PLC's old readings for that long
                return (f"plant reading of {name} is stamped {-age:.1f} s in the future (over {max_age:g} s): the "
                        "plant's clock and this host's disagree")
    return None


async def run_bridge(endpoint: str, mapping: BridgeMap, server: str, token: str | None, hz: float | None = None,
                     steps: int | None = None, seconds: float | None = None,
                     stop: asyncio.Event | None = None, say: Callable[[str], None] | None = None,
                     security: opcua.Security | None = None) -> BridgeReport:
    """Run the bridge until ``steps`` periods, ``seconds``, or ``stop`` is set; returns its report.

    ``hz`` overrides the embodiment's control rate (a simulated plant may run faster than real
    time). ``security`` secures the OPC UA session (default: ``none``, which is refused unless the
    endpoint is on loopback). Refused before the loop starts: an unreachable OPC UA server or
    policy server, a session the OPC UA server refuses (certificate, user), a refused token, a node
    the OPC UA server does not have (naming it), node lists whose lengths differ from the
    embodiment's channels, a node of the wrong data type, an embodiment the server does not serve,
    an ``embodiment_file`` that would widen the registered limits. After that, nothing the plant
    or the server does ends the run early: faults hold the safe action with the alarm raised (see the module docstring).
    """
    from asyncua import ua

    say = say or (lambda _m: None)
    report = BridgeReport()
    opc = await opcua.connect(endpoint, security or opcua.Security(), "bridge", say)
    policy = AsyncClient(server, token)
    try:
        ids = mapping.node_ids()
        found = await opcua.resolve(opc, ids, mapping.source)
        state_nodes, action_nodes = found["state"], found["action"]
        flag_nodes = found["estop"] + found["estop_reset"]  # read each period, in this order
        alarm_node = found["alarm"][0] if found["alarm"] else None
        types = await _check_types(
            {"state": state_nodes, "action": action_nodes, "flag": flag_nodes + found["alarm"]},
            {"state": ids["state"], "action": ids["action"], "flag": ids["estop"] + ids["estop_reset"] + ids["alarm"]})
        await policy.connect()
        initial = np.asarray(await opc.read_values(action_nodes), dtype=np.float64)
        ready = await policy.reset(mapping.embodiment, mapping.task, initial_action=initial.astype(np.float32))
        emb = Embodiment.from_dict(ready["spec"], source="the policy server's embodiment spec")
        if mapping.embodiment_file is not None:
            emb = E.narrowed(emb, Embodiment.from_toml(mapping.embodiment_file), str(mapping.embodiment_file))
        if (len(state_nodes), len(action_nodes)) != (emb.state_dim, emb.action_dim):
            raise ValidationError(f"the map names {len(state_nodes)} state and {len(action_nodes)} action nodes; "
                                  f"{emb.name} has {emb.state_dim} and {emb.action_dim} channels")
        rate = float(hz) if hz else emb.control_hz
        if not rate > 0:
            raise ValidationError(f"--hz must be positive, got {hz}")
        report.hz = rate
        period = 1.0 / rate
        # max_rate stays in units per second whatever the bridge's rate
        limits = E.Limits.from_embodiment(emb, mapping.safe_action, mapping.watchdog_periods, period=period)
        env = E.Envelope(limits, initial=initial)
        max_age = mapping.max_state_age_s or max(mapping.watchdog_periods * period, 1.0)
        state_names = [c.name for c in emb.state]
        alarmed = False

        async def set_alarm(on: bool) -> None:
            nonlocal alarmed
            if alarm_node is not None and on != alarmed:
                await opc.write_values([alarm_node], [ua.Variant(on, ua.VariantType.Boolean)])
            alarmed = on

        async def read_flags() -> None:
            """Only the e-stop nodes (the server is lost): the button still latches, the reset still clears."""
            if flag_nodes:
                await buttons(await opc.read_attributes(flag_nodes, ua.AttributeIds.Value))

        async def io_step() -> tuple[np.ndarray | str, float]:
            """One period's read and, when the readings are usable, the server's answer; a plant
            fault comes back as its description instead of an action."""
            t0 = time.perf_counter()
            values = await opc.read_attributes(state_nodes + flag_nodes, ua.AttributeIds.Value)
            await buttons(values[len(state_nodes):])
            fault = _plant_fault(values[:len(state_nodes)], state_names, max_age)
            if fault is not None:
                return fault, t0
            state = np.asarray([v.Value.Value for v in values[:len(state_nodes)]], dtype=np.float32)
            report.requests += 1
            raw = await policy.act(state, deadline_misses=report.deadline_misses,
                                   bridge_interventions=sum(report.interventions.values()))
            if policy.last.get("estopped") and not env.estopped:
                # the machine's latch at the server (an earlier run of this bridge, another session,
                # a restart of the server): latched here too, until estop_reset
                env.estop(str(policy.last.get("alarm") or "e-stop latched at the policy server"), by="policy server")
                say("the policy server reports this machine's e-stop latched; commanding the safe action")
            return raw, t0

        async def tell(msg: dict[str, Any]) -> None:
            """Pass the button to the server's latch, which outlives this run; the local latch holds anyway."""
            if report.server_lost is None:
                try:
                    await policy.request(msg)
                except OnshoreError as e:
                    say(f"policy server: could not pass on {msg['type']}: {e}")

        async def buttons(values: list[Any]) -> None:
            """Latch the e-stop when its node reads true; clear it (and the alarm) on ``estop_reset``."""
            flags = [bool(v.Value.Value) if v.Value is not None else False for v in values]
            pressed = flags[0] if mapping.estop else False
            reset = flags[-1] if mapping.estop_reset else False
            if pressed and not env.estopped:
                env.estop("e-stop button", by="e-stop button")
                report.estops += 1
                say("e-stop pressed: latched; commanding the safe action")
                await tell({"type": "estop", "reason": "e-stop button"})
            elif reset and not pressed and (env.estopped or alarmed):
                if env.estopped:
                    env.reset_estop(by="estop_reset node")
                    await tell({"type": "reset_estop", "by": "estop_reset node"})
                await set_alarm(False)
                say("e-stop reset")

        async def write(cmd: E.Command) -> None:
            for k in cmd.interventions:
                report.interventions[k] += 1
            if cmd.alarm and len(report.alarms) < 100 and (not report.alarms or report.alarms[-1] != cmd.alarm):
                report.alarms.append(cmd.alarm)
            try:
                await opc.write_values(action_nodes, [ua.Variant(float(x), vt)
                                                      for x, vt in zip(cmd.action, types["action"], strict=True)])
            except ua.UaStatusCodeError as e:
                name = ua.StatusCode(e.code).name
                if "AccessDenied" in name or "NotWritable" in name:  # this session may not act: nothing written
                    raise OnshoreError(f"the OPC UA server refused this session's write to the action nodes "
                                       f"({name}): log in as a user who may write them (--credentials FILE, or "
                                       f"{opcua.USER_ENV} and {opcua.PASSWORD_ENV})") from None
                raise
            report.written += 1

        async def hold(why: str) -> None:
            await set_alarm(True)
            await write(env.hold(E.FAULT, why, loop.time(), mapping.safe_action))

        loop = asyncio.get_running_loop()
        start = loop.time()
        tick = start
        pending: asyncio.Task[tuple[np.ndarray | str, float]] | None = None
        while True:
            if steps is not None and report.steps >= steps:
                break
            if seconds is not None and loop.time() - start >= seconds:
                break
            if stop is not None and stop.is_set():
                break
            report.steps += 1
            deadline = tick + period
            if report.server_lost is not None:  # no server: hold for the rest of the run
                try:
                    await read_flags()  # a button pressed now still moves the machine to the safe action
                except Exception as e:  # a failed read: the hold goes on regardless
                    report.io_errors += 1
                    say(f"OPC UA error: {str(e) or type(e).__name__}")
                await hold(f"policy server lost: {report.server_lost}; holding the safe action")
            else:
                if pending is None:
                    pending = asyncio.ensure_future(io_step())
                done, _ = await asyncio.wait({pending}, timeout=max(0.0, deadline - loop.time()))
                if pending in done:
                    task, pending = pending, None
                    try:
                        raw, t0 = task.result()
                    except OnshoreError as e:  # the policy client's errors: ServeError, WireError
                        if isinstance(e, ServeError) and e.code == "rate_limited":
                            # early after a late answer: this period has no answer
                            report.deadline_misses += 1
                            cmd = env.idle(loop.time())
                            if cmd is not None:
                                await write(cmd)
                        else:  # refused (a withdrawal, a revoked token), gone, or answering garbage: hold
                            report.server_lost = str(e)
                            say(f"policy server: {e}; holding the safe action, alarm raised")
                            await hold(f"policy server lost: {e}; holding the safe action")
                    except Exception as e:  # a failed OPC UA read: this period has no state
                        report.io_errors += 1
                        report.deadline_misses += 1
                        say(f"OPC UA error: {str(e) or type(e).__name__}")
                        cmd = env.idle(loop.time())
                        if cmd is not None:
                            await write(cmd)
                    else:
                        if isinstance(raw, str):
                            report.faults += 1
                            if report.faults == 1 or not alarmed:
                                say(f"{raw}; holding the safe action, alarm raised")
                            await hold(f"{raw}; holding the safe action")
                        else:
                            await write(env.command(raw, loop.time()))
                            report.latencies_ms.append((time.perf_counter() - t0) * 1e3)
                            report.server_interventions = dict(policy.last.get("counts", {}))
                        if loop.time() > deadline:
                            report.deadline_misses += 1
                else:
                    report.deadline_misses += 1
                    cmd = env.idle(loop.time())
                    if cmd is not None:
                        await write(cmd)
            tick = deadline
            now = loop.time()
            if now < tick:
                await asyncio.sleep(tick - now)
            elif now - tick > period:  # far behind: skip the ticks already missed, don't burst
                tick = now
        if pending is not None:  # let the last request finish (unwritten), so the server's record is whole
            try:
                await asyncio.wait_for(pending, timeout=max(period, 5.0))
            except Exception:  # stopping: whatever happened to it changes nothing on the machine
                pass
        if report.server_lost is None:
            try:
                await policy.end()
            except OnshoreError:
                pass
        return report
    finally:
        try:
            await policy.close()
        except Exception:  # a connection the server already cut has nothing left to close
            pass
        await opc.disconnect()
