"""``onshore.toml``: the workspace's name, optional jurisdiction rule and database URLs."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from onshore.errors import ValidationError
from onshore.i18n import N_, Message

CONFIG_FILE = "onshore.toml"


@dataclass(frozen=True)
class WorkspaceConfig:
    name: str
    jurisdiction: str | None  # workspace-wide rule: nothing placed, read, computed or served outside
    catalog_url: str          # "" means the embedded SQLite file catalog.db
    ledger_url: str           # "" means the embedded SQLite file ledger.db

    def write(self, root: Path) -> None:
        data: dict[str, object] = {"name": self.name}
        if self.jurisdiction:
            data["jurisdiction"] = self.jurisdiction
        data["catalog"] = self.catalog_url
        data["ledger"] = self.ledger_url
        (Path(root) / CONFIG_FILE).write_text(
            "# Onshore workspace. Database URLs left empty use the SQLite files beside this one.\n"
            + tomli_w.dumps(data)
        )

    @classmethod
    def read(cls, root: Path) -> WorkspaceConfig:
        path = Path(root) / CONFIG_FILE
        if Path(root).exists() and not Path(root).is_dir():
            raise ValidationError(Message(N_("{root} is a file, not a workspace folder; point -w/--workspace or "
                                             "ONSHORE_WORKSPACE at the folder that holds onshore.toml"),
                                          {"root": root}))
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ValidationError(Message(
                N_("{root} is not an Onshore workspace (no {file}); run 'onshore init' there, "
                   "or point -w/--workspace or ONSHORE_WORKSPACE at one"), {"root": root, "file": CONFIG_FILE}
            )) from None
        except tomllib.TOMLDecodeError as e:
            raise ValidationError(Message(N_("{path}: not valid TOML ({error})"), {"path": path, "error": e})) from None
        name = data.get("name")
        if not isinstance(name, str) or not name:
            raise ValidationError(f"{path}: field 'name' must be a non-empty string")
        jur = data.get("jurisdiction")
        if jur is not None and not isinstance(jur, str):
            raise ValidationError(f"{path}: field 'jurisdiction' must be a string")
        return cls(name, jur, str(data.get("catalog", "")), str(data.get("ledger", "")))
