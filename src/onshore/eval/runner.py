"""Closed-loop evaluation: run a policy in a simulator and score it per task.

``evaluate`` runs ``episodes`` episodes per task, in worker processes, with the same
per-episode seeding as generation (an episode is fixed by env, seed, task and index), so a
number in a report can be reproduced from the seed alone. Scoring is per environment
(:mod:`onshore.eval.metaworld_eval`, :mod:`onshore.eval.tep_eval`); for Tennessee Eastman the
same episodes are also run with the PI controller as the baseline.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from types import ModuleType
from typing import Any

from onshore.errors import ValidationError
from onshore.eval import metaworld_eval, tep_eval
from onshore.eval.protocol import PolicyFactory
from onshore.eval.stats import wilson_interval
from onshore.sim import registry
from onshore.sim.generate import episode_specs
from onshore.sim.parallel import Workers, workers_for
from onshore.sim.rollout import EpisodeSpec, rollout
from onshore.sim.sensors import SensorOptions
from onshore.sim.versions import package_versions

ENV_VERSIONS = {
    "metaworld": "Meta-World v3 task suite (metaworld package), MuJoCo physics",
    "tep": "modified Tennessee Eastman (temexd_mod, Bathelt/Ricker/Jelali 2015) via tep-studio, Mode 1",
}


@dataclass
class TaskResult:
    """One task's score. ``metrics`` are env-specific; ``baseline`` is the PI controller's on the
    same episodes, for a TEP policy other than the PI controller itself (else ``None``)."""

    task: str
    text: str
    episodes: int
    successes: int
    success_rate: float
    ci95: tuple[float, float]
    mean_return: float
    mean_length: float
    metrics: dict[str, Any] = field(default_factory=dict)
    baseline: dict[str, Any] | None = None
    episode_results: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Report:
    """An evaluation: what ran, how success was defined, and every number needed to redo it."""

    env: str
    policy: str
    seed: int
    episodes_per_task: int
    embodiment: str
    control_hz: float
    episode_seconds: float
    success_definition: str
    env_version: str
    versions: dict[str, str]
    tasks: list[TaskResult]
    label: str = ""  # whose evaluation: a member or dataset name; names the report's title and files
    units: dict[str, str] = field(default_factory=dict)  # metric -> unit, e.g. TEP IAE per variable
    sensors: dict[str, Any] | None = None  # the sensor model the policy saw (None: exact readings)

    def task(self, name: str) -> TaskResult:
        for t in self.tasks:
            if t.task == name:
                return t
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for t in d["tasks"]:
            t["ci95"] = list(t["ci95"])
        return d


def _scorer(env: str) -> ModuleType:
    return metaworld_eval if env == "metaworld" else tep_eval


def _run(spec: EpisodeSpec, policy: str | PolicyFactory, sensors: SensorOptions | None = None) -> dict[str, Any]:
    """Worker job: one episode, scored (module level, so worker processes can unpickle it)."""
    env = registry.make_env(spec.env)
    agent = env.expert(env.dt) if policy == "expert" else policy()  # type: ignore[operator]
    scorer = _scorer(spec.env)
    ep = rollout(env, agent, spec, sensors=sensors, after_success=scorer.AFTER_SUCCESS)
    success = (not ep.terminated) if spec.env == "tep" else ep.succeeded
    return {"task": spec.task, "index": spec.index, "episode_seed": spec.episode_seed,
            "success": bool(success), "return": ep.total_return, "length": ep.length,
            "metrics": scorer.episode_metrics(ep)}


def _score(task: str, text: str, results: list[dict[str, Any]], scorer: ModuleType) -> TaskResult:
    n = len(results)
    k = sum(r["success"] for r in results)
    return TaskResult(
        task=task, text=text, episodes=n, successes=k, success_rate=k / n,
        ci95=wilson_interval(k, n),
        mean_return=sum(r["return"] for r in results) / n,
        mean_length=sum(r["length"] for r in results) / n,
        metrics=scorer.task_metrics(results), episode_results=results)


def evaluate(
    env: str,
    tasks: list[str] | None = None,
    episodes: int = 10,
    seed: int = 0,
    policy: str | PolicyFactory = "expert",
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    label: str = "",
    sensors: SensorOptions | None = None,
) -> Report:
    """Evaluate ``policy`` on ``episodes`` episodes of each task of ``env``; return a Report.

    ``policy`` is ``"expert"`` (the scripted expert: Meta-World's policies, the TEP PI
    controller) or a picklable factory returning a :class:`~onshore.eval.protocol.Policy`.
    For TEP a policy other than the PI controller is compared with the PI controller run on the
    same episodes (``baseline``); the expert *is* the PI controller, so it has no baseline.
    ``label`` says whose evaluation it is (a member or dataset).
    ``sensors``: what the policy (and the PI baseline) sense, e.g. noise and quantisation as a
    member's telemetry has them (default: exact readings); success is scored on the true plant.

    ``workers``: processes (this one among them); default: all cores, but one per few episodes for
    a short run (:func:`onshore.sim.parallel.workers_for`). Results do not depend on it.
    A caller with set-up of its own to do first (deciding on and opening a model) starts an
    :class:`Evaluation` instead, so the worker processes start meanwhile.

    Refused (``ValidationError``): an unknown env, task or policy name, ``episodes`` < 1,
    ``workers`` < 1, a negative seed.
    """
    _check_policy(policy)
    with Evaluation(env, tasks, episodes, seed, workers, sensors, expert=policy == "expert",
                    preload=() if isinstance(policy, str) else (type(policy).__module__,)) as ev:
        return ev.run(policy, progress, label)


def _check_policy(policy: str | PolicyFactory) -> None:
    if isinstance(policy, str) and policy != "expert":
        raise ValidationError(f"unknown policy {policy!r}; only 'expert' (the scripted expert) "
                              "is available until trained models can be evaluated")
    if not isinstance(policy, str) and not callable(policy):
        raise ValidationError("policy must be 'expert' or a function that builds a policy")


class Evaluation:
    """An evaluation checked and under way before its policy is known (:func:`evaluate` in two
    steps): making one checks what is evaluated and starts the worker processes (imports,
    each one's environments and goal sets for the episodes it starts on), so the caller can
    decide on and open the model meanwhile; :meth:`run` then runs the episodes. Use it as a
    context manager: leaving it stops the workers.

    ``expert``: whether the policy will be the scripted expert (a TEP policy that is not gets
    the PI controller's baseline episodes too). ``preload``: modules the policy's workers need
    (e.g. ``onshore.model.policy``, which imports torch), imported once by the forkserver.
    Refused (``ValidationError``), before any process starts: an unknown env or task,
    ``episodes`` < 1, ``workers`` < 1, a negative seed.
    """

    def __init__(self, env: str, tasks: list[str] | None = None, episodes: int = 10, seed: int = 0,
                 workers: int | None = None, sensors: SensorOptions | None = None, expert: bool = True,
                 preload: Sequence[str] = ()) -> None:
        self.mod = registry.env_module(env)
        self.task_list = registry.resolve_tasks(env, tasks)
        registry.check_episodes_and_seed(episodes, seed)
        self.env, self.episodes, self.seed, self.sensors, self.expert = env, episodes, seed, sensors, expert
        self.specs = episode_specs(env, self.task_list, episodes, seed)
        # TEP compares against the PI controller on the same episodes; the expert is its own baseline.
        self.with_baseline = env == "tep" and not expert
        self.job_specs = self.specs + (self.specs if self.with_baseline else [])
        n = workers_for(len(self.job_specs), workers)
        # The forkserver imports once what every worker needs: this module, the simulator, the
        # policy's module. Each worker starts on its own run of neighbouring episodes (mostly
        # one task), so it builds only their environments and goal sets, and does so at once.
        self.pool = Workers(n, preload=[__name__, *self.mod.PRELOAD, *preload], warm=(_warm, self.job_specs))

    def __enter__(self) -> Evaluation:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.pool.close(wait=exc_type is None)

    def close(self) -> None:
        """Stop the worker processes (a caller that never runs the evaluation)."""
        self.pool.close(wait=False)

    def run(self, policy: str | PolicyFactory = "expert", progress: Callable[[int, int], None] | None = None,
            label: str = "") -> Report:
        """Run the episodes with ``policy`` (as :func:`evaluate` takes it); return the Report.
        Refused: an unknown policy (``ValidationError``), the expert when the evaluation was
        started for another policy or the other way round (``ValueError``: a caller's bug)."""
        _check_policy(policy)
        if (policy == "expert") != self.expert:
            raise ValueError("the evaluation was started for "
                             f"{'the expert' if self.expert else 'a policy other than the expert'}")
        env, episodes, specs, scorer = self.env, self.episodes, self.specs, _scorer(self.env)
        jobs: list[tuple[EpisodeSpec, str | PolicyFactory, SensorOptions | None]] = [
            (s, policy, self.sensors) for s in specs]
        if self.with_baseline:
            jobs += [(s, "expert", self.sensors) for s in specs]
        # each worker keeps to its own run of episodes and then helps the others one episode at a
        # time, so all finish together (results are a few numbers each: they wait for their turn)
        results = list(self.pool.map_ordered(_job, jobs, progress, own_shares=True))

        sim_env = registry.make_env(env)
        emb = self.mod.embodiment()
        out = []
        for t_i, task in enumerate(self.task_list):
            mine = results[t_i * episodes:(t_i + 1) * episodes]
            tr = _score(task, self.mod.task_text(task), mine, scorer)
            if self.with_baseline:
                base = results[len(specs) + t_i * episodes:len(specs) + (t_i + 1) * episodes]
                b = _score(task, tr.text, base, scorer)
                tr.baseline = {"policy": "pi-controller (tep-studio RickerMultiLoopController)",
                               "success_rate": b.success_rate, "mean_return": b.mean_return,
                               **b.metrics}
            out.append(tr)
        name = policy if isinstance(policy, str) else (
            getattr(policy, "label", None) or getattr(policy, "__qualname__", repr(policy)))
        return Report(
            env=env, policy=name, seed=self.seed, episodes_per_task=episodes, embodiment=emb.name,
            control_hz=emb.control_hz, episode_seconds=sim_env.default_seconds,
            success_definition=scorer.SUCCESS_DEFINITION, env_version=ENV_VERSIONS[env],
            versions=package_versions(), tasks=out, label=label,
            units={f"iae.{cv}": u for cv, u in tep_eval.iae_units().items()} if env == "tep" else {},
            sensors=None if self.sensors is None else asdict(self.sensors))


def _warm(specs: Sequence[EpisodeSpec]) -> None:
    """A worker's start: build the environment and, for each task among ``specs``, what its
    first episode needs (the task's simulator, its goal set), as resetting to it does."""
    seen: set[str] = set()
    for spec in specs:
        if spec.task not in seen:
            seen.add(spec.task)
            env = registry.make_env(spec.env)
            env.reset(spec, env.default_seconds)


def _job(job: tuple[EpisodeSpec, str | PolicyFactory, SensorOptions | None]) -> dict[str, Any]:
    return _run(*job)


__all__ = ["Evaluation", "Report", "TaskResult", "evaluate"]
