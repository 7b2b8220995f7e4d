"""What OPC UA security costs the bridge: one period's Read of the state nodes plus Write of the
action nodes, and the session set-up, with no security, Basic256Sha256 Sign and SignAndEncrypt.

The simulated plant (a Meta-World arm: 39 state nodes, 4 action nodes; every Write steps the
simulator, as in the bridge's loop) runs in a thread of this process, on loopback, a fresh one
for each mode and round (the simulator is one per process, and an arm's episode is 500 steps); the client
is :func:`onshore.serve.opcua.connect` as the bridge uses it, logged in as a user. Modes are
interleaved round by round so that load on a shared machine falls on all alike. Prints, per
mode, the session set-up time and the period's p50 / p99 in ms (min / median / max over rounds).

Usage: python bench/opcua_bench.py [--periods 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _stats import spread  # noqa: E402

MODES = ("none", "sign", "sign-encrypt")


async def one_round(endpoint: str, mapping: dict, mode: str, pki: Path, periods: int) -> tuple[float, list[float]]:
    from asyncua import ua

    from onshore.serve.opcua import Credentials, Security, connect, resolve

    creds = Credentials("bench", "bench-password") if mode != "none" else None
    t = time.perf_counter()
    opc = await connect(endpoint, Security(mode, pki if mode != "none" else None, creds), "bench")
    setup = time.perf_counter() - t
    try:
        nodes = await resolve(opc, {"state": mapping["state"], "action": mapping["action"]})
        lat: list[float] = []
        for i in range(periods):
            t0 = time.perf_counter()
            await opc.read_attributes(nodes["state"], ua.AttributeIds.Value)
            value = 0.1 * np.sin(i / 10)
            await opc.write_values(nodes["action"], [ua.Variant(float(value), ua.VariantType.Double)] * 4)
            lat.append(time.perf_counter() - t0)
    finally:
        await opc.disconnect()
    return setup, lat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--periods", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    from onshore.serve.plant import PlantThread, SimPlant

    setups: dict[str, list[float]] = {m: [] for m in MODES}
    p50: dict[str, list[float]] = {m: [] for m in MODES}
    p99: dict[str, list[float]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for _ in range(args.rounds):
            for mode in MODES:
                plant = SimPlant("metaworld", "reach-v3", seed=1, security="sign" if mode != "none" else "none",
                                 pki=root / "plant-pki", users={"bench": "bench-password"})
                with PlantThread(plant) as pt:
                    setup, lat = asyncio.run(one_round(pt.endpoint, plant.map_dict()["nodes"], mode,
                                                       root / "client-pki", min(args.periods, 450)))
                setups[mode].append(setup)
                p50[mode].append(float(np.percentile(lat, 50)))
                p99[mode].append(float(np.percentile(lat, 99)))
    print(f"OPC UA read (39 state nodes) + write (4 action nodes) per period, loopback, {args.periods} periods x "
          f"{args.rounds} rounds; min / median / max over rounds")
    print(f"{'security':<14} {'session set-up ms':>22} {'period p50 ms':>22} {'period p99 ms':>22}")
    for mode in MODES:
        print(f"{mode:<14} {spread(setups[mode], 1e3, '.1f'):>22} {spread(p50[mode], 1e3, '.2f'):>22} "
              f"{spread(p99[mode], 1e3, '.2f'):>22}")
    base = statistics.median(p50["none"])
    for mode in MODES[1:]:
        print(f"{mode}: median p50 {statistics.median(p50[mode]) / base:.2f}x of none")


if __name__ == "__main__":
    main()
