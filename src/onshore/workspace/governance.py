"""What the signed ledger says about the workspace: its rules, sites, members, grants, models and withdrawals.

Configuration files and catalog rows can be edited by anyone with filesystem access; ledger
entries are signed by the log or the acting party and are what ``ledger verify`` and auditors
check. So the workspace-wide rule, each site's jurisdiction and roles, each dataset's owner and
usage policy (its ``consent.grant``), each model's lineage (its ``model.release``: datasets and
base model) and which datasets are withdrawn are read from here, and ``onshore.toml`` or the
catalog disagreeing with them is refused (IntegrityError), naming the catalog row and the entry.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from onshore.errors import IntegrityError, OnshoreError, ValidationError
from onshore.ledger.log import Ledger, StoredEntry
from onshore.residency.policy import UsagePolicy, parse_policy

#: Closes the entries of an attempt that made nothing (the same kind as ``attempts.ABANDONED``,
#: which imports the workspace and so cannot be imported here).
ABANDONED = "data.abandoned"
#: Entry kinds this module reads (besides ``workspace.init`` at index 0).
TOKEN_ISSUE, TOKEN_REVOKE = "token.issue", "token.revoke"
TOKEN_KINDS = (TOKEN_ISSUE, TOKEN_REVOKE)
GOVERNANCE_KINDS = ("site.add", "member.add", "embodiment.add", "consent.grant", "consent.withdraw", "model.release",
                    ABANDONED)


@dataclass(frozen=True)
class LedgerSite:
    name: str
    jurisdiction: str
    roles: tuple[str, ...]
    public_key: str
    index: int  # the latest site.add entry about it


@dataclass(frozen=True)
class LedgerGrant:
    """A dataset's owner and usage policy as its owner signed them (the live ``consent.grant``)."""

    dataset: str
    owner: str
    policy: UsagePolicy
    index: int


