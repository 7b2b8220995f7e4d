"""Serving latency: request-to-action over loopback for the `small` model, vs in-process act.

The server runs in this process (its event loop and two inference threads, torch on one thread
each); the clients run in a separate process (one thread per client, blocking ``Client``), each
sending one state per period at the target rate and timing send -> action received. Reports
p50/p99/p99.9 at 100 Hz for 1 and 10 clients, the highest rate (1 client, and 10 clients) whose
p99 stays within the period, and the same model + envelope called in process.

The model has random weights of the `small` size (latency does not depend on training); the
workspace, tokens, envelope and wire are the real ones. Goal (issue 11): p99 <= 10 ms at 100 Hz
with 10 clients. Usage: python bench/serve_bench.py [--seconds 4]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

EMB_TOML = """name = "bench-arm"
control_hz = 100
"""


def client_main(url: str, token: str, n: int, hz: float, seconds: float) -> None:
    from onshore.serve import Client

    lat: list[list[float]] = [[] for _ in range(n)]
    rng = np.random.default_rng(0)
    states = rng.uniform(-1, 1, size=(64, 39)).astype(np.float32)

    def run(i: int) -> None:
        with Client(url, token, "bench-arm") as c:
            c.reset("reach the goal")
            period = 1.0 / hz
            t_next = time.perf_counter() + (i / n) * period  # spread the clients over the period
            k = 0
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                now = time.perf_counter()
                if now < t_next:
                    time.sleep(t_next - now)
                t0 = time.perf_counter()
                c.act(states[k % 64])
                lat[i].append((time.perf_counter() - t0) * 1e3)
                k += 1
                t_next += period
                if time.perf_counter() > t_next + period:  # behind: do not burst to catch up
                    t_next = time.perf_counter()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    all_ = [x for row in lat for x in row]
    print(json.dumps({"n": len(all_), "achieved_hz": len(all_) / seconds / n, "lat": all_}))


def pct(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs)
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)),
            "p99.9": float(np.percentile(a, 99.9))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--client", nargs=5, metavar=("URL", "TOKEN", "N", "HZ", "SECONDS"))
    args = ap.parse_args()
    if args.client:
        url, token, n, hz, seconds = args.client
        client_main(url, token, int(n), float(hz), float(seconds))
        return

    import torch

    from onshore.model.network import EmbodimentSpec, FoundationModel, model_config, state_groups
    from onshore.model.policy import FORMAT, LoadedModel, ModelPolicy
    from onshore.serve import envelope as E
    from onshore.serve import service, tokens
    from onshore.serve.loading import ServedModel
    from onshore.serve.server import ServerLimits
    from onshore.telemetry.embodiment import Channel, Embodiment
    from onshore.workspace import Workspace, registry

    torch.set_num_threads(1)
    emb = Embodiment("bench-arm", 100.0, tuple(Channel(f"s{i}", "", -10.0, 10.0) for i in range(39)),
                     tuple(Channel(f"a{i}", "", -1.0, 1.0, 20.0) for i in range(4)))
    cfg = model_config("small")
    spec = EmbodimentSpec(emb.name, 39, 4, state_groups(emb, cfg.max_group), (0.0,) * 39, (1.0,) * 39,
                          (-1.0,) * 4, (1.0,) * 4)
    torch.manual_seed(0)
    net = FoundationModel(cfg, [spec]).eval()
    loaded = LoadedModel(net, {"format": FORMAT, "text_encoder": "hashed-ngram"},
                         {"reach the goal": np.random.default_rng(1).standard_normal(cfg.text_dim).astype(np.float32)})
    params = sum(p.numel() for p in net.parameters())

    tmp = Path(tempfile.mkdtemp(prefix="onshore-serve-bench-"))
    ws = Workspace.init(tmp / "ws", "bench")
    registry.add_site(ws, "edge", "JP", "serve")
    token = tokens.issue(ws, "edge", "bench")
    served = ServedModel("small-random", "edge", "0" * 64, {}, loaded, {emb.name: emb}, "bench")

    # in process: the same model and envelope, one call per step
    p = ModelPolicy(loaded, emb.name)
    p.reset("reach the goal")
    env = E.Envelope(E.Limits.from_embodiment(emb))
    rng = np.random.default_rng(0)
    states = rng.uniform(-1, 1, size=(64, 39)).astype(np.float32)
    inproc = []
    for k in range(600):
        t0 = time.perf_counter()
        env.command(p.act(states[k % 64]))
        inproc.append((time.perf_counter() - t0) * 1e3)
    inproc = inproc[100:]

    print(f"model: small, {params:,} parameters, random weights; torch threads 1; server: 2 inference threads")
    print(f"in-process act + envelope: p50 {pct(inproc)['p50']:.2f} ms  p99 {pct(inproc)['p99']:.2f} ms  "
          f"p99.9 {pct(inproc)['p99.9']:.2f} ms")
    # latency, not the safety limits: the rate sweep goes above the arm's 100 Hz, and ten clients
    # share one token (one machine's envelope)
    limits = ServerLimits(act_hz=100_000.0, act_burst=100.0, max_connections_per_client=64)
    with service.start(ws, "small-random", "edge", port=0, loader=lambda *_: served, limits=limits) as run:
        def clients(n: int, hz: float) -> dict:
            out = subprocess.run([sys.executable, __file__, "--client", run.url, token, str(n), str(hz),
                                  str(args.seconds)], capture_output=True, text=True, timeout=args.seconds * 10 + 60)
            if out.returncode != 0:
                raise SystemExit(out.stderr)
            return json.loads(out.stdout)

        for n in (1, 10):
            r = clients(n, 100.0)
            q = pct(r["lat"][20:])
            print(f"loopback, {n:2d} client(s) at 100 Hz: p50 {q['p50']:.2f} ms  p99 {q['p99']:.2f} ms  "
                  f"p99.9 {q['p99.9']:.2f} ms  ({r['n']} requests, {r['achieved_hz']:.0f} Hz achieved per client; "
                  f"network/in-process p50 ratio {q['p50'] / pct(inproc)['p50']:.1f}x)")
        for n in (1, 10):
            best = None
            for hz in (100, 200, 400, 800, 1600):
                r = clients(n, float(hz))
                q = pct(r["lat"][20:])
                ok = q["p99"] <= 1e3 / hz and r["achieved_hz"] >= 0.95 * hz
                print(f"  {n:2d} client(s) at {hz:4d} Hz: p99 {q['p99']:.2f} ms (period {1e3 / hz:.2f} ms), "
                      f"achieved {r['achieved_hz']:.0f} Hz {'ok' if ok else 'MISSED'}")
                if not ok:
                    break
                best = hz
            print(f"highest sustained rate, {n} client(s): {best or '<100'} Hz (p99 within the period)")
    ws.close()


if __name__ == "__main__":
    main()
