"""Models inherit their data's residency: sealed files, the lineage's policy in Cedar, copy/export/load
decisions, withdrawal that reaches derived models, and model bundles verified offline."""

from __future__ import annotations

import base64
import datetime as dt
import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from _training import make_consortium
from conftest import cosign_with_witnesses
from onshore.attest.bundle import write_bundle
from onshore.attest.model_claim import MODEL_PREDICATE_TYPE, attest_model
from onshore.attest.trust import build_trust_root
from onshore.attest.verify import verify_bundle
from onshore.cli.app import main
from onshore.errors import IntegrityError, PolicyDenied, ValidationError
from onshore.model.text import HASHED
from onshore.residency.modelpolicy import LineageDataset, effective_policy, model_cedar, model_status
from onshore.residency.pdp import PolicyDecisionPoint, Request, SiteFacts
from onshore.residency.policy import parse_policy, workspace_cedar
from onshore.train.loop import TrainConfig, TrainRequest, train
from onshore.workspace import Workspace, datasets, models, registry


def fast(steps: int = 4, **kw: object) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=8, checkpoint_every=steps, log_every=2, precision="fp32",
                       text_encoder=HASHED, warmup=1, **kw)  # type: ignore[arg-type]


@pytest.fixture
def consortium(tmp_path: Path, telemetry: dict[str, Path]) -> Iterator[Workspace]:
    ws = make_consortium(tmp_path, telemetry)
    train(ws, TrainRequest("pool", "sakai", "foundation-pretraining", ("arms", "plant"), size="tiny", train=fast()))
    yield ws
    ws.close()


def _site_root(ws: Workspace, site: str) -> Path:
    return Path(registry.get_site(ws, site).root)


def test_copy_export_and_load_are_decided_on_the_lineage(consortium: Workspace, tmp_path: Path) -> None:
    ws = consortium
    info = models.show_model(ws, "pool")
    assert info["effective_policy"] == {"jurisdictions": ["JP"], "sites": None,
                                        "purposes": ["fine-tuning", "foundation-pretraining"], "expires": "2031-03-31",
                                        "derived_models": "stop-serving", "datasets": ["arms", "plant"]}
    assert info["status"]["label"] == "ok" and [s["site"] for s in info["sites"]] == ["sakai"]
    assert "model/pool/dataset/arms/jurisdictions" in info["cedar"]

    # copy to a site outside the intersection: refused naming each dataset rule; no wrap, file or key there
    with pytest.raises(PolicyDenied) as e:
        models.copy_model(ws, "pool", "ohio")
    assert {"model/pool/dataset/arms/jurisdictions", "model/pool/dataset/plant/jurisdictions"} <= set(e.value.rules)
    assert not (_site_root(ws, "ohio") / "models").exists()
    assert not ws.keystore("site:ohio").has_key("model", "pool")
    assert main(["-w", str(ws.root), "model", "copy", "pool", "--to", "ohio"]) == 3
    out = models.copy_model(ws, "pool", "tokyo")
    assert out["from"] == "sakai" and [s["site"] for s in models.sites_of(ws, "pool")] == ["sakai", "tokyo"]
    assert models.list_models(ws)[0]["sites"] == ["sakai", "tokyo"]

    # eval at a foreign site; serve where the site has no serve role; serve at tokyo is allowed
    with pytest.raises(PolicyDenied, match="model/pool/dataset/arms/jurisdictions"):
        models.policy_factory(ws, "pool", "ohio", "sawyer-metaworld")
    with pytest.raises(PolicyDenied, match="workspace/role-serve"):
        models.load_model_for(ws, "pool", "sakai", "serve", "fine-tuning")
    served = models.load_model_for(ws, "pool", "tokyo", "serve", "fine-tuning")
    assert served.meta["datasets"][0]["name"] == "arms"
    assert main(["-w", str(ws.root), "policy", "check", "--model", "pool", "--action", "serve", "--site", "tokyo",
                 "--purpose", "fine-tuning"]) == 0

    # export: a purpose a dataset refuses; into a site folder; then allowed, plain, and no overwrite
    dest = tmp_path / "export"
    with pytest.raises(PolicyDenied) as e:
        models.export_model(ws, "pool", "sakai", dest, "predictive-maintenance")
    assert "model/pool/dataset/arms/purposes" in e.value.rules and not dest.exists()
    with pytest.raises(ValidationError, match="storage folder of site"):
        models.export_model(ws, "pool", "sakai", _site_root(ws, "tokyo") / "x", "fine-tuning")
    done = models.export_model(ws, "pool", "sakai", dest, "fine-tuning")
    release = models.release_entry(ws, "pool")
    assert done["files"] == release["files"]
    weights = load_file(str(dest / "model.safetensors"))
    state = served.model.state_dict()
    assert all(torch.equal(v, state[k[len("weights."):]]) for k, v in weights.items() if k.startswith("weights."))
    with pytest.raises(ValidationError, match="--force"):
        models.export_model(ws, "pool", "sakai", dest, "fine-tuning")
    assert main(["-w", str(ws.root), "model", "export", "pool", "--site", "sakai", "--purpose", "fine-tuning",
                 "--out", str(dest), "--force"]) == 0
    kinds = [e.entry.kind for e in ws.ledger.entries(kinds=("model.copy", "model.export"))]
    assert kinds == ["model.copy", "model.export", "model.export"]

    # files altered on disk at a site: refused before use, against the ledger's digests
    sealed = _site_root(ws, "tokyo") / "models" / "pool" / "model.safetensors.sealed"
    raw = bytearray(sealed.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    sealed.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match="differs from the recorded"):
        models.load_model_for(ws, "pool", "tokyo", "read", "fine-tuning")
    # the copy at sakai is untouched and still opens
    assert models.load_model_for(ws, "pool", "sakai", "read", "fine-tuning").meta["site"] == "sakai"
    assert ws.verify_ledger().size == ws.ledger.size()


