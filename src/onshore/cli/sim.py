"""``onshore sim``: make a simulated member's telemetry.

A thin shell over :func:`onshore.sim.generate.generate`; errors a user can cause are
``OnshoreError`` and propagate to the main app, which prints them and sets the exit code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from onshore.cli.output import StageProgress, console, err, esc

app = typer.Typer(help="Simulated consortium members: generate telemetry from simulators.",
                  no_args_is_help=True)


@app.callback()
def _sim() -> None:
    """Simulated consortium members: generate telemetry from simulators."""
    # A callback keeps `generate` a named subcommand even while it is the only one.


def split_tasks(tasks: str | None) -> list[str] | None:
    """``"a,b"`` -> ``["a", "b"]``; ``None`` keeps the environment's default task set."""
    return None if tasks is None else [t.strip() for t in tasks.split(",") if t.strip()]


@app.command("generate")
def generate_command(
    env: Annotated[str, typer.Option(metavar="ENV", help="Simulator: metaworld or tep.")],
    out: Annotated[Path, typer.Option(metavar="DIR",
                                      help="Folder to write Parquet frames and the embodiment TOML into.")],
    tasks: Annotated[str | None, typer.Option(
        metavar="TASKS",
        help="Comma-separated tasks, e.g. pick-place-v3,reach-v3 or base,idv-1 (default: the env's set).")] = None,
    episodes: Annotated[int, typer.Option(metavar="N", help="Episodes per task.")] = 10,
    seed: Annotated[int, typer.Option(metavar="N", help="Seed; the same seed gives the same files.")] = 0,
    workers: Annotated[int | None, typer.Option(
        metavar="N", help="Worker processes, this one among them (default: all cores, fewer for a short run).")] = None,
    noise: Annotated[float, typer.Option(metavar="FRACTION",
                                         help="Sensor noise, std as a fraction of each channel's range, e.g. "
                                              "0.01.")] = 0.0,
    quantize: Annotated[bool, typer.Option("--quantize/--no-quantize",
                                           help="Quantise state readings over each channel's range.")] = False,
    bits: Annotated[int, typer.Option(metavar="N", help="Quantisation bits.")] = 16,
    control_hz: Annotated[float | None, typer.Option(
        metavar="HZ", help="Control and logging rate in Hz (default: one frame per simulator step).")] = None,
    seconds: Annotated[float | None, typer.Option(
        metavar="SECONDS", help="Simulated seconds per episode (default: the env's episode length).")] = None,
    expert_sees: Annotated[str, typer.Option(
        metavar="WHAT", help="What the expert acts on: 'sensed' (the sensor readings, as its controller "
                             "would) or 'exact' (the true state; frames still record the readings).")] = "sensed",
) -> None:
    """Run the scripted expert and write frame-schema Parquet plus EMBODIMENT.toml, ready for ingest.

    Example: onshore sim generate --env metaworld --tasks pick-place-v3,push-v3 --episodes 5 --seed 1 --out tel/
    """
    from onshore.sim.generate import generate
    from onshore.sim.sensors import SensorOptions

    sensors = SensorOptions(noise=noise, quantize=quantize, bits=bits, control_hz=control_hz)
    with StageProgress(unit="episodes") as bar:
        result = generate(env, split_tasks(tasks), episodes, seed, out, workers=workers, sensors=sensors,
                          progress=lambda done, total: bar.update(f"{env} generate", done, total), seconds=seconds,
                          expert_sees=expert_sees)
    extra = f", {result.shutdowns} shutdowns" if env == "tep" else ""
    console.print(esc(
        f"wrote {result.episodes} episodes ({result.frames} frames, {result.successes} reached "
        f"success{extra}) to {result.out} in {result.wall_seconds:.1f} s with {result.workers} "
        f"workers: {', '.join(f.name for f in result.files)}, {result.embodiment_path.name}, "
        f"{result.sidecar_path.name}"), highlight=False)


