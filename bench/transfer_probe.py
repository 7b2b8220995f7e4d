"""Where does a pooled + fine-tuned model go wrong on a task its own-data twin solves? (issue 18 section 0)

    PYTHONPATH=src python bench/transfer_probe.py --ws /work/results-ws-pool --base s0-pool-small \\
        --pooled s0-pft3-all --own s0-own3-lr3e-04 --demos /work/results-data/split0-demos-10 --skip 3

Three candidate causes of negative transfer, each measured, printed as figures:

1. **Task text**: the cosine of each fine-tune task's text vector (the base's encoder) to the
   nearest pre-training task's. A near-duplicate (e.g. "push" vs "push-wall") can pull the trunk
   toward the wrong behaviour; a far one leaves the task token uninformative.
2. **Normalisation statistics**: the fine-tune demonstrations' per-channel mean and spread against
   the base's statistics (fitted on the pre-training tasks): shift in base standard deviations and
   spread ratio. A channel whose spread is a small fraction of the base's reaches the stem squashed
   (object and goal positions of a new task); a large shift puts it where the base never saw data.
3. **Action chunk**: open-loop error of each model's predicted chunk against the demonstrations'
   actions (smooth-L1 units of the training loss, actions in [-1, 1]; and the first action's mean
   absolute error), on demonstration episodes neither model trained on (``--skip``: the first k
   episodes per task were the training demonstrations).

The models are opened through the workspace's key service (recorded reads at ``--site``); the
demonstrations are read from an ``onshore sim generate`` folder. Nothing is written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch


def _frames(folder: Path, state_dim: int, action_dim: int) -> Any:
    from onshore.train.data import read_frames

    tables = [pq.read_table(p) for p in sorted(folder.glob("*.parquet"))]
    if not tables:
        raise SystemExit(f"{folder}: no parquet files (an `onshore sim generate` folder is expected)")
    import pyarrow as pa

    t = pa.concat_tables(tables)
    return read_frames(t.to_batches(), t.num_rows, folder.name, state_dim, action_dim, {}, 0.0)


def _unseen_rows(fr: Any, skip: int) -> np.ndarray:
    """Rows of episodes past the first ``skip`` of each task (episodes in generation order)."""
    starts = np.flatnonzero(np.r_[True, fr.ep_start[1:] != fr.ep_start[:-1]])
    rank: dict[int, int] = {}
    keep = np.zeros(len(fr.state), bool)
    for i, s in enumerate(starts):
        task = int(fr.task_local[s])
        r = rank.get(task, 0)
        rank[task] = r + 1
        if r >= skip:
            end = starts[i + 1] if i + 1 < len(starts) else len(fr.state)
            keep[s:end] = True
    return np.flatnonzero(keep)


def chunk_errors(loaded: Any, emb: str, fr: Any, rows: np.ndarray) -> dict[str, tuple[float, float]]:
    """Per task: (mean smooth-L1 over the masked chunk, first action's mean absolute error), scaled units."""
    import torch.nn.functional as F

    from onshore.train.data import windows

    cfg, spec = loaded.config, loaded.model.specs[emb]
    out = {}
    for t_i, task in enumerate(fr.tasks):
        sel = rows[fr.task_local[rows] == t_i]
        if not len(sel):
            continue
        w = windows(fr, sel, cfg.history, cfg.chunk)
        state = torch.from_numpy(spec.normalise_state(w["state"]))
        target = torch.from_numpy(spec.scale_action(w["action"]))
        mask = torch.from_numpy(w["action_mask"].astype(np.float32))
        vec = torch.from_numpy(np.repeat(loaded.task_vector(task)[None], len(sel), 0))
        prev = torch.from_numpy(spec.scale_action(w["prev_action"]) * w["prev_known"][..., None])
        known = torch.from_numpy(w["prev_known"].astype(np.float32))
        with torch.no_grad():
            pred, _ = loaded.model.predict(emb, state, vec, prev, known)
        la = F.smooth_l1_loss(pred, target, reduction="none", beta=cfg.huber_beta).mean(-1)
        chunk = float(((la * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean())
        first = float((pred[:, 0] - target[:, 0]).abs().mean())
        out[task] = (chunk, first)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ws", type=Path, required=True)
    p.add_argument("--site", default="osaka")
    p.add_argument("--base", required=True, help="the pooled pre-trained model")
    p.add_argument("--pooled", help="the base fine-tuned on the demonstrations (with --own: part 3)")
    p.add_argument("--own", help="the own-data twin (same demonstrations, no pre-training)")
    p.add_argument("--demos", type=Path, required=True, help="onshore sim generate folder of demonstrations")
    p.add_argument("--skip", type=int, default=3, help="episodes per task the models trained on (not probed)")
    p.add_argument("--embodiment", default="sawyer-metaworld")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = p.parse_args(argv)

    from onshore.workspace import Workspace, models

    ws = Workspace.open(a.ws)
    loaded = {}
    for role, name in (("base", a.base), ("pooled", a.pooled), ("own", a.own)):
        if name is None:
            continue
        row = models.get_model(ws, name)
        loaded[role] = models.load_model_for(ws, name, a.site, "read", row["purpose"])
    emb = a.embodiment
    base = loaded["base"]
    spec0 = base.model.specs[emb]
    fr = _frames(a.demos, spec0.state_dim, spec0.action_dim)
    rows = _unseen_rows(fr, a.skip)
    report: dict[str, Any] = {"base": a.base, "pooled": a.pooled, "own": a.own, "demos": str(a.demos),
                              "skip": a.skip, "unseen_frames": int(len(rows))}

    # 1. task text
    print("1. task text: cosine to the nearest pre-training tasks (the base's encoder)")
    pre = sorted(base.task_vectors)
    mat = np.stack([base.task_vectors[t] for t in pre])
    mat = mat / np.linalg.norm(mat, axis=1, keepdims=True)
    report["text"] = {}
    for task in fr.tasks:
        v = base.task_vector(task)
        cos = mat @ (v / np.linalg.norm(v))
        near = np.argsort(-cos)[:3]
        report["text"][task] = [(pre[i], float(cos[i])) for i in near]
        print(f"   {task:28s} " + ", ".join(f"{pre[i]} {cos[i]:.3f}" for i in near))

    # 2. normalisation statistics
    print("2. state statistics of the demonstrations against the base's (per channel; groups named)")
    names = {i: g for g, ix in spec0.groups for i in ix}
    m0, s0 = np.array(spec0.state_mean), np.array(spec0.state_std)
    report["stats"] = {}
    for t_i, task in enumerate(fr.tasks):
        st = fr.state[fr.task_local == t_i].astype(np.float64)
        z = (st.mean(0) - m0) / s0
        ratio = st.std(0) / s0
        moving = ratio > 1e-6  # channels constant in the task (padding) say nothing of the spread
        worst_z = int(np.argmax(np.abs(z)))
        squashed = np.flatnonzero(moving & (ratio < 0.1))
        report["stats"][task] = {"max_shift_sd": float(np.abs(z).max()), "max_shift_channel": worst_z,
                                 "median_spread_ratio": float(np.median(ratio[moving])) if moving.any() else None,
                                 "squashed_channels": [int(c) for c in squashed]}
        print(f"   {task:28s} max shift {np.abs(z).max():5.2f} sd (channel {worst_z}, {names[worst_z]}), "
              f"median spread ratio {np.median(ratio[moving]):.3f}, channels under 0.1x the base's spread: "
              f"{len(squashed)} ({', '.join(sorted({names[int(c)] for c in squashed})) or '-'})")

    # 3. action chunks, open loop
    if a.pooled is None or a.own is None:
        print("3. open-loop action chunks: skipped (give --pooled and --own)")
        if a.json:
            a.json.write_text(json.dumps(report, indent=1))
        return 0
    print(f"3. open-loop action-chunk error on demonstration episodes past the first {a.skip} per task "
          "(smooth-L1 as trained; first action MAE), scaled units")
    errs = {role: chunk_errors(loaded[role], emb, fr, rows) for role in ("pooled", "own")}
    report["chunk"] = {r: {t: list(v) for t, v in e.items()} for r, e in errs.items()}
    for task in fr.tasks:
        if task not in errs["own"]:
            continue
        (pc, pf), (oc, of) = errs["pooled"][task], errs["own"][task]
        print(f"   {task:28s} pooled {pc:.4f} / {pf:.3f}   own {oc:.4f} / {of:.3f}   pooled/own {pc / oc:5.2f}x")
    if a.json:
        a.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
