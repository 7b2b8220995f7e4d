"""`onshore dataset` and `onshore policy`."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from onshore.cli.context import open_workspace
from onshore.cli.output import console, err, print_json, table
from onshore.errors import PolicyDenied
from onshore.residency.pdp import Request
from onshore.residency.policy import cedar_hash, workspace_cedar
from onshore.workspace import datasets
from onshore.workspace.paths import check_plaintext_destination

dataset_app = typer.Typer(help="Datasets: ingest, copy, read, show, withdraw.", no_args_is_help=True)
policy_app = typer.Typer(help="Usage policies: check what the policy decision point decides, show the Cedar.",
                         no_args_is_help=True)

JSON = typer.Option(False, "--json", help="Print JSON only, for scripts.")


@dataset_app.command("ingest")
def ingest(
    name: str,
    files: list[Path] = typer.Argument(..., help="Frame-schema Parquet files or a LeRobot v3.0 folder."),
    member: str = typer.Option(..., "--member", help="The owning member."),
    site: str = typer.Option(..., "--site", help="Where the data is placed."),
    policy: Path = typer.Option(..., "--policy", help="The member's usage policy (TOML)."),
    embodiment: str = typer.Option(..., "--embodiment", help="A registered embodiment name."),
    json_: bool = JSON,
) -> None:
    """Validate and ingest telemetry into a site, encrypted. All or nothing."""
    with open_workspace() as ws, Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err, transient=True, disable=json_,
    ) as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done)

        result = datasets.ingest(ws, name, member, site, policy, embodiment, files, progress)
    if json_:
        print_json({"dataset": result.dataset, "site": result.site, "episodes": result.episodes,
                    "frames": result.frames, "shards": [s.sha256 for s in result.shards],
                    "ledger_indices": result.ledger_indices})
        return
    console.print(f"ingested [bold]{result.dataset}[/] at {result.site}: {result.episodes} episodes, "
                  f"{result.frames} frames in {len(result.shards)} encrypted shard(s)")


@dataset_app.command("copy")
def copy(name: str, to: str = typer.Option(..., "--to", help="Target site."),
         from_: str | None = typer.Option(None, "--from", help="Source site (default: any holding it)."),
         json_: bool = JSON) -> None:
    """Copy a dataset to another site, if its policy allows that site."""
    with open_workspace() as ws:
        out = datasets.copy(ws, name, to, from_)
    if json_:
        print_json(out)
        return
    console.print(f"copied [bold]{name}[/] from {out['from']} to {out['to']} ({out['shards']} shard(s))")


@dataset_app.command("read")
def read(name: str, site: str = typer.Option(..., "--site", help="The site reading (must hold the data)."),
         purpose: str | None = typer.Option(None, "--purpose"),
         out: Path | None = typer.Option(None, "--out", help="Write the frames to this Parquet file.")) -> None:
    """Read a dataset at an allowed site."""
    with open_workspace() as ws:
        if out:
            check_plaintext_destination(ws, out, "--out")
        t = datasets.read(ws, name, site, purpose)
    if out:
        pq.write_table(t, out)
        err.print(f"wrote {t.num_rows} frames to {out}")
    else:
        console.print(f"{t.num_rows} frames, columns: {', '.join(t.column_names)}")


@dataset_app.command("export")
def export(name: str, site: str = typer.Option(..., "--site", help="The site exporting (must hold the data)."),
           out: Path = typer.Option(..., "--out", help="A new folder for the exported dataset."),
           fmt: str = typer.Option("lerobot", "--format", help="Only 'lerobot' (LeRobotDataset v3.0)."),
           purpose: str | None = typer.Option(None, "--purpose"), json_: bool = JSON) -> None:
    """Export a dataset at an allowed site, policy-checked and recorded in the ledger."""
    with open_workspace() as ws:
        result = datasets.export(ws, name, site, out, fmt, purpose)
    if json_:
        print_json(result)
        return
    console.print(f"exported [bold]{name}[/] at {site} to {result['out']} ({result['frames']} frames, "
                  f"{result['files']} files; ledger entry {result['ledger_index']})")


@dataset_app.command("list")
def list_(json_: bool = JSON) -> None:
    """List datasets and where they sit."""
    with open_workspace() as ws:
        rows = datasets.list_datasets(ws)
    if json_:
        print_json(rows)
        return
    table("Datasets", ["name", "owner", "embodiment", "status", "episodes", "frames", "sites"],
          [(r["name"], r["owner"], r["embodiment"], r["status"], r["episodes"], r["frames"], ",".join(r["sites"]))
           for r in rows])


@dataset_app.command("show")
def show(name: str, json_: bool = JSON) -> None:
    """Show a dataset's policy and where every shard sits."""
    with open_workspace() as ws:
        d = datasets.show(ws, name)
    if json_:
        print_json(d)
        return
    console.print(f"[bold]{d['name']}[/] owned by {d['owner']} ({d['status']}), embodiment {d['embodiment']}, "
                  f"{d['episodes']} episodes, {d['frames']} frames")
    console.print(f"policy {d['policy_hash'][:16]}…: {d['policy']}")
    console.print(f"data key held at: {', '.join(d['key_held_at']) or 'nowhere (withdrawn)'}")
    table("Shards", ["sha256", "site", "jurisdiction", "frames", "bytes", "path"],
          [(s["sha256"][:16] + "…", s["site"], s["jurisdiction"], s["frames"], s["bytes"], s["path"])
           for s in d["shards"]])


