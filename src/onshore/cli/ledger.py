"""`onshore ledger`: list and verify the transparency ledger."""

from __future__ import annotations

from pathlib import Path

import typer

from onshore.cli.context import open_workspace
from onshore.cli.inputs import naming, read_text_input
from onshore.cli.output import console, print_json, table
from onshore.encoding import b64encode
from onshore.files import check_output_file

ledger_app = typer.Typer(help="The transparency ledger.", no_args_is_help=True)

JSON = typer.Option(False, "--json", help="Print JSON only, for scripts.")


def _count(value: int | None) -> int | None:
    """Entry indices and tree sizes: 0 up to what a 64-bit database integer holds (else exit 2)."""
    if value is not None and not 0 <= value < 2**63:
        raise typer.BadParameter(f"{value} is not an entry index or tree size (0 or more, below 2**63)")
    return value


COUNT = {"callback": _count}


@ledger_app.command("log")
def log(json_: bool = JSON, start: int = typer.Option(0, "--from", metavar="INDEX", help="First entry index.", **COUNT),
        limit: int | None = typer.Option(None, "--limit", metavar="N", help="At most this many entries.", **COUNT),
        kind: list[str] = typer.Option([], "--kind", metavar="KIND",
                                       help="Only entries of this kind, e.g. data.ingest (repeatable).")) -> None:
    """List ledger entries."""
    with open_workspace() as ws:
        end = None if limit is None else start + limit
        entries = list(ws.ledger.entries(start, end, kind or None))
    if json_:
        print_json([{"index": e.index, **e.entry.to_json()} for e in entries])
        return

    def summary(body: dict) -> str:  # type: ignore[type-arg]
        if "decision" in body:
            r = body["request"]
            # a decision is about a dataset or, since models carry their lineage's policy, a model
            what = f"model {r['model']}" if "model" in r else str(r.get("dataset", "?"))
            return (f"{body['decision']} {r['action']} {what}"
                    f"{' @' + r['site'] if r.get('site') else ''}: {', '.join(body['rules'])}")
        return ", ".join(f"{k}={v}" for k, v in body.items() if not isinstance(v, list | dict))

    table("Ledger", ["#", "time", "kind", "actor", "summary"],
          [(e.index, e.entry.time[:19], e.entry.kind, e.entry.actor, summary(e.entry.body)) for e in entries])


@ledger_app.command("verify")
def verify(json_: bool = JSON) -> None:
    """Recompute every signature and the Merkle root; exit 1 on any mismatch."""
    with open_workspace() as ws:
        report = ws.verify_ledger()
    if json_:
        print_json({"ok": True, "size": report.size, "root": b64encode(report.root),
                    "signatures_checked": report.signatures_checked})
        return
    console.print(f"[green]ledger verified[/]: {report.size} entries, {report.signatures_checked} signatures, "
                  f"root {b64encode(report.root)}")


def _print_proof(heading: str, hashes: list[str]) -> None:
    console.print(heading, highlight=False)
    for i, h in enumerate(hashes):
        console.print(f"  {i}: {h}")


@ledger_app.command("prove")
def prove(index: int = typer.Argument(..., help="The entry's index, as in 'onshore ledger log'.", **COUNT),
          size: int | None = typer.Option(None, "--size", metavar="N", help="Tree size (default: now).", **COUNT),
          json_: bool = JSON) -> None:
    """Print an RFC 9162 inclusion proof for entry INDEX."""
    from onshore.ledger import merkle  # hashlib and the tree code: only when a proof is printed

    with open_workspace() as ws:
        n = ws.ledger.size() if size is None else size
        proof = ws.ledger.inclusion_proof(index, n)
        stored = ws.ledger.get(index)
        root = ws.ledger.root(n)
    out = {"index": index, "size": n, "leaf_hash": b64encode(merkle.leaf_hash(stored.leaf)), "root": b64encode(root),
           "proof": [b64encode(h) for h in proof], "entry": stored.entry.to_json()}
    if json_:
        print_json(out)
        return
    _print_proof(f"entry {index} ({stored.entry.kind}) in tree of size {n}, root {out['root']}", out["proof"])


@ledger_app.command("consistency")
def consistency(old: int = typer.Argument(..., help="The older tree size (a witness's last cosigned size).", **COUNT),
                new: int = typer.Argument(..., help="The newer tree size.", **COUNT), json_: bool = JSON) -> None:
    """Print an RFC 9162 consistency proof between tree sizes OLD and NEW."""
    with open_workspace() as ws:
        proof = ws.ledger.consistency_proof(old, new)
        out = {"origin": ws.origin, "old_size": old, "new_size": new, "old_root": b64encode(ws.ledger.root(old)),
               "new_root": b64encode(ws.ledger.root(new)), "proof": [b64encode(h) for h in proof]}
    if json_:
        print_json(out)
        return
    _print_proof(f"consistency {old} -> {new}: {len(proof)} hashes", out["proof"])


@ledger_app.command("checkpoint")
def checkpoint(out: Path | None = typer.Option(None, "-o", "--out", metavar="FILE",
                                              help="Also write the note to this file."),
               add_cosigned: Path | None = typer.Option(
                   None, "--add-cosigned", metavar="FILE",
                   help="Merge a witness's cosigned checkpoint into the stored one.")) -> None:
    """Sign, store and print the newest checkpoint (a C2SP signed note); or merge cosignatures."""
    if out is not None:
        check_output_file(out, force=True, option="-o")
    with open_workspace() as ws:
        if add_cosigned is not None:
            with naming(add_cosigned):
                cp = ws.add_cosignatures(read_text_input(add_cosigned, "cosigned checkpoint"))
            note = ws.ledger.checkpoint_note(cp.size)
        else:
            note = ws.make_checkpoint()
    assert note is not None
    if out is not None:
        out.write_text(note)
    print(note, end="")
