"""A mixed workload of real Onshore commands, run by N worker processes on one workspace.

Shared by tests/test_concurrency.py and bench/concurrency_bench.py. A worker is a separate Python
process (``python tests/_workload.py WORKSPACE SECONDS SEED OUT.json``) that opens the workspace
through the library, as the CLI does, and for SECONDS runs a random mix of ingest (half of them
on a few shared names, so that same-name ingests collide), copy, read, policy check, checkpoint
and withdraw. It writes one JSON record per operation: the op, its target, ``ok``, the error
class and message of a refusal, its duration, and any exception that is not an OnshoreError
(``crash``, with the traceback), which the test treats as a failure.
"""

from __future__ import annotations

import json
import random
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import EMBODIMENT_TOML, POLICY_JP, build_consortium, write_frames  # noqa: E402
from onshore.catalog import db  # noqa: E402
from onshore.errors import OnshoreError  # noqa: E402
from onshore.residency.pdp import Request  # noqa: E402
from onshore.workspace import Workspace, datasets  # noqa: E402

SHARED_NAMES = ("shared-0", "shared-1", "shared-2", "shared-3")
MEMBERS = ("steelco", "autoco")


def make_workspace(root: Path, catalog_url: str | None = None, ledger_url: str | None = None) -> Path:
    """A workspace with the test consortium, an embodiment, a JP policy and a frames file beside it."""
    ws = Workspace.init(root / "ws", "load-test", catalog_url=catalog_url, ledger_url=ledger_url)
    build_consortium(ws, root)
    ws.close()
    (root / "furnace.toml").write_text(EMBODIMENT_TOML)
    (root / "policy.toml").write_text(POLICY_JP)
    write_frames(root / "frames.parquet")
    return root / "ws"


def _one(ws: Workspace, rng: random.Random, me: str, n: int, inputs: Path) -> tuple[str, str]:
    op = rng.choices(["ingest", "copy", "read", "check", "checkpoint", "withdraw"], [25, 15, 20, 25, 5, 10])[0]
    known = datasets.list_datasets(ws)
    active = [d for d in known if d["status"] == "active"]
    if op == "ingest" or not known:
        name = rng.choice(SHARED_NAMES) if rng.random() < 0.5 else f"{me}-{n}"
        member = rng.choice(MEMBERS)
        datasets.ingest(ws, name, member, "sakai", inputs / "policy.toml", "furnace-line-3",
                        [inputs / "frames.parquet"])
        return "ingest", name
    d = rng.choice(known)
    if op == "copy":
        datasets.copy(ws, d["name"], rng.choice(["tokyo", "tokyo", "ohio"]))
    elif op == "read":
        rows = datasets.read(ws, d["name"], "sakai").num_rows
        if rows != d["frames"]:
            raise AssertionError(f"read {rows} frames of {d['name']}, the catalog says {d['frames']}")
    elif op == "check":
        ws.decide(Request("site:sakai", "read", d["name"], "sakai", "fine-tuning"))
    elif op == "checkpoint":
        ws.make_checkpoint()
    elif op == "withdraw":
        d = rng.choice(active or known)
        datasets.withdraw(ws, d["name"], d["owner"])
    return op, d["name"]


def work(workspace: Path, seconds: float, seed: int, out: Path, start_at: float = 0.0, min_ops: int = 0) -> None:
    """Run the mix for ``seconds`` and at least ``min_ops`` operations, from wall-clock time
    ``start_at`` (so that N workers, warmed up, start together) or at once.

    ``min_ops`` keeps the test's checks meaningful on a slow or loaded machine, where a fixed
    time window alone could hold too few operations to race."""
    rng = random.Random(seed)
    inputs = workspace.parent
    records = []
    with Workspace.open(workspace) as ws:
        datasets.list_datasets(ws)  # warm up: imports and connections, outside the timed run
        ws.pdp()
        time.sleep(max(0.0, start_at - time.time()))
        deadline = time.monotonic() + seconds
        n = 0
        while time.monotonic() < deadline or n < min_ops:
            n += 1
            t = time.monotonic()
            rec: dict[str, object] = {"worker": seed}
            waited = db.seconds_waited()
            try:
                rec["op"], rec["target"] = _one(ws, rng, f"w{seed}", n, inputs)
                rec["ok"] = True
            except OnshoreError as e:
                rec.update(ok=False, error=type(e).__name__, message=str(e))
            except Exception as e:  # noqa: BLE001 - reported, and the test fails on it
                rec.update(ok=False, error=type(e).__name__, message=str(e), crash=traceback.format_exc())
            rec["seconds"] = time.monotonic() - t
            rec["lock_wait"] = db.seconds_waited() - waited
            records.append(rec)
    out.write_text(json.dumps(records))


if __name__ == "__main__":
    work(Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]),
         float(sys.argv[5]) if len(sys.argv) > 5 else 0.0, int(sys.argv[6]) if len(sys.argv) > 6 else 0)
