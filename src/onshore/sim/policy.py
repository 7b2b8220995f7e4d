"""The one protocol for everything that acts: scripted experts now, trained models later.

It is defined here, in the lowest layer that has policies (the scripted experts live in
``onshore.sim``), and re-exported as :mod:`onshore.eval.protocol`, because lower layers never
import higher ones.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Policy(Protocol):
    """Something that acts on a machine, one control step at a time.

    ``reset(task)`` starts an episode; ``task`` is the plain-text instruction (the frame's
    ``task`` column, e.g. ``"pick place"``). ``act(state)`` maps the sensed state (one float per
    state channel of the embodiment) to an action (one float per action channel). A policy sees
    nothing else: no simulator internals, no clock, no disturbance labels. It is called once per
    control step, at the embodiment's control rate.
    """

    def reset(self, task: str) -> None: ...

    def act(self, state: np.ndarray) -> np.ndarray: ...
