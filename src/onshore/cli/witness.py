"""`onshore witness` (runs anywhere, no workspace needed) and `onshore trust export`."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import typer

from onshore.cli.context import open_workspace
from onshore.cli.inputs import naming, read_input, read_text_input, usage
from onshore.cli.output import console, err, esc, print_json, table
from onshore.errors import ValidationError
from onshore.files import check_output_file

witness_app = typer.Typer(help="Witnesses: cosign checkpoints that extend what they saw before.",
                          no_args_is_help=True)
trust_app = typer.Typer(help="Trust roots: the public keys an auditor needs.", no_args_is_help=True)

JSON = typer.Option(False, "--json", help="Print JSON only, for scripts.")


@witness_app.command("init")
def init(name: str = typer.Argument(..., help="The witness's name, e.g. kyoto."),
         directory: Path = typer.Option(..., "--dir", metavar="DIR",
                                        help="A new folder for the witness's own key and state.")) -> None:
    """Make a witness with its own key and state. Needs no workspace.

    Example: onshore witness init kyoto --dir ~/witness
    """
    from onshore.ledger.witness import Witness

    w = Witness.init(name, directory)
    console.print(f"witness [bold]{esc(name)}[/] created in {esc(directory)}")
    console.print(f"verifier key: {esc(w.vkey)}", highlight=False)


def _load_proof(path: Path | None) -> tuple[list[bytes], dict | None]:  # type: ignore[type-arg]
    if path is None:
        return [], None
    raw = read_input(path, "consistency proof")
    try:
        d = json.loads(raw)
        return [base64.b64decode(h, validate=True) for h in d["proof"]], d
    except (ValueError, KeyError, TypeError) as e:
        raise ValidationError(f"{path}: not a consistency proof from 'onshore ledger consistency --json' ({e})"
                              ) from None


@witness_app.command("cosign")
def cosign(
    checkpoint: Path = typer.Argument(..., help="The log's signed checkpoint note, from 'onshore ledger checkpoint'."),
    directory: Path = typer.Option(..., "--dir", metavar="DIR", help="The witness's folder."),
    proof: Path | None = typer.Option(None, "--proof", metavar="FILE",
                                      help="Consistency proof from the last cosigned size "
                                      "('onshore ledger consistency OLD NEW --json'); not needed the first time."),
    log_key: str | None = typer.Option(None, "--log-key", metavar="VKEY",
                                       help="The log's verifier key (first time; then pinned), "
                                            "from 'onshore trust export'."),
    out: Path | None = typer.Option(None, "-o", "--out", metavar="FILE",
                                    help="Write the cosigned note here (default: stdout)."),
) -> None:
    """Cosign a checkpoint only if it extends the last one this witness cosigned (exit 3 if not).

    Example: onshore witness cosign cp.txt --dir ~/witness --log-key "$(jq -r .log.vkey trust.json)" -o cp2.txt
    """
    from onshore.ledger import checkpoint as ckpt
    from onshore.ledger.witness import Witness

    if out is not None:
        check_output_file(out, force=True, option="-o")
    w = Witness.open(directory)
    note = read_text_input(checkpoint, "checkpoint")
    origin = note.split("\n", 1)[0]
    if log_key is None:
        known = w.logs().get(origin)
        if known is None:
            raise ValidationError(f"{checkpoint}: witness has never seen log {origin!r}: pass its verifier key "
                                  "with --log-key (from 'onshore trust export')")
        log_key = known.log_vkey
    hashes, _ = _load_proof(proof)
    with naming(checkpoint):
        cosigned = w.cosign(note, log_key, hashes)
        cp = ckpt.parse(note.split("\n\n", 1)[0] + "\n")
    if out is not None:
        out.write_text(cosigned)
        err.print(f"cosigned {esc(origin)} at size {cp.size}; wrote {esc(out)}", highlight=False)
    else:
        print(cosigned, end="")


@witness_app.command("trust-log")
def trust_log(directory: Path = typer.Option(..., "--dir", "--folder", metavar="DIR", help="The witness's folder."),
              log_key: str = typer.Option(..., "--log-key", metavar="VKEY",
                                          help="The log's verifier key, from 'onshore trust export' (.log.vkey)."),
              origin: str | None = typer.Option(None, "--origin", metavar="ORIGIN",
                                                help="The log's origin line (default: the key's name).")) -> None:
    """Let this witness cosign a log's checkpoints: 'witness serve' refuses logs it does not follow.

    Example: onshore witness trust-log --dir ~/witness --log-key "$(jq -r .log.vkey trust.json)"
    """
    from onshore.ledger.witness import Witness

    w = Witness.open(directory)
    with naming(directory):
        state = w.trust_log(log_key, origin)
    console.print(f"witness [bold]{esc(w.name)}[/] follows {esc(origin or log_key.split('+', 1)[0])} "
                  f"(cosigned up to size {state.size})", highlight=False)


@witness_app.command("serve")
def serve(directory: Path = typer.Option(..., "--folder", "--dir", metavar="DIR", help="The witness's folder."),
          port: int = typer.Option(..., "--port", min=1, max=65535, help="TCP port."),
          host: str = typer.Option("127.0.0.1", "--host",
                                   help="Address to bind. Anything but loopback needs --tls-cert and --tls-key."),
          tls_cert: Path | None = typer.Option(None, "--tls-cert", metavar="PEM",
                                               help="Serve HTTPS with this certificate."),
          tls_key: Path | None = typer.Option(None, "--tls-key", metavar="PEM", help="Its private key."),
          client_ca: Path | None = typer.Option(None, "--client-ca", metavar="PEM",
                                                help="Mutual TLS: refuse clients without a certificate from this CA.")
          ) -> None:
    """Serve the witness over HTTP (c2sp.org/tlog-witness: POST /add-checkpoint) until Ctrl-C.

    Example: onshore witness serve --folder ~/witness --port 7380
    """
    import logging

    from onshore.tls import server_tls
    from onshore.web.access import is_loopback
    from onshore.web.witness import run

    tls = server_tls(tls_cert, tls_key, client_ca)
    if not tls and not is_loopback(host):
        raise usage(f"--host {host} is not loopback: give --tls-cert and --tls-key (and --client-ca) to serve there")
    from onshore.ledger.witness import Witness

    w = Witness.open(directory)  # fail here, before binding, if the folder is not a witness
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    where = f"[{host}]" if ":" in host else host
    scheme = "https" if tls else "http"
    err.print(f"witness {esc(w.name)} on {scheme}://{esc(where)}:{port}/add-checkpoint"
              + (" (mutual TLS)" if "ssl_ca_certs" in tls else "") + f", following {len(w.logs())} logs; "
              "Ctrl-C stops it", highlight=False)
    run(directory, host, port, tls)


@witness_app.command("submit")
def submit(url: str = typer.Argument(..., help="The witness's URL, e.g. http://127.0.0.1:7380"),
           ca: Path | None = typer.Option(None, "--ca", metavar="PEM", help="Trust only this CA for an https URL."),
           tls_cert: Path | None = typer.Option(None, "--tls-cert", metavar="PEM",
                                                help="Mutual TLS: present this certificate."),
           tls_key: Path | None = typer.Option(None, "--tls-key", metavar="PEM", help="Its private key."),
           wait: float = typer.Option(15.0, "--wait", min=0, max=3600, metavar="SECONDS",
                                      help="How long to retry a witness that cannot be reached."),
           json_: bool = JSON) -> None:
    """Checkpoint the ledger, have a witness cosign it over HTTP, and store the cosignature.

    The witness must be registered ('onshore witness add'); bundles made afterwards carry its
    cosignature as with 'witness cosign' and 'ledger checkpoint --add-cosigned'. Exit 3 if the
    witness holds a checkpoint this ledger does not extend.

    Example: onshore witness submit http://127.0.0.1:7380
    """
    from onshore.tls import client_tls
    from onshore.workspace.witnessing import request_cosignature

    context = client_tls(ca, tls_cert, tls_key)
    with open_workspace() as ws:
        done = request_cosignature(ws, url, context=context, wait_s=wait,
                                   on_wait=lambda m: err.print(esc(m), highlight=False))
    if json_:
        print_json({"url": done.url, "size": done.size, "previous_size": done.previous_size,
                    "witnesses": list(done.witnesses)})
        return
    console.print(f"cosigned at size {done.size} by {esc(', '.join(done.witnesses))} "
                  f"(the witness held size {done.previous_size})", highlight=False)


@witness_app.command("add")
def add(name: str = typer.Argument(..., help="The witness's name, e.g. kyoto."),
        vkey: str | None = typer.Option(None, "--vkey", metavar="VKEY",
                                        help="The witness's verifier key (from 'onshore witness init')."),
        directory: Path | None = typer.Option(None, "--dir", metavar="DIR",
                                              help="Or read it from the witness's folder.")) -> None:
    """Register a witness in the workspace so that its key goes into the trust root.

    Example: onshore witness add kyoto --dir ~/witness
    """
    from onshore.ledger.witness import Witness
    from onshore.workspace import registry

    if (vkey is None) == (directory is None):
        raise usage("give exactly one of --vkey or --dir")
    key = vkey if vkey is not None else Witness.open(directory).vkey  # type: ignore[arg-type]
    with open_workspace() as ws:
        registry.add_witness(ws, name, key)
    console.print(f"witness [bold]{esc(name)}[/] registered")


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
def export(out: Path = typer.Option(..., "-o", "--out", metavar="FILE", help="Where to write trust.json.")) -> None:
    """Write the public keys of the log, every site (with jurisdiction), member and witness.

    Example: onshore trust export -o trust.json
    """
    from onshore.attest.trust import build_trust_root

    check_output_file(out, force=True, option="-o")
    with open_workspace() as ws:
        root = build_trust_root(ws)
    root.write(out)
    err.print(f"wrote {esc(out)}: log {esc(root.log_origin)}, {len(root.sites)} sites, {len(root.members)} members, "
              f"{len(root.witnesses)} witnesses")
