"""`onshore dataset` and `onshore policy`."""

from __future__ import annotations

from pathlib import Path

import typer

from onshore.cli.context import open_workspace
from onshore.cli.inputs import usage
from onshore.cli.output import StageProgress, console, err, esc, print_json, table
from onshore.errors import NotFoundError, PolicyDenied, ValidationError

dataset_app = typer.Typer(help="Datasets: ingest, copy, read, export, list, show, withdraw.", no_args_is_help=True)
policy_app = typer.Typer(help="Usage policies: check what the policy decision point decides, show the Cedar.",
                         no_args_is_help=True)

JSON = typer.Option(False, "--json", help="Print JSON only, for scripts.")
NAME = typer.Argument(..., help="The dataset's name, e.g. arms.")
PURPOSE = typer.Option(None, "--purpose", help="Why it is read, e.g. fine-tuning (checked against the policy).")


@dataset_app.command("ingest")
def ingest(
    name: str = typer.Argument(..., help="A new dataset name, e.g. arms."),
    files: list[Path] = typer.Argument(..., help="Frame-schema Parquet files or a LeRobot v3.0 folder."),
    member: str | None = typer.Option(None, "--member", help="The owning member (required without --profile)."),
    site: str = typer.Option(..., "--site", help="The site where the data is placed."),
    policy: Path = typer.Option(..., "--policy", metavar="FILE", help="The member's usage policy (TOML)."),
    embodiment: str | None = typer.Option(None, "--embodiment",
                                          help="A registered embodiment name (required without --profile)."),
    profile: str | None = typer.Option(None, "--profile", metavar="NAME",
                                       help="Stream to a site node as this member profile (onshore profile add) "
                                            "instead of the local workspace."),
    allow_out_of_limits: bool = typer.Option(
        False, "--allow-out-of-limits",
        help="Keep state values outside the embodiment's limits (counted in the ledger entry). Actions outside "
             "their limits are always refused."),
    json_: bool = JSON,
) -> None:
    """Validate and ingest telemetry into a site, encrypted. All or nothing.

    Example: onshore dataset ingest arms tel/*.parquet --member kansai-robotics --site sakai
    --policy policy.toml --embodiment sawyer-metaworld
    """
    if profile is not None:
        from onshore.parties import actions
        from onshore.parties.profiles import open_profile

        res = actions.ingest(open_profile(profile), name, files, site, policy)
        print_json(res) if json_ else console.print(
            f"ingested [bold]{esc(name)}[/] at site node {esc(site)}: {res['frames']} frames in "
            f"{res['shards']} encrypted shard(s), ledger entry {res['entry']}")
        return
    if member is None or embodiment is None:
        raise usage("give --member and --embodiment (or --profile to stream to a site node)")
    from onshore.workspace import datasets

    with open_workspace() as ws, StageProgress(enabled=not json_) as bar:
        result = datasets.ingest(ws, name, member, site, policy, embodiment, files, bar.update,
                                 allow_out_of_limits=allow_out_of_limits)
    if json_:
        print_json({"dataset": result.dataset, "site": result.site, "episodes": result.episodes,
                    "frames": result.frames, "shards": [s.sha256 for s in result.shards],
                    "ledger_indices": result.ledger_indices,
                    **({"state_out_of_limits": result.out_of_limits} if allow_out_of_limits else {})})
        return
    console.print(f"ingested [bold]{esc(result.dataset)}[/] at {esc(result.site)}: {result.episodes} episodes, "
                  f"{result.frames} frames in {len(result.shards)} encrypted shard(s)"
                  + (f"; {result.out_of_limits} state value(s) outside limits kept" if allow_out_of_limits else ""))


@dataset_app.command("copy")
def copy(name: str = NAME, to: str = typer.Option(..., "--to", metavar="SITE", help="Target site."),
         from_: str | None = typer.Option(None, "--from", metavar="SITE",
                                          help="Source site (default: any site holding it)."),
         json_: bool = JSON) -> None:
    """Copy a dataset to another site, if its policy allows that site.

    Example: onshore dataset copy arms --to tokyo
    """
    from onshore.workspace import datasets

    with open_workspace() as ws, StageProgress(enabled=not json_, unit="bytes") as bar:
        out = datasets.copy(ws, name, to, from_, bar.update)
    if json_:
        print_json(out)
        return
    console.print(f"copied [bold]{esc(name)}[/] from {esc(out['from'])} to {esc(out['to'])} "
                  f"({out['shards']} shard(s))")