def test_withdrawal_reaches_pretrained_and_finetuned_models(consortium: Workspace) -> None:
    ws = consortium
    # dataset arms -> pre-trained pool -> fine-tuned ft (on plant, at sakai) -> copied to tokyo
    train(ws, TrainRequest("ft", "sakai", "fine-tuning", ("plant",), size="tiny", base="pool", train=fast()))
    models.copy_model(ws, "ft", "tokyo")
    assert models.status(ws, "ft").label() == "ok"
    assert [d.name for d in models.lineage_datasets(ws, "ft")] == ["arms", "plant"]
    start = ws.ledger.size()
    out = datasets.withdraw(ws, "arms", "arm-maker")
    assert [m["model"] for m in out["derived_models"]] == ["ft", "pool"]
    taints = [e.entry.body for e in ws.ledger.entries(start, ws.ledger.size(), kinds=["model.taint"])]
    assert {(t["model"], t["dataset"], t["clause"]) for t in taints} == {
        ("pool", "arms", "stop-serving"), ("ft", "arms", "stop-serving")}
    for name in ("pool", "ft"):
        st = models.status(ws, name)
        assert st.status == "blocked" and "arms" in st.reasons[0] and "stop-serving" in st.reasons[0]
        assert models.show_model(ws, name)["taints"][0]["dataset"] == "arms"
    # serving refused, naming the withdrawn dataset's rule; export too; evaluation still allowed
    with pytest.raises(PolicyDenied) as e:
        models.load_model_for(ws, "ft", "tokyo", "serve", "fine-tuning")
    assert e.value.rules == ["model/ft/dataset/arms/withdrawn-stop-serving"]
    assert "arms" in str(e.value)
    with pytest.raises(PolicyDenied, match="withdrawn-stop-serving"):
        models.export_model(ws, "pool", "sakai", ws.root.parent / "pool-out", "fine-tuning")
    assert models.load_model_for(ws, "ft", "tokyo", "read", "fine-tuning") is not None
    assert main(["-w", str(ws.root), "policy", "check", "--model", "ft", "--action", "serve", "--site", "tokyo",
                 "--purpose", "fine-tuning"]) == 3
    # plant's clause is keep: withdrawing it adds a taint but no new refusal
    datasets.withdraw(ws, "plant", "chem")
    assert models.status(ws, "ft").status == "blocked"
    assert len(models.taints(ws, "ft")) == 2
    assert main(["-w", str(ws.root), "model", "show", "ft"]) == 0


