"""`onshore attest dataset` (needs the workspace) and `onshore verify` (needs only a bundle and trust.json)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from onshore.cli.context import open_workspace
from onshore.cli.inputs import read_input
from onshore.cli.output import console, err, esc, print_json, table
from onshore.durations import parse_duration
from onshore.files import check_output_file

attest_app = typer.Typer(help="Residency attestations: signed claims an auditor verifies offline.",
                         no_args_is_help=True)

_STYLE = {"pass": "green", "fail": "red", "not run": "yellow"}


def _checkpoint_of(doc: dict) -> tuple[str, int]:
    """A written bundle's or update's checkpoint: its tree size and how many witnesses cosigned it."""
    from onshore.ledger import notes

    _, sigs = notes.split_note(doc["checkpoint"])
    return doc["checkpoint"].split("\n", 2)[1], len(sigs) - 1  # the first signature is the log's own


def _warn_if_uncosigned(cosignatures: int) -> None:
    if cosignatures <= 0:
        err.print("[yellow]warning:[/] the checkpoint has no witness cosignatures; verifiers asking for "
                  "--min-witnesses will refuse it. Cosign a checkpoint before attesting.")


@attest_app.command("dataset")
def dataset(
    name: str = typer.Argument(..., help="The dataset to attest."),
    out: Path = typer.Option(..., "-o", "--out", metavar="FILE", help="Where to write the bundle (JSON)."),
    site: str | None = typer.Option(None, "--site", metavar="SITE", help="The site that makes and signs the claim "
                                    "(default: where the dataset was ingested); it must hold the data."),
) -> None:
    """Sign where a dataset sits and has been, and write a bundle that `onshore verify` checks offline.

    Take a checkpoint and collect witness cosignatures first ('onshore ledger checkpoint',
    'onshore witness cosign', 'onshore ledger checkpoint --add-cosigned'); otherwise the bundle
    carries a fresh checkpoint that no witness has cosigned.
    """
    from onshore.attest.bundle import attest_dataset, write_bundle

    check_output_file(out, force=True, option="-o")
    with open_workspace() as ws:
        bundle = attest_dataset(ws, name, site)
    write_bundle(bundle, out)
    size, cosigs = _checkpoint_of(bundle)
    keyid = bundle["dsseEnvelope"]["signatures"][0]["keyid"]
    err.print(f"wrote {esc(out)}: dataset {esc(name)} attested by {esc(keyid)}, "
              f"{len(bundle['entries'])} ledger entries, checkpoint of size {size} with "
              f"{cosigs} cosignature(s)", highlight=False)
    _warn_if_uncosigned(cosigs)


@attest_app.command("model")
def model(
    name: str = typer.Argument(..., help="The model to attest: NAME (its latest version), NAME@VERSION or "
                                         "NAME@ALIAS."),
    out: Path = typer.Option(..., "-o", "--out", metavar="FILE", help="Where to write the bundle (JSON)."),
) -> None:
    """Sign where a model was trained and on whose data (its training site signs), for 'onshore verify'.

    Take a checkpoint and collect witness cosignatures first, as for a dataset bundle.
    Example: onshore attest model pool -o pool.bundle.json
    """
    from onshore.attest.bundle import write_bundle
    from onshore.attest.model_claim import attest_model

    check_output_file(out, force=True, option="-o")
    from onshore.workspace.versions import resolve

    with open_workspace() as ws:
        bundle = attest_model(ws, resolve(ws, name))
    write_bundle(bundle, out)
    _, cosigs = _checkpoint_of(bundle)
    keyid = bundle["dsseEnvelope"]["signatures"][0]["keyid"]
    err.print(f"wrote {esc(out)}: model {esc(name)} attested by {esc(keyid)}, {len(bundle['entries'])} ledger "
              f"entries, checkpoint with {cosigs} cosignature(s)", highlight=False)
    _warn_if_uncosigned(cosigs)


@attest_app.command("update")
def update(
    name: str = typer.Argument(..., help="The dataset the bundle is about."),
    since_size: int = typer.Option(..., "--since-size", min=1, metavar="N",
                                   help="The tree size of the bundle's checkpoint (its second line)."),
    out: Path = typer.Option(..., "-o", "--out", metavar="FILE", help="Where to write the update (JSON)."),
) -> None:
    """Write what happened to a dataset since a bundle's checkpoint, up to the newest stored checkpoint.

    An auditor holding the bundle checks it with 'onshore verify BUNDLE --trust-root T --update FILE':
    it shows whether the dataset was withdrawn since. Checkpoint and cosign first, as for a bundle.
    """
    from onshore.attest.bundle import write_bundle
    from onshore.attest.update import make_update

    check_output_file(out, force=True, option="-o")
    with open_workspace() as ws:
        doc = make_update(ws, name, since_size)
    write_bundle(doc, out)
    size, cosigs = _checkpoint_of(doc)
    err.print(f"wrote {esc(out)}: dataset {esc(name)} from tree size {since_size} to {size}, "
              f"{len(doc['entries'])} newer ledger entries, {cosigs} cosignature(s)", highlight=False)


def verify_command(
    bundle: Path = typer.Argument(..., help="The bundle from 'onshore attest dataset' or 'onshore attest model'."),
    trust_root: Path = typer.Option(..., "--trust-root", metavar="FILE",
                                    help="trust.json from 'onshore trust export'."),
    min_witnesses: int = typer.Option(0, "--min-witnesses", min=0,
                                      help="How many trust-root witnesses must have cosigned the checkpoint."),
    max_age: str | None = typer.Option(None, "--max-age", metavar="DURATION",
                                       help="Refuse a bundle whose checkpoint was last "
                                       "witnessed longer ago than this (e.g. 30d, 12h)."),
    update: Path | None = typer.Option(None, "--update", metavar="FILE",
                                       help="An update from 'onshore attest update': shows whether the dataset "
                                       "was withdrawn up to a newer witnessed checkpoint."),
    json_: bool = typer.Option(False, "--json", help="Print the report as JSON only, for scripts."),
) -> None:
    """Verify a residency bundle offline: no workspace, no network. Exit 0 only if every check passes.

    Example: onshore verify arms.bundle.json --trust-root trust.json --min-witnesses 1
    """
    from onshore.attest.trust import TrustRoot
    from onshore.attest.verify import VerificationFailed, verify_bundle

    age = parse_duration(max_age, "--max-age") if max_age is not None else None
    newer = read_input(update, "update") if update is not None else None
    report = verify_bundle(read_input(bundle, "bundle"), TrustRoot.load(trust_root), min_witnesses, age,
                           update=newer)
    if json_:
        print_json(report.to_json())
    elif not console.is_terminal:
        table(f"Residency bundle {bundle}", ["check", "result", "detail"],
              [(c.name, c.status, c.message) for c in report.checks])
    else:
        t = Table(title=f"Residency bundle {esc(bundle)}", title_justify="left")
        for col in ("check", "result", "detail"):
            t.add_column(col)
        for c in report.checks:
            t.add_row(esc(c.name), f"[{_STYLE[c.status]}]{c.status}[/]", esc(c.message))
        console.print(t)
    if not report.ok:
        not_run = [c.name for c in report.checks if c.status == "not run"]
        raise VerificationFailed(
            f"bundle NOT verified; failed check(s): {', '.join(report.failed)}"
            + (f" (not run: {', '.join(not_run)})" if not_run else ""))
    if not report.witnesses:
        # it passed, but only the log operator vouches for the checkpoint: a log that forked its
        # history for this verifier would pass too (witnesses are what rule that out)
        err.print("[yellow]warning:[/] verified with no witness cosignature: only the log operator vouches for "
                  "this checkpoint; ask for --min-witnesses 1 (or more) to require independent witnesses",
                  highlight=False)
    if not json_ and report.model is not None:
        st = report.model_status or {}
        console.print(f"[green]verified[/]: model {esc(report.model)} attested by its training site "
                      f"site:{esc(report.attester)}, checkpoint size {report.checkpoint_size}, witnesses: "
                      f"{esc(', '.join(report.witnesses) or 'none')}; status {esc(st.get('label', '?'))}",
                      highlight=False)
    elif not json_:
        console.print(f"[green]verified[/]: dataset {esc(report.dataset)} attested by site:{esc(report.attester)}, "
                      f"checkpoint size {report.checkpoint_size}, witnesses: "
                      f"{esc(', '.join(report.witnesses) or 'none')}", highlight=False)
