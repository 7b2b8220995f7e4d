"""A trained model behind the one ``Policy`` protocol: ``reset(task)``, then ``act(state)``.

Acting follows ACT: every control step the model predicts a chunk of H future actions, and the
action applied is a weighted average of what every chunk still covering this step predicted for
it, with weights ``exp(-m * i)`` where ``i = 0`` is the oldest prediction (ACT's temporal
ensembling; ``m = 0.01`` by default, so older and newer predictions count almost equally and a
larger ``m`` follows new observations faster). ``ensemble=False`` applies the newest chunk's
first action instead. Both come from the model's config (``ensemble``, ``ensemble_m``) unless
the caller overrides them. A model trained with ``action_feedback`` is given the actions this
policy applied before each frame of its history.

:class:`ModelPolicyFactory` is what evaluation hands to its worker processes: it names the
model's sealed files, their digests and the data key the site's key service released for this
use (workers run at that site, as a training job's peers do), and each worker loads the model once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from onshore.errors import ValidationError
from onshore.model import io
from onshore.model.network import EmbodimentSpec, FoundationModel, ModelConfig
from onshore.model.text import get_encoder

FORMAT = "onshore-model/1"
STEM = "model"


@dataclass
class LoadedModel:
    """A model ready to act: the network (eval mode), its metadata, and its task vectors."""

    model: FoundationModel
    meta: dict[str, Any]
    task_vectors: dict[str, np.ndarray]

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    def task_vector(self, task: str) -> np.ndarray:
        """The vector of ``task``: the stored one if trained on it, else from the model's encoder."""
        v = self.task_vectors.get(task)
        if v is None:
            v = get_encoder(self.meta["text_encoder"]).encode([task])[0]
            self.task_vectors[task] = v
        return v


