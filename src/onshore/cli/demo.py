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
    parties: bool = typer.Option(False, "--parties",
                                 help="Run the parties as separate processes on loopback (coordinator, three site "
                                      "nodes), each in its own folder under --dir (default demo-parties)."),
    custody: str = typer.Option("file", "--custody", help="Site key custody: file, or pkcs11 (a SoftHSM2 token "
                                "per site; needs softhsm2)."),
) -> None:
    """Build a three-member consortium on simulator telemetry and prove where its data sat."""
    if parties:
        if custody != "file":
            from onshore.errors import UsageError

            raise UsageError("--custody applies to the embedded demo; the parties demo keeps each site's keys in "
                             "its own kit's file store")
        from onshore.demo_parties import run_parties_demo

        target = Path("demo-parties") if directory == Path("demo-workspace") else directory
        if run_parties_demo(target, console):
            raise typer.Exit(1)
        return
    from onshore.demo import run_demo

    code = run_demo(directory, episodes, workers, console, train_steps, custody)
    if code:
        raise typer.Exit(code)
