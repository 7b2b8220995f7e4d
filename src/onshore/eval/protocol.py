"""The policy protocol every acting thing satisfies: ``reset(task)`` then ``act(state)``.

Defined in :mod:`onshore.sim.policy` (the scripted experts there are the first policies, and
lower layers never import higher ones) and re-exported here, where evaluation and, later,
trained models meet it. See :class:`Policy` for the contract.
"""

from __future__ import annotations

from collections.abc import Callable

from onshore.sim.policy import Policy

#: Builds a fresh policy inside a worker process; must be picklable (a module-level function
#: or class), because evaluation runs episodes in other processes.
PolicyFactory = Callable[[], Policy]

__all__ = ["Policy", "PolicyFactory"]