def model_tensors(model: FoundationModel, task_vectors: dict[str, np.ndarray],
                  state: dict[str, torch.Tensor] | None = None) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Tensors to save: the weights (``state``, default the model's own) and the task vectors."""
    tensors = {f"weights.{k}": v for k, v in (state if state is not None else model.state_dict()).items()}
    tasks = sorted(task_vectors)
    if tasks:
        tensors["task_vectors"] = torch.from_numpy(np.stack([task_vectors[t] for t in tasks]))
    return tensors, tasks


def model_meta(model: FoundationModel, tasks: list[str], text_encoder: str, **extra: Any) -> dict[str, Any]:
    return {"format": FORMAT, "config": model.config.to_json(),
            "embodiments": [s.to_json() for s in model.specs.values()],
            "text_encoder": text_encoder, "tasks": tasks, **extra}


def build(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> LoadedModel:
    """A model from saved tensors and metadata (strict: every weight present, none extra)."""
    if meta.get("format") != FORMAT:
        raise ValidationError(f"not an Onshore model (format {meta.get('format')!r}, expected {FORMAT})")
    model = FoundationModel(ModelConfig.from_json(meta["config"]),
                            [EmbodimentSpec.from_json(e) for e in meta["embodiments"]])
    model.load_state_dict({k[len("weights."):]: v for k, v in tensors.items() if k.startswith("weights.")})
    model.eval()
    vectors = tensors.get("task_vectors")
    table = {t: vectors[i].numpy().astype(np.float32) for i, t in enumerate(meta["tasks"])} if vectors is not None \
        else {}
    return LoadedModel(model, meta, table)


def load(folder: Path, key: bytes, context: str, expect: dict[str, str],
         expect_sealed: dict[str, str] | None = None) -> LoadedModel:
    """Open the sealed model in ``folder`` with its data key, checking every digest (see ``io.read_artifact``)."""
    tensors, meta = io.read_artifact(folder, STEM, key, context, expect, expect_sealed)
    return build(tensors, meta)


class ModelPolicy:
    """A loaded model acting for one embodiment, with action chunking and temporal ensembling."""

    def __init__(self, loaded: LoadedModel, embodiment: str, ensemble: bool | None = None,
                 m: float | None = None) -> None:
        if embodiment not in loaded.model.specs:
            raise ValidationError(f"the model was not trained for embodiment {embodiment!r}; it knows "
                                  f"{', '.join(loaded.model.specs)} (fine-tune it on data of that machine)")
        self.loaded = loaded
        self.name = embodiment
        self.spec = loaded.model.specs[embodiment]
        c = loaded.config
        self.ensemble = c.ensemble if ensemble is None else ensemble
        self.feedback = c.action_feedback
        self.k, self.h = c.history, c.chunk
        self._weights = np.exp(-(c.ensemble_m if m is None else m) * np.arange(self.h))  # 0: the oldest
        self._task: torch.Tensor | None = None
        self._hist = np.zeros((self.k, self.spec.state_dim), dtype=np.float32)
        self._chunks = np.zeros((self.h, self.h, self.spec.action_dim), dtype=np.float32)  # row j: j steps ago
        self._prev = np.zeros((self.k, self.spec.action_dim), dtype=np.float32)  # applied before each frame
        self._known = np.zeros(self.k, dtype=np.float32)
        self._t = 0

    def reset(self, task: str) -> None:
        self._task = torch.from_numpy(self.loaded.task_vector(task)[None])
        self._t = 0

    def act(self, state: np.ndarray) -> np.ndarray:
        """The command for ``state`` (in the embodiment's units): one forward pass, this policy alone."""
        return act_batch([self], [state])[0]

    def _inputs(self, state: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Take ``state`` into the history; the forward pass's inputs (history, applied actions, known)."""
        if self._task is None:
            raise ValidationError("call reset(task) before act(state)")
        s = self.spec.normalise_state(np.asarray(state, dtype=np.float32).reshape(-1))
        if self._t == 0:
            self._hist[:] = s  # no history yet: repeat the first state, as training pads episodes
            self._prev[:] = 0.0
            self._known[:] = 0.0
        else:
            self._hist[:-1] = self._hist[1:].copy()
            self._hist[-1] = s
        return self._hist, self._prev, self._known

    def _apply(self, chunk_np: np.ndarray) -> np.ndarray:
        """Take the predicted chunk [H, A] into the ensemble; the command to apply now."""
        self._chunks[1:] = self._chunks[:-1].copy()
        self._chunks[0] = chunk_np
        self._t += 1
        if self.ensemble:
            n = min(self._t, self.h)
            ages = np.arange(n)  # the chunk predicted j steps ago says chunk[j] for now
            preds = self._chunks[ages, ages]  # [n, A]
            w = self._weights[:n][::-1]  # age n-1 is the oldest: weight exp(0)
            scaled = np.clip((w[:, None] * preds).sum(0) / w.sum(), -1.0, 1.0)
        else:
            scaled = np.clip(chunk_np[0], -1.0, 1.0)
        # What this step applies is what the next frame's history says was applied before it.
        self._prev[:-1] = self._prev[1:].copy()
        self._prev[-1] = scaled
        self._known[:-1] = self._known[1:].copy()
        self._known[-1] = 1.0
        return self.spec.unscale_action(scaled)


def act_batch(policies: Sequence[ModelPolicy], states: Sequence[np.ndarray]) -> list[np.ndarray]:
    """``policies[i].act(states[i])`` for every i, with one forward pass per (model, embodiment).

    Each policy keeps its own history, chunks and ensemble: the actions are those of acting one
    by one, within float tolerance (a batched matrix product may sum in another order). The
    policies must be distinct (one state per policy and step; ``ValueError`` otherwise) and
    reset; a policy that is not reset raises ``ValidationError`` before any state is taken.
    """
    if len(policies) != len(states):
        raise ValueError(f"{len(policies)} policies but {len(states)} states")
    if len({id(p) for p in policies}) != len(policies):
        raise ValueError("a policy appears twice in one batch; give it one state per step")
    for p in policies:
        if p._task is None:
            raise ValidationError("call reset(task) before act(state)")
    groups: dict[tuple[int, str], list[int]] = {}
    for i, p in enumerate(policies):
        groups.setdefault((id(p.loaded.model), p.name), []).append(i)
    out: list[np.ndarray] = [np.empty(0)] * len(policies)
    for idx in groups.values():
        members = [policies[i] for i in idx]
        inputs = [p._inputs(states[i]) for p, i in zip(members, idx, strict=True)]
        first = members[0]
        hist = torch.from_numpy(np.stack([x[0] for x in inputs]))
        task = torch.cat([p._task for p in members])  # type: ignore[misc]
        fb = (torch.from_numpy(np.stack([x[1] for x in inputs])), torch.from_numpy(np.stack([x[2] for x in inputs]))) \
            if first.feedback else ()
        with torch.inference_mode():
            chunk, _ = first.loaded.model.predict(first.name, hist, task, *fb)
        chunks = chunk.float().numpy()
        for j, (p, i) in enumerate(zip(members, idx, strict=True)):
            out[i] = p._apply(chunks[j])
    return out


_cache: dict[tuple[str, str], LoadedModel] = {}


@dataclass(frozen=True)
class ModelPolicyFactory:
    """Builds a :class:`ModelPolicy` in an evaluation worker (picklable: a folder, digests, a key).

    Each process opens the sealed files (or, with ``plaintext``, an export's plain files) once,
    checking their digests, and runs torch on ``threads`` threads (evaluation already runs one
    worker per core). ``key`` is the released data key of the model artifact and ``context`` the
    artifact's context (``io.write_artifact``); an export has neither.
    """

    folder: str
    digests: tuple[tuple[str, str], ...]
    embodiment: str
    label: str = "model"  # the name evaluation reports show
    ensemble: bool | None = None  # None: as the model's config says
    threads: int = 1
    key: bytes = field(default=b"", repr=False)
    context: str = ""
    sealed: tuple[tuple[str, str], ...] = ()
    plaintext: bool = False  # an export's plain files (no key), checked against ``digests`` all the same

    def __call__(self) -> ModelPolicy:
        torch.set_num_threads(self.threads)
        ident = (self.folder, dict(self.digests).get(f"{STEM}.safetensors", ""))
        loaded = _cache.get(ident)
        if loaded is None:
            if self.plaintext:
                loaded = _cache[ident] = build(*io.load_plain(Path(self.folder), STEM, dict(self.digests)))
            else:
                loaded = _cache[ident] = load(Path(self.folder), self.key, self.context, dict(self.digests),
                                              dict(self.sealed) or None)
        return ModelPolicy(loaded, self.embodiment, self.ensemble)
