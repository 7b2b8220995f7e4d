"""The workspace the current command acts on, set by the global -w/--workspace option."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # importing the workspace loads SQLAlchemy, Cedar and pyarrow: only commands pay for it
    from onshore.workspace import Workspace

_path: Path | None = None


def set_workspace_path(path: Path | None) -> None:
    global _path
    _path = path


def workspace_path() -> Path:
    from onshore.workspace.workspace import find_workspace

    return find_workspace(_path)


def open_workspace() -> Workspace:
    from onshore.workspace.workspace import Workspace

    return Workspace.open(workspace_path())