@dataset_app.command("withdraw")
def withdraw(name: str, member: str = typer.Option(..., "--member", help="The owning member."),
             json_: bool = JSON) -> None:
    """Withdraw consent: destroy every key of the dataset (crypto-shredding)."""
    with open_workspace() as ws:
        out = datasets.withdraw(ws, name, member)
    if json_:
        print_json(out)
        return
    console.print(f"withdrew [bold]{name}[/]: keys destroyed at {', '.join(out['shredded_at']) or 'no site'}; "
                  f"derived models: {len(out['derived_models'])} (clause: {out['derived_models_clause']})")


@policy_app.command("check")
def check(
    action: str = typer.Option(..., "--action", help="ingest, read, copy, export, train, serve or withdraw."),
    dataset: str = typer.Option(..., "--dataset"),
    site: str | None = typer.Option(None, "--site"),
    purpose: str | None = typer.Option(None, "--purpose"),
    principal: str | None = typer.Option(
        None, "--principal", help="site:NAME or member:NAME (default: the site, or the owner for ingest/withdraw)."),
    json_: bool = JSON,
) -> None:
    """Ask the policy decision point; exit 0 for allow, 3 for deny. The decision is recorded."""
    with open_workspace() as ws:
        row = ws.row("dataset", dataset)
        if principal is None:
            principal = f"member:{row['owner']}" if action in ("ingest", "withdraw") or site is None else f"site:{site}"
        decision, index = ws.decide(Request(principal, action, dataset, site, purpose))
    if json_:
        print_json({**decision.to_json(), "ledger_index": index})
    else:
        verdict = "[green]allow[/]" if decision.allowed else "[red]deny[/]"
        console.print(f"{verdict} {action} of {dataset} by {principal}"
                      f"{' at ' + site if site else ''}: {', '.join(decision.rules)} (ledger entry {index})")
    if not decision.allowed:
        raise typer.Exit(PolicyDenied.exit_code)


@policy_app.command("show")
def show_policy(dataset: str, json_: bool = JSON) -> None:
    """Print the Cedar policies in force for a dataset (its own, then the workspace-wide rules).

    The dataset's hash is the SHA-256 of its Cedar text as printed (UTF-8): the hash its consent
    entry, every decision about it and its residency bundles carry.
    """
    with open_workspace() as ws:
        text, digest = ws.dataset_policy(dataset)
        rules = workspace_cedar(ws.jurisdiction)
    if json_:
        print_json({"dataset": dataset, "cedar": text, "sha256": digest, "workspace_cedar": rules,
                    "workspace_sha256": cedar_hash(rules)})
        return
    # Cedar text is printed verbatim (no Rich markup: it is full of brackets)
    typer.echo(f"// dataset {dataset}: sha256 {digest}\n{text}\n// workspace-wide rules: sha256 "
               f"{cedar_hash(rules)}\n{rules}", nl=False)
