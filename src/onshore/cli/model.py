"""`onshore model list` and `onshore model show`: trained models, their lineage, where they sit."""

from __future__ import annotations

import typer

from onshore.cli.context import open_workspace
from onshore.cli.output import console, esc, print_json, table

model_app = typer.Typer(help="Trained models: list, show lineage.", no_args_is_help=True)
JSON = typer.Option(False, "--json", help="Print JSON only, for scripts.")


@model_app.command("list")
def list_(json_: bool = JSON) -> None:
    """Every model: where it was trained, for what, from which datasets."""
    from onshore.workspace import models  # the catalog only when a command runs

    with open_workspace() as ws:
        rows = models.list_models(ws)
    if json_:
        print_json(rows)
        return
    table("models", ["name", "site", "purpose", "size", "parameters", "steps", "processes", "base", "datasets"],
          [[r["name"], r["site"], r["purpose"], r["size"], f"{r['parameters']:,}", r["steps"], r["world_size"],
            r["base"] or "", ", ".join(r["datasets"])] for r in rows])


@model_app.command("show")
def show(name: str = typer.Argument(..., help="The model's name (see 'onshore model list')."),
         json_: bool = JSON) -> None:
    """A model's size, metrics, files and lineage: model -> datasets (shards) -> members -> site."""
    from onshore.workspace import models

    with open_workspace() as ws:
        info = models.show_model(ws, name)
    if json_:
        print_json(info)
        return
    console.print(f"[bold]{esc(name)}[/]: {info['size']}, {info['parameters']:,} parameters, {info['steps']} steps "
                  f"on {info['world_size']} process(es); trained at {esc(info['site'])} ({info['jurisdiction']}) for "
                  f"{esc(repr(info['purpose']))}" + (f", fine-tuned from {esc(info['base'])}" if info["base"] else ""))
    m = info["metrics"]
    console.print("metrics: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                          for k, v in m.items() if v is not None))
    for fname, f in info["files"].items():
        console.print(f"  {fname}  sha256 {f['sha256']}  {esc(f['path'])}", highlight=False)
    rows = []
    for level in info["lineage"]:
        for d in level["datasets"]:
            rows.append([level["model"], level["site"], level["jurisdiction"], level["purpose"], d["dataset"],
                         d["owner"], d["embodiment"], len(d["shards"]), d["weight"]])
    table("lineage", ["model", "trained at", "jurisdiction", "purpose", "dataset", "member", "embodiment",
                      "shards", "weight"], rows)
