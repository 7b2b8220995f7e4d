"""Serving next to the machine: the policy server, its client, the safety envelope, the OPC UA bridge.

``onshore.serve.Client`` is importable without torch (and so are ``envelope``, ``wire`` and
``bridge``): they run next to the machine. The server and the model loading import torch when a
model is served.
"""

from __future__ import annotations

from typing import Any

__all__ = ["AsyncClient", "Client", "ClientFactory", "ServeError"]


def __getattr__(name: str) -> Any:  # the websocket client only when a client is made
    if name in __all__:
        from onshore.serve import client

        return getattr(client, name)
    raise AttributeError(name)