def _lineage(clause: str, withdrawn: bool, name: str = "d1") -> LineageDataset:
    text = (f'jurisdictions = ["JP"]\nsites = []\npurposes = ["fine-tuning"]\nexpires = 2031-03-31\n'
            f'derived_models = "{clause}"\n')
    return LineageDataset(name, "o", parse_policy(text), 7 if withdrawn else None)


def test_clauses_compile_and_decide_as_the_status_says() -> None:
    sites = [SiteFacts("tokyo", "JP", ("storage", "compute", "serve"))]
    other = LineageDataset("d2", "o", parse_policy('jurisdictions = ["JP", "US"]\nsites = ["tokyo"]\npurposes = '
                                                   '["fine-tuning", "x"]\nexpires = 2030-01-31\n'
                                                   'derived_models = "keep"\n'))
    eff = effective_policy([_lineage("retrain-by:2030-06-30", False), other])
    assert (eff.jurisdictions, eff.sites, eff.purposes, str(eff.expires), eff.derived_models) == (
        ("JP",), ("tokyo",), ("fine-tuning",), "2030-01-31", "retrain-by:2030-06-30")
    assert effective_policy([_lineage("retrain-by:2030-06-30", False), _lineage("stop-serving", False, "d3")]
                            ).derived_models == "stop-serving"
    cases = [("keep", "tainted", True), ("retrain-by:2030-06-30", "must-retrain-by", True),
             ("retrain-by:2020-01-01", "blocked", False), ("stop-serving", "blocked", True)]
    for clause, want, reads in cases:
        lineage = [_lineage(clause, True)]
        assert model_status(lineage, dt.date(2025, 1, 1)).status == want, clause
        pdp = PolicyDecisionPoint(workspace_cedar(None) + model_cedar("m", lineage), sites)
        day = dt.date(2025, 1, 1)
        read = pdp.decide(Request("site:tokyo", "read", "m", "tokyo", "fine-tuning", day, "model"))
        serve = pdp.decide(Request("site:tokyo", "serve", "m", "tokyo", "fine-tuning", day, "model"))
        assert serve.rules == (("model/m/dataset/d1/withdrawn-stop-serving",) if clause == "stop-serving" else
                               serve.rules)
        assert read.allowed is reads, clause
        assert serve.allowed is (clause in ("keep", "retrain-by:2030-06-30")), clause
    assert model_status([_lineage("retrain-by:2030-06-30", True)], dt.date(2025, 1, 1)).label() == \
        "must-retrain-by 2030-06-30"


def _tamper(bundle: dict, where: str, rng: random.Random) -> dict:
    """A copy of ``bundle`` with one byte of one field class changed."""
    b = json.loads(json.dumps(bundle))
    env = b["dsseEnvelope"]
    stmt = json.loads(base64.b64decode(env["payload"]))

    def flip_hex(s: str) -> str:
        i = rng.randrange(len(s))
        return s[:i] + ("0" if s[i] != "0" else "1") + s[i + 1:]

    def flip_b64(s: str) -> str:
        raw = bytearray(base64.b64decode(s))
        raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        return base64.b64encode(bytes(raw)).decode()

    if where == "subject digest":
        stmt["subject"][0]["digest"]["sha256"] = flip_hex(stmt["subject"][0]["digest"]["sha256"])
    elif where == "predicate site":
        site = stmt["predicate"]["levels"][0]["site"]
        i = rng.randrange(len(site))
        stmt["predicate"]["levels"][0]["site"] = site[:i] + chr(ord(site[i]) ^ 1) + site[i + 1:]
    elif where == "cited entry":
        e = rng.choice(b["entries"])
        e["leaf"] = flip_b64(e["leaf"])
    elif where == "proof":
        e = rng.choice([e for e in b["entries"] if e["inclusionProof"]])
        j = rng.randrange(len(e["inclusionProof"]))
        e["inclusionProof"][j] = flip_b64(e["inclusionProof"][j])
    elif where == "checkpoint":
        lines = b["checkpoint"].split("\n")
        lines[2] = flip_b64(lines[2])  # the root hash
        b["checkpoint"] = "\n".join(lines)
    if where in ("subject digest", "predicate site"):
        env["payload"] = base64.b64encode(json.dumps(stmt).encode()).decode()
    return b


