"""Regenerate docs/results.md: the four results of the cross-embodiment model (issue 8).

    PYTHONPATH=src python bench/results.py --ws /work/results-ws --data /work/results-data

Resumable: every unit of work (a telemetry folder, an ingest, a training run, an evaluation)
leaves its output behind, and a rerun skips what exists: telemetry folders carry ``.done``,
datasets and models live in the results workspace's catalog (a killed training run resumes
from its last checkpoint, as ``onshore train`` does), and each training's and evaluation's
summary is a small JSON under ``--out`` (default ``docs/results/``). docs/results.md is
rewritten from those JSON files after every unit, so it always shows what has finished and
marks the rest as pending.

Everything goes through the library the CLI uses: telemetry from ``onshore.sim.generate``
(the same seeds as ``onshore sim generate``; ``--data`` points at a cache of its folders,
each checked against the settings asked for), ingest under each member's usage policy at a
Japanese site, ``onshore.train.loop.train`` (every dataset decided and every key release
logged in the ledger with the purpose), and ``onshore.eval.runner.evaluate`` on a model
loaded through ``policy_factory`` (a ``model.use`` decision in the ledger).

The protocol (what is trained on what, and evaluated how) is fixed in this file; the budget
(steps, batch, evaluation episodes) is set on the command line, and docs/results.md states
every budget that ran.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SITE = "osaka"
SIZE = "small"
EMB_ARM = "sawyer-metaworld"
EMB_PLANT = "tennessee-eastman"

# The held-out five are for an outside check: never trained, tuned or reported on here.
HELD_OUT = ("assembly-v3", "hammer-v3", "sweep-into-v3", "coffee-push-v3", "plate-slide-v3")
FINETUNE_TASKS = ("bin-picking-v3", "box-close-v3", "hand-insert-v3", "pick-place-wall-v3", "stick-pull-v3")
DEMOS = (1, 3, 10)
TEP_DISTURBANCES = ("idv-1", "idv-4", "idv-8")  # feed-ratio step, cooling-water step, random feed variation
TEP_SCENARIOS = ("base", *TEP_DISTURBANCES)
NOISY = {"noise": 0.01, "quantize": True}  # the realistic-sensor setting of result 1

SEED_MT10_EVAL, SEED_FEWSHOT_EVAL, SEED_TEP_EVAL = 9001, 9202, 9401  # telemetry seeds: 101-102, 202, 300-303, 401-402

POLICY = ('jurisdictions = ["JP"]\nsites = []\npurposes = ["foundation-pretraining", "fine-tuning"]\n'
          'expires = 2031-03-31\nderived_models = "keep"\n')


# ---- result 2s: the claim on several splits (issue 18 section 0) ---------------------------------------
# Three disjoint sets of five fine-tune tasks drawn from the 45 usable tasks (all v3 tasks but the
# five held out) by SPLIT_SEED; each split pre-trains on the other 40. Nothing is tuned on any one
# fixed five: recipes are chosen per split on a held-out part of that split's demonstrations.
SPLIT_SEED = 18
SPLIT_SEEDS = (0, 1, 2)  # split indices: tasks [5s, 5s + 5) of the SPLIT_SEED permutation
SPLIT_DEMOS = (3, 10)
SEED_TASK_DATA, SEED_SPLIT_DEMOS, SEED_SPLIT_EVAL = 500, 700, 9301  # 500-544, 700-702; 9301 evaluates only
SPLIT_EVAL_EPISODES = 50
SPLIT_HOLDOUT = 0.3  # of the fine-tune demonstrations' episodes, for choosing a recipe
SPLIT_MLP_LR = 1e-3
# How a model acts (stage r2s-acting): temporal ensembling (the config's default) or the newest
# chunk's first action, chosen per model on closed-loop validation episodes of their own seed.
SEED_SPLIT_VAL, SPLIT_VAL_EPISODES = 9311, 20  # per task; never an evaluation seed


@dataclass(frozen=True)
class Recipe:
    """One way to fine-tune the pooled base; chosen per split by the held-out action loss."""

    label: str
    lr: float
    freeze_trunk: bool = False
    refit_stats: bool = False
    cotrain: bool = False  # the demonstrations mixed with the split's 40 pre-training datasets
    why: str = ""


RECIPES = (
    Recipe("all", 3e-4, why="all weights at lr 3e-4 (the recipe of result 2)"),
    Recipe("refit", 3e-4, refit_stats=True,
           why="all weights at lr 3e-4 after refitting the state statistics on the demonstrations (openpi, Octo)"),
    Recipe("frozen", 1e-3, freeze_trunk=True,
           why="trunk frozen, stems, heads and task projection at lr 1e-3 (HPT's transfer setting)"),
)


# Tried after the first three recipes missed "pooled@3 >= own@10" by 4-5 points on two splits: it
# joins the candidates, and the choice is made again among all four by the same held-out loss.
COTRAIN_DEMO_WEIGHT = 1000.0  # one window of each pre-training dataset per batch, the other 24 demonstrations
COTRAIN = Recipe("cotrain", 3e-4, cotrain=True,
                 why="all weights at lr 3e-4, each batch of 64 holding 24 windows of the demonstrations and one of "
                     "each of the 40 pre-training datasets (co-training, as openpi and Octo fine-tune), held-out "
                     "loss on the demonstrations' episodes only")
RECIPES_MORE = (*RECIPES, COTRAIN)


def usable_tasks() -> list[str]:
    """The 45 v3 tasks that may be trained on: every one but the five held out for an outside check."""
    from onshore.sim.metaworld import all_tasks

    out = [t for t in all_tasks() if t not in HELD_OUT]
    assert len(out) == 45, len(out)
    return out


def split_tasks(split: int) -> tuple[str, ...]:
    """The five fine-tune tasks of ``split`` (disjoint across splits)."""
    import numpy as np

    order = np.random.default_rng(SPLIT_SEED).permutation(len(usable_tasks()))
    tasks = usable_tasks()
    return tuple(sorted(tasks[i] for i in order[5 * split:5 * split + 5]))


def split_pretrain(split: int) -> list[str]:
    out = [t for t in usable_tasks() if t not in split_tasks(split)]
    assert len(out) == 40
    return out


def task_dataset(task: str) -> str:
    return "mw-" + task.removesuffix("-v3")


def split_demos(split: int, k: int) -> str:
    return f"split{split}-demos-{k}"


def pretrain_tasks() -> list[str]:
    """All v3 tasks but the five fine-tune tasks and the five held out (40 tasks)."""
    from onshore.sim.metaworld import all_tasks

    out = [t for t in all_tasks() if t not in FINETUNE_TASKS and t not in HELD_OUT]
    assert len(out) == 40, len(out)
    return out


@dataclass(frozen=True)
class Telemetry:
    """One dataset: what ``onshore sim generate`` ran, and the member that owns it."""

    name: str
    owner: str
    env: str
    tasks: tuple[str, ...]
    episodes: int
    seed: int
    noise: float = 0.0
    quantize: bool = False
    cache: str | None = None  # folder name in --data, when it differs from ``name``
    expert_sees: str = "sensed"  # "exact": noisy readings recorded, clean expert actions

    def command(self, out: str) -> str:
        extra = (f" --noise {self.noise:g}" if self.noise else "") + (" --quantize" if self.quantize else "") + \
            (f" --expert-sees {self.expert_sees}" if self.expert_sees != "sensed" else "")
        return (f"onshore sim generate --env {self.env} --tasks {','.join(self.tasks)} --episodes {self.episodes} "
                f"--seed {self.seed}{extra} --workers 1 --out {out}")


def telemetry_plan() -> list[Telemetry]:
    from onshore.sim.metaworld import DEFAULT_TASKS

    mt10 = tuple(DEFAULT_TASKS)
    pre = pretrain_tasks()
    plan = [Telemetry("mt10", "arm-maker", "metaworld", mt10, 50, 101),
            Telemetry("mt10-noisy", "arm-maker", "metaworld", mt10, 50, 101, **NOISY),
            Telemetry("mt10-noisy-clean", "arm-maker", "metaworld", mt10, 50, 101, **NOISY, expert_sees="exact"),
            # a second recording of the same sensors (other episodes): the try of stage r1-noisy-clean-more
            Telemetry("mt10-noisy-clean-2", "arm-maker", "metaworld", mt10, 50, 102, **NOISY, expert_sees="exact"),
            *(Telemetry(f"pool-{i}", f"pool-member-{i}", "metaworld", tuple(pre[i::4]), 50, 300 + i)
              for i in range(4)),
            # the same seed: the k-demo sets are the first k episodes of the 10-demo set
            *(Telemetry(f"fewshot-{k}", "newcomer", "metaworld", FINETUNE_TASKS, k, 202,
                        cache="fewshot" if k == 10 else None) for k in DEMOS),
            Telemetry("tep", "plant-operator", "tep", ("base",), 10, 401),
            Telemetry("tep-idv", "plant-operator", "tep", TEP_DISTURBANCES, 5, 402),
            # result 2s: one dataset per usable task (a split pre-trains on 40 of them), and each
            # split's fine-tune demonstrations (the 3-demo set is the first 3 of the 10-demo set)
            *(Telemetry(task_dataset(t), f"pool-member-{i % 4}", "metaworld", (t,), 50, SEED_TASK_DATA + i)
              for i, t in enumerate(usable_tasks())),
            *(Telemetry(split_demos(s, k), "newcomer", "metaworld", split_tasks(s), k, SEED_SPLIT_DEMOS + s)
              for s in range(len(SPLIT_SEEDS)) for k in SPLIT_DEMOS)]
    for t in plan:
        assert not set(t.tasks) & set(HELD_OUT), t
    return plan


# ---- the run's settings -------------------------------------------------------------------------

@dataclass(frozen=True)
class Budget:
    steps: int  # steps of every single-embodiment model (arm-only, plant-only, pooled pre-training)
    finetune_steps: int  # steps of every fine-tune and of every own-data-only model of result 2
    batch: int
    lr: float
    finetune_lr: float
    own_lrs: tuple[float, ...]  # the own-data-only sweep
    mt10_episodes: int
    joint_mt10_episodes: int
    fewshot_episodes: int
    tep_episodes: int
    workers: int
    threads: int


def args_budget(a: argparse.Namespace) -> Budget:
    return Budget(a.steps, a.finetune_steps, a.batch, a.lr, a.finetune_lr,
                  tuple(float(x) for x in a.own_lrs.split(",")), a.mt10_episodes, a.joint_mt10_episodes,
                  a.fewshot_episodes, a.tep_episodes, a.workers, a.threads)


class Run:
    """The results workspace, the data cache and the output folder of one invocation."""

    def __init__(self, ws_root: Path, data: Path, out: Path, budget: Budget, argv: list[str]) -> None:
        self.ws_root, self.data, self.out, self.budget = ws_root, data, out, budget
        self.argv = argv
        self.splits: tuple[int, ...] = tuple(range(len(SPLIT_SEEDS)))
        self.ws: Any = None
        (out / "train").mkdir(parents=True, exist_ok=True)
        (out / "eval").mkdir(parents=True, exist_ok=True)

    def say(self, msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    # -- the workspace ---------------------------------------------------------------------------
    def open(self) -> None:
        from onshore.workspace import Workspace, registry
        from onshore.workspace.config import CONFIG_FILE

        if (self.ws_root / CONFIG_FILE).exists():
            self.ws = Workspace.open(self.ws_root)
            return
        self.ws = Workspace.init(self.ws_root, "onshore-results", jurisdiction="JP")
        registry.add_site(self.ws, SITE, "JP", "storage,compute,serve", "Osaka results site")
        for owner in sorted({t.owner for t in telemetry_plan()}):
            registry.add_member(self.ws, owner)
        self.say(f"workspace {self.ws_root}: site {SITE} (JP), members added")

    def folder(self, t: Telemetry) -> Path:
        """The telemetry folder of ``t``: the cache's if it has it (checked), else generated."""
        from onshore.sim.generate import generate
        from onshore.sim.sensors import SensorOptions

        out = self.data / (t.cache or t.name)
        if (out / ".done").exists():
            meta = json.loads((out / "generate.json").read_text())
            got = (meta["env"], [x["name"] for x in meta["tasks"]], meta["episodes_per_task"], meta["seed"],
                   meta["sensors"]["noise"], meta["sensors"]["quantize"], meta.get("expert_sees", "sensed"))
            want = (t.env, list(t.tasks), t.episodes, t.seed, t.noise, t.quantize, t.expert_sees)
            if got != want:
                raise SystemExit(f"{out} holds {got}, not {want}: remove it or point --data elsewhere")
            return out
        self.say(f"generating {t.name}: {t.command(str(out))}")
        if out.exists():
            import shutil

            shutil.rmtree(out)
        generate(t.env, list(t.tasks), t.episodes, t.seed, out, workers=1,
                 sensors=SensorOptions(noise=t.noise, quantize=t.quantize), expert_sees=t.expert_sees)
        (out / ".done").touch()
        return out

    def ingest_all(self, only: set[str] | None = None) -> None:
        """Generate (or take from the cache) and ingest the plan's datasets, or only those named."""
        from onshore.errors import NotFoundError
        from onshore.workspace import datasets, registry

        have = {d["name"] for d in datasets.list_datasets(self.ws)}
        pol_dir = self.ws_root / "member-policies"
        pol_dir.mkdir(exist_ok=True)
        for t in telemetry_plan():
            if t.name in have or (only is not None and t.name not in only):
                continue
            folder = self.folder(t)
            toml = next(folder.glob("*.toml"))
            emb = toml.stem
            try:
                registry.get_embodiment(self.ws, emb)
            except NotFoundError:
                registry.add_embodiment(self.ws, toml)
            policy = pol_dir / f"{t.owner}.toml"
            policy.write_text(POLICY)
            r = datasets.ingest(self.ws, t.name, t.owner, SITE, policy, emb, sorted(folder.glob("*.parquet")))
            self.say(f"ingested {t.name} ({t.owner}) at {SITE}: {r.episodes} episodes, {r.frames} frames")
        (self.out / "telemetry.json").write_text(json.dumps(
            [{**asdict(t), "command": t.command(f"DATA/{t.cache or t.name}")} for t in telemetry_plan()], indent=1))

    # -- training --------------------------------------------------------------------------------
    def train(self, name: str, datasets: list[str], *, steps: int, lr: float, purpose: str,
              weights: tuple[float, ...] = (), base: str | None = None,
              overrides: tuple[tuple[str, Any], ...] = (), size: str = SIZE, holdout: float = 0.0,
              freeze_trunk: bool = False, refit_stats: bool = False, balance: bool = False,
              holdout_from: tuple[str, ...] = ()) -> dict[str, Any]:
        """Train (or fine-tune ``base``) model ``name`` unless its summary exists; returns the summary."""
        import torch

        from onshore.errors import NotFoundError
        from onshore.train.loop import TrainConfig, TrainRequest, train
        from onshore.workspace.models import get_model

        path = self.out / "train" / f"{name}.json"
        if path.exists():
            return json.loads(path.read_text())
        b = self.budget
        tc = TrainConfig(steps=steps, batch_size=b.batch, lr=lr, warmup=min(100, steps // 10),
                         checkpoint_every=max(100, steps // 5), seed=0, holdout=holdout, freeze_trunk=freeze_trunk,
                         refit_stats=refit_stats, balance=balance, holdout_from=holdout_from)
        req = TrainRequest(name=name, site=SITE, purpose=purpose, datasets=tuple(datasets), weights=weights,
                           size=size, train=tc, base=base, model_overrides=overrides)
        try:
            row = get_model(self.ws, name)  # finished before its summary was written
            result = None
        except NotFoundError:
            torch.set_num_threads(b.threads)
            self.say(f"training {name} on {','.join(datasets)}" + (f" from {base}" if base else "")
                     + f": {steps} steps, batch {b.batch}, lr {lr:g}")
            t0 = time.time()
            last = [t0]

            def progress(step: int, total: int, m: dict[str, float]) -> None:
                if time.time() - last[0] > 60 or step == total:
                    last[0] = time.time()
                    self.say(f"  {name} step {step}/{total} loss {m['loss']:.4f} {m['samples_per_s']:.0f} samples/s")

            result = train(self.ws, req, progress=progress, device="cpu", log=self.say)
            row = get_model(self.ws, name)
            row["wall_s"] = time.time() - t0
        cmd = ("onshore finetune " + base if base else f"onshore train --site {SITE} --config {size}") + \
            f" --datasets {','.join(datasets)} --purpose {purpose} --steps {steps} --batch-size {b.batch} " \
            f"--lr {lr:g} --warmup {tc.warmup} --threads {b.threads} --name {name}" + \
            (f" --weights {','.join(f'{d}={w:g}' for d, w in zip(datasets, weights, strict=True) if w != 1)}"
             if any(w != 1 for w in weights) else "")  # the command line weighs an unnamed dataset 1
        cmd += "".join(f" --model-option {k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in overrides)
        cmd += (f" --holdout {holdout:g}" if holdout else "") + \
            (f" --holdout-from {','.join(holdout_from)}" if holdout_from else "") + \
            (" --freeze-trunk" if freeze_trunk else "") + \
            (" --refit-stats" if refit_stats else "") + (" --balance-embodiments" if balance else "")
        summary = {"model": name, "base": base, "overrides": [list(o) for o in overrides], "datasets": datasets,
                   "size": size, "holdout": holdout, "freeze_trunk": freeze_trunk, "refit_stats": refit_stats,
                   "weights": list(weights), "purpose": purpose,
                   "steps": steps, "batch": b.batch, "lr": lr, "threads": b.threads, "parameters": row["parameters"],
                   "metrics": row["metrics"], "wall_s": row.get("wall_s"),
                   "resumed_from": result.resumed_from if result else None, "command": cmd}
        path.write_text(json.dumps(summary, indent=1))
        m = row["metrics"]
        self.say(f"trained {name}: {summary['parameters']:,} parameters, "
                 f"{m.get('samples_per_s', 0):.0f} samples/s, final loss {m.get('final_loss')}")
        return summary

    # -- evaluation ------------------------------------------------------------------------------
    def evaluate(self, key: str, policy: str, env: str, tasks: list[str], episodes: int, seed: int,
                 noisy: bool = False, ensemble: bool | None = None) -> dict[str, Any]:
        """Closed-loop evaluation of ``policy`` (``expert`` or a model) unless ``key``'s summary exists."""
        from onshore.eval.report import write_report
        from onshore.eval.runner import evaluate
        from onshore.sim.sensors import SensorOptions
        from onshore.workspace.models import policy_factory

        path = self.out / "eval" / f"{key}.json"
        if path.exists():
            return json.loads(path.read_text())
        sensors = SensorOptions(**NOISY) if noisy else None
        agent: Any = "expert" if policy == "expert" else \
            policy_factory(self.ws, policy, SITE, EMB_ARM if env == "metaworld" else EMB_PLANT, ensemble=ensemble)
        self.say(f"evaluating {policy} on {env} ({len(tasks)} tasks x {episodes} episodes, seed {seed}"
                 + (", noisy sensors" if noisy else "") + ")")
        t0 = time.time()
        report = evaluate(env, tasks, episodes, seed, policy=agent, workers=self.budget.workers, sensors=sensors)
        wall = time.time() - t0
        write_report(report, self.ws.reports_dir)
        per_task = {}
        steps = 0
        for t in report.tasks:
            steps += sum(e["length"] for e in t.episode_results)
            entry: dict[str, Any] = {"successes": t.successes, "episodes": t.episodes, "success_rate": t.success_rate,
                                     "ci95": list(t.ci95), "mean_length": t.mean_length,
                                     "per_episode": [bool(e["success"]) for e in t.episode_results]}
            if env == "tep":
                entry["iae"] = t.metrics["iae"]
                entry["shutdowns"] = t.metrics["shutdowns"]
                entry["violation_frames"] = t.metrics["mean_violation_frames"]
                base = t.baseline or {}
                entry["pi_iae"] = base.get("iae")
                entry["pi_shutdowns"] = base.get("shutdowns")
                entry["pi_violation_frames"] = base.get("mean_violation_frames")
            per_task[t.task] = entry
        extra = (f" --noise {NOISY['noise']:g} --quantize" if noisy else "") + \
            ("" if ensemble is None else " --ensemble" if ensemble else " --no-ensemble")
        site = "" if policy == "expert" else f" --site {SITE}"
        summary = {"key": key, "policy": policy, "env": env, "seed": seed, "episodes": episodes,
                   "sensors": report.sensors, "tasks": per_task, "wall_s": wall, "steps": steps,
                   "workers": self.budget.workers,
                   "command": f"onshore eval --env {env} --tasks {','.join(tasks)} --episodes {episodes} "
                              f"--seed {seed} --policy {policy}{site}{extra} --workers {self.budget.workers}"}
        path.write_text(json.dumps(summary, indent=1))
        self.say(f"evaluated {policy}: {mean_success(summary):.1%} mean success, {steps} control steps in "
                 f"{wall:.0f} s ({steps / max(wall, 1e-9):.0f} steps/s on {self.budget.workers} workers)")
        return summary


def lr_tag(lr: float) -> str:
    """A learning rate as a model-name part: 3e-4 -> ``3e-04`` (names allow no dots)."""
    return f"{lr:.0e}".replace("+", "")


def mean_success(ev: dict[str, Any]) -> float:
    rates = [t["success_rate"] for t in ev["tasks"].values()]
    return sum(rates) / len(rates)


# ---- the four results -------------------------------------------------------------------------------

def result1(r: Run) -> None:
    from onshore.sim.metaworld import DEFAULT_TASKS

    b, mt10 = r.budget, list(DEFAULT_TASKS)
    r.evaluate("r1-expert", "expert", "metaworld", mt10, b.mt10_episodes, SEED_MT10_EVAL)
    r.train("mt10-small", ["mt10"], steps=b.steps, lr=b.lr, purpose="foundation-pretraining")
    r.evaluate("r1-mt10-small", "mt10-small", "metaworld", mt10, b.mt10_episodes, SEED_MT10_EVAL)
    write_doc(r)


def result1_noisy(r: Run) -> None:
    from onshore.sim.metaworld import DEFAULT_TASKS

    b, mt10 = r.budget, list(DEFAULT_TASKS)
    r.evaluate("r1-expert-noisy", "expert", "metaworld", mt10, b.mt10_episodes, SEED_MT10_EVAL, noisy=True)
    r.train("mt10-noisy-small", ["mt10-noisy"], steps=b.steps, lr=b.lr, purpose="foundation-pretraining")
    r.evaluate("r1-mt10-noisy-small", "mt10-noisy-small", "metaworld", mt10, b.mt10_episodes, SEED_MT10_EVAL,
               noisy=True)
    write_doc(r)


NOISY_CLEAN_HISTORIES = (2, 8, 32)  # frames of history tried; the default is 2
SEED_MT10_VAL = 9011  # validation episodes that choose the history; never the evaluation seed
NOISY_CLEAN_VAL_EPISODES = 10  # per task


def noisy_clean_choice(r: Run) -> int | None:
    """The history whose model had the best mean validation success (ties: the shorter), once all ran."""
    vals = {h: _load(r.out, "eval", f"r1nc-val-h{h}") for h in NOISY_CLEAN_HISTORIES}
    if any(v is None for v in vals.values()):
        return None
    return max(NOISY_CLEAN_HISTORIES, key=lambda h: (mean_success(vals[h]), -h))


NOISY_CLEAN_LONG = 2  # the try after r1-noisy-clean missed by 0.2 points: the chosen history, trained 2x longer


def result1_noisy_clean_long(r: Run) -> None:
    """After the first run missed its goal: the chosen history trained twice as long; the longer
    model replaces the first only if it does better on the validation episodes (never on the
    evaluation seed), and only then is it evaluated on the evaluation episodes."""
    from onshore.sim.metaworld import DEFAULT_TASKS

    b, mt10 = r.budget, list(DEFAULT_TASKS)
    h = noisy_clean_choice(r)
    assert h is not None, "run stage r1-noisy-clean first"
    name = f"mt10-nc-h{h}-x{NOISY_CLEAN_LONG}"
    r.train(name, ["mt10-noisy-clean"], steps=NOISY_CLEAN_LONG * b.steps, lr=b.lr,
            purpose="foundation-pretraining", overrides=(("history", h),))
    val = r.evaluate(f"r1nc-val-h{h}-x{NOISY_CLEAN_LONG}", name, "metaworld", mt10, NOISY_CLEAN_VAL_EPISODES,
                     SEED_MT10_VAL, noisy=True)
    first = _load(r.out, "eval", f"r1nc-val-h{h}")
    assert first is not None
    if mean_success(val) > mean_success(first):
        r.evaluate("r1-noisy-clean-long", name, "metaworld", mt10, b.mt10_episodes, SEED_MT10_EVAL, noisy=True)
    write_doc(r)


NOISY_CLEAN_MORE = ("mt10-noisy-clean", "mt10-noisy-clean-2")


def result1_noisy_clean_more(r: Run) -> None:
    """After training longer did not help: the chosen history trained on twice the recordings (a second
    50 episodes per task of the same sensors, seed 102) for twice the steps, so each window is seen as
    often as the first model saw its own. Decided before it ran: it replaces the first model if its
    validation mean is at least the first's (a tie on 100 validation episodes says nothing, and more
    recordings of the same sensors is what a member would add), and only then is it evaluated on the
    evaluation episodes; the first model's evaluation stays on the page either way."""
    from onshore.sim.metaworld import DEFAULT_TASKS

    b, mt10 = r.budget, list(DEFAULT_TASKS)
    h = noisy_clean_choice(r)
    assert h is not None, "run stage r1-noisy-clean first"
    name = f"mt10-nc-h{h}-more"
    r.train(name, list(NOISY_CLEAN_MORE), steps=len(NOISY_CLEAN_MORE) * b.steps, lr=b.lr,
            purpose="foundation-pretraining", overrides=(("history", h),))
    val = r.evaluate(f"r1nc-val-h{h}-more", name, "metaworld", mt10, NOISY_CLEAN_VAL_EPISODES, SEED_MT10_VAL,
                     noisy=True)
    first = _load(r.out, "eval", f"r1nc-val-h{h}")
    assert first is not None
    write_doc(r)
    if mean_success(val) >= mean_success(first):
        r.evaluate("r1-noisy-clean-more", name, "metaworld", mt10, b.mt10_episodes, SEED_MT10_EVAL, noisy=True)
    write_doc(r)


def result1_noisy_clean(r: Run) -> None:
    """Noisy readings, clean expert actions: can the model beat the expert that sees only the readings?"""
    from onshore.sim.metaworld import DEFAULT_TASKS

    b, mt10 = r.budget, list(DEFAULT_TASKS)
    for h in NOISY_CLEAN_HISTORIES:
        r.train(f"mt10-nc-h{h}", ["mt10-noisy-clean"], steps=b.steps, lr=b.lr, purpose="foundation-pretraining",
                overrides=(("history", h),))
        r.evaluate(f"r1nc-val-h{h}", f"mt10-nc-h{h}", "metaworld", mt10, NOISY_CLEAN_VAL_EPISODES, SEED_MT10_VAL,
                   noisy=True)
        write_doc(r)
    chosen = noisy_clean_choice(r)
    assert chosen is not None
    r.evaluate("r1-noisy-clean", f"mt10-nc-h{chosen}", "metaworld", mt10, b.mt10_episodes, SEED_MT10_EVAL,
               noisy=True)
    write_doc(r)


def result4(r: Run) -> None:
    b = r.budget
    r.train("tep-small", ["tep", "tep-idv"], steps=b.steps, lr=b.lr, purpose="foundation-pretraining")
    r.evaluate("r4-tep-small", "tep-small", "tep", list(TEP_SCENARIOS), b.tep_episodes, SEED_TEP_EVAL)
    write_doc(r)


@dataclass(frozen=True)
class TepTry:
    """Something tried after result 4 missed its goals: a model trained with ``overrides`` (or,
    with none, ``model`` as an earlier stage trained it), evaluated with ``ensemble`` (None: as
    trained)."""

    label: str
    model: str
    overrides: tuple[tuple[str, Any], ...]
    ensemble: bool | None
    why: str

    @property
    def key(self) -> str:
        return f"r4-try-{self.label}"


TEP_TRIES = (
    TepTry("feedback", "tep-small-fb", (("action_feedback", True), ("ensemble", False)), None,
           "action feedback: the model also sees the valve positions it applied before each frame and "
           "predicts changes from the last one (a PI loop's output is an integral the measurements do not "
           "show), acting without ensembling"),
    TepTry("feedback-ensembled", "tep-small-fb", (), True,
           "the feedback model acting with temporal ensembling, which averages the noise of its predicted "
           "changes"),
    TepTry("no-ensembling", "tep-small", (), False,
           "the same model acting on the newest chunk's first action: ensembled 16-step chunks average "
           "predictions made up to 29 s ago, which a fast loop (reactor temperature) cannot afford"),
    TepTry("h16c4", "tep-small-h16c4", (("history", 16), ("chunk", 4)), None,
           "a longer state history (16 frames) and shorter chunks (4 steps)"),
    TepTry("h16c4-no-ensembling", "tep-small-h16c4", (), False,
           "the same model acting on the newest chunk's first action"),
    TepTry("h32c4", "tep-small-h32c4", (("history", 32), ("chunk", 4)), None,
           "a longer history still (32 frames, 58 s), as the 16-frame history helped most"),
    TepTry("h64c4", "tep-small-h64c4", (("history", 64), ("chunk", 4)), None,
           "longer again (64 frames, 115 s), as 32 frames helped more than 16"),
)
SEED_TEP_CONFIRM = 9402  # used once, for the try chosen on seed 9401 (see result4_confirm)


def _ratio(task: dict[str, Any]) -> float:
    """A TEP scenario's summed IAE, model over PI controller."""
    return sum(task["iae"].values()) / sum(task["pi_iae"].values())


def _worst_ratio(ev: dict[str, Any]) -> float:
    return max(_ratio(t) for t in ev["tasks"].values())


def best_try(r: Run) -> TepTry | None:
    """The try with the fewest shutdowns, then the lowest worst-scenario IAE ratio, on seed 9401."""
    done = [(t, ev) for t in TEP_TRIES if (ev := _load(r.out, "eval", t.key)) is not None]
    if not done:
        return None
    return min(done, key=lambda te: (sum(x["shutdowns"] for x in te[1]["tasks"].values()), _worst_ratio(te[1])))[0]


def result4_try(r: Run) -> None:
    b = r.budget
    for t in TEP_TRIES:
        if t.overrides:
            r.train(t.model, ["tep", "tep-idv"], steps=b.steps, lr=b.lr, purpose="foundation-pretraining",
                    overrides=t.overrides)
        r.evaluate(t.key, t.model, "tep", list(TEP_SCENARIOS), b.tep_episodes, SEED_TEP_EVAL, ensemble=t.ensemble)
        write_doc(r)


def result4_confirm(r: Run) -> None:
    """The chosen try on episodes no choice has seen: picking the best of several on seed 9401
    flatters it, so its figure for the record comes from seed 9402."""
    t = best_try(r)
    if t is None:
        raise SystemExit("stage r4-confirm needs the tries of stage r4-try first")
    r.evaluate("r4-confirm", t.model, "tep", list(TEP_SCENARIOS), r.budget.tep_episodes, SEED_TEP_CONFIRM,
               ensemble=t.ensemble)
    write_doc(r)


SEED_FEWSHOT_CONFIRM = 9203  # used once, for result 2's goal comparison (see result2_confirm)


def best_own(r: Run, k: int) -> dict[str, Any] | None:
    """The evaluation of the own-data model with ``k`` demonstrations that won the learning-rate
    sweep (seed 9202); None until every model of the sweep is evaluated."""
    evs = [e for e in (_load(r.out, "eval", f"r2-own-{k}-lr{lr_tag(lr)}") for lr in r.budget.own_lrs) if e]
    return max(evs, key=mean_success) if len(evs) == len(r.budget.own_lrs) else None


def result2_confirm(r: Run) -> None:
    """The goal's two models on 50 new episodes per task: the sweep picked the own-data model on
    seed 9202's episodes, and 20 per task leave ±10-point intervals; seed 9203 is used only here."""
    own = best_own(r, 10)
    if own is None or _load(r.out, "eval", "r2-pool-ft-3") is None:
        raise SystemExit("stage r2-confirm needs stage r2 first")
    ft = list(FINETUNE_TASKS)
    r.evaluate("r2-confirm-pool-ft-3", "pool-ft-3", "metaworld", ft, 50, SEED_FEWSHOT_CONFIRM)
    r.evaluate("r2-confirm-own-10", own["policy"], "metaworld", ft, 50, SEED_FEWSHOT_CONFIRM)
    write_doc(r)


def result2(r: Run) -> None:
    b, ft = r.budget, list(FINETUNE_TASKS)
    r.train("pool-small", [f"pool-{i}" for i in range(4)], steps=b.steps, lr=b.lr, purpose="foundation-pretraining")
    write_doc(r)
    for k in DEMOS:
        r.train(f"pool-ft-{k}", [f"fewshot-{k}"], steps=b.finetune_steps, lr=b.finetune_lr, purpose="fine-tuning",
                base="pool-small")
        r.evaluate(f"r2-pool-ft-{k}", f"pool-ft-{k}", "metaworld", ft, b.fewshot_episodes, SEED_FEWSHOT_EVAL)
        write_doc(r)
        for lr in b.own_lrs:
            name = f"own-{k}-lr{lr_tag(lr)}"
            r.train(name, [f"fewshot-{k}"], steps=b.finetune_steps, lr=lr, purpose="fine-tuning")
            r.evaluate(f"r2-{name}", name, "metaworld", ft, b.fewshot_episodes, SEED_FEWSHOT_EVAL)
            write_doc(r)


def result3(r: Run) -> None:
    from onshore.sim.metaworld import DEFAULT_TASKS

    b = r.budget
    # Same samples per embodiment as the single-embodiment models: twice the steps, half of each batch
    # (mt10 : tep : tep-idv = 2 : 1 : 1, as tep-small mixes tep : tep-idv = 1 : 1).
    r.train("joint-small", ["mt10", "tep", "tep-idv"], steps=2 * b.steps, lr=b.lr, purpose="foundation-pretraining",
            weights=(2.0, 1.0, 1.0))
    r.evaluate("r3-joint-small-mt10", "joint-small", "metaworld", list(DEFAULT_TASKS), b.joint_mt10_episodes,
               SEED_MT10_EVAL)
    r.evaluate("r3-joint-small-tep", "joint-small", "tep", list(TEP_SCENARIOS), b.tep_episodes, SEED_TEP_EVAL)
    write_doc(r)


# Result 3 again with the plant config that result 4's tries found (32 frames of history, 4-step
# chunks; chosen on seed 9401 before the 64-frame try had finished). A config is the whole model's,
# so the arm-only comparison gets the same config too; the plant-only one is that try's model.
R3_LONG = (("history", 32), ("chunk", 4))


def result3_long(r: Run) -> None:
    from onshore.sim.metaworld import DEFAULT_TASKS

    b, mt10 = r.budget, list(DEFAULT_TASKS)
    r.train("mt10-small-h32c4", ["mt10"], steps=b.steps, lr=b.lr, purpose="foundation-pretraining", overrides=R3_LONG)
    r.evaluate("r3-mt10-small-h32c4", "mt10-small-h32c4", "metaworld", mt10, b.joint_mt10_episodes, SEED_MT10_EVAL)
    r.train("joint-small-h32c4", ["mt10", "tep", "tep-idv"], steps=2 * b.steps, lr=b.lr,
            purpose="foundation-pretraining", weights=(2.0, 1.0, 1.0), overrides=R3_LONG)
    r.evaluate("r3-joint-small-h32c4-mt10", "joint-small-h32c4", "metaworld", mt10, b.joint_mt10_episodes,
               SEED_MT10_EVAL)
    r.evaluate("r3-joint-small-h32c4-tep", "joint-small-h32c4", "tep", list(TEP_SCENARIOS), b.tep_episodes,
               SEED_TEP_EVAL)
    write_doc(r)


def result3_balance(r: Run) -> None:
    """Issue 18 section 2: the h32c4 joint model again, with per-embodiment loss balancing
    (--balance-embodiments); everything else as r3-long (same data, weights, steps, seeds)."""
    from onshore.sim.metaworld import DEFAULT_TASKS

    b, mt10 = r.budget, list(DEFAULT_TASKS)
    r.train("joint-small-h32c4-bal", ["mt10", "tep", "tep-idv"], steps=2 * b.steps, lr=b.lr,
            purpose="foundation-pretraining", weights=(2.0, 1.0, 1.0), overrides=R3_LONG, balance=True)
    r.evaluate("r3-joint-small-h32c4-bal-tep", "joint-small-h32c4-bal", "tep", list(TEP_SCENARIOS), b.tep_episodes,
               SEED_TEP_EVAL)
    write_doc(r)
    r.evaluate("r3-joint-small-h32c4-bal-mt10", "joint-small-h32c4-bal", "metaworld", mt10, b.joint_mt10_episodes,
               SEED_MT10_EVAL)
    write_doc(r)


def split_base(split: int) -> str:
    return f"s{split}-pool-small"


def split_recipe_choice(r: Run, split: int, k: int, recipes: tuple[Recipe, ...] = RECIPES) -> Recipe | None:
    """The recipe whose model (trained with a held-out part of the demonstrations) had the lowest
    held-out action loss (EMA weights); None until every recipe of (split, k) has trained."""
    losses = {}
    for rc in recipes:
        tr = _load(r.out, "train", f"s{split}-pft{k}-{rc.label}-val")
        if tr is None:
            return None
        losses[rc.label] = tr["metrics"]["heldout_action_loss_ema"]
    return min(recipes, key=lambda rc: losses[rc.label])


def cotrain_data(split: int, k: int) -> tuple[list[str], tuple[float, ...]]:
    """The co-training recipe's datasets (the demonstrations first) and sampling weights."""
    demos = split_demos(split, k)
    pool = [task_dataset(t) for t in split_pretrain(split)]
    return [demos, *pool], (COTRAIN_DEMO_WEIGHT, *(1.0 for _ in pool))


def result2_splits_cotrain(r: Run) -> None:
    """Per split and number of demonstrations: the co-training recipe with the same 0.3 holdout of the
    demonstrations; if it has the lowest held-out action loss of the four recipes, it is fine-tuned
    again on all demonstrations and evaluated on the split's evaluation episodes (seed 9301); else
    the first choice stands and nothing more runs."""
    b = r.budget
    for s in r.splits:
        ft = list(split_tasks(s))
        for k in SPLIT_DEMOS:
            data, weights = cotrain_data(s, k)
            r.train(f"s{s}-pft{k}-cotrain-val", data, steps=b.finetune_steps, lr=COTRAIN.lr, purpose="fine-tuning",
                    base=split_base(s), holdout=SPLIT_HOLDOUT, weights=weights, holdout_from=(data[0],))
            write_doc(r)
            if split_recipe_choice(r, s, k, RECIPES_MORE) == COTRAIN:
                r.train(f"s{s}-pft{k}-cotrain", data, steps=b.finetune_steps, lr=COTRAIN.lr, purpose="fine-tuning",
                        base=split_base(s), weights=weights)
                r.evaluate(f"r2s-s{s}-pooled-{k}-cotrain", f"s{s}-pft{k}-cotrain", "metaworld", ft,
                           SPLIT_EVAL_EPISODES, SEED_SPLIT_EVAL)
                write_doc(r)


def result2_splits_pooled(r: Run) -> None:
    """Per split: pool-small pre-trained on the 40 other tasks, each recipe fine-tuned with a 0.3
    holdout of the demonstrations, the recipe with the lowest held-out action loss fine-tuned again
    on all of them and evaluated (50 episodes per task, seed 9301)."""
    b = r.budget
    for s in r.splits:
        ft = list(split_tasks(s))
        r.train(split_base(s), [task_dataset(t) for t in split_pretrain(s)], steps=b.steps, lr=b.lr,
                purpose="foundation-pretraining")
        write_doc(r)
        for k in SPLIT_DEMOS:
            for rc in RECIPES:
                r.train(f"s{s}-pft{k}-{rc.label}-val", [split_demos(s, k)], steps=b.finetune_steps, lr=rc.lr,
                        purpose="fine-tuning", base=split_base(s), holdout=SPLIT_HOLDOUT,
                        freeze_trunk=rc.freeze_trunk, refit_stats=rc.refit_stats)
                write_doc(r)
            rc = split_recipe_choice(r, s, k)
            assert rc is not None
            name = f"s{s}-pft{k}-{rc.label}"
            r.train(name, [split_demos(s, k)], steps=b.finetune_steps, lr=rc.lr, purpose="fine-tuning",
                    base=split_base(s), freeze_trunk=rc.freeze_trunk, refit_stats=rc.refit_stats)
            r.evaluate(f"r2s-s{s}-pooled-{k}", name, "metaworld", ft, SPLIT_EVAL_EPISODES, SEED_SPLIT_EVAL)
            write_doc(r)


def pooled_choice(r: Run, split: int, k: int) -> str | None:
    """The pooled model of (split, k) as chosen by held-out loss, co-training included once it ran."""
    more = _load(r.out, "train", f"s{split}-pft{k}-cotrain-val") is not None
    rc = split_recipe_choice(r, split, k, RECIPES_MORE if more else RECIPES)
    return None if rc is None else f"s{split}-pft{k}-{rc.label}"


def split_best_own(r: Run, split: int, k: int) -> str | None:
    """The own-data model of (split, k) with the highest mean success on the evaluation episodes
    (the comparison the goals make, which flatters own data); None until all are evaluated."""
    evs = [(n, _load(r.out, "eval", f"r2s-{n}")) for n, _, _ in own_models(r.budget, split, k)]
    if any(ev is None for _, ev in evs):
        return None
    return max(evs, key=lambda x: mean_success(x[1]))[0]  # type: ignore[arg-type]


def acting_models(r: Run, split: int, which: str = "first") -> list[str]:
    """The models whose way of acting a stage chooses. ``first``: the two of the comparison
    pooled@3 against best own@10 (stage r2s-acting, fixed before it ran). ``more``: the other two
    of the split's goals, pooled@10 and best own@3 (r2s-acting-more, added after r2s-acting had
    shown split 2's own@10 gaining 27 points on validation). ``all``: both pooled models and every
    own-data model (r2s-acting-all, fixed before it ran), so that the best own model is picked
    among models that each act as chosen, not chosen first and made to act better after."""
    if which == "all":
        models = [pooled_choice(r, split, k) for k in SPLIT_DEMOS]
        models += [n for k in SPLIT_DEMOS for n, _, _ in own_models(r.budget, split, k)]
    else:
        pairs = ((3, 10),) if which == "first" else ((10, 3),)
        models = [m for p, o in pairs for m in (pooled_choice(r, split, p), split_best_own(r, split, o))]
    return [m for m in models if m is not None]


def acting_choice(r: Run, split: int, model: str) -> bool | None:
    """True: ensembled (the default, and the choice on a tie); False: the newest chunk, when it
    succeeded more often on the validation episodes; None until both validations ran."""
    ens = _load(r.out, "eval", f"r2s-s{split}-val-{model}-ensembled")
    new = _load(r.out, "eval", f"r2s-s{split}-val-{model}-newest")
    if ens is None or new is None:
        return None
    return not mean_success(new) > mean_success(ens)


def result2_splits_acting(r: Run) -> None:
    """Per split, for both models of the comparison pooled@3 against best own@10: act ensembled or
    on the newest chunk, chosen on validation episodes (seed 9311, 20 per task; a tie keeps the
    default); a model whose choice is the newest chunk is evaluated that way on the evaluation
    episodes (seed 9301). Fixed before any of it ran; the evaluation episodes choose nothing."""
    _acting(r, "first")


def result2_splits_acting_more(r: Run) -> None:
    """The same choice and evaluation for the split's other two models, pooled@10 and best own@3."""
    _acting(r, "more")


def result2_splits_acting_all(r: Run) -> None:
    """The same choice and evaluation for every own-data model of the split (and the pooled ones,
    already done); the goals are then checked against the best own model as each acts as chosen."""
    _acting(r, "all")


def _acting(r: Run, which: str) -> None:
    for s in r.splits:
        ft = list(split_tasks(s))
        for model in acting_models(r, s, which):
            for tag, ensemble in (("ensembled", True), ("newest", False)):
                r.evaluate(f"r2s-s{s}-val-{model}-{tag}", model, "metaworld", ft, SPLIT_VAL_EPISODES,
                           SEED_SPLIT_VAL, ensemble=ensemble)
            if acting_choice(r, s, model) is False:
                r.evaluate(f"r2s-s{s}-{model}-newest", model, "metaworld", ft, SPLIT_EVAL_EPISODES, SEED_SPLIT_EVAL,
                           ensemble=False)
            write_doc(r)


def own_models(b: Budget, split: int, k: int) -> list[tuple[str, str, float]]:
    """(model name, size, lr) of the own-data baselines of (split, k): the transformer at each lr, the MLP."""
    return [*((f"s{split}-own{k}-lr{lr_tag(lr)}", SIZE, lr) for lr in b.own_lrs),
            (f"s{split}-own{k}-mlp", "mlp", SPLIT_MLP_LR)]


def result2_splits_own(r: Run) -> None:
    """Per split and number of demonstrations: every own-data baseline trained on all demonstrations
    and evaluated (50 episodes per task, seed 9301)."""
    b = r.budget
    for s in r.splits:
        ft = list(split_tasks(s))
        r.evaluate(f"r2s-s{s}-expert", "expert", "metaworld", ft, SPLIT_EVAL_EPISODES, SEED_SPLIT_EVAL)
        for k in SPLIT_DEMOS:
            for name, size, lr in own_models(b, s, k):
                r.train(name, [split_demos(s, k)], steps=b.finetune_steps, lr=lr, purpose="fine-tuning", size=size)
                r.evaluate(f"r2s-{name}", name, "metaworld", ft, SPLIT_EVAL_EPISODES, SEED_SPLIT_EVAL)
                write_doc(r)


DAGGER_ROUNDS = 3
DAGGER_EPISODES = 2  # per scenario and round, driven by the model (onshore shadow --drive model)
DAGGER_SEED = 700  # + round: the plant's episodes of each round; no evaluation seed
SEED_TEP_DAGGER_EVAL = 9403  # 10 episodes per scenario, unseen by every training and choice
DAGGER_EVAL_EPISODES = 10
UNSEEN_DISTURBANCES = ("idv-2", "idv-6", "idv-7", "idv-13", "idv-14")


def result4_dagger(r: Run) -> None:
    """DAgger on the plant: the chosen plant config (32 frames, 4-step chunks) trained on the PI
    controller's telemetry, then rounds of ``onshore shadow --drive model`` (the model drives
    through the envelope, the PI controller's would-be outputs are the labels) and a fine-tune on
    everything so far. Every round is reported on the same unseen episodes; the last round is the
    result (fixed before any ran: nothing is chosen on the evaluation episodes)."""
    from onshore.errors import NotFoundError
    from onshore.serve.shadow import run_shadow

    b = r.budget
    r.train("tep-r0", ["tep", "tep-idv"], steps=b.steps, lr=b.lr, purpose="foundation-pretraining",
            overrides=R3_LONG)
    r.evaluate("r4d-round-0", "tep-r0", "tep", list(TEP_SCENARIOS), DAGGER_EVAL_EPISODES, SEED_TEP_DAGGER_EVAL)
    write_doc(r)
    policy = r.ws_root / "member-policies" / "plant-operator.toml"
    policy.parent.mkdir(exist_ok=True)
    policy.write_text(POLICY)
    shadows: list[str] = []
    for k in range(1, DAGGER_ROUNDS + 1):
        name = f"shadow-r{k}"
        try:
            r.ws.row("dataset", name)
        except NotFoundError:
            r.say(f"onshore shadow tep-r{k - 1} --drive model: {DAGGER_EPISODES} episodes per scenario")
            run_shadow(r.ws, f"tep-r{k - 1}", SITE, list(TEP_SCENARIOS), member="plant-operator", policy=policy,
                       dataset=name, episodes=DAGGER_EPISODES, seed=DAGGER_SEED + k, drive="model",
                       purpose="foundation-pretraining")
        shadows.append(name)
        r.train(f"tep-r{k}", ["tep", "tep-idv", *shadows], steps=b.finetune_steps, lr=b.finetune_lr,
                purpose="foundation-pretraining", base=f"tep-r{k - 1}")
        r.evaluate(f"r4d-round-{k}", f"tep-r{k}", "tep", list(TEP_SCENARIOS), DAGGER_EVAL_EPISODES,
                   SEED_TEP_DAGGER_EVAL)
        write_doc(r)
    last = f"tep-r{DAGGER_ROUNDS}"
    r.evaluate("r4d-unseen-0", "tep-r0", "tep", list(UNSEEN_DISTURBANCES), DAGGER_EVAL_EPISODES, SEED_TEP_DAGGER_EVAL)
    r.evaluate("r4d-unseen-last", last, "tep", list(UNSEEN_DISTURBANCES), DAGGER_EVAL_EPISODES, SEED_TEP_DAGGER_EVAL)
    write_doc(r)


STAGES: dict[str, Callable[[Run], None]] = {"r1": result1, "r4": result4, "r2": result2, "r1-noisy": result1_noisy,
                                           "r3": result3,
                                           "r4-try": result4_try, "r4-confirm": result4_confirm,
                                           "r3-long": result3_long, "r2-confirm": result2_confirm,
                                           "r1-noisy-clean": result1_noisy_clean,
                                           "r1-noisy-clean-long": result1_noisy_clean_long,
                                           "r1-noisy-clean-more": result1_noisy_clean_more,
                                           "r2s-pooled": result2_splits_pooled, "r2s-own": result2_splits_own,
                                           "r2s-cotrain": result2_splits_cotrain,
                                           "r2s-acting": result2_splits_acting,
                                           "r2s-acting-more": result2_splits_acting_more,
                                           "r2s-acting-all": result2_splits_acting_all,
                                           "r4-dagger": result4_dagger, "r3-balance": result3_balance}
# The datasets each stage reads: a run of some stages generates and ingests only those.
STAGE_DATA: dict[str, tuple[str, ...]] = {
    "r1": ("mt10",), "r1-noisy": ("mt10-noisy",), "r1-noisy-clean": ("mt10-noisy-clean",),
    "r1-noisy-clean-long": ("mt10-noisy-clean",), "r1-noisy-clean-more": NOISY_CLEAN_MORE,
    "r2": ("pool-0", "pool-1", "pool-2", "pool-3", *(f"fewshot-{k}" for k in DEMOS)),
    "r2-confirm": ("pool-0", "pool-1", "pool-2", "pool-3", *(f"fewshot-{k}" for k in DEMOS)),
    "r3": ("mt10", "tep", "tep-idv"), "r3-long": ("mt10", "tep", "tep-idv"),
    "r4": ("tep", "tep-idv"), "r4-try": ("tep", "tep-idv"), "r4-confirm": ("tep", "tep-idv"),
    "r2s-pooled": (*(task_dataset(t) for t in usable_tasks()),
                   *(split_demos(s, k) for s in range(len(SPLIT_SEEDS)) for k in SPLIT_DEMOS)),
    "r2s-own": tuple(split_demos(s, k) for s in range(len(SPLIT_SEEDS)) for k in SPLIT_DEMOS),
    "r2s-cotrain": (*(task_dataset(t) for t in usable_tasks()),
                    *(split_demos(s, k) for s in range(len(SPLIT_SEEDS)) for k in SPLIT_DEMOS)),
    "r2s-acting": (), "r2s-acting-more": (), "r2s-acting-all": (),
    "r4-dagger": ("tep", "tep-idv"), "r3-balance": ("mt10", "tep", "tep-idv")}


# ---- docs/results.md ------------------------------------------------------------------------------

def _load(out: Path, kind: str, key: str) -> dict[str, Any] | None:
    return _read_json(out / kind / f"{key}.json")


def _read_json(path: Path) -> dict[str, Any] | None:
    """A summary this script (or bench/fault_bench.py) wrote, or None before it has run."""
    return json.loads(path.read_text()) if path.exists() else None


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _wilson(k: int, n: int) -> tuple[float, float]:
    from onshore.eval.stats import wilson_interval

    return wilson_interval(k, n)


def _pooled(ev: dict[str, Any], first: int | None = None) -> tuple[int, int]:
    """Successes and episodes over all tasks (optionally only each task's first ``first`` episodes)."""
    k = n = 0
    for t in ev["tasks"].values():
        eps = t["per_episode"][:first] if first else t["per_episode"]
        k += sum(eps)
        n += len(eps)
    return k, n


def _cell(ev: dict[str, Any] | None, task: str, first: int | None = None) -> str:
    if ev is None:
        return "pending"
    eps = ev["tasks"][task]["per_episode"][:first] if first else ev["tasks"][task]["per_episode"]
    k, n = sum(eps), len(eps)
    lo, hi = _wilson(k, n)
    return f"{k}/{n} ({_pct(k / n)}, {_pct(lo)}–{_pct(hi)})"


def _mean_row(ev: dict[str, Any] | None, first: int | None = None) -> str:
    if ev is None:
        return "pending"
    k, n = _pooled(ev, first)
    lo, hi = _wilson(k, n)
    return f"**{_pct(k / n)}** ({_pct(lo)}–{_pct(hi)})"


def _train_line(tr: dict[str, Any] | None, name: str) -> str:
    if tr is None:
        return f"- `{name}`: pending"
    m = tr["metrics"]
    wall = f"{tr['wall_s'] / 60:.1f} min" if tr.get("wall_s") else "wall time not recorded (resumed)"
    return (f"- `{tr['model']}`: {tr['parameters']:,} parameters, {tr['steps']} steps × batch {tr['batch']}, "
            f"lr {tr['lr']:g}, {m.get('samples_per_s', 0):.0f} samples/s, {wall}, final loss "
            f"{m.get('final_loss', float('nan')):.4f}  \n  `{tr['command']}`")


def _goal(ok: bool | None) -> str:
    return "pending" if ok is None else ("**met**" if ok else "**missed**")


def _overlap_ok(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether a's mean success is not below b's beyond the intervals (a's upper bound reaches b's mean)."""
    k, n = _pooled(a)
    return _wilson(k, n)[1] >= mean_success(b)


def _kept_tail(ev: dict[str, Any] | None, tasks: Sequence[str]) -> str:
    """How a try that replaces a chosen model ends: its evaluation against the 90% goal, or not kept."""
    if ev is None:
        return "; not kept (the evaluation episodes were not run for it)"
    m = mean_success(ev)
    return (f"; kept, and on the evaluation episodes: {_mean_row(ev)} ({100 * m:.1f}%, goal {_goal(m >= 0.9)} with "
            "this model; per task: " + ", ".join(f"{t} {_pct(ev['tasks'][t]['success_rate'])}" for t in tasks) + ")")


def split_section(r: Run) -> list[str]:
    """Result 2s: the pooling claim on three splits, with the goals checked per split."""
    E = lambda k: _load(r.out, "eval", k)  # noqa: E731
    T = lambda k: _load(r.out, "train", k)  # noqa: E731
    b = r.budget
    L = ["## 2s. Pooling on tasks nobody tuned on: three splits\n",
         f"The 45 usable v3 tasks (all but the five held out for an outside check) are permuted with seed "
         f"{SPLIT_SEED}; split s fine-tunes on tasks 5s to 5s + 4 of that order and pre-trains `small` on the other "
         f"40 ({b.steps} steps, lr {b.lr:g}; one dataset of 50 expert episodes per task, seeds "
         f"{SEED_TASK_DATA}–{SEED_TASK_DATA + 44}). Demonstrations: {', '.join(map(str, SPLIT_DEMOS))} per task "
         f"(seed {SEED_SPLIT_DEMOS} + s; the 3 are the first 3 of the 10). Own-data baselines: `small` at lr "
         f"{', '.join(f'{x:g}' for x in b.own_lrs)} and the MLP (`--config mlp`, lr {SPLIT_MLP_LR:g}), "
         f"{b.finetune_steps} steps each, all evaluated; the best of them by evaluation is the comparison (which "
         f"flatters own data, not pooling). Pooled: each recipe fine-tunes the split's base for {b.finetune_steps} "
         f"steps with {SPLIT_HOLDOUT:g} of the demonstrations' episodes held out; the recipe with the lowest "
         "held-out action loss (EMA weights) is fine-tuned again on all demonstrations and evaluated. Recipes: "
         + "; ".join(f"`{rc.label}`: {rc.why}" for rc in RECIPES) + ". Evaluation: "
         f"{SPLIT_EVAL_EPISODES} episodes per task, seed {SEED_SPLIT_EVAL} (no data seed).\n"]
    w = L.append
    for s in SPLIT_SEEDS:
        tasks = split_tasks(s)
        w(f"### Split {s}: {', '.join(tasks)}\n")
        cols: list[tuple[str, dict[str, Any] | None]] = [("expert", E(f"r2s-s{s}-expert"))]
        for k in SPLIT_DEMOS:
            cols += [(f"own {k}, {'mlp' if size == 'mlp' else size + f' lr {lr:g}'}", E(f"r2s-{name}"))
                     for name, size, lr in own_models(b, s, k)]
            rc = split_recipe_choice(r, s, k)
            cols.append((f"pooled {k}" + (f" ({rc.label})" if rc else ""), E(f"r2s-s{s}-pooled-{k}")))
        w("| model | " + " | ".join(tasks) + " | mean |")
        w("|---|" + "---|" * (len(tasks) + 1))
        for label, ev in cols:
            w(f"| {label} | " + " | ".join(_cell(ev, t) for t in tasks) + f" | {_mean_row(ev)} |")
        w("")
        for k in SPLIT_DEMOS:
            vals = [(rc, T(f"s{s}-pft{k}-{rc.label}-val")) for rc in RECIPES]
            w(f"Recipes with {k} demonstrations, held-out action loss: " + ", ".join(
                f"`{rc.label}` {tr['metrics']['heldout_action_loss_ema']:.4f}" if tr else f"`{rc.label}` pending"
                for rc, tr in vals) + ".  ")
        best = {k: E(f"r2s-{n}") if (n := split_best_own(r, s, k)) else None for k in SPLIT_DEMOS}
        pooled = {k: E(f"r2s-s{s}-pooled-{k}") for k in SPLIT_DEMOS}
        for k in SPLIT_DEMOS:
            p, o = pooled[k], best[k]
            ok = None if p is None or o is None else _overlap_ok(p, o)
            detail = "" if ok is None else f": pooled {_pct(mean_success(p))} against own {_pct(mean_success(o))}"
            w(f"Goal (pooled ≥ best own data at {k} demonstrations, within the interval): {_goal(ok)}{detail}.  ")
        p3, o10 = pooled[3], best[10]
        ok = None if p3 is None or o10 is None else _overlap_ok(p3, o10)
        detail = "" if ok is None else f": pooled@3 {_pct(mean_success(p3))} against own@10 {_pct(mean_success(o10))}"
        w(f"Goal (pooled with 3 ≥ best own data with 10, within the interval): {_goal(ok)}{detail}.\n")
        names_more: list[str] = []
        if any(T(f"s{s}-pft{k}-cotrain-val") for k in SPLIT_DEMOS):
            w(f"Tried after that (stage `r2s-cotrain`): the recipe `cotrain` ({COTRAIN.why}) joins the candidates "
              "and the choice is made again by the same held-out loss; the chosen model is evaluated only if "
              "`cotrain` wins.  ")
            for k in SPLIT_DEMOS:
                tr = T(f"s{s}-pft{k}-cotrain-val")
                rc = split_recipe_choice(r, s, k, RECIPES_MORE)
                if tr is None or rc is None:
                    w(f"{k} demonstrations: pending.  ")
                    continue
                names_more.append(f"s{s}-pft{k}-cotrain-val")
                line = (f"{k} demonstrations: `cotrain` {tr['metrics']['heldout_action_loss_ema']:.4f}, chosen "
                        f"`{rc.label}`")
                ev = E(f"r2s-s{s}-pooled-{k}-cotrain")
                if rc == COTRAIN:
                    names_more.append(f"s{s}-pft{k}-cotrain")
                    line += (f"; evaluated: {_mean_row(ev)} (per task: " + ", ".join(
                        f"{t} {_pct(ev['tasks'][t]['success_rate'])}" for t in tasks) + ")" if ev else
                        "; evaluation pending")
                    if ev is not None and k == 3 and best[10] is not None:
                        line += (f"; goal pooled@3 ≥ own@10 {_goal(_overlap_ok(ev, best[10]))}: "
                                 f"{_pct(mean_success(ev))} against {_pct(mean_success(best[10]))}")
                    if ev is not None and best[k] is not None:
                        line += (f"; against own@{k}: {_goal(_overlap_ok(ev, best[k]))} "
                                 f"({_pct(mean_success(ev))} against {_pct(mean_success(best[k]))})")
                else:
                    line += " (the first choice stands; not evaluated)"
                w(line + ".  ")
            w("")
        _acting_paragraph(r, s, w)
        names = [split_base(s), *(f"s{s}-pft{k}-{rc.label}-val" for k in SPLIT_DEMOS for rc in RECIPES),
                 *(n for k in SPLIT_DEMOS for n, _, _ in own_models(b, s, k))]
        for k in SPLIT_DEMOS:
            rc = split_recipe_choice(r, s, k)
            if rc:
                names.append(f"s{s}-pft{k}-{rc.label}")
        names += names_more
        done = [n for n in names if T(n)]
        for n in done:
            w(_train_line(T(n), n))
        if len(done) < len(names):
            w(f"- pending: {', '.join(f'`{n}`' for n in names if n not in done)}")
        e = E(f"r2s-s{s}-expert")
        if e:
            w(f"- evaluations: e.g. `{e['command']}` (the same episodes for every model of this split)")
        w("")
    w("Resume or extend: `PYTHONPATH=src python bench/results.py --ws /work/results-ws-pool --data /work/results-data "
      "--steps 4000 --finetune-steps 1000 --own-lrs 3e-4,1e-3,3e-3 --mt10-episodes 50 --joint-mt10-episodes 50 "
      "--fewshot-episodes 20 --tep-episodes 3 --stages r2s-pooled,r2s-own` (finished JSONs are skipped; "
      "`--splits 0` for one split); then, the same way, `--stages r2s-cotrain`, `--stages r2s-acting`, "
      "`--stages r2s-acting-more` and `--stages r2s-acting-all` (these four ran with `--splits 1,2`).\n")
    return L


def _acting_paragraph(r: Run, s: int, w: Callable[[str], None]) -> None:
    """Stages r2s-acting, -more and -all's lines for split ``s``: each model's validation, choice
    and evaluation, and the split's goals again with every model acting as chosen."""
    E = lambda k: _load(r.out, "eval", k)  # noqa: E731
    first = acting_models(r, s)
    if not any(E(f"r2s-s{s}-val-{m}-ensembled") for m in first):
        return
    models = list(dict.fromkeys(first + acting_models(r, s, "more") + acting_models(r, s, "all")))
    w(f"Tried after that (stage `r2s-acting`, fixed before it ran): how the two models of the last goal act, "
      f"temporal ensembling (the default) or the newest chunk's first action, chosen per model on validation "
      f"episodes (seed {SEED_SPLIT_VAL}, {SPLIT_VAL_EPISODES} per task; a tie keeps the default); a model that "
      "chooses the newest chunk is evaluated that way on the evaluation episodes. Stage `r2s-acting-more`, added "
      "after split 2's own@10 model gained 27 points on validation by acting on the newest chunk, makes the same "
      "choice for the other two models. Stage `r2s-acting-all`, fixed before it ran, makes it for every own-data "
      "model, and the best own model is then picked among them as each acts as chosen.  ")
    as_chosen: dict[str, dict[str, Any]] = {}
    for m in models:
        ens, new = E(f"r2s-s{s}-val-{m}-ensembled"), E(f"r2s-s{s}-val-{m}-newest")
        pick = acting_choice(r, s, m)
        line = (f"`{m}`: validation ensembled {_mean_row(ens) if ens else 'pending'}, newest chunk "
                f"{_mean_row(new) if new else 'pending'}")
        ev = None
        if pick is None:
            w(line + ".  ")
        elif pick:
            ev = _ensembled_evaluation(r, s, m)
            w(line + "; keeps ensembling (its evaluation above stands).  ")
        else:
            ev = E(f"r2s-s{s}-{m}-newest")
            w(line + "; acts on the newest chunk: evaluation " + (_mean_row(ev) if ev else "pending") + ".  ")
        if ev is not None:
            as_chosen[m] = ev
    pooled = {k: as_chosen.get(pooled_choice(r, s, k) or "") for k in SPLIT_DEMOS}
    own: dict[int, tuple[str, dict[str, Any]] | None] = {}
    for k in SPLIT_DEMOS:
        names = [n for n, _, _ in own_models(r.budget, s, k)]
        if all(n in as_chosen for n in names):  # r2s-acting-all: the best of all, each as chosen
            best = max(names, key=lambda n: mean_success(as_chosen[n]))
            own[k] = (f"the best of all own@{k} models as chosen, `{best}`", as_chosen[best])
        else:
            m = split_best_own(r, s, k) or ""
            own[k] = (f"`{m}`", as_chosen[m]) if m in as_chosen else None
    for label, a, b in [*((f"pooled ≥ best own data at {k} demonstrations", pooled[k], own[k]) for k in SPLIT_DEMOS),
                        ("pooled with 3 ≥ best own data with 10", pooled[3], own[10])]:
        if a is not None and b is not None:
            w(f"Goal ({label}, within the interval), each acting as chosen, against {b[0]}: "
              f"{_goal(_overlap_ok(a, b[1]))}: {_pct(mean_success(a))} against {_pct(mean_success(b[1]))}.  ")
    w("")


def _ensembled_evaluation(r: Run, s: int, model: str) -> dict[str, Any] | None:
    """The evaluation ``model`` of split ``s`` had acting as first evaluated (ensembled): an own-data
    model's own, or the chosen pooled model's (of its co-training stage when that recipe won)."""
    for k in SPLIT_DEMOS:
        if model == pooled_choice(r, s, k):
            return _load(r.out, "eval", f"r2s-s{s}-pooled-{k}" + ("-cotrain" if model.endswith("-cotrain") else ""))
    return _load(r.out, "eval", f"r2s-{model}")


def write_doc(r: Run) -> None:
    """Rewrite docs/results.md from the JSON summaries that exist."""
    from onshore.sim.metaworld import DEFAULT_TASKS

    out, b = r.out, r.budget
    E = lambda k: _load(out, "eval", k)  # noqa: E731
    T = lambda k: _load(out, "train", k)  # noqa: E731
    machine = json.loads((out / "machine.json").read_text())
    rel = os.path.relpath(out, ROOT)
    L: list[str] = []
    w = L.append
    w("# Results: the cross-embodiment model\n")
    w("Generated by `bench/results.py` from the JSON summaries in "
      f"`{rel}/` (one per training run and per evaluation); do not edit by hand: rerun the script. "
      "Discussion that is not a number lives in `docs/results/discussion.md` and is included at the end.\n")
    w(f"**Machine**: {machine['cpu']}, {machine['cores']} cores (load average "
      f"{machine['load']} when the run started), {machine['python']}, torch {machine['torch']}, "
      f"{b.threads} torch thread(s) for training, {b.workers} evaluation worker(s); no GPU.  ")
    w(f"**Command**: `{machine['command']}`  ")
    w(f"**Budget** (set so that the whole page runs in under two hours of wall time on this machine, see "
      "*Deviations*): "
      f"{b.steps} steps × batch {b.batch} per single-embodiment model (lr {b.lr:g}), "
      f"{b.finetune_steps} steps per fine-tune / own-data model, evaluation episodes: MT10 {b.mt10_episodes} "
      f"per task, joint model on MT10 {b.joint_mt10_episodes} per task, few-shot {b.fewshot_episodes} per task, "
      f"Tennessee Eastman {b.tep_episodes} per scenario.\n")
    trains = [json.loads(f.read_text()) for f in sorted((out / "train").glob("*.json"))]
    evals = [json.loads(f.read_text()) for f in sorted((out / "eval").glob("*.json"))]
    rates = [t["metrics"]["samples_per_s"] for t in trains if t["metrics"].get("samples_per_s")]
    model_evals = [e["steps"] / e["wall_s"] for e in evals if e["policy"] != "expert" and e["wall_s"] > 0]
    if rates and model_evals:
        w(f"**Throughput measured in this run** (`small`, shared cores): training {min(rates):.0f}–{max(rates):.0f} "
          f"samples/s on one torch thread; closed-loop evaluation of a model {min(model_evals):.0f}–"
          f"{max(model_evals):.0f} control steps/s over {b.workers} worker processes (the model acting at batch 1, "
          "plus the simulator; TEP runs also include the PI controller on the same episodes). Up to three of "
          "these jobs shared the two cores at a time.\n")
    w("Telemetry: every dataset comes from `onshore sim generate` (commands in "
      f"`{rel}/telemetry.json`; seeds 101, 202, 300–303, 401–402), ingested under its member's usage policy "
      f"(JP only, purposes foundation-pretraining and fine-tuning) at site `{SITE}` (JP) of the results "
      "workspace; every training run decided each dataset and logged each key release in the ledger. "
      f"Evaluation seeds ({SEED_MT10_EVAL}, {SEED_FEWSHOT_EVAL}, {SEED_TEP_EVAL}) differ from every telemetry "
      "seed; an episode's randomness is a hash of (env, seed, task, index), so no evaluation episode is a "
      "training episode. Intervals are 95% Wilson score intervals.\n")

    # ---- result 1
    ex, mo = E("r1-expert"), E("r1-mt10-small")
    exn, mon = E("r1-expert-noisy"), E("r1-mt10-noisy-small")
    w("## 1. Meta-World MT10\n")
    w(f"`small` trained on `mt10` (50 expert episodes per task, seed 101), evaluated on {b.mt10_episodes} "
      f"episodes per task (seed {SEED_MT10_EVAL}) beside the scripted experts on the same episodes. "
      f"Realistic sensors: the same episodes generated with `--noise {NOISY['noise']:g} --quantize` "
      "(`mt10-noisy`), a model trained on them, and both the model and the expert evaluated seeing the "
      "same sensors (`onshore eval --noise --quantize`); success is scored on the true state.\n")
    w("| task | expert | small | expert, noisy sensors | small, noisy sensors |")
    w("|---|---|---|---|---|")
    for t in DEFAULT_TASKS:
        w(f"| {t} | {_cell(ex, t)} | {_cell(mo, t)} | {_cell(exn, t)} | {_cell(mon, t)} |")
    w(f"| **mean** | {_mean_row(ex)} | {_mean_row(mo)} | {_mean_row(exn)} | {_mean_row(mon)} |\n")
    if mo is not None:
        worst = min(mo["tasks"].items(), key=lambda kv: kv[1]["success_rate"])
        m = mean_success(mo)
        ok = m >= 0.95 and worst[1]["success_rate"] >= 0.85
        w(f"Goal (mean ≥ 95%, no task below 85%): {_goal(ok)}: mean {_pct(m)} "
          f"({'+' if m >= .95 else ''}{100 * (m - .95):.0f} points against the goal), lowest task "
          f"{worst[0]} at {_pct(worst[1]['success_rate'])}.  ")
    if mo is not None and mon is not None:
        w(f"What realistic sensors cost: {100 * (mean_success(mo) - mean_success(mon)):.0f} points of mean success "
          f"for the model" + (f", {100 * (mean_success(ex) - mean_success(exn)):.0f} points for the expert"
                              if ex and exn else "") + ".  ")
    w("")
    for k in ("mt10-small", "mt10-noisy-small"):
        w(_train_line(T(k), k))
    for ev in (ex, mo, exn, mon):
        if ev:
            w(f"- eval `{ev['key']}`: {ev['steps']} control steps in {ev['wall_s'] / 60:.1f} min  \n"
              f"  `{ev['command']}`")
    w("")

    # ---- result 1b: noisy readings, clean teacher
    nc_vals = {h: E(f"r1nc-val-h{h}") for h in NOISY_CLEAN_HISTORIES}
    nc, chosen = E("r1-noisy-clean"), noisy_clean_choice(r)
    if any(nc_vals.values()):
        w("### 1b. Better than its teacher through a factory's sensors\n")
        w(f"`mt10-noisy-clean`: the same 50 episodes per task (seed 101) with `--noise {NOISY['noise']:g} --quantize "
          "--expert-sees exact`: the frames record the noisy 16-bit readings, the actions are the expert's acting on "
          "the true state (the sensor noise of a frame is what a real plant logs; the teacher was not fooled by it). "
          f"Models with {', '.join(str(h) for h in NOISY_CLEAN_HISTORIES)} frames of history were trained on it "
          f"and the history chosen by mean success on validation episodes (seed {SEED_MT10_VAL}, "
          f"{NOISY_CLEAN_VAL_EPISODES} per task, noisy sensors); the chosen model alone was then evaluated on the "
          f"evaluation episodes of result 1 (seed {SEED_MT10_EVAL}) through the same noisy sensors as the expert "
          "(the expert column above, which acts on the readings).\n")
        w("| history | validation mean success (seed " + str(SEED_MT10_VAL) + ") |")
        w("|---|---|")
        for h, v in nc_vals.items():
            w(f"| {h} frames{' (chosen)' if h == chosen else ''} | {_mean_row(v) if v else 'not run yet'} |")
        w("")
    if nc is not None:
        w("| task | expert, noisy sensors | small, noisy readings + clean teacher |")
        w("|---|---|---|")
        for t in DEFAULT_TASKS:
            w(f"| {t} | {_cell(exn, t)} | {_cell(nc, t)} |")
        w(f"| **mean** | {_mean_row(exn)} | {_mean_row(nc)} |\n")
        m = mean_success(nc)
        w(("First model: g" if E("r1-noisy-clean-more") else "G") + "oal (mean ≥ 90% through noisy sensors, against "
          "the noisy expert's "
          f"{_pct(mean_success(exn)) if exn else '?'}): {_goal(m >= 0.9)}: {100 * m:.1f}% "
          f"({'+' if m >= .9 else ''}{100 * (m - .9):.1f} points against the goal); history needed: {chosen} "
          "frames.  ")
        val_long = E(f"r1nc-val-h{chosen}-x{NOISY_CLEAN_LONG}")
        nc_long = E("r1-noisy-clean-long")
        if val_long is not None:
            w(f"Tried after that miss (stage `r1-noisy-clean-long`): the {chosen}-frame model trained "
              f"{NOISY_CLEAN_LONG}x as long, kept only if better on the validation episodes: validation "
              f"{_mean_row(val_long)} against {_mean_row(nc_vals[chosen])}"
              + _kept_tail(nc_long, DEFAULT_TASKS) + ".  ")
        val_more = E(f"r1nc-val-h{chosen}-more")
        nc_more = E("r1-noisy-clean-more")
        if val_more is not None:
            w(f"Tried next (stage `r1-noisy-clean-more`): the {chosen}-frame model trained on twice the recordings "
              "(`mt10-noisy-clean-2`: another 50 episodes per task of the same sensors, seed 102) for twice the "
              "steps, to replace the first model if at least as good on the validation episodes (fixed before it "
              f"ran): validation {_mean_row(val_more)} against {_mean_row(nc_vals[chosen])}"
              + _kept_tail(nc_more, DEFAULT_TASKS) + ".  ")
    if any(nc_vals.values()):
        w("")
        for h in NOISY_CLEAN_HISTORIES:
            w(_train_line(T(f"mt10-nc-h{h}"), f"mt10-nc-h{h}"))
        if chosen is not None and T(f"mt10-nc-h{chosen}-x{NOISY_CLEAN_LONG}"):
            w(_train_line(T(f"mt10-nc-h{chosen}-x{NOISY_CLEAN_LONG}"), f"mt10-nc-h{chosen}-x{NOISY_CLEAN_LONG}"))
        if chosen is not None and T(f"mt10-nc-h{chosen}-more"):
            w(_train_line(T(f"mt10-nc-h{chosen}-more"), f"mt10-nc-h{chosen}-more"))
        extra = (E(f"r1nc-val-h{chosen}-x{NOISY_CLEAN_LONG}"), E("r1-noisy-clean-long"),
                 E(f"r1nc-val-h{chosen}-more"), E("r1-noisy-clean-more")) if chosen else ()
        for ev in (*nc_vals.values(), nc, *extra):
            if ev:
                w(f"- eval `{ev['key']}`: {ev['steps']} control steps in {ev['wall_s'] / 60:.1f} min  \n"
                  f"  `{ev['command']}`")
        w("")

    # ---- result 2
    w("## 2. Pooling pays: pre-train on 40 tasks of 4 members, fine-tune with 1, 3, 10 demonstrations\n")
    w("`pool-small` is pre-trained on `pool-0` … `pool-3`, four datasets of four members (the 40 v3 tasks other "
      f"than the five fine-tune tasks and the five held-out tasks, split `tasks[i::4]`, 50 episodes each). It is "
      f"fine-tuned (`onshore finetune`, all weights, lr {b.finetune_lr:g}, no sweep) on `fewshot-k`, the first k "
      f"expert episodes per task of {', '.join(FINETUNE_TASKS)} (seed 202). Own-data-only: a fresh `small` "
      f"trained on the same `fewshot-k` with the same steps, best of lr ∈ {{{', '.join(f'{x:g}' for x in b.own_lrs)}}}"
      " chosen on the evaluation episodes themselves (which favours the baseline). Evaluation: "
      f"{b.fewshot_episodes} episodes per task, seed {SEED_FEWSHOT_EVAL}. The held-out tasks "
      f"({', '.join(HELD_OUT)}) were never generated, trained, tuned or evaluated here; the pooled model is "
      f"saved in the results workspace (`{r.ws_root}`, site `{SITE}`) for the outside check: "
      f"`ONSHORE_WORKSPACE={r.ws_root} onshore finetune pool-small --datasets D --steps N --name M`.\n")
    head = "| demos | " + " | ".join(FINETUNE_TASKS) + " | mean |"
    w(head)
    w("|" + "---|" * (len(FINETUNE_TASKS) + 2))
    for k in DEMOS:
        ft = E(f"r2-pool-ft-{k}")
        w(f"| pooled + fine-tune, {k} | " + " | ".join(_cell(ft, t) for t in FINETUNE_TASKS) + f" | {_mean_row(ft)} |")
        bo = best_own(r, k)
        lab = f"own data only, {k} (best lr {bo['policy'].split('-lr')[1]})" if bo else f"own data only, {k}"
        w(f"| {lab} | " + " | ".join(_cell(bo, t) for t in FINETUNE_TASKS) + f" | {_mean_row(bo)} |")
    w("")
    sweep = [(k, lr, E(f"r2-own-{k}-lr{lr_tag(lr)}")) for k in DEMOS for lr in b.own_lrs]
    w("Own-data sweep (mean success): " + ", ".join(
        f"{k} demos lr {lr:g}: {_pct(mean_success(e)) if e else 'pending'}" for k, lr, e in sweep) + ".  ")
    ft3, own10 = E("r2-pool-ft-3"), best_own(r, 10)
    if ft3 is not None and own10 is not None:
        a, c = mean_success(ft3), mean_success(own10)
        w(f"Goal (pooled + 3 demos ≥ own data only + 10 demos): {_goal(a >= c)}: {_pct(a)} against {_pct(c)} "
          f"({100 * (a - c):+.0f} points).  ")
    else:
        w("Goal (pooled + 3 demos ≥ own data only + 10 demos): pending.  ")
    w("")
    c_ft, c_own = E("r2-confirm-pool-ft-3"), E("r2-confirm-own-10")
    w(f"**Confirmation** (stage `r2-confirm`): the goal's two models, the own-data one as the sweep chose it, on 50 "
      f"new episodes per task (seed {SEED_FEWSHOT_CONFIRM}, used nowhere else):\n")
    w("| model | " + " | ".join(FINETUNE_TASKS) + " | mean |")
    w("|" + "---|" * (len(FINETUNE_TASKS) + 2))
    for lab, ev in (("pooled + fine-tune, 3 (`pool-ft-3`)", c_ft),
                    (f"own data only, 10 (`{c_own['policy'] if c_own else 'best of the sweep'}`)", c_own)):
        w(f"| {lab} | " + " | ".join(_cell(ev, t) for t in FINETUNE_TASKS) + f" | {_mean_row(ev)} |")
    if c_ft is not None and c_own is not None:
        k1, n1 = _pooled(c_ft)
        k2, n2 = _pooled(c_own)
        a, c = k1 / n1, k2 / n2
        w(f"\nGoal on these episodes: {_goal(a >= c)}: {_pct(a)} against {_pct(c)} ({100 * (a - c):+.0f} points).  ")
    w("")
    w(_train_line(T("pool-small"), "pool-small"))
    for k in DEMOS:
        w(_train_line(T(f"pool-ft-{k}"), f"pool-ft-{k}"))
        for lr in b.own_lrs:
            w(_train_line(T(f"own-{k}-lr{lr_tag(lr)}"), f"own-{k}-lr{lr_tag(lr)}"))
    e1 = E("r2-pool-ft-1")
    if e1:
        w(f"- evaluations: e.g. `{e1['command']}` (same for every model of this result)")
    w("")

    L.extend(split_section(r))

    # ---- result 3
    jm, jt, tp = E("r3-joint-small-mt10"), E("r3-joint-small-tep"), E("r4-tep-small")
    n3 = b.joint_mt10_episodes
    w("## 3. Arms and a plant in one model\n")
    w(f"`joint-small` is trained on `mt10` + `tep` + `tep-idv` (weights 2 : 1 : 1, so half of every batch is "
      f"arm windows, half plant windows) for {2 * b.steps} steps: the same windows per embodiment as "
      f"`mt10-small` (arm only, result 1) and `tep-small` (plant only, result 4), which ran {b.steps} steps "
      f"on whole batches of their embodiment. MT10 success on the first {n3} episodes per task of seed "
      f"{SEED_MT10_EVAL} (the arm-only model's numbers are recomputed on the same episodes); TEP IAE is summed "
      "over the controlled variables, mean per episode, over the four scenarios of result 4.\n")
    w("The same comparison is made twice: with the `small` config as it is (2 frames of history, 16-step "
      "chunks), and with the plant config that result 4's tries found (`--model-option history=32 "
      "--model-option chunk=4`, stage `r3-long`), under which a model controls the plant far better; a "
      "config is the whole model's, so the arm-only model of the second comparison has it too.\n")
    w("| config | model | MT10 mean success | TEP IAE (sum, mean over scenarios) | TEP shutdowns |")
    w("|---|---|---|---|---|")
    lm, lj, ljt, lp = (E("r3-mt10-small-h32c4"), E("r3-joint-small-h32c4-mt10"), E("r3-joint-small-h32c4-tep"),
                       E("r4-try-h32c4"))
    bm, bt = E("r3-joint-small-h32c4-bal-mt10"), E("r3-joint-small-h32c4-bal-tep")
    comparisons = (("h2c16", "mt10-small", mo, "tep-small", tp, "joint-small", jm, jt),
                   ("h32c4", "mt10-small-h32c4", lm, "tep-small-h32c4", lp, "joint-small-h32c4", lj, ljt),
                   ("h32c4 balanced", "mt10-small-h32c4", lm, "tep-small-h32c4", lp, "joint-small-h32c4-bal", bm, bt))
    for cfg, an, arm, pn, plant, jn, jmt, jtep in comparisons:
        w(f"| {cfg} | arm only (`{an}`) | {_mean_row(arm, n3)} | – | – |")
        w(f"| {cfg} | plant only (`{pn}`) | – | {_iae_total(plant)} | {_shut(plant)} |")
        w(f"| {cfg} | joint (`{jn}`) | {_mean_row(jmt)} | {_iae_total(jtep)} | {_shut(jtep)} |")
    w("")
    for cfg, _, arm, _, plant, _, jmt, jtep in comparisons:
        if jmt is not None and arm is not None:
            k1, n1 = _pooled(arm, n3)
            k2, n2 = _pooled(jmt)
            d = 100 * (k2 / n2 - k1 / n1)
            w(f"{cfg}: goal (within 2 points of arm-only on MT10) {_goal(d >= -2)}: {d:+.1f} points.  ")
        if jtep is not None and plant is not None:
            ratio = _iae_sum(jtep) / _iae_sum(plant)
            w(f"{cfg}: goal (within 5% of plant-only IAE) {_goal(ratio <= 1.05)}: joint/plant-only IAE = "
              f"{ratio:.2f}.  ")
    w("")
    w("Issue 18 section 2, what was tried (stage `r3-balance`): the h32c4 joint model again with "
      "`--balance-embodiments` (each embodiment's mean loss divided by its running mean, the mean ratio "
      "scaled back by the mean running loss): the plant's loss is dominated by its next-state term (~7x its "
      "action loss; the arm's is not), so in one trunk the arm and the plant pulled with unequal, drifting "
      "weights. Nothing else changed (data, weights 2:1:1, 8000 steps, seeds, evaluation episodes). The "
      "plant figures are 3 episodes per scenario, as for every row of this table: too few to claim no "
      "shutdowns in general. A larger trunk and per-embodiment adapters were not tried.\n")
    for name in ("joint-small", "mt10-small-h32c4", "joint-small-h32c4", "joint-small-h32c4-bal"):
        w(_train_line(T(name), name))
    for ev in (jm, jt, lm, lj, ljt, bm, bt):
        if ev:
            w(f"- eval `{ev['key']}`: `{ev['command']}`")
    w("")

    # ---- result 4
    w("## 4. Tennessee Eastman in closed loop against the PI controller that taught it\n")
    w(f"Every model here was trained on the PI controller's telemetry: `tep` (base case, 10 episodes of 2 h, seed "
      f"401) and `tep-idv` ({', '.join(TEP_DISTURBANCES)}, 5 episodes each, seed 402), and runs the plant in "
      f"closed loop for {b.tep_episodes} episodes per scenario; the PI controller runs the same episodes. IAE is "
      "the sum over the controlled variables of ∫|x − set-point| dt (each in its unit × h), mean per episode; "
      "ratio = model / PI. An episode that shuts down ends early, so its IAE covers less time: IAE understates "
      "how bad a shut-down episode was. `tep-small` and `joint-small` use the `small` config as it is "
      "(2 frames of history, 16-step chunks, ensembled); the tries below change one thing at a time.\n")
    conf = E("r4-confirm")
    chosen = best_try(r)
    rows = [("tep-small", SEED_TEP_EVAL, tp), ("joint-small", SEED_TEP_EVAL, jt)]
    if chosen is not None:
        rows.append((f"{chosen.model} (try {chosen.label}, chosen)", SEED_TEP_CONFIRM, conf))
    w("| model | seed | scenario | IAE model | IAE PI | ratio | shutdowns model / PI | violation frames model / PI |")
    w("|---|---|---|---|---|---|---|---|")
    for name, seed, ev in rows:
        for s in TEP_SCENARIOS:
            if ev is None:
                w(f"| {name} | {seed} | {s} | pending | | | | |")
                continue
            t = ev["tasks"][s]
            im, ip = sum(t["iae"].values()), sum(t["pi_iae"].values())
            w(f"| {name} | {seed} | {s} | {im:.2f} | {ip:.2f} | {im / ip:.2f}× | {t['shutdowns']}/{t['episodes']} / "
              f"{t['pi_shutdowns']}/{t['episodes']} | {t['violation_frames']:.1f} / {t['pi_violation_frames']:.1f} |")
    w("")
    for name, _, ev in rows:
        if ev is None:
            continue
        shut = sum(t["shutdowns"] for t in ev["tasks"].values())
        w(f"`{name}`: goal IAE ratio ≤ 1.1× on every scenario {_goal(_worst_ratio(ev) <= 1.1)} (worst "
          f"{_worst_ratio(ev):.2f}×); goal no shutdowns {_goal(shut == 0)} ({shut} in "
          f"{len(ev['tasks']) * ev['episodes']} episodes).  ")
    w("")
    w(_train_line(T("tep-small"), "tep-small"))
    if tp:
        w(f"- eval: `{tp['command']}`")
    w(f"\n**Tried** after `tep-small` missed (stage `r4-try`), in this order, on seed {SEED_TEP_EVAL}; IAE ratio per "
      "scenario:\n")
    w("| try | model | acting | " + " | ".join(TEP_SCENARIOS) + " | shutdowns |")
    w("|---|---|---|" + "---|" * len(TEP_SCENARIOS) + "---|")
    for t in TEP_TRIES:
        ev = E(t.key)
        acting = {None: "as trained", True: "ensembled", False: "newest chunk"}[t.ensemble]
        if ev is None:
            w(f"| `{t.label}` | `{t.model}` | {acting} | " + " | ".join("pending" for _ in TEP_SCENARIOS) + " | |")
            continue
        ratios = [_ratio(ev["tasks"][s]) for s in TEP_SCENARIOS]
        shut = sum(x["shutdowns"] for x in ev["tasks"].values())
        w(f"| `{t.label}` | `{t.model}` | {acting} | " + " | ".join(f"{x:.2f}×" for x in ratios)
          + f" | {shut}/{len(ev['tasks']) * ev['episodes']} |")
    w("")
    for i, t in enumerate(TEP_TRIES, 1):
        ev = E(t.key)
        w(f"{i}. `{t.label}`: {t.why}." + (f" Eval: `{ev['command']}`" if ev else " (pending)"))
        if t.overrides:
            w("   " + _train_line(T(t.model), t.model).lstrip())
    if chosen is not None:
        w(f"\nChosen (fewest shutdowns, then lowest worst-scenario ratio, on seed {SEED_TEP_EVAL}): "
          f"`{chosen.label}`. Choosing the best of {len(TEP_TRIES)} tries on the same episodes flatters it, "
          f"so stage `r4-confirm` ran it once more on episodes of seed {SEED_TEP_CONFIRM}, which no choice "
          "saw; those are its figures in the first table: " + (f"`{conf['command']}`." if conf else "pending."))
    for name, ev in (("tep-small", tp), (chosen.model if chosen else "", conf)):
        if ev is None:
            continue
        w(f"\nPer controlled variable ({name}, seed {ev['seed']}, mean IAE per episode, model / PI):\n")
        cvs = list(next(iter(ev["tasks"].values()))["iae"])
        w("| scenario | " + " | ".join(cvs) + " |")
        w("|---|" + "---|" * len(cvs))
        for s, t in ev["tasks"].items():
            w(f"| {s} | " + " | ".join(f"{t['iae'][c]:.3g} / {t['pi_iae'][c]:.3g}" for c in cvs) + " |")
    w("")
    _dagger_section(r, w)
    _faults_section(out, w)
    disc = out / "discussion.md"
    if disc.exists():
        w(disc.read_text())
    (out.parent / "results.md").write_text("\n".join(L) + "\n")


def _dagger_section(r: Run, w: Callable[[str], None]) -> None:
    """Result 4b: DAgger rounds from onshore shadow."""
    E = lambda k: _load(r.out, "eval", k)  # noqa: E731
    T = lambda k: _load(r.out, "train", k)  # noqa: E731
    rounds = [(k, E(f"r4d-round-{k}")) for k in range(DAGGER_ROUNDS + 1)]
    if not any(ev for _, ev in rounds):
        return
    w("### 4b. Better than its teacher? DAgger with `onshore shadow`\n")
    w(f"`tep-r0`: the chosen plant config (32 frames, 4-step chunks) trained on `tep` and `tep-idv` as above. Each "
      f"round k runs `onshore shadow tep-r(k-1) --drive model` for {DAGGER_EPISODES} episodes per scenario (seed "
      f"{DAGGER_SEED}+k): the model drives the plant through the safety envelope while the PI controller's would-be "
      f"outputs are recorded as the labels (`shadow-rk`, the plant operator's dataset); `tep-rk` is then "
      f"`onshore finetune tep-r(k-1)` on `tep`, `tep-idv` and every shadow dataset so far. Every round is evaluated "
      f"on the same {DAGGER_EVAL_EPISODES} episodes per scenario (seed {SEED_TEP_DAGGER_EVAL}, which no training or "
      f"choice saw); round {DAGGER_ROUNDS} was fixed as the result before any ran. IAE ratio = model / PI on the "
      "same episodes.\n")
    w("| round | base | idv-1 | idv-4 | idv-8 | shutdowns model / PI |")
    w("|---|---|---|---|---|---|")
    for k, ev in rounds:
        if ev is None:
            w(f"| {k} | pending | | | | |")
            continue
        cells = [f"{_ratio(ev['tasks'][s]):.2f}×" if s in ev["tasks"] else "-" for s in TEP_SCENARIOS]
        sd = sum(t["shutdowns"] for t in ev["tasks"].values())
        pi = sum(t["pi_shutdowns"] or 0 for t in ev["tasks"].values())
        n = sum(t["episodes"] for t in ev["tasks"].values())
        w(f"| {k} | " + " | ".join(cells) + f" | {sd}/{n} / {pi}/{n} |")
    w("")
    last = E(f"r4d-round-{DAGGER_ROUNDS}")
    if last is not None:
        worst = max(_ratio(t) for t in last["tasks"].values())
        sd = sum(t["shutdowns"] for t in last["tasks"].values())
        w(f"Goal (IAE at most 1.0× the PI controller's on each scenario, no shutdowns, 10 episodes each): "
          f"{_goal(worst <= 1.0 and sd == 0)}: worst {worst:.2f}×, {sd} shutdown(s).  ")
    for key, label in (("r4d-unseen-0", "round 0"), ("r4d-unseen-last", f"round {DAGGER_ROUNDS}")):
        ev = E(key)
        if ev is not None:
            cells = ", ".join(f"{s} {_ratio(t):.2f}×" for s, t in ev["tasks"].items())
            sd = sum(t["shutdowns"] for t in ev["tasks"].values())
            pi = sum(t["pi_shutdowns"] or 0 for t in ev["tasks"].values())
            where = ", ".join(f"{s} {t['shutdowns']}" for s, t in ev["tasks"].items() if t["shutdowns"])
            w(f"Disturbances never trained on ({label}, {DAGGER_EVAL_EPISODES} episodes each): {cells}; "
              f"{sd} shutdown(s){f' ({where})' if where else ''} against the PI controller's {pi} "
              "(goal: at most 1.1×, none).  ")
    w("")
    for k in range(DAGGER_ROUNDS + 1):
        w(_train_line(T(f"tep-r{k}"), f"tep-r{k}"))
    w("")


def _faults_section(out: Path, w: Callable[[str], None]) -> None:
    """Result 5 from faults.json, which bench/fault_bench.py writes (its own protocol and seeds)."""
    res = _read_json(out / "faults.json")
    if res is None:
        return
    methods = res["methods"]
    names = list(methods)
    ep = res["episodes"]
    w("## 5. Faults seen from the world model (Tennessee Eastman IDV 1-20)\n")
    w(f"Chiang, Russell and Braatz's protocol, normal operation only for every fit: `{res['model']}` (the plant config "
      f"of result 4, 32 frames, 4-step chunks) trained on {ep['train']} normal episodes "
      f"(seed {res['seeds']['train']}); "
      f"residual spreads and every threshold set at a {res['far']:.0%} false-alarm rate on {ep['validation']} held-out "
      f"normal episodes (seed {res['seeds']['validation']}); the false-alarm rate then measured on "
      f"{ep['test_normal']} unseen normal episodes (seed {res['seeds']['test_normal']}); {ep['per_fault']} episodes "
      f"per fault (seed {res['seeds']['faults']}), the fault switched on at a random time in 25-50% of each 2-hour "
      f"episode. PCA on the standardised 41 measurements and 12 valves, {res['pca_components']} components (90% of "
      f"the variance). Every statistic is averaged over the same trailing window of {res['window_frames']} frames "
      f"(18 s). Detection rate: frames alarmed after the onset; delay: minutes to the first alarm after it (mean "
      "over the episodes that alarmed; for faults a method barely detects, that first alarm is often a false "
      "alarm, so such delays mean little). Command: " f"`{res['command'].strip()}`.\n")
    w("| IDV | " + " | ".join(f"{n}: rate / delay" for n in names) + " |")
    w("|---|" + "---|" * len(names))
    for f in range(1, 21):
        cells = []
        for n in names:
            v = methods[n]["faults"][str(f)]
            d = "never" if v["delay_min"] is None else f"{v['delay_min']:.1f} min"
            cells.append(f"{v['detection_rate']:.3f} / {d}")
        w(f"| {f} | " + " | ".join(cells) + " |")
    w("| **mean** | " + " | ".join(f"**{methods[n]['mean_detection_rate']:.3f}**" for n in names) + " |")
    w("| false alarms, unseen normal | " + " | ".join(f"{methods[n]['far_test']:.2%}" for n in names) + " |\n")
    model, best, m, b = _model_against_pca(methods)
    w(f"Goal (a higher mean detection rate than the better of T² and SPE at the same false-alarm rate): "
      f"{_goal(m > b)}: {m:.3f} against {best}'s {b:.3f} ({100 * (m - b):+.1f} points). IDV 3, 9 and 15, known "
      "to be nearly undetectable, stay at or below 0.07 for every method.\n")
    states = next(n for n in names if n.startswith("model (states only"))
    s = methods[states]["mean_detection_rate"]
    w("How the model's statistic was chosen, and what that means for the claim: the design was not fixed before "
      "fault data had been seen. An earlier run of this bench (its code and figures were lost before they landed, "
      "so they cannot be reproduced here) reported the states-only statistic at 0.406 mean detection rate against "
      "PCA SPE's 0.447 (missed), and states plus controller outputs at 0.498; the controller-output residual was "
      "added after that run had seen the faults. Of the two variants above, only the states-only one was designed "
      f"without fault data; it reaches {s:.3f} against {best}'s {b:.3f} ({100 * (s - b):+.1f} points). The "
      "combined statistic is the one `onshore monitor` uses; a claim for it needs faults its design has not "
      "seen, which the confirmation below gives.\n")
    _faults_confirmation(out, w)


def _faults_confirmation(out: Path, w: Callable[[str], None]) -> None:
    """The pre-registered confirmation of result 5 on fault episodes no design choice has seen."""
    res = _read_json(out / "faults-seed505.json")
    if res is None:
        return
    methods = res["methods"]
    names = list(methods)
    w(f"### 5b. Confirmation on unseen faults (seed {res['seeds']['faults']})\n")
    w("Fixed before it ran (commit 9b88b7d states the rule): the combined statistic exactly as `onshore monitor` "
      f"uses it (window {res['window_frames']}, {res['far']:.0%} false alarms on held-out normal), on a model "
      "retrained by the same command, and fault episodes drawn with a seed no design choice has seen; the claim "
      "of this section holds if its mean detection rate beats the better of PCA T² and SPE there. "
      f"Command: `{res['command']}` (about 18 minutes, 10 of them training).\n")
    w("| | " + " | ".join(names) + " |")
    w("|---|" + "---|" * len(names))
    w("| mean detection rate | " + " | ".join(f"{methods[n]['mean_detection_rate']:.3f}" for n in names) + " |")
    w("| false alarms, unseen normal | " + " | ".join(f"{methods[n]['far_test']:.2%}" for n in names) + " |\n")
    model, best, m, b = _model_against_pca(methods)
    w(f"Confirmation: {_goal(m > b)}: {m:.3f} against {best}'s {b:.3f} ({100 * (m - b):+.1f} points). False "
      f"alarms on unseen normal operation, thresholds set by the same rule: {methods[model]['far_test']:.2%} "
      f"against {best}'s {methods[best]['far_test']:.2%}. Per-fault figures are in "
      "`docs/results/faults-seed505.json`.\n")


def _model_against_pca(methods: dict[str, Any]) -> tuple[str, str, float, float]:
    """The model's combined statistic, the better PCA statistic, and their mean detection rates."""
    model = next(n for n in methods if n.startswith("model (states +"))
    best = max((n for n in methods if n.startswith("PCA")), key=lambda n: methods[n]["mean_detection_rate"])
    return model, best, methods[model]["mean_detection_rate"], methods[best]["mean_detection_rate"]


def _iae_sum(ev: dict[str, Any]) -> float:
    return sum(sum(t["iae"].values()) for t in ev["tasks"].values()) / len(ev["tasks"])


def _iae_total(ev: dict[str, Any] | None) -> str:
    return "pending" if ev is None else f"{_iae_sum(ev):.2f}"


def _shut(ev: dict[str, Any] | None) -> str:
    if ev is None:
        return "pending"
    return f"{sum(t['shutdowns'] for t in ev['tasks'].values())}/{len(ev['tasks']) * ev['episodes']}"


def machine_info(argv: list[str]) -> dict[str, Any]:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "load": " ".join(f"{x:.1f}" for x in os.getloadavg()),
            "python": f"Python {platform.python_version()}", "torch": torch.__version__,
            "command": "PYTHONPATH=src python bench/results.py " + " ".join(shlex.quote(a) for a in argv),
            "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ws", type=Path, default=Path("/work/results-ws"), help="results workspace (made if missing)")
    p.add_argument("--data", type=Path, default=None, help="telemetry cache (default: WS/telemetry)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "results", help="JSON summaries")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, in order: {','.join(STAGES)}")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--finetune-steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--finetune-lr", type=float, default=3e-4)
    p.add_argument("--own-lrs", default="3e-4,1e-3")
    p.add_argument("--mt10-episodes", type=int, default=50)
    p.add_argument("--joint-mt10-episodes", type=int, default=25)
    p.add_argument("--fewshot-episodes", type=int, default=10)
    p.add_argument("--tep-episodes", type=int, default=5)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--doc-only", action="store_true", help="only rewrite docs/results.md from the JSON files")
    p.add_argument("--splits", default=",".join(str(x) for x in SPLIT_SEEDS),
                   help="result 2s: which splits the r2s stages run (all by default)")
    a = p.parse_args(argv)
    os.environ["ONSHORE_WORKSPACE"] = str(a.ws)
    r = Run(a.ws.resolve(), (a.data or a.ws / "telemetry").resolve(), a.out.resolve(), args_budget(a), argv)
    r.splits = tuple(int(x) for x in a.splits.split(","))
    if not set(r.splits) <= set(SPLIT_SEEDS):
        raise SystemExit(f"--splits: choose from {', '.join(map(str, SPLIT_SEEDS))}")
    budget_file = r.out / "budget.json"
    if budget_file.exists() and json.loads(budget_file.read_text()) != json.loads(json.dumps(asdict(r.budget))):
        raise SystemExit(f"{budget_file} records another budget; rerun with the same settings, or remove "
                         f"{r.out} to start the results over")
    budget_file.write_text(json.dumps(asdict(r.budget), indent=1))
    if not (r.out / "machine.json").exists():
        (r.out / "machine.json").write_text(json.dumps(machine_info(argv), indent=1))
    if a.doc_only:
        write_doc(r)
        return 0
    stages = a.stages.split(",")
    for s in stages:
        if s not in STAGES:
            raise SystemExit(f"unknown stage {s!r}; choose from {', '.join(STAGES)}")
    r.open()
    r.ingest_all({d for s in stages for d in STAGE_DATA[s]})
    write_doc(r)
    for s in stages:
        STAGES[s](r)
    r.say("all stages done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
