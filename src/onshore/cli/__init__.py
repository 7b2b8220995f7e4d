"""The command line: a thin Typer shell over the library (onshore.workspace and friends)."""
