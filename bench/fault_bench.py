"""Fault detection on Tennessee Eastman from the world model, against PCA's T² and SPE (issue 18 §3).

    PYTHONPATH=src python bench/fault_bench.py --ws /work/faults-ws --data /work/faults-data

The protocol is Chiang, Russell and Braatz's: everything is fitted on normal operation only and
no fault is ever used to fit or tune anything.

1. Normal telemetry: ``base`` episodes of the PI-controlled plant, seed 501 (training: the
   plant model is trained on these only, with the chosen plant config of docs/results.md,
   32 frames of history and 4-step chunks) and seed 502 (held-out normal: per-channel residual
   scales, PCA's scaling, and every threshold, set at a 1% false-alarm rate).
2. Faults: ``idv-1`` .. ``idv-20``, seed 503, the fault switched on at a random time in 25-50% of
   each episode (``tep.py``). Detection rate: the fraction of frames after the onset that alarm;
   detection delay: minutes from the onset to the first alarm after it.
3. Methods, each thresholded at the 99th percentile of its own statistic on the held-out normal
   episodes: PCA T² and SPE on the standardised 41 measurements and 12 valve positions (components
   explaining 90% of the variance), and the model's residual: its next-state prediction error and
   its predicted valve positions against the PI controller's, each channel divided by its normal
   residual spread, squared and averaged. All three are averaged over the same trailing window of
   ``--window`` frames (the PCA statistics too, so the window is no advantage of the model's).

Resumable: the telemetry folders, the workspace's datasets and model are reused when present.
Prints the per-fault table and writes docs/results/faults.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SITE = "osaka"
MEMBER = "plant-operator"
MODEL = "tep-normal-h32c4"
SEED_TRAIN, SEED_VAL, SEED_FAULT, SEED_TEST = 501, 502, 503, 504
POLICY = ('jurisdictions = ["JP"]\nsites = []\npurposes = ["foundation-pretraining", "monitoring"]\n'
          'expires = 2031-03-31\nderived_models = "keep"\n')


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def telemetry(data: Path, name: str, tasks: list[str], episodes: int, seed: int) -> Path:
    from onshore.sim.generate import generate

    out = data / name
    if not (out / ".done").exists():
        say(f"generating {name}: onshore sim generate --env tep --tasks {','.join(tasks)} --episodes {episodes} "
            f"--seed {seed}")
        if out.exists():
            import shutil

            shutil.rmtree(out)
        generate("tep", tasks, episodes, seed, out, workers=1)
        (out / ".done").touch()
    return out


def workspace(root: Path, data: Path, args: argparse.Namespace) -> object:
    from onshore.errors import NotFoundError
    from onshore.workspace import Workspace, datasets, registry
    from onshore.workspace.config import CONFIG_FILE

    if (root / CONFIG_FILE).exists():
        ws = Workspace.open(root)
    else:
        ws = Workspace.init(root, "onshore-faults", jurisdiction="JP")
        registry.add_site(ws, SITE, "JP", "storage,compute,serve", "Osaka")
        registry.add_member(ws, MEMBER)
    have = {d["name"] for d in datasets.list_datasets(ws)}
    folder = telemetry(data, "tep-normal", ["base"], args.train_episodes, SEED_TRAIN)
    if "tep-normal" not in have:
        try:
            registry.get_embodiment(ws, "tennessee-eastman")
        except NotFoundError:
            registry.add_embodiment(ws, folder / "tennessee-eastman.toml")
        policy = root / "policy.toml"
        policy.write_text(POLICY)
        datasets.ingest(ws, "tep-normal", MEMBER, SITE, policy, "tennessee-eastman", sorted(folder.glob("*.parquet")))
    return ws


def train_model(ws: object, args: argparse.Namespace) -> None:
    from onshore.errors import NotFoundError
    from onshore.train.loop import TrainConfig, TrainRequest, train
    from onshore.workspace.models import get_model

    try:
        get_model(ws, MODEL)  # type: ignore[arg-type]
        return
    except NotFoundError:
        pass
    import torch

    torch.set_num_threads(1)
    say(f"training {MODEL} on tep-normal: {args.steps} steps")
    tc = TrainConfig(steps=args.steps, batch_size=64, lr=1e-3, warmup=100, checkpoint_every=max(100, args.steps // 5))
    last = [time.time()]

    def progress(step: int, total: int, m: dict[str, float]) -> None:
        if time.time() - last[0] > 60 or step == total:
            last[0] = time.time()
            say(f"  step {step}/{total} loss {m['loss']:.4f} {m['samples_per_s']:.0f} samples/s")

    train(ws, TrainRequest(MODEL, SITE, "foundation-pretraining", ("tep-normal",), size="small", train=tc,  # type: ignore[arg-type]
                           model_overrides=(("history", 32), ("chunk", 4))), progress=progress, device="cpu",
          log=say)


def episodes(folder: Path) -> list[dict[str, np.ndarray | int | None]]:
    """Each episode of a generated folder: states, actions and the fault onset frame (None: normal)."""
    import pyarrow.parquet as pq

    from onshore.telemetry import frames as F

    out = []
    for f in sorted(folder.glob("*.parquet")):
        t = pq.read_table(f)
        ep = t.column(F.EPISODE).to_numpy()
        st = np.asarray(t.column(F.STATE).to_pylist(), dtype=np.float32)
        ac = np.asarray(t.column(F.ACTION).to_pylist(), dtype=np.float32)
        fault = t.column("fault").to_numpy()
        for e in np.unique(ep):
            m = ep == e
            hits = np.flatnonzero(fault[m] != 0)
            out.append({"states": st[m], "actions": ac[m], "onset": int(hits[0]) if len(hits) else None,
                        "fault": int(fault[m].max())})
    return out


def evaluate(ws: object, data: Path, args: argparse.Namespace) -> dict[str, object]:
    from onshore.eval import faults as FD
    from onshore.sim import tep
    from onshore.workspace.models import load_model_for

    say("loading telemetry")
    train = episodes(data / "tep-normal")
    val = episodes(telemetry(data, "tep-normal-val", ["base"], args.val_episodes, SEED_VAL))
    test = episodes(telemetry(data, "tep-normal-test", ["base"], args.val_episodes, SEED_TEST))
    idvs = [f"idv-{i}" for i in range(1, 21)]
    # a fault seed other than the reported one gets its own folder: a confirmation on faults
    # that no choice of the statistic's design has seen
    faults_dir = "tep-faults" if args.fault_seed == SEED_FAULT else f"tep-faults-seed{args.fault_seed}"
    faulty = episodes(telemetry(data, faults_dir, idvs, args.fault_episodes, args.fault_seed))
    loaded = load_model_for(ws, MODEL, SITE, "read", "monitoring")  # type: ignore[arg-type]
    task = tep.task_text("base")

    def resid(e: dict) -> np.ndarray:
        return FD.model_residuals(loaded, "tennessee-eastman", task, e["states"], e["actions"])

    say("model residuals on normal and faulty episodes")
    r_val = [resid(e) for e in val]
    r_test = [resid(e) for e in test]
    r_fault = [resid(e) for e in faulty]
    n_state = train[0]["states"].shape[1]
    methods: dict[str, tuple] = {}
    pca = FD.Pca.fit(np.concatenate([np.hstack([e["states"], e["actions"]]) for e in train]))
    stats_of = {
        "PCA T²": lambda e, r: pca.statistics(np.hstack([e["states"], e["actions"]]))[0][1:],
        "PCA SPE": lambda e, r: pca.statistics(np.hstack([e["states"], e["actions"]]))[1][1:],
    }
    full = FD.ResidualScale.fit(np.concatenate(r_val))
    states_only = FD.ResidualScale.fit(np.concatenate(r_val)[:, :n_state])
    stats_of["model (states + controller outputs)"] = lambda e, r: full.score(r)
    stats_of["model (states only)"] = lambda e, r: states_only.score(r[:, :n_state])
    results: dict[str, object] = {}
    for name, fn in stats_of.items():
        w = args.window
        val_stat = [FD.trailing_mean(fn(e, r), w) for e, r in zip(val, r_val, strict=True)]
        limit = FD.threshold(val_stat, args.far)
        test_stat = [FD.trailing_mean(fn(e, r), w) for e, r in zip(test, r_test, strict=True)]
        far_test = float(np.mean(np.concatenate(test_stat) > limit))
        per_fault: dict[int, dict[str, object]] = {}
        for e, r in zip(faulty, r_fault, strict=True):
            stat = FD.trailing_mean(fn(e, r), w)
            onset = max(0, int(e["onset"]) - 1)  # residual rows start at frame 1
            rate, delay = FD.detect(stat, onset, limit)
            d = per_fault.setdefault(int(e["fault"]), {"rates": [], "delays": []})
            d["rates"].append(rate)  # type: ignore[union-attr]
            d["delays"].append(delay)  # type: ignore[union-attr]
        table = {}
        for f, d in sorted(per_fault.items()):
            delays = [x for x in d["delays"] if x is not None]  # type: ignore[union-attr]
            table[f] = {"detection_rate": float(np.mean(d["rates"])),  # type: ignore[arg-type]
                        "delay_min": float(np.mean(delays)) * tep.SIM_STEP_H * 60 if delays else None,
                        "missed_episodes": sum(x is None for x in d["delays"])}  # type: ignore[union-attr]
        results[name] = {"threshold": limit, "far_validation": args.far, "far_test": far_test,
                         "mean_detection_rate": float(np.mean([v["detection_rate"] for v in table.values()])),
                         "faults": table}
        methods[name] = (limit, far_test)
        say(f"{name}: mean detection rate {results[name]['mean_detection_rate']:.3f}, "  # type: ignore[index]
            f"false alarms on unseen normal episodes {far_test:.3%}")
    return {"model": MODEL, "pca_components": int(pca.axes.shape[1]), "window_frames": args.window,
            "far": args.far, "episodes": {"train": len(train), "validation": len(val), "test_normal": len(test),
                                          "per_fault": args.fault_episodes},
            "seeds": {"train": SEED_TRAIN, "validation": SEED_VAL, "test_normal": SEED_TEST, "faults": args.fault_seed},
            "methods": results}


def print_table(res: dict) -> None:
    names = list(res["methods"])
    print("| IDV | " + " | ".join(f"{n} rate / delay (min)" for n in names) + " |")
    print("|---|" + "---|" * len(names))
    for f in range(1, 21):
        cells = []
        for n in names:
            v = res["methods"][n]["faults"][str(f)] if str(f) in res["methods"][n]["faults"] else \
                res["methods"][n]["faults"][f]
            d = "never" if v["delay_min"] is None else f"{v['delay_min']:.1f}"
            cells.append(f"{v['detection_rate']:.3f} / {d}")
        print(f"| {f} | " + " | ".join(cells) + " |")
    print("| **mean** | " + " | ".join(f"**{res['methods'][n]['mean_detection_rate']:.3f}**" for n in names) + " |")
    print("| false alarms, unseen normal | " + " | ".join(f"{res['methods'][n]['far_test']:.2%}" for n in names)
          + " |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ws", type=Path, default=Path("/work/faults-ws"))
    p.add_argument("--data", type=Path, default=Path("/work/faults-data"))
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "faults.json")
    p.add_argument("--train-episodes", type=int, default=20)
    p.add_argument("--val-episodes", type=int, default=10)
    p.add_argument("--fault-episodes", type=int, default=3)
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--fault-seed", type=int, default=SEED_FAULT,
                   help="fault episodes seed (503: the table reported; another: a confirmation on unseen faults)")
    p.add_argument("--window", type=int, default=10, help="frames the statistics are averaged over")
    p.add_argument("--far", type=float, default=0.01, help="false-alarm rate the thresholds are set at")
    p.add_argument("--train-only", action="store_true")
    a = p.parse_args(argv)
    ws = workspace(a.ws.resolve(), a.data.resolve(), a)
    train_model(ws, a)
    if a.train_only:
        return 0
    res = evaluate(ws, a.data.resolve(), a)
    given = argv if argv is not None else sys.argv[1:]
    res["command"] = "PYTHONPATH=src python bench/fault_bench.py " + " ".join(given)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1))
    print_table(json.loads(json.dumps(res)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
