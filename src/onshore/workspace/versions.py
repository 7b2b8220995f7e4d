"""Model versions under one name, aliases, tags, descriptions and archiving: the model registry.

Training again under a model's name makes its next version (``next_id``): version 1 keeps the
plain name as its id (so models made before versions existed are unchanged), version V >= 2 is
``NAME@V`` (``onshore.names``). Each version is a model of its own: its own ``model.release``,
lineage, effective policy, sealed files, key wraps, ledger entries and bundle.

What the registry adds is recorded in the ledger and read back from it (the ledger is the source
of truth, DESIGN.md), each entry signed by the site that trained the version it is about and
ignored when anyone else signed it:

- ``model.alias``: an alias of a name moved to a version (``previous`` says where it pointed) or
  removed (``version`` null). Refused for an unknown or archived version.
- ``model.archive``: a version archived (or restored). An archived version stays listed, shown
  and verifiable, but is refused for serving and fine-tuning, and ``NAME`` alone skips it.
  Refused while an alias points at the version.
- ``model.annotate``: tags set or removed and the description of a version.

``resolve`` turns what people type (``NAME``, ``NAME@V``, ``NAME@ALIAS``) into a model id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from onshore.catalog import schema as T
from onshore.errors import NotFoundError, ValidationError
from onshore.i18n import N_, Message
from onshore.names import (
    LATEST,
    MAX_MODEL_ID,
    ModelRef,
    check_alias,
    check_name,
    check_text,
    is_model_id,
    parse_model_ref,
)
from onshore.workspace.workspace import Workspace

ALIAS = "model.alias"
ARCHIVE = "model.archive"
ANNOTATE = "model.annotate"
KINDS = (ALIAS, ARCHIVE, ANNOTATE)
#: Actions an archived version is refused for (it may still be read, exported and verified).
REFUSED_WHEN_ARCHIVED = ("serve", "train")
_TAG_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}")
MAX_DESCRIPTION = 2000


def model_id(name: str, version: int) -> str:
    """The id of version ``version`` of model ``name``: ``NAME`` for 1, ``NAME@V`` after."""
    return name if version == 1 else f"{name}@{version}"


def split_id(model: str) -> tuple[str, int]:
    """(name, version) of a model id; ValidationError for something that is not one."""
    if not is_model_id(model):
        raise ValidationError(f"invalid model id {model!r}: use NAME or NAME@V")
    name, _, version = model.partition("@")
    return name, int(version) if version else 1


@dataclass
class Registry:
    """Versions, aliases, archived versions, tags and descriptions, as catalog and ledger say."""

    versions: dict[str, dict[int, str]] = field(default_factory=dict)  # name -> version -> id (catalog)
    released: dict[str, set[int]] = field(default_factory=dict)  # name -> versions with a signed release
    sites: dict[str, str] = field(default_factory=dict)  # id -> the training site its release names
    aliases: dict[str, dict[str, int]] = field(default_factory=dict)  # name -> alias -> version
    archived: dict[str, int] = field(default_factory=dict)  # id -> its model.archive entry index
    tags: dict[str, dict[str, str]] = field(default_factory=dict)  # id -> tags
    descriptions: dict[str, str] = field(default_factory=dict)  # id -> description
    moves: list[dict[str, Any]] = field(default_factory=list)  # every alias entry, oldest first

    def latest(self, name: str) -> str | None:
        """The newest version of ``name`` that is not archived (its id), or None."""
        live = [v for v, m in self.versions.get(name, {}).items() if m not in self.archived]
        return model_id(name, max(live)) if live else None

    def aliases_of(self, model: str) -> list[str]:
        """The aliases that point at version ``model`` now."""
        name, version = split_id(model)
        return sorted(a for a, v in self.aliases.get(name, {}).items() if v == version)

    def to_json(self, model: str) -> dict[str, Any]:
        """What the registry says about version ``model``."""
        name, version = split_id(model)
        return {"model_name": name, "version": version, "aliases": self.aliases_of(model),
                "archived": model in self.archived, "archived_index": self.archived.get(model),
                "tags": dict(sorted(self.tags.get(model, {}).items())),
                "description": self.descriptions.get(model, ""),
                "latest": self.latest(name) == model,
                "versions": sorted(self.versions.get(name, {}))}


def read_registry(ws: Workspace) -> Registry:
    """The registry: versions from the catalog (and the signed releases, for numbering), the rest
    folded from the ledger's registry entries in order, each counted only when signed by the site
    that trained the version it names."""
    reg = Registry()
    with ws.catalog.connect() as conn:
        for (model,) in conn.execute(select(T.models.c.name)):
            if is_model_id(model):
                name, version = split_id(model)
                reg.versions.setdefault(name, {})[version] = model
    gov = ws.ledger_governance()
    for model, index in gov.latest_release.items():
        if is_model_id(model):
            name, version = split_id(model)
            reg.released.setdefault(name, set()).add(version)
            reg.sites[model] = gov.releases[index].site
    for e in ws.ledger.entries(kinds=KINDS):
        b = e.entry.body
        model = b.get("model")
        if not is_model_id(model) or e.entry.actor != f"site:{reg.sites.get(model)}":
            continue  # not signed by the version's training site: not a registry action
        name, version = split_id(model)
        if e.entry.kind == ALIAS:
            alias = b.get("alias")
            if not isinstance(alias, str):
                continue
            if b.get("version") is None:
                if reg.aliases.get(name, {}).get(alias) == version:
                    del reg.aliases[name][alias]
            elif b.get("version") == version:
                reg.aliases.setdefault(name, {})[alias] = version
            reg.moves.append({**b, "index": e.index, "at": e.entry.time})
        elif e.entry.kind == ARCHIVE:
            if b.get("archived"):
                reg.archived[model] = e.index
            else:
                reg.archived.pop(model, None)
        elif e.entry.kind == ANNOTATE:
            tags = reg.tags.setdefault(model, {})
            tags.update({str(k): str(v) for k, v in (b.get("tags") or {}).items()})
            for k in b.get("removed") or ():
                tags.pop(str(k), None)
            if isinstance(b.get("description"), str):
                reg.descriptions[model] = b["description"]
    return reg


def _versions_or_refuse(reg: Registry, name: str) -> dict[int, str]:
    found = reg.versions.get(name)
    if not found:
        raise NotFoundError(Message(N_("no {kind} named {name!r}; see 'onshore {kind} list'"),
                                    {"kind": "model", "name": name}))
    return found


def resolve_in(reg: Registry, ref: str | ModelRef) -> str:
    """The model id ``ref`` names in ``reg`` (see ``resolve``)."""
    r = ref if isinstance(ref, ModelRef) else parse_model_ref(ref)
    found = _versions_or_refuse(reg, r.name)
    if r.version is not None:
        if r.version not in found:
            raise NotFoundError(Message(N_("model {name!r} has no version {version}; its versions are {versions} "
                                           "(see 'onshore model show {name}')"),
                                        {"name": r.name, "version": r.version,
                                         "versions": ", ".join(map(str, sorted(found)))}))
        return found[r.version]
    if r.alias is not None:
        version = reg.aliases.get(r.name, {}).get(r.alias)
        if version is None:
            known = ", ".join(sorted(reg.aliases.get(r.name, {}))) or "none"
            raise NotFoundError(Message(N_("model {name!r} has no alias {alias!r} (its aliases: {known}); set one "
                                           "with 'onshore model alias {name} {alias} VERSION'"),
                                        {"name": r.name, "alias": r.alias, "known": known}))
        if version not in found:
            raise NotFoundError(f"alias {r.alias!r} of model {r.name!r} points at version {version}, which is not "
                                "in the catalog; run 'onshore doctor'")
        return found[version]
    latest = reg.latest(r.name)
    if latest is None:
        raise ValidationError(f"every version of model {r.name!r} is archived; name one (NAME@V) or restore one "
                              f"with 'onshore model archive {r.name}@V --restore'")
    return latest


def resolve(ws: Workspace, ref: str) -> str:
    """The model id that ``ref`` names: ``NAME`` the latest version not archived (also
    ``NAME@latest``), ``NAME@V`` that version, ``NAME@ALIAS`` the version the alias points at.

    Refused: a malformed reference (ValidationError naming the part); an unknown name, version
    or alias (NotFoundError saying what exists); a name whose every version is archived.
    """
    return resolve_in(read_registry(ws), ref)


def check_usable(ws: Workspace, model: str, action: str, reg: Registry | None = None) -> None:
    """Refuse ``action`` (serve, train) on an archived version, saying how to go on (``reg``: a
    registry already read, else it is read here)."""
    if action not in REFUSED_WHEN_ARCHIVED:
        return
    reg = reg or read_registry(ws)
    if model in reg.archived:
        name, version = split_id(model)
        verb = "served" if action == "serve" else "fine-tuned"
        raise ValidationError(f"model {name!r} version {version} is archived (ledger entry {reg.archived[model]}): "
                              f"it is kept for the record and stays verifiable, but is not {verb}; use "
                              f"{reg.latest(name) or 'another version'} or restore it with "
                              f"'onshore model archive {name}@{version} --restore'")


def next_id(ws: Workspace, name: str) -> str:
    """The id the next training run under ``name`` releases: version 1 for a new name, else one
    after the highest version the catalog or the ledger knows (a version whose catalog row was
    removed still counts, so an id is never released twice). Refused: a bad name, or one too long
    to carry a version suffix."""
    check_name(name, "model")
    reg = read_registry(ws)
    known = set(reg.versions.get(name, {})) | reg.released.get(name, set())
    model = model_id(name, max(known) + 1 if known else 1)
    if len(model) > MAX_MODEL_ID:
        raise ValidationError(f"model {name!r} exists, and its next version id {model!r} is longer than "
                              f"{MAX_MODEL_ID} characters; train under a shorter --name")
    return model


def _site_of(ws: Workspace, reg: Registry, model: str) -> str:
    site = reg.sites.get(model)
    if site is None:
        raise NotFoundError(f"model {model!r} has no signed model.release in the ledger; run 'onshore doctor'")
    return site


def _version_number(version: int | str) -> int:
    text = str(version)
    if not (text.isascii() and text.isdigit()) or text.startswith("0"):
        raise ValidationError(f"invalid version {version!r}: give a whole number from 1 (see 'onshore model show')")
    return int(text)


def set_alias(ws: Workspace, name: str, alias: str, version: int | str) -> dict[str, Any]:
    """Point ``alias`` of model ``name`` at ``version``, recorded as ``model.alias`` signed by the
    site that trained that version; returns the entry (nothing is recorded when it already points
    there: ``ledger_index`` is then None).

    Refused: a bad name or alias (``latest`` is reserved), an unknown version, an archived one.
    """
    check_name(name, "model")
    check_alias(alias)
    number = _version_number(version)
    reg = read_registry(ws)
    model = resolve_in(reg, ModelRef(name, version=number))
    if model in reg.archived:
        raise ValidationError(f"model {name!r} version {number} is archived (ledger entry {reg.archived[model]}); "
                              "an alias may point only at a version that can be served: restore it first "
                              f"('onshore model archive {name}@{number} --restore') or choose another version")
    previous = reg.aliases.get(name, {}).get(alias)
    out: dict[str, Any] = {"model": model, "name": name, "alias": alias, "version": number, "previous": previous}
    if previous == number:
        return {**out, "ledger_index": None}
    body = {**out, "site": _site_of(ws, reg, model)}
    return {**out, "ledger_index": ws.record(ALIAS, f"site:{body['site']}", body)}


def remove_alias(ws: Workspace, name: str, alias: str) -> dict[str, Any]:
    """Remove ``alias`` of model ``name``: a ``model.alias`` entry with ``version`` null, signed by
    the site that trained the version it pointed at. NotFoundError for an alias that is not set."""
    check_name(name, "model")
    if alias == LATEST:
        raise ValidationError(f"{LATEST!r} is not an alias: it always means the latest version")
    check_alias(alias)
    reg = read_registry(ws)
    _versions_or_refuse(reg, name)
    previous = reg.aliases.get(name, {}).get(alias)
    if previous is None:
        raise NotFoundError(f"model {name!r} has no alias {alias!r}; see 'onshore model show {name}'")
    model = model_id(name, previous)
    body = {"model": model, "name": name, "alias": alias, "version": None, "previous": previous,
            "site": _site_of(ws, reg, model)}
    return {**body, "ledger_index": ws.record(ALIAS, f"site:{body['site']}", body)}


def archive(ws: Workspace, ref: str, restore: bool = False) -> dict[str, Any]:
    """Archive (``restore``: bring back) version ``ref`` = ``NAME@V``, recorded as ``model.archive``
    signed by its training site. Nothing is deleted: its files, lineage and ledger entries stay,
    and its bundle still verifies.

    Refused: a reference that does not name a version (``NAME@V``), an alias pointing at the
    version (move or remove it first), archiving an archived version or restoring one that is not.
    """
    r = parse_model_ref(ref)
    if r.version is None:
        raise ValidationError(f"name the version to {'restore' if restore else 'archive'}: {r.name}@VERSION "
                              f"(see 'onshore model show {r.name}')")
    reg = read_registry(ws)
    model = resolve_in(reg, r)
    if restore and model not in reg.archived:
        raise ValidationError(f"model {r.name!r} version {r.version} is not archived")
    if not restore:
        if model in reg.archived:
            raise ValidationError(f"model {r.name!r} version {r.version} is already archived (ledger entry "
                                  f"{reg.archived[model]})")
        pointing = reg.aliases_of(model)
        if pointing:
            raise ValidationError(f"alias(es) {', '.join(pointing)} of model {r.name!r} point at version {r.version}; "
                                  f"move them ('onshore model alias {r.name} ALIAS VERSION') or remove them "
                                  f"('--remove') before archiving it")
    body = {"model": model, "name": r.name, "version": r.version, "archived": not restore,
            "site": _site_of(ws, reg, model)}
    return {**body, "ledger_index": ws.record(ARCHIVE, f"site:{body['site']}", body)}


def parse_tags(pairs: list[str]) -> dict[str, str]:
    """``["k=v", ...]`` as a dict; refuses a pair without '=', a bad key, or a bad value."""
    tags: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValidationError(f"--tag {pair!r}: write KEY=VALUE (e.g. --tag stage=pilot)")
        tags[check_tag_key(key)] = check_text(value, f"tag {key!r} value")
    return tags


def check_tag_key(key: str) -> str:
    """A tag key: 1 to 64 ASCII letters, digits and ``. _ : / -``, starting with a letter or digit."""
    if not isinstance(key, str) or not _TAG_KEY.fullmatch(key):
        raise ValidationError(f"invalid tag key {key!r}: use 1 to 64 ASCII letters, digits and . _ : / -, "
                              "starting with a letter or digit")
    return key


def annotate(ws: Workspace, ref: str, tags: dict[str, str] | None = None, remove: list[str] | None = None,
             description: str | None = None) -> dict[str, Any]:
    """Set tags, remove tags and/or set the description of version ``ref`` (``NAME``: the latest),
    recorded as ``model.annotate`` signed by its training site. Refused: bad keys or text (control
    characters, a line break too: one paragraph; not NFC; a description over 2000 characters) and a
    call that changes nothing."""
    tags = {check_tag_key(k): check_text(v, f"tag {k!r} value") for k, v in (tags or {}).items()}
    removed = sorted({check_tag_key(k) for k in remove or ()})
    if description is not None:
        check_text(description, "the description (one paragraph)", limit=MAX_DESCRIPTION)
    if not tags and not removed and description is None:
        raise ValidationError("nothing to change: give --tag KEY=VALUE, --remove-tag KEY or --description TEXT")
    reg = read_registry(ws)
    model = resolve_in(reg, ref)
    name, version = split_id(model)
    body: dict[str, Any] = {"model": model, "name": name, "version": version, "tags": tags, "removed": removed,
                            "description": description, "site": _site_of(ws, reg, model)}
    return {**body, "ledger_index": ws.record(ANNOTATE, f"site:{body['site']}", body)}
