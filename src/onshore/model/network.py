"""The cross-embodiment policy and world model, in one file.

One network serves every machine type (embodiment) of the consortium:

    state history (K frames, normalised)   task text vector (384)
              |                                    |
      stem of this embodiment              task projection
      (one token per state group)                  |
              |                                    |
    [embodiment token, task token, readout token, group tokens ...]
                              |
              shared pre-LN transformer trunk (bidirectional attention)
                              |
                     readout token's output
                              |
                  head of this embodiment
            /                                    \\
    chunk of H future actions, in [-1, 1]     next state (normalised): the world model

- A **stem** turns each named group of state channels (e.g. hand, object 1, goal) over the last
  K frames into one token, with one linear map per group (done as a single batched product).
  Embodiments that name no groups are cut into contiguous blocks of ``max_group`` channels.
- The **trunk** is shared by all embodiments; only stems, heads and the two learned tokens per
  embodiment are private, so a new machine type adds a few thousand parameters and fine-tunes.
- The loss is smooth-L1 on the action chunk (actions scaled to [-1, 1] with the limits stored
  per embodiment; steps past the episode's end are masked) plus ``world_weight`` times
  smooth-L1 on the next normalised state.

Normalisation statistics live in :class:`EmbodimentSpec`, which travels with the model's weights,
so a model file alone is enough to act.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from onshore.errors import ValidationError
from onshore.telemetry.embodiment import Embodiment


@dataclass(frozen=True)
class ModelConfig:
    """Network size and shape. ``history``: state frames seen (K); ``chunk``: actions predicted (H)."""

    size: str
    d_model: int
    n_layers: int
    n_heads: int
    mlp_ratio: int = 4
    history: int = 2
    chunk: int = 16
    text_dim: int = 384
    max_group: int = 8
    world_weight: float = 0.5
    huber_beta: float = 0.05  # smooth-L1: quadratic below this error, L1 above (targets are in [-1, 1])
    # Action feedback (off by default): the stem also sees the actions applied before each of the
    # K frames, and the head predicts the chunk as changes from the last applied action, times
    # ``feedback_gain``. For machines whose actions are set-points a controller moves in small
    # steps (a plant's valves): a PI loop's output is an integral the state alone does not show.
    action_feedback: bool = False
    feedback_gain: float = 10.0
    # Acting: ACT's temporal ensembling with weights exp(-ensemble_m * age), or (off) the newest
    # chunk's first action, which follows each new observation at once (fast loops need that).
    ensemble: bool = True
    ensemble_m: float = 0.01
    # "transformer": group tokens mixed by attention; "mlp": a plain state-to-chunk baseline, one
    # flat stem over the whole history, task and embodiment vectors added, residual MLP blocks.
    trunk: str = "transformer"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelConfig:
        return cls(**data)


#: ``tiny`` for the demo and tests, ``small`` the default (a control step in a few ms on one CPU
#: thread), ``base`` for a GPU.
CONFIGS: dict[str, ModelConfig] = {
    "tiny": ModelConfig("tiny", d_model=64, n_layers=2, n_heads=4, chunk=8),
    "small": ModelConfig("small", d_model=192, n_layers=4, n_heads=6, chunk=16),
    "base": ModelConfig("base", d_model=512, n_layers=8, n_heads=8, chunk=16),
    # ~0.6M parameters on a Meta-World arm: the own-data baseline a member could train alone
    "mlp": ModelConfig("mlp", d_model=192, n_layers=3, n_heads=1, mlp_ratio=2, chunk=16, trunk="mlp"),
}
TRUNKS = ("transformer", "mlp")


#: The fields a run may change (``--model-option``), with their types; ``size`` is ``--config``.
_OPTION_TYPES: dict[str, type] = {f: type(v) for f, v in asdict(CONFIGS["small"]).items()
                                  if f not in ("size", "trunk")}


def model_config(size: str, **overrides: Any) -> ModelConfig:
    """The named size (``tiny``, ``small``, ``base``), with any field overridden (not ``size``)."""
    if size not in CONFIGS:
        raise ValidationError(f"--config {size!r}: choose one of {', '.join(CONFIGS)}")
    if "trunk" in overrides:
        raise ValidationError("the trunk is chosen by --config (mlp for the MLP baseline), not by a model option")
    unknown = sorted(set(overrides) - set(_OPTION_TYPES))
    if unknown:
        raise ValidationError(f"model option(s) {', '.join(unknown)} unknown; choose from "
                              f"{', '.join(_OPTION_TYPES)}")
    return replace(CONFIGS[size], **overrides)


def parse_model_options(items: list[str]) -> tuple[tuple[str, Any], ...]:
    """``KEY=VALUE`` strings (``onshore train --model-option``) as typed overrides of a config.

    Refused: an unknown key, ``size`` (that is ``--config``), a value of the wrong type, a
    whole number below 1, a negative, infinite or NaN real (the network itself is checked by a dry
    run in ``onshore.train.loop.check_model_options``).
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        kind = _OPTION_TYPES.get(key)
        if not sep or kind is None:
            raise ValidationError(f"--model-option {item!r}: write KEY=VALUE with KEY one of "
                                  f"{', '.join(_OPTION_TYPES)}")
        try:
            if kind is bool:
                if raw.lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                    raise ValueError(raw)
                value: Any = raw.lower() in ("true", "1", "yes", "on")
            else:
                value = kind(raw)
        except ValueError:
            raise ValidationError(f"--model-option {item!r}: {key} takes a {kind.__name__}") from None
        if (kind is int and value < 1) or (kind is float and not (math.isfinite(value) and value >= 0)):
            raise ValidationError(f"--model-option {item!r}: {key} must be "
                                  f"{'>= 1' if kind is int else 'a finite number >= 0'}")
        out[key] = value
    return tuple(out.items())


