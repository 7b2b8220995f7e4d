"""Many writers: mixed commands per second and lock-wait p99 with 1, 4 and 8 processes; decisions/s.

    .venv/bin/python bench/concurrency_bench.py [--seconds S] [--decisions N] [--repeat R] [--skip-mixed]
                                                [--postgres URL | --sqlite-only]
    .venv/bin/python bench/concurrency_bench.py --coordinator [--decisions N] [--repeat R] [--src DIR]...

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

Part 3 (``--coordinator``) measures decisions per second through the coordinator of a
consortium (issue 22): a coordinator process (``onshore coordinator serve``, SQLite) and 1, then
8, client processes, each a site's ``CoordinatorClient.decide`` in a loop (a signed request over
HTTPS with mutual TLS; Cedar, the log-signed decision entry and the signed decision back). With
``--src DIR`` (repeatable) each round runs every given tree (its ``src`` folder: e.g. an export
of main beside this one), interleaved, so a baseline and a change are measured side by side.
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


def _coordinator_client(kit_dir: str, dataset: str, n: int, go: str, out: str) -> None:
    """One client process: ``n`` decisions through the coordinator once file ``go`` exists (every
    client has warmed up by then: on a loaded machine starting 8 interpreters takes seconds)."""
    from onshore.parties.client import CoordinatorClient
    from onshore.parties.kit import load_kit

    client = CoordinatorClient(load_kit(Path(kit_dir)), quiet=True)
    client.decide("read", dataset, "sakai", "fine-tuning")  # warm up: imports, TLS context
    Path(out + ".ready").touch()
    while not Path(go).exists():
        time.sleep(0.001)
    t = time.time()
    for _ in range(n):
        client.decide("read", dataset, "sakai", "fine-tuning")
    Path(out).write_text(json.dumps({"start": t, "end": time.time()}))


def coordinator_decisions(srcs: list[Path], n: int, repeat: int, clients: tuple[int, ...] = (1, 8)) -> None:
    """Decisions/s through a coordinator per tree in ``srcs`` and client count, interleaved."""
    from conftest import POLICY_JP
    from onshore.parties.client import CoordinatorClient
    from onshore.parties.local import LocalConsortium
    from onshore.residency.policy import parse_policy

    deps: dict[Path, tuple[LocalConsortium, dict[str, str]]] = {}
    try:
        for src in srcs:
            env = {**os.environ, "PYTHONPATH": str(src)}
            dep = LocalConsortium.provision(Path(tempfile.mkdtemp(prefix="onshore-cb-coord-")) / "dep")
            dep.start("coordinator:coordinator", env={"PYTHONPATH": str(src)})
            deps[src] = (dep, env)
            CoordinatorClient(dep.kit("member:kansai-robotics"), quiet=True).consent("d0", parse_policy(POLICY_JP))
        got: dict[tuple[Path, int], list[float]] = {(s, k): [] for s in srcs for k in clients}
        for _ in range(repeat):
            for k in clients:
                for src in srcs:
                    dep, env = deps[src]
                    outs = [dep.root / f"c{i}.json" for i in range(k)]
                    go = dep.root / "go"
                    for f in [go, *outs, *(o.with_suffix(".json.ready") for o in outs)]:
                        f.unlink(missing_ok=True)
                    kit = str(dep.kit("site:sakai").folder)
                    procs = [subprocess.Popen([sys.executable, __file__, "--as-client", kit, "d0", str(n // k), str(go),
                                               str(o)], env=env) for o in outs]
                    while not all(o.with_suffix(".json.ready").exists() for o in outs):
                        if any(p.poll() not in (None, 0) for p in procs):
                            raise SystemExit("a client process failed")
                        time.sleep(0.01)
                    start_at = time.time()
                    go.touch()
                    if any(p.wait() != 0 for p in procs):
                        raise SystemExit("a client process failed")
                    ends = [json.loads(o.read_text())["end"] for o in outs]
                    got[(src, k)].append(k * (n // k) / (max(ends) - start_at))
        for k in clients:
            for src in srcs:
                xs = got[(src, k)]
                label = f"decisions/s, {k} client process(es), {src}"
                print(f"  {label:58s} {min(xs):8,.0f} / {statistics.median(xs):8,.0f} / {max(xs):8,.0f}")
        for src in srcs:
            dep, env = deps[src]
            size = CoordinatorClient(dep.kit("site:sakai"), quiet=True).health()["ledger_size"]
            print(f"  ledger of {src}: {size} entries")
    finally:
        for dep, _ in deps.values():
            dep.stop()


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
    ap.add_argument("--sqlite-only", action="store_true", help="no PostgreSQL figures")
    ap.add_argument("--coordinator", action="store_true",
                    help="only the decisions through a coordinator with 1 and 8 client processes")
    ap.add_argument("--src", type=Path, action="append",
                    help="with --coordinator: an onshore src folder to measure (repeatable; default: this tree's)")
    ap.add_argument("--as-client", nargs=5, metavar=("KIT", "DATASET", "N", "GO", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.as_client:
        kit, dataset, n, go, out = args.as_client
        _coordinator_client(kit, dataset, int(n), go, out)
        return
    print(f"CPU cores: {os.cpu_count()}; load average now {os.getloadavg()[0]:.1f}")
    if args.coordinator:
        srcs = [p.resolve() for p in (args.src or [ROOT / "src"])]
        ceiling = [ed25519_ceiling() for _ in range(args.repeat)]
        print(f"== coordinator (SQLite): {args.decisions} per run, {args.repeat} runs, min / median / max")
        print(f"  {'Ed25519 signing alone, one core (the ceiling)':58s} {min(ceiling):8,.0f} / "
              f"{statistics.median(ceiling):8,.0f} / {max(ceiling):8,.0f}")
        coordinator_decisions(srcs, args.decisions, args.repeat)
        print(f"load average now {os.getloadavg()[0]:.1f}")
        return
    pg, server = (None, None) if args.sqlite_only else _postgres(args)
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
