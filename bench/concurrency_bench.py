"""Many writers: mixed commands per second and lock-wait p99 with 1, 4 and 8 processes; decisions/s.

    .venv/bin/python bench/concurrency_bench.py [--seconds S] [--decisions N] [--repeat R] [--skip-mixed]
                                                [--postgres URL]

Part 1 runs tests/_workload.py (ingest with same-name collisions, copy, read, policy check,
checkpoint, withdraw; each a real library call as the CLI makes it) in 1, 4 and 8 worker
processes on one workspace for S seconds, on SQLite and, when a server is given or initdb/pg_ctl
are on PATH, on PostgreSQL; it prints operations per second and the p50/p99 of the time each
operation waited for write turns. Part 2 measures recorded decisions per second through
``Workspace.decide`` (decide, sign the entry, append it: the function `onshore policy check`
calls) and through ``Workspace.decide_many`` (`onshore policy check-many`: 100 decisions a
transaction), and signed appends per second through ``Workspace.record``, each with 1 writer,
8 writer threads in one process (their appends are group-committed) and 8 writer processes,
beside the Ed25519 signing ceiling of one core; each figure R times, interleaved, min / median /
max. Goal (issue 7): >= 10,000/s each where the ceiling allows.
Figures depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import statistics
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


def _writer(ws: Workspace, what: str, n: int, me: int = 0) -> None:
    """``n`` decisions (``Workspace.decide``), batched decisions (``decide_many``, 100 a call) or
    signed appends (``Workspace.record``): each a function a command or job calls."""
    reqs = _requests(100)
    if what == "decide":
        for i in range(n):
            ws.decide(reqs[i % 100])
    elif what == "decide_many":
        for i in range(0, n, 100):
            ws.decide_many(reqs[:min(100, n - i)])
    else:
        for i in range(n):
            ws.record("decision", "site:sakai", {"writer": me, "i": i})


def _process_writer(ws_path: str, what: str, n: int, me: int, start: mp.Event, out: mp.Queue) -> None:  # type: ignore[type-arg]
    with Workspace.open(Path(ws_path)) as ws:
        _writer(ws, what, 1, me)  # warm up: connections, policy set, signing key
        start.wait()
        _writer(ws, what, n, me)
        out.put(me)


def _in_threads(ws_path: Path, what: str, n: int) -> float:
    with Workspace.open(ws_path) as ws:
        _writer(ws, what, 1)
        threads = [threading.Thread(target=_writer, args=(ws, what, n // 8, i)) for i in range(8)]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        return 8 * (n // 8) / (time.perf_counter() - t)


def _in_processes(ws_path: Path, what: str, n: int) -> float:
    start, out = mp.Event(), mp.Queue()
    procs = [mp.Process(target=_process_writer, args=(str(ws_path), what, n // 8, i, start, out)) for i in range(8)]
    for p in procs:
        p.start()
    time.sleep(3)  # let them open the workspace and warm up
    t = time.perf_counter()
    start.set()
    for p in procs:
        p.join()
    rate = 8 * (n // 8) / (time.perf_counter() - t)
    if sorted(out.get() for _ in procs) != list(range(8)):
        raise SystemExit("a writer process failed")
    return rate


def _one_writer(ws_path: Path, what: str, n: int) -> float:
    with Workspace.open(ws_path) as ws:
        _writer(ws, what, 1)
        t = time.perf_counter()
        _writer(ws, what, n)
        return n / (time.perf_counter() - t)


FIGURES = [
    ("recorded decisions/s, 1 writer (Workspace.decide)", _one_writer, "decide"),
    ("recorded decisions/s, 1 writer (decide_many, 100 a call)", _one_writer, "decide_many"),
    ("signed appends/s, 1 writer (Workspace.record)", _one_writer, "record"),
    ("recorded decisions/s, 8 writer threads (group commit)", _in_threads, "decide"),
    ("signed appends/s, 8 writer threads (group commit)", _in_threads, "record"),
    ("recorded decisions/s, 8 writer processes", _in_processes, "decide"),
    ("signed appends/s, 8 writer processes", _in_processes, "record"),
]


def decisions(root: Path, n: int, repeat: int, urls: dict[str, str]) -> None:
    """Each figure ``repeat`` times, the figures interleaved (so that load falls on all alike)."""
    ws_path = make_workspace(root, **urls)
    got: dict[str, list[float]] = {label: [] for label, _, _ in FIGURES}
    for _ in range(repeat):
        for label, run, what in FIGURES:
            got[label].append(run(ws_path, what, n))
    for label, xs in got.items():
        print(f"  {label:58s} {min(xs):8,.0f} / {statistics.median(xs):8,.0f} / {max(xs):8,.0f}")
    with Workspace.open(ws_path) as ws:
        ws.verify_ledger()


def ed25519_ceiling() -> float:
    """Signatures per second of one core over a decision entry's size (about 420 bytes)."""
    key, sample = Ed25519PrivateKey.generate(), b"x" * 420
    t = time.perf_counter()
    for _ in range(20_000):
        key.sign(sample)
    return 20_000 / (time.perf_counter() - t)


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
    ap.add_argument("--decisions", type=int, default=4000, help="decisions or appends per run of each figure")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each decision figure (min / median / max)")
    ap.add_argument("--skip-mixed", action="store_true", help="only the decision and append figures")
    ap.add_argument("--postgres", help="a PostgreSQL server URL (default: start one if initdb is on PATH)")
    args = ap.parse_args()
    print(f"CPU cores: {os.cpu_count()}; load average now {os.getloadavg()[0]:.1f}")
    pg, server = _postgres(args)
    backends = [("sqlite", lambda: {})] + ([("postgresql", lambda: _pg_urls(pg))] if pg else [])
    try:
        for name, urls in backends:
            ceiling = [ed25519_ceiling() for _ in range(args.repeat)]
            print(f"== {name}: {args.decisions} per run, {args.repeat} runs, min / median / max; "
                  f"goal >= 10,000/s each")
            print(f"  {'Ed25519 signing alone, one core (the ceiling)':58s} {min(ceiling):8,.0f} / "
                  f"{statistics.median(ceiling):8,.0f} / {max(ceiling):8,.0f}")
            decisions(Path(tempfile.mkdtemp(prefix="onshore-cb-")), args.decisions, args.repeat, urls())
            if args.skip_mixed:
                continue
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
