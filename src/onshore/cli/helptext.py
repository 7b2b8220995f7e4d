"""Help that reads as prose: value placeholders in words, none after a flag.

Typer labels every option with its Python type (``<str>``, ``<path>``, ``<bool>`` even after
``--json`` and ``--help``). ``tidy`` walks the built command tree once and gives every flag no
placeholder, every argument its name in capitals (and no type label), and every other option a word for what it
takes, unless the option set its own ``metavar``.
"""

from __future__ import annotations

from typing import Any

import typer

_WORDS = {"str": "TEXT", "Path": "PATH", "int": "N", "float": "NUMBER"}


def _word(param: Any) -> str:
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    name = getattr(annotation, "__name__", "")
    return _WORDS.get(name, "VALUE")


def _no_type(ctx: Any) -> None:
    return None


def tidy(command: Any) -> Any:
    """Set clean metavars throughout ``command`` (and its subcommands, and each --help)."""
    ctx = typer.Context(command, info_name=command.name)
    help_option = command.get_help_option(ctx)
    params = [*command.params, *([help_option] if help_option is not None else [])]
    for p in params:
        if p.param_type_name == "argument":
            if p.metavar is None and p.name:
                p.metavar = p.name.upper()
            # the name column already shows the placeholder; a type after it is noise
            p.display_type_rich = _no_type
        elif getattr(p, "is_flag", False):
            p.metavar = ""
        elif p.metavar is None:
            p.metavar = _word(p)
    for sub in getattr(command, "commands", {}).values():
        tidy(sub)
    return command
