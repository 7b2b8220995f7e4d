"""Serving latency: request-to-action over loopback for the `small` model, vs in-process act.

The server runs in this process (its event loop and two inference threads, torch on one thread
each); the clients run in a separate process (one thread per client, blocking ``Client``), each
sending one state per period at the target rate and timing send -> action received. Reports
p50/p99/p99.9 and the rate achieved at 100 Hz for 1 and 10 clients, with batching off (one forward
pass per request, the server before issue 22) and on, interleaved round by round in one run; the
same model + envelope called in process, and one forward pass for 10 sessions; with ``--sweep``,
the highest rate (1 client, and 10 clients) whose p99 stays within the period.

The model has random weights of the `small` size (latency does not depend on training); the
workspace, tokens, envelope and wire are the real ones. Goal (issues 11, 22): p99 <= 10 ms at the
full 100 Hz with 10 clients. Usage: python bench/serve_bench.py [--seconds 4] [--repeat 2] [--sweep]
"""

from __future__ import annotations

import argparse
import json
import resource
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
    ap.add_argument("--repeat", type=int, default=2, help="rounds of batching off / on, interleaved")
    ap.add_argument("--threads", type=int, default=2, help="the server's inference threads")
    ap.add_argument("--wait-ms", type=float, default=1.0, help="the batching's gathering bound")
    ap.add_argument("--sweep", action="store_true", help="also find the highest sustained rate (batching on)")
    ap.add_argument("--no-batch", action="store_true", help="measure only the server without batching")
    ap.add_argument("--client", nargs=5, metavar=("URL", "TOKEN", "N", "HZ", "SECONDS"))
    args = ap.parse_args()
    if args.client:
        url, token, n, hz, seconds = args.client
        client_main(url, token, int(n), float(hz), float(seconds))
        return

    import torch

    from onshore.model.network import EmbodimentSpec, FoundationModel, model_config, state_groups
    from onshore.model.policy import FORMAT, LoadedModel, ModelPolicy, act_batch
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

    # in process: the same model and envelope, one call per step; and one forward pass for 10 sessions
    rng = np.random.default_rng(0)
    states = rng.uniform(-1, 1, size=(64, 39)).astype(np.float32)
    ps = [ModelPolicy(loaded, emb.name) for _ in range(10)]
    for p in ps:
        p.reset("reach the goal")
    env = E.Envelope(E.Limits.from_embodiment(emb))
    inproc, batch10 = [], []
    for k in range(600):
        t0 = time.perf_counter()
        env.command(ps[0].act(states[k % 64]))
        inproc.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        act_batch(ps, [states[(k + i) % 64] for i in range(10)])
        batch10.append((time.perf_counter() - t0) * 1e3)
    inproc, batch10 = inproc[100:], batch10[100:]
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    print(f"model: small, {params:,} parameters, random weights; torch threads 1; server: {args.threads} inference "
          f"thread(s), batching waits at most {args.wait_ms:g} ms; "
          f"load average {' '.join(load)}")
    print(f"in-process act + envelope (1 session): p50 {pct(inproc)['p50']:.2f} ms  p99 {pct(inproc)['p99']:.2f} ms")
    print(f"in-process act_batch of 10 sessions:    p50 {pct(batch10)['p50']:.2f} ms  p99 {pct(batch10)['p99']:.2f} ms "
          f"({pct(batch10)['p50'] / pct(inproc)['p50']:.1f}x one act for 10x the work)")
    # latency, not the safety limits: the rate sweep goes above the arm's 100 Hz, and ten clients
    # share one token (one machine's envelope)
    modes = {"off": False} if args.no_batch else {"off": False, "on": True}
    results: dict[tuple[str, int], list[dict]] = {}

    def clients(url: str, n: int, hz: float) -> dict:
        c0, s0, w0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.process_time(), time.perf_counter()
        out = subprocess.run([sys.executable, __file__, "--client", url, token, str(n), str(hz),
                              str(args.seconds)], capture_output=True, text=True, timeout=args.seconds * 10 + 60)
        if out.returncode != 0:
            raise SystemExit(out.stderr)
        c1, s1, w1 = resource.getrusage(resource.RUSAGE_CHILDREN), time.process_time(), time.perf_counter()
        r = json.loads(out.stdout)
        # CPU seconds per wall second: this process (the server; in-process work between runs is none)
        # and the client process
        r["cpu"] = ((s1 - s0) / (w1 - w0), (c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime) / (w1 - w0))
        return r

    # the random model is in no registry either: serve it under its own name as the reference
    service.versions.resolve = lambda _ws, ref: ref
    service.versions.check_usable = lambda *_a, **_k: None

    def start(batch: bool) -> service.Running:
        run = service.start(ws, "small-random", "edge", port=0, loader=lambda *_: served, limits=limits(batch))
        # the random model is in no ledger, so a re-decision of ``serve`` would refuse it: the bench
        # measures serving, the decision is tested elsewhere (its first poll is poll_s after start)
        run.server.recheck = None
        return run

    def limits(batch: bool) -> ServerLimits:
        return ServerLimits(act_hz=100_000.0, act_burst=100.0, max_connections_per_client=64, batch=batch,
                            infer_threads=args.threads, batch_wait_s=args.wait_ms / 1e3)

    for _ in range(args.repeat):
        for mode, batch in modes.items():
            with start(batch) as run:
                for n in (1, 10):
                    r = clients(run.url, n, 100.0)
                    r["lat"] = r["lat"][20:]
                    r["batches"] = dict(sorted(run.server.batcher.stats.sizes.items()))
                    run.server.batcher.stats.sizes.clear()
                    results.setdefault((mode, n), []).append(r)
    print(f"loopback, clients at 100 Hz each, {args.seconds:g} s per run, {args.repeat} round(s) interleaved "
          "(off, on); per round: p50 / p99 / p99.9 ms, achieved Hz per client, the server process's CPU")
    for n in (1, 10):
        for mode in modes:
            rows = []
            for r in results[(mode, n)]:
                q = pct(r["lat"])
                # server CPU per answered act: what a loaded machine cannot hide by starving the server
                per_act = r["cpu"][0] * 1e3 / (r["achieved_hz"] * n)
                rows.append(f"{q['p50']:.2f} / {q['p99']:.2f} / {q['p99.9']:.2f} ms, {r['achieved_hz']:.0f} Hz, "
                            f"server {r['cpu'][0]:.2f} cores = {per_act:.2f} CPU-ms per act")
            sizes = results[(mode, n)][-1]["batches"]
            mean = sum(k * v for k, v in sizes.items()) / max(1, sum(sizes.values()))
            print(f"  {n:2d} client(s), batching {mode:3s}: {'  |  '.join(rows)}   (mean batch {mean:.2f})")
    if args.sweep:
        with start(not args.no_batch) as run:
            for n in (1, 10):
                best = None
                for hz in (100, 200, 400, 800, 1600):
                    r = clients(run.url, n, float(hz))
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
