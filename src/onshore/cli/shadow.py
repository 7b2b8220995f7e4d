"""`onshore shadow MODEL ...`: the model beside the running controller, recorded for DAgger."""

from __future__ import annotations

from pathlib import Path

import typer

from onshore.cli.context import open_workspace
from onshore.cli.output import console, esc, print_json
from onshore.cli.sim import split_tasks


def shadow_command(
    model: str = typer.Argument(..., help="The plant model to run beside the controller."),
    site: str = typer.Option(..., "--site", help="The site next to the machine (it must be allowed to serve the "
                                                 "model and hold the owner's data)."),
    member: str = typer.Option(..., "--member", help="Who owns the plant and so the recording."),
    policy: Path = typer.Option(..., "--policy", metavar="POLICY.toml", help="The owner's usage policy for it."),
    dataset: str = typer.Option(..., "--as", metavar="DATASET", help="Name of the recorded dataset."),
    tasks: str = typer.Option("base", "--tasks", help="Scenarios of the simulated plant, e.g. base,idv-1."),
    episodes: int = typer.Option(1, "--episodes", help="Episodes per scenario."),
    seconds: float | None = typer.Option(None, "--seconds", help="Simulated seconds per episode (default: 2 h)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the simulated plant."),
    drive: str = typer.Option("controller", "--drive",
                              help="Who moves the plant: controller (pure shadow), model (through the safety "
                                   "envelope; DAgger) or mix (the model with probability --beta)."),
    beta: float = typer.Option(0.5, "--beta", help="With --drive mix: the share of periods the model drives."),
    purpose: str | None = typer.Option(None, "--purpose", help="Purpose of the model's use (default: the model's)."),
    json_: bool = typer.Option(False, "--json", help="Print JSON only, for scripts."),
) -> None:
    """Run MODEL beside the plant's controller; record states, the controller's actions (labels) and the model's
    proposals as the owner's dataset, for 'onshore finetune MODEL --datasets DATASET'.

    Example: onshore shadow plant-base --site sakai --member setouchi-chemical --policy policy.toml --as shadow-r1
    --tasks base,idv-1 --drive model
    """
    from onshore.serve.shadow import run_shadow

    with open_workspace() as ws:
        r = run_shadow(ws, model, site, split_tasks(tasks) or ["base"], member=member, policy=policy,
                       dataset=dataset, episodes=episodes, seconds=seconds, seed=seed, drive=drive, beta=beta,
                       purpose=purpose)
    out = {"dataset": r.dataset, "episodes": r.episodes, "frames": r.frames, "model_applied": r.model_applied,
           "shutdowns": r.shutdowns, "mean_abs_gap": r.mean_abs_gap, "ledger_index": r.index}
    if json_:
        print_json(out)
        return
    console.print(f"recorded [bold]{esc(r.dataset)}[/] at {esc(site)}: {r.episodes} episode(s), {r.frames} frames, "
                  f"the model drove {r.model_applied} of them, {r.shutdowns} shutdown(s); the model's proposals were "
                  f"{r.mean_abs_gap:.3g} % from the controller's on average; ledger entry {r.index}", highlight=False)
