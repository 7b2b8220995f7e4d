"""`onshore monitor fit MODEL ...` and `onshore monitor MODEL ...`: faults seen from the world model.

``onshore monitor MODEL ...`` is short for ``onshore monitor run MODEL ...``. See
``src/onshore/serve/monitor.py`` and ``docs/monitoring.md``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from onshore.cli import opcua as opc
from onshore.cli.context import open_workspace
from onshore.cli.inputs import usage
from onshore.cli.output import console, esc, print_json
from onshore.cli.serve import RunByDefaultGroup

JSON = typer.Option(False, "--json", help="Print JSON only, for scripts.")
monitor_app = typer.Typer(cls=RunByDefaultGroup, no_args_is_help=True,
                          help="Fault detection from a plant model: 'onshore monitor fit', then "
                               "'onshore monitor MODEL --site S'.")


@monitor_app.command("fit")
def fit_command(
    model: str = typer.Argument(..., help="The plant model whose predictions are watched."),
    site: str = typer.Option(..., "--site", help="The site that holds the model and the normal data."),
    dataset: str = typer.Option(..., "--dataset", help="A resident dataset of normal operation only."),
    window: int = typer.Option(10, "--window", help="Frames the statistic is averaged over."),
    far: float = typer.Option(0.01, "--far", help="False-alarm rate on normal data the threshold is set at."),
    purpose: str | None = typer.Option(None, "--purpose", help="Purpose of the reads (default: the model's)."),
    json_: bool = JSON,
) -> None:
    """Fit the monitor on normal operation and record its threshold in the ledger (signed by the site).

    Example: onshore monitor fit plant-base --site sakai --dataset plant-normal --far 0.01
    """
    from onshore.serve.monitor import fit

    with open_workspace() as ws:
        f = fit(ws, model, site, dataset, window=window, far=far, purpose=purpose)
    body = {**f.to_json(), "index": f.index}
    body.pop("scale")
    if json_:
        print_json(body)
        return
    console.print(f"monitor of [bold]{esc(model)}[/] fitted at {esc(site)} on {esc(dataset)} ({f.episodes} episodes, "
                  f"{f.frames} frames): threshold {f.threshold:.4g} at a {f.far:.2%} false-alarm rate over "
                  f"{f.window} frames; ledger entry {f.index}", highlight=False)


@monitor_app.command("run")
def run_command(
    model: str = typer.Argument(..., help="The plant model fitted with 'onshore monitor fit'."),
    site: str = typer.Option(..., "--site", help="The site where it was fitted."),
    task: str = typer.Option("base", "--task", help="The simulated plant's scenario, e.g. base or idv-6."),
    seconds: float | None = typer.Option(None, "--seconds", help="Simulated seconds to watch (default: an episode)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the simulated plant."),
    purpose: str | None = typer.Option(None, "--purpose", help="Purpose of the model's use (default: the model's)."),
    record_member: str | None = typer.Option(None, "--record-member", metavar="MEMBER",
                                             help="Who owns the watched frames and their alarms."),
    record_policy: Path | None = typer.Option(None, "--record-policy", metavar="POLICY.toml",
                                              help="Their usage policy (with --record-member)."),
    record_as: str | None = typer.Option(None, "--record-as", metavar="DATASET",
                                         help="Name of the recorded dataset (default MODEL-monitor-SEED-TASK)."),
    endpoint: str | None = typer.Option(None, "--endpoint", help="Watch a plant over OPC UA instead, e.g. "
                                                                 "opc.tcp://plc.line2:4840 (with --map)."),
    map_file: Path | None = typer.Option(None, "--map", metavar="MAP.toml",
                                         help="The plant's state and action nodes (the bridge's map format)."),
    frame_node: str | None = typer.Option(None, "--frame-node", help="A node counting control periods: one frame "
                                                                     "per count (else read at the control rate)."),
    steps: int | None = typer.Option(None, "--steps", help="Over OPC UA: stop after this many frames."),
    security: str = opc.SECURITY,
    pki: Path | None = opc.PKI,
    credentials: Path | None = opc.CREDENTIALS,
    server_cert: Path | None = opc.SERVER_CERT,
    json_: bool = JSON,
) -> None:
    """Watch a plant and raise alarms: the simulated Tennessee Eastman plant under its PI controller, or a plant
    over OPC UA (--endpoint, --map) whose controller writes its action nodes.

    Example: onshore monitor plant-base --site sakai --task idv-6 --seconds 3600 --record-member kansai-chemicals
    --record-policy policy.toml
    """
    from onshore.serve.monitor import run_simulated

    if (record_member is None) != (record_policy is None):
        raise usage("give --record-member and --record-policy together (who owns the alarms, under which policy)")
    if (endpoint is None) != (map_file is None):
        raise usage("give --endpoint and --map together (where the plant is, and which nodes are what)")
    from onshore.names import model_stem
    from onshore.workspace.versions import resolve

    with open_workspace() as ws:
        model = resolve(ws, model)  # NAME, NAME@V or NAME@ALIAS: the version, fixed for the run
        record = None
        if record_member is not None and record_policy is not None:
            record = (record_member, record_policy, record_as or f"{model_stem(model)}-monitor-{seed}-{task}")
        if endpoint is not None and map_file is not None:
            from onshore.serve.monitor import run_opcua

            if record is not None and record_as is None:
                record = (record[0], record[1], f"{model_stem(model)}-monitor-opcua")
            r = run_opcua(ws, model, site, endpoint, map_file, steps=steps, seconds=seconds, frame_node=frame_node,
                          purpose=purpose, record=record,
                          security=opc.client_security(security, pki, credentials, server_cert))
        else:
            r = run_simulated(ws, model, site, task, seconds=seconds, seed=seed, purpose=purpose, record=record)
    out = {"frames": r.frames, "alarms": r.alarms, "first_alarm_frame": r.first_alarm,
           "fault_onset_frame": r.fault_onset, "dataset": r.dataset, "ledger_index": r.index}
    if json_:
        print_json(out)
        return
    first = "no alarm" if r.first_alarm is None else f"first alarm at frame {r.first_alarm}"
    onset = "" if r.fault_onset is None else f" (the simulator's fault began at frame {r.fault_onset})"
    console.print(f"watched {r.frames} frames of {esc(task)}: {r.alarms} alarmed frames, {first}{onset}"
                  + (f"; recorded as dataset {esc(r.dataset)}" if r.dataset else ""), highlight=False)
