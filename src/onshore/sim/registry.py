"""The simulated environments by name: ``metaworld`` and ``tep``.

Each is a module with ``EMBODIMENT``, ``PRELOAD`` (the heavy modules its workers import),
``DEFAULT_TASKS``, ``all_tasks()``, ``check_tasks()``,
``task_text()``, ``embodiment()`` and an adapter class. Environments are built once per process
and kept, because building one (MuJoCo models, the TEP kernel) costs more than an episode.
"""

from __future__ import annotations

from types import ModuleType

from onshore.errors import ValidationError
from onshore.sim.rollout import SimEnv

ENVS = ("metaworld", "tep")
_built: dict[str, SimEnv] = {}


def env_module(name: str) -> ModuleType:
    """The module of environment ``name``; an unknown name raises ``ValidationError``."""
    if name == "metaworld":
        from onshore.sim import metaworld

        return metaworld
    if name == "tep":
        from onshore.sim import tep

        return tep
    raise ValidationError(f"unknown simulator {name!r}; choose one of: {', '.join(ENVS)}")


def resolve_tasks(name: str, tasks: list[str] | None) -> list[str]:
    """``tasks`` checked against environment ``name``, or its default task set when ``None``.

    Refused: an empty list, repeated names, names the environment does not know.
    """
    mod = env_module(name)
    if tasks is None:
        return list(mod.DEFAULT_TASKS)
    tasks = [t.strip() for t in tasks if t.strip()]
    if not tasks:
        raise ValidationError(f"no tasks given; name at least one, e.g. {mod.DEFAULT_TASKS[0]}")
    if len(set(tasks)) != len(tasks):
        raise ValidationError(f"a task is named twice in {', '.join(tasks)}; name each once")
    return mod.check_tasks(tasks)


def make_env(name: str) -> SimEnv:
    """This process's instance of environment ``name`` (built on first use)."""
    if name not in _built:
        mod = env_module(name)
        _built[name] = mod.MetaWorldEnv() if name == "metaworld" else mod.TepEnv()
    return _built[name]


def check_episodes_and_seed(episodes: int, seed: int) -> None:
    """Refuse (``ValidationError``) a non-integer or < 1 episode count and a negative seed."""
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ValidationError(f"--episodes must be a whole number >= 1, got {episodes}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValidationError(f"--seed must be a whole number >= 0, got {seed}")
