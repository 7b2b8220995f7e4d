"""`onshore model list/show/copy/export/card/alias/tag/archive`: trained models and their versions,
where they sit, their lineage and policy, their aliases, tags and model cards.

Every MODEL argument is a reference: ``NAME`` (the latest version not archived), ``NAME@V`` or
``NAME@ALIAS``, turned into the version's id once, when the command starts (``versions.resolve``).
"""

from __future__ import annotations

from pathlib import Path

import typer

from onshore.cli.context import open_workspace
from onshore.cli.output import console, err, esc, print_json, table

model_app = typer.Typer(help="Trained models and their versions: list, show lineage and policy, copy to a site, "
                             "export, model card, aliases, tags, archive.", no_args_is_help=True)
JSON = typer.Option(False, "--json", help="Print JSON only, for scripts.")
NAME = typer.Argument(..., help="The model: NAME (its latest version), NAME@VERSION or NAME@ALIAS (see "
                                "'onshore model list').")


@model_app.command("list")
def list_(json_: bool = JSON) -> None:
    """Every model: where it was trained and sits, for what, from which datasets, and its status."""
    from onshore.workspace import models  # the catalog only when a command runs

    with open_workspace() as ws:
        rows = models.list_models(ws)
    if json_:
        print_json(rows)
        return
    table("models", ["name", "version", "aliases", "trained at", "sits at", "purpose", "size", "parameters", "steps",
                     "processes", "base", "datasets", "status"],
          [[r["model_name"], str(r["version"]) + (" (archived)" if r["archived"] else ""), ", ".join(r["aliases"]),
            r["site"], ", ".join(r["sites"]), r["purpose"], r["size"], f"{r['parameters']:,}", r["steps"],
            r["world_size"], r["base"] or "", ", ".join(r["datasets"]), r["status"]] for r in rows])


