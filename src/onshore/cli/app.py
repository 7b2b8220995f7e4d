"""The `onshore` command. Exit codes: 0 ok, 1 an error you can fix, 2 usage, 3 refused by policy."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from onshore.cli import context, sim
from onshore.cli.attest import attest_app, verify_command
from onshore.cli.data import dataset_app, policy_app
from onshore.cli.demo import demo_command
from onshore.cli.doctor import doctor_command
from onshore.cli.evaluate import eval_command
from onshore.cli.ledger import ledger_app
from onshore.cli.output import console, err
from onshore.cli.registry import embodiment_app, member_app, site_app
from onshore.cli.witness import trust_app, witness_app
from onshore.errors import OnshoreError
from onshore.workspace import Workspace

app = typer.Typer(
    name="onshore",
    help="Onshore: resident industrial telemetry, cross-embodiment models, offline-verifiable residency.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _global(
    workspace: Path | None = typer.Option(
        None, "-w", "--workspace", help="Workspace folder (else $ONSHORE_WORKSPACE, else the current folder)."),
) -> None:
    context.set_workspace_path(workspace)


@app.command("init")
def init(
    directory: Path | None = typer.Argument(None, help="Folder for the workspace (default: -w or current)."),
    name: str = typer.Option(..., "--name", help="The consortium's name."),
    jurisdiction: str | None = typer.Option(
        None, "--jurisdiction", help="Workspace-wide rule: nothing is placed, read, computed or served outside."),
    catalog: str | None = typer.Option(None, "--catalog", help="Catalog URL (default: SQLite in the workspace)."),
    ledger: str | None = typer.Option(None, "--ledger", help="Ledger URL (default: SQLite in the workspace)."),
) -> None:
    """Create a workspace: onshore.toml, catalog, ledger and the log key."""
    root = directory or context.workspace_path()
    with Workspace.init(root, name, jurisdiction, catalog, ledger) as ws:
        console.print(f"workspace [bold]{name}[/] created in {ws.root}"
                      + (f" (rule: nothing outside {jurisdiction})" if jurisdiction else ""))


app.add_typer(site_app, name="site")
app.add_typer(member_app, name="member")
app.add_typer(embodiment_app, name="embodiment")
app.add_typer(dataset_app, name="dataset")
app.add_typer(policy_app, name="policy")
app.add_typer(ledger_app, name="ledger")
app.add_typer(witness_app, name="witness")
app.add_typer(trust_app, name="trust")
app.add_typer(sim.app, name="sim")
app.command("eval")(eval_command)
app.command("demo")(demo_command)
app.add_typer(attest_app, name="attest")
app.command("verify")(verify_command)
app.command("doctor")(doctor_command)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; OnshoreErrors are printed without a traceback and set the exit code.

    Usage errors are Typer's own (exit 2). With ``argv`` given, returns the exit code instead of
    exiting, for tests.
    """
    try:
        app(args=argv, prog_name="onshore")
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except OnshoreError as e:
        err.print(f"[red]error:[/] {e}", highlight=False, markup=True)
        code = e.exit_code
    except KeyboardInterrupt:
        err.print("interrupted")
        code = 130
    if argv is None:
        sys.exit(code)
    return code
