"""Model versions under one name, aliases, tags and archiving (the model registry), on a real
workspace: retraining a name makes its next version with its own lineage, policy, files and bundle;
aliases are recorded decisions that serving follows; archived versions stay verifiable but are
refused for serving and fine-tuning."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from _training import make_consortium
from conftest import cosign_with_witnesses
from onshore.attest.model_claim import attest_model
from onshore.attest.trust import build_trust_root
from onshore.attest.verify import verify_bundle
from onshore.cli.app import main
from onshore.errors import NotFoundError, ValidationError
from onshore.model.text import HASHED
from onshore.names import check_model_id
from onshore.serve import service, tokens
from onshore.serve.client import Client
from onshore.train.loop import TrainConfig, TrainRequest, train
from onshore.workspace import Workspace, datasets, doctor, modelcard, models, registry, versions


def fast(steps: int = 4) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=8, checkpoint_every=steps, log_every=2, precision="fp32",
                       text_encoder=HASHED, warmup=1)


@pytest.fixture
def two_versions(tmp_path: Path, telemetry: dict[str, Path]) -> Iterator[Workspace]:
    """pool v1 on arms + plant, then pool v2 (trained again under the same name) on arms alone."""
    ws = make_consortium(tmp_path, telemetry)
    first = train(ws, TrainRequest("pool", "sakai", "foundation-pretraining", ("arms", "plant"), size="tiny",
                                   train=fast()))
    second = train(ws, TrainRequest("pool", "sakai", "foundation-pretraining", ("arms",), size="tiny",
                                    train=fast()))
    assert first is not None and second is not None
    assert (first.name, second.name) == ("pool", "pool@2")
    yield ws
    ws.close()


def run(ws: Workspace, *args: str) -> int:
    return main(["-w", str(ws.root), *args])


def _wait(condition: Callable[[], bool], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_retraining_a_name_makes_a_version_with_its_own_lineage_and_bundle(two_versions: Workspace,
                                                                            tmp_path: Path) -> None:
    ws = two_versions
    # each version: its own signed lineage, policy, folder and release entry
    assert [d.name for d in models.lineage_datasets(ws, "pool")] == ["arms", "plant"]
    assert [d.name for d in models.lineage_datasets(ws, "pool@2")] == ["arms"]
    assert models.effective(ws, "pool@2").derived_models == "stop-serving"
    v1, v2 = models.release_entry(ws, "pool"), models.release_entry(ws, "pool@2")
    assert (v2["model"], v2["name"], v2["version"]) == ("pool@2", "pool", 2)
    assert v1["files"] != v2["files"]
    assert models.model_folder(ws, models.get_model(ws, "pool@2")).name == "pool@2"
    assert "model/pool@2/dataset/arms/jurisdictions" in models.show_model(ws, "pool@2")["cedar"]
    rows = models.list_models(ws)
    assert [(r["name"], r["model_name"], r["version"]) for r in rows] == [("pool", "pool", 1),
                                                                          ("pool@2", "pool", 2)]
    # what people type: NAME is the latest, NAME@1 the first, NAME@latest the latest
    assert versions.resolve(ws, "pool") == "pool@2"
    assert versions.resolve(ws, "pool@1") == "pool"
    assert versions.resolve(ws, "pool@latest") == "pool@2"
    with pytest.raises(NotFoundError, match="no version 3; its versions are 1, 2"):
        versions.resolve(ws, "pool@3")
    with pytest.raises(NotFoundError, match="no alias 'production'"):
        versions.resolve(ws, "pool@production")
    for bad in ("pool@0", "pool@02", "pool@../x", "pool@Prod", "pool@a@b", "Pool"):
        with pytest.raises(ValidationError):
            versions.resolve(ws, bad)
    assert run(ws, "model", "show", "pool@../x") == 1
    assert run(ws, "model", "show", "pool@1", "--json") == 0

    # a third run under the name is version 3, and its key custody and lock are per version
    assert versions.next_id(ws, "pool") == "pool@3"
    assert ws.keystore("site:sakai").has_key("model", "pool@2")
    with pytest.raises(ValidationError, match="at most 64 characters"):
        check_model_id("p" * 63 + "@2")

    # both versions' bundles verify offline, each naming its own version
    cosign_with_witnesses(ws, tmp_path / "witnesses", ("w1",))
    trust = build_trust_root(ws)
    for model in ("pool", "pool@2"):
        report = verify_bundle(attest_model(ws, model), trust, min_witnesses=1)
        assert report.ok, [c.to_json() for c in report.checks if not c.passed]
        assert report.model == model
    assert ws.verify_ledger().size == ws.ledger.size()
    report = doctor.run(ws)  # version folders, keys and locks are what doctor expects
    assert report.ok and not report.findings, report.to_json()

    # a withdrawal reaches each version through its own lineage: plant is only in version 1's
    datasets.withdraw(ws, "plant", "chem")
    assert [t["model"] for t in models.taints(ws, "pool")] == ["pool"] and models.taints(ws, "pool@2") == []
    assert (models.status(ws, "pool").status, models.status(ws, "pool@2").status) == ("tainted", "ok")


def test_aliases_are_recorded_and_serving_follows_them(two_versions: Workspace) -> None:
    ws = two_versions
    out = versions.set_alias(ws, "pool", "production", 1)
    entry = ws.ledger.get(out["ledger_index"]).entry
    assert entry.kind == "model.alias" and entry.actor == "site:sakai"
    assert entry.body == {"model": "pool", "name": "pool", "alias": "production", "version": 1, "previous": None,
                          "site": "sakai"}
    assert versions.resolve(ws, "pool@production") == "pool"
    # moving it is a recorded decision naming where it pointed; the same move again records nothing
    size = ws.ledger.size()
    assert run(ws, "model", "alias", "pool", "production", "2") == 0
    moved = ws.ledger.get(size).entry
    assert moved.kind == "model.alias" and (moved.body["version"], moved.body["previous"]) == (2, 1)
    assert run(ws, "model", "alias", "pool", "production", "2") == 0 and ws.ledger.size() == size + 1
    assert versions.resolve(ws, "pool@production") == "pool@2"
    assert models.show_model(ws, "pool@2")["aliases"] == ["production"]
    # refused: unknown version, reserved or malformed alias, VERSION and --remove together
    assert run(ws, "model", "alias", "pool", "production", "7") == 1
    assert run(ws, "model", "alias", "pool", "latest", "1") == 1
    assert run(ws, "model", "alias", "pool", "9lives", "1") == 1
    assert run(ws, "model", "alias", "pool", "production", "1", "--remove") == 2
    assert ws.ledger.size() == size + 1
    # an alias entry signed by a site that did not train the version is not a registry action
    ws.record("model.alias", "site:tokyo", {"model": "pool", "name": "pool", "alias": "production", "version": 1,
                                            "previous": 2, "site": "sakai"})
    assert versions.resolve(ws, "pool@production") == "pool@2"

    # serving NAME@ALIAS loads the version the alias points at, and the ledger says both
    models.copy_model(ws, "pool@2", "tokyo")
    running = service.start(ws, "pool@production", "tokyo", port=0)
    token = tokens.issue(ws, "tokyo", "line-1")
    running.server.tokens.refresh()
    try:
        assert running.served.name == "pool@2"
        state = np.zeros(running.served.embodiments["sawyer-metaworld"].state_dim, dtype=np.float32)
        start = ws.ledger.get(running.start_index).entry.body
        assert (start["model"], start["ref"], start["follows"]) == ("pool@2", "pool@production", True)
        assert start["digest"] == models.release_entry(ws, "pool@2")["files"]["model.safetensors"]
        with Client(running.url, token, "sawyer-metaworld") as first:
            first.reset("reach-v3")
            first.act(state)
            # the alias moves to a version this site does not hold: logged, serving goes on unchanged
            versions.set_alias(ws, "pool", "production", 1)
            follow = running.server.follow
            assert follow is not None
            _wait(lambda: follow.skipped == "pool")
            assert running.server.served.name == "pool@2"
            # once the site holds it, the server follows: new sessions get version 1, the connected one
            # keeps version 2 and is not dropped
            models.copy_model(ws, "pool", "tokyo")
            _wait(lambda: running.server.served.name == "pool")
            with Client(running.url, token, "sawyer-metaworld") as second:
                assert second.info()["model"] == "pool"
                second.reset("reach-v3")
                second.act(state)
            assert first.info()["model"] == "pool@2"
            first.act(state)
        followed = [e.entry for e in ws.ledger.entries(start=running.start_index, kinds=("model.serve",))
                    if e.entry.body["event"] == "follow"]
        assert [(e.body["model"], e.body["previous"], e.body["ref"], e.body["start_index"]) for e in followed] == \
            [("pool", "pool@2", "pool@production", running.start_index)]
        assert followed[0].actor == "site:tokyo"
    finally:
        report = running.stop()
    stop = ws.ledger.get(report.stop_index).entry.body
    assert stop["model"] == "pool@2" and stop["followed_to"] == "pool" and stop["connections"] == 2

    # removing: recorded, and the alias no longer resolves
    assert run(ws, "model", "alias", "pool", "production", "--remove") == 0
    removed = ws.ledger.get(ws.ledger.size() - 1).entry.body
    assert (removed["version"], removed["previous"], removed["model"]) == (None, 1, "pool")
    with pytest.raises(NotFoundError):
        versions.resolve(ws, "pool@production")
    assert run(ws, "model", "alias", "pool", "production", "--remove") == 1


def test_archived_versions_are_kept_verifiable_but_not_served_or_fine_tuned(two_versions: Workspace,
                                                                             tmp_path: Path) -> None:
    ws = two_versions
    versions.set_alias(ws, "pool", "production", 2)
    with pytest.raises(ValidationError, match="production of model 'pool' point at version 2"):
        versions.archive(ws, "pool@2")
    with pytest.raises(ValidationError, match="name the version to archive"):
        versions.archive(ws, "pool")
    versions.remove_alias(ws, "pool", "production")
    assert run(ws, "model", "archive", "pool@2") == 0
    entry = ws.ledger.get(ws.ledger.size() - 1).entry
    assert entry.kind == "model.archive" and entry.actor == "site:sakai" and entry.body["archived"] is True
    # NAME skips it; it is still listed and shown
    assert versions.resolve(ws, "pool") == "pool"
    assert [r["archived"] for r in models.list_models(ws)] == [False, True]
    assert models.show_model(ws, "pool@2")["archived"] is True
    # refused for serving, fine-tuning and aliases, before any decision is recorded
    models.copy_model(ws, "pool@2", "tokyo")
    size = ws.ledger.size()
    with pytest.raises(ValidationError, match="archived"):
        models.load_model_for(ws, "pool@2", "tokyo", "serve", "fine-tuning")
    with pytest.raises(ValidationError, match="is archived"):
        service.start(ws, "pool@2", "tokyo", port=0)
    with pytest.raises(ValidationError, match="is archived"):
        train(ws, TrainRequest("ft", "sakai", "fine-tuning", ("plant",), size="tiny", base="pool@2", train=fast()))
    assert run(ws, "finetune", "pool@2", "--datasets", "plant", "--name", "ft", "--steps", "2") == 1
    assert run(ws, "model", "alias", "pool", "production", "2") == 1
    assert ws.ledger.size() == size
    # still readable and verifiable
    assert models.load_model_for(ws, "pool@2", "tokyo", "read", "fine-tuning").meta["site"] == "sakai"
    cosign_with_witnesses(ws, tmp_path / "witnesses", ("w1",))
    report = verify_bundle(attest_model(ws, "pool@2"), build_trust_root(ws), min_witnesses=1)
    assert report.ok and report.model == "pool@2"
    # every version archived: NAME alone says so; restoring brings it back
    assert run(ws, "model", "archive", "pool@1") == 0
    with pytest.raises(ValidationError, match="every version of model 'pool' is archived"):
        versions.resolve(ws, "pool")
    assert run(ws, "model", "archive", "pool@2", "--restore") == 0
    assert versions.resolve(ws, "pool") == "pool@2"
    assert run(ws, "model", "archive", "pool@2", "--restore") == 1


def test_tags_and_description_are_recorded_per_version(two_versions: Workspace) -> None:
    ws = two_versions
    assert run(ws, "model", "tag", "pool", "--tag", "stage=pilot", "--tag", "line=furnace-3",
               "--description", "Arms only, spring data") == 0
    assert run(ws, "model", "tag", "pool@2", "--remove-tag", "line") == 0
    info = models.show_model(ws, "pool@2")
    assert info["tags"] == {"stage": "pilot"} and info["description"] == "Arms only, spring data"
    assert models.show_model(ws, "pool")["tags"] == {}
    size = ws.ledger.size()
    for bad in (["--tag", "novalue"], ["--tag", "bad key=1"], ["--description", "two\nlines"], []):
        assert run(ws, "model", "tag", "pool", *bad) in (1, 2), bad
    assert ws.ledger.size() == size
    listed = json.loads(json.dumps(models.list_models(ws)))
    assert listed[1]["tags"] == {"stage": "pilot"}
    # the dashboard's model page shows the version, its siblings and its tags
    from starlette.testclient import TestClient

    from onshore.web.app import create_app

    app = create_app(ws.root)
    try:
        with TestClient(app, base_url="http://127.0.0.1") as c:
            page = c.get("/models/pool%402")
            assert page.status_code == 200
            assert "version 2 of pool" in page.text and "stage=pilot" in page.text
            assert 'href="/models/pool">1</a>' in page.text and "Arms only, spring data" in page.text
            assert c.get("/models/pool%402?format=json").json()["version"] == 2
            assert c.get("/models/pool%40..?format=json").status_code in (400, 404)
    finally:
        app.state.workspace.close()


def test_a_name_too_long_for_a_version_suffix_is_refused(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "ws", "names")
    try:
        registry.add_site(ws, "sakai", "JP", "storage,compute")
        assert versions.next_id(ws, "p" * 64) == "p" * 64  # a new name is version 1, its id the name itself
        with pytest.raises(ValidationError, match="invalid model name"):
            versions.next_id(ws, "pool@2")
    finally:
        ws.close()


def test_export_writes_a_model_card_that_the_hub_reads_and_whose_snippet_loads(two_versions: Workspace,
                                                                              tmp_path: Path) -> None:
    from huggingface_hub import ModelCard

    ws = two_versions
    models.record_eval(ws, "pool@2", "sakai", "metaworld", 7, {"reach-v3": {"success_rate": 0.25, "episodes": 4}})
    versions.annotate(ws, "pool@2", {"stage": "pilot"}, description="Arms only | spring data")
    dest = tmp_path / "export"
    assert run(ws, "model", "export", "pool", "--site", "sakai", "--purpose", "fine-tuning", "--out", str(dest)) == 0
    text = (dest / "README.md").read_text()
    export = ws.ledger.get(ws.ledger.size() - 1).entry
    assert export.kind == "model.export" and export.body["model"] == "pool@2"
    assert export.body["card"] == hashlib.sha256(text.encode()).hexdigest()

    card = ModelCard(text)  # the Hub's own parser of the YAML header
    data = card.data.to_dict()
    assert data["license"] == "other" and data["pipeline_tag"] == "robotics" and data["library_name"] == "onshore"
    assert data["datasets"] == ["arms"]
    assert {"jurisdiction:JP", "embodiment:sawyer-metaworld", "stage:pilot"} <= set(data["tags"])
    (result,) = data["model-index"][0]["results"]
    assert result["task"]["name"] == "reach-v3" and result["metrics"][0]["value"] == 0.25
    body = card.text
    assert "# pool (version 2)" in body and "Arms only | spring data" in body
    assert "| pool@2 | arms | arm-maker | sawyer-metaworld |" in body
    frames = sum(s["frames"] for s in datasets.show(ws, "arms")["shards"] if s["site"] == "sakai")
    assert f"{frames:,} |" in body
    assert "only in JP, at any site in those jurisdictions" in body and "must stop being served" in body
    assert "| metaworld | 7 | reach-v3 | 0.250 | 4 | sakai |" in body

    # the card's plain-PyTorch snippet runs as written in the export folder
    snippet = body.split("```python\n", 1)[1].split("```", 1)[0]
    scope: dict[str, object] = {}
    cwd = os.getcwd()
    os.chdir(dest)
    try:
        exec(compile(snippet, "README.md", "exec"), scope)  # noqa: S102 - our own card, under test
    finally:
        os.chdir(cwd)
    assert scope["action"].shape == (4,)  # type: ignore[attr-defined]
    assert set(scope["model"].state_dict()) == {  # type: ignore[attr-defined]
        k.removeprefix("weights.") for k in scope["tensors"] if k.startswith("weights.")}  # type: ignore[attr-defined]

    # `onshore model card` prints the same card (without the tasks only the export knows) and refuses an overwrite
    out = tmp_path / "card.md"
    assert run(ws, "model", "card", "pool@latest", "-o", str(out)) == 0
    assert out.read_text().split(modelcard.LOAD_HEADING)[0] == text.split(modelcard.LOAD_HEADING)[0]
    assert run(ws, "model", "card", "pool", "-o", str(out)) == 1
    # a folder holding a README.md is refused without --force, before anything is decided
    size = ws.ledger.size()
    other = tmp_path / "other"
    other.mkdir()
    (other / "README.md").write_text("mine")
    assert run(ws, "model", "export", "pool", "--site", "sakai", "--purpose", "fine-tuning", "--out", str(other)) == 1
    assert ws.ledger.size() == size and (other / "README.md").read_text() == "mine"


def test_a_model_released_before_versions_existed_is_version_1_and_still_verifies(
        tmp_path: Path, telemetry: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    ws = make_consortium(tmp_path, telemetry)
    try:
        # release entries as Onshore wrote them before versions: no name or version field
        record = Workspace.record

        def old_record(self: Workspace, kind: str, actor: str, body: dict, then=None) -> int:  # type: ignore[no-untyped-def, type-arg]
            if kind == "model.release":
                body = {k: v for k, v in body.items() if k not in ("name", "version")}
            return record(self, kind, actor, body, then)

        monkeypatch.setattr(Workspace, "record", old_record)
        train(ws, TrainRequest("plant-base", "sakai", "foundation-pretraining", ("plant",), size="tiny",
                               train=fast()))
        monkeypatch.undo()
        old = models.release_entry(ws, "plant-base")
        assert "version" not in old and old["model"] == "plant-base"
        before = ws.ledger.size()
        # it is version 1 of its name: listed, resolved and served as before
        assert versions.resolve(ws, "plant-base") == versions.resolve(ws, "plant-base@1") == "plant-base"
        assert [(r["model_name"], r["version"]) for r in models.list_models(ws)] == [("plant-base", 1)]
        assert ws.ledger.size() == before  # reading it wrote nothing
        # training the name again makes version 2 beside it; the old entries are not rewritten
        leaves = [e.leaf for e in ws.ledger.entries(end=before)]
        second = train(ws, TrainRequest("plant-base", "sakai", "foundation-pretraining", ("plant", "arms"),
                                        size="tiny", train=fast()))
        assert second is not None and second.name == "plant-base@2"
        assert [e.leaf for e in ws.ledger.entries(end=before)] == leaves
        assert versions.resolve(ws, "plant-base") == "plant-base@2"
        assert [d.name for d in models.lineage_datasets(ws, "plant-base")] == ["plant"]
        cosign_with_witnesses(ws, tmp_path / "witnesses", ("w1",))
        report = verify_bundle(attest_model(ws, "plant-base"), build_trust_root(ws), min_witnesses=1)
        assert report.ok and report.model == "plant-base"
        assert ws.verify_ledger().size == ws.ledger.size()
    finally:
        ws.close()
