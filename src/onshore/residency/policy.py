"""A member's usage policy for one dataset, parsed from TOML and compiled to Cedar.

```toml
jurisdictions = ["JP"]
sites = []                        # empty: any site in those jurisdictions
purposes = ["foundation-pretraining", "fine-tuning"]
expires = 2031-03-31
derived_models = "stop-serving"   # keep | stop-serving | retrain-by:YYYY-MM-DD
redistribution = false            # may others ingest copies of this data as their own? (default false)
```

Each clause compiles to its own Cedar ``forbid`` policy with an ``@id`` naming the dataset and the
clause (``dataset/NAME/jurisdictions`` ...), so a refusal names the exact rule that refused.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rfc8785
import tomli_w

from onshore.errors import ValidationError
from onshore.i18n import N_, Message
from onshore.names import check_name, is_name
from onshore.residency.jurisdictions import check_jurisdiction

ACTIONS = ("ingest", "read", "copy", "export", "train", "serve", "withdraw")
#: Actions that place, read, compute on or serve data somewhere: they always name a site.
SITED_ACTIONS = ("ingest", "read", "copy", "export", "train", "serve")
#: Actions that use data for a purpose: the purpose must be named (and, like any named purpose, allowed).
PURPOSED_ACTIONS = ("train", "serve")

_KEYS = {"jurisdictions", "sites", "purposes", "expires", "derived_models", "redistribution"}


@dataclass(frozen=True)
class UsagePolicy:
    jurisdictions: tuple[str, ...]
    sites: tuple[str, ...]
    purposes: tuple[str, ...]
    expires: dt.date
    derived_models: str  # keep | stop-serving | retrain-by:YYYY-MM-DD
    # True lets another member ingest data whose provenance or fingerprints match this dataset
    redistribution: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "jurisdictions": list(self.jurisdictions),
            "sites": list(self.sites),
            "purposes": list(self.purposes),
            "expires": self.expires.isoformat(),
            "derived_models": self.derived_models,
            "redistribution": self.redistribution,
        }

    @classmethod
    def from_json(cls, data: Any, source: str = "<policy>") -> UsagePolicy:
        """The inverse of ``to_json`` (as recorded in the ledger), checked like a TOML file."""
        if not isinstance(data, dict):
            raise ValidationError(f"{source}: a policy must be a JSON object")
        d = dict(data)
        if isinstance(d.get("expires"), str):
            try:
                d["expires"] = dt.date.fromisoformat(d["expires"])
            except ValueError:
                raise ValidationError(f"{source}: field 'expires' is not a date") from None
        try:
            text = tomli_w.dumps(d)
        except (TypeError, ValueError) as e:
            raise ValidationError(f"{source}: not a policy ({e})") from None
        return parse_policy(text, source)

    @property
    def hash(self) -> str:
        """SHA-256 of the policy's canonical JSON (RFC 8785): the id the ledger and attestations cite."""
        return hashlib.sha256(rfc8785.dumps(self.to_json())).hexdigest()

    @property
    def retrain_by(self) -> dt.date | None:
        if self.derived_models.startswith("retrain-by:"):
            return dt.date.fromisoformat(self.derived_models.split(":", 1)[1])
        return None


def parse_policy(text: str, source: str = "<policy>") -> UsagePolicy:
    """Parse and check a policy TOML; errors name ``source`` and the field."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValidationError(Message(N_("{path}: not valid TOML ({error})"), {"path": source, "error": e})) from None

    def fail(field: str, msg: str) -> ValidationError:
        return ValidationError(f"{source}: field '{field}' {msg}")

    unknown = set(data) - _KEYS
    if unknown:
        raise ValidationError(f"{source}: unknown field(s) {sorted(unknown)}; allowed: {sorted(_KEYS)}")
    for key in ("jurisdictions", "purposes", "expires"):
        if key not in data:
            raise fail(key, "is required")

    def str_list(field: str, allow_empty: bool) -> list[str]:
        v = data.get(field, [])
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise fail(field, "must be a list of strings")
        if not v and not allow_empty:
            raise fail(field, "must name at least one value")
        if len(set(v)) != len(v):
            raise fail(field, "repeats a value")
        return v

    jur = [check_jurisdiction(c, f"{source}: field 'jurisdictions'") for c in str_list("jurisdictions", False)]
    sites = str_list("sites", True)
    for s in sites:
        try:
            check_name(s, "site")
        except ValidationError as e:
            raise fail("sites", f"has a bad entry: {e}") from None
    purposes = str_list("purposes", False)
    for p in purposes:
        if not is_name(p):
            raise fail("purposes", f"has a bad entry {p!r}: use lowercase letters, digits and '-'")
    expires = data["expires"]
    if isinstance(expires, dt.datetime) or not isinstance(expires, dt.date):
        raise fail("expires", "must be a TOML date such as 2031-03-31")
    clause = data.get("derived_models", "stop-serving")
    if not isinstance(clause, str):
        raise fail("derived_models", "must be a string")
    if clause not in ("keep", "stop-serving"):
        m = re.fullmatch(r"retrain-by:(\d{4}-\d{2}-\d{2})", clause)
        try:
            ok = m is not None and dt.date.fromisoformat(m.group(1)) is not None
        except ValueError:
            ok = False
        if not ok:
            raise fail("derived_models", f"is {clause!r}; use keep, stop-serving or retrain-by:YYYY-MM-DD")
    redistribution = data.get("redistribution", False)
    if not isinstance(redistribution, bool):
        raise fail("redistribution", "must be true or false")
    return UsagePolicy(tuple(jur), tuple(sites), tuple(purposes), expires, clause, redistribution)


def load_policy(path: Path) -> tuple[UsagePolicy, str]:
    """Read a policy file; returns the parsed policy and the verbatim text (kept in the catalog)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ValidationError(f"{path}: no such policy file") from None
    return parse_policy(text, str(path)), text