@dataclass(frozen=True)
class LedgerRelease:
    """A model as its training site signed it (``model.release``): the datasets and base it derives from."""

    model: str
    site: str
    base: str | None
    datasets: tuple[str, ...]
    index: int


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
    embodiments: dict[str, tuple[str, int]] = field(default_factory=dict)  # name -> (sha256, embodiment.add index)
    grants: dict[str, LedgerGrant] = field(default_factory=dict)  # dataset -> its live grant
    releases: dict[int, LedgerRelease] = field(default_factory=dict)  # model.release index -> release
    latest_release: dict[str, int] = field(default_factory=dict)  # model -> its latest live model.release index
    # a name signed for again (its catalog row removed): "dataset:NAME" or "model:NAME" -> the later entries
    reused: dict[str, list[int]] = field(default_factory=dict)


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
    change is recorded as one). Reads every governance entry; a long-running process keeps a
    ``GovernanceReader`` instead, which reads only the entries appended since its last read."""
    return GovernanceReader(ledger).read()


class GovernanceReader:
    """The governance of one ledger, read again on every ``read`` from what was appended since.

    The ledger is append-only, so the governance entries already read stay as they were; each
    ``read`` asks for the ledger's size and the governance entries from the last size read on (the
    index of entries by kind: a few index probes, however many decisions the ledger holds), then
    folds them all again (a data.abandoned entry can void earlier ones). Each grant's policy is
    parsed once. Appends by other processes are seen by the next ``read``. A ledger that shrank
    (replaced by an older copy) is read again from its start. Safe to share between threads.
    """

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._lock = threading.Lock()
        self._init: dict[str, Any] | None = None
        self._found: list[StoredEntry] = []
        self._size = 0
        self._policies: dict[int, UsagePolicy] = {}

    def read(self) -> Governance:
        with self._lock:
            size = self.ledger.size()
            if size < self._size or self._init is None:
                self._init, self._found, self._size, self._policies = init_entry(self.ledger), [], 0, {}
            if size > self._size:
                self._found += self.ledger.entries(self._size, size, kinds=GOVERNANCE_KINDS)
                self._size = size
            return self._fold(self._init, size)

    def _policy(self, body: dict[str, Any], index: int) -> UsagePolicy:
        policy = self._policies.get(index)
        if policy is None:
            policy = self._policies[index] = _signed_policy(body, index)
        return policy

    def _fold(self, init: dict[str, Any], size: int) -> Governance:
        gov = Governance(str(init.get("name")), init.get("jurisdiction"), str(init.get("log_public_key")), size)
        found = self._found
        # an abandoned entry always follows the entries it closes: those made no dataset or model
        closed = {int(i) for e in found if e.entry.kind == ABANDONED for i in e.entry.body.get("closes", [])}
        for e in found:
            b, kind = e.entry.body, e.entry.kind
            # a withdrawal is never undone: no attempt is closed after its withdrawal entry is
            # appended (it is rolled forward), so a data.abandoned citing one voids nothing
            if e.index in closed and kind != "consent.withdraw":
                continue
            if kind == "site.add" and e.entry.actor == "log":
                gov.sites[b["site"]] = LedgerSite(b["site"], b["jurisdiction"], tuple(sorted(b["roles"])),
                                                  b["public_key"], e.index)
            elif kind == "member.add" and e.entry.actor == "log":
                gov.members[b["member"]] = b["public_key"]
            elif kind == "consent.withdraw":
                gov.withdrawn.setdefault(b["dataset"], e.index)
            elif kind == "embodiment.add" and e.entry.actor == "log":
                gov.embodiments.setdefault(b["embodiment"], (b["sha256"], e.index))
            elif kind == "consent.grant" and e.entry.actor == f"member:{b.get('owner')}":
                # A dataset's grant is its first live one: a later grant of the same name (an ingest
                # after an insider deleted the catalog row) must not hand the models trained on the
                # first dataset another owner's, or a looser, policy.
                if b["dataset"] in gov.grants:
                    gov.reused.setdefault(f"dataset:{b['dataset']}", []).append(e.index)
                    continue
                gov.grants[b["dataset"]] = LedgerGrant(b["dataset"], b["owner"], self._policy(b, e.index), e.index)
            elif kind == "model.release" and e.entry.actor == f"site:{b.get('site')}":
                gov.releases[e.index] = LedgerRelease(b["model"], b["site"], b.get("base"),
                                                      tuple(sorted({d["name"] for d in b.get("datasets") or ()})),
                                                      e.index)
                if b["model"] in gov.latest_release:
                    gov.reused.setdefault(f"model:{b['model']}", []).append(e.index)
                gov.latest_release[b["model"]] = e.index
        return gov


def _signed_policy(body: dict[str, Any], index: int) -> UsagePolicy:
    # The grant holds the policy itself (canonical JSON) and its hash; both are signed, and a
    # grant whose policy does not hash to its own policy_hash was not written by Onshore.
    where = f"ledger entry {index} (consent.grant of dataset {body.get('dataset')!r})"
    try:
        policy = UsagePolicy.from_json(body.get("policy"), where)
    except OnshoreError as e:
        raise IntegrityError(f"{where} holds no readable policy ({e}); run 'onshore ledger verify'") from None
    if body.get("policy_hash", policy.hash) != policy.hash:
        raise IntegrityError(f"{where}: its policy does not hash to its policy_hash; run 'onshore ledger verify'")
    return policy


def check_catalog_dataset(gov: Governance, name: str, owner: str, policy_text: str) -> LedgerGrant:
    """The signed grant of dataset ``name`` (its first live one), after checking the catalog row's
    owner and policy against it.

    The catalog keeps the owner's TOML verbatim; it must parse to the policy the owner signed (the
    same canonical hash; comments and layout do not count). IntegrityError, naming the catalog row
    and the ledger entry, for a row with no live grant, another owner, or another policy: an
    edited row never becomes a wider (or any) permission.
    """
    grant = gov.grants.get(name)
    row = f"catalog row datasets/{name}"
    if grant is None:
        raise IntegrityError(f"{row}: no live consent.grant in the ledger registers this dataset; restore the "
                             "catalog from a backup and run 'onshore doctor'")
    problems = []
    if owner != grant.owner:
        problems.append(f"owner {owner!r}, but the grant says {grant.owner!r}")
    try:
        ok = parse_policy(policy_text, row).hash == grant.policy.hash
    except OnshoreError:
        ok = False
    if not ok:
        problems.append("its usage policy differs from the one the owner signed")
    if problems:
        later = gov.reused.get(f"dataset:{name}")
        if later:
            problems.append(f"the dataset name was granted again later (ledger entries {later}), which does not "
                            "replace the first grant")
        raise IntegrityError(f"{row} disagrees with ledger entry {grant.index} (consent.grant): {'; '.join(problems)}."
                             " Rules come from the ledger; restore the row (see 'onshore doctor')")
    return grant


def model_release(gov: Governance, name: str, index: int | None) -> LedgerRelease:
    """The signed release of model ``name``: entry ``index`` when the catalog names one (it must be a
    live ``model.release`` of that model), else the model's latest release; IntegrityError otherwise."""
    rel = gov.releases.get(index) if index is not None else gov.releases.get(gov.latest_release.get(name, -1))
    if rel is None or rel.model != name:
        cited = f"cites ledger entry {index}, which is not" if index is not None else "has no"
        raise IntegrityError(f"model {name!r}: the catalog {cited} a live model.release of it; restore the catalog "
                             "from a backup and run 'onshore doctor'")
    return rel


