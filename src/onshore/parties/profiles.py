"""Member profiles: a name for a startup kit (and, optionally, another coordinator URL than the
kit's), so that ``onshore dataset ingest ... --profile NAME`` streams to a site node instead of
writing into a local workspace. Stored as JSON in ``$ONSHORE_PROFILES`` (default
``~/.config/onshore/profiles.json``); the file holds paths and URLs, never a key."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from onshore.errors import NotFoundError, ValidationError
from onshore.i18n import N_, Message
from onshore.names import check_name
from onshore.parties.kit import Kit, load_kit


def profiles_path() -> Path:
    env = os.environ.get("ONSHORE_PROFILES")
    return Path(env) if env else Path.home() / ".config" / "onshore" / "profiles.json"


def _read() -> dict[str, dict[str, str]]:
    path = profiles_path()
    if not path.exists():
        return {}
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(d, dict) or not all(isinstance(v, dict) and isinstance(v.get("kit"), str)
                                              for v in d.values()):
            raise ValueError("expected {name: {kit, coordinator}}")
        return d
    except (OSError, ValueError) as e:
        raise ValidationError(f"{path}: not a profiles file ({e}); fix or remove it") from None


def add_profile(name: str, kit_dir: Path, coordinator: str | None = None) -> Kit:
    """Record profile ``name`` for the member kit at ``kit_dir``; refuses a kit that is not a
    member's, a coordinator URL that is not https://, or a name already in use."""
    check_name(name, "profile")
    kit = load_kit(Path(kit_dir).resolve(), "member")
    if coordinator is not None and not coordinator.startswith("https://"):
        raise ValidationError(f"--coordinator {coordinator!r}: use an https:// URL (the coordinator speaks mutual TLS)")
    profiles = _read()
    if name in profiles:
        raise ValidationError(f"profile {name!r} exists already in {profiles_path()}; choose another name")
    profiles[name] = {"kit": str(kit.folder), **({"coordinator": coordinator} if coordinator else {})}
    path = profiles_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(profiles, indent=2))
    os.replace(tmp, path)
    return kit


def open_profile(name: str) -> Kit:
    """The member kit of profile ``name``, with its coordinator URL overridden when the profile says so."""
    p = _read().get(name)
    if p is None:
        raise NotFoundError(Message(N_("no profile {name!r} in {path}; add it with 'onshore profile add'"),
                                    {"name": name, "path": profiles_path()}))
    kit = load_kit(Path(p["kit"]), "member")
    return dataclasses.replace(kit, coordinator_url=p["coordinator"]) if p.get("coordinator") else kit
