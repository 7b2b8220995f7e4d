"""How fast a running `onshore serve` process follows what another process records (issue 17).

For each change, a real server process serves a `tiny` model at site tokyo, a client acts at the
control rate (10 Hz), and another process runs the CLI command that makes serving refused: a token
revocation (`serve revoke`), the site losing its serve role (`site roles`), a withdrawal under
`stop-serving` (`dataset withdraw`). Printed per change, median and max over the runs: seconds from
the command returning to the client's refusal (negative: the server refused before the command's
process had exited), and from the command's start (which adds the CLI's own start-up).

    .venv/bin/python bench/freshness_bench.py [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import test_serve_live as live  # noqa: E402
from _serving import EMBODIMENT, furnace_workspace  # noqa: E402
from onshore.serve import Client, tokens  # noqa: E402
from onshore.workspace import Workspace  # noqa: E402


def refusal_after(ws: Workspace, token: str, *change: str) -> tuple[float, float]:
    """Serve, let a client act, run ``change`` in another process; (from its return, from its start)
    to the client's refusal, in seconds. The server is stopped before returning."""
    server = live.serve(ws)
    try:
        acting = live.Acting(Client(server.url, token, EMBODIMENT))
        time.sleep(0.5)
        assert acting.error is None and acting.acts > 0
        started = time.monotonic()
        out = live.cli(ws, *change)
        returned = time.monotonic()
        assert out.returncode == 0, out.stderr
        error = acting.wait()
        assert error.code in ("refused", "unauthorized") and acting.refused_at is not None, error
        return acting.refused_at - returned, acting.refused_at - started
    finally:
        if server.proc.poll() is None:
            server.proc.terminate()
        server.finish()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    runs = ap.parse_args().runs
    root = Path(tempfile.mkdtemp(prefix="onshore-freshness-"))
    results: dict[str, list[tuple[float, float]]] = {}
    ws = furnace_workspace(root / "ws")
    for i in range(runs):
        tok = tokens.issue(ws, "tokyo", f"revoke-{i}")
        results.setdefault("token revoked", []).append(
            refusal_after(ws, tok, "serve", "revoke", "--site", "tokyo", "--client", f"revoke-{i}"))
    for i in range(runs):
        tok = tokens.issue(ws, "tokyo", f"roles-{i}")
        results.setdefault("site loses serve", []).append(
            refusal_after(ws, tok, "site", "roles", "tokyo", "--roles", "storage,compute"))
        assert live.cli(ws, "site", "roles", "tokyo", "--roles", "storage,compute,serve").returncode == 0
    for i in range(runs):
        w = furnace_workspace(root / f"withdraw-{i}")
        tok = tokens.issue(w, "tokyo", "line")
        results.setdefault("withdrawal (stop-serving)", []).append(
            refusal_after(w, tok, "dataset", "withdraw", "furnace", "--member", "steelco"))
    print(f"{'change':26} {'runs':>4}   {'from the command returning':>30}   {'from the command starting':>28}")
    for name, got in results.items():
        ret, start = [r for r, _ in got], [s for _, s in got]
        print(f"{name:26} {len(got):>4}   median {statistics.median(ret):+.2f} s, max {max(ret):+.2f} s"
              f"   median {statistics.median(start):.2f} s, max {max(start):.2f} s")


if __name__ == "__main__":
    main()
