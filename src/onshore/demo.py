"""The end-to-end story on the embedded default, as `onshore demo` tells it.

A consortium of three members (two robot-arm makers on Meta-World task families, one chemical
plant on the Tennessee Eastman process) pools simulator telemetry at two sites in Japan; a site in
the United States exists but their policies keep data out of it. The demo ingests, copies inside
the policy, shows the copy to the US refused with the rule that refused it, evaluates the experts
in closed loop, has an outside witness cosign the ledger, attests a dataset, and verifies the
bundle from a folder outside the workspace with only the trust root, as an auditor would. With
a model trained, it also serves it at tokyo and drives a simulated arm through the OPC UA bridge,
and the run comes back as a resident dataset.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from onshore.errors import OnshoreError, PolicyDenied, ValidationError
from onshore.residency.pdp import Request

MARKER = ".onshore-demo"


@dataclass(frozen=True)
class Member:
    name: str
    env: str
    tasks: tuple[str, ...]
    site: str
    dataset: str
    policy: str


MEMBERS = (
    Member("kansai-robotics", "metaworld", ("pick-place-v3", "push-v3"), "sakai", "kansai-pick-place",
           'jurisdictions = ["JP"]\nsites = []\npurposes = ["foundation-pretraining", "fine-tuning"]\n'
           'expires = 2031-03-31\nderived_models = "stop-serving"\n'),
    Member("chubu-motors", "metaworld", ("door-open-v3", "drawer-open-v3"), "tokyo", "chubu-doors-drawers",
           'jurisdictions = ["JP"]\nsites = ["tokyo"]\npurposes = ["fine-tuning"]\n'
           'expires = 2030-12-31\nderived_models = "retrain-by:2031-06-30"\n'),
    Member("setouchi-chemical", "tep", ("base", "idv-1"), "sakai", "setouchi-tep",
           'jurisdictions = ["JP"]\nsites = []\npurposes = ["foundation-pretraining", "predictive-maintenance"]\n'
           'expires = 2032-01-31\nderived_models = "keep"\n'),
)

SITES = (("sakai", "JP", "storage,compute", "Sakai data centre"),
         ("tokyo", "JP", "storage,compute,serve", "Tokyo edge site"),
         ("ohio", "US", "storage,compute", "Ohio cloud region"))


def _prepare(directory: Path) -> None:
    """Start from an empty demo folder; only ever delete a folder an earlier demo made."""
    if directory.exists():
        if not (directory / MARKER).exists():
            raise ValidationError(f"{directory} exists and was not made by 'onshore demo'; choose another --dir")
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    (directory / MARKER).write_text("made by onshore demo; deleted and remade by the next run\n")


def _train_and_evaluate(ws, c: Console, head, episodes: int, workers: int | None,  # type: ignore[no-untyped-def]
                        steps: int, expert_success: dict[str, str]) -> None:
    """Pre-train a tiny model where the data may be read, show the US refused, evaluate, show lineage."""
    from onshore.eval.runner import evaluate
    from onshore.train.loop import TrainConfig, TrainRequest, granted_datasets, train
    from onshore.workspace import models

    head("Pre-train a foundation model at sakai on every dataset granted for it")
    purpose = "foundation-pretraining"
    names = granted_datasets(ws, "sakai", purpose)
    c.print(f"granted at sakai for {purpose!r}: {', '.join(names)} "
            f"(not {MEMBERS[1].dataset}: its policy allows fine-tuning at tokyo only)")
    config = TrainConfig(steps=steps, batch_size=64, lr=1e-3, checkpoint_every=max(1, steps // 2), log_every=10)
    result = train(ws, TrainRequest("consortium-tiny", "sakai", purpose, tuple(names), size="tiny", train=config))
    assert result is not None
    c.print(f"[green]trained[/] consortium-tiny at sakai: {result.parameters:,} parameters, {result.steps} steps, "
            f"{result.samples_per_s:.0f} samples/s, final loss {result.metrics['final_loss']:.3f}; "
            f"files, metrics.csv and loss.png in {result.folder}")

    head("The same training requested at the US site is refused before any byte is read")
    try:
        train(ws, TrainRequest("consortium-us", "ohio", purpose, tuple(names), size="tiny", train=config))
        raise OnshoreError("demo expected training at ohio to be refused")
    except PolicyDenied as e:
        c.print(f"[red]refused[/] training at ohio (US): rule(s) {', '.join(e.rules)}")

    head("The model in closed loop beside the experts (evaluated at sakai, where it may be used)")
    t = Table("member", "task", "model success", "expert success", "model mean length")
    for i, m in enumerate(MEMBERS):
        if m.dataset not in names:
            continue
        emb = "sawyer-metaworld" if m.env == "metaworld" else "tennessee-eastman"
        factory = models.policy_factory(ws, "consortium-tiny", "sakai", emb)
        tasks = list(m.tasks[:1]) if m.env == "tep" else list(m.tasks)
        # the same seeds as the experts' evaluation above: the same episodes
        report = evaluate(m.env, tasks, episodes, seed=1000 + i, policy=factory, workers=workers)
        models.record_eval(ws, "consortium-tiny", "sakai", m.env, 1000 + i,  # results join its attestation
                           {r.task: {"success_rate": r.success_rate, "episodes": r.episodes} for r in report.tasks})
        for r in report.tasks:
            extra = ""
            if m.env == "tep":
                extra = f" (shutdowns {r.metrics['shutdowns']}, PI shutdowns {(r.baseline or {}).get('shutdowns')})"
            t.add_row(m.name, r.task, f"{r.successes}/{r.episodes}{extra}", expert_success.get(r.task, "-"),
                      f"{r.mean_length:.0f}")
    c.print(t)
    c.print("[dim]a tiny model after a few hundred steps on a few episodes: the point is where it was "
            "trained and may run; see docs/results.md for trained numbers[/]")

    head("Lineage: model -> datasets (shards) -> members -> training site")
    info = models.show_model(ws, "consortium-tiny")
    t = Table("model", "trained at", "dataset", "member", "embodiment", "shards")
    for d in info["lineage"][0]["datasets"]:
        t.add_row("consortium-tiny", f"{info['site']} ({info['jurisdiction']})", d["dataset"], d["owner"],
                  d["embodiment"], str(len(d["shards"])))
    c.print(t)


def _monitor_plant(ws, c: Console, head, directory: Path, workers: int | None) -> None:  # type: ignore[no-untyped-def]
    """Fit a fault monitor on normal plant telemetry, then watch the plant through a disturbance."""
    from onshore.serve import monitor
    from onshore.sim.generate import generate
    from onshore.sim.sensors import SensorOptions
    from onshore.workspace import datasets

    head("Faults seen from the model: a monitor fitted on normal operation watches the plant")
    plant = MEMBERS[2]
    tel = directory / "members" / plant.name / "normal"
    generate("tep", ["base"], 4, seed=150, out=tel, workers=workers, sensors=SensorOptions(noise=0.001, quantize=True),
             seconds=1800.0)
    policy = directory / "members" / plant.name / "policy.toml"
    datasets.ingest(ws, "setouchi-normal", plant.name, plant.site, policy, "tennessee-eastman",
                    sorted(tel.glob("*.parquet")))
    f = monitor.fit(ws, "consortium-tiny", "sakai", "setouchi-normal", window=10, far=0.01)
    c.print(f"fitted on setouchi-normal ({f.episodes} episodes of normal operation): threshold {f.threshold:.3g} at a "
            f"{f.far:.0%} false-alarm rate, recorded in ledger entry {f.index} signed by sakai")
    r = monitor.run_simulated(ws, "consortium-tiny", "sakai", "idv-6", seconds=1800.0, seed=7,
                              record=(plant.name, policy, "setouchi-watch-idv6"))
    late = "never" if r.first_alarm is None or r.fault_onset is None else \
        f"{(r.first_alarm - r.fault_onset) * 1.8 / 60:.1f} min after it began" if r.first_alarm >= r.fault_onset \
        else f"at frame {r.first_alarm}, before the fault (a false alarm)"
    c.print(f"watching the plant through IDV 6 (loss of A feed) from frame {r.fault_onset}: first alarm {late}; "
            f"{r.alarms} of {r.frames} frames alarmed, recorded as setouchi-watch-idv6, owned by {plant.name}")
    c.print("[dim]a tiny model trained for a few hundred steps; bench/fault_bench.py measures a trained one on "
            "IDV 1-20 against PCA (docs/monitoring.md)[/]")


def _shadow_plant(ws, c: Console, head, directory: Path) -> None:  # type: ignore[no-untyped-def]
    """Run the model beside the plant's PI controller (DAgger, the model driving half the periods
    through the envelope); the controller's outputs come back as labels in the owner's dataset."""
    from onshore.serve.shadow import run_shadow

    head("Shadow mode: the model beside the plant's controller, whose outputs become its labels (DAgger)")
    plant = MEMBERS[2]
    policy = directory / "members" / plant.name / "policy.toml"
    r = run_shadow(ws, "consortium-tiny", "tokyo", ["base"], member=plant.name, policy=policy,
                   dataset="setouchi-shadow", seconds=180.0, seed=8, drive="mix", beta=0.5)
    c.print(f"recorded setouchi-shadow at tokyo, owned by {plant.name}: {r.frames} frames, the model drove "
            f"{r.model_applied} of them through the safety envelope, {r.shutdowns} shutdown(s); its proposals were "
            f"{r.mean_abs_gap:.3g} % from the PI controller's outputs on average (ledger entry {r.index})")
    c.print("[dim]next round: onshore finetune consortium-tiny --datasets setouchi-tep,setouchi-shadow "
            "(docs/monitoring.md)[/]")


def _serve_and_bridge(ws, c: Console, head, directory: Path) -> None:  # type: ignore[no-untyped-def]
    """Serve the model at tokyo, drive a simulated arm through the OPC UA bridge for a few seconds
    (the e-stop pressed halfway), refuse a client without a token, record the run as data."""
    import asyncio

    from onshore.serve import Client, ServeError, service, tokens
    from onshore.serve.bridge import BridgeMap, run_bridge
    from onshore.serve.loading import load_served_model
    from onshore.serve.opcua import Credentials, Security
    from onshore.serve.plant import PlantThread, SimPlant
    from onshore.serve.record import RecordOptions
    from onshore.workspace import models

    head("Serve the model next to a machine: tokyo serves, the bridge drives an arm over OPC UA")
    try:
        load_served_model(ws, "consortium-tiny", "sakai")
        raise OnshoreError("demo expected serving at sakai to be refused")
    except PolicyDenied as e:
        c.print(f"[red]refused[/] serving at sakai (no serve role): rule(s) {', '.join(sorted(set(e.rules)))}")
    out = models.copy_model(ws, "consortium-tiny", "tokyo")
    c.print(f"[green]allowed[/] copy of consortium-tiny {out['from']} -> {out['to']} (JP), where it will be served")
    token = tokens.issue(ws, "tokyo", "line-1-bridge")
    record_policy = directory / "members" / MEMBERS[0].name / "run-policy.toml"
    # a recording may go no further than the model's effective policy: the member narrows it to tokyo
    eff = models.effective(ws, "consortium-tiny")
    record_policy.write_text(f'jurisdictions = {json.dumps(list(eff.jurisdictions))}\nsites = ["tokyo"]\n'
                             f'purposes = {json.dumps(list(eff.purposes))}\nexpires = {eff.expires.isoformat()}\n'
                             f'derived_models = "{eff.derived_models}"\n')
    record = RecordOptions(record_policy, MEMBERS[0].name, "kansai-line-1-run")
    # the machine and its bridge belong to the member: their OPC UA certificates live in its folder
    import secrets

    member_dir = directory / "members" / MEMBERS[0].name
    user = Credentials("line-1-bridge", secrets.token_urlsafe(16))
    plant = SimPlant("metaworld", "pick-place-v3", seed=7, estop_at=50, security="sign-encrypt",
                     pki=member_dir / "line-1-plc-pki", users={user.username: user.password})
    with service.start(ws, "consortium-tiny", "tokyo", port=0, record=record) as run, PlantThread(plant) as pt:
        assert plant.certificate is not None
        security = Security("sign-encrypt", member_dir / "line-1-bridge-pki", user, plant.certificate.cert)
        c.print(f"serving consortium-tiny (sha256 {run.served.digest[:16]}...) at tokyo on {run.url}; "
                f"simulated arm ({plant.task_text!r}) behind OPC UA at {pt.endpoint} (Basic256Sha256 "
                f"SignAndEncrypt, certificate pinned, user {user.username}; anonymous sessions may only read)")
        try:
            Client(run.url, None, "sawyer-metaworld")
            raise OnshoreError("demo expected a client without a token to be refused")
        except ServeError as e:
            c.print(f"[red]refused[/] a client without a token: {escape(str(e))}")
        mapping = BridgeMap.from_toml(plant.write_map(directory / "line-1-map.toml"))
        report = asyncio.run(run_bridge(pt.endpoint, mapping, run.url, token, hz=40.0, steps=100,
                                        say=lambda m: c.print(f"  bridge: {m}", markup=False), security=security))
        lat = report.to_json()["latency_ms"]
        c.print(f"bridge: {report.steps} periods at {report.hz:g} Hz, {report.written} commands written, "
                f"{report.deadline_misses} deadline miss(es), request-to-write p50 {lat['p50']:.1f} ms, "
                f"p99 {lat['p99']:.1f} ms")
        shown = {k: v for k, v in report.interventions.items() if v}
        c.print(f"envelope interventions at the machine: {shown or 'none'} (e-stop latched at frame 50: every "
                "command after it is the safe action)")
    stop = run.report
    assert stop is not None
    for r in stop.recorded:
        c.print(f"[green]recorded[/] {r['dataset']}: {r['frames']} frames of {r['embodiment']} at tokyo, owned by "
                f"{MEMBERS[0].name}; ledger entry {stop.stop_index} ties it to model digest "
                f"{run.served.digest[:16]}...")


def run_demo(directory: Path, episodes: int = 3, workers: int | None = None,
             console: Console | None = None, train_steps: int = 300, custody: str = "file") -> int:
    """Run the whole story in ``directory``; returns 0 when the auditor's verify passes.

    ``train_steps`` = 0 skips the model (training, refusal, evaluation, lineage). ``custody`` =
    "pkcs11" keeps every site's keys in its own SoftHSM2 token (refused when softhsm2 is absent)."""
    from onshore.attest.bundle import attest_dataset, write_bundle
    from onshore.attest.trust import build_trust_root
    from onshore.eval.report import write_report
    from onshore.eval.runner import evaluate
    from onshore.ledger.witness import Witness
    from onshore.sim.generate import generate
    from onshore.sim.sensors import SensorOptions
    from onshore.workspace import Workspace, datasets, registry

    c = console or Console()
    directory = Path(directory).resolve()
    if custody not in ("file", "pkcs11"):
        raise ValidationError(f"--custody {custody!r}: use file or pkcs11")
    if custody == "pkcs11":
        from onshore.keys import softhsm
        softhsm.require()  # before anything is made
    _prepare(directory)
    step = iter(range(1, 100))

    def head(text: str) -> None:
        c.rule(f"[bold]{next(step)}. {text}")

    head("A consortium workspace with two sites in Japan and one in the United States")
    ws = Workspace.init(directory / "workspace", "onshore-demo")
    for name, jur, roles, operator in SITES:
        registry.add_site(ws, name, jur, roles, operator)
    if custody == "pkcs11":
        from onshore.keys import softhsm
        from onshore.workspace import custody as site_custody
        softhsm.token_store(directory / "softhsm")
        for name, *_ in SITES:
            moved = site_custody.migrate(ws, name, softhsm.init_token(directory / "softhsm", name))
            c.print(f"site {name}: keys in PKCS#11 token {name!r} (SoftHSM2, serial {moved['token_serial']}), "
                    "generated there as sensitive and non-extractable")
    for m in MEMBERS:
        registry.add_member(ws, m.name)
    t = Table("site", "jurisdiction", "roles", "operator")
    for s in registry.list_sites(ws):
        t.add_row(s.name, s.jurisdiction, ",".join(s.roles), s.operator)
    c.print(t)
    c.print(f"members: {', '.join(m.name for m in MEMBERS)}")

    head("Each member generates telemetry on its own premises (real simulators)")
    for i, m in enumerate(MEMBERS):
        out = directory / "members" / m.name / "telemetry"
        sensors = SensorOptions(noise=0.001, quantize=True)
        res = generate(m.env, list(m.tasks), episodes, seed=100 + i, out=out, workers=workers, sensors=sensors,
                       seconds=1800.0 if m.env == "tep" else None)
        c.print(f"{m.name}: {res.episodes} episodes, {res.frames} frames of {res.embodiment} "
                f"({', '.join(m.tasks)}), expert success {res.successes}/{res.episodes}")

    head("Ingest under each member's usage policy: encrypted, at an allowed site")
    for m in MEMBERS:
        tel = directory / "members" / m.name / "telemetry"
        emb_file = next(tel.glob("*.toml"))
        emb = registry.add_embodiment(ws, emb_file)
        policy = directory / "members" / m.name / "policy.toml"
        policy.write_text(m.policy)
        r = datasets.ingest(ws, m.dataset, m.name, m.site, policy, emb.name, sorted(tel.glob("*.parquet")))
        c.print(f"{m.dataset} ({m.name}) at {m.site}: {r.episodes} episodes, {r.frames} frames, "
                f"{len(r.shards)} encrypted shard(s)")

    head("Copies: inside the policy allowed, outside refused with the rule that refused")
    kansai = MEMBERS[0]
    out = datasets.copy(ws, kansai.dataset, "tokyo")
    c.print(f"[green]allowed[/] copy of {kansai.dataset} {out['from']} -> {out['to']} (JP)")
    for dataset, target in ((kansai.dataset, "ohio"), (MEMBERS[1].dataset, "sakai")):
        try:
            datasets.copy(ws, dataset, target)
            raise OnshoreError(f"demo expected the copy of {dataset} to {target} to be refused")
        except PolicyDenied as e:
            c.print(f"[red]refused[/] copy of {dataset} to {target}: rule {', '.join(e.rules)}")
    d = ws.decide(Request("site:sakai", "train", MEMBERS[2].dataset, "sakai", "advertising"))[0]
    c.print(f"[red]refused[/] training on {MEMBERS[2].dataset} for 'advertising': rule {', '.join(d.rules)}")

    head("Closed-loop evaluation of each member's expert")
    expert_success: dict[str, str] = {}
    t = Table("member", "task", "success", "95% interval", "mean length")
    for i, m in enumerate(MEMBERS):
        report = evaluate(m.env, list(m.tasks), episodes, seed=1000 + i, workers=workers, label=m.name)
        write_report(report, ws.reports_dir)
        for r in report.tasks:
            expert_success[r.task] = f"{r.successes}/{r.episodes}"
            t.add_row(m.name, r.task, f"{r.successes}/{r.episodes}", f"{r.ci95[0]:.2f}-{r.ci95[1]:.2f}",
                      f"{r.mean_length:.0f}")
    c.print(t)
    c.print(f"reports (JSON + PNG) in {ws.reports_dir}")

    if train_steps:
        _train_and_evaluate(ws, c, head, episodes, workers, train_steps, expert_success)
        _monitor_plant(ws, c, head, directory, workers)
        _serve_and_bridge(ws, c, head, directory)
        _shadow_plant(ws, c, head, directory)  # at tokyo, where serving copied the model

    head("An outside witness cosigns the ledger's checkpoint")
    witness_dir = directory / "witness-elsewhere"
    witness = Witness.init("kyoto-witness", witness_dir)
    registry.add_witness(ws, "kyoto-witness", witness.vkey)
    note = ws.make_checkpoint()
    ws.add_cosignatures(witness.cosign(note, ws.log_vkey, []))
    c.print(f"checkpoint of size {ws.ledger.size()} signed by the log and cosigned by kyoto-witness")

    head("Attest where a dataset sat; an auditor verifies offline")
    trust_file = directory / "auditor" / "trust.json"
    trust_file.parent.mkdir()
    build_trust_root(ws).write(trust_file)
    bundle = attest_dataset(ws, kansai.dataset)
    bundle_file = directory / "auditor" / f"{kansai.dataset}.bundle.json"
    write_bundle(bundle, bundle_file)
    report = ws.verify_ledger()
    c.print(f"[green]ledger verify[/]: {report.size} entries, every signature and the Merkle root recomputed")
    ws.close()
    env = {k: v for k, v in os.environ.items() if k != "ONSHORE_WORKSPACE"}
    cmd = [sys.executable, "-m", "onshore", "verify", bundle_file.name, "--trust-root", "trust.json",
           "--min-witnesses", "1"]
    c.print(f"[dim]$ cd {trust_file.parent} && onshore verify {bundle_file.name} --trust-root trust.json "
            "--min-witnesses 1[/]")
    proc = subprocess.run(cmd, cwd=trust_file.parent, env=env, capture_output=True, text=True)
    c.print(proc.stdout, end="", markup=False, highlight=False)
    if proc.returncode != 0:
        c.print(proc.stderr, markup=False)
        c.print("[red]auditor verify failed[/]")
        return 1

    head("The doctor checks catalog, ledger, checkpoints and files against each other")
    ws_env = {**env, "ONSHORE_WORKSPACE": str(directory / "workspace")}
    c.print("[dim]$ onshore doctor[/]")
    proc = subprocess.run([sys.executable, "-m", "onshore", "doctor"], env=ws_env, capture_output=True, text=True)
    c.print(proc.stdout, end="", markup=False, highlight=False)
    if proc.returncode != 0:
        c.print(proc.stderr, markup=False)
        c.print("[red]doctor found problems[/]")
        return 1
    if train_steps and _model_story(directory / "workspace", trust_file.parent, c, head, env) != 0:
        return 1
    c.rule("[bold green]demo complete")
    c.print("See where the data sits, in a browser (read-only, on 127.0.0.1):")
    c.print(f"  onshore -w {directory / 'workspace'} dashboard --port 7080", markup=False, highlight=False)
    c.print("  then open http://127.0.0.1:7080/")
    return 0


