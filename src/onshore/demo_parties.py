"""`onshore demo --parties`: the consortium as separate processes on loopback, each in its own
folder: a coordinator, three site nodes (Sakai and Tokyo in JP, Ohio in the US) and a witness started by PID,
members and sites acting from their own startup kits, an auditor verifying offline. Stops every
process it started, by PID, whatever happens."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq
from rich.console import Console

from onshore.attest.bundle import write_bundle
from onshore.attest.trust import TrustRoot
from onshore.attest.verify import verify_bundle
from onshore.errors import OnshoreError, PolicyDenied
from onshore.parties import actions
from onshore.parties.audit import load_trust_root, verify_ledger
from onshore.parties.client import CoordinatorClient
from onshore.parties.local import LocalConsortium
from onshore.parties.signed import sign_request
from onshore.parties.site import flight_client, push
from onshore.telemetry.embodiment import Embodiment

JP_POLICY = ('jurisdictions = ["JP"]\nsites = []\npurposes = ["foundation-pretraining", "fine-tuning"]\n'
             'expires = 2031-03-31\nderived_models = "stop-serving"\n')
TOKYO_POLICY = JP_POLICY.replace("sites = []", 'sites = ["tokyo"]')


def _telemetry(directory: Path, c: Console) -> tuple[list[Path], list[Path]]:
    from onshore.sim.generate import generate

    arms = generate("metaworld", ["pick-place-v3", "push-v3"], 2, 1, directory / "tel-arms", workers=1)
    plant = generate("tep", ["base"], 1, 2, directory / "tel-plant", workers=1, seconds=600)
    c.print(f"  simulator telemetry: {arms.frames} arm frames, {plant.frames} plant frames")
    return arms.files, plant.files


def run_parties_demo(directory: Path, c: Console) -> int:
    """Run the story; returns 0 when every step behaved as told (refusals included)."""
    directory = Path(directory)
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    t0 = time.monotonic()
    head = c.rule
    head("1. provision: a CA and one startup kit per party")
    dep = LocalConsortium.provision(directory / "deployment")
    for label, kit in dep.kits.items():
        c.print(f"  {label:28} {kit.folder}")
    try:
        head("2. start the coordinator, three site nodes and a witness, each its own process")
        dep.start_all()
        for label, p in dep.procs.items():
            host, port = dep.endpoint(label)
            c.print(f"  {label:28} pid {p.pid:>7}  {host}:{port}")
        arms_files, plant_files = _telemetry(directory, c)
        (directory / "jp.toml").write_text(JP_POLICY)
        (directory / "tokyo.toml").write_text(TOKYO_POLICY)
        robotics, chemicals = dep.kit("member:kansai-robotics"), dep.kit("member:kansai-chemicals")
        sakai, tokyo, ohio = dep.kit("site:sakai"), dep.kit("site:tokyo"), dep.kit("site:ohio")

        head("3. members register their machine types and stream telemetry to site nodes (Arrow Flight, mTLS)")
        names = {}
        for member, files in ((robotics, arms_files), (chemicals, plant_files)):
            emb = Embodiment.from_toml(next(files[0].parent.glob("*.toml")))
            CoordinatorClient(member, quiet=True).add_embodiment(emb)
            names[member.name] = emb.name
        c.print(f"  embodiments registered: {', '.join(names.values())} (each site validates every frame against them)")
        r = actions.ingest(robotics, "arms", arms_files, "sakai", directory / "jp.toml",
                           embodiment=names[robotics.name])
        c.print(f"  kansai-robotics -> sakai: arms, {r['frames']} frames, ledger entry {r['entry']}")
        r = actions.ingest(chemicals, "plant", plant_files, "tokyo", directory / "tokyo.toml",
                           embodiment=names[chemicals.name])
        c.print(f"  kansai-chemicals -> tokyo: plant (policy: Tokyo only), {r['frames']} frames")

        head("4. site to site: allowed in JP, refused to the US and outside a Tokyo-only policy")
        r = actions.copy(tokyo, "arms", "sakai")
        c.print(f"  tokyo copied arms from sakai: {r['frames']} frames; the shards' encrypted bytes unchanged, the "
                "key sealed to tokyo's node and kept in tokyo's own custody")
        for kit, ds, src in ((ohio, "arms", "sakai"), (sakai, "plant", "tokyo")):
            try:
                actions.copy(kit, ds, src)
                c.print(f"  [red]{kit.name} got {ds}: this should have been refused[/]")
                return 1
            except PolicyDenied as e:
                c.print(f"  {kit.name} asking for {ds}: refused by the coordinator ({', '.join(e.rules)})")

        head("5. a compromised coordinator's 'allow' is still refused by the US node itself")
        req = sign_request("member:kansai-robotics", "decide", {"action": "ingest", "dataset": "arms",
                                                                "site": "ohio", "purpose": None},
                           robotics.keystore().identity())
        _, genuine = CoordinatorClient(tokyo, quiet=True).decide("read", "arms", "tokyo")
        forged = sign_request("coordinator", "decision", {
            "principal": "member:kansai-robotics", "site": "ohio", "action": "ingest", "dataset": "arms",
            "purpose": None, "request_nonce": req["nonce"], "decision": "allow", "rules": [], "policy_hash": "",
            "consent": genuine["body"]["consent"]}, dep.kit("coordinator:coordinator").keystore().identity())
        tab = pq.read_table(arms_files[0])
        try:
            push(flight_client(robotics, robotics.sites["ohio"].flight), {"request": req, "decision": forged},
                 iter(tab.to_batches()), tab.schema)
            c.print("  [red]ohio stored JP-only data[/]")
            return 1
        except Exception as e:  # noqa: BLE001 - a Flight error is the expected outcome
            c.print(f"  ohio: {str(e).split('Detail:')[0].strip()[:160]}")

        head("6. the witness cosigns the coordinator's checkpoint (C2SP tlog-witness, mutual TLS)")
        r = CoordinatorClient(robotics, quiet=True).cosign()
        c.print(f"  checkpoint at {r['size']} cosigned by {', '.join(r['cosigned_by']) or 'nobody'}"
                + (f"; failed: {r['failed']}" if r["failed"] else ""))
        if not r["cosigned_by"]:
            return 1

        head("7. the auditor verifies the ledger and a site's residency bundle offline, from the trust root alone")
        co = CoordinatorClient(dep.kit("auditor:auditor"), quiet=True)
        note, leaves = co.checkpoint(), [x.encode() for x in co.leaves()]
        (directory / "auditor").mkdir()
        (directory / "auditor" / "checkpoint.txt").write_text(note)
        (directory / "auditor" / "ledger.json").write_text(json.dumps([x.decode() for x in leaves]))
        audit = verify_ledger(note, leaves, load_trust_root(dep.root / "kits" / "trust-root.json"))
        c.print(f"  {audit.size} entries verified: " + ", ".join(f"{k} {v}" for k, v in sorted(audit.kinds.items())))
        c.print(f"  checkpoint cosigned by {', '.join(audit.witnesses)} (verified with the trust root's witness key)")
        bundle = actions.attest(sakai, "arms")  # sakai signs; the coordinator keeps it for auditors
        fetched = co.bundle("arms")
        write_bundle(fetched, directory / "auditor" / "arms.bundle.json")
        report = verify_bundle(fetched, TrustRoot.load(dep.root / "kits" / "trust-root.json"), min_witnesses=1)
        c.print(f"  sakai attested arms ({len(bundle['entries'])} ledger entries); the auditor fetched the bundle "
                f"and 'onshore verify' passes {sum(ch.passed for ch in report.checks)}/{len(report.checks)} checks")
        if not report.ok:
            c.print(f"  [red]the bundle does not verify: {report.failed}[/]")
            return 1

        head("8. kansai-robotics withdraws arms: the keys are shredded at each site that holds it")
        r = actions.withdraw(robotics, "arms", ["sakai", "tokyo"])
        c.print("  shredded at " + ", ".join(s["site"] for s in r["shredded"]))
        try:
            actions.read(tokyo, "arms", directory / "after.parquet")
            c.print("  [red]arms is still readable[/]")
            return 1
        except PolicyDenied as e:
            c.print(f"  a read at tokyo now: refused ({', '.join(e.rules)})")

        head("9. each party's folder holds only its own keys")
        for label, kit in dep.kits.items():
            keys = sorted(str(p.relative_to(kit.folder)) for p in (kit.folder / "keys").rglob("*") if p.is_file())
            c.print(f"  {label:28} {', '.join(keys)}")
    except OnshoreError as e:
        c.print(f"[red]error:[/] {e}")
        return 1
    finally:
        pids = {label: p.pid for label, p in dep.procs.items()}
        dep.stop()
        c.print(f"stopped {', '.join(f'{k} (pid {v})' for k, v in pids.items())}")
    c.print(f"[bold]multi-party demo done in {time.monotonic() - t0:.0f} s[/]; folders in {directory}")
    return 0