@dataset_app.command("read")
def read(name: str = NAME,
         site: str = typer.Option(..., "--site", help="The site reading (must hold the data)."),
         purpose: str | None = PURPOSE,
         out: Path | None = typer.Option(None, "--out", metavar="FILE",
                                         help="Write the frames to this new Parquet file (plaintext)."),
         force: bool = typer.Option(False, "--force", help="Replace the --out file if it exists.")) -> None:
    """Read a dataset at an allowed site; with --out, decrypt it into a Parquet file.

    Example: onshore dataset read arms --site tokyo --purpose fine-tuning --out arms.parquet
    """
    from onshore.workspace import datasets

    with open_workspace() as ws:
        if out is not None:
            with StageProgress() as bar:
                frames = datasets.read_to_file(ws, name, site, out, purpose, force, bar.update)
            err.print(f"wrote {frames} frames to {esc(out)}", highlight=False)
            return
        frames, columns = 0, []
        for batch in datasets.iter_batches(ws, name, site, purpose):
            frames += batch.num_rows
            columns = batch.schema.names
    console.print(f"{frames} frames, columns: {esc(', '.join(columns))}", highlight=False)


@dataset_app.command("export")
def export(name: str = NAME,
           site: str = typer.Option(..., "--site", help="The site exporting (must hold the data)."),
           out: Path = typer.Option(..., "--out", metavar="DIR", help="A new folder for the exported dataset."),
           fmt: str = typer.Option("lerobot", "--format", metavar="FORMAT",
                                   help="Only 'lerobot' (LeRobotDataset v3.0)."),
           purpose: str | None = PURPOSE, json_: bool = JSON) -> None:
    """Export a dataset at an allowed site, policy-checked and recorded in the ledger.

    Example: onshore dataset export arms --site sakai --format lerobot --out arms-lerobot/
    """
    from onshore.workspace import datasets

    with open_workspace() as ws:
        result = datasets.export(ws, name, site, out, fmt, purpose)
    if json_:
        print_json(result)
        return
    console.print(f"exported [bold]{esc(name)}[/] at {esc(site)} to {esc(result['out'])} ({result['frames']} "
                  f"frames, {result['files']} files; ledger entry {result['ledger_index']})")


@dataset_app.command("list")
def list_(json_: bool = JSON) -> None:
    """List datasets and where they sit."""
    from onshore.workspace import datasetinfo  # no Arrow: starts fast

    with open_workspace() as ws:
        rows = datasetinfo.list_datasets(ws)
    if json_:
        print_json(rows)
        return
    table("Datasets", ["name", "owner", "embodiment", "status", "episodes", "frames", "sites"],
          [(r["name"], r["owner"], r["embodiment"], r["status"], r["episodes"], r["frames"], ",".join(r["sites"]))
           for r in rows])


@dataset_app.command("show")
def show(name: str = NAME, json_: bool = JSON) -> None:
    """Show a dataset's policy and where every shard sits."""
    from onshore.workspace import datasetinfo  # no Arrow: starts fast

    with open_workspace() as ws:
        d = datasetinfo.show(ws, name)
    if json_:
        print_json(d)
        return
    console.print(f"[bold]{esc(d['name'])}[/] owned by {esc(d['owner'])} ({d['status']}), embodiment "
                  f"{esc(d['embodiment'])}, {d['episodes']} episodes, {d['frames']} frames")
    console.print(f"policy {d['policy_hash'][:16]}…: {esc(d['policy'])}")
    console.print(f"data key held at: {esc(', '.join(d['key_held_at']) or 'nowhere (withdrawn)')}")
    table("Shards", ["sha256", "site", "jurisdiction", "frames", "bytes", "path"],
          [(s["sha256"] if not console.is_terminal else s["sha256"][:16] + "…", s["site"], s["jurisdiction"],
            s["frames"], s["bytes"], s["path"]) for s in d["shards"]])


@dataset_app.command("withdraw")
def withdraw(name: str = NAME, member: str = typer.Option(..., "--member", help="The owning member."),
             json_: bool = JSON) -> None:
    """Withdraw consent: destroy every key of the dataset (crypto-shredding)."""
    from onshore.workspace import datasets

    with open_workspace() as ws:
        out = datasets.withdraw(ws, name, member)
    if json_:
        print_json(out)
        return
    shredded = ", ".join(out["shredded_at"]) or "no site"
    console.print(f"withdrew [bold]{esc(name)}[/]: keys destroyed at {esc(shredded)}; "
                  f"derived models: {len(out['derived_models'])} (clause: {esc(out['derived_models_clause'])})")


