"""Many writers: mixed commands per second and lock-wait p99 with 1, 4 and 8 processes; decisions/s.

    .venv/bin/python bench/concurrency_bench.py [--seconds S] [--decisions N] [--postgres URL]

Part 1 runs tests/_workload.py (ingest with same-name collisions, copy, read, policy check,
checkpoint, withdraw; each a real library call as the CLI makes it) in 1, 4 and 8 worker
processes on one workspace for S seconds, on SQLite and, when a server is given or initdb/pg_ctl
are on PATH, on PostgreSQL; it prints operations per second and the p50/p99 of the time each
operation waited for write turns. Part 2 measures recorded decisions per second through
``Workspace.decide`` (decide, sign the entry, append it: the function `onshore policy check`
calls) with 1 writer, 8 writer threads in one process (their appends are group-committed) and
8 writer processes, and signed appends per second through ``Workspace.record``, beside the
Ed25519 signing ceiling of one core. Goal (issue 7): >= 10,000/s each where the ceiling allows.
Figures depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from _workload import make_workspace  # noqa: E402
from onshore.residency.pdp import Request  # noqa: E402
from onshore.workspace import Workspace  # noqa: E402


def _pct(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))] if xs else 0.0


def mixed(root: Path, seconds: float, workers: int, urls: dict[str, str]) -> None:
    ws = make_workspace(root, **urls)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    start_at = time.time() + 3 + 1.0 * workers  # every worker warmed up before the timed run
    procs = [subprocess.Popen([sys.executable, str(ROOT / "tests" / "_workload.py"), str(ws), str(seconds), str(i),
                               str(root / f"w{i}.json"), str(start_at)], env=env) for i in range(workers)]
    for p in procs:
        p.wait()
    recs = [r for i in range(workers) for r in json.loads((root / f"w{i}.json").read_text())]
    ok = [r for r in recs if r["ok"]]
    waits = [r["lock_wait"] for r in recs]
    bad = [r for r in recs if r.get("crash") or r.get("error") == "LockTimeout"]
    print(f"  {workers} process(es): {len(recs) / seconds:7.1f} ops/s ({len(ok)} ok, {len(recs) - len(ok)} clean "
          f"refusals, {len(bad)} failures); lock wait p50 {1000 * _pct(waits, .5):6.1f} ms, "
          f"p99 {1000 * _pct(waits, .99):7.1f} ms; op p99 {1000 * _pct([r['seconds'] for r in recs], .99):7.1f} ms")


def _requests(n: int) -> list[Request]:
    return [Request("site:sakai", "read", f"d{i % 50}", "sakai", "fine-tuning") for i in range(n)]


def _decide_loop(ws_path: str, n: int, start: mp.Event, out: mp.Queue) -> None:  # type: ignore[type-arg]
    with Workspace.open(Path(ws_path)) as ws:
        reqs = _requests(100)
        ws.decide(reqs[0])
        start.wait()
        t = time.perf_counter()
        for i in range(n):
            ws.decide(reqs[i % 100])
        out.put(time.perf_counter() - t)


def decisions(root: Path, n: int, urls: dict[str, str]) -> None:
    ws_path = make_workspace(root, **urls)
    with Workspace.open(ws_path) as ws:
        reqs = _requests(100)
        ws.decide(reqs[0])
        t = time.perf_counter()
        for i in range(n):
            ws.decide(reqs[i % 100])
        print(f"  recorded decisions/s, 1 writer (Workspace.decide)            {n / (time.perf_counter() - t):9,.0f}")
        t = time.perf_counter()
        for i in range(n):
            ws.record("decision", "site:sakai", {"i": i})
        print(f"  signed appends/s, 1 writer (Workspace.record)                {n / (time.perf_counter() - t):9,.0f}")

        per = max(1, n // 8)
        threads = [threading.Thread(target=lambda: [ws.decide(reqs[i % 100]) for i in range(per)]) for _ in range(8)]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        rate = 8 * per / (time.perf_counter() - t)
        print(f"  recorded decisions/s, 8 writer threads (group commit)        {rate:9,.0f}")
        before = ws.ledger.size()
        threads = [threading.Thread(target=lambda: [ws.record("decision", "site:sakai", {"i": i}) for i in range(per)])
                   for _ in range(8)]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        dt = time.perf_counter() - t
        assert ws.ledger.size() - before == 8 * per
        print(f"  signed appends/s, 8 writer threads (group commit)            {8 * per / dt:9,.0f}")
    start, out = mp.Event(), mp.Queue()
    procs = [mp.Process(target=_decide_loop, args=(str(ws_path), per, start, out)) for _ in range(8)]
    for p in procs:
        p.start()
    time.sleep(3)  # let them open the workspace
    t = time.perf_counter()
    start.set()
    for p in procs:
        p.join()
    rate = 8 * per / (time.perf_counter() - t)
    print(f"  recorded decisions/s, 8 writer processes                     {rate:9,.0f}")
    with Workspace.open(ws_path) as ws:
        ws.verify_ledger()


def _postgres(args: argparse.Namespace) -> tuple[str | None, object]:
    if args.postgres:
        return args.postgres, None
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not initdb or not pg_ctl:
        return None, None
    data = Path(tempfile.mkdtemp(prefix="onshore-bench-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:
        run_as = ["runuser", "-u", "postgres", "--"]
        shutil.chown(data, "postgres", "postgres")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run([*run_as, initdb, "-D", str(data / "db"), "-A", "trust", "-U", "onshore"], check=True,
                   capture_output=True)
    subprocess.run([*run_as, pg_ctl, "-D", str(data / "db"), "-l", str(data / "log"), "-w", "-o",
                    f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True)
    return f"postgresql://onshore@127.0.0.1:{port}/postgres", (run_as, pg_ctl, data)


def _pg_urls(base: str) -> dict[str, str]:
    import uuid

    import psycopg

    names = ["b_" + uuid.uuid4().hex[:10] for _ in range(2)]
    with psycopg.connect(base, autocommit=True) as conn:
        for n in names:
            conn.execute(f"CREATE DATABASE {n}")
    stem = base.rsplit("/", 1)[0]
    return {"catalog_url": f"{stem}/{names[0]}", "ledger_url": f"{stem}/{names[1]}"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--decisions", type=int, default=4000)
    ap.add_argument("--postgres", help="a PostgreSQL server URL (default: start one if initdb is on PATH)")
    args = ap.parse_args()
    key, sample = Ed25519PrivateKey.generate(), b"x" * 400
    t = time.perf_counter()
    for _ in range(20_000):
        key.sign(sample)
    rate = 20_000 / (time.perf_counter() - t)
    print(f"Ed25519 signing alone, one core (the ceiling for signed appends)  {rate:9,.0f}/s")
    print(f"CPU cores: {os.cpu_count()}; load average now {os.getloadavg()[0]:.1f}")
    pg, server = _postgres(args)
    backends = [("sqlite", lambda: {})] + ([("postgresql", lambda: _pg_urls(pg))] if pg else [])
    try:
        for name, urls in backends:
            print(f"== {name}: decisions through Workspace.decide ({args.decisions} per run)")
            decisions(Path(tempfile.mkdtemp(prefix="onshore-cb-")), args.decisions, urls())
            print(f"== {name}: mixed commands for {args.seconds:g} s")
            for workers in (1, 4, 8):
                mixed(Path(tempfile.mkdtemp(prefix="onshore-cb-")), args.seconds, workers, urls())
    finally:
        if server is not None:
            run_as, pg_ctl, data = server  # type: ignore[misc]
            subprocess.run([*run_as, pg_ctl, "-D", str(data / "db"), "-m", "immediate", "stop"], capture_output=True)
            shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
