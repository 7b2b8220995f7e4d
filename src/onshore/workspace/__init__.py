"""The workspace: one object that opens the catalog, the ledger and the site registry.

Everything a person can do is one function here (registry, datasets, key service); the CLI and the
demo are thin shells over them.
"""

from onshore.workspace.workspace import Workspace, find_workspace

__all__ = ["Workspace", "find_workspace"]
