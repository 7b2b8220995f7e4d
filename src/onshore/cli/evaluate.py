"""``onshore eval``: closed-loop evaluation of a policy in a simulator.

``eval_command`` is ready for ``app.command("eval")(eval_command)`` in the main app. With
``--json`` it prints only JSON: ``{"env", "policy", "seed", "episodes", "tasks": {task:
{"success_rate", "ci95", ...}}}``; otherwise a Rich table. ``--reports DIR`` also writes the full
report (JSON and PNG) there. ``OnshoreError`` propagates to the main app.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from onshore.cli.context import open_workspace, workspace_path
from onshore.cli.inputs import usage
from onshore.cli.output import StageProgress, console, esc, table
from onshore.cli.sim import split_tasks
from onshore.errors import ValidationError

if TYPE_CHECKING:  # the runner imports the simulators: only `onshore eval` itself pays for that
    from onshore.eval.runner import Report


def summary(report: Report) -> dict[str, Any]:
    """The short JSON form printed by ``--json``: one entry per task with its success rate."""
    tasks: dict[str, Any] = {}
    for t in report.tasks:
        entry: dict[str, Any] = {"success_rate": t.success_rate, "ci95": list(t.ci95),
                                 "episodes": t.episodes, "successes": t.successes,
                                 "mean_return": t.mean_return, "mean_length": t.mean_length}
        if report.env == "tep":
            entry.update({"iae": t.metrics["iae"], "shutdowns": t.metrics["shutdowns"],
                          "mean_violation_frames": t.metrics["mean_violation_frames"]})
            if t.baseline is not None:
                entry["baseline"] = t.baseline
        tasks[t.task] = entry
    return {"env": report.env, "policy": report.policy, "label": report.label, "units": report.units,
            "seed": report.seed,
            "episodes": report.episodes_per_task, "success_definition": report.success_definition,
            "sensors": report.sensors, "tasks": tasks}


def eval_command(
    env: Annotated[str, typer.Option(metavar="ENV", help="Simulator: metaworld or tep.")],
    tasks: Annotated[str | None, typer.Option(
        metavar="TASKS",
        help="Comma-separated tasks (default: the env's set: MT10 for metaworld, base for tep).")] = None,
    episodes: Annotated[int, typer.Option(metavar="N", help="Episodes per task.")] = 10,
    seed: Annotated[int, typer.Option(metavar="N", help="Seed; the same seed gives the same episodes.")] = 0,
    policy: Annotated[str, typer.Option(
        metavar="POLICY", help="Policy to evaluate: expert (the scripted expert), a trained model (NAME, NAME@VERSION "
                               "or NAME@ALIAS), a folder 'onshore model export' wrote (a path with a '/' or "
                               "starting with '.', e.g. ./pool-export; checked against its manifest and the "
                               "ledger), or a policy server's URL (ws://HOST:PORT).")
    ] = "expert",
    token: Annotated[str | None, typer.Option(
        metavar="TOKEN", help="Client token for a ws:// policy server (else $ONSHORE_SERVE_TOKEN).")] = None,
    site: Annotated[str | None, typer.Option(
        metavar="SITE", help="Site where a model is loaded (required for a model; decided by its data's "
                             "policies).")] = None,
    workers: Annotated[int | None, typer.Option(
        metavar="N", help="Worker processes, this one among them (default: all cores, fewer for a short run).")] = None,
    name: Annotated[str, typer.Option(
        "--name", metavar="NAME",
        help="Whose evaluation this is (a member or dataset, e.g. kansai-robotics): named in the report's title "
             "and file names.")] = "",
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
    reports: Annotated[Path | None, typer.Option(
        metavar="DIR",
        help="Folder for the full report (JSON + PNG); default: the workspace's reports/ when run in one.")] = None,
    noise: Annotated[float, typer.Option(
        help="Sensor noise the policy sees, std as a fraction of each channel's range.")] = 0.0,
    quantize: Annotated[bool, typer.Option("--quantize/--no-quantize",
                                           help="Quantise what the policy sees over each channel's range.")] = False,
    bits: Annotated[int, typer.Option(help="Quantisation bits.")] = 16,
    ensemble: Annotated[bool | None, typer.Option(
        "--ensemble/--no-ensemble",
        help="A model's acting: temporal ensembling of its action chunks, or the newest chunk's first action "
             "(default: as the model was trained to act).")] = None,
) -> None:
    """Evaluate a policy in closed loop: success rate with a 95 % interval per task (TEP: IAE,
    constraint violations and shutdowns; a policy other than the PI controller is compared with it).

    Example: onshore eval --env metaworld --tasks pick-place-v3 --episodes 10 --name kansai-robotics
    """
    from onshore.eval.report import write_report
    from onshore.eval.runner import Evaluation
    from onshore.sim.sensors import SensorOptions
    from onshore.workspace.config import CONFIG_FILE

    if reports is None:
        ws = workspace_path()
        reports = ws / "reports" if ws.is_dir() and (ws / CONFIG_FILE).exists() else None
    agent: Any = policy
    export: str | None = None  # the export folder evaluated, if the policy is one
    served = policy.startswith(("ws://", "wss://"))
    model = not served and policy != "expert"
    if ensemble is not None and not model:
        raise ValidationError("--ensemble/--no-ensemble sets how a trained model acts; it does not apply to "
                              f"{'a policy server' if served else 'the expert'}")
    if model and site is None:
        raise usage("--site is required to evaluate a model: it is loaded only where its data's "
                    "policies allow")
    sensors = SensorOptions(noise=noise, quantize=quantize, bits=bits) if noise or quantize else None
    # The worker processes start now (imports, environments, goal sets) while this process decides on
    # and opens the model; what is evaluated is checked before anything is decided.
    preload = ("onshore.model.policy",) if model else ("onshore.serve.client",) if served else ()
    with Evaluation(env, split_tasks(tasks), episodes, seed, workers, sensors, expert=policy == "expert",
                    preload=preload) as run:
        if served:
            from onshore.serve.client import ClientFactory
            from onshore.sim import registry

            agent = ClientFactory(policy, token, registry.env_module(env).embodiment().name, label=policy)
            agent().close()  # refuse an unreachable server or a bad token before any episode runs
        elif model:
            from onshore.sim import registry
            from onshore.workspace.exportfolder import is_folder_ref
            from onshore.workspace.models import export_policy_factory, policy_factory
            from onshore.workspace.versions import resolve

            emb = registry.env_module(env).embodiment().name
            with open_workspace() as ws:
                if is_folder_ref(policy):  # checked against its manifest and the ledger, then decided
                    export = policy
                    agent, policy = export_policy_factory(ws, Path(policy), str(site), emb, ensemble=ensemble)
                else:
                    policy = resolve(ws, policy)  # NAME, NAME@V or NAME@ALIAS: the version, fixed for the run
                    agent = policy_factory(ws, policy, str(site), emb, ensemble=ensemble)
        with StageProgress(enabled=not json_out, unit="episodes") as bar:
            report = run.run(agent, progress=lambda done, total: bar.update(f"{env} eval", done, total),
                             label=name)
    if model:  # a served model's uses are in its server's model.serve entries
        from onshore.workspace.models import record_eval

        with open_workspace() as ws:  # the results join the ledger, for the model's attestation
            record_eval(ws, policy, str(site), env, seed, summary(report)["tasks"], export)
    written = write_report(report, reports) if reports is not None else []
    if json_out:
        data = summary(report)
        if written:
            data["report_files"] = [str(p) for p in written]
        typer.echo(json.dumps(data, indent=2))
        return
    with_baseline = any(t.baseline for t in report.tasks)
    columns = ["task", "success", "95 % interval", "mean return", "mean length"]
    if env == "tep":
        unit = report.units.get("iae.reactor_pressure", "")
        columns += ["shutdowns", f"IAE pressure ({unit})"] + ([f"PI IAE pressure ({unit})"] if with_baseline else [])
    rows = []
    for t in report.tasks:
        row = [t.task, f"{t.successes}/{t.episodes} ({t.success_rate:.0%})",
               f"{t.ci95[0]:.2f}–{t.ci95[1]:.2f}", f"{t.mean_return:.1f}", f"{t.mean_length:.1f}"]
        if env == "tep":
            row += [str(t.metrics["shutdowns"]), f"{t.metrics['iae']['reactor_pressure']:.2f}"]
            if with_baseline:
                row.append(f"{(t.baseline or {}).get('iae', {}).get('reactor_pressure', float('nan')):.2f}")
        rows.append(row)
    title = f"{name + ' · ' if name else ''}{env} · {report.policy} · {episodes} episodes/task · seed {seed}"
    table(title, columns, rows)
    console.print(f"success: {esc(report.success_definition)}", highlight=False)
    for p in written:
        console.print(f"wrote {esc(p)}", highlight=False)
