"""``onshore sim``: make a simulated member's telemetry.

A thin shell over :func:`onshore.sim.generate.generate`; errors a user can cause are
``OnshoreError`` and propagate to the main app, which prints them and sets the exit code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from onshore.cli.output import StageProgress, console, esc

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
    workers: Annotated[int | None, typer.Option(metavar="N", help="Worker processes (default: all cores).")] = None,
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
) -> None:
    """Run the scripted expert and write frame-schema Parquet plus EMBODIMENT.toml, ready for ingest.

    Example: onshore sim generate --env metaworld --tasks pick-place-v3,push-v3 --episodes 5 --seed 1 --out tel/
    """
    from onshore.sim.generate import generate
    from onshore.sim.sensors import SensorOptions

    sensors = SensorOptions(noise=noise, quantize=quantize, bits=bits, control_hz=control_hz)
    with StageProgress(unit="episodes") as bar:
        result = generate(env, split_tasks(tasks), episodes, seed, out, workers=workers, sensors=sensors,
                          progress=lambda done, total: bar.update(f"{env} generate", done, total), seconds=seconds)
    extra = f", {result.shutdowns} shutdowns" if env == "tep" else ""
    console.print(esc(
        f"wrote {result.episodes} episodes ({result.frames} frames, {result.successes} reached "
        f"success{extra}) to {result.out} in {result.wall_seconds:.1f} s with {result.workers} "
        f"workers: {', '.join(f.name for f in result.files)}, {result.embodiment_path.name}, "
        f"{result.sidecar_path.name}"), highlight=False)
