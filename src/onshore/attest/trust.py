"""The trust root: the public keys an auditor needs, and nothing else, in one JSON file.

```json
{"version": 1, "workspace": "...",
 "log": {"origin": "onshore/NAME", "vkey": "<C2SP Ed25519 verifier key>", "public_key": "<b64>"},
 "sites": [{"name", "jurisdiction", "roles", "public_key"}],
 "members": [{"name", "public_key"}],
 "witnesses": [{"name", "vkey"}]}
```
Loading it needs no workspace; only ``build_trust_root`` reads one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from onshore.errors import ValidationError
from onshore.keys.keystore import public_key_b64, public_key_from_b64

if TYPE_CHECKING:
    from onshore.workspace import Workspace

VERSION = 1


@dataclass(frozen=True)
class TrustedSite:
    name: str
    jurisdiction: str
    roles: list[str]
    public_key: str


@dataclass(frozen=True)
class TrustedMember:
    name: str
    public_key: str


@dataclass(frozen=True)
class TrustedWitness:
    name: str
    vkey: str


@dataclass(frozen=True)
class TrustRoot:
    workspace: str
    log_origin: str
    log_vkey: str
    log_public_key: str
    sites: list[TrustedSite]
    members: list[TrustedMember]
    witnesses: list[TrustedWitness]

    def to_json(self) -> dict[str, Any]:
        return {
            "version": VERSION, "workspace": self.workspace,
            "log": {"origin": self.log_origin, "vkey": self.log_vkey, "public_key": self.log_public_key},
            "sites": [asdict(s) for s in self.sites], "members": [asdict(m) for m in self.members],
            "witnesses": [asdict(w) for w in self.witnesses],
        }

    def write(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> TrustRoot:
        """Read and check a trust root file; errors name the file and the field."""
        path = Path(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise ValidationError(f"{path}: no such trust root file (make one with 'onshore trust export')") from None
        return cls.from_text(text, str(path))

    @classmethod
    def from_text(cls, text: str | bytes, path: str = "trust root") -> TrustRoot:
        """A trust root from its JSON text (an upload, never written to disk); errors name ``path``."""
        try:
            d = json.loads(text)
        except ValueError as e:
            raise ValidationError(f"{path}: not JSON ({e})") from None
        except RecursionError:  # nested deeper than the parser's stack; no trust root is
            raise ValidationError(f"{path}: not a trust root (JSON nested too deeply)") from None
        try:
            if d["version"] != VERSION:
                raise ValidationError(f"{path}: field 'version' is {d['version']!r}, this Onshore reads {VERSION}")
            root = cls(
                workspace=str(d["workspace"]), log_origin=d["log"]["origin"], log_vkey=d["log"]["vkey"],
                log_public_key=d["log"]["public_key"],
                sites=[TrustedSite(s["name"], s["jurisdiction"], list(s["roles"]), s["public_key"])
                       for s in d["sites"]],
                members=[TrustedMember(m["name"], m["public_key"]) for m in d["members"]],
                witnesses=[TrustedWitness(w["name"], w["vkey"]) for w in d["witnesses"]],
            )
        except (KeyError, TypeError) as e:
            raise ValidationError(f"{path}: missing or malformed field {e}") from None
        for s in root.sites:
            public_key_from_b64(s.public_key)
        return root

    def site(self, name: str) -> TrustedSite | None:
        return next((s for s in self.sites if s.name == name), None)

    def key_for(self, actor: str) -> Ed25519PublicKey | None:
        """The public key of a ledger actor ("log", "site:NAME", "member:NAME"), if trusted."""
        if actor == "log":
            return public_key_from_b64(self.log_public_key)
        kind, _, name = actor.partition(":")
        pool = {"site": self.sites, "member": self.members}.get(kind, [])
        hit = next((x for x in pool if x.name == name), None)
        return public_key_from_b64(hit.public_key) if hit else None


def build_trust_root(ws: Workspace) -> TrustRoot:
    """The trust root of a workspace: log, sites, members and registered witnesses."""
    from onshore.workspace import registry

    log_key = ws.public_key("log")
    assert log_key is not None
    ws.site_facts()  # refuses a catalog whose sites disagree with the signed ledger
    return TrustRoot(
        workspace=ws.config.name, log_origin=ws.origin, log_vkey=ws.log_vkey, log_public_key=public_key_b64(log_key),
        sites=[TrustedSite(s.name, s.jurisdiction, list(s.roles), s.public_key) for s in registry.list_sites(ws)],
        members=[TrustedMember(m["name"], m["public_key"]) for m in registry.list_members(ws)],
        witnesses=[TrustedWitness(w["name"], w["vkey"]) for w in registry.list_witnesses(ws)],
    )
