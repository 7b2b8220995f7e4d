"""Training a model at one site on the data resident there: ``train(ws, request)``.

The order of a run, and what each step may touch:

1. Check the request (names, sizes, weights). The run trains the next version of the name
   (``versions.next_id``): ``NAME`` if the name is new, ``NAME@V`` after its highest version, and
   everything below (folder, lock, keys, entries) uses that id; a fine-tune's ``base`` is a model
   id too (an archived base is refused).
2. Decide ``train`` at the site for the purpose for **every** dataset (each decision in the
   ledger); any refusal raises ``PolicyDenied`` (exit 3) naming each rule, before any key is
   released or byte read, and before any model folder exists. A fine-tune first decides
   ``train`` on its base model at the site for the purpose (the base's Cedar carries its own
   lineage's clauses) and its key service releases the base's key.
3. Release each dataset's key at the site (each release in the ledger with the purpose). In a
   job of several processes only rank 0 talks to the workspace; it hands the keys to its peers
   over the process group, which runs inside the site.
4. One pass over the shards for normalisation statistics, tasks and held-out windows; then the
   steps, streaming windows shard by shard (see :mod:`onshore.train.data`).
5. Every ``checkpoint_every`` steps, a checkpoint (weights, EMA, optimizer, data position)
   under ``SITE_ROOT/models/ID/checkpoints/``, sealed with the job's key (wrapped under the
   model's key in the site's custody, ``keyservice.checkpoint_key``), recorded as
   ``job.checkpoint`` with its datasets. The run holds the lock ``locks/train.ID.lock`` from
   its first check to its end, so a second run of the name (which would train the same
   version) is refused before it writes anything. Running the same request again after a crash
   or ``kill -9`` resumes from the newest recorded checkpoint, opened through
   ``keyservice.release_checkpoint`` (decided and recorded like any key release), and ends with
   the same weights as an uninterrupted run.
6. At the end: the EMA weights as ``model.safetensors`` + ``model.json``, sealed under a new
   data key for the artifact (``model/io.py``), ``metrics.csv``, ``loss.png``, ``job.end`` and
   ``model.release`` in the ledger, the model and its lineage in the catalog, the key wrapped for
   the training site only.

Optimisation: AdamW (no weight decay on norms, biases and tokens), linear warm-up then cosine
decay to ``min_lr_ratio``, gradient clipping, EMA of the weights with a warm-up
(``min(ema_decay, (1 + t) / (10 + t))``), bf16 autocast only where the hardware has it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

import onshore
from onshore import errors
from onshore.errors import IntegrityError, OnshoreError, PolicyDenied, ValidationError
from onshore.keys.envelope import new_data_key
from onshore.model import io
from onshore.model import policy as mp
from onshore.model.network import (
    EmbodimentSpec,
    FoundationModel,
    ModelConfig,
    init_seed,
    model_config,
    parameter_count,
)
from onshore.model.text import MINILM, get_encoder
from onshore.residency.pdp import Request
from onshore.telemetry.embodiment import Embodiment
from onshore.train import distributed as D
from onshore.train.data import Mixer, Scan, normalise, scan
from onshore.train.metrics import MetricsLog, plot_losses
from onshore.workspace import attempts, keyservice, runs, versions
from onshore.workspace import datasets as wsd
from onshore.workspace import models as wsm
from onshore.workspace.registry import get_embodiment, get_site
from onshore.workspace.workspace import Workspace

CHECKPOINT_STEM = "train"
CHECKPOINT_KEY_FILE = runs.KEY_FILE
KEEP_CHECKPOINTS = 2
PRECISIONS = ("auto", "bf16", "fp32")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings. ``holdout``: fraction of episodes kept out for a held-out loss."""

    steps: int = 2000
    batch_size: int = 128
    lr: float = 5e-4
    min_lr_ratio: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 10
    holdout: float = 0.0
    # the datasets that hold episodes out (empty: every one): co-training on a pool beside a few
    # demonstrations validates on the demonstrations alone, so its held-out loss compares with a
    # fine-tune on the demonstrations only
    holdout_from: tuple[str, ...] = ()
    precision: str = "auto"
    strategy: str = "ddp"
    freeze_trunk: bool = False
    text_encoder: str = MINILM
    # fine-tuning only: refit the state normalisation on the fine-tune data, folded into the stem
    # and the world head so that the base model's function is unchanged at step 0
    refit_stats: bool = False
    # per-embodiment loss balancing: each embodiment's mean loss is divided by a running average
    # of itself, so every embodiment pulls on the shared trunk with the same relative weight
    # whatever the scale of its losses (the overall scale is kept: see _balanced_loss)
    balance: bool = False

    def check(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every", "log_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValidationError(f"--{name.replace('_', '-')} must be a whole number >= 1, got {v}")
        for name in ("lr", "min_lr_ratio", "weight_decay", "grad_clip", "ema_decay", "holdout"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise ValidationError(f"--{name.replace('_', '-')} must be a finite number, got {v}")
        if not 0 <= self.holdout < 1:
            raise ValidationError(f"--holdout must be in [0, 1), got {self.holdout}")
        if self.holdout_from and not self.holdout > 0:
            raise ValidationError("--holdout-from names the datasets that hold episodes out: give --holdout > 0 too")
        if not self.lr > 0 or not 0 <= self.ema_decay < 1 or self.warmup < 0:
            raise ValidationError("--lr must be > 0, --ema-decay in [0, 1), --warmup >= 0")
        if self.precision not in PRECISIONS:
            raise ValidationError(f"--precision {self.precision!r}: use one of {', '.join(PRECISIONS)}")
        if self.strategy not in D.STRATEGIES:
            raise ValidationError(f"--strategy {self.strategy!r}: use one of {', '.join(D.STRATEGIES)}")


@dataclass(frozen=True)
class TrainRequest:
    """Train model ``name`` at ``site`` for ``purpose`` on ``datasets`` (fine-tune ``base`` if given)."""

    name: str
    site: str
    purpose: str
    datasets: tuple[str, ...]
    weights: tuple[float, ...] = ()  # per dataset; empty: 1 each
    size: str = "small"
    train: TrainConfig = field(default_factory=TrainConfig)
    base: str | None = None
    model_overrides: tuple[tuple[str, Any], ...] = ()  # e.g. (("chunk", 8),) for sweeps

    def fingerprint(self) -> dict[str, Any]:
        """Everything that fixes the result: a rerun resumes only if this matches."""
        d = asdict(self)
        for opt in ("balance", "holdout_from"):  # runs from before an option resume as they were
            if not getattr(self.train, opt):
                d["train"].pop(opt)
        if self.train.holdout_from:
            d["train"]["holdout_from"] = list(self.train.holdout_from)
        d["datasets"], d["weights"] = list(self.datasets), list(self.weights_or_default())
        d["model_overrides"] = [list(x) for x in self.model_overrides]
        return d

    def weights_or_default(self) -> tuple[float, ...]:
        return self.weights or tuple(1.0 for _ in self.datasets)

    def holdouts(self) -> tuple[float, ...]:
        """The fraction of episodes each dataset holds out (see ``TrainConfig.holdout_from``)."""
        tc = self.train
        return tuple(tc.holdout if not tc.holdout_from or d in tc.holdout_from else 0.0 for d in self.datasets)


@dataclass
class TrainResult:
    name: str
    site: str
    folder: Path
    files: dict[str, str]
    steps: int
    resumed_from: int
    parameters: int
    metrics: dict[str, Any]
    world_size: int
    samples_per_s: float
    ledger_index: int | None


Progress = Callable[[int, int, dict[str, float]], None]


def code_version() -> str:
    """Package version plus a digest of the model and training source it ran."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parents[1]
    for sub in ("model", "train"):
        for p in sorted((root / sub).glob("*.py")):
            h.update(p.name.encode() + p.read_bytes())
    return f"{onshore.__version__}+{h.hexdigest()[:12]}"


def use_bf16(precision: str, device: torch.device) -> bool:
    """bf16 autocast for ``bf16``; for ``auto`` only on CUDA with native bf16.

    On CPUs with AVX512-BF16/AMX, autocast was measured about 10x slower than fp32 for these
    model sizes (conversion overhead dominates small matrices), so ``auto`` keeps CPUs in fp32.
    """
    if precision == "bf16":
        if not bf16_supported(device):
            raise ValidationError("--precision bf16: this hardware has no native bf16; use auto or fp32")
        return True
    return precision == "auto" and device.type == "cuda" and bf16_supported(device)


def bf16_supported(device: torch.device) -> bool:
    """Whether this hardware runs bf16 natively (CUDA with bf16, or a CPU with AVX512-BF16/AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up over ``warmup`` steps (at most a tenth of the run), then cosine decay."""
    warm = min(cfg.warmup, max(1, cfg.steps // 10))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    progress = (step - warm) / max(1, cfg.steps - warm)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


BALANCE_DECAY = 0.98


def _balanced_loss(parts: torch.Tensor, world_weight: float, avg: torch.Tensor) -> torch.Tensor:
    """The balanced training loss from ``parts`` ([embodiment, (action sum, world sum, samples)]).

    Each embodiment present contributes its mean loss divided by ``avg`` (its running mean,
    updated here in place, detached), and the mean of those ratios is multiplied back by the mean
    of ``avg``: the loss keeps its usual scale (gradient clipping and learning rates mean what
    they meant), while an embodiment whose losses are small no longer counts for less. A form of
    the loss normalisation across tasks that multi-task and cross-embodiment training use."""
    present = parts[:, 2] > 0
    mean = (parts[:, 0] + world_weight * parts[:, 1]) / parts[:, 2].clamp(min=1.0)
    with torch.no_grad():
        m = mean.detach()
        fresh = present & (avg == 0)
        avg[fresh] = m[fresh]
        seen = present & ~fresh
        avg[seen] = BALANCE_DECAY * avg[seen] + (1 - BALANCE_DECAY) * m[seen]
    ratios = mean[present] / avg[present].clamp(min=1e-8)
    return ratios.mean() * avg[present].mean() + 0.0 * parts[:, 0].sum()


def _to_torch(batch: dict[str, dict[str, np.ndarray]], device: torch.device) -> dict[str, dict[str, torch.Tensor]]:
    return {e: {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in g.items()}
            for e, g in batch.items()}


# ---- the prologue: decisions, keys, folder (rank 0), handed to every rank -----------------------------

def _prologue(ws: Workspace, req: TrainRequest, world: D.World) -> dict[str, Any]:
    """Rank 0's checks, decisions and key releases; returns what every rank needs to train.

    Every decision comes before any key is released: a fine-tune's base model is decided first
    and, if it is refused, every dataset is still decided (so the refusal names every rule) and
    nothing is released; otherwise ``open_resident`` decides every dataset before releasing any,
    and only then is the base model's key released.
    """
    site = get_site(ws, req.site)
    if req.base is not None:
        wsm.get_model(ws, req.base)
        versions.check_usable(ws, req.base, "train")  # an archived base: refused before any decision
        _decide_base(ws, req)
    opened = wsd.open_resident(ws, list(req.datasets), req.site, req.purpose, "train")
    base_info = None
    if req.base is not None:
        base = wsm.open_model(ws, req.base, req.site, "train", req.purpose)
        base_info = {"folder": str(base.folder), "files": base.files, "sealed": base.sealed, "name": req.base,
                     "key": base.key, "context": base.context}
    embodiments = {d.embodiment: get_embodiment(ws, d.embodiment).to_dict() for d in opened}
    folder = Path(site.root) / "models" / req.name
    return {
        "datasets": [{"name": d.name, "owner": d.owner, "embodiment": d.embodiment, "site": d.site,
                      "root": str(d.root), "shards": d.shards, "decision_index": d.decision_index, "key": d.key}
                     for d in opened],
        "embodiments": embodiments, "folder": str(folder), "jurisdiction": site.jurisdiction,
        "policy_hash": ws.pdp().policy_hash, "base": base_info,
    }


def _decide_base(ws: Workspace, req: TrainRequest) -> None:
    """Decide ``train`` on the base model (recorded); on a refusal decide the datasets too and
    raise PolicyDenied naming every refused rule, with no key released."""
    assert req.base is not None
    decision, index = wsm.decide(ws, req.base, "train", req.site, req.purpose)
    if decision.allowed:
        return
    for n in req.datasets:
        ws.row("dataset", n)
    decided = ws.decide_many([Request(f"site:{req.site}", "train", n, req.site, req.purpose) for n in req.datasets])
    refused = [(f"base model {req.base!r}", decision, index)]
    refused += [(f"dataset {n!r}", d, i) for n, (d, i) in zip(req.datasets, decided, strict=True) if not d.allowed]
    raise PolicyDenied(f"refused: train at site {req.site} for purpose {req.purpose!r}: " + "; ".join(
        f"{what}: rule(s) {', '.join(d.rules)} (ledger entry {i})" for what, d, i in refused),
        sorted({r for _, d, _ in refused for r in d.rules}))


def check_model_options(req: TrainRequest) -> ModelConfig | None:
    """Refuse, before anything is decided or read, model options that cannot make a network.

    Each option must have its field's type, whole numbers >= 1, reals finite and >= 0 (no NaN,
    no infinity); then the network is built in a dry run (on the ``meta`` device: no memory, no
    weights) and one window is passed through it, so e.g. ``d_model=63`` with 4 heads is refused
    here. A fine-tune keeps its base model's configuration: options are refused with ``base``.
    Returns the configuration (None for a fine-tune).
    """
    if req.train.refit_stats and req.base is None:
        raise ValidationError("--refit-stats refits a base model's state statistics on the fine-tune data; "
                              "it needs a base model (onshore finetune BASE)")
    if req.base is not None:
        if req.model_overrides:
            raise ValidationError("a fine-tune keeps its base model's configuration; drop the model options")
        return None
    cfg = model_config(req.size, **dict(req.model_overrides))
    named = ", ".join(f"{k}={v}" for k, v in req.model_overrides) or f"--config {req.size}"
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if f.name == "size":
            continue
        if isinstance(v, bool):
            continue
        if isinstance(v, int) and v < 1:
            raise ValidationError(f"model option {f.name}={v}: must be a whole number >= 1")
        if isinstance(v, float) and not (math.isfinite(v) and v >= 0):
            raise ValidationError(f"model option {f.name}={v}: must be a finite number >= 0")
    state_dim, action_dim = 3, 2
    spec = EmbodimentSpec("dry-run", state_dim, action_dim, (("all", tuple(range(state_dim))),),
                          (0.0,) * state_dim, (1.0,) * state_dim, (-1.0,) * action_dim, (1.0,) * action_dim)
    try:
        with torch.device("meta"):
            net = FoundationModel(cfg, [spec])
            prev = torch.zeros(1, cfg.history, action_dim) if cfg.action_feedback else None
            known = torch.ones(1, cfg.history) if cfg.action_feedback else None
            net.predict("dry-run", torch.zeros(1, cfg.history, state_dim), torch.zeros(1, cfg.text_dim), prev, known)
    except ValidationError as e:
        raise ValidationError(f"model options {named}: {e}") from None
    except (RuntimeError, ValueError, TypeError, ArithmeticError, IndexError) as e:
        raise ValidationError(f"model options {named} do not make a network: {e}") from None
    return cfg


def _claim_folder(folder: Path, req: TrainRequest) -> list[Path]:
    """Create the run folder, or find the unfinished run of the same request; returns its
    checkpoints, newest first (none for a new run).

    Called only under the model's training lock (``runs.lock_key``), so a folder found here
    was left by a run that is gone, never by one still writing it.
    """
    run = folder / "run.json"
    if run.is_file():
        if json.loads(run.read_text()) != req.fingerprint():
            raise ValidationError(f"{folder} holds an unfinished run of a different request; rerun the same "
                                  "command to resume it, or remove that folder to start over")
        return runs.sealed_checkpoints(folder)
    if folder.exists():
        shutil.rmtree(folder)  # a run killed before it wrote run.json left nothing to resume
    (folder / "checkpoints").mkdir(parents=True)
    run.write_text(json.dumps(req.fingerprint(), indent=1, sort_keys=True))
    return []


def _same_datasets(recorded: list[dict[str, Any]], run: list[dict[str, Any]]) -> bool:
    """Whether a checkpoint's recorded datasets are the run's: same names, order and shard digests."""
    def key(ds: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
        return [(str(d.get("name")), sorted(map(str, d.get("shards") or []))) for d in ds]
    return key(recorded) == key(run)


def _run_datasets(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's datasets as a checkpoint records them: name and shard digests, in order."""
    return [{"name": d["name"], "shards": [s["sha256"] for s in d["shards"]]} for d in payload["datasets"]]


def _resume_point(ws: Workspace, req: TrainRequest, candidates: list[Path]) -> Path | None:
    """The newest checkpoint the ledger records; newer ones it does not (a kill between sealing a
    checkpoint and recording it) are removed, under the run's lock."""
    for path in candidates:
        try:
            runs.ledger_checkpoint(ws, req.name, path)
        except IntegrityError:
            shutil.rmtree(path, ignore_errors=True)
            continue
        return path
    return None


def _open_checkpoint(ws: Workspace, req: TrainRequest, path: Path, payload: dict[str, Any]) -> bytes:
    """The job key of the checkpoint the run resumes from, released by the key service (recorded).

    The signed ledger's record of the checkpoint's datasets must be exactly the run's (an edited
    ``run.json`` cannot drop or swap a dataset and launder it out of the lineage); then the key
    service decides every one of them again and releases the key.
    """
    _, body, recorded = runs.ledger_checkpoint(ws, req.name, path)
    run = _run_datasets(payload)
    if not _same_datasets(recorded, run):
        raise IntegrityError(
            f"{path}: the ledger records this checkpoint of model {req.name!r} as made from "
            f"{[d.get('name') for d in recorded]}, but this run reads {[d['name'] for d in run]}: a resumed run "
            "keeps its datasets; rerun the original command, or remove the run's folder (or run 'onshore doctor "
            "--repair') to start over")
    rel = keyservice.release_checkpoint(ws, req.name, req.site, req.purpose, [d["name"] for d in recorded],
                                        int(body["step"]), path.parent / CHECKPOINT_KEY_FILE)
    return rel.key


# ---- checkpoints -------------------------------------------------------------------------------------

def _checkpoint_context(name: str) -> str:
    return f"checkpoint:{name}"


def _write_checkpoint(folder: Path, step: int, model_state: dict[str, Any], optim_state: dict[str, Any],
                      ema: dict[str, torch.Tensor], meta: dict[str, Any], task_vectors: np.ndarray,
                      key: bytes, name: str) -> dict[str, str]:
    tensors = {f"model.{k}": v for k, v in model_state.items()}
    tensors["task_vectors"] = torch.from_numpy(np.ascontiguousarray(task_vectors, dtype=np.float32))
    tensors.update({f"ema.{k}": v for k, v in ema.items()})
    for fqn, st in optim_state["state"].items():
        for k, v in st.items():
            tensors[f"optim.{fqn}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    meta = {**meta, "step": step, "param_groups": optim_state["param_groups"],
            "optim_keys": {fqn: sorted(st) for fqn, st in optim_state["state"].items()}}
    ckpts = folder / "checkpoints"
    tmp = ckpts / f".step-{step:07d}.{uuid.uuid4().hex}"
    files = io.write_artifact(tmp, CHECKPOINT_STEM, tensors, meta, key, _checkpoint_context(name)).files
    (tmp / "digests.json").write_text(json.dumps(files, sort_keys=True))
    final = ckpts / f"step-{step:07d}"
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in sorted(p for p in ckpts.glob("step-*"))[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return files


def _read_checkpoint(path: Path, key: bytes, name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    expect = json.loads((path / "digests.json").read_text())
    return io.read_artifact(path, CHECKPOINT_STEM, key, _checkpoint_context(name), expect)


def _split_checkpoint(tensors: dict[str, torch.Tensor], meta: dict[str, Any]
                      ) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, torch.Tensor]]:
    model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    ema = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
    state = {fqn: {k: tensors[f"optim.{fqn}.{k}"] for k in keys} for fqn, keys in meta["optim_keys"].items()}
    return model_state, {"state": state, "param_groups": meta["param_groups"]}, ema


# ---- the run -----------------------------------------------------------------------------------------

def train(ws: Workspace | None, req: TrainRequest, progress: Progress | None = None, device: str | None = None,
          log: Callable[[str], None] | None = None) -> TrainResult | None:
    """Train as described in the module docstring; returns the result on rank 0 (None elsewhere).

    ``ws`` is needed on rank 0 only (other ranks of a torchrun job may pass None). ``req.name``
    is a model name: the run releases its next version, whose id is the result's ``name``.
    Refused before any data is read: bad settings (``ValidationError``), a run of the same name
    in progress (``attempts.Busy``), an archived base, a dataset or base model that policy does
    not allow here (``PolicyDenied``, exit 3).
    """
    req.train.check()
    if not req.datasets:
        raise ValidationError("name at least one dataset (--datasets) or use --all-granted")
    if req.weights and len(req.weights) != len(req.datasets):
        raise ValidationError("give one weight per dataset")
    if unknown := sorted(set(req.train.holdout_from) - set(req.datasets)):
        raise ValidationError(f"--holdout-from names {unknown}, which are not among the datasets trained on")
    check_model_options(req)  # a network these options cannot make: refused before anything is decided
    say = log or (lambda _m: None)
    world = D.setup(device)
    try:
        with contextlib.ExitStack() as hold:
            return _train(ws, req, world, progress, say, hold)
    finally:
        D.teardown(world)


def _train(ws: Workspace | None, req: TrainRequest, world: D.World, progress: Progress | None,
           say: Callable[[str], None], hold: contextlib.ExitStack) -> TrainResult | None:
    tc = req.train
    # -- prologue on rank 0, result or error broadcast to all --
    payload: dict[str, Any] | None = None
    error: tuple[str, str, list[str]] | None = None
    failed: OnshoreError | None = None
    resume_path: Path | None = None
    if world.main:
        if ws is None:
            raise ValidationError("rank 0 needs a workspace")
        try:
            # the version this run releases; one run per version, held to the end: a second run of
            # the name (the same next version) is refused before it writes anything
            model = versions.next_id(ws, req.name)
            hold.enter_context(attempts.exclusive(
                ws, runs.lock_key(model), f"model {req.name!r} is being trained by another process right now; "
                "wait for it to finish (a run that is killed can be resumed by rerunning its command)"))
            wsm.check_unreleased(ws, model)  # released by a run that ended between next_id and the lock
            req = replace(req, name=model)
            payload = _prologue(ws, req, world)
            payload["model"] = model
            resume_path = _resume_point(ws, req, _claim_folder(Path(payload["folder"]), req))
            payload["resume"] = str(resume_path) if resume_path else None
            wrap = Path(payload["folder"]) / "checkpoints" / CHECKPOINT_KEY_FILE
            payload["checkpoint_key"] = (_open_checkpoint(ws, req, resume_path, payload) if resume_path
                                         else keyservice.checkpoint_key(ws, req.name, req.site, wrap))
        except OnshoreError as e:
            failed = e
            error = (type(e).__name__, str(e), list(getattr(e, "rules", [])))
    payload, error = D.broadcast(world, (payload, error))
    if error is not None:
        if failed is not None:
            raise failed
        kind, msg, rules = error  # the other ranks raise the same kind of error
        cls = getattr(errors, kind, OnshoreError)
        raise PolicyDenied(msg, rules) if cls is PolicyDenied else cls(msg)
    assert payload is not None
    req = replace(req, name=payload["model"])  # every rank trains the version rank 0 chose
    folder = Path(payload["folder"])
    resume_path = Path(payload["resume"]) if payload["resume"] else None
    sources = [wsd.ResidentDataset(d["name"], d["owner"], d["embodiment"], d["site"], Path(d["root"]), d["shards"],
                                   d["decision_index"], d["key"]) for d in payload["datasets"]]
    embodiments = {n: Embodiment.from_dict(e) for n, e in payload["embodiments"].items()}

    # -- base model (fine-tuning) and configuration --
    b = payload["base"]
    base = mp.load(Path(b["folder"]), b["key"], b["context"], b["files"], b["sealed"]) if b else None
    cfg: ModelConfig = base.config if base is not None else model_config(req.size, **dict(req.model_overrides))
    keep = dict(base.model.specs) if base is not None else {}

    # -- scan (rank 0) or checkpoint: statistics, tasks, task vectors --
    ckpt_tensors: dict[str, torch.Tensor] | None = None
    ckpt_meta: dict[str, Any] | None = None
    if resume_path is not None:
        ckpt_tensors, ckpt_meta = _read_checkpoint(resume_path, payload["checkpoint_key"], req.name)
        # the sealed checkpoint's own record of its run, which no plaintext file can change
        sealed_run = [{"name": d["name"], "shards": d["shards"]} for d in ckpt_meta.get("datasets", [])]
        if ckpt_meta.get("request") != req.fingerprint() or not _same_datasets(sealed_run, _run_datasets(payload)):
            raise IntegrityError(f"{resume_path}: the sealed checkpoint was made by a different request (datasets "
                                 f"{[d['name'] for d in sealed_run]}) than this run's; remove the run's folder to "
                                 "start over")
    scanned: Scan | None = None
    encoder_name = tc.text_encoder
    vectors: np.ndarray | None = None
    if world.main:
        say("scanning the data for normalisation statistics ...")
        refit = {s.embodiment for s in sources} if tc.refit_stats else set()
        scanned = scan(sources, embodiments, cfg, req.holdouts(), tc.seed,
                       keep={n: sp for n, sp in keep.items() if n not in refit})
        for n in refit & set(keep):  # new state statistics; the base's groups and action scaling
            scanned.specs[n] = replace(keep[n], state_mean=scanned.specs[n].state_mean,
                                       state_std=scanned.specs[n].state_std)
        if ckpt_meta is not None:
            scanned.specs = {e["name"]: EmbodimentSpec.from_json(e) for e in ckpt_meta["embodiments"]}
            scanned.tasks = list(ckpt_meta["tasks"])
            vectors = ckpt_tensors["task_vectors"].numpy()  # type: ignore[index]
            encoder_name = ckpt_meta["text_encoder"]
        else:
            encoder = get_encoder(base.meta["text_encoder"] if base is not None else tc.text_encoder)
            encoder_name = encoder.name
            vectors = encoder.encode(scanned.tasks) if scanned.tasks else np.zeros((0, cfg.text_dim), np.float32)
    scanned, vectors, encoder_name = D.broadcast(world, (scanned, vectors, encoder_name))
    assert scanned is not None and vectors is not None

    # -- the network --
    init_seed(tc.seed)
    if base is not None:
        net = base.model
        net.train()
        for name in dict.fromkeys(s.embodiment for s in sources):
            if name not in net.specs:
                net.add_embodiment(scanned.specs[name])  # a new machine type: fresh stem and head
            elif tc.refit_stats:
                net.refit_state(scanned.specs[name])  # same function, the fine-tune data's statistics
    else:
        order = list(dict.fromkeys(s.embodiment for s in sources))
        net = FoundationModel(cfg, [scanned.specs[n] for n in order])
    if tc.freeze_trunk:
        for p in net.trunk_parameters():
            p.requires_grad_(False)
    # A base model's embodiments that this run has no data for stay exactly as they were.
    for name in net.specs:
        if name not in {s.embodiment for s in sources}:
            for p in net.embodiment_parameters(name):
                p.requires_grad_(False)
    net.to(world.device)
    model = D.wrap(net, world, tc.strategy)
    trainable = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    decay = [p for n, p in trainable if p.ndim >= 2 and not n.startswith("tokens.") and not n.endswith(".pos")]
    no_decay = [p for n, p in trainable if not (p.ndim >= 2 and not n.startswith("tokens.") and not n.endswith(".pos"))]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=tc.lr, betas=(0.9, 0.95),
                                  foreach=True)
    ema = {n: p.detach().clone() for n, p in net.named_parameters()}
    mixer = Mixer(sources, embodiments, req.weights_or_default(), tc.batch_size, scanned, vectors, cfg, tc.seed,
                  req.holdouts(), world.rank, world.size)
    start = 0
    if ckpt_meta is not None:
        model_state, optim_state, ema_full = _split_checkpoint(ckpt_tensors, ckpt_meta)  # type: ignore[arg-type]
        D.load_full_state(net, optimizer, model_state, optim_state)
        ema = {n: D.like(ema_full[n], p) for n, p in net.named_parameters()}
        mixer.restore(ckpt_meta["mixer"])
        start = int(ckpt_meta["step"])
    bf16 = use_bf16(tc.precision, world.device)
    heldout = {e: normalise(w, scanned.specs[e], vectors) for e, w in scanned.heldout.items()}

    # -- the ledger: job start --
    job = uuid.uuid4().hex
    lineage = [{"name": s.name, "owner": s.owner, "embodiment": s.embodiment, "weight": w,
                "shards": s.shard_digests, "decision_index": s.decision_index}
               for s, w in zip(sources, req.weights_or_default(), strict=True)]
    static_meta = {
        "request": req.fingerprint(), "config": cfg.to_json(), "embodiments": [s.to_json() for s in net.specs.values()],
        "tasks": scanned.tasks, "text_encoder": encoder_name, "datasets": lineage, "site": req.site,
        "jurisdiction": payload["jurisdiction"], "policy_hash": payload["policy_hash"], "code_version": code_version(),
        "world_size": world.size, "strategy": tc.strategy, "precision": "bf16" if bf16 else "fp32",
    }
    if world.main:
        assert ws is not None
        ws.record("job.start", f"site:{req.site}", {
            "job": job, "type": "finetune" if req.base else "train", "model": req.name, "site": req.site,
            "jurisdiction": payload["jurisdiction"], "purpose": req.purpose, "base": req.base,
            "datasets": [{k: d[k] for k in ("name", "owner", "shards", "decision_index")} for d in lineage],
            "config": cfg.to_json(), "train": asdict(tc), "world_size": world.size, "resumed_from_step": start,
            "code_version": static_meta["code_version"], "policy_hash": payload["policy_hash"]})
    metrics_log = MetricsLog(folder / "metrics.csv", start) if world.main else None
    if start:
        say(f"resuming from {resume_path} (step {start})")

    def heldout_losses(m: torch.nn.Module) -> tuple[float, float] | tuple[None, None]:
        """(total, action) loss per window on the held-out episodes' windows."""
        if not heldout:
            return None, None
        with torch.no_grad(), torch.autocast(world.device.type, torch.bfloat16, enabled=bf16):
            sums = m(_to_torch(heldout, world.device)).float()
        n = sum(len(h["state"]) for h in heldout.values())
        return float((sums[0] + cfg.world_weight * sums[1]) / n), float(sums[0] / n)

    def checkpoint(step: int) -> None:
        model_state, optim_state = D.full_state(net, optimizer)
        ema_full = {n: D.to_full(t).cpu() for n, t in ema.items()}
        if world.main:
            assert ws is not None
            files = _write_checkpoint(folder, step, model_state, optim_state, ema_full, {
                **static_meta, "mixer": mixer.state(), "job": job}, vectors,  # a resume does not re-encode tasks
                payload["checkpoint_key"], req.name)
            ws.record("job.checkpoint", f"site:{req.site}", {
                "job": job, "model": req.name, "step": step, "files": files, "site": req.site,
                "purpose": req.purpose, "datasets": [{k: d[k] for k in ("name", "shards")} for d in lineage]})
        D.barrier(world)

    # -- the steps --
    balance_avg = torch.zeros(len(net.specs), device=world.device)  # running mean loss per embodiment
    ema_list = [ema[n] for n, _ in net.named_parameters()]
    params_list = [p.detach() for _, p in net.named_parameters()]
    t0 = time.perf_counter()
    done_samples = 0
    last: dict[str, float] = {}
    steps_total = tc.steps
    for step in range(start, steps_total):
        lr = lr_at(step, tc)
        for g in optimizer.param_groups:
            g["lr"] = lr
        batch = _to_torch(mixer.next_batch(), world.device)
        with torch.autocast(world.device.type, torch.bfloat16, enabled=bf16):
            if tc.balance:
                parts = model(batch, per_embodiment=True).float()
                loss = _balanced_loss(parts, cfg.world_weight, balance_avg)
                sums = parts[:, :2].sum(0)
            else:
                sums = model(batch).float()
        if not tc.balance:
            loss = (sums[0] + cfg.world_weight * sums[1]) * (world.size / tc.batch_size)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_([p for _, p in trainable], tc.grad_clip)
        optimizer.step()
        decay_t = min(tc.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_list, params_list, 1.0 - decay_t)
        done_samples += tc.batch_size
        n_done = step + 1
        if n_done % tc.log_every == 0 or n_done == steps_total or n_done % tc.checkpoint_every == 0:
            glob = D.all_reduce_sum(world, sums.detach()) / tc.batch_size
            elapsed = time.perf_counter() - t0
            last = {"step": n_done, "loss": float(glob[0] + cfg.world_weight * glob[1]),
                    "action_loss": float(glob[0]), "world_loss": float(glob[1]), "lr": lr,
                    "grad_norm": float(D.to_full(grad_norm)), "samples_per_s": done_samples / max(elapsed, 1e-9),
                    "elapsed_s": elapsed}
            if n_done % tc.checkpoint_every == 0 or n_done == steps_total:
                net.eval()
                last["heldout_loss"], last["heldout_action_loss"] = heldout_losses(  # type: ignore[assignment]
                    model if tc.strategy == "fsdp" else net)
                net.train()
            if metrics_log is not None:
                metrics_log.write(last)
            if progress is not None and world.main:
                progress(n_done, steps_total, last)
        if n_done % tc.checkpoint_every == 0 and n_done < steps_total:
            checkpoint(n_done)
    elapsed = time.perf_counter() - t0

    # -- the end: the EMA model, files, ledger and catalog (rank 0) --
    ema_full = {n: D.to_full(t).detach().cpu() for n, t in ema.items()}
    D.barrier(world)
    if not world.main:
        return None
    assert ws is not None and metrics_log is not None
    final = FoundationModel(cfg, list(net.specs.values()))
    final.load_state_dict(ema_full)
    final.eval()
    task_table = {t: vectors[i] for i, t in enumerate(scanned.tasks)}
    tensors, tasks = mp.model_tensors(final, task_table)
    ema_heldout = ema_heldout_action = None
    if heldout:  # the weights the model keeps (EMA), on the held-out episodes: what a recipe is chosen by
        with torch.no_grad():
            s = final(_to_torch(heldout, torch.device("cpu")))
        n_held = sum(len(h["state"]) for h in heldout.values())
        ema_heldout = float((s[0] + cfg.world_weight * s[1]) / n_held)
        ema_heldout_action = float(s[0] / n_held)
    metrics = {"final_loss": last.get("loss"), "final_action_loss": last.get("action_loss"),
               "heldout_loss_ema": ema_heldout, "heldout_action_loss_ema": ema_heldout_action,
               "samples_per_s": done_samples / max(elapsed, 1e-9)}
    meta = mp.model_meta(final, tasks, encoder_name, name=req.name, purpose=req.purpose, base=req.base,
                         steps=steps_total, **{k: v for k, v in static_meta.items()
                                               if k not in ("config", "embodiments", "tasks", "text_encoder")},
                         metrics=metrics)
    data_key = new_data_key()  # one per model artifact; the key service wraps it for this site only
    written = io.write_artifact(folder, mp.STEM, tensors, meta, data_key, wsm.artifact_context(req.name))
    files = written.files
    plot_losses(metrics_log.rows(), folder / "loss.png", f"{req.name}: {cfg.size}, {steps_total} steps")
    ws.record("job.end", f"site:{req.site}", {"job": job, "model": req.name, "step": steps_total, "files": files,
                                              "sealed": written.sealed, "metrics": metrics})
    site_root = Path(get_site(ws, req.site).root)
    idx = wsm.release(ws, wsm.ModelRelease(
        name=req.name, site=req.site, purpose=req.purpose, size=cfg.size,
        config={"model": cfg.to_json(), "train": asdict(tc), "text_encoder": encoder_name,
                "weights": list(req.weights_or_default())},
        folder=str(folder.relative_to(site_root)), files=files, parameters=parameter_count(final),
        steps=steps_total, world_size=world.size, metrics=metrics, datasets=lineage, base=req.base,
        job={"id": job, "code_version": static_meta["code_version"], "policy_hash": payload["policy_hash"]},
        sealed=written.sealed), data_key)
    (folder / "run.json").unlink(missing_ok=True)  # the run is finished: nothing to resume
    return TrainResult(req.name, req.site, folder, files, steps_total, start, parameter_count(final), metrics,
                       world.size, metrics["samples_per_s"], idx)



def granted_datasets(ws: Workspace, site: str, purpose: str) -> list[str]:
    """Datasets held at ``site`` whose policies allow ``train`` there for ``purpose`` (``--all-granted``).

    A listing: the decision point is asked without recording; the training run decides each of
    them again, recorded, before reading.
    """
    from onshore.residency.pdp import Request

    get_site(ws, site)
    out = []
    for d in wsd.list_datasets(ws):
        if d["status"] == "active" and site in d["sites"] and \
                ws.pdp().decide(Request(f"site:{site}", "train", d["name"], site, purpose)).allowed:
            out.append(d["name"])
    return out
