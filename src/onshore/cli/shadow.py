"""`onshore shadow MODEL ...`: the model beside the running controller, recorded for DAgger."""

from __future__ import annotations

from pathlib import Path

import typer

from onshore.cli import opcua as opc
from onshore.cli.context import open_workspace
from onshore.cli.inputs import usage
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
    endpoint: str | None = typer.Option(None, "--endpoint", help="Shadow a plant over OPC UA instead, e.g. "
                                                                 "opc.tcp://plc.line2:4840 (with --map; pure shadow: "
                                                                 "its controller's action nodes are the labels)."),
    map_file: Path | None = typer.Option(None, "--map", metavar="MAP.toml",
                                         help="The plant's state and action nodes (the bridge's map format)."),
    frame_node: str | None = typer.Option(None, "--frame-node", help="A node counting control periods: one frame "
                                                                     "per count (else read at the control rate)."),
    steps: int | None = typer.Option(None, "--steps", help="Over OPC UA: stop after this many frames."),
    security: str = opc.SECURITY,
    pki: Path | None = opc.PKI,
    credentials: Path | None = opc.CREDENTIALS,
    server_cert: Path | None = opc.SERVER_CERT,
    json_: bool = typer.Option(False, "--json", help="Print JSON only, for scripts."),
) -> None:
    """Run MODEL beside the plant's controller; record states, the controller's actions (labels) and the model's
    proposals as the owner's dataset, for 'onshore finetune MODEL --datasets DATASET'.

    Example: onshore shadow plant-base --site sakai --member setouchi-chemical --policy policy.toml --as shadow-r1
    --tasks base,idv-1 --drive model. Over OPC UA: --endpoint opc.tcp://plc.line2:4840 --map line2.toml
    --frame-node "nsu=urn:acme:line2;s=frame" --steps 2000 --pki shadow-pki
    """
    from onshore.serve.shadow import run_shadow, run_shadow_opcua
    from onshore.workspace.versions import resolve

    if (endpoint is None) != (map_file is None):
        raise usage("give --endpoint and --map together (where the plant is, and which nodes are what)")
    scenarios = split_tasks(tasks) or ["base"]
    if endpoint is not None and map_file is not None:
        if drive != "controller":
            raise usage("over OPC UA onshore shadow is pure shadow (--drive controller): to let the model act on a "
                        "machine, serve it and run onshore bridge, which writes through the safety envelope")
        if len(scenarios) != 1:
            raise usage("over OPC UA give one scenario in --tasks (the instruction the model is given)")
        with open_workspace() as ws:
            r = run_shadow_opcua(ws, resolve(ws, model), site, endpoint, map_file, member=member, policy=policy,
                                 dataset=dataset, task=scenarios[0], steps=steps, seconds=seconds,
                                 frame_node=frame_node, purpose=purpose,
                                 security=opc.client_security(security, pki, credentials, server_cert))
    else:
        with open_workspace() as ws:
            r = run_shadow(ws, resolve(ws, model), site, scenarios, member=member, policy=policy, dataset=dataset,
                           episodes=episodes, seconds=seconds, seed=seed, drive=drive, beta=beta, purpose=purpose)
    out = {"dataset": r.dataset, "episodes": r.episodes, "frames": r.frames, "model_applied": r.model_applied,
           "shutdowns": r.shutdowns, "mean_abs_gap": r.mean_abs_gap, "ledger_index": r.index}
    if json_:
        print_json(out)
        return
    console.print(f"recorded [bold]{esc(r.dataset)}[/] at {esc(site)}: {r.episodes} episode(s), {r.frames} frames, "
                  f"the model drove {r.model_applied} of them, {r.shutdowns} shutdown(s); the model's proposals were "
                  f"{r.mean_abs_gap:.3g} % from the controller's on average; ledger entry {r.index}", highlight=False)
