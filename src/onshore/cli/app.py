"""The `onshore` command. Exit codes: 0 ok, 1 an error you can fix, 2 usage, 3 refused by policy."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import typer

from onshore.cli import context, sim
from onshore.cli.attest import attest_app, verify_command
from onshore.cli.dashboard import dashboard_app
from onshore.cli.data import dataset_app, policy_app
from onshore.cli.demo import demo_command
from onshore.cli.doctor import doctor_command
from onshore.cli.evaluate import eval_command
from onshore.cli.helptext import localize, tidy
from onshore.cli.language import take_language
from onshore.cli.ledger import ledger_app
from onshore.cli.model import model_app
from onshore.cli.monitor import monitor_app
from onshore.cli.output import console, err, esc
from onshore.cli.parties import coordinator_app, party_app, profile_app, provision_command, site_serve
from onshore.cli.registry import embodiment_app, member_app, site_app
from onshore.cli.serve import bridge_app, serve_app
from onshore.cli.shadow import shadow_command
from onshore.cli.train import finetune_command, train_command
from onshore.cli.upgrade import backup_command, reshred_command, restore_command, upgrade_command
from onshore.cli.witness import trust_app, witness_app
from onshore.errors import OnshoreError, UsageError
from onshore.i18n import N_, Message, language_from_env, render, translator

app = typer.Typer(
    name="onshore",
    help="Onshore: resident industrial telemetry, cross-embodiment models, offline-verifiable "
         "residency.\n\nExit codes: 0 ok, 1 an error you can fix, 2 usage, 3 refused by policy.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("onshore")
        except PackageNotFoundError:  # run from a source tree that was never installed
            v = "unknown (not installed)"
        console.print(f"onshore {v}", highlight=False)
        raise typer.Exit()


@app.callback()
def _global(
    workspace: Path | None = typer.Option(
        None, "-w", "--workspace", metavar="DIR",
        help="Workspace folder (else $ONSHORE_WORKSPACE, else the current folder); also accepted after the "
             "command."),
    _show_version: bool = typer.Option(False, "--version", is_eager=True, callback=_version,
                                       help="Print the version and exit."),
    _lang: str | None = typer.Option(  # read by main() wherever it is given, before anything runs
        None, "--lang", metavar="LANG",
        help="Language of messages and help summaries: en or ja (else $LANGUAGE, $LC_ALL, $LANG); also "
             "accepted after the command. --json output is the same in every language."),
) -> None:
    context.set_workspace_path(workspace)


@app.command("init")
def init(
    directory: Path | None = typer.Argument(
        None, metavar="DIR", help="New or empty folder for the workspace (default: -w, else the current folder)."),
    name: str = typer.Option(..., "--name", help="The consortium's name, e.g. kansai-consortium."),
    jurisdiction: str | None = typer.Option(
        None, "--jurisdiction", metavar="CODE",
        help="Workspace-wide rule, e.g. JP: nothing is placed, read, computed or served outside."),
    catalog: str | None = typer.Option(
        None, "--catalog", metavar="URL",
        help="Catalog database (default: SQLite in the workspace), e.g. "
             "postgresql://onshore@db.example/catalog (needs pip install 'onshore\\[postgres]')."),
    ledger: str | None = typer.Option(
        None, "--ledger", metavar="URL",
        help="Ledger database (default: SQLite in the workspace), e.g. postgresql://onshore@db.example/ledger."),
) -> None:
    """Create a workspace: onshore.toml, catalog, ledger and the log key.

    Example: onshore init consortium --name kansai-consortium --jurisdiction JP
    """
    from onshore.workspace.workspace import Workspace

    root = directory or context.workspace_path()
    with Workspace.init(root, name, jurisdiction, catalog, ledger) as ws:
        console.print(f"workspace [bold]{esc(name)}[/] created in {esc(ws.root)}"
                      + (f" (rule: nothing outside {esc(jurisdiction)})" if jurisdiction else ""))


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
app.command("train")(train_command)
app.command("finetune")(finetune_command)
app.add_typer(model_app, name="model")
app.add_typer(serve_app, name="serve")
app.add_typer(bridge_app, name="bridge")
app.add_typer(monitor_app, name="monitor")
app.command("shadow")(shadow_command)
app.command("demo")(demo_command)
app.add_typer(attest_app, name="attest")
app.command("verify")(verify_command)
app.command("doctor")(doctor_command)
app.command("upgrade")(upgrade_command)
app.command("backup")(backup_command)
app.command("restore")(restore_command)
app.command("reshred")(reshred_command)
app.add_typer(dashboard_app, name="dashboard")
app.command("provision")(provision_command)
app.add_typer(coordinator_app, name="coordinator")
site_app.command("serve")(site_serve)
app.add_typer(party_app, name="party")
app.add_typer(profile_app, name="profile")


@functools.cache
def command() -> Any:
    """The click command tree behind ``app``, with help placeholders tidied (built once)."""
    return tidy(typer.main.get_command(app))


def _os_message(e: OSError) -> str:
    """An operating-system refusal (permissions, a full disk, a file where a folder should be)."""
    what = e.strerror or type(e).__name__
    where = e.filename if e.filename is not None else ""
    return f"{where}: {what.lower()}" if where else what


_WS_FLAGS = ("-w", "--workspace")
#: The prefix of every error line, in the reader's language.
ERROR = N_("error:")


def hoist_workspace(args: list[str]) -> list[str]:
    """``args`` with every ``-w DIR`` / ``--workspace DIR`` given after the command moved in front of it.

    ``onshore dataset list -w ws`` then means ``onshore -w ws dataset list``: people type the
    folder where they think of it. No subcommand has a ``-w`` of its own, so nothing is taken from
    one. Arguments after ``--`` are left alone; when the option is given twice, the later one wins,
    as click's options do. Refused (``UsageError``, exit 2): a ``-w`` with no folder after it.
    """
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            rest.extend(args[i:])
            break
        if a in _WS_FLAGS:
            if i + 1 == len(args):
                raise UsageError(Message(N_("{flag} needs a folder after it, e.g. {flag} consortium"), {"flag": a}))
            front += [a, args[i + 1]]
            i += 2
            continue
        if a.startswith("--workspace=") or (a.startswith("-w") and len(a) > 2 and not a.startswith("--")):
            front.append(a)
        else:
            rest.append(a)
        i += 1
    return front + rest


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; OnshoreErrors are printed without a traceback and set the exit code.

    Usage errors are click's own (exit 2). An OSError that no command turned into an
    OnshoreError (a permission refused, a disk full) is still a one-line message, exit 1. With
    ``argv`` given, returns the exit code instead of exiting, for tests. Error lines and help
    summaries are in the language of ``--lang`` or the environment (onshore.cli.language).
    """
    tr = translator(language_from_env())
    try:
        lang, args = take_language(sys.argv[1:] if argv is None else list(argv))
        tr = translator(lang)
        localize(command(), tr)(args=hoist_workspace(args), prog_name="onshore")
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except OnshoreError as e:
        err.print(f"[red]{esc(tr.gettext(ERROR))}[/] {esc(render(e.message, tr))}", highlight=False)
        code = e.exit_code
    except OSError as e:
        err.print(f"[red]{esc(tr.gettext(ERROR))}[/] {esc(_os_message(e))}", highlight=False)
        code = 1
    except KeyboardInterrupt:
        err.print(esc(tr.gettext("interrupted")))
        code = 130
    if argv is None:
        sys.exit(code)
    return code
