"""Frames of a plant watched over OPC UA: each control period's state paired with the action that
followed it (what the plant's own controller wrote to its action nodes). ``onshore monitor`` scores
these frames and ``onshore shadow`` takes the actions as labels; both read them here.

With ``frame_node`` (a counter the PLC or the simulated plant advances once per control period),
one frame is taken per new count and paired with the action then on the nodes, so nothing is
sampled twice, and a count that jumps by more than one (a missed period) marks the next frame
with ``gap`` so that a reader restarts whatever history it keeps. Without it, the nodes are read
once per ``1 / hz``. The session is secured as :mod:`onshore.serve.opcua` says (a watcher only
reads: an anonymous session does, where the server allows it). Refused: an unreachable endpoint
(``OnshoreError``, naming it), a node the server does not have (naming it and its role).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from onshore.serve import opcua


@dataclass(frozen=True)
class WatchedFrame:
    state: np.ndarray  # float64, the map's state nodes in order
    action: np.ndarray  # float64, the action nodes' values that followed ``state``
    index: int  # the plant's frame count (without a counter: the reading's number)
    gap: bool  # a control period was missed just before this frame


async def watch(endpoint: str, mapping: Any, hz: float, *, steps: int | None, seconds: float | None,
                frame_node: str | None, poll_s: float = 0.005,
                security: opcua.Security | None = None) -> AsyncIterator[WatchedFrame]:
    """Yield up to ``steps`` frames, or frames for ``seconds`` of wall time (whichever ends first)."""
    for logger in ("asyncua", "asyncua.client"):
        logging.getLogger(logger).setLevel(logging.ERROR)
    opc = await opcua.connect(endpoint, security or opcua.Security(), "watch")
    try:
        found = await opcua.resolve(opc, {"state": list(mapping.state), "action": list(mapping.action),
                                          "frame counter": [frame_node] if frame_node else []},
                                    getattr(mapping, "source", "the map"))
        state_nodes, action_nodes, counter = found["state"], found["action"], found["frame counter"]
        period = 1.0 / hz if frame_node is None else poll_s
        deadline = time.monotonic() + seconds if seconds is not None else None
        last_count: int | None = None
        held: np.ndarray | None = None  # the state of the last frame, waiting for the action that followed it
        gap = False
        n = 0
        while (steps is None or n < steps) and (deadline is None or time.monotonic() < deadline):
            values = await opc.read_values(counter + state_nodes + action_nodes)
            state = np.asarray(values[len(counter):len(counter) + len(state_nodes)], dtype=np.float64)
            action = np.asarray(values[len(counter) + len(state_nodes):], dtype=np.float64)
            if counter:
                count = int(values[0])
                if count == last_count:
                    await asyncio.sleep(poll_s)
                    continue
                if last_count is not None and count != last_count + 1:
                    held, gap = None, True  # a missed period: nothing paired across it
                last_count = count
                if held is not None:  # the action now on the nodes is the one that followed ``held``
                    yield WatchedFrame(held, action, count - 1, gap)
                    gap = False
                    n += 1
                held = state
            else:
                yield WatchedFrame(state, action, n, False)
                n += 1
                await asyncio.sleep(period)
    finally:
        await opc.disconnect()