@dataclass(frozen=True)
class EmbodimentSpec:
    """What the model knows of one machine type: sizes, state groups and normalisation.

    ``state_mean``/``state_std`` normalise states; ``action_low``/``action_high`` map actions
    to [-1, 1]. Both come from the training data (see ``onshore.train.data``).
    """

    name: str
    state_dim: int
    action_dim: int
    groups: tuple[tuple[str, tuple[int, ...]], ...]
    state_mean: tuple[float, ...]
    state_std: tuple[float, ...]
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["groups"] = [[g, list(ix)] for g, ix in self.groups]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> EmbodimentSpec:
        return cls(d["name"], int(d["state_dim"]), int(d["action_dim"]),
                   tuple((g, tuple(int(i) for i in ix)) for g, ix in d["groups"]),
                   *(tuple(float(x) for x in d[k]) for k in ("state_mean", "state_std", "action_low",
                                                            "action_high")))

    def normalise_state(self, state: np.ndarray) -> np.ndarray:
        return ((state - np.asarray(self.state_mean, np.float32)) / np.asarray(self.state_std, np.float32)
                ).astype(np.float32)

    def scale_action(self, action: np.ndarray) -> np.ndarray:
        """Actions in the machine's units to [-1, 1]."""
        lo, hi = np.asarray(self.action_low, np.float32), np.asarray(self.action_high, np.float32)
        return (2.0 * (action - lo) / (hi - lo) - 1.0).astype(np.float32)

    def unscale_action(self, scaled: np.ndarray) -> np.ndarray:
        """[-1, 1] back to the machine's units (clipped to the range the model was trained on)."""
        lo, hi = np.asarray(self.action_low, np.float64), np.asarray(self.action_high, np.float64)
        return lo + (np.clip(scaled, -1.0, 1.0) + 1.0) * 0.5 * (hi - lo)


def state_groups(emb: Embodiment, max_group: int = 8) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """The embodiment's named state groups (``extra.groups``: name -> channel names), else blocks.

    Named groups must cover every state channel exactly once; a spec that breaks that is refused.
    """
    names = [c.name for c in emb.state]
    named = emb.extra.get("groups") if isinstance(emb.extra, dict) else None
    if not named:
        return tuple((f"channels-{i}-{min(i + max_group, len(names)) - 1}",
                      tuple(range(i, min(i + max_group, len(names)))))
                     for i in range(0, len(names), max_group))
    where = {n: i for i, n in enumerate(names)}
    out, seen = [], set()
    for gname, channels in named.items():
        bad = [c for c in channels if c not in where]
        if bad or not channels:
            raise ValidationError(f"embodiment {emb.name}: group {gname!r} names unknown channels {bad}")
        out.append((str(gname), tuple(where[c] for c in channels)))
        seen.update(channels)
    if seen != set(names) or sum(len(ix) for _, ix in out) != len(names):
        raise ValidationError(f"embodiment {emb.name}: extra.groups must name every state channel exactly once")
    return tuple(out)


