"""Help that reads as prose: value placeholders in words, none after a flag, summaries in the reader's language.

Typer labels every option with its Python type (``<str>``, ``<path>``, ``<bool>`` even after
``--json`` and ``--help``). ``tidy`` walks the built command tree once and gives every flag no
placeholder, every argument its name in capitals (and no type label), and every other option a word for what it
takes, unless the option set its own ``metavar``.

``localize`` shows each command's summary (the first paragraph of its help) in the reader's
language from the message catalogue (onshore.i18n); examples and option names stay as typed.
``extract_summaries`` is the Babel extractor (``babel.cfg``) that finds those summaries in the
source: the ``help=`` of every ``typer.Typer(...)`` group and the docstring of every top-level
command (``@app.command`` or a function named ``*_command``).
"""

from __future__ import annotations

import ast
import gettext
import inspect
import re
from collections.abc import Iterator
from typing import Any

import typer
from rich.cells import cell_len

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


def summary(help_text: str) -> tuple[str, str]:
    """``help_text`` split into its summary (first paragraph, one line) and the rest (as written)."""
    text = inspect.cleandoc(help_text)
    first, sep, rest = text.partition("\n\n")
    return " ".join(line.strip() for line in first.splitlines()), sep + rest


def breakable(text: str, width: int = 60) -> str:
    """``text`` with line breaks at spaces, after punctuation or before an opening bracket, so that no line is
    wider than ``width`` cells.

    For the command list, whose cells Rich wraps only at spaces (Japanese has none). A run with
    no break in it longer than ``width`` stays one line.
    """
    lines: list[str] = []
    line = ""
    for piece in re.findall(r".+?(?:[、。，）」』]+|\s|$|(?=[（「『]))", text):
        if line and cell_len(line + piece.rstrip()) > width:
            lines.append(line.rstrip())
            line = piece.lstrip()
        else:
            line += piece
    if line.strip():
        lines.append(line.rstrip())
    return "\n".join(lines)


def localize(command: Any, tr: gettext.NullTranslations) -> Any:
    """Show the summary of ``command`` and every subcommand through ``tr`` (English when it has none).

    In a group's list of commands a translated summary is broken into lines at its punctuation
    (``breakable``): Rich wraps table cells only at spaces and would cut a long run of Japanese
    with an ellipsis. The English help is kept on the command, so calling again with another
    language switches back.
    """
    original = command.__dict__.setdefault("_onshore_help", (command.help, command.short_help))
    help_text, short_help = original
    command.help, command.short_help = help_text, short_help
    if help_text:
        first, rest = summary(help_text)
        translated = tr.gettext(first)
        if translated != first:
            command.help = translated + rest
            command.short_help = breakable(translated)
    for sub in getattr(command, "commands", {}).values():
        localize(sub, tr)
    return command


def _is_top_level_command(node: ast.FunctionDef) -> bool:
    if node.name.endswith("_command"):
        return True
    for d in node.decorator_list:
        f = d.func if isinstance(d, ast.Call) else d
        if isinstance(f, ast.Attribute) and f.attr in ("command", "callback") and \
                isinstance(f.value, ast.Name) and f.value.id == "app":
            return True
    return False


def extract_summaries(fileobj: Any, keywords: Any, comment_tags: Any, options: Any
                      ) -> Iterator[tuple[int, str, str, list[str]]]:
    """Babel extraction method for the CLI's modules: their ``_()``/``N_()`` calls (Babel's Python
    extractor), then the summary of each group's and each top-level command's help.

    Yields (line, function, message, comments) as Babel's methods do. Groups: the constant
    ``help=`` of a ``Typer(...)`` call. Commands: the docstring of a function decorated with
    ``@app.command``/``@app.callback`` or named ``*_command``. A summary with a ``%`` in it is left
    out (it stays English): Babel would take ``95 % interval`` for a ``% i`` placeholder and refuse
    every translation of it. Needs Babel (the dev extras).
    """
    import io

    from babel.messages.extract import extract_python

    source = fileobj.read()
    yield from extract_python(io.BytesIO(source), keywords, comment_tags, options)
    for node in ast.walk(ast.parse(source)):
        found: list[tuple[int, str, str]] = []
        if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "Typer":
            found = [(kw.value.lineno, kw.value.value, "help summary of a command group") for kw in node.keywords
                     if kw.arg == "help" and isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str)]
        elif isinstance(node, ast.FunctionDef) and _is_top_level_command(node) and ast.get_docstring(node):
            found = [(node.body[0].lineno, ast.get_docstring(node) or "", "help summary of a command")]
        for line, text, comment in found:
            first = summary(text)[0]
            if first and "%" not in first:
                yield line, "", first, [comment]
