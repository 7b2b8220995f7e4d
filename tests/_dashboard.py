"""A small demo-like workspace for the dashboard tests: three sites in two jurisdictions (one with a
hostile operator name), three datasets on real simulator telemetry, a copy, a refused copy to the
US site, a tiny model trained for a few steps, witnesses, and a dataset bundle with its trust root."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from _training import make_consortium
from conftest import cosign_with_witnesses
from onshore.attest.bundle import attest_dataset
from onshore.attest.trust import build_trust_root
from onshore.errors import PolicyDenied
from onshore.model.text import HASHED
from onshore.train.loop import TrainConfig, TrainRequest, train
from onshore.workspace import Workspace, datasets, registry

HOSTILE = '<script>alert("x")</script> \'q\' "dq" & 堺 <b>'


def build(root: Path, telemetry: dict[str, Path]) -> tuple[Workspace, Path, Path]:
    """The workspace, a good bundle of ``arms`` and the trust root (both files under ``root``)."""
    ws = make_consortium(root, telemetry)
    registry.add_site(ws, "osaka", "JP", "storage", operator=HOSTILE)
    datasets.copy(ws, "arms", "tokyo")
    with pytest.raises(PolicyDenied):
        datasets.copy(ws, "arms", "ohio")
    train(ws, TrainRequest("pool", "sakai", "foundation-pretraining", ("arms", "plant"), size="tiny",
                           train=TrainConfig(steps=2, batch_size=8, checkpoint_every=2, log_every=1, precision="fp32",
                                             text_encoder=HASHED, warmup=1)))
    cosign_with_witnesses(ws, root / "witnesses", ("w1",))
    bundle = root / "arms.bundle.json"
    bundle.write_text(json.dumps(attest_dataset(ws, "arms"), indent=2))
    trust = root / "trust.json"
    build_trust_root(ws).write(trust)
    return ws, bundle, trust


def tampered(bundle: Path, out: Path) -> Path:
    """The bundle with its signed statement edited (JP -> US): the envelope no longer verifies."""
    b = json.loads(bundle.read_text())
    payload = base64.b64decode(b["dsseEnvelope"]["payload"]).replace(b'"JP"', b'"US"')
    b["dsseEnvelope"]["payload"] = base64.b64encode(payload).decode()
    out.write_text(json.dumps(b))
    return out