class Stem(nn.Module):
    """One token per state group: a linear map of the group's channels over the last K frames."""

    def __init__(self, groups: tuple[tuple[str, tuple[int, ...]], ...], state_dim: int, history: int, d: int
                 ) -> None:
        super().__init__()
        width = max(len(ix) for _, ix in groups)
        index = torch.full((len(groups), width), state_dim, dtype=torch.long)  # state_dim: the zero pad
        for g, (_, ix) in enumerate(groups):
            index[g, :len(ix)] = torch.tensor(ix)
        self.register_buffer("index", index, persistent=False)
        fan_in = torch.tensor([history * len(ix) for _, ix in groups], dtype=torch.float32)
        self.weight = nn.Parameter(torch.randn(len(groups), history * width, d) / fan_in.sqrt()[:, None, None])
        self.bias = nn.Parameter(torch.zeros(len(groups), d))
        self.pos = nn.Parameter(torch.randn(len(groups), d) * 0.02)

    def forward(self, hist: torch.Tensor) -> torch.Tensor:
        """[B, K, S] normalised states -> [B, G, d] tokens."""
        b, k, _ = hist.shape
        x = F.pad(hist, (0, 1))[:, :, self.index]  # [B, K, G, W]
        x = x.permute(0, 2, 1, 3).reshape(b, self.index.shape[0], -1)  # [B, G, K*W]
        return torch.einsum("bgi,gid->bgd", x, self.weight) + self.bias + self.pos


class FlatStem(nn.Module):
    """The MLP baseline's stem: one linear map of all K frames' channels to one token."""

    def __init__(self, state_dim: int, history: int, d: int) -> None:
        super().__init__()
        self.proj = nn.Linear(history * state_dim, d)

    def forward(self, hist: torch.Tensor) -> torch.Tensor:
        """[B, K, S] normalised states -> [B, 1, d]."""
        return self.proj(hist.flatten(1))[:, None]


