"""Why reach-v3 fails through noisy sensors: how close the tool centre gets to the goal.

    PYTHONPATH=src python bench/reach_margin.py --ws /work/results-ws-pool --model mt10-nc-h8-more \
        [--site osaka] [--episodes 12] [--seed 9011]

Meta-World's reach-v3 succeeds when the tool centre (between the finger pads) is within 5 cm of
the goal, but the observation reports the hand (end effector), which sits a few centimetres from
the tool centre. For each episode this prints, for the model and the scripted expert through the
same sensors (``--noise 0.01 --quantize``), the closest the reported hand and the tool centre came
to the goal (a successful episode ends at its first success frame, as in ``onshore eval``, so its
closest approach is where it crossed 5 cm). Validation episodes by default (seed 9011), never the evaluation seed.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ws", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--site", default="osaka")
    ap.add_argument("--purpose", default="foundation-pretraining")
    ap.add_argument("--episodes", type=int, default=12)
    ap.add_argument("--seed", type=int, default=9011)
    a = ap.parse_args()

    from onshore.eval import metaworld_eval
    from onshore.sim import registry
    from onshore.sim.rollout import EpisodeSpec, Step, rollout
    from onshore.sim.sensors import SensorOptions
    from onshore.workspace import Workspace
    from onshore.workspace.models import policy_factory

    with Workspace.open(a.ws) as ws:
        factory = policy_factory(ws, a.model, a.site, "sawyer-metaworld", a.purpose)
    env = registry.make_env("metaworld")
    trace: list[np.ndarray] = []
    plain_step = env.step

    def step(action: np.ndarray) -> Step:  # the true positions, beside what the sensors report
        s = plain_step(action)
        mw: Any = env._env  # noqa: SLF001 (a diagnostic reads the simulator's own state)
        trace.append(np.r_[s.state[:3], mw.tcp_center, mw._target_pos])  # noqa: SLF001
        return s

    env.step = step  # type: ignore[method-assign]
    sensors = SensorOptions(noise=0.01, quantize=True)
    print(f"reach-v3, {a.episodes} episodes, seed {a.seed}, noise 0.01 + 16-bit quantisation; distances in cm")
    for who in ("model", "expert"):
        ok = 0
        rows = []
        for i in range(a.episodes):
            trace.clear()
            agent = factory() if who == "model" else env.expert(env.dt)
            ep = rollout(env, agent, EpisodeSpec("metaworld", "reach-v3", i, i, a.seed), sensors=sensors,
                         after_success=metaworld_eval.AFTER_SUCCESS)
            t = np.array(trace)
            hand = np.linalg.norm(t[:, 0:3] - t[:, 6:9], axis=1).min()
            tcp = np.linalg.norm(t[:, 3:6] - t[:, 6:9], axis=1).min()
            offset = np.linalg.norm(t[:, 0:3] - t[:, 3:6], axis=1).mean()
            ok += ep.succeeded
            rows.append(f"  {'success' if ep.succeeded else 'failure'}: hand to goal {100 * hand:.1f}, "
                        f"tool centre to goal {100 * tcp:.1f}, hand to tool centre {100 * offset:.1f}")
        print(f"{who}: {ok}/{a.episodes} succeed (closest approach per episode; success is tool centre <= 5.0)")
        print("\n".join(rows))


if __name__ == "__main__":
    main()
