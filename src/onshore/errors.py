"""Errors a person can cause, each with a message that says what to do.

The CLI maps them to exit codes: 1 for an error the user can fix, 2 for a command line missing
a required option (``UsageError``), 3 for a refusal by policy.
"""

from __future__ import annotations

from onshore.i18n import Message


class OnshoreError(Exception):
    """An error the user can fix; the message says which file, which field and what to do.

    The message is text, or an ``onshore.i18n.Message`` (a template and its values) that front
    ends show in the reader's language; ``str(error)`` is always the English text.
    """

    exit_code: int = 1

    @property
    def message(self) -> Message | str:
        """What the error says: its ``Message`` when it was raised with one, else its text."""
        first = self.args[0] if self.args else None
        return first if isinstance(first, Message) else str(self)


class NotFoundError(OnshoreError):
    """A named site, member, dataset, embodiment or file does not exist."""


class ValidationError(OnshoreError):
    """Input (a name, a TOML file, telemetry) breaks a rule; nothing was changed."""


class UsageError(ValidationError):
    """The command line lacks a required option, or gives two that exclude each other (exit 2, as
    click's own usage errors); raised before anything is read or recorded."""

    exit_code = 2


class IntegrityError(OnshoreError):
    """Stored bytes do not match what the catalog or ledger says they should be."""


class PolicyDenied(OnshoreError):
    """The policy decision point refused the action; ``rules`` names the deciding policies."""

    exit_code = 3

    def __init__(self, message: str | Message, rules: list[str] | None = None) -> None:
        super().__init__(message)
        self.rules = rules or []


class LockTimeout(OnshoreError):
    """A writer waited longer than the configured lock timeout for another writer to finish."""
