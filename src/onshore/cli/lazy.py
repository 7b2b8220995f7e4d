"""A command group that imports a subcommand's module only when that subcommand runs.

Building every command (importing all CLI modules, Typer reading each function's annotations)
took longer than most commands themselves (issue 22). The root group therefore knows each
subcommand by a ``Lazy`` row: its name, where it lives, and its one-line summary. ``onshore site
list`` imports ``onshore.cli.registry`` alone; ``onshore --help`` imports no command module at
all, listing each command from its row. ``tests/test_startup.py`` checks that every row matches
the command it names (summary, kind) and that the help printed from the rows is the help printed
from the loaded commands, so the table cannot drift from the code.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from difflib import get_close_matches
from typing import Any

import typer

# Typer 0.29 carries its own copy of click: its commands, contexts and errors are these classes
from typer._click.core import Command, Context
from typer._click.exceptions import UsageError
from typer.core import TyperCommand, TyperGroup


@dataclass(frozen=True)
class Lazy:
    """A subcommand of the root: ``attribute`` of ``module`` is a ``typer.Typer`` (a group) or a
    command function; ``summary`` is the first paragraph of its help, exactly as written there."""

    module: str
    attribute: str
    summary: str

    def target(self) -> Any:
        """The Typer group or command function this row names (imports its module)."""
        return getattr(importlib.import_module(self.module), self.attribute)


class LazyGroup(TyperGroup):
    """A Typer group whose subcommands in ``lazy`` are built on first use.

    Listed (``--help``, suggestions) from their rows; invoked (``resolve_command``) from the real
    command, built by ``build`` and then kept in ``commands``. ``prepare`` is applied to every
    command the group hands out, placeholder or real (the CLI tidies and translates its help there).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy: dict[str, Lazy] = {}
        self.build: Callable[[str, Any], Command] | None = None
        self.prepare: Callable[[Command], Any] = lambda c: c
        self._placeholders: dict[str, Command] = {}

    def list_commands(self, ctx: Context) -> list[str]:
        # the order of the commands added eagerly, then the table's: the same whether loaded or not
        return [*(n for n in self.commands if n not in self.lazy), *self.lazy]

    def load(self, name: str) -> Command:
        """The real command ``name`` (built once; its module imported now)."""
        if name not in self.commands:
            assert self.build is not None, "LazyGroup.build is set by the CLI that uses the group"
            self.commands[name] = self.build(name, self.lazy[name].target())
        cmd = self.commands[name]
        self.prepare(cmd)
        return cmd

    def load_all(self) -> LazyGroup:
        """Every subcommand loaded (for tools and tests that walk the whole tree)."""
        for name in self.lazy:
            self.load(name)
        return self

    def get_command(self, ctx: Context, cmd_name: str) -> Command | None:
        if cmd_name in self.commands or cmd_name not in self.lazy:
            cmd = self.commands.get(cmd_name)
        else:  # listed, not run: a stand-in with the summary, no import
            cmd = self._placeholders.get(cmd_name)
            if cmd is None:
                cmd = self._placeholders[cmd_name] = TyperCommand(name=cmd_name, help=self.lazy[cmd_name].summary)
        if cmd is not None:
            self.prepare(cmd)
        return cmd

    def resolve_command(self, ctx: Context, args: list[str]) -> tuple[str | None, Command | None, list[str]]:
        if args and args[0] in self.lazy:
            self.load(args[0])
        try:
            return super().resolve_command(ctx, args)
        except UsageError as e:
            # Typer suggests from the loaded commands only; suggest from every name
            if self.suggest_commands and args:
                matches = get_close_matches(args[0], self.list_commands(ctx))
                message = e.message.split(". Did you mean")[0].rstrip(".")
                e.message = message + "." if not matches else \
                    f"{message}. Did you mean {', '.join(repr(m) for m in matches)}?"
            raise


def build_into(parent: typer.Typer) -> Callable[[str, Any], Command]:
    """A ``LazyGroup.build`` that makes a subcommand exactly as ``parent.add_typer`` /
    ``parent.command`` would (same markup mode, same exception settings)."""

    def build(name: str, target: Any) -> Command:
        shell = typer.Typer(rich_markup_mode=parent.rich_markup_mode,
                            pretty_exceptions_enable=parent.pretty_exceptions_enable,
                            pretty_exceptions_short=parent.pretty_exceptions_short, add_completion=False)
        shell.callback()(lambda: None)  # a callback makes it a group even with one command
        if isinstance(target, typer.Typer):
            shell.add_typer(target, name=name)
        else:
            shell.command(name)(target)
        group = typer.main.get_command(shell)
        return group.commands[name]  # type: ignore[attr-defined]

    return build