@app.command("plant")
def plant_command(
    env: Annotated[str, typer.Option(metavar="ENV", help="Simulator: metaworld or tep.")],
    task: Annotated[str, typer.Option(metavar="TASK", help="The task it runs, e.g. reach-v3 or base.")],
    port: Annotated[int, typer.Option(metavar="PORT", min=1, max=65535, help="OPC UA TCP port.")] = 4840,
    host: Annotated[str, typer.Option(metavar="HOST", help="Address to bind.")] = "127.0.0.1",
    seed: Annotated[int, typer.Option(metavar="N", help="Seed of the episode it plays.")] = 0,
    map_file: Annotated[Path | None, typer.Option(
        "--map", metavar="MAP.toml", help="Also write the bridge's map of this plant's nodes here.")] = None,
    security: Annotated[str, typer.Option(
        "--security", metavar="MODE",
        help="sign-encrypt (Basic256Sha256 SignAndEncrypt only, the default), sign (Sign and SignAndEncrypt), or "
             "none: no security, which must be asked for and only on a loopback --host.")] = "sign-encrypt",
    pki: Annotated[Path | None, typer.Option(
        "--pki", metavar="DIR", help="Folder of the plant's OPC UA certificate and key (made there on first use, "
                                     "key mode 0600); needed unless --security none.")] = None,
    users: Annotated[Path | None, typer.Option(
        "--users", metavar="FILE", help="TOML [users] table of username = \"password\", readable by its owner only: "
                                        "who may write. Anonymous sessions may only browse and read.")] = None,
) -> None:
    """Run a simulated machine behind a real OPC UA server, for 'onshore bridge opcua', until Ctrl-C.

    Under Objects/plant, in namespace urn:onshore:sim-plant: a state folder with one AnalogItem node per state
    channel, named by channel (with EngineeringUnits and EURange), an action folder with a writable one per action
    channel, estop, estop_reset, alarm and frame; the simulator steps one control period each time the action nodes
    are written. Example: onshore sim plant --env metaworld --task reach-v3 --port 4840 --pki plant-pki --users
    plant-users.toml, then onshore bridge opcua --endpoint opc.tcp://127.0.0.1:4840/onshore/plant ...
    """
    import asyncio
    import signal
    import socket

    from onshore.cli.inputs import usage
    from onshore.errors import OnshoreError
    from onshore.files import check_output_file
    from onshore.serve.opcua import MODES, check_security, read_users
    from onshore.serve.plant import SimPlant

    if security not in MODES:
        raise usage(f"--security {security!r}: use one of {', '.join(MODES)}")
    check_security(f"opc.tcp://{host}:{port}", security)
    if users is not None and security == "none":
        raise usage("--users needs --security sign or sign-encrypt: passwords never travel unencrypted")
    if map_file is not None:
        check_output_file(map_file, force=True, option="--map")
    # refuses an unknown env or task, or a users file others may read, before anything listens
    plant = SimPlant(env, task, seed, security=security, pki=pki, users=read_users(users) if users else None)

    def refuse(e: OSError) -> OnshoreError:
        return OnshoreError(f"cannot listen on {host}:{port}: {e.strerror or e}; choose another --port or --host")

    try:  # asyncua logs a traceback for a port in use: find out first, with a plain message
        with socket.create_server((host, port)):
            pass
    except OSError as e:
        raise refuse(e) from None

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            endpoint = await plant.start(host, port)
        except OSError as e:
            raise refuse(e) from None
        try:
            if map_file is not None:
                plant.write_map(map_file)
            cert = plant.certificate
            err.print(esc(f"simulated {env} plant ({plant.task_text!r}) on {endpoint}, security {security}"
                          + (f", certificate {cert.cert} (sha256 {cert.fingerprint()})" if cert else "")
                          + ("" if security == "none" or users else "; no --users: nobody may write its nodes")
                          + (f"; its map is {map_file}" if map_file else "") + "; Ctrl-C stops it"), highlight=False)
            await stop.wait()
        finally:
            await plant.stop()

    asyncio.run(run())
    console.print(esc(f"plant stopped after {plant.frames} control periods"), highlight=False)