# ---- Cedar -------------------------------------------------------------------------------------

def action_list(actions: tuple[str, ...]) -> str:
    return "[" + ", ".join(f'Onshore::Action::"{a}"' for a in actions) + "]"


def _str_set(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(f'"{v}"' for v in values) + "]"


def day_number(day: dt.date) -> int:
    """A date as the Cedar Long YYYYMMDD, which orders like the date."""
    return day.year * 10000 + day.month * 100 + day.day


def usage_clauses(rule: str, res: str, policy: UsagePolicy) -> list[str]:
    """The ``forbid`` policies of a usage policy's clauses about resource ``res`` (a Cedar entity
    uid), each with ``@id("RULE/CLAUSE")``: jurisdictions, purposes, purpose-required, expiry,
    and sites when the policy names any. A dataset's policy and every model derived from it
    compile the same clauses (for a model, ``rule`` names the model and the dataset)."""
    parts = [
        f'@id("{rule}/jurisdictions")\nforbid (principal, action, resource == {res})\n'
        f"  when {{ context has site }}\n"
        f"  unless {{ {_str_set(policy.jurisdictions)}.contains(context.site.jurisdiction) }};",
        f'@id("{rule}/purposes")\nforbid (principal, action, resource == {res})\n'
        f"  when {{ context has purpose }} unless {{ {_str_set(policy.purposes)}.contains(context.purpose) }};",
        f'@id("{rule}/purpose-required")\nforbid (principal, action in {action_list(PURPOSED_ACTIONS)}, '
        f"resource == {res})\n  unless {{ context has purpose }};",
        f'@id("{rule}/expiry")\nforbid (principal, action in {action_list(SITED_ACTIONS)},\n'
        f"  resource == {res})\n  when {{ context.today > {day_number(policy.expires)} }};",
    ]
    if policy.sites:
        sites = "[" + ", ".join(f'Onshore::Site::"{s}"' for s in policy.sites) + "]"
        parts.append(
            f'@id("{rule}/sites")\nforbid (principal, action, resource == {res})\n'
            f"  when {{ context has site }} unless {{ {sites}.contains(context.site) }};"
        )
    return parts


def dataset_cedar(name: str, owner: str, policy: UsagePolicy, withdrawn: bool) -> str:
    """The Cedar policies for one dataset. Names are checked, so they need no escaping."""
    res = f'Onshore::Dataset::"{name}"'
    use = action_list(tuple(a for a in ACTIONS if a not in ("ingest", "withdraw")))
    parts = [
        f'@id("dataset/{name}/grant")\npermit (principal is Onshore::Site, action in {use}, resource == {res});',
        f'@id("dataset/{name}/owner")\npermit (principal == Onshore::Member::"{owner}", '
        f'action in {action_list(("ingest", "withdraw"))}, resource == {res});',
        *usage_clauses(f"dataset/{name}", res, policy),
    ]
    if withdrawn:
        parts.append(f'@id("dataset/{name}/withdrawn")\nforbid (principal, action, resource == {res});')
    return "\n".join(parts) + "\n"


def cedar_hash(text: str) -> str:
    """SHA-256 (hex) of Cedar policy text as UTF-8: the per-dataset hash that consent entries,
    decisions and bundles carry, and that an auditor recomputes from the policy with
    :func:`dataset_cedar`."""
    return hashlib.sha256(text.encode()).hexdigest()


def workspace_cedar(jurisdiction: str | None) -> str:
    """Workspace-wide rules: ``forbid`` policies that no dataset policy can override."""
    parts = [
        '@id("workspace/role-storage")\nforbid (principal, action in '
        f'{action_list(("ingest", "copy"))}, resource)\n'
        '  when { context has site } unless { context.site.roles.contains("storage") };',
        '@id("workspace/role-compute")\nforbid (principal, action == Onshore::Action::"train", resource)\n'
        '  when { context has site } unless { context.site.roles.contains("compute") };',
        '@id("workspace/role-serve")\nforbid (principal, action == Onshore::Action::"serve", resource)\n'
        '  when { context has site } unless { context.site.roles.contains("serve") };',
        '@id("workspace/site-acts-for-itself")\nforbid (principal is Onshore::Site, action, resource)\n'
        "  when { context has site } unless { context.site == principal };",
    ]
    if jurisdiction:
        parts.append(
            f'@id("workspace/jurisdiction-{jurisdiction}")\nforbid (principal, action in '
            f"{action_list(SITED_ACTIONS)}, resource)\n"
            f'  when {{ context has site }} unless {{ context.site.jurisdiction == "{jurisdiction}" }};'
        )
    return "\n".join(parts) + "\n"
