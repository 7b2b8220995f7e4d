"""openpi's WebSocket policy protocol, as ``onshore serve --protocol openpi`` speaks it.

Robot stacks built on ``openpi-client`` (``WebsocketClientPolicy``) talk to a policy server this
way: the client opens a WebSocket (an ``Authorization: Api-Key KEY`` header when it has a key);
the server first sends a metadata map; then each binary frame from the client is an observation
map and the server answers each with an action map. Maps are msgpack, numpy arrays inside them
are maps ``{b"__ndarray__": True, b"data": raw bytes, b"dtype": "<f4", b"shape": [...]}`` and
numpy scalars ``{b"__npgeneric__": True, ...}``; an error is a text frame (the client raises it).

How Onshore maps it onto its own sessions (``docs/serving.md``): the key is an Onshore client
token; an observation carries the state under one of :data:`STATE_KEYS` and the task text under
``prompt``; the first observation (and any whose prompt differs from the session's) starts an
episode, as ``reset`` does; every observation is then one ``act``, checked, rate limited and put
through the machine's safety envelope like any other. The answer's ``actions`` is a chunk of one
step, the command the envelope let through: a longer chunk would hand the client commands no
envelope has seen. What the envelope did rides along under ``onshore``.

Decoding is as strict as :mod:`onshore.serve.wire`: a frame over the limit, msgpack extension
types, a top level that is not a map of string keys, arrays of a non-numeric dtype (objects,
strings, records), more than 4 dimensions, or whose byte length disagrees with their shape are
refused (``WireError``). This module imports neither torch nor the workspace.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np

from onshore.serve.wire import MAX_ITEMS, WireError, unpack_map

#: Where an observation may carry the machine's state (openpi's and LeRobot's spellings).
STATE_KEYS = ("state", "observation/state", "observation.state")
PROMPT_KEY = "prompt"
#: numpy dtype kinds an array may have: bool, signed and unsigned integers, floats.
_KINDS = frozenset("biuf")


def auth_header(header: str | None) -> str | None:
    """openpi's ``Api-Key KEY`` as the ``Bearer KEY`` Onshore's token table checks (others unchanged)."""
    if header is not None and header.startswith("Api-Key "):
        return "Bearer " + header[len("Api-Key "):].strip()
    return header


def _array(obj: dict[Any, Any]) -> Any:
    """msgpack object hook: openpi's array and scalar maps as numpy values, checked."""
    if b"__ndarray__" in obj:
        data, dtype, shape = obj.get(b"data"), _dtype(obj.get(b"dtype")), obj.get(b"shape")
        if (not isinstance(shape, list | tuple) or len(shape) > 4
                or not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= MAX_ITEMS for n in shape)):
            raise WireError("bad_message", f"an array's shape must be at most 4 sizes in 0..{MAX_ITEMS}")
        if not isinstance(data, bytes) or len(data) != dtype.itemsize * math.prod(shape):
            raise WireError("bad_message", f"an array's data must be {dtype.itemsize * math.prod(shape)} bytes "
                                           f"for dtype {dtype.str} and shape {list(shape)}")
        return np.frombuffer(data, dtype=dtype).reshape(shape).copy()
    if b"__npgeneric__" in obj:
        value = obj.get(b"data")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise WireError("bad_message", "a numpy scalar must carry a number")
        return _dtype(obj.get(b"dtype")).type(value)
    if not all(isinstance(k, str) for k in obj):
        raise WireError("bad_message", "map keys must be strings")
    return obj


def _dtype(text: Any) -> np.dtype[Any]:
    try:
        dtype = np.dtype(text) if isinstance(text, str) and len(text) <= 8 else None
    except TypeError:
        dtype = None
    if dtype is None or dtype.kind not in _KINDS or dtype.itemsize > 8:
        raise WireError("bad_message", f"array dtype {text!r} is not accepted; send numeric arrays (e.g. '<f4')")
    return dtype


def decode(frame: Any, max_frame: int) -> dict[str, Any]:
    """One observation frame as a map; refuses (``WireError``) anything but a checked msgpack map."""
    return unpack_map(frame, max_frame, object_hook=_array)


def observation(msg: dict[str, Any]) -> tuple[np.ndarray, str | None]:
    """The state (float32, flat) and the prompt (None when absent) of an observation map."""
    found = [k for k in STATE_KEYS if k in msg]
    if len(found) != 1:
        raise WireError("bad_message", f"an observation needs the state under exactly one of "
                                       f"{', '.join(repr(k) for k in STATE_KEYS)}; got keys {sorted(msg)[:8]}")
    state = msg[found[0]]
    if isinstance(state, list) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in state):
        state = np.asarray(state, dtype=np.float64)
    if not isinstance(state, np.ndarray):
        raise WireError("bad_message", f"{found[0]!r} must be a numeric array")
    prompt = msg.get(PROMPT_KEY)
    if prompt is not None and not isinstance(prompt, str):
        raise WireError("bad_message", f"{PROMPT_KEY!r} must be a string (the task text)")
    return state.astype(np.float32).reshape(-1), prompt


def _pack_numpy(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        a = np.ascontiguousarray(o)
        return {b"__ndarray__": True, b"data": a.tobytes(), b"dtype": a.dtype.str, b"shape": list(a.shape)}
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"cannot send {type(o).__name__}")


def encode(message: dict[str, Any]) -> bytes:
    """A map for an openpi client, numpy arrays in openpi's array maps."""
    return msgpack.packb(message, default=_pack_numpy, use_bin_type=True)


def error_text(code: str, message: str) -> str:
    """An error as openpi sends it: a text frame, which the client raises with this text."""
    return f"onshore {code}: {message}"