def _model_story(root: Path, auditor: Path, c: Console, head, env: dict[str, str]) -> int:  # type: ignore[no-untyped-def]
    """Attest the model, have the auditor verify it offline, then a withdrawal stops its serving."""
    import base64
    import json

    from onshore.attest.bundle import write_bundle
    from onshore.attest.model_claim import attest_model
    from onshore.workspace import Workspace, datasets, models

    name, kansai = "consortium-tiny", MEMBERS[0]
    head("Attest where the model was trained and on whose data; the auditor verifies offline")
    with Workspace.open(root) as ws:
        bundle = attest_model(ws, name)
    bundle_file = auditor / f"{name}.bundle.json"
    write_bundle(bundle, bundle_file)
    cmd = [sys.executable, "-m", "onshore", "verify", bundle_file.name, "--trust-root", "trust.json",
           "--min-witnesses", "1"]
    c.print(f"[dim]$ cd {auditor} && onshore verify {bundle_file.name} --trust-root trust.json --min-witnesses 1[/]")
    proc = subprocess.run(cmd, cwd=auditor, env=env, capture_output=True, text=True)
    c.print(proc.stdout, end="", markup=False, highlight=False)
    if proc.returncode != 0:
        c.print(proc.stderr, markup=False)
        c.print("[red]auditor verify of the model bundle failed[/]")
        return 1
    # what the auditor reads in the bundle, beside the checks
    claim = json.loads(base64.b64decode(json.loads(bundle_file.read_text())["dsseEnvelope"]["payload"]))["predicate"]
    top = claim["levels"][0]
    whose = ", ".join(f"{d['dataset']} of {d['owner']}" for d in claim["datasets"])
    c.print(f"the bundle says: {name} was trained at {top['site']} ({top['jurisdiction']}) on {whose}; "
            f"{len(claim['evaluations'])} evaluation(s) recorded; status {claim['status']['label']}")

    head("A member withdraws consent: the derived model may no longer be served")
    with Workspace.open(root) as ws:
        before = models.decide(ws, name, "serve", "tokyo", "foundation-pretraining")[0]
        c.print(f"before: serve {name} at tokyo: {'allow' if before.allowed else 'deny'}")
        out = datasets.withdraw(ws, kansai.dataset, kansai.name)
        c.print(f"{kansai.name} withdrew {kansai.dataset}: keys destroyed at {', '.join(out['shredded_at'])}; "
                f"derived models tainted: {', '.join(m['model'] for m in out['derived_models'])} "
                f"(clause {out['derived_models_clause']})")
        decision, index = models.decide(ws, name, "serve", "tokyo", "foundation-pretraining")
        status = models.status(ws, name)
    if decision.allowed:
        c.print("[red]the model is still servable after the withdrawal[/]")
        return 1
    c.print(f"[red]refused[/] serve of {name} at tokyo: rule {', '.join(decision.rules)} "
            f"(withdrawn dataset {kansai.dataset}, ledger entry {index}); model status: {status.label()}")
    return 0