@policy_app.command("check")
def check(
    action: str = typer.Option(..., "--action", help="ingest, read, copy, export, train, serve or withdraw."),
    dataset: str | None = typer.Option(None, "--dataset", help="The dataset whose policy decides, e.g. arms."),
    model: str | None = typer.Option(None, "--model", help="Or a model: its lineage's policies decide."),
    site: str | None = typer.Option(None, "--site", help="The site where the action would happen."),
    purpose: str | None = PURPOSE,
    principal: str | None = typer.Option(
        None, "--principal", help="site:NAME or member:NAME (default: the site, or the owner for ingest/withdraw)."),
    json_: bool = JSON,
) -> None:
    """Ask the policy decision point; exit 0 for allow, 3 for deny. The decision is recorded.

    Example: onshore policy check --action train --dataset arms --site sakai --purpose fine-tuning
    Example: onshore policy check --action serve --model pool --site tokyo --purpose fine-tuning
    """
    from onshore.residency.pdp import Request, model_request

    if (dataset is None) == (model is None):
        raise usage("give exactly one of --dataset NAME and --model NAME")
    if model is not None and site is None:
        raise usage("--site is required for a model: every action on a model happens at a site")
    with open_workspace() as ws:
        if model is not None:
            from onshore.workspace.versions import resolve

            model = resolve(ws, model)
            principal = principal or f"site:{site}"
            decision, index = ws.decide(model_request(principal, action, model, site, purpose))
        else:
            assert dataset is not None
            row = ws.row("dataset", dataset)
            principal = _principal(principal, action, row["owner"], site)
            decision, index = ws.decide(Request(principal, action, dataset, site, purpose))
    what = f"model {model}" if model is not None else str(dataset)
    if json_:
        print_json({**decision.to_json(), "ledger_index": index})
    else:
        verdict = "[green]allow[/]" if decision.allowed else "[red]deny[/]"
        console.print(f"{verdict} {esc(action)} of {esc(what)} by {esc(principal)}"
                      f"{' at ' + esc(site) if site else ''}: {esc(', '.join(decision.rules))} "
                      f"(ledger entry {index})")
    if not decision.allowed:
        raise typer.Exit(PolicyDenied.exit_code)


def _principal(given: str | None, action: str, owner: str, site: str | None) -> str:
    """Who asks, by default: the owner for ingest and withdraw (or with no site), else the site."""
    if given is not None:
        return given
    return f"member:{owner}" if action in ("ingest", "withdraw") or site is None else f"site:{site}"


def _print_decisions(decided: list, json_: bool) -> None:  # type: ignore[type-arg]
    """Print (decision, ledger index) pairs of dataset requests; exit 3 when any is a deny."""
    if json_:
        print_json([{**d.to_json(), "ledger_index": i} for d, i in decided])
    else:
        for d, i in decided:
            r = d.request
            verdict = "[green]allow[/]" if d.allowed else "[red]deny[/]"
            console.print(f"{verdict} {esc(r.action)} of {esc(r.dataset)} by {esc(r.principal)}"
                          f"{' at ' + esc(r.site) if r.site else ''}: {esc(', '.join(d.rules))} "
                          f"(ledger entry {i})")
    if not all(d.allowed for d, _ in decided):
        raise typer.Exit(PolicyDenied.exit_code)


_REQUEST_KEYS = ("action", "dataset", "site", "purpose", "principal")


@policy_app.command("check-many")
def check_many(
    requests: Path = typer.Argument(
        ..., metavar="FILE",
        help='JSON lines, one request each: {"action": "train", "dataset": "arms", "site": "sakai", '
             '"purpose": "fine-tuning"}.'),
    json_: bool = JSON,
) -> None:
    """Decide many requests at once, all recorded in one ledger transaction; exit 3 if any is denied.

    Each line is an object with "action" and "dataset", and optionally "site", "purpose" and
    "principal" (defaults as for 'policy check'); blank lines are skipped. For a job or a
    serving gateway with many questions: one ledger transaction for all of them.

    Example: onshore policy check-many requests.jsonl --json
    """
    import json

    from onshore.cli.inputs import read_text_input
    from onshore.residency.pdp import Request

    parsed: list[tuple[int, dict[str, str | None]]] = []
    for n, line in enumerate(read_text_input(requests, "requests").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise ValidationError(f"{requests}, line {n}: not JSON ({e})") from None
        if not isinstance(obj, dict) or not {"action", "dataset"} <= set(obj) or set(obj) - set(_REQUEST_KEYS) \
                or not all(v is None or isinstance(v, str) for v in obj.values()):
            raise ValidationError(f"{requests}, line {n}: give an object with string fields \"action\" and "
                                  f"\"dataset\", and optionally \"site\", \"purpose\", \"principal\"")
        parsed.append((n, obj))
    if not parsed:
        raise ValidationError(f"{requests}: holds no requests (one JSON object a line)")
    with open_workspace() as ws:
        owners: dict[str, str] = {}
        batch = []
        for n, r in parsed:
            name = str(r["dataset"])
            if name not in owners:
                try:
                    owners[name] = ws.row("dataset", name)["owner"]
                except NotFoundError as e:
                    raise NotFoundError(f"{requests}, line {n}: {e}") from None
            batch.append(Request(_principal(r.get("principal"), str(r["action"]), owners[name], r.get("site")),
                                 str(r["action"]), name, r.get("site"), r.get("purpose")))
        decided = ws.decide_many(batch)
    _print_decisions(decided, json_)


@policy_app.command("show")
def show_policy(dataset: str = typer.Argument(..., help="The dataset whose policy to print, e.g. arms."),
                json_: bool = JSON) -> None:
    """Print the Cedar policies in force for a dataset (its own, then the workspace-wide rules).

    The dataset's hash is the SHA-256 of its Cedar text as printed (UTF-8): the hash its consent
    entry, every decision about it and its residency bundles carry.
    """
    from onshore.residency.policy import cedar_hash, workspace_cedar

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