@model_app.command("show")
def show(name: str = NAME, json_: bool = JSON) -> None:
    """A model's size, metrics, files, where it sits, lineage (model -> datasets -> members -> site),
    effective policy and status (ok, tainted, must-retrain-by DATE, blocked) with the reasons."""
    from onshore.workspace import models, versions

    with open_workspace() as ws:
        name = versions.resolve(ws, name)
        info = models.show_model(ws, name)
    if json_:
        print_json(info)
        return
    console.print(f"[bold]{esc(info['model_name'])}[/] version {info['version']} of "
                  f"{', '.join(map(str, info['versions']))}" + (" [bold red](archived)[/]" if info["archived"] else "")
                  + (f"; aliases {esc(', '.join(info['aliases']))}" if info["aliases"] else "")
                  + (f"; tags {esc(', '.join(f'{k}={v}' for k, v in info['tags'].items()))}" if info["tags"] else ""),
                  highlight=False)
    if info["description"]:
        console.print(esc(info["description"]), highlight=False)
    console.print(f"[bold]{esc(name)}[/]: {info['size']}, {info['parameters']:,} parameters, {info['steps']} steps "
                  f"on {info['world_size']} process(es); trained at {esc(info['site'])} ({info['jurisdiction']}) for "
                  f"{esc(repr(info['purpose']))}" + (f", fine-tuned from {esc(info['base'])}" if info["base"] else ""))
    m = info["metrics"]
    console.print("metrics: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                          for k, v in m.items() if v is not None))
    st = info["status"]
    console.print(f"status: [bold]{esc(st['label'])}[/]" + "".join(f"\n  - {esc(r)}" for r in st["reasons"]))
    eff = info["effective_policy"]
    console.print(f"effective policy: jurisdictions {', '.join(eff['jurisdictions']) or 'none'}; sites "
                  f"{'any' if eff['sites'] is None else ', '.join(eff['sites']) or 'none'}; purposes "
                  f"{esc(', '.join(eff['purposes']) or 'none')}; expires {eff['expires']}; derived models "
                  f"{esc(eff['derived_models'])}; Cedar sha256 {info['cedar_hash']}", highlight=False)
    console.print("sits at: " + ", ".join(f"{esc(s['site'])} ({s['jurisdiction']}, ledger entry {s['ledger_index']})"
                                          for s in info["sites"]), highlight=False)
    for fname, f in info["files"].items():
        console.print(f"  {fname}  sha256 {f['sha256']}  sealed {f['sealed_sha256']}  {esc(f['path'])}",
                      highlight=False)
    rows = []
    for level in info["lineage"]:
        for d in level["datasets"]:
            rows.append([level["model"], level["site"], level["jurisdiction"], level["purpose"], d["dataset"],
                         d["owner"], d["embodiment"], len(d["shards"]), d["weight"]])
    table("lineage", ["model", "trained at", "jurisdiction", "purpose", "dataset", "member", "embodiment",
                      "shards", "weight"], rows)
    if info["taints"]:
        table("taints", ["ledger entry", "dataset", "clause", "how"],
              [[t["index"], t["dataset"], t["clause"], t["via"]] for t in info["taints"]])


@model_app.command("copy")
def copy(name: str = NAME,
         to: str = typer.Option(..., "--to", metavar="SITE", help="The site to copy the model to."),
         from_: str | None = typer.Option(None, "--from", metavar="SITE", help="The source site (default: the "
                                          "training site)."),
         json_: bool = JSON) -> None:
    """Copy a model's sealed files to a site its lineage allows (exit 3 naming the dataset rule otherwise).

    Example: onshore model copy pool --to tokyo
    """
    from onshore.workspace import models, versions

    with open_workspace() as ws:
        name = versions.resolve(ws, name)
        out = models.copy_model(ws, name, to, from_)
    if json_:
        print_json(out)
        return
    console.print(f"copied model [bold]{esc(name)}[/] from {esc(out['from'])} to {esc(out['to'])} "
                  f"(ledger entry {out['ledger_index']})")


@model_app.command("export")
def export(name: str = NAME,
           site: str = typer.Option(..., "--site", metavar="SITE", help="The site exporting (must hold the model)."),
           out: Path = typer.Option(..., "--out", metavar="DIR", help="A folder for model.safetensors and "
                                    "model.json (plaintext); never inside a site's storage."),
           purpose: str | None = typer.Option(None, "--purpose", help="Why the model leaves the store; every "
                                              "lineage dataset must allow it."),
           force: bool = typer.Option(False, "--force", help="Overwrite files in a folder that is not empty."),
           json_: bool = JSON) -> None:
    """Export a model as plain safetensors + JSON: decided like a dataset export, and recorded.

    Example: onshore model export pool --site sakai --purpose fine-tuning --out pool-export/
    """
    from onshore.workspace import models, versions

    with open_workspace() as ws:
        name = versions.resolve(ws, name)
        result = models.export_model(ws, name, site, out, purpose, force)
    if json_:
        print_json(result)
        return
    console.print(f"exported model [bold]{esc(name)}[/] at {esc(site)} to {esc(result['out'])} "
                  f"(ledger entry {result['ledger_index']})")


@model_app.command("alias")
def alias(name: str = typer.Argument(..., help="The model's name (no @)."),
          alias_: str = typer.Argument(..., metavar="ALIAS", help="The alias, e.g. production (starts with a letter)."),
          version: str | None = typer.Argument(None, help="The version the alias points at from now on."),
          remove: bool = typer.Option(False, "--remove", help="Remove the alias instead."),
          json_: bool = JSON) -> None:
    """Point an alias of a model at a version (or remove it): a recorded decision (a model.alias ledger entry
    signed by the version's training site). Servers and bridges can then name NAME@ALIAS.

    Example: onshore model alias plant-base production 3
    """
    from onshore.cli.inputs import usage
    from onshore.workspace import versions

    if remove == (version is not None):
        raise usage("give VERSION to point the alias at, or --remove (not both)")
    with open_workspace() as ws:
        out = versions.remove_alias(ws, name, alias_) if remove else versions.set_alias(ws, name, alias_, str(version))
    if json_:
        print_json(out)
        return
    if remove:
        console.print(f"removed alias [bold]{esc(name)}@{esc(alias_)}[/] (it pointed at version {out['previous']}; "
                      f"ledger entry {out['ledger_index']})")
    elif out["ledger_index"] is None:
        console.print(f"alias [bold]{esc(name)}@{esc(alias_)}[/] already points at version {out['version']}; "
                      "nothing recorded")
    else:
        was = f" (was version {out['previous']})" if out["previous"] is not None else ""
        console.print(f"alias [bold]{esc(name)}@{esc(alias_)}[/] -> version {out['version']}{was} "
                      f"(ledger entry {out['ledger_index']})")


@model_app.command("tag")
def tag(name: str = NAME,
        tags: list[str] = typer.Option([], "--tag", metavar="KEY=VALUE", help="Set a tag (repeat for more)."),
        remove_tags: list[str] = typer.Option([], "--remove-tag", metavar="KEY", help="Remove a tag."),
        description: str | None = typer.Option(None, "--description", help="The version's description (one "
                                               "paragraph)."),
        json_: bool = JSON) -> None:
    """Set tags and the description of a model version (recorded as model.annotate).

    Example: onshore model tag plant-base@3 --tag stage=pilot --description "Furnace line 3, spring data"
    """
    from onshore.workspace import versions

    with open_workspace() as ws:
        out = versions.annotate(ws, name, versions.parse_tags(tags), remove_tags, description)
    if json_:
        print_json(out)
        return
    console.print(f"annotated model [bold]{esc(out['name'])}[/] version {out['version']} "
                  f"(ledger entry {out['ledger_index']})")


@model_app.command("archive")
def archive(name: str = typer.Argument(..., help="The version: NAME@VERSION."),
            restore: bool = typer.Option(False, "--restore", help="Bring an archived version back."),
            json_: bool = JSON) -> None:
    """Archive a model version: kept (files, lineage, ledger, bundles still verify) but no longer served or
    fine-tuned, and skipped by NAME alone. Recorded as model.archive.

    Example: onshore model archive plant-base@1
    """
    from onshore.workspace import versions

    with open_workspace() as ws:
        out = versions.archive(ws, name, restore)
    if json_:
        print_json(out)
        return
    console.print(f"{'restored' if restore else 'archived'} model [bold]{esc(out['name'])}[/] version "
                  f"{out['version']} (ledger entry {out['ledger_index']})")


@model_app.command("card")
def card(name: str = NAME,
         out: Path | None = typer.Option(None, "-o", "--out", metavar="FILE", help="Write the card to FILE (default: "
                                         "print it)."),
         force: bool = typer.Option(False, "--force", help="Overwrite FILE.")) -> None:
    """A model version's card (README.md in the Hugging Face model-card layout): its training data, where,
    its effective policy in plain words, evaluations, intended use and limits, how to load it. 'onshore model
    export' writes it beside the weights.

    Example: onshore model card plant-base@production -o README.md
    """
    from onshore.files import check_output_file
    from onshore.workspace import models, versions

    if out is not None:
        check_output_file(out, force, "--out")
    with open_workspace() as ws:
        text = models.model_card(ws, versions.resolve(ws, name))
    if out is None:
        print(text, end="")
        return
    out.write_text(text, encoding="utf-8")
    err.print(f"wrote {esc(str(out))}")
