"""The workspace the current command acts on, set by the global -w/--workspace option."""

from __future__ import annotations

from pathlib import Path

from onshore.workspace import Workspace, find_workspace

_path: Path | None = None


def set_workspace_path(path: Path | None) -> None:
    global _path
    _path = path


def workspace_path() -> Path:
    return find_workspace(_path)


def open_workspace() -> Workspace:
    return Workspace.open(workspace_path())
