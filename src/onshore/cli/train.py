"""`onshore train` and `onshore finetune`: train a model at a site on the data resident there.

Both also run under ``torchrun --nproc-per-node N -m onshore train ...``: rank 0 talks to the
workspace and prints; the other ranks train their share of each batch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer

from onshore.cli.context import open_workspace
from onshore.cli.inputs import usage
from onshore.cli.output import console, err, esc, print_json
from onshore.errors import ValidationError
from onshore.i18n import N_, Message

JSON = typer.Option(False, "--json", help="Print JSON only, for scripts.")


def _split(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def _weights(text: str | None, datasets: list[str]) -> tuple[float, ...]:
    """``D1=2,D2=0.5`` -> one weight per dataset (1 for those not named)."""
    given: dict[str, float] = {}
    for item in _split(text):
        name, sep, value = item.partition("=")
        try:
            given[name.strip()] = float(value)
            assert sep
        except (ValueError, AssertionError):
            raise ValidationError(f"--weights {item!r}: write DATASET=NUMBER, e.g. arms=2") from None
    unknown = set(given) - set(datasets)
    if unknown:
        raise ValidationError(f"--weights names {sorted(unknown)}, which are not among the datasets trained on")
    return tuple(given.get(d, 1.0) for d in datasets)


def _tensorboard(folder: Path) -> Any:
    """A TensorBoard ``SummaryWriter`` writing event files into ``folder`` (made if missing; no service).

    Refused (``ValidationError``): ``folder`` is a file, or the ``tensorboard`` package is missing.
    """
    if folder.exists() and not folder.is_dir():
        raise ValidationError(f"--tensorboard {folder}: is a file; give a folder for the event files")
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValidationError("--tensorboard needs the tensorboard package: pip install 'onshore[tensorboard]'") \
            from None
    folder.mkdir(parents=True, exist_ok=True)
    return SummaryWriter(log_dir=str(folder))


def _run(request: Any, device: str | None, threads: int | None, json_: bool,
         tensorboard: Path | None = None) -> None:
    import torch

    from onshore.train.loop import train

    if threads is not None:
        if threads < 1:
            raise ValidationError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    main = int(os.environ.get("RANK", "0")) == 0
    board = _tensorboard(tensorboard) if tensorboard is not None and main else None
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    ws = open_workspace()
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]} samples/s"),
                      TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=False,
                      disable=json_ or not main) as bar:
            task = bar.add_task(f"training {request.name}", total=request.train.steps, loss="-", rate="-")

            def progress(step: int, total: int, m: dict[str, float]) -> None:
                bar.update(task, completed=step, loss=f"{m['loss']:.4f}", rate=f"{m['samples_per_s']:.0f}")
                if board is not None:
                    for k, v in m.items():
                        if isinstance(v, int | float):
                            board.add_scalar(f"{request.name}/{k}", float(v), step)

            def log(msg: str) -> None:
                if not json_ and main:
                    err.print(msg, markup=False, highlight=False)

            result = train(ws, request, progress=progress, device=device, log=log)
    finally:
        ws.close()
        if board is not None:
            board.close()
    if result is None:  # ranks other than 0
        return
    out = {"model": result.name, "site": result.site, "folder": str(result.folder), "files": result.files,
           "steps": result.steps, "resumed_from_step": result.resumed_from, "parameters": result.parameters,
           "world_size": result.world_size, "samples_per_s": round(result.samples_per_s, 1),
           "metrics": result.metrics, "ledger_index": result.ledger_index}
    if json_:
        print_json(out)
        return
    resumed = f" (resumed at step {result.resumed_from})" if result.resumed_from else ""
    console.print(f"model [bold]{esc(result.name)}[/] trained at {esc(result.site)}: {result.steps} steps{resumed}, "
                  f"{result.parameters:,} parameters, {result.samples_per_s:.0f} samples/s on "
                  f"{result.world_size} process(es); final loss {result.metrics['final_loss']:.4f}")
    from onshore.model.io import sealed_name

    sealed = ", ".join(sealed_name(n) for n in sorted(result.files))
    console.print(f"sealed for {esc(result.site)} in {esc(result.folder)}: {esc(sealed)} (plus metrics.csv and "
                  "loss.png, which hold no weights)", highlight=False)


def default_checkpoint_every(steps: int) -> int:
    """Every 500 steps; a run of 100 to 500 steps checkpoints at its middle, so a kill can still resume.

    Runs under 100 steps take seconds: they write no checkpoint, and a killed one is rerun.
    """
    if steps > 500:
        return 500
    return max(1, steps // 2) if steps >= 100 else max(1, steps)


def _config(steps: int, batch_size: int, lr: float, warmup: int, checkpoint_every: int | None, holdout: float,
            seed: int, precision: str, strategy: str, freeze_trunk: bool, ema_decay: float,
            text_encoder: str, refit_stats: bool = False, balance: bool = False,
            holdout_from: tuple[str, ...] = ()) -> Any:
    from onshore.train.loop import TrainConfig

    return TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup=warmup,
                       checkpoint_every=checkpoint_every or default_checkpoint_every(steps), holdout=holdout,
                       seed=seed,
                       precision=precision, strategy=strategy, freeze_trunk=freeze_trunk, ema_decay=ema_decay,
                       text_encoder=text_encoder, refit_stats=refit_stats, balance=balance,
                       holdout_from=holdout_from)


STEPS = typer.Option(2000, "--steps", help="Optimiser steps.")
BATCH = typer.Option(128, "--batch-size", help="Windows per step, over all processes and datasets.")
LR = typer.Option(5e-4, "--lr", help="Peak learning rate (AdamW).")
WARMUP = typer.Option(100, "--warmup", help="Warm-up steps (at most a tenth of the run).")
CKPT = typer.Option(None, "--checkpoint-every",
                    help="Steps between checkpoints (default: 500; a run of 100-500 steps checkpoints at its "
                         "middle; a run under 100 steps writes none).")
HOLDOUT = typer.Option(0.0, "--holdout", help="Fraction of episodes held out for a validation loss.")
HOLDOUT_FROM = typer.Option(None, "--holdout-from",
                            help="Comma-separated datasets that hold episodes out (default: every one), e.g. "
                                 "the demonstrations when co-training them with a pool.")
SEED = typer.Option(0, "--seed", help="Seed of initial weights and data order.")
PRECISION = typer.Option("auto", "--precision",
                         help="auto (bf16 on GPUs that have it), bf16 (also CPUs with AVX512-BF16/AMX) or fp32.")
STRATEGY = typer.Option("ddp", "--strategy", help="Under torchrun: ddp or fsdp (FSDP2).")
DEVICE = typer.Option(None, "--device", help="cpu or cuda (default: cuda when present).")
THREADS = typer.Option(None, "--threads", help="Torch CPU threads per process.")
EMA = typer.Option(0.999, "--ema-decay", help="Decay of the EMA weights that the model keeps.")
ENCODER = typer.Option("minilm-l6-v2", "--text-encoder",
                       help="Task text encoder: minilm-l6-v2 (falls back to hashed-ngram) or hashed-ngram.")
WEIGHTS = typer.Option(None, "--weights", help="Sampling weights, e.g. arms=2,plant=1 (default 1 each).")
TENSORBOARD = typer.Option(None, "--tensorboard", metavar="DIR",
                           help="Also write the training metrics as TensorBoard event files here (local files; "
                                "needs pip install 'onshore[tensorboard]').")


def train_command(
    site: str = typer.Option(..., "--site", help="The training site: data is read there only."),
    purpose: str = typer.Option(..., "--purpose", help="Purpose of the training, e.g. foundation-pretraining."),
    name: str = typer.Option(..., "--name", help="Name of the model: a new name makes version 1, an existing "
                                                  "one its next version (NAME@2, ...)."),
    datasets: str | None = typer.Option(None, "--datasets", help="Comma-separated datasets."),
    all_granted: bool = typer.Option(False, "--all-granted", help="Every dataset at the site granted for this."),
    config: str = typer.Option("small", "--config",
                               help="Model size: tiny, small or base (transformer trunk), or mlp (a plain ~0.6M "
                                    "MLP state-to-chunk baseline)."),
    model_option: list[str] | None = typer.Option(
        None, "--model-option", metavar="KEY=VALUE",
        help="Change one field of the size's config, e.g. history=32 or action_feedback=true (repeatable; "
             "see docs/training.md)."),
    weights: str | None = WEIGHTS, steps: int = STEPS, batch_size: int = BATCH, lr: float = LR,
    warmup: int = WARMUP, checkpoint_every: int | None = CKPT, holdout: float = HOLDOUT,
    holdout_from: str | None = HOLDOUT_FROM, seed: int = SEED,
    precision: str = PRECISION, strategy: str = STRATEGY, device: str | None = DEVICE,
    threads: int | None = THREADS, ema_decay: float = EMA, text_encoder: str = ENCODER, json_: bool = JSON,
    tensorboard: Path | None = TENSORBOARD,
    balance: bool = typer.Option(False, "--balance-embodiments",
                                 help="Divide each embodiment's loss by its running mean, so that every "
                                      "embodiment weighs the same on the shared trunk (docs/training.md)."),
) -> None:
    """Train a model at a site on granted data (refused with exit 3, naming the rule, before any read).

    Rerunning the same command after a crash resumes from the last checkpoint."""
    from onshore.model.network import parse_model_options
    from onshore.train.loop import TrainRequest, granted_datasets

    overrides = parse_model_options(model_option or [])
    names = _split(datasets)
    if bool(names) == all_granted:
        raise usage("give exactly one of --datasets D1,D2 and --all-granted")
    if all_granted:
        with open_workspace() as ws:
            names = granted_datasets(ws, site, purpose)
        if not names:
            raise ValidationError(Message(N_("no dataset at site {site!r} is granted for training for {purpose!r}"),
                                          {"site": site, "purpose": purpose}))
    req = TrainRequest(name=name, site=site, purpose=purpose, datasets=tuple(names), weights=_weights(weights, names),
                       size=config, train=_config(steps, batch_size, lr, warmup, checkpoint_every, holdout, seed,
                                                  precision, strategy, False, ema_decay, text_encoder,
                                                  balance=balance, holdout_from=tuple(_split(holdout_from))),
                       model_overrides=overrides)
    _run(req, device, threads, json_, tensorboard)


def finetune_command(
    base: str = typer.Argument(..., help="The model to fine-tune: NAME (its latest version), NAME@VERSION or "
                                         "NAME@ALIAS."),
    datasets: str = typer.Option(..., "--datasets", help="Comma-separated datasets to fine-tune on."),
    name: str = typer.Option(..., "--name", help="Name of the model: a new name makes version 1, an existing "
                                                  "one its next version (NAME@2, ...)."),
    site: str | None = typer.Option(None, "--site", help="The training site (default: where BASE was trained)."),
    purpose: str = typer.Option("fine-tuning", "--purpose", help="Purpose of the fine-tuning."),
    freeze_trunk: bool = typer.Option(False, "--freeze-trunk", help="Train only stems, heads and task projection."),
    refit_stats: bool = typer.Option(
        False, "--refit-stats", help="Refit the state normalisation on the fine-tune data (as openpi and Octo do), "
                                     "folded into the stem so that the base's function is unchanged at step 0."),
    weights: str | None = WEIGHTS, steps: int = STEPS, batch_size: int = BATCH, lr: float = LR,
    warmup: int = WARMUP, checkpoint_every: int | None = CKPT, holdout: float = HOLDOUT,
    holdout_from: str | None = HOLDOUT_FROM, seed: int = SEED,
    precision: str = PRECISION, strategy: str = STRATEGY, device: str | None = DEVICE,
    threads: int | None = THREADS, ema_decay: float = EMA, json_: bool = JSON,
    tensorboard: Path | None = TENSORBOARD,
) -> None:
    """Fine-tune a model on more data; a new machine type gets a fresh stem and head."""
    from onshore.train.loop import TrainRequest
    from onshore.workspace.models import get_model
    from onshore.workspace.versions import check_usable, resolve

    names = _split(datasets)
    with open_workspace() as ws:
        base = resolve(ws, base)  # the version, fixed once for the whole run
        check_usable(ws, base, "train")
        row = get_model(ws, base)
    req = TrainRequest(name=name, site=site or row["site"], purpose=purpose, datasets=tuple(names),
                       weights=_weights(weights, names), size=row["size"], base=base,
                       train=_config(steps, batch_size, lr, warmup, checkpoint_every, holdout, seed, precision,
                                     strategy, freeze_trunk, ema_decay, row["config"]["text_encoder"], refit_stats,
                                     holdout_from=tuple(_split(holdout_from))))
    _run(req, device, threads, json_, tensorboard)
