"""The serving wire format: msgpack maps in binary WebSocket frames. Never pickle.

Every message is a msgpack map with a string ``type``; arrays travel as maps
``{"dtype": "<f4", "shape": [n, ...], "data": <raw little-endian float32 bytes>}``. Decoding
refuses (``WireError``, which the server answers with an ``error`` message) anything else: a
frame over ``MAX_FRAME`` bytes, msgpack extension types, non-string map keys, containers larger
than a few thousand items, a top level that is not a map, an unknown ``type``, arrays of another
dtype or whose byte length disagrees with their shape. ``docs/serving.md`` lists every message.
This module imports neither torch nor the workspace: the client and the bridge use it next to
the machine.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np

from onshore.errors import OnshoreError

#: Largest frame the server reads and answers (bytes); the WebSocket layer closes the connection
#: (code 1009) above ``HARD_FRAME``, so a frame in between gets an ``error`` reply instead.
MAX_FRAME = 64 * 1024
HARD_FRAME = 1024 * 1024
MAX_ITEMS = 4096
DTYPE = "<f4"

CLIENT_TYPES = ("info", "reset", "act", "estop", "reset_estop", "end")
SERVER_TYPES = ("info", "ready", "action", "estopped", "estop_cleared", "ended", "error")

#: Error codes of ``error`` replies.
ERROR_CODES = ("bad_frame", "bad_message", "bad_state", "unknown_embodiment", "no_session", "too_large",
               "rate_limited", "unauthorized", "refused", "busy", "internal")


class WireError(OnshoreError):
    """A message that breaks the wire format; ``code`` is one of ``ERROR_CODES``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # picklable: crosses evaluation's worker processes
        return type(self), (self.code, str(self))


def _no_ext(code: int, data: bytes) -> Any:
    raise WireError("bad_frame", f"msgpack extension type {code} is not accepted")


def encode_array(a: np.ndarray) -> dict[str, Any]:
    """An array as dtype, shape and raw little-endian float32 bytes."""
    arr = np.ascontiguousarray(np.asarray(a, dtype=DTYPE))
    return {"dtype": DTYPE, "shape": list(arr.shape), "data": arr.tobytes()}


def decode_array(value: Any, field: str) -> np.ndarray:
    """The float32 array in ``value`` (as :func:`encode_array` makes it); refuses anything else."""
    if not isinstance(value, dict) or set(value) != {"dtype", "shape", "data"}:
        raise WireError("bad_message", f"field {field!r} must be an array map with dtype, shape and data")
    dtype, shape, data = value["dtype"], value["shape"], value["data"]
    if dtype != DTYPE:
        raise WireError("bad_message", f"field {field!r}: dtype must be {DTYPE!r} (little-endian float32), "
                                       f"got {dtype!r}")
    if (not isinstance(shape, list) or len(shape) > 4
            or not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= MAX_ITEMS for n in shape)):
        raise WireError("bad_message", f"field {field!r}: shape must be a list of at most 4 sizes in 0..{MAX_ITEMS}")
    if not isinstance(data, bytes) or len(data) != 4 * math.prod(shape):
        raise WireError("bad_message", f"field {field!r}: data must be {4 * math.prod(shape)} bytes for shape "
                                       f"{shape}")
    return np.frombuffer(data, dtype=DTYPE).reshape(shape).astype(np.float32)


def pack(message: dict[str, Any]) -> bytes:
    """One message as msgpack bytes (numpy arrays become array maps)."""
    def default(o: Any) -> Any:
        if isinstance(o, np.ndarray):
            return encode_array(o)
        if isinstance(o, np.generic):
            return o.item()
        raise TypeError(f"cannot send {type(o).__name__}")

    return msgpack.packb(message, default=default, use_bin_type=True)


def unpack_map(frame: Any, max_frame: int = MAX_FRAME, object_hook: Callable[[dict[Any, Any]], Any] | None = None
               ) -> dict[str, Any]:
    """One binary frame as a msgpack map, bounded (``max_frame`` bytes, ``MAX_ITEMS`` items, 64 keys a
    map, no extension types). Map keys must be strings unless ``object_hook`` is given, which then
    sees every map first and must check its keys itself (openpi's array maps have byte keys)."""
    if isinstance(frame, str):
        raise WireError("bad_frame", "text frames are not accepted; send binary msgpack frames")
    if len(frame) > max_frame:
        raise WireError("too_large", f"frame of {len(frame)} bytes is over the limit of {max_frame}")
    try:
        msg = msgpack.unpackb(frame, raw=False, strict_map_key=object_hook is None, ext_hook=_no_ext,
                              object_hook=object_hook, use_list=True, max_str_len=max_frame,
                              max_bin_len=max_frame, max_array_len=MAX_ITEMS, max_map_len=64, max_ext_len=0)
    except WireError:
        raise
    except Exception as e:  # msgpack raises several types for malformed input; all mean the same
        raise WireError("bad_frame", f"not a msgpack message ({type(e).__name__})") from None
    if not isinstance(msg, dict):
        raise WireError("bad_message", "a message must be a msgpack map")
    return msg


def unpack(frame: Any, types: tuple[str, ...]) -> dict[str, Any]:
    """Decode one frame into a message whose ``type`` is one of ``types``; refuses anything else."""
    msg = unpack_map(frame)
    kind = msg.get("type")
    if kind not in types:
        raise WireError("bad_message", f"unknown message type {kind!r}; expected one of {', '.join(types)}")
    return msg


def field(msg: dict[str, Any], name: str, kind: type | tuple[type, ...], required: bool = True) -> Any:
    """``msg[name]`` checked to be of ``kind`` (bool is not an int)."""
    if name not in msg:
        if required:
            raise WireError("bad_message", f"{msg.get('type')}: field {name!r} is required")
        return None
    v = msg[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(v, bool) and bool not in kinds or not isinstance(v, kinds):
        raise WireError("bad_message", f"{msg.get('type')}: field {name!r} must be "
                                       f"{' or '.join(k.__name__ for k in kinds)}, got {type(v).__name__}")
    return v


def error(code: str, message: str, id_: Any = None) -> dict[str, Any]:
    return {"type": "error", "id": id_ if isinstance(id_, int) and not isinstance(id_, bool) else None,
            "code": code, "message": message}