def signed_lineage(gov: Governance, name: str, index: int | None, indices: dict[str, int]) -> tuple[str, ...]:
    """Every dataset model ``name`` derives from, through each base model, from signed releases only.

    ``indices``: the release entry the catalog cites for each model it holds (checked against the
    ledger); a base the catalog no longer holds is followed through its signed releases, so
    deleting a base's row cannot drop its datasets from a fine-tuned model's lineage. Every live
    release of a name counts: a name released again (its row deleted, a new model trained under
    it) adds to what the first release derived from and never replaces it, so a model fine-tuned
    from the first keeps the first's datasets.
    """
    found: set[str] = set()
    seen: set[str] = set()
    todo: list[tuple[str, int | None]] = [(name, index)]
    while todo:
        current, at = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        model_release(gov, current, at)  # the catalog's citation, checked
        for rel in gov.releases.values():
            if rel.model == current:
                found |= set(rel.datasets)
                if rel.base is not None:
                    todo.append((rel.base, indices.get(rel.base)))
    return tuple(sorted(found))


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


@dataclass(frozen=True)
class IssuedToken:
    """A token's digest as the ledger issued it, and its revocation if any."""

    sha256: str
    site: str
    client: str
    index: int  # the token.issue entry
    created_at: str
    revoked_index: int | None = None
    revoked_at: str | None = None

    @property
    def live(self) -> bool:
        return self.revoked_index is None


def ledger_tokens(ledger: Ledger) -> dict[str, IssuedToken]:
    """Every digest the ledger issued (signed by the site it names), with its revocation: the only
    source of tokens a server accepts."""
    out: dict[str, IssuedToken] = {}
    for e in ledger.entries(kinds=TOKEN_KINDS):
        b = e.entry.body
        if e.entry.actor != f"site:{b.get('site')}":
            continue
        if e.entry.kind == TOKEN_ISSUE:
            out.setdefault(b["token_sha256"], IssuedToken(b["token_sha256"], b["site"], b["client"], e.index,
                                                          e.entry.time))
        else:
            for digest in b.get("token_sha256s") or ():
                t = out.get(digest)
                if t is not None and t.live and t.site == b["site"]:
                    out[digest] = IssuedToken(t.sha256, t.site, t.client, t.index, t.created_at, e.index, e.entry.time)
    return out
