"""`onshore demo`: the end-to-end story on the embedded default."""

from __future__ import annotations

from pathlib import Path

import typer

from onshore.cli.output import console


def demo_command(
    directory: Path = typer.Option(Path("demo-workspace"), "--dir", help="Folder for the demo (remade each run)."),
    episodes: int = typer.Option(3, "--episodes", help="Episodes per task for each member."),
    workers: int | None = typer.Option(None, "--workers", help="Simulator processes (default: all cores)."),
    train_steps: int = typer.Option(300, "--train-steps", help="Steps of the demo's tiny model (0: no model)."),
    custody: str = typer.Option("file", "--custody", help="Site key custody: file, or pkcs11 (a SoftHSM2 token "
                                "per site; needs softhsm2)."),
) -> None:
    """Build a three-member consortium on simulator telemetry and prove where its data sat."""
    from onshore.demo import run_demo

    code = run_demo(directory, episodes, workers, console, train_steps, custody)
    if code:
        raise typer.Exit(code)
