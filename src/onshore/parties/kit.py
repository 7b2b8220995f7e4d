"""A party's startup folder (kit), as ``onshore provision`` writes it and every server reads it.

Layout of ``KIT/``: ``kit.json`` (who this party is, every party's endpoint and public key, each
site's jurisdiction and roles), ``ca.pem`` (the consortium CA certificate), ``tls.pem`` and
``tls.key`` (this party's TLS certificate and key, issued by the CA), ``keys/`` (this party's
Ed25519 identity key, and for a site its key custody; for the coordinator the log key). A kit
holds no other party's private key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from onshore.attest.trust import TrustedMember, TrustedSite, TrustedWitness, TrustRoot
from onshore.errors import ValidationError
from onshore.keys.keystore import KeyStore, public_key_from_b64

KIT_FILE = "kit.json"
KIT_VERSION = 1
KINDS = ("coordinator", "site", "member", "witness", "auditor")


@dataclass(frozen=True)
class SiteInfo:
    name: str
    jurisdiction: str
    roles: tuple[str, ...]
    flight: str       # grpc+tls://host:port
    key: str          # base64 Ed25519 public key


@dataclass(frozen=True)
class Kit:
    """One party's startup folder, read and checked."""

    folder: Path
    kind: str
    name: str
    consortium: str
    jurisdiction: str | None
    coordinator_url: str
    coordinator_key: str           # base64: signs decisions and checkpoints (the log key)
    sites: dict[str, SiteInfo]
    members: dict[str, str]        # name -> base64 public key
    witnesses: dict[str, dict[str, Any]]

    @property
    def party(self) -> str:
        """The principal this kit acts as: ``site:NAME``, ``member:NAME``, or the kind for others."""
        return f"{self.kind}:{self.name}" if self.kind in ("site", "member") else self.kind

    @property
    def ca(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def cert(self) -> Path:
        return self.folder / "tls.pem"

    @property
    def key(self) -> Path:
        return self.folder / "tls.key"

    def keystore(self) -> KeyStore:
        return KeyStore(self.folder / "keys")

    def public_key(self, party: str) -> Ed25519PublicKey | None:
        """The registered Ed25519 key of ``party`` (``site:X``, ``member:X`` or ``coordinator``), or None."""
        kind, _, name = party.partition(":")
        if party in ("coordinator", "log"):
            return public_key_from_b64(self.coordinator_key)
        if kind == "site" and name in self.sites:
            return public_key_from_b64(self.sites[name].key)
        if kind == "member" and name in self.members:
            return public_key_from_b64(self.members[name])
        return None


def trust_root(kit: Kit) -> TrustRoot:
    """The consortium's trust root as any kit knows it (public keys only): the file auditors get
    from 'onshore provision', in the embedded default's format, so 'onshore verify' reads both."""
    from onshore.keys.keystore import public_key_from_b64
    from onshore.ledger.notes import encode_verifier_key

    origin = f"onshore/{kit.consortium}"
    return TrustRoot(
        workspace=kit.consortium, log_origin=origin,
        log_vkey=encode_verifier_key(origin, public_key_from_b64(kit.coordinator_key)),
        log_public_key=kit.coordinator_key,
        sites=[TrustedSite(s.name, s.jurisdiction, list(s.roles), s.key) for s in kit.sites.values()],
        members=[TrustedMember(n, k) for n, k in kit.members.items()],
        witnesses=[TrustedWitness(n, w["vkey"]) for n, w in kit.witnesses.items()])


def load_kit(folder: Path, kind: str | None = None) -> Kit:
    """Read ``folder/kit.json``; refuses a folder that is not a kit, or a kit of another kind."""
    folder = Path(folder)
    path = folder / KIT_FILE
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        if d.get("version") != KIT_VERSION:
            raise ValueError(f"unknown kit version {d.get('version')!r}")
        kit = Kit(folder, d["kind"], d["name"], d["consortium"], d.get("jurisdiction"), d["coordinator"]["url"],
                  d["coordinator"]["key"],
                  {n: SiteInfo(n, s["jurisdiction"], tuple(s["roles"]), s["flight"], s["key"])
                   for n, s in d["sites"].items()},
                  dict(d["members"]), dict(d.get("witnesses", {})))
    except FileNotFoundError:
        raise ValidationError(f"{folder}: not a startup kit (no {KIT_FILE}); use a folder made by "
                              "'onshore provision'") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValidationError(f"{path}: not a valid startup kit ({e}); provision the party again") from None
    if kit.kind not in KINDS or (kind is not None and kit.kind != kind):
        raise ValidationError(f"{folder}: this kit is for a {kit.kind} ({kit.name}), not a {kind}; "
                              f"use the {kind}'s own startup folder")
    for f in (kit.ca, kit.cert, kit.key):
        if not f.is_file():
            raise ValidationError(f"{folder}: the kit lacks {f.name}; provision the party again")
    return kit
