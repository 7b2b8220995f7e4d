"""`onshore witness` (runs anywhere, no workspace needed) and `onshore trust export`."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import typer

from onshore.cli.context import open_workspace
from onshore.cli.inputs import read_input
from onshore.cli.output import console, err, print_json, table
from onshore.errors import ValidationError
from onshore.ledger import checkpoint as ckpt
from onshore.ledger.witness import Witness

witness_app = typer.Typer(help="Witnesses: cosign checkpoints that extend what they saw before.",
                          no_args_is_help=True)
trust_app = typer.Typer(help="Trust roots: the public keys an auditor needs.", no_args_is_help=True)

JSON = typer.Option(False, "--json", help="Print JSON only, for scripts.")


@witness_app.command("init")
def init(name: str, directory: Path = typer.Option(..., "--dir", help="The witness's own folder (key, state).")
         ) -> None:
    """Make a witness with its own key and state. Needs no workspace."""
    w = Witness.init(name, directory)
    console.print(f"witness [bold]{name}[/] created in {directory}")
    console.print(f"verifier key: {w.vkey}")


def _load_proof(path: Path | None) -> tuple[list[bytes], dict | None]:  # type: ignore[type-arg]
    if path is None:
        return [], None
    raw = read_input(path, "proof")
    try:
        d = json.loads(raw)
        return [base64.b64decode(h, validate=True) for h in d["proof"]], d
    except (ValueError, KeyError, TypeError) as e:
        raise ValidationError(f"{path}: not a consistency proof from 'onshore ledger consistency --json' ({e})"
                              ) from None


@witness_app.command("cosign")
def cosign(
    checkpoint: Path = typer.Argument(..., help="The log's signed checkpoint note."),
    directory: Path = typer.Option(..., "--dir", help="The witness's folder."),
    proof: Path | None = typer.Option(None, "--proof", help="Consistency proof from the last cosigned size "
                                      "('onshore ledger consistency OLD NEW --json'); not needed the first time."),
    log_key: str | None = typer.Option(None, "--log-key", help="The log's verifier key (first time; then pinned)."),
    out: Path | None = typer.Option(None, "-o", "--out", help="Write the cosigned note here (default: stdout)."),
) -> None:
    """Cosign a checkpoint only if it extends the last one this witness cosigned (exit 3 if not)."""
    w = Witness.open(directory)
    note = read_input(checkpoint, "checkpoint").decode()
    origin = note.split("\n", 1)[0]
    if log_key is None:
        known = w.logs().get(origin)
        if known is None:
            raise ValidationError(f"witness has never seen log {origin!r}: pass its verifier key with --log-key "
                                  "(from 'onshore trust export')")
        log_key = known.log_vkey
    hashes, _ = _load_proof(proof)
    cosigned = w.cosign(note, log_key, hashes)
    cp = ckpt.parse(note.split("\n\n", 1)[0] + "\n")
    if out is not None:
        out.write_text(cosigned)
        err.print(f"cosigned {origin} at size {cp.size}; wrote {out}")
    else:
        print(cosigned, end="")


@witness_app.command("add")
def add(name: str, vkey: str | None = typer.Option(None, "--vkey", help="The witness's verifier key."),
        directory: Path | None = typer.Option(None, "--dir", help="Or read it from the witness's folder.")) -> None:
    """Register a witness in the workspace so that its key goes into the trust root."""
    from onshore.workspace import registry

    if (vkey is None) == (directory is None):
        raise ValidationError("give exactly one of --vkey or --dir")
    key = vkey if vkey is not None else Witness.open(directory).vkey  # type: ignore[arg-type]
    with open_workspace() as ws:
        registry.add_witness(ws, name, key)
    console.print(f"witness [bold]{name}[/] registered")


@witness_app.command("list")
def list_(json_: bool = JSON) -> None:
    """List registered witnesses."""
    from onshore.workspace import registry

    with open_workspace() as ws:
        rows = registry.list_witnesses(ws)
    if json_:
        print_json(rows)
        return
    table("Witnesses", ["name", "verifier key"], [(r["name"], r["vkey"]) for r in rows])


@trust_app.command("export")
def export(out: Path = typer.Option(..., "-o", "--out", help="Where to write trust.json.")) -> None:
    """Write the public keys of the log, every site (with jurisdiction), member and witness."""
    from onshore.attest.trust import build_trust_root

    with open_workspace() as ws:
        root = build_trust_root(ws)
    root.write(out)
    err.print(f"wrote {out}: log {root.log_origin}, {len(root.sites)} sites, {len(root.members)} members, "
              f"{len(root.witnesses)} witnesses")
