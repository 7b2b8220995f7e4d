"""The consortium file: which parties exist, where they listen, and each site's jurisdiction.

A small TOML file read hostilely: every field is checked and a bad one is refused with the file,
the field and what to write instead; nothing is provisioned from a file that fails a check::

    name = "kansai"
    jurisdiction = "JP"          # optional consortium-wide rule: nothing sited outside JP
    [coordinator]
    host = "127.0.0.1"
    port = 8700
    [[sites]]
    name = "sakai"
    jurisdiction = "JP"
    roles = ["storage", "compute"]
    host = "127.0.0.1"
    port = 8701
    [[members]]
    name = "kansai-robotics"
    [[witnesses]]
    name = "witness-a"
    host = "127.0.0.1"
    port = 8702
    [[auditors]]
    name = "auditor"
"""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onshore.errors import ValidationError
from onshore.names import check_name
from onshore.residency.jurisdictions import check_jurisdiction

ROLES = ("storage", "compute", "serve")
_TOP = {"name", "jurisdiction", "coordinator", "sites", "members", "witnesses", "auditors"}


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int


@dataclass(frozen=True)
class SiteSpec:
    name: str
    jurisdiction: str
    roles: tuple[str, ...]
    endpoint: Endpoint


@dataclass(frozen=True)
class Consortium:
    name: str
    jurisdiction: str | None
    coordinator: Endpoint
    sites: tuple[SiteSpec, ...]
    members: tuple[str, ...]
    witnesses: tuple[tuple[str, Endpoint], ...]
    auditors: tuple[str, ...]


def _fail(source: str, field: str, msg: str) -> ValidationError:
    return ValidationError(f"{source}: field {field!r} {msg}; fix the consortium file and run provision again")


def _endpoint(d: dict[str, Any], source: str, where: str) -> Endpoint:
    host, port = d.get("host", "127.0.0.1"), d.get("port")
    if not isinstance(host, str) or not host or any(c.isspace() or c in "/@?#" for c in host):
        raise _fail(source, f"{where}.host", "must be a host name or IP address")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise _fail(source, f"{where}.port", "must be a TCP port (an integer 1 to 65535)")
    return Endpoint(host, port)


def _table(d: Any, source: str, where: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise _fail(source, where, "must be a table")
    extra = set(d) - allowed
    if extra:
        raise _fail(source, f"{where}.{sorted(extra)[0]}", f"is unknown here; use only {', '.join(sorted(allowed))}")
    return d


def _name(d: dict[str, Any], source: str, where: str, what: str) -> str:
    try:
        return check_name(d.get("name"), what)  # type: ignore[arg-type]
    except ValidationError as e:
        raise _fail(source, f"{where}.name", str(e)) from None


def parse_consortium(text: str, source: str = "<consortium>") -> Consortium:
    """Parse and check a consortium file. Refuses (ValidationError) unknown fields, bad names,
    duplicate party names, ports used twice, a site outside the consortium-wide jurisdiction, and
    a file without a coordinator, a site or a member."""
    try:
        d = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValidationError(f"{source}: not valid TOML ({e})") from None
    _table(d, source, "<top>", _TOP)
    name = _name(d, source, "<top>", "consortium")
    jur = d.get("jurisdiction")
    if jur is not None:
        try:
            jur = check_jurisdiction(jur)
        except ValidationError as e:
            raise _fail(source, "jurisdiction", str(e)) from None
    coord = _endpoint(_table(d.get("coordinator"), source, "coordinator", {"host", "port"}), source, "coordinator")
    sites: list[SiteSpec] = []
    for i, s in enumerate(_list(d, "sites", source)):
        where = f"sites[{i}]"
        s = _table(s, source, where, {"name", "jurisdiction", "roles", "host", "port"})
        try:
            sj = check_jurisdiction(s.get("jurisdiction"))
        except ValidationError as e:
            raise _fail(source, f"{where}.jurisdiction", str(e)) from None
        if jur is not None and sj != jur:
            raise _fail(source, f"{where}.jurisdiction", f"is {sj} but the consortium keeps everything in {jur}")
        roles = s.get("roles", ["storage", "compute"])
        if not isinstance(roles, list) or not roles or any(r not in ROLES for r in roles):
            raise _fail(source, f"{where}.roles", f"must be a non-empty list of {', '.join(ROLES)}")
        sites.append(SiteSpec(_name(s, source, where, "site"), sj, tuple(roles), _endpoint(s, source, where)))
    members = [_name(_table(m, source, f"members[{i}]", {"name"}), source, f"members[{i}]", "member")
               for i, m in enumerate(_list(d, "members", source))]
    witnesses = []
    for i, w in enumerate(_list(d, "witnesses", source, required=False)):
        w = _table(w, source, f"witnesses[{i}]", {"name", "host", "port"})
        witnesses.append((_name(w, source, f"witnesses[{i}]", "witness"), _endpoint(w, source, f"witnesses[{i}]")))
    auditors = [_name(_table(a, source, f"auditors[{i}]", {"name"}), source, f"auditors[{i}]", "auditor")
                for i, a in enumerate(_list(d, "auditors", source, required=False))]
    names = ["coordinator", *(s.name for s in sites), *members, *(w[0] for w in witnesses), *auditors]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise _fail(source, "name", f"{sorted(dup)[0]!r} names two parties; every party needs its own name")
    ports = [(coord.host, coord.port), *((s.endpoint.host, s.endpoint.port) for s in sites),
             *((w[1].host, w[1].port) for w in witnesses)]
    if len(set(ports)) != len(ports):
        raise _fail(source, "port", "is used by two parties on the same host; give each its own")
    return Consortium(name, jur, coord, tuple(sites), tuple(members), tuple(witnesses), tuple(auditors))


def _list(d: dict[str, Any], key: str, source: str, required: bool = True) -> list[Any]:
    v = d.get(key, [])
    if not isinstance(v, list) or (required and not v):
        raise _fail(source, key, f"must be a list of tables ([[{key}]]) with at least one entry"
                    if required else f"must be a list of tables ([[{key}]])")
    return v


def load_consortium(path: Path) -> Consortium:
    """Read and parse ``path``; refuses a missing or unreadable file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValidationError(f"{path}: cannot read the consortium file ({e})") from None
    return parse_consortium(text, str(path))


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False
