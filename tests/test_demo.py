"""`onshore demo` end to end on real simulators, as `make demo` runs it (fewer episodes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from onshore.demo import MARKER, run_demo
from onshore.errors import ValidationError


@pytest.mark.slow
def test_demo_runs_and_the_auditor_verifies(tmp_path: Path) -> None:
    console = Console(record=True, width=200)
    assert run_demo(tmp_path / "demo", episodes=1, workers=2, console=console, train_steps=40) == 0
    text = console.export_text()
    assert "trained consortium-tiny at sakai" in text
    assert ("refused training at ohio (US): rule(s) dataset/kansai-pick-place/jurisdictions, "
            "dataset/setouchi-tep/jurisdictions") in text
    assert "Lineage: model -> datasets" in text
    assert "refused serving at sakai (no serve role): rule(s) workspace/role-serve" in text
    assert "refused a client without a token" in text and "HTTP 401" in text
    assert "'estop'" in text and "recorded kansai-line-1-run" in text
    assert "refused copy of kansai-pick-place to ohio: rule dataset/kansai-pick-place/jurisdictions" in text
    assert "verified: dataset kansai-pick-place" in text
    assert "verified: model consortium-tiny attested by its training site site:sakai" in text
    assert "consortium-tiny was trained at sakai (JP) on kansai-pick-place of kansai-robotics" in text
    assert ("refused serve of consortium-tiny at tokyo: rule "
            "model/consortium-tiny/dataset/kansai-pick-place/withdrawn-stop-serving") in text
    assert "doctor: nothing to do" in text
    assert f"onshore -w {tmp_path / 'demo' / 'workspace'} dashboard --port 7080" in text
    trust = json.loads((tmp_path / "demo" / "auditor" / "trust.json").read_text())
    assert {s["name"]: s["jurisdiction"] for s in trust["sites"]} == {"sakai": "JP", "tokyo": "JP", "ohio": "US"}
    assert [w["name"] for w in trust["witnesses"]] == ["kyoto-witness"]
    assert list((tmp_path / "demo" / "workspace" / "reports").glob("*.png"))
    # a second run remakes its own folder
    assert run_demo(tmp_path / "demo", episodes=1, workers=2, console=Console(file=open("/dev/null", "w")),
                    train_steps=0) == 0


def test_demo_refuses_a_folder_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "data.txt").write_text("keep me")
    with pytest.raises(ValidationError, match="not made by 'onshore demo'"):
        run_demo(tmp_path / "precious", episodes=1)
    assert (tmp_path / "precious" / "data.txt").read_text() == "keep me"
    assert not (tmp_path / "precious" / MARKER).exists()
