"""`onshore serve MODEL --site S` and its tokens; `onshore bridge opcua` next to the machine.

``onshore serve MODEL ...`` is short for ``onshore serve run MODEL ...``; ``token``, ``revoke``
and ``tokens`` manage who may ask the server for actions. The bridge needs no workspace: it
holds a token and talks to a server and a PLC.
"""

from __future__ import annotations

import math
import signal
import threading
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from onshore.cli import opcua as opc
from onshore.cli.context import open_workspace
from onshore.cli.inputs import usage
from onshore.cli.output import console, err, esc, print_json, table
from onshore.errors import OnshoreError, PolicyDenied, ValidationError

JSON = typer.Option(False, "--json", help="Print JSON only, for scripts.")


class RunByDefaultGroup(TyperGroup):
    """``onshore serve MODEL ...`` runs ``onshore serve run MODEL ...`` (and ``monitor`` likewise);
    so does ``onshore serve --from DIR ...``, which names no model first."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and (not args[0].startswith("-") or args[0] == "--from"
                                                      or args[0].startswith("--from=")):
            args = ["run", *args]
        return super().parse_args(ctx, args)


serve_app = typer.Typer(cls=RunByDefaultGroup, no_args_is_help=True,
                        help="Serve a model next to the machine: 'onshore serve MODEL --site S'; client tokens.")
bridge_app = typer.Typer(no_args_is_help=True, help="Bridges between a machine's controller and a policy server.")


@serve_app.command("run")
def run(
    model: str | None = typer.Argument(None, help="The model to serve: NAME (its latest version), NAME@VERSION or "
                                                  "NAME@ALIAS (followed while serving; see 'onshore model list'). "
                                                  "Leave it out with --from."),
    from_: Path | None = typer.Option(
        None, "--from", metavar="DIR",
        help="Serve the model of a folder 'onshore model export' wrote, instead of MODEL: its files are checked "
             "against its manifest and this workspace's ledger, then serving is decided as for MODEL."),
    site: str = typer.Option(..., "--site", help="The serving site: every dataset of the model must allow serve "
                                                 "there."),
    purpose: str | None = typer.Option(None, "--purpose",
                                       help="Purpose of the serving (default: the purpose the model was trained for)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(7070, "--port", help="Port to listen on (0: any free port)."),
    record_policy: Path | None = typer.Option(
        None, "--record-policy", metavar="POLICY.toml",
        help="Record what the served machines did and ingest it at the site under this usage policy on stop."),
    record_member: str | None = typer.Option(None, "--record-member", metavar="MEMBER",
                                             help="The member who owns the recording (with --record-policy)."),
    record_as: str | None = typer.Option(None, "--record-as", metavar="DATASET",
                                         help="Name of the recorded dataset (default MODEL-run-RUNID)."),
    threads: int = typer.Option(2, "--threads", help="Inference threads (torch runs one thread in each)."),
    batch: bool = typer.Option(True, "--batch/--no-batch",
                               help="Run the acts that sessions send at the same time as one forward pass."),
    act_hz: float | None = typer.Option(
        None, "--act-hz", metavar="HZ",
        help="Acts per second a session may send (default: the embodiment's control rate); raise it only for a "
             "simulated plant that runs faster than real time."),
    protocol: str = typer.Option(
        "onshore", "--protocol", metavar="NAME",
        help="onshore (this server's own, docs/serving.md) or openpi (what openpi-client's WebsocketClientPolicy "
             "speaks; its api_key is an Onshore client token)."),
    embodiment: str | None = typer.Option(
        None, "--embodiment", metavar="NAME",
        help="With --protocol openpi: the embodiment every session acts for (default: the model's only one)."),
) -> None:
    """Serve MODEL at a site that holds it, or an export folder (--from DIR) at a site its policy allows, until
    Ctrl-C (exit 3, naming the dataset and rule, where its data forbids it, also when that happens while it runs: a
    withdrawal, the site losing its serve role).

    Example: onshore serve consortium-tiny --site tokyo --port 7070 --record-policy run-policy.toml
    --record-member kansai-robotics

    Example (an export folder): onshore serve --from ./pool-export --site tokyo
    """
    import logging

    import torch

    from onshore.serve import service
    from onshore.serve.record import RecordOptions
    from onshore.serve.server import ServerLimits

    if (model is None) == (from_ is None):
        raise usage("give the MODEL to serve or --from DIR (a folder 'onshore model export' wrote), one of the two")
    if (record_policy is None) != (record_member is None):
        raise usage("give --record-policy and --record-member together (who owns the recording, "
                    "under which policy)")
    if record_as is not None and record_policy is None:
        raise usage("--record-as names a recording: give --record-policy and --record-member too")
    if threads < 1:
        raise ValidationError(f"--threads must be at least 1, got {threads}")
    if act_hz is not None and not (math.isfinite(act_hz) and act_hz > 0):
        raise ValidationError(f"--act-hz must be a positive number, got {act_hz}")
    if not 0 <= port <= 65535:
        raise ValidationError(f"--port must be between 0 and 65535, got {port}")
    torch.set_num_threads(1)  # one core per inference thread: latency, not throughput
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)
    record = RecordOptions(record_policy, record_member, record_as) if record_policy and record_member else None
    stop = threading.Event()
    with open_workspace() as ws:
        running = service.start(ws, model, site, host, port, record,
                                ServerLimits(infer_threads=threads, act_hz=act_hz, batch=batch), purpose=purpose,
                                protocol=protocol, embodiment=embodiment, export=from_)
        # set once serving: a refused start leaves this process's SIGTERM handling as it was
        previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
        shown = model if from_ is None else f"{running.served.name} from {from_}"
        err.print(f"serving [bold]{esc(shown)}[/] (sha256 {running.served.digest[:16]}...) at {esc(site)} on "
                  f"{esc(running.url)}{' (openpi protocol)' if protocol == 'openpi' else ''}; health at "
                  f"http://{esc(host)}:{running.port}/healthz; Ctrl-C stops",
                  highlight=False)
        try:
            while not stop.wait(0.2) and running.refusal is None:
                pass
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)
            report = running.stop()
    console.print(f"stopped: {report.connections} connection(s), {report.actions} action(s), {report.refused} "
                  f"refused, interventions {report.interventions}; ledger entries {report.start_index} (start) and "
                  f"{report.stop_index} (stop)", highlight=False)
    for r in report.recorded:
        console.print(f"recorded [bold]{esc(r['dataset'])}[/]: {r['episodes']} episode(s), {r['frames']} frames of "
                      f"{esc(r['embodiment'])} at {esc(site)}", highlight=False)
    if report.reason is not None:
        raise PolicyDenied(f"stopped serving: {report.reason}")


@serve_app.command("token")
def token(site: str = typer.Option(..., "--site", help="The site whose server will accept the token."),
          client: str = typer.Option(..., "--client", help="Who holds it, e.g. line-3-bridge."),
          json_: bool = JSON) -> None:
    """Issue a token for a client; it is shown once and stored only as its SHA-256."""
    from onshore.serve import tokens

    with open_workspace() as ws:
        value = tokens.issue(ws, site, client)
    if json_:
        print_json({"site": site, "client": client, "token": value})
        return
    print(value)
    err.print(f"token for client {esc(client)} at {esc(site)}: shown once, keep it secret "
              f"(revoke with 'onshore serve revoke --site {esc(site)} --client {esc(client)}')", highlight=False)


@serve_app.command("revoke")
def revoke(site: str = typer.Option(..., "--site", help="The site."),
           client: str = typer.Option(..., "--client", help="The client whose tokens are revoked.")) -> None:
    """Revoke every token of a client at a site (running servers refuse it within a second)."""
    from onshore.serve import tokens

    with open_workspace() as ws:
        n = tokens.revoke(ws, site, client)
    console.print(f"revoked {n} token(s) of {esc(client)} at {esc(site)}", highlight=False)


@serve_app.command("tokens")
def tokens_(site: str | None = typer.Option(None, "--site", help="Only this site."), json_: bool = JSON) -> None:
    """Issued tokens: client, site, when issued and revoked (never the tokens)."""
    from onshore.serve import tokens

    with open_workspace() as ws:
        rows = tokens.list_tokens(ws, site)
    if json_:
        print_json(rows)
        return
    table("serve tokens", ["site", "client", "issued", "revoked"],
          [[r["site"], r["client"], r["created_at"], r["revoked_at"] or ""] for r in rows])


@bridge_app.command("opcua")
def opcua(
    endpoint: str = typer.Option(..., "--endpoint", help="The OPC UA server, e.g. opc.tcp://plc.line3:4840."),
    map_file: Path = typer.Option(..., "--map", metavar="MAP.toml", help="Embodiment, task, state/action nodes."),
    server: str = typer.Option(..., "--server", help="The policy server, e.g. ws://127.0.0.1:7070."),
    token: str | None = typer.Option(None, "--token", help="Client token (else $ONSHORE_SERVE_TOKEN)."),
    hz: float | None = typer.Option(None, "--hz", metavar="HZ",
                                    help="Control rate (default: the embodiment's); a simulated plant may run faster."),
    seconds: float | None = typer.Option(None, "--seconds", help="Stop after this long (default: until Ctrl-C)."),
    steps: int | None = typer.Option(None, "--steps", help="Stop after this many control periods."),
    security: str = opc.SECURITY,
    pki: Path | None = opc.PKI,
    credentials: Path | None = opc.CREDENTIALS,
    server_cert: Path | None = opc.SERVER_CERT,
    json_: bool = JSON,
) -> None:
    """Drive a machine over OPC UA with a served policy, behind the safety envelope, at the control rate.

    The OPC UA session is Basic256Sha256 SignAndEncrypt unless --security says otherwise (none: loopback only).
    Example: onshore bridge opcua --endpoint opc.tcp://plc.line3:4840 --map line3.toml --pki bridge-pki
    --credentials bridge-user.toml --server ws://127.0.0.1:7070 --token "$TOKEN"
    """
    import asyncio

    from onshore.serve.bridge import BridgeMap, run_bridge
    from onshore.serve.opcua import check_security

    if not endpoint.startswith("opc.tcp://"):
        raise ValidationError(f"--endpoint {endpoint!r} must start with opc.tcp://")
    for name, v in (("--seconds", seconds), ("--steps", steps), ("--hz", hz)):
        if v is not None and not v > 0:
            raise ValidationError(f"{name} must be positive, got {v}")
    secured = opc.client_security(security, pki, credentials, server_cert)
    check_security(endpoint, secured.mode)
    mapping = BridgeMap.from_toml(map_file)

    def say(msg: str) -> None:
        if not json_:
            err.print(esc(msg), highlight=False)

    async def main() -> Any:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await run_bridge(endpoint, mapping, server, token, hz, steps, seconds, stop, say, secured)

    report = asyncio.run(main())
    if json_:
        print_json(report.to_json())
        if report.server_lost is not None:
            raise typer.Exit(1)
        return
    if report.server_lost is not None:
        raise OnshoreError(f"the policy server stopped answering: {report.server_lost}; the bridge held the safe "
                           f"action with the alarm raised until it stopped ({report.written} commands written)")
    lat = report.to_json()["latency_ms"]
    console.print(f"{report.steps} control periods at {report.hz:g} Hz: {report.written} commands written, "
                  f"{report.deadline_misses} deadline miss(es), latency p50 {lat['p50']:.1f} ms "
                  f"p99 {lat['p99']:.1f} ms; "
                  f"bridge interventions {report.interventions}; server interventions {report.server_interventions}",
                  highlight=False)
