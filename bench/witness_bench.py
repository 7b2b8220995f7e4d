"""`onshore witness serve` on loopback: add-checkpoint round trip, and racing clients (issue 19).

A real `onshore witness serve` process follows one log (an in-memory RFC 9162 tree signed by a
test key). Sequential: the log grows by a few entries, the client sends the checkpoint with a
consistency proof from the witness's size over one keep-alive connection, and the time to the
cosignature line is measured (each includes the witness's two fsyncs). Racing: C clients send,
at once, checkpoints of different sizes from the same old size; exactly one may win per round.

    .venv/bin/python bench/witness_bench.py [--requests 200] [--clients 4] [--rounds 25]
"""

from __future__ import annotations

import argparse
import http.client
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from onshore.ledger.witness import Witness  # noqa: E402
from onshore.ledger.witness_wire import encode_request  # noqa: E402
from test_witness import Log  # noqa: E402
from test_witness_serve import _start, _stop  # noqa: E402


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    return sorted_values[min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values)) - 1))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=25)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        w = Witness.init("bench.example/w", Path(tmp) / "w")
        log = Log(origin="bench.example/log", key=Ed25519PrivateKey.generate())
        w.trust_log(log.vkey)
        proc, port = _start(Path(tmp) / "w")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            old, times = 0, []
            for i in range(args.requests):
                log.grow_to(log.store.size + 1 + i % 7)
                body = encode_request(old, log.proof(old, log.store.size), log.checkpoint())
                t = time.perf_counter()
                conn.request("POST", "/add-checkpoint", body=body)
                resp = conn.getresponse()
                resp.read()
                times.append(time.perf_counter() - t)
                assert resp.status == 200, resp.status
                old = log.store.size
            conn.close()
            ms = sorted(x * 1000 for x in times)
            print(f"sequential add-checkpoint, {args.requests} requests, tree up to {log.store.size}: "
                  f"p50 {percentile(ms, 50):.2f} ms, p99 {percentile(ms, 99):.2f} ms, max {ms[-1]:.2f} ms")

            wins = 0
            t0 = time.perf_counter()
            for _ in range(args.rounds):
                base = w.logs()[log.origin].size  # whichever client won the last round
                log.grow_to(base + args.clients)
                statuses: list[int] = []
                barrier = threading.Barrier(args.clients)

                def send(size: int, base: int = base, statuses: list[int] = statuses,
                         barrier: threading.Barrier = barrier) -> None:
                    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                    body = encode_request(base, log.proof(base, size), log.checkpoint(size))
                    barrier.wait()
                    c.request("POST", "/add-checkpoint", body=body)
                    statuses.append(c.getresponse().status)
                    c.close()

                threads = [threading.Thread(target=send, args=(base + k + 1,)) for k in range(args.clients)]
                for th in threads:
                    th.start()
                for th in threads:
                    th.join()
                assert statuses.count(200) == 1 and statuses.count(409) == args.clients - 1, statuses
                wins += 1
            took = time.perf_counter() - t0
            print(f"racing: {args.rounds} rounds of {args.clients} clients from one old size: exactly one 200 "
                  f"and {args.clients - 1} x 409 in {wins}/{args.rounds} rounds, {took / args.rounds * 1000:.1f} ms "
                  "per round")
        finally:
            _stop(proc)


if __name__ == "__main__":
    main()
