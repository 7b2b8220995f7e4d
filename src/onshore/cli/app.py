"""The `onshore` command. Exit codes: 0 ok, 1 an error you can fix, 2 usage, 3 refused by policy."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import typer

from onshore.cli import context
from onshore.cli.helptext import localize, tidy
from onshore.cli.language import take_language
from onshore.cli.lazy import Lazy, LazyGroup, build_into
from onshore.cli.output import console, err, esc
from onshore.errors import OnshoreError, UsageError
from onshore.i18n import N_, Message, language_from_env, render, translator

app = typer.Typer(
    name="onshore",
    help="Onshore: resident industrial telemetry, cross-embodiment models, offline-verifiable "
         "residency.\n\nExit codes: 0 ok, 1 an error you can fix, 2 usage, 3 refused by policy.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    cls=LazyGroup,
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


#: Every command but ``init``, in the order ``onshore --help`` lists them (Typer's: commands, then
#: groups): where it lives and the first paragraph of its help as written there. A command's module
#: is imported only when it runs (onshore.cli.lazy); tests/test_startup.py keeps this table true.
COMMANDS: dict[str, Lazy] = {
    "eval": Lazy("onshore.cli.evaluate", "eval_command",
                 "Evaluate a policy in closed loop: success rate with a 95 % interval per task (TEP: IAE,\n"
                 "constraint violations and shutdowns; a policy other than the PI controller is compared with it)."),
    "train": Lazy("onshore.cli.train", "train_command",
                  "Train a model at a site on granted data (refused with exit 3, naming the rule, before any read)."),
    "finetune": Lazy("onshore.cli.train", "finetune_command",
                     "Fine-tune a model on more data; a new machine type gets a fresh stem and head."),
    "shadow": Lazy("onshore.cli.shadow", "shadow_command",
                   "Run MODEL beside the plant's controller; record states, the controller's actions (labels) and "
                   "the model's\nproposals as the owner's dataset, for 'onshore finetune MODEL --datasets DATASET'."),
    "demo": Lazy("onshore.cli.demo", "demo_command",
                 "Build a three-member consortium on simulator telemetry and prove where its data sat."),
    "verify": Lazy("onshore.cli.attest", "verify_command",
                   "Verify a residency bundle offline: no workspace, no network. Exit 0 only if every check passes."),
    "doctor": Lazy("onshore.cli.doctor", "doctor_command",
                   "Check the workspace; exit 1 while anything is left to do (each finding says what)."),
    "upgrade": Lazy("onshore.cli.upgrade", "upgrade_command",
                    "Bring the workspace's catalog and ledger to this version's schema, after taking a backup."),
    "backup": Lazy("onshore.cli.upgrade", "backup_command",
                   "Back the workspace up: catalog, ledger, key custody of every site and member, shards and models."),
    "restore": Lazy("onshore.cli.upgrade", "restore_command",
                    "Make a workspace (the -w folder, new or empty) from a backup; then run 'onshore doctor'."),
    "reshred": Lazy("onshore.cli.upgrade", "reshred_command",
                    "Destroy, in backups of this workspace, the keys of every dataset withdrawn since each was taken."),
    "provision": Lazy("onshore.cli.parties", "provision_command",
                      "Make the consortium CA and one startup kit per party (only that party's keys in each)."),
    "site": Lazy("onshore.cli.registry", "site_app", "Sites: where data may sit, be computed on and served."),
    "member": Lazy("onshore.cli.registry", "member_app", "Members: the companies that own datasets."),
    "embodiment": Lazy("onshore.cli.registry", "embodiment_app", "Embodiments: machine types and their channels."),
    "dataset": Lazy("onshore.cli.data", "dataset_app", "Datasets: ingest, copy, read, export, list, show, withdraw."),
    "policy": Lazy("onshore.cli.data", "policy_app",
                   "Usage policies: check what the policy decision point decides, show the Cedar."),
    "ledger": Lazy("onshore.cli.ledger", "ledger_app", "The transparency ledger."),
    "witness": Lazy("onshore.cli.witness", "witness_app",
                    "Witnesses: cosign checkpoints that extend what they saw before."),
    "trust": Lazy("onshore.cli.witness", "trust_app", "Trust roots: the public keys an auditor needs."),
    "sim": Lazy("onshore.cli.sim", "app", "Simulated consortium members: generate telemetry from simulators."),
    "model": Lazy("onshore.cli.model", "model_app",
                  "Trained models and their versions: list, show lineage and policy, copy to a site, export, model "
                  "card, aliases, tags, archive."),
    "serve": Lazy("onshore.cli.serve", "serve_app",
                  "Serve a model next to the machine: 'onshore serve MODEL --site S'; client tokens."),
    "bridge": Lazy("onshore.cli.serve", "bridge_app", "Bridges between a machine's controller and a policy server."),
    "monitor": Lazy("onshore.cli.monitor", "monitor_app",
                    "Fault detection from a plant model: 'onshore monitor fit', then "
                    "'onshore monitor MODEL --site S'."),
    "attest": Lazy("onshore.cli.attest", "attest_app",
                   "Residency attestations: signed claims an auditor verifies offline."),
    "dashboard": Lazy("onshore.cli.dashboard", "dashboard_app",
                      "The read-only residency dashboard (a local web page)."),
    "coordinator": Lazy("onshore.cli.parties", "coordinator_app",
                        "The coordinator: catalog, ledger and decisions for the consortium."),
    "party": Lazy("onshore.cli.parties", "party_app",
                  "Act as a party from its startup kit: ingest, copy, read, withdraw."),
    "profile": Lazy("onshore.cli.parties", "profile_app", "Member profiles: a name for a member's startup kit."),
}


def root() -> LazyGroup:
    """The click group behind ``app``: ``init`` built, every other command listed from ``COMMANDS`` and
    built (help placeholders tidied) when it runs. A new group each call: ``main`` gives it the
    reader's language."""
    group: LazyGroup = typer.main.get_command(app)  # type: ignore[assignment]
    group.lazy, group.build = COMMANDS, build_into(app)
    return tidy(group)


@functools.cache
def command() -> Any:
    """The whole click command tree behind ``app``, every command loaded and tidied (built once; for
    tests and tools that walk it: ``main`` loads only the command it runs)."""
    group = root()
    group.prepare = tidy
    return group.load_all()


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
        group = root()
        group.prepare = lambda c: localize(tidy(c), tr)
        localize(group, tr)(args=hoist_workspace(args), prog_name="onshore")
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