class MLPBlock(nn.Module):
    """Residual MLP block of the MLP baseline: x + MLP(LN(x)), on one token."""

    def __init__(self, d: int, mlp_ratio: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, mlp_ratio * d), nn.GELU(), nn.Linear(mlp_ratio * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.ln(x))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, d: int, n_heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, mlp_ratio * d), nn.GELU(), nn.Linear(mlp_ratio * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)  # every token sees every token
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class FeedbackStem(nn.Module):
    """One token from the actions applied before each of the K frames (scaled, with a known flag)."""

    def __init__(self, action_dim: int, history: int, d: int) -> None:
        super().__init__()
        self.proj = nn.Linear(history * (action_dim + 1), d)

    def forward(self, prev: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        """[B, K, A] scaled actions (0 where unknown), [B, K] flags -> [B, 1, d]."""
        x = torch.cat([prev * known[..., None], known[..., None]], dim=-1)
        return self.proj(x.flatten(1))[:, None]


class Head(nn.Module):
    """Readout features -> (H actions in [-1, 1] space, next normalised state)."""

    def __init__(self, d: int, chunk: int, action_dim: int, state_dim: int) -> None:
        super().__init__()
        self.chunk, self.action_dim = chunk, action_dim
        self.ln = nn.LayerNorm(d)
        self.fc = nn.Linear(d, d)
        self.action = nn.Linear(d, chunk * action_dim)
        self.world = nn.Linear(d, state_dim)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = F.gelu(self.fc(self.ln(h)))
        return self.action(z).view(-1, self.chunk, self.action_dim), self.world(z)


class FoundationModel(nn.Module):
    """Stems and heads per embodiment around one shared trunk. See the module docstring."""

    def __init__(self, config: ModelConfig, embodiments: list[EmbodimentSpec]) -> None:
        super().__init__()
        if config.trunk not in TRUNKS:
            raise ValidationError(f"trunk {config.trunk!r}: choose one of {', '.join(TRUNKS)}")
        if config.d_model % config.n_heads:
            raise ValidationError(f"d_model {config.d_model} must be a multiple of n_heads {config.n_heads}")
        self.config = config
        self.specs: dict[str, EmbodimentSpec] = {}
        d = config.d_model
        self.task_proj = nn.Linear(config.text_dim, d)
        self.blocks = nn.ModuleList(
            (MLPBlock(d, config.mlp_ratio) if config.trunk == "mlp" else Block(d, config.n_heads, config.mlp_ratio))
            for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(d)
        self.stems = nn.ModuleDict()
        self.feedback = nn.ModuleDict()  # per embodiment, only with config.action_feedback
        self.heads = nn.ModuleDict()
        self.tokens = nn.ParameterDict()  # per embodiment: [2, d] = (embodiment token, readout token)
        for spec in embodiments:
            self.add_embodiment(spec)

    def add_embodiment(self, spec: EmbodimentSpec) -> None:
        """A fresh stem, head and tokens for a machine type the model has not seen."""
        if spec.name in self.specs:
            raise ValidationError(f"the model already has embodiment {spec.name!r}")
        c = self.config
        self.specs[spec.name] = spec
        self.stems[spec.name] = (FlatStem(spec.state_dim, c.history, c.d_model) if c.trunk == "mlp"
                                 else Stem(spec.groups, spec.state_dim, c.history, c.d_model))
        self.heads[spec.name] = Head(c.d_model, c.chunk, spec.action_dim, spec.state_dim)
        self.tokens[spec.name] = nn.Parameter(torch.randn(2, c.d_model) * 0.02)
        if c.action_feedback:
            self.feedback[spec.name] = FeedbackStem(spec.action_dim, c.history, c.d_model)

    def refit_state(self, spec: EmbodimentSpec) -> None:
        """Take ``spec``'s state statistics for its embodiment, keeping the network's function.

        A state normalised the old way is ``(s - m0) / s0``; the new way ``(s - m1) / s1``. So the
        stem's first linear map is rescaled by ``s1 / s0`` per channel and its bias shifted by
        ``(m1 - m0) / s0``, and the world head's output (a next state in normalised units) is mapped
        from old to new units: the outputs on raw states are the same before and after, up to
        rounding. Only the state statistics change: sizes, groups and action scaling must match
        (refused otherwise, nothing changed).
        """
        old = self.specs.get(spec.name)
        if old is None:
            raise ValidationError(f"the model has no embodiment {spec.name!r} to refit")
        if (spec.state_dim, spec.action_dim, spec.groups, spec.action_low, spec.action_high) != \
                (old.state_dim, old.action_dim, old.groups, old.action_low, old.action_high):
            raise ValidationError(f"embodiment {spec.name!r}: a refit may change state statistics only")
        m0, s0 = torch.tensor(old.state_mean, dtype=torch.float64), torch.tensor(old.state_std, dtype=torch.float64)
        m1, s1 = torch.tensor(spec.state_mean, dtype=torch.float64), torch.tensor(spec.state_std, dtype=torch.float64)
        scale, shift = s1 / s0, (m1 - m0) / s0  # x_old = x_new * scale + shift
        stem, head = self.stems[spec.name], self.heads[spec.name]
        k = self.config.history
        with torch.no_grad():
            if isinstance(stem, FlatStem):
                w = stem.proj.weight.double()  # [d, K*S], input index k*S + c
                stem.proj.bias.copy_(stem.proj.bias.double() + w @ shift.repeat(k))
                stem.proj.weight.copy_(w * scale.repeat(k)[None])
            else:
                assert isinstance(stem, Stem)
                pad = torch.cat([scale, torch.ones(1, dtype=torch.float64)])[stem.index]  # [G, W]; pad: unused
                off = torch.cat([shift, torch.zeros(1, dtype=torch.float64)])[stem.index]
                w = stem.weight.double()  # [G, K*W, d], input index k*W + w
                stem.bias.copy_(stem.bias.double() + torch.einsum("gi,gid->gd", off.repeat(1, k), w))
                stem.weight.copy_(w * pad.repeat(1, k)[:, :, None])
            # next state: y_new = (y_old * s0 + m0 - m1) / s1
            ww, wb = head.world.weight.double(), head.world.bias.double()
            head.world.weight.copy_(ww * (s0 / s1)[:, None])
            head.world.bias.copy_((wb * s0 + m0 - m1) / s1)
        self.specs[spec.name] = spec

    def embodiment_parameters(self, name: str) -> list[nn.Parameter]:
        fb = [*self.feedback[name].parameters()] if name in self.feedback else []
        return [*self.stems[name].parameters(), *fb, *self.heads[name].parameters(), self.tokens[name]]

    def trunk_parameters(self) -> list[nn.Parameter]:
        return [*self.task_proj.parameters(), *self.blocks.parameters(), *self.ln_f.parameters()]

    def predict(self, name: str, hist: torch.Tensor, task: torch.Tensor, prev: torch.Tensor | None = None,
                known: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, K, S] states, [B, text_dim] task vectors -> ([B, H, A] actions, [B, S] next state).

        With ``config.action_feedback``, ``prev`` [B, K, A] are the scaled actions applied before
        each frame and ``known`` [B, K] flags which of them exist (none before an episode's first
        frame); both are required then, and the actions returned are the last applied action plus
        the head's output over ``feedback_gain``.
        """
        b = hist.shape[0]
        tok = self.tokens[name]
        parts = [tok[0].expand(b, 1, -1), self.task_proj(task)[:, None], tok[1].expand(b, 1, -1),
                 self.stems[name](hist)]
        fb = self.config.action_feedback
        if fb:
            if prev is None or known is None:
                raise ValidationError("this model was trained with action feedback: pass the applied actions")
            parts.append(self.feedback[name](prev, known))
        if self.config.trunk == "mlp":  # one vector: the sum of every part's token
            x = torch.cat(parts, dim=1).sum(1)
            for block in self.blocks:
                x = block(x)
            out = self.ln_f(x)
        else:
            x = torch.cat(parts, dim=1)
            for block in self.blocks:
                x = block(x)
            out = self.ln_f(x[:, 2])
        actions, next_state = self.heads[name](out)
        if fb:
            assert prev is not None and known is not None
            last = (prev[:, -1] * known[:, -1, None])[:, None]
            actions = last + actions / self.config.feedback_gain
        return actions, next_state

    def forward(self, batch: dict[str, dict[str, torch.Tensor]], per_embodiment: bool = False) -> torch.Tensor:
        """Summed per-sample losses [action, world] over a batch grouped by embodiment.

        Each group holds ``state`` [B, K, S], ``task`` [B, text_dim], ``action`` [B, H, A] (scaled),
        ``action_mask`` [B, H], ``next_state`` [B, S], ``next_mask`` [B], and the applied actions
        before each frame, ``prev_action`` [B, K, A] (scaled) and ``prev_known`` [B, K]. Sums, not means, so
        that the caller can divide by the global batch size whatever the split across processes.
        With ``per_embodiment``: one row [action sum, world sum, samples] per embodiment of
        ``self.specs``, in its order (zeros for one absent from the batch), for loss balancing.
        """
        c = self.config
        total_a = total_w = None
        rows: dict[str, torch.Tensor] = {}
        for name, g in batch.items():
            actions, next_state = self.predict(name, g["state"], g["task"], g.get("prev_action"), g.get("prev_known"))
            la = F.smooth_l1_loss(actions.float(), g["action"], reduction="none", beta=c.huber_beta).mean(-1)
            mask = g["action_mask"]
            per_sample = (la * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
            lw = F.smooth_l1_loss(next_state.float(), g["next_state"], reduction="none",
                                  beta=c.huber_beta).mean(-1) * g["next_mask"]
            total_a = per_sample.sum() if total_a is None else total_a + per_sample.sum()
            total_w = lw.sum() if total_w is None else total_w + lw.sum()
            if per_embodiment:
                rows[name] = torch.stack([per_sample.sum(), lw.sum(), per_sample.new_tensor(float(len(per_sample)))])
        # Embodiments absent from this batch take part with weight zero, so that every parameter
        # has a gradient on every process (DDP and FSDP reduce the same set everywhere).
        idle = [p for n in self.specs if n not in batch for p in self.embodiment_parameters(n) if p.requires_grad]
        zero = sum((p.sum() * 0.0 for p in idle), torch.zeros((), device=self.ln_f.weight.device))
        if per_embodiment:
            empty = torch.zeros(3, device=self.ln_f.weight.device)
            out = torch.stack([rows.get(n, empty) for n in self.specs])
            return out + torch.stack([zero, zero * 0.0, zero * 0.0])[None]
        return torch.stack([total_a + zero, total_w])  # type: ignore[operator]


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def init_seed(seed: int) -> None:
    """Seed torch so that a model's initial weights depend on ``seed`` alone."""
    torch.manual_seed(seed & 0x7FFF_FFFF_FFFF_FFFF)