def test_model_bundle_verifies_offline_and_tampering_is_caught(consortium: Workspace, tmp_path: Path,
                                                              telemetry: dict[str, Path]) -> None:
    ws = consortium
    models.copy_model(ws, "pool", "tokyo")
    models.record_eval(ws, "pool", "tokyo", "metaworld", 0, {"reach-v3": {"success_rate": 0.5, "episodes": 2}})
    # fine-tuned at tokyo on tokyo-only data: two levels, each checked against its own lineage
    train(ws, TrainRequest("ft-tokyo", "tokyo", "fine-tuning", ("arms-tokyo",), size="tiny", base="pool",
                           train=fast()))
    with pytest.raises(PolicyDenied, match="model/ft-tokyo/dataset/arms-tokyo/sites"):
        models.copy_model(ws, "ft-tokyo", "sakai")
    cosign_with_witnesses(ws, tmp_path / "witnesses", ("w1",))
    auditor = tmp_path / "auditor"
    auditor.mkdir()
    build_trust_root(ws).write(auditor / "trust.json")
    trust = build_trust_root(ws)
    for name in ("pool", "ft-tokyo"):
        bundle = attest_model(ws, name)
        write_bundle(bundle, auditor / f"{name}.bundle.json")
        report = verify_bundle((auditor / f"{name}.bundle.json").read_bytes(), trust, min_witnesses=1)
        assert report.ok, [c.to_json() for c in report.checks if not c.passed]
        assert report.model == name and report.model_status["label"] == "ok"
    assert main(["verify", str(auditor / "pool.bundle.json"), "--trust-root", str(auditor / "trust.json"),
                 "--min-witnesses", "1"]) == 0
    stmt = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    p = stmt["predicate"]
    assert stmt["predicateType"] == MODEL_PREDICATE_TYPE and p["attester"] == {"site": "tokyo", "jurisdiction": "JP"}
    assert [lv["site"] for lv in p["levels"]] == ["tokyo", "sakai"]
    assert {d["dataset"]: d["owner"] for d in p["datasets"]} == {"arms": "arm-maker", "plant": "chem",
                                                                 "arms-tokyo": "arm-maker"}
    assert {s["name"] for s in stmt["subject"]} == {"models/ft-tokyo/model.safetensors",
                                                   "models/ft-tokyo/model.safetensors.sealed",
                                                   "models/ft-tokyo/model.json", "models/ft-tokyo/model.json.sealed"}
    pool = json.loads((auditor / "pool.bundle.json").read_text())
    assert json.loads(base64.b64decode(pool["dsseEnvelope"]["payload"]))["predicate"]["evaluations"][0]["env"] == \
        "metaworld"

    rng = random.Random(10)
    expected = {"subject digest": "envelope signature", "predicate site": "envelope signature",
                "cited entry": "entry signatures", "proof": "inclusion proofs", "checkpoint": "checkpoint signature"}
    for where, check in expected.items():
        for _ in range(3):
            report = verify_bundle(_tamper(pool, where, rng), trust, min_witnesses=1)
            assert not report.ok and check in report.failed, (where, report.failed)

    # another workspace's trust root refuses the bundle
    other = make_consortium(tmp_path / "other", telemetry)
    try:
        report = verify_bundle(pool, build_trust_root(other))
    finally:
        other.close()
    assert not report.ok and {"envelope signature", "checkpoint signature"} <= set(report.failed)

    # after a withdrawal the bundle says what the clause implies
    datasets.withdraw(ws, "arms", "arm-maker")
    report = verify_bundle(attest_model(ws, "pool"), trust)
    assert report.ok, [c.to_json() for c in report.checks if not c.passed]
    assert report.model_status["label"] == "blocked"
    assert "stop-serving" in report.check("withdrawals").message
