"""What the signed ledger says about the workspace: its rules, sites, members and withdrawals.

Configuration files and catalog rows can be edited by anyone with filesystem access; ledger
entries are signed by the log or the acting party and are what ``ledger verify`` and auditors
check. So the workspace-wide rule, each site's jurisdiction and roles, and which datasets are
withdrawn are read from here, and ``onshore.toml`` or the catalog disagreeing with them is refused,
naming the difference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from onshore.errors import IntegrityError, ValidationError
from onshore.ledger.log import Ledger

#: Entry kinds this module reads (besides ``workspace.init`` at index 0).
GOVERNANCE_KINDS = ("site.add", "member.add", "consent.withdraw")


@dataclass(frozen=True)
class LedgerSite:
    name: str
    jurisdiction: str
    roles: tuple[str, ...]
    public_key: str
    index: int  # the latest site.add entry about it


@dataclass(frozen=True)
class Governance:
    """The workspace as the ledger records it, up to ``size`` entries."""

    name: str
    jurisdiction: str | None
    log_public_key: str
    size: int
    sites: dict[str, LedgerSite] = field(default_factory=dict)
    members: dict[str, str] = field(default_factory=dict)  # name -> public key
    withdrawn: dict[str, int] = field(default_factory=dict)  # dataset -> consent.withdraw index


def init_entry(ledger: Ledger) -> dict[str, Any]:
    """The body of the ``workspace.init`` entry (ledger index 0); IntegrityError if there is none."""
    if ledger.size() == 0:
        raise IntegrityError("the ledger is empty: it holds no workspace.init entry; this is not a finished "
                             "workspace (run 'onshore init' in a new folder)")
    first = ledger.get(0)
    if first.entry.kind != "workspace.init" or first.entry.actor != "log":
        raise IntegrityError(f"ledger entry 0 is a {first.entry.kind} by {first.entry.actor}, not the log's "
                             "workspace.init")
    return first.entry.body


def read_governance(ledger: Ledger) -> Governance:
    """Fold the ledger's governance entries: the latest ``site.add`` of a site wins (a jurisdiction
    change is recorded as one)."""
    init = init_entry(ledger)
    gov = Governance(str(init.get("name")), init.get("jurisdiction"), str(init.get("log_public_key")),
                     ledger.size())
    for e in ledger.entries(kinds=GOVERNANCE_KINDS):
        b, kind = e.entry.body, e.entry.kind
        if kind == "site.add" and e.entry.actor == "log":
            gov.sites[b["site"]] = LedgerSite(b["site"], b["jurisdiction"], tuple(sorted(b["roles"])),
                                              b["public_key"], e.index)
        elif kind == "member.add" and e.entry.actor == "log":
            gov.members[b["member"]] = b["public_key"]
        elif kind == "consent.withdraw":
            gov.withdrawn.setdefault(b["dataset"], e.index)
    return gov


def check_config(config_name: str, config_jurisdiction: str | None, init: dict[str, Any], where: str) -> None:
    """Refuse a configuration whose name or workspace rule differs from the signed workspace.init."""
    problems = []
    if config_name != init.get("name"):
        problems.append(f"name = {config_name!r}, but the signed workspace.init entry says {init.get('name')!r}")
    if config_jurisdiction != init.get("jurisdiction"):
        said = f"{config_jurisdiction!r}" if config_jurisdiction else "no jurisdiction rule"
        want = f"{init.get('jurisdiction')!r}" if init.get("jurisdiction") else "no jurisdiction rule"
        problems.append(f"jurisdiction: the file has {said}, but the signed workspace.init entry (ledger entry 0) "
                        f"says {want}")
    if problems:
        raise ValidationError(f"{where} disagrees with the ledger: {'; '.join(problems)}. Workspace-wide rules "
                              "come from the ledger; restore the file to match it")


def check_catalog_sites(gov: Governance, catalog_sites: list[tuple[str, str, str, str]]) -> None:
    """Refuse a catalog whose sites (name, jurisdiction, roles, public key) differ from the ledger's."""
    problems = []
    seen = set()
    for name, jur, roles, pk in catalog_sites:
        seen.add(name)
        site = gov.sites.get(name)
        if site is None:
            problems.append(f"site {name!r} is in the catalog but no site.add entry registers it")
            continue
        if jur != site.jurisdiction:
            problems.append(f"site {name!r}: the catalog says jurisdiction {jur}, ledger entry {site.index} "
                            f"says {site.jurisdiction}")
        if tuple(sorted(roles.split(","))) != site.roles:
            problems.append(f"site {name!r}: the catalog says roles {roles}, ledger entry {site.index} says "
                            f"{','.join(site.roles)}")
        if pk != site.public_key:
            problems.append(f"site {name!r}: the catalog's public key differs from ledger entry {site.index}")
    # A site in the ledger but not in the catalog is what a crash between the two leaves; it is
    # simply not usable until 'onshore doctor' settles it, so it is not refused here.
    if problems:
        raise IntegrityError("the catalog's site registry disagrees with the signed ledger: " + "; ".join(problems[:5])
                             + ". Restore the catalog, and run 'onshore ledger verify'")
